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
//! source really had, so the index builds see consistent data (indexes created or dropped
//! by the oplog join or leave the set built then, as mongorestore's index catalog does).
//!
//! Every entry is first checked, in the restore's verify pass, before the first drop or
//! insert (and by the backup itself when it captures the window): `replay::Sequencer` parses
//! it into a typed entry (`entry.rs`), refuses what cannot be applied with an error naming
//! it, and collects transactions. The replay pass runs the same code and hands each
//! resulting action to the `replay::Applier`, which applies it one of two ways, chosen by
//! [`detect_apply_path`] (an empty `applyOps` on the target):
//!
//! | entry | [`ApplyPath::Translate`] (FerretDB: no `applyOps`) | [`ApplyPath::ApplyOps`] (mongod; **unverified**) |
//! |---|---|---|
//! | `i` | `replaceOne({_id}, o, upsert)` (batched by [`Replayer`]) | `applyOps: [entry]` |
//! | `u`, full image (`o` without `$` keys; FerretDB's `{$v:1, $set: <whole document>}`) | `replaceOne({_id}, image, upsert)` (batched) | `applyOps` |
//! | `u`, `{$v:1?, $set?, $unset?}` (MongoDB ≤ 4.x) | `updateOne({_id}, {$set, $unset})` | `applyOps` |
//! | `u`, `{$v:2, diff}` (MongoDB ≥ 5.0) | the diff applied here ([`diff`]) to the current image, written whole | `applyOps` |
//! | `d` | `deleteOne({_id})` (batched) | `applyOps` |
//! | `n`, `km`, `ci`/`cu`/`cd` | skipped (as mongorestore) | skipped |
//! | `c` `create` | `create` with the options the target supports (others: warning) | `applyOps` |
//! | `c` `drop` | `drop` | `applyOps` |
//! | `c` `dropDatabase` | `drop` of each collection of the database this restore manages | same |
//! | `c` `createIndexes`, `commitIndexBuild`, `dropIndexes`, `collMod` `index` | the set of indexes built after the replay | same |
//! | `c` `collMod` other options | warning: not applied (FerretDB has no validators, …) | `applyOps` |
//! | `c` `renameCollection` | `renameCollection` (refused if it crosses the selection) | `applyOps` |
//! | `c` `emptycapped` | `deleteMany({})` | `applyOps` |
//! | `c` `convertToCapped`, `create` of a view or timeseries | refused before anything is written | `applyOps` |
//! | `c` `applyOps` (transactions) | its operations, at the commit | same |
//! | `c` `startIndexBuild`, `abortIndexBuild`, `dbCheck`, … | skipped (as mongorestore) | skipped |
//! | unknown `op`, unknown command, `importCollection`, `$v:2` binary sections, other update forms | refused before anything is written, naming the entry | same |
//!
//! Transactions: the `applyOps` entries of one transaction (same `lsid` and `txnNumber`) are
//! collected, each checked to follow the previous one (`prevOpTime`), and applied at the
//! commit (the entry without `partialTxn`/`prepare`, or `commitTransaction` of a prepared
//! one), as MongoDB applies them; an aborted one is dropped, one not committed by the end
//! of the window is not applied (a warning says so), and one whose first entries precede
//! the window fails the check. `applyOps` without `lsid` (or with `multiOpType: 1`) is
//! applied at once.
//!
//! Only entries of the restore's scope are looked at: the selection (everything when it is
//! empty) within the backup's databases. Collections of those databases that are not in the
//! backup but written by the oplog (created during the dump) are restored by the replay and
//! checked against the target (existing, or dropped with `drop`) like the others.

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
//! * no DDL ran during the dump that the oplog does not show (FerretDB does not log
//!   collection or index creation, drops or renames; MongoDB does, and its `c` entries are
//!   replayed; a rename during the dump fails the backup, as in `mongodump --oplog`);
//! * every entry is in one of the forms above (anything else fails the backup and the
//!   restore, never skipped).
//!
//! Every document touched in the window ends at the image of its last entry in the window;
//! every other document is as the dump read it, which is its state at `oplogEnd` as well.
//! The replay is idempotent (full images, deletes, `$set`/`$unset`, `$v:2` diffs, which
//! MongoDB designs to be re-applicable), so entries the dump already saw are harmless, and the window includes `oplogStart` itself (`$gte`), as
//! mongodump's does.
//!
//! A restore that fails during the replay leaves the collections partly replayed (and
//! without their secondary indexes); its error ([`MongoError::RestoreIncomplete`]) lists the
//! complete and incomplete namespaces, and running it again with `drop` starts over.

pub mod diff;
mod entry;
mod replay;

pub use replay::{detect_apply_path, ApplyPath};
pub(crate) use replay::{Applier, IndexCatalog, Mode, Scope, Sequencer, SequencerReport};

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
    let oplog = oplog(client);
    let find = oplog.find_one(doc! {}).projection(doc! { "ts": 1 });
    // The oldest is asked without a sort: a find without one returns a capped collection in natural order on
    // MongoDB and FerretDB alike, and FerretDB 1.24 then pushes the limit down to SQLite (one row read), while
    // any sort, `$natural` included, makes it read and sort the whole oplog in memory (msg_find.go,
    // sort_iterator.go). The log backup asks for the oldest entry on every poll, so that scan was most of its lag.
    let find = if dir < 0 {
        find.sort(doc! { "$natural": dir })
    } else {
        find
    };
    let entry = find
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

