//! The ddsvault server: configuration, start-up, the RPC router and the Dds actions.
//!
//! Start-up order: open the catalog → register instances and key material → fail jobs a previous run left
//! behind → start the job runner → serve. Shutdown runs the other way: stop accepting requests, let in-flight
//! ones finish, cancel background tasks with a deadline, close the catalog.
#![forbid(unsafe_code)]

mod actions;
pub mod alerts;
mod audit;
pub mod checks;
mod coalesce;
pub mod config;
mod console;
mod download;
pub mod error;
pub mod identity;
mod listener;
pub mod metrics;
pub mod nodes;
pub mod offline;
mod ram_api;
pub mod repository;
mod router;
pub mod startup;
mod state;
mod throttle;
mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ddsvault_catalog::{AccessKeyRecord, ArchiveCompression, Catalog};
use ddsvault_jobs::{BackupSettings, Gc, InstanceSpec, Runner, Scheduler, Tasks};
use ddsvault_mongo::archive::Compression;
use rand::distributions::Alphanumeric;
use rand::Rng;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use ddsvault_catalog::{AuditFilter, AuditRecord};
pub use error::{ConfigError, ServerError};
pub use router::{API_VERSION, MAX_BODY_BYTES, MAX_QUERY_BYTES};
pub use state::redact;

use identity::Identities;
use state::{AppState, Instance, ROOT_USER};

/// How long background work gets to stop after a shutdown signal.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(8);

/// A root AccessKey created on first start. The secret is shown once, by the caller, on the terminal.
pub struct CreatedRootKey {
    pub id: String,
    pub secret: String,
}

/// What start-up produced, before serving.
pub struct Prepared {
    state: Arc<AppState>,
    tasks: Tasks,
    /// The retention garbage collector, started with the runner.
    gc: Arc<Gc>,
    /// The automatic-backup scheduler, started with the runner unless disabled.
    scheduler: Option<Arc<Scheduler>>,
    /// `[retention] scrub_interval_secs`, if scrubbing is scheduled.
    scrub_interval: Option<Duration>,
    /// The instances whose oplog followers start with the server, the node id and `[log_backup]` (None: off).
    log_backup: Option<LogFollowers>,
    /// Bound before anything else was touched (`startup`).
    listeners: startup::Listeners,
    /// Held until the process ends: the data directory's lock and the node id.
    identity: startup::Identity,
    data_dir: std::path::PathBuf,
    /// Connection bounds (`[server]`).
    server: config::ServerConfig,
    /// The HTTPS listener's address and rustls configuration (`listen_tls`).
    tls: Option<(String, Arc<rustls::ServerConfig>)>,
    public_url: Option<String>,
    /// `[metrics] enabled`, and whether they have a listener of their own.
    monitoring: config::MetricsConfig,
    /// The alert webhooks' senders, started with the other tasks.
    alert_senders: Vec<alerts::Sender>,
    /// Set when this start created the root AccessKey.
    pub created_root_key: Option<CreatedRootKey>,
    /// The root AccessKeyId in effect (generated or configured).
    pub root_key_id: Option<String>,
}

/// What the log-backup followers need (`[log_backup]`); they follow every instance the runner knows.
struct LogFollowers {
    node_id: String,
    settings: ddsvault_jobs::pitr::LogSettings,
}

/// The file a newly created root AccessKey is written to, inside the data directory.
pub const ROOT_KEY_FILE: &str = "root-accesskey.txt";

