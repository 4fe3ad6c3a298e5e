//! Errors of the jobs layer.

/// Why a job failed. The text is stored in the catalog and shown to API users, so it never holds secrets
/// (connection strings are never formatted into it).
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("instance {0} is not configured on this ddsvault node")]
    UnknownInstance(String),
    #[error("instance {0} has no user database to back up")]
    NoDatabase(String),
    #[error("job was cancelled: {0}")]
    Cancelled(String),
    /// A file restore found its target node running; it must be stopped first.
    #[error("the node is running ({0}); stop the node first")]
    NodeRunning(String),
    #[error("MongoDB: {0}")]
    Mongo(#[from] ddsvault_mongo::MongoError),
    #[error("repository: {0}")]
    Repo(#[from] ddsvault_repo::RepoError),
    #[error("catalog: {0}")]
    Catalog(#[from] ddsvault_catalog::CatalogError),
    #[error("{0}")]
    Other(String),
}