/// `ts` of the oldest (`dir` 1) or newest (`dir` -1) entry, `None` when the oplog is empty (log backup's follower).
///
/// # Errors
/// Server errors; an entry without a timestamp.
pub async fn edge_ts_opt(client: &Client, dir: i32) -> Result<Option<Timestamp>> {
    match edge_ts(client, dir, if dir < 0 { "newest" } else { "oldest" }).await {
        Ok(ts) => Ok(Some(ts)),
        Err(MongoError::OplogUnusable(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The server's clock (`hello.localTime`), in milliseconds since the epoch: the follower only takes entries of
/// seconds that have been over on the server for a settle time, so an entry still being written cannot land
/// behind its position.
///
/// # Errors
/// Server errors; an answer without `localTime`.
pub async fn server_time_millis(client: &Client) -> Result<i64> {
    let hello = client
        .database("admin")
        .run_command(doc! { "hello": 1 })
        .await
        .map_err(|e| MongoError::from_driver("run hello", e))?;
    let t = hello
        .get_datetime("localTime")
        .map_err(|e| MongoError::Protocol {
            context: "run hello".into(),
            detail: format!("no localTime: {e}"),
        })?;
    Ok(t.timestamp_millis())
}

/// Every entry with `after < ts <= upto`, sorted by `ts` (the order MongoDB applies them in; FerretDB's
/// concurrent writers may insert entries slightly out of `ts` order).
///
/// # Errors
/// Server errors naming the oplog; an entry without a timestamp.
pub async fn entries_between(
    client: &Client,
    after: Timestamp,
    upto: Timestamp,
) -> Result<Vec<(Timestamp, RawDocumentBuf)>> {
    use futures::TryStreamExt;
    let cursor = client
        .database(OPLOG_DB)
        .collection::<RawDocumentBuf>(OPLOG_COLLECTION)
        .find(doc! { "ts": { "$gt": after, "$lte": upto } })
        .sort(doc! { "$natural": 1 })
        .batch_size(1000)
        .await
        .map_err(|e| MongoError::from_driver("run find on local.oplog.rs", e))?;
    let docs: Vec<RawDocumentBuf> = cursor
        .try_collect()
        .await
        .map_err(|e| MongoError::from_driver("read local.oplog.rs", e))?;
    let mut out = Vec::with_capacity(docs.len());
    for d in docs {
        let ts = d.get_timestamp("ts").map_err(|e| MongoError::Protocol {
            context: "read local.oplog.rs".into(),
            detail: format!("entry without a timestamp \"ts\": {e}"),
        })?;
        out.push((ts, d));
    }
    out.sort_by_key(|(ts, _)| *ts);
    Ok(out)
}

/// `ts` of the newest oplog entry.
pub(crate) async fn newest_ts(client: &Client) -> Result<Timestamp> {
    edge_ts(client, -1, "newest").await
}

/// Where a dump's oplog window starts (`mongodump`'s `getOplogCopyStartTime`): the newest
/// entry, or the start of the oldest transaction still open (`config.transactions` in state
/// `prepared` or `inProgress`), whichever is older, so that every entry of a transaction
/// that commits during the dump is in the window. FerretDB has no transactions (the query
/// finds nothing); the mongod case is **unverified** (no mongod to test with).
///
/// # Errors
/// As [`newest_ts`].
pub(crate) async fn start_ts(client: &Client) -> Result<Timestamp> {
    let newest = newest_ts(client).await?;
    let open = client
        .database("config")
        .collection::<Document>("transactions")
        .find_one(doc! { "state": { "$in": ["prepared", "inProgress"] } })
        .sort(doc! { "startOpTime": 1 })
        .projection(doc! { "startOpTime": 1 })
        .await;
    let started = match open {
        Ok(Some(d)) => d
            .get_document("startOpTime")
            .ok()
            .and_then(|o| o.get_timestamp("ts").ok()),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read config.transactions; the oplog window starts at the newest entry");
            None
        }
    };
    Ok(match started {
        Some(t) if t < newest => t,
        _ => newest,
    })
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

fn id_key(id: &Bson) -> Result<Vec<u8>> {
    bson::to_vec(&doc! { "_id": id.clone() }).map_err(|e| MongoError::Protocol {
        context: "replay the oplog".into(),
        detail: format!("unencodable _id: {e}"),
    })
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
        let key = id_key(&id)?;
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

    /// The current image of a document: the batch's when it holds one (`None` if the batch
    /// deletes it), otherwise the server's.
    ///
    /// # Errors
    /// Server errors, naming the namespace.
    pub async fn current(
        &self,
        db: &str,
        collection: &str,
        id: &Bson,
        client: &Client,
    ) -> Result<Option<Document>> {
        let key = id_key(id)?;
        if let Some((_, image)) = self
            .pending
            .get(&(db.to_string(), collection.to_string()))
            .and_then(|ns| ns.get(&key))
        {
            return Ok(image.clone());
        }
        client
            .database(db)
            .collection::<Document>(collection)
            .find_one(doc! { "_id": id.clone() })
            .await
            .map_err(|e| {
                MongoError::from_driver(
                    format!("replay oplog: read _id {id} of {db}.{collection}"),
                    e,
                )
            })
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

#[cfg(test)]
mod tests;
