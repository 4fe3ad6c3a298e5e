//! Oplog entries as typed values: every entry a restore may meet is recognised here or
//! refused with an error that names it. Nothing here touches a server.

use bson::{Bson, Document, RawBsonRef, RawDocument, Timestamp};

use super::diff::DocDiff;
use super::fmt_ts;
use crate::error::{MongoError, Result};

/// A write to one document.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Write {
    /// The document's full new image (`i`, a replacement `u`, FerretDB's `u`).
    Upsert { id: Bson, doc: Document },
    /// MongoDB ≤ 4.x partial update: `{$set?, $unset?}` (`$v:1` or no `$v`).
    Modify { id: Bson, update: Document },
    /// MongoDB ≥ 5.0 `$v:2` diff.
    Diff { id: Bson, diff: DocDiff },
    /// `d`.
    Delete { id: Bson },
}

/// A command entry (`op: "c"`), other than `applyOps` and transaction commit/abort.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Command {
    /// `create` with its options (`idIndex` left out: the target builds `_id` itself).
    Create { coll: String, options: Document },
    /// `drop`.
    Drop { coll: String },
    /// `dropDatabase` (MongoDB ≥ 5.0 logs a `drop` per collection before it).
    DropDatabase,
    /// `createIndexes` (one spec) or `commitIndexBuild` (its `indexes`).
    AddIndexes { coll: String, specs: Vec<Document> },
    /// `dropIndexes` / `deleteIndexes` / `dropIndex` / `deleteIndex`: the `index` value
    /// (a name, `"*"`, a key pattern or a list of names).
    DropIndexes { coll: String, which: Bson },
    /// `renameCollection` (`ns` is `admin.$cmd`; both names are full namespaces).
    Rename {
        from: (String, String),
        to: (String, String),
        drop_target: bool,
    },
    /// `collMod`: `index` changes an index's options, everything else the collection's.
    CollMod {
        coll: String,
        index: Option<Document>,
        options: Document,
    },
    /// `emptycapped`: every document removed.
    EmptyCapped { coll: String },
    /// `convertToCapped`.
    ConvertToCapped { coll: String },
    /// Commands that change no data (`startIndexBuild`, `abortIndexBuild`, `dbCheck`,
    /// `setMultikeyMetadata`, `dropIdent`: mongorestore skips them too).
    Skip,
}

/// Transaction metadata of an `applyOps`, `commitTransaction` or `abortTransaction` entry
/// (as mongo-tools' `txn.NewMeta` reads it).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TxnMeta {
    /// `lsid` bytes and `txnNumber`: one transaction.
    pub key: Vec<u8>,
    /// `prevOpTime.ts`; `None` for the null optime (first entry of a transaction).
    pub prev: Option<Timestamp>,
    /// `partialTxn`: more entries of the transaction follow.
    pub partial: bool,
    /// `prepare`: a prepared transaction, applied at its `commitTransaction`.
    pub prepare: bool,
}

/// What one entry is.
#[derive(Debug)]
pub(crate) enum Parsed<'a> {
    /// Nothing to apply (`n`, mongorestore's ignored ops, internal namespaces).
    Noop,
    /// A document write on `db.coll`.
    Write {
        db: String,
        coll: String,
        write: Write,
    },
    /// A command on database `db` (`renameCollection` carries its own namespaces).
    Command { db: String, cmd: Command },
    /// `applyOps`: its operations, and the transaction it belongs to (`None`: applied at once).
    ApplyOps {
        ops: Vec<&'a RawDocument>,
        txn: Option<TxnMeta>,
    },
    /// `commitTransaction` of a prepared transaction.
    Commit(TxnMeta),
    /// `abortTransaction`.
    Abort(TxnMeta),
}

/// `oplog entry Timestamp(s, i) (ns "…", op "…")`: how errors name an entry.
pub(crate) fn name_of(raw: &RawDocument) -> String {
    let ts = raw
        .get_timestamp("ts")
        .map(fmt_ts)
        .unwrap_or_else(|_| "without ts".into());
    let ns = raw.get_str("ns").unwrap_or("");
    let op = raw.get_str("op").unwrap_or("");
    format!("oplog entry {ts} (ns {ns:?}, op {op:?})")
}

fn malformed(name: &str, detail: impl std::fmt::Display) -> MongoError {
    MongoError::Protocol {
        context: "read the backup's oplog".into(),
        detail: format!("{name}: {detail}"),
    }
}

fn unsupported(name: &str, detail: impl std::fmt::Display) -> MongoError {
    MongoError::Unsupported(format!("{name}: {detail}"))
}

fn to_doc(name: &str, raw: &RawDocument) -> Result<Document> {
    Document::try_from(raw).map_err(|e| malformed(name, format!("undecodable document: {e}")))
}

