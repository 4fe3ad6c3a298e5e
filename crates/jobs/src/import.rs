//! `ddsvault import`: an existing `mongodump --archive` file becomes a Logical backup of an instance, stored and
//! recorded exactly as a backup job stores and records its own archive (staging, rename, manifest last, then the
//! catalog), so DescribeBackups lists it and restores and downloads treat it like any other.
//!
//! Order (why a bad file or a crash leaves nothing that looks complete):
//! 1. the file is verified in full (framing, every namespace's CRC-64, metadata) before anything is written, and
//!    its oplog window, if any, is read;
//! 2. a backup job is created already Running under this process's own owner id (no runner can claim it), with a
//!    heartbeat while it works: if this process dies, a server's recovery fails it once its lease expires and removes
//!    its files like any interrupted backup's;
//! 3. the file is copied into the job's staging area, and the copy is verified again from the repository (it must
//!    hold the same namespaces and documents as step 1 saw);
//! 4. `publish_logical`, as backup jobs do.

use crate::progress::{with_heartbeat, Phase, Progress};
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use ddsvault_catalog::{permanent_expiry, Job, NewBackupJob};
use ddsvault_mongo::archive::{oplog_window, Compression, OplogWindow};
use ddsvault_mongo::restore::{verify_archive, ArchiveSummary};
use ddsvault_repo::{Repository, UploadOptions};
use tokio_util::sync::CancellationToken;

use crate::archive::compression_name;
use crate::backup::logical::{
    add_oplog_details, close_writer, publish_logical, NamespaceEntry, StagedArchive,
};
use crate::context::staging_token;
use crate::{JobError, Runner};

/// What to import.
#[derive(Debug, Clone)]
pub struct ImportRequest {
    /// The configured instance the archive is a backup of.
    pub instance_id: String,
    /// The archive file.
    pub file: PathBuf,
    /// How the file is stored (see `Compression::detect`).
    pub compression: Compression,
    /// When the dump started / finished, if the caller knows better than the archive and the file.
    pub start_time: Option<DateTime<Utc>>,
    /// See `start_time`.
    pub end_time: Option<DateTime<Utc>>,
    /// Days to keep it from its end time (-1 = permanent); `None`: the instance's backup policy.
    pub retention_days: Option<i64>,
}

/// Where an imported backup's start and end times come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimesFrom {
    /// `--start-time` / `--end-time` (both, or one with the other from the archive or file).
    Given,
    /// The archive's oplog (`mongodump --oplog`): its first and last entries.
    Oplog,
    /// The file's birth (or modification) and modification times: the archive records no time.
    File,
}

impl TimesFrom {
    /// The name shown and recorded: `given`, `oplog` or `file`.
    pub fn as_str(self) -> &'static str {
        match self {
            TimesFrom::Given => "given",
            TimesFrom::Oplog => "oplog",
            TimesFrom::File => "file",
        }
    }
}

/// The imported backup.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The new backup set.
    pub backup_id: i64,
    /// The import job recorded for it.
    pub job_id: i64,
    /// When the dump started.
    pub start_time: DateTime<Utc>,
    /// When the dump finished.
    pub end_time: DateTime<Utc>,
    /// When the backup expires ([`ddsvault_catalog::permanent_expiry`] for a permanent one).
    pub expire_time: DateTime<Utc>,
    /// Where `start_time` and `end_time` come from.
    pub times_from: TimesFrom,
    /// The archive's object name under the backup's prefix.
    pub archive_name: String,
    /// Stored bytes of the archive.
    pub size: u64,
    /// Hex SHA-256 of the stored archive.
    pub sha256: String,
    /// The databases the archive holds.
    pub databases: Vec<String>,
    /// Number of collections in the archive.
    pub collections: usize,
    /// Number of documents in the archive.
    pub documents: u64,
    /// Number of oplog entries in the archive (0 without `--oplog`).
    pub oplog_entries: u64,
}

/// What step 1 found in the file.
struct Inspected {
    summary: ArchiveSummary,
    window: Option<OplogWindow>,
    created: Option<DateTime<Utc>>,
    modified: Option<DateTime<Utc>>,
}

