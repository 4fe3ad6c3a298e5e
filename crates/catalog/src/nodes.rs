//! Several processes on one catalog (issue 19): what each process reports about itself ([`NodeRecord`], written by
//! its `node-heartbeat` task and listed by `ddsvault nodes`). The shared nonce store and placed claims are plain
//! [`crate::CatalogBackend`] methods.

use chrono::{DateTime, Utc};

/// One ddsvault process (a node) as it last reported itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    /// The node id (`node_id`, or the one generated in its data directory).
    pub id: String,
    /// The host name of the machine it runs on.
    pub hostname: String,
    /// The API listen address, or [`NODE_AGENT`] for a process without an API listener.
    pub api: String,
    /// When this life of the process started (a restart replaces it).
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat.
    pub last_seen: DateTime<Utc>,
    /// Jobs it was running at its last heartbeat.
    pub running_jobs: i64,
    /// True once it was told to drain: it takes no new jobs and finishes the ones it runs.
    pub draining: bool,
}

/// [`NodeRecord::api`] of a node that runs jobs without the API listener (`ddsvault agent`, `serve --no-api`).
pub const NODE_AGENT: &str = "agent";

impl NodeRecord {
    /// Whether the node has not reported itself since `stale_before` (dead, paused or cut off from the catalog).
    pub fn is_down(&self, stale_before: DateTime<Utc>) -> bool {
        self.last_seen < stale_before
    }
}
