//! Execution of a logical backup job.
//!
//! Order of durability (why a crash can never leave a complete-looking backup):
//! 1. the archive streams into `staging/job-<id>/` (an unfinished upload is never published);
//! 2. the finished archive is renamed into `backups/<instance>/<backup_id>/`;
//! 3. `manifest.json` (sizes, SHA-256) is written last in that prefix;
//! 4. only then does the catalog mark the job and backup Success.
//!
//! A crash before 4 leaves the job Running in the catalog; the next start fails it and deletes both prefixes.

use std::io::Write;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use ddsvault_catalog::{permanent_expiry, BackupCompletion, Job};
use ddsvault_mongo::archive::Compression;
use ddsvault_mongo::logical::{logical_dump, DumpOptions, DumpProgress};
use ddsvault_mongo::topology::{connect, discover, list_user_databases};
use ddsvault_repo::{Manifest, ManifestFile, Repository, UploadWriter};
use tokio_util::sync::CancellationToken;

use crate::runner::{staging_token, HEARTBEAT_INTERVAL};
use crate::{JobError, Runner};

pub(crate) async fn run(
    runner: &Runner,
    job: &Job,
    cancel: &CancellationToken,
) -> Result<(), JobError> {
    let method = job.params.get("method").and_then(|v| v.as_str());
    if let Some(file_method) = method.and_then(crate::physical::FileMethod::from_name) {
        return crate::physical::run(runner, job, file_method, cancel).await;
    }
    let backup_id = job
        .backup_id
        .ok_or_else(|| JobError::Other("backup job has no backup set".into()))?;
    let spec = runner.instance(&job.instance_id)?;

    let client = connect(&spec.uri).await?;
    let topology = discover(&client).await?;
    let databases = match prior_listing(job, Utc::now()) {
        Some(listed) => listed,
        None => list_user_databases(&client).await?,
    };
    if databases.is_empty() {
        return Err(JobError::NoDatabase(job.instance_id.clone()));
    }

    let compression = compression_for(job, &runner.settings.compression);
    let archive_name = format!("archive{}", compression.extension());
    let staging = Repository::staging_prefix(&staging_token(job.id));
    let prefix = Repository::backup_prefix(&job.instance_id, backup_id);
    let final_archive = prefix.join(&archive_name)?;
    // Staged and renamed into place where renames are atomic; under its final key on S3 (the manifest, written
    // last, commits it there).
    let staged_archive = runner
        .repo
        .write_path(&staging.join(&archive_name)?, &final_archive);
    let (writer, upload) = runner
        .repo
        .upload(&staged_archive, runner.repo.upload_options());

    // The dump owns its writer on a blocking thread and drops it when done, while an unclosed UploadWriter
    // aborts on drop. Sharing it lets us close it only when the dump reports success.
    let shared = Arc::new(Mutex::new(Some(writer)));
    let sink = SharedWriter(Arc::clone(&shared));

    let percent = Arc::new(AtomicI32::new(0));
    let progress_cell = Arc::clone(&percent);
    let progress = move |p: DumpProgress| {
        // Collections not counted (many collections on FerretDB): progress in collections instead.
        let pct = if p.docs_total_estimate > 0 {
            percent_of(p.docs_done, p.docs_total_estimate)
        } else {
            percent_of(p.namespaces_done, p.namespaces_total)
        };
        progress_cell.store(pct, Ordering::Relaxed);
    };

    let opts = DumpOptions {
        compression,
        parallel_collections: runner.settings.parallel_collections,
        ..DumpOptions::default()
    };
    let dump_cancel = cancel.child_token();
    let dump = logical_dump(
        &client,
        &databases,
        &opts,
        Box::new(sink),
        &progress,
        &dump_cancel,
    );
    let summary = match with_heartbeat(runner, job.id, &percent, &dump_cancel, dump).await? {
        // Nothing dumped from an earlier listing: if the databases are gone meanwhile, say so as a fresh
        // listing would have.
        Ok(s)
            if s.namespaces.is_empty()
                && list_user_databases(&client)
                    .await
                    .is_ok_and(|d| d.is_empty()) =>
        {
            upload.abort().await;
            return Err(JobError::NoDatabase(job.instance_id.clone()));
        }
        Ok(s) => s,
        Err(e) => {
            upload.abort().await;
            return Err(e.into());
        }
    };
    let writer = shared
        .lock()
        .map_err(|_| JobError::Other("archive writer lock poisoned".into()))?
        .take()
        .ok_or_else(|| JobError::Other("archive writer already taken".into()))?;
    close_writer(writer).await?;
    let uploaded = upload.finish().await?;

    runner.repo.rename(&staged_archive, &final_archive).await?;
    let end_time = Utc::now();
    let mut details = serde_json::json!({
        "archive": archive_name,
        "compression": compression_name(&compression),
        "format": "mongodump-archive",
        "documents": summary.documents,
        "raw_bytes": summary.raw_bytes,
        "collections": summary.namespaces.len(),
        "server_version": topology.server_version,
        "topology": format!("{:?}", topology.kind),
        "set_name": topology.set_name,
        "sha256": uploaded.sha256,
    });
    // The consistency point: restores replay the oplog up to this entry (ddsvault_mongo::oplog).
    if let Some(o) = &summary.oplog {
        let consistent_time = chrono::DateTime::from_timestamp(i64::from(o.end_ts.time), 0)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default();
        details["consistent_ts"] =
            serde_json::json!({ "t": o.end_ts.time, "i": o.end_ts.increment });
        details["consistent_time"] = serde_json::json!(consistent_time);
        details["oplog_start_ts"] =
            serde_json::json!({ "t": o.start_ts.time, "i": o.start_ts.increment });
        details["oplog_entries"] = serde_json::json!(o.entries);
    }
    let manifest = Manifest {
        format: 1,
        backup_id,
        instance_id: job.instance_id.clone(),
        method: "Logical".into(),
        created_at: end_time,
        files: vec![ManifestFile {
            name: archive_name.clone(),
            size: uploaded.size,
            sha256: uploaded.sha256.clone(),
        }],
        extra: serde_json::json!({
            "databases": summary.databases,
            "namespaces": summary.namespaces.iter().map(|n| serde_json::json!({
                "db": n.db, "collection": n.collection, "documents": n.documents,
                "raw_bytes": n.raw_bytes, "crc": n.crc,
            })).collect::<Vec<_>>(),
            "details": details,
        }),
    };
    runner.repo.write_manifest(&prefix, &manifest).await?;

    let expire_time = expire_time_of(job, end_time);
    let done = BackupCompletion {
        end_time,
        expire_time,
        size: i64::try_from(uploaded.size).unwrap_or(i64::MAX),
        db_names: summary.databases.join(","),
        repo_prefix: prefix.to_string(),
        details,
    };
    if let Err(e) = runner
        .catalog
        .complete_backup(job.id, &runner.node_id, &done)
        .await
    {
        // Whoever took the job from us (recovery) also owns the cleanup decision; our files must not survive
        // as an orphan that looks complete.
        let _ = runner.repo.delete_prefix(&prefix).await;
        return Err(e.into());
    }
    let _ = runner.repo.delete_prefix(&staging).await;
    Ok(())
}

