//! Execution of Physical and Snapshot backup jobs: a consistent image of every data file of the node
//! (ddsvault_mongo::physical), stored as whole files (Physical) or as deduplicated chunks (Snapshot).
//!
//! Same durability order as logical backups (see `logical.rs`): Physical files go to `staging/job-<id>/` and are
//! renamed into `backups/<instance>/<backup_id>/files/`; snapshot chunks go straight into the instance's shared
//! chunk store (content-addressed, so a chunk is either absent or complete). `manifest.json` is written last and
//! only then does the catalog say Success. A crash before that leaves no manifest; recovery removes the staging
//! and backup prefixes but never chunks, which other snapshots may share (unreferenced ones are orphans for GC).
//!
//! Images are streamed page by page out of one read transaction of each database straight into the repository
//! (`ImageStream`). Only a build whose SQLite lacks `sqlite_dbpage` first writes them to `<scratch_dir>/job-<id>/`
//! through SQLite's backup API and reads them back; the scratch directory is removed when the job ends and by
//! recovery.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use ddsvault_catalog::{BackupCompletion, BackupMethod, Job};
use ddsvault_mongo::archive::Compression;
use ddsvault_mongo::physical::{self, sqlite::DataFile};
use ddsvault_mongo::topology::{connect, discover, SYSTEM_DATABASES};
use ddsvault_repo::export::FILES_DIR;
use ddsvault_repo::{
    ChunkRef, Manifest, ManifestFile, RepoPath, Repository, SnapshotFile, SnapshotIndex,
};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::plan::expire_time_of;
use crate::context::{scratch_dir, staging_token};
use crate::progress::{percent_in, with_heartbeat, Phase, Progress};
use crate::{JobError, Runner};

/// Content-defined chunking bounds, for images that are not SQLite databases (whose content can shift): small
/// chunks keep a scattered change from rewriting much, while staying large enough that per-object overhead does
/// not dominate.
pub const CHUNK_MIN: u32 = 4 * 1024;
/// Average chunk size.
pub const CHUNK_AVG: u32 = 8 * 1024;
/// Maximum chunk size.
pub const CHUNK_MAX: u32 = 32 * 1024;
/// A SQLite image is cut into runs of whole pages of this size (one page if pages are larger): its pages never
/// shift, so a run at the same offset holds the same pages in every snapshot and content-defined cut points buy
/// nothing. 16 KiB (4 pages of FerretDB's 4 KiB) keeps a scattered one-row update from rewriting much while the
/// index stays small (~6,400 chunks per 100 MiB, against ~12,000 with 8 KiB content-defined chunks).
pub const PAGE_RUN: usize = 16 * 1024;
/// Larger files get longer runs (doubled until a file has at most this many), up to [`MAX_PAGE_RUN`]: the index
/// names every chunk and is held in memory.
const MAX_RUNS_PER_FILE: u64 = 1 << 20;
/// Longest page run.
const MAX_PAGE_RUN: usize = 1 << 20;
/// Chunks stored at once by one snapshot: each is a small write and an fsync, so many overlap well.
const CHUNK_PUTS_IN_FLIGHT: usize = 16;
/// Chunks queued for the whole-file SHA-256 thread (shared with the rest of the pipeline, not copied).
const WHOLE_HASH_QUEUE: usize = 64;
/// Above this many reused chunks, [`verify_reused`] lists the store once instead of asking about each chunk.
const VERIFY_BY_LISTING: usize = 64;

/// How the image is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileMethod {
    /// Whole files under the backup prefix.
    Physical,
    /// Deduplicated chunks in the instance's chunk store.
    Snapshot,
}

impl FileMethod {
    /// The file-level method of a backup method; `None` for Logical.
    pub fn of(method: BackupMethod) -> Option<Self> {
        match method {
            BackupMethod::Physical => Some(Self::Physical),
            BackupMethod::Snapshot => Some(Self::Snapshot),
            BackupMethod::Logical => None,
        }
    }

    fn method(self) -> BackupMethod {
        match self {
            Self::Physical => BackupMethod::Physical,
            Self::Snapshot => BackupMethod::Snapshot,
        }
    }

    fn name(self) -> &'static str {
        self.method().as_str()
    }
}

/// Removes a scratch directory when the job ends, whatever the outcome.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.0.display(), error = %e, "could not remove the scratch directory");
            }
        }
    }
}

/// What storing one imaged file produced.
struct Stored {
    manifest_file: Option<ManifestFile>,
    snapshot_file: Option<SnapshotFile>,
    size: u64,
    /// Bytes this backup added to the repository for the file.
    new_bytes: u64,
    chunks: u64,
    new_chunks: u64,
    /// Chunks the store already had (not written by this job), with their stored sizes: see [`verify_reused`].
    reused: Vec<(String, u64)>,
    /// Chunks matched to one of the previous snapshot by fingerprint (neither SHA-256 hashed nor compressed).
    unchanged: u64,
    /// Chunks the store held with another size than the previous snapshot recorded, written again.
    repaired: u64,
    /// Chunks this job wrote (new or repaired), still to be made durable before an index names them.
    written: Vec<String>,
    /// How the file was cut.
    chunking: Option<Chunking>,
}

pub(crate) async fn run(
    runner: &Runner,
    job: &Job,
    method: FileMethod,
    cancel: &CancellationToken,
) -> Result<(), JobError> {
    let written = NewChunks::default();
    let result = run_job(runner, job, method, cancel, &written).await;
    if result.is_err() {
        written.remove(runner, &job.instance_id).await;
    }
    result
}

/// The chunks a snapshot job added to its instance's chunk store (ones that were absent before it wrote them).
///
/// A failed job deletes them at once, so a repository that filled up recovers as soon as the job fails instead of
/// after the collector's grace period. That is safe because a chunk is new only if nothing had it before this job,
/// and only one backup job of an instance is active at a time (the catalog refuses a second), so no committed
/// snapshot can name a chunk on this list.
#[derive(Default)]
struct NewChunks(std::sync::Mutex<Vec<String>>);

