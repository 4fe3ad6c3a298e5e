//! Logical backup: stream every document of the selected databases into one
//! `mongodump --archive` compatible archive.
//!
//! # Pipeline
//!
//! ```text
//!  find (raw BSON, explicit batchSize) ─┐  up to `parallel_collections` collections at a time,
//!  find ───────────────────────────────┤  each packing documents into segments ≤ segment_bytes
//!  find ───────────────────────────────┘
//!        │ bounded mpsc (channel_segments)
//!        ▼
//!  one blocking writer thread: ArchiveWriter → BufWriter → Compression → HashingWriter → out
//! ```
//!
//! 1. **Plan**: for each database, `listCollections` (skipping `system.*` except
//!    `system.js`), `listIndexes`, and the collection UUID (`info.uuid`, as 32 hex chars)
//!    give the `metadata.json` text mongodump would write (canonical Extended JSON, keys
//!    `options`, `indexes`, `uuid`, `collectionName`, `type`). `estimatedDocumentCount`
//!    gives the progress total.
//! 2. **Prelude**: the writer thread writes the header and one prelude entry per namespace.
//! 3. **Data**: collections are dumped `parallel_collections` at a time, largest first. Each
//!    reads raw documents (`RawDocumentBuf` cursor, never decoded), packs them into segments
//!    of at most `segment_bytes` (a single larger document makes a segment of its own), and
//!    sends each segment through the bounded channel. The namespace is closed (EOF + CRC)
//!    once its cursor is exhausted; views get an empty namespace.
//! 4. **Finish**: the writer checks every namespace was closed, ends the compressed
//!    stream and reports the byte count and SHA-256 of what went to `out`.
//!
//! # Memory bound
//!
//! With `P = parallel_collections`, `S = segment_bytes`, `C = channel_segments` and
//! `B` = one server batch (`batch_size` documents, at most ≈16 MiB per reply):
//!
//! ```text
//! peak ≈ P × (S + B)        one segment being filled + one driver batch per collection task
//!      + (C + 1) × S        segments queued in the channel + the one being written
//!      + 256 KiB            write buffer in front of the compressor
//!      + compressor state   zstd: a few MiB at low levels (window 2^(level-dependent) up to 8 MiB
//!                           at level ≤ 19); gzip: ~300 KiB
//! ```
//!
//! A document larger than `S` raises `S` to that document's size (≤ 16 MiB) for its
//! segment. Defaults (P=4, S=1 MiB, B≈1000 docs, C=8) stay in the tens of MiB whatever the
//! data size: no collection is ever held in memory.
//!
//! # Oplog
//!
//! On a replica set with `local.oplog.rs`, the dump captures the oplog like
//! `mongodump --oplog` (see [`crate::oplog`] for the algorithm, the decisions and the exact
//! consistency guarantee): `oplogStart` is read before the first collection, the window
//! `oplogStart..=oplogEnd` is read after the last one and written, in natural order,
//! into the namespace `db: ""`, `collection: "oplog"` ([`CollectionMetadata::oplog`],
//! last in the prelude) through the same channel. [`DumpSummary::oplog`] reports it.

use std::sync::atomic::{AtomicU64, Ordering};

use bson::{doc, Bson, Document, RawDocumentBuf};
use futures::{StreamExt, TryStreamExt};
use mongodb::Client;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::archive::{
    ArchiveHeader, ArchiveWriter, CollectionMetadata, Compression, HashingWriter, NamespaceStats,
    MAX_BSON_SIZE,
};
use crate::checksum::DocSetChecksum;
use crate::error::cancellable;
use crate::error::{MongoError, Result};
use crate::oplog::{self, OplogSummary};
use crate::topology;

/// Tool name written into the archive header (`tool_version`).
pub const TOOL_VERSION: &str = concat!("ddsvault-mongo ", env!("CARGO_PKG_VERSION"));

/// Options of [`logical_dump`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpOptions {
    /// Compression of the whole archive stream.
    pub compression: Compression,
    /// Collections dumped concurrently (default 4; also the archive's `concurrent_collections`).
    pub parallel_collections: usize,
    /// Maximum bytes of documents per archive segment (default 1 MiB, at most 16 MiB).
    pub segment_bytes: usize,
    /// `batchSize` of every `find`/`getMore` (default 1000).
    pub batch_size: u32,
    /// Segments that may wait for the writer (default 8).
    pub channel_segments: usize,
}

impl Default for DumpOptions {
    fn default() -> Self {
        DumpOptions {
            compression: Compression::None,
            parallel_collections: 4,
            segment_bytes: 1024 * 1024,
            batch_size: 1000,
            channel_segments: 8,
        }
    }
}

impl DumpOptions {
    fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(MongoError::InvalidArgument(what.to_string()));
        if self.parallel_collections == 0 {
            return bad("parallel_collections must be at least 1");
        }
        if self.segment_bytes == 0 || self.segment_bytes > MAX_BSON_SIZE {
            return bad("segment_bytes must be between 1 and 16 MiB");
        }
        if self.batch_size == 0 || self.batch_size > i32::MAX as u32 {
            return bad("batch_size must be between 1 and 2^31-1");
        }
        if self.channel_segments == 0 {
            return bad("channel_segments must be at least 1");
        }
        if let Compression::Zstd { level } = self.compression {
            if !(1..=22).contains(&level) {
                return bad("zstd level must be between 1 and 22");
            }
        }
        Ok(())
    }
}

/// Progress report passed to the callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DumpProgress {
    /// Documents handed to the archive writer so far.
    pub docs_done: u64,
    /// Sum of the planned collections' document counts (may be exceeded); 0 when some collections were not
    /// counted (a FerretDB database with many collections, see [`COUNT_MAX_COLLECTIONS`]).
    pub docs_total_estimate: u64,
    /// Namespaces written completely so far: the measure of progress when `docs_total_estimate` is 0.
    pub namespaces_done: u64,
    /// Namespaces planned (the oplog excluded).
    pub namespaces_total: u64,
    /// Bytes of the documents handed to the archive writer so far (the oplog excluded).
    pub raw_bytes_done: u64,
    /// Whether the collections are done and the oplog window is being copied.
    pub capturing_oplog: bool,
    /// Oplog entries copied so far.
    pub oplog_entries: u64,
}

