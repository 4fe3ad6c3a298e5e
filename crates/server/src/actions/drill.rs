//! Restore drills (docs/drills.md), ddsvault extensions:
//! - `ModifyBackupPolicy` takes `RestoreDrillPeriod` (days like `PreferredBackupPeriod`, or `Disabled`),
//!   `RestoreDrillTime` (a one-hour window like `PreferredBackupTime`) and `RestoreDrillTarget` (the scratch
//!   instance whose contents each drill replaces); `DescribeBackupPolicy` shows them with `NextRestoreDrillTime`;
//! - `StartRestoreDrill` starts a drill now (the newest successful Logical backup, or `BackupId`);
//! - `DescribeRestoreDrills` lists the recorded drills, newest first;
//! - `DescribeBackups` shows each backup's `RestoreDrillStatus` (`NotDrilled` | `Verified` | `Unverified`).

use chrono::Utc;
use ddsvault_api::{ApiError, Params};
use ddsvault_catalog::policy::{format_backup_period, parse_backup_period, parse_backup_window};
use ddsvault_catalog::{
    Backup, BackupStatus, DrillFilter, DrillPolicy, DrillResult, NewJob, RestoreDrill,
};
use serde_json::{json, Map, Value};

use ddsvault_jobs::drill::PROVISION_TARGET;

use super::dds_time;
use crate::error::ActionError;
use crate::router::ActionResult;
use crate::state::AppState;

/// The parameters of ModifyBackupPolicy that set the drill policy.
pub(crate) const DRILL_PARAMS: [&str; 3] = [
    "RestoreDrillPeriod",
    "RestoreDrillTime",
    "RestoreDrillTarget",
];
/// `RestoreDrillPeriod` value that switches scheduled drills off.
const DISABLED: &str = "Disabled";
/// The drill window of a policy that does not name one.
const DEFAULT_WINDOW: &str = "05:00Z-06:00Z";

/// The drill policy a ModifyBackupPolicy call sets for `id`, merged with the stored one; `None` when the call
/// carries no drill parameter. Nothing is stored here: the caller stores it once every parameter is valid.
pub(crate) async fn drill_changes(
    st: &AppState,
    id: &str,
    p: &Params,
) -> Result<Option<DrillPolicy>, ApiError> {
    if !DRILL_PARAMS.iter().any(|n| p.opt_str(n).is_some()) {
        return Ok(None);
    }
    let stored = st
        .catalog
        .get_drill_policy(id)
        .await
        .map_err(ActionError::from)?;
    let period = match p.opt_str("RestoreDrillPeriod").map(str::trim) {
        Some(v) if v.eq_ignore_ascii_case(DISABLED) => String::new(),
        Some(v) => {
            let days = parse_backup_period(v).map_err(|e| {
                ApiError::invalid_parameter(
                    "RestoreDrillPeriod",
                    &format!(
                        "{e} Use days like PreferredBackupPeriod (Monday,Thursday), or Disabled."
                    ),
                )
            })?;
            format_backup_period(&days)
        }
        None => stored
            .as_ref()
            .map(|s| s.period.clone())
            .unwrap_or_default(),
    };
    let window = match p.opt_str("RestoreDrillTime").map(str::trim) {
        Some(v) => {
            parse_backup_window(v).map_err(|e| {
                ApiError::invalid_parameter(
                    "RestoreDrillTime",
                    &format!(
                        "{e} Use a one-hour UTC window like PreferredBackupTime (05:00Z-06:00Z)."
                    ),
                )
            })?;
            v.to_string()
        }
        None => stored
            .as_ref()
            .map_or_else(|| DEFAULT_WINDOW.to_string(), |s| s.window.clone()),
    };
    let target = match p.opt_str("RestoreDrillTarget").map(str::trim) {
        Some(t) => t.to_string(),
        None => match stored.as_ref() {
            Some(s) => s.target.clone(),
            None => return Err(ApiError::missing_parameter("RestoreDrillTarget")),
        },
    };
    check_target(st, id, &target, "RestoreDrillTarget")?;
    Ok(Some(DrillPolicy {
        instance_id: id.to_string(),
        period,
        window,
        target,
        updated_at: Utc::now(),
    }))
}