impl NewChunks {
    fn push(&self, digest: String) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(digest);
    }

    async fn remove(&self, runner: &Runner, instance_id: &str) {
        let digests = std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if digests.is_empty() {
            return;
        }
        let mut removed = 0usize;
        for digest in &digests {
            let deleted = match ddsvault_repo::chunks::chunk_path(instance_id, digest) {
                Ok(path) => runner.repo.delete(&path).await,
                Err(e) => Err(e),
            };
            match deleted {
                Ok(()) | Err(ddsvault_repo::RepoError::NotFound { .. }) => removed += 1,
                Err(e) => {
                    // Left for the collector, which sweeps unreferenced chunks after its grace period.
                    tracing::warn!(instance = %instance_id, chunk = %digest, error = %e, "could not remove a chunk of a failed snapshot");
                }
            }
        }
        tracing::info!(instance = %instance_id, chunks = removed, "removed the chunks a failed snapshot had written");
    }
}

/// One file-level backup: inspect the instance, image and store each data file (the loop below), publish what was
/// stored, then write the manifest that commits the backup.
async fn run_job(
    runner: &Runner,
    job: &Job,
    method: FileMethod,
    cancel: &CancellationToken,
    written: &NewChunks,
) -> Result<(), JobError> {
    let Inspected {
        backup_id,
        topology,
        files,
        databases,
        known,
        previous,
    } = inspect(runner, job, method).await?;
    let scratch = fresh_scratch(runner, job)?;

    let total: u64 = files.iter().map(|f| on_disk_size(&f.path)).sum();
    let done = Arc::new(AtomicU64::new(0));
    let progress = Progress::new(job.id);
    let staging = Repository::staging_prefix(&staging_token(job.id));
    let prefix = Repository::backup_prefix(&job.instance_id, backup_id);
    let level = match runner.settings.compression {
        Compression::Zstd { level } => level,
        _ => 3,
    };

    let known = Arc::new(known);
    let previous = Arc::new(previous);

    let work_cancel = cancel.child_token();
    progress.set_phase(Phase::Imaging);
    progress.bytes(0, total);
    let work = async {
        let mut stored = Vec::with_capacity(files.len());
        for f in &files {
            if work_cancel.is_cancelled() {
                return Err(JobError::Cancelled("backup cancelled".into()));
            }
            let image = open_image(f, &scratch.0).await?;
            let s = match method {
                FileMethod::Physical => {
                    store_file(runner, &staging, &prefix, f, image, &work_cancel).await?
                }
                FileMethod::Snapshot => {
                    let seen = Seen {
                        known: known.clone(),
                        previous: previous.clone(),
                    };
                    let approx = on_disk_size(&f.path);
                    store_chunks(
                        &runner.repo,
                        &job.instance_id,
                        &f.name,
                        image,
                        approx,
                        level,
                        seen,
                        written,
                    )
                    .await?
                }
            };
            let file_bytes = on_disk_size(&f.path).max(s.size);
            let d = done.fetch_add(file_bytes, Ordering::Relaxed) + file_bytes;
            progress.bytes(d, total);
            progress.set_percent(percent_in(2..95, d, total));
            stored.push(s);
        }
        Ok::<_, JobError>(stored)
    };
    let stored = with_heartbeat(runner, job, &progress, &work_cancel, work).await??;
    progress.set_phase(Phase::Uploading);

    let (mut manifest_files, index) = publish_files(runner, &staging, &prefix, &stored).await?;
    let image_bytes: u64 = stored.iter().map(|s| s.size).sum();
    let details = details_of(method, &files, &stored, image_bytes, &topology);
    let end_time = Utc::now();
    if method == FileMethod::Snapshot {
        let entry =
            seal_snapshot(runner, &job.instance_id, &prefix, &index, level, &stored).await?;
        manifest_files.push(entry);
    }
    let extra = serde_json::json!({
        "databases": databases,
        "details": details,
    });
    let manifest = Manifest {
        format: ddsvault_repo::MANIFEST_FORMAT,
        backup_id,
        instance_id: job.instance_id.clone(),
        method: method.name().into(),
        created_at: end_time,
        files: manifest_files,
        extra,
    };
    let manifest_sha256 = runner.repo.write_manifest(&prefix, &manifest).await?;
    complete(
        runner,
        job,
        (&prefix, &staging),
        (method == FileMethod::Snapshot).then_some(&index),
        image_bytes,
        &databases,
        crate::integrity::sealed_details(details, manifest_sha256),
        end_time,
    )
    .await
}

/// What a file-level backup found before imaging anything.
struct Inspected {
    backup_id: i64,
    topology: ddsvault_mongo::topology::Topology,
    /// The data files to image.
    files: Vec<DataFile>,
    /// The user databases the files hold.
    databases: Vec<String>,
    /// Snapshot: the chunk store's chunks with their stored sizes (empty for Physical).
    known: std::collections::HashMap<String, u64>,
    /// Snapshot: the previous snapshot's index (empty for Physical).
    previous: Previous,
}

/// Connects to the instance and plans its data files; for a snapshot, lists the chunk store and reads the previous
/// snapshot meanwhile.
async fn inspect(runner: &Runner, job: &Job, method: FileMethod) -> Result<Inspected, JobError> {
    let backup_id = job
        .backup_id
        .ok_or_else(|| JobError::Other("backup job has no backup set".into()))?;
    let spec = runner.instance(&job.instance_id)?;
    let data_path = spec.data_path.clone().ok_or_else(|| {
        JobError::Other(format!(
            "{} backups need data_path in the configuration of instance {}",
            method.name(),
            job.instance_id
        ))
    })?;

    // What the chunk store holds already, with sizes, from one listing: a chunk in it is reused without asking
    // the store, if its size is the one the previous snapshot recorded. A chunk swept after this listing is caught
    // by verify_reused before the snapshot commits. The listing and the previous snapshot's index are read while
    // the server is connected to: all three wait on I/O.
    let seen = async {
        match method {
            FileMethod::Snapshot => {
                let (known, previous) = tokio::join!(
                    runner.repo.stored_chunk_sizes(&job.instance_id),
                    previous_snapshot(runner, &job.instance_id, backup_id)
                );
                Ok::<_, JobError>((known?, previous))
            }
            FileMethod::Physical => Ok(Default::default()),
        }
    };
    let server = async {
        let client = connect(&spec.uri).await?;
        Ok::<_, JobError>(discover(&client).await?)
    };
    let (topology, seen) = tokio::join!(server, seen);
    let topology = topology?;
    let (known, previous) = seen?;
    let files = physical::plan(&topology, &data_path)?;
    // The databases are the files (FerretDB keeps one file per database and removes it when the database is
    // dropped). Asking the server instead costs a listDatabases, which FerretDB answers by measuring every
    // database: longer than imaging a 100 MB one.
    let mut databases: Vec<String> = files
        .iter()
        .map(|f| f.database.clone())
        .filter(|d| !SYSTEM_DATABASES.contains(&d.as_str()))
        .collect();
    databases.dedup();
    if databases.is_empty() {
        return Err(JobError::NoDatabase(job.instance_id.clone()));
    }
    Ok(Inspected {
        backup_id,
        topology,
        files,
        databases,
        known,
        previous,
    })
}

