//! Record types stored in the catalog.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// An AccessKey and whom it belongs to. `user == "root"` is the account itself.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessKeyRecord {
    /// The AccessKeyId.
    pub id: String,
    /// The secret as stored, in `secret_format`: the catalog never interprets it (encryption is the server's).
    pub secret: String,
    /// [`SECRET_PLAIN`] for rows written before encryption at rest, else the cipher tag of the writer.
    pub secret_format: String,
    /// The RAM user the key belongs to; `root` for the account itself.
    pub user: String,
    /// Whether the key may sign requests (`Active`); false for an `Inactive` key.
    pub active: bool,
    /// `config` for keys from the configuration file, `generated` for the root key created on first start, `cli`
    /// for keys created at run time.
    pub source: String,
    /// When the key was created.
    pub created_at: DateTime<Utc>,
    /// Coarse: updated at most about once a minute per key by each server.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// `secret_format` of a secret stored in clear (only rows from before encryption at rest).
pub const SECRET_PLAIN: &str = "plain";

impl std::fmt::Debug for AccessKeyRecord {
    // Hand-written so that a stray `{:?}` can never print a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKeyRecord")
            .field("id", &self.id)
            .field("secret", &"***")
            .field("secret_format", &self.secret_format)
            .field("user", &self.user)
            .field("active", &self.active)
            .field("source", &self.source)
            .field("last_used_at", &self.last_used_at)
            .finish()
    }
}

/// A RAM user (the account itself, `root`, is not one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RamUserRecord {
    /// The user name (unique).
    pub name: String,
    /// A free-form display name; empty when none was given.
    pub display_name: String,
    /// `config` (managed by the configuration file) or `cli`.
    pub source: String,
    /// When the user was created.
    pub created_at: DateTime<Utc>,
}

/// A RAM group: users in it inherit the policies attached to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RamGroupRecord {
    /// The group name (unique).
    pub name: String,
    /// `config` (managed by the configuration file) or `cli`.
    pub source: String,
    /// When the group was created.
    pub created_at: DateTime<Utc>,
}

/// A custom RAM policy; `document` is the policy JSON, validated by the writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RamPolicyRecord {
    /// The policy name (unique).
    pub name: String,
    /// The RAM policy JSON, validated before it is stored.
    pub document: String,
    /// `config` (managed by the configuration file) or `cli`.
    pub source: String,
    /// When the policy was created.
    pub created_at: DateTime<Utc>,
}

/// What a policy can be attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PrincipalKind {
    /// A RAM user (stored as `user`).
    User,
    /// A RAM group (stored as `group`).
    Group,
}

impl PrincipalKind {
    /// The stored name: `user` or `group`.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::Group => "group",
        }
    }

    /// The kind a stored name denotes; `None` for any other string.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(PrincipalKind::User),
            "group" => Some(PrincipalKind::Group),
            _ => None,
        }
    }
}

/// A policy attached to a user or a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyAttachment {
    /// The attached policy's name.
    pub policy: String,
    /// Whether `principal` names a user or a group.
    pub kind: PrincipalKind,
    /// The user or group name the policy is attached to.
    pub principal: String,
    /// `config` (managed by the configuration file) or `cli`.
    pub source: String,
}

/// A user's membership of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMember {
    /// The group's name.
    pub group: String,
    /// The member user's name.
    pub user: String,
    /// `config` (managed by the configuration file) or `cli`.
    pub source: String,
}

/// Every identity at one instant (read in one transaction), with the version it had then.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentitySnapshot {
    /// The identity version the snapshot was read at (bumped by every identity change).
    pub version: i64,
    /// Every AccessKey, secrets in their stored form.
    pub keys: Vec<AccessKeyRecord>,
    /// Every RAM user.
    pub users: Vec<RamUserRecord>,
    /// Every RAM group.
    pub groups: Vec<RamGroupRecord>,
    /// Every custom RAM policy.
    pub policies: Vec<RamPolicyRecord>,
    /// Every policy attachment to a user or group.
    pub attachments: Vec<PolicyAttachment>,
    /// Every group membership.
    pub members: Vec<GroupMember>,
}

/// The identities the configuration file declares; input of
/// [`crate::CatalogBackend::sync_config_identities`]. Every record's source is taken to be `config`.
#[derive(Clone, Debug, Default)]
pub struct ConfigIdentities {
    /// Names of the RAM users the configuration declares.
    pub users: Vec<String>,
    /// Policy name → document.
    pub policies: Vec<(String, String)>,
    /// (policy, user) pairs.
    pub user_policies: Vec<(String, String)>,
    /// Secrets already in their stored form.
    pub keys: Vec<AccessKeyRecord>,
}

/// What the catalog keeps of a registered instance (the connection URI stays in the configuration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceRecord {
    /// The instance id (as configured, provisioned or registered).
    pub id: String,
    /// When the instance was first recorded in the catalog.
    pub created_at: DateTime<Utc>,
}

