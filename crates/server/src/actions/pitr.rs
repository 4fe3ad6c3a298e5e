//! Point-in-time recovery (docs/pitr.md): DescribeInstanceRecoverTime, DescribeClusterRecoverTime,
//! CheckRecoveryCondition, and the `RestoreTime` of RestoreDBInstance (the restore itself is a restore job with
//! `restore_time`, run by `ddsvault_jobs::restore`).

use chrono::{DateTime, NaiveDateTime, Utc};
use ddsvault_api::{ApiError, Params};
use ddsvault_jobs::pitr::{self, PitrPlan, RecoverRange};
use serde_json::{json, Map, Value};

use super::dds_time;
use crate::error::ActionError;
use crate::router::ActionResult;
use crate::state::AppState;

/// `RestoreTime`: `yyyy-MM-ddTHH:mm:ssZ` (UTC, to the second), as Dds takes it.
pub(crate) fn parse_restore_time(raw: &str) -> Result<u32, ApiError> {
    let bad = || {
        ApiError::invalid_parameter(
            "RestoreTime",
            "Use yyyy-MM-ddTHH:mm:ssZ (UTC), e.g. 2026-01-02T03:04:05Z.",
        )
    };
    let t = NaiveDateTime::parse_from_str(raw.trim(), "%Y-%m-%dT%H:%M:%SZ").map_err(|_| bad())?;
    u32::try_from(t.and_utc().timestamp()).map_err(|_| bad())
}

fn secs_time(secs: u32) -> String {
    DateTime::<Utc>::from_timestamp(i64::from(secs), 0)
        .map(dds_time)
        .unwrap_or_default()
}

fn describe_ranges(ranges: &[RecoverRange]) -> String {
    if ranges.is_empty() {
        return "none: turn on EnableBackupLog and take a Logical backup".into();
    }
    ranges
        .iter()
        .map(|r| format!("{} to {}", secs_time(r.begin), secs_time(r.end)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// DescribeInstanceRecoverTime and DescribeClusterRecoverTime: the recoverable ranges of the instance.
pub async fn describe_recover_time(st: &AppState, p: &Params) -> ActionResult {
    let id = p.required("DBInstanceId")?;
    st.instance(id)?;
    let ranges = pitr::instance_ranges(&st.catalog, id)
        .await
        .map_err(ActionError::from)?;
    let items: Vec<Value> = ranges
        .iter()
        .map(|r| {
            json!({
                "RestoreBeginTime": secs_time(r.begin),
                "RestoreEndTime": secs_time(r.end),
                "RestoreType": "PointInTime",
            })
        })
        .collect();
    let mut out = Map::new();
    out.insert("RestoreRanges".into(), Value::Array(items));
    Ok(out)
}

/// The plan of a restore of instance `id` to second `t`, or the Dds-style refusal naming the ranges.
pub(crate) async fn plan_for(
    st: &AppState,
    id: &str,
    t: u32,
    only: Option<i64>,
) -> Result<PitrPlan, ActionError> {
    let slices = st.catalog.list_log_slices(id).await?;
    let bases = pitr::bases(&st.catalog, id).await?;
    let chains = pitr::chains(&slices);
    pitr::plan_point_in_time(&chains, &bases, t, only).ok_or_else(|| {
        ActionError::RestoreTimeOutOfRange {
            time: secs_time(t),
            ranges: describe_ranges(&pitr::recover_ranges(&chains, &bases)),
        }
    })
}

/// CheckRecoveryCondition: whether a restore from `BackupId` or to `RestoreTime` of `SourceDBInstance` can run.
pub async fn check_recovery_condition(st: &AppState, p: &Params) -> ActionResult {
    let id = p.required("SourceDBInstance")?;
    st.instance(id)?;
    let backup = p.get("BackupId").map(str::trim).filter(|s| !s.is_empty());
    let time = p
        .get("RestoreTime")
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let valid = match (backup, time) {
        (Some(b), None) => {
            let backup_id: i64 = b.parse().map_err(|_| {
                ApiError::invalid_parameter("BackupId", "It must be a numeric backup id.")
            })?;
            st.catalog
                .get_backup(backup_id)
                .await
                .map_err(ActionError::from)?
                .is_some_and(|b| {
                    b.instance_id == id && b.status == ddsvault_catalog::BackupStatus::Success
                })
        }
        (None, Some(t)) => {
            let t = parse_restore_time(t)?;
            plan_for(st, id, t, None).await.is_ok()
        }
        _ => {
            return Err(ApiError::invalid_parameter(
                "BackupId",
                "Pass exactly one of BackupId and RestoreTime.",
            ))
        }
    };
    let mut out = Map::new();
    out.insert("DBInstanceName".into(), json!(id));
    out.insert("IsValid".into(), json!(valid));
    Ok(out)
}
