//! Execution of Physical and Snapshot backup jobs: a consistent image of every data file of the node
//! (ddsvault_mongo::physical), stored as whole files (Physical) or as deduplicated chunks (Snapshot).
//!
//! Same durability order as logical backups (see `backup.rs`): Physical files go to `staging/job-<id>/` and are
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
use ddsvault_catalog::{BackupCompletion, Job};
use ddsvault_mongo::archive::Compression;
use ddsvault_mongo::physical::{self, sqlite::DataFile};
use ddsvault_mongo::topology::{connect, discover, SYSTEM_DATABASES};
use ddsvault_repo::{
    ChunkRef, Manifest, ManifestFile, RepoPath, Repository, SnapshotFile, SnapshotIndex,
};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::progress::{percent_in, with_heartbeat, Phase, Progress};
use crate::runner::staging_token;
use crate::{JobError, Runner};

/// Content-defined chunking bounds. SQLite writes whole 4 KiB pages; small chunks keep a scattered change
/// from rewriting much, while staying large enough that per-object overhead does not dominate.
pub const CHUNK_MIN: u32 = 4 * 1024;
/// Average chunk size.
pub const CHUNK_AVG: u32 = 8 * 1024;
/// Maximum chunk size.
pub const CHUNK_MAX: u32 = 32 * 1024;
/// Chunks stored at once by one snapshot: each is a small write and an fsync, so many overlap well.
const CHUNK_PUTS_IN_FLIGHT: usize = 16;
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
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "Physical" => Some(Self::Physical),
            "Snapshot" => Some(Self::Snapshot),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Physical => "Physical",
            Self::Snapshot => "Snapshot",
        }
    }
}

/// Where Physical backups keep the files, relative to the backup prefix.
pub const FILES_DIR: &str = "files";

/// The scratch directory of a job; derived from the job id so recovery can remove it.
pub(crate) fn scratch_dir(root: &Path, job_id: i64) -> PathBuf {
    root.join(staging_token(job_id))
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
    /// Chunks the store already had (not written by this job): see [`verify_reused`].
    reused: Vec<String>,
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

async fn run_job(
    runner: &Runner,
    job: &Job,
    method: FileMethod,
    cancel: &CancellationToken,
    written: &NewChunks,
) -> Result<(), JobError> {
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

    let client = connect(&spec.uri).await?;
    let topology = discover(&client).await?;
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

    let total: u64 = files.iter().map(|f| on_disk_size(&f.path)).sum();
    let done = Arc::new(AtomicU64::new(0));
    let progress = Progress::new(job.id);
    let staging = Repository::staging_prefix(&staging_token(job.id));
    let prefix = Repository::backup_prefix(&job.instance_id, backup_id);
    let level = match runner.settings.compression {
        Compression::Zstd { level } => level,
        _ => 3,
    };

    // What the chunk store holds already, from one listing: a chunk in it is reused without asking the store.
    // A chunk swept after this listing is caught by verify_reused before the snapshot commits.
    let known = Arc::new(match method {
        FileMethod::Snapshot => runner.repo.stored_chunk_digests(&job.instance_id).await?,
        FileMethod::Physical => std::collections::HashSet::new(),
    });

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
                    store_chunks(runner, &job.instance_id, f, image, level, &known, written).await?
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
    let stored = with_heartbeat(runner, job.id, &progress, &work_cancel, work).await??;
    progress.set_phase(Phase::Uploading);

    let mut manifest_files = Vec::new();
    let mut index = SnapshotIndex::default();
    for s in &stored {
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
    let image_bytes: u64 = stored.iter().map(|s| s.size).sum();
    let details = serde_json::json!({
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
        "server_version": topology.server_version,
        "ferretdb_version": topology.ferretdb_version,
        "topology": format!("{:?}", topology.kind),
        "set_name": topology.set_name,
    });
    let end_time = Utc::now();
    if method == FileMethod::Snapshot {
        // Chunk files were written without an fsync each: one sync of the repository's filesystem makes them all
        // durable before the index names them.
        runner.repo.sync_deferred().await?;
        manifest_files.push(
            runner
                .repo
                .write_snapshot_index(&prefix, &index, level)
                .await?,
        );
        verify_reused(
            &runner.repo,
            &job.instance_id,
            stored.iter().flat_map(|s| s.reused.iter()),
        )
        .await?;
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
        &prefix,
        &staging,
        image_bytes,
        &databases,
        crate::integrity::sealed_details(details, manifest_sha256),
        end_time,
    )
    .await
}

/// Marks the job and backup Success (after the manifest is written), as the logical job does.
#[allow(clippy::too_many_arguments)]
async fn complete(
    runner: &Runner,
    job: &Job,
    prefix: &RepoPath,
    staging: &RepoPath,
    size: u64,
    databases: &[String],
    details: serde_json::Value,
    end_time: chrono::DateTime<Utc>,
) -> Result<(), JobError> {
    let expire_time = crate::backup::expire_time_of(job, end_time);
    let done = BackupCompletion {
        end_time,
        expire_time,
        size: i64::try_from(size).unwrap_or(i64::MAX),
        db_names: databases.join(","),
        repo_prefix: prefix.to_string(),
        details,
    };
    if let Err(e) = runner
        .catalog
        .complete_backup(job.id, &runner.node_id, &done)
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
    })
}

