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

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use ddsvault_catalog::{
    permanent_expiry, Backup, BackupFilter, BackupStatus, Catalog, DeleteMark, Page,
    SCHEDULE_HIGH_FREQUENCY,
};
use ddsvault_repo::{RepoPath, Repository};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::retention::{plan_retention, Candidate, Plan, RetentionRules, SlotKind};
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
    /// Expired backups a tiered policy keeps longer: their recorded expiry was extended.
    pub extended: Vec<i64>,
    /// Deletions that failed (retried next pass).
    pub failed: usize,
}

/// What retention decides for the expired backups of one instance.
#[derive(Clone, Debug, PartialEq)]
pub struct InstancePlan {
    pub instance_id: String,
    /// The backups whose recorded expiry has passed.
    pub expired: Vec<Backup>,
    /// The decision for each of them (`keep` entries are extensions of the recorded expiry).
    pub plan: Plan,
}

/// What `ddsvault retention --dry-run` shows: the deletions a pass would do now, and why.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DryRun {
    pub now: DateTime<Utc>,
    /// Deletions interrupted earlier (a pass finishes them).
    pub unfinished: Vec<Backup>,
    pub plans: Vec<InstancePlan>,
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

    /// One pass: finish every `Deleting` backup, then apply [`plan_retention`] to every backup expired at the
    /// clock's now: delete what no policy keeps, extend the recorded expiry of what a tier keeps longer.
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
        Ok(DryRun {
            now,
            unfinished,
            plans,
        })
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
        let slots: HashMap<i64, (SlotKind, DateTime<Utc>)> = self
            .catalog
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
            let (total, page) = self
                .catalog
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
        for id in &report.in_use {
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
            method: "Logical".into(),
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
        cat.claim_next_job("n", slot)
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
}
