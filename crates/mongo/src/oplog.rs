//! Oplog capture (backup) and replay (restore): consistency to one point in time.
//!
//! # Capture (`mongodump --oplog`)
//!
//! When the instance is a replica set member (`hello.setName`, not a `mongos`) **and**
//! `local.oplog.rs` exists, [`crate::logical::logical_dump`] does what `mongodump --oplog`
//! does:
//!
//! 1. `oplogStart` = `ts` of the newest entry (`$natural: -1`), read **before** the first
//!    collection is read. An empty oplog fails the backup ([`MongoError::OplogUnusable`]):
//!    there is no starting point to replay from.
//! 2. every collection is dumped (concurrently, at different moments: a "fuzzy" copy);
//! 3. `oplogEnd` = `ts` of the newest entry after the last collection was read;
//! 4. the oldest entry must satisfy `ts <= oplogStart`, otherwise entries of the window were
//!    already evicted from the capped oplog and the backup fails with
//!    [`MongoError::OplogOverflow`] ("oplog overflow: the oplog is too small for this backup");
//! 5. every entry with `oplogStart <= ts <= oplogEnd` is written, in natural (insertion)
//!    order, into the archive's oplog namespace (db `""`, collection `"oplog"`, as mongodump
//!    does), then the overflow check runs again (entries may have been evicted while they
//!    were read).
//!
//! Decisions: a replica set **without** `local.oplog.rs` (FerretDB without its oplog
//! emulation switched on) is backed up as a plain dump, with no consistency point (logged);
//! a standalone server or a `mongos` never gets an oplog. A `local.oplog.rs` that is not a
//! capped collection fails the backup: FerretDB only logs into a capped one, so such a
//! collection is a misconfiguration, not an oplog.
//!
//! # Replay
//!
//! [`crate::restore::logical_restore`] replays the archive's oplog after every collection is
//! restored and **before** the secondary indexes are built: the dumped collections are a
//! fuzzy copy, and replaying from a fuzzy copy passes through states that never existed
//! together on the source (e.g. two documents briefly holding the same unique key), which a
//! unique index would refuse. Once the whole window is replayed the data is a state the
//! source really had, so the index builds see consistent data. Entries are applied one at a
//! time, in archive order, as [`ReplayOp`]s (FerretDB has no `applyOps`; [`Replayer`] batches
//! them with the same result, see there):
//!
//! | entry | applied as |
//! |---|---|
//! | `i` | `replaceOne({_id}, o, upsert)` (idempotent) |
//! | `u`, `o = {$v:1, $set:{<full doc with _id>}}` (FerretDB) | `replaceOne({_id: o2._id}, $set, upsert)` |
//! | `u`, `o` a replacement document (no `$` keys) | `replaceOne({_id: o2._id or o._id}, o, upsert)` |
//! | `u`, `o = {$v:1?, $set?, $unset?}` partial (MongoDB ≤ 4.x) | `updateOne({_id: o2._id}, {$set, $unset})` |
//! | `u`, `o = {$v:2, diff}` (MongoDB ≥ 5.0) and anything else | [`MongoError::Unsupported`] naming the entry |
//! | `d` | `deleteOne({_id: o._id})` |
//! | `n` | skipped (no-op) |
//! | `c` (commands) | [`MongoError::Unsupported`] naming the entry (DDL cannot be replayed safely) |
//!
//! Only entries of namespaces the restore restores are applied (the selection of the
//! restore); entries of other namespaces are not. Entries of the restore's databases whose
//! collection is not in the backup (created during the dump) are not replayed either; the
//! restore reports them as a warning.
//!
//! # The guarantee
//!
//! For the restored namespaces, the restored data is the source's data **as of the oplog
//! entry `oplogEnd`** (recorded as the backup's consistency point), provided that:
//!
//! * every write of the window is in the oplog. FerretDB writes its oplog entry right
//!   after the data write, not atomically with it, and only logs (does not return) a
//!   failure to do so; a write whose data is read by the dump within the last instant
//!   before `oplogEnd` is read, but whose entry lands later, is in the copy although it
//!   is after the consistency point (only for a document not touched earlier in the
//!   window: a touched one ends at its last in-window image). The window is read in natural
//!   (insertion) order, which is `ts` order unless concurrent writers insert their entries
//!   out of `ts` order;
//! * no DDL ran during the dump (FerretDB does not log collection or index creation, drops
//!   or renames; MongoDB `c` entries make the restore fail rather than be ignored);
//! * updates are in one of the forms above (anything else fails the restore, never skipped).
//!
//! Every document touched in the window ends at the image of its last entry in the window;
//! every other document is as the dump read it, which is its state at `oplogEnd` as well.
//! The replay is idempotent (full images, deletes, `$set`/`$unset`), so entries the dump
//! already saw are harmless, and the window includes `oplogStart` itself (`$gte`), as
//! mongodump's does.
//!
//! A restore that fails during the replay leaves the collections partly replayed (and
//! without their secondary indexes); running it again with `drop` starts over.