/// How old CreateBackup's listing of the databases may be for its job to use it instead of listing again (FerretDB
/// answers `listDatabases` by measuring every collection: 0.8 s for 1,000 small ones, ~0.2 s per 100 MB). A job
/// that waited longer in the queue lists afresh.
///
/// Using the earlier listing changes nothing in what the backup means: its namespaces are those of the listed
/// databases as planned when the dump starts, their documents are read after the oplog window opens, and a
/// restore replays only the entries of the namespaces it restores. A database created in between is not in this
/// backup, as one created during the job's own listing would not be.
const PRIOR_LISTING_MAX_AGE: chrono::Duration = chrono::Duration::seconds(60);

/// The databases CreateBackup listed for this job (`listing` in its parameters), if listed recently enough at
/// `now`.
fn prior_listing(job: &Job, now: chrono::DateTime<Utc>) -> Option<Vec<String>> {
    let l = job.params.get("listing")?;
    let at = chrono::DateTime::from_timestamp_millis(l.get("at_ms")?.as_i64()?)?;
    // A listing "from the future" means clocks disagree between processes: do not trust it.
    if now - at > PRIOR_LISTING_MAX_AGE || at > now + chrono::Duration::seconds(5) {
        return None;
    }
    l.get("databases")?
        .as_array()?
        .iter()
        .map(|d| d.as_str().map(str::to_string))
        .collect()
}

fn compression_for(job: &Job, default: &Compression) -> Compression {
    match job.params.get("compression").and_then(|v| v.as_str()) {
        Some("gzip") => Compression::Gzip,
        Some("zstd") => match default {
            Compression::Zstd { .. } => *default,
            _ => Compression::Zstd { level: 3 },
        },
        _ => *default,
    }
}

fn compression_name(c: &Compression) -> &'static str {
    match c {
        Compression::None => "none",
        Compression::Zstd { .. } => "zstd",
        Compression::Gzip => "gzip",
    }
}

/// Progress percent for the catalog. Estimates can undershoot, so it stays below 100 until the job is really done.
pub(crate) fn percent_of(done: u64, total: u64) -> i32 {
    done.saturating_mul(100)
        .checked_div(total)
        .map_or(0, |v| v.min(99) as i32)
}

