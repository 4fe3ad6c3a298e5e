//! The one error type of this crate.
//!
//! Variants are named for what the caller has to decide: whether to retry
//! ([`MongoError::is_permanent`]), whether the instance is down
//! ([`MongoError::Unreachable`]), whether the job was cancelled.

use crate::archive::ArchiveError;

/// Errors of the MongoDB backup layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MongoError {
    /// The connection string could not be parsed or names no host.
    #[error("invalid MongoDB URI: {0}")]
    InvalidUri(String),

    /// No server could be reached (connection refused, timeout, DNS, server selection).
    #[error("MongoDB instance unreachable: {0}")]
    Unreachable(String),

    /// The server refused the credentials.
    #[error("MongoDB authentication failed: {0}")]
    Authentication(String),

    /// A command failed; `context` says what we were doing (and on which namespace).
    #[error("{context}: {source}")]
    Command {
        /// Present-tense description of the operation, e.g. `find on db1.users`.
        context: String,
        /// The driver error.
        #[source]
        source: mongodb::error::Error,
    },

    /// The server answered with something we cannot interpret.
    #[error("unexpected server reply ({context}): {detail}")]
    Protocol {
        /// What we were doing.
        context: String,
        /// What was wrong with the reply.
        detail: String,
    },

    /// The source holds something this backup method cannot handle (e.g. a timeseries collection).
    #[error("unsupported: {0}")]
    Unsupported(String),

    /// Invalid caller input (options, database names).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// Writing or reading the archive format failed.
    #[error(transparent)]
    Archive(#[from] ArchiveError),

    /// Local I/O (output stream, compression) failed.
    #[error("{context}: {source}")]
    Io {
        /// Present-tense description of the operation.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A restore target already holds collections the restore would create; nothing was
    /// written. Restore with `drop` to replace them.
    #[error(
        "the target already has {}; nothing was restored (to replace existing collections: --drop with `ddsvault restore`, DropExisting=true with RestoreDBInstance)",
        namespaces_list(.namespaces)
    )]
    TargetExists {
        /// The existing namespaces (`db.collection`), in archive order.
        namespaces: Vec<String>,
    },

    /// A restore failed after it had started to change the target: `complete` namespaces are
    /// fully restored, `incomplete` ones are partly written (or dropped and not yet
    /// rewritten); restoring again with `drop` replaces them.
    #[error(
        "{source}; the target is partly restored: complete: {}; incomplete: {} (restore again with drop to replace them)",
        list_or_none(.complete),
        list_or_none(.incomplete)
    )]
    RestoreIncomplete {
        /// What failed.
        source: Box<MongoError>,
        /// Namespaces (`db.collection`) completely restored.
        complete: Vec<String>,
        /// Namespaces not completely restored.
        incomplete: Vec<String>,
    },

    /// The oplog cannot be used for a consistent backup (empty, not capped).
    #[error("oplog unusable: {0}")]
    OplogUnusable(String),

    /// Entries of the backup's oplog window were evicted from the capped oplog before
    /// they could be read: the window cannot be replayed.
    #[error("oplog overflow: the oplog is too small for this backup ({0})")]
    OplogOverflow(String),

    /// Taking a consistent file image of the node (physical and snapshot backups) failed.
    #[error("file image of {file}: {detail}")]
    Image {
        /// The data file (relative to the node's data directory).
        file: String,
        /// What went wrong.
        detail: String,
    },

    /// The operation was cancelled through its cancellation token.
    #[error("operation cancelled")]
    Cancelled,

    /// A background task panicked or was aborted (a bug, not a data problem).
    #[error("internal error: {0}")]
    Internal(String),
}

impl MongoError {
    /// Whether retrying the same operation cannot help.
    ///
    /// Network problems, server-side transient failures and I/O errors are
    /// retryable; bad input, corrupt archives, authentication failures,
    /// unsupported features and cancellation are not.
    pub fn is_permanent(&self) -> bool {
        match self {
            MongoError::Unreachable(_) | MongoError::Io { .. } => false,
            MongoError::Command { source, .. } => !is_transient_driver_error(source),
            MongoError::Archive(e) => e.is_permanent(),
            MongoError::RestoreIncomplete { source, .. } => source.is_permanent(),
            MongoError::InvalidUri(_)
            | MongoError::Authentication(_)
            | MongoError::Protocol { .. }
            | MongoError::Unsupported(_)
            | MongoError::InvalidArgument(_)
            | MongoError::TargetExists { .. }
            | MongoError::OplogUnusable(_)
            | MongoError::OplogOverflow(_)
            | MongoError::Image { .. }
            | MongoError::Cancelled
            | MongoError::Internal(_) => true,
        }
    }

    /// Wrap a driver error with context, classifying connectivity and
    /// authentication problems into their own variants.
    pub(crate) fn from_driver(context: impl Into<String>, source: mongodb::error::Error) -> Self {
        use mongodb::error::ErrorKind;
        let context = context.into();
        match source.kind.as_ref() {
            ErrorKind::ServerSelection { .. } | ErrorKind::DnsResolve { .. } => {
                MongoError::Unreachable(format!("{context}: {source}"))
            }
            ErrorKind::Authentication { .. } => {
                MongoError::Authentication(format!("{context}: {source}"))
            }
            _ => MongoError::Command { context, source },
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        MongoError::Io {
            context: context.into(),
            source,
        }
    }
}

fn namespaces_list(ns: &[String]) -> String {
    let noun = if ns.len() == 1 {
        "collection"
    } else {
        "collections"
    };
    format!("{noun} {}", ns.join(", "))
}

fn list_or_none(ns: &[String]) -> String {
    if ns.is_empty() {
        "none".into()
    } else {
        ns.join(", ")
    }
}

fn is_transient_driver_error(e: &mongodb::error::Error) -> bool {
    use mongodb::error::ErrorKind;
    if e.contains_label(mongodb::error::RETRYABLE_WRITE_ERROR)
        || e.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR)
    {
        return true;
    }
    match e.kind.as_ref() {
        ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::DnsResolve { .. } => true,
        // Codes MongoDB treats as retryable for reads (HostUnreachable, HostNotFound,
        // NetworkTimeout, ShutdownInProgress, PrimarySteppedDown, ExceededTimeLimit,
        // SocketException, NotWritablePrimary, InterruptedAtShutdown,
        // InterruptedDueToReplStateChange, NotPrimaryNoSecondaryOk, NotPrimaryOrSecondary,
        // CursorNotFound (the dump can be restarted), plus 50915 BackupCursorOpenConflictWithCheckpoint.
        ErrorKind::Command(c) => matches!(
            c.code,
            6 | 7 | 89 | 91 | 189 | 262 | 9001 | 10107 | 11600 | 11602 | 13435 | 13436 | 43 | 50915
        ),
        _ => false,
    }
}

/// Result alias for this crate.
pub type Result<T, E = MongoError> = std::result::Result<T, E>;

/// Runs `fut` unless `cancel` fires first.
pub(crate) async fn cancellable<T>(
    cancel: &tokio_util::sync::CancellationToken,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(MongoError::Cancelled),
        r = fut => r,
    }
}