pub mod diff;

use std::collections::BTreeMap;

use bson::{doc, Bson, Document, RawDocumentBuf, Timestamp};
use mongodb::Client;

use crate::error::{MongoError, Result};
use crate::topology::{self, TopologyKind};

/// Database of the oplog.
pub const OPLOG_DB: &str = "local";
/// Collection of the oplog (replica sets).
pub const OPLOG_COLLECTION: &str = "oplog.rs";

/// The oplog window a dump captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OplogSummary {
    /// Newest entry before the first collection was read (`oplogStart`, included).
    pub start_ts: Timestamp,
    /// Newest entry after the last collection was read (`oplogEnd`): the consistency point.
    pub end_ts: Timestamp,
    /// Entries written to the archive (`start_ts <= ts <= end_ts`).
    pub entries: u64,
}

/// Whether a dump of this server captures the oplog: a replica set member whose
/// `local.oplog.rs` exists (see the module docs for the decisions).
///
/// # Errors
/// Server errors; [`MongoError::OplogUnusable`] if `local.oplog.rs` is not capped.
pub async fn capture_enabled(client: &Client) -> Result<bool> {
    let topo = topology::discover(client).await?;
    if topo.kind != TopologyKind::ReplicaSet {
        return Ok(false);
    }
    let colls: Vec<Document> = {
        use futures::TryStreamExt;
        client
            .database(OPLOG_DB)
            .run_cursor_command(
                doc! { "listCollections": 1, "filter": { "name": OPLOG_COLLECTION } },
            )
            .await
            .map_err(|e| MongoError::from_driver("run listCollections on local", e))?
            .try_collect()
            .await
            .map_err(|e| MongoError::from_driver("read listCollections of local", e))?
    };
    let Some(c) = colls.first() else {
        return Ok(false);
    };
    let capped = c
        .get_document("options")
        .ok()
        .and_then(|o| o.get_bool("capped").ok())
        .unwrap_or(false);
    if !capped {
        return Err(MongoError::OplogUnusable(
            "local.oplog.rs exists but is not a capped collection".into(),
        ));
    }
    Ok(true)
}

fn oplog(client: &Client) -> mongodb::Collection<Document> {
    client.database(OPLOG_DB).collection(OPLOG_COLLECTION)
}

/// `ts` of the first entry in `$natural` order `dir` (1 oldest, -1 newest).
async fn edge_ts(client: &Client, dir: i32, what: &str) -> Result<Timestamp> {
    let entry = oplog(client)
        .find_one(doc! {})
        .sort(doc! { "$natural": dir })
        .projection(doc! { "ts": 1 })
        .await
        .map_err(|e| MongoError::from_driver(format!("read the {what} oplog entry"), e))?;
    let Some(entry) = entry else {
        return Err(MongoError::OplogUnusable(
            "local.oplog.rs is empty: there is no starting point to replay from \
             (write anything, or drop local.oplog.rs for a plain dump)"
                .into(),
        ));
    };
    match entry.get("ts") {
        Some(Bson::Timestamp(ts)) => Ok(*ts),
        other => Err(MongoError::Protocol {
            context: format!("read the {what} oplog entry"),
            detail: format!("entry has no timestamp \"ts\" (found {other:?})"),
        }),
    }
}