/// The job's scratch directory for its images, empty; removed when the returned value drops.
fn fresh_scratch(runner: &Runner, job: &Job) -> Result<Scratch, JobError> {
    let scratch = Scratch(scratch_dir(&runner.settings.scratch_dir, job.id));
    // A leftover of a crashed earlier attempt with the same id cannot exist (ids are unique), but a stale
    // directory must never be mistaken for this job's images.
    let _ = std::fs::remove_dir_all(&scratch.0);
    std::fs::create_dir_all(&scratch.0).map_err(|e| {
        JobError::Other(format!(
            "create scratch directory {}: {e}",
            scratch.0.display()
        ))
    })?;
    Ok(scratch)
}

/// Moves each stored whole file (Physical) from staging to the backup's prefix, and gathers the snapshot index of
/// the chunked ones (Snapshot).
async fn publish_files(
    runner: &Runner,
    staging: &RepoPath,
    prefix: &RepoPath,
    stored: &[Stored],
) -> Result<(Vec<ManifestFile>, SnapshotIndex), JobError> {
    let mut manifest_files = Vec::new();
    let mut index = SnapshotIndex::default();
    for s in stored {
        if let Some(mf) = &s.manifest_file {
            let from = runner
                .repo
                .write_path(&staging.join(&mf.name)?, &prefix.join(&mf.name)?);
            runner.repo.rename(&from, &prefix.join(&mf.name)?).await?;
            manifest_files.push(mf.clone());
        }
        if let Some(sf) = &s.snapshot_file {
            index.files.push(sf.clone());
        }
    }
    Ok((manifest_files, index))
}

/// The backup's details (catalog and manifest): format, imaging, sizes, chunk counts, the server.
fn details_of(
    method: FileMethod,
    files: &[DataFile],
    stored: &[Stored],
    image_bytes: u64,
    topology: &ddsvault_mongo::topology::Topology,
) -> serde_json::Value {
    serde_json::json!({
        "format": match method {
            FileMethod::Physical => "ferretdb-sqlite-files",
            FileMethod::Snapshot => "ferretdb-sqlite-chunks",
        },
        "image": if physical::sqlite::has_page_reader() { "sqlite-dbpage" } else { "sqlite-online-backup" },
        "files": files.iter().map(|f| f.name.clone()).collect::<Vec<_>>(),
        "image_bytes": image_bytes,
        "stored_bytes_new": stored.iter().map(|s| s.new_bytes).sum::<u64>(),
        "chunks": stored.iter().map(|s| s.chunks).sum::<u64>(),
        "chunks_new": stored.iter().map(|s| s.new_chunks).sum::<u64>(),
        "chunks_unchanged": stored.iter().map(|s| s.unchanged).sum::<u64>(),
        "chunks_repaired": stored.iter().map(|s| s.repaired).sum::<u64>(),
        "chunking": stored.iter().filter_map(|s| s.chunking.map(Chunking::label)).collect::<Vec<_>>(),
        "server_version": topology.server_version,
        "ferretdb_version": topology.ferretdb_version,
        "topology": format!("{:?}", topology.kind),
        "set_name": topology.set_name,
    })
}

/// A snapshot's last steps before its manifest: its new chunks made durable and its index written (the manifest
/// entry returned), and every reused chunk checked still there.
async fn seal_snapshot(
    runner: &Runner,
    instance_id: &str,
    prefix: &RepoPath,
    index: &SnapshotIndex,
    level: i32,
    stored: &[Stored],
) -> Result<ManifestFile, JobError> {
    let reused: std::collections::HashMap<String, u64> = stored
        .iter()
        .flat_map(|s| s.reused.iter().cloned())
        .collect();
    let written: Vec<String> = stored
        .iter()
        .flat_map(|s| s.written.iter().cloned())
        .collect();
    let write_index = async {
        // Chunk files were written without an fsync each: they are made durable (an fsync each when they are
        // few, one sync of the filesystem otherwise) before the index names them.
        runner.repo.sync_chunks(instance_id, &written).await?;
        Ok::<_, JobError>(
            runner
                .repo
                .write_snapshot_index(prefix, index, level)
                .await?,
        )
    };
    // Both only have to be done before the manifest commits the snapshot; they wait on different I/O.
    let (entry, ()) = tokio::try_join!(
        write_index,
        verify_reused(&runner.repo, instance_id, &reused)
    )?;
    Ok(entry)
}

/// Marks the job and backup Success (after the manifest is written), as the logical job does.
#[allow(clippy::too_many_arguments)]
async fn complete(
    runner: &Runner,
    job: &Job,
    (prefix, staging): (&RepoPath, &RepoPath),
    index: Option<&SnapshotIndex>,
    size: u64,
    databases: &[String],
    details: serde_json::Value,
    end_time: chrono::DateTime<Utc>,
) -> Result<(), JobError> {
    let expire_time = expire_time_of(job, end_time);
    let done = BackupCompletion {
        end_time,
        expire_time,
        size: i64::try_from(size).unwrap_or(i64::MAX),
        db_names: databases.join(","),
        repo_prefix: prefix.to_string(),
        details,
    };
    // What it occupies, measured once now so DescribeBackupStorage never lists the repository. A snapshot's
    // chunks are all in the store with the sizes its index records (written by this job, or reused and checked
    // by verify_reused just now), so they are taken from there rather than from a third listing of the store.
    let usage = match index {
        Some(index) => {
            crate::storage::measure_snapshot(&runner.repo, &job.instance_id, prefix, index).await?
        }
        None => crate::storage::measure(&runner.repo, &job.instance_id, prefix).await?,
    };
    if let Err(e) = runner
        .catalog
        .complete_backup_with_storage(job.id, &runner.node_id, job.lease_token, &done, &usage)
        .await
    {
        // Whoever took the job from us also owns the cleanup; our files must not look complete.
        let _ = runner.repo.delete_prefix(prefix).await;
        return Err(e.into());
    }
    let _ = runner.repo.delete_prefix(staging).await;
    Ok(())
}

