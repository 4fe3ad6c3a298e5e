//! Retention: deleting backups, on request (`DeleteBackup`) or when they expire (the garbage collector).
//!
//! Deletion is ordered so that a crash at any point is finished by the next pass, and catalog and repository agree
//! after a restart:
//! 1. the catalog marks the backup `Deleting`, atomically with the check that no pending or running restore job
//!    reads it; from then on it is not listed, downloaded or restored;
//! 2. its files are deleted (`Repository::delete_prefix` removes the manifest first, so a half-deleted backup
//!    never looks complete);
//! 3. its row is deleted.
//!
//! A backup left `Deleting` by a crash is found by the next pass ([`CatalogBackend::list_deleting_backups`]) and
//! finished. Every step is idempotent, so several processes sharing the catalog may collect at once.
//!
//! [`CatalogBackend::list_deleting_backups`]: ddsvault_catalog::CatalogBackend::list_deleting_backups

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ddsvault_catalog::{Backup, Catalog, DeleteMark};
use ddsvault_repo::{RepoPath, Repository};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::JobError;

/// Where "now" comes from: the system clock in production, a controlled one in tests.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock moved by hand (tests): `ManualClock(Mutex::new(t))`, then `*clock.0.lock() = later`.
#[derive(Debug)]
pub struct ManualClock(pub std::sync::Mutex<DateTime<Utc>>);

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        // A poisoned lock still holds a valid time.
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Expired backups handled per catalog query (the pass loops until none is left).
const BATCH: u32 = 100;

/// What [`delete_backup`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deletion {
    /// Files and row are gone.
    Deleted,
    /// A pending or running restore job reads the backup; nothing was touched.
    InUse { job_id: i64 },
    /// The backup is still being taken; nothing was touched.
    Running,
    /// No such backup (perhaps deleted concurrently).
    NotFound,
}

/// Deletes one backup in the safe order described in the module documentation.
///
/// # Errors
/// Catalog or repository errors. The backup then stays `Deleting` and the next collector pass finishes it.
pub async fn delete_backup(
    catalog: &Catalog,
    repo: &Repository,
    backup_id: i64,
) -> Result<Deletion, JobError> {
    let backup = match catalog.mark_backup_deleting(backup_id).await? {
        DeleteMark::Marked(b) => b,
        DeleteMark::InUse { job_id } => return Ok(Deletion::InUse { job_id }),
        DeleteMark::Running => return Ok(Deletion::Running),
        DeleteMark::NotFound => return Ok(Deletion::NotFound),
    };
    for prefix in prefixes_of(&backup) {
        repo.delete_prefix(&prefix).await?;
    }
    catalog.delete_backup_row(backup.id).await?;
    tracing::info!(backup_id = backup.id, instance = %backup.instance_id, "backup deleted");
    Ok(Deletion::Deleted)
}

/// The repository prefixes holding a backup's files: its canonical prefix, plus the recorded one if it differs
/// and still lies inside the instance's own area (a damaged row can never widen a deletion).
fn prefixes_of(b: &Backup) -> Vec<RepoPath> {
    let canonical = Repository::backup_prefix(&b.instance_id, b.id);
    let mut out = vec![canonical.clone()];
    if let Ok(recorded) = RepoPath::new(b.repo_prefix.clone()) {
        let area = Repository::instance_prefix(&b.instance_id);
        if !b.repo_prefix.is_empty()
            && recorded.as_str() != canonical.as_str()
            && recorded.as_str() != area.as_str()
            && recorded.starts_with(&area)
        {
            out.push(recorded);
        }
    }
    out
}

/// What one collector pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Backups deleted (expired ones and interrupted deletions finished).
    pub deleted: Vec<i64>,
    /// Backups kept because a restore reads them.
    pub in_use: Vec<i64>,
    /// Deletions that failed (retried next pass).
    pub failed: usize,
}

/// The garbage collector: removes expired backups and finishes interrupted deletions.
#[derive(Debug)]
pub struct Gc {
    catalog: Catalog,
    repo: Repository,
    clock: Arc<dyn Clock>,
    interval: Duration,
    passes: watch::Sender<u64>,
}

impl Gc {
    pub fn new(catalog: Catalog, repo: Repository, interval: Duration) -> Self {
        Self {
            catalog,
            repo,
            clock: Arc::new(SystemClock),
            interval,
            passes: watch::channel(0).0,
        }
    }

    /// Replaces the clock (tests).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Counts finished passes (tests and diagnostics wait on it instead of sleeping).
    pub fn passes(&self) -> watch::Receiver<u64> {
        self.passes.subscribe()
    }