/// Totals of one namespace of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceSummary {
    /// Database.
    pub db: String,
    /// Collection.
    pub collection: String,
    /// Documents written.
    pub documents: u64,
    /// Sum of the documents' BSON sizes.
    pub raw_bytes: u64,
    /// CRC-64/XZ of the namespace's document bytes (the archive's EOF CRC as `u64`).
    pub crc: u64,
    /// Order-independent checksum of the documents ([`crate::checksum`]), what a restore drill compares.
    pub checksum: DocSetChecksum,
}

/// Result of a successful [`logical_dump`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpSummary {
    /// Databases dumped, sorted.
    pub databases: Vec<String>,
    /// One entry per namespace, in prelude order.
    pub namespaces: Vec<NamespaceSummary>,
    /// Total documents.
    pub documents: u64,
    /// Total BSON bytes of the documents.
    pub raw_bytes: u64,
    /// Bytes written to `out` (after compression).
    pub archive_bytes: u64,
    /// Lowercase hex SHA-256 of the bytes written to `out`.
    pub archive_sha256: String,
    /// The oplog window captured (replica sets with `local.oplog.rs`); `None` for a plain
    /// dump. Not counted in `namespaces`, `documents` or `raw_bytes`.
    pub oplog: Option<OplogSummary>,
}

/// Where a namespace's documents come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// A regular collection, read with `find`.
    Collection,
    /// A view: metadata only, the namespace is opened and closed with no data
    /// (mongorestore needs the empty namespace to create the view).
    View,
    // The oplog is not planned like a collection: `dump_oplog` writes it last.
}

#[derive(Debug, Clone)]
struct NamespacePlan {
    meta: CollectionMetadata,
    source: Source,
    /// Document count; `None` when not asked (see [`COUNT_MAX_COLLECTIONS`]).
    estimate: Option<u64>,
    /// Documents asked per `find`/`getMore` reply for this collection; `None`: sized from a first sample of its
    /// documents when the dump reaches it.
    batch_size: Option<u32>,
}

/// On FerretDB, a database with more collections than this is dumped without asking each collection's size.
///
/// The size only serves the progress figure, the largest-first order and the reply size, and FerretDB 1.24 has no
/// cheap way to give it: `$collStats` costs about as much as reading a small collection outright (1.1 s for 1,000
/// collections of 50 documents, against 1.4 s to read them all), `count` as much again, `dbStats` 16 s. So a
/// collection of such a database is first read with a `limit` of [`SAMPLE_DOCS`]: a small collection (the usual
/// reason for having thousands) is then complete in that one reply, and a larger one gets its batch size from the
/// largest sampled document before it is read in full. Progress is then counted in collections.
pub const COUNT_MAX_COLLECTIONS: usize = 64;

/// Documents read first from a collection whose size was not asked: the first batch every MongoDB driver and
/// tool asks for (101), so the reply is no larger than theirs. If it still fails (documents so large that 101 of
/// them exceed the 48 MB message limit), the collection falls back to asking its size.
const SAMPLE_DOCS: u32 = 101;

/// Bytes aimed at per server reply. mongod caps a reply at 16 MiB whatever `batchSize` says; FerretDB 1.24
/// does not, and a reply over the driver's 48 MB message limit fails the dump. So on FerretDB the batch size
/// comes from the collection's average document size. A collection whose sizes vary wildly can still exceed
/// the target; 4 MiB leaves a 12× margin before the 48 MB limit.
const FIND_REPLY_TARGET_BYTES: u64 = 4 * 1024 * 1024;

fn batch_size_for(max: u32, avg_obj_size: u64) -> u32 {
    if avg_obj_size == 0 {
        return max;
    }
    let fit = (FIND_REPLY_TARGET_BYTES / avg_obj_size).max(1);
    u32::try_from(fit).unwrap_or(u32::MAX).min(max)
}

enum WriterMsg {
    Segment { ns: usize, docs: Vec<u8> },
    Close { ns: usize },
}

struct WriterOutcome {
    stats: Vec<NamespaceStats>,
    archive_bytes: u64,
    archive_sha256: String,
}

/// Dumps `databases` (all user databases if empty) into `out` as a mongodump archive.
///
/// `progress` is called from the dump's async tasks after every segment and once at the
/// end, so it must be cheap and must not block. `cancel` stops the dump promptly; the
/// output is then incomplete and must be discarded. When this function returns (with any
/// result) nothing writes to `out` any more.
///
/// An empty `databases` means every user database (`admin`, `local`, `config` excluded).
///
/// # Errors
/// [`MongoError::Cancelled`] when cancelled; server errors wrapped with the namespace;
/// [`MongoError::Unsupported`] for timeseries collections; output/compression errors as
/// [`MongoError::Io`] or [`MongoError::Archive`]; [`MongoError::OplogUnusable`] /
/// [`MongoError::OplogOverflow`] when the oplog cannot give a consistent window.
pub async fn logical_dump(
    client: &Client,
    databases: &[String],
    opts: &DumpOptions,
    out: Box<dyn std::io::Write + Send>,
    progress: &(dyn Fn(DumpProgress) + Send + Sync),
    cancel: &CancellationToken,
) -> Result<DumpSummary> {
    opts.validate()?;
    dump_inner(client, databases, opts, out, progress, cancel).await
}