fn ts_time(t: bson::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(i64::from(t.time), 0).unwrap_or_default()
}

fn inspect_file(file: &std::path::Path, compression: Compression) -> Result<Inspected, JobError> {
    let name = file.display();
    let open = || -> Result<_, JobError> {
        let f = std::fs::File::open(file).map_err(|e| JobError::Other(format!("{name}: {e}")))?;
        compression
            .wrap_reader(std::io::BufReader::with_capacity(256 * 1024, f))
            .map_err(|e| JobError::Other(format!("{name}: {e}")))
    };
    let summary = verify_archive(open()?)
        .map_err(|e| JobError::Other(format!("{name} is not a valid mongodump archive: {e}")))?;
    let has_oplog = summary
        .namespaces
        .iter()
        .any(|(m, s)| m.db.is_empty() && m.collection == "oplog" && s.documents > 0);
    let window = if has_oplog {
        oplog_window(open()?)
            .map_err(|e| JobError::Other(format!("{name}: reading its oplog: {e}")))?
    } else {
        None
    };
    let meta = std::fs::metadata(file).map_err(|e| JobError::Other(format!("{name}: {e}")))?;
    Ok(Inspected {
        summary,
        window,
        created: meta.created().ok().map(DateTime::<Utc>::from),
        modified: meta.modified().ok().map(DateTime::<Utc>::from),
    })
}

/// The backup's start and end: given times first, then the archive's oplog window, then the file's times (a file
/// mongodump wrote in place was created when the dump started and last modified when it ended).
fn backup_times(
    req: &ImportRequest,
    found: &Inspected,
) -> Result<(DateTime<Utc>, DateTime<Utc>, TimesFrom), JobError> {
    let (start, end, from) = match (req.start_time, req.end_time, found.window) {
        (Some(s), Some(e), _) => (s, e, TimesFrom::Given),
        (s, e, Some(w)) => (
            s.unwrap_or(ts_time(w.first)),
            e.unwrap_or(ts_time(w.last)),
            if s.is_some() || e.is_some() {
                TimesFrom::Given
            } else {
                TimesFrom::Oplog
            },
        ),
        (s, e, None) => {
            let modified = found.modified.unwrap_or_else(Utc::now);
            let end = e.unwrap_or(modified);
            let start = s.unwrap_or_else(|| found.created.filter(|c| *c <= end).unwrap_or(end));
            let from = if s.is_some() || e.is_some() {
                TimesFrom::Given
            } else {
                TimesFrom::File
            };
            (start, end, from)
        }
    };
    if start > end {
        return Err(JobError::Other(format!(
            "start time {start} is after end time {end}"
        )));
    }
    if end > Utc::now() + chrono::Duration::minutes(5) {
        return Err(JobError::Other(format!("end time {end} is in the future")));
    }
    Ok((start, end, from))
}

