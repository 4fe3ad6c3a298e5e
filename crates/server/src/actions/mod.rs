//! The Dds actions, one file per family. `Action` is the table of every action ddsvault knows: implemented ones
//! dispatch to their handler; known Dds backup actions that are not implemented yet answer a documented
//! `UnsupportedOperation` instead of pretending to succeed.

mod advanced;
pub(crate) mod backup;
mod drill;
mod instance;
mod pitr;
mod policy;
mod provision;
pub(crate) mod registered;
mod restore;
mod retention;

use ddsvault_api::{ApiError, Params};

use crate::error::ActionError;
use crate::router::ActionResult;
use crate::state::AppState;

macro_rules! actions {
    ($($name:ident),* $(,)?) => {
        /// Every action name ddsvault recognises.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Action { $($name),* }

        impl Action {
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $(stringify!($name) => Some(Action::$name),)*
                    _ => None,
                }
            }

            pub fn name(self) -> &'static str {
                match self {
                    $(Action::$name => stringify!($name),)*
                }
            }
        }
    };
}

actions!(
    CreateBackup,
    DescribeBackups,
    DescribeBackupTasks,
    DescribeBackupPolicy,
    DescribeDBInstances,
    DescribeDBInstanceAttribute,
    RestoreDBInstance,
    DescribeBackupDBs,
    // ddsvault extension: follow restore jobs.
    DescribeRestoreTasks,
    ModifyBackupPolicy,
    DeleteBackup,
    ModifyBackupExpireTime,
    DescribeAdvancedBackupPolicy,
    ModifyAdvancedBackupPolicy,
    DescribeAdvancedBackupStatus,
    ModifyAdvancedBackupStatus,
    // ddsvault extension: the retention lock.
    ModifyBackupRetentionLock,
    DescribeBackupRetentionLock,
    DescribeBackupStorage,
    // Point-in-time recovery (docs/pitr.md).
    DescribeClusterRecoverTime,
    DescribeInstanceRecoverTime,
    CheckRecoveryCondition,
    // Known Dds backup actions, answered with UnsupportedOperation until their issue lands.
    DescribeClusterBackups,
    TransferClusterBackup,
    DescribeBinlogFiles,
    // Restores into a new instance ddsvault runs (docs/provisioning.md); UnsupportedOperation without
    // [provisioning].
    CreateDBInstance,
    DeleteDBInstance,
    DescribeRestoreDBInstanceList,
    // ddsvault extension: instances registered at run time (docs/instances.md).
    RegisterDBInstance,
    ModifyRegisteredDBInstance,
    UnregisterDBInstance,
    // ddsvault extension: restore drills (docs/drills.md).
    StartRestoreDrill,
    DescribeRestoreDrills,
);

impl Action {
    /// The parameters naming the instances the action touches: each one's ARN is a RAM resource that must be
    /// allowed. A call naming none is authorized on `*`.
    pub fn instance_params(self) -> &'static [&'static str] {
        match self {
            Action::DescribeBackupDBs | Action::CheckRecoveryCondition => &["SourceDBInstance"],
            Action::CreateDBInstance => &["SrcDBInstanceId"],
            Action::RestoreDBInstance | Action::StartRestoreDrill => {
                &["DBInstanceId", "TargetDBInstanceId"]
            }
            // A drill target's contents are replaced by every drill: pointing drills at it needs access to it.
            Action::ModifyBackupPolicy => &["DBInstanceId", "RestoreDrillTarget"],
            _ => &["DBInstanceId"],
        }
    }
}