/// Size of a live database file and its WAL: the progress estimate.
fn on_disk_size(path: &Path) -> u64 {
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    [path, wal.as_path()]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// A consistent image of one database file, to be read on a blocking thread.
type Image = Box<dyn Read + Send>;

/// Streams the image when SQLite can (`ImageStream`); otherwise images into the scratch directory and reads that
/// file, which is removed once read.
async fn open_image(f: &DataFile, scratch: &Path) -> Result<Image, JobError> {
    let src = f.path.clone();
    let dest = scratch.join(&f.name);
    tokio::task::spawn_blocking(move || -> Result<Image, JobError> {
        if physical::sqlite::has_page_reader() {
            return Ok(Box::new(physical::sqlite::ImageStream::open(&src)?));
        }
        physical::sqlite::image(&src, &dest)?;
        let file = std::fs::File::open(&dest)
            .map_err(|e| JobError::Other(format!("open image {}: {e}", dest.display())))?;
        Ok(Box::new(ScratchImage { file, path: dest }))
    })
    .await
    .map_err(|e| JobError::Other(format!("image task: {e}")))?
}

/// An image in the scratch directory: at most one stays on local disk.
struct ScratchImage {
    file: std::fs::File,
    path: PathBuf,
}

impl Read for ScratchImage {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }
}

impl Drop for ScratchImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Physical: streams the image into `staging/job-<id>/files/<name>` (hashed on the producer thread).
async fn store_file(
    runner: &Runner,
    staging: &RepoPath,
    prefix: &RepoPath,
    f: &DataFile,
    mut image: Image,
    cancel: &CancellationToken,
) -> Result<Stored, JobError> {
    let name = format!("{FILES_DIR}/{}", f.name);
    let staged = runner
        .repo
        .write_path(&staging.join(&name)?, &prefix.join(&name)?);
    let (mut writer, upload) = runner.repo.upload(
        &staged,
        runner.repo.upload_options().with_cancel(cancel.clone()),
    );
    let producer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        std::io::copy(&mut image, &mut writer)?;
        writer.flush()?;
        writer.close()
    });
    let (produced, uploaded) = tokio::join!(producer, upload.finish());
    produced
        .map_err(|e| JobError::Other(format!("copy task: {e}")))?
        .map_err(|e| JobError::Other(format!("copy {}: {e}", f.name)))?;
    let uploaded = uploaded?;
    Ok(Stored {
        manifest_file: Some(ManifestFile::from_uploaded(name, &uploaded)),
        snapshot_file: None,
        size: uploaded.size,
        new_bytes: uploaded.size,
        chunks: 0,
        new_chunks: 0,
        reused: Vec::new(),
        unchanged: 0,
        repaired: 0,
        written: Vec::new(),
        chunking: None,
    })
}

/// How an image was cut into chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunking {
    /// A SQLite database: runs of whole pages of this many bytes, at fixed offsets.
    Pages(usize),
    /// Anything else: content-defined (FastCDC) chunks.
    ContentDefined,
}

impl Chunking {
    fn label(self) -> String {
        match self {
            Self::Pages(run) => format!("sqlite-pages:{run}"),
            Self::ContentDefined => "fastcdc".into(),
        }
    }
}

/// The page size of a SQLite database from its 100-byte header (offset 16, big-endian; 1 means 65,536), or `None`
/// if `head` is not the header of a SQLite 3 database with a valid page size.
fn sqlite_page_size(head: &[u8]) -> Option<usize> {
    if head.len() < 100 || &head[..16] != b"SQLite format 3\0" {
        return None;
    }
    let size = match u16::from_be_bytes([head[16], head[17]]) {
        1 => 65_536,
        n => usize::from(n),
    };
    (size.is_power_of_two() && (512..=65_536).contains(&size)).then_some(size)
}

/// The run length for a SQLite file of about `approx_size` bytes with `page_size` pages: a whole number of pages.
fn page_run(page_size: usize, approx_size: u64) -> usize {
    let mut run = page_size.max(PAGE_RUN);
    while run < MAX_PAGE_RUN && approx_size / run as u64 > MAX_RUNS_PER_FILE {
        run *= 2;
    }
    run
}

