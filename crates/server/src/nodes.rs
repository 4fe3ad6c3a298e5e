//! Several processes on one catalog (issue 19, docs/deployment.md "Several nodes"): the nonce store they share,
//! each node's heartbeat row, `ddsvault nodes`, and draining.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ddsvault_api::{ApiError, AuthenticatedRequest};
use ddsvault_catalog::{Catalog, NodeRecord, NODE_AGENT};
use ddsvault_jobs::Runner;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::ServerError;
use crate::state::AppState;

/// How often a node writes its row.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);
/// `ddsvault nodes` reports a node down when its last heartbeat is older than this (three missed heartbeats).
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(30);
/// How often expired nonces are deleted from the catalog. They stop counting at their expiry anyway (the check
/// ignores expired rows); the sweep only keeps the table small.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Records the request's nonce in the catalog (`[server] shared_nonces`): `SignatureNonceUsed` when any process
/// sharing the catalog saw it within the window; `ServiceUnavailable` when the catalog cannot tell (a request is
/// never accepted unchecked).
pub(crate) async fn check_shared_nonce(
    st: &AppState,
    auth: &AuthenticatedRequest,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    // The same window as the local store: a request dated up to `skew` ahead stays acceptable until now + 2·skew.
    let keep = st
        .skew
        .abs()
        .checked_mul(2)
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    match st
        .catalog
        .record_nonce(&auth.access_key_id, &auth.nonce_digest, keep)
        .await
    {
        Ok(true) => Ok(()),
        Ok(false) => Err(ApiError::nonce_used()),
        Err(e) => {
            tracing::error!(error = %e, "could not check the signature nonce in the catalog; refusing the request");
            Err(ApiError::service_unavailable())
        }
    }
}

/// The `nonce-sweeper` task: deletes expired nonces until `cancel`.
pub(crate) async fn sweep_nonces(
    catalog: Catalog,
    cancel: CancellationToken,
) -> Result<(), String> {
    loop {
        match catalog.sweep_nonces(Utc::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(nonces = n, "deleted expired signature nonces"),
            Err(e) => tracing::warn!(error = %e, "could not delete expired signature nonces"),
        }
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(SWEEP_EVERY) => {}
        }
    }
}

/// The `node-heartbeat` task: writes this node's row every [`HEARTBEAT_EVERY`] until `cancel`. A failed write is
/// logged and retried at the next beat (the node then looks older to `ddsvault nodes`, which is the truth: the
/// catalog does not hear from it).
pub(crate) async fn heartbeat(
    catalog: Catalog,
    runner: Arc<Runner>,
    api: String,
    cancel: CancellationToken,
) -> Result<(), String> {
    let started_at = Utc::now();
    let hostname = hostname();
    let row = |runner: &Runner| NodeRecord {
        id: runner.node_id().to_string(),
        hostname: hostname.clone(),
        api: api.clone(),
        started_at,
        last_seen: Utc::now(),
        running_jobs: i64::try_from(runner.running_jobs()).unwrap_or(i64::MAX),
        draining: runner.is_draining(),
    };
    loop {
        let record = row(&runner);
        if let Err(e) = catalog.put_node(&record).await {
            tracing::warn!(error = %e, "could not record this node's heartbeat");
        }
        // A drain is written at once: an operator (or a script waiting on `ddsvault nodes`) sees it take effect
        // without waiting for the next beat.
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(HEARTBEAT_EVERY) => {}
            () = runner.drain_started(), if !record.draining => {}
        }
    }
}

/// What a node row shows for its API: the bound address, or [`NODE_AGENT`].
pub(crate) fn api_label(addr: Option<std::net::SocketAddr>) -> String {
    addr.map_or_else(|| NODE_AGENT.to_string(), |a| a.to_string())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// Stops this process taking new jobs (SIGUSR1): its running jobs finish, its node row says `draining`.
#[derive(Clone, Debug)]
pub struct Drain(pub(crate) Arc<Runner>);

impl Drain {
    /// Starts draining.
    pub fn start(&self) {
        self.0.drain();
    }
}

/// A node as `ddsvault nodes` shows it.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    /// The node's record as it last reported itself.
    pub node: NodeRecord,
    /// `up`, `down` (no heartbeat within the stale bound) or `draining`.
    pub state: &'static str,
}

/// Every node that reported itself to the catalog, with its state at `now`.
///
/// # Errors
/// Catalog errors (a catalog that does not exist is not created).
pub async fn list(
    cfg: &Config,
    stale_after: Duration,
    now: DateTime<Utc>,
) -> Result<Vec<NodeStatus>, ServerError> {
    let catalog = ddsvault_catalog::open_existing(&cfg.catalog_url()).await?;
    let stale_before =
        now - chrono::Duration::from_std(stale_after).unwrap_or(chrono::Duration::seconds(30));
    Ok(catalog
        .list_nodes()
        .await?
        .into_iter()
        .map(|node| NodeStatus {
            state: if node.is_down(stale_before) {
                "down"
            } else if node.draining {
                "draining"
            } else {
                "up"
            },
            node,
        })
        .collect())
}

/// One line of `ddsvault nodes`.
pub fn line(s: &NodeStatus, now: DateTime<Utc>) -> String {
    let n = &s.node;
    format!(
        "{:<24} {:<9} {:<22} {:<20} jobs={:<3} last_seen={}s ago started={}",
        n.id,
        s.state,
        n.api,
        n.hostname,
        n.running_jobs,
        (now - n.last_seen).num_seconds().max(0),
        n.started_at.format("%Y-%m-%dT%H:%M:%SZ"),
    )
}

/// One JSON object of `ddsvault nodes --json`.
pub fn json(s: &NodeStatus) -> serde_json::Value {
    let n = &s.node;
    serde_json::json!({
        "Node": n.id,
        "State": s.state,
        "Api": n.api,
        "Hostname": n.hostname,
        "RunningJobs": n.running_jobs,
        "Draining": n.draining,
        "StartedAt": n.started_at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "LastSeen": n.last_seen.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
    })
}
