//! Backup policy: DescribeBackupPolicy and ModifyBackupPolicy (dds-api.md §6.6–6.7).
//!
//! The standard policy fields are validated and stored in the catalog; nothing invalid is ever stored (the whole
//! call is refused). Cross-region backup parameters are refused with `UnsupportedOperation` rather than ignored.

use std::sync::atomic::Ordering;

use ddsvault_api::{ApiError, Params};
use ddsvault_catalog::policy::{format_backup_period, parse_backup_period, parse_backup_window};
use ddsvault_catalog::BackupPolicy;
use ddsvault_catalog::{CrossRegionPolicy, CrossRetention};
use serde_json::{json, Map};

use crate::error::ActionError;
use crate::router::ActionResult;
use crate::state::AppState;

/// `PreferredNextBackupTime`: the next window start (`yyyy-MM-ddTHH:mmZ`) while the scheduler runs, else "".
pub(crate) fn preferred_next_backup_time(
    pol: &BackupPolicy,
    advanced: Option<&ddsvault_catalog::AdvancedPolicy>,
    running: bool,
) -> String {
    if !running {
        return String::new();
    }
    ddsvault_jobs::scheduler::next_backup_time(pol, advanced, chrono::Utc::now())
        .map(|t| t.format("%Y-%m-%dT%H:%MZ").to_string())
        .unwrap_or_default()
}

/// `PreferredNextBackupTime` of an instance: "" without automatic backups (no stored policy) or scheduler; the
/// start of the window that is open now while its slot has not been taken yet (the scheduler takes it within a
/// tick); else the next window start.
pub(crate) async fn next_backup_answer(
    st: &AppState,
    id: &str,
    pol: &BackupPolicy,
    advanced: Option<&ddsvault_catalog::AdvancedPolicy>,
    automatic: bool,
) -> String {
    let running = automatic && st.scheduler_running.load(Ordering::Relaxed);
    if !running {
        return String::new();
    }
    let now = chrono::Utc::now();
    let rules = ddsvault_jobs::retention::RetentionRules::from_policies(pol, advanced);
    if let Some((slot, _, _)) = ddsvault_jobs::scheduler::due_window(pol, &rules, now) {
        // Unknown (catalog error) counts as taken: never promise a backup that may not come.
        let taken = st
            .catalog
            .list_schedule_runs(id, 16)
            .await
            .map_or(true, |runs| {
                runs.iter().any(|r| {
                    r.schedule == ddsvault_catalog::SCHEDULE_STANDARD && r.slot_start == slot
                })
            });
        if !taken {
            return slot.format("%Y-%m-%dT%H:%MZ").to_string();
        }
    }
    preferred_next_backup_time(pol, advanced, true)
}

/// High-frequency (Flash) snapshot intervals in minutes; -1 switches high-frequency backup off.
const BACKUP_INTERVALS: [i64; 10] = [-1, 15, 30, 60, 120, 180, 240, 360, 480, 720];

/// Cross-region log backup parameters of ModifyBackupPolicy: not implemented (copies are of backup sets, not of
/// the oplog), so refused instead of ignored.
const CROSS_REGION_LOG_PARAMS: [&str; 3] = [
    "CrossLogRetentionType",
    "CrossLogRetentionValue",
    "EnableCrossLogBackup",
];

/// Cross-region backup parameters of ModifyBackupPolicy: they drive the copies to `[[repository.copies]]`.
const CROSS_REGION_PARAMS: [&str; 6] = [
    "CrossBackupType",
    "CrossBackupPeriod",
    "CrossRetentionType",
    "CrossRetentionValue",
    "DestRegion",
    "SrcRegion",
];

