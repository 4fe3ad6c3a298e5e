//! Backup sets and backup jobs: CreateBackup, DescribeBackups, DescribeBackupTasks.

use chrono::{DateTime, NaiveDateTime, Utc};
use ddsvault_api::{ApiError, Params};
use ddsvault_catalog::{
    Backup, BackupFilter, BackupJobParams, BackupMethod, BackupStatus, DatabaseListing, JobState,
    NewBackupJob,
};
use ddsvault_jobs::backup::plan::{self, Inspection};
use serde_json::{json, Map, Value};

use super::{dds_time, page};
use crate::error::ActionError;
use crate::router::ActionResult;
use crate::state::{redact, AppState, Instance};

/// `BackupMethod` as requested (`None` when absent); a value that names no method is refused with the valid ones.
fn requested_method(p: &Params) -> Result<Option<BackupMethod>, ActionError> {
    p.get("BackupMethod")
        .map(|m| {
            BackupMethod::parse(m).ok_or_else(|| {
                ActionError::BackupMethodNotSupported(format!(
                    "Valid values: Snapshot, Logical, Physical; got {m:?}."
                ))
            })
        })
        .transpose()
}

/// `BackupRetentionPeriod`: 7–730 days or -1 (permanent); `None` when absent (the policy's applies).
fn retention(p: &Params) -> Result<Option<i64>, ActionError> {
    let Some(raw) = p.get("BackupRetentionPeriod") else {
        return Ok(None);
    };
    let days: i64 = raw.trim().parse().map_err(|_| {
        ActionError::InvalidRetention(format!(
            "{raw:?} is not an integer; valid values: 7 to 730, or -1 (permanent)."
        ))
    })?;
    if days == -1 || (7..=730).contains(&days) {
        Ok(Some(days))
    } else {
        Err(ActionError::InvalidRetention(format!(
            "{days} is out of range; valid values: 7 to 730, or -1 (permanent)."
        )))
    }
}