/// A scratch target must be another instance this service knows (a drill replaces its collections), or
/// `provision` (a temporary instance from `[provisioning]`, which this process must have).
fn check_target(st: &AppState, id: &str, target: &str, param: &str) -> Result<(), ApiError> {
    if target == PROVISION_TARGET {
        if st.provisioner.is_none() {
            return Err(ActionError::DrillProvisioningNotConfigured(
                if param == "RestoreDrillTarget" {
                    "RestoreDrillTarget"
                } else {
                    "TargetDBInstanceId"
                },
            )
            .into());
        }
        return Ok(());
    }
    if target == id {
        return Err(ApiError::invalid_parameter(
            param,
            "A drill replaces the contents of its target: name a scratch instance, not the instance itself.",
        ));
    }
    st.instance(target).map_err(|_| {
        ApiError::invalid_parameter(
            param,
            &format!("{target:?} is not an instance of this service: register the scratch instance first."),
        )
    })?;
    Ok(())
}

/// The drill fields DescribeBackupPolicy answers (nothing when no drill policy was set).
pub(crate) async fn describe_policy_fields(
    st: &AppState,
    id: &str,
    out: &mut Map<String, Value>,
) -> Result<(), ApiError> {
    let Some(d) = st
        .catalog
        .get_drill_policy(id)
        .await
        .map_err(ActionError::from)?
    else {
        return Ok(());
    };
    let running = st
        .scheduler_running
        .load(std::sync::atomic::Ordering::Relaxed);
    let next = if running {
        ddsvault_jobs::scheduler::next_drill_time(&d, Utc::now())
            .map(|t| t.format("%Y-%m-%dT%H:%MZ").to_string())
            .unwrap_or_default()
    } else {
        String::new()
    };
    out.insert(
        "RestoreDrillPeriod".into(),
        json!(if d.period.is_empty() {
            DISABLED.to_string()
        } else {
            d.period
        }),
    );
    out.insert("RestoreDrillTime".into(), json!(d.window));
    out.insert("RestoreDrillTarget".into(), json!(d.target));
    out.insert("NextRestoreDrillTime".into(), json!(next));
    Ok(())
}

pub async fn start_restore_drill(st: &AppState, p: &Params) -> ActionResult {
    let id = p.required("DBInstanceId")?;
    st.instance(id)?;
    let target = match p.opt_str("TargetDBInstanceId").map(str::trim) {
        Some(t) => t.to_string(),
        None => st
            .catalog
            .get_drill_policy(id)
            .await
            .map_err(ActionError::from)?
            .map(|d| d.target)
            .ok_or_else(|| ApiError::missing_parameter("TargetDBInstanceId"))?,
    };
    check_target(st, id, &target, "TargetDBInstanceId")?;
    let provisioned = target == PROVISION_TARGET;
    let backup: Backup = match p.opt_str("BackupId") {
        Some(_) => {
            let b = super::restore::usable_backup(st, id, p, "BackupId").await?;
            if b.method != ddsvault_catalog::BackupMethod::Logical && !provisioned {
                return Err(ActionError::BackupMethodNotSupported(format!(
                    "Backup {} is a {} backup: a drill into a registered scratch instance restores Logical \
                     backups; drill it with TargetDBInstanceId=provision.",
                    b.id, b.method
                ))
                .into());
            }
            b
        }
        None => ddsvault_jobs::scheduler::newest_drillable_backup(&st.catalog, id, provisioned)
            .await
            .map_err(|e| ActionError::Internal(e.to_string()))?
            .filter(|b| b.status == BackupStatus::Success)
            .ok_or_else(|| ActionError::NothingToDrill(id.to_string()))?,
    };
    let job = st
        .catalog
        .create_job(&NewJob {
            kind: ddsvault_catalog::JobKind::Drill,
            // A provisioned drill runs on the source instance's job slot: its scratch exists only inside the job.
            instance_id: if provisioned {
                id.to_string()
            } else {
                target.clone()
            },
            backup_id: Some(backup.id),
            mode: "Manual".into(),
            params: if provisioned {
                json!({"source_instance": id, "target": PROVISION_TARGET})
            } else {
                json!({"source_instance": id})
            },
            now: Utc::now(),
        })
        .await
        .map_err(ActionError::from)?;
    st.runner.wake();
    tracing::info!(instance = %id, backup_id = backup.id, target = %target, job_id = job.id, "restore drill requested");
    let mut out = Map::new();
    out.insert("DrillJobId".into(), json!(job.id.to_string()));
    out.insert("BackupId".into(), json!(backup.id.to_string()));
    out.insert("TargetDBInstanceId".into(), json!(target));
    Ok(out)
}

fn drill_json(d: &RestoreDrill) -> Value {
    json!({
        "DrillId": d.id.to_string(),
        "DBInstanceId": d.instance_id,
        "BackupId": d.backup_id.to_string(),
        "TargetDBInstanceId": d.target,
        "DrillJobId": d.job_id.map(|j| j.to_string()).unwrap_or_default(),
        "StartTime": dds_time(d.started_at),
        "EndTime": dds_time(d.finished_at),
        "DurationMs": d.duration_ms,
        "Result": d.result.as_str(),
        "Compared": if d.checksums { "CountsAndChecksums" } else { "CountsOnly" },
        "Detail": d.detail,
    })
}

