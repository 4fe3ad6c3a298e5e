//! Instances ddsvault provisions itself (docs/provisioning.md): CreateDBInstance (a restore into a new instance, as
//! Alibaba's current SDKs restore), DeleteDBInstance (only of those) and DescribeRestoreDBInstanceList.
//!
//! CreateDBInstance checks everything (source, backup or time, databases, a free port) before anything is written,
//! then records the instance (`Creating`) and its `provision` job in one catalog transaction and answers the new
//! `DBInstanceId` at once, as Dds does; the job (`ddsvault_jobs::provision`) does the work.

use chrono::{NaiveDateTime, Utc};
use ddsvault_api::{ApiError, Params};
use ddsvault_catalog::{
    BackupMethod, CatalogError, NewJob, NewProvisionedInstance, ProvisionStatus,
};
use rand::Rng;
use serde_json::{json, Map, Value};

use super::restore::{backup_namespaces, list_param, usable_backup};
use super::{dds_time, page};
use crate::error::ActionError;
use crate::router::ActionResult;
use crate::state::AppState;

/// A new instance id in Dds' style: `dds-` and 14 lowercase letters and digits.
fn new_instance_id() -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let tail: String = (0..14)
        .map(|_| char::from(CHARS[rng.gen_range(0..CHARS.len())]))
        .collect();
    format!("dds-{tail}")
}

fn nonempty<'a>(p: &'a Params, name: &str) -> Option<&'a str> {
    p.get(name).map(str::trim).filter(|s| !s.is_empty())
}

pub async fn create_db_instance(st: &AppState, p: &Params) -> ActionResult {
    let prov = st
        .provisioner
        .clone()
        .ok_or(ActionError::ProvisioningNotConfigured)?;
    let source = nonempty(p, "SrcDBInstanceId").ok_or_else(|| {
        ApiError::invalid_parameter(
            "SrcDBInstanceId",
            "ddsvault creates an instance only by restoring a backup: pass SrcDBInstanceId with BackupId (RestoreType 0) or RestoreTime (RestoreType 1).",
        )
    })?;
    st.instance(source)?;
    if let Some(r) = nonempty(p, "RegionId") {
        if r != st.region_id {
            return Err(ApiError::invalid_parameter(
                "RegionId",
                &format!(
                    "This ddsvault serves region {}; a restore stays in the source's region.",
                    st.region_id
                ),
            ));
        }
    }
    let time = nonempty(p, "RestoreTime");
    let restore_type = nonempty(p, "RestoreType").unwrap_or(if time.is_some() { "1" } else { "0" });
    let (backup, restore_time) = match restore_type {
        "0" => {
            if time.is_some() {
                return Err(ApiError::invalid_parameter(
                    "RestoreTime",
                    "RestoreType 0 restores a backup set (BackupId); use RestoreType 1 for a point in time.",
                ));
            }
            (usable_backup(st, source, p, "BackupId").await?, None)
        }
        "1" => {
            let raw = time.ok_or_else(|| {
                ApiError::invalid_parameter(
                    "RestoreTime",
                    "RestoreType 1 (point in time) needs RestoreTime (yyyy-MM-ddTHH:mm:ssZ).",
                )
            })?;
            let t = super::pitr::parse_restore_time(raw)?;
            let only = match nonempty(p, "BackupId") {
                None => None,
                Some(b) => Some(b.parse::<i64>().map_err(|_| {
                    ApiError::invalid_parameter("BackupId", "It must be a numeric backup id.")
                })?),
            };
            let plan = super::pitr::plan_for(st, source, t, only).await?;
            let base = st
                .catalog
                .get_backup(plan.base.backup_id)
                .await
                .map_err(ActionError::from)?
                .ok_or_else(|| ActionError::BackupNotFound(plan.base.backup_id.to_string()))?;
            (base, Some(t))
        }
        "2" | "3" => {
            return Err(ActionError::Unsupported(format!(
                "RestoreType {restore_type} (a released instance, or a cross-region backup set) is not implemented by this ddsvault version; use 0 (BackupId) or 1 (RestoreTime)."
            ))
            .into())
        }
        _ => {
            return Err(ApiError::invalid_parameter(
                "RestoreType",
                "Valid values: 0, 1.",
            ))
        }
    };

    let databases = list_param(p, "DatabaseNames")?;
    let mut select = Vec::new();
    match backup.method {
        BackupMethod::Logical => {
            let held = backup_namespaces(st, &backup).await?;
            for db in &databases {
                if !held.iter().any(|(d, _)| d == db) {
                    return Err(ApiError::invalid_parameter(
                        "DatabaseNames",
                        &format!(
                            "The backup holds no database {db:?}; DescribeBackupDBs lists what it holds."
                        ),
                    ));
                }
                select.push(ddsvault_catalog::RestoreSelection {
                    db: db.clone(),
                    collection: None,
                });
            }
        }
        BackupMethod::Physical | BackupMethod::Snapshot if databases.is_empty() => {}
        BackupMethod::Physical | BackupMethod::Snapshot => {
            return Err(ApiError::invalid_parameter(
                "DatabaseNames",
                &format!(
                    "A {} backup is restored as whole data files; DatabaseNames applies to Logical backups.",
                    backup.method
                ),
            ))
        }
    }
    let description = nonempty(p, "DBInstanceDescription")
        .map(str::to_string)
        .unwrap_or_else(|| format!("Restored from {source}"));

    // The port and id are checked free here; the catalog's unique keys settle a race with another call.
    let settings = prov.settings();
    let range = format!("{}-{}", settings.ports.start(), settings.ports.end());
    let mut attempt = 0;
    let (row, job) = loop {
        attempt += 1;
        let taken: Vec<u16> = st
            .catalog
            .list_provisioned_instances()
            .await
            .map_err(ActionError::from)?
            .iter()
            .map(|i| i.port)
            .collect();
        let port = prov
            .pick_port(&taken, rand::thread_rng().gen())
            .ok_or_else(|| ActionError::NoFreePort(range.clone()))?;
        let id = new_instance_id();
        let now = Utc::now();
        let new = NewProvisionedInstance {
            id: id.clone(),
            port,
            dir: prov.instance_dir(&id).display().to_string(),
            source_instance_id: source.to_string(),
            backup_id: Some(backup.id),
            restore_time: restore_time.map(i64::from),
            description: description.clone(),
            now,
        };
        let job = NewJob {
            kind: ddsvault_catalog::JobKind::Provision,
            instance_id: id.clone(),
            backup_id: Some(backup.id),
            mode: "Manual".into(),
            params: ddsvault_catalog::RestoreJobParams {
                source_instance: source.to_string(),
                method: Some(backup.method),
                drop: false,
                select: select.clone(),
                restore_time,
                restore_type: Some(restore_type.to_string()),
                replay_oplog: None,
            }
            .to_value(),
            now,
        };
        match st.catalog.create_provisioned_instance(&new, &job).await {
            Ok(done) => break done,
            Err(CatalogError::AlreadyExists(_)) if attempt < 5 => continue,
            Err(e) => return Err(ActionError::from(e).into()),
        }
    };
    st.add_provisioned(&row);
    st.runner.wake();
    tracing::info!(instance = %row.id, source, backup_id = backup.id, job_id = job.id, "creating an instance from a backup");
    let mut out = Map::new();
    out.insert("DBInstanceId".into(), json!(row.id));
    // Dds answers the order of the purchase; here, the job that creates the instance.
    out.insert("OrderId".into(), json!(job.id.to_string()));
    Ok(out)
}