/// `ts` of the newest oplog entry.
pub(crate) async fn newest_ts(client: &Client) -> Result<Timestamp> {
    edge_ts(client, -1, "newest").await
}

/// Fails with [`MongoError::OplogOverflow`] unless the oldest entry is at or before `start`.
pub(crate) async fn check_no_overflow(client: &Client, start: Timestamp) -> Result<()> {
    let oldest = edge_ts(client, 1, "oldest").await?;
    if oldest > start {
        return Err(MongoError::OplogOverflow(format!(
            "the oldest entry ({}) is newer than the start of the backup's window ({})",
            fmt_ts(oldest),
            fmt_ts(start)
        )));
    }
    Ok(())
}

/// A cursor over the window `start <= ts <= end`, in natural order.
pub(crate) async fn window_cursor(
    client: &Client,
    start: Timestamp,
    end: Timestamp,
    batch_size: u32,
) -> Result<mongodb::Cursor<RawDocumentBuf>> {
    client
        .database(OPLOG_DB)
        .collection::<RawDocumentBuf>(OPLOG_COLLECTION)
        .find(doc! { "ts": { "$gte": start, "$lte": end } })
        .sort(doc! { "$natural": 1 })
        .batch_size(batch_size)
        .await
        .map_err(|e| MongoError::from_driver("run find on local.oplog.rs", e))
}

/// `Timestamp(secs, inc)`.
pub fn fmt_ts(ts: Timestamp) -> String {
    format!("Timestamp({}, {})", ts.time, ts.increment)
}

/// One oplog entry turned into a write (see the module docs for the forms).
#[derive(Debug, Clone, PartialEq)]
pub enum ReplayOp {
    /// `replaceOne({_id: id}, doc, upsert: true)`.
    Upsert {
        /// Database.
        db: String,
        /// Collection.
        collection: String,
        /// `_id` of the document.
        id: Bson,
        /// The full document.
        doc: Document,
    },
    /// `updateOne({_id: id}, update)` (MongoDB's legacy `$set`/`$unset` form; no upsert).
    Update {
        /// Database.
        db: String,
        /// Collection.
        collection: String,
        /// `_id` of the document.
        id: Bson,
        /// `{$set?, $unset?}`.
        update: Document,
    },
    /// `deleteOne({_id: id})`.
    Delete {
        /// Database.
        db: String,
        /// Collection.
        collection: String,
        /// `_id` of the document.
        id: Bson,
    },
}

impl Converted {
    fn apply(op: ReplayOp) -> Self {
        Converted::Apply(Box::new(op))
    }
}

impl ReplayOp {
    /// `(db, collection)` the op writes to.
    pub fn namespace(&self) -> (&str, &str) {
        match self {
            ReplayOp::Upsert { db, collection, .. }
            | ReplayOp::Update { db, collection, .. }
            | ReplayOp::Delete { db, collection, .. } => (db, collection),
        }
    }

    /// Applies the op to the server behind `client`.
    ///
    /// # Errors
    /// Server errors, naming the namespace and `_id`.
    pub async fn apply(&self, client: &Client) -> Result<()> {
        let (db, coll) = self.namespace();
        let c = client.database(db).collection::<Document>(coll);
        let ctx = |what: &str, id: &Bson| format!("replay oplog {what} of _id {id} on {db}.{coll}");
        match self {
            ReplayOp::Upsert { id, doc, .. } => {
                c.replace_one(doc! { "_id": id.clone() }, doc.clone())
                    .upsert(true)
                    .await
                    .map_err(|e| MongoError::from_driver(ctx("upsert", id), e))?;
            }
            ReplayOp::Update { id, update, .. } => {
                c.update_one(doc! { "_id": id.clone() }, update.clone())
                    .await
                    .map_err(|e| MongoError::from_driver(ctx("update", id), e))?;
            }
            ReplayOp::Delete { id, .. } => {
                c.delete_one(doc! { "_id": id.clone() })
                    .await
                    .map_err(|e| MongoError::from_driver(ctx("delete", id), e))?;
            }
        }
        Ok(())
    }
}

/// `_id` (as BSON bytes of `{_id}`) → (`_id`, final image or `None` = deleted).
type NsPending = BTreeMap<Vec<u8>, (Bson, Option<Document>)>;

