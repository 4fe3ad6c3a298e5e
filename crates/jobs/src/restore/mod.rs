//! Restore jobs (RestoreDBInstance): a Logical backup is restored through the wire protocol into a running
//! instance ([`logical`]); a Physical or Snapshot one is written as data files into a stopped node ([`files`]).

pub(crate) mod files;
pub(crate) mod logical;

use chrono::Utc;
use ddsvault_catalog::{BackupStatus, Job};
use tokio_util::sync::CancellationToken;

pub use files::ensure_stopped;

use crate::{JobError, Runner};

/// Runs the restore job `job`: the backup it names, by its method.
pub(crate) async fn run(
    runner: &Runner,
    job: &Job,
    cancel: &CancellationToken,
) -> Result<(), JobError> {
    let backup_id = job
        .backup_id
        .ok_or_else(|| JobError::Other("restore job names no backup".into()))?;
    let backup = runner
        .catalog
        .get_backup(backup_id)
        .await?
        .filter(|b| b.status == BackupStatus::Success)
        .ok_or_else(|| {
            JobError::Other(format!(
                "backup {backup_id} does not exist or did not succeed"
            ))
        })?;
    if backup.method.is_file_level() {
        return files::run(runner, job, &backup, cancel).await;
    }
    let spec = runner.instance(&job.instance_id)?;
    let result = logical::logical_into(runner, job, &backup, &spec.uri, cancel).await?;
    runner
        .catalog
        .complete_job(
            job.id,
            &runner.node_id,
            job.lease_token,
            &result,
            Utc::now(),
        )
        .await?;
    Ok(())
}
