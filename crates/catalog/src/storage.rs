//! What DescribeBackupStorage reports, kept in the catalog (migration 0015) instead of listed from the
//! repository on every call (issue 17.7): each committed backup's stored bytes, and each snapshot chunk an
//! instance's committed snapshots named, once, with its stored size.

/// What one committed backup occupies in the repository, recorded with its Success
/// ([`crate::CatalogBackend::complete_backup_with_storage`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackupStorage {
    /// Bytes under the backup's own prefix (data files, snapshot index, manifest).
    pub stored_bytes: u64,
    /// The snapshot chunks the backup names, with their stored (compressed) sizes; empty for Logical and
    /// Physical backups. Chunks another snapshot of the instance already named are not counted twice.
    pub chunks: Vec<ChunkUsage>,
}

/// One snapshot chunk of an instance's store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkUsage {
    /// The chunk's content digest (its name in the store).
    pub digest: String,
    /// Stored (compressed) bytes.
    pub size: u64,
}

/// An instance's repository usage as the catalog records it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageUsage {
    /// Stored bytes of the instance's Success backups (their own prefixes).
    pub backup_bytes: u64,
    /// Stored bytes of the chunks committed snapshots named, until the collector deletes them.
    pub chunk_bytes: u64,
}

impl StorageUsage {
    /// `FullStorageSize`.
    pub fn total(&self) -> u64 {
        self.backup_bytes.saturating_add(self.chunk_bytes)
    }
}