/// The standard Dds backup policy of an instance (dds-api.md §6.6). Stored as JSON so later fields need no
/// migration; absent fields take the Dds defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct BackupPolicy {
    /// `PreferredBackupPeriod`: comma-separated weekdays (`Monday`…`Sunday`) automatic backups run on.
    pub preferred_backup_period: String,
    /// `PreferredBackupTime`: the one-hour UTC window, e.g. `03:00Z-04:00Z`.
    pub preferred_backup_time: String,
    /// `BackupRetentionPeriod`: days a backup set is kept.
    pub backup_retention_period: i64,
    /// `EnableBackupLog`: 1 when continuous log (oplog) backup is on, 0 when off.
    pub enable_backup_log: i64,
    /// `LogBackupRetentionPeriod`: days log backups are kept.
    pub log_backup_retention_period: i64,
    /// `SnapshotBackupType`: `Standard` or `Flash` (high-frequency backup needs `Flash`).
    pub snapshot_backup_type: String,
    /// `BackupInterval`: minutes between high-frequency backups (15, 30, 60, 120, 180, 240, 360, 480 or 720); -1 = off.
    pub backup_interval: i64,
    /// `HighFrequencyBackupRetention`: days high-frequency backups are kept (1–730).
    pub high_frequency_backup_retention: i64,
    /// `PreserveOneEachHour`: whether one high-frequency backup per hour is kept.
    pub preserve_one_each_hour: bool,
    /// `BackupRetentionPolicyOnClusterDeletion`: 0, 1 or 2, as the Dds API defines it.
    pub backup_retention_policy_on_cluster_deletion: i64,
}

impl Default for BackupPolicy {
    /// Dds defaults for instances created after 2021-09-10: 30 days retention, daily in one UTC hour, log backup
    /// off, standard snapshots, no high-frequency backup.
    fn default() -> Self {
        Self {
            preferred_backup_period: "Monday,Tuesday,Wednesday,Thursday,Friday,Saturday,Sunday"
                .into(),
            preferred_backup_time: "03:00Z-04:00Z".into(),
            backup_retention_period: 30,
            enable_backup_log: 0,
            log_backup_retention_period: 7,
            snapshot_backup_type: "Standard".into(),
            backup_interval: -1,
            high_frequency_backup_retention: 1,
            preserve_one_each_hour: false,
            backup_retention_policy_on_cluster_deletion: 0,
        }
    }
}

/// Lifecycle of a job. A job is claimable only while Pending; only Running jobs carry an owner and heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    /// Created, waiting to be claimed.
    Pending,
    /// Claimed by a process, which holds its lease.
    Running,
    /// Finished successfully.
    Success,
    /// Finished with an error (`error`, `error_code`).
    Failed,
}

impl JobState {
    /// The stored name, e.g. `Pending`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "Pending",
            JobState::Running => "Running",
            JobState::Success => "Success",
            JobState::Failed => "Failed",
        }
    }

    /// The state a stored name denotes; `None` for any other string.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "Pending" => JobState::Pending,
            "Running" => JobState::Running,
            "Success" => JobState::Success,
            "Failed" => JobState::Failed,
            _ => return None,
        })
    }
}

/// What a job does. Stored in `jobs.kind` as [`JobKind::as_str`]; the runner dispatches on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// Takes a backup set (its method is the set's [`BackupMethod`]).
    Backup,
    /// Restores a backup set (or a point in time) into an instance.
    Restore,
    /// Creates a new instance from a backup (CreateDBInstance).
    Provision,
    /// Restores a backup into a scratch instance and compares it with what the backup recorded (docs/drills.md).
    Drill,
}

impl JobKind {
    /// Every kind, for exhaustive listings (metrics, tests).
    pub const ALL: [JobKind; 4] = [
        JobKind::Backup,
        JobKind::Restore,
        JobKind::Provision,
        JobKind::Drill,
    ];

    /// The stored (and logged) name.
    pub const fn as_str(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::Restore => "restore",
            JobKind::Provision => "provision",
            JobKind::Drill => "drill",
        }
    }

    /// The kind a stored name denotes; `None` for a name no version of ddsvault writes.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a backup set is taken: the Dds `BackupMethod` values, stored as they are answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BackupMethod {
    /// A mongodump-compatible archive read through the wire protocol.
    Logical,
    /// A consistent copy of the server's data files.
    Physical,
    /// A deduplicated, incremental copy of the data files (chunks shared between sets).
    Snapshot,
}

impl BackupMethod {
    /// Every method, for exhaustive listings (metrics, tests).
    pub const ALL: [BackupMethod; 3] = [
        BackupMethod::Logical,
        BackupMethod::Physical,
        BackupMethod::Snapshot,
    ];

    /// The name stored in the catalog and answered by the API.
    pub const fn as_str(self) -> &'static str {
        match self {
            BackupMethod::Logical => "Logical",
            BackupMethod::Physical => "Physical",
            BackupMethod::Snapshot => "Snapshot",
        }
    }

    /// The method a stored or requested name denotes (exact case, as Dds answers it); `None` otherwise.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// Physical and Snapshot sets are copies of data files (restored by materializing them), Logical ones are not.
    pub const fn is_file_level(self) -> bool {
        matches!(self, BackupMethod::Physical | BackupMethod::Snapshot)
    }
}