/// Applies [`ReplayOp`]s in bulk, with the same result as applying them one by one in order.
///
/// `Upsert` and `Delete` set a document's whole state, so within a batch only the last op of
/// each `_id` matters, and ops on different documents commute. A batch (at most
/// [`Replayer::MAX_OPS`] ops and about [`Replayer::MAX_BYTES`] bytes) is applied per
/// namespace as `deleteMany({_id: {$in: <every touched _id>}})` followed by an ordered
/// `insertMany` of the final images: two commands instead of one per entry. This matters on
/// FerretDB v1 (SQLite), where a write filtered by an `_id` that does not exist scans the
/// whole collection (≈0.5 s per op on 30 000 documents), while `insertMany` uses the `_id`
/// index. `Update` (a partial update) depends on the current state: the batch is applied
/// first, then the update on its own.
pub struct Replayer {
    /// `(db, collection)` → `_id` (as BSON bytes) → (`_id`, final image or `None` = deleted).
    pending: BTreeMap<(String, String), NsPending>,
    ops: usize,
    bytes: usize,
}

impl Default for Replayer {
    fn default() -> Self {
        Self::new()
    }
}

impl Replayer {
    /// Ops held before a batch is applied.
    pub const MAX_OPS: usize = 10_000;
    /// Bytes of images and `_id`s held before a batch is applied (keeps every command far
    /// below the 16 MiB message limit and bounds memory).
    pub const MAX_BYTES: usize = 8 * 1024 * 1024;

    /// An empty replayer.
    pub fn new() -> Self {
        Replayer {
            pending: BTreeMap::new(),
            ops: 0,
            bytes: 0,
        }
    }

    /// Adds one op (applied later, or now for partial updates).
    ///
    /// # Errors
    /// Server errors of the writes this triggers.
    pub async fn push(&mut self, op: ReplayOp, client: &Client) -> Result<()> {
        let (db, collection, id, image) = match op {
            ReplayOp::Update { .. } => {
                self.flush(client).await?;
                return op.apply(client).await;
            }
            ReplayOp::Upsert {
                db,
                collection,
                id,
                doc,
            } => (db, collection, id, Some(doc)),
            ReplayOp::Delete { db, collection, id } => (db, collection, id, None),
        };
        let key = bson::to_vec(&doc! { "_id": id.clone() }).map_err(|e| MongoError::Protocol {
            context: "replay the oplog".into(),
            detail: format!("unencodable _id: {e}"),
        })?;
        let size = key.len()
            + image
                .as_ref()
                .map_or(0, |d| bson::to_vec(d).map_or(0, |b| b.len()));
        self.pending
            .entry((db, collection))
            .or_default()
            .insert(key, (id, image));
        self.ops += 1;
        self.bytes += size;
        if self.ops >= Self::MAX_OPS || self.bytes >= Self::MAX_BYTES {
            self.flush(client).await?;
        }
        Ok(())
    }

    /// Applies everything held.
    ///
    /// # Errors
    /// Server errors, naming the namespace.
    pub async fn flush(&mut self, client: &Client) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        self.ops = 0;
        self.bytes = 0;
        for ((db, coll), docs) in pending {
            let c = client.database(&db).collection::<Document>(&coll);
            let ids: Vec<Bson> = docs.values().map(|(id, _)| id.clone()).collect();
            let n = ids.len();
            c.delete_many(doc! { "_id": { "$in": ids } })
                .await
                .map_err(|e| {
                    MongoError::from_driver(
                        format!("replay oplog: clear {n} documents of {db}.{coll}"),
                        e,
                    )
                })?;
            let images: Vec<Document> = docs.into_values().filter_map(|(_, d)| d).collect();
            if !images.is_empty() {
                let m = images.len();
                c.insert_many(images).ordered(true).await.map_err(|e| {
                    MongoError::from_driver(
                        format!("replay oplog: write {m} documents into {db}.{coll}"),
                        e,
                    )
                })?;
            }
        }
        Ok(())
    }
}

/// What [`convert_entry`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Converted {
    /// Apply this write.
    Apply(Box<ReplayOp>),
    /// Nothing to do: a no-op (`n`) or an internal namespace mongorestore skips too.
    Noop,
    /// An entry of a namespace the restore does not restore (`db`, `collection`).
    NotSelected(String, String),
}