/// The dump in named steps: choose and plan, start the archive writer, dump every namespace (then the oplog
/// window) through it, wait for the writer, summarize. Whatever happens, the writer has stopped (nothing touches
/// `out` any more) when this returns.
async fn dump_inner(
    client: &Client,
    databases: &[String],
    opts: &DumpOptions,
    out: Box<dyn std::io::Write + Send>,
    progress: &(dyn Fn(DumpProgress) + Send + Sync),
    cancel: &CancellationToken,
) -> Result<DumpSummary> {
    let databases = databases_to_dump(client, databases, cancel).await?;
    let DumpPlan {
        server,
        plans,
        with_oplog,
        total_estimate,
    } = plan_dump(client, &databases, opts, cancel).await?;
    let namespaces_total = plans.len() as u64;
    progress(DumpProgress {
        docs_done: 0,
        docs_total_estimate: total_estimate,
        namespaces_done: 0,
        namespaces_total,
        raw_bytes_done: 0,
        capturing_oplog: false,
        oplog_entries: 0,
    });

    let mut metas: Vec<CollectionMetadata> = plans.iter().map(|p| p.meta.clone()).collect();
    let oplog_ns = plans.len();
    let oplog_start = open_oplog_window(client, with_oplog, &mut metas, cancel).await?;
    let (tx, rx) = mpsc::channel::<WriterMsg>(opts.channel_segments);
    // Stops the writer on cancellation, or when a collection task fails.
    let writer_cancel = cancel.child_token();
    let abort_writer = writer_cancel.clone();
    let writer = spawn_writer(rx, out, opts, server, metas, writer_cancel);

    let done = AtomicU64::new(0);
    let namespaces_done = AtomicU64::new(0);
    let raw_done = AtomicU64::new(0);
    let oplog_done = AtomicU64::new(0);
    // One slot per namespace (the oplog's included), each written once by the task that closes it.
    let checksums: Vec<std::sync::Mutex<DocSetChecksum>> = (0..=plans.len())
        .map(|_| std::sync::Mutex::new(DocSetChecksum::new()))
        .collect();
    let ctx = TaskCtx {
        checksums: &checksums,
        client,
        opts,
        tx: &tx,
        done: &done,
        namespaces_done: &namespaces_done,
        raw_done: &raw_done,
        oplog_done: &oplog_done,
        total_estimate,
        namespaces_total,
        progress,
    };
    let dump_result =
        dump_collections_then_oplog(&ctx, &plans, oplog_start, &databases, cancel).await;
    // Closing the channel ends the writer; waiting for it guarantees nothing touches
    // `out` after we return, even when cancelled or failed.
    if dump_result.is_err() {
        abort_writer.cancel();
    }
    drop(tx);
    let (outcome, oplog_end) = wait_for_writer(writer, dump_result, cancel).await?;

    let namespaces = namespace_summaries(&plans, &outcome, &checksums);
    let oplog = match (oplog_start, oplog_end) {
        (Some(start_ts), Some(end_ts)) => Some(OplogSummary {
            start_ts,
            end_ts,
            entries: outcome
                .stats
                .get(oplog_ns)
                .map_or(0, |s: &NamespaceStats| s.documents),
        }),
        _ => None,
    };
    let documents = namespaces.iter().map(|n| n.documents).sum();
    let raw_bytes = namespaces.iter().map(|n| n.raw_bytes).sum();
    progress(DumpProgress {
        docs_done: documents,
        docs_total_estimate: total_estimate,
        namespaces_done: namespaces_total,
        namespaces_total,
        raw_bytes_done: raw_bytes,
        capturing_oplog: false,
        oplog_entries: oplog.as_ref().map_or(0, |o| o.entries),
    });
    info!(
        documents,
        raw_bytes,
        archive_bytes = outcome.archive_bytes,
        "logical dump finished"
    );
    Ok(DumpSummary {
        databases,
        namespaces,
        documents,
        raw_bytes,
        archive_bytes: outcome.archive_bytes,
        archive_sha256: outcome.archive_sha256,
        oplog,
    })
}

/// The databases asked for (every user database when none is), sorted, each once, their names checked.
async fn databases_to_dump(
    client: &Client,
    databases: &[String],
    cancel: &CancellationToken,
) -> Result<Vec<String>> {
    let mut databases: Vec<String> = if databases.is_empty() {
        cancellable(cancel, topology::list_user_databases(client)).await?
    } else {
        databases.to_vec()
    };
    databases.sort();
    databases.dedup();
    if let Some(bad) = databases
        .iter()
        .find(|d| d.is_empty() || d.contains(['.', '/', '\0']))
    {
        return Err(MongoError::InvalidArgument(format!(
            "invalid database name {bad:?}"
        )));
    }
    Ok(databases)
}

/// What [`plan_dump`] found.
struct DumpPlan {
    server: ServerInfo,
    /// Every namespace of the databases, database by database.
    plans: Vec<NamespacePlan>,
    /// Whether the oplog is captured (a replica set with `local.oplog.rs`).
    with_oplog: bool,
    /// The documents expected, for the progress figure (0 when unknown).
    total_estimate: u64,
}

/// Asks the server what it is, plans every namespace of `databases` and whether the oplog can be captured.
async fn plan_dump(
    client: &Client,
    databases: &[String],
    opts: &DumpOptions,
    cancel: &CancellationToken,
) -> Result<DumpPlan> {
    let server = cancellable(cancel, async { Ok(server_info(client).await) }).await?;
    let mut plans = Vec::new();
    for db in databases {
        plans.extend(
            cancellable(
                cancel,
                plan_database(client, db, server.is_ferretdb, opts.batch_size),
            )
            .await?,
        );
    }
    let with_oplog = cancellable(cancel, oplog::capture_enabled(client)).await?;
    let total_estimate: u64 = plans
        .iter()
        .map(|p| p.estimate)
        .sum::<Option<u64>>()
        .unwrap_or(0);
    info!(
        databases = databases.len(),
        namespaces = plans.len(),
        docs_estimate = total_estimate,
        oplog = with_oplog,
        "logical dump planned"
    );
    if !with_oplog {
        info!("no oplog to capture (not a replica set, or no local.oplog.rs): plain dump without a consistency point");
    }
    Ok(DumpPlan {
        server,
        plans,
        with_oplog,
        total_estimate,
    })
}

