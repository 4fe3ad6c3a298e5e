//! Execution of a restore job: a logical backup from the repository into a registered instance. Physical and
//! Snapshot backups are dispatched to `file_restore`, which writes the data files of a stopped node.
//!
//! Before anything is written the backup is checked twice: every file against the manifest (size, SHA-256), then
//! the archive itself by the engine's verify pass (framing, CRC-64 of every collection). A corrupt backup fails
//! the job and the target is left untouched.

use std::sync::Arc;

use ddsvault_catalog::{Job, RestoreJobParams};
use ddsvault_mongo::restore::{
    logical_restore_with_oplog, ExtraOplog, NsSelector, RestoreOptions, RestoreProgress,
    RestoreStage,
};
use ddsvault_mongo::topology::connect;
use ddsvault_repo::RepoPath;
use tokio_util::sync::CancellationToken;

use crate::archive::{archive_opener, compression_of};
use crate::progress::{percent_in, with_heartbeat, Phase, Progress};
use crate::{JobError, Runner};

/// The namespaces a restore job selects (empty: everything).
fn selectors(params: &RestoreJobParams) -> Vec<NsSelector> {
    params
        .select
        .iter()
        .map(|s| NsSelector {
            db: s.db.clone(),
            collection: s.collection.clone(),
        })
        .collect()
}

/// Restores the Logical `backup` into the server at `uri` as `job.params` say (`select`, `drop`, `replay_oplog`,
/// and `restore_time` for a point in time), under `job`'s heartbeat; answers the job's result. Shared by the restore
/// job and the provisioning job (a new instance restored from a Logical backup).
pub(crate) async fn logical_into(
    runner: &Runner,
    job: &Job,
    backup: &ddsvault_catalog::Backup,
    uri: &str,
    cancel: &CancellationToken,
) -> Result<serde_json::Value, JobError> {
    let backup_id = backup.id;
    let prefix = RepoPath::new(backup.repo_prefix.clone())?;
    let manifest = crate::integrity::authenticated_manifest(&runner.repo, backup).await?;
    runner
        .repo
        .verify_files(&prefix, &manifest.manifest)
        .await?;
    let archive = backup
        .details
        .get("archive")
        .and_then(|v| v.as_str())
        .ok_or_else(|| JobError::Other(format!("backup {backup_id} records no archive file")))?;
    let archive_path = prefix.join(archive)?;
    let open = || {
        archive_opener(
            runner.repo.clone(),
            archive_path.clone(),
            compression_of(&backup.details),
        )
    };

    // A point-in-time restore: the log slices from the backup's consistency point to the chosen second, checked
    // to be still there and contiguous now (retention may have run since the request was accepted).
    let params = job.restore_params()?;
    let extra: Option<ExtraOplog> = match params.restore_time {
        None => None,
        Some(t) => {
            let slices = runner.catalog.list_log_slices(&backup.instance_id).await?;
            let bases: Vec<_> = crate::pitr::base_of(backup).into_iter().collect();
            let plan = crate::pitr::plan_point_in_time(
                &crate::pitr::chains(&slices),
                &bases,
                t,
                Some(backup.id),
            )
            .ok_or_else(|| {
                JobError::Other(format!(
                    "the log backup no longer covers the time from backup {backup_id} to {t}; nothing was restored"
                ))
            })?;
            Some(crate::pitr::slice_entries(runner.repo.clone(), &plan))
        }
    };

    let client = connect(uri).await?;
    let opts = RestoreOptions {
        drop: params.drop,
        select: selectors(&params),
        parallel_collections: runner.settings.parallel_collections,
        // A restore drill compares the collections with what the dump read, before any oplog entry changes them.
        replay_oplog: params.replay_oplog.unwrap_or(true),
        ..RestoreOptions::default()
    };
    let job_progress = Arc::new(Progress::new(job.id));
    let cell = Arc::clone(&job_progress);
    let progress = move |p: RestoreProgress| match p.stage {
        RestoreStage::Verifying => cell.set_phase(Phase::Verifying),
        RestoreStage::Inserting => {
            cell.set_phase(Phase::Restoring);
            cell.docs(p.docs_done, p.docs_total);
            cell.set_percent(percent_in(5..90, p.docs_done, p.docs_total));
        }
        RestoreStage::ReplayingOplog => {
            cell.set_phase(Phase::ReplayingOplog);
            cell.oplog_entries(p.oplog_entries);
            // The entries to replay are not counted before the replay reads them (as in the backup's capture).
            cell.set_percent(percent_in(90..99, p.oplog_entries, 0));
        }
    };
    let restore_cancel = cancel.child_token();
    let restore = logical_restore_with_oplog(
        &client,
        open(),
        extra.clone(),
        &opts,
        &progress,
        &restore_cancel,
    );
    let summary = match with_heartbeat(runner, job, &job_progress, &restore_cancel, restore).await?
    {
        Ok(s) => s,
        // FerretDB 1.24 (SQLite) sometimes refuses createIndexes on a collection it has just dropped and
        // re-created ("SQL logic error: index … already exists"). With DropExisting the restore is idempotent
        // (it drops and rewrites the same collections), so one more attempt is safe; anything else fails the job.
        Err(e) if opts.drop && is_ferretdb_stale_index(&e.to_string()) => {
            tracing::warn!(error = %e, "FerretDB kept a dropped collection's index; restoring once more");
            let again = logical_restore_with_oplog(
                &client,
                open(),
                extra.clone(),
                &opts,
                &progress,
                &restore_cancel,
            );
            with_heartbeat(runner, job, &job_progress, &restore_cancel, again).await??
        }
        Err(e) => return Err(e.into()),
    };
    let result = serde_json::json!({
        "source_instance": backup.instance_id,
        "backup_id": backup_id,
        "documents": summary.documents,
        "bytes": summary.bytes,
        "namespaces": summary.namespaces.iter().map(|n| serde_json::json!({
            "db": n.db, "collection": n.collection, "documents": n.documents, "indexes": n.indexes,
        })).collect::<Vec<_>>(),
        "warnings": summary.warnings,
        "oplog_replayed": summary.oplog_replayed,
        "restore_time": params.restore_time,
    });
    Ok(result)
}

/// The FerretDB 1.24 error for an index its SQLite file still has after the collection was dropped.
fn is_ferretdb_stale_index(message: &str) -> bool {
    message.contains("SQL logic error: index") && message.contains("already exists")
}

#[cfg(test)]
mod tests {
    use super::is_ferretdb_stale_index;

    #[test]
    fn recognises_only_the_ferretdb_stale_index_error() {
        assert!(is_ferretdb_stale_index(
            "create indexes name_1 on shop.customers: ... SQL logic error: index customers_c09344de_name_1 already exists (1)"
        ));
        assert!(!is_ferretdb_stale_index("E11000 duplicate key error"));
        assert!(!is_ferretdb_stale_index(
            "collection shop.customers already exists"
        ));
    }
}
