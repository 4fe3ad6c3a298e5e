//! Shared state of a running server: what every request handler may read.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ddsvault_api::MemoryNonceStore;
use ddsvault_catalog::Catalog;
use ddsvault_jobs::Runner;
use ddsvault_mongo::topology::Topology;
use ddsvault_repo::Repository;
use tokio::sync::OnceCell;

use crate::error::ActionError;
use crate::identity::Identities;

/// How long CreateBackup's look at an instance serves later calls: long enough to absorb a burst, short enough
/// that a database created a moment ago is seen.
const INSPECTION_FRESH: Duration = Duration::from_secs(1);

/// The account itself; never evaluated against RAM policies.
pub const ROOT_USER: &str = "root";

/// How long a probe of an instance may take in all (connecting, `hello`, and the one retry) before the instance is
/// called unreachable. Well under the SDKs' read timeout (tea: 10 s), so a CreateBackup on a dead instance gets
/// its answer instead of a client-side timeout (issue 17.6: driver selection 5 s + retry 5 s = 10.0 s).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(4);

/// An instance as configured, plus its first-registration time.
#[derive(Clone)]
pub struct Instance {
    pub id: String,
    pub uri: String,
    pub storage_type: String,
    pub description: String,
    /// The node's data directory, for file-level (Physical, Snapshot) backups.
    pub data_path: Option<std::path::PathBuf>,
    pub created_at: DateTime<Utc>,
    /// Created by ddsvault (CreateDBInstance): its status is in the catalog, DeleteDBInstance may remove it.
    pub provisioned: bool,
    /// Registered at run time (RegisterDBInstance): ModifyRegisteredDBInstance / UnregisterDBInstance apply.
    pub registered: bool,
    /// The ddsvault node meant to run its jobs (registered instances only; `None`: any node).
    pub node: Option<String>,
}

impl Instance {
    /// What the catalog row, the config entry or CreateDBInstance made it: `configured`, `provisioned`,
    /// `registered` (the `Origin` extension field of DescribeDBInstances).
    pub fn origin(&self) -> &'static str {
        if self.provisioned {
            "provisioned"
        } else if self.registered {
            "registered"
        } else {
            "configured"
        }
    }

    /// What jobs need to know of it.
    pub fn spec(&self) -> ddsvault_jobs::InstanceSpec {
        ddsvault_jobs::InstanceSpec {
            id: self.id.clone(),
            uri: self.uri.clone(),
            storage_type: self.storage_type.clone(),
            data_path: self.data_path.clone(),
        }
    }
}

impl Instance {
    /// Cloud disks take snapshot backups only ([`ddsvault_jobs::backup::plan::is_cloud_disk`]).
    pub fn is_cloud_disk(&self) -> bool {
        ddsvault_jobs::backup::plan::is_cloud_disk(&self.storage_type)
    }
}