fn id_of(name: &str, doc: &RawDocument, what: &str) -> Result<Bson> {
    match doc.get("_id") {
        Ok(Some(v)) => {
            Bson::try_from(v).map_err(|e| malformed(name, format!("undecodable _id: {e}")))
        }
        _ => Err(malformed(name, format!("{what} has no _id"))),
    }
}

/// Internal namespaces mongorestore `--oplogReplay` skips as well.
fn is_internal(db: &str, coll: &str) -> bool {
    db == "config"
        && (coll.starts_with("cache.") || coll == "system.sessions" || coll == "system.indexBuilds")
}

/// Parses one entry (top-level, or an operation inside `applyOps`, named by `name`).
///
/// # Errors
/// [`MongoError::Unsupported`] for kinds this version does not apply (unknown `op`, unknown
/// command, binary diffs, `importCollection`, update operators other than `$set`/`$unset`);
/// [`MongoError::Protocol`] for malformed entries. Both name the entry.
pub(crate) fn parse<'a>(raw: &'a RawDocument, name: &str) -> Result<Parsed<'a>> {
    let op = raw
        .get_str("op")
        .map_err(|_| malformed(name, "no string \"op\""))?;
    let ns = raw.get_str("ns").unwrap_or("");
    match op {
        // No-ops, and what mongorestore ignores: "cd"/"ci"/"cu" (container writes of
        // MongoDB 8.x internals) and "km" (key metadata).
        "n" | "cd" | "ci" | "cu" | "km" => return Ok(Parsed::Noop),
        "i" | "u" | "d" | "c" => {}
        other => return Err(unsupported(name, format!("unknown op {other:?}"))),
    }
    let (db, coll) = ns.split_once('.').unwrap_or((ns, ""));
    if db.is_empty() || coll.is_empty() {
        return Err(malformed(name, "no \"db.collection\" namespace"));
    }
    let o = raw
        .get_document("o")
        .map_err(|_| malformed(name, "no document \"o\""))?;
    if op == "c" {
        return parse_command(raw, o, db, name);
    }
    if is_internal(db, coll) {
        return Ok(Parsed::Noop);
    }
    let write = match op {
        "i" => Write::Upsert {
            id: id_of(name, o, "inserted document")?,
            doc: to_doc(name, o)?,
        },
        "d" => Write::Delete {
            id: id_of(name, o, "delete")?,
        },
        _ => parse_update(raw, o, name)?,
    };
    Ok(Parsed::Write {
        db: db.to_string(),
        coll: coll.to_string(),
        write,
    })
}

fn parse_update(raw: &RawDocument, o: &RawDocument, name: &str) -> Result<Write> {
    let o2_id = match raw.get_document("o2") {
        Ok(o2) => Some(id_of(name, o2, "o2")?),
        Err(_) => None,
    };
    let has_operators = o.iter().any(|e| e.is_ok_and(|(k, _)| k.starts_with('$')));
    if !has_operators {
        // A replacement: `o` is the whole new document (FerretDB before o2 existed: no o2).
        let doc = to_doc(name, o)?;
        let id = match (o2_id, doc.get("_id")) {
            (Some(id), Some(own)) if *own != id => {
                return Err(malformed(name, "o._id differs from o2._id"))
            }
            (Some(id), _) => id,
            (None, Some(own)) => own.clone(),
            (None, None) => {
                return Err(malformed(
                    name,
                    "replacement update without o2._id or o._id",
                ))
            }
        };
        return Ok(Write::Upsert { id, doc });
    }
    let Some(id) = o2_id else {
        return Err(malformed(name, "update without o2._id"));
    };
    let version = match o.get("$v") {
        Ok(None) => None,
        Ok(Some(RawBsonRef::Int32(v))) => Some(i64::from(v)),
        Ok(Some(RawBsonRef::Int64(v))) => Some(v),
        Ok(Some(RawBsonRef::Double(v))) if v.fract() == 0.0 => Some(v as i64),
        _ => return Err(malformed(name, "\"$v\" is not an integer")),
    };
    match version {
        None | Some(1) => {}
        Some(2) => {
            if let Some(bad) = o
                .iter()
                .filter_map(|e| e.ok())
                .map(|(k, _)| k)
                .find(|k| !matches!(*k, "$v" | "diff"))
            {
                return Err(malformed(
                    name,
                    format!("unexpected field {bad:?} in a $v:2 update"),
                ));
            }
            let diff = o
                .get_document("diff")
                .map_err(|_| malformed(name, "$v:2 update without a \"diff\" document"))?;
            let diff = DocDiff::parse(diff).map_err(|e| {
                if e.unsupported {
                    unsupported(name, e)
                } else {
                    malformed(name, e)
                }
            })?;
            if diff.touches_id() {
                return Err(malformed(name, "$v:2 diff changes _id"));
            }
            return Ok(Write::Diff { id, diff });
        }
        Some(v) => return Err(unsupported(name, format!("update format $v:{v}"))),
    }
    let o = to_doc(name, o)?;
    if let Some(bad) = o
        .keys()
        .find(|k| !matches!(k.as_str(), "$v" | "$set" | "$unset"))
    {
        return Err(unsupported(name, format!("update operator {bad:?}")));
    }
    let set = match o.get("$set") {
        None => None,
        Some(Bson::Document(s)) => Some(s),
        Some(_) => return Err(malformed(name, "$set is not a document")),
    };
    // FerretDB logs an update as `$set` of the full post-update document.
    if let Some(set) = set {
        if o.get("$unset").is_none() && set.get("_id").is_some() {
            if set.get("_id") != Some(&id) {
                return Err(malformed(name, "$set._id differs from o2._id"));
            }
            return Ok(Write::Upsert {
                id,
                doc: set.clone(),
            });
        }
    }
    let mut update = Document::new();
    for k in ["$set", "$unset"] {
        match o.get(k) {
            None => {}
            Some(Bson::Document(d)) if !d.is_empty() => {
                update.insert(k, d.clone());
            }
            Some(Bson::Document(_)) => {}
            Some(_) => return Err(malformed(name, format!("{k} is not a document"))),
        }
    }
    if update.is_empty() {
        return Err(unsupported(name, "update with neither $set nor $unset"));
    }
    Ok(Write::Modify { id, update })
}