/// The cross-region settings a ModifyBackupPolicy call carries, checked and merged with the stored ones for
/// its `DestRegion`; `None` when it carries none. `preferred_period` is the (new) standard backup period, of
/// which `CrossBackupPeriod` must be a subset.
async fn cross_changes(
    st: &AppState,
    id: &str,
    p: &Params,
    preferred_period: &str,
) -> Result<Option<CrossRegionPolicy>, ApiError> {
    if !CROSS_REGION_PARAMS.iter().any(|n| p.opt_str(n).is_some()) {
        return Ok(None);
    }
    let Some(copier) = &st.copier else {
        return Err(ActionError::CrossRegionNotSupported(
            "Cross-region backup needs a second repository: configure [[repository.copies]] with a dest_region (docs/s3-repository.md).".into(),
        )
        .into());
    };
    let regions = copier.regions();
    let dest = p.required("DestRegion")?.trim().to_string();
    if !regions.contains(&dest) {
        return Err(ApiError::invalid_parameter(
            "DestRegion",
            &format!(
                "{dest:?} has no repository; configured [[repository.copies]] regions: {}.",
                regions.join(", ")
            ),
        ));
    }
    if let Some(src) = p.opt_str("SrcRegion") {
        if src.trim() != st.region_id {
            return Err(ApiError::invalid_parameter(
                "SrcRegion",
                &format!("It must be this service's region {}.", st.region_id),
            ));
        }
    }
    let stored = st
        .catalog
        .list_cross_policies(id)
        .await
        .map_err(ActionError::from)?
        .into_iter()
        .find(|c| c.dest_region == dest);
    let enabled = match p.opt_str("CrossBackupType") {
        None | Some("update") => true,
        Some("delete") => false,
        Some(_) => {
            return Err(ApiError::invalid_parameter(
                "CrossBackupType",
                "Valid values: update, delete.",
            ))
        }
    };
    let backup_period = match p.opt_str("CrossBackupPeriod") {
        Some(v) => {
            let days = parse_backup_period(v).map_err(ActionError::InvalidBackupPeriod)?;
            let allowed = parse_backup_period(preferred_period).unwrap_or_default();
            if let Some(d) = days.iter().find(|d| !allowed.contains(d)) {
                return Err(ApiError::invalid_parameter(
                    "CrossBackupPeriod",
                    &format!("{d} is not in PreferredBackupPeriod ({preferred_period}): the cross-region days must be a subset of it."),
                ));
            }
            format_backup_period(&days)
        }
        None => stored
            .as_ref()
            .map(|c| c.backup_period.clone())
            .unwrap_or_default(),
    };
    let value = p.opt_i64("CrossRetentionValue").map_err(|_| {
        ApiError::invalid_parameter("CrossRetentionValue", "It must be an integer: 3-1825 days.")
    })?;
    if let Some(v) = value {
        if !(3..=1825).contains(&v) {
            return Err(ApiError::invalid_parameter(
                "CrossRetentionValue",
                &format!("{v} is out of range: 3-1825 days."),
            ));
        }
    }
    let retention = match p.opt_str("CrossRetentionType") {
        Some("never") => CrossRetention::Never,
        Some("delay") => CrossRetention::Days(
            value.ok_or_else(|| ApiError::missing_parameter("CrossRetentionValue"))?,
        ),
        Some(_) => {
            return Err(ApiError::invalid_parameter(
                "CrossRetentionType",
                "Valid values: delay, never.",
            ))
        }
        None => match (value, stored.as_ref().map(|c| c.retention)) {
            (Some(v), _) => CrossRetention::Days(v),
            (None, Some(r)) => r,
            (None, None) => {
                return Err(ApiError::missing_parameter("CrossRetentionType"));
            }
        },
    };
    Ok(Some(CrossRegionPolicy {
        instance_id: id.to_string(),
        dest_region: dest,
        src_region: st.region_id.clone(),
        enabled,
        backup_period,
        retention,
        updated_at: chrono::Utc::now(),
    }))
}