/// Imports `req.file` as a Logical backup of `req.instance_id` (see the module docs).
///
/// # Errors
/// An unknown instance, an invalid archive (nothing written), an instance with an active job, bad times or
/// retention, repository and catalog errors (the job is failed and its files removed).
pub async fn import_logical_archive(
    runner: &Runner,
    req: &ImportRequest,
    cancel: &CancellationToken,
) -> Result<Imported, JobError> {
    runner.instance(&req.instance_id)?;
    let retention_days = match req.retention_days {
        Some(d) => d,
        None => {
            runner
                .catalog
                .get_policy(&req.instance_id)
                .await?
                .unwrap_or_default()
                .backup_retention_period
        }
    };
    if retention_days != -1 && !(7..=730).contains(&retention_days) {
        return Err(JobError::Other(format!(
            "retention {retention_days} days is out of range: 7 to 730, or -1 (permanent)"
        )));
    }

    // 1. Verify the file before anything is written.
    let (file, compression) = (req.file.clone(), req.compression);
    let found = tokio::task::spawn_blocking(move || inspect_file(&file, compression))
        .await
        .map_err(|e| JobError::Other(format!("verify task: {e}")))??;
    let (start_time, end_time, times_from) = backup_times(req, &found)?;
    let expire_time = if retention_days < 0 {
        permanent_expiry()
    } else {
        end_time + chrono::Duration::days(retention_days)
    };
    // Importing a backup that the next retention pass would delete keeps nothing.
    if expire_time <= Utc::now() {
        return Err(JobError::Other(format!(
            "the archive's backup ended at {end_time}; kept {retention_days} days it expired at {expire_time}: \
             import it with --retention-days -1 (permanent) or a longer period"
        )));
    }
    let summary = &found.summary;
    let databases: Vec<String> = {
        let set: std::collections::BTreeSet<String> = summary
            .namespaces
            .iter()
            .filter(|(m, _)| !m.db.is_empty())
            .map(|(m, _)| m.db.clone())
            .collect();
        set.into_iter().collect()
    };

    // 2. The job, Running under our own owner id from the start.
    let server_version = summary.header.server_version.clone();
    let engine_version = server_version
        .split('.')
        .take(2)
        .collect::<Vec<_>>()
        .join(".");
    let now = Utc::now();
    let (job, backup) = runner
        .catalog
        .create_claimed_backup_job(
            &NewBackupJob {
                instance_id: req.instance_id.clone(),
                method: ddsvault_catalog::BackupMethod::Logical,
                mode: "Manual".into(),
                retention_days,
                engine_version,
                params: ddsvault_catalog::BackupJobParams {
                    import: Some(ddsvault_catalog::ImportSource {
                        file: req.file.display().to_string(),
                    }),
                    ..ddsvault_catalog::BackupJobParams::new(
                        ddsvault_catalog::BackupMethod::Logical,
                        retention_days,
                    )
                }
                .to_value(),
                now: start_time,
            },
            &runner.node_id,
            now,
            runner.lease_until(now),
        )
        .await?;
    // The job's lease is renewed while it works; were it lost (this process paused or cut off from the catalog
    // for longer than the lease, and a server's recovery took the job over), nothing more is written.
    let lease_cancel = cancel.child_token();
    let steps = async {
        let progress = Progress::new(job.id);
        progress.set_phase(Phase::Uploading);
        let work_cancel = lease_cancel.child_token();
        let work = store(runner, req, &job, &found, &work_cancel);
        let stored = match with_heartbeat(runner, &job, &progress, &work_cancel, work).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) | Err(e) => return Err(e),
        };

        // 4. Publish as backup jobs do.
        let archive_name = stored.archive_name.clone();
        let mut details = serde_json::json!({
            "archive": archive_name,
            "compression": compression_name(&req.compression),
            "format": "mongodump-archive",
            "documents": summary.documents,
            "raw_bytes": summary.bytes,
            "collections": summary.namespaces.iter().filter(|(m, _)| !m.db.is_empty()).count(),
            "server_version": server_version,
            "tool_version": summary.header.tool_version,
            "sha256": stored.sha256,
            "imported_from": req.file.display().to_string(),
            "times_from": times_from.as_str(),
        });
        if let Some(w) = &found.window {
            add_oplog_details(&mut details, w.first, w.last, w.entries);
        }
        let namespaces = summary
            .namespaces
            .iter()
            .filter(|(m, _)| !m.db.is_empty())
            .map(|(m, s)| NamespaceEntry {
                db: m.db.clone(),
                collection: m.collection.clone(),
                documents: s.documents,
                raw_bytes: s.bytes,
                crc: s.crc,
                // An imported archive was dumped elsewhere: nobody computed the checksum on the source's reads, and
                // one computed now from the archive would only repeat its CRC check. Drills compare counts only.
                checksum: None,
            })
            .collect();
        let published = publish_logical(
            runner,
            &job,
            backup.id,
            StagedArchive {
                staging: stored.staging,
                staged_archive: stored.staged_archive,
                archive_name: archive_name.clone(),
                size: stored.size,
                sha256: stored.sha256.clone(),
                databases: databases.clone(),
                namespaces,
                details,
                end_time,
                expire_time,
            },
        )
        .await;
        published?;
        Ok((stored.size, stored.sha256, archive_name))
    };
    let (size, sha256, archive_name) = match runner.holding_lease(&job, &lease_cancel, steps).await
    {
        // Committed: the catalog accepted this process's token, so the job is its own whatever the renewals
        // said.
        (Ok(done), _) => done,
        // Another process took the job over: it fails the job and removes its files; nothing is written here.
        (Err(e), lost) if lost || e.is_lease_lost() => {
            return Err(JobError::Catalog(
                ddsvault_catalog::CatalogError::LeaseLost(job.id),
            ))
        }
        (Err(e), _) => return Err(fail(runner, &job, e).await),
    };
    Ok(Imported {
        backup_id: backup.id,
        job_id: job.id,
        start_time,
        end_time,
        expire_time,
        times_from,
        archive_name,
        size,
        sha256,
        databases,
        collections: summary
            .namespaces
            .iter()
            .filter(|(m, _)| !m.db.is_empty())
            .count(),
        documents: summary.documents,
        oplog_entries: found.window.map_or(0, |w| w.entries),
    })
}

