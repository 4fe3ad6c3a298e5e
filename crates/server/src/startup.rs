//! The first phases of `ddsvault serve`, before anything shared is touched.
//!
//! A start may fail (port taken, another server on the same data directory). Whatever fails must leave every job,
//! file and key as it was, so the order is: bind the listeners (no side effect at all), then take this process's
//! identity (an exclusive lock on the data directory and the node id kept beside it), and only then open the
//! catalog, create keys and recover interrupted jobs. `crate::prepare_node` runs the phases below in order; a
//! newcomer reads the start of the service there, one named phase per line.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use ddsvault_catalog::{AccessKeyRecord, ArchiveCompression, Catalog};
use ddsvault_jobs::provision::Provisioner;
use ddsvault_jobs::{BackupSettings, Gc, InstanceSpec, Runner, Scheduler};
use ddsvault_mongo::archive::Compression;
use ddsvault_repo::Repository;
use rand::Rng;

use crate::config::Config;
use crate::error::{ConfigError, ServerError};
use crate::identity::Identities;
use crate::state::{AppState, Instance, ROOT_USER};
use crate::CreatedRootKey;

/// The listeners of the API, bound before anything else happens.
pub(crate) struct Listeners {
    /// `None` for a node without the API (`ddsvault agent`, `serve --no-api`).
    pub plain: Option<tokio::net::TcpListener>,
    pub tls: Option<tokio::net::TcpListener>,
    /// `[metrics] listen`: the monitoring endpoints' own listener.
    pub metrics: Option<tokio::net::TcpListener>,
}

/// Binds `listen` and, with a TLS configuration loaded, its address `tls_addr` (neither when `api` is false).
pub(crate) async fn bind_listeners(
    cfg: &Config,
    tls_addr: Option<&str>,
    api: bool,
) -> Result<Listeners, ServerError> {
    let bind = |addr: String| async move {
        tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| ServerError::Listen { addr, source })
    };
    let plain = match api {
        true => Some(bind(cfg.listen.clone()).await?),
        false => None,
    };
    let tls = match tls_addr {
        Some(addr) if api => Some(bind(addr.to_string()).await?),
        _ => None,
    };
    let metrics = match (&cfg.metrics.listen, cfg.metrics.enabled) {
        (Some(addr), true) => Some(bind(addr.clone()).await?),
        _ => None,
    };
    Ok(Listeners {
        plain,
        tls,
        metrics,
    })
}

/// This process's identity: its node id, and the lock that makes it the only server of its data directory.
/// The lock is held as long as this value lives (the process's life): the kernel releases it at exit, even on
/// SIGKILL, so a crash never leaves a stale lock behind.
#[derive(Debug)]
pub struct Identity {
    /// Owner of the jobs this process claims; never shared through the catalog.
    pub node_id: String,
    _lock: File,
}

/// The lock file inside the data directory.
pub const LOCK_FILE: &str = "ddsvault.lock";
/// The node id file inside the data directory.
pub const NODE_ID_FILE: &str = "node_id";

/// Creates the data directory if needed, locks it, and reads (or creates) the node id kept in it; a configured
/// `node_id` wins over the file.
///
/// # Errors
/// [`ConfigError`] naming the data directory when it cannot be created or locked, in particular when another
/// ddsvault process serves it.
pub fn hold_identity(cfg: &Config) -> Result<Identity, ServerError> {
    let dir = &cfg.data_dir;
    std::fs::create_dir_all(dir)
        .map_err(|e| ConfigError(format!("create data_dir {}: {e}", dir.display())))?;
    let lock = lock_data_dir(dir)?;
    let node_id = match &cfg.node_id {
        Some(id) => id.clone(),
        None => stored_node_id(dir)?,
    };
    Ok(Identity {
        node_id,
        _lock: lock,
    })
}

fn lock_data_dir(dir: &Path) -> Result<File, ServerError> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| ConfigError(format!("open {}: {e}", path.display())))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(ConfigError(format!(
            "another ddsvault process is serving the data directory {} (it holds {}); stop it first, or give this \
             one its own data_dir",
            dir.display(),
            path.display()
        ))
        .into()),
        Err(e) => Err(ConfigError(format!("lock {}: {e}", path.display())).into()),
    }
}