pub async fn describe_backup_policy(st: &AppState, p: &Params) -> ActionResult {
    let id = p.required("DBInstanceId")?;
    st.instance(id)?;
    let stored = st.catalog.get_policy(id).await.map_err(ActionError::from)?;
    // Automatic backups are opt-in: without a stored policy the defaults are shown, and nothing is scheduled.
    let automatic = stored.is_some();
    let pol = stored.unwrap_or_default();
    let advanced = st
        .catalog
        .get_advanced_policy(id)
        .await
        .map_err(ActionError::from)?;
    let mut out = Map::new();
    out.insert(
        "PreferredBackupPeriod".into(),
        json!(pol.preferred_backup_period),
    );
    out.insert(
        "PreferredBackupTime".into(),
        json!(pol.preferred_backup_time),
    );
    out.insert(
        "PreferredNextBackupTime".into(),
        json!(next_backup_answer(st, id, &pol, advanced.as_ref(), automatic).await),
    );
    // ddsvault extension: whether automatic backups run for the instance (a policy was set).
    out.insert(
        "AutomaticBackup".into(),
        json!(if automatic { "Enabled" } else { "Disabled" }),
    );
    // Dds types these two as strings.
    out.insert(
        "BackupRetentionPeriod".into(),
        json!(pol.backup_retention_period.to_string()),
    );
    out.insert(
        "HighFrequencyBackupRetention".into(),
        json!(pol.high_frequency_backup_retention.to_string()),
    );
    out.insert("EnableBackupLog".into(), json!(pol.enable_backup_log));
    out.insert(
        "LogBackupRetentionPeriod".into(),
        json!(pol.log_backup_retention_period),
    );
    out.insert("SnapshotBackupType".into(), json!(pol.snapshot_backup_type));
    out.insert("BackupInterval".into(), json!(pol.backup_interval));
    out.insert(
        "PreserveOneEachHour".into(),
        json!(pol.preserve_one_each_hour),
    );
    out.insert(
        "BackupRetentionPolicyOnClusterDeletion".into(),
        json!(pol.backup_retention_policy_on_cluster_deletion),
    );
    super::drill::describe_policy_fields(st, id, &mut out).await?;
    // Cross-region settings (of the first destination region that has some; ddsvault extension
    // CrossRegionPolicies lists all of them).
    let cross = st
        .catalog
        .list_cross_policies(id)
        .await
        .map_err(ActionError::from)?;
    if let Some(c) = cross.first() {
        let (kind, value) = match c.retention {
            CrossRetention::Days(d) => ("delay", d),
            CrossRetention::Never => ("never", 0),
        };
        out.insert(
            "CrossBackupType".into(),
            json!(if c.enabled { "update" } else { "delete" }),
        );
        out.insert("CrossBackupPeriod".into(), json!(c.backup_period));
        out.insert("CrossRetentionType".into(), json!(kind));
        out.insert("CrossRetentionValue".into(), json!(value));
        out.insert("SrcRegion".into(), json!(c.src_region));
        out.insert("DestRegion".into(), json!(c.dest_region));
    }
    Ok(out)
}

pub async fn modify_backup_policy(st: &AppState, p: &Params) -> ActionResult {
    let id = p.required("DBInstanceId")?;
    st.instance(id)?;
    let stored = st.catalog.get_policy(id).await.map_err(ActionError::from)?;
    let current = stored.clone().unwrap_or_default();
    let updated = apply_changes(current.clone(), p)?;
    let cross = cross_changes(st, id, p, &updated.preferred_backup_period).await?;
    let drill = super::drill::drill_changes(st, id, p).await?;
    if let Some(d) = &drill {
        st.catalog
            .put_drill_policy(d)
            .await
            .map_err(ActionError::from)?;
        tracing::info!(instance = %id, policy = ?d, "restore drill policy modified");
        if stored.is_none() && updated == current && cross.is_none() {
            // Only drill settings: storing the standard policy would switch automatic backups on.
            return Ok(Map::new());
        }
    }
    if let Some(c) = &cross {
        st.catalog
            .put_cross_policy(c)
            .await
            .map_err(ActionError::from)?;
        tracing::info!(instance = %id, policy = ?c, "cross-region backup settings modified");
        if stored.is_none() && updated == current {
            // Only cross-region settings: storing the standard policy would switch automatic backups on.
            return Ok(Map::new());
        }
    }
    st.catalog
        .put_policy(id, &updated, chrono::Utc::now())
        .await
        .map_err(ActionError::from)?;
    tracing::info!(instance = %id, policy = ?updated, "backup policy modified");
    Ok(Map::new())
}