    /// One pass: finish every `Deleting` backup, then delete every backup expired at the clock's now.
    ///
    /// # Errors
    /// A catalog error while listing; failures on single backups are counted and logged, not returned.
    pub async fn pass(&self) -> Result<GcReport, JobError> {
        let now = self.clock.now();
        let mut report = GcReport::default();
        let leftover = self.catalog.list_deleting_backups().await?;
        self.delete_all(leftover, &mut report).await;
        loop {
            let expired = self.catalog.list_expired_backups(now, BATCH).await?;
            // Backups kept (in use) or failed stay expired: stop once a batch makes no progress.
            let fresh: Vec<Backup> = expired
                .into_iter()
                .filter(|b| !report.in_use.contains(&b.id))
                .collect();
            let before = report.deleted.len();
            let n = fresh.len();
            self.delete_all(fresh, &mut report).await;
            if n < BATCH as usize || report.deleted.len() == before {
                break;
            }
        }
        Ok(report)
    }

    async fn delete_all(&self, backups: Vec<Backup>, report: &mut GcReport) {
        for b in backups {
            match delete_backup(&self.catalog, &self.repo, b.id).await {
                Ok(Deletion::Deleted) => report.deleted.push(b.id),
                Ok(Deletion::InUse { job_id }) => {
                    tracing::info!(
                        backup_id = b.id,
                        restore_job = job_id,
                        "expired backup kept: a restore reads it"
                    );
                    report.in_use.push(b.id);
                }
                Ok(Deletion::Running | Deletion::NotFound) => {}
                Err(e) => {
                    tracing::warn!(backup_id = b.id, error = %e, "could not delete backup; retrying next pass");
                    report.failed += 1;
                }
            }
        }
    }

    /// Runs a pass at once, then one every `interval`, until `cancel` fires.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) -> Result<(), String> {
        loop {
            match self.pass().await {
                Ok(r) if !r.deleted.is_empty() || r.failed > 0 => {
                    tracing::info!(
                        deleted = r.deleted.len(),
                        kept_in_use = r.in_use.len(),
                        failed = r.failed,
                        "retention pass"
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "retention pass failed; retrying next interval")
                }
            }
            self.passes.send_modify(|n| *n += 1);
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;
    use bytes::Bytes;
    use chrono::TimeZone;
    use ddsvault_catalog::{BackupCompletion, BackupStatus, NewBackupJob, NewJob};
    use std::sync::Mutex;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .single()
            .expect("t0")
    }

    async fn setup() -> (Catalog, Repository, Arc<ManualClock>) {
        let cat = ddsvault_catalog::open("sqlite::memory:")
            .await
            .expect("catalog");
        (
            cat,
            Repository::memory(),
            Arc::new(ManualClock(Mutex::new(t0()))),
        )
    }

    /// A successful backup with an archive and a manifest, expiring `days` after t0 (`None`: permanent).
    async fn backup(cat: &Catalog, repo: &Repository, inst: &str, days: Option<i64>) -> i64 {
        let (job, b) = cat
            .create_backup_job(&NewBackupJob {
                instance_id: inst.into(),
                method: "Logical".into(),
                mode: "Manual".into(),
                retention_days: days.unwrap_or(-1),
                engine_version: "7.0".into(),
                params: serde_json::json!({}),
                now: t0(),
            })
            .await
            .expect("job");
        cat.claim_next_job("n", t0())
            .await
            .expect("claim")
            .expect("claimed");
        let prefix = Repository::backup_prefix(inst, b.id);
        repo.put(
            &prefix.join("archive.zst").expect("p"),
            Bytes::from_static(b"data"),
        )
        .await
        .expect("put");
        repo.put(
            &Repository::manifest_path(&prefix),
            Bytes::from_static(b"{}"),
        )
        .await
        .expect("put");
        cat.complete_backup(
            job.id,
            "n",
            &BackupCompletion {
                end_time: t0(),
                expire_time: days
                    .map(|d| t0() + chrono::Duration::days(d))
                    .unwrap_or_else(ddsvault_catalog::permanent_expiry),
                size: 4,
                db_names: "shop".into(),
                repo_prefix: prefix.to_string(),
                details: serde_json::json!({}),
            },
        )
        .await
        .expect("complete");
        b.id
    }

