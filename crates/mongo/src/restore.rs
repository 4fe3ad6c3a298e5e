//! Logical restore: replay a `mongodump --archive` stream (ours, or a real mongodump's)
//! into a MongoDB-wire server such as FerretDB.
//!
//! # Two passes
//!
//! `open_input` is called twice and must yield the same (decompressed) bytes each time.
//!
//! 1. **Verify** ([`verify_archive`]): the whole archive is read with the validating
//!    [`ArchiveReader`] (magic, framing, every namespace's CRC-64, every prelude namespace
//!    closed) and every prelude entry is checked (known type, parseable `metadata.json`
//!    naming the right collection). Nothing has been written when this fails, so a
//!    corrupted or truncated backup never leaves a half-restored instance behind.
//! 2. **Plan** (no I/O): selection, system namespaces skipped, views/timeseries refused,
//!    collection options and index specs cut down to what FerretDB v1.24 accepts (what is
//!    dropped becomes a warning in the [`RestoreSummary`]).
//! 3. **Targets**: every selected namespace that already exists on the target (even empty:
//!    we create collections explicitly, with their options, and an existing one may have
//!    other options or indexes) makes the restore fail with [`MongoError::TargetExists`]
//!    naming all of them, unless [`RestoreOptions::drop`] is set, in which case they are
//!    dropped. Then every selected collection is created (`create` with `capped`/`size`/
//!    `max` only). All of this happens before the first document is inserted.
//! 4. **Apply**: the archive is read again on one blocking thread.
//!
//! ```text
//!  blocking reader thread: open_input() → ArchiveReader ─┬─ batches of ns A ─► bounded mpsc ─► worker A ─┐
//!   (routes raw documents by namespace, packs batches     ├─ batches of ns B ─► bounded mpsc ─► worker B ─┤ insert_many (ordered, raw)
//!    of ≤ batch_docs / batch_bytes, checks each EOF      └─ …                                            ┘ then createIndexes
//!    against the verify pass)                                                 ≤ parallel_collections server writes at once
//! ```
//!
//! Every selected collection has a worker future (idle ones cost a few hundred bytes);
//! a worker inserts its namespace's batches in archive order with `insert_many`
//! (`ordered: true`, raw [`RawDocumentBuf`]s, never decoded), then builds the indexes once
//! the namespace's EOF has been read. A semaphore of `parallel_collections` permits, taken
//! for each insert or index build, bounds how many collections write at once.
//!
//! Why not one permit per collection for its whole life: the archive interleaves
//! namespaces, so a collection holding a permit can be waiting for data that sits behind
//! data of a collection waiting for a permit. The reader would block on the second one
//! and never deliver the first one's data: a deadlock. Per-write permits cannot deadlock.
//!
//! # Memory bound
//!
//! Batches (being filled, queued, or being inserted) each hold one of
//! `S = parallel_collections × (channel_batches + 1)` *slots*. A batch holds at most
//! `batch_docs` documents and at most `batch_bytes` bytes, except that a single document
//! larger than `batch_bytes` forms a batch of its own; so with
//! `Bmax = max(batch_bytes, largest document)` (documents are ≤ 16 MiB):
//!
//! ```text
//! peak ≈ S × Bmax                          batches being filled, queued, or inserted
//!      + 2 × parallel_collections × Bmax   the driver's extra copies of a batch being inserted
//!                                          (into the command, then into the wire message)
//!      + 16 MiB + 256 KiB                  reader: the document being read + read buffer
//!      + decompressor state                (whatever `open_input` wraps; gzip ≈ 32 KiB window)
//!      + O(namespaces)                     one idle worker + channel per selected collection
//! ```
//!
//! With the defaults (P = 4, C = 4, 8 MiB batches) that is ≈ 20 × 8 + 2 × 4 × 8 + 16 ≈ 240 MiB
//! in the worst case, whatever the size of the backup. The verify pass needs only the
//! reader's share.
//!
//! When every slot is taken, the reader first sends the partially filled batches of the
//! other open namespaces (so they can be inserted and free their slots) and then waits for
//! a slot: slots are only ever waited for while all of them belong to batches that workers
//! will insert, so the wait always ends.
//!
//! # Oplog replay
//!
//! When the archive holds an oplog (db `""`, collection `"oplog"`; written by a dump of a
//! replica set with `local.oplog.rs`, ours or `mongodump --oplog`), the verify pass also
//! checks every entry of the restore's scope with the replay's own code
//! ([`crate::oplog`]'s `Sequencer`): parsed, of a kind this version applies, transactions
//! chained. An entry that fails makes the restore fail **before the first drop or insert**,
//! naming it. The target is then asked whether it has `applyOps`
//! ([`crate::oplog::detect_apply_path`]); entries only `applyOps` can apply (views,
//! `convertToCapped`) fail a restore into a target without it, still before any write.
//!
//! The replay pass runs once every collection is fully inserted: `open_input` is called a
//! third time, only the oplog namespace's entries are read (streamed through a small bounded
//! channel, so memory stays bounded) and applied in archive order. Secondary indexes are
//! then built **after** the replay (not per collection as without an oplog): the
//! collections are a fuzzy copy, and replaying from it passes through states the source
//! never had together, which a unique index could refuse. See [`crate::oplog`] for the entry
//! forms, the two apply paths and the exact consistency guarantee.
//! [`RestoreOptions::replay_oplog`] = false skips the replay (the result is then the fuzzy
//! copy; a warning says so).
//!
//! # Failures after the first write
//!
//! Once the target phase has started, an error comes as [`MongoError::RestoreIncomplete`]
//! naming the namespaces that are complete (all documents, indexes and, with an oplog, the
//! replay) and those that are not; restoring again with `drop` replaces them.
//!
//! # Not restored
//!
//! * `admin.system.*` and mongodump's `$admin.system.*` special namespaces (users, roles):
//!   FerretDB has no `_mergeAuthzCollections`; skipped with a warning.
//! * Views and timeseries collections: [`MongoError::Unsupported`] if selected (FerretDB
//!   v1 can create neither).
//!
//! A restore that fails or is cancelled after the target phase leaves the collections it
//! created (possibly partially filled); running it again with `drop` replaces them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bson::{doc, Bson, Document, RawDocumentBuf};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::archive::{
    ArchiveError, ArchiveEvent, ArchiveHeader, ArchiveReader, CollectionMetadata, NamespaceStats,
    Violation, MAX_BSON_SIZE,
};
use crate::error::cancellable;
use crate::error::{MongoError, Result};
use crate::oplog::{
    detect_apply_path, Applier, ApplyPath, IndexCatalog, Mode, Scope, Sequencer, SequencerReport,
};

/// Largest insert batch the driver can send as one command (`maxWriteBatchSize`).
const MAX_BATCH_DOCS: usize = 100_000;

/// Options of [`logical_restore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Collections writing (inserting or building indexes) concurrently (default 4).
    pub parallel_collections: usize,
    /// Documents per `insert` (default 1000, at most 100 000).
    pub batch_docs: usize,
    /// Bytes of documents per `insert` (default 8 MiB, at most 16 MiB); a larger single
    /// document is inserted on its own.
    pub batch_bytes: usize,
    /// Batches that may wait for a collection's worker (default 4).
    pub channel_batches: usize,
    /// Drop selected namespaces that already exist on the target. When false (the
    /// default), any such namespace makes the restore fail before anything is written.
    pub drop: bool,
    /// Namespaces to restore; empty means everything. A selector that matches nothing in
    /// the archive is an error (a typo must not turn into a successful empty restore).
    pub select: Vec<NsSelector>,
    /// Build the archive's secondary indexes after the data (default true).
    pub build_indexes: bool,
    /// Replay the archive's oplog, if it has one, after the collections (default true).
    /// Without the replay a backup taken under writes is restored as the dump read it: each
    /// collection at a different moment.
    pub replay_oplog: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            parallel_collections: 4,
            batch_docs: 1000,
            batch_bytes: 8 * 1024 * 1024,
            channel_batches: 4,
            drop: false,
            select: Vec::new(),
            build_indexes: true,
            replay_oplog: true,
        }
    }
}

