//! Tiered ("advanced") backup policies: ModifyAdvancedBackupPolicy, DescribeAdvancedBackupPolicy,
//! ModifyAdvancedBackupStatus, DescribeAdvancedBackupStatus (dds-api.md §6.15–6.17).
//!
//! The whole call is validated before anything is stored; an invalid item refuses the call. ddsvault has one
//! repository, so geo-redundant (cross-region) policies answer `UnsupportedOperation`. Log policies are stored
//! and validated only: log backup is another issue.

use ddsvault_api::{ApiError, Params};
use ddsvault_catalog::advanced::{Retention, Schedule};
use ddsvault_catalog::policy::parse_backup_window;
use ddsvault_catalog::{AdvancedPolicy, BackupPolicy, DataPolicy, LogPolicy};
use serde_json::{json, Map, Value};

use super::policy::next_backup_answer;
use crate::error::ActionError;
use crate::router::ActionResult;
use crate::state::AppState;

const DATA: &str = "AdvancedBackupDataPolicies";
const LOG: &str = "AdvancedBackupLogPolicies";

async fn load(st: &AppState, id: &str) -> Result<(BackupPolicy, AdvancedPolicy), ActionError> {
    let (standard, advanced) = load_stored(st, id).await?;
    Ok((standard.unwrap_or_default(), advanced))
}

/// As [`load`], with the standard policy only if one is stored (automatic backups are opt-in).
async fn load_stored(
    st: &AppState,
    id: &str,
) -> Result<(Option<BackupPolicy>, AdvancedPolicy), ActionError> {
    let standard = st.catalog.get_policy(id).await?;
    let advanced = st
        .catalog
        .get_advanced_policy(id)
        .await?
        .unwrap_or_default();
    Ok((standard, advanced))
}

pub async fn describe_advanced_backup_policy(st: &AppState, p: &Params) -> ActionResult {
    let id = p.required("DBInstanceId")?;
    st.instance(id)?;
    let (stored, advanced) = load_stored(st, id).await?;
    let automatic = stored.is_some();
    let standard = stored.unwrap_or_default();
    let mut out = Map::new();
    out.insert("DBInstanceId".into(), json!(id));
    out.insert(
        "PreferredBackupTime".into(),
        json!(standard.preferred_backup_time),
    );
    out.insert(
        "PreferredNextBackupTime".into(),
        json!(next_backup_answer(st, id, &standard, Some(&advanced), automatic).await),
    );
    out.insert(
        "SnapshotBackupType".into(),
        json!(standard.snapshot_backup_type),
    );
    out.insert(
        "BackupRetentionPolicyOnClusterDeletion".into(),
        json!(standard.backup_retention_policy_on_cluster_deletion),
    );
    out.insert(
        DATA.into(),
        Value::Array(
            advanced
                .data_policies
                .iter()
                .map(|d| {
                    json!({
                        "PolicyId": d.policy_id,
                        "BackupPolicy": d.backup_policy,
                        "PreferredBackupPeriod": d.preferred_backup_period,
                        "RetentionType": d.retention_type,
                        "RetentionPeriod": d.retention_period,
                        "SrcType": d.src_type,
                        "SrcRegion": d.src_region,
                        "DestType": d.dest_type,
                        "DestRegion": d.dest_region,
                        "PreserveOneEachHour": d.preserve_one_each_hour,
                    })
                })
                .collect(),
        ),
    );
    out.insert(
        LOG.into(),
        Value::Array(
            advanced
                .log_policies
                .iter()
                .map(|l| {
                    json!({
                        "PolicyId": l.policy_id,
                        "EnableLogBackup": l.enable_log_backup,
                        "RetentionType": l.retention_type,
                        // Dds types this one as a string.
                        "RetentionPeriod": l.retention_period.to_string(),
                        "SrcType": l.src_type,
                        "SrcRegion": l.src_region,
                        "DestType": l.dest_type,
                        "DestRegion": l.dest_region,
                    })
                })
                .collect(),
        ),
    );
    Ok(out)
}