/// `prevOpTime.ts`, `None` for the null optime `{ts: Timestamp(0, 0), t: -1}`.
fn prev_ts(raw: &RawDocument) -> Option<Timestamp> {
    raw.get_document("prevOpTime")
        .ok()
        .and_then(|p| p.get_timestamp("ts").ok())
        .filter(|ts| ts.time != 0 || ts.increment != 0)
}

/// The transaction an entry belongs to, as mongo-tools' `txn.NewMeta` decides: a `c` entry
/// with `lsid` and `txnNumber`, unless `multiOpType: 1` (a batched write, not a transaction).
fn txn_meta(raw: &RawDocument, o: &RawDocument, name: &str) -> Result<Option<TxnMeta>> {
    let multi = matches!(
        raw.get("multiOpType"),
        Ok(Some(RawBsonRef::Int32(1))) | Ok(Some(RawBsonRef::Int64(1)))
    );
    if multi {
        return Ok(None);
    }
    let (Ok(lsid), Ok(Some(txn))) = (raw.get_document("lsid"), raw.get("txnNumber")) else {
        return Ok(None);
    };
    let txn = match txn {
        RawBsonRef::Int64(n) => n,
        RawBsonRef::Int32(n) => i64::from(n),
        _ => return Err(malformed(name, "\"txnNumber\" is not an integer")),
    };
    let mut key = lsid.as_bytes().to_vec();
    key.extend_from_slice(&txn.to_le_bytes());
    let has = |k: &str| o.get(k).is_ok_and(|v| v.is_some());
    Ok(Some(TxnMeta {
        key,
        prev: prev_ts(raw),
        partial: has("partialTxn"),
        prepare: has("prepare"),
    }))
}

fn coll_arg(o: &RawDocument, cmd: &str, name: &str) -> Result<String> {
    o.get_str(cmd)
        .map(str::to_string)
        .map_err(|_| malformed(name, format!("{cmd} without a collection name")))
}

fn split_ns(ns: &str, name: &str) -> Result<(String, String)> {
    match ns.split_once('.') {
        Some((d, c)) if !d.is_empty() && !c.is_empty() => Ok((d.to_string(), c.to_string())),
        _ => Err(malformed(
            name,
            format!("{ns:?} is not a \"db.collection\" namespace"),
        )),
    }
}

