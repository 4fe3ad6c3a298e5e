//! Restores: RestoreDBInstance (legacy Dds action, with ddsvault extensions), DescribeRestoreTasks (ddsvault
//! extension) and DescribeBackupDBs.
//!
//! Extensions of RestoreDBInstance, all optional:
//! - `TargetDBInstanceId`: restore into another registered instance instead of `DBInstanceId` itself;
//! - `DatabaseNames`: only these databases (comma-separated, or a JSON array as Dds' CreateDBInstance takes it);
//! - `CollectionNames`: only these collections, as `db.collection` (same formats);
//! - `RestoreTime` (`yyyy-MM-ddTHH:mm:ssZ`, Dds' own parameter of V1 SDKs): restore to that second (docs/pitr.md);
//! - `DropExisting`: `true` replaces collections that exist in the target; by default the restore is refused
//!   if any collection it would write already exists there.
//!
//! The last three apply to Logical backups. A Physical or Snapshot backup is restored as files into the target
//! node's `data_path`, replacing all its database files, and only while the node is stopped.

use chrono::Utc;
use ddsvault_api::{ApiError, Params};
use ddsvault_catalog::{
    Backup, BackupStatus, JobState, NewJob, RestoreJobParams, RestoreSelection,
};
use serde_json::{json, Map, Value};

use super::{dds_time, page};
use crate::error::ActionError;
use crate::router::ActionResult;
use crate::state::AppState;

/// A list parameter: a JSON array of strings or a comma-separated string.
pub(crate) fn list_param(p: &Params, name: &str) -> Result<Vec<String>, ApiError> {
    let Some(raw) = p.get(name).map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(Vec::new());
    };
    let items: Vec<String> = if raw.starts_with('[') {
        serde_json::from_str::<Vec<String>>(raw).map_err(|_| {
            ApiError::invalid_parameter(
                name,
                "Use a JSON array of strings or a comma-separated list.",
            )
        })?
    } else {
        raw.split(',').map(|s| s.trim().to_string()).collect()
    };
    if items.iter().any(|s| s.is_empty()) {
        return Err(ApiError::invalid_parameter(
            name,
            "Empty names are not allowed.",
        ));
    }
    Ok(items)
}

fn bool_param(p: &Params, name: &str) -> Result<bool, ApiError> {
    match p.get(name).map(|s| s.trim().to_ascii_lowercase()) {
        None => Ok(false),
        Some(s) if s.is_empty() || s == "false" => Ok(false),
        Some(s) if s == "true" => Ok(true),
        Some(_) => Err(ApiError::invalid_parameter(
            name,
            "Valid values: true, false.",
        )),
    }
}

/// The backup `BackupId` of instance `id`, which must have succeeded.
pub(crate) async fn usable_backup(
    st: &AppState,
    id: &str,
    p: &Params,
    param: &str,
) -> Result<Backup, ActionError> {
    let raw = p.required(param)?;
    let backup_id: i64 = raw
        .trim()
        .parse()
        .map_err(|_| ApiError::invalid_parameter(param, "It must be a numeric backup id."))?;
    let backup = st
        .catalog
        .get_backup(backup_id)
        .await?
        .filter(|b| b.instance_id == id)
        .ok_or_else(|| ActionError::BackupNotFound(raw.to_string()))?;
    if backup.status != BackupStatus::Success {
        return Err(ActionError::BackupNotAvailable(format!(
            "The backup {backup_id} is {} and cannot be restored.",
            backup.status.as_str()
        )));
    }
    Ok(backup)
}

/// `(db, collection)` pairs the backup holds, from its manifest.
pub(crate) async fn backup_namespaces(
    st: &AppState,
    backup: &Backup,
) -> Result<Vec<(String, String)>, ActionError> {
    let manifest = ddsvault_jobs::integrity::authenticated_manifest(&st.repo, backup)
        .await
        .map_err(|e| ActionError::Internal(e.to_string()))?
        .manifest;
    Ok(manifest.extra["namespaces"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| {
                    Some((
                        n["db"].as_str()?.to_string(),
                        n["collection"].as_str()?.to_string(),
                    ))
                })
                .filter(|(db, _)| !db.is_empty())
                .collect()
        })
        .unwrap_or_default())
}