pub async fn modify_advanced_backup_policy(st: &AppState, p: &Params) -> ActionResult {
    let id = p.required("DBInstanceId")?;
    st.instance(id)?;
    let (standard, advanced) = load(st, id).await?;
    let (standard, advanced) = apply_advanced(standard, advanced, p, &st.region_id)?;
    st.catalog
        .put_advanced_policy(id, &standard, &advanced, chrono::Utc::now())
        .await
        .map_err(ActionError::from)?;
    tracing::info!(instance = %id, data_policies = advanced.data_policies.len(), log_policies = advanced.log_policies.len(), "advanced backup policy modified");
    Ok(Map::new())
}

pub async fn describe_advanced_backup_status(st: &AppState, p: &Params) -> ActionResult {
    let id = p.required("DBInstanceId")?;
    st.instance(id)?;
    let (_, advanced) = load(st, id).await?;
    let mut out = Map::new();
    out.insert(
        "Status".into(),
        json!(if advanced.enabled {
            "Enabled"
        } else {
            "Disabled"
        }),
    );
    Ok(out)
}

/// Turns advanced backup on (the action has no parameter to turn it off, as in Dds). Idempotent.
pub async fn modify_advanced_backup_status(st: &AppState, p: &Params) -> ActionResult {
    let id = p.required("DBInstanceId")?;
    st.instance(id)?;
    let (standard, mut advanced) = load(st, id).await?;
    if !advanced.enabled {
        advanced.enabled = true;
        st.catalog
            .put_advanced_policy(id, &standard, &advanced, chrono::Utc::now())
            .await
            .map_err(ActionError::from)?;
        tracing::info!(instance = %id, "advanced backup enabled");
    }
    Ok(Map::new())
}

fn bad(param: &str, why: String) -> ApiError {
    ApiError::invalid_parameter(param, &why)
}

/// A string field of an item; numbers and booleans are accepted in their text form (the old SDK sends whatever
/// the caller put in the list).
fn field(item: &Map<String, Value>, name: &str) -> Option<String> {
    match item.get(name)? {
        Value::String(s) if s.trim().is_empty() => None,
        Value::String(s) => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn int_field(item: &Map<String, Value>, param: &str, name: &str) -> Result<Option<i64>, ApiError> {
    field(item, name)
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| bad(param, format!("{name} {v:?} is not an integer.")))
        })
        .transpose()
}

fn bool_field(
    item: &Map<String, Value>,
    param: &str,
    name: &str,
) -> Result<Option<bool>, ApiError> {
    field(item, name)
        .map(|v| match v.as_str() {
            "true" | "True" => Ok(true),
            "false" | "False" => Ok(false),
            _ => Err(bad(param, format!("{name} {v:?} is not true or false."))),
        })
        .transpose()
}

/// Parses the JSON-array string the SDKs send for `param`.
fn items(p: &Params, param: &str) -> Result<Vec<Map<String, Value>>, ApiError> {
    let Some(raw) = p.opt_str(param) else {
        return Ok(Vec::new());
    };
    let parsed: Value = serde_json::from_str(raw)
        .map_err(|e| bad(param, format!("It must be a JSON array of objects: {e}.")))?;
    let Value::Array(list) = parsed else {
        return Err(bad(param, "It must be a JSON array of objects.".into()));
    };
    list.into_iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::Object(m) => Ok(m),
            _ => Err(bad(param, format!("Item {} is not an object.", i + 1))),
        })
        .collect()
}

/// Refuses geo-redundant (cross-region) settings: ddsvault has one repository. Same-region values are
/// `SrcType = db`, `DestType = level1`, and regions equal to ours (or absent).
fn same_region_only(item: &Map<String, Value>, region: &str) -> Result<(), ActionError> {
    let src = field(item, "SrcType");
    let dest = field(item, "DestType");
    if src.as_deref().is_some_and(|s| s != "db") || dest.as_deref().is_some_and(|d| d != "level1") {
        return Err(ActionError::CrossRegionNotSupported(format!(
            "SrcType={} DestType={}: geo-redundant (cross-region) backup policies are not supported; ddsvault keeps backups in one repository. Use SrcType=db, DestType=level1.",
            src.unwrap_or_default(),
            dest.unwrap_or_default()
        )));
    }
    for name in ["SrcRegion", "DestRegion"] {
        if let Some(r) = field(item, name).filter(|r| r != region) {
            return Err(ActionError::CrossRegionNotSupported(format!(
                "{name}={r}: backups stay in this ddsvault's region {region}; cross-region backup is not supported."
            )));
        }
    }
    Ok(())
}