/// Everything a request handler can reach.
pub struct AppState {
    pub region_id: String,
    pub account_id: String,
    pub host_id: String,
    pub skew: chrono::Duration,
    pub catalog: Catalog,
    pub repo: Repository,
    /// Puts the retention lock onto the repository (S3 Object Lock), see `ddsvault_jobs::object_lock`.
    pub object_lock: Arc<ddsvault_jobs::object_lock::ObjectLocker>,
    /// Copies to `[[repository.copies]]` (cross-region backup); `None` when none is configured.
    pub copier: Option<Arc<ddsvault_jobs::copies::Copier>>,
    pub downloads: crate::download::UrlSigner,
    /// Base of download URLs: `public_url` from the configuration, else `http://<bound address>`.
    pub public_base: std::sync::OnceLock<String>,
    /// Whether this process runs the automatic-backup scheduler: only then is `PreferredNextBackupTime` promised.
    pub scheduler_running: std::sync::atomic::AtomicBool,
    /// AccessKeys, users, groups and policies, as of the catalog's identity version.
    pub identities: Identities,
    pub nonces: MemoryNonceStore,
    /// Whether signature nonces are also recorded in the catalog, so that a request replayed to another process
    /// sharing it is refused too (`[server] shared_nonces`).
    pub shared_nonces: bool,
    /// The configured (`[[instances]]`) instances.
    pub instances: HashMap<String, Arc<Instance>>,
    /// The instances ddsvault provisioned (CreateDBInstance), added and removed while serving.
    pub provisioned: std::sync::RwLock<HashMap<String, Arc<Instance>>>,
    /// The instances registered at run time (RegisterDBInstance), as of this process's last look at the catalog
    /// (its own changes at once, other processes' within `registered::SYNC_INTERVAL`).
    pub registered: std::sync::RwLock<HashMap<String, Arc<Instance>>>,
    /// Starts and stops provisioned instances; `None` without `[provisioning]`.
    pub provisioner: Option<Arc<ddsvault_jobs::provision::Provisioner>>,
    pub runner: Arc<Runner>,
    pub default_compression: ddsvault_catalog::ArchiveCompression,
    /// How long a retention lock stays on after an unlock request (`[retention] lock_cooling_off_secs`).
    pub retention_lock_cooling_off: chrono::Duration,
    /// The audit trail's queue (written by the `audit-writer` task).
    pub audit: crate::audit::AuditLog,
    /// Flow control; set once at start from `[throttling]` (unset: no limits).
    pub throttle: std::sync::OnceLock<crate::throttle::Throttle>,
    /// CreateBackup's look at an instance (what it is, which databases it holds), shared by concurrent calls.
    pub inspections: crate::coalesce::Coalesce<ddsvault_jobs::backup::plan::Inspection>,
    /// Every API call runs as its own task in here, so that a client hanging up cannot cut a call (and its audit
    /// record) short; shutdown waits for them before the audit writer stops.
    pub requests: tokio_util::task::TaskTracker,
    /// How long a request body may take to arrive (`[server] idle_timeout_secs`).
    pub body_timeout: Duration,
    /// One driver client per instance: clients hold connection pools and monitors, so they are reused. One cell
    /// per instance, so connecting to an instance that does not answer never holds up probes of the others (the
    /// probe deadline covers connecting).
    clients: std::sync::Mutex<HashMap<String, Arc<OnceCell<mongodb::Client>>>>,
    /// What `/metrics` shows (also fed by the job runner and the scheduler).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The last `/readyz` verdict.
    pub readiness: crate::metrics::Readiness,
}