/// Turns one oplog entry into a write. `selected(db, collection)` says whether the restore
/// restores that namespace; `c` entries are refused when their database holds a selected
/// namespace (`selected_db`), and ignored otherwise.
///
/// # Errors
/// [`MongoError::Unsupported`] naming the entry (`ts`, `ns`, `op`) for commands, `$v:2`
/// diff updates and any other form that cannot be replayed exactly;
/// [`MongoError::Protocol`] for malformed entries.
pub fn convert_entry(
    entry: &Document,
    selected: &dyn Fn(&str, &str) -> bool,
    selected_db: &dyn Fn(&str) -> bool,
) -> Result<Converted> {
    let op = entry.get_str("op").unwrap_or("");
    let ns = entry.get_str("ns").unwrap_or("");
    let name = || {
        let ts = match entry.get("ts") {
            Some(Bson::Timestamp(ts)) => fmt_ts(*ts),
            _ => "no ts".into(),
        };
        format!("oplog entry {ts} (ns {ns:?}, op {op:?})")
    };
    let malformed = |detail: &str| MongoError::Protocol {
        context: "replay the oplog".into(),
        detail: format!("{}: {detail}", name()),
    };
    let unsupported = |detail: &str| MongoError::Unsupported(format!("{}: {detail}", name()));
    if op == "n" {
        return Ok(Converted::Noop);
    }
    let (db, coll) = ns.split_once('.').unwrap_or((ns, ""));
    if op == "c" {
        if selected_db(db) {
            return Err(unsupported(
                "command entries (DDL, transactions) cannot be replayed; \
                 no DDL may run during a consistent backup",
            ));
        }
        return Ok(Converted::NotSelected(db.to_string(), coll.to_string()));
    }
    if db.is_empty() || coll.is_empty() {
        return Err(malformed("no \"db.collection\" namespace"));
    }
    // Internal namespaces mongorestore --oplogReplay skips as well.
    if db == "config"
        && (coll.starts_with("cache.") || coll == "system.sessions" || coll == "system.indexBuilds")
    {
        return Ok(Converted::Noop);
    }
    if !selected(db, coll) {
        return Ok(Converted::NotSelected(db.to_string(), coll.to_string()));
    }
    let o = entry
        .get_document("o")
        .map_err(|_| malformed("no document \"o\""))?;
    let (db, collection) = (db.to_string(), coll.to_string());
    match op {
        "i" => {
            let id = o
                .get("_id")
                .cloned()
                .ok_or_else(|| malformed("inserted document has no _id"))?;
            Ok(Converted::apply(ReplayOp::Upsert {
                db,
                collection,
                id,
                doc: o.clone(),
            }))
        }
        "d" => {
            let id = o
                .get("_id")
                .cloned()
                .ok_or_else(|| malformed("delete without o._id"))?;
            Ok(Converted::apply(ReplayOp::Delete { db, collection, id }))
        }
        "u" => {
            let o2_id = entry
                .get_document("o2")
                .ok()
                .and_then(|o2| o2.get("_id"))
                .cloned();
            let has_operators = o.keys().any(|k| k.starts_with('$'));
            if !has_operators {
                // A replacement: `o` is the whole new document.
                let id = o2_id
                    .or_else(|| o.get("_id").cloned())
                    .ok_or_else(|| malformed("replacement update without o2._id or o._id"))?;
                if o.get("_id").is_some_and(|i| *i != id) {
                    return Err(malformed("o._id differs from o2._id"));
                }
                return Ok(Converted::apply(ReplayOp::Upsert {
                    db,
                    collection,
                    id,
                    doc: o.clone(),
                }));
            }
            let version = o.get("$v").and_then(|v| match v {
                Bson::Int32(v) => Some(i64::from(*v)),
                Bson::Int64(v) => Some(*v),
                Bson::Double(v) if v.fract() == 0.0 => Some(*v as i64),
                _ => None,
            });
            let Some(id) = o2_id else {
                return Err(malformed("update without o2._id"));
            };
            match version {
                None | Some(1) => {}
                Some(2) => {
                    return Err(unsupported(
                        "$v:2 (diff) updates of MongoDB ≥ 5.0 are not supported by oplog replay",
                    ))
                }
                Some(v) => return Err(unsupported(&format!("update format $v:{v}"))),
            }
            if let Some(bad) = o
                .keys()
                .find(|k| !matches!(k.as_str(), "$v" | "$set" | "$unset"))
            {
                return Err(unsupported(&format!("update operator {bad:?}")));
            }
            let set = match o.get("$set") {
                None => None,
                Some(Bson::Document(s)) => Some(s),
                Some(_) => return Err(malformed("$set is not a document")),
            };
            // FerretDB logs an update as `$set` of the full post-update document.
            if let Some(set) = set {
                if o.get("$unset").is_none() && set.get("_id").is_some() {
                    if set.get("_id") != Some(&id) {
                        return Err(malformed("$set._id differs from o2._id"));
                    }
                    return Ok(Converted::apply(ReplayOp::Upsert {
                        db,
                        collection,
                        id,
                        doc: set.clone(),
                    }));
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
                    Some(_) => return Err(malformed(&format!("{k} is not a document"))),
                }
            }
            if update.is_empty() {
                return Err(unsupported("update with neither $set nor $unset"));
            }
            Ok(Converted::apply(ReplayOp::Update {
                db,
                collection,
                id,
                update,
            }))
        }
        other => Err(unsupported(&format!("unknown op {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(_: &str, _: &str) -> bool {
        true
    }
    fn all_db(_: &str) -> bool {
        true
    }
    fn conv(e: Document) -> Result<Converted> {
        convert_entry(&e, &all, &all_db)
    }
    fn upsert_id(c: Converted) -> Option<Bson> {
        match c {
            Converted::Apply(op) => match *op {
                ReplayOp::Upsert { id, .. } => Some(id),
                _ => None,
            },
            _ => None,
        }
    }
    fn ts() -> Timestamp {
        Timestamp {
            time: 1_700_000_000,
            increment: 7,
        }
    }

    #[test]
    fn insert_is_an_upsert_of_the_full_document() {
        let got = conv(doc! { "ts": ts(), "ns": "a.b", "op": "i", "o": { "_id": 1, "x": 2 } });
        assert_eq!(
            got.unwrap(),
            Converted::apply(ReplayOp::Upsert {
                db: "a".into(),
                collection: "b".into(),
                id: Bson::Int32(1),
                doc: doc! { "_id": 1, "x": 2 },
            })
        );
        // Collections may contain dots.
        let got = conv(doc! { "ns": "a.b.c", "op": "i", "o": { "_id": "k" } }).unwrap();
        let Converted::Apply(op) = got else { panic!() };
        assert_eq!(op.namespace(), ("a", "b.c"));
        assert!(conv(doc! { "ns": "a.b", "op": "i", "o": { "x": 1 } }).is_err());
    }

    #[test]
    fn ferretdb_update_replaces_with_the_full_document() {
        let e = doc! { "ts": ts(), "ns": "a.b", "op": "u",
        "o": { "$v": 1, "$set": { "_id": "counter", "n": 41 } }, "o2": { "_id": "counter" } };
        assert_eq!(
            conv(e).unwrap(),
            Converted::apply(ReplayOp::Upsert {
                db: "a".into(),
                collection: "b".into(),
                id: Bson::String("counter".into()),
                doc: doc! { "_id": "counter", "n": 41 },
            })
        );
        let e = doc! { "ns": "a.b", "op": "u",
        "o": { "$v": 1, "$set": { "_id": "x", "n": 1 } }, "o2": { "_id": "y" } };
        assert!(matches!(conv(e), Err(MongoError::Protocol { .. })));
    }

    #[test]
    fn replacement_update_uses_o2_or_o_id() {
        let e = doc! { "ns": "a.b", "op": "u", "o": { "_id": 3, "v": 1 }, "o2": { "_id": 3 } };
        assert_eq!(upsert_id(conv(e).unwrap()), Some(Bson::Int32(3)));
        // FerretDB before o2 existed: full document, no o2.
        let e = doc! { "ns": "a.b", "op": "u", "o": { "_id": 4, "v": 1 } };
        assert_eq!(upsert_id(conv(e).unwrap()), Some(Bson::Int32(4)));
        let e = doc! { "ns": "a.b", "op": "u", "o": { "v": 1 } };
        assert!(conv(e).is_err());
    }

    #[test]
    fn legacy_modifier_update_is_applied_as_an_update() {
        let e = doc! { "ns": "a.b", "op": "u",
        "o": { "$v": 1, "$set": { "x.y": 2 }, "$unset": { "z": true } }, "o2": { "_id": 5 } };
        assert_eq!(
            conv(e).unwrap(),
            Converted::apply(ReplayOp::Update {
                db: "a".into(),
                collection: "b".into(),
                id: Bson::Int32(5),
                update: doc! { "$set": { "x.y": 2 }, "$unset": { "z": true } },
            })
        );
    }

    #[test]
    fn unsupported_updates_fail_naming_the_entry() {
        let e = doc! { "ts": ts(), "ns": "a.b", "op": "u",
        "o": { "$v": 2, "diff": { "u": { "x": 1 } } }, "o2": { "_id": 5 } };
        let err = conv(e).unwrap_err();
        assert!(matches!(err, MongoError::Unsupported(_)), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("Timestamp(1700000000, 7)") && msg.contains("a.b"),
            "{msg}"
        );
        assert!(msg.contains("$v:2"), "{msg}");
        for o in [
            doc! { "$v": 1, "$inc": { "n": 1 } },
            doc! { "$v": 3, "$set": { "n": 1 } },
            doc! { "$v": 1 },
        ] {
            let e = doc! { "ns": "a.b", "op": "u", "o": o.clone(), "o2": { "_id": 1 } };
            assert!(matches!(conv(e), Err(MongoError::Unsupported(_))), "{o}");
        }
        let e = doc! { "ns": "a.b", "op": "x", "o": {} };
        assert!(matches!(conv(e), Err(MongoError::Unsupported(_))));
    }

    #[test]
    fn delete_noop_and_commands() {
        let e = doc! { "ns": "a.b", "op": "d", "o": { "_id": 9 } };
        assert_eq!(
            conv(e).unwrap(),
            Converted::apply(ReplayOp::Delete {
                db: "a".into(),
                collection: "b".into(),
                id: Bson::Int32(9),
            })
        );
        assert_eq!(
            conv(doc! { "ns": "", "op": "n", "o": { "msg": "x" } }).unwrap(),
            Converted::Noop
        );
        let cmd = doc! { "ts": ts(), "ns": "a.$cmd", "op": "c", "o": { "drop": "b" } };
        let err = conv(cmd.clone()).unwrap_err();
        assert!(matches!(err, MongoError::Unsupported(_)), "{err}");
        // A command on a database the restore does not touch is not its business.
        let other = convert_entry(&cmd, &|_, _| false, &|d| d != "a").unwrap();
        assert_eq!(other, Converted::NotSelected("a".into(), "$cmd".into()));
        assert_eq!(
            conv(doc! { "ns": "config.system.sessions", "op": "i", "o": { "_id": 1 } }).unwrap(),
            Converted::Noop
        );
    }

    #[test]
    fn namespace_filter() {
        let only_ab = |d: &str, c: &str| d == "a" && c == "b";
        let only_a = |d: &str| d == "a";
        let e = doc! { "ns": "a.c", "op": "i", "o": { "_id": 1 } };
        assert_eq!(
            convert_entry(&e, &only_ab, &only_a).unwrap(),
            Converted::NotSelected("a".into(), "c".into())
        );
        let e = doc! { "ns": "a.b", "op": "d", "o": { "_id": 1 } };
        assert!(matches!(
            convert_entry(&e, &only_ab, &only_a).unwrap(),
            Converted::Apply(_)
        ));
        // Unsupported forms of unselected namespaces are not an error.
        let e = doc! { "ns": "z.b", "op": "u", "o": { "$v": 2, "diff": {} }, "o2": { "_id": 1 } };
        assert!(matches!(
            convert_entry(&e, &only_ab, &only_a).unwrap(),
            Converted::NotSelected(..)
        ));
    }
}
