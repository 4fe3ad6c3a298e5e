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
//! After the deletions a pass sweeps orphan snapshot chunks ([`Gc::pass`], safety argument on
//! `Gc::sweep_instance`).
//!
//! [`CatalogBackend::list_deleting_backups`]: ddsvault_catalog::CatalogBackend::list_deleting_backups

use std::sync::Arc;
use std::time::Duration;

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use ddsvault_catalog::{
    permanent_expiry, Backup, BackupFilter, BackupStatus, Catalog, DeleteMark, JobState, Page,
    SCHEDULE_HIGH_FREQUENCY,
};
use ddsvault_repo::{RepoPath, Repository, StoredChunk};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, SystemClock};
use crate::retention::{plan_retention, Candidate, Plan, RetentionRules, SlotKind};
use crate::JobError;

/// Expired backups handled per catalog query (the pass loops until none is left).
const BATCH: u32 = 100;

/// Orphan chunks deleted between two looks at the instance's jobs (see `Gc::sweep_instance`): small, so the
/// window in which a just-created snapshot job is not yet seen stays a few deletions long.
const SWEEP_BATCH: usize = 32;

/// Default `[retention] chunk_grace_secs`: chunks written less than this long before a pass are never swept.
pub const DEFAULT_CHUNK_GRACE: Duration = Duration::from_secs(3600);

/// What [`delete_backup`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deletion {
    /// Files and row are gone.
    Deleted,
    /// A pending or running restore job reads the backup; nothing was touched.
    InUse {
        /// The restore job that reads the backup.
        job_id: i64,
    },
    /// The backup is still being taken; nothing was touched.
    Running,
    /// No such backup (perhaps deleted concurrently).
    NotFound,
    /// The instance's retention lock holds (requested deletions only); nothing was touched.
    Locked {
        /// When a requested unlock takes effect; `None` while no unlock was requested.
        unlock_at: Option<DateTime<Utc>>,
    },
    /// The backup's objects are under S3 Object Lock retention until then; nothing was touched.
    Retained {
        /// When the Object Lock retention of the objects ends.
        until: DateTime<Utc>,
    },
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
    if let Some(until) = retained_until(catalog, repo, backup_id, Utc::now()).await? {
        return Ok(Deletion::Retained { until });
    }
    let mark = catalog.mark_backup_deleting(backup_id).await?;
    finish_deletion(catalog, repo, mark).await
}