pub async fn delete_db_instance(st: &AppState, p: &Params) -> ActionResult {
    let id = p.required("DBInstanceId")?;
    let inst = st.instance(id)?;
    if !inst.provisioned {
        return Err(ActionError::NotProvisioned(id.to_string()).into());
    }
    let row = st
        .catalog
        .get_provisioned_instance(id)
        .await
        .map_err(ActionError::from)?
        .ok_or_else(|| ActionError::InstanceNotFound(id.to_string()))?;
    if row.status == ProvisionStatus::Creating {
        return Err(ActionError::InstanceCreating(id.to_string()).into());
    }
    if let Some((job_id, kind)) = st.catalog.active_job(id).await.map_err(ActionError::from)? {
        return Err(ActionError::JobExists {
            job_id,
            kind: Some(kind),
        }
        .into());
    }
    let dir = std::path::PathBuf::from(&row.dir);
    match &st.provisioner {
        Some(prov) => prov
            .destroy(id, &dir)
            .await
            .map_err(|e| ActionError::Internal(e.to_string()))?,
        // Without [provisioning] nothing runs it any more; its files still go.
        None => match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ActionError::Internal(format!("remove {}: {e}", dir.display())).into())
            }
        },
    }
    st.catalog
        .delete_provisioned_instance(id)
        .await
        .map_err(ActionError::from)?;
    st.remove_provisioned(id);
    tracing::info!(instance = %id, "deleted a provisioned instance");
    Ok(Map::new())
}

/// DescribeRestoreDBInstanceList: the instances restored from `DBInstanceId` (CreateDBInstance) created at or after
/// `CreationTimeAfter`, newest first.
pub async fn describe_restore_db_instance_list(st: &AppState, p: &Params) -> ActionResult {
    let source = p.required("DBInstanceId")?;
    st.instance(source)?;
    let after_raw = p.required("CreationTimeAfter")?;
    let after = NaiveDateTime::parse_from_str(after_raw.trim(), "%Y-%m-%dT%H:%M:%SZ")
        .or_else(|_| NaiveDateTime::parse_from_str(after_raw.trim(), "%Y-%m-%dT%H:%MZ"))
        .map_err(|_| {
            ApiError::invalid_parameter(
                "CreationTimeAfter",
                "Use yyyy-MM-ddTHH:mm:ssZ (UTC), e.g. 2026-01-02T03:00:00Z.",
            )
        })?
        .and_utc();
    let pg = page(p)?;
    let mut rows: Vec<_> = st
        .catalog
        .list_provisioned_instances()
        .await
        .map_err(ActionError::from)?
        .into_iter()
        .filter(|i| i.source_instance_id == source && i.created_at >= after)
        .collect();
    rows.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    let total = rows.len();
    let start = (pg.number as usize - 1).saturating_mul(pg.size as usize);
    let items: Vec<Value> = rows
        .iter()
        .skip(start)
        .take(pg.size as usize)
        .map(|i| {
            json!({
                "DBInstanceId": i.id,
                "DBInstanceDescription": i.description,
                "DBInstanceStatus": i.status.as_str(),
                "DBInstanceType": "replicate",
                "EngineVersion": "",
                "CreationTime": dds_time(i.created_at),
                "RegionId": st.region_id,
                "ZoneId": "",
                "SecondaryZoneId": "",
                "HiddenZoneId": "",
                "IsDeleted": 0,
                "LockMode": "Unlock",
            })
        })
        .collect();
    let mut out = Map::new();
    out.insert("DBInstances".into(), json!({ "DBInstance": items }));
    out.insert("TotalCount".into(), json!(total));
    out.insert("PageNumber".into(), json!(pg.number));
    out.insert("PageSize".into(), json!(pg.size));
    Ok(out)
}