pub async fn describe_restore_drills(st: &AppState, p: &Params) -> ActionResult {
    let id = p.required("DBInstanceId")?;
    st.instance(id)?;
    let backup_id = match p.opt_str("BackupId") {
        None => None,
        Some(v) => Some(v.trim().parse::<i64>().map_err(|_| {
            ApiError::invalid_parameter("BackupId", "It must be a numeric backup id.")
        })?),
    };
    let limit = match p.opt_i64("MaxRecords")? {
        None => 30,
        Some(n) if (1..=100).contains(&n) => n as u32,
        Some(_) => {
            return Err(ApiError::invalid_parameter(
                "MaxRecords",
                "Valid values: 1-100.",
            ))
        }
    };
    let drill_job = match p.opt_str("DrillJobId") {
        None => None,
        Some(v) => Some(drill_job(st, id, v).await?),
    };
    let drills = st
        .catalog
        .list_restore_drills(&DrillFilter {
            instance_id: Some(id.to_string()),
            backup_id,
            limit,
        })
        .await
        .map_err(ActionError::from)?;
    let mut out = Map::new();
    out.insert(
        "RestoreDrills".into(),
        json!({ "RestoreDrill": drills.iter().map(drill_json).collect::<Vec<_>>() }),
    );
    if let Some(j) = drill_job {
        out.insert("DrillJob".into(), j);
    }
    describe_policy_fields(st, id, &mut out).await?;
    Ok(out)
}

/// The state of one drill job of `id` (DescribeRestoreDrills' `DrillJobId`), so that a caller that started a drill
/// can follow it, including one that failed before a drill could be recorded (an unreachable scratch).
async fn drill_job(st: &AppState, id: &str, v: &str) -> Result<Value, ApiError> {
    let job_id = v
        .trim()
        .parse::<i64>()
        .map_err(|_| ApiError::invalid_parameter("DrillJobId", "It must be a numeric job id."))?;
    let job = st
        .catalog
        .get_job(job_id)
        .await
        .map_err(ActionError::from)?
        .filter(|j| {
            j.kind == ddsvault_catalog::JobKind::Drill
                && j.params.get("source_instance").and_then(Value::as_str) == Some(id)
        })
        .ok_or_else(|| {
            ApiError::invalid_parameter(
                "DrillJobId",
                "It is not a restore drill job of this instance.",
            )
        })?;
    let target = if ddsvault_jobs::drill::is_provisioned(&job) {
        PROVISION_TARGET.to_string()
    } else {
        job.instance_id.clone()
    };
    let failed = job.state == ddsvault_catalog::JobState::Failed;
    Ok(json!({
        "DrillJobId": job.id.to_string(),
        "BackupId": job.backup_id.map(|b| b.to_string()).unwrap_or_default(),
        "TargetDBInstanceId": target,
        "JobStatus": job.state.as_str(),
        "Progress": job.progress,
        "ErrorCode": job.answered_error_code(),
        "ErrorMessage": if failed { job.error.as_deref().unwrap_or("") } else { "" },
    }))
}

/// Adds `RestoreDrillStatus` (and the newest drill's `RestoreDrillTime`) to each DescribeBackups item: `Verified`
/// when the backup's newest drill passed, `Unverified` when it failed, `NotDrilled` when none ran.
pub(crate) async fn add_drill_status(
    st: &AppState,
    id: &str,
    backups: &[Backup],
    items: &mut [Value],
) -> Result<(), ApiError> {
    let mut newest: std::collections::HashMap<i64, RestoreDrill> = std::collections::HashMap::new();
    if !backups.is_empty() {
        // Newest first: the first drill seen of a backup is its newest.
        for d in st
            .catalog
            .list_restore_drills(&DrillFilter {
                instance_id: Some(id.to_string()),
                backup_id: None,
                limit: 1000,
            })
            .await
            .map_err(ActionError::from)?
        {
            newest.entry(d.backup_id).or_insert(d);
        }
    }
    for (b, item) in backups.iter().zip(items.iter_mut()) {
        let (status, time) = match newest.get(&b.id) {
            None => ("NotDrilled", String::new()),
            Some(d) if d.result == DrillResult::Passed => ("Verified", dds_time(d.finished_at)),
            Some(d) => ("Unverified", dds_time(d.finished_at)),
        };
        if let Value::Object(m) = item {
            m.insert("RestoreDrillStatus".into(), json!(status));
            m.insert("RestoreDrillTime".into(), json!(time));
        }
    }
    Ok(())
}