impl RestoreOptions {
    /// The namespaces whose oplog entries the replay applies: the selection.
    fn scope(&self) -> Scope {
        if self.select.is_empty() {
            Scope::all()
        } else {
            Scope::selection(
                self.select
                    .iter()
                    .map(|s| (s.db.as_str(), s.collection.as_deref())),
            )
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(MongoError::InvalidArgument(what));
        if self.parallel_collections == 0 {
            return bad("parallel_collections must be at least 1".into());
        }
        if !(1..=MAX_BATCH_DOCS).contains(&self.batch_docs) {
            return bad(format!("batch_docs must be between 1 and {MAX_BATCH_DOCS}"));
        }
        // 16 MiB is the server's maxBsonObjectSize; larger batches gain nothing and
        // only raise the memory bound.
        if !(1..=MAX_BSON_SIZE).contains(&self.batch_bytes) {
            return bad("batch_bytes must be between 1 and 16 MiB".into());
        }
        if self.channel_batches == 0 {
            return bad("channel_batches must be at least 1".into());
        }
        for s in &self.select {
            s.validate()?;
        }
        Ok(())
    }

    fn limits(&self) -> BatchLimits {
        BatchLimits {
            docs: self.batch_docs,
            bytes: self.batch_bytes,
        }
    }
}

/// Selects a whole database (`collection: None`) or one collection.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NsSelector {
    /// Database name.
    pub db: String,
    /// Collection name, or `None` for every collection of `db`.
    pub collection: Option<String>,
}

impl NsSelector {
    /// Every collection of `db`.
    pub fn database(db: impl Into<String>) -> Self {
        NsSelector {
            db: db.into(),
            collection: None,
        }
    }

    /// One collection.
    pub fn collection(db: impl Into<String>, collection: impl Into<String>) -> Self {
        NsSelector {
            db: db.into(),
            collection: Some(collection.into()),
        }
    }

    /// Whether this selector covers `db.collection` (exact, case-sensitive names).
    pub fn matches(&self, db: &str, collection: &str) -> bool {
        self.db == db && self.collection.as_deref().is_none_or(|c| c == collection)
    }

    fn validate(&self) -> Result<()> {
        if self.db.is_empty() || self.db.contains(['.', '/', '\0']) {
            return Err(MongoError::InvalidArgument(format!(
                "invalid database name {:?} in the restore selection",
                self.db
            )));
        }
        if self.collection.as_deref() == Some("") {
            return Err(MongoError::InvalidArgument(format!(
                "empty collection name in the restore selection for database {:?}",
                self.db
            )));
        }
        Ok(())
    }
}

impl std::fmt::Display for NsSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.collection {
            Some(c) => write!(f, "{}.{c}", self.db),
            None => write!(f, "{}.*", self.db),
        }
    }
}

/// Progress report passed to the callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreProgress {
    /// What the restore is doing.
    pub stage: RestoreStage,
    /// Documents inserted so far.
    pub docs_done: u64,
    /// Documents of the selected namespaces, counted by the verify pass (exact; 0 while verifying).
    pub docs_total: u64,
    /// Oplog entries read for the replay so far (0 before it starts): the replay moves the progress too.
    pub oplog_entries: u64,
}

/// The stages of a logical restore, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreStage {
    /// Reading and checking the whole archive (nothing is written yet).
    Verifying,
    /// Inserting the collections' documents.
    Inserting,
    /// Replaying the oplog entries, then building indexes.
    ReplayingOplog,
}

/// One restored collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredNamespace {
    /// Database.
    pub db: String,
    /// Collection.
    pub collection: String,
    /// Documents inserted.
    pub documents: u64,
    /// Names of the indexes built (`_id_` excluded; empty when `build_indexes` is false).
    pub indexes: Vec<String>,
}

/// Result of a successful [`logical_restore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreSummary {
    /// Restored collections, in archive (prelude) order.
    pub namespaces: Vec<RestoredNamespace>,
    /// Total documents inserted.
    pub documents: u64,
    /// Total BSON bytes of those documents.
    pub bytes: u64,
    /// What was not restored as it is in the archive: collection options and index options
    /// the target does not support, skipped system namespaces, oplog entries not replayed.
    pub warnings: Vec<String>,
    /// Oplog entries applied by the replay (0 when the archive has no oplog).
    pub oplog_replayed: u64,
}

/// What [`verify_archive`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveSummary {
    /// The archive header.
    pub header: ArchiveHeader,
    /// Every prelude namespace, in prelude order, with its totals (documents, BSON bytes,
    /// CRC-64 as verified against the EOF header).
    pub namespaces: Vec<(CollectionMetadata, NamespaceStats)>,
    /// Total documents.
    pub documents: u64,
    /// Total BSON bytes of the documents.
    pub bytes: u64,
}

/// Full validation pass over a decompressed archive, writing nothing.
///
/// Checks everything [`ArchiveReader`] checks (magic, framing, document sizes, every
/// namespace's CRC-64, no data after EOF, every prelude namespace closed, clean end) and
/// that every prelude entry is usable: a known `type`, and for collections, views and
/// timeseries a `metadata.json` that parses as Extended JSON with `indexes` (each with a
/// `key` document and a `name`) and a `collectionName` equal to the namespace's collection.
///
/// # Errors
/// [`MongoError::Archive`] naming the byte offset, the namespace and what is wrong.
pub fn verify_archive<R: Read>(r: R) -> Result<ArchiveSummary> {
    verify_inner(r, None, None, true)
}

/// The databases a backup holds (for `DescribeBackupDBs`): sorted and deduplicated,
/// read from the prelude only (nothing after it is read or validated).
///
/// The oplog (db `""`) is not a database, and a database whose only namespaces are the
/// skipped `admin.system.*` / `$admin.system.*` ones is not listed either: the list is
/// what a full restore restores.
///
/// # Errors
/// [`MongoError::Archive`] when the prelude is malformed or truncated.
pub fn archive_databases<R: Read>(r: R) -> Result<Vec<String>> {
    let mut reader = ArchiveReader::new(r);
    let Some(ArchiveEvent::Prelude { namespaces, .. }) = reader.next_event()? else {
        return Err(MongoError::Internal(
            "archive reader did not start with the prelude".into(),
        ));
    };
    let dbs: BTreeSet<String> = namespaces
        .into_iter()
        .filter(|m| !m.db.is_empty() && !is_skipped_system_namespace(m))
        .map(|m| m.db)
        .collect();
    Ok(dbs.into_iter().collect())
}

/// The verify pass; with `oplog`, every oplog entry also goes through the replay's
/// [`Sequencer`] (parsed, checked applicable, transactions chained), so that an entry the
/// restore could not apply fails it before anything is written.
fn verify_inner<R: Read>(
    r: R,
    cancel: Option<&CancellationToken>,
    mut oplog: Option<&mut Sequencer>,
    restrict_dbs: bool,
) -> Result<ArchiveSummary> {
    let mut reader = ArchiveReader::new(r);
    let Some(ArchiveEvent::Prelude { header, namespaces }) = reader.next_event()? else {
        return Err(MongoError::Internal(
            "archive reader did not start with the prelude".into(),
        ));
    };
    for m in &namespaces {
        check_prelude_entry(m).map_err(|detail| bad_metadata(m, detail))?;
    }
    let oplog_ns = namespaces
        .iter()
        .position(|m| m.db.is_empty() && m.collection == "oplog");
    if let Some(seq) = oplog.as_deref_mut().filter(|_| restrict_dbs) {
        seq.within(archive_dbs(&namespaces));
    }
    while let Some(ev) = reader.next_event()? {
        // A flag load per document: cheap, and the pass stops within one document.
        if cancel.is_some_and(CancellationToken::is_cancelled) {
            return Err(MongoError::Cancelled);
        }
        if let (Some(seq), ArchiveEvent::Document { ns_index, raw }) = (oplog.as_deref_mut(), &ev) {
            if Some(*ns_index) == oplog_ns {
                seq.push_bytes(raw)?;
            }
        }
    }
    let mut out = Vec::with_capacity(namespaces.len());
    for (i, m) in namespaces.into_iter().enumerate() {
        let stats = reader.namespace_stats(i).unwrap_or_default();
        out.push((m, stats));
    }
    Ok(ArchiveSummary {
        header,
        documents: out.iter().map(|(_, s)| s.documents).sum(),
        bytes: out.iter().map(|(_, s)| s.bytes).sum(),
        namespaces: out,
    })
}

