//! The job runner: claims pending jobs from the catalog and runs them, a bounded number at a time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ddsvault_catalog::{Catalog, Job, JobKind};
use ddsvault_repo::Repository;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{JobError, Tasks};

/// How often an idle runner looks for jobs created by another process (its own are signalled at once).
const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// How often a running job refreshes its heartbeat and progress in the catalog.
pub(crate) const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// A running job whose heartbeat is older than this is considered orphaned by a dead process.
pub const STALE_AFTER: Duration = Duration::from_secs(120);

/// What the runner needs to know of an instance.
#[derive(Clone)]
pub struct InstanceSpec {
    pub id: String,
    /// Connection string; never logged.
    pub uri: String,
    pub storage_type: String,
    /// The node's data directory, read by Physical and Snapshot backups.
    pub data_path: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for InstanceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceSpec")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Logical backup tuning.
#[derive(Clone, Debug)]
pub struct BackupSettings {
    pub compression: ddsvault_mongo::archive::Compression,
    pub parallel_collections: usize,
    /// Local scratch space of file-level backups (one `job-<id>` directory per running job).
    pub scratch_dir: std::path::PathBuf,
    /// A job whose progress does not change for this long is failed by its watchdog
    /// ([`crate::progress::with_heartbeat`]).
    pub stall_timeout: Duration,
}

/// Claims and runs jobs.
#[derive(Debug)]
pub struct Runner {
    pub(crate) catalog: Catalog,
    pub(crate) repo: Repository,
    /// Configured instances, and the provisioned ones (added and removed while serving).
    instances: std::sync::RwLock<HashMap<String, InstanceSpec>>,
    pub(crate) node_id: String,
    pub(crate) settings: BackupSettings,
    wake: Notify,
    slots: Arc<Semaphore>,
    events: crate::events::Events,
    /// Starts and stops the server processes of provisioned instances (`[provisioning]`); unset without it.
    provisioner: std::sync::OnceLock<Arc<crate::provision::Provisioner>>,
}

impl Runner {
    pub fn new(
        catalog: Catalog,
        repo: Repository,
        instances: Arc<HashMap<String, InstanceSpec>>,
        node_id: String,
        settings: BackupSettings,
        max_concurrent_jobs: usize,
    ) -> Self {
        Self {
            catalog,
            repo,
            instances: std::sync::RwLock::new((*instances).clone()),
            node_id,
            settings,
            wake: Notify::new(),
            slots: Arc::new(Semaphore::new(max_concurrent_jobs.max(1))),
            events: crate::events::Events::default(),
            provisioner: std::sync::OnceLock::new(),
        }
    }

    /// Reports every finished job to `sink` from now on (set once).
    pub fn set_event_sink(&self, sink: Arc<dyn crate::EventSink>) {
        self.events.set(sink);
    }

    /// Sets the provisioner (once, before jobs run: recovery needs it to clean up interrupted provisioning).
    pub fn set_provisioner(&self, p: Arc<crate::provision::Provisioner>) {
        let _ = self.provisioner.set(p);
    }

    pub(crate) fn provisioner(&self) -> Option<&Arc<crate::provision::Provisioner>> {
        self.provisioner.get()
    }

    /// The instance a job works on (configured or provisioned).
    pub(crate) fn instance(&self, id: &str) -> Result<InstanceSpec, JobError> {
        // A poisoned lock only means a panic elsewhere while inserting; the map itself is intact.
        self.instances
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| JobError::UnknownInstance(id.to_string()))
    }

    /// Makes a provisioned instance known to jobs (backups, restores) from now on.
    pub fn add_instance(&self, spec: InstanceSpec) {
        self.instances
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(spec.id.clone(), spec);
    }