fn parse_command<'a>(
    raw: &'a RawDocument,
    o: &'a RawDocument,
    db: &str,
    name: &str,
) -> Result<Parsed<'a>> {
    let cmd_name = match o.iter().next() {
        Some(Ok((k, _))) => k,
        _ => return Err(malformed(name, "empty command")),
    };
    let cmd = |cmd| {
        Ok(Parsed::Command {
            db: db.to_string(),
            cmd,
        })
    };
    match cmd_name {
        "applyOps" => {
            let list = o
                .get_array("applyOps")
                .map_err(|_| malformed(name, "applyOps is not an array"))?;
            let mut ops = Vec::new();
            for (i, op) in list.into_iter().enumerate() {
                match op {
                    Ok(RawBsonRef::Document(d)) => ops.push(d),
                    _ => {
                        return Err(malformed(
                            name,
                            format!("applyOps operation {i} is not a document"),
                        ))
                    }
                }
            }
            Ok(Parsed::ApplyOps {
                ops,
                txn: txn_meta(raw, o, name)?,
            })
        }
        "commitTransaction" | "abortTransaction" => {
            let meta = txn_meta(raw, o, name)?
                .ok_or_else(|| malformed(name, format!("{cmd_name} without lsid and txnNumber")))?;
            if cmd_name == "commitTransaction" {
                Ok(Parsed::Commit(meta))
            } else {
                Ok(Parsed::Abort(meta))
            }
        }
        "create" => {
            let coll = coll_arg(o, "create", name)?;
            let mut options = to_doc(name, o)?;
            options.remove("create");
            options.remove("idIndex");
            cmd(Command::Create { coll, options })
        }
        "drop" => cmd(Command::Drop {
            coll: coll_arg(o, "drop", name)?,
        }),
        "dropDatabase" => cmd(Command::DropDatabase),
        "createIndexes" => {
            let coll = coll_arg(o, "createIndexes", name)?;
            let mut spec = to_doc(name, o)?;
            spec.remove("createIndexes");
            check_spec(&spec, name)?;
            cmd(Command::AddIndexes {
                coll,
                specs: vec![spec],
            })
        }
        "commitIndexBuild" => {
            let coll = coll_arg(o, "commitIndexBuild", name)?;
            let o = to_doc(name, o)?;
            let Ok(list) = o.get_array("indexes") else {
                return Err(malformed(name, "commitIndexBuild without \"indexes\""));
            };
            let mut specs = Vec::with_capacity(list.len());
            for s in list {
                let Bson::Document(s) = s else {
                    return Err(malformed(name, "index spec is not a document"));
                };
                check_spec(s, name)?;
                specs.push(s.clone());
            }
            cmd(Command::AddIndexes { coll, specs })
        }
        "dropIndexes" | "deleteIndexes" | "dropIndex" | "deleteIndex" => {
            let coll = coll_arg(o, cmd_name, name)?;
            let which = match o.get("index") {
                Ok(Some(v)) => Bson::try_from(v).map_err(|e| malformed(name, e))?,
                _ => return Err(malformed(name, format!("{cmd_name} without \"index\""))),
            };
            cmd(Command::DropIndexes { coll, which })
        }
        "renameCollection" => {
            let from = split_ns(
                o.get_str("renameCollection")
                    .map_err(|_| malformed(name, "renameCollection is not a string"))?,
                name,
            )?;
            let to = split_ns(
                o.get_str("to")
                    .map_err(|_| malformed(name, "renameCollection without \"to\""))?,
                name,
            )?;
            // `dropTarget` is a boolean, or the dropped target's UUID (MongoDB ≥ 4.2).
            let drop_target = match o.get("dropTarget") {
                Ok(None) | Ok(Some(RawBsonRef::Boolean(false))) => false,
                Ok(Some(_)) => true,
                Err(e) => return Err(malformed(name, e)),
            };
            cmd(Command::Rename {
                from,
                to,
                drop_target,
            })
        }
        "collMod" => {
            let coll = coll_arg(o, "collMod", name)?;
            let mut options = to_doc(name, o)?;
            options.remove("collMod");
            let index = match options.remove("index") {
                None => None,
                Some(Bson::Document(d)) => Some(d),
                Some(_) => return Err(malformed(name, "collMod \"index\" is not a document")),
            };
            cmd(Command::CollMod {
                coll,
                index,
                options,
            })
        }
        "emptycapped" | "emptyCapped" => cmd(Command::EmptyCapped {
            coll: coll_arg(o, cmd_name, name)?,
        }),
        "convertToCapped" => cmd(Command::ConvertToCapped {
            coll: coll_arg(o, "convertToCapped", name)?,
        }),
        "startIndexBuild" | "abortIndexBuild" | "dbCheck" | "setMultikeyMetadata" | "dropIdent" => {
            cmd(Command::Skip)
        }
        "importCollection" => Err(unsupported(
            name,
            "importCollection cannot be replayed (mongodump refuses it as well)",
        )),
        other => Err(unsupported(name, format!("unknown command {other:?}"))),
    }
}

fn check_spec(spec: &Document, name: &str) -> Result<()> {
    match (spec.get("key"), spec.get("name")) {
        (Some(Bson::Document(k)), Some(Bson::String(_))) if !k.is_empty() => Ok(()),
        _ => Err(malformed(name, "index spec without \"key\" and \"name\"")),
    }
}