/// The databases of an archive (the oplog's empty one left out).
fn archive_dbs(namespaces: &[CollectionMetadata]) -> impl Iterator<Item = &str> {
    namespaces
        .iter()
        .map(|m| m.db.as_str())
        .filter(|d| !d.is_empty())
}

/// A prelude entry that cannot be used. The prelude is the archive's first block, which
/// starts right after the 4-byte magic number.
fn bad_metadata(m: &CollectionMetadata, detail: String) -> MongoError {
    MongoError::Archive(ArchiveError::Invalid {
        offset: 4,
        namespace: Some(m.namespace()),
        violation: Violation::MalformedHeader {
            what: "collection metadata",
            detail,
        },
    })
}

/// Checks one prelude entry beyond what the reader checks (the format does not checksum
/// the prelude, so this is what catches damage there).
fn check_prelude_entry(m: &CollectionMetadata) -> Result<(), String> {
    match m.collection_type.as_str() {
        "collection" | "view" | "timeseries" | "" => {}
        other => return Err(format!("unknown collection type {other:?}")),
    }
    if m.db.is_empty() {
        // mongodump's only top-level namespace is the oplog.
        if m.collection != "oplog" || !m.collection_type.is_empty() {
            return Err("namespace with an empty database that is not the oplog".into());
        }
        return Ok(());
    }
    // mongodump writes metadata for every collection, view and timeseries; only its
    // special `$admin.system.*` intents (and archives from tools that predate `type`)
    // come without.
    if !m.collection_type.is_empty()
        && !m.collection.starts_with("$admin.system.")
        && m.metadata.is_empty()
    {
        return Err(format!("no metadata for a {}", m.collection_type));
    }
    parse_metadata(m).map(|_| ())
}

/// The parts of `metadata.json` a restore uses.
#[derive(Debug, Clone, Default, PartialEq)]
struct ParsedMetadata {
    options: Document,
    indexes: Vec<Document>,
}

/// Parses mongodump's `metadata.json` text (canonical or relaxed Extended JSON).
fn parse_metadata(m: &CollectionMetadata) -> Result<ParsedMetadata, String> {
    if m.metadata.is_empty() {
        return Ok(ParsedMetadata::default());
    }
    let json: serde_json::Value = serde_json::from_str(&m.metadata)
        .map_err(|e| format!("metadata is not valid JSON: {e}"))?;
    let Bson::Document(d) =
        Bson::try_from(json).map_err(|e| format!("metadata is not valid Extended JSON: {e}"))?
    else {
        return Err("metadata is not a JSON object".into());
    };
    let options = match d.get("options") {
        None => Document::new(),
        Some(Bson::Document(o)) => o.clone(),
        Some(_) => return Err("metadata \"options\" is not an object".into()),
    };
    // mongodump always writes `indexes` and `collectionName` (neither is omitempty).
    let Some(Bson::Array(list)) = d.get("indexes") else {
        return Err("metadata has no \"indexes\" array".into());
    };
    let mut indexes = Vec::with_capacity(list.len());
    for (i, spec) in list.iter().enumerate() {
        let Bson::Document(spec) = spec else {
            return Err(format!("index #{i} is not an object"));
        };
        match spec.get("key") {
            Some(Bson::Document(k)) if !k.is_empty() => {}
            _ => return Err(format!("index #{i} has no \"key\" document")),
        }
        if !matches!(spec.get("name"), Some(Bson::String(_))) {
            return Err(format!("index #{i} has no \"name\""));
        }
        indexes.push(spec.clone());
    }
    match d.get("collectionName") {
        Some(Bson::String(n)) if *n == m.collection => {}
        Some(Bson::String(n)) => {
            return Err(format!(
                "metadata names collection {n:?}, the namespace is {:?}",
                m.collection
            ))
        }
        _ => return Err("metadata has no \"collectionName\"".into()),
    }
    Ok(ParsedMetadata { options, indexes })
}

/// `admin.system.*` (users, roles, version) and mongodump's `$admin.system.*` special
/// namespaces (`--dumpDbUsersAndRoles`): they need `_mergeAuthzCollections`, which
/// FerretDB does not have, and restoring credentials is not a data restore.
fn is_skipped_system_namespace(m: &CollectionMetadata) -> bool {
    (m.db == "admin" && m.collection.starts_with("system."))
        || m.collection.starts_with("$admin.system.")
}

/// An integer-valued BSON number (collection sizes come as int32, int64 or double).
fn as_integer(b: &Bson) -> Option<i64> {
    match b {
        Bson::Int32(v) => Some(i64::from(*v)),
        Bson::Int64(v) => Some(*v),
        Bson::Double(v) if v.is_finite() && v.fract() == 0.0 && v.abs() < 9.0e15 => Some(*v as i64),
        _ => None,
    }
}

/// The `create` command for a collection: only the options FerretDB v1.24 supports
/// (`capped`, `size`, `max`). Returns the command and the names of the dropped options.
///
/// `capped: false` is the default and is dropped silently; everything else that is not
/// kept (validators, collation, storage engine, …) is reported.
pub(crate) fn create_command(
    collection: &str,
    options: &Document,
) -> Result<(Document, Vec<String>), String> {
    let mut cmd = doc! { "create": collection };
    let mut dropped = Vec::new();
    let capped = match options.get("capped") {
        None | Some(Bson::Boolean(false)) => false,
        Some(Bson::Boolean(true)) => true,
        Some(other) => return Err(format!("option \"capped\" is not a boolean: {other}")),
    };
    for k in options.keys() {
        match k.as_str() {
            "capped" => {}
            "size" | "max" if capped => {}
            _ => dropped.push(k.clone()),
        }
    }
    if capped {
        let size = options
            .get("size")
            .and_then(as_integer)
            .filter(|s| *s >= 1)
            .ok_or("capped collection without a positive integer \"size\"")?;
        cmd.insert("capped", true);
        cmd.insert("size", size);
        match options.get("max").map(|m| (m, as_integer(m))) {
            None => {}
            // MongoDB treats max ≤ 0 as "no limit" (and lists it that way).
            Some((_, Some(max))) if max <= 0 => {}
            Some((_, Some(max))) => {
                cmd.insert("max", max);
            }
            Some((m, None)) => return Err(format!("option \"max\" is not an integer: {m}")),
        }
    }
    Ok((cmd, dropped))
}

/// An index spec FerretDB v1.24 accepts: `key`, `name`, `unique` (when true), and
/// `sparse`, `expireAfterSeconds`, `partialFilterExpression` when present (sent as they
/// are: if the server cannot build them the restore fails rather than silently losing a
/// TTL or partial index). Returns `None` for the `_id` index, which `create` builds.
///
/// `v`, `ns` (FerretDB rejects both) and `background` (a no-op since MongoDB 4.2) are
/// dropped silently; any other field is dropped and reported.
pub(crate) fn clean_index(spec: &Document) -> Option<(Document, Vec<String>)> {
    let name = spec.get_str("name").unwrap_or_default();
    let key = spec.get_document("key").ok()?;
    if name == "_id_" || (key.len() == 1 && key.get("_id").and_then(as_integer) == Some(1)) {
        return None;
    }
    let mut out = doc! { "key": key.clone(), "name": name };
    let mut dropped = Vec::new();
    for (k, v) in spec {
        match k.as_str() {
            "key" | "name" | "v" | "ns" | "background" => {}
            "unique" | "sparse" => {
                // `false` is the default: sending it only risks an "unknown option".
                if v != &Bson::Boolean(false) {
                    out.insert(k.clone(), v.clone());
                }
            }
            "expireAfterSeconds" | "partialFilterExpression" => {
                out.insert(k.clone(), v.clone());
            }
            _ => dropped.push(k.clone()),
        }
    }
    Some((out, dropped))
}

