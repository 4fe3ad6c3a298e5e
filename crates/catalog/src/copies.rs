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
    /// The instance whose backups are copied.
    pub instance_id: String,
    /// The destination region (`CrossBackupRegion`), a `[[repository.copies]]` region.
    pub dest_region: String,
    /// The region the backups are taken in.
    pub src_region: String,
    /// `false` after `CrossBackupType=delete`: no new copies.
    pub enabled: bool,
    /// Weekdays (`Monday`…`Sunday`, comma-separated) whose backups are copied; empty: every day.
    pub backup_period: String,
    /// How long copies in the destination are kept.
    pub retention: CrossRetention,
    /// When the settings last changed.
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
    /// The stored name, e.g. `Pending`.
    pub fn as_str(self) -> &'static str {
        match self {
            CopyStatus::Pending => "Pending",
            CopyStatus::Success => "Success",
            CopyStatus::Failed => "Failed",
        }
    }

    /// The status a stored name denotes; `None` for any other string.
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
    /// The source backup set.
    pub backup_id: i64,
    /// The destination region.
    pub dest_region: String,
    /// The instance the source backup is of.
    pub instance_id: String,
    /// Where the copy is.
    pub status: CopyStatus,
    /// Attempts made so far (retried with exponential backoff up to the jobs layer's limit).
    pub attempts: i64,
    /// When the next attempt is due.
    pub next_attempt_at: DateTime<Utc>,
    /// The last attempt's error; empty when none failed.
    pub last_error: String,
    /// The source backup's method, start and end (kept: the copy outlives the source's row).
    pub method: crate::BackupMethod,
    /// See `method`.
    pub start_time: DateTime<Utc>,
    /// See `method`; `None` when the source had not ended.
    pub end_time: Option<DateTime<Utc>>,
    /// Bytes stored in the destination (0 until copied).
    pub size: i64,
    /// When the copy expires (`None`: never).
    pub expire_time: Option<DateTime<Utc>>,
    /// When the copy job was recorded.
    pub created_at: DateTime<Utc>,
    /// When the copy succeeded; `None` until then.
    pub copied_at: Option<DateTime<Utc>>,
}
