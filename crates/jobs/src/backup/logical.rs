//! Execution of a logical backup job.
//!
//! Order of durability (why a crash can never leave a complete-looking backup):
//! 1. the archive streams into `staging/job-<id>/` (an unfinished upload is never published);
//! 2. the finished archive is renamed into `backups/<instance>/<backup_id>/`;
//! 3. `manifest.json` (sizes, SHA-256) is written last in that prefix;
//! 4. only then does the catalog mark the job and backup Success.
//!
//! A crash before 4 leaves the job Running in the catalog; the next start fails it and deletes both prefixes.
//!
//! A backup is `Success` only if it can be restored: the dump checks every oplog entry it captures with the
//! restore's own code (`ddsvault_mongo::oplog`), so an entry no restore could apply fails this job, naming the entry
//! and its kind, before anything is published.

use std::io::Write;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use ddsvault_catalog::{ArchiveCompression, BackupCompletion, BackupJobParams, Job};
use ddsvault_mongo::archive::Compression;
use ddsvault_mongo::logical::{logical_dump, DumpOptions, DumpProgress};
use ddsvault_mongo::topology::{connect, discover, list_user_databases};
use ddsvault_repo::{Manifest, ManifestFile, RepoPath, Repository, UploadWriter};
use tokio_util::sync::CancellationToken;

use super::plan::expire_time_of;
use crate::archive::compression_name;
use crate::context::staging_token;
use crate::progress::{percent_in, with_heartbeat, Phase, Progress};
use crate::{JobError, Runner};

/// The Logical backup job `job` (its parameters `params`): a mongodump-format archive of its databases and the
/// oplog written meanwhile, uploaded and published with its manifest.
pub(crate) async fn run(
    runner: &Runner,
    job: &Job,
    params: &BackupJobParams,
    cancel: &CancellationToken,
) -> Result<(), JobError> {
    let backup_id = job
        .backup_id
        .ok_or_else(|| JobError::Other("backup job has no backup set".into()))?;
    let spec = runner.instance(&job.instance_id)?;

    let client = connect(&spec.uri).await?;
    let topology = discover(&client).await?;
    let databases = match prior_listing(params, Utc::now()) {
        Some(listed) => listed,
        None => list_user_databases(&client).await?,
    };
    if databases.is_empty() {
        return Err(JobError::NoDatabase(job.instance_id.clone()));
    }

    let compression = compression_for(params, &runner.settings.compression);
    let archive_name = format!("archive{}", compression.extension());
    let staging = Repository::staging_prefix(&staging_token(job.id));
    let final_archive =
        Repository::backup_prefix(&job.instance_id, backup_id).join(&archive_name)?;
    // Staged and renamed into place where renames are atomic; under its final key on S3 (no rename there: the
    // manifest, written last, is what makes the backup visible).
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

    let job_progress = Arc::new(Progress::new(job.id));
    let cell = Arc::clone(&job_progress);
    let progress = move |p: DumpProgress| dump_progress(&cell, &p);

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
    let summary = match with_heartbeat(runner, job, &job_progress, &dump_cancel, dump).await? {
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
    job_progress.set_phase(Phase::Uploading);
    job_progress.set_percent(95);
    let writer = shared
        .lock()
        .map_err(|_| JobError::Other("archive writer lock poisoned".into()))?
        .take()
        .ok_or_else(|| JobError::Other("archive writer already taken".into()))?;
    close_writer(writer).await?;
    let uploaded = upload.finish().await?;

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
        add_oplog_details(&mut details, o.start_ts, o.end_ts, o.entries);
    }
    let namespaces = summary
        .namespaces
        .iter()
        .map(|n| NamespaceEntry {
            db: n.db.clone(),
            collection: n.collection.clone(),
            documents: n.documents,
            raw_bytes: n.raw_bytes,
            crc: n.crc,
            checksum: Some(n.checksum.to_hex()),
        })
        .collect();
    publish_logical(
        runner,
        job,
        backup_id,
        StagedArchive {
            staging,
            staged_archive,
            archive_name,
            size: uploaded.size,
            sha256: uploaded.sha256,
            databases: summary.databases,
            namespaces,
            details,
            end_time,
            expire_time: expire_time_of(job, end_time),
        },
    )
    .await
}