/// Size limits of one insert batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchLimits {
    docs: usize,
    bytes: usize,
}

impl BatchLimits {
    /// Whether a document of `len` bytes must go into a new batch, given the current
    /// batch holds `docs` documents of `bytes` bytes. A lone oversized document still
    /// forms a batch (it is ≤ 16 MiB, which one insert always carries).
    fn overflows(&self, docs: usize, bytes: usize, len: usize) -> bool {
        docs > 0 && (docs >= self.docs || bytes.saturating_add(len) > self.bytes)
    }

    /// Whether the batch is complete and goes out now rather than waiting for the next
    /// document (which may come much later, after other namespaces' data).
    fn is_full(&self, docs: usize, bytes: usize) -> bool {
        docs >= self.docs || bytes >= self.bytes
    }
}

/// What the apply pass does with a prelude namespace's documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Not selected, or a skipped system namespace: documents are read and dropped.
    Skip,
    /// The oplog: read by the replay pass, after every collection is restored.
    Oplog,
    /// Restored by worker `usize`.
    Restore(usize),
}

/// One collection to restore.
#[derive(Debug, Clone)]
struct WorkerPlan {
    db: String,
    collection: String,
    ns: String,
    create: Document,
    indexes: Vec<Document>,
    expected: NamespaceStats,
}

#[derive(Debug, Clone)]
struct Plan {
    /// By prelude index.
    routes: Vec<Route>,
    workers: Vec<WorkerPlan>,
    warnings: Vec<String>,
    docs_total: u64,
    /// Prelude index and totals of the oplog namespace, when it is replayed.
    oplog: Option<(usize, NamespaceStats)>,
    /// An oplog replay follows the inserts: the archive's oplog, or entries after it (point in time).
    replay: bool,
}