/// With the oplog captured: adds its namespace last to the prelude and reads `oplogStart`, before the writer starts
/// and before any collection is read.
async fn open_oplog_window(
    client: &Client,
    with_oplog: bool,
    metas: &mut Vec<CollectionMetadata>,
    cancel: &CancellationToken,
) -> Result<Option<bson::Timestamp>> {
    Ok(if with_oplog {
        metas.push(CollectionMetadata::oplog());
        let start = cancellable(cancel, oplog::start_ts(client)).await?;
        info!(oplog_start = %oplog::fmt_ts(start), "oplog window starts");
        Some(start)
    } else {
        None
    })
}

/// Starts the blocking archive writer thread on the prelude of `metas`.
fn spawn_writer(
    rx: mpsc::Receiver<WriterMsg>,
    out: Box<dyn std::io::Write + Send>,
    opts: &DumpOptions,
    server: ServerInfo,
    metas: Vec<CollectionMetadata>,
    writer_cancel: CancellationToken,
) -> tokio::task::JoinHandle<Result<WriterOutcome>> {
    let header = ArchiveHeader::new(
        i32::try_from(opts.parallel_collections).unwrap_or(i32::MAX),
        server.archive_version,
        TOOL_VERSION,
    );
    let compression = opts.compression;
    tokio::task::spawn_blocking(move || {
        run_writer(rx, out, compression, header, metas, writer_cancel)
    })
}

/// Dumps every planned namespace, `parallel_collections` at a time, then the oplog window (when `oplog_start` is
/// set) into the namespace after the last one; returns `oplogEnd`. Stops at once on `cancel`.
async fn dump_collections_then_oplog(
    ctx: &TaskCtx<'_>,
    plans: &[NamespacePlan],
    oplog_start: Option<bson::Timestamp>,
    databases: &[String],
    cancel: &CancellationToken,
) -> Result<Option<bson::Timestamp>, TaskError> {
    let oplog_ns = plans.len();
    // Largest collections first: the long tail then runs in parallel with the big ones.
    let mut order: Vec<usize> = (0..plans.len()).collect();
    order.sort_by(|&a, &b| plans[b].estimate.cmp(&plans[a].estimate).then(a.cmp(&b)));
    let dump_all = async {
        futures::stream::iter(order.into_iter().map(Ok))
            .try_for_each_concurrent(ctx.opts.parallel_collections, |i| {
                dump_namespace(ctx, i, &plans[i])
            })
            .await?;
        match oplog_start {
            Some(start) => dump_oplog(ctx, oplog_ns, start, databases).await.map(Some),
            None => Ok(None),
        }
    };
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(TaskError::Mongo(MongoError::Cancelled)),
        r = dump_all => r,
    }
}

/// Waits for the writer to end and decides the dump's result from both sides: on failure, the error that caused
/// it (cancellation first, then the writer's own error, then the task's).
async fn wait_for_writer(
    writer: tokio::task::JoinHandle<Result<WriterOutcome>>,
    dump_result: Result<Option<bson::Timestamp>, TaskError>,
    cancel: &CancellationToken,
) -> Result<(WriterOutcome, Option<bson::Timestamp>)> {
    let writer_result = match writer.await {
        Ok(r) => r,
        Err(e) => Err(MongoError::Internal(format!(
            "archive writer task failed: {e}"
        ))),
    };
    match (dump_result, writer_result) {
        (Ok(end), Ok(o)) => Ok((o, end)),
        _ if cancel.is_cancelled() => Err(MongoError::Cancelled),
        // The writer stopping makes the senders fail; its own error is the cause.
        (Err(TaskError::WriterGone) | Ok(_), Err(w)) => Err(w),
        (Err(TaskError::Mongo(e)), _) => Err(e),
        (Err(TaskError::WriterGone), Ok(_)) => Err(MongoError::Internal(
            "archive writer stopped without an error".into(),
        )),
    }
}

/// One summary per planned namespace: the writer's counts and CRC, the task's document checksum.
fn namespace_summaries(
    plans: &[NamespacePlan],
    outcome: &WriterOutcome,
    checksums: &[std::sync::Mutex<DocSetChecksum>],
) -> Vec<NamespaceSummary> {
    plans
        .iter()
        .zip(&outcome.stats)
        .zip(checksums)
        .map(|((p, s), c)| NamespaceSummary {
            db: p.meta.db.clone(),
            collection: p.meta.collection.clone(),
            documents: s.documents,
            raw_bytes: s.bytes,
            crc: s.crc,
            checksum: c.lock().map(|c| *c).unwrap_or_default(),
        })
        .collect()
}

/// After the collections: reads `oplogEnd`, checks for overflow, writes the window into
/// namespace `ns` and checks again. Returns `oplogEnd`.
///
/// Every entry of the dumped databases goes through the restore's checks
/// ([`oplog::Sequencer`] in backup mode) as it is written: an entry a restore could not
/// apply (unknown kind, malformed diff, a rename during the dump, a transaction whose start
/// precedes the window) fails the backup now, naming the entry, instead of a later restore.
async fn dump_oplog(
    ctx: &TaskCtx<'_>,
    ns: usize,
    start: bson::Timestamp,
    databases: &[String],
) -> Result<bson::Timestamp, TaskError> {
    let end = oplog::newest_ts(ctx.client).await?;
    oplog::check_no_overflow(ctx.client, start).await?;
    let mut cursor = oplog::window_cursor(ctx.client, start, end, ctx.opts.batch_size).await?;
    let mut check = oplog::Sequencer::new(
        oplog::Scope::databases(databases.iter().map(String::as_str)),
        oplog::Mode::Backup,
        false,
    );
    // Oplog entries are not documents of the backup: they stay out of the progress figures.
    let mut out = Segmenter::new(ctx, ns, false);
    while cursor
        .advance()
        .await
        .map_err(|e| MongoError::from_driver("read cursor of local.oplog.rs", e))?
    {
        check.push(cursor.current())?;
        out.push(cursor.current().as_bytes()).await?;
    }
    for w in check.finish().warnings {
        info!("{w}");
    }
    // Entries evicted while we read would be missing from the window.
    oplog::check_no_overflow(ctx.client, start).await?;
    let entries = out.close().await?;
    info!(
        oplog_start = %oplog::fmt_ts(start),
        oplog_end = %oplog::fmt_ts(end),
        entries,
        "oplog window captured"
    );
    Ok(end)
}

