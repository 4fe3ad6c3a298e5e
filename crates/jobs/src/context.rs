//! What every job runs with: the runner's handles (catalog, repository, the instances, settings, events, the
//! provisioner) and where jobs may run. The job kinds (backup, restore, provision, drill) take `&Runner` from here
//! as their context; the loop that claims, leases and settles jobs is `runner.rs`, above the kinds, and nothing
//! below it calls into that loop.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ddsvault_catalog::{Backup, BackupStatus, Catalog, Job};
use ddsvault_repo::Repository;
use tokio::sync::{Notify, Semaphore};

use crate::{InstanceSpec, JobError};

/// Default `[jobs] lease_secs`: how long a claimed job stays its process's without a renewal. A process that dies
/// (or is paused, or cut off from the catalog) loses its jobs to the recovery of the others after this long.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// The shortest lease accepted: renewals go out every third of it, and need a few round trips of margin.
pub const MIN_LEASE: Duration = Duration::from_secs(2);

/// Logical backup tuning.
#[derive(Clone, Debug)]
pub struct BackupSettings {
    /// How logical archives are compressed (`[backup] compression`).
    pub compression: ddsvault_mongo::archive::Compression,
    /// How many collections a logical backup dumps at once.
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
    pub(crate) instances: std::sync::RwLock<HashMap<String, InstanceSpec>>,
    pub(crate) node_id: String,
    pub(crate) settings: BackupSettings,
    pub(crate) wake: Notify,
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) events: crate::events::Events,
    /// Starts and stops the server processes of provisioned instances (`[provisioning]`); unset without it.
    pub(crate) provisioner: std::sync::OnceLock<Arc<crate::provision::Provisioner>>,
    /// Where jobs may run: instance pins, draining, and the count of running jobs (see [`Placement`]).
    pub(crate) placement: Placement,
    /// The lease a claim takes, renewed every third of it while the job runs ([`Runner::holding_lease`]).
    pub(crate) lease: Duration,
}

/// Which jobs this node takes (issue 19): an instance pinned to another node (`node =` in its configuration) is
/// never claimed here, nor is one this node does not know (it cannot reach it). Draining takes no job at all.
#[derive(Debug, Default)]
pub(crate) struct Placement {
    /// Instance id → the node id its jobs are pinned to.
    pub(crate) pins: std::sync::RwLock<HashMap<String, String>>,
    /// Instances a claim returned that this node does not know: passed over from then on (another node's).
    pub(crate) unknown: std::sync::Mutex<std::collections::HashSet<String>>,
    pub(crate) draining: std::sync::atomic::AtomicBool,
    /// Wakes [`Runner::drain_started`] waiters, so the node row says `draining` at once, not at the next beat.
    pub(crate) drain_started: Notify,
    pub(crate) running: std::sync::atomic::AtomicUsize,
}

impl Runner {
    /// A runner of this node (`node_id`) over `catalog`, `repo` and the known `instances`.
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
            placement: Placement::default(),
            lease: DEFAULT_LEASE,
        }
    }

    /// Pins instances to nodes (instance id → node id): their jobs run only on that node.
    pub fn set_pins(&self, pins: HashMap<String, String>) {
        *self
            .placement
            .pins
            .write()
            .unwrap_or_else(|p| p.into_inner()) = pins;
    }

    /// This node's id (the owner of the jobs it claims).
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The Success backup `job` reads (restore, provision and drill jobs name one).
    pub(crate) async fn job_backup(&self, job: &Job) -> Result<Backup, JobError> {
        let backup_id = job
            .backup_id
            .ok_or_else(|| JobError::Other(format!("{} job names no backup", job.kind)))?;
        self.catalog
            .get_backup(backup_id)
            .await?
            .filter(|b| b.status == BackupStatus::Success)
            .ok_or_else(|| {
                JobError::Other(format!(
                    "backup {backup_id} does not exist or did not succeed"
                ))
            })
    }

    /// Commits `job` as succeeded with `result`, under this node's lease (fenced: a lost lease writes nothing).
    pub(crate) async fn complete(
        &self,
        job: &Job,
        result: &serde_json::Value,
    ) -> Result<(), JobError> {
        self.catalog
            .complete_job(job.id, &self.node_id, job.lease_token, result, Utc::now())
            .await?;
        Ok(())
    }

    /// Stops claiming jobs for good; the running ones finish (`SIGUSR1`).
    pub fn drain(&self) {
        use std::sync::atomic::Ordering;
        if !self.placement.draining.swap(true, Ordering::SeqCst) {
            self.placement.drain_started.notify_waiters();
            tracing::info!(
                running = self.running_jobs(),
                "draining: no new jobs are taken, running ones finish"
            );
        }
    }

    /// Whether [`Runner::drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.placement
            .draining
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves once [`Runner::drain`] has been called (at once if it already was).
    pub async fn drain_started(&self) {
        // Created before the check: `notify_waiters` reaches a `Notified` from its creation on, so a drain
        // between the check and the await is not missed.
        let notified = self.placement.drain_started.notified();
        if self.is_draining() {
            return;
        }
        notified.await;
    }

    /// Jobs this process is running now.
    pub fn running_jobs(&self) -> usize {
        self.placement
            .running
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Sets the job lease (`[jobs] lease_secs`; at least [`MIN_LEASE`]).
    #[must_use]
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(MIN_LEASE);
        self
    }

    /// The job lease.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// How often [`Runner::recover_expired`] should run: a fraction of the lease, so that a dead process's job is
    /// taken over at most this long after its lease ran out (bound: lease + this + the clean-up).
    pub fn recovery_interval(&self) -> Duration {
        (self.lease / 2).clamp(Duration::from_millis(500), Duration::from_secs(5))
    }

    /// The end of a lease taken or renewed at `now`.
    pub(crate) fn lease_until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::seconds(30))
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

    /// Makes a provisioned or registered instance known to jobs (backups, restores) from now on; replaces the
    /// spec of a known one (a changed connection string).
    pub fn add_instance(&self, spec: InstanceSpec) {
        self.instances
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(spec.id.clone(), spec);
    }

    /// Forgets a deleted provisioned or unregistered instance.
    pub fn remove_instance(&self, id: &str) {
        self.instances
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// The ids of every instance jobs can work on now (configured, provisioned, registered).
    pub fn instance_ids(&self) -> Vec<String> {
        self.instances
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Every instance jobs can work on now.
    pub fn instance_specs(&self) -> Vec<InstanceSpec> {
        self.instances
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Tells the runner a job was just created, so it does not wait for the next poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// The staging area of a job: derived from the job id so recovery can find it without any other record.
pub(crate) fn staging_token(job_id: i64) -> String {
    format!("job-{job_id}")
}

/// The scratch directory of a job under `root` (`scratch_dir`): derived from the job id so recovery can remove it.
pub(crate) fn scratch_dir(root: &std::path::Path, job_id: i64) -> std::path::PathBuf {
    root.join(staging_token(job_id))
}