/// Decides what happens to every prelude namespace; performs no I/O.
fn plan_restore(archive: &ArchiveSummary, opts: &RestoreOptions) -> Result<Plan> {
    let mut used = vec![false; opts.select.len()];
    let mut plan = Plan {
        routes: Vec::with_capacity(archive.namespaces.len()),
        workers: Vec::new(),
        warnings: Vec::new(),
        docs_total: 0,
        oplog: None,
        replay: false,
    };
    for (meta, stats) in &archive.namespaces {
        let ns = meta.namespace();
        if meta.db.is_empty() {
            // Only the oplog has an empty db (checked by the verify pass). Its entries are
            // filtered by the selection when replayed.
            if opts.replay_oplog && stats.documents > 0 {
                plan.oplog = Some((plan.routes.len(), *stats));
                plan.routes.push(Route::Oplog);
            } else {
                if stats.documents > 0 {
                    plan.warnings.push(format!(
                        "the backup holds an oplog ({} entries) that was not replayed: \
                         collections are restored as the dump read them, each at a different moment",
                        stats.documents
                    ));
                }
                plan.routes.push(Route::Skip);
            }
            continue;
        }
        let mut selected = opts.select.is_empty();
        for (i, s) in opts.select.iter().enumerate() {
            if s.matches(&meta.db, &meta.collection) {
                used[i] = true;
                selected = true;
            }
        }
        if !selected {
            plan.routes.push(Route::Skip);
            continue;
        }
        if is_skipped_system_namespace(meta) {
            plan.warnings.push(format!(
                "{ns}: skipped (users, roles and other admin system collections are not restored)"
            ));
            plan.routes.push(Route::Skip);
            continue;
        }
        match meta.collection_type.as_str() {
            // An empty type comes from tools that predate the field: plain collections.
            "collection" | "" => {}
            other => {
                return Err(MongoError::Unsupported(format!(
                    "{ns} is a {other}; logical restore supports plain collections only \
                     (exclude it from the selection)"
                )))
            }
        }
        let parsed = parse_metadata(meta).map_err(|detail| bad_metadata(meta, detail))?;
        let (create, dropped) = create_command(&meta.collection, &parsed.options)
            .map_err(|e| MongoError::Unsupported(format!("{ns}: {e}")))?;
        for opt in dropped {
            plan.warnings.push(format!(
                "{ns}: collection option {opt:?} is not supported by the target and was not restored"
            ));
        }
        let mut indexes = Vec::new();
        if opts.build_indexes {
            for spec in &parsed.indexes {
                let Some((clean, dropped)) = clean_index(spec) else {
                    continue;
                };
                let name = clean.get_str("name").unwrap_or_default();
                for opt in dropped {
                    plan.warnings.push(format!(
                        "{ns}: index {name:?}: option {opt:?} is not supported by the target and was dropped"
                    ));
                }
                indexes.push(clean);
            }
        }
        plan.docs_total += stats.documents;
        plan.routes.push(Route::Restore(plan.workers.len()));
        plan.workers.push(WorkerPlan {
            db: meta.db.clone(),
            collection: meta.collection.clone(),
            ns,
            create,
            indexes,
            expected: *stats,
        });
    }
    let unused: Vec<String> = opts
        .select
        .iter()
        .zip(&used)
        .filter(|(_, u)| !**u)
        .map(|(s, _)| s.to_string())
        .collect();
    if !unused.is_empty() {
        let dbs: BTreeSet<&str> = archive
            .namespaces
            .iter()
            .map(|(m, _)| m.db.as_str())
            .filter(|d| !d.is_empty())
            .collect();
        return Err(MongoError::InvalidArgument(format!(
            "selection {} matches nothing in the backup (databases: {})",
            unused.join(", "),
            dbs.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    for w in &plan.warnings {
        warn!("{w}");
    }
    Ok(plan)
}

/// Restores a mongodump archive into the server behind `client`.
///
/// `open_input` must return a fresh reader over the same decompressed archive on every
/// call; it is called twice (verify pass, apply pass), each time on a blocking thread.
/// See the [module docs](self) for the passes, the concurrency and the memory bound.
///
/// `progress` is called after every inserted batch (and once before the first), from the
/// restore's own task: it must be cheap and must not block. `cancel` stops the restore
/// promptly (within one document read or one server round trip); when this function
/// returns, with any result, no reader thread is left running.
///
/// # Errors
/// * [`MongoError::Archive`] / [`MongoError::Io`]: the backup is corrupt, truncated or
///   unreadable; found by the verify pass, before anything is written.
/// * [`MongoError::TargetExists`]: selected collections exist on the target and `drop`
///   is false; nothing was written.
/// * [`MongoError::Unsupported`]: a selected view or timeseries collection, or options
///   that cannot be expressed (nothing written).
/// * [`MongoError::InvalidArgument`]: bad options, a selector that matches nothing, or an
///   `open_input` that returned different bytes the second time.
/// * [`MongoError::Cancelled`], and server errors naming the namespace.
pub async fn logical_restore(
    client: &mongodb::Client,
    open_input: Box<dyn Fn() -> std::io::Result<Box<dyn Read + Send>> + Send + Sync>,
    opts: &RestoreOptions,
    progress: &(dyn Fn(RestoreProgress) + Send + Sync),
    cancel: &CancellationToken,
) -> Result<RestoreSummary> {
    logical_restore_with_oplog(client, open_input, None, opts, progress, cancel).await
}

/// Oplog entries a point-in-time restore replays after the archive's own window: raw BSON entries in `ts`
/// order, all after the archive's consistency point. Called twice (the verify pass, the replay), it must yield
/// the same entries each time; an `Err` item fails the restore (before any write when the verify pass sees it).
pub type ExtraOplog = Arc<
    dyn Fn() -> std::io::Result<Box<dyn Iterator<Item = std::io::Result<Vec<u8>>> + Send>>
        + Send
        + Sync,
>;

/// [`logical_restore`], then `extra` replayed after the archive's oplog (a point-in-time restore). The extra
/// entries are checked by the verify pass with the archive's, before anything is written, and are applied to
/// every database of the selection, also those the archive does not hold (created after the backup).
///
/// # Errors
/// As [`logical_restore`]; [`MongoError::InvalidArgument`] with `extra` and `replay_oplog` false.
pub async fn logical_restore_with_oplog(
    client: &mongodb::Client,
    open_input: Box<dyn Fn() -> std::io::Result<Box<dyn Read + Send>> + Send + Sync>,
    extra_oplog: Option<ExtraOplog>,
    opts: &RestoreOptions,
    progress: &(dyn Fn(RestoreProgress) + Send + Sync),
    cancel: &CancellationToken,
) -> Result<RestoreSummary> {
    let extra = extra_oplog;
    opts.validate()?;
    if extra.is_some() && !opts.replay_oplog {
        return Err(MongoError::InvalidArgument(
            "a point-in-time restore replays the oplog: replay_oplog cannot be false".into(),
        ));
    }
    if cancel.is_cancelled() {
        return Err(MongoError::Cancelled);
    }
    let open: OpenInput = Arc::from(open_input);
    progress(RestoreProgress {
        stage: RestoreStage::Verifying,
        docs_done: 0,
        docs_total: 0,
        oplog_entries: 0,
    });

    // 1. Verify the whole archive, oplog entries included, before touching the target.
    let (verified, oplog_check) = {
        let open = open.clone();
        let token = cancel.clone();
        let mut seq = opts
            .replay_oplog
            .then(|| Sequencer::new(opts.scope(), Mode::Verify, false));
        let extra = extra.clone();
        join_blocking(tokio::task::spawn_blocking(move || {
            let input = open().map_err(|e| MongoError::io("open the backup archive", e))?;
            // The target is idle during this pass: decompress on a second core while this one parses.
            let summary = read_ahead::with_read_ahead(input, |r| {
                verify_inner(r, Some(&token), seq.as_mut(), extra.is_none())
            })?;
            if let (Some(seq), Some(extra)) = (seq.as_mut(), extra) {
                let entries = extra().map_err(|e| MongoError::io("open the log backup", e))?;
                for raw in entries {
                    if token.is_cancelled() {
                        return Err(MongoError::Cancelled);
                    }
                    let raw = raw.map_err(|e| MongoError::io("read the log backup", e))?;
                    seq.push_bytes(&raw)?;
                }
            }
            Ok((summary, seq.map(Sequencer::finish)))
        }))
        .await?
    };
    info!(
        namespaces = verified.namespaces.len(),
        documents = verified.documents,
        bytes = verified.bytes,
        "backup archive verified"
    );

    // 2. Plan (no I/O).
    let mut plan = plan_restore(&verified, opts)?;
    plan.replay = plan.oplog.is_some() || extra.is_some();
    progress(RestoreProgress {
        stage: RestoreStage::Inserting,
        docs_done: 0,
        docs_total: plan.docs_total,
        oplog_entries: 0,
    });
    // Namespaces the oplog writes that are not restored from the archive (created during the
    // backup): checked and dropped like the others, created by the replay.
    let oplog_check = oplog_check.filter(|_| plan.replay);
    let restored: BTreeSet<(String, String)> = plan
        .workers
        .iter()
        .map(|w| (w.db.clone(), w.collection.clone()))
        .collect();
    let pitr = extra.clone();
    let extra: Vec<(String, String)> = oplog_check
        .as_ref()
        .map(|c| c.touched.difference(&restored).cloned().collect())
        .unwrap_or_default();

    // How the target applies oplog entries (an empty applyOps writes nothing); what only
    // applyOps can apply fails the restore here, still before anything is written.
    let path = match &oplog_check {
        Some(check) => {
            let path = cancellable(cancel, detect_apply_path(client)).await?;
            if let (ApplyPath::Translate, Some(refusal)) = (path, &check.translate_refusal) {
                return Err(MongoError::Unsupported(format!(
                    "{refusal} (the target has no applyOps); nothing was restored"
                )));
            }
            path
        }
        None => ApplyPath::Translate,
    };

    // From here on the target changes: an error says what is complete.
    let progress_state = Completion::new(&plan, &extra);

    // 3. Targets: refuse or drop existing namespaces, then create the collections.
    match cancellable(
        cancel,
        prepare_targets(client, &plan.workers, &extra, opts.drop),
    )
    .await
    {
        Ok(()) => {}
        Err(e @ MongoError::TargetExists { .. }) => return Err(e),
        Err(e) => return Err(progress_state.fail(e)),
    }

    // 4. Apply (indexes wait for the oplog replay when there is one).
    let (mut namespaces, oplog_entries) = match apply(
        client,
        open.clone(),
        &verified,
        &plan,
        opts,
        progress,
        cancel,
        &progress_state.done,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => return Err(progress_state.fail(e)),
    };
    let mut warnings = plan.warnings.clone();
    let mut oplog_replayed = 0;

    // 5. Replay the oplog, then build the indexes.
    if plan.replay {
        let mut catalog = IndexCatalog::default();
        if opts.build_indexes {
            for w in &plan.workers {
                catalog
                    .specs
                    .insert((w.db.clone(), w.collection.clone()), w.indexes.clone());
            }
        }
        let mut known = restored.clone();
        known.extend(extra.iter().cloned());
        let mut applier = Applier::new(client, path, catalog, known);
        let metas: Vec<CollectionMetadata> =
            verified.namespaces.iter().map(|(m, _)| m.clone()).collect();
        let scope = if pitr.is_some() {
            opts.scope()
        } else {
            opts.scope().within(archive_dbs(&metas))
        };
        // Every collection is inserted by now.
        progress(RestoreProgress {
            stage: RestoreStage::ReplayingOplog,
            docs_done: plan.docs_total,
            docs_total: plan.docs_total,
            oplog_entries: 0,
        });
        let report_entries = |n: u64| {
            progress(RestoreProgress {
                stage: RestoreStage::ReplayingOplog,
                docs_done: plan.docs_total,
                docs_total: plan.docs_total,
                oplog_entries: n,
            })
        };
        let replayed = replay_oplog(
            &mut applier,
            open,
            ReplaySources {
                archive_oplog: plan.oplog,
                extra: pitr,
            },
            scope,
            path,
            &report_entries,
            cancel,
        )
        .await;
        let report = match replayed {
            Ok(r) => r,
            Err(e) => return Err(progress_state.fail(e)),
        };
        info!(
            entries = oplog_entries,
            replayed = applier.applied,
            "oplog replayed"
        );
        oplog_replayed = applier.applied;
        for w in report.warnings.iter().chain(&applier.warnings) {
            warn!("{w}");
            warnings.push(w.clone());
        }
        if opts.build_indexes {
            let writes = Semaphore::new(opts.parallel_collections);
            let catalog = std::mem::take(&mut applier.indexes.specs);
            let built = cancellable(
                cancel,
                futures::future::try_join_all(catalog.iter().map(|((db, coll), specs)| {
                    let writes = &writes;
                    let done = &progress_state.done;
                    async move {
                        let names = create_indexes(client, writes, db, coll, specs).await?;
                        if let Ok(mut d) = done.lock() {
                            d.insert(format!("{db}.{coll}"));
                        }
                        Ok::<_, MongoError>(((db.clone(), coll.clone()), names))
                    }
                })),
            )
            .await;
            let built: BTreeMap<(String, String), Vec<String>> = match built {
                Ok(b) => b.into_iter().collect(),
                Err(e) => return Err(progress_state.fail(e)),
            };
            for n in namespaces.iter_mut() {
                n.indexes = built
                    .get(&(n.db.clone(), n.collection.clone()))
                    .cloned()
                    .unwrap_or_default();
            }
        }
    }

    let documents = namespaces.iter().map(|n| n.documents).sum();
    let bytes = plan.workers.iter().map(|w| w.expected.bytes).sum();
    progress(RestoreProgress {
        stage: RestoreStage::Inserting,
        docs_done: documents,
        docs_total: plan.docs_total,
        oplog_entries: 0,
    });
    info!(
        collections = namespaces.len(),
        documents,
        bytes,
        warnings = warnings.len(),
        "logical restore finished"
    );
    Ok(RestoreSummary {
        namespaces,
        documents,
        bytes,
        warnings,
        oplog_replayed,
    })
}

/// Which namespaces are complete once the target has started to change, for the error of a
/// restore that fails mid-way ([`MongoError::RestoreIncomplete`]).
struct Completion {
    /// Every namespace the restore writes (`db.collection`), in plan order.
    planned: Vec<String>,
    /// Namespaces complete so far (workers add theirs; with a replay, the index builds do).
    done: std::sync::Mutex<BTreeSet<String>>,
}

impl Completion {
    fn new(plan: &Plan, extra: &[(String, String)]) -> Completion {
        let mut planned: Vec<String> = plan.workers.iter().map(|w| w.ns.clone()).collect();
        planned.extend(extra.iter().map(|(d, c)| format!("{d}.{c}")));
        Completion {
            planned,
            done: std::sync::Mutex::new(BTreeSet::new()),
        }
    }

    /// `e`, with the namespaces that are complete and those that are not (cancellation and
    /// nothing-written errors stay as they are).
    fn fail(&self, e: MongoError) -> MongoError {
        if matches!(e, MongoError::Cancelled) {
            return e;
        }
        let done = self.done.lock().map(|d| d.clone()).unwrap_or_default();
        let (complete, incomplete): (Vec<String>, Vec<String>) =
            self.planned.iter().cloned().partition(|n| done.contains(n));
        MongoError::RestoreIncomplete {
            source: Box::new(e),
            complete,
            incomplete,
        }
    }
}

type OpenInput = Arc<dyn Fn() -> std::io::Result<Box<dyn Read + Send>> + Send + Sync>;

async fn join_blocking<T>(h: tokio::task::JoinHandle<Result<T>>) -> Result<T> {
    match h.await {
        Ok(r) => r,
        Err(e) => Err(MongoError::Internal(format!(
            "archive reader task failed: {e}"
        ))),
    }
}

/// Checks that no selected collection exists (or drops them with `drop`), then creates
/// every selected collection. Nothing is written when a conflict is refused.
async fn prepare_targets(
    client: &mongodb::Client,
    workers: &[WorkerPlan],
    extra: &[(String, String)],
    drop: bool,
) -> Result<()> {
    let mut dbs: BTreeSet<&str> = workers.iter().map(|w| w.db.as_str()).collect();
    dbs.extend(extra.iter().map(|(d, _)| d.as_str()));
    let mut existing: BTreeSet<(String, String)> = BTreeSet::new();
    for db in dbs {
        let names = client
            .database(db)
            .list_collection_names()
            .await
            .map_err(|e| MongoError::from_driver(format!("list collections of {db}"), e))?;
        existing.extend(names.into_iter().map(|n| (db.to_string(), n)));
    }
    // The archive's collections, then those only the oplog writes (created during the backup).
    let conflicts: Vec<(&str, &str)> = workers
        .iter()
        .map(|w| (w.db.as_str(), w.collection.as_str()))
        .chain(extra.iter().map(|(d, c)| (d.as_str(), c.as_str())))
        .filter(|(d, c)| existing.contains(&(d.to_string(), c.to_string())))
        .collect();
    if !conflicts.is_empty() {
        if !drop {
            return Err(MongoError::TargetExists {
                namespaces: conflicts.iter().map(|(d, c)| format!("{d}.{c}")).collect(),
            });
        }
        for (db, coll) in &conflicts {
            info!(namespace = %format!("{db}.{coll}"), "dropping existing collection before restore");
            // FerretDB 1.24 (SQLite) has been seen to keep a dropped collection's SQLite index, so that the
            // restore's createIndexes later fails with "index … already exists"; dropping the indexes through
            // the server first avoids it. Best effort: the drop below is what must succeed.
            let _ = client
                .database(db)
                .run_command(doc! { "dropIndexes": *coll, "index": "*" })
                .await;
            client
                .database(db)
                .collection::<Document>(coll)
                .drop()
                .await
                .map_err(|e| MongoError::from_driver(format!("drop {db}.{coll}"), e))?;
        }
    }
    for w in workers {
        client
            .database(&w.db)
            .run_command(w.create.clone())
            .await
            .map_err(|e| MongoError::from_driver(format!("create collection {}", w.ns), e))?;
    }
    Ok(())
}

/// A batch travelling from the reader to a worker; its slot is freed once inserted.
struct Batch {
    docs: Vec<RawDocumentBuf>,
    bytes: usize,
    _slot: OwnedSemaphorePermit,
}

enum WorkerMsg {
    Batch(Batch),
    /// The namespace's EOF was read and its totals match the verify pass.
    End,
}

/// Why the reader thread stopped early.
enum ReaderStop {
    /// Cancelled, or the workers are gone (their error, if any, is the one reported).
    Aborted,
    Failed(MongoError),
}

impl From<MongoError> for ReaderStop {
    fn from(e: MongoError) -> Self {
        ReaderStop::Failed(e)
    }
}

impl From<ArchiveError> for ReaderStop {
    fn from(e: ArchiveError) -> Self {
        ReaderStop::Failed(e.into())
    }
}

struct WorkerCtx<'a> {
    client: &'a mongodb::Client,
    writes: &'a Semaphore,
    done: &'a AtomicU64,
    docs_total: u64,
    progress: &'a (dyn Fn(RestoreProgress) + Send + Sync),
    /// Set when the reader failed (or on cancellation): workers stop at the next batch.
    abort: &'a CancellationToken,
    /// Namespaces completely restored (`db.collection`), for the error of a failed restore.
    completed: &'a std::sync::Mutex<BTreeSet<String>>,
    /// An oplog replay follows the inserts.
    oplog_pending: bool,
}

// One more argument than clippy likes: the completion record is what a mid-way failure
// reports, and bundling it with unrelated arguments would only hide that.
#[allow(clippy::too_many_arguments)]
async fn apply(
    client: &mongodb::Client,
    open: OpenInput,
    verified: &ArchiveSummary,
    plan: &Plan,
    opts: &RestoreOptions,
    progress: &(dyn Fn(RestoreProgress) + Send + Sync),
    cancel: &CancellationToken,
    completed: &std::sync::Mutex<BTreeSet<String>>,
) -> Result<(Vec<RestoredNamespace>, u64)> {
    let slots = Arc::new(Semaphore::new(
        opts.parallel_collections
            .saturating_mul(opts.channel_batches.saturating_add(1)),
    ));
    let mut senders = Vec::with_capacity(plan.workers.len());
    let mut receivers = Vec::with_capacity(plan.workers.len());
    for _ in &plan.workers {
        let (tx, rx) = mpsc::channel::<WorkerMsg>(opts.channel_batches);
        senders.push(Some(tx));
        receivers.push(rx);
    }
    // Stops the reader on cancellation or when a worker fails.
    let abort = cancel.child_token();
    let reader = ApplyReader {
        routes: plan.routes.clone(),
        expected: verified.namespaces.clone(),
        senders,
        pending: (0..plan.workers.len()).map(|_| None).collect(),
        slots,
        limits: opts.limits(),
        abort: abort.clone(),
        rt: tokio::runtime::Handle::current(),
        oplog_entries: 0,
    };
    let reader = tokio::task::spawn_blocking(move || reader.run(open));

    let writes = Semaphore::new(opts.parallel_collections);
    let done = AtomicU64::new(0);
    let ctx = WorkerCtx {
        client,
        writes: &writes,
        done: &done,
        docs_total: plan.docs_total,
        progress,
        abort: &abort,
        completed,
        oplog_pending: plan.replay,
    };
    // With an oplog to replay, indexes are built after the replay (see the module docs).
    let build_indexes = opts.build_indexes && !plan.replay;
    let workers = futures::future::try_join_all(
        plan.workers
            .iter()
            .zip(receivers)
            .map(|(w, rx)| run_worker(&ctx, w, rx, build_indexes)),
    );
    let workers_result = tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(MongoError::Cancelled),
        r = workers => r,
    };
    // The workers future (and with it every receiver) is gone here; aborting unblocks a
    // reader waiting for a slot. Waiting for the thread means it no longer reads input
    // when we return.
    if workers_result.is_err() {
        abort.cancel();
    }
    let reader_result = match reader.await {
        Ok(r) => r,
        Err(e) => Err(ReaderStop::Failed(MongoError::Internal(format!(
            "archive reader task failed: {e}"
        )))),
    };
    match (workers_result, reader_result) {
        _ if cancel.is_cancelled() => Err(MongoError::Cancelled),
        (Err(e), _) => Err(e),
        (Ok(_), Err(ReaderStop::Failed(e))) => Err(e),
        (Ok(_), Err(ReaderStop::Aborted)) => Err(MongoError::Internal(
            "archive reader stopped without an error".into(),
        )),
        (Ok(results), Ok(oplog_entries)) => {
            let mut restored = Vec::with_capacity(results.len());
            for (w, r) in plan.workers.iter().zip(results) {
                // A worker only ends without `End` when the reader failed (handled above).
                let r = r.ok_or_else(|| {
                    MongoError::Internal(format!("{}: restore worker ended early", w.ns))
                })?;
                restored.push(r);
            }
            Ok((restored, oplog_entries))
        }
    }
}

/// Inserts one collection's batches in order, then builds its indexes. Returns `None`
/// when the reader stopped before the namespace's EOF (the reader's error is reported).
async fn run_worker(
    ctx: &WorkerCtx<'_>,
    w: &WorkerPlan,
    mut rx: mpsc::Receiver<WorkerMsg>,
    build_indexes: bool,
) -> Result<Option<RestoredNamespace>> {
    let coll = ctx
        .client
        .database(&w.db)
        .collection::<RawDocumentBuf>(&w.collection);
    let mut documents = 0u64;
    loop {
        let msg = tokio::select! {
            biased;
            _ = ctx.abort.cancelled() => return Ok(None),
            m = rx.recv() => m,
        };
        match msg {
            None => return Ok(None),
            Some(WorkerMsg::End) => break,
            Some(WorkerMsg::Batch(batch)) => {
                let n = batch.docs.len();
                let _write = ctx
                    .writes
                    .acquire()
                    .await
                    .map_err(|_| MongoError::Internal("write semaphore closed".into()))?;
                // The slot (`batch._slot`) lives until the insert is done: the driver
                // holds copies of the documents until then.
                let Batch {
                    docs, bytes, _slot, ..
                } = batch;
                let result = coll.insert_many(docs).ordered(true).await.map_err(|e| {
                    MongoError::from_driver(
                        format!("insert {n} documents ({bytes} bytes) into {}", w.ns),
                        e,
                    )
                })?;
                if result.inserted_ids.len() != n {
                    return Err(MongoError::Protocol {
                        context: format!("insert into {}", w.ns),
                        detail: format!(
                            "{} of {n} documents acknowledged",
                            result.inserted_ids.len()
                        ),
                    });
                }
                documents += n as u64;
                let total = ctx.done.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
                (ctx.progress)(RestoreProgress {
                    stage: RestoreStage::Inserting,
                    docs_done: total,
                    docs_total: ctx.docs_total,
                    oplog_entries: 0,
                });
            }
        }
    }
    let names = if build_indexes {
        create_indexes_of(ctx.client, ctx.writes, w).await?
    } else {
        Vec::new()
    };
    debug!(namespace = %w.ns, documents, indexes = names.len(), "collection restored");
    // With an oplog to replay, the collection is complete only after the replay.
    if !ctx.oplog_pending {
        if let Ok(mut c) = ctx.completed.lock() {
            c.insert(w.ns.clone());
        }
    }
    Ok(Some(RestoredNamespace {
        db: w.db.clone(),
        collection: w.collection.clone(),
        documents,
        indexes: names,
    }))
}

/// Builds a collection's secondary indexes (one `createIndexes`, under a write permit);
/// returns their names.
async fn create_indexes_of(
    client: &mongodb::Client,
    writes: &Semaphore,
    w: &WorkerPlan,
) -> Result<Vec<String>> {
    create_indexes(client, writes, &w.db, &w.collection, &w.indexes).await
}

/// Builds `specs` on `db.coll` (one `createIndexes`, under a write permit); returns their
/// names.
async fn create_indexes(
    client: &mongodb::Client,
    writes: &Semaphore,
    db_name: &str,
    coll: &str,
    specs: &[Document],
) -> Result<Vec<String>> {
    if specs.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<String> = specs
        .iter()
        .map(|i| i.get_str("name").unwrap_or_default().to_string())
        .collect();
    let _write = writes
        .acquire()
        .await
        .map_err(|_| MongoError::Internal("write semaphore closed".into()))?;
    let db = client.database(db_name);
    let create = || db.run_command(doc! { "createIndexes": coll, "indexes": specs.to_vec() });
    let failed = |e| {
        MongoError::from_driver(
            format!("create indexes {} on {db_name}.{coll}", names.join(", ")),
            e,
        )
    };
    match create().await {
        Ok(_) => {}
        // FerretDB 1.24 (SQLite) now and then still holds an index of the collection that `drop` replaced (its
        // SQLite error "index … already exists"; seen once in ~10 CI runs despite the dropIndexes before the
        // drop). Drop the collection's indexes through the server and ask once more.
        Err(e) if e.to_string().contains("already exists") => {
            warn!(namespace = %format!("{db_name}.{coll}"), error = %e, "createIndexes found a stale index; dropping indexes and retrying");
            let _ = db
                .run_command(doc! { "dropIndexes": coll, "index": "*" })
                .await;
            create().await.map_err(failed)?;
        }
        Err(e) => return Err(failed(e)),
    }
    Ok(names)
}

/// Oplog entries the replay reader hands over at most at once (each ≤ 16 MiB).
const REPLAY_CHANNEL: usize = 64;

/// Where the replayed entries come from: the archive's oplog namespace (its index and the stats the verify pass
/// recorded), then a point-in-time restore's log backup entries.
struct ReplaySources {
    archive_oplog: Option<(usize, NamespaceStats)>,
    extra: Option<ExtraOplog>,
}

/// The replay pass: reads the oplog namespace `ns_index` once more and applies its entries in
/// order, through the same [`Sequencer`] the verify pass checked them with.
async fn replay_oplog(
    applier: &mut Applier<'_>,
    open: OpenInput,
    ReplaySources {
        archive_oplog,
        extra,
    }: ReplaySources,
    scope: Scope,
    path: ApplyPath,
    report_entries: &(dyn Fn(u64) + Send + Sync),
    cancel: &CancellationToken,
) -> Result<SequencerReport> {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(REPLAY_CHANNEL);
    // Stops the reader on cancellation or when the replay fails.
    let abort = cancel.child_token();
    let reader_abort = abort.clone();
    let reader = tokio::task::spawn_blocking(move || -> Result<()> {
        if let Some((ns_index, expected)) = archive_oplog {
            let input = open().map_err(|e| MongoError::io("reopen the backup archive", e))?;
            let mut reader = ArchiveReader::new(input);
            let mut ended = false;
            while let Some(ev) = reader.next_event()? {
                if reader_abort.is_cancelled() {
                    return Ok(());
                }
                match ev {
                    ArchiveEvent::Document { ns_index: i, raw } if i == ns_index => {
                        // A failed send means the replayer stopped; its result says why.
                        let Ok(()) = tx.blocking_send(raw) else {
                            return Ok(());
                        };
                    }
                    ArchiveEvent::NamespaceEnd { ns_index: i } if i == ns_index => {
                        let got = reader.namespace_stats(i).unwrap_or_default();
                        if got != expected {
                            return Err(changed(&format!(
                                "oplog: {} entries with CRC {:#018x} instead of {} with {:#018x}",
                                got.documents, got.crc, expected.documents, expected.crc
                            )));
                        }
                        ended = true;
                        break;
                    }
                    _ => {}
                }
            }
            if !ended {
                return Err(changed("the oplog namespace never ended"));
            }
        }
        // A point-in-time restore continues with the log backup's entries, after the archive's window.
        if let Some(extra) = extra {
            let entries = extra().map_err(|e| MongoError::io("reopen the log backup", e))?;
            for raw in entries {
                if reader_abort.is_cancelled() {
                    return Ok(());
                }
                let raw = raw.map_err(|e| MongoError::io("read the log backup", e))?;
                let Ok(()) = tx.blocking_send(raw) else {
                    return Ok(());
                };
            }
        }
        Ok(())
    });
    let mut seq = Sequencer::new(scope, Mode::Restore(path), true);
    let mut entries = 0u64;
    let applied: Result<()> = async {
        loop {
            let raw = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(MongoError::Cancelled),
                r = rx.recv() => match r {
                    Some(raw) => raw,
                    None => {
                        return tokio::select! {
                            biased;
                            _ = cancel.cancelled() => Err(MongoError::Cancelled),
                            r = applier.flush() => r,
                        };
                    }
                },
            };
            for action in seq.push_bytes(&raw)? {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Err(MongoError::Cancelled),
                    r = applier.apply(action) => r?,
                }
            }
            entries += 1;
            report_entries(entries);
        }
    }
    .await;
    // Dropping the receiver unblocks a reader waiting to send; the abort stops one still
    // reading collections. Waiting for it means no reader thread outlives this call.
    if applied.is_err() {
        abort.cancel();
    }
    drop(rx);
    let read = join_blocking(reader).await;
    if cancel.is_cancelled() {
        return Err(MongoError::Cancelled);
    }
    applied?;
    read?;
    Ok(seq.finish())
}