/// Validates every parameter the call carries and returns the policy with them applied. Absent (or empty)
/// parameters keep their stored value.
pub(crate) fn apply_changes(mut pol: BackupPolicy, p: &Params) -> Result<BackupPolicy, ApiError> {
    if let Some(name) = CROSS_REGION_LOG_PARAMS
        .iter()
        .find(|n| p.opt_str(n).is_some())
    {
        return Err(ActionError::Unsupported(format!(
            "Cross-region log backup ({name}) is not implemented by this ddsvault version: copies are of backup sets. See docs/s3-repository.md."
        ))
        .into());
    }
    if let Some(t) = p.opt_str("InstanceType") {
        if t != "replicate" && t != "sharding" {
            return Err(ApiError::invalid_parameter(
                "InstanceType",
                "Valid values: replicate, sharding.",
            ));
        }
    }
    if let Some(v) = p.opt_str("PreferredBackupTime") {
        parse_backup_window(v).map_err(ActionError::InvalidBackupTime)?;
        pol.preferred_backup_time = v.to_string();
    }
    if let Some(v) = p.opt_str("PreferredBackupPeriod") {
        let days = parse_backup_period(v).map_err(ActionError::InvalidBackupPeriod)?;
        pol.preferred_backup_period = format_backup_period(&days);
    }
    if let Some(v) = p.opt_i64("BackupRetentionPeriod").map_err(|_| {
        ActionError::InvalidRetention("It must be an integer: 7-730, or -1 (keep forever).".into())
    })? {
        if v != -1 && !(7..=730).contains(&v) {
            return Err(ActionError::InvalidRetention(format!(
                "{v} is out of range: 7-730 days, or -1 (keep forever)."
            ))
            .into());
        }
        pol.backup_retention_period = v;
    }
    if let Some(v) = p.opt_i64("EnableBackupLog")? {
        if v != 0 && v != 1 {
            return Err(ApiError::invalid_parameter(
                "EnableBackupLog",
                "Valid values: 0 (off), 1 (on).",
            ));
        }
        pol.enable_backup_log = v;
    }
    if let Some(v) = p.opt_i64("LogBackupRetentionPeriod")? {
        if !(7..=730).contains(&v) {
            return Err(ApiError::invalid_parameter(
                "LogBackupRetentionPeriod",
                "Valid values: 7-730 (days).",
            ));
        }
        pol.log_backup_retention_period = v;
    }
    if let Some(v) = p.opt_str("SnapshotBackupType") {
        if v != "Flash" && v != "Standard" {
            return Err(ApiError::invalid_parameter(
                "SnapshotBackupType",
                "Valid values: Flash, Standard.",
            ));
        }
        pol.snapshot_backup_type = v.to_string();
    }
    if let Some(v) = p.opt_i64("BackupInterval")? {
        if !BACKUP_INTERVALS.contains(&v) {
            return Err(ApiError::invalid_parameter(
                "BackupInterval",
                "Valid values: -1 (off), 15, 30, 60, 120, 180, 240, 360, 480, 720 (minutes).",
            ));
        }
        pol.backup_interval = v;
    }
    if let Some(v) = p.opt_i64("HighFrequencyBackupRetention")? {
        if !(1..=730).contains(&v) {
            return Err(ApiError::invalid_parameter(
                "HighFrequencyBackupRetention",
                "Valid values: 1-730 (days).",
            ));
        }
        pol.high_frequency_backup_retention = v;
    }
    if let Some(v) = p.opt_bool("PreserveOneEachHour")? {
        pol.preserve_one_each_hour = v;
    }
    if let Some(v) = p.opt_i64("BackupRetentionPolicyOnClusterDeletion")? {
        if !(0..=2).contains(&v) {
            return Err(ApiError::invalid_parameter(
                "BackupRetentionPolicyOnClusterDeletion",
                "Valid values: 0, 1, 2.",
            ));
        }
        pol.backup_retention_policy_on_cluster_deletion = v;
    }
    // Rule across fields, checked on the resulting policy: high-frequency backup needs Flash snapshots.
    if pol.snapshot_backup_type == "Standard" && pol.backup_interval != -1 {
        return Err(ApiError::invalid_parameter(
            "BackupInterval",
            "It must be -1 when SnapshotBackupType is Standard; high-frequency backup needs SnapshotBackupType=Flash.",
        ));
    }
    Ok(pol)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn params(kv: &[(&str, &str)]) -> Params {
        Params::new(
            kv.iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect::<BTreeMap<_, _>>(),
        )
    }

    fn code(kv: &[(&str, &str)]) -> String {
        apply_changes(BackupPolicy::default(), &params(kv))
            .expect_err("must be refused")
            .code
            .clone()
    }

    #[test]
    fn next_backup_time_only_while_the_scheduler_runs() {
        let p = BackupPolicy::default();
        assert_eq!(preferred_next_backup_time(&p, None, false), "");
        let next = preferred_next_backup_time(&p, None, true);
        // Daily at 03:00Z: today or tomorrow, minute precision.
        assert_eq!(next.len(), "yyyy-MM-ddTHH:mmZ".len(), "{next}");
        assert!(next.ends_with("T03:00Z"), "{next}");
    }

    #[test]
    fn applies_valid_changes() {
        let p = apply_changes(
            BackupPolicy::default(),
            &params(&[
                ("PreferredBackupTime", "23:00Z-00:00Z"),
                ("PreferredBackupPeriod", "Sunday,Wednesday"),
                ("BackupRetentionPeriod", "-1"),
                ("EnableBackupLog", "1"),
                ("LogBackupRetentionPeriod", "730"),
                ("SnapshotBackupType", "Flash"),
                ("BackupInterval", "30"),
                ("HighFrequencyBackupRetention", "3"),
                ("PreserveOneEachHour", "true"),
                ("BackupRetentionPolicyOnClusterDeletion", "2"),
            ]),
        )
        .expect("valid");
        assert_eq!(p.preferred_backup_time, "23:00Z-00:00Z");
        assert_eq!(p.preferred_backup_period, "Wednesday,Sunday");
        assert_eq!(p.backup_retention_period, -1);
        assert_eq!(p.enable_backup_log, 1);
        assert_eq!(p.log_backup_retention_period, 730);
        assert_eq!(p.snapshot_backup_type, "Flash");
        assert_eq!(p.backup_interval, 30);
        assert_eq!(p.high_frequency_backup_retention, 3);
        assert!(p.preserve_one_each_hour);
        assert_eq!(p.backup_retention_policy_on_cluster_deletion, 2);
        // Nothing given: nothing changes.
        assert_eq!(apply_changes(p.clone(), &params(&[])).expect("empty"), p);
    }

    #[test]
    fn refuses_each_invalid_value_with_its_code() {
        assert_eq!(
            code(&[("PreferredBackupTime", "03:00Z-05:00Z")]),
            "InvalidPreferredBackupTime.Malformed"
        );
        assert_eq!(
            code(&[("PreferredBackupPeriod", "Mon")]),
            "InvalidPreferredBackupPeriod.Malformed"
        );
        for v in ["6", "731", "0", "x"] {
            assert_eq!(
                code(&[("BackupRetentionPeriod", v)]),
                "InvalidBackupRetentionPeriod.Malformed"
            );
        }
        for (k, v) in [
            ("EnableBackupLog", "2"),
            ("LogBackupRetentionPeriod", "6"),
            ("LogBackupRetentionPeriod", "731"),
            ("SnapshotBackupType", "Fast"),
            ("BackupInterval", "45"),
            ("HighFrequencyBackupRetention", "0"),
            ("PreserveOneEachHour", "yes"),
            ("BackupRetentionPolicyOnClusterDeletion", "3"),
            ("InstanceType", "serverless"),
        ] {
            assert_eq!(code(&[(k, v)]), "InvalidParameter", "{k}={v}");
        }
        // BackupInterval must be -1 with Standard snapshots (the default type).
        assert_eq!(code(&[("BackupInterval", "60")]), "InvalidParameter");
        assert_eq!(
            code(&[("EnableCrossLogBackup", "1")]),
            "UnsupportedOperation"
        );
    }
}