/// The node id stored in the data directory, created on the first start (written to a temporary file and
/// renamed, so a crash never leaves a half-written id).
fn stored_node_id(dir: &Path) -> Result<String, ServerError> {
    let path = dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if valid_node_id(id) {
                return Ok(id.to_string());
            }
            Err(ConfigError(format!(
                "{} does not hold a valid node id ({id:?}); remove it to have a new one generated",
                path.display()
            ))
            .into())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("node-{}", crate::random_string(12).to_lowercase());
            write_atomically(&path, &format!("{id}\n"))
                .map_err(|e| ConfigError(format!("write {}: {e}", path.display())))?;
            Ok(id)
        }
        Err(e) => Err(ConfigError(format!("read {}: {e}", path.display())).into()),
    }
}

/// Node ids name job owners in the catalog and in logs: short, printable, no spaces.
pub(crate) fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------------------
// The phases after the identity is held, in the order `crate::prepare_node` runs them. Each one either
// completes or returns the error that stops the start; none of them serves a call.

/// The repository (checked usable), its copy targets and the catalog.
pub(crate) struct Stores {
    pub repo: Repository,
    pub copy_targets: Vec<ddsvault_jobs::copies::CopyTarget>,
    pub catalog: Catalog,
}

/// `listen_tls` with its certificate and key loaded (None without it, or on a node without the API).
pub(crate) fn load_tls(
    cfg: &Config,
    api: bool,
) -> Result<Option<(String, Arc<rustls::ServerConfig>)>, ServerError> {
    Ok(match (&cfg.listen_tls, &cfg.tls_cert, &cfg.tls_key) {
        (Some(addr), Some(cert), Some(key)) if api => {
            Some((addr.clone(), crate::tls::server_config(cert, key)?))
        }
        _ => None,
    })
}

/// Opens the repository first: one that cannot be used stops the start before the catalog is touched.
pub(crate) async fn open_stores(cfg: &Config) -> Result<Stores, ServerError> {
    let repo = crate::repository::open_checked(cfg).await?;
    let copy_targets = crate::repository::open_copies(cfg).await?;
    let catalog: Catalog = ddsvault_catalog::open(&cfg.catalog_url()).await?;
    Ok(Stores {
        repo,
        copy_targets,
        catalog,
    })
}

/// The configured account id, or the one the catalog holds (generated on its first start, shared by every
/// process on the catalog).
pub(crate) async fn account_id(cfg: &Config, catalog: &Catalog) -> Result<String, ServerError> {
    if let Some(a) = &cfg.account_id {
        return Ok(a.clone());
    }
    let generated: String = (0..16)
        .map(|i| {
            let d = rand::thread_rng().gen_range(if i == 0 { 1 } else { 0 }..10u8);
            char::from(b'0' + d)
        })
        .collect();
    Ok(catalog.init_setting("account_id", &generated).await?)
}

/// What [`load_keys`] produced.
pub(crate) struct Keys {
    pub master: Arc<crate::identity::crypto::MasterKey>,
    pub identities: Identities,
    pub created_root_key: Option<CreatedRootKey>,
    pub root_key_id: Option<String>,
}

/// Identities: the master key first (it seals every secret), then the configuration's entries, then the root
/// key if the account has no usable one.
pub(crate) async fn load_keys(
    cfg: &Config,
    catalog: &Catalog,
    now: DateTime<Utc>,
) -> Result<Keys, ServerError> {
    let master = crate::identity::unlock(cfg, catalog).await?;
    crate::identity::sync_config(cfg, catalog, &master, now).await?;
    let keys = catalog.list_access_keys().await?;
    let mut created_root_key = None;
    let mut root_key_id = keys
        .iter()
        .find(|k| k.user == ROOT_USER && k.active)
        .map(|k| k.id.clone());
    if root_key_id.is_none() {
        let id = format!("LTAI{}", crate::random_string(20));
        let secret = crate::random_string(30);
        catalog
            .put_access_key(&AccessKeyRecord {
                id: id.clone(),
                secret: master
                    .seal(&id, &secret)
                    .map_err(|e| ServerError::Identity(e.to_string()))?,
                secret_format: crate::identity::crypto::SEALED_FORMAT.into(),
                user: ROOT_USER.into(),
                active: true,
                source: "generated".into(),
                created_at: now,
                last_used_at: None,
            })
            .await?;
        root_key_id = Some(id.clone());
        created_root_key = Some(CreatedRootKey { id, secret });
    }
    let identities = Identities::load(Arc::clone(catalog), Arc::clone(&master)).await?;
    Ok(Keys {
        master,
        identities,
        created_root_key,
        root_key_id,
    })
}