/// How a logical archive is compressed: `[backup] compression` and a backup job's `compression` parameter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchiveCompression {
    /// Zstandard (the default).
    #[default]
    Zstd,
    /// Gzip, as mongodump `--gzip` writes.
    Gzip,
}

/// The databases CreateBackup listed for a job, so that a job starting soon after need not list them again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseListing {
    /// The database names.
    pub databases: Vec<String>,
    /// When they were listed (ms since the epoch).
    pub at_ms: i64,
}

/// The parameters of a backup job (`jobs.params`), written by CreateBackup and the scheduler, read by the job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupJobParams {
    /// How the set is taken.
    pub method: BackupMethod,
    /// Days the set is kept; -1 = permanent.
    #[serde(default = "default_retention_days")]
    pub retention_days: i64,
    /// Logical archives only; unset: the process's `[backup] compression`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<ArchiveCompression>,
    /// The databases CreateBackup already listed; unset: the job lists them itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listing: Option<DatabaseListing>,
    /// Automatic backups: which schedule made the job ([`SCHEDULE_HIGH_FREQUENCY`] or the daily one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Automatic backups: the retention tiers the slot belongs to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<String>,
    /// Automatic backups: the slot, `YYYY-MM-DDTHH:MM:SSZ`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// `ddsvault import`: the mongodump archive the set was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<ImportSource>,
}

/// Where an imported backup set came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportSource {
    /// The path of the mongodump archive, as given to `ddsvault import`.
    pub file: String,
}

fn default_retention_days() -> i64 {
    // What jobs written before the parameter existed were kept for.
    30
}

/// A database or a collection a restore selects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreSelection {
    /// The database name.
    pub db: String,
    /// One collection of `db`; `None`: the whole database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
}

/// The parameters of a restore or provision job (`jobs.params`), written by the restore actions and
/// CreateDBInstance, read by the job.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreJobParams {
    /// The instance the backup was taken of.
    #[serde(default)]
    pub source_instance: String,
    /// The backup's method (file-level restores and CreateDBInstance record it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<BackupMethod>,
    /// Drop each restored collection first (logical restores).
    #[serde(default)]
    pub drop: bool,
    /// What to restore; empty: everything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub select: Vec<RestoreSelection>,
    /// Point-in-time restores: the second (Unix time) to restore to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_time: Option<u32>,
    /// CreateDBInstance's `RestoreType` as requested (`0` backup, `1` time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_type: Option<String>,
    /// Whether a logical restore replays the backup's oplog up to its consistent point; `None`: it does. A restore
    /// drill sets `false`, to compare the collections with what the dump read before any entry changes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_oplog: Option<bool>,
}

impl BackupJobParams {
    /// A job of `method` kept `retention_days`, with nothing else set.
    pub fn new(method: BackupMethod, retention_days: i64) -> Self {
        Self {
            method,
            retention_days,
            compression: None,
            listing: None,
            schedule: None,
            tiers: Vec::new(),
            slot: None,
            import: None,
        }
    }

