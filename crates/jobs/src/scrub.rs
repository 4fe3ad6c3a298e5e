//! Scrubbing a repository: every chunk of every chunk store re-hashed, damaged ones moved to quarantine, then every
//! successful backup verified end to end ([`crate::integrity::verify_backup`]).
//!
//! Chunks come first so that a snapshot naming a chunk just quarantined is reported as damaged in the same pass.
//! Nothing is ever deleted: a damaged chunk is renamed under `quarantine/`, so the next snapshot that holds those
//! bytes finds it absent and writes it again. Backups are only reported; a damaged backup stays in the catalog
//! for an operator to decide on (restoring it fails cleanly, naming the damage).
//!
//! A chunk quarantined while a snapshot that reuses it is running makes that snapshot fail its final check
//! (`verify_reused`), as a concurrent sweep would; the next snapshot rewrites the chunk.

use std::time::Duration;

use ddsvault_catalog::{BackupFilter, BackupStatus, Catalog, Page};
use ddsvault_repo::{ChunkSeal, RepoError, RepoPath, Repository};
use tokio_util::sync::CancellationToken;

use crate::JobError;

/// What one scrub pass found and did.
#[derive(Debug, Default, Clone)]
pub struct ScrubReport {
    /// Chunks re-read and re-hashed.
    pub chunks_checked: u64,
    /// Intact chunks from before seals existed that were sealed now.
    pub chunks_sealed: u64,
    /// Damaged chunks: where they were, why, where they are now.
    pub chunks_quarantined: Vec<QuarantinedChunk>,
    /// Successful backups verified.
    pub backups_checked: u64,
    /// Backups completed before manifests were authenticated (verified, but without a catalog hash).
    pub backups_unauthenticated: Vec<i64>,
    /// Backups that failed verification, with the first problem found.
    pub backups_damaged: Vec<(i64, String)>,
}

impl ScrubReport {
    /// Whether anything damaged was found.
    pub fn is_clean(&self) -> bool {
        self.chunks_quarantined.is_empty() && self.backups_damaged.is_empty()
    }
}

/// One chunk moved to quarantine.
#[derive(Debug, Clone)]
pub struct QuarantinedChunk {
    /// The instance whose chunk store holds it.
    pub instance_id: String,
    /// The chunk's SHA-256 (its name in the store).
    pub sha256: String,
    /// What was wrong with it.
    pub reason: String,
    /// Where it was moved.
    pub moved_to: RepoPath,
}

/// One pass over the whole repository. Stops early (with what it found so far) if `cancel` fires.
///
/// # Errors
/// Catalog or store errors that prevent scrubbing (damage is reported, not an error).
pub async fn scrub(
    catalog: &Catalog,
    repo: &Repository,
    cancel: &CancellationToken,
) -> Result<ScrubReport, JobError> {
    let mut report = ScrubReport::default();
    for (instance_id, chunks) in repo.chunk_stores().await? {
        for chunk in chunks {
            if cancel.is_cancelled() {
                return Ok(report);
            }
            report.chunks_checked += 1;
            match repo.scrub_chunk(&chunk).await {
                Ok(ChunkSeal::Sealed) => {}
                Ok(ChunkSeal::Legacy) => report.chunks_sealed += 1,
                // Swept or quarantined by someone else meanwhile.
                Err(RepoError::NotFound { .. }) => {}
                Err(e @ RepoError::Integrity { .. }) => {
                    let moved_to = repo.quarantine_chunk(&chunk).await?;
                    tracing::error!(instance = %instance_id, chunk = %chunk.sha256, error = %e, to = %moved_to,
                        "damaged chunk quarantined");
                    report.chunks_quarantined.push(QuarantinedChunk {
                        instance_id: instance_id.clone(),
                        sha256: chunk.sha256.clone(),
                        reason: e.to_string(),
                        moved_to,
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    let mut page = 1;
    loop {
        let (_, backups) = catalog
            .list_backups(
                &BackupFilter::default(),
                Page {
                    number: page,
                    size: 100,
                },
            )
            .await?;
        if backups.is_empty() {
            break;
        }
        for b in backups.iter().filter(|b| b.status == BackupStatus::Success) {
            if cancel.is_cancelled() {
                return Ok(report);
            }
            report.backups_checked += 1;
            match crate::integrity::verify_backup(repo, b).await {
                Ok(v) if !v.authenticated => report.backups_unauthenticated.push(b.id),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(backup_id = b.id, error = %e, "backup damaged");
                    report.backups_damaged.push((b.id, e.to_string()));
                }
            }
        }
        page += 1;
    }
    Ok(report)
}

/// Runs [`scrub`] every `interval` (the first pass one interval after start: a scrub reads the whole repository
/// and should not compete with a starting server), until `cancel` fires. For `Tasks::spawn`.
///
/// # Errors
/// Never: a failed pass is logged and retried at the next interval.
pub async fn run_every(
    catalog: Catalog,
    repo: Repository,
    interval: Duration,
    cancel: CancellationToken,
) -> Result<(), String> {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(interval) => {}
        }
        match scrub(&catalog, &repo, &cancel).await {
            Ok(r) => tracing::info!(
                chunks_checked = r.chunks_checked,
                chunks_sealed = r.chunks_sealed,
                chunks_quarantined = r.chunks_quarantined.len(),
                backups_checked = r.backups_checked,
                backups_damaged = r.backups_damaged.len(),
                "scrub pass"
            ),
            Err(e) => tracing::error!(error = %e, "scrub pass failed; retrying next interval"),
        }
    }
}