/// A batch being filled by the reader.
struct Pending {
    docs: Vec<RawDocumentBuf>,
    bytes: usize,
    slot: OwnedSemaphorePermit,
}

/// The apply pass's reader: runs on a blocking thread, routes documents into batches.
struct ApplyReader {
    routes: Vec<Route>,
    /// The verify pass's view of the archive, to detect an input that changed since.
    expected: Vec<(CollectionMetadata, NamespaceStats)>,
    /// By worker; `None` once the namespace's `End` was sent.
    senders: Vec<Option<mpsc::Sender<WorkerMsg>>>,
    /// By worker.
    pending: Vec<Option<Pending>>,
    slots: Arc<Semaphore>,
    limits: BatchLimits,
    abort: CancellationToken,
    rt: tokio::runtime::Handle,
    oplog_entries: u64,
}

impl ApplyReader {
    /// Reads the archive to the end; returns the number of oplog entries seen.
    fn run(mut self, open: OpenInput) -> Result<u64, ReaderStop> {
        let result = self.read_all(open);
        if let Err(ReaderStop::Failed(_)) = &result {
            // Workers stop taking batches: nothing more is written once the archive
            // turned out unusable.
            self.abort.cancel();
        }
        result
    }

    fn read_all(&mut self, open: OpenInput) -> Result<u64, ReaderStop> {
        let input = open().map_err(|e| MongoError::io("reopen the backup archive", e))?;
        let mut reader = ArchiveReader::new(input);
        match reader.next_event()? {
            Some(ArchiveEvent::Prelude { namespaces, .. })
                if namespaces.len() == self.expected.len()
                    && namespaces
                        .iter()
                        .zip(&self.expected)
                        .all(|(a, (b, _))| a == b) => {}
            _ => return Err(changed("the prelude differs").into()),
        }
        while let Some(ev) = reader.next_event()? {
            if self.abort.is_cancelled() {
                return Err(ReaderStop::Aborted);
            }
            match ev {
                ArchiveEvent::Document { ns_index, raw } => match self.route(ns_index)? {
                    Route::Restore(w) => self.add(w, raw)?,
                    Route::Oplog => self.oplog_entries += 1,
                    Route::Skip => {}
                },
                ArchiveEvent::NamespaceEnd { ns_index } => {
                    let got = reader.namespace_stats(ns_index).unwrap_or_default();
                    let (meta, want) = &self.expected[ns_index];
                    if got != *want {
                        return Err(changed(&format!(
                            "{}: {} documents with CRC {:#018x} instead of {} with {:#018x}",
                            meta.namespace(),
                            got.documents,
                            got.crc,
                            want.documents,
                            want.crc
                        ))
                        .into());
                    }
                    if let Route::Restore(w) = self.route(ns_index)? {
                        self.flush(w)?;
                        self.send(w, WorkerMsg::End)?;
                        self.senders[w] = None;
                    }
                }
                ArchiveEvent::Prelude { .. } => {
                    return Err(MongoError::Internal("second prelude event".into()).into())
                }
            }
        }
        Ok(self.oplog_entries)
    }