    /// The stored form.
    pub fn to_value(&self) -> serde_json::Value {
        // Serializing plain enums, strings and numbers cannot fail.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

impl RestoreJobParams {
    /// The stored form.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

impl Job {
    /// The parameters of a backup job; [`crate::CatalogError::Corrupt`] when they are not a backup's.
    pub fn backup_params(&self) -> Result<BackupJobParams, crate::CatalogError> {
        self.params_as()
    }

    /// The parameters of a restore or provision job; [`crate::CatalogError::Corrupt`] when they are not one's.
    pub fn restore_params(&self) -> Result<RestoreJobParams, crate::CatalogError> {
        self.params_as()
    }

    /// `params` read as `T`; [`crate::CatalogError::Corrupt`] when they do not parse.
    fn params_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, crate::CatalogError> {
        serde_json::from_value(self.params.clone())
            .map_err(|e| crate::CatalogError::Corrupt(format!("job {} parameters: {e}", self.id)))
    }

    /// The method a job names: a backup's, or the backup a restore reads when it recorded it.
    pub fn method(&self) -> Option<BackupMethod> {
        self.params
            .get("method")
            .and_then(|m| serde_json::from_value(m.clone()).ok())
    }
}

/// Decodes a stored job kind; an unknown name means the catalog was written by something else.
pub(crate) fn decode_kind(s: &str) -> Result<JobKind, crate::CatalogError> {
    JobKind::parse(s).ok_or_else(|| crate::CatalogError::Corrupt(format!("job kind {s:?}")))
}

/// Decodes a stored backup method.
pub(crate) fn decode_method(s: &str) -> Result<BackupMethod, crate::CatalogError> {
    BackupMethod::parse(s)
        .ok_or_else(|| crate::CatalogError::Corrupt(format!("backup method {s:?}")))
}

impl std::fmt::Display for BackupMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A unit of work stored in the catalog.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    /// Catalog-assigned, increasing.
    pub id: i64,
    /// What the job does.
    pub kind: JobKind,
    /// The instance the job works on (a restore's target).
    pub instance_id: String,
    /// The backup set the job writes or reads, if any.
    pub backup_id: Option<i64>,
    /// Where the job is in its lifecycle.
    pub state: JobState,
    /// `Manual` | `Automated`.
    pub mode: String,
    /// Percent, 0–100.
    pub progress: i32,
    /// The phase and counters of a running job as its heartbeat last wrote them (`Null` until then); the jobs
    /// layer defines the shape.
    pub progress_detail: serde_json::Value,
    /// The failure message; `None` unless the job failed.
    pub error: Option<String>,
    /// The source of the failure (e.g. `Repository.NoSpace`); `None` unless the job failed.
    pub error_code: Option<String>,
    /// Kind-specific parameters, e.g. the backup method and compression.
    pub params: serde_json::Value,
    /// When the job was created.
    pub created_at: DateTime<Utc>,
    /// When a process claimed it; `None` while Pending.
    pub started_at: Option<DateTime<Utc>>,
    /// When it succeeded or failed; `None` until then.
    pub finished_at: Option<DateTime<Utc>>,
    /// The node id of the process holding it; `None` unless Running.
    pub owner: Option<String>,
    /// When the holder last reported progress; `None` until it did.
    pub heartbeat_at: Option<DateTime<Utc>>,
    /// What a finished job produced (e.g. a restore summary); `Null` until then.
    pub result: serde_json::Value,
    /// Until when `owner` holds the job (renewed while it runs); another process may take over a Running job once
    /// this has passed. `None` for a job never claimed.
    pub lease_until: Option<DateTime<Utc>>,
    /// The fencing token of the current holder: one more at every claim and takeover. Every write of the job's
    /// progress, result or state names it, so a holder that lost its lease cannot commit anything.
    pub lease_token: i64,
}

impl Job {
    /// The `ErrorCode` the task APIs answer: the failure's code for a Failed job ([`JOB_ERROR_CODE`] when it was
    /// recorded without one), "" for any other state.
    pub fn answered_error_code(&self) -> &str {
        match self.state {
            JobState::Failed => self.error_code.as_deref().unwrap_or(JOB_ERROR_CODE),
            _ => "",
        }
    }
}

/// A Running job [`crate::CatalogBackend::recover_expired`] took over: it is now held by the recovering process (new
/// fencing token, fresh lease), which cleans up what it left and fails it.
#[derive(Clone, Debug, PartialEq)]
pub struct RecoveredJob {
    /// The job as it is after the takeover.
    pub job: Job,
    /// The node that held it before (whose lease expired, or this node's previous life).
    pub previous_owner: Option<String>,
}

/// The code of a job failure whose source is not known more precisely (also the code of failures recorded
/// before codes were kept).
pub const JOB_ERROR_CODE: &str = "Job.Failed";
/// The code of a job failed because the process running it stopped (found by recovery).
pub const JOB_INTERRUPTED_CODE: &str = "Job.Interrupted";

/// Status of a backup set as DescribeBackups shows it; `Running` and `Deleting` sets are not listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupStatus {
    /// Being taken.
    Running,
    /// Taken completely; listed, downloadable and restorable.
    Success,
    /// Taking it failed (the reason is in `details`).
    Failed,
    /// Being removed (expired or `DeleteBackup`): its files may be partly gone. The row is deleted last.
    Deleting,
}

impl BackupStatus {
    /// The stored and answered name, e.g. `Success`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackupStatus::Running => "Running",
            BackupStatus::Success => "Success",
            BackupStatus::Failed => "Failed",
            BackupStatus::Deleting => "Deleting",
        }
    }

    /// The status a stored name denotes; `None` for any other string.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "Running" => BackupStatus::Running,
            "Success" => BackupStatus::Success,
            "Failed" => BackupStatus::Failed,
            "Deleting" => BackupStatus::Deleting,
            _ => return None,
        })
    }
}

/// Outcome of [`crate::CatalogBackend::mark_backup_deleting`].
#[derive(Clone, Debug, PartialEq)]
pub enum DeleteMark {
    /// The backup is now (or already was) `Deleting`; its files may be removed, then its row.
    Marked(Box<Backup>),
    /// A pending or running restore (or restore drill) job reads the backup: it was left untouched.
    InUse {
        /// The pending or running job that reads the backup.
        job_id: i64,
    },
    /// The backup is still being taken.
    Running,
    /// No such backup.
    NotFound,
    /// The instance's retention lock holds (only [`crate::CatalogBackend::mark_backup_deleting_unless_locked`]);
    /// `unlock_at` is when a requested unlock takes effect, `None` while no unlock was requested.
    Locked {
        /// When a requested unlock takes effect; `None` while no unlock was requested.
        unlock_at: Option<DateTime<Utc>>,
    },
}