/// Reads until `buf` is full or the image ends; returns the bytes read.
fn read_full(image: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match image.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Cuts `image` into chunks, in order, handing each to `each` (which returns `false` to stop early): page runs
/// for a SQLite database (told by its header), content-defined chunks for anything else.
fn cut_image(
    mut image: Image,
    approx_size: u64,
    mut each: impl FnMut(Vec<u8>) -> bool,
) -> std::io::Result<Chunking> {
    let mut head = vec![0u8; 100];
    let n = read_full(&mut image, &mut head)?;
    head.truncate(n);
    if let Some(page_size) = sqlite_page_size(&head) {
        let run = page_run(page_size, approx_size);
        let mut first = head;
        first.resize(run, 0);
        let mut filled = n + read_full(&mut image, &mut first[n..])?;
        first.truncate(filled);
        let mut chunk = first;
        while filled > 0 {
            if !each(chunk) {
                break;
            }
            let mut next = vec![0u8; run];
            filled = read_full(&mut image, &mut next)?;
            next.truncate(filled);
            chunk = next;
        }
        return Ok(Chunking::Pages(run));
    }
    let cdc = fastcdc::v2020::StreamCDC::new(
        std::io::BufReader::new(std::io::Cursor::new(head).chain(image)),
        CHUNK_MIN,
        CHUNK_AVG,
        CHUNK_MAX,
    );
    for chunk in cdc {
        let chunk = chunk.map_err(std::io::Error::other)?;
        if !each(chunk.data) {
            break;
        }
    }
    Ok(Chunking::ContentDefined)
}

/// What the previous snapshot of the instance recorded: its chunks by fingerprint, and the stored size of each
/// chunk it named (by SHA-256).
#[derive(Default)]
struct Previous {
    by_fingerprint: std::collections::HashMap<String, ChunkRef>,
    stored: std::collections::HashMap<String, u64>,
}

impl Previous {
    fn from_index(index: &SnapshotIndex) -> Self {
        let mut p = Self::default();
        for c in index.files.iter().flat_map(|f| f.chunks.iter()) {
            if let Some(n) = c.stored {
                p.stored.insert(c.sha256.clone(), n);
            }
            if let Some(fp) = &c.blake3 {
                p.by_fingerprint.insert(fp.clone(), c.clone());
            }
        }
        p
    }
}

/// The index of the instance's latest successful snapshot other than `backup_id`, as [`Previous`]. Anything that
/// keeps it from being read (none yet, a damaged manifest or index, a store error) only costs speed: every chunk
/// is then SHA-256 hashed and looked up by name, as in a first snapshot. So the error is logged, not returned.
async fn previous_snapshot(runner: &Runner, instance_id: &str, backup_id: i64) -> Previous {
    let filter = ddsvault_catalog::BackupFilter {
        instance_id: Some(instance_id.to_string()),
        ..Default::default()
    };
    // Newest first; a few pages cover any mix of methods a policy produces.
    for number in 1..=5 {
        let page = ddsvault_catalog::Page { number, size: 100 };
        let backups = match runner.catalog.list_backups(&filter, page).await {
            Ok((_, b)) => b,
            Err(e) => {
                tracing::warn!(instance = %instance_id, error = %e, "could not list the previous snapshots; hashing every chunk");
                return Previous::default();
            }
        };
        let found = backups.iter().find(|b| {
            b.id != backup_id
                && b.method == BackupMethod::Snapshot
                && b.status == ddsvault_catalog::BackupStatus::Success
        });
        if let Some(b) = found {
            let read = async {
                let m = crate::integrity::authenticated_manifest(&runner.repo, b).await?;
                let prefix = RepoPath::new(b.repo_prefix.clone())?;
                Ok::<_, JobError>(
                    runner
                        .repo
                        .read_snapshot_index(&prefix, &m.manifest)
                        .await?,
                )
            };
            return match read.await {
                Ok(Some(index)) => Previous::from_index(&index),
                Ok(None) => Previous::default(),
                Err(e) => {
                    tracing::warn!(instance = %instance_id, backup = b.id, error = %e, "could not read the previous snapshot's index; hashing every chunk");
                    Previous::default()
                }
            };
        }
        if backups.len() < 100 {
            break;
        }
    }
    Previous::default()
}

/// What a snapshot knows before storing chunks: the store's listing (digest → stored size) and the previous
/// snapshot.
struct Seen {
    known: Arc<std::collections::HashMap<String, u64>>,
    previous: Arc<Previous>,
}

impl Seen {
    /// The stored size of chunk `sha256` if the store holds it as expected: listed, non-empty, and with the size
    /// the previous snapshot recorded (when it recorded one). A chunk of another size is damaged (or replaced by
    /// something else) and is written again rather than reused.
    fn stored_as_expected(&self, sha256: &str) -> Option<u64> {
        let listed = *self.known.get(sha256)?;
        let expected = self.previous.stored.get(sha256).copied();
        (listed > 0 && expected.is_none_or(|e| e == listed)).then_some(listed)
    }
}

/// A chunk as the cutting thread hands it on.
enum Piece {
    /// Same fingerprint and size as a chunk of the previous snapshot, which the store holds as expected: its
    /// SHA-256 and stored size are taken from there; nothing to hash, compress or write.
    Unchanged(ChunkRef),
    /// Hashed here; stored unless the store holds it already.
    Hashed(ChunkRef, Bytes),
}

/// Snapshot: cuts the image into chunks on a blocking thread ([`cut_image`]), fingerprints each (BLAKE3) and
/// SHA-256 hashes only those the previous snapshot did not have, and stores the ones the instance's chunk store
/// does not hold yet, a few at a time.
#[allow(clippy::too_many_arguments)]
async fn store_chunks(
    repo: &Repository,
    instance_id: &str,
    name: &str,
    image: Image,
    approx_size: u64,
    level: i32,
    seen: Seen,
    written: &NewChunks,
) -> Result<Stored, JobError> {
    let seen = Arc::new(seen);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Piece>(CHUNK_PUTS_IN_FLIGHT * 2);
    let cutter_seen = seen.clone();
    let chunker =
        tokio::task::spawn_blocking(move || -> Result<(u64, String, Chunking), String> {
            // The whole file's SHA-256 (what restore checks the reassembled file against) runs on a thread of its
            // own, beside the fingerprints: every byte needs both, and the cutting thread would otherwise do them
            // one after the other. The chunks are shared with it, not copied.
            let (to_whole, chunks_for_whole) =
                std::sync::mpsc::sync_channel::<Bytes>(WHOLE_HASH_QUEUE);
            let whole = std::thread::Builder::new()
                .name("snapshot sha256".into())
                .spawn(move || {
                    let mut whole = Sha256::new();
                    for data in chunks_for_whole {
                        whole.update(&data);
                    }
                    hex::encode(whole.finalize())
                })
                .map_err(|e| format!("start the hashing thread: {e}"))?;
            let mut size = 0u64;
            let mut whole_stopped = false;
            let chunking = cut_image(image, approx_size, |data| {
                let data = Bytes::from(data);
                if to_whole.send(data.clone()).is_err() {
                    whole_stopped = true;
                    return false;
                }
                size += data.len() as u64;
                let len = data.len() as u64;
                let fp = ddsvault_repo::chunks::fingerprint(&data);
                let unchanged = cutter_seen
                    .previous
                    .by_fingerprint
                    .get(&fp)
                    .filter(|c| c.size == len)
                    .and_then(|c| Some((c, cutter_seen.stored_as_expected(&c.sha256)?)));
                let piece = match unchanged {
                    Some((c, stored)) => Piece::Unchanged(ChunkRef {
                        sha256: c.sha256.clone(),
                        size: len,
                        blake3: Some(fp),
                        stored: Some(stored),
                    }),
                    None => Piece::Hashed(
                        ChunkRef {
                            sha256: hex::encode(Sha256::digest(&data)),
                            size: len,
                            blake3: Some(fp),
                            stored: None,
                        },
                        data,
                    ),
                };
                // A failed send: the consumer stopped (an error it reports itself).
                tx.blocking_send(piece).is_ok()
            });
            drop(to_whole);
            let whole = whole
                .join()
                .map_err(|_| "the hashing thread panicked".to_string())?;
            if whole_stopped {
                return Err("the hashing thread stopped before the end of the image".into());
            }
            let chunking = chunking.map_err(|e| e.to_string())?;
            Ok((size, whole, chunking))
        });

    // Set at the first failed put: the puts still queued behind it are skipped rather than written (a full
    // repository fails them all anyway), so the failure is reported promptly.
    let failed = std::sync::atomic::AtomicBool::new(false);
    let failed = &failed;
    let seen = &seen;
    let mut puts = Box::pin(
        futures::stream::poll_fn(|cx| {
            if failed.load(Ordering::Relaxed) {
                // Idempotent. Wakes a chunker blocked on a full channel; what was queued is still received.
                rx.close();
            }
            rx.poll_recv(cx)
        })
        .map(|piece| async move {
            let (mut c, raw) = match piece {
                Piece::Unchanged(c) => return Ok((c, Put::Unchanged)),
                Piece::Hashed(c, raw) => (c, raw),
            };
            let put = if let Some(n) = seen.stored_as_expected(&c.sha256) {
                ddsvault_repo::chunks::PutChunk::Present(n)
            } else if failed.load(Ordering::Relaxed) {
                return Ok((c, Put::Skipped));
            } else {
                let expected = seen.previous.stored.get(&c.sha256).copied();
                repo.put_chunk_checked(instance_id, &c.sha256, raw, level, expected)
                    .await?
            };
            let (ddsvault_repo::chunks::PutChunk::Written(n)
            | ddsvault_repo::chunks::PutChunk::Replaced(n)
            | ddsvault_repo::chunks::PutChunk::Present(n)) = put;
            c.stored = Some(n);
            Ok::<_, JobError>((c, Put::Stored(put)))
        })
        .buffered(CHUNK_PUTS_IN_FLIGHT),
    );
    let mut out = Stored {
        manifest_file: None,
        snapshot_file: None,
        size: 0,
        new_bytes: 0,
        chunks: 0,
        new_chunks: 0,
        reused: Vec::new(),
        unchanged: 0,
        repaired: 0,
        written: Vec::new(),
        chunking: None,
    };
    let mut chunks = Vec::new();
    let mut failure = None;
    // On a failure the stream is still drained to its end, never dropped with puts in flight: a put abandoned
    // mid-way could finish after the failed job removed its chunks and leave one behind. The channel is closed
    // so the chunker's next send fails and it stops reading the image (ending its read transaction); what it
    // had queued is skipped through `failed`.
    while let Some(r) = puts.next().await {
        use ddsvault_repo::chunks::PutChunk;
        match r {
            Ok((c, put)) => {
                match put {
                    Put::Stored(PutChunk::Written(n)) => {
                        written.push(c.sha256.clone());
                        out.written.push(c.sha256.clone());
                        out.new_bytes += n;
                        out.new_chunks += 1;
                    }
                    Put::Stored(PutChunk::Replaced(n)) => {
                        // Not this job's to remove on failure: committed snapshots name it.
                        out.written.push(c.sha256.clone());
                        out.new_bytes += n;
                        out.new_chunks += 1;
                        out.repaired += 1;
                    }
                    Put::Stored(PutChunk::Present(n)) => out.reused.push((c.sha256.clone(), n)),
                    Put::Unchanged => {
                        out.unchanged += 1;
                        out.reused
                            .push((c.sha256.clone(), c.stored.unwrap_or_default()));
                    }
                    Put::Skipped => {}
                }
                chunks.push(c);
            }
            Err(e) => {
                if failure.is_none() {
                    failed.store(true, Ordering::Relaxed);
                    failure = Some(e);
                }
            }
        }
    }
    drop(puts);
    let chunked = chunker
        .await
        .map_err(|e| JobError::Other(format!("chunking task: {e}")))?;
    if let Some(e) = failure {
        return Err(e);
    }
    let (size, sha256, chunking) =
        chunked.map_err(|e| JobError::Other(format!("chunk {name}: {e}")))?;
    let sum: u64 = chunks.iter().map(|c| c.size).sum();
    if sum != size {
        return Err(JobError::Other(format!(
            "chunk {name}: stored {sum} of {size} bytes"
        )));
    }
    out.chunks = chunks.len() as u64;
    out.size = size;
    out.chunking = Some(chunking);
    out.snapshot_file = Some(SnapshotFile {
        name: name.to_string(),
        size,
        sha256,
        chunks,
    });
    Ok(out)
}

/// What became of one chunk.
enum Put {
    /// Matched the previous snapshot by fingerprint.
    Unchanged,
    /// Looked up or stored by name.
    Stored(ddsvault_repo::chunks::PutChunk),
    /// Not stored because an earlier put failed (the job fails).
    Skipped,
}

/// Checks, after the snapshot's index is written and before its manifest commits it, that every chunk it reused
/// is still there. The chunk collector (crate::gc) never sweeps while a backup job of the instance is pending or
/// running, and re-checks that before every batch it deletes; but a chunk it had already chosen may be deleted
/// just after a job was created, and a reused chunk keeps its old mtime, so the grace period does not cover
/// it. Such a deletion happens before this check (the job still has everything to do after its creation), so
/// it is caught here and the job fails cleanly instead of committing a snapshot that cannot be restored.
/// Chunks this job wrote itself are new, so the collector's grace period protects them.
async fn verify_reused(
    repo: &Repository,
    instance_id: &str,
    seen: &std::collections::HashMap<String, u64>,
) -> Result<(), JobError> {
    if seen.len() > VERIFY_BY_LISTING {
        let stored = repo.stored_chunk_sizes(instance_id).await?;
        for (digest, want) in seen {
            match stored.get(digest) {
                Some(n) if n == want => {}
                Some(n) => return Err(resized_meanwhile(digest, *want, *n)),
                None => return Err(swept_meanwhile(digest)),
            }
        }
        return Ok(());
    }
    for (digest, want) in seen {
        let path = ddsvault_repo::chunks::chunk_path(instance_id, digest)?;
        match repo.head(&path).await {
            Ok(meta) if meta.size == *want => {}
            Ok(meta) => return Err(resized_meanwhile(digest, *want, meta.size)),
            Err(ddsvault_repo::RepoError::NotFound { .. }) => return Err(swept_meanwhile(digest)),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn resized_meanwhile(digest: &str, want: u64, found: u64) -> JobError {
    JobError::Other(format!(
        "chunk {digest}, reused from an earlier snapshot, has {found} stored bytes where {want} were found when \
         this snapshot began; take the backup again"
    ))
}

fn swept_meanwhile(digest: &str) -> JobError {
    JobError::Other(format!(
        "chunk {digest}, reused from an earlier snapshot, was removed by the chunk collector while this snapshot \
         was taken; take the backup again"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reused_chunk_swept_meanwhile_fails_the_snapshot() {
        let repo = Repository::memory();
        let kept = ddsvault_repo::sha256_hex(b"kept");
        let swept = ddsvault_repo::sha256_hex(b"swept");
        for (raw, d) in [(&b"kept"[..], &kept), (b"swept", &swept)] {
            repo.put_chunk("dds-s", d, Bytes::copy_from_slice(raw), 3)
                .await
                .expect("put");
        }
        let sizes = repo.stored_chunk_sizes("dds-s").await.expect("list");
        let both = [kept.clone(), swept.clone(), kept.clone()];
        let with_sizes = |ds: &[String]| -> std::collections::HashMap<String, u64> {
            ds.iter().map(|d| (d.clone(), sizes[d])).collect()
        };
        let both = with_sizes(&both);
        verify_reused(&repo, "dds-s", &both)
            .await
            .expect("all there");
        repo.delete(&ddsvault_repo::chunks::chunk_path("dds-s", &swept).expect("path"))
            .await
            .expect("sweep");
        let e = verify_reused(&repo, "dds-s", &both)
            .await
            .expect_err("one vanished");
        assert!(e.to_string().contains(&swept), "{e}");
        let only_kept = with_sizes(std::slice::from_ref(&kept));
        verify_reused(&repo, "dds-s", &only_kept)
            .await
            .expect("the other one is still there");
        // A chunk that is there with another size than when the snapshot began is refused too.
        let resized = [(kept.clone(), sizes[&kept] + 1)].into_iter().collect();
        let e = verify_reused(&repo, "dds-s", &resized)
            .await
            .expect_err("resized");
        assert!(e.to_string().contains("stored bytes"), "{e}");
    }

    #[tokio::test]
    async fn many_reused_chunks_are_verified_by_one_listing() {
        let repo = Repository::memory();
        let digests: Vec<String> = (0..VERIFY_BY_LISTING + 6)
            .map(|i| {
                let raw = format!("chunk {i}");
                ddsvault_repo::sha256_hex(raw.as_bytes())
            })
            .collect();
        for (i, d) in digests.iter().enumerate() {
            repo.put_chunk("dds-s", d, Bytes::from(format!("chunk {i}")), 3)
                .await
                .expect("put");
        }
        assert_eq!(
            repo.stored_chunk_digests("dds-s")
                .await
                .expect("list")
                .len(),
            digests.len()
        );
        let sizes = repo.stored_chunk_sizes("dds-s").await.expect("list");
        let all: std::collections::HashMap<String, u64> =
            digests.iter().map(|d| (d.clone(), sizes[d])).collect();
        verify_reused(&repo, "dds-s", &all)
            .await
            .expect("all there");
        let mut wrong = all.clone();
        *wrong.get_mut(&digests[3]).expect("there") += 1;
        let e = verify_reused(&repo, "dds-s", &wrong)
            .await
            .expect_err("resized");
        assert!(e.to_string().contains(digests[3].as_str()), "{e}");
        let swept = &digests[VERIFY_BY_LISTING + 2];
        repo.delete(&ddsvault_repo::chunks::chunk_path("dds-s", swept).expect("path"))
            .await
            .expect("sweep");
        let e = verify_reused(&repo, "dds-s", &all)
            .await
            .expect_err("one vanished");
        assert!(e.to_string().contains(swept.as_str()), "{e}");
    }

    /// A file that starts like a SQLite database with 4 KiB pages; every page's bytes differ.
    fn fake_sqlite(pages: usize) -> Vec<u8> {
        let mut img: Vec<u8> = (0..pages * 4096)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ (i / 4096) as u8)
            .collect();
        img[..16].copy_from_slice(b"SQLite format 3\0");
        img[16..18].copy_from_slice(&4096u16.to_be_bytes());
        img
    }

    async fn snapshot_of(
        repo: &Repository,
        image: &[u8],
        previous: Option<&SnapshotIndex>,
        written: &NewChunks,
    ) -> Stored {
        let seen = Seen {
            known: Arc::new(repo.stored_chunk_sizes("dds-s").await.expect("list")),
            previous: Arc::new(previous.map(Previous::from_index).unwrap_or_default()),
        };
        let image: Image = Box::new(std::io::Cursor::new(image.to_vec()));
        store_chunks(repo, "dds-s", "db.sqlite", image, 0, 3, seen, written)
            .await
            .expect("stored")
    }

    async fn reassemble(repo: &Repository, f: &SnapshotFile) -> Vec<u8> {
        let mut out = Vec::new();
        for c in &f.chunks {
            out.extend_from_slice(&repo.get_chunk("dds-s", c).await.expect("chunk"));
        }
        out
    }

    fn index_of(s: &Stored) -> SnapshotIndex {
        SnapshotIndex {
            files: vec![s.snapshot_file.clone().expect("a snapshot file")],
        }
    }

    #[tokio::test]
    async fn sqlite_images_are_cut_on_page_runs_and_only_changed_runs_are_stored() {
        let repo = Repository::memory();
        let written = NewChunks::default();
        let a = fake_sqlite(100);
        let first = snapshot_of(&repo, &a, None, &written).await;
        assert_eq!(first.chunking, Some(Chunking::Pages(PAGE_RUN)));
        let fa = first.snapshot_file.clone().expect("file");
        assert_eq!(fa.chunks.len(), 100 * 4096 / PAGE_RUN);
        assert!(fa.chunks.iter().all(|c| c.size == PAGE_RUN as u64
            && c.blake3.is_some()
            && c.stored.is_some_and(|n| n > 0)));
        assert_eq!((first.new_chunks, first.unchanged), (25, 0));
        assert_eq!(fa.sha256, ddsvault_repo::sha256_hex(&a));
        assert_eq!(reassemble(&repo, &fa).await, a);

        // Two scattered pages change and three pages are appended.
        let mut b = a.clone();
        b[10 * 4096 + 100] ^= 0xff;
        b[77 * 4096 + 7] ^= 0x01;
        b.extend_from_slice(&fake_sqlite(103)[100 * 4096..]);
        let second = snapshot_of(&repo, &b, Some(&index_of(&first)), &written).await;
        let fb = second.snapshot_file.clone().expect("file");
        assert_eq!(fb.chunks.len(), 26);
        assert_eq!(fb.chunks[25].size, 3 * 4096);
        // Runs 2 (page 10) and 19 (page 77) changed, run 25 is new; the other 23 were matched by fingerprint.
        assert_eq!((second.new_chunks, second.unchanged), (3, 23));
        assert_eq!(second.reused.len(), 23);
        assert_eq!(fb.sha256, ddsvault_repo::sha256_hex(&b));
        assert_eq!(reassemble(&repo, &fb).await, b);
        assert_eq!(fb.chunks[5], fa.chunks[5]);
        assert_ne!(fb.chunks[2].sha256, fa.chunks[2].sha256);

        // A reused chunk stored with the wrong size (damaged) is written again, and is not counted as this job's
        // (a failure must not delete what committed snapshots name); a missing one (swept, quarantined) too.
        let damaged = fb.chunks[5].clone();
        let damaged_path =
            ddsvault_repo::chunks::chunk_path("dds-s", &damaged.sha256).expect("path");
        repo.put(&damaged_path, Bytes::from_static(b"truncated"))
            .await
            .expect("damage");
        let gone = fb.chunks[9].clone();
        repo.delete(&ddsvault_repo::chunks::chunk_path("dds-s", &gone.sha256).expect("path"))
            .await
            .expect("sweep");
        let before = written.0.lock().expect("lock").len();
        let third = snapshot_of(&repo, &b, Some(&index_of(&second)), &written).await;
        assert_eq!(
            (third.repaired, third.new_chunks, third.unchanged),
            (1, 2, 24)
        );
        let now_written = written.0.lock().expect("lock").clone();
        assert_eq!(now_written[before..], *std::slice::from_ref(&gone.sha256));
        let fc = third.snapshot_file.clone().expect("file");
        assert_eq!(reassemble(&repo, &fc).await, b);
        assert_eq!(
            repo.get_chunk("dds-s", &damaged).await.expect("repaired"),
            b[5 * PAGE_RUN..6 * PAGE_RUN]
        );
    }

    #[tokio::test]
    async fn other_images_keep_content_defined_chunks() {
        let repo = Repository::memory();
        let written = NewChunks::default();
        let img: Vec<u8> = (0u32..200_000)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        let s = snapshot_of(&repo, &img, None, &written).await;
        assert_eq!(s.chunking, Some(Chunking::ContentDefined));
        let f = s.snapshot_file.clone().expect("file");
        assert!(f.chunks.len() > 1);
        assert_eq!(reassemble(&repo, &f).await, img);
        // Shifted by one byte: content-defined cuts find most chunks again (by fingerprint, position-free).
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&img);
        let t = snapshot_of(&repo, &shifted, Some(&index_of(&s)), &written).await;
        assert!(
            t.unchanged >= f.chunks.len() as u64 - 2,
            "{} of {}",
            t.unchanged,
            f.chunks.len()
        );
        assert_eq!(
            reassemble(&repo, &t.snapshot_file.clone().expect("file")).await,
            shifted
        );
    }

    #[test]
    fn the_page_size_comes_from_a_sqlite_header_only() {
        let mut h = fake_sqlite(1);
        assert_eq!(sqlite_page_size(&h[..100]), Some(4096));
        h[16..18].copy_from_slice(&1u16.to_be_bytes());
        assert_eq!(sqlite_page_size(&h[..100]), Some(65_536));
        h[16..18].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(sqlite_page_size(&h[..100]), None);
        assert_eq!(sqlite_page_size(&fake_sqlite(1)[..99]), None);
        assert_eq!(sqlite_page_size(&[0u8; 100]), None);
        assert_eq!(page_run(4096, 100 << 20), PAGE_RUN);
        assert_eq!(page_run(65_536, 0), 65_536);
        // 64 GiB: runs double until there are at most MAX_RUNS_PER_FILE.
        assert_eq!(page_run(4096, 64 << 30), 64 * 1024);
        assert_eq!(page_run(4096, u64::MAX), MAX_PAGE_RUN);
    }

    /// A snapshot exactly as versions before page runs and fingerprints wrote it (content-defined chunks, an index
    /// without `blake3`/`stored`) still restores, and the next snapshot after it works from it.
    #[tokio::test]
    async fn a_snapshot_in_the_earlier_format_still_restores() {
        let repo = Repository::memory();
        let img: Vec<u8> = fake_sqlite(20);
        let mut chunks = Vec::new();
        let mut at = 0usize;
        for (i, len) in [5000usize, 9000, 20_000, 11_000].iter().enumerate() {
            let len = if i == 3 { img.len() - at } else { *len };
            let raw = &img[at..at + len];
            let d = ddsvault_repo::sha256_hex(raw);
            repo.put_chunk("dds-s", &d, Bytes::copy_from_slice(raw), 3)
                .await
                .expect("put");
            chunks.push(format!(r#"{{"sha256":"{d}","size":{len}}}"#));
            at += len;
        }
        let json = format!(
            r#"{{"files":[{{"name":"db.sqlite","size":{},"sha256":"{}","chunks":[{}]}}]}}"#,
            img.len(),
            ddsvault_repo::sha256_hex(&img),
            chunks.join(",")
        );
        let compressed = zstd::bulk::compress(json.as_bytes(), 3).expect("zstd");
        let prefix = Repository::backup_prefix("dds-s", 7);
        repo.put(
            &prefix
                .join(ddsvault_repo::chunks::SNAPSHOT_INDEX_FILE)
                .expect("path"),
            Bytes::from(compressed.clone()),
        )
        .await
        .expect("index");
        let manifest = Manifest {
            format: ddsvault_repo::MANIFEST_FORMAT,
            backup_id: 7,
            instance_id: "dds-s".into(),
            method: ddsvault_catalog::BackupMethod::Snapshot.as_str().into(),
            created_at: Utc::now(),
            files: vec![ManifestFile {
                name: ddsvault_repo::chunks::SNAPSHOT_INDEX_FILE.into(),
                size: compressed.len() as u64,
                sha256: ddsvault_repo::sha256_hex(&compressed),
            }],
            extra: serde_json::Value::Null,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let m = ddsvault_repo::export::materialize(
            &repo,
            &prefix,
            &manifest,
            dir.path(),
            &CancellationToken::new(),
            Arc::new(AtomicU64::new(0)),
        )
        .await
        .expect("restores");
        assert_eq!(m.files, vec!["db.sqlite".to_string()]);
        assert_eq!(
            std::fs::read(dir.path().join("db.sqlite")).expect("file"),
            img
        );

        let old = repo
            .read_snapshot_index(&prefix, &manifest)
            .await
            .expect("read")
            .expect("an index");
        assert!(old.files[0]
            .chunks
            .iter()
            .all(|c| c.blake3.is_none() && c.stored.is_none()));
        let next = snapshot_of(&repo, &img, Some(&old), &NewChunks::default()).await;
        assert_eq!(next.unchanged, 0);
        assert_eq!(
            reassemble(&repo, &next.snapshot_file.clone().expect("file")).await,
            img
        );
    }
}