pub async fn dispatch(st: &AppState, act: Action, p: &Params) -> ActionResult {
    match act {
        Action::CreateBackup => backup::create_backup(st, p).await,
        Action::DescribeBackups => backup::describe_backups(st, p).await,
        Action::DescribeBackupTasks => backup::describe_backup_tasks(st, p).await,
        Action::DescribeBackupStorage => backup::describe_backup_storage(st, p).await,
        Action::DescribeBackupPolicy => policy::describe_backup_policy(st, p).await,
        Action::ModifyBackupPolicy => policy::modify_backup_policy(st, p).await,
        Action::DeleteBackup => retention::delete_backup(st, p).await,
        Action::ModifyBackupExpireTime => retention::modify_backup_expire_time(st, p).await,
        Action::DescribeAdvancedBackupPolicy => {
            advanced::describe_advanced_backup_policy(st, p).await
        }
        Action::ModifyAdvancedBackupPolicy => advanced::modify_advanced_backup_policy(st, p).await,
        Action::DescribeAdvancedBackupStatus => {
            advanced::describe_advanced_backup_status(st, p).await
        }
        Action::ModifyAdvancedBackupStatus => advanced::modify_advanced_backup_status(st, p).await,
        Action::ModifyBackupRetentionLock => retention::modify_backup_retention_lock(st, p).await,
        Action::DescribeBackupRetentionLock => {
            retention::describe_backup_retention_lock(st, p).await
        }
        Action::DescribeDBInstances => instance::describe_db_instances(st, p).await,
        Action::DescribeDBInstanceAttribute => {
            instance::describe_db_instance_attribute(st, p).await
        }
        Action::RestoreDBInstance => restore::restore_db_instance(st, p).await,
        Action::DescribeRestoreTasks => restore::describe_restore_tasks(st, p).await,
        Action::DescribeBackupDBs => restore::describe_backup_dbs(st, p).await,
        Action::DescribeInstanceRecoverTime | Action::DescribeClusterRecoverTime => {
            pitr::describe_recover_time(st, p).await
        }
        Action::CheckRecoveryCondition => pitr::check_recovery_condition(st, p).await,
        Action::CreateDBInstance => provision::create_db_instance(st, p).await,
        Action::DeleteDBInstance => provision::delete_db_instance(st, p).await,
        Action::DescribeRestoreDBInstanceList => {
            provision::describe_restore_db_instance_list(st, p).await
        }
        Action::RegisterDBInstance => registered::register_db_instance(st, p).await,
        Action::ModifyRegisteredDBInstance => {
            registered::modify_registered_db_instance(st, p).await
        }
        Action::UnregisterDBInstance => registered::unregister_db_instance(st, p).await,
        Action::StartRestoreDrill => drill::start_restore_drill(st, p).await,
        Action::DescribeRestoreDrills => drill::describe_restore_drills(st, p).await,
        other => Err(ActionError::ActionNotImplemented(other.name().to_string()).into()),
    }
}

/// Formats a time the way Dds answers it: `yyyy-MM-ddTHH:mm:ssZ` (UTC).
pub(crate) fn dds_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Validates `PageNumber` (≥ 1, default 1) and `PageSize` (30 | 50 | 100, default 30) as Dds does.
pub(crate) fn page(p: &Params) -> Result<ddsvault_catalog::Page, ApiError> {
    let number = p.opt_i64("PageNumber")?.unwrap_or(1);
    if number < 1 || number > i64::from(u32::MAX) {
        return Err(ApiError::invalid_parameter(
            "PageNumber",
            "It must be a positive integer.",
        ));
    }
    let size = p.opt_i64("PageSize")?.unwrap_or(30);
    if ![30, 50, 100].contains(&size) {
        return Err(ApiError::invalid_parameter(
            "PageSize",
            "Valid values: 30, 50, 100.",
        ));
    }
    Ok(ddsvault_catalog::Page {
        number: number as u32,
        size: size as u32,
    })
}

/// ddsvault extension fields of the task APIs: the phase and counters of a job (`Phase`, `DocsDone`, `DocsTotal`,
/// `BytesDone`, `BytesTotal`, `OplogEntries`; totals are estimates, 0 when unknown), as its heartbeat last wrote
/// them. A job not started yet is `Pending`; a finished one keeps the counters of its last phase.
pub(crate) fn add_progress_detail(item: &mut serde_json::Value, j: &ddsvault_catalog::Job) {
    let d = &j.progress_detail;
    let num = |k: &str| d.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    let phase = match j.state {
        ddsvault_catalog::JobState::Pending => "Pending",
        ddsvault_catalog::JobState::Success => "Finished",
        _ => d
            .get("phase")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("Preparing"),
    };
    if let serde_json::Value::Object(m) = item {
        m.insert("Phase".into(), serde_json::json!(phase));
        m.insert("DocsDone".into(), serde_json::json!(num("docs_done")));
        m.insert("DocsTotal".into(), serde_json::json!(num("docs_total")));
        m.insert("BytesDone".into(), serde_json::json!(num("bytes_done")));
        m.insert("BytesTotal".into(), serde_json::json!(num("bytes_total")));
        m.insert(
            "OplogEntries".into(),
            serde_json::json!(num("oplog_entries")),
        );
    }
}