/// Outcome of [`crate::CatalogBackend::create_scheduled_backup_job`].
#[derive(Clone, Debug, PartialEq)]
pub enum ScheduledJob {
    /// The slot was free: the automatic backup job (and its backup set) exist now.
    Created(Box<(Job, Backup)>),
    /// The slot was already taken (by another process, or before a restart): nothing was done.
    AlreadyTaken,
    /// The slot is recorded as skipped: the instance had an active job (e.g. a manual backup or a restore).
    Skipped {
        /// The active job the slot met.
        job_id: i64,
        /// That job's kind.
        kind: JobKind,
    },
}

/// A slot recorded in the schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleRun {
    /// The instance the slot belongs to.
    pub instance_id: String,
    /// [`SCHEDULE_STANDARD`] | [`SCHEDULE_HIGH_FREQUENCY`].
    pub schedule: String,
    /// When the slot's window starts.
    pub slot_start: DateTime<Utc>,
    /// The node id of the process that took the slot.
    pub owner: String,
    /// When the slot was taken.
    pub claimed_at: DateTime<Utc>,
    /// `Created` | `Skipped`.
    pub outcome: String,
    /// The job created (`Created`) or met (`Skipped`).
    pub job_id: Option<i64>,
    /// Why the slot was skipped; empty otherwise.
    pub detail: String,
}

/// The schedule of the policy windows (`PreferredBackupTime` on the policy days).
pub const SCHEDULE_STANDARD: &str = "standard";
/// The schedule of high-frequency snapshots (every `BackupInterval` minutes).
pub const SCHEDULE_HIGH_FREQUENCY: &str = "high_frequency";

/// A backup created by a schedule slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupSlot {
    /// The backup set the slot created.
    pub backup_id: i64,
    /// [`SCHEDULE_STANDARD`] | [`SCHEDULE_HIGH_FREQUENCY`].
    pub schedule: String,
    /// When the slot's window starts.
    pub slot_start: DateTime<Utc>,
}

/// One API call in the audit trail. Holds no secret, signature or request parameter value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    /// Catalog-assigned, increasing; 0 before the record is stored.
    pub id: i64,
    /// When the server received the call.
    pub time: DateTime<Utc>,
    /// The request id answered to the client.
    pub request_id: String,
    /// The AccessKeyId the request named (known or not), if one could be read.
    pub access_key_id: Option<String>,
    /// The user of a known AccessKey (`root` for the account).
    pub user: Option<String>,
    /// The action the request named, if one could be read.
    pub action: Option<String>,
    /// ARNs the call touched (`*` for unscoped actions); empty when refused before authorization.
    pub resources: Vec<String>,
    /// The TCP peer address.
    pub source_ip: String,
    /// Whether the call arrived over TLS.
    pub secure: bool,
    /// The HTTP status answered.
    pub http_status: u16,
    /// The Dds error code; `None` for a success.
    pub code: Option<String>,
}

/// Which audit records [`list_audit`](crate::CatalogBackend::list_audit) returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only records at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only calls naming this AccessKeyId (exact).
    pub access_key_id: Option<String>,
    /// Only calls naming this action (exact, case-insensitive).
    pub action: Option<String>,
    /// At most this many records (newest first); 0 means the default of 100.
    pub limit: u32,
}

/// A backup set.
#[derive(Clone, Debug, PartialEq)]
pub struct Backup {
    /// Catalog-assigned, increasing (the Dds `BackupId`).
    pub id: i64,
    /// The job that takes the set.
    pub job_id: i64,
    /// The instance the set is of.
    pub instance_id: String,
    /// Where the set is in its lifecycle.
    pub status: BackupStatus,
    /// How the set is taken.
    pub method: BackupMethod,
    /// `Manual` | `Automated`.
    pub mode: String,
    /// `FullBackup` | `IncrementalBackup`.
    pub backup_type: String,
    /// When taking the set started.
    pub start_time: DateTime<Utc>,
    /// When taking the set ended; `None` while running.
    pub end_time: Option<DateTime<Utc>>,
    /// `None` while running; `9999-01-01T00:00:00Z` for permanent backups.
    pub expire_time: Option<DateTime<Utc>>,
    /// Days; -1 = permanent.
    pub retention_days: i64,
    /// Size in bytes as recorded when the set was written; 0 while running.
    pub size: i64,
    /// Comma-separated database names.
    pub db_names: String,
    /// The MongoDB version of the instance when the set was taken.
    pub engine_version: String,
    /// Repository prefix holding the files and the manifest.
    pub repo_prefix: String,
    /// Method-specific facts (compression, archive name, document counts, failure reason…).
    pub details: serde_json::Value,
}

/// Input of [`crate::CatalogBackend::create_backup_job`].
#[derive(Clone, Debug)]
pub struct NewBackupJob {
    /// The instance to back up.
    pub instance_id: String,
    /// How the set is taken.
    pub method: BackupMethod,
    /// `Manual` | `Automated`.
    pub mode: String,
    /// Days the set is kept; -1 = permanent.
    pub retention_days: i64,
    /// The instance's MongoDB version, recorded on the set.
    pub engine_version: String,
    /// The job's parameters (a [`BackupJobParams`] in its stored form).
    pub params: serde_json::Value,
    /// The creation time of the job and the set's start time.
    pub now: DateTime<Utc>,
}

