//! The ddsvault server: configuration, start-up, the RPC router and the Dds actions.
//!
//! Start-up order: open the catalog → register instances and key material → fail jobs a previous run left
//! behind → start the job runner → serve. Shutdown runs the other way: stop accepting requests, let in-flight
//! ones finish, cancel background tasks with a deadline, close the catalog.

mod actions;
pub mod config;
mod download;
pub mod error;
pub mod offline;
mod router;
mod state;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ddsvault_catalog::{AccessKeyRecord, Catalog};
use ddsvault_jobs::{BackupSettings, Gc, InstanceSpec, Runner, Scheduler, Tasks};
use ddsvault_mongo::archive::Compression;
use ddsvault_ram::Policy;
use ddsvault_repo::Repository;
use rand::distributions::Alphanumeric;
use rand::Rng;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::{ConfigError, ServerError};
pub use router::{API_VERSION, MAX_BODY_BYTES};
pub use state::redact;

use state::{AppState, Instance, KeyStore, ROOT_USER};

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
    listen: String,
    public_url: Option<String>,
    /// Set when this start created the root AccessKey.
    pub created_root_key: Option<CreatedRootKey>,
    /// The root AccessKeyId in effect (generated or configured).
    pub root_key_id: Option<String>,
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill(buf.as_mut_slice());
    hex::encode(buf)
}