/// When the objects of a backup not yet being deleted are under S3 Object Lock retention after `now`: until
/// then S3 refuses to delete them (a plain DELETE would only hide them behind a delete marker), so ddsvault
/// refuses the deletion as well. `None` on repositories without object lock.
async fn retained_until(
    catalog: &Catalog,
    repo: &Repository,
    backup_id: i64,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, JobError> {
    let Some(b) = catalog.get_backup(backup_id).await? else {
        return Ok(None);
    };
    if b.status == BackupStatus::Deleting {
        return Ok(None);
    }
    for prefix in prefixes_of(&b) {
        match repo.check_not_retained(&prefix, now).await {
            Ok(()) => {}
            Err(ddsvault_repo::RepoError::Retained { until, .. }) => return Ok(Some(until)),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// A deletion someone asked for (`DeleteBackup`): as [`delete_backup`], refused while the instance's retention
/// lock holds at `now`, checked in the same catalog transaction that marks the backup.
///
/// # Errors
/// As [`delete_backup`].
pub async fn delete_backup_on_request(
    catalog: &Catalog,
    repo: &Repository,
    backup_id: i64,
    now: DateTime<Utc>,
) -> Result<Deletion, JobError> {
    if let Some(until) = retained_until(catalog, repo, backup_id, now).await? {
        return Ok(Deletion::Retained { until });
    }
    let mark = catalog
        .mark_backup_deleting_unless_locked(backup_id, now)
        .await?;
    finish_deletion(catalog, repo, mark).await
}

async fn finish_deletion(
    catalog: &Catalog,
    repo: &Repository,
    mark: DeleteMark,
) -> Result<Deletion, JobError> {
    let backup = match mark {
        DeleteMark::Marked(b) => b,
        DeleteMark::InUse { job_id } => return Ok(Deletion::InUse { job_id }),
        DeleteMark::Running => return Ok(Deletion::Running),
        DeleteMark::NotFound => return Ok(Deletion::NotFound),
        DeleteMark::Locked { unlock_at } => return Ok(Deletion::Locked { unlock_at }),
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
pub(crate) fn prefixes_of(b: &Backup) -> Vec<RepoPath> {
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

/// Every successful backup of an instance with the slot that took it (retention looks at all of them).
pub(crate) async fn candidates(
    catalog: &Catalog,
    instance_id: &str,
) -> Result<Vec<Candidate>, JobError> {
    let slots: HashMap<i64, (SlotKind, DateTime<Utc>)> = catalog
        .list_backup_slots(instance_id)
        .await?
        .into_iter()
        .map(|s| {
            let kind = if s.schedule == SCHEDULE_HIGH_FREQUENCY {
                SlotKind::HighFrequency
            } else {
                SlotKind::Standard
            };
            (s.backup_id, (kind, s.slot_start))
        })
        .collect();
    let filter = BackupFilter {
        instance_id: Some(instance_id.to_string()),
        ..BackupFilter::default()
    };
    let mut out = Vec::new();
    for number in 1u32.. {
        let (total, page) = catalog
            .list_backups(&filter, Page { number, size: 500 })
            .await?;
        let empty = page.is_empty();
        out.extend(
            page.into_iter()
                .filter(|b| b.status == BackupStatus::Success)
                .map(|b| Candidate {
                    backup_id: b.id,
                    expire_time: b.expire_time,
                    slot: slots.get(&b.id).copied(),
                }),
        );
        if empty || u64::from(number) * 500 >= total {
            break;
        }
    }
    Ok(out)
}

/// What one collector pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Backups deleted (expired ones and interrupted deletions finished).
    pub deleted: Vec<i64>,
    /// Backups kept because a restore reads them.
    pub in_use: Vec<i64>,
    /// Expired backups kept because their objects are still under S3 Object Lock retention (the store's clock
    /// or a longer retention put by hand); retried next pass.
    pub retained: Vec<i64>,
    /// Expired backups a tiered policy keeps longer: their recorded expiry was extended.
    pub extended: Vec<i64>,
    /// Deletions and chunk sweeps that failed (retried next pass).
    pub failed: usize,
    /// Orphan snapshot chunks deleted.
    pub chunks_swept: u64,
    /// Their stored (compressed) bytes.
    pub chunk_bytes_swept: u64,
    /// Audit records older than the audit retention, deleted.
    pub audit_pruned: u64,
    /// Instances whose chunk store was not (fully) swept, and why; retried next pass.
    pub chunk_stores_skipped: Vec<(String, String)>,
}

/// The orphan chunks of one instance's chunk store: swept by a pass, or what a dry run would sweep.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkSweep {
    /// The instance whose chunk store this is.
    pub instance_id: String,
    /// Orphan chunks (deleted, or that a pass would delete).
    pub chunks: u64,
    /// Their stored (compressed) bytes.
    pub bytes: u64,
    /// Unreferenced chunks kept because they are younger than the grace period.
    pub young: u64,
    /// Why the store was not (fully) swept, if it was not.
    pub skipped: Option<String>,
    /// The reason above is an error (catalog, repository, unreadable index), not a job at work.
    pub failed: bool,
}

/// What retention decides for the expired backups of one instance.
#[derive(Clone, Debug, PartialEq)]
pub struct InstancePlan {
    /// The instance.
    pub instance_id: String,
    /// The backups whose recorded expiry has passed.
    pub expired: Vec<Backup>,
    /// The decision for each of them (`keep` entries are extensions of the recorded expiry).
    pub plan: Plan,
}

/// What `ddsvault retention --dry-run` shows: the deletions a pass would do now, and why.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DryRun {
    /// The instant the dry run was computed for.
    pub now: DateTime<Utc>,
    /// Deletions interrupted earlier (a pass finishes them).
    pub unfinished: Vec<Backup>,
    /// Retention's decision for each instance with expired backups.
    pub plans: Vec<InstancePlan>,
    /// Orphan chunks a pass would sweep now, per chunk store (computed before the deletions above, so the
    /// chunks only those backups use are not counted yet).
    pub chunks: Vec<ChunkSweep>,
}

/// The garbage collector: removes expired backups, finishes interrupted deletions and sweeps orphan chunks.
#[derive(Debug)]
pub struct Gc {
    catalog: Catalog,
    repo: Repository,
    clock: Arc<dyn Clock>,
    interval: Duration,
    chunk_grace: Duration,
    /// How long audit records are kept; `None`: forever.
    audit_retention: Option<chrono::Duration>,
    passes: watch::Sender<u64>,
    /// Tests: the sweep signals `.0` before each batch's job check and waits for `.1`.
    #[cfg(test)]
    before_batch: Option<Arc<(tokio::sync::Notify, tokio::sync::Notify)>>,
}

impl Gc {
    /// A collector over `catalog` and `repo` that runs a pass every `interval`.
    pub fn new(catalog: Catalog, repo: Repository, interval: Duration) -> Self {
        Self {
            catalog,
            repo,
            clock: Arc::new(SystemClock),
            interval,
            chunk_grace: DEFAULT_CHUNK_GRACE,
            audit_retention: None,
            passes: watch::channel(0).0,
            #[cfg(test)]
            before_batch: None,
        }
    }

    /// Keeps audit records for `days` days (`[retention] audit_retention_days`; 0: forever).
    #[must_use]
    pub fn with_audit_retention(mut self, days: u32) -> Self {
        self.audit_retention = (days > 0).then(|| chrono::Duration::days(i64::from(days)));
        self
    }

    /// Sets the grace period of the chunk sweep (`[retention] chunk_grace_secs`).
    #[must_use]
    pub fn with_chunk_grace(mut self, grace: Duration) -> Self {
        self.chunk_grace = grace;
        self
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

    /// One pass: finish every `Deleting` backup, then apply [`plan_retention`] to every backup expired at the
    /// clock's now: delete what no policy keeps, extend the recorded expiry of what a tier keeps longer; then
    /// sweep the orphan snapshot chunks of every chunk store (`Gc::sweep_instance`).
    ///
    /// # Errors
    /// A catalog error while listing; failures on single backups are counted and logged, not returned.
    pub async fn pass(&self) -> Result<GcReport, JobError> {
        let now = self.clock.now();
        let mut report = GcReport::default();
        let leftover = self.catalog.list_deleting_backups().await?;
        self.delete_all(leftover, &mut report).await;
        // Backups kept (in use) or failed stay expired: skip them, and stop once a batch makes no progress.
        let mut skip: HashSet<i64> = HashSet::new();
        loop {
            let plans = self.plan_expired(now, None, BATCH, &skip).await?;
            let listed: usize = plans.iter().map(|p| p.expired.len()).sum();
            let before = report.deleted.len() + report.extended.len();
            for p in plans {
                self.apply(&p, &mut report, &mut skip).await;
            }
            if listed == 0 || report.deleted.len() + report.extended.len() == before {
                break;
            }
        }
        // After the deletions, so the chunks only the backups just deleted used go in the same pass.
        for sweep in self.sweep_chunks(now, None, true).await {
            report.chunks_swept += sweep.chunks;
            report.chunk_bytes_swept += sweep.bytes;
            if sweep.failed {
                report.failed += 1;
            }
            if let Some(why) = sweep.skipped {
                report.chunk_stores_skipped.push((sweep.instance_id, why));
            }
        }
        // S3: multipart uploads whose job could not clean up (the store was down when it failed) and whose
        // process is long gone. Uploads of crashed jobs go sooner, with their job's files, at recovery.
        match self.repo.sweep_uploads(self.repo.lost_upload_grace()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(uploads = n, "aborted lost multipart uploads"),
            Err(e) => {
                tracing::warn!(error = %e, "could not sweep lost multipart uploads; retrying next pass");
                report.failed += 1;
            }
        }
        // Backups committed before the catalog recorded their usage (migration 0015); nothing after the first time.
        if let Err(e) = crate::storage::backfill(&self.catalog, &self.repo).await {
            tracing::warn!(error = %e, "could not record the stored size of older backups; retrying next pass");
            report.failed += 1;
        }
        if let Some(keep) = self.audit_retention {
            match self.catalog.prune_audit(now - keep).await {
                Ok(n) => report.audit_pruned = n,
                Err(e) => {
                    tracing::warn!(error = %e, "could not prune the audit trail; retrying next pass");
                    report.failed += 1;
                }
            }
        }
        Ok(report)
    }

    /// What a pass would do now, without changing anything (`instance`: only that one).
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn dry_run(&self, instance: Option<&str>) -> Result<DryRun, JobError> {
        let now = self.clock.now();
        let unfinished = self
            .catalog
            .list_deleting_backups()
            .await?
            .into_iter()
            .filter(|b| instance.is_none_or(|i| i == b.instance_id))
            .collect();
        let mut plans = self
            .plan_expired(now, instance, u32::MAX, &HashSet::new())
            .await?;
        plans.retain(|p| instance.is_none_or(|i| i == p.instance_id));
        let chunks = self.sweep_chunks(now, instance, false).await;
        Ok(DryRun {
            now,
            unfinished,
            plans,
            chunks,
        })
    }

    /// Sweeps (or, with `delete` false, counts) the orphan chunks of every chunk store (`instance`: only that
    /// one). Failures are logged and reported per store, never returned: the next pass retries.
    async fn sweep_chunks(
        &self,
        now: DateTime<Utc>,
        instance: Option<&str>,
        delete: bool,
    ) -> Vec<ChunkSweep> {
        let stores = match self.repo.chunk_stores().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "could not list the chunk stores; retrying next pass");
                return vec![ChunkSweep {
                    instance_id: instance.unwrap_or("*").to_string(),
                    skipped: Some(format!("listing the chunk stores: {e}")),
                    failed: true,
                    ..ChunkSweep::default()
                }];
            }
        };
        let grace = chrono::Duration::from_std(self.chunk_grace).unwrap_or(chrono::Duration::MAX);
        let cutoff = now
            .checked_sub_signed(grace)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let mut out = Vec::new();
        for (instance_id, stored) in stores {
            if instance.is_some_and(|i| i != instance_id) {
                continue;
            }
            let sweep = self
                .sweep_instance(instance_id, stored, cutoff, delete)
                .await;
            if let Some(why) = &sweep.skipped {
                tracing::info!(instance = %sweep.instance_id, reason = %why, swept = sweep.chunks, "chunk store not fully swept; retrying next pass");
            } else if delete && sweep.chunks > 0 {
                tracing::info!(instance = %sweep.instance_id, chunks = sweep.chunks, bytes = sweep.bytes, "orphan chunks swept");
            }
            out.push(sweep);
        }
        out
    }

    /// Sweeps the orphan chunks of `instance` without the grace period, once the jobs that may have written
    /// them are known dead: called at start for each instance a crashed Snapshot job of this node was failed
    /// for by recovery (its process is gone, and with it the list of chunks it would have removed itself).
    ///
    /// The grace period only matters for chunks a live job may still reference; every check of
    /// `sweep_instance` still applies (no pending or running job of the instance, before the references are
    /// read and again before every batch), so a job started meanwhile leaves the store alone, and a chunk a new
    /// job reuses is verified by it before its snapshot commits. A full repository so recovers at the restart
    /// after a crash instead of an hour later.
    pub async fn sweep_after_crash(&self, instance: &str) -> ChunkSweep {
        let now = self.clock.now();
        let stored = match self.repo.chunk_stores().await {
            Ok(stores) => stores
                .into_iter()
                .find(|(i, _)| i == instance)
                .map(|(_, s)| s)
                .unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %e, instance, "could not list the chunk stores after a crash; the collector will sweep them after its grace period");
                return ChunkSweep {
                    instance_id: instance.to_string(),
                    skipped: Some(format!("listing the chunk stores: {e}")),
                    failed: true,
                    ..ChunkSweep::default()
                };
            }
        };
        // Everything listed is older than now: only references and the job checks decide.
        let sweep = self
            .sweep_instance(instance.to_string(), stored, now, true)
            .await;
        match &sweep.skipped {
            Some(why) => {
                tracing::info!(instance, reason = %why, swept = sweep.chunks, "chunks of a crashed snapshot not fully swept; the collector retries")
            }
            None => {
                // The job's process died mid-write too: its half-written chunk files go with its chunks (the
                // checks above found no job of the instance at work, so none of them is a live write).
                let partial = match self.repo.remove_abandoned_chunk_writes(instance).await {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(instance, error = %e, "could not remove the partial chunk writes of a crashed snapshot; the collector retries");
                        0
                    }
                };
                tracing::info!(
                    instance,
                    chunks = sweep.chunks,
                    bytes = sweep.bytes,
                    partial,
                    "orphan chunks of a crashed snapshot swept"
                )
            }
        }
        sweep
    }

    /// `Ok(newest job id)` of the instance if none of its jobs is pending or running, else `Err(that job's id)`.
    async fn jobs_at_rest(&self, instance_id: &str) -> Result<Result<Option<i64>, i64>, JobError> {
        let jobs = self.catalog.list_jobs(instance_id, false).await?;
        if let Some(j) = jobs
            .iter()
            .find(|j| matches!(j.state, JobState::Pending | JobState::Running))
        {
            return Ok(Err(j.id));
        }
        Ok(Ok(jobs.iter().map(|j| j.id).max()))
    }

    /// Sweeps one instance's chunk store (`stored`: its listing): deletes the chunks no committed snapshot names
    /// that were written before `cutoff` (the pass's start minus the grace period).
    ///
    /// Why this never deletes a chunk a snapshot needs:
    /// - Referenced = named by the index of any backup whose `manifest.json` is in the repository
    ///   ([`Repository::referenced_chunks`]): every Success snapshot, and a `Deleting` one until its manifest is
    ///   removed (harmless: it only keeps chunks one pass longer). A snapshot job writes its manifest after its
    ///   index and its chunks and before it is marked Success, so a Failed snapshot names nothing (its chunks
    ///   are orphans). A manifest that does not decode stops the sweep of the store rather than risk its chunks.
    /// - A snapshot job that is pending or running reuses chunks before anything names them, so the store is
    ///   not swept while the instance has such a job (any job kind, to stay simple). That is checked before the
    ///   references are read (`jobs_at_rest`, which also records the newest job id) and again before every
    ///   batch of [`SWEEP_BATCH`] deletions; the store is left alone for this pass if a job is active or a newer
    ///   job appeared, since a job that started and ended in between committed a snapshot the references read
    ///   may miss. The catalog, not the repository, is the arbiter: a job exists there before it touches the
    ///   chunk store.
    /// - A chunk written after the listing is not in it; one written shortly before it is younger than the
    ///   grace period. `put_chunk` never rewrites an existing chunk, so a reused chunk keeps its old mtime: the
    ///   grace period protects new chunks only, and the job checks above protect reused ones.
    /// - What remains is a job created after the last check and before the deletions of that batch complete.
    ///   It can only reuse a chunk of the batch if its HEAD of the chunk comes first, and it then verifies every
    ///   chunk it reused after writing its index and before writing its manifest (`physical::verify_reused`),
    ///   failing cleanly if one vanished. A committed snapshot with a missing chunk would need the whole job,
    ///   from creation to index (connect, image the data files, chunk them), to fit between this check and the
    ///   deletion of one batch; the collector would have to stall that long between two deletions. That
    ///   theoretical window is documented in docs/physical-and-snapshot.md; closing it fully needs a lease in the catalog.
    /// - Deleting a chunk is idempotent and nothing is recorded about it, so a crash mid-sweep leaves only
    ///   orphans the next pass removes; catalog and repository agree after a restart.
    ///
    /// A restore or download reads a backup that is not `Deleting` (deletion refuses while a restore job
    /// reads it), whose manifest therefore still names its chunks.
    async fn sweep_instance(
        &self,
        instance_id: String,
        stored: Vec<StoredChunk>,
        cutoff: DateTime<Utc>,
        delete: bool,
    ) -> ChunkSweep {
        let mut sweep = ChunkSweep {
            instance_id,
            ..ChunkSweep::default()
        };
        let inst = sweep.instance_id.clone();
        let before = match self.jobs_at_rest(&inst).await {
            Ok(Ok(newest)) => newest,
            Ok(Err(job)) => {
                sweep.skipped = Some(format!("backup or restore job {job} is pending or running"));
                return sweep;
            }
            Err(e) => {
                sweep.skipped = Some(format!("looking at its jobs: {e}"));
                sweep.failed = true;
                return sweep;
            }
        };
        let referenced = match self.repo.referenced_chunks(&inst).await {
            Ok(r) => r,
            Err(e) => {
                sweep.skipped = Some(format!("reading its snapshot indexes: {e}"));
                sweep.failed = true;
                return sweep;
            }
        };
        let mut orphans = Vec::new();
        for c in stored {
            if referenced.contains(&c.sha256) {
                continue;
            }
            if c.last_modified >= cutoff {
                sweep.young += 1;
            } else {
                orphans.push(c);
            }
        }
        if !delete {
            sweep.chunks = orphans.len() as u64;
            sweep.bytes = orphans.iter().map(|c| c.size).sum();
            return sweep;
        }
        for batch in orphans.chunks(SWEEP_BATCH) {
            #[cfg(test)]
            if let Some(h) = &self.before_batch {
                h.0.notify_one();
                h.1.notified().await;
            }
            match self.jobs_at_rest(&inst).await {
                Ok(Ok(newest)) if newest == before => {}
                Ok(_) => {
                    sweep.skipped = Some("a job of the instance started during the sweep".into());
                    return sweep;
                }
                Err(e) => {
                    sweep.skipped = Some(format!("looking at its jobs: {e}"));
                    sweep.failed = true;
                    return sweep;
                }
            }
            let mut gone = Vec::with_capacity(batch.len());
            let mut failed = None;
            for c in batch {
                if let Err(e) = self.repo.delete(&c.path).await {
                    failed = Some(format!("deleting chunk {}: {e}", c.sha256));
                    break;
                }
                gone.push(c.sha256.clone());
                sweep.chunks += 1;
                sweep.bytes += c.size;
            }
            // DescribeBackupStorage stops counting them (a chunk no committed snapshot named was never counted).
            if let Err(e) = self.catalog.forget_instance_chunks(&inst, &gone).await {
                failed.get_or_insert(format!("recording deleted chunks: {e}"));
            }
            if let Some(why) = failed {
                sweep.skipped = Some(why);
                sweep.failed = true;
                return sweep;
            }
        }
        sweep
    }

    /// The plans for (at most `limit`) backups expired at `now`, per instance, leaving out `skip`.
    async fn plan_expired(
        &self,
        now: DateTime<Utc>,
        instance: Option<&str>,
        limit: u32,
        skip: &HashSet<i64>,
    ) -> Result<Vec<InstancePlan>, JobError> {
        let mut by_instance: BTreeMap<String, Vec<Backup>> = BTreeMap::new();
        for b in self.catalog.list_expired_backups(now, limit).await? {
            if skip.contains(&b.id) || instance.is_some_and(|i| i != b.instance_id) {
                continue;
            }
            by_instance
                .entry(b.instance_id.clone())
                .or_default()
                .push(b);
        }
        let mut out = Vec::with_capacity(by_instance.len());
        for (instance_id, expired) in by_instance {
            let standard = self
                .catalog
                .get_policy(&instance_id)
                .await?
                .unwrap_or_default();
            let advanced = self.catalog.get_advanced_policy(&instance_id).await?;
            let rules = RetentionRules::from_policies(&standard, advanced.as_ref());
            let candidates = self.candidates(&instance_id).await?;
            let full = plan_retention(&candidates, &rules, now);
            let ids: HashSet<i64> = expired.iter().map(|b| b.id).collect();
            let plan = Plan {
                keep: full
                    .keep
                    .into_iter()
                    .filter(|k| ids.contains(&k.backup_id))
                    .collect(),
                delete: full
                    .delete
                    .into_iter()
                    .filter(|d| ids.contains(&d.backup_id))
                    .collect(),
            };
            out.push(InstancePlan {
                instance_id,
                expired,
                plan,
            });
        }
        Ok(out)
    }

    /// Every successful backup of an instance with the slot that took it (the thinning of high-frequency
    /// snapshots looks at their neighbours, not only the expired ones).
    async fn candidates(&self, instance_id: &str) -> Result<Vec<Candidate>, JobError> {
        candidates(&self.catalog, instance_id).await
    }

    async fn apply(&self, p: &InstancePlan, report: &mut GcReport, skip: &mut HashSet<i64>) {
        for k in &p.plan.keep {
            let until = k.until.unwrap_or_else(permanent_expiry);
            match self
                .catalog
                .set_backup_expire_time(k.backup_id, until)
                .await
            {
                Ok(()) => {
                    tracing::info!(backup_id = k.backup_id, instance = %p.instance_id, until = %until, reason = %k.reason, "expired backup kept by a retention policy");
                    report.extended.push(k.backup_id);
                }
                Err(e) => {
                    tracing::warn!(backup_id = k.backup_id, error = %e, "could not extend the expiry; retrying next pass");
                    report.failed += 1;
                }
            }
            skip.insert(k.backup_id);
        }
        let doomed: Vec<Backup> = p
            .expired
            .iter()
            .filter(|b| p.plan.delete.iter().any(|d| d.backup_id == b.id))
            .cloned()
            .collect();
        let failed_before = report.failed;
        self.delete_all(doomed.clone(), report).await;
        if report.failed > failed_before {
            for b in &doomed {
                if !report.deleted.contains(&b.id) {
                    skip.insert(b.id);
                }
            }
        }
        for id in report.in_use.iter().chain(&report.retained) {
            skip.insert(*id);
        }
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
                Ok(Deletion::Retained { until }) => {
                    tracing::info!(backup_id = b.id, until = %until, "expired backup kept: its objects are retained by S3 Object Lock");
                    report.retained.push(b.id);
                }
                // Expiry deletions never ask about the lock (Locked is only answered to requested deletions).
                Ok(Deletion::Running | Deletion::NotFound | Deletion::Locked { .. }) => {}
                Err(e) => {
                    tracing::warn!(backup_id = b.id, error = %e, "could not delete backup; retrying next pass");
                    report.failed += 1;
                }
            }
        }
    }

    /// The time between two passes.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Runs a pass at once, then one every `interval`, until `cancel` fires.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) -> Result<(), String> {
        loop {
            match self.pass().await {
                Ok(r)
                    if !r.deleted.is_empty()
                        || r.failed > 0
                        || r.chunks_swept > 0
                        || r.audit_pruned > 0 =>
                {
                    tracing::info!(
                        deleted = r.deleted.len(),
                        chunks_swept = r.chunks_swept,
                        audit_pruned = r.audit_pruned,
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
                method: ddsvault_catalog::BackupMethod::Logical,
                mode: "Manual".into(),
                retention_days: days.unwrap_or(-1),
                engine_version: "7.0".into(),
                params: serde_json::json!({}),
                now: t0(),
            })
            .await
            .expect("job");
        let claimed = cat
            .claim_next_job("n", t0(), t0() + chrono::Duration::seconds(30))
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
            claimed.lease_token,
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
    async fn audit_records_older_than_the_retention_are_pruned() {
        let (cat, repo, clock) = setup().await;
        let rec = |days_ago: i64| ddsvault_catalog::AuditRecord {
            id: 0,
            time: t0() - chrono::Duration::days(days_ago),
            request_id: format!("R{days_ago}"),
            access_key_id: None,
            user: None,
            action: Some("DescribeBackups".into()),
            resources: vec!["*".into()],
            source_ip: "127.0.0.1".into(),
            secure: false,
            http_status: 200,
            code: None,
        };
        cat.append_audit(&[rec(200), rec(181), rec(179), rec(1)])
            .await
            .expect("append");
        *clock.0.lock().expect("clock") = t0();
        let forever =
            Gc::new(cat.clone(), repo.clone(), Duration::from_secs(60)).with_clock(clock.clone());
        assert_eq!(forever.pass().await.expect("pass").audit_pruned, 0);
        let gc = Gc::new(cat.clone(), repo.clone(), Duration::from_secs(60))
            .with_clock(clock)
            .with_audit_retention(180);
        assert_eq!(gc.pass().await.expect("pass").audit_pruned, 2);
        let left: Vec<String> = cat
            .list_audit(&ddsvault_catalog::AuditFilter::default())
            .await
            .expect("list")
            .into_iter()
            .map(|r| r.request_id)
            .collect();
        assert_eq!(left, ["R1", "R179"]);
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
                kind: ddsvault_catalog::JobKind::Restore,
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
                method: ddsvault_catalog::BackupMethod::Logical,
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

    /// A successful backup taken by a `schedule` slot at `slot`, recorded to expire `days` later.
    async fn slot_backup(
        cat: &Catalog,
        repo: &Repository,
        schedule: &str,
        slot: DateTime<Utc>,
        days: i64,
    ) -> i64 {
        let new = NewBackupJob {
            instance_id: "dds-t".into(),
            method: ddsvault_catalog::BackupMethod::Logical,
            mode: "Automated".into(),
            retention_days: days,
            engine_version: "7.0".into(),
            params: serde_json::json!({}),
            now: slot,
        };
        let ddsvault_catalog::ScheduledJob::Created(created) = cat
            .create_scheduled_job(&new, schedule, slot, "n")
            .await
            .expect("slot")
        else {
            panic!("slot not created");
        };
        let (job, b) = *created;
        let claimed = cat
            .claim_next_job("n", slot, slot + chrono::Duration::seconds(30))
            .await
            .expect("claim")
            .expect("claimed");
        let prefix = Repository::backup_prefix("dds-t", b.id);
        repo.put(
            &Repository::manifest_path(&prefix),
            Bytes::from_static(b"{}"),
        )
        .await
        .expect("put");
        cat.complete_backup(
            job.id,
            "n",
            claimed.lease_token,
            &BackupCompletion {
                end_time: slot,
                expire_time: slot + chrono::Duration::days(days),
                size: 2,
                db_names: "shop".into(),
                repo_prefix: prefix.to_string(),
                details: serde_json::json!({}),
            },
        )
        .await
        .expect("complete");
        b.id
    }

    #[tokio::test]
    async fn tiers_extend_expired_backups_and_high_frequency_snapshots_are_thinned() {
        use ddsvault_catalog::{
            AdvancedPolicy, BackupPolicy, DataPolicy, SCHEDULE_HIGH_FREQUENCY, SCHEDULE_STANDARD,
        };
        let (cat, repo, clock) = setup().await;
        let standard = BackupPolicy {
            snapshot_backup_type: "Flash".into(),
            backup_interval: 30,
            high_frequency_backup_retention: 1,
            preserve_one_each_hour: true,
            backup_retention_period: 7,
            ..BackupPolicy::default()
        };
        let advanced = AdvancedPolicy {
            enabled: true,
            data_policies: vec![DataPolicy {
                policy_id: "1".into(),
                backup_policy: "dayOfMonth".into(),
                preferred_backup_period: "1".into(),
                retention_type: "delay".into(),
                retention_period: 90,
                ..DataPolicy::default()
            }],
            log_policies: Vec::new(),
            last_policy_id: 1,
        };
        cat.register_instance("dds-t", t0())
            .await
            .expect("register");
        cat.put_advanced_policy("dds-t", &standard, &advanced, t0())
            .await
            .expect("policy");
        let at = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .expect("t")
                .with_timezone(&Utc)
        };
        // Standard slots on the 1st (monthly tier, 90 days) and the 2nd (no tier), both recorded for 2 days.
        let first = slot_backup(
            &cat,
            &repo,
            SCHEDULE_STANDARD,
            at("2026-01-01T03:00:00Z"),
            2,
        )
        .await;
        let second = slot_backup(
            &cat,
            &repo,
            SCHEDULE_STANDARD,
            at("2026-01-02T03:00:00Z"),
            2,
        )
        .await;
        // High-frequency snapshots at 10:00, 10:30, 11:00, 11:30 recorded for 1 day.
        let mut hf = Vec::new();
        for m in [0, 30, 60, 90] {
            let slot = at("2026-01-03T10:00:00Z") + chrono::Duration::minutes(m);
            hf.push(slot_backup(&cat, &repo, SCHEDULE_HIGH_FREQUENCY, slot, 1).await);
        }
        // After a day the snapshots are thinned to the first of each hour, kept BackupRetentionPeriod (7) days.
        *clock.0.lock().expect("clock") = at("2026-01-08T00:00:00Z");
        let gc =
            Gc::new(cat.clone(), repo.clone(), Duration::from_secs(60)).with_clock(clock.clone());
        // The dry run shows the decisions and changes nothing.
        let dry = gc.dry_run(Some("dds-t")).await.expect("dry run");
        assert_eq!(dry.plans.len(), 1);
        let plan = &dry.plans[0].plan;
        assert_eq!(
            plan.delete.iter().map(|d| d.backup_id).collect::<Vec<_>>(),
            vec![second, hf[1], hf[3]]
        );
        assert_eq!(
            plan.keep.iter().map(|k| k.backup_id).collect::<Vec<_>>(),
            vec![first, hf[0], hf[2]]
        );
        assert!(gc
            .dry_run(Some("dds-other"))
            .await
            .expect("dry")
            .plans
            .is_empty());
        assert_eq!(files(&repo, "dds-t", second).await, 1);

        let r = gc.pass().await.expect("pass");
        assert_eq!(r.deleted, vec![second, hf[1], hf[3]]);
        assert_eq!(r.extended, vec![first, hf[0], hf[2]]);
        assert_eq!(files(&repo, "dds-t", second).await, 0);
        let kept = cat.get_backup(first).await.expect("get").expect("kept");
        assert_eq!(kept.expire_time, Some(at("2026-04-01T03:00:00Z")));
        let hourly = cat.get_backup(hf[0]).await.expect("get").expect("kept");
        assert_eq!(hourly.expire_time, Some(at("2026-01-10T10:00:00Z")));
        // Nothing left to do until the extended expiries.
        assert_eq!(gc.pass().await.expect("pass"), GcReport::default());
        *clock.0.lock().expect("clock") = at("2026-04-01T03:00:00Z");
        let r = gc.pass().await.expect("pass");
        assert_eq!(r.deleted, vec![hf[0], hf[2], first]);
        assert!(r.extended.is_empty());
    }

    #[tokio::test]
    async fn a_planned_deletion_interrupted_by_a_crash_is_finished_even_if_a_tier_now_keeps_it() {
        use ddsvault_catalog::{AdvancedPolicy, BackupPolicy, DataPolicy, SCHEDULE_STANDARD};
        let (cat, repo, clock) = setup().await;
        cat.register_instance("dds-t", t0())
            .await
            .expect("register");
        let slot = t0() + chrono::Duration::hours(3);
        let id = slot_backup(&cat, &repo, SCHEDULE_STANDARD, slot, 7).await;
        *clock.0.lock().expect("clock") = slot + chrono::Duration::days(8);
        let gc =
            Gc::new(cat.clone(), repo.clone(), Duration::from_secs(60)).with_clock(clock.clone());
        let dry = gc.dry_run(None).await.expect("dry run");
        assert_eq!(dry.plans[0].plan.delete[0].backup_id, id);
        // The crash: the pass marked it Deleting and removed the manifest, then died.
        assert!(matches!(
            cat.mark_backup_deleting(id).await.expect("mark"),
            DeleteMark::Marked(_)
        ));
        repo.delete(&Repository::manifest_path(&Repository::backup_prefix(
            "dds-t", id,
        )))
        .await
        .expect("delete manifest");
        // Before the restart a monthly tier that would keep it appears: a deletion once started is finished, so
        // catalog and repository agree (no half-deleted backup is ever revived).
        let monthly = AdvancedPolicy {
            enabled: true,
            data_policies: vec![DataPolicy {
                policy_id: "1".into(),
                backup_policy: "dayOfMonth".into(),
                preferred_backup_period: "1".into(),
                retention_type: "never".into(),
                ..DataPolicy::default()
            }],
            log_policies: Vec::new(),
            last_policy_id: 1,
        };
        cat.put_advanced_policy("dds-t", &BackupPolicy::default(), &monthly, t0())
            .await
            .expect("policy");
        let restarted =
            Gc::new(cat.clone(), repo.clone(), Duration::from_secs(60)).with_clock(clock);
        let r = restarted.pass().await.expect("pass");
        assert_eq!((r.deleted, r.extended), (vec![id], vec![]));
        assert_eq!(cat.get_backup(id).await.expect("get"), None);
        assert_eq!(files(&repo, "dds-t", id).await, 0);
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

    /// A successful, permanent snapshot of `inst` whose index names `chunks` (stored in the chunk store first, as the job
    /// does); returns its id.
    async fn snapshot(cat: &Catalog, repo: &Repository, inst: &str, chunks: &[&[u8]]) -> i64 {
        let id = backup(cat, repo, inst, None).await;
        let refs: Vec<ddsvault_repo::ChunkRef> = chunks
            .iter()
            .map(|raw| {
                ddsvault_repo::ChunkRef::new(ddsvault_repo::sha256_hex(raw), raw.len() as u64)
            })
            .collect();
        for (raw, c) in chunks.iter().zip(&refs) {
            repo.put_chunk(inst, &c.sha256, Bytes::copy_from_slice(raw), 3)
                .await
                .expect("chunk");
        }
        let index = ddsvault_repo::SnapshotIndex {
            files: vec![ddsvault_repo::SnapshotFile {
                name: "db.sqlite".into(),
                size: refs.iter().map(|c| c.size).sum(),
                sha256: ddsvault_repo::sha256_hex(b"whole"),
                chunks: refs,
            }],
        };
        let prefix = Repository::backup_prefix(inst, id);
        let entry = repo
            .write_snapshot_index(&prefix, &index, 3)
            .await
            .expect("index");
        repo.write_manifest(
            &prefix,
            &ddsvault_repo::Manifest {
                format: ddsvault_repo::MANIFEST_FORMAT,
                backup_id: id,
                instance_id: inst.into(),
                method: ddsvault_catalog::BackupMethod::Snapshot.as_str().into(),
                created_at: t0(),
                files: vec![entry],
                extra: serde_json::json!({}),
            },
        )
        .await
        .expect("manifest");
        id
    }

    async fn orphan(repo: &Repository, inst: &str, raw: &'static [u8]) {
        repo.put_chunk(
            inst,
            &ddsvault_repo::sha256_hex(raw),
            Bytes::from_static(raw),
            3,
        )
        .await
        .expect("orphan");
    }

    async fn has_chunk(repo: &Repository, inst: &str, raw: &[u8]) -> bool {
        let path =
            ddsvault_repo::chunks::chunk_path(inst, &ddsvault_repo::sha256_hex(raw)).expect("path");
        repo.head(&path).await.is_ok()
    }

    /// The memory store stamps objects with the real time: a pass "later" than the grace period.
    fn after_grace(clock: &ManualClock) {
        *clock.0.lock().expect("clock") = Utc::now() + chrono::Duration::hours(2);
    }

    #[tokio::test]
    async fn orphan_chunks_are_swept_and_referenced_ones_kept() {
        let (cat, repo, clock) = setup().await;
        let first = snapshot(&cat, &repo, "dds-s", &[b"only-first", b"shared"]).await;
        let second = snapshot(&cat, &repo, "dds-s", &[b"shared", b"only-second"]).await;
        orphan(&repo, "dds-s", b"left by a failed snapshot").await;
        // Another instance's store is swept on its own: the same content there is not referenced.
        orphan(&repo, "dds-other", b"shared").await;
        assert_eq!(
            delete_backup(&cat, &repo, first).await.expect("delete"),
            Deletion::Deleted
        );
        after_grace(&clock);
        let gc = Gc::new(cat.clone(), repo.clone(), Duration::from_secs(60)).with_clock(clock);
        let r = gc.pass().await.expect("pass");
        assert_eq!(r.chunks_swept, 3);
        assert!(r.chunk_bytes_swept > 0);
        assert_eq!(r.chunk_stores_skipped, vec![]);
        assert!(!has_chunk(&repo, "dds-s", b"only-first").await);
        assert!(!has_chunk(&repo, "dds-s", b"left by a failed snapshot").await);
        assert!(!has_chunk(&repo, "dds-other", b"shared").await);
        for raw in [&b"shared"[..], b"only-second"] {
            let c = ddsvault_repo::ChunkRef::new(ddsvault_repo::sha256_hex(raw), raw.len() as u64);
            assert_eq!(repo.get_chunk("dds-s", &c).await.expect("kept"), raw);
        }
        assert!(cat.get_backup(second).await.expect("get").is_some());
        // Nothing left to sweep: a second pass is a no-op.
        assert_eq!(gc.pass().await.expect("pass").chunks_swept, 0);
        assert_eq!(repo.chunk_store_usage("dds-s").await.expect("usage").0, 2);
    }

    #[tokio::test]
    async fn an_expired_snapshot_and_its_own_chunks_go_in_one_pass() {
        let (cat, repo, clock) = setup().await;
        let old = snapshot(&cat, &repo, "dds-s", &[b"old", b"both"]).await;
        snapshot(&cat, &repo, "dds-s", &[b"both"]).await;
        cat.set_backup_expire_time(old, t0() + chrono::Duration::days(1))
            .await
            .expect("expire");
        after_grace(&clock);
        let gc = Gc::new(cat.clone(), repo.clone(), Duration::from_secs(60)).with_clock(clock);
        let r = gc.pass().await.expect("pass");
        assert_eq!((r.deleted, r.chunks_swept), (vec![old], 1));
        assert!(!has_chunk(&repo, "dds-s", b"old").await);
        assert!(has_chunk(&repo, "dds-s", b"both").await);
    }

    #[tokio::test]
    async fn nothing_is_swept_while_a_job_of_the_instance_is_pending_or_running() {
        let (cat, repo, clock) = setup().await;
        orphan(&repo, "dds-s", b"orphan").await;
        orphan(&repo, "dds-idle", b"orphan").await;
        let (job, _) = cat
            .create_backup_job(&NewBackupJob {
                instance_id: "dds-s".into(),
                method: ddsvault_catalog::BackupMethod::Snapshot,
                mode: "Manual".into(),
                retention_days: 7,
                engine_version: "7.0".into(),
                params: serde_json::json!({}),
                now: t0(),
            })
            .await
            .expect("job");
        after_grace(&clock);
        let gc = Gc::new(cat.clone(), repo.clone(), Duration::from_secs(60)).with_clock(clock);
        // Pending, then Running: the store is left alone either way; the idle instance is swept.
        for _ in 0..2 {
            let r = gc.pass().await.expect("pass");
            assert_eq!((r.chunks_swept, r.failed), (1, 0));
            assert_eq!(r.chunk_stores_skipped.len(), 1);
            assert_eq!(r.chunk_stores_skipped[0].0, "dds-s");
            assert!(has_chunk(&repo, "dds-s", b"orphan").await);
            orphan(&repo, "dds-idle", b"orphan").await;
            if cat
                .claim_next_job("n", t0(), t0() + chrono::Duration::seconds(30))
                .await
                .expect("claim")
                .is_none()
            {
                break;
            }
        }
        let dry = gc.dry_run(Some("dds-s")).await.expect("dry run");
        assert_eq!(dry.chunks.len(), 1);
        assert!(dry.chunks[0]
            .skipped
            .as_deref()
            .is_some_and(|w| w.contains(&job.id.to_string())));
        // Once the job has ended, the next pass sweeps.
        cat.fail_job(job.id, "boom", t0()).await.expect("fail");
        let r = gc.pass().await.expect("pass");
        assert_eq!(r.chunk_stores_skipped, vec![]);
        assert!(!has_chunk(&repo, "dds-s", b"orphan").await);
    }

    #[tokio::test]
    async fn the_chunks_of_a_crashed_snapshot_go_at_once_unless_a_job_is_at_work() {
        let (cat, repo, clock) = setup().await;
        snapshot(&cat, &repo, "dds-s", &[b"kept"]).await;
        orphan(&repo, "dds-s", b"written by the crashed job").await;
        orphan(&repo, "dds-other", b"another instance's orphan").await;
        *clock.0.lock().expect("clock") = Utc::now() + chrono::Duration::seconds(1);
        let gc = Gc::new(cat.clone(), repo.clone(), Duration::from_secs(60))
            .with_clock(clock.clone())
            .with_chunk_grace(Duration::from_secs(3600));
        // The ordinary pass keeps the young orphan for the grace period ...
        assert_eq!(gc.pass().await.expect("pass").chunks_swept, 0);
        // ... the sweep after a crash does not wait, and touches only that instance and unreferenced chunks.
        let sweep = gc.sweep_after_crash("dds-s").await;
        assert_eq!((sweep.chunks, sweep.skipped), (1, None));
        assert!(!has_chunk(&repo, "dds-s", b"written by the crashed job").await);
        assert!(has_chunk(&repo, "dds-s", b"kept").await);
        assert!(has_chunk(&repo, "dds-other", b"another instance's orphan").await);

        // A job of the instance at work (e.g. created right after the restart): nothing is swept.
        orphan(&repo, "dds-s", b"written by the crashed job").await;
        cat.create_backup_job(&NewBackupJob {
            instance_id: "dds-s".into(),
            method: ddsvault_catalog::BackupMethod::Snapshot,
            mode: "Manual".into(),
            retention_days: 7,
            engine_version: "7.0".into(),
            params: serde_json::json!({}),
            now: t0(),
        })
        .await
        .expect("job");
        *clock.0.lock().expect("clock") = Utc::now() + chrono::Duration::seconds(1);
        let sweep = gc.sweep_after_crash("dds-s").await;
        assert_eq!(sweep.chunks, 0);
        assert!(sweep
            .skipped
            .is_some_and(|w| w.contains("pending or running")));
        assert!(has_chunk(&repo, "dds-s", b"written by the crashed job").await);
    }

    #[tokio::test]
    async fn chunks_younger_than_the_grace_period_are_kept() {
        let (cat, repo, clock) = setup().await;
        orphan(&repo, "dds-s", b"just written").await;
        *clock.0.lock().expect("clock") = Utc::now() + chrono::Duration::minutes(30);
        let gc = Gc::new(cat.clone(), repo.clone(), Duration::from_secs(60))
            .with_clock(clock.clone())
            .with_chunk_grace(Duration::from_secs(3600));
        assert_eq!(gc.pass().await.expect("pass").chunks_swept, 0);
        assert_eq!(gc.dry_run(None).await.expect("dry").chunks[0].young, 1);
        assert!(has_chunk(&repo, "dds-s", b"just written").await);
        *clock.0.lock().expect("clock") = Utc::now() + chrono::Duration::minutes(61);
        assert_eq!(gc.pass().await.expect("pass").chunks_swept, 1);
        assert!(!has_chunk(&repo, "dds-s", b"just written").await);
    }

    #[tokio::test]
    async fn a_dry_run_counts_orphan_chunks_and_deletes_nothing() {
        let (cat, repo, clock) = setup().await;
        snapshot(&cat, &repo, "dds-s", &[b"kept"]).await;
        orphan(&repo, "dds-s", b"orphan one").await;
        orphan(&repo, "dds-s", b"orphan two").await;
        after_grace(&clock);
        let gc = Gc::new(cat.clone(), repo.clone(), Duration::from_secs(60)).with_clock(clock);
        let (count, bytes) = repo.chunk_store_usage("dds-s").await.expect("usage");
        let dry = gc.dry_run(None).await.expect("dry run");
        assert_eq!(dry.chunks.len(), 1);
        let sweep = &dry.chunks[0];
        assert_eq!(
            (sweep.instance_id.as_str(), sweep.chunks, sweep.young),
            ("dds-s", 2, 0)
        );
        assert!(sweep.bytes > 0 && sweep.bytes < bytes);
        assert_eq!(sweep.skipped, None);
        assert_eq!(
            repo.chunk_store_usage("dds-s").await.expect("usage"),
            (count, bytes)
        );
        let r = gc.pass().await.expect("pass");
        assert_eq!((r.chunks_swept, r.chunk_bytes_swept), (2, sweep.bytes));
    }

    #[tokio::test]
    async fn an_undecodable_manifest_stops_the_sweep_of_its_store() {
        let (cat, repo, clock) = setup().await;
        orphan(&repo, "dds-s", b"orphan").await;
        // `backup` writes a manifest of `{}`, which does not decode.
        backup(&cat, &repo, "dds-s", None).await;
        after_grace(&clock);
        let gc = Gc::new(cat.clone(), repo.clone(), Duration::from_secs(60)).with_clock(clock);
        let r = gc.pass().await.expect("pass");
        assert_eq!((r.chunks_swept, r.failed), (0, 1));
        assert_eq!(r.chunk_stores_skipped.len(), 1);
        assert!(has_chunk(&repo, "dds-s", b"orphan").await);
    }

    #[tokio::test]
    async fn a_job_that_appears_during_the_sweep_stops_it_even_if_it_already_ended() {
        let (cat, repo, clock) = setup().await;
        // More than one batch, so the check between two batches is exercised too.
        let raws: Vec<Vec<u8>> = (0..SWEEP_BATCH + 5)
            .map(|i| format!("orphan {i}").into_bytes())
            .collect();
        for raw in &raws {
            repo.put_chunk(
                "dds-s",
                &ddsvault_repo::sha256_hex(raw),
                Bytes::copy_from_slice(raw),
                3,
            )
            .await
            .expect("orphan");
        }
        after_grace(&clock);
        let hook = Arc::new((tokio::sync::Notify::new(), tokio::sync::Notify::new()));
        let mut gc = Gc::new(cat.clone(), repo.clone(), Duration::from_secs(60)).with_clock(clock);
        gc.before_batch = Some(Arc::clone(&hook));
        let gc = Arc::new(gc);
        let g = Arc::clone(&gc);
        let pass = tokio::spawn(async move { g.pass().await });
        // First batch: nothing changed, it goes.
        hook.0.notified().await;
        hook.1.notify_one();
        // Before the second one a snapshot job is created and has even ended: it may have reused a chunk the
        // references read earlier did not name, so the sweep stops.
        hook.0.notified().await;
        let (job, _) = cat
            .create_backup_job(&NewBackupJob {
                instance_id: "dds-s".into(),
                method: ddsvault_catalog::BackupMethod::Snapshot,
                mode: "Manual".into(),
                retention_days: 7,
                engine_version: "7.0".into(),
                params: serde_json::json!({}),
                now: t0(),
            })
            .await
            .expect("job");
        cat.fail_job(job.id, "done", t0()).await.expect("end");
        hook.1.notify_one();
        let r = pass.await.expect("task").expect("pass");
        assert_eq!(r.chunks_swept, SWEEP_BATCH as u64);
        assert_eq!(r.chunk_stores_skipped.len(), 1);
        assert!(r.chunk_stores_skipped[0]
            .1
            .contains("started during the sweep"));
        assert_eq!(repo.chunk_store_usage("dds-s").await.expect("usage").0, 5);
    }
}
