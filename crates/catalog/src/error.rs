//! Errors of the catalog layer.

/// What can go wrong in the catalog, named for what the caller decides.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The instance already has a pending or running job (of `kind`; `None` when that job ended between the
    /// refused insert and the look-up of what held the instance).
    #[error("instance already has an active job {job_id}")]
    ActiveJobExists {
        /// The active job.
        job_id: i64,
        /// Its kind; `None` when it ended before it could be looked up.
        kind: Option<crate::JobKind>,
    },
    /// A row the caller named does not exist (or is not in the state the call needs).
    #[error("{0} not found")]
    NotFound(String),
    /// The row to create exists already.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The change would leave dangling references (e.g. deleting a user that still has AccessKeys).
    #[error("{0}")]
    Conflict(String),
    /// A per-owner limit is reached (e.g. AccessKeys per user).
    #[error("{0}")]
    LimitExceeded(String),
    /// The job is not running under this owner and fencing token any more: its lease expired and another process
    /// took it over, or it was failed or finished. Its holder must stop and commit nothing.
    #[error("job {0}: lease lost (the job was taken over, failed or finished elsewhere)")]
    LeaseLost(i64),
    /// Bad catalog configuration.
    #[error("catalog configuration: {0}")]
    Config(String),
    /// A stored value could not be decoded: the catalog was written by something else or is damaged.
    #[error("corrupt catalog data: {0}")]
    Corrupt(String),
    /// The storage engine failed.
    #[error("catalog storage: {0}")]
    Storage(#[from] sqlx::Error),
    /// Schema migration failed.
    #[error("catalog migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}