pub async fn create_backup(st: &AppState, p: &Params) -> ActionResult {
    let id = p.required("DBInstanceId")?;
    let inst = st.instance(id)?;
    // Cheap parameter checks first, so a bad request never waits on the instance.
    let requested = requested_method(p)?;
    let requested_retention = retention(p)?;

    // Fast path for the common refusal: an active job is visible in the catalog without asking the instance.
    // The unique index in the catalog still decides races between concurrent calls.
    refuse_if_active(st, id).await?;
    let retention_days = match requested_retention {
        Some(days) => days,
        None => {
            st.catalog
                .get_policy(id)
                .await
                .map_err(ActionError::from)?
                .unwrap_or_default()
                .backup_retention_period
        }
    };
    let Inspection {
        topo,
        databases,
        at: listed_at,
    } = match inspect(st, &inst).await {
        Ok(found) => found,
        // A job that started meanwhile keeps the instance busy (a dump can slow its answers down): that, not
        // the slowness, is the reason to give.
        Err(e @ ActionError::InstanceUnreachable(_)) => {
            refuse_if_active(st, id).await?;
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    // Without BackupMethod, manual and automatic backups take the same method (plan::default_method).
    let spec = inst.spec();
    let method = match requested {
        Some(_) => plan::choose_method(requested, topo.kind, inst.is_cloud_disk())
            .map_err(ActionError::from)?,
        None => plan::default_method_of(&spec, &topo),
    };
    if method.is_file_level() {
        plan::file_backup_possible(&spec, &topo, method).map_err(ActionError::from)?;
    }
    if databases.is_empty() {
        return Err(ActionError::NoDatabase.into());
    }

    let (job, backup) = st
        .catalog
        .create_backup_job(&NewBackupJob {
            instance_id: id.to_string(),
            method,
            mode: "Manual".into(),
            retention_days,
            engine_version: topo.engine_version.clone(),
            params: BackupJobParams {
                compression: Some(st.default_compression),
                // A logical job starting soon after trusts this listing instead of repeating it (see
                // ddsvault_jobs::backup::logical::prior_listing).
                listing: Some(DatabaseListing {
                    databases,
                    at_ms: listed_at.timestamp_millis(),
                }),
                ..BackupJobParams::new(method, retention_days)
            }
            .to_value(),
            now: Utc::now(),
        })
        .await
        .map_err(ActionError::from)?;
    st.runner.wake();
    let mut out = Map::new();
    out.insert("BackupId".into(), Value::String(backup.id.to_string()));
    out.insert("BackupJobId".into(), Value::String(job.id.to_string()));
    Ok(out)
}

async fn refuse_if_active(st: &AppState, id: &str) -> Result<(), ActionError> {
    match st.catalog.active_job(id).await? {
        Some((job_id, kind)) => Err(ActionError::JobExists {
            job_id,
            kind: Some(kind),
        }),
        None => Ok(()),
    }
}

/// What the instance is and which user databases it holds ([`plan::inspect`]). `hello` must answer within the
/// probe timeout (so an unreachable instance is reported quickly); `listDatabases` gets
/// [`plan::LIST_DATABASES_TIMEOUT`]. Concurrent calls for one instance share one look ([`crate::coalesce`]).
async fn inspect(st: &AppState, inst: &Instance) -> Result<Inspection, ActionError> {
    st.inspections
        .get(&inst.id, || async {
            let (client, topo) = st.probe(inst).await.map_err(|e| match e {
                ActionError::InstanceUnreachable(why) => why,
                other => other.to_string(),
            })?;
            plan::inspect(&client, topo, &inst.spec())
                .await
                .map_err(|e| redact(&e.to_string(), &inst.uri))
        })
        .await
        .map_err(ActionError::InstanceUnreachable)
}

/// Parses the `yyyy-MM-ddTHH:mmZ` times of DescribeBackups (seconds tolerated).
fn list_time(p: &Params, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    let Some(raw) = p.get(name) else {
        return Ok(None);
    };
    for fmt in ["%Y-%m-%dT%H:%MZ", "%Y-%m-%dT%H:%M:%SZ"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(raw, fmt) {
            return Ok(Some(t.and_utc()));
        }
    }
    Err(ApiError::invalid_parameter(
        name,
        "Use the format yyyy-MM-ddTHH:mmZ (UTC).",
    ))
}

fn opt_id(p: &Params, name: &str) -> Result<Option<i64>, ApiError> {
    match p.get(name) {
        None | Some("") => Ok(None),
        Some(v) => v
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| ApiError::invalid_parameter(name, "It must be a numeric id.")),
    }
}

fn backup_json(st: &AppState, b: &Backup) -> Value {
    let url = st
        .public_base
        .get()
        .map(|base| st.downloads.url_for(base, b))
        .unwrap_or_default();
    json!({
        "BackupId": b.id.to_string(),
        "BackupJobId": b.job_id.to_string(),
        "BackupStatus": b.status.as_str(),
        "BackupStartTime": dds_time(b.start_time),
        "BackupEndTime": b.end_time.map(dds_time).unwrap_or_default(),
        "BackupExpireTime": b.expire_time.map(dds_time).unwrap_or_default(),
        "BackupSize": b.size,
        "BackupMethod": b.method,
        "BackupMode": b.mode,
        "BackupType": b.backup_type,
        "BackupDBNames": b.db_names,
        // One address serves both networks here; "" (Dds' "not downloadable") for failed backups.
        "BackupDownloadURL": url,
        "BackupIntranetDownloadURL": url,
        "BackupName": "",
        "BackupScale": "",
        "EngineVersion": b.engine_version,
        "IsAvail": b.status == BackupStatus::Success,
        // ddsvault extension: the point in time a restore of this backup reproduces (the oplog
        // entry the backup's oplog window ends with); "" for backups without an oplog.
        "BackupConsistentTime": b.details.get("consistent_time").and_then(Value::as_str).unwrap_or(""),
        // ddsvault extensions: why a Failed backup failed (the source as a code, and the message); "" otherwise.
        "ErrorCode": failure_field(b, "error_code"),
        "ErrorMessage": failure_field(b, "error"),
    })
}

/// A failure detail of a Failed backup; a failure recorded without a code has the generic one.
fn failure_field<'a>(b: &'a Backup, key: &str) -> &'a str {
    if b.status != BackupStatus::Failed {
        return "";
    }
    match b.details.get(key).and_then(Value::as_str) {
        Some(v) => v,
        None if key == "error_code" => ddsvault_catalog::JOB_ERROR_CODE,
        None => "",
    }
}

