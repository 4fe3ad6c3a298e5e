//! Errors of the server layer and the ONE place where every ddsvault error becomes a Dds code and HTTP status.
//!
//! Protocol-level codes (signatures, timestamps, …) are built by `ddsvault-api`; business codes of the Dds actions
//! are listed here. `docs/errors.md` documents both.

// The one place where codes are built (clippy.toml forbids ApiError::new everywhere else).
#![allow(clippy::disallowed_methods)]

use ddsvault_api::ApiError;
use ddsvault_catalog::CatalogError;

/// A configuration file that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// Everything that can go wrong while serving or starting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A catalog operation failed.
    #[error("catalog: {0}")]
    Catalog(#[from] CatalogError),
    /// A repository operation failed.
    #[error("repository: {0}")]
    Repo(#[from] ddsvault_repo::RepoError),
    /// A jobs-layer operation failed.
    #[error("jobs: {0}")]
    Jobs(#[from] ddsvault_jobs::JobError),
    /// The listen address cannot be bound.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// The address as configured.
        addr: String,
        /// The bind error.
        source: std::io::Error,
    },
    /// The HTTP server failed while serving.
    #[error("serve: {0}")]
    Serve(std::io::Error),
    /// An input of an offline command (an archive file, a namespace selection, an instance) that cannot be used, or
    /// the command's work failing on it; the text names the file or namespace.
    #[error("{0}")]
    Input(String),
    /// Identity management refused (unknown name, limit reached, wrong master key…); the text says why.
    #[error("{0}")]
    Identity(String),
}

/// Business errors of the Dds actions, named for what the client must do about them.
/// A job kind as messages name it.
fn kind_name(kind: Option<ddsvault_catalog::JobKind>) -> &'static str {
    kind.map_or("unknown", ddsvault_catalog::JobKind::as_str)
}