fn check_data(d: &DataPolicy) -> Result<(), ApiError> {
    Schedule::parse(&d.backup_policy, &d.preferred_backup_period).map_err(|e| bad(DATA, e))?;
    Retention::parse(&d.retention_type, Some(d.retention_period)).map_err(|e| bad(DATA, e))?;
    Ok(())
}

/// Validates the whole call and returns the policies with it applied. Nothing is stored by this function.
///
/// The steps run in this order, and the first error refuses the call: the standard policy's fields, each data
/// policy item, the rules across data policies, each log policy item.
pub(crate) fn apply_advanced(
    mut standard: BackupPolicy,
    mut advanced: AdvancedPolicy,
    p: &Params,
    region: &str,
) -> Result<(BackupPolicy, AdvancedPolicy), ApiError> {
    apply_standard_fields(&mut standard, p)?;
    for (n, item) in items(p, DATA)?.iter().enumerate() {
        apply_data_item(&mut advanced, n, item, region)?;
    }
    check_data_policies(&standard, &advanced)?;
    for (n, item) in items(p, LOG)?.iter().enumerate() {
        apply_log_item(&mut advanced, n, item, region)?;
    }
    advanced.enabled = true;
    Ok((standard, advanced))
}

/// The standard policy's fields the call carries: `BackupRetentionPolicyOnClusterDeletion` (required),
/// `PreferredBackupTime`, `SnapshotBackupType`.
fn apply_standard_fields(standard: &mut BackupPolicy, p: &Params) -> Result<(), ApiError> {
    let deletion = p.required("BackupRetentionPolicyOnClusterDeletion")?;
    match deletion.trim().parse::<i64>() {
        Ok(v @ 0..=2) => standard.backup_retention_policy_on_cluster_deletion = v,
        _ => {
            return Err(ApiError::invalid_parameter(
                "BackupRetentionPolicyOnClusterDeletion",
                "Valid values: 0, 1, 2.",
            ))
        }
    }
    if let Some(v) = p.opt_str("PreferredBackupTime") {
        parse_backup_window(v).map_err(ActionError::InvalidBackupTime)?;
        standard.preferred_backup_time = v.to_string();
    }
    if let Some(v) = p.opt_str("SnapshotBackupType") {
        if v != "Flash" && v != "Standard" {
            return Err(ApiError::invalid_parameter(
                "SnapshotBackupType",
                "Valid values: Flash, Standard.",
            ));
        }
        standard.snapshot_backup_type = v.to_string();
    }
    Ok(())
}

/// Item `n` (0-based) of `AdvancedBackupDataPolicies`: CREATE, UPDATE or DELETE one data policy.
fn apply_data_item(
    advanced: &mut AdvancedPolicy,
    n: usize,
    item: &Map<String, Value>,
    region: &str,
) -> Result<(), ApiError> {
    let at = |why: String| bad(DATA, format!("Item {}: {why}", n + 1));
    let action = field(item, "ActionType")
        .ok_or_else(|| at("ActionType is required: CREATE, UPDATE or DELETE.".into()))?;
    let existing = |advanced: &AdvancedPolicy| -> Result<usize, ApiError> {
        let pid = field(item, "PolicyId")
            .ok_or_else(|| at(format!("PolicyId is required with {action}.")))?;
        advanced
            .data_policies
            .iter()
            .position(|d| d.policy_id == pid)
            .ok_or_else(|| at(format!("there is no data policy with PolicyId {pid:?}.")))
    };
    match action.as_str() {
        "DELETE" => {
            let i = existing(advanced)?;
            advanced.data_policies.remove(i);
            return Ok(());
        }
        "CREATE" | "UPDATE" => {}
        other => {
            return Err(at(format!(
                "ActionType {other:?} is not one of CREATE, UPDATE, DELETE."
            )))
        }
    }
    same_region_only(item, region)?;
    let mut d = if action == "CREATE" {
        for req in ["BackupPolicy", "PreferredBackupPeriod", "RetentionType"] {
            if field(item, req).is_none() {
                return Err(at(format!("{req} is required with CREATE.")));
            }
        }
        DataPolicy {
            src_type: "db".into(),
            dest_type: "level1".into(),
            src_region: region.to_string(),
            dest_region: region.to_string(),
            ..DataPolicy::default()
        }
    } else {
        advanced.data_policies[existing(advanced)?].clone()
    };
    if let Some(v) = field(item, "BackupPolicy") {
        d.backup_policy = v;
    }
    if let Some(v) = field(item, "PreferredBackupPeriod") {
        d.preferred_backup_period = v;
    }
    if let Some(v) = field(item, "RetentionType") {
        d.retention_type = v;
    }
    match int_field(item, DATA, "RetentionPeriod")? {
        Some(v) => d.retention_period = v,
        None if d.retention_type == "delay" && d.retention_period == 0 => {
            return Err(at(
                "RetentionPeriod is required when RetentionType is delay.".into(),
            ))
        }
        None => {}
    }
    if d.retention_type == "never" {
        d.retention_period = 0;
    }
    if let Some(v) = bool_field(item, DATA, "PreserveOneEachHour")? {
        d.preserve_one_each_hour = v;
    }
    check_data(&d).map_err(|e| at(e.message.clone()))?;
    if action == "CREATE" {
        advanced.last_policy_id += 1;
        d.policy_id = advanced.last_policy_id.to_string();
        advanced.data_policies.push(d);
    } else {
        let i = existing(advanced)?;
        advanced.data_policies[i] = d;
    }
    Ok(())
}