pub async fn describe_backups(st: &AppState, p: &Params) -> ActionResult {
    let id = p.required("DBInstanceId")?;
    st.instance(id)?;
    let backup_id = opt_id(p, "BackupId")?;
    let job_id = opt_id(p, "BackupJobId")?;
    // Dds ignores the time window when a BackupId is given.
    let (start, end) = if backup_id.is_some() {
        (None, None)
    } else {
        (list_time(p, "StartTime")?, list_time(p, "EndTime")?)
    };
    if let (Some(s), Some(e)) = (start, end) {
        if e <= s {
            return Err(ApiError::invalid_parameter(
                "EndTime",
                "EndTime must be later than StartTime.",
            ));
        }
    }
    let pg = page(p)?;
    if let Some(dest) = p.opt_str("DestRegion") {
        return describe_copies(st, id, dest.trim(), backup_id, start, end, pg).await;
    }
    let (total, backups) = st
        .catalog
        .list_backups(
            &BackupFilter {
                instance_id: Some(id.to_string()),
                backup_id,
                job_id,
                start_from: start,
                start_to: end,
                include_running: false,
            },
            pg,
        )
        .await
        .map_err(ActionError::from)?;
    let mut items: Vec<Value> = backups.iter().map(|b| backup_json(st, b)).collect();
    super::drill::add_drill_status(st, id, &backups, &mut items).await?;
    let mut out = Map::new();
    out.insert("Backups".into(), json!({ "Backup": items }));
    out.insert("TotalCount".into(), json!(total));
    out.insert("PageNumber".into(), json!(pg.number));
    out.insert("PageSize".into(), json!(pg.size));
    Ok(out)
}

/// DescribeBackups with `DestRegion`: the copies of the instance's backups in that region's repository
/// (`[[repository.copies]]`), in Dds' backup format. `BackupStatus` is the copy's: `Success` once copied and
/// verified, `Pending` while waiting for an attempt (ddsvault's `Running`-like state), `Failed` when given up;
/// `BackupExpireTime` is the copy's own expiry. Copies are not downloadable through this service (their
/// repository is the copy): the URLs are empty.
async fn describe_copies(
    st: &AppState,
    id: &str,
    dest: &str,
    backup_id: Option<i64>,
    start: Option<chrono::DateTime<chrono::Utc>>,
    end: Option<chrono::DateTime<chrono::Utc>>,
    pg: ddsvault_catalog::Page,
) -> ActionResult {
    let regions = st.copier.as_ref().map(|c| c.regions()).unwrap_or_default();
    if !regions.iter().any(|r| r == dest) {
        return Err(ApiError::invalid_parameter(
            "DestRegion",
            &format!(
                "{dest:?} has no repository here; configured [[repository.copies]] regions: {}.",
                if regions.is_empty() {
                    "none".to_string()
                } else {
                    regions.join(", ")
                }
            ),
        ));
    }
    let copies: Vec<_> = st
        .catalog
        .list_copies(id, dest)
        .await
        .map_err(ActionError::from)?
        .into_iter()
        .filter(|c| backup_id.is_none_or(|b| b == c.backup_id))
        .filter(|c| {
            start.is_none_or(|s| c.start_time >= s) && end.is_none_or(|e| c.start_time <= e)
        })
        .collect();
    let total = copies.len();
    let skip = (pg.number.saturating_sub(1) as usize).saturating_mul(pg.size as usize);
    let items: Vec<Value> = copies
        .iter()
        .skip(skip)
        .take(pg.size as usize)
        .map(|c| {
            json!({
                "BackupId": c.backup_id.to_string(),
                "BackupStatus": c.status.as_str(),
                "BackupStartTime": dds_time(c.start_time),
                "BackupEndTime": c.end_time.map(dds_time).unwrap_or_default(),
                "BackupExpireTime": dds_time(c.expire_time.unwrap_or_else(ddsvault_catalog::permanent_expiry)),
                "BackupSize": c.size,
                "BackupMethod": c.method,
                "BackupType": "FullBackup",
                "BackupDownloadURL": "",
                "BackupIntranetDownloadURL": "",
                "IsAvail": c.status == ddsvault_catalog::CopyStatus::Success,
                "SrcRegion": st.region_id,
                "DestRegion": c.dest_region,
                // ddsvault extensions: when the copy was verified, and the last failure while it is not.
                "CopyTime": c.copied_at.map(dds_time).unwrap_or_default(),
                "CopyAttempts": c.attempts,
                "ErrorMessage": c.last_error,
            })
        })
        .collect();
    let mut out = Map::new();
    out.insert("Backups".into(), json!({ "Backup": items }));
    out.insert("TotalCount".into(), json!(total));
    out.insert("PageNumber".into(), json!(pg.number));
    out.insert("PageSize".into(), json!(pg.size));
    Ok(out)
}

