//! The instances background tasks cover while serving (docs/instances.md).
//!
//! Instances change at run time: CreateDBInstance adds provisioned ones, RegisterDBInstance registered ones, and
//! their removal takes them away again. The job runner's instance map is the one list of what exists now; the
//! scheduler, the repository copies, the object lock and the log followers read it on every pass instead of a list
//! fixed at start, so a new instance is covered without a restart and a removed one stops being worked on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ddsvault_catalog::Catalog;
use ddsvault_repo::Repository;
use tokio_util::sync::CancellationToken;

use crate::pitr::{Follower, LogSettings};
use crate::{InstanceSpec, Runner, Tasks};

/// Which instances a background task covers.
#[derive(Clone, Debug)]
pub enum InstanceIds {
    /// A list fixed by the caller (tests, offline commands).
    Fixed(Vec<String>),
    /// Whatever the runner knows now: configured, provisioned and registered instances.
    Live(Arc<Runner>),
}

impl InstanceIds {
    /// The ids as of now, sorted.
    pub fn get(&self) -> Vec<String> {
        let mut ids = match self {
            InstanceIds::Fixed(ids) => ids.clone(),
            InstanceIds::Live(runner) => runner.instance_ids(),
        };
        ids.sort();
        ids
    }
}

/// How often the follower supervisor looks for added, changed and removed instances.
const FOLLOWER_RESCAN: Duration = Duration::from_secs(1);

/// What makes a follower's work different: its id, connection string and data directory.
fn same_target(a: &InstanceSpec, b: &InstanceSpec) -> bool {
    a.id == b.id && a.uri == b.uri && a.data_path == b.data_path
}

/// Keeps one log-backup follower ([`Follower`]) running per instance the runner knows, until `cancel` fires: a new
/// instance gets one within [`FOLLOWER_RESCAN`], a removed one's follower is stopped (it stores what it followed
/// and gives its claim up), and a changed connection string restarts it on the new one. Each follower is a named
/// task of its own (`log-backup:<id>`); whether it stores anything still depends on the instance's
/// `EnableBackupLog` and on holding the instance's claim.
pub async fn supervise_followers(
    tasks: Tasks,
    catalog: Catalog,
    repo: Repository,
    runner: Arc<Runner>,
    node_id: String,
    settings: LogSettings,
    cancel: CancellationToken,
) -> Result<(), String> {
    let mut running: HashMap<String, (InstanceSpec, CancellationToken)> = HashMap::new();
    loop {
        let now: HashMap<String, InstanceSpec> = runner
            .instance_specs()
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect();
        running.retain(|id, (spec, stop)| {
            let keep = now.get(id).is_some_and(|n| same_target(n, spec));
            if !keep {
                tracing::info!(instance = %id, "log backup: stopping the follower (instance removed or changed)");
                stop.cancel();
            }
            keep
        });
        for (id, spec) in now {
            if running.contains_key(&id) {
                continue;
            }
            let stop = CancellationToken::new();
            let f = Follower {
                catalog: Arc::clone(&catalog),
                repo: repo.clone(),
                instance: spec.clone(),
                node_id: node_id.clone(),
                settings: settings.clone(),
            };
            let mine = stop.clone();
            tasks.spawn(format!("log-backup:{id}"), move |token| async move {
                // Stops on shutdown (the task's own token) or when the supervisor lets go of the instance.
                let run_token = token.child_token();
                let relay = {
                    let run_token = run_token.clone();
                    async move {
                        mine.cancelled().await;
                        run_token.cancel();
                    }
                };
                let run = f.run(run_token);
                tokio::pin!(run);
                tokio::select! {
                    r = &mut run => r,
                    () = relay => run.await,
                }
            });
            running.insert(id, (spec, stop));
        }
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(FOLLOWER_RESCAN) => {}
        }
    }
}
