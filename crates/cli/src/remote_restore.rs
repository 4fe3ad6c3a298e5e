//! `ddsvault restore --to-instance ID`: a restore through the API (RestoreDBInstance with the ddsvault
//! extensions TargetDBInstanceId, DatabaseNames, CollectionNames, DropExisting), followed with
//! DescribeRestoreTasks. Unlike the offline `--to`/`--to-dir`, the server runs the job and RAM decides who may.

use serde_json::{json, Value};

use crate::client::{field, items, ApiClient, CliError};
use crate::credentials::{resolve_from_process, ApiArgs};
use crate::output;
use crate::wait::{follow_task, Task};

pub struct RemoteRestore {
    pub api: ApiArgs,
    pub target: String,
    /// The instance the backup belongs to; found by asking every instance when absent.
    pub source: Option<String>,
    pub backup_id: i64,
    pub dbs: Vec<String>,
    pub collections: Vec<String>,
    /// mongorestore's `--nsInclude` (`db.*` or `db.collection`).
    pub ns_include: Vec<String>,
    pub drop: bool,
    pub wait: bool,
    pub timeout: Option<u64>,
    pub json: bool,
}

/// The instance holding backup `backup_id`: DescribeBackups with that BackupId on each instance the key may
/// list. Instances the key may not read are skipped (and named if nothing is found).
async fn find_source(client: &ApiClient, backup_id: i64) -> Result<String, CliError> {
    let mut refused = Vec::new();
    for (id, _) in crate::status::instances(client).await? {
        let found = client
            .call(
                "DescribeBackups",
                &[
                    ("DBInstanceId", id.clone()),
                    ("BackupId", backup_id.to_string()),
                ],
            )
            .await;
        match found {
            Ok(a) if !items(&a, "Backups", "Backup").is_empty() => return Ok(id),
            Ok(_) => {}
            Err(e @ CliError::Unreachable { .. }) => return Err(e),
            Err(e) => refused.push(format!("{id} ({e})")),
        }
    }
    let mut msg = format!("no instance has a finished backup {backup_id}");
    if !refused.is_empty() {
        msg.push_str(&format!("; not asked (refused): {}", refused.join(", ")));
    }
    msg.push_str("; name its instance with --from-instance");
    Err(CliError::NotFound(msg))
}

pub async fn run(r: RemoteRestore) -> Result<(), CliError> {
    let select = crate::selectors(&r.dbs, &r.collections, &r.ns_include)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let client = ApiClient::new(&resolve_from_process(&r.api)?)?;
    let source = match r.source.clone() {
        Some(s) => s,
        None => find_source(&client, r.backup_id).await?,
    };
    let mut params = vec![
        ("DBInstanceId", source.clone()),
        ("BackupId", r.backup_id.to_string()),
    ];
    if r.target != source {
        params.push(("TargetDBInstanceId", r.target.clone()));
    }
    let collections: Vec<String> = select
        .iter()
        .filter_map(|s| s.collection.as_ref().map(|c| format!("{}.{c}", s.db)))
        .collect();
    if !collections.is_empty() {
        // A JSON array: collection names may hold commas.
        params.push(("CollectionNames", json!(collections).to_string()));
    } else if !select.is_empty() {
        let dbs: Vec<&str> = select.iter().map(|s| s.db.as_str()).collect();
        params.push(("DatabaseNames", json!(dbs).to_string()));
    }
    if r.drop {
        params.push(("DropExisting", "true".into()));
    }
    let answer = client.call("RestoreDBInstance", &params).await?;
    let job_id = field(&Value::Object(answer), "RestoreJobId");
    let started = json!({
        "DBInstanceId": r.target, "SourceDBInstanceId": source, "BackupId": r.backup_id.to_string(),
        "RestoreJobId": job_id,
    });
    if !r.wait {
        if r.json {
            output::json(&started);
        } else {
            println!(
                "restore job {job_id} started: backup {} of {source} into {} (`ddsvault status` shows its progress)",
                r.backup_id, r.target
            );
        }
        return Ok(());
    }
    if !r.json {
        eprintln!(
            "restore job {job_id} started: backup {} of {source} into {}",
            r.backup_id, r.target
        );
    }
    let task = Task {
        kind: "restore job",
        action: "DescribeRestoreTasks",
        instance: &r.target,
        id_param: "RestoreJobId",
        id: &job_id,
        outer: "RestoreJobs",
        inner: "RestoreJob",
        status_field: "Status",
        phase_field: "Status",
    };
    let end = follow_task(&client, &task, r.timeout).await?;
    if r.json {
        let mut out = started;
        out["RestoreJob"] = end;
        output::json(&out);
    } else {
        println!(
            "restored backup {} of {source} into {}: {} document(s)",
            r.backup_id,
            r.target,
            field(&end, "RestoredDocuments")
        );
    }
    Ok(())
}
