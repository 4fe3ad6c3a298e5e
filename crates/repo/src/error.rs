//! The repository error type.

use std::ops::Range;

/// Errors of the repository layer. Variants are named for what the caller has to decide;
/// [`RepoError::is_permanent`] tells whether retrying can help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepoError {
    /// The object (or the manifest) does not exist.
    #[error("object not found: {path}")]
    NotFound {
        /// The path that was looked up.
        path: String,
    },

    /// A path broke the [`crate::RepoPath`] rules.
    #[error("invalid repository path {path:?}: {reason}")]
    InvalidPath {
        /// The rejected path.
        path: String,
        /// Which rule it broke.
        reason: String,
    },

    /// A range read asked for bytes the object does not have.
    #[error("range {}..{} not satisfiable for {path} (size {size})", range.start, range.end)]
    RangeNotSatisfiable {
        /// The object.
        path: String,
        /// The requested range.
        range: Range<u64>,
        /// The object size.
        size: u64,
    },

    /// Stored data does not match what the manifest says (or what was expected).
    #[error("integrity check failed for {path}: {what} expected {expected}, found {actual}")]
    Integrity {
        /// The file that failed the check.
        path: String,
        /// What was compared: `"size"` or `"sha256"`.
        what: &'static str,
        /// The expected value (from the manifest).
        expected: String,
        /// The value found in the store.
        actual: String,
    },

    /// The manifest could not be encoded or decoded, or is not one we understand.
    #[error("bad manifest {path}: {reason}")]
    Manifest {
        /// The manifest path.
        path: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The operation was cancelled through a cancellation token or by
    /// [`crate::UploadHandle::abort`]/dropping the handle.
    #[error("operation cancelled")]
    Cancelled,

    /// The producer dropped its [`crate::UploadWriter`] without calling
    /// [`crate::UploadWriter::close`] (it failed or panicked), so the upload was aborted and
    /// nothing was published.
    #[error("upload of {path} aborted: the writer was dropped without close()")]
    WriterDropped {
        /// The destination that was not written.
        path: String,
    },

    /// An error from the underlying object store.
    #[error("object store: {0}")]
    Store(#[source] object_store::Error),

    /// A local I/O error (creating the repository directory, or from the upload writer).
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),

    /// An internal task failed (panicked or was lost).
    #[error("internal error: {0}")]
    Internal(String),

    /// The repository cannot be used (wrong credentials, missing bucket, unreachable endpoint), found by
    /// [`crate::Repository::check`].
    #[error("repository {repository} is not usable: {reason}")]
    Unusable {
        /// Where the repository is (never with credentials).
        repository: String,
        /// The failing step and the store's reason.
        reason: String,
    },

    /// An S3 Object Lock request (reading the bucket's configuration, reading or putting an object's retention)
    /// failed.
    #[error("object lock on {path:?}: {reason}")]
    ObjectLock {
        /// The object (empty for the bucket).
        path: String,
        /// The step and the server's answer.
        reason: String,
    },

    /// The object is under S3 Object Lock retention: it cannot be deleted before then.
    #[error("{path} is retained (S3 Object Lock, {mode}) until {until}")]
    Retained {
        /// The object.
        path: String,
        /// `COMPLIANCE` or `GOVERNANCE`.
        mode: &'static str,
        /// The retain-until date.
        until: chrono::DateTime<chrono::Utc>,
    },
}

/// `e` and its sources, `: `-separated: object_store hides the HTTP status and the server's message (e.g.
/// `NoSuchBucket`, `InvalidAccessKeyId`) in the source chain.
pub(crate) fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

impl RepoError {
    /// `true` when retrying the same operation cannot succeed: missing objects, bad input,
    /// corrupt data, cancellation, and store errors of the same kinds. Network and other
    /// generic store errors, I/O errors and internal errors are considered transient.
    pub fn is_permanent(&self) -> bool {
        match self {
            RepoError::NotFound { .. }
            | RepoError::InvalidPath { .. }
            | RepoError::RangeNotSatisfiable { .. }
            | RepoError::Integrity { .. }
            | RepoError::Manifest { .. }
            | RepoError::Cancelled
            | RepoError::WriterDropped { .. }
            | RepoError::Unusable { .. }
            | RepoError::Retained { .. } => true,
            RepoError::Store(e) => store_error_is_permanent(e),
            RepoError::Io(_) | RepoError::Internal(_) | RepoError::ObjectLock { .. } => false,
        }
    }

    /// `true` for [`RepoError::NotFound`] (including a store-level not-found).
    pub fn is_not_found(&self) -> bool {
        matches!(self, RepoError::NotFound { .. })
            || matches!(self, RepoError::Store(object_store::Error::NotFound { .. }))
    }

    /// Maps a store error for an operation on `path`, lifting not-found into our variant.
    pub(crate) fn from_store(path: &crate::RepoPath, e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { .. } => RepoError::NotFound {
                path: path.to_string(),
            },
            other => RepoError::Store(other),
        }
    }
}

fn store_error_is_permanent(e: &object_store::Error) -> bool {
    use object_store::Error as E;
    match e {
        E::NotFound { .. }
        | E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::AlreadyExists { .. }
        | E::Precondition { .. }
        | E::NotModified { .. }
        | E::NotImplemented
        | E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::UnknownConfigurationKey { .. } => true,
        // Generic (network, 5xx, local I/O), JoinError and future variants: worth a retry.
        _ => false,
    }
}

impl From<object_store::Error> for RepoError {
    fn from(e: object_store::Error) -> Self {
        RepoError::Store(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanence() {
        assert!(RepoError::NotFound { path: "x".into() }.is_permanent());
        assert!(RepoError::Cancelled.is_permanent());
        assert!(RepoError::Integrity {
            path: "x".into(),
            what: "size",
            expected: "1".into(),
            actual: "2".into()
        }
        .is_permanent());
        assert!(!RepoError::Io(std::io::Error::other("x")).is_permanent());
        let generic = object_store::Error::Generic {
            store: "S3",
            source: "connection reset".into(),
        };
        assert!(!RepoError::Store(generic).is_permanent());
        assert!(RepoError::Store(object_store::Error::NotImplemented).is_permanent());
    }
}