    fn route(&self, ns_index: usize) -> Result<Route, ReaderStop> {
        self.routes.get(ns_index).copied().ok_or_else(|| {
            ReaderStop::Failed(MongoError::Internal(format!(
                "namespace index {ns_index} out of range"
            )))
        })
    }

    fn add(&mut self, w: usize, raw: Vec<u8>) -> Result<(), ReaderStop> {
        let len = raw.len();
        if let Some(p) = &self.pending[w] {
            if self.limits.overflows(p.docs.len(), p.bytes, len) {
                self.flush(w)?;
            }
        }
        if self.pending[w].is_none() {
            let slot = self.acquire_slot(w)?;
            self.pending[w] = Some(Pending {
                docs: Vec::with_capacity(self.limits.docs.min(1024)),
                bytes: 0,
                slot,
            });
        }
        // The reader checked the framing; this only re-checks length and trailing zero.
        let doc = RawDocumentBuf::from_bytes(raw).map_err(|e| {
            MongoError::Internal(format!("document that passed the archive reader: {e}"))
        })?;
        let full = match &mut self.pending[w] {
            Some(p) => {
                p.docs.push(doc);
                p.bytes += len;
                self.limits.is_full(p.docs.len(), p.bytes)
            }
            None => false,
        };
        if full {
            self.flush(w)?;
        }
        Ok(())
    }

