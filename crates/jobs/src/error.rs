//! Errors of the jobs layer.

use ddsvault_mongo::MongoError;
use ddsvault_repo::RepoError;

/// Why a job failed. The text is stored in the catalog and shown to API users, so it never holds secrets
/// (connection strings are never formatted into it). [`JobError::code`] names the failure's source.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The job names an instance this node has no configuration for.
    #[error("instance {0} is not configured on this ddsvault node")]
    UnknownInstance(String),
    /// A backup found no user database on the instance.
    #[error("instance {0} has no user database to back up")]
    NoDatabase(String),
    /// The job was cancelled (e.g. a restore's export was cancelled).
    #[error("job was cancelled: {0}")]
    Cancelled(String),
    /// The watchdog found no progress for the stall timeout.
    #[error("stalled: {0}")]
    Stalled(String),
    /// A file restore found its target node running; it must be stopped first.
    #[error("the node is running ({0}); stop the node first")]
    NodeRunning(String),
    /// Whether the target node is stopped cannot be checked (its address probe failed): a file restore must not
    /// start, and the caller answers the same refusal as for a running node.
    #[error("cannot check that the node is stopped: {0}")]
    NodeStateUnknown(String),
    /// Reading or writing local files (a data directory, a scratch directory) failed: labelled by that source,
    /// not by the MongoDB layer the call went through.
    #[error("filesystem: {0}")]
    Filesystem(String),
    /// A MongoDB operation failed.
    #[error("MongoDB: {0}")]
    Mongo(MongoError),
    /// A repository operation failed.
    #[error("repository: {0}")]
    Repo(#[from] RepoError),
    /// A catalog operation failed.
    #[error("catalog: {0}")]
    Catalog(#[from] ddsvault_catalog::CatalogError),
    /// A restore drill found that the backup does not restore to what it recorded (docs/drills.md).
    #[error("restore drill failed: {0}")]
    DrillFailed(String),
    /// Any other failure, described by the message.
    #[error("{0}")]
    Other(String),
}

impl From<MongoError> for JobError {
    fn from(e: MongoError) -> Self {
        match e {
            // The data directory of a file backup or restore: a filesystem problem on this host.
            e @ MongoError::Io { .. } => JobError::Filesystem(e.to_string()),
            e => JobError::Mongo(e),
        }
    }
}

impl From<ddsvault_repo::export::ExportError> for JobError {
    /// The messages and codes a file restore always answered: a repository failure is the repository's, a
    /// cancellation the job's, the rest (a manifest naming no data file, a file that does not match it, local I/O)
    /// the generic job failure.
    fn from(e: ddsvault_repo::export::ExportError) -> Self {
        use ddsvault_repo::export::ExportError;
        match e {
            ExportError::Repo(e) => JobError::Repo(e),
            ExportError::Cancelled => JobError::Cancelled("restore cancelled".into()),
            e => JobError::Other(e.to_string()),
        }
    }
}

impl JobError {
    /// Whether the job's lease was lost to another process (its fencing token refused): nothing of it may be
    /// written any more.
    pub fn is_lease_lost(&self) -> bool {
        matches!(
            self,
            JobError::Catalog(ddsvault_catalog::CatalogError::LeaseLost(_))
        )
    }

    /// The stable code of the failure's source, answered as `ErrorCode` by the task APIs beside the message.
    pub fn code(&self) -> &'static str {
        match self {
            JobError::UnknownInstance(_) => "Instance.NotConfigured",
            JobError::NoDatabase(_) => "Instance.NoDatabase",
            JobError::Cancelled(_) => "Job.Cancelled",
            JobError::Stalled(_) => "Job.Stalled",
            JobError::NodeRunning(_) => "Node.Running",
            JobError::NodeStateUnknown(_) => "Node.StateUnknown",
            JobError::Filesystem(_) => "Filesystem.Error",
            JobError::Mongo(e) => match e {
                MongoError::Unreachable(_) => "MongoDB.Unreachable",
                MongoError::Authentication(_) => "MongoDB.AuthenticationFailed",
                MongoError::Unsupported(_) => "MongoDB.Unsupported",
                MongoError::OplogUnusable(_) | MongoError::OplogOverflow(_) => "MongoDB.Oplog",
                MongoError::Archive(_) => "Archive.Invalid",
                MongoError::TargetExists { .. } => "Restore.TargetExists",
                MongoError::Image { .. } => "Filesystem.Error",
                MongoError::Cancelled => "Job.Cancelled",
                _ => "MongoDB.Error",
            },
            JobError::Repo(e) => repo_code(e),
            JobError::Catalog(_) => "Catalog.Error",
            JobError::DrillFailed(_) => "Drill.Failed",
            JobError::Other(_) => ddsvault_catalog::JOB_ERROR_CODE,
        }
    }
}

fn repo_code(e: &RepoError) -> &'static str {
    match e {
        RepoError::Integrity { .. } | RepoError::Manifest { .. } => "Repository.Damaged",
        RepoError::NotFound { .. } => "Repository.NotFound",
        RepoError::Cancelled => "Job.Cancelled",
        _ if is_no_space(e) => "Repository.NoSpace",
        _ => "Repository.Error",
    }
}

/// Whether a repository error is a full filesystem (ENOSPC), wherever in the chain it was wrapped.
fn is_no_space(e: &RepoError) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::StorageFull {
                return true;
            }
        }
        cur = err.source();
    }
    // object_store's local store folds the io::Error into its message on some paths.
    e.to_string().contains("No space left on device")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_labelled_by_where_they_failed() {
        let io = MongoError::Io {
            context: "read data directory /nope".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let e = JobError::from(io);
        assert_eq!(e.code(), "Filesystem.Error");
        assert!(
            e.to_string()
                .starts_with("filesystem: read data directory /nope"),
            "{e}"
        );
        let e = JobError::from(MongoError::Unreachable("server selection".into()));
        assert_eq!(e.code(), "MongoDB.Unreachable");
        assert!(e.to_string().starts_with("MongoDB: "), "{e}");
        let full = RepoError::Io(std::io::Error::from(std::io::ErrorKind::StorageFull));
        assert_eq!(JobError::from(full).code(), "Repository.NoSpace");
        let other = RepoError::Io(std::io::Error::other("disk on fire"));
        assert_eq!(JobError::from(other).code(), "Repository.Error");
        assert_eq!(JobError::Other("x".into()).code(), "Job.Failed");
    }
}
