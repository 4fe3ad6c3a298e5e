//! Backup jobs (CreateBackup and the scheduler's automatic backups): [`plan`] decides the method and what to back
//! up before a job is created; the job runs [`logical`] (a mongodump-format archive through the wire protocol) or
//! [`files`] (Physical and Snapshot: the node's data files).

pub(crate) mod files;
pub(crate) mod logical;
pub mod plan;

use ddsvault_catalog::Job;
use tokio_util::sync::CancellationToken;

use crate::{JobError, Runner};

/// Runs the backup job `job` by its method.
pub(crate) async fn run(
    runner: &Runner,
    job: &Job,
    cancel: &CancellationToken,
) -> Result<(), JobError> {
    let params = job.backup_params()?;
    match files::FileMethod::of(params.method) {
        Some(method) => files::run(runner, job, method, cancel).await,
        None => logical::run(runner, job, &params, cancel).await,
    }
}
