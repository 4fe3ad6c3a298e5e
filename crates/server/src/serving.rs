//! The phases of `ddsvault serve` after start-up (`crate::startup`): wrap the bound listeners, start the named
//! background tasks, serve until the shutdown signal, then stop in order. `crate::Prepared::serve` runs them in
//! this order; a newcomer reads the life of a serving process there, one named phase per line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ddsvault_jobs::{Gc, Scheduler, Tasks};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::error::ServerError;
use crate::state::AppState;
use crate::{actions, alerts, audit, checks, config, listener, metrics, nodes, router, tls};
use crate::{LogFollowers, SHUTDOWN_DEADLINE};

/// The API's listeners, ready to accept: plain HTTP and (with `listen_tls`) HTTPS, with the addresses they are
/// bound to (port 0 in tests picks one). Both are `None` on a node without the API.
pub(crate) struct ApiListeners {
    pub plain: Option<TcpListener>,
    pub addr: Option<SocketAddr>,
    pub tls: Option<tls::TlsListener>,
    pub tls_addr: Option<SocketAddr>,
}

/// Reads the plain listener's address, then wraps the TLS one with its rustls configuration and handshake
/// timeout (the header timeout of `[server]`).
pub(crate) fn api_listeners(
    plain: Option<TcpListener>,
    tls_tcp: Option<TcpListener>,
    tls_config: Option<&(String, Arc<rustls::ServerConfig>)>,
    server: &config::ServerConfig,
) -> Result<ApiListeners, ServerError> {
    let addr = match &plain {
        Some(l) => Some(l.local_addr().map_err(ServerError::Serve)?),
        None => None,
    };
    let tls = match (tls_config, tls_tcp) {
        (Some((_, config)), Some(tcp)) => Some(
            tls::TlsListener::new(tcp, Arc::clone(config)).handshake_timeout(server.header_timeout),
        ),
        _ => None,
    };
    let tls_addr = match &tls {
        Some(l) => Some(axum::serve::Listener::local_addr(l).map_err(ServerError::Serve)?),
        None => None,
    };
    Ok(ApiListeners {
        plain,
        addr,
        tls,
        tls_addr,
    })
}

/// The base of the URLs the service hands out (download URLs): `public_url`, else the plain listener's address.
/// Set once; a second serve of the same state keeps the first.
pub(crate) fn set_public_base(state: &AppState, public_url: Option<&String>, addr: SocketAddr) {
    let base = public_url
        .cloned()
        .unwrap_or_else(|| format!("http://{addr}"));
    let _ = state
        .public_base
        .set(base.trim_end_matches('/').to_string());
}

/// What the background tasks take from start-up besides the shared state (`crate::Prepared`'s fields).
pub(crate) struct Background {
    /// The retention garbage collector.
    pub gc: Arc<Gc>,
    /// The automatic-backup scheduler, unless disabled.
    pub scheduler: Option<Arc<Scheduler>>,
    /// `[retention] scrub_interval_secs`, if scrubbing is scheduled.
    pub scrub_interval: Option<Duration>,
    /// The oplog followers' settings (None: `[log_backup]` off).
    pub log_backup: Option<LogFollowers>,
}

/// Starts every background task through the one spawn helper, each with its name, in this order.
pub(crate) fn start_background_tasks(
    tasks: &Tasks,
    state: &Arc<AppState>,
    background: &Background,
    alert_senders: Vec<alerts::Sender>,
    api_addr: Option<SocketAddr>,
) {
    // This node's presence in the catalog and the bookkeeping of calls.
    node_heartbeat(tasks, state, api_addr);
    if state.shared_nonces {
        nonce_sweeper(tasks, state);
    }
    audit_writer(tasks, state);
    provisioned_instances(tasks, state);
    // Jobs: the runner, and the recovery of jobs whose owner died.
    job_runner(tasks, state);
    lease_recovery(tasks, state, &background.gc);
    // The repository: retention, copies, object lock; then the instances and what watches them.
    let lock_interval = retention_gc(tasks, &background.gc);
    repository_copies(tasks, state, lock_interval);
    object_lock(tasks, state, lock_interval);
    registered_instances(tasks, state);
    if let Some(interval) = background.scrub_interval {
        repository_scrub(tasks, state, interval);
    }
    instance_checks(tasks, state);
    if let Some(f) = &background.log_backup {
        log_backup_followers(tasks, state, f);
    }
    for sender in alert_senders {
        tasks.spawn("alert-webhook", move |token| sender.run(token));
    }
    if let Some(scheduler) = &background.scheduler {
        backup_scheduler(tasks, state, Arc::clone(scheduler));
    }
}