pub async fn describe_backup_tasks(st: &AppState, p: &Params) -> ActionResult {
    let id = p.required("DBInstanceId")?;
    st.instance(id)?;
    let job_id = opt_id(p, "BackupJobId")?;
    // Without a job id: the jobs still to finish. With one: that job in any state, so a caller can follow it
    // to the end.
    let jobs = st
        .catalog
        .list_jobs(id, job_id.is_none())
        .await
        .map_err(ActionError::from)?;
    let items: Vec<Value> = jobs
        .iter()
        .filter(|j| {
            j.kind == ddsvault_catalog::JobKind::Backup && job_id.is_none_or(|want| want == j.id)
        })
        .map(|j| {
            // Dds' BackupSetStatus has no failed value (a finished job is `Finished`); the outcome is in the
            // ddsvault extension `JobStatus`, with the failure's source and message beside it.
            let status = match j.state {
                JobState::Pending => "Scheduled",
                JobState::Running => "Backuping",
                JobState::Success | JobState::Failed => "Finished",
            };
            let failed = j.state == JobState::Failed;
            let mut item = json!({
                "BackupjobId": j.id.to_string(),
                "BackupSetStatus": status,
                "BackupStartTime": dds_time(j.started_at.unwrap_or(j.created_at)),
                "JobMode": j.mode,
                "Progress": j.progress.to_string(),
                "JobStatus": j.state.as_str(),
                "ErrorCode": j.answered_error_code(),
                "ErrorMessage": if failed { j.error.as_deref().unwrap_or("") } else { "" },
                // ddsvault extension: the node (process) that runs or ran the job; "" while it waits.
                "Node": j.owner.as_deref().unwrap_or(""),
            });
            super::add_progress_detail(&mut item, j);
            item
        })
        .collect();
    let mut out = Map::new();
    out.insert("BackupJobs".into(), Value::Array(items));
    Ok(out)
}

/// `DescribeBackupStorage`: the bytes the instance's backups really occupy in the repository: every object of
/// its backups (logical archives, physical files, manifests) plus its snapshot chunk store, where chunks shared
/// by several snapshots count once. ddsvault has no backup quota, so `FreeSize` is 0; `LogStorageSize` is the
/// stored size of the log backup's slices.
pub async fn describe_backup_storage(st: &AppState, p: &Params) -> ActionResult {
    let id = p.required("DBInstanceId")?;
    st.instance(id)?;
    // From the catalog, not the repository (issue 17.7): each Success backup's stored bytes and each chunk a
    // committed snapshot named, as recorded at commit and forgotten by the collector (docs/decisions.md).
    let usage = st
        .catalog
        .storage_usage(id)
        .await
        .map_err(ActionError::from)?;
    let mut out = Map::new();
    out.insert("FullStorageSize".into(), json!(usage.total()));
    // The oplog slices of the continuous log backup (docs/pitr.md), as indexed with their stored size.
    let logs = ddsvault_jobs::pitr::log_storage_size(&st.catalog, id)
        .await
        .map_err(ActionError::from)?;
    out.insert("LogStorageSize".into(), json!(logs));
    out.insert("FreeSize".into(), json!(0));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_method_takes_the_exact_names_only() {
        // Dds answers the exact names only: another case or an empty value is refused.
        let params = |m: &str| [("BackupMethod", m)].into_iter().collect::<Params>();
        for m in [
            BackupMethod::Logical,
            BackupMethod::Physical,
            BackupMethod::Snapshot,
        ] {
            assert_eq!(requested_method(&params(m.as_str())).ok(), Some(Some(m)));
            let lower = m.as_str().to_lowercase();
            assert!(requested_method(&params(&lower)).is_err(), "{lower}");
        }
        assert!(requested_method(&params("")).is_err());
    }

    #[test]
    fn retention_bounds() {
        let mk = |v: &str| {
            let mut m = std::collections::BTreeMap::new();
            m.insert("BackupRetentionPeriod".to_string(), v.to_string());
            Params::new(m)
        };
        assert_eq!(retention(&Params::new(Default::default())).ok(), Some(None));
        for (ok, days) in [("7", 7), ("730", 730), ("-1", -1), ("100", 100)] {
            assert_eq!(retention(&mk(ok)).ok(), Some(Some(days)), "{ok}");
        }
        for bad in ["6", "731", "0", "-2", "abc", "", "7.5"] {
            assert!(retention(&mk(bad)).is_err(), "{bad}");
        }
    }
}