/// The configuration file's instances, as the API shows them and as the jobs reach them.
pub(crate) struct Configured {
    pub instances: HashMap<String, Instance>,
    pub specs: HashMap<String, InstanceSpec>,
}

/// Registers the configuration's instances in the catalog (their creation time is kept there) and stores a
/// policy from the file once.
pub(crate) async fn configured_instances(
    cfg: &Config,
    catalog: &Catalog,
    now: DateTime<Utc>,
) -> Result<Configured, ServerError> {
    let mut instances = HashMap::new();
    let mut specs = HashMap::new();
    for i in &cfg.instances {
        let rec = catalog.register_instance(&i.id, now).await?;
        // Automatic backups are opt-in: a policy from the file is stored once, when the instance has none
        // (changes through ModifyBackupPolicy win afterwards); without one the instance has no automatic backups.
        if let Some(p) = &i.policy {
            if catalog.get_policy(&i.id).await?.is_none() {
                catalog.put_policy(&i.id, &p.to_policy(), now).await?;
            }
        }
        instances.insert(
            i.id.clone(),
            Instance {
                id: i.id.clone(),
                uri: i.uri.clone(),
                storage_type: i.storage_type.clone(),
                description: i.description.clone(),
                data_path: i.data_path.clone(),
                created_at: rec.created_at,
                provisioned: false,
                registered: false,
                node: None,
            },
        );
        specs.insert(
            i.id.clone(),
            InstanceSpec {
                id: i.id.clone(),
                uri: i.uri.clone(),
                storage_type: i.storage_type.clone(),
                data_path: i.data_path.clone(),
            },
        );
    }
    Ok(Configured { instances, specs })
}

/// The job runner with its settings, instance pins and (with `[provisioning]`) the provisioner, which must exist
/// before recovery: an interrupted provision job is cleaned up through it (process, directory).
pub(crate) fn job_runner(
    cfg: &Config,
    stores: &Stores,
    specs: HashMap<String, InstanceSpec>,
    node_id: &str,
) -> Result<(Arc<Runner>, Option<Arc<Provisioner>>), ServerError> {
    let compression = match cfg.backup.compression {
        ArchiveCompression::Gzip => Compression::Gzip,
        ArchiveCompression::Zstd => Compression::Zstd {
            level: cfg.backup.zstd_level,
        },
    };
    let runner = Arc::new(
        Runner::new(
            Arc::clone(&stores.catalog),
            stores.repo.clone(),
            Arc::new(specs),
            node_id.to_string(),
            BackupSettings {
                compression,
                parallel_collections: cfg.backup.parallel_collections,
                scratch_dir: cfg.data_dir.join("scratch"),
                stall_timeout: cfg.backup.stall_timeout,
            },
            cfg.backup.max_concurrent_jobs,
        )
        .with_lease(cfg.jobs.lease),
    );
    runner.set_pins(
        cfg.instances
            .iter()
            .filter_map(|i| Some((i.id.clone(), i.node.clone()?)))
            .collect(),
    );
    let provisioner = match &cfg.provisioning {
        Some(pc) => {
            let p = Arc::new(Provisioner::new(pc.settings(&cfg.data_dir)?));
            runner.set_provisioner(Arc::clone(&p));
            Some(p)
        }
        None => None,
    };
    Ok((runner, provisioner))
}