/// Business errors of the Dds actions, named for what the client must do about them.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// A parameter-level error already expressed as an API error (missing / invalid parameter).
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The `DBInstanceId` names no known instance.
    #[error("instance {0} not found")]
    InstanceNotFound(String),
    /// The named backup does not exist.
    #[error("backup {0} not found")]
    BackupNotFound(String),
    /// The instance already has a pending or running job.
    #[error("a {} job ({job_id}) is already pending or running for the instance", kind_name(*.kind))]
    JobExists {
        /// The active job.
        job_id: i64,
        /// `None` when the job ended before it could be named.
        kind: Option<ddsvault_catalog::JobKind>,
    },
    /// A backup found no user database on the instance.
    #[error("the instance has no user database")]
    NoDatabase,
    /// A restore drill was asked of an instance without a successful Logical backup.
    #[error("instance {0} has no backup to drill")]
    NothingToDrill(String),
    /// The requested backup method cannot be used for the instance; the text says why.
    #[error("backup method not supported: {0}")]
    BackupMethodNotSupported(String),
    /// A file-level backup was asked for an instance whose data directory is not configured.
    #[error("{method} backups of {instance} need data_path in its configuration")]
    DataPathMissing {
        /// The instance.
        instance: String,
        /// The file-level method asked for.
        method: ddsvault_catalog::BackupMethod,
    },
    /// A Physical or Snapshot restore into an instance whose data directory is not configured.
    #[error("restoring a {method} backup into {instance} needs data_path in its configuration")]
    RestoreDataPathMissing {
        /// The target instance.
        instance: String,
        /// The backup's method.
        method: ddsvault_catalog::BackupMethod,
    },
    /// A Physical or Snapshot restore into a node that runs (or whose state cannot be checked); the text says
    /// what was found and holds no connection string.
    #[error("the node is not stopped: {0}")]
    NodeNotStopped(String),
    /// `BackupRetentionPeriod` is out of range or malformed.
    #[error("invalid BackupRetentionPeriod: {0}")]
    InvalidRetention(String),
    /// The backup is not in a state the action accepts (running, failed…).
    #[error("backup not available: {0}")]
    BackupNotAvailable(String),
    /// A deletion met a pending or running restore job that reads the backup; nothing was deleted.
    #[error("backup {backup_id} is read by restore job {job_id}")]
    BackupInUse {
        /// The backup.
        backup_id: i64,
        /// The restore job that reads it.
        job_id: i64,
    },
    /// `BackupExpireTime` cannot be parsed.
    #[error("invalid BackupExpireTime: {0}")]
    ExpireTimeMalformed(String),
    /// `BackupExpireTime` is not later than the backup's current expiry.
    #[error("BackupExpireTime does not extend the expiry: {0}")]
    ExpireTimeNotExtended(String),
    /// `BackupExpireTime` is outside the accepted range.
    #[error("BackupExpireTime out of range: {0}")]
    ExpireTimeOutOfRange(String),
    /// `PreferredBackupTime` is not a valid one-hour UTC window.
    #[error("invalid PreferredBackupTime: {0}")]
    InvalidBackupTime(String),
    /// `PreferredBackupPeriod` is not a valid list of weekdays.
    #[error("invalid PreferredBackupPeriod: {0}")]
    InvalidBackupPeriod(String),
    /// A geo-redundant (cross-region) setting: ddsvault keeps backups in one repository.
    #[error("cross-region backup not supported: {0}")]
    CrossRegionNotSupported(String),
    /// The instance's retention lock forbids deleting or shortening backups.
    #[error("retention lock of {instance} is on")]
    RetentionLocked {
        /// The instance.
        instance: String,
        /// When a requested unlock takes effect; `None` while none was requested.
        unlock_at: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// The backup's objects carry S3 Object Lock (COMPLIANCE) retention until `until`: the store refuses to
    /// delete them before, and so does ddsvault.
    #[error("backup {backup_id} is retained by S3 Object Lock until {until}")]
    ObjectRetained {
        /// The backup.
        backup_id: i64,
        /// The end of the retention.
        until: chrono::DateTime<chrono::Utc>,
    },
    /// The instance cannot be reached; the text is already free of credentials.
    #[error("instance unreachable: {0}")]
    InstanceUnreachable(String),
    /// A RAM entity (or link) the call names does not exist; `kind` is Alibaba's code suffix (`User`, `Group`,
    /// `Policy`, `User.AccessKey`, `User.Policy`, `Group.Policy`, `Group.User`).
    #[error("{what} does not exist")]
    RamNotFound {
        /// Alibaba's code suffix (see above).
        kind: &'static str,
        /// The entity (or link), as the message names it.
        what: String,
    },
    /// The RAM entity (or link) to create exists already.
    #[error("{what} already exists")]
    RamExists {
        /// Alibaba's code suffix, as for `RamNotFound`.
        kind: &'static str,
        /// The entity (or link), as the message names it.
        what: String,
    },
    /// The RAM entity cannot be deleted while something depends on it.
    #[error("{message}")]
    RamDeleteConflict {
        /// Alibaba's code suffix, as for `RamNotFound`.
        kind: &'static str,
        /// What still depends on the entity, as answered.
        message: String,
    },
    /// The user has the maximum number of AccessKeys.
    #[error("{0}")]
    RamKeyLimit(String),
    /// A catalog operation failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// An unexpected failure; the text says what.
    #[error("internal: {0}")]
    Internal(String),
    /// A feature or parameter this ddsvault version does not implement; the text names it and what to use.
    #[error("not supported: {0}")]
    Unsupported(String),
    /// An action known to the Dds API that ddsvault does not implement.
    #[error("action {0} not implemented")]
    ActionNotImplemented(String),
    /// A restore would overwrite a collection and DropExisting was not given.
    #[error("{db}.{collection} exists in {instance}")]
    NamespaceExists {
        /// The database.
        db: String,
        /// The collection.
        collection: String,
        /// The target instance.
        instance: String,
    },
    /// A download URL whose signature or fields do not check out; the text says which.
    #[error("download URL not valid: {0}")]
    DownloadUrlInvalid(String),
    /// A download URL past its expiry.
    #[error("download URL expired")]
    DownloadUrlExpired,
    /// The backup's files are missing from the repository; the text says which.
    #[error("backup files gone: {0}")]
    BackupFilesGone(String),
    /// A `Range` header outside the file of `size` bytes.
    #[error("range not satisfiable (size {size})")]
    RangeNotSatisfiable {
        /// The file's size in bytes.
        size: u64,
    },
    /// A point-in-time restore to a second no recoverable range holds (docs/pitr.md); nothing is written.
    #[error("restore time {time} is outside every recoverable range")]
    RestoreTimeOutOfRange {
        /// The requested restore time, as answered.
        time: String,
        /// The recoverable ranges, as the message lists them.
        ranges: String,
    },
    /// CreateDBInstance on a node without `[provisioning]` (docs/provisioning.md).
    #[error("provisioning is not configured")]
    ProvisioningNotConfigured,
    /// A restore drill into a provisioned scratch (`provision`) on a node without `[provisioning]` (docs/drills.md);
    /// the parameter that asked for it.
    #[error("provisioning is not configured for a drill ({0})")]
    DrillProvisioningNotConfigured(&'static str),
    /// DeleteDBInstance of an instance ddsvault did not provision (a configured one).
    #[error("instance {0} was not provisioned by ddsvault")]
    NotProvisioned(String),
    /// DeleteDBInstance while the instance is still being created.
    #[error("instance {0} is being created")]
    InstanceCreating(String),
    /// Every port of `[provisioning]`'s range is taken.
    #[error("no free port in {0}")]
    NoFreePort(String),
    /// RegisterDBInstance / ModifyRegisteredDBInstance: the connection string cannot be parsed; the text holds no
    /// part of it.
    #[error("connection string malformed: {0}")]
    ConnectionStringMalformed(String),
    /// RegisterDBInstance / ModifyRegisteredDBInstance: nothing answered at the connection string within the probe
    /// timeout; the text is free of credentials.
    #[error("connection string unreachable: {0}")]
    ConnectionStringUnreachable(String),
    /// RegisterDBInstance with an id a configured, provisioned or registered instance has.
    #[error("instance {id} exists already ({origin})")]
    InstanceIdTaken {
        /// The requested instance id.
        id: String,
        /// What the existing instance is (configured, provisioned or registered).
        origin: &'static str,
    },
    /// Modify/UnregisterDBInstance of an instance that was not registered at run time (`origin` says what it is).
    #[error("instance {id} is {origin}, not registered")]
    NotRegistered {
        /// The instance id.
        id: String,
        /// What the instance is instead (configured or provisioned).
        origin: &'static str,
    },
    /// UnregisterDBInstance while a job of the instance is pending or running.
    #[error("instance {instance} has an active {} job {job_id}", kind_name(*.kind))]
    InstanceHasActiveJob {
        /// The instance.
        instance: String,
        /// The active job.
        job_id: i64,
        /// Its kind; `None` when it ended before it could be named.
        kind: Option<ddsvault_catalog::JobKind>,
    },
    /// UnregisterDBInstance while the instance's retention lock is on.
    #[error("retention lock of {0} is on")]
    UnregisterRetentionLocked(String),
}

impl From<ddsvault_jobs::backup::plan::PlanError> for ActionError {
    /// Backup planning's refusals (the method, the data directory). A listing failure is an unreachable instance;
    /// its message may hold the connection string, so it is not passed on here (`actions::backup::inspect`
    /// answers it redacted).
    fn from(e: ddsvault_jobs::backup::plan::PlanError) -> Self {
        use ddsvault_jobs::backup::plan::PlanError;
        match e {
            PlanError::MethodNotSupported(why) => ActionError::BackupMethodNotSupported(why),
            PlanError::DataPathMissing { instance, method } => {
                ActionError::DataPathMissing { instance, method }
            }
            PlanError::Listing(_) => {
                ActionError::InstanceUnreachable("listDatabases failed".into())
            }
            e @ PlanError::ListingTimeout => ActionError::InstanceUnreachable(e.to_string()),
        }
    }
}

impl From<ActionError> for ApiError {
    fn from(e: ActionError) -> Self {
        to_api_error(e)
    }
}

/// The single mapping from ddsvault errors to Dds codes and statuses.
pub fn to_api_error(e: ActionError) -> ApiError {
    match e {
        ActionError::Api(a) => a,
        ActionError::InstanceNotFound(id) => ApiError::new(
            404,
            "InvalidDBInstanceId.NotFound",
            format!("The specified instance \"{id}\" is not found."),
        ),
        ActionError::BackupNotFound(id) => ApiError::new(
            404,
            "InvalidBackupId.NotFound",
            format!("The specified backup \"{id}\" is not found."),
        ),
        ActionError::JobExists {
            job_id,
            kind: Some(ddsvault_catalog::JobKind::Restore),
        } => ApiError::new(
            403,
            "OperationDenied.DBInstanceStatus",
            format!(
                "The operation is not permitted due to status of instance. The instance is being restored (job {job_id}); try again when the restore has finished."
            ),
        ),
        ActionError::JobExists {
            job_id,
            kind: Some(ddsvault_catalog::JobKind::Drill),
        } => ApiError::new(
            403,
            "OperationDenied.DBInstanceStatus",
            format!(
                "The operation is not permitted due to status of instance. The instance is the scratch target of a running restore drill (job {job_id}); try again when the drill has finished."
            ),
        ),
        ActionError::NothingToDrill(id) => ApiError::new(
            403,
            "OperationDenied.NoBackup",
            format!(
                "The operation is not permitted because instance {id} has no successful Logical backup to drill; take one with CreateBackup (BackupMethod=Logical) first."
            ),
        ),
        ActionError::JobExists { job_id, kind } => ApiError::new(
            403,
            "OperationDenied.BackupJobExists",
            format!(
                "The operation is not permitted due to backup job exist. A {} job ({job_id}) is pending or running for this instance; try again when it has finished.",
                kind_name(kind)
            ),
        ),
        ActionError::NoDatabase => ApiError::new(
            403,
            "OperationDenied.NoDatabase",
            "The operation is not permitted due to no database. The instance holds no user database to back up.",
        ),
        ActionError::BackupMethodNotSupported(why) => ApiError::new(
            400,
            "InvalidBackupMethod.ValueNotSupport",
            format!("The specified parameter BackupMethod is not valid. {why}"),
        ),
        ActionError::DataPathMissing { instance, method } => ApiError::new(
            400,
            "InvalidBackupMethod.DataPathRequired",
            format!(
                "The specified parameter BackupMethod is not valid. {method} backups copy the data files of the node: set data_path (the node's data directory, readable by ddsvault on the same host) in the [[instances]] entry of {instance} and restart ddsvault, or use BackupMethod=Logical."
            ),
        ),
        ActionError::RestoreDataPathMissing { instance, method } => ApiError::new(
            400,
            "InvalidBackupMethod.DataPathRequired",
            format!(
                "The specified backup cannot be restored into instance {instance}. Restoring a {method} backup writes the data files of the node: set data_path (the node's data directory, writable by ddsvault on the same host) in the [[instances]] entry of {instance} and restart ddsvault, or restore a Logical backup."
            ),
        ),
        ActionError::NodeNotStopped(why) => ApiError::new(
            403,
            "OperationDenied.DBInstanceStatus",
            format!(
                "The operation is not permitted due to status of instance. Restoring a Physical or Snapshot backup replaces the data files of the node, which must not run: {why}. Stop the node first, then restore again."
            ),
        ),
        ActionError::InvalidRetention(why) => ApiError::new(
            400,
            "InvalidBackupRetentionPeriod.Malformed",
            format!("The specified parameter BackupRetentionPeriod is not valid. {why}"),
        ),
        ActionError::BackupNotAvailable(why) => ApiError::new(
            403,
            "OperationDenied.BackupStatus",
            format!("The operation is not permitted due to status of backup. {why}"),
        ),
        ActionError::BackupInUse { backup_id, job_id } => ApiError::new(
            403,
            "OperationDenied.BackupInUse",
            format!(
                "The operation is not permitted because the backup {backup_id} is read by restore job {job_id}; try again when the restore has finished."
            ),
        ),
        ActionError::ExpireTimeMalformed(why) => ApiError::new(
            400,
            "InvalidBackupExpireTime.Malformed",
            format!("The specified parameter BackupExpireTime is not valid. {why}"),
        ),
        ActionError::ExpireTimeNotExtended(why) => ApiError::new(
            400,
            "InvalidBackupExpireTime.NotExtended",
            format!("The specified parameter BackupExpireTime is not valid. {why}"),
        ),
        ActionError::ExpireTimeOutOfRange(why) => ApiError::new(
            400,
            "InvalidBackupExpireTime.OutOfRange",
            format!("The specified parameter BackupExpireTime is not valid. {why}"),
        ),
        ActionError::InvalidBackupTime(why) => ApiError::new(
            400,
            "InvalidPreferredBackupTime.Malformed",
            format!("The specified parameter PreferredBackupTime is not valid. {why}"),
        ),
        ActionError::InvalidBackupPeriod(why) => ApiError::new(
            400,
            "InvalidPreferredBackupPeriod.Malformed",
            format!("The specified parameter PreferredBackupPeriod is not valid. {why}"),
        ),
        ActionError::InstanceUnreachable(why) => ApiError::new(
            403,
            "OperationDenied.DBInstanceStatus",
            format!("The operation is not permitted due to status of instance. The instance cannot be reached: {why}"),
        ),
        ActionError::CrossRegionNotSupported(why) => ApiError::new(400, "UnsupportedOperation", why),
        ActionError::RetentionLocked {
            instance,
            unlock_at,
        } => ApiError::new(
            403,
            "OperationDenied.RetentionLocked",
            format!(
                "The operation is not permitted because the retention lock of instance {instance} is on: no backup can be deleted or expire early, whoever asks. {}",
                match unlock_at {
                    Some(t) => format!(
                        "An unlock was requested; the lock ends at {}.",
                        t.format("%Y-%m-%dT%H:%M:%SZ")
                    ),
                    None => "Disable it with ModifyBackupRetentionLock (Enable=false); it ends after the cooling-off period.".to_string(),
                }
            ),
        ),
        ActionError::ObjectRetained { backup_id, until } => ApiError::new(
            403,
            "OperationDenied.RetentionLocked",
            format!(
                "The backup {backup_id} cannot be deleted: its objects are under S3 Object Lock (COMPLIANCE) retention until {}, which not even the bucket owner can shorten.",
                until.format("%Y-%m-%dT%H:%M:%SZ")
            ),
        ),
        ActionError::RamNotFound { kind, what } => ApiError::new(
            404,
            format!("EntityNotExist.{kind}"),
            format!("The {what} does not exist."),
        ),
        ActionError::RamExists { kind, what } => ApiError::new(
            409,
            format!("EntityAlreadyExists.{kind}"),
            format!("The {what} already exists."),
        ),
        ActionError::RamDeleteConflict { kind, message } => {
            ApiError::new(409, format!("DeleteConflict.{kind}"), message)
        }
        ActionError::RamKeyLimit(message) => {
            ApiError::new(409, "LimitExceeded.User.AccessKey", message)
        }
        ActionError::Catalog(CatalogError::ActiveJobExists { job_id, kind }) => {
            to_api_error(ActionError::JobExists { job_id, kind })
        }
        ActionError::Catalog(c) => ApiError::internal(c.to_string()),
        ActionError::Internal(m) => ApiError::internal(m),
        ActionError::Unsupported(why) => ApiError::new(400, "UnsupportedOperation", why),
        ActionError::ActionNotImplemented(name) => ApiError::new(
            400,
            "UnsupportedOperation",
            format!(
                "The action {name} is not implemented by this ddsvault version yet. See the API coverage table in docs/api.md."
            ),
        ),
        ActionError::NamespaceExists {
            db,
            collection,
            instance,
        } => ApiError::new(
            403,
            "OperationDenied.NamespaceExists",
            format!(
                "The collection {db}.{collection} already exists in instance {instance}; pass DropExisting=true to replace it."
            ),
        ),
        ActionError::DownloadUrlInvalid(why) => ApiError::new(
            403,
            "InvalidDownloadURL.Signature",
            format!("The download URL is not valid: {why}."),
        ),
        ActionError::DownloadUrlExpired => ApiError::new(
            403,
            "InvalidDownloadURL.Expired",
            "The download URL has expired; call DescribeBackups for a new one.",
        ),
        ActionError::BackupFilesGone(what) => ApiError::new(
            404,
            "InvalidBackupId.NotFound",
            format!("{what} no longer in the repository."),
        ),
        ActionError::RangeNotSatisfiable { size } => ApiError::new(
            416,
            "InvalidRange",
            format!("The requested range is not satisfiable (size {size})."),
        ),
        ActionError::ProvisioningNotConfigured => ApiError::new(
            400,
            "UnsupportedOperation",
            "CreateDBInstance restores a backup into a new instance that ddsvault runs itself; this ddsvault node has no [provisioning] section in its configuration (docs/provisioning.md). Restore into a configured instance with RestoreDBInstance instead.",
        ),
        ActionError::DrillProvisioningNotConfigured(param) => ApiError::new(
            400,
            "UnsupportedOperation",
            format!("{param}=provision restores the drilled backup into a temporary instance that ddsvault starts from its [provisioning] section; this ddsvault node has none (docs/provisioning.md). Name a registered scratch instance instead."),
        ),
        ActionError::NotProvisioned(id) => ApiError::new(
            403,
            "OperationDenied.NotProvisioned",
            format!(
                "The instance {id} is configured in [[instances]], not provisioned by ddsvault: DeleteDBInstance only removes instances created by CreateDBInstance. Remove it from the configuration instead."
            ),
        ),
        ActionError::InstanceCreating(id) => ApiError::new(
            403,
            "OperationDenied.DBInstanceStatus",
            format!("The instance {id} is being created; delete it once DBInstanceStatus is Running or Failed."),
        ),
        ActionError::NoFreePort(range) => ApiError::new(
            409,
            "ResourceNotAvailable",
            format!("Every port of the [provisioning] range {range} is taken; delete an instance or widen the range."),
        ),
        ActionError::ConnectionStringMalformed(why) => ApiError::new(
            400,
            "InvalidConnectionString.Malformed",
            format!(
                "The specified parameter ConnectionString is not a usable MongoDB connection string (mongodb://… or mongodb+srv://…): {why}. Nothing was registered."
            ),
        ),
        ActionError::ConnectionStringUnreachable(why) => ApiError::new(
            400,
            "InvalidConnectionString.Unreachable",
            format!(
                "No MongoDB-wire server answered at the specified ConnectionString: {why}. Check the host, port and credentials; nothing was registered."
            ),
        ),
        ActionError::InstanceIdTaken { id, origin } => ApiError::new(
            409,
            "InvalidDBInstanceId.Duplicate",
            format!("The instance id \"{id}\" is taken by a {origin} instance; choose another id. Nothing was registered."),
        ),
        ActionError::NotRegistered { id, origin } => ApiError::new(
            403,
            "OperationDenied.NotRegistered",
            format!(
                "The instance {id} is {origin}: only instances registered with RegisterDBInstance (ddsvault instance add) can be changed or unregistered this way. {}",
                if origin == "provisioned" {
                    "Remove it with DeleteDBInstance."
                } else {
                    "Change or remove its [[instances]] entry in the configuration instead."
                }
            ),
        ),
        ActionError::InstanceHasActiveJob {
            instance,
            job_id,
            kind,
        } => ApiError::new(
            403,
            "OperationDenied.ActiveJobExists",
            format!(
                "The instance {instance} has a {} job ({job_id}) pending or running; unregister it when the job has finished (DescribeBackupTasks / DescribeRestoreTasks). Nothing was changed.",
                kind_name(kind)
            ),
        ),
        ActionError::UnregisterRetentionLocked(id) => ApiError::new(
            403,
            "OperationDenied.RetentionLocked",
            format!(
                "The retention lock of instance {id} is on: its backups must stay covered by it, so the instance cannot be unregistered until the lock has ended (ModifyBackupRetentionLock, Enable=false, then the cooling-off period)."
            ),
        ),
        ActionError::RestoreTimeOutOfRange { time, ranges } => ApiError::new(
            400,
            "InvalidRestoreTime.OutOfRange",
            format!(
                "The restore time {time} is outside every recoverable range of the instance ({ranges}); nothing was restored. DescribeInstanceRecoverTime lists the ranges."
            ),
        ),
    }
}