/// Snapshot: cuts the image into content-defined chunks on a blocking thread (hashing there too) and stores
/// the ones the instance's chunk store does not have yet, a few at a time.
async fn store_chunks(
    runner: &Runner,
    instance_id: &str,
    f: &DataFile,
    image: Image,
    level: i32,
    known: &std::collections::HashSet<String>,
    written: &NewChunks,
) -> Result<Stored, JobError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, Bytes)>(CHUNK_PUTS_IN_FLIGHT * 2);
    let chunker = tokio::task::spawn_blocking(move || -> Result<(u64, String), String> {
        let mut whole = Sha256::new();
        let mut size = 0u64;
        let cdc = fastcdc::v2020::StreamCDC::new(
            std::io::BufReader::new(image),
            CHUNK_MIN,
            CHUNK_AVG,
            CHUNK_MAX,
        );
        for chunk in cdc {
            let chunk = chunk.map_err(|e| e.to_string())?;
            whole.update(&chunk.data);
            size += chunk.data.len() as u64;
            let digest = hex::encode(Sha256::digest(&chunk.data));
            if tx.blocking_send((digest, Bytes::from(chunk.data))).is_err() {
                // The consumer stopped (an error it reports itself).
                break;
            }
        }
        Ok((size, hex::encode(whole.finalize())))
    });

    let repo = &runner.repo;
    // Set at the first failed put: the puts still queued behind it are skipped rather than written (a full
    // repository fails them all anyway), so the failure is reported promptly.
    let failed = std::sync::atomic::AtomicBool::new(false);
    let failed = &failed;
    let mut puts = Box::pin(
        futures::stream::poll_fn(|cx| {
            if failed.load(Ordering::Relaxed) {
                // Idempotent. Wakes a chunker blocked on a full channel; what was queued is still received.
                rx.close();
            }
            rx.poll_recv(cx)
        })
        .map(|(digest, raw)| async move {
            let len = raw.len() as u64;
            let written = if known.contains(&digest) || failed.load(Ordering::Relaxed) {
                None
            } else {
                repo.put_chunk(instance_id, &digest, raw, level).await?
            };
            Ok::<_, JobError>((
                ChunkRef {
                    sha256: digest,
                    size: len,
                },
                written,
            ))
        })
        .buffered(CHUNK_PUTS_IN_FLIGHT),
    );
    let mut chunks = Vec::new();
    let mut new_bytes = 0u64;
    let mut new_chunks = 0u64;
    let mut reused = Vec::new();
    let mut failure = None;
    // On a failure the stream is still drained to its end, never dropped with puts in flight: a put abandoned
    // mid-way could finish after the failed job removed its chunks and leave one behind. The channel is closed
    // so the chunker's next send fails and it stops reading the image (ending its read transaction); what it
    // had queued is skipped through `failed`.
    while let Some(r) = puts.next().await {
        match r {
            Ok((c, written_bytes)) => {
                if let Some(n) = written_bytes {
                    written.push(c.sha256.clone());
                    new_bytes += n;
                    new_chunks += 1;
                } else {
                    reused.push(c.sha256.clone());
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
    let (size, sha256) = chunked.map_err(|e| JobError::Other(format!("chunk {}: {e}", f.name)))?;
    let sum: u64 = chunks.iter().map(|c| c.size).sum();
    if sum != size {
        return Err(JobError::Other(format!(
            "chunk {}: stored {sum} of {size} bytes",
            f.name
        )));
    }
    let n = chunks.len() as u64;
    Ok(Stored {
        manifest_file: None,
        snapshot_file: Some(SnapshotFile {
            name: f.name.clone(),
            size,
            sha256,
            chunks,
        }),
        size,
        new_bytes,
        chunks: n,
        new_chunks,
        reused,
    })
}

/// Checks, after the snapshot's index is written and before its manifest commits it, that every chunk it reused
/// is still there. The chunk collector (crate::gc) never sweeps while a backup job of the instance is pending or
/// running, and re-checks that before every batch it deletes; but a chunk it had already chosen may be deleted
/// just after a job was created, and a reused chunk keeps its old mtime, so the grace period does not cover
/// it. Such a deletion happens before this check (the job still has everything to do after its creation), so
/// it is caught here and the job fails cleanly instead of committing a snapshot that cannot be restored.
/// Chunks this job wrote itself are new, so the collector's grace period protects them.
async fn verify_reused<'a>(
    repo: &Repository,
    instance_id: &str,
    reused: impl Iterator<Item = &'a String>,
) -> Result<(), JobError> {
    let seen: std::collections::HashSet<&str> = reused.map(String::as_str).collect();
    if seen.len() > VERIFY_BY_LISTING {
        let stored = repo.stored_chunk_digests(instance_id).await?;
        if let Some(digest) = seen.iter().find(|d| !stored.contains(**d)) {
            return Err(swept_meanwhile(digest));
        }
        return Ok(());
    }
    for digest in seen {
        let path = ddsvault_repo::chunks::chunk_path(instance_id, digest)?;
        match repo.head(&path).await {
            Ok(_) => {}
            Err(ddsvault_repo::RepoError::NotFound { .. }) => return Err(swept_meanwhile(digest)),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
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
        let both = [kept.clone(), swept.clone(), kept.clone()];
        verify_reused(&repo, "dds-s", both.iter())
            .await
            .expect("all there");
        repo.delete(&ddsvault_repo::chunks::chunk_path("dds-s", &swept).expect("path"))
            .await
            .expect("sweep");
        let e = verify_reused(&repo, "dds-s", both.iter())
            .await
            .expect_err("one vanished");
        assert!(e.to_string().contains(&swept), "{e}");
        verify_reused(&repo, "dds-s", [kept].iter())
            .await
            .expect("the other one is still there");
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
        verify_reused(&repo, "dds-s", digests.iter())
            .await
            .expect("all there");
        let swept = &digests[VERIFY_BY_LISTING + 2];
        repo.delete(&ddsvault_repo::chunks::chunk_path("dds-s", swept).expect("path"))
            .await
            .expect("sweep");
        let e = verify_reused(&repo, "dds-s", digests.iter())
            .await
            .expect_err("one vanished");
        assert!(e.to_string().contains(swept.as_str()), "{e}");
    }
}