/// Fails the jobs a previous life of this node (or an expired lease) left running, and measures backups
/// committed before the catalog recorded their stored size (migration 0015), before the API answers
/// DescribeBackupStorage from the catalog; a failed measurement is logged and retried by the collector.
pub(crate) async fn recover_jobs(
    runner: &Arc<Runner>,
    stores: &Stores,
) -> Result<Vec<ddsvault_catalog::Job>, ServerError> {
    let recovered = runner.recover().await?;
    if !recovered.is_empty() {
        tracing::warn!(
            jobs = recovered.len(),
            "failed jobs interrupted by the previous stop"
        );
    }
    match ddsvault_jobs::storage::backfill(&stores.catalog, &stores.repo).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(backups = n, "recorded the stored size of older backups"),
        Err(e) => {
            tracing::warn!(error = %e, "could not record the stored size of older backups; the collector retries")
        }
    }
    Ok(recovered)
}

/// The retention collector; the chunks of a snapshot that crashed are swept at once (its job is failed now, so
/// they need not wait for the grace period).
pub(crate) async fn collector(
    cfg: &Config,
    stores: &Stores,
    recovered: &[ddsvault_catalog::Job],
) -> Arc<Gc> {
    let gc = Arc::new(
        Gc::new(
            Arc::clone(&stores.catalog),
            stores.repo.clone(),
            cfg.retention.gc_interval,
        )
        .with_chunk_grace(cfg.retention.chunk_grace)
        .with_audit_retention(cfg.retention.audit_retention_days),
    );
    for instance in crate::crashed_snapshots(recovered) {
        gc.sweep_after_crash(instance).await;
    }
    gc
}

/// The automatic-backup scheduler, unless `[scheduler] enabled = false`.
pub(crate) fn scheduler(
    cfg: &Config,
    catalog: &Catalog,
    runner: &Arc<Runner>,
    node_id: &str,
) -> Option<Arc<Scheduler>> {
    cfg.scheduler.enabled.then(|| {
        Arc::new(
            Scheduler::new(
                Arc::clone(catalog),
                cfg.instances.iter().map(|i| i.id.clone()).collect(),
                node_id.to_string(),
                cfg.backup.compression,
                cfg.scheduler.tick,
            )
            .with_runner(Arc::clone(runner))
            // Instances provisioned or registered while serving are scheduled by their policy too.
            .with_instances(ddsvault_jobs::InstanceIds::Live(Arc::clone(runner))),
        )
    })
}

/// What [`app_state`] takes besides the configuration and the stores.
pub(crate) struct StateParts {
    pub account_id: String,
    pub master: Arc<crate::identity::crypto::MasterKey>,
    pub identities: Identities,
    pub instances: HashMap<String, Instance>,
    pub runner: Arc<Runner>,
    pub provisioner: Option<Arc<Provisioner>>,
}