    /// Forgets a deleted provisioned instance.
    pub fn remove_instance(&self, id: &str) {
        self.instances
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Tells the runner a job was just created, so it does not wait for the next poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Fails the jobs a previous life of this node (or a dead node) left running and removes their partial files.
    /// Called once at start, before serving. Returns the jobs it failed: the chunks a crashed snapshot wrote are
    /// not under its prefixes, and go with [`crate::Gc::sweep_after_crash`].
    ///
    /// # Errors
    /// Catalog errors. Failing to delete leftover files is logged, not fatal: the files are unreachable (no
    /// catalog row points at them as Success) and are retried at the next start.
    pub async fn recover(&self) -> Result<Vec<Job>, JobError> {
        let now = Utc::now();
        let stale =
            now - chrono::Duration::from_std(STALE_AFTER).unwrap_or(chrono::Duration::minutes(2));
        let jobs = self
            .catalog
            .recover_interrupted(&self.node_id, stale, now)
            .await?;
        for job in &jobs {
            tracing::warn!(job_id = job.id, instance = %job.instance_id, "failed a job interrupted by a stop");
            self.remove_job_files(job).await;
        }
        Ok(jobs)
    }

    /// Deletes everything a backup job may have written: its staging area and its (never completed) backup
    /// prefix. Other kinds write nothing to the repository; a restore's `backup_id` names the backup it READS,
    /// which must never be touched (a file restore's own directories in the target's data_path are removed).
    pub(crate) async fn remove_job_files(&self, job: &Job) {
        if job.kind == ddsvault_catalog::JobKind::Restore {
            self.remove_restore_files(job).await;
            return;
        }
        if job.kind == ddsvault_catalog::JobKind::Provision {
            crate::provision::cleanup(self, job, "creating the instance was interrupted").await;
            return;
        }
        if job.kind != ddsvault_catalog::JobKind::Backup {
            return;
        }
        let scratch = crate::physical::scratch_dir(&self.settings.scratch_dir, job.id);
        if let Err(e) = std::fs::remove_dir_all(&scratch) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(job_id = job.id, dir = %scratch.display(), error = %e, "could not remove scratch files");
            }
        }
        // Snapshot chunks are not under these prefixes: they may be shared with other snapshots.
        let mut prefixes = vec![Repository::staging_prefix(&staging_token(job.id))];
        if let Some(backup_id) = job.backup_id {
            prefixes.push(Repository::backup_prefix(&job.instance_id, backup_id));
        }
        for p in prefixes {
            if let Err(e) = self.repo.delete_prefix(&p).await {
                tracing::warn!(job_id = job.id, prefix = %p, error = %e, "could not remove partial files");
            }
        }
    }

    /// A file restore that did not succeed: its restore directory inside the target's data_path, and an
    /// interrupted swap undone (see `file_restore`). Logical restores leave nothing behind.
    async fn remove_restore_files(&self, job: &Job) {
        let Some(data_path) = self
            .instance(&job.instance_id)
            .ok()
            .and_then(|i| i.data_path)
        else {
            return;
        };
        let job_id = job.id;
        let done =
            tokio::task::spawn_blocking(move || crate::file_restore::cleanup(&data_path, job_id))
                .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(job_id, error = %e, "could not clean up the restore directory")
            }
            Err(e) => tracing::warn!(job_id, error = %e, "restore cleanup task failed"),
        }
    }

    /// Claims and runs jobs until `cancel` fires. Each job runs as its own named task.
    pub async fn run(
        self: Arc<Self>,
        tasks: Tasks,
        cancel: CancellationToken,
    ) -> Result<(), String> {
        loop {
            let permit = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                p = Arc::clone(&self.slots).acquire_owned() => p.map_err(|e| e.to_string())?,
            };
            let claimed = self.catalog.claim_next_job(&self.node_id, Utc::now()).await;
            match claimed {
                Ok(Some(job)) => {
                    let me = Arc::clone(&self);
                    tasks.spawn(format!("job-{}", job.id), move |token| async move {
                        me.execute(job, token).await;
                        drop(permit);
                        Ok(())
                    });
                }
                Ok(None) => {
                    drop(permit);
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(POLL_INTERVAL) => {}
                    }
                }
                Err(e) => {
                    drop(permit);
                    tracing::error!(error = %e, "could not claim a job; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(POLL_INTERVAL) => {}
                    }
                }
            }
        }
    }

    async fn execute(&self, job: Job, cancel: CancellationToken) {
        let span = tracing::info_span!("job", job_id = job.id, instance = %job.instance_id, kind = %job.kind);
        async {
            tracing::info!("job started");
            let result = match job.kind {
                JobKind::Backup => crate::backup::run(self, &job, &cancel).await,
                JobKind::Restore => crate::restore::run(self, &job, &cancel).await,
                JobKind::Provision => crate::provision::run(self, &job, &cancel).await,
            };
            self.settle(&job, result, &cancel).await;
        }
        .instrument(span)
        .await;
    }

    async fn settle(&self, job: &Job, result: Result<(), JobError>, cancel: &CancellationToken) {
        match result {
            Ok(()) => {
                tracing::info!("job succeeded");
                self.report(job, None).await;
            }
            Err(e) => {
                // A job cancelled by shutdown stays Running in the catalog: the next start fails it and cleans
                // up (recover), which is the same path as a crash, so there is only one way out.
                if cancel.is_cancelled() {
                    tracing::warn!(error = %e, "job interrupted by shutdown");
                    return;
                }
                tracing::warn!(error = %e, "job failed");
                if job.kind == ddsvault_catalog::JobKind::Provision {
                    // The instance shows why it failed (its process and data are removed).
                    crate::provision::cleanup(self, job, &e.to_string()).await;
                } else {
                    self.remove_job_files(job).await;
                }
                if let Err(ce) = self
                    .catalog
                    .fail_job_with_code(job.id, e.code(), &e.to_string(), Utc::now())
                    .await
                {
                    tracing::error!(error = %ce, "could not record the job failure");
                }
                self.report(job, Some((e.code(), e.to_string()))).await;
            }
        }
    }

    /// Tells the event sink how `job` ended (`failure`: its code and message).
    async fn report(&self, job: &Job, failure: Option<(&str, String)>) {
        let now = Utc::now();
        let started = job.started_at.unwrap_or(job.created_at);
        let mut method = job.method();
        let mut bytes = None;
        if failure.is_none() && job.kind == ddsvault_catalog::JobKind::Backup {
            if let Some(id) = job.backup_id {
                match self.catalog.get_backup(id).await {
                    Ok(Some(b)) => {
                        bytes = Some(u64::try_from(b.size).unwrap_or(0));
                        method = Some(b.method);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "could not read the finished backup for metrics")
                    }
                }
            }
        }
        let (error_code, error) = match failure {
            Some((code, message)) => (Some(code.to_string()), Some(message)),
            None => (None, None),
        };
        self.events
            .emit(&crate::Event::JobFinished(crate::JobOutcome {
                job_id: job.id,
                instance_id: job.instance_id.clone(),
                kind: job.kind,
                method,
                mode: job.mode.clone(),
                error_code,
                error,
                duration: (now - started).to_std().unwrap_or_default(),
                bytes,
            }));
    }
}

/// The staging area of a job: derived from the job id so recovery can find it without any other record.
pub(crate) fn staging_token(job_id: i64) -> String {
    format!("job-{job_id}")
}