fn node_heartbeat(tasks: &Tasks, state: &Arc<AppState>, api_addr: Option<SocketAddr>) {
    let (catalog, runner) = (Arc::clone(&state.catalog), Arc::clone(&state.runner));
    let api = nodes::api_label(api_addr);
    tasks.spawn("node-heartbeat", move |token| {
        nodes::heartbeat(catalog, runner, api, token)
    });
}

fn nonce_sweeper(tasks: &Tasks, state: &Arc<AppState>) {
    let catalog = Arc::clone(&state.catalog);
    tasks.spawn("nonce-sweeper", move |token| {
        nodes::sweep_nonces(catalog, token)
    });
}

fn audit_writer(tasks: &Tasks, state: &Arc<AppState>) {
    if let Some(rx) = state.audit.take_receiver() {
        let catalog = Arc::clone(&state.catalog);
        tasks.spawn("audit-writer", move |token| {
            audit::run_writer(catalog, rx, token)
        });
    }
}

fn provisioned_instances(tasks: &Tasks, state: &Arc<AppState>) {
    if let Some(p) = state.provisioner.clone() {
        // Starts the provisioned instances that were Running, and stops them all at shutdown.
        let catalog = Arc::clone(&state.catalog);
        tasks.spawn("provisioned-instances", move |token| {
            p.supervise(catalog, token)
        });
    }
}

fn job_runner(tasks: &Tasks, state: &Arc<AppState>) {
    let runner = Arc::clone(&state.runner);
    let runner_tasks = tasks.clone();
    tasks.spawn("job-runner", move |token| runner.run(runner_tasks, token));
}