/// Records an oplog window in a logical backup's details: `consistent_ts`/`consistent_time` (the point a restore
/// that replays the oplog reaches), `oplog_start_ts`, `oplog_entries`.
pub(crate) fn add_oplog_details(
    details: &mut serde_json::Value,
    start: bson::Timestamp,
    end: bson::Timestamp,
    entries: u64,
) {
    let consistent_time = chrono::DateTime::from_timestamp(i64::from(end.time), 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    details["consistent_ts"] = serde_json::json!({ "t": end.time, "i": end.increment });
    details["consistent_time"] = serde_json::json!(consistent_time);
    details["oplog_start_ts"] = serde_json::json!({ "t": start.time, "i": start.increment });
    details["oplog_entries"] = serde_json::json!(entries);
}

/// One namespace of a logical backup's manifest.
pub(crate) struct NamespaceEntry {
    pub db: String,
    pub collection: String,
    pub documents: u64,
    pub raw_bytes: u64,
    pub crc: u64,
    /// The documents' order-independent checksum ([`ddsvault_mongo::checksum`]) as read from the source, for
    /// restore drills; `None` when it was not computed (an imported archive).
    pub checksum: Option<String>,
}

/// A complete, verified archive in a job's staging area, and what the backup records about it.
pub(crate) struct StagedArchive {
    /// The job's staging prefix (removed once published).
    pub staging: RepoPath,
    pub staged_archive: RepoPath,
    pub archive_name: String,
    pub size: u64,
    pub sha256: String,
    pub databases: Vec<String>,
    pub namespaces: Vec<NamespaceEntry>,
    pub details: serde_json::Value,
    pub end_time: chrono::DateTime<Utc>,
    pub expire_time: chrono::DateTime<Utc>,
}

/// Steps 2 to 4 of the module's order of durability, shared by backup jobs and `ddsvault import`: the archive is
/// renamed into `backups/<instance>/<backup_id>/`, `manifest.json` is written last there, and only then does the
/// catalog mark the job and backup Success.
pub(crate) async fn publish_logical(
    runner: &Runner,
    job: &Job,
    backup_id: i64,
    a: StagedArchive,
) -> Result<(), JobError> {
    let prefix = Repository::backup_prefix(&job.instance_id, backup_id);
    let final_archive = prefix.join(&a.archive_name)?;
    runner
        .repo
        .rename(&a.staged_archive, &final_archive)
        .await?;
    let manifest = Manifest {
        format: ddsvault_repo::MANIFEST_FORMAT,
        backup_id,
        instance_id: job.instance_id.clone(),
        method: ddsvault_catalog::BackupMethod::Logical.as_str().into(),
        created_at: a.end_time,
        files: vec![ManifestFile {
            name: a.archive_name.clone(),
            size: a.size,
            sha256: a.sha256.clone(),
        }],
        extra: serde_json::json!({
            "databases": a.databases,
            "namespaces": a.namespaces.iter().map(|n| {
                let mut e = serde_json::json!({
                    "db": n.db, "collection": n.collection, "documents": n.documents,
                    "raw_bytes": n.raw_bytes, "crc": n.crc,
                });
                if let Some(c) = &n.checksum {
                    e["checksum"] = serde_json::json!(c);
                }
                e
            }).collect::<Vec<_>>(),
            // Names how `checksum` above was computed (docs/drills.md).
            "checksum_algorithm": ddsvault_mongo::checksum::ALGORITHM,
            "details": a.details,
        }),
    };
    let manifest_sha256 = runner.repo.write_manifest(&prefix, &manifest).await?;

    let done = BackupCompletion {
        end_time: a.end_time,
        expire_time: a.expire_time,
        size: i64::try_from(a.size).unwrap_or(i64::MAX),
        db_names: a.databases.join(","),
        repo_prefix: prefix.to_string(),
        details: crate::integrity::sealed_details(a.details, manifest_sha256),
    };
    // What it occupies, measured once now so DescribeBackupStorage never lists the repository.
    let usage = crate::storage::measure(&runner.repo, &job.instance_id, &prefix).await?;
    if let Err(e) = runner
        .catalog
        .complete_backup_with_storage(job.id, &runner.node_id, job.lease_token, &done, &usage)
        .await
    {
        // Whoever took the job from us (recovery) also owns the cleanup decision; our files must not survive
        // as an orphan that looks complete.
        let _ = runner.repo.delete_prefix(&prefix).await;
        return Err(e.into());
    }
    let _ = runner.repo.delete_prefix(&a.staging).await;
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
fn prior_listing(params: &BackupJobParams, now: chrono::DateTime<Utc>) -> Option<Vec<String>> {
    let l = params.listing.as_ref()?;
    let at = chrono::DateTime::from_timestamp_millis(l.at_ms)?;
    // A listing "from the future" means clocks disagree between processes: do not trust it.
    if now - at > PRIOR_LISTING_MAX_AGE || at > now + chrono::Duration::seconds(5) {
        return None;
    }
    Some(l.databases.clone())
}

fn compression_for(params: &BackupJobParams, default: &Compression) -> Compression {
    match params.compression {
        Some(ArchiveCompression::Gzip) => Compression::Gzip,
        Some(ArchiveCompression::Zstd) => match default {
            Compression::Zstd { .. } => *default,
            _ => Compression::Zstd { level: 3 },
        },
        None => *default,
    }
}

/// Maps the dump's report onto the job's progress: Dumping from 2% to 90% by documents (by collections where
/// they were not counted: many collections on FerretDB), then CapturingOplog up to 94% by entries.
fn dump_progress(progress: &Progress, p: &DumpProgress) {
    if p.namespaces_done == 0 && p.docs_done == 0 && p.oplog_entries == 0 {
        // The plan is made: the totals are known.
        progress.docs(0, p.docs_total_estimate);
        progress.set_percent(2);
        return;
    }
    if p.capturing_oplog {
        progress.set_phase(Phase::CapturingOplog);
        progress.oplog_entries(p.oplog_entries);
        // The window's size is not known before it is read: entries move the figure by their share of what
        // has been read so far, so it keeps moving and stays below the phase's end.
        progress.set_percent(percent_in(90..95, p.oplog_entries, 0));
        return;
    }
    progress.set_phase(Phase::Dumping);
    progress.docs(p.docs_done, p.docs_total_estimate);
    progress.bytes(p.raw_bytes_done, 0);
    let pct = if p.docs_total_estimate > 0 {
        percent_in(2..90, p.docs_done, p.docs_total_estimate)
    } else {
        percent_in(2..90, p.namespaces_done, p.namespaces_total)
    };
    progress.set_percent(pct);
}

pub(crate) async fn close_writer(writer: UploadWriter) -> Result<(), JobError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use ddsvault_catalog::JobState;

    fn job(params: serde_json::Value) -> Job {
        Job {
            id: 1,
            kind: ddsvault_catalog::JobKind::Backup,
            instance_id: "dds-a".into(),
            backup_id: Some(1),
            state: JobState::Running,
            mode: "Manual".into(),
            progress: 0,
            progress_detail: serde_json::Value::Null,
            error: None,
            error_code: None,
            params,
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
            owner: None,
            heartbeat_at: None,
            result: serde_json::Value::Null,
            lease_until: None,
            lease_token: 1,
        }
    }

    #[test]
    fn a_recent_listing_is_used_and_anything_else_is_listed_again() {
        let now = Utc::now();
        let listed = |ago: i64, dbs: serde_json::Value| {
            job(
                serde_json::json!({"method": ddsvault_catalog::BackupMethod::Logical, "listing": {
                    "databases": dbs,
                    "at_ms": (now - chrono::Duration::seconds(ago)).timestamp_millis(),
                }}),
            )
            .backup_params()
        };
        let listed =
            |ago: i64, dbs: serde_json::Value| listed(ago, dbs).expect("well-formed parameters");
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
        // A malformed listing is a corrupt job, not an empty listing.
        for bad in [serde_json::json!(["a", 7]), serde_json::json!("a")] {
            let j = job(
                serde_json::json!({"method": ddsvault_catalog::BackupMethod::Logical, "listing": {"databases": bad, "at_ms": 0}}),
            );
            assert!(j.backup_params().is_err());
        }
        // Automatic backups (the scheduler) and older jobs carry no listing.
        let plain = job(serde_json::json!({"method": ddsvault_catalog::BackupMethod::Logical}))
            .backup_params()
            .expect("parameters");
        assert_eq!(plain.retention_days, 30);
        assert_eq!(prior_listing(&plain, now), None);
    }
}
