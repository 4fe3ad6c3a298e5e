//! Retention actions: DeleteBackup and ModifyBackupExpireTime (dds-api.md §6.4–6.5). Expired backups are removed
//! by the garbage collector (`ddsvault_jobs::gc`), which shares the deletion path with DeleteBackup.

use chrono::{DateTime, NaiveDateTime, Utc};
use ddsvault_api::{ApiError, Params};
use ddsvault_catalog::{permanent_expiry, Backup, BackupStatus, CatalogError, RetentionLock};
use ddsvault_jobs::gc::{delete_backup_on_request, Deletion};
use serde_json::{json, Map, Value};

use super::dds_time;
use crate::error::ActionError;
use crate::router::ActionResult;
use crate::state::AppState;

/// The longest a backup may be kept, counted from its end time, unless it is kept forever.
pub(crate) const MAX_KEEP_DAYS: i64 = 730;

/// The backup named by `BackupId`, belonging to `DBInstanceId`. Backups being deleted are gone already.
async fn backup_of(st: &AppState, id: &str, p: &Params) -> Result<Backup, ActionError> {
    let raw = p.required("BackupId")?;
    let backup_id: i64 = raw
        .trim()
        .parse()
        .map_err(|_| ApiError::invalid_parameter("BackupId", "It must be a numeric backup id."))?;
    st.catalog
        .get_backup(backup_id)
        .await?
        .filter(|b| b.instance_id == id && b.status != BackupStatus::Deleting)
        .ok_or_else(|| ActionError::BackupNotFound(raw.to_string()))
}

/// Refuses while the instance's retention lock holds (for every caller, root included).
async fn check_unlocked(st: &AppState, id: &str) -> Result<(), ActionError> {
    if let Some(lock) = st.catalog.get_retention_lock(id).await? {
        if lock.is_active(Utc::now()) {
            return Err(ActionError::RetentionLocked {
                instance: id.to_string(),
                unlock_at: lock.unlock_at,
            });
        }
    }
    Ok(())
}

fn lock_answer(st: &AppState, id: &str, lock: Option<&RetentionLock>) -> Map<String, Value> {
    let now = Utc::now();
    let lock = lock.filter(|l| l.is_active(now));
    let mut out = Map::new();
    out.insert("DBInstanceId".into(), json!(id));
    out.insert(
        "RetentionLock".into(),
        json!(match lock {
            None => "Disabled",
            Some(l) if l.unlock_at.is_some() => "Unlocking",
            Some(_) => "Enabled",
        }),
    );
    out.insert(
        "LockEnabledTime".into(),
        json!(lock.map(|l| dds_time(l.enabled_at)).unwrap_or_default()),
    );
    out.insert(
        "UnlockTime".into(),
        json!(lock
            .and_then(|l| l.unlock_at)
            .map(dds_time)
            .unwrap_or_default()),
    );
    out.insert(
        "CoolingOffSeconds".into(),
        json!(st.retention_lock_cooling_off.num_seconds()),
    );
    out
}

/// ddsvault extension: `Enable=true` turns the retention lock on (or cancels a pending unlock); `Enable=false`
/// starts the cooling-off period after which the lock is off.
pub async fn modify_backup_retention_lock(st: &AppState, p: &Params) -> ActionResult {
    let id = p.required("DBInstanceId")?;
    st.instance(id)?;
    let enable = p
        .opt_bool("Enable")?
        .ok_or_else(|| ApiError::missing_parameter("Enable"))?;
    let lock = st
        .catalog
        .set_retention_lock(id, enable, Utc::now(), st.retention_lock_cooling_off)
        .await
        .map_err(ActionError::from)?;
    tracing::info!(instance = %id, enable, unlock_at = ?lock.as_ref().and_then(|l| l.unlock_at), "retention lock changed");
    let mut out = lock_answer(st, id, lock.as_ref());
    add_object_lock(st, &mut out).await;
    if enable && out.get("RepositoryObjectLock") == Some(&json!("Enabled")) {
        // The answer waits for the existing backups to be retained, so that when it says so the bucket refuses
        // their deletion; new backups and later expiries are covered by the periodic pass.
        match st.object_lock.pass_instance(id, Utc::now()).await {
            Ok(pass) => {
                out.insert(
                    "ObjectLockRetainedBackups".into(),
                    json!(pass.retained_backups),
                );
                out.insert("ObjectLockPendingBackups".into(), json!(pass.failed.len()));
            }
            Err(e) => {
                tracing::warn!(instance = %id, error = %e, "object lock pass failed; the periodic pass retries");
                out.insert("ObjectLockPendingBackups".into(), json!(-1));
            }
        }
    }
    Ok(out)
}