    /// A free batch slot. When there is none, the partial batches of the other
    /// namespaces go out first: they may be what holds the slots, and their data may sit
    /// behind ours in the archive, so waiting without sending them could deadlock.
    fn acquire_slot(&mut self, w: usize) -> Result<OwnedSemaphorePermit, ReaderStop> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(p);
        }
        for other in 0..self.pending.len() {
            if other != w && self.pending[other].is_some() {
                self.flush(other)?;
            }
        }
        let slots = self.slots.clone();
        let abort = self.abort.clone();
        self.rt.block_on(async move {
            tokio::select! {
                biased;
                _ = abort.cancelled() => Err(ReaderStop::Aborted),
                p = slots.acquire_owned() => p.map_err(|_| ReaderStop::Aborted),
            }
        })
    }

    fn flush(&mut self, w: usize) -> Result<(), ReaderStop> {
        if let Some(p) = self.pending[w].take() {
            self.send(
                w,
                WorkerMsg::Batch(Batch {
                    docs: p.docs,
                    bytes: p.bytes,
                    _slot: p.slot,
                }),
            )?;
        }
        Ok(())
    }

    fn send(&self, w: usize, msg: WorkerMsg) -> Result<(), ReaderStop> {
        let Some(tx) = self.senders.get(w).and_then(Option::as_ref) else {
            return Err(MongoError::Internal("data after a namespace was closed".into()).into());
        };
        let abort = &self.abort;
        self.rt.block_on(async move {
            tokio::select! {
                biased;
                _ = abort.cancelled() => Err(ReaderStop::Aborted),
                r = tx.send(msg) => r.map_err(|_| ReaderStop::Aborted),
            }
        })
    }
}

fn changed(detail: &str) -> MongoError {
    MongoError::InvalidArgument(format!(
        "the backup archive changed between the verify pass and the restore ({detail}); \
         open_input must return the same bytes every time"
    ))
}

mod read_ahead;

#[cfg(test)]
mod tests;