    async fn files(repo: &Repository, inst: &str, id: i64) -> usize {
        repo.list(&Repository::backup_prefix(inst, id))
            .await
            .map(|v| v.len())
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn expired_backups_go_at_their_expiry_only() {
        let (cat, repo, clock) = setup().await;
        let short = backup(&cat, &repo, "dds-a", Some(7)).await;
        let long = backup(&cat, &repo, "dds-b", Some(30)).await;
        let forever = backup(&cat, &repo, "dds-c", None).await;
        let gc =
            Gc::new(cat.clone(), repo.clone(), Duration::from_secs(60)).with_clock(clock.clone());

        *clock.0.lock().expect("clock") =
            t0() + chrono::Duration::days(7) - chrono::Duration::seconds(1);
        assert_eq!(gc.pass().await.expect("pass"), GcReport::default());
        assert_eq!(files(&repo, "dds-a", short).await, 2);

        *clock.0.lock().expect("clock") = t0() + chrono::Duration::days(7);
        assert_eq!(gc.pass().await.expect("pass").deleted, vec![short]);
        assert_eq!(cat.get_backup(short).await.expect("get"), None);
        assert_eq!(files(&repo, "dds-a", short).await, 0);
        assert_eq!(files(&repo, "dds-b", long).await, 2);

        *clock.0.lock().expect("clock") = t0() + chrono::Duration::days(3650);
        assert_eq!(gc.pass().await.expect("pass").deleted, vec![long]);
        assert!(cat.get_backup(forever).await.expect("get").is_some());
        assert_eq!(files(&repo, "dds-c", forever).await, 2);
    }

    #[tokio::test]
    async fn a_deletion_interrupted_by_a_crash_is_finished_next_pass() {
        let (cat, repo, clock) = setup().await;
        let id = backup(&cat, &repo, "dds-a", Some(30)).await;
        // The crash: marked Deleting, manifest removed, process gone before the archive and the row.
        assert!(matches!(
            cat.mark_backup_deleting(id).await.expect("mark"),
            DeleteMark::Marked(_)
        ));
        repo.delete(&Repository::manifest_path(&Repository::backup_prefix(
            "dds-a", id,
        )))
        .await
        .expect("delete manifest");
        assert_eq!(files(&repo, "dds-a", id).await, 1);
        // Not expired, but Deleting: the next pass (a fresh collector, as after a restart) finishes it.
        let gc = Gc::new(cat.clone(), repo.clone(), Duration::from_secs(60)).with_clock(clock);
        assert_eq!(gc.pass().await.expect("pass").deleted, vec![id]);
        assert_eq!(cat.get_backup(id).await.expect("get"), None);
        assert_eq!(files(&repo, "dds-a", id).await, 0);
    }

    #[tokio::test]
    async fn a_backup_read_by_a_restore_is_kept_until_the_restore_ends() {
        let (cat, repo, clock) = setup().await;
        let id = backup(&cat, &repo, "dds-a", Some(7)).await;
        let restore = cat
            .create_job(&NewJob {
                kind: "restore".into(),
                instance_id: "dds-target".into(),
                backup_id: Some(id),
                mode: "Manual".into(),
                params: serde_json::json!({}),
                now: t0(),
            })
            .await
            .expect("restore");
        *clock.0.lock().expect("clock") = t0() + chrono::Duration::days(8);
        let gc = Gc::new(cat.clone(), repo.clone(), Duration::from_secs(60)).with_clock(clock);
        let r = gc.pass().await.expect("pass");
        assert_eq!((r.deleted.len(), r.in_use.clone()), (0, vec![id]));
        let b = cat.get_backup(id).await.expect("get").expect("kept");
        assert_eq!(b.status, BackupStatus::Success);
        assert_eq!(files(&repo, "dds-a", id).await, 2);
        // DeleteBackup is refused the same way.
        assert_eq!(
            delete_backup(&cat, &repo, id).await.expect("delete"),
            Deletion::InUse { job_id: restore.id }
        );
        cat.fail_job(restore.id, "done", t0()).await.expect("end");
        assert_eq!(gc.pass().await.expect("pass").deleted, vec![id]);
        assert_eq!(files(&repo, "dds-a", id).await, 0);
    }

    #[tokio::test]
    async fn delete_backup_outcomes() {
        let (cat, repo, _) = setup().await;
        let id = backup(&cat, &repo, "dds-a", None).await;
        assert_eq!(
            delete_backup(&cat, &repo, id).await.expect("d"),
            Deletion::Deleted
        );
        assert_eq!(
            delete_backup(&cat, &repo, id).await.expect("d"),
            Deletion::NotFound
        );
        let (_, running) = cat
            .create_backup_job(&NewBackupJob {
                instance_id: "dds-a".into(),
                method: "Logical".into(),
                mode: "Manual".into(),
                retention_days: 7,
                engine_version: String::new(),
                params: serde_json::json!({}),
                now: t0(),
            })
            .await
            .expect("job");
        assert_eq!(
            delete_backup(&cat, &repo, running.id).await.expect("d"),
            Deletion::Running
        );
    }

    #[tokio::test]
    async fn the_task_collects_at_start_and_stops_on_cancel() {
        let (cat, repo, clock) = setup().await;
        let id = backup(&cat, &repo, "dds-a", Some(7)).await;
        *clock.0.lock().expect("clock") = t0() + chrono::Duration::days(8);
        let gc = Arc::new(
            Gc::new(cat.clone(), repo.clone(), Duration::from_secs(3600)).with_clock(clock),
        );
        let mut passes = gc.passes();
        let tasks = crate::Tasks::new();
        let g = Arc::clone(&gc);
        tasks.spawn("gc", move |token| g.run(token));
        passes.wait_for(|n| *n >= 1).await.expect("first pass");
        assert_eq!(cat.get_backup(id).await.expect("get"), None);
        assert!(tasks.shutdown(Duration::from_secs(10)).await);
    }
}