/// ddsvault extension fields: whether the repository enforces the lock itself (S3 Object Lock, COMPLIANCE
/// retention) or only ddsvault does.
async fn add_object_lock(st: &AppState, out: &mut Map<String, Value>) {
    let (state, note) = match st.object_lock.supported().await {
        Ok(true) => (
            "Enabled",
            "The bucket has S3 Object Lock: while the lock is on, every object of each backup gets COMPLIANCE retention until the backup expires, so not even the bucket owner can delete it earlier.".to_string(),
        ),
        Ok(false) if st.repo.has_atomic_rename() => (
            "Unsupported",
            "The repository is a local directory: only ddsvault enforces the lock; anyone who can write the directory can still delete backups.".to_string(),
        ),
        Ok(false) => (
            "Unsupported",
            "The bucket has no S3 Object Lock: only ddsvault enforces the lock; anyone with write access to the bucket can still delete backups. Create the bucket with object lock enabled to have the store enforce it.".to_string(),
        ),
        Err(e) => (
            "Unknown",
            format!("The bucket's object lock configuration could not be read: {e}"),
        ),
    };
    out.insert("RepositoryObjectLock".into(), json!(state));
    out.insert("RepositoryObjectLockNote".into(), json!(note));
}

/// ddsvault extension: the state of the retention lock and when it unlocks.
pub async fn describe_backup_retention_lock(st: &AppState, p: &Params) -> ActionResult {
    let id = p.required("DBInstanceId")?;
    st.instance(id)?;
    let lock = st
        .catalog
        .get_retention_lock(id)
        .await
        .map_err(ActionError::from)?;
    let mut out = lock_answer(st, id, lock.as_ref());
    add_object_lock(st, &mut out).await;
    Ok(out)
}

pub async fn delete_backup(st: &AppState, p: &Params) -> ActionResult {
    let id = p.required("DBInstanceId")?;
    st.instance(id)?;
    let backup = backup_of(st, id, p).await?;
    // Checked here for the usual answer, and again inside the catalog transaction that marks the backup, so a
    // lock enabled in between still wins.
    check_unlocked(st, id).await?;
    let outcome = delete_backup_on_request(&st.catalog, &st.repo, backup.id, Utc::now())
        .await
        .map_err(|e| ActionError::Internal(format!("delete backup {}: {e}", backup.id)))?;
    match outcome {
        Deletion::Deleted => {
            tracing::info!(instance = %id, backup_id = backup.id, "backup deleted on request");
            Ok(Map::new())
        }
        Deletion::NotFound => Err(ActionError::BackupNotFound(backup.id.to_string()).into()),
        Deletion::Running => Err(ActionError::BackupNotAvailable(format!(
            "The backup {} is still being taken; delete it when it has finished.",
            backup.id
        ))
        .into()),
        Deletion::Locked { unlock_at } => Err(ActionError::RetentionLocked {
            instance: id.to_string(),
            unlock_at,
        }
        .into()),
        Deletion::Retained { until } => Err(ActionError::ObjectRetained {
            backup_id: backup.id,
            until,
        }
        .into()),
        Deletion::InUse { job_id } => Err(ActionError::BackupInUse {
            backup_id: backup.id,
            job_id,
        }
        .into()),
    }
}

/// Parses `yyyy-MM-ddTHH:mm:ssZ` (UTC).
fn parse_expire_time(s: &str) -> Result<DateTime<Utc>, ActionError> {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%SZ")
        .map(|t| t.and_utc())
        .map_err(|_| {
            ActionError::ExpireTimeMalformed(format!(
                "{s:?} is not a UTC time yyyy-MM-ddTHH:mm:ssZ (9999-01-01T00:00:00Z keeps the backup forever)."
            ))
        })
}