/// Why a collection task stopped.
enum TaskError {
    Mongo(MongoError),
    /// A send failed because the writer thread is gone (its result says why).
    WriterGone,
}

impl From<MongoError> for TaskError {
    fn from(e: MongoError) -> Self {
        TaskError::Mongo(e)
    }
}

struct TaskCtx<'a> {
    client: &'a Client,
    /// Each namespace's document checksum, set when it closes.
    checksums: &'a [std::sync::Mutex<DocSetChecksum>],
    opts: &'a DumpOptions,
    tx: &'a mpsc::Sender<WriterMsg>,
    done: &'a AtomicU64,
    namespaces_done: &'a AtomicU64,
    raw_done: &'a AtomicU64,
    oplog_done: &'a AtomicU64,
    total_estimate: u64,
    namespaces_total: u64,
    progress: &'a (dyn Fn(DumpProgress) + Send + Sync),
}

impl TaskCtx<'_> {
    async fn send(&self, msg: WriterMsg) -> Result<(), TaskError> {
        self.tx.send(msg).await.map_err(|_| TaskError::WriterGone)
    }

    /// Reports `docs` more documents (`bytes` of them) written, and `namespace_closed` when a namespace just ended.
    fn report(&self, docs: u64, bytes: u64, namespace_closed: bool) {
        let done = self.done.fetch_add(docs, Ordering::Relaxed) + docs;
        let raw = self.raw_done.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let closed = u64::from(namespace_closed);
        let namespaces_done = self.namespaces_done.fetch_add(closed, Ordering::Relaxed) + closed;
        (self.progress)(DumpProgress {
            docs_done: done,
            docs_total_estimate: self.total_estimate,
            namespaces_done,
            namespaces_total: self.namespaces_total,
            raw_bytes_done: raw,
            capturing_oplog: false,
            oplog_entries: self.oplog_done.load(Ordering::Relaxed),
        });
    }

    /// Reports `entries` more oplog entries copied: the oplog phase moves the progress too.
    fn report_oplog(&self, entries: u64) {
        let oplog_entries = self.oplog_done.fetch_add(entries, Ordering::Relaxed) + entries;
        (self.progress)(DumpProgress {
            docs_done: self.done.load(Ordering::Relaxed),
            docs_total_estimate: self.total_estimate,
            namespaces_done: self.namespaces_done.load(Ordering::Relaxed),
            namespaces_total: self.namespaces_total,
            raw_bytes_done: self.raw_done.load(Ordering::Relaxed),
            capturing_oplog: true,
            oplog_entries,
        });
    }
}

/// Packs one namespace's documents into archive segments of at most `segment_bytes` (a larger document gets a
/// segment of its own).
struct Segmenter<'c, 'a> {
    ctx: &'c TaskCtx<'a>,
    ns: usize,
    buf: Vec<u8>,
    buf_docs: u64,
    total_docs: u64,
    /// Computed here, in the collection's own task, so the single archive writer thread does no extra work.
    checksum: DocSetChecksum,
    /// Whether the documents and the close count in the progress figures.
    counted: bool,
}

impl<'c, 'a> Segmenter<'c, 'a> {
    fn new(ctx: &'c TaskCtx<'a>, ns: usize, counted: bool) -> Self {
        Self {
            ctx,
            ns,
            buf: Vec::new(),
            buf_docs: 0,
            total_docs: 0,
            checksum: DocSetChecksum::new(),
            counted,
        }
    }

    fn report(&mut self, bytes: usize, closed: bool) {
        let docs = std::mem::take(&mut self.buf_docs);
        if self.counted {
            self.ctx.report(docs, bytes as u64, closed);
        } else {
            self.ctx.report_oplog(docs);
        }
    }

    async fn push(&mut self, doc: &[u8]) -> Result<(), TaskError> {
        let seg_max = self.ctx.opts.segment_bytes;
        if !self.buf.is_empty() && self.buf.len() + doc.len() > seg_max {
            let docs = std::mem::replace(&mut self.buf, Vec::with_capacity(seg_max));
            let bytes = docs.len();
            self.ctx
                .send(WriterMsg::Segment { ns: self.ns, docs })
                .await?;
            self.report(bytes, false);
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve(seg_max.max(doc.len()));
        }
        self.buf.extend_from_slice(doc);
        if self.counted {
            self.checksum.add(doc);
        }
        self.buf_docs += 1;
        self.total_docs += 1;
        Ok(())
    }

    /// Sends what is buffered and closes the namespace; returns its document count.
    async fn close(mut self) -> Result<u64, TaskError> {
        let mut bytes = 0;
        if !self.buf.is_empty() {
            let docs = std::mem::take(&mut self.buf);
            bytes = docs.len();
            self.ctx
                .send(WriterMsg::Segment { ns: self.ns, docs })
                .await?;
        }
        self.ctx.send(WriterMsg::Close { ns: self.ns }).await?;
        if let Some(Ok(mut slot)) = self.ctx.checksums.get(self.ns).map(|m| m.lock()) {
            *slot = self.checksum;
        }
        self.report(bytes, true);
        Ok(self.total_docs)
    }
}