fn random_string(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Opens the catalog and repository, loads keys, registers instances and recovers interrupted jobs.
///
/// # Errors
/// Anything that prevents serving safely.
pub async fn prepare(cfg: Config) -> Result<Prepared, ServerError> {
    prepare_node(cfg, true).await
}

/// As [`prepare`]; with `api` false, a node that runs jobs, the scheduler and the other background tasks without
/// the API listener (`ddsvault agent`, `serve --no-api`; docs/deployment.md).
///
/// # Errors
/// Anything that prevents serving safely.
pub async fn prepare_node(cfg: Config, api: bool) -> Result<Prepared, ServerError> {
    // Phases without side effects first (see `startup`): certificate problems and a taken port stop the start
    // before the data directory, the catalog or any job is touched.
    let tls = match (&cfg.listen_tls, &cfg.tls_cert, &cfg.tls_key) {
        (Some(addr), Some(cert), Some(key)) if api => {
            Some((addr.clone(), tls::server_config(cert, key)?))
        }
        _ => None,
    };
    let listeners =
        startup::bind_listeners(&cfg, tls.as_ref().map(|(addr, _)| addr.as_str()), api).await?;
    // Identity of this process for job ownership: kept in its data directory (never shared through the
    // catalog) and locked there, so a restart recognises (and fails) the jobs its previous life left running,
    // and a second server on the same directory stops here.
    let identity = startup::hold_identity(&cfg)?;
    let node_id = identity.node_id.clone();

    // A repository that cannot be used stops the start before the catalog is touched.
    let repo = repository::open_checked(&cfg).await?;
    let copy_targets = repository::open_copies(&cfg).await?;
    let catalog: Catalog = ddsvault_catalog::open(&cfg.catalog_url()).await?;
    let now = Utc::now();
    let account_id = match &cfg.account_id {
        Some(a) => a.clone(),
        None => {
            let generated: String = (0..16)
                .map(|i| {
                    let d = rand::thread_rng().gen_range(if i == 0 { 1 } else { 0 }..10u8);
                    char::from(b'0' + d)
                })
                .collect();
            catalog.init_setting("account_id", &generated).await?
        }
    };

    // Identities: the master key first (it seals every secret), then the configuration's entries, then the root
    // key if the account has no usable one.
    let master = identity::unlock(&cfg, &catalog).await?;
    identity::sync_config(&cfg, &catalog, &master, now).await?;
    let keys = catalog.list_access_keys().await?;
    let mut created_root_key = None;
    let mut root_key_id = keys
        .iter()
        .find(|k| k.user == ROOT_USER && k.active)
        .map(|k| k.id.clone());
    if root_key_id.is_none() {
        let id = format!("LTAI{}", random_string(20));
        let secret = random_string(30);
        catalog
            .put_access_key(&AccessKeyRecord {
                id: id.clone(),
                secret: master
                    .seal(&id, &secret)
                    .map_err(|e| ServerError::Identity(e.to_string()))?,
                secret_format: identity::crypto::SEALED_FORMAT.into(),
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
    let identities = Identities::load(Arc::clone(&catalog), Arc::clone(&master)).await?;

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

    let compression = match cfg.backup.compression {
        ArchiveCompression::Gzip => Compression::Gzip,
        ArchiveCompression::Zstd => Compression::Zstd {
            level: cfg.backup.zstd_level,
        },
    };
    let log_backup = cfg.log_backup.enabled.then(|| LogFollowers {
        node_id: node_id.clone(),
        settings: cfg.log_backup.settings(),
    });
    let runner = Arc::new(
        Runner::new(
            Arc::clone(&catalog),
            repo.clone(),
            Arc::new(specs),
            node_id.clone(),
            BackupSettings {
                compression,
                parallel_collections: cfg.backup.parallel_collections,
                scratch_dir: cfg.data_dir.join("scratch"),
                stall_timeout: Duration::from_secs(cfg.backup.stall_timeout_secs),
            },
            cfg.backup.max_concurrent_jobs,
        )
        .with_lease(cfg.jobs.lease()),
    );
    runner.set_pins(
        cfg.instances
            .iter()
            .filter_map(|i| Some((i.id.clone(), i.node.clone()?)))
            .collect(),
    );
    // Before recovery: an interrupted provision job is cleaned up through it (process, directory).
    let provisioner = match &cfg.provisioning {
        Some(pc) => {
            let p = Arc::new(ddsvault_jobs::provision::Provisioner::new(
                pc.settings(&cfg.data_dir)?,
            ));
            runner.set_provisioner(Arc::clone(&p));
            Some(p)
        }
        None => None,
    };
    let recovered = runner.recover().await?;
    if !recovered.is_empty() {
        tracing::warn!(
            jobs = recovered.len(),
            "failed jobs interrupted by the previous stop"
        );
    }

    // Backups committed before the catalog recorded their stored size (migration 0015) are measured once, before
    // the API answers DescribeBackupStorage from the catalog; a failure is logged and retried by the collector.
    match ddsvault_jobs::storage::backfill(&catalog, &repo).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(backups = n, "recorded the stored size of older backups"),
        Err(e) => {
            tracing::warn!(error = %e, "could not record the stored size of older backups; the collector retries")
        }
    }

    // The key of download URLs lives in the catalog so every process sharing it signs and verifies alike.
    let download_key = download::load_key(&catalog, &master).await?;
    let skew = chrono::Duration::seconds(i64::try_from(cfg.timestamp_skew_secs).unwrap_or(900));
    let gc = Arc::new(
        Gc::new(
            Arc::clone(&catalog),
            repo.clone(),
            Duration::from_secs(cfg.retention.gc_interval_secs),
        )
        .with_chunk_grace(Duration::from_secs(cfg.retention.chunk_grace_secs))
        .with_audit_retention(cfg.retention.audit_retention_days),
    );
    // The chunks of a snapshot that crashed: its job is failed now, so they need not wait for the grace period.
    for instance in crashed_snapshots(&recovered) {
        gc.sweep_after_crash(instance).await;
    }
    let scheduler = cfg.scheduler.enabled.then(|| {
        Arc::new(
            Scheduler::new(
                Arc::clone(&catalog),
                cfg.instances.iter().map(|i| i.id.clone()).collect(),
                node_id.clone(),
                cfg.backup.compression,
                Duration::from_secs(cfg.scheduler.tick_secs),
            )
            .with_runner(Arc::clone(&runner))
            // Instances provisioned or registered while serving are scheduled by their policy too.
            .with_instances(ddsvault_jobs::InstanceIds::Live(Arc::clone(&runner))),
        )
    });
    let mut state = AppState::new(
        cfg.region_id.clone(),
        account_id,
        cfg.host_id.clone().unwrap_or_else(|| cfg.listen.clone()),
        skew,
        catalog,
        repo,
        download::UrlSigner::new(
            download_key,
            i64::try_from(cfg.download_url_ttl_secs).unwrap_or(3600),
        ),
        identities,
        instances,
        runner,
        cfg.backup.compression,
    );
    state.nonces = ddsvault_api::MemoryNonceStore::with_limits(
        cfg.server.nonce_capacity,
        cfg.server.nonces_per_access_key,
    );
    state.shared_nonces = api && cfg.shared_nonces();
    state.body_timeout = Duration::from_secs(cfg.server.idle_timeout_secs);
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
    state.provisioner = provisioner;
    state.retention_lock_cooling_off = chrono::Duration::seconds(
        i64::try_from(cfg.retention.lock_cooling_off_secs).unwrap_or(86_400),
    );
    let state = Arc::new(state);
    // Instances created by CreateDBInstance (their processes are started again by the supervisor task).
    for p in state.catalog.list_provisioned_instances().await? {
        state.add_provisioned(&p);
    }
    // Instances registered at run time (RegisterDBInstance), by this process or another one on the catalog.
    actions::registered::sync(&state).await?;
    // Finished jobs and missed slots feed the metrics and the alert webhooks.
    let alerts =
        alerts::Alerts::new(&cfg.alerts, &cfg.region_id, Arc::clone(&state.metrics))?.map(Arc::new);
    let alert_senders = alerts
        .as_ref()
        .map(|a| a.take_senders())
        .unwrap_or_default();
    let watchers: Arc<dyn ddsvault_jobs::EventSink> = Arc::new(metrics::Watchers {
        metrics: Arc::clone(&state.metrics),
        alerts,
    });
    state.runner.set_event_sink(Arc::clone(&watchers));
    if let Some(scheduler) = &scheduler {
        scheduler.set_event_sink(watchers);
    }
    let _ = state
        .throttle
        .set(throttle::Throttle::new(cfg.throttling.clone()));
    for f in checks::check_config(&cfg) {
        if f.status == checks::Status::Warning {
            tracing::warn!(check = f.check, "{}", f.message);
        }
    }
    tracing::info!(node_id = %node_id, instances = cfg.instances.len(), "catalog ready");
    Ok(Prepared {
        state,
        tasks: Tasks::new(),
        gc,
        scheduler,
        log_backup,
        scrub_interval: (cfg.retention.scrub_interval_secs > 0)
            .then(|| Duration::from_secs(cfg.retention.scrub_interval_secs)),
        listeners,
        identity,
        data_dir: cfg.data_dir.clone(),
        server: cfg.server.clone(),
        tls,
        public_url: cfg.public_url.clone(),
        monitoring: cfg.metrics.clone(),
        alert_senders,
        created_root_key,
        root_key_id,
    })
}

/// Runs one retention pass now (`ddsvault gc`): finishes interrupted deletions, deletes expired backups and sweeps
/// orphan snapshot chunks, exactly
/// as the server's collector task does. Safe while servers share the catalog (every step is idempotent).
///
/// # Errors
/// Catalog or repository errors.
pub async fn retention_pass(cfg: &Config) -> Result<ddsvault_jobs::gc::GcReport, ServerError> {
    let catalog = ddsvault_catalog::open_existing(&cfg.catalog_url()).await?;
    let repo = repository::open(cfg)?;
    let gc = Gc::new(
        catalog,
        repo,
        Duration::from_secs(cfg.retention.gc_interval_secs),
    )
    .with_chunk_grace(Duration::from_secs(cfg.retention.chunk_grace_secs));
    Ok(gc.pass().await?)
}

/// What a retention pass would do now (`ddsvault retention --dry-run`), changing nothing; `instance` narrows it
/// to one instance.
///
/// # Errors
/// Catalog or repository errors.
pub async fn retention_dry_run(
    cfg: &Config,
    instance: Option<&str>,
) -> Result<ddsvault_jobs::gc::DryRun, ServerError> {
    let catalog = ddsvault_catalog::open_existing(&cfg.catalog_url()).await?;
    let repo = repository::open(cfg)?;
    let gc = Gc::new(
        catalog,
        repo,
        Duration::from_secs(cfg.retention.gc_interval_secs),
    )
    .with_chunk_grace(Duration::from_secs(cfg.retention.chunk_grace_secs));
    Ok(gc.dry_run(instance).await?)
}

impl Prepared {
    /// This process's node id.
    pub fn node_id(&self) -> &str {
        &self.identity.node_id
    }

    /// Drains this node (no new jobs; running ones finish), e.g. on SIGUSR1.
    pub fn drain_handle(&self) -> nodes::Drain {
        nodes::Drain(Arc::clone(&self.state.runner))
    }

    /// Where `ddsvault serve` writes a root AccessKey it created (mode 0600): `<data_dir>/root-accesskey.txt`.
    pub fn root_key_file(&self) -> std::path::PathBuf {
        self.data_dir.join(ROOT_KEY_FILE)
    }

    /// Serves until `shutdown` fires, then stops in order. `on_listening` gets the bound plain-HTTP address and,
    /// with `listen_tls`, the HTTPS one (port 0 in tests); it is not called on a node without the API
    /// ([`prepare_node`]), which runs its background tasks until `shutdown`.
    ///
    /// # Errors
    /// Binding or serving failures.
    pub async fn serve(
        self,
        shutdown: CancellationToken,
        on_listening: impl FnOnce(SocketAddr, Option<SocketAddr>),
    ) -> Result<(), ServerError> {
        let _identity = self.identity;
        let listener = self.listeners.plain;
        let addr = match &listener {
            Some(l) => Some(l.local_addr().map_err(ServerError::Serve)?),
            None => None,
        };
        let tls_listener = match (&self.tls, self.listeners.tls) {
            (Some((_, config)), Some(tcp)) => Some(
                tls::TlsListener::new(tcp, Arc::clone(config))
                    .handshake_timeout(Duration::from_secs(self.server.header_timeout_secs)),
            ),
            _ => None,
        };
        let tls_addr = match &tls_listener {
            Some(l) => Some(axum::serve::Listener::local_addr(l).map_err(ServerError::Serve)?),
            None => None,
        };
        if let Some(addr) = addr {
            on_listening(addr, tls_addr);
            let base = self
                .public_url
                .clone()
                .unwrap_or_else(|| format!("http://{addr}"));
            let _ = self
                .state
                .public_base
                .set(base.trim_end_matches('/').to_string());
        }
        {
            let (catalog, runner) = (
                Arc::clone(&self.state.catalog),
                Arc::clone(&self.state.runner),
            );
            let api = nodes::api_label(addr);
            self.tasks.spawn("node-heartbeat", move |token| {
                nodes::heartbeat(catalog, runner, api, token)
            });
        }
        if self.state.shared_nonces {
            let catalog = Arc::clone(&self.state.catalog);
            self.tasks.spawn("nonce-sweeper", move |token| {
                nodes::sweep_nonces(catalog, token)
            });
        }

        if let Some(rx) = self.state.audit.take_receiver() {
            let catalog = Arc::clone(&self.state.catalog);
            self.tasks.spawn("audit-writer", move |token| {
                audit::run_writer(catalog, rx, token)
            });
        }
        if let Some(p) = self.state.provisioner.clone() {
            // Starts the provisioned instances that were Running, and stops them all at shutdown.
            let catalog = Arc::clone(&self.state.catalog);
            self.tasks.spawn("provisioned-instances", move |token| {
                p.supervise(catalog, token)
            });
        }
        let runner = Arc::clone(&self.state.runner);
        let tasks = self.tasks.clone();
        self.tasks
            .spawn("job-runner", move |token| runner.run(tasks, token));
        // Every process recovers the jobs whose lease expired (their process died, was paused or lost the
        // catalog), continuously: a dead node's job is failed and cleaned up within the lease and one interval.
        let (runner, gc) = (Arc::clone(&self.state.runner), Arc::clone(&self.gc));
        self.tasks.spawn("lease-recovery", move |token| async move {
            let every = runner.recovery_interval();
            loop {
                tokio::select! {
                    () = token.cancelled() => return Ok(()),
                    () = tokio::time::sleep(every) => {}
                }
                match runner.recover_expired().await {
                    Ok(jobs) => {
                        for instance in crashed_snapshots(&jobs) {
                            gc.sweep_after_crash(instance).await;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "lease recovery failed; retrying"),
                }
            }
        });
        let gc = Arc::clone(&self.gc);
        let lock_interval = gc.interval();
        self.tasks.spawn("retention-gc", move |token| gc.run(token));
        if let Some(copier) = self.state.copier.clone() {
            // Copies follow new backups within a minute, or a collector interval if that is shorter.
            let every = lock_interval.min(Duration::from_secs(60));
            self.tasks
                .spawn("repository-copies", move |token| copier.run(every, token));
        }
        let locker = Arc::clone(&self.state.object_lock);
        let ids = ddsvault_jobs::InstanceIds::Live(Arc::clone(&self.state.runner));
        self.tasks.spawn("object-lock", move |token| {
            locker.run(ids, lock_interval, token)
        });
        // Registrations, changes and removals made by other processes on the catalog.
        let st = Arc::clone(&self.state);
        self.tasks
            .spawn("registered-instances", move |token| async move {
                loop {
                    tokio::select! {
                        () = token.cancelled() => return Ok(()),
                        () = tokio::time::sleep(actions::registered::SYNC_INTERVAL) => {}
                    }
                    if let Err(e) = actions::registered::sync(&st).await {
                        tracing::warn!(error = %e, "could not read the registered instances; retrying");
                    }
                }
            });
        if let Some(interval) = self.scrub_interval {
            let (catalog, repo) = (self.state.catalog.clone(), self.state.repo.clone());
            self.tasks.spawn("repository-scrub", move |token| {
                ddsvault_jobs::scrub::run_every(catalog, repo, interval, token)
            });
        }
        let st = Arc::clone(&self.state);
        self.tasks
            .spawn("instance-checks", move |token| async move {
                tokio::select! {
                    () = checks::log_instance_checks(&st) => {}
                    () = token.cancelled() => {}
                }
                Ok(())
            });
        if let Some(f) = &self.log_backup {
            // One follower per instance the runner knows, started and stopped as instances come and go.
            let (tasks, catalog, repo) = (
                self.tasks.clone(),
                Arc::clone(&self.state.catalog),
                self.state.repo.clone(),
            );
            let (runner, node_id, settings) = (
                Arc::clone(&self.state.runner),
                f.node_id.clone(),
                f.settings.clone(),
            );
            self.tasks.spawn("log-backup-followers", move |token| {
                ddsvault_jobs::instances::supervise_followers(
                    tasks, catalog, repo, runner, node_id, settings, token,
                )
            });
        }
        for sender in self.alert_senders {
            self.tasks
                .spawn("alert-webhook", move |token| sender.run(token));
        }
        if let Some(scheduler) = self.scheduler.clone() {
            self.state
                .scheduler_running
                .store(true, std::sync::atomic::Ordering::Relaxed);
            self.tasks
                .spawn("backup-scheduler", move |token| scheduler.run(token));
        }

        // Plain and TLS listeners each get the connection bounds; the TLS router marks its calls secure.
        let metrics_listener = self.listeners.metrics;
        if let Some(l) = &metrics_listener {
            if let Ok(addr) = l.local_addr() {
                tracing::info!(%addr, "serving /metrics, /healthz and /readyz on their own listener");
            }
        }
        let on_api_listeners = self.monitoring.enabled && metrics_listener.is_none();
        let fd_limit = listener::raise_fd_limit();
        let limits = listener::Limits::new(
            &self.server,
            fd_limit,
            1 + usize::from(tls_listener.is_some()),
        );
        tracing::info!(max_connections = limits.max_connections, header_timeout_secs = limits.header_timeout.as_secs(),
            idle_timeout_secs = limits.idle_timeout.as_secs(), fd_limit = ?fd_limit, "connection limits");
        let plain = async {
            match listener {
                Some(listener) => {
                    listener::serve(
                        listener,
                        router::router(Arc::clone(&self.state), on_api_listeners),
                        limits,
                        false,
                        shutdown.clone(),
                    )
                    .await
                }
                // No API on this node: the background tasks run until shutdown.
                None => shutdown.cancelled().await,
            }
        };
        let secure = async {
            if let Some(listener) = tls_listener {
                listener::serve(
                    listener,
                    router::router(Arc::clone(&self.state), on_api_listeners),
                    limits,
                    true,
                    shutdown.clone(),
                )
                .await;
            }
        };
        let monitoring = async {
            if let Some(listener) = metrics_listener {
                listener::serve(
                    listener,
                    metrics::routes(Arc::clone(&self.state)),
                    limits,
                    false,
                    shutdown.clone(),
                )
                .await;
            }
        };
        tokio::join!(plain, secure, monitoring);
        tracing::info!("HTTP server stopped accepting requests");
        // Calls whose client went away still run to their end (and their audit record) before the writer stops.
        self.state.requests.close();
        if tokio::time::timeout(SHUTDOWN_DEADLINE, self.state.requests.wait())
            .await
            .is_err()
        {
            tracing::warn!("calls still running after the shutdown deadline");
        }
        self.tasks.shutdown(SHUTDOWN_DEADLINE).await;
        tracing::info!("shutdown complete");
        Ok(())
    }
}

/// The instances whose Snapshot backup recovery just failed (each once): their orphan chunks can be swept at once.
fn crashed_snapshots(jobs: &[ddsvault_catalog::Job]) -> std::collections::BTreeSet<&str> {
    jobs.iter()
        .filter(|j| {
            j.kind == ddsvault_catalog::JobKind::Backup
                && j.method() == Some(ddsvault_catalog::BackupMethod::Snapshot)
        })
        .map(|j| j.instance_id.as_str())
        .collect()
}