/// Checks a requested expiry against the rules: only extend; at most 730 days after the backup ended, unless
/// permanent.
pub(crate) fn check_new_expiry(
    backup: &Backup,
    requested: DateTime<Utc>,
) -> Result<(), ActionError> {
    let permanent = permanent_expiry();
    let current = backup.expire_time.unwrap_or(backup.start_time);
    if requested < current {
        return Err(ActionError::ExpireTimeNotExtended(format!(
            "The expiry can only be extended: the backup expires at {}, later than {}.",
            dds_time(current),
            dds_time(requested)
        )));
    }
    if requested != permanent {
        let end = backup.end_time.unwrap_or(backup.start_time);
        let limit = end + chrono::Duration::days(MAX_KEEP_DAYS);
        if requested > limit {
            return Err(ActionError::ExpireTimeOutOfRange(format!(
                "It must be at most {MAX_KEEP_DAYS} days after the backup end time ({}), i.e. not after {}, or 9999-01-01T00:00:00Z to keep it forever.",
                dds_time(end),
                dds_time(limit)
            )));
        }
    }
    Ok(())
}

pub async fn modify_backup_expire_time(st: &AppState, p: &Params) -> ActionResult {
    let id = p.required("DBInstanceId")?;
    st.instance(id)?;
    let backup = backup_of(st, id, p).await?;
    let requested = parse_expire_time(p.required("BackupExpireTime")?.trim())?;
    if backup.status != BackupStatus::Success {
        return Err(ActionError::BackupNotAvailable(format!(
            "The backup {} is {}; only successful backups have an expiry.",
            backup.id,
            backup.status.as_str()
        ))
        .into());
    }
    check_new_expiry(&backup, requested)?;
    match st
        .catalog
        .set_backup_expire_time(backup.id, requested)
        .await
    {
        Ok(()) => {}
        // Deleted (or marked for deletion) since we read it.
        Err(CatalogError::NotFound(_)) => {
            return Err(ActionError::BackupNotFound(backup.id.to_string()).into())
        }
        Err(e) => return Err(ActionError::from(e).into()),
    }
    tracing::info!(instance = %id, backup_id = backup.id, expire = %dds_time(requested), "backup expiry changed");
    let mut out = Map::new();
    out.insert("BackupId".into(), json!(backup.id.to_string()));
    out.insert("BackupExpireTime".into(), json!(dds_time(requested)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn backup(expire: DateTime<Utc>) -> Backup {
        let start = Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .single()
            .expect("t");
        Backup {
            id: 1,
            job_id: 1,
            instance_id: "dds-a".into(),
            status: BackupStatus::Success,
            method: ddsvault_catalog::BackupMethod::Logical,
            mode: "Manual".into(),
            backup_type: "FullBackup".into(),
            start_time: start,
            end_time: Some(start + chrono::Duration::hours(1)),
            expire_time: Some(expire),
            retention_days: 30,
            size: 1,
            db_names: String::new(),
            engine_version: String::new(),
            repo_prefix: String::new(),
            details: serde_json::json!({}),
        }
    }

    fn kind(r: Result<(), ActionError>) -> &'static str {
        match r {
            Ok(()) => "ok",
            Err(ActionError::ExpireTimeNotExtended(_)) => "not-extended",
            Err(ActionError::ExpireTimeOutOfRange(_)) => "range",
            Err(_) => "other",
        }
    }

    #[test]
    fn expiry_rules() {
        let t = |s: &str| parse_expire_time(s).expect("time");
        let b = backup(t("2026-01-31T00:00:00Z"));
        assert_eq!(kind(check_new_expiry(&b, t("2026-02-01T00:00:00Z"))), "ok");
        assert_eq!(kind(check_new_expiry(&b, t("2026-01-31T00:00:00Z"))), "ok");
        assert_eq!(
            kind(check_new_expiry(&b, t("2026-01-30T00:00:00Z"))),
            "not-extended"
        );
        // End time 2026-01-01T01:00:00Z + 730 days.
        assert_eq!(kind(check_new_expiry(&b, t("2028-01-01T01:00:00Z"))), "ok");
        assert_eq!(
            kind(check_new_expiry(&b, t("2028-01-01T01:00:01Z"))),
            "range"
        );
        assert_eq!(kind(check_new_expiry(&b, permanent_expiry())), "ok");
        // A permanent backup cannot be shortened.
        let forever = backup(permanent_expiry());
        assert_eq!(
            kind(check_new_expiry(&forever, t("2026-06-01T00:00:00Z"))),
            "not-extended"
        );
        assert_eq!(kind(check_new_expiry(&forever, permanent_expiry())), "ok");
        for bad in [
            "2026-01-31",
            "2026-01-31T00:00Z",
            "2026-01-31T00:00:00+08:00",
            "x",
        ] {
            assert!(matches!(
                parse_expire_time(bad),
                Err(ActionError::ExpireTimeMalformed(_))
            ));
        }
        assert_eq!(t("9999-01-01T00:00:00Z"), permanent_expiry());
    }
}