fn hex_decode_or_regenerate(s: &str) -> Vec<u8> {
    // A damaged setting must not disable downloads silently with an empty key.
    match hex::decode(s) {
        Ok(k) if k.len() >= 16 => k,
        _ => hex::decode(random_hex(32)).unwrap_or_default(),
    }
}

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
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| ConfigError(format!("create data_dir {}: {e}", cfg.data_dir.display())))?;
    let catalog: Catalog = ddsvault_catalog::open(&cfg.catalog_url()).await?;
    let repo = Repository::local(&cfg.repository_path())?;
    let now = Utc::now();

    // Identity of this process for job ownership: stable per data directory, so a restart recognises (and fails)
    // the jobs its previous life left running.
    let node_id = catalog
        .init_setting(
            "node_id",
            &format!("node-{}", random_string(12).to_lowercase()),
        )
        .await?;
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

    for k in &cfg.access_keys {
        catalog
            .put_access_key(&AccessKeyRecord {
                id: k.id.clone(),
                secret: k.secret.clone(),
                user: k.user.clone(),
                active: true,
                source: "config".into(),
                created_at: now,
            })
            .await?;
    }
    let mut keys = catalog.list_access_keys().await?;
    let mut created_root_key = None;
    if !keys.iter().any(|k| k.user == ROOT_USER && k.active) {
        let rec = AccessKeyRecord {
            id: format!("LTAI{}", random_string(20)),
            secret: random_string(30),
            user: ROOT_USER.into(),
            active: true,
            source: "generated".into(),
            created_at: now,
        };
        catalog.put_access_key(&rec).await?;
        created_root_key = Some(CreatedRootKey {
            id: rec.id.clone(),
            secret: rec.secret.clone(),
        });
        keys.push(rec);
    }
    let root_key_id = keys
        .iter()
        .find(|k| k.user == ROOT_USER && k.active)
        .map(|k| k.id.clone());

    let policies: HashMap<String, Arc<Policy>> = cfg
        .ram_policies
        .iter()
        .map(|p| {
            Policy::parse(&p.document)
                .map(|pol| (p.name.clone(), Arc::new(pol)))
                .map_err(|e| ConfigError(format!("ram_policies {:?}: {e}", p.name)))
        })
        .collect::<Result<_, _>>()?;
    let ram_users: HashMap<String, Vec<Arc<Policy>>> = cfg
        .ram_users
        .iter()
        .map(|u| {
            let attached = u
                .policies
                .iter()
                .filter_map(|name| policies.get(name).cloned())
                .collect();
            (u.name.clone(), attached)
        })
        .collect();

    let mut instances = HashMap::new();
    let mut specs = HashMap::new();
    for i in &cfg.instances {
        let rec = catalog.register_instance(&i.id, now).await?;
        if catalog.get_policy(&i.id).await?.is_none() {
            catalog
                .put_policy(&i.id, &ddsvault_catalog::BackupPolicy::default(), now)
                .await?;
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

    let compression = match cfg.backup.compression.as_str() {
        "gzip" => Compression::Gzip,
        _ => Compression::Zstd {
            level: cfg.backup.zstd_level,
        },
    };
    let runner = Arc::new(Runner::new(
        Arc::clone(&catalog),
        repo.clone(),
        Arc::new(specs),
        node_id.clone(),
        BackupSettings {
            compression,
            parallel_collections: cfg.backup.parallel_collections,
            scratch_dir: cfg.data_dir.join("scratch"),
        },
        cfg.backup.max_concurrent_jobs,
    ));
    let recovered = runner.recover().await?;
    if recovered > 0 {
        tracing::warn!(
            jobs = recovered,
            "failed jobs interrupted by the previous stop"
        );
    }

    // The key of download URLs lives in the catalog so every process sharing it signs and verifies alike.
    let download_key = hex_decode_or_regenerate(
        &catalog
            .init_setting("download_url_key", &random_hex(32))
            .await?,
    );
    let skew = chrono::Duration::seconds(i64::try_from(cfg.timestamp_skew_secs).unwrap_or(900));
    let gc = Arc::new(Gc::new(
        Arc::clone(&catalog),
        repo.clone(),
        Duration::from_secs(cfg.retention.gc_interval_secs),
    ));
    let scheduler = cfg.scheduler.enabled.then(|| {
        Arc::new(
            Scheduler::new(
                Arc::clone(&catalog),
                cfg.instances.iter().map(|i| i.id.clone()).collect(),
                node_id.clone(),
                cfg.backup.compression.clone(),
                Duration::from_secs(cfg.scheduler.tick_secs),
            )
            .with_runner(Arc::clone(&runner)),
        )
    });
    let state = Arc::new(AppState::new(
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
        KeyStore::new(keys),
        ram_users,
        instances,
        runner,
        cfg.backup.compression.clone(),
    ));
    tracing::info!(node_id = %node_id, instances = cfg.instances.len(), "catalog ready");
    Ok(Prepared {
        state,
        tasks: Tasks::new(),
        gc,
        scheduler,
        listen: cfg.listen.clone(),
        public_url: cfg.public_url.clone(),
        created_root_key,
        root_key_id,
    })
}

/// Runs one retention pass now (`ddsvault gc`): finishes interrupted deletions and deletes expired backups, exactly
/// as the server's collector task does. Safe while servers share the catalog (every step is idempotent).
///
/// # Errors
/// Catalog or repository errors.
pub async fn retention_pass(cfg: &Config) -> Result<ddsvault_jobs::gc::GcReport, ServerError> {
    let catalog = ddsvault_catalog::open(&cfg.catalog_url()).await?;
    let repo = Repository::local(&cfg.repository_path())?;
    let gc = Gc::new(
        catalog,
        repo,
        Duration::from_secs(cfg.retention.gc_interval_secs),
    );
    Ok(gc.pass().await?)
}

impl Prepared {
    /// Serves until `shutdown` fires, then stops in order. `on_listening` gets the bound address (port 0 in
    /// tests).
    ///
    /// # Errors
    /// Binding or serving failures.
    pub async fn serve(
        self,
        shutdown: CancellationToken,
        on_listening: impl FnOnce(SocketAddr),
    ) -> Result<(), ServerError> {
        let listener = tokio::net::TcpListener::bind(&self.listen)
            .await
            .map_err(|source| ServerError::Listen {
                addr: self.listen.clone(),
                source,
            })?;
        let addr = listener.local_addr().map_err(ServerError::Serve)?;
        on_listening(addr);
        let base = self
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"));
        let _ = self
            .state
            .public_base
            .set(base.trim_end_matches('/').to_string());

        let runner = Arc::clone(&self.state.runner);
        let tasks = self.tasks.clone();
        self.tasks
            .spawn("job-runner", move |token| runner.run(tasks, token));
        let gc = Arc::clone(&self.gc);
        self.tasks.spawn("retention-gc", move |token| gc.run(token));
        if let Some(scheduler) = self.scheduler.clone() {
            self.state
                .scheduler_running
                .store(true, std::sync::atomic::Ordering::Relaxed);
            self.tasks
                .spawn("backup-scheduler", move |token| scheduler.run(token));
        }

        let app = router::router(Arc::clone(&self.state));
        let stop = shutdown.clone();
        let served = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
        tracing::info!("HTTP server stopped accepting requests");
        self.tasks.shutdown(SHUTDOWN_DEADLINE).await;
        tracing::info!("shutdown complete");
        served.map_err(ServerError::Serve)
    }
}
