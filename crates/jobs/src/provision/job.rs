//! The `provision` job (CreateDBInstance from a backup): a Physical or Snapshot backup is materialized straight into
//! the new instance's empty data directory before its process starts (the files are the database: nothing to
//! replay); a Logical one (and every point-in-time restore) is restored through the wire protocol once the new
//! process answers `ping`. The instance turns `Running` only after that; a failure stops the process, removes the
//! directory and marks the instance `Failed`. The processes themselves are [`super::Provisioner`]'s.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ddsvault_catalog::{BackupMethod, Job, ProvisionStatus};
use ddsvault_repo::RepoPath;
use tokio_util::sync::CancellationToken;

use super::Provisioner;
use crate::progress::{percent_in, with_heartbeat, Phase, Progress};
use crate::{JobError, Runner};

/// After a failed or interrupted provision job: the process stopped, its directory removed, the instance marked
/// `Failed` with `why`. Logged, never fatal (a later DeleteDBInstance removes what is left).
pub(crate) async fn cleanup(runner: &Runner, job: &Job, why: &str) {
    let id = &job.instance_id;
    let row = match runner.catalog.get_provisioned_instance(id).await {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(instance = %id, error = %e, "could not read the provisioned instance to clean up");
            return;
        }
    };
    if let Some(p) = runner.provisioner() {
        if let Err(e) = p.destroy(id, Path::new(&row.dir)).await {
            tracing::warn!(instance = %id, error = %e, "could not remove the failed instance's files");
        }
    } else if let Err(e) = std::fs::remove_dir_all(&row.dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(instance = %id, error = %e, "could not remove the failed instance's files");
        }
    }
    if let Err(e) = runner
        .catalog
        .set_provisioned_status(id, ProvisionStatus::Failed, Some(why), Utc::now())
        .await
    {
        tracing::warn!(instance = %id, error = %e, "could not mark the instance failed");
    }
}

/// The provision job of `job.instance_id`: backup → new data directory / new server, then `Running`.
pub(crate) async fn run(
    runner: &Runner,
    job: &Job,
    cancel: &CancellationToken,
) -> Result<(), JobError> {
    let prov = runner.provisioner().cloned().ok_or_else(|| {
        JobError::Other("this ddsvault node has no [provisioning] configuration".into())
    })?;
    let inst = runner
        .catalog
        .get_provisioned_instance(&job.instance_id)
        .await?
        .ok_or_else(|| JobError::UnknownInstance(job.instance_id.clone()))?;
    let backup = runner.job_backup(job).await?;
    let backup_id = backup.id;
    let dir = PathBuf::from(&inst.dir);
    let data = Provisioner::data_dir(&dir);
    // Whatever an earlier life of this instance id left is not ours to keep.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&data)
        .map_err(|e| JobError::Filesystem(format!("create {}: {e}", data.display())))?;

    let mut result = serde_json::json!({
        "source_instance": backup.instance_id,
        "backup_id": backup.id,
        "method": backup.method,
    });
    match backup.method {
        BackupMethod::Physical | BackupMethod::Snapshot => {
            // Nothing runs on the directory yet: the backup's files go straight to their final place.
            let prefix = RepoPath::new(backup.repo_prefix.clone())?;
            let manifest = crate::integrity::authenticated_manifest(&runner.repo, &backup)
                .await?
                .manifest;
            let total =
                ddsvault_repo::export::restore_size(&runner.repo, &prefix, &manifest).await?;
            let done = Arc::new(AtomicU64::new(0));
            let progress = Arc::new(Progress::new(job.id));
            progress.set_phase(Phase::Restoring);
            let work_cancel = cancel.child_token();
            let work = async {
                let ticker = {
                    let (done, progress) = (Arc::clone(&done), Arc::clone(&progress));
                    async move {
                        #[allow(clippy::infinite_loop)]
                        loop {
                            let d = done.load(Ordering::Relaxed);
                            progress.bytes(d, total);
                            progress.set_percent(percent_in(2..90, d, total));
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                };
                tokio::select! {
                    r = ddsvault_repo::export::materialize(&runner.repo, &prefix, &manifest, &data, &work_cancel, Arc::clone(&done)) => r.map_err(JobError::from),
                    () = ticker => Err(JobError::Other("the progress ticker stopped".into())),
                }
            };
            let m = with_heartbeat(runner, job, &progress, &work_cancel, work).await??;
            result["files"] = serde_json::json!(m.files);
            result["bytes"] = serde_json::json!(m.bytes);
            prov.start(&inst.id, inst.port, &dir).await?;
        }
        BackupMethod::Logical => {
            prov.start(&inst.id, inst.port, &dir).await?;
            result = crate::restore::logical::logical_into(
                runner,
                job,
                &backup,
                &Provisioner::uri(inst.port),
                cancel,
            )
            .await?;
        }
    }
    runner.add_instance(Provisioner::spec(&inst));
    runner
        .catalog
        .set_provisioned_status(&inst.id, ProvisionStatus::Running, None, Utc::now())
        .await?;
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
    tracing::info!(instance = %inst.id, backup_id, "provisioned instance running");
    Ok(())
}