/// Fails the import's job with `e` and removes its files, as recovery does for an interrupted backup; returns `e`.
async fn fail(runner: &Runner, job: &Job, e: JobError) -> JobError {
    if let Err(ce) = runner
        .catalog
        .fail_leased_job(
            job.id,
            &runner.node_id,
            job.lease_token,
            e.code(),
            &e.to_string(),
            Utc::now(),
        )
        .await
    {
        tracing::error!(job_id = job.id, error = %ce, "could not record the import's failure");
    }
    runner.remove_job_files(job).await;
    e
}

/// The archive as stored in the job's staging area.
struct Stored {
    staging: ddsvault_repo::RepoPath,
    staged_archive: ddsvault_repo::RepoPath,
    archive_name: String,
    size: u64,
    sha256: String,
}

/// Step 3: copy the file into staging, then verify the stored copy.
async fn store(
    runner: &Runner,
    req: &ImportRequest,
    job: &Job,
    found: &Inspected,
    cancel: &CancellationToken,
) -> Result<Stored, JobError> {
    let archive_name = format!("archive{}", req.compression.extension());
    let staging = Repository::staging_prefix(&staging_token(job.id));
    let staged_archive = staging.join(&archive_name)?;
    let (mut writer, upload) = runner.repo.upload(
        &staged_archive,
        UploadOptions::default().with_cancel(cancel.clone()),
    );
    let file = req.file.clone();
    let copied = tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(&file)?;
        std::io::copy(&mut f, &mut writer)?;
        Ok::<_, std::io::Error>(writer)
    })
    .await
    .map_err(|e| JobError::Other(format!("copy task: {e}")));
    let writer = match copied {
        Ok(Ok(w)) => w,
        Ok(Err(e)) => {
            upload.abort().await;
            return Err(JobError::Other(format!("read {}: {e}", req.file.display())));
        }
        Err(e) => {
            upload.abort().await;
            return Err(e);
        }
    };
    close_writer(writer).await?;
    let uploaded = upload.finish().await?;

    // The stored bytes, read back through the same path restores use, must be the archive step 1 verified.
    let opener =
        crate::archive_opener(runner.repo.clone(), staged_archive.clone(), req.compression);
    let again = tokio::task::spawn_blocking(move || {
        let input = opener().map_err(|e| JobError::Other(format!("open stored archive: {e}")))?;
        verify_archive(input).map_err(|e| JobError::Other(format!("stored archive: {e}")))
    })
    .await
    .map_err(|e| JobError::Other(format!("verify task: {e}")))??;
    if again.namespaces != found.summary.namespaces || again.documents != found.summary.documents {
        return Err(JobError::Other(format!(
            "{} changed while it was imported: the stored copy differs from the verified file",
            req.file.display()
        )));
    }
    Ok(Stored {
        staging,
        staged_archive,
        archive_name,
        size: uploaded.size,
        sha256: uploaded.sha256,
    })
}
