//! What a committed backup occupies in the repository, measured once (at commit, or once for a backup committed
//! before the catalog recorded it) so DescribeBackupStorage answers from the catalog instead of listing the
//! repository on every call (issue 17.7, migration 0015, docs/decisions.md).

use std::collections::HashSet;

use ddsvault_catalog::{BackupStorage, Catalog, ChunkUsage};
use ddsvault_repo::{RepoPath, Repository, SnapshotIndex};

use crate::JobError;

/// The usage of the committed backup under `prefix` of `instance_id`: the bytes of every object under its prefix
/// and, for a snapshot, the chunks its index names with their stored sizes (one listing of the instance's chunk
/// store). A chunk the index names that the store does not hold is left out: it occupies nothing.
///
/// # Errors
/// The repository's error (listing, manifest or index that cannot be read).
pub async fn measure(
    repo: &Repository,
    instance_id: &str,
    prefix: &RepoPath,
) -> Result<BackupStorage, JobError> {
    let stored_bytes = repo.list(prefix).await?.iter().map(|o| o.size).sum();
    let mut chunks = Vec::new();
    if let Some(m) = repo.read_manifest(prefix).await? {
        if let Some(index) = repo.read_snapshot_index(prefix, &m).await? {
            let sizes = repo.stored_chunk_sizes(instance_id).await?;
            let mut seen = HashSet::new();
            for f in index.files {
                for c in f.chunks {
                    if let Some(size) = sizes.get(&c.sha256) {
                        if seen.insert(c.sha256.clone()) {
                            chunks.push(ChunkUsage {
                                digest: c.sha256,
                                size: *size,
                            });
                        }
                    }
                }
            }
        }
    }
    Ok(BackupStorage {
        stored_bytes,
        chunks,
    })
}

/// [`measure`] for a snapshot just committed, from its index in memory: every chunk it names is in the store with
/// the stored size the index records (the job wrote it, or checked it there after writing the index), so no
/// listing of the chunk store is needed. A chunk without a recorded size (an index of an earlier version; never
/// one this version writes) falls back to [`measure`].
///
/// # Errors
/// The repository's error (listing the backup's prefix).
pub async fn measure_snapshot(
    repo: &Repository,
    instance_id: &str,
    prefix: &RepoPath,
    index: &SnapshotIndex,
) -> Result<BackupStorage, JobError> {
    let mut chunks = Vec::new();
    let mut seen = HashSet::new();
    for c in index.files.iter().flat_map(|f| f.chunks.iter()) {
        let Some(size) = c.stored else {
            return measure(repo, instance_id, prefix).await;
        };
        if seen.insert(c.sha256.as_str()) {
            chunks.push(ChunkUsage {
                digest: c.sha256.clone(),
                size,
            });
        }
    }
    let stored_bytes = repo.list(prefix).await?.iter().map(|o| o.size).sum();
    Ok(BackupStorage {
        stored_bytes,
        chunks,
    })
}

/// Records the usage of every Success backup the catalog has none for: backups committed before migration 0015
/// (run once at start and on every collector pass, where it finds nothing after the first time). A backup whose
/// files cannot be measured is logged and retried next time; it does not stop the others.
///
/// Returns how many backups were recorded.
pub async fn backfill(catalog: &Catalog, repo: &Repository) -> Result<u64, JobError> {
    let mut failed: HashSet<i64> = HashSet::new();
    let mut recorded = 0;
    loop {
        let batch = catalog
            .backups_without_storage(100 + u32::try_from(failed.len()).unwrap_or(u32::MAX - 100))
            .await?;
        let todo: Vec<_> = batch.iter().filter(|b| !failed.contains(&b.id)).collect();
        if todo.is_empty() {
            return Ok(recorded);
        }
        for b in todo {
            let measured = match RepoPath::new(b.repo_prefix.clone()) {
                Ok(prefix) => measure(repo, &b.instance_id, &prefix).await,
                Err(e) => Err(e.into()),
            };
            match measured {
                Ok(usage) => {
                    if catalog.record_backup_storage(b.id, &usage).await? {
                        recorded += 1;
                    }
                }
                Err(e) => {
                    tracing::warn!(backup_id = b.id, error = %e, "could not measure a backup's stored size; DescribeBackupStorage leaves it out until the next try");
                    failed.insert(b.id);
                }
            }
        }
    }
}
