//! Copies of backups in a second repository (`[[repository.copies]]`, Dds' cross-region backup): the
//! cross-region settings of ModifyBackupPolicy and the copy jobs.

use chrono::{DateTime, Utc};

/// How long copies in a destination region are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrossRetention {
    /// `CrossRetentionType=delay`: this many days after the backup ended.
    Days(i64),
    /// `CrossRetentionType=never`: kept forever.
    Never,
}

/// The cross-region settings of one instance for one destination region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrossRegionPolicy {
    pub instance_id: String,
    pub dest_region: String,
    pub src_region: String,
    /// `false` after `CrossBackupType=delete`: no new copies.
    pub enabled: bool,
    /// Weekdays (`Monday`…`Sunday`, comma-separated) whose backups are copied; empty: every day.
    pub backup_period: String,
    pub retention: CrossRetention,
    pub updated_at: DateTime<Utc>,
}

/// State of a copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyStatus {
    /// Waiting for its (next) attempt.
    Pending,
    /// Copied and verified in the destination.
    Success,
    /// Given up after the last attempt.
    Failed,
}

impl CopyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CopyStatus::Pending => "Pending",
            CopyStatus::Success => "Success",
            CopyStatus::Failed => "Failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Pending" => Some(CopyStatus::Pending),
            "Success" => Some(CopyStatus::Success),
            "Failed" => Some(CopyStatus::Failed),
            _ => None,
        }
    }
}

/// A copy of a backup in a destination region (a job until it succeeds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupCopy {
    pub backup_id: i64,
    pub dest_region: String,
    pub instance_id: String,
    pub status: CopyStatus,
    pub attempts: i64,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: String,
    /// The source backup's method, start and end (kept: the copy outlives the source's row).
    pub method: crate::BackupMethod,
    pub start_time: DateTime<Utc>,
    pub end_time: Option<DateTime<Utc>>,
    /// Bytes stored in the destination (0 until copied).
    pub size: i64,
    /// When the copy expires (`None`: never).
    pub expire_time: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub copied_at: Option<DateTime<Utc>>,
}