/// Every process recovers the jobs whose lease expired (their process died, was paused or lost the catalog),
/// continuously: a dead node's job is failed and cleaned up within the lease and one interval.
fn lease_recovery(tasks: &Tasks, state: &Arc<AppState>, gc: &Arc<Gc>) {
    let (runner, gc) = (Arc::clone(&state.runner), Arc::clone(gc));
    tasks.spawn("lease-recovery", move |token| async move {
        let every = runner.recovery_interval();
        loop {
            tokio::select! {
                () = token.cancelled() => return Ok(()),
                () = tokio::time::sleep(every) => {}
            }
            match runner.recover_expired().await {
                Ok(jobs) => {
                    for instance in crate::crashed_snapshots(&jobs) {
                        gc.sweep_after_crash(instance).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "lease recovery failed; retrying"),
            }
        }
    });
}

/// Starts the collector; returns its interval, which the copies and the object lock follow too.
fn retention_gc(tasks: &Tasks, gc: &Arc<Gc>) -> Duration {
    let gc = Arc::clone(gc);
    let lock_interval = gc.interval();
    tasks.spawn("retention-gc", move |token| gc.run(token));
    lock_interval
}

fn repository_copies(tasks: &Tasks, state: &Arc<AppState>, lock_interval: Duration) {
    if let Some(copier) = state.copier.clone() {
        // Copies follow new backups within a minute, or a collector interval if that is shorter.
        let every = lock_interval.min(Duration::from_secs(60));
        tasks.spawn("repository-copies", move |token| copier.run(every, token));
    }
}

fn object_lock(tasks: &Tasks, state: &Arc<AppState>, lock_interval: Duration) {
    let locker = Arc::clone(&state.object_lock);
    let ids = ddsvault_jobs::InstanceIds::Live(Arc::clone(&state.runner));
    tasks.spawn("object-lock", move |token| {
        locker.run(ids, lock_interval, token)
    });
}

/// Registrations, changes and removals made by other processes on the catalog.
fn registered_instances(tasks: &Tasks, state: &Arc<AppState>) {
    let st = Arc::clone(state);
    tasks.spawn("registered-instances", move |token| async move {
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
}

fn repository_scrub(tasks: &Tasks, state: &Arc<AppState>, interval: Duration) {
    let (catalog, repo) = (state.catalog.clone(), state.repo.clone());
    tasks.spawn("repository-scrub", move |token| {
        ddsvault_jobs::scrub::run_every(catalog, repo, interval, token)
    });
}

fn instance_checks(tasks: &Tasks, state: &Arc<AppState>) {
    let st = Arc::clone(state);
    tasks.spawn("instance-checks", move |token| async move {
        tokio::select! {
            () = checks::log_instance_checks(&st) => {}
            () = token.cancelled() => {}
        }
        Ok(())
    });
}

/// One follower per instance the runner knows, started and stopped as instances come and go.
fn log_backup_followers(tasks: &Tasks, state: &Arc<AppState>, f: &LogFollowers) {
    let (follower_tasks, catalog, repo) = (
        tasks.clone(),
        Arc::clone(&state.catalog),
        state.repo.clone(),
    );
    let (runner, node_id, settings) = (
        Arc::clone(&state.runner),
        f.node_id.clone(),
        f.settings.clone(),
    );
    tasks.spawn("log-backup-followers", move |token| {
        ddsvault_jobs::instances::supervise_followers(
            follower_tasks,
            catalog,
            repo,
            runner,
            node_id,
            settings,
            token,
        )
    });
}

fn backup_scheduler(tasks: &Tasks, state: &Arc<AppState>, scheduler: Arc<Scheduler>) {
    state
        .scheduler_running
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tasks.spawn("backup-scheduler", move |token| scheduler.run(token));
}

/// Serves the API (plain and TLS) and the monitoring listener until `shutdown` fires and each has stopped
/// accepting; on a node without the API, just waits for `shutdown`. Every listener gets the connection bounds;
/// the TLS router marks its calls secure.
pub(crate) async fn serve_until_shutdown(
    state: &Arc<AppState>,
    api: ApiListeners,
    metrics_listener: Option<TcpListener>,
    server: &config::ServerConfig,
    metrics_config: &config::MetricsConfig,
    shutdown: &CancellationToken,
) {
    let ApiListeners {
        plain: listener,
        tls: tls_listener,
        ..
    } = api;
    if let Some(l) = &metrics_listener {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(%addr, "serving /metrics, /healthz and /readyz on their own listener");
        }
    }
    let on_api_listeners = metrics_config.enabled && metrics_listener.is_none();
    let fd_limit = listener::raise_fd_limit();
    let limits = listener::Limits::new(server, fd_limit, 1 + usize::from(tls_listener.is_some()));
    tracing::info!(max_connections = limits.max_connections, header_timeout_secs = limits.header_timeout.as_secs(),
        idle_timeout_secs = limits.idle_timeout.as_secs(), fd_limit = ?fd_limit, "connection limits");
    let plain = async {
        match listener {
            Some(listener) => {
                listener::serve(
                    listener,
                    router::router(Arc::clone(state), on_api_listeners),
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
                router::router(Arc::clone(state), on_api_listeners),
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
                metrics::routes(Arc::clone(state)),
                limits,
                false,
                shutdown.clone(),
            )
            .await;
        }
    };
    tokio::join!(plain, secure, monitoring);
    tracing::info!("HTTP server stopped accepting requests");
}

/// The ordered shutdown, after the listeners stopped accepting. The order matters and must stay: calls in flight
/// first (calls whose client went away still run to their end, and their audit record is queued), and only then
/// the background tasks, the audit writer among them, so no audit record of a finished call is lost.
pub(crate) async fn stop_in_order(state: &AppState, tasks: &Tasks) {
    state.requests.close();
    if tokio::time::timeout(SHUTDOWN_DEADLINE, state.requests.wait())
        .await
        .is_err()
    {
        tracing::warn!("calls still running after the shutdown deadline");
    }
    tasks.shutdown(SHUTDOWN_DEADLINE).await;
    tracing::info!("shutdown complete");
}