/// Runs `work` while refreshing the job's heartbeat with `percent`. If the catalog says the job is no longer
/// ours, `cancel` stops the work and the job ends with that error.
pub(crate) async fn with_heartbeat<T>(
    runner: &Runner,
    job_id: i64,
    percent: &AtomicI32,
    cancel: &CancellationToken,
    work: impl std::future::Future<Output = T>,
) -> Result<T, JobError> {
    tokio::select! {
        r = work => Ok(r),
        lost = heartbeat_loop(runner, job_id, percent, cancel) => {
            cancel.cancel();
            Err(lost)
        }
    }
}

/// Refreshes the heartbeat until cancelled; returns only if the catalog says the job is no longer ours (or the
/// catalog keeps failing), which must stop the dump.
async fn heartbeat_loop(
    runner: &Runner,
    job_id: i64,
    percent: &AtomicI32,
    cancel: &CancellationToken,
) -> JobError {
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                // Never resolve on cancellation: the dump observes the same token and ends the select.
                std::future::pending::<()>().await;
            }
            _ = tokio::time::sleep(HEARTBEAT_INTERVAL) => {}
        }
        match runner
            .catalog
            .heartbeat(
                job_id,
                &runner.node_id,
                percent.load(Ordering::Relaxed),
                Utc::now(),
            )
            .await
        {
            Ok(true) => failures = 0,
            Ok(false) => {
                return JobError::Cancelled("the job was taken over or failed by recovery".into())
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "heartbeat failed");
                if failures >= 10 {
                    return JobError::Catalog(e);
                }
            }
        }
    }
}

async fn close_writer(writer: UploadWriter) -> Result<(), JobError> {
    // Closing flushes the last chunk through a bounded channel: a blocking call, kept off the runtime threads.
    tokio::task::spawn_blocking(move || writer.close())
        .await
        .map_err(|e| JobError::Other(format!("close archive writer: {e}")))?
        .map_err(|e| JobError::Other(format!("close archive writer: {e}")))
}

/// A `Write` that forwards to an `UploadWriter` still owned by the job.
struct SharedWriter(Arc<Mutex<Option<UploadWriter>>>);

impl Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut guard = self
            .0
            .lock()
            .map_err(|_| std::io::Error::other("archive writer lock poisoned"))?;
        match guard.as_mut() {
            Some(w) => w.write(buf),
            None => Err(std::io::Error::other("archive writer already closed")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let mut guard = self
            .0
            .lock()
            .map_err(|_| std::io::Error::other("archive writer lock poisoned"))?;
        match guard.as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

/// When a backup that ended at `end_time` expires: the job's `retention_days` later, or never for -1.
pub(crate) fn expire_time_of(job: &Job, end_time: chrono::DateTime<Utc>) -> chrono::DateTime<Utc> {
    let retention = job
        .params
        .get("retention_days")
        .and_then(|v| v.as_i64())
        .unwrap_or(30);
    if retention < 0 {
        permanent_expiry()
    } else {
        end_time + chrono::Duration::days(retention)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ddsvault_catalog::JobState;

    fn job(params: serde_json::Value) -> Job {
        Job {
            id: 1,
            kind: "backup".into(),
            instance_id: "dds-a".into(),
            backup_id: Some(1),
            state: JobState::Running,
            mode: "Manual".into(),
            progress: 0,
            error: None,
            error_code: None,
            params,
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
            owner: None,
            heartbeat_at: None,
            result: serde_json::Value::Null,
        }
    }

    #[test]
    fn a_recent_listing_is_used_and_anything_else_is_listed_again() {
        let now = Utc::now();
        let listed = |ago: i64, dbs: serde_json::Value| {
            job(serde_json::json!({"method": "Logical", "listing": {
                "databases": dbs,
                "at_ms": (now - chrono::Duration::seconds(ago)).timestamp_millis(),
            }}))
        };
        assert_eq!(
            prior_listing(&listed(5, serde_json::json!(["a", "b"])), now),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(
            prior_listing(&listed(61, serde_json::json!(["a"])), now),
            None
        );
        assert_eq!(
            prior_listing(&listed(-60, serde_json::json!(["a"])), now),
            None
        );
        assert_eq!(
            prior_listing(&listed(5, serde_json::json!(["a", 7])), now),
            None
        );
        assert_eq!(prior_listing(&listed(5, serde_json::json!("a")), now), None);
        // Automatic backups (the scheduler) and older jobs carry no listing.
        assert_eq!(
            prior_listing(&job(serde_json::json!({"method": "Logical"})), now),
            None
        );
    }
}
