//! Restore jobs (RestoreDBInstance): a Logical backup is restored through the wire protocol into a running
//! instance ([`logical`]); a Physical or Snapshot one is written as data files into a stopped node ([`files`]).

pub(crate) mod files;
pub(crate) mod logical;

use ddsvault_catalog::Job;
use tokio_util::sync::CancellationToken;

pub use files::ensure_stopped;

use crate::{JobError, Runner};

/// Runs the restore job `job`: the backup it names, by its method.
pub(crate) async fn run(
    runner: &Runner,
    job: &Job,
    cancel: &CancellationToken,
) -> Result<(), JobError> {
    let backup = runner.job_backup(job).await?;
    if backup.method.is_file_level() {
        return files::run(runner, job, &backup, cancel).await;
    }
    let spec = runner.instance(&job.instance_id)?;
    let result = logical::logical_into(runner, job, &backup, &spec.uri, cancel).await?;
    runner.complete(job, &result).await
}