/// The state every request and background task shares, with the instances provisioned or registered at run
/// time (by this process or another one on the catalog) added.
pub(crate) async fn app_state(
    cfg: &Config,
    api: bool,
    stores: Stores,
    parts: StateParts,
) -> Result<Arc<AppState>, ServerError> {
    let Stores {
        repo,
        copy_targets,
        catalog,
    } = stores;
    // The key of download URLs lives in the catalog so every process sharing it signs and verifies alike.
    let download_key = crate::download::load_key(&catalog, &parts.master).await?;
    // chrono's range (±i64::MAX ms) is narrower than std's; a skew beyond it falls back to the default.
    let skew = chrono::Duration::from_std(cfg.timestamp_skew)
        .unwrap_or_else(|_| chrono::Duration::seconds(900));
    let mut state = AppState::new(
        cfg.region_id.clone(),
        parts.account_id,
        cfg.host_id.clone().unwrap_or_else(|| cfg.listen.clone()),
        skew,
        catalog,
        repo,
        crate::download::UrlSigner::new(
            download_key,
            // The signer adds it to epoch seconds.
            i64::try_from(cfg.download_url_ttl.as_secs()).unwrap_or(3600),
        ),
        parts.identities,
        parts.instances,
        parts.runner,
        cfg.backup.compression,
    );
    state.nonces = ddsvault_api::MemoryNonceStore::with_limits(
        cfg.server.nonce_capacity,
        cfg.server.nonces_per_access_key,
    );
    state.shared_nonces = api && cfg.shared_nonces();
    state.body_timeout = cfg.server.idle_timeout;
    if !copy_targets.is_empty() {
        state.copier = Some(Arc::new(
            ddsvault_jobs::copies::Copier::new(
                Arc::clone(&state.catalog),
                state.repo.clone(),
                copy_targets,
                Vec::new(),
            )
            .with_instances(ddsvault_jobs::InstanceIds::Live(Arc::clone(&state.runner))),
        ));
    }
    state.provisioner = parts.provisioner;
    // Validated to at most a year, well within chrono's range.
    state.retention_lock_cooling_off = chrono::Duration::from_std(cfg.retention.lock_cooling_off)
        .unwrap_or_else(|_| chrono::Duration::seconds(86_400));
    let _ = state
        .throttle
        .set(crate::throttle::Throttle::new(cfg.throttling.clone()));
    let state = Arc::new(state);
    // Instances created by CreateDBInstance (their processes are started again by the supervisor task).
    for p in state.catalog.list_provisioned_instances().await? {
        state.add_provisioned(&p);
    }
    // Instances registered at run time (RegisterDBInstance), by this process or another one on the catalog.
    crate::actions::registered::sync(&state).await?;
    Ok(state)
}

/// Finished jobs and missed slots feed the metrics and the alert webhooks; returns the webhooks' senders, started
/// with the other tasks.
pub(crate) fn wire_events(
    cfg: &Config,
    state: &Arc<AppState>,
    scheduler: Option<&Arc<Scheduler>>,
) -> Result<Vec<crate::alerts::Sender>, ServerError> {
    let alerts =
        crate::alerts::Alerts::new(&cfg.alerts, &cfg.region_id, Arc::clone(&state.metrics))?
            .map(Arc::new);
    let senders = alerts
        .as_ref()
        .map(|a| a.take_senders())
        .unwrap_or_default();
    let watchers: Arc<dyn ddsvault_jobs::EventSink> = Arc::new(crate::metrics::Watchers {
        metrics: Arc::clone(&state.metrics),
        alerts,
    });
    state.runner.set_event_sink(Arc::clone(&watchers));
    if let Some(scheduler) = scheduler {
        scheduler.set_event_sink(watchers);
    }
    Ok(senders)
}

/// The configuration's warnings (`ddsvault check` shows them too) go to the log at every start.
pub(crate) fn warn_about_config(cfg: &Config) {
    for f in crate::checks::check_config(cfg) {
        if f.status == crate::checks::Status::Warning {
            tracing::warn!(check = f.check, "{}", f.message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> Config {
        let mut cfg: Config = toml::from_str("").expect("empty config");
        cfg.data_dir = dir.to_path_buf();
        cfg
    }

    #[test]
    fn the_node_id_is_kept_in_the_data_directory_and_the_lock_is_exclusive() {
        let dir = tempfile::tempdir().expect("tmp");
        let cfg = config(dir.path());
        let first = hold_identity(&cfg).expect("first");
        assert!(valid_node_id(&first.node_id), "{}", first.node_id);
        let second = hold_identity(&cfg).expect_err("second holder");
        assert!(
            second.to_string().contains("another ddsvault process"),
            "{second}"
        );
        drop(first);
        let again = hold_identity(&cfg).expect("after release");
        let stored = std::fs::read_to_string(dir.path().join(NODE_ID_FILE)).expect("file");
        assert_eq!(stored.trim(), again.node_id);
        drop(again);
        let mut named = cfg.clone();
        named.node_id = Some("db-host-1".into());
        assert_eq!(hold_identity(&named).expect("named").node_id, "db-host-1");
    }

    #[test]
    fn a_damaged_node_id_file_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join(NODE_ID_FILE), "not a node id\n").expect("write");
        let e = hold_identity(&config(dir.path())).expect_err("damaged");
        assert!(e.to_string().contains("valid node id"), "{e}");
    }
}
