//! Checks of a deployment's configuration against reality (`ddsvault check`, the start-up checks, and the
//! `Checks` extension field of DescribeDBInstanceAttribute): is each instance reachable, what is it, can it take
//! the backups it will be asked for, are example secrets still in use.
//!
//! They only warn. An unreachable instance may be down for maintenance; refusing to start would stop the backups
//! of every other instance too.

use std::path::Path;
use std::time::Duration;

use ddsvault_jobs::backup::plan;
use ddsvault_mongo::topology::{Topology, TopologyKind};
use serde::Serialize;

use crate::config::Config;
use crate::state::redact;

/// How long one instance may take to answer a check.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Status {
    /// Fine, or a fact worth showing.
    Ok,
    /// Something that will make backups fail or be less than the user expects.
    Warning,
}

/// One finding.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// What was checked (`reachable`, `topology`, `oplog`, `data_path`, `default_method`, `secrets`, …).
    pub check: &'static str,
    /// The verdict.
    pub status: Status,
    /// What was found, free of secrets.
    pub message: String,
}

impl Finding {
    fn ok(check: &'static str, message: impl Into<String>) -> Self {
        Self {
            check,
            status: Status::Ok,
            message: message.into(),
        }
    }

    fn warn(check: &'static str, message: impl Into<String>) -> Self {
        Self {
            check,
            status: Status::Warning,
            message: message.into(),
        }
    }
}

/// The checks of one instance (connection string, data directory, storage type), connecting on its own: for
/// `ddsvault check`, which has no server state.
pub async fn check_instance(
    uri: &str,
    data_path: Option<&Path>,
    storage_type: &str,
) -> Vec<Finding> {
    let probed = match tokio::time::timeout(CHECK_TIMEOUT, probe(uri)).await {
        Err(_) => Err(format!("no answer within {}s", CHECK_TIMEOUT.as_secs())),
        Ok(r) => r.map_err(|e| redact(&e, uri)),
    };
    check_probed(probed, data_path, storage_type).await
}

/// The checks of one instance given the outcome of a probe already made (the server's own
/// [`crate::state::AppState::probe`], so a check costs no second connection); `Err` holds why it failed, free of
/// credentials.
pub async fn check_probed(
    probed: Result<(mongodb::Client, Topology), String>,
    data_path: Option<&Path>,
    storage_type: &str,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let topo = match probed {
        Err(why) => {
            out.push(Finding::warn("reachable", why));
            None
        }
        Ok((client, topo)) => {
            out.push(Finding::ok("reachable", "answers"));
            out.push(Finding::ok("topology", describe(&topo)));
            if topo.kind == TopologyKind::ReplicaSet {
                out.push(oplog(&client).await);
            }
            Some(topo)
        }
    };
    out.extend(check_data_path(data_path, topo.as_ref()));
    if let Some(t) = &topo {
        let files = data_path.is_some() && t.is_ferretdb;
        out.push(Finding::ok(
            "default_method",
            format!(
                "a backup without BackupMethod takes {}",
                plan::default_method(t.kind, plan::is_cloud_disk(storage_type), files)
            ),
        ));
    }
    out
}

async fn probe(uri: &str) -> Result<(mongodb::Client, Topology), String> {
    let client = ddsvault_mongo::topology::connect(uri)
        .await
        .map_err(|e| e.to_string())?;
    let topo = ddsvault_mongo::topology::discover(&client)
        .await
        .map_err(|e| e.to_string())?;
    Ok((client, topo))
}

fn describe(t: &Topology) -> String {
    let kind = match t.kind {
        TopologyKind::Standalone => "standalone server".to_string(),
        TopologyKind::ReplicaSet => {
            format!("replica set {}", t.set_name.clone().unwrap_or_default())
        }
        TopologyKind::Sharded => "sharded cluster (mongos)".to_string(),
        other => format!("{other:?}"),
    };
    let server = if t.is_ferretdb {
        format!(
            "FerretDB {} (MongoDB {})",
            t.ferretdb_version.clone().unwrap_or_default(),
            t.server_version
        )
    } else {
        format!("MongoDB {}", t.server_version)
    };
    format!("{kind}, {server}")
}

/// A replica set's logical backups are consistent to one point only with an oplog to capture.
async fn oplog(client: &mongodb::Client) -> Finding {
    let names = client
        .database("local")
        .list_collection_names()
        .filter(mongodb::bson::doc! { "name": "oplog.rs" })
        .await;
    match names {
        Ok(n) if !n.is_empty() => Finding::ok("oplog", "local.oplog.rs present"),
        Ok(_) => Finding::warn(
            "oplog",
            "no local.oplog.rs: logical backups of this replica set cannot capture the writes made while they run",
        ),
        Err(e) => Finding::warn("oplog", format!("cannot list the local database: {e}")),
    }
}