pub async fn restore_db_instance(st: &AppState, p: &Params) -> ActionResult {
    let source = p.required("DBInstanceId")?;
    st.instance(source)?;
    // RestoreTime (point in time, docs/pitr.md): the newest Logical backup at or before it (or BackupId, when
    // given) plus the log backup up to that second; refused here, before any job exists, outside every range.
    let restore_time = match p
        .get("RestoreTime")
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        Some(raw) => Some(super::pitr::parse_restore_time(raw)?),
        None => None,
    };
    let backup = match restore_time {
        None => usable_backup(st, source, p, "BackupId").await?,
        Some(t) => {
            let only = match p.get("BackupId").map(str::trim).filter(|s| !s.is_empty()) {
                None => None,
                Some(b) => Some(b.parse::<i64>().map_err(|_| {
                    ApiError::invalid_parameter("BackupId", "It must be a numeric backup id.")
                })?),
            };
            let plan = super::pitr::plan_for(st, source, t, only).await?;
            st.catalog
                .get_backup(plan.base.backup_id)
                .await
                .map_err(ActionError::from)?
                .ok_or_else(|| ActionError::BackupNotFound(plan.base.backup_id.to_string()))?
        }
    };
    if backup.method == ddsvault_catalog::BackupMethod::Physical
        || backup.method == ddsvault_catalog::BackupMethod::Snapshot
    {
        return restore_files(st, source, &backup, p).await;
    }
    if backup.method != ddsvault_catalog::BackupMethod::Logical {
        return Err(ActionError::BackupMethodNotSupported(format!(
            "Backup {} is a {} backup, which this ddsvault version cannot restore.",
            backup.id, backup.method
        ))
        .into());
    }
    let target_id = p
        .get("TargetDBInstanceId")
        .filter(|s| !s.is_empty())
        .unwrap_or(source);
    let target = st.instance(target_id)?;
    let databases = list_param(p, "DatabaseNames")?;
    let collections = list_param(p, "CollectionNames")?;
    let drop = bool_param(p, "DropExisting")?;

    let held = backup_namespaces(st, &backup).await?;
    let mut select = Vec::new();
    for db in &databases {
        if !held.iter().any(|(d, _)| d == db) {
            return Err(ApiError::invalid_parameter(
                "DatabaseNames",
                &format!(
                    "The backup holds no database {db:?}; DescribeBackupDBs lists what it holds."
                ),
            ));
        }
        select.push(RestoreSelection {
            db: db.clone(),
            collection: None,
        });
    }
    for ns in &collections {
        let Some((db, coll)) = ns.split_once('.') else {
            return Err(ApiError::invalid_parameter(
                "CollectionNames",
                "Name collections as db.collection.",
            ));
        };
        if !held.iter().any(|(d, c)| d == db && c == coll) {
            return Err(ApiError::invalid_parameter(
                "CollectionNames",
                &format!("The backup holds no collection {ns:?}."),
            ));
        }
        select.push(RestoreSelection {
            db: db.to_string(),
            collection: Some(coll.to_string()),
        });
    }

    // Refuse early, with the namespace named, rather than fail the job later; the job checks again before
    // writing, since the target may change in between.
    let (client, _) = st.probe(&target).await?;
    if !drop {
        let chosen: Vec<&(String, String)> = held
            .iter()
            .filter(|(d, c)| {
                (databases.is_empty() && collections.is_empty())
                    || databases.contains(d)
                    || collections.contains(&format!("{d}.{c}"))
            })
            .collect();
        for (db, coll) in chosen {
            let existing = client
                .database(db)
                .list_collection_names()
                .await
                .map_err(|e| {
                    ActionError::InstanceUnreachable(crate::state::redact(
                        &e.to_string(),
                        &target.uri,
                    ))
                })?;
            if existing.iter().any(|c| c == coll) {
                return Err(ActionError::NamespaceExists {
                    db: db.to_string(),
                    collection: coll.to_string(),
                    instance: target_id.to_string(),
                }
                .into());
            }
        }
    }

    restore_job(
        st,
        target_id,
        backup.id,
        RestoreJobParams {
            source_instance: source.to_string(),
            drop,
            select,
            restore_time,
            ..RestoreJobParams::default()
        },
    )
    .await
}

/// Creates the restore job (claimed by whichever process runs jobs) and answers its id.
async fn restore_job(
    st: &AppState,
    target_id: &str,
    backup_id: i64,
    params: RestoreJobParams,
) -> ActionResult {
    let job = st
        .catalog
        .create_job(&NewJob {
            kind: ddsvault_catalog::JobKind::Restore,
            instance_id: target_id.to_string(),
            backup_id: Some(backup_id),
            mode: "Manual".into(),
            params: params.to_value(),
            now: Utc::now(),
        })
        .await
        .map_err(ActionError::from)?;
    st.runner.wake();
    let mut out = Map::new();
    out.insert("RestoreJobId".into(), Value::String(job.id.to_string()));
    Ok(out)
}