impl AppState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        region_id: String,
        account_id: String,
        host_id: String,
        skew: chrono::Duration,
        catalog: Catalog,
        repo: Repository,
        downloads: crate::download::UrlSigner,
        identities: Identities,
        instances: HashMap<String, Instance>,
        runner: Arc<Runner>,
        default_compression: ddsvault_catalog::ArchiveCompression,
    ) -> Self {
        Self {
            region_id,
            account_id,
            host_id,
            skew,
            object_lock: Arc::new(ddsvault_jobs::object_lock::ObjectLocker::new(
                catalog.clone(),
                repo.clone(),
            )),
            copier: None,
            catalog,
            repo,
            downloads,
            public_base: std::sync::OnceLock::new(),
            scheduler_running: std::sync::atomic::AtomicBool::new(false),
            identities,
            nonces: MemoryNonceStore::new(),
            shared_nonces: false,
            instances: instances
                .into_iter()
                .map(|(k, v)| (k, Arc::new(v)))
                .collect(),
            provisioned: std::sync::RwLock::new(HashMap::new()),
            registered: std::sync::RwLock::new(HashMap::new()),
            provisioner: None,
            runner,
            default_compression,
            retention_lock_cooling_off: chrono::Duration::hours(24),
            audit: crate::audit::AuditLog::default(),
            throttle: std::sync::OnceLock::new(),
            inspections: crate::coalesce::Coalesce::new(INSPECTION_FRESH),
            requests: tokio_util::task::TaskTracker::new(),
            body_timeout: Duration::from_secs(60),
            clients: std::sync::Mutex::new(HashMap::new()),
            metrics: Arc::new(crate::metrics::Metrics::new()),
            readiness: crate::metrics::Readiness::default(),
        }
    }

    /// The ARN of an instance, as RAM policies name it.
    pub fn instance_arn(&self, id: &str) -> String {
        format!(
            "acs:dds:{}:{}:dbinstance/{}",
            self.region_id, self.account_id, id
        )
    }

    /// A configured, provisioned or registered instance, or the Dds not-found error.
    pub fn instance(&self, id: &str) -> Result<Arc<Instance>, ActionError> {
        if let Some(i) = self.instances.get(id) {
            return Ok(Arc::clone(i));
        }
        // A poisoned lock only means a panic elsewhere while inserting; the map itself is intact.
        if let Some(i) = self
            .provisioned
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
        {
            return Ok(Arc::clone(i));
        }
        self.registered
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| ActionError::InstanceNotFound(id.to_string()))
    }

    /// Every instance, configured, provisioned and registered, sorted by id.
    pub fn all_instances(&self) -> Vec<Arc<Instance>> {
        let mut all: Vec<Arc<Instance>> = self.instances.values().cloned().collect();
        all.extend(
            self.provisioned
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned(),
        );
        all.extend(
            self.registered
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned(),
        );
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Makes a registered instance (new or changed) visible to the API and to jobs, and drops the pooled client of
    /// its previous connection string.
    pub fn put_registered(&self, inst: Instance) {
        let spec = inst.spec();
        self.registered
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(inst.id.clone(), Arc::new(inst));
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&spec.id);
        self.runner.add_instance(spec);
    }

    /// Forgets an unregistered instance (and its pooled client).
    pub fn remove_registered(&self, id: &str) {
        self.registered
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.runner.remove_instance(id);
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Makes a provisioned instance visible to the API and to jobs.
    pub fn add_provisioned(&self, p: &ddsvault_catalog::ProvisionedInstance) {
        let spec = ddsvault_jobs::provision::Provisioner::spec(p);
        let inst = Instance {
            id: p.id.clone(),
            uri: spec.uri.clone(),
            storage_type: spec.storage_type.clone(),
            description: p.description.clone(),
            data_path: spec.data_path.clone(),
            created_at: p.created_at,
            provisioned: true,
            registered: false,
            node: None,
        };
        self.provisioned
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(p.id.clone(), Arc::new(inst));
        self.runner.add_instance(spec);
    }

    /// Forgets a deleted provisioned instance (and its pooled client).
    pub fn remove_provisioned(&self, id: &str) {
        self.provisioned
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.runner.remove_instance(id);
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    async fn client(&self, inst: &Instance) -> Result<mongodb::Client, ActionError> {
        let cell = {
            // A poisoned map only means a panic elsewhere while inserting; the map itself is intact.
            let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(clients.entry(inst.id.clone()).or_default())
        };
        // Concurrent callers share one attempt; a failed (or abandoned) attempt leaves the cell empty for the next.
        cell.get_or_try_init(|| async {
            ddsvault_mongo::topology::connect(&inst.uri)
                .await
                .map_err(|e| ActionError::InstanceUnreachable(redact(&e.to_string(), &inst.uri)))
        })
        .await
        .cloned()
    }

    /// Asks the server what it is (topology comes from the server, never from the configuration).
    pub async fn probe(&self, inst: &Instance) -> Result<(mongodb::Client, Topology), ActionError> {
        let deadline = tokio::time::Instant::now() + PROBE_TIMEOUT;
        let late = || {
            ActionError::InstanceUnreachable(format!(
                "no answer within {}s",
                PROBE_TIMEOUT.as_secs()
            ))
        };
        let client = tokio::time::timeout_at(deadline, self.client(inst))
            .await
            .map_err(|_| late())??;
        let ask = || tokio::time::timeout_at(deadline, ddsvault_mongo::topology::discover(&client));
        let topo = match ask().await {
            // A restarted node leaves this client's pooled connections dead; the driver drops the pool on the
            // first failure, so one more attempt reaches the new process (a stopped node fails again).
            Ok(Err(e)) => {
                tracing::debug!(instance = %inst.id, error = %redact(&e.to_string(), &inst.uri), "probe failed; retrying once");
                ask().await
            }
            first => first,
        };
        let topo = topo
            .map_err(|_| late())?
            .map_err(|e| ActionError::InstanceUnreachable(redact(&e.to_string(), &inst.uri)))?;
        Ok((client, topo))
    }
}

/// Removes the password of `uri` (and the whole URI) from a message before it can reach a client or a log.
pub fn redact(message: &str, uri: &str) -> String {
    let mut out = message.replace(uri, "<instance uri>");
    if let Some(rest) = uri.split("://").nth(1) {
        if let Some((userinfo, _)) = rest.split_once('@') {
            if let Some((_, password)) = userinfo.split_once(':') {
                if !password.is_empty() {
                    out = out.replace(password, "***");
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redact_removes_password_and_uri() {
        let uri = "mongodb://admin:s3cr3t@db:27017/?authSource=admin";
        let msg = format!("failed to parse {uri}; auth with s3cr3t failed");
        let r = redact(&msg, uri);
        assert!(!r.contains("s3cr3t"), "{r}");
        assert!(r.contains("<instance uri>"), "{r}");
    }
}