/// Input of [`crate::CatalogBackend::create_job`]: a job that is not a backup (a restore, …).
#[derive(Clone, Debug)]
pub struct NewJob {
    /// Not [`JobKind::Backup`]: backups are created with their set by `create_backup_job`.
    pub kind: JobKind,
    /// The instance the job works on (a restore's target): one active job per instance.
    pub instance_id: String,
    /// The backup set the job reads, if any.
    pub backup_id: Option<i64>,
    /// `Manual` | `Automated`.
    pub mode: String,
    /// Kind-specific parameters, e.g. a [`RestoreJobParams`] in its stored form.
    pub params: serde_json::Value,
    /// The job's creation time.
    pub now: DateTime<Utc>,
}

/// Input of [`crate::CatalogBackend::complete_backup`].
#[derive(Clone, Debug)]
pub struct BackupCompletion {
    /// When taking the set ended.
    pub end_time: DateTime<Utc>,
    /// When the set expires ([`permanent_expiry`] for a permanent one).
    pub expire_time: DateTime<Utc>,
    /// Size in bytes.
    pub size: i64,
    /// Comma-separated database names.
    pub db_names: String,
    /// Repository prefix holding the files and the manifest.
    pub repo_prefix: String,
    /// Method-specific facts (compression, archive name, document counts…).
    pub details: serde_json::Value,
}

/// Filter of [`crate::CatalogBackend::list_backups`]. `None` fields do not filter.
#[derive(Clone, Debug, Default)]
pub struct BackupFilter {
    /// Only sets of this instance.
    pub instance_id: Option<String>,
    /// Only this backup set.
    pub backup_id: Option<i64>,
    /// Only the set of this job.
    pub job_id: Option<i64>,
    /// Start time >= this.
    pub start_from: Option<DateTime<Utc>>,
    /// Start time <= this.
    pub start_to: Option<DateTime<Utc>>,
    /// Include backup sets still running (DescribeBackups does not).
    pub include_running: bool,
}

/// 1-based page request.
#[derive(Clone, Copy, Debug)]
pub struct Page {
    /// Page number, from 1.
    pub number: u32,
    /// Records per page.
    pub size: u32,
}

/// The permanent expiry time Dds shows for backups kept forever.
pub fn permanent_expiry() -> DateTime<Utc> {
    // 9999-01-01T00:00:00Z is a valid instant, so this cannot fail; the fallback only satisfies the type.
    DateTime::from_timestamp(253_370_764_800, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// An oplog timestamp as one ordered integer: `seconds << 32 | increment` (how slices are indexed).
pub fn ts_key(time: u32, increment: u32) -> i64 {
    (i64::from(time) << 32) | i64::from(increment)
}

/// `(seconds, increment)` of a [`ts_key`].
pub fn ts_parts(key: i64) -> (u32, u32) {
    // Keys are built by ts_key from two u32s, so both halves fit; a corrupt negative key reads as 0.
    let k = u64::try_from(key).unwrap_or(0);
    ((k >> 32) as u32, (k & 0xffff_ffff) as u32)
}

/// One stored slice of an instance's oplog: every entry with `start_excl < ts <= end_incl` (as [`ts_key`]s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSlice {
    /// Catalog-assigned, increasing.
    pub id: i64,
    /// The instance whose oplog the slice holds.
    pub instance_id: String,
    /// Exclusive lower bound of the slice's interval (a [`ts_key`]).
    pub start_excl: i64,
    /// Inclusive upper bound of the slice's interval (a [`ts_key`]).
    pub end_incl: i64,
    /// First and last entry held (none for an empty slice, which still proves the interval had no writes).
    pub first_ts: Option<i64>,
    /// See `first_ts`.
    pub last_ts: Option<i64>,
    /// Number of oplog entries held.
    pub entries: i64,
    /// Stored (compressed) bytes and their SHA-256.
    pub size: i64,
    /// Hex SHA-256 of the stored bytes.
    pub sha256: String,
    /// Repository path of the slice object.
    pub path: String,
    /// The follower found the oplog had rolled past its position: entries between the previous slice and this
    /// one are lost, and this slice starts a new recoverable range.
    pub gap: bool,
    /// When the slice was recorded.
    pub created_at: DateTime<Utc>,
}

/// A slice to record (see [`LogSlice`]).
#[derive(Clone, Debug)]
pub struct NewLogSlice {
    /// The instance whose oplog the slice holds.
    pub instance_id: String,
    /// Exclusive lower bound (a [`ts_key`]).
    pub start_excl: i64,
    /// Inclusive upper bound (a [`ts_key`]).
    pub end_incl: i64,
    /// First entry held (a [`ts_key`]); `None` for an empty slice.
    pub first_ts: Option<i64>,
    /// Last entry held (a [`ts_key`]); `None` for an empty slice.
    pub last_ts: Option<i64>,
    /// Number of oplog entries held.
    pub entries: i64,
    /// Stored (compressed) bytes.
    pub size: i64,
    /// Hex SHA-256 of the stored bytes.
    pub sha256: String,
    /// Repository path of the slice object.
    pub path: String,
    /// Whether the slice starts a new recoverable range after the oplog rolled past the follower (see [`LogSlice::gap`]).
    pub gap: bool,
    /// The recording time.
    pub now: DateTime<Utc>,
}

/// Counts the metrics endpoint reads at each scrape, in one aggregate read of the catalog (every process sharing
/// it sees the same numbers).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CatalogStats {
    /// Jobs by kind, method (`params.method`, "" when the job has none) and state.
    pub jobs: Vec<JobCount>,
    /// Backup sets by method and status (Deleting ones included: their files still take room).
    pub backups: Vec<BackupCount>,
    /// The end time of each instance's newest successful backup.
    pub last_success: Vec<(String, DateTime<Utc>)>,
    /// How far each instance's continuous log backup is durably stored: the newest slice's `end_incl` seconds
    /// (the oplog time up to which a point-in-time restore is possible). Instances without slices are absent.
    pub log_backup_end: Vec<(String, u32)>,
}