/// RestoreDBInstance of a Physical or Snapshot backup: the backup's data files replace those of the target
/// node, which must be stopped (checked here, and again by the job right before it swaps the files).
async fn restore_files(st: &AppState, source: &str, backup: &Backup, p: &Params) -> ActionResult {
    let target_id = p
        .get("TargetDBInstanceId")
        .filter(|s| !s.is_empty())
        .unwrap_or(source);
    let target = st.instance(target_id)?;
    for name in ["DatabaseNames", "CollectionNames", "DropExisting"] {
        if p.get(name).is_some_and(|v| !v.trim().is_empty()) {
            return Err(ApiError::invalid_parameter(
                name,
                &format!(
                    "It applies to Logical backups only: restoring a {} backup replaces every database file of the node.",
                    backup.method
                ),
            )
            );
        }
    }
    let data_path =
        target
            .data_path
            .as_deref()
            .ok_or_else(|| ActionError::RestoreDataPathMissing {
                instance: target_id.to_string(),
                method: backup.method,
            })?;
    match ddsvault_jobs::restore::ensure_stopped(&target.uri, data_path).await {
        Ok(()) => {}
        Err(ddsvault_jobs::JobError::NodeRunning(why)) => {
            return Err(ActionError::NodeNotStopped(why).into())
        }
        Err(e @ ddsvault_jobs::JobError::NodeStateUnknown(_)) => {
            return Err(ActionError::NodeNotStopped(e.to_string()).into())
        }
        Err(e) => return Err(ActionError::Internal(e.to_string()).into()),
    }
    restore_job(
        st,
        target_id,
        backup.id,
        RestoreJobParams {
            source_instance: source.to_string(),
            method: Some(backup.method),
            ..RestoreJobParams::default()
        },
    )
    .await
}

pub async fn describe_restore_tasks(st: &AppState, p: &Params) -> ActionResult {
    let id = p.required("DBInstanceId")?;
    st.instance(id)?;
    let want: Option<i64> = match p.get("RestoreJobId").filter(|s| !s.is_empty()) {
        None => None,
        Some(v) => Some(v.trim().parse().map_err(|_| {
            ApiError::invalid_parameter("RestoreJobId", "It must be a numeric id.")
        })?),
    };
    let jobs = st
        .catalog
        .list_jobs(id, false)
        .await
        .map_err(ActionError::from)?;
    let items: Vec<Value> = jobs
        .iter()
        .filter(|j| j.kind == ddsvault_catalog::JobKind::Restore && want.is_none_or(|w| w == j.id))
        .map(|j| {
            let mut item = json!({
                "RestoreJobId": j.id.to_string(),
                "BackupId": j.backup_id.map(|b| b.to_string()).unwrap_or_default(),
                "SourceDBInstanceId": j.restore_params().map(|p| p.source_instance).unwrap_or_default(),
                "Status": match j.state {
                    JobState::Pending => "Scheduled",
                    JobState::Running => "Restoring",
                    JobState::Success => "Success",
                    JobState::Failed => "Failed",
                },
                "Progress": j.progress.to_string(),
                "CreateTime": dds_time(j.created_at),
                "EndTime": j.finished_at.map(dds_time).unwrap_or_default(),
                "ErrorCode": j.answered_error_code(),
                "ErrorMessage": j.error.clone().unwrap_or_default(),
                "RestoredDocuments": j.result["documents"].as_i64().unwrap_or(0),
                // ddsvault extension: the node (process) that runs or ran the job; "" while it waits.
                "Node": j.owner.as_deref().unwrap_or(""),
            });
            super::add_progress_detail(&mut item, j);
            item
        })
        .collect();
    let mut out = Map::new();
    out.insert("RestoreJobs".into(), Value::Array(items));
    Ok(out)
}

pub async fn describe_backup_dbs(st: &AppState, p: &Params) -> ActionResult {
    let source = p.required("SourceDBInstance")?;
    st.instance(source)?;
    if p.get("BackupId").is_none_or(str::is_empty) {
        return Err(ActionError::Unsupported(
            "Only BackupId is supported; RestoreTime (point in time) is not implemented by this ddsvault version."
                .into(),
        )
        .into());
    }
    let backup = usable_backup(st, source, p, "BackupId").await?;
    let pg = page(p)?;
    let names: Vec<&str> = backup
        .db_names
        .split(',')
        .filter(|s| !s.is_empty())
        .collect();
    let start = (pg.number as usize - 1).saturating_mul(pg.size as usize);
    let rows: Vec<Value> = names
        .iter()
        .skip(start)
        .take(pg.size as usize)
        .map(|n| json!({"DBName": n}))
        .collect();
    let mut out = Map::new();
    out.insert("Databases".into(), json!({ "Database": rows }));
    out.insert("TotalCount".into(), json!(names.len()));
    out.insert("PageNumber".into(), json!(pg.number));
    out.insert("PageSize".into(), json!(pg.size));
    Ok(out)
}