async fn dump_namespace(
    ctx: &TaskCtx<'_>,
    ns: usize,
    plan: &NamespacePlan,
) -> Result<(), TaskError> {
    let name = plan.meta.namespace();
    let mut out = Segmenter::new(ctx, ns, true);
    if plan.source == Source::Collection {
        let coll = ctx
            .client
            .database(&plan.meta.db)
            .collection::<RawDocumentBuf>(&plan.meta.collection);
        let read_err = |e| MongoError::from_driver(format!("read cursor of {name}"), e);
        let batch_size = match plan.batch_size {
            Some(b) => Some(b),
            None => match sample(&coll).await {
                Ok(docs) if docs.len() < SAMPLE_DOCS as usize => {
                    // The whole collection came in the sample.
                    for d in &docs {
                        out.push(d.as_bytes()).await?;
                    }
                    None
                }
                Ok(docs) => {
                    let largest = docs.iter().map(|d| d.as_bytes().len()).max().unwrap_or(0);
                    Some(batch_size_for(ctx.opts.batch_size, largest as u64))
                }
                Err(e) => {
                    warn!(namespace = %name, error = %e, "first sample failed; asking the collection's size");
                    let db = ctx.client.database(&plan.meta.db);
                    let size = estimate_documents(&db, &plan.meta.collection, true).await;
                    Some(batch_size_for(ctx.opts.batch_size, size.avg_obj_size))
                }
            },
        };
        if let Some(batch_size) = batch_size {
            let mut cursor = coll
                .find(doc! {})
                .batch_size(batch_size)
                .await
                .map_err(|e| MongoError::from_driver(format!("run find on {name}"), e))?;
            while cursor.advance().await.map_err(read_err)? {
                out.push(cursor.current().as_bytes()).await?;
            }
        }
    }
    let documents = out.close().await?;
    debug!(namespace = %name, documents, "namespace dumped");
    Ok(())
}

/// The first [`SAMPLE_DOCS`] documents of a collection, in one reply.
async fn sample(
    coll: &mongodb::Collection<RawDocumentBuf>,
) -> mongodb::error::Result<Vec<RawDocumentBuf>> {
    let mut cursor = coll
        .find(doc! {})
        .limit(i64::from(SAMPLE_DOCS))
        .batch_size(SAMPLE_DOCS)
        .await?;
    let mut docs = Vec::new();
    while cursor.advance().await? {
        docs.push(cursor.current().to_raw_document_buf());
    }
    Ok(docs)
}

fn run_writer(
    mut rx: mpsc::Receiver<WriterMsg>,
    out: Box<dyn std::io::Write + Send>,
    compression: Compression,
    header: ArchiveHeader,
    metas: Vec<CollectionMetadata>,
    cancel: CancellationToken,
) -> Result<WriterOutcome> {
    let hashing = HashingWriter::new(out);
    let compressed = compression
        .wrap_writer(hashing)
        .map_err(|e| MongoError::io("start compressor", e))?;
    let buffered = std::io::BufWriter::with_capacity(256 * 1024, compressed);
    let mut w = ArchiveWriter::new(buffered, &header)?;
    for m in metas {
        w.add_namespace(m)?;
    }
    w.finish_prelude()?;
    let mut stats = vec![NamespaceStats::default(); w.namespaces().count()];
    while let Some(msg) = rx.blocking_recv() {
        if cancel.is_cancelled() {
            return Err(MongoError::Cancelled);
        }
        match msg {
            WriterMsg::Segment { ns, docs } => w.write_segment(ns, &docs)?,
            WriterMsg::Close { ns } => {
                let s = w.close_namespace(ns)?;
                if let Some(slot) = stats.get_mut(ns) {
                    *slot = s;
                }
            }
        }
    }
    let buffered = w.finish()?;
    let compressed = buffered
        .into_inner()
        .map_err(|e| MongoError::io("flush archive buffer", e.into_error()))?;
    let hashing = compressed
        .finish()
        .map_err(|e| MongoError::io("finish compressed stream", e))?;
    let (mut out, archive_bytes, archive_sha256) = hashing.into_parts();
    out.flush()
        .map_err(|e| MongoError::io("flush archive output", e))?;
    Ok(WriterOutcome {
        stats,
        archive_bytes,
        archive_sha256,
    })
}

/// What the dump needs to know about the server (from `buildInfo`, best effort).
struct ServerInfo {
    /// Version for the archive header, always `major.minor.patch[-suffix]`.
    archive_version: String,
    /// FerretDB answers `count` by reading every document; its `collStats` is cheap.
    is_ferretdb: bool,
}

/// The server version for the archive header. mongorestore ≥ 100.10 parses it with
/// `db.StrToVersion` (`major.minor.patch`, build suffix after `-`/`+` ignored) and refuses
/// the archive if that fails, so anything unparseable becomes `0.0.0`.
async fn server_info(client: &Client) -> ServerInfo {
    let reply = client
        .database("admin")
        .run_command(doc! { "buildInfo": 1 })
        .await
        .ok();
    let reported = reply
        .as_ref()
        .and_then(|d| d.get_str("version").ok().map(str::to_string));
    ServerInfo {
        archive_version: archive_server_version(reported.as_deref()),
        is_ferretdb: reply.is_some_and(|d| d.contains_key("ferretdbVersion")),
    }
}

fn archive_server_version(v: Option<&str>) -> String {
    let Some(v) = v else {
        return "0.0.0".to_string();
    };
    let core = v.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.splitn(3, '.').collect();
    let numeric = parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if numeric {
        v.to_string()
    } else {
        "0.0.0".to_string()
    }
}

/// Lists the namespaces of one database with their metadata.
async fn plan_database(
    client: &Client,
    db_name: &str,
    is_ferretdb: bool,
    opts_batch_size: u32,
) -> Result<Vec<NamespacePlan>> {
    let db = client.database(db_name);
    let colls: Vec<Document> = db
        .run_cursor_command(doc! { "listCollections": 1 })
        .await
        .map_err(|e| MongoError::from_driver(format!("run listCollections on {db_name}"), e))?
        .try_collect()
        .await
        .map_err(|e| MongoError::from_driver(format!("read listCollections of {db_name}"), e))?;

    // Metadata look-ups are a few round trips per collection; with thousands of small collections they
    // dominate a dump unless several run at once.
    let db = &db;
    let ask_size = !is_ferretdb || colls.len() <= COUNT_MAX_COLLECTIONS;
    if !ask_size {
        info!(database = %db_name, collections = colls.len(),
            "many collections on FerretDB: sizes not asked, each collection sized from a first sample");
    }
    let mut plans: Vec<NamespacePlan> = futures::stream::iter(colls)
        .map(|c| plan_collection(db, db_name, c, is_ferretdb, ask_size, opts_batch_size))
        .buffered(PLAN_CONCURRENCY)
        .try_filter_map(|p| async move { Ok(p) })
        .try_collect()
        .await?;
    plans.sort_by(|a, b| a.meta.collection.cmp(&b.meta.collection));
    Ok(plans)
}