/// One group of [`CatalogStats::jobs`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobCount {
    /// The jobs' kind.
    pub kind: JobKind,
    /// `None` for jobs that name no method.
    pub method: Option<BackupMethod>,
    /// The jobs' state.
    pub state: JobState,
    /// Number of jobs in the group.
    pub count: u64,
}

/// One group of [`CatalogStats::backups`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupCount {
    /// The sets' method.
    pub method: BackupMethod,
    /// The sets' status (`Running`, `Success`, `Failed` or `Deleting`).
    pub status: String,
    /// Number of sets in the group.
    pub count: u64,
    /// Sum of the sets' recorded sizes (what each backup took when it was written; snapshot chunks shared by
    /// several sets are counted in each).
    pub bytes: u64,
}

/// The life of an instance ddsvault provisioned (CreateDBInstance): `Creating` while its job materializes or
/// restores the backup, `Running` once it serves the restored data, `Failed` when the job failed (its process and
/// data are gone; the row stays so the failure is visible until DeleteDBInstance).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProvisionStatus {
    /// Its job is materializing or restoring the backup.
    Creating,
    /// Serving the restored data.
    Running,
    /// The job failed; its process and data are gone.
    Failed,
}

impl ProvisionStatus {
    /// The stored and answered name, e.g. `Running`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProvisionStatus::Creating => "Creating",
            ProvisionStatus::Running => "Running",
            ProvisionStatus::Failed => "Failed",
        }
    }

    /// The status stored as `s`; `None` for a value this version does not write.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Creating" => Some(ProvisionStatus::Creating),
            "Running" => Some(ProvisionStatus::Running),
            "Failed" => Some(ProvisionStatus::Failed),
            _ => None,
        }
    }
}

/// An instance ddsvault provisioned: where its process listens and keeps its files, and what it was restored from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisionedInstance {
    /// The instance id.
    pub id: String,
    /// TCP port on 127.0.0.1 (unique among provisioned instances).
    pub port: u16,
    /// The instance's own directory (its data directory and log live inside).
    pub dir: String,
    /// Where the instance is in its life.
    pub status: ProvisionStatus,
    /// The instance the backup it was restored from is of.
    pub source_instance_id: String,
    /// The full backup it was restored from (for a point-in-time restore: the base backup).
    pub backup_id: Option<i64>,
    /// The second restored to (Unix seconds), for a point-in-time restore.
    pub restore_time: Option<i64>,
    /// The description given at creation.
    pub description: String,
    /// The job that creates it.
    pub job_id: Option<i64>,
    /// Why creating it failed.
    pub error: Option<String>,
    /// When the instance was recorded.
    pub created_at: DateTime<Utc>,
    /// When its row last changed.
    pub updated_at: DateTime<Utc>,
}

/// A provisioned instance to record, created together with the job that creates it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewProvisionedInstance {
    /// The instance id.
    pub id: String,
    /// TCP port on 127.0.0.1 (unique among provisioned instances).
    pub port: u16,
    /// The instance's own directory.
    pub dir: String,
    /// The instance the backup it is restored from is of.
    pub source_instance_id: String,
    /// The full backup it is restored from (for a point-in-time restore: the base backup).
    pub backup_id: Option<i64>,
    /// The second restored to (Unix seconds), for a point-in-time restore.
    pub restore_time: Option<i64>,
    /// The description given at creation.
    pub description: String,
    /// The recording time.
    pub now: DateTime<Utc>,
}

