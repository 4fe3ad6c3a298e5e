//! Backup policy: DescribeBackupPolicy (ModifyBackupPolicy comes with the policies issue).

use ddsvault_api::Params;
use serde_json::{json, Map};

use crate::error::ActionError;
use crate::router::ActionResult;
use crate::state::AppState;

pub async fn describe_backup_policy(st: &AppState, p: &Params) -> ActionResult {
    let id = p.required("DBInstanceId")?;
    st.instance(id)?;
    let pol = st
        .catalog
        .get_policy(id)
        .await
        .map_err(ActionError::from)?
        .unwrap_or_default();
    let mut out = Map::new();
    out.insert(
        "PreferredBackupPeriod".into(),
        json!(pol.preferred_backup_period),
    );
    out.insert(
        "PreferredBackupTime".into(),
        json!(pol.preferred_backup_time),
    );
    // No scheduler runs automatic backups yet (policies issue), so no next backup time is promised.
    out.insert("PreferredNextBackupTime".into(), json!(""));
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
    Ok(out)
}