/// Collections whose metadata is looked up at once while planning.
const PLAN_CONCURRENCY: usize = 8;

/// The plan of one `listCollections` entry; `None` for system collections that are not dumped.
async fn plan_collection(
    db: &mongodb::Database,
    db_name: &str,
    c: Document,
    is_ferretdb: bool,
    ask_size: bool,
    opts_batch_size: u32,
) -> Result<Option<NamespacePlan>> {
    let name = c.get_str("name").map_err(|_| MongoError::Protocol {
        context: format!("run listCollections on {db_name}"),
        detail: "entry without a string \"name\"".into(),
    })?;
    if name.starts_with("system.") && name != "system.js" {
        return Ok(None);
    }
    let ns = format!("{db_name}.{name}");
    let ctype = c.get_str("type").ok();
    let source = match ctype.unwrap_or("collection") {
        "collection" => Source::Collection,
        "view" => Source::View,
        other => {
            return Err(MongoError::Unsupported(format!(
                "{ns} is a {other} collection; logical dumps support collections and views"
            )))
        }
    };
    let options = c.get_document("options").cloned().unwrap_or_default();
    let uuid = match c.get_document("info").ok().and_then(|i| i.get("uuid")) {
        Some(Bson::Binary(b)) => Some(hex::encode(&b.bytes)),
        _ => None,
    };
    let (indexes, estimate) = if source == Source::Collection {
        let indexes: Vec<Document> = db
            .run_cursor_command(doc! { "listIndexes": name })
            .await
            .map_err(|e| MongoError::from_driver(format!("run listIndexes on {ns}"), e))?
            .try_collect()
            .await
            .map_err(|e| MongoError::from_driver(format!("read listIndexes of {ns}"), e))?;
        let size = if ask_size {
            Some(estimate_documents(db, name, is_ferretdb).await)
        } else {
            None
        };
        (indexes, size)
    } else {
        (Vec::new(), Some(CollectionSize::default()))
    };
    let metadata = metadata_json(&options, &indexes, uuid.as_deref(), name, ctype);
    Ok(Some(NamespacePlan {
        meta: CollectionMetadata {
            db: db_name.to_string(),
            collection: name.to_string(),
            metadata,
            size: 0,
            collection_type: ctype.unwrap_or("collection").to_string(),
        },
        source,
        estimate: estimate.as_ref().map(|e| e.count),
        batch_size: estimate.map(|e| batch_size_for(opts_batch_size, e.avg_obj_size)),
    }))
}

/// Document count (for progress and ordering) and average document size (for batch sizing); failures give 0
/// (the dump itself decides success).
///
/// MongoDB answers `estimatedDocumentCount` from metadata. FerretDB v1 implements `count` by reading every
/// document, and its `collStats` command sums SQLite page statistics over the whole database file, so with
/// thousands of collections it costs tens of milliseconds per collection (quadratic in the collection count).
/// The `$collStats: {storageStats: {}}` stage gives the same count and average size in a few milliseconds.
async fn estimate_documents(
    db: &mongodb::Database,
    coll: &str,
    is_ferretdb: bool,
) -> CollectionSize {
    let ns = format!("{}.{coll}", db.name());
    if is_ferretdb {
        match storage_stats(db, coll).await {
            Ok(Some(size)) => return size,
            Ok(None) => warn!(namespace = %ns, "$collStats gave no storageStats; trying collStats"),
            Err(e) => warn!(namespace = %ns, error = %e, "$collStats failed; trying collStats"),
        }
        match db.run_command(doc! { "collStats": coll }).await {
            Ok(stats) => return size_from_stats(&stats),
            Err(e) => warn!(namespace = %ns, error = %e, "collStats failed; trying count"),
        }
    }
    match db
        .collection::<Document>(coll)
        .estimated_document_count()
        .await
    {
        Ok(n) => CollectionSize {
            count: n,
            avg_obj_size: 0,
        },
        Err(e) => {
            warn!(namespace = %ns, error = %e, "cannot estimate document count");
            CollectionSize::default()
        }
    }
}

async fn storage_stats(
    db: &mongodb::Database,
    coll: &str,
) -> mongodb::error::Result<Option<CollectionSize>> {
    let mut cursor = db
        .collection::<Document>(coll)
        .aggregate([doc! { "$collStats": { "storageStats": {} } }])
        .await?;
    let first = cursor.try_next().await?;
    Ok(first
        .as_ref()
        .and_then(|d| d.get_document("storageStats").ok())
        .map(size_from_stats))
}

/// Reads `count` and `avgObjSize` (or `size / count`) from a `collStats`-shaped document.
fn size_from_stats(stats: &Document) -> CollectionSize {
    let num = |k: &str| match stats.get(k) {
        Some(Bson::Int32(n)) => u64::try_from(*n).unwrap_or(0),
        Some(Bson::Int64(n)) => u64::try_from(*n).unwrap_or(0),
        Some(Bson::Double(n)) if *n > 0.0 => *n as u64,
        _ => 0,
    };
    let count = num("count");
    let avg = match num("avgObjSize") {
        0 => num("size").checked_div(count).unwrap_or(0),
        a => a,
    };
    CollectionSize {
        count,
        avg_obj_size: avg,
    }
}

#[cfg(test)]
mod batch_tests {
    use super::batch_size_for;

