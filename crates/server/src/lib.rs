//! The ddsvault server: configuration, start-up, the RPC router and the Dds actions.
//!
//! Start-up order: open the catalog → register instances and key material → fail jobs a previous run left
//! behind → start the job runner → serve. Shutdown runs the other way: stop accepting requests, let in-flight
//! ones finish, cancel background tasks with a deadline, close the catalog.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

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
mod serving;
pub mod startup;
mod state;
mod throttle;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ddsvault_jobs::{Gc, Scheduler, Tasks};
use rand::distributions::Alphanumeric;
use rand::Rng;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use ddsvault_catalog::{AuditFilter, AuditRecord};
pub use error::{ConfigError, ServerError};
pub use router::{API_VERSION, MAX_BODY_BYTES, MAX_QUERY_BYTES};
pub use state::redact;

use state::AppState;

/// How long background work gets to stop after a shutdown signal.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(8);

/// A root AccessKey created on first start. The secret is shown once, by the caller, on the terminal.
pub struct CreatedRootKey {
    /// The AccessKeyId.
    pub id: String,
    /// The AccessKeySecret in clear.
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

pub(crate) fn random_string(len: usize) -> String {
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
    // Phases without side effects first: certificate problems and a taken port stop the start before the data
    // directory, the catalog or any job is touched. Each phase is a function of `startup`, in this order.
    let tls = startup::load_tls(&cfg, api)?;
    let listeners =
        startup::bind_listeners(&cfg, tls.as_ref().map(|(addr, _)| addr.as_str()), api).await?;
    let identity = startup::hold_identity(&cfg)?;
    let node_id = identity.node_id.clone();
    let stores = startup::open_stores(&cfg).await?;
    let now = Utc::now();
    let account_id = startup::account_id(&cfg, &stores.catalog).await?;
    let keys = startup::load_keys(&cfg, &stores.catalog, now).await?;
    let configured = startup::configured_instances(&cfg, &stores.catalog, now).await?;
    let (runner, provisioner) = startup::job_runner(&cfg, &stores, configured.specs, &node_id)?;
    let recovered = startup::recover_jobs(&runner, &stores).await?;
    let gc = startup::collector(&cfg, &stores, &recovered).await;
    let scheduler = startup::scheduler(&cfg, &stores.catalog, &runner, &node_id);
    let log_backup = cfg.log_backup.enabled.then(|| LogFollowers {
        node_id: node_id.clone(),
        settings: cfg.log_backup.settings(),
    });
    let startup::Keys {
        master,
        identities,
        created_root_key,
        root_key_id,
    } = keys;
    let parts = startup::StateParts {
        account_id,
        master,
        identities,
        instances: configured.instances,
        runner,
        provisioner,
    };
    let state = startup::app_state(&cfg, api, stores, parts).await?;
    let alert_senders = startup::wire_events(&cfg, &state, scheduler.as_ref())?;
    startup::warn_about_config(&cfg);
    tracing::info!(node_id = %node_id, instances = cfg.instances.len(), "catalog ready");
    Ok(Prepared {
        state,
        tasks: Tasks::new(),
        gc,
        scheduler,
        log_backup,
        scrub_interval: cfg.retention.scrub_every(),
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
    let gc = Gc::new(catalog, repo, cfg.retention.gc_interval)
        .with_chunk_grace(cfg.retention.chunk_grace);
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
    let gc = Gc::new(catalog, repo, cfg.retention.gc_interval)
        .with_chunk_grace(cfg.retention.chunk_grace);
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
        let Prepared {
            state,
            tasks,
            gc,
            scheduler,
            scrub_interval,
            log_backup,
            listeners,
            identity,
            server,
            tls,
            public_url,
            monitoring,
            alert_senders,
            ..
        } = self;
        let background = serving::Background {
            gc,
            scheduler,
            scrub_interval,
            log_backup,
        };
        // The data directory's lock is held until serving ends. Each phase below is a function of `serving`, in
        // this order, and the order is part of the behaviour: the shutdown in particular (listeners stop
        // accepting, then calls in flight finish, then the background tasks stop) must stay as it is.
        let _identity = identity;
        let api = serving::api_listeners(listeners.plain, listeners.tls, tls.as_ref(), &server)?;
        if let Some(addr) = api.addr {
            on_listening(addr, api.tls_addr);
            serving::set_public_base(&state, public_url.as_ref(), addr);
        }
        serving::start_background_tasks(&tasks, &state, &background, alert_senders, api.addr);
        serving::serve_until_shutdown(
            &state,
            api,
            listeners.metrics,
            &server,
            &monitoring,
            &shutdown,
        )
        .await;
        serving::stop_in_order(&state, &tasks).await;
        Ok(())
    }
}

/// The instances whose Snapshot backup recovery just failed (each once): their orphan chunks can be swept at once.
pub(crate) fn crashed_snapshots(
    jobs: &[ddsvault_catalog::Job],
) -> std::collections::BTreeSet<&str> {
    jobs.iter()
        .filter(|j| {
            j.kind == ddsvault_catalog::JobKind::Backup
                && j.method() == Some(ddsvault_catalog::BackupMethod::Snapshot)
        })
        .map(|j| j.instance_id.as_str())
        .collect()
}