/// An instance registered at run time (RegisterDBInstance, docs/instances.md), beside the configured
/// (`[[instances]]`) and provisioned ones.
#[derive(Clone, PartialEq, Eq)]
pub struct RegisteredInstance {
    /// The instance id.
    pub id: String,
    /// The connection string in its stored form: the server seals it with the master key before it gets here
    /// (it may hold a password), and it is never shown in answers or logs.
    pub uri: String,
    /// The Dds `StorageType` (one of the server's `STORAGE_TYPES`).
    pub storage_type: String,
    /// The node's data directory, for file-level (Physical, Snapshot) backups.
    pub data_path: Option<String>,
    /// The ddsvault node meant to run its jobs (placement); `None`: any node.
    pub node: Option<String>,
    /// The description given at registration.
    pub description: String,
    /// When the instance was registered.
    pub created_at: DateTime<Utc>,
    /// When its row last changed.
    pub updated_at: DateTime<Utc>,
}

// Hand-written so that the stored connection string never reaches a log line through `{:?}`.
impl std::fmt::Debug for RegisteredInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisteredInstance")
            .field("id", &self.id)
            .field("storage_type", &self.storage_type)
            .field("data_path", &self.data_path)
            .field("node", &self.node)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}
/// The schedule of restore drills in `schedule_runs` (slots keyed by the drilled instance).
pub const SCHEDULE_DRILL: &str = "drill";

/// An instance's restore drill settings (docs/drills.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrillPolicy {
    /// The instance drilled.
    pub instance_id: String,
    /// Days like `PreferredBackupPeriod`; empty: no scheduled drill (one can still be started by hand).
    pub period: String,
    /// The one-hour window like `PreferredBackupTime`.
    pub window: String,
    /// The scratch instance the backup is restored into; its contents are replaced.
    pub target: String,
    /// When the settings last changed.
    pub updated_at: DateTime<Utc>,
}

/// What a drill found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrillResult {
    /// Every collection came back with the recorded count (and checksum, where recorded).
    Passed,
    /// The backup did not restore, or restored to something else than it recorded: the backup is unverified.
    Failed,
}

impl DrillResult {
    /// The stored and answered name: `Passed` or `Failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            DrillResult::Passed => "Passed",
            DrillResult::Failed => "Failed",
        }
    }

    /// The result a stored name denotes; `None` for any other string.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Passed" => Some(DrillResult::Passed),
            "Failed" => Some(DrillResult::Failed),
            _ => None,
        }
    }
}

/// Failed console logins of one client address in its current window (docs/console.md; migration 0021).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginFailures {
    /// Failed logins since `window_start`.
    pub failures: u32,
    /// When the current window started.
    pub window_start: DateTime<Utc>,
}

/// One recorded drill.
#[derive(Clone, Debug, PartialEq)]
pub struct RestoreDrill {
    /// Catalog-assigned, increasing.
    pub id: i64,
    /// The instance the backup is of.
    pub instance_id: String,
    /// The backup set drilled.
    pub backup_id: i64,
    /// The scratch instance it was restored into.
    pub target: String,
    /// The drill job; `None` when none is recorded.
    pub job_id: Option<i64>,
    /// When the drill started.
    pub started_at: DateTime<Utc>,
    /// When the drill finished.
    pub finished_at: DateTime<Utc>,
    /// How long the drill took, in milliseconds.
    pub duration_ms: i64,
    /// What the drill found.
    pub result: DrillResult,
    /// Whether checksums were compared (false: counts only, for backups that recorded none).
    pub checksums: bool,
    /// The collections compared and the mismatches, or why the restore failed (the jobs layer defines the shape).
    pub detail: serde_json::Value,
}

/// A drill to record ([`RestoreDrill`] without its id).
#[derive(Clone, Debug, PartialEq)]
pub struct NewRestoreDrill {
    /// The instance the backup is of.
    pub instance_id: String,
    /// The backup set drilled.
    pub backup_id: i64,
    /// The scratch instance it was restored into.
    pub target: String,
    /// The drill job, if any.
    pub job_id: Option<i64>,
    /// When the drill started.
    pub started_at: DateTime<Utc>,
    /// When the drill finished.
    pub finished_at: DateTime<Utc>,
    /// What the drill found.
    pub result: DrillResult,
    /// Whether checksums were compared (false: counts only).
    pub checksums: bool,
    /// The collections compared and the mismatches, or why the restore failed.
    pub detail: serde_json::Value,
}

/// Which drills [`crate::CatalogBackend::list_restore_drills`] returns, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrillFilter {
    /// Only drills of this instance.
    pub instance_id: Option<String>,
    /// Only drills of this backup set.
    pub backup_id: Option<i64>,
    /// At most this many; 0 means 100.
    pub limit: u32,
}

/// Outcome of [`crate::CatalogBackend::create_scheduled_drill_job`].
#[derive(Clone, Debug, PartialEq)]
pub enum ScheduledDrill {
    /// The slot was free and the drill job exists now.
    Created(Box<Job>),
    /// The slot was already taken (another process, or before a restart).
    AlreadyTaken,
    /// The scratch target had an active job: the slot is recorded as skipped.
    Skipped {
        /// The active job the slot met.
        job_id: i64,
        /// That job's kind.
        kind: JobKind,
    },
}