    #[test]
    fn batch_size_keeps_replies_near_the_target() {
        assert_eq!(
            batch_size_for(1000, 0),
            1000,
            "unknown size: the configured batch"
        );
        assert_eq!(
            batch_size_for(1000, 100),
            1000,
            "small documents: the configured batch"
        );
        assert_eq!(
            batch_size_for(1000, 51_200),
            81,
            "50 KiB documents: about 4 MiB per reply"
        );
        assert_eq!(
            batch_size_for(1000, 15 * 1024 * 1024),
            1,
            "huge documents: one per reply"
        );
    }
}

/// What planning learns of a collection's size: the progress estimate and the reply sizing.
#[derive(Default)]
struct CollectionSize {
    count: u64,
    /// Average document size in bytes; 0 when the server does not say (mongod: replies are capped anyway).
    avg_obj_size: u64,
}

/// The text mongodump writes to `<coll>.metadata.json` (and into the archive prelude):
/// canonical Extended JSON v2 of `{options?, indexes, uuid?, collectionName, type?}`,
/// with `options` omitted when empty and `indexes` always present.
pub fn metadata_json(
    options: &Document,
    indexes: &[Document],
    uuid: Option<&str>,
    collection_name: &str,
    collection_type: Option<&str>,
) -> String {
    let mut m = serde_json::Map::new();
    if !options.is_empty() {
        m.insert(
            "options".into(),
            Bson::Document(options.clone()).into_canonical_extjson(),
        );
    }
    m.insert(
        "indexes".into(),
        serde_json::Value::Array(
            indexes
                .iter()
                .map(|i| Bson::Document(i.clone()).into_canonical_extjson())
                .collect(),
        ),
    );
    if let Some(u) = uuid.filter(|u| !u.is_empty()) {
        m.insert("uuid".into(), u.into());
    }
    m.insert("collectionName".into(), collection_name.into());
    if let Some(t) = collection_type.filter(|t| !t.is_empty()) {
        m.insert("type".into(), t.into());
    }
    serde_json::Value::Object(m).to_string()
}

/// Recomputes the CRC-64 of a namespace's documents; exposed for tests and verification.
pub fn documents_crc(docs: &[u8]) -> u64 {
    crate::archive::Crc64::checksum(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_json_matches_mongodump_shape() {
        let idx = vec![
            doc! { "v": 2, "key": { "_id": 1 }, "name": "_id_" },
            doc! { "v": 2, "key": { "email": 1 }, "name": "email_1", "unique": true },
        ];
        let s = metadata_json(
            &Document::new(),
            &idx,
            Some("0123456789abcdef0123456789abcdef"),
            "users",
            Some("collection"),
        );
        assert_eq!(
            s,
            r#"{"indexes":[{"v":{"$numberInt":"2"},"key":{"_id":{"$numberInt":"1"}},"name":"_id_"},{"v":{"$numberInt":"2"},"key":{"email":{"$numberInt":"1"}},"name":"email_1","unique":true}],"uuid":"0123456789abcdef0123456789abcdef","collectionName":"users","type":"collection"}"#
        );

        let opts = doc! { "capped": true, "size": 4096_i64, "max": 10 };
        let s = metadata_json(&opts, &[], None, "c", None);
        assert_eq!(
            s,
            r#"{"options":{"capped":true,"size":{"$numberLong":"4096"},"max":{"$numberInt":"10"}},"indexes":[],"collectionName":"c"}"#
        );
        // Must parse back as canonical extended JSON.
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        let b = Bson::try_from(v).unwrap();
        let d = b.as_document().unwrap();
        assert_eq!(
            d.get_document("options").unwrap().get_i64("size").unwrap(),
            4096
        );
    }

    /// Callers spawn the dump on the runtime: its future must be `Send`.
    #[allow(dead_code)]
    fn dump_future_is_send(c: &Client, o: &DumpOptions, t: &CancellationToken) {
        fn is_send<T: Send>(_: T) {}
        let out: Box<dyn std::io::Write + Send> = Box::new(std::io::sink());
        is_send(logical_dump(c, &[], o, out, &|_| {}, t));
    }

    #[test]
    fn header_server_version_is_parseable_by_mongorestore() {
        assert_eq!(archive_server_version(Some("7.0.42")), "7.0.42");
        assert_eq!(archive_server_version(Some("8.0.1-rc0")), "8.0.1-rc0");
        assert_eq!(archive_server_version(Some("unknown")), "0.0.0");
        assert_eq!(archive_server_version(Some("7.0")), "0.0.0");
        assert_eq!(archive_server_version(Some("7.x.1")), "0.0.0");
        assert_eq!(archive_server_version(None), "0.0.0");
    }

    #[test]
    fn options_validation() {
        assert!(DumpOptions::default().validate().is_ok());
        for bad in [
            DumpOptions {
                parallel_collections: 0,
                ..Default::default()
            },
            DumpOptions {
                segment_bytes: 0,
                ..Default::default()
            },
            DumpOptions {
                segment_bytes: MAX_BSON_SIZE + 1,
                ..Default::default()
            },
            DumpOptions {
                batch_size: 0,
                ..Default::default()
            },
            DumpOptions {
                channel_segments: 0,
                ..Default::default()
            },
            DumpOptions {
                compression: Compression::Zstd { level: 0 },
                ..Default::default()
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(MongoError::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }
}

#[cfg(test)]
mod stats_tests {
    use super::size_from_stats;
    use bson::doc;

    #[test]
    fn size_from_stats_reads_count_and_average() {
        let s = size_from_stats(&doc! { "count": 50_i32, "avgObjSize": 327_i64, "size": 20480 });
        assert_eq!((s.count, s.avg_obj_size), (50, 327));
        // Servers that omit avgObjSize: derived from size / count.
        let s = size_from_stats(&doc! { "count": 4_i64, "size": 400.0 });
        assert_eq!((s.count, s.avg_obj_size), (4, 100));
        // Empty collection or garbage: zeros, never a division by zero.
        let s = size_from_stats(&doc! { "count": 0, "size": 0, "avgObjSize": "x" });
        assert_eq!((s.count, s.avg_obj_size), (0, 0));
    }
}