/// The rules across data policies: at most one high-frequency (`backupInterval`) policy, and only with Flash
/// snapshots.
fn check_data_policies(standard: &BackupPolicy, advanced: &AdvancedPolicy) -> Result<(), ApiError> {
    let intervals = advanced
        .data_policies
        .iter()
        .filter(|d| d.backup_policy == "backupInterval")
        .count();
    if intervals > 1 {
        return Err(bad(
            DATA,
            "At most one high-frequency (backupInterval) policy is allowed.".into(),
        ));
    }
    if intervals == 1 && standard.snapshot_backup_type != "Flash" {
        return Err(bad(
            DATA,
            "A backupInterval (high-frequency) policy needs SnapshotBackupType=Flash.".into(),
        ));
    }
    Ok(())
}

/// Item `n` (0-based) of `AdvancedBackupLogPolicies`: CREATE or UPDATE the instance's one log policy.
fn apply_log_item(
    advanced: &mut AdvancedPolicy,
    n: usize,
    item: &Map<String, Value>,
    region: &str,
) -> Result<(), ApiError> {
    let at = |why: String| bad(LOG, format!("Item {}: {why}", n + 1));
    match field(item, "ActionType").as_deref() {
        Some("CREATE" | "UPDATE") => {}
        Some(other) => {
            return Err(at(format!(
                "ActionType {other:?} is not one of CREATE, UPDATE."
            )))
        }
        None => return Err(at("ActionType is required: CREATE or UPDATE.".into())),
    }
    same_region_only(item, region)?;
    let enable = int_field(item, LOG, "EnableLogBackup")?
        .ok_or_else(|| at("EnableLogBackup is required: 1 or 0.".into()))?;
    if enable != 0 && enable != 1 {
        return Err(at("EnableLogBackup must be 1 or 0.".into()));
    }
    // Same-region log backup is one policy per instance: CREATE and UPDATE both set it.
    let mut l = advanced.log_policies.first().cloned().unwrap_or(LogPolicy {
        retention_type: "delay".into(),
        retention_period: 7,
        src_type: "db".into(),
        dest_type: "level1".into(),
        src_region: region.to_string(),
        dest_region: region.to_string(),
        ..LogPolicy::default()
    });
    l.enable_log_backup = enable;
    if let Some(v) = field(item, "RetentionType") {
        l.retention_type = v;
    }
    if let Some(v) = int_field(item, LOG, "RetentionPeriod")? {
        l.retention_period = v;
    }
    let retention = Retention::parse(&l.retention_type, Some(l.retention_period)).map_err(at)?;
    if retention == Retention::Never {
        l.retention_period = 0;
    }
    advanced.log_policies = vec![l];
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn params(kv: &[(&str, &str)]) -> Params {
        let mut m: BTreeMap<String, String> = kv
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        m.entry("BackupRetentionPolicyOnClusterDeletion".into())
            .or_insert_with(|| "0".into());
        Params::new(m)
    }

    fn apply(adv: AdvancedPolicy, kv: &[(&str, &str)]) -> Result<AdvancedPolicy, ApiError> {
        apply_advanced(BackupPolicy::default(), adv, &params(kv), "cn-hangzhou").map(|(_, a)| a)
    }

    fn refused(kv: &[(&str, &str)]) -> (String, String) {
        let e = apply(AdvancedPolicy::default(), kv).expect_err("must be refused");
        (e.code.clone(), e.message.clone())
    }

    #[test]
    fn create_update_delete_by_policy_id() {
        let a = apply(
            AdvancedPolicy::default(),
            &[(
                DATA,
                r#"[{"ActionType":"CREATE","BackupPolicy":"dayOfWeek","PreferredBackupPeriod":"1,4","RetentionType":"delay","RetentionPeriod":30},
                    {"ActionType": "CREATE", "BackupPolicy": "dayOfYear", "PreferredBackupPeriod": "01-07", "RetentionType": "never"}]"#,
            )],
        )
        .expect("valid");
        assert!(a.enabled);
        assert_eq!(
            a.data_policies
                .iter()
                .map(|d| (d.policy_id.as_str(), d.retention_period))
                .collect::<Vec<_>>(),
            vec![("1", 30), ("2", 0)]
        );
        assert_eq!(a.data_policies[0].src_region, "cn-hangzhou");
        let a = apply(
            a,
            &[(
                DATA,
                r#"[{"ActionType":"UPDATE","PolicyId":"1","RetentionPeriod":"60"},{"ActionType":"DELETE","PolicyId":"2"},
                    {"ActionType":"CREATE","BackupPolicy":"dayOfMonth","PreferredBackupPeriod":"-1","RetentionType":"delay","RetentionPeriod":365}]"#,
            )],
        )
        .expect("valid");
        assert_eq!(
            a.data_policies
                .iter()
                .map(|d| (
                    d.policy_id.as_str(),
                    d.backup_policy.as_str(),
                    d.retention_period
                ))
                .collect::<Vec<_>>(),
            vec![("1", "dayOfWeek", 60), ("3", "dayOfMonth", 365)]
        );
        // Ids are never reused.
        assert_eq!(a.last_policy_id, 3);
        let err =
            apply(a, &[(DATA, r#"[{"ActionType":"DELETE","PolicyId":"2"}]"#)]).expect_err("gone");
        assert!(err.message.contains("PolicyId \"2\""), "{}", err.message);
    }

    #[test]
    fn every_rule_is_checked() {
        for bad_items in [
            "not json",
            r#"{"ActionType":"CREATE"}"#,
            r#"[1]"#,
            r#"[{"BackupPolicy":"dayOfWeek"}]"#,
            r#"[{"ActionType":"MOVE"}]"#,
            r#"[{"ActionType":"UPDATE"}]"#,
            r#"[{"ActionType":"CREATE","BackupPolicy":"dayOfWeek","PreferredBackupPeriod":"1","RetentionType":"never"}]"#,
            r#"[{"ActionType":"CREATE","BackupPolicy":"dayOfYear","PreferredBackupPeriod":"01-07,01-08","RetentionType":"never"}]"#,
            r#"[{"ActionType":"CREATE","BackupPolicy":"dayOfMonth","PreferredBackupPeriod":"1","RetentionType":"delay","RetentionPeriod":6}]"#,
            r#"[{"ActionType":"CREATE","BackupPolicy":"dayOfMonth","PreferredBackupPeriod":"1","RetentionType":"delay","RetentionPeriod":7301}]"#,
            r#"[{"ActionType":"CREATE","BackupPolicy":"dayOfMonth","PreferredBackupPeriod":"1","RetentionType":"delay"}]"#,
            r#"[{"ActionType":"CREATE","BackupPolicy":"dayOfMonth","PreferredBackupPeriod":"1","RetentionType":"sometimes"}]"#,
            r#"[{"ActionType":"CREATE","BackupPolicy":"backupInterval","PreferredBackupPeriod":"45","RetentionType":"never"}]"#,
            // High-frequency needs Flash snapshots (the default is Standard).
            r#"[{"ActionType":"CREATE","BackupPolicy":"backupInterval","PreferredBackupPeriod":"30","RetentionType":"never"}]"#,
        ] {
            assert_eq!(
                refused(&[(DATA, bad_items)]).0,
                "InvalidParameter",
                "{bad_items}"
            );
        }
        let two_hf = r#"[{"ActionType":"CREATE","BackupPolicy":"backupInterval","PreferredBackupPeriod":"30","RetentionType":"never"},
                         {"ActionType":"CREATE","BackupPolicy":"backupInterval","PreferredBackupPeriod":"60","RetentionType":"never"}]"#;
        let (code, msg) = refused(&[(DATA, two_hf), ("SnapshotBackupType", "Flash")]);
        assert_eq!(code, "InvalidParameter");
        assert!(msg.contains("At most one"), "{msg}");
        let one_hf = r#"[{"ActionType":"CREATE","BackupPolicy":"backupInterval","PreferredBackupPeriod":"15","RetentionType":"delay","RetentionPeriod":7,"PreserveOneEachHour":true}]"#;
        let a = apply_advanced(
            BackupPolicy::default(),
            AdvancedPolicy::default(),
            &params(&[(DATA, one_hf), ("SnapshotBackupType", "Flash")]),
            "cn-hangzhou",
        )
        .expect("valid");
        assert_eq!(a.0.snapshot_backup_type, "Flash");
        assert!(a.1.data_policies[0].preserve_one_each_hour);
        for cross in [
            r#"[{"ActionType":"CREATE","BackupPolicy":"dayOfWeek","PreferredBackupPeriod":"1,2","RetentionType":"never","SrcType":"level1"}]"#,
            r#"[{"ActionType":"CREATE","BackupPolicy":"dayOfWeek","PreferredBackupPeriod":"1,2","RetentionType":"never","DestType":"level2Cross","DestRegion":"cn-beijing"}]"#,
            r#"[{"ActionType":"CREATE","BackupPolicy":"dayOfWeek","PreferredBackupPeriod":"1,2","RetentionType":"never","DestRegion":"cn-beijing"}]"#,
        ] {
            assert_eq!(
                refused(&[(DATA, cross)]).0,
                "UnsupportedOperation",
                "{cross}"
            );
        }
        let e = apply_advanced(
            BackupPolicy::default(),
            AdvancedPolicy::default(),
            &Params::new(BTreeMap::new()),
            "r",
        )
        .expect_err("missing");
        assert_eq!(e.code, "MissingParameter");
        assert!(e.message.contains("BackupRetentionPolicyOnClusterDeletion"));
        assert_eq!(
            refused(&[("BackupRetentionPolicyOnClusterDeletion", "3")]).0,
            "InvalidParameter"
        );
        assert_eq!(
            refused(&[("PreferredBackupTime", "03:00Z-05:00Z")]).0,
            "InvalidPreferredBackupTime.Malformed"
        );
    }

    #[test]
    fn log_policies_are_validated_and_stored() {
        let a = apply(
            AdvancedPolicy::default(),
            &[(
                LOG,
                r#"[{"ActionType":"CREATE","EnableLogBackup":1,"RetentionType":"delay","RetentionPeriod":30}]"#,
            )],
        )
        .expect("valid");
        assert_eq!(a.log_policies.len(), 1);
        assert_eq!(
            (
                a.log_policies[0].enable_log_backup,
                a.log_policies[0].retention_period
            ),
            (1, 30)
        );
        let a = apply(
            a,
            &[(LOG, r#"[{"ActionType":"UPDATE","EnableLogBackup":"0"}]"#)],
        )
        .expect("valid");
        assert_eq!(
            (
                a.log_policies.len(),
                a.log_policies[0].enable_log_backup,
                a.log_policies[0].retention_period
            ),
            (1, 0, 30)
        );
        for bad_items in [
            r#"[{"ActionType":"DELETE","EnableLogBackup":1}]"#,
            r#"[{"ActionType":"CREATE"}]"#,
            r#"[{"ActionType":"CREATE","EnableLogBackup":2}]"#,
            r#"[{"ActionType":"CREATE","EnableLogBackup":1,"RetentionType":"delay","RetentionPeriod":5}]"#,
        ] {
            assert_eq!(
                refused(&[(LOG, bad_items)]).0,
                "InvalidParameter",
                "{bad_items}"
            );
        }
        assert_eq!(
            refused(&[(
                LOG,
                r#"[{"ActionType":"CREATE","EnableLogBackup":1,"DestType":"level2Cross"}]"#
            )])
            .0,
            "UnsupportedOperation"
        );
    }
}