fn check_data_path(data_path: Option<&Path>, topo: Option<&Topology>) -> Vec<Finding> {
    let Some(dir) = data_path else {
        return vec![Finding::ok(
            "data_path",
            "not set: Physical and Snapshot backups are not available",
        )];
    };
    if topo.is_some_and(|t| !t.is_ferretdb) {
        return vec![Finding::warn(
            "data_path",
            "set, but the server is mongod: this version takes file backups of FerretDB (SQLite) only",
        )];
    }
    match std::fs::read_dir(dir) {
        Err(e) => vec![Finding::warn(
            "data_path",
            format!("{}: {e}", dir.display()),
        )],
        Ok(entries) => {
            let dbs = entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".sqlite"))
                .count();
            if dbs == 0 {
                vec![Finding::warn(
                    "data_path",
                    format!(
                        "{} holds no FerretDB database file (*.sqlite): is it this server's directory?",
                        dir.display()
                    ),
                )]
            } else {
                vec![Finding::ok(
                    "data_path",
                    format!("{}: {dbs} database file(s)", dir.display()),
                )]
            }
        }
    }
}

/// The start-up checks of every instance, run once the server listens: warnings go to the log (an instance that
/// does not answer never stops the start).
pub async fn log_instance_checks(st: &crate::state::AppState) {
    let mut ids: Vec<&String> = st.instances.keys().collect();
    ids.sort();
    let runs = ids
        .iter()
        .filter_map(|id| st.instances.get(*id))
        .map(|i| async move { (i.id.clone(), check_registered(st, i).await) });
    for (id, findings) in futures::future::join_all(runs).await {
        let warnings: Vec<&Finding> = findings
            .iter()
            .filter(|f| f.status == Status::Warning)
            .collect();
        for f in &warnings {
            tracing::warn!(instance = %id, check = f.check, "{}", f.message);
        }
        if warnings.is_empty() {
            tracing::info!(instance = %id, "instance checks passed");
        }
    }
}

/// The checks of a registered instance, through the server's probe (its client cache and deadline).
pub async fn check_registered(
    st: &crate::state::AppState,
    inst: &crate::state::Instance,
) -> Vec<Finding> {
    check_probed(
        probe_outcome(st.probe(inst).await),
        inst.data_path.as_deref(),
        &inst.storage_type,
    )
    .await
}

/// A server probe's outcome as [`check_probed`] takes it (the reason of an unreachable instance is already free
/// of credentials).
pub fn probe_outcome(
    r: Result<(mongodb::Client, Topology), crate::error::ActionError>,
) -> Result<(mongodb::Client, Topology), String> {
    r.map_err(|e| match e {
        crate::error::ActionError::InstanceUnreachable(why) => why,
        other => other.to_string(),
    })
}

/// The findings as DescribeDBInstanceAttribute's `Checks` extension field.
pub fn findings_json(findings: &[Finding]) -> serde_json::Value {
    serde_json::json!({
        "Check": findings
            .iter()
            .map(|f| serde_json::json!({
                "Name": f.check,
                "Status": match f.status { Status::Ok => "Ok", Status::Warning => "Warning" },
                "Message": f.message,
            }))
            .collect::<Vec<_>>()
    })
}

/// Configuration-wide checks: AccessKeys that still use the example secrets of docs/configuration.md.
pub fn check_config(cfg: &Config) -> Vec<Finding> {
    let examples: Vec<&str> = cfg
        .access_keys
        .iter()
        .filter(|k| k.secret.contains("change-me") || k.secret.starts_with("example-"))
        .map(|k| k.id.as_str())
        .collect();
    if examples.is_empty() {
        vec![Finding::ok("secrets", "no example secret in use")]
    } else {
        vec![Finding::warn(
            "secrets",
            format!(
                "AccessKey(s) {} still use an example secret from the documentation: replace them",
                examples.join(", ")
            ),
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_instance_and_a_missing_directory_are_warnings() {
        let f = check_instance(
            "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300",
            Some(Path::new("/nonexistent/ddsvault-check")),
            "local_ssd",
        )
        .await;
        let by = |c: &str| f.iter().find(|x| x.check == c).cloned();
        assert_eq!(by("reachable").map(|x| x.status), Some(Status::Warning));
        let dp = by("data_path").expect("data_path");
        assert_eq!(dp.status, Status::Warning);
        assert!(
            dp.message.contains("/nonexistent/ddsvault-check"),
            "{}",
            dp.message
        );
    }
}
