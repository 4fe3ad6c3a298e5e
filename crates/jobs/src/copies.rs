//! Copies of backups in second repositories (`[[repository.copies]]`; Dds' cross-region backup).
//!
//! Every successful backup that ends after a destination region was configured is queued for a copy (a row in
//! the catalog's `backup_copies`), unless the instance's cross-region settings for that region
//! (ModifyBackupPolicy `CrossBackupType`/`CrossBackupPeriod`/`CrossRetentionType`/`CrossRetentionValue`) turn
//! copies off or leave out the backup's weekday. A copy is streamed file by file, chunks a destination already
//! has are skipped, the manifest's exact bytes are written last, and the copy is then verified end to end in the
//! destination against the catalog's record of the manifest ([`crate::integrity::verify_backup`]). Failed
//! attempts are retried with exponential backoff; after [`MAX_ATTEMPTS`] the copy is `Failed` and its partial
//! files are removed. Copies expire on their own (`CrossRetentionValue` days after the backup ended, or with the
//! source backup's expiry when no cross-region retention is set) and are then deleted from the destination.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};
use ddsvault_catalog::{
    permanent_expiry, Backup, BackupCopy, BackupFilter, BackupStatus, Catalog, CopyStatus,
    CrossRegionPolicy, CrossRetention, Page,
};
use ddsvault_repo::{RepoPath, Repository};
use tokio_util::sync::CancellationToken;

use crate::JobError;

/// Attempts of one copy before it is given up.
pub const MAX_ATTEMPTS: i64 = 8;

/// Copies attempted per pass.
const BATCH: u32 = 20;

/// A second repository, named by its Dds region (`DestRegion`).
#[derive(Clone, Debug)]
pub struct CopyTarget {
    /// The Dds region that names the repository (`DestRegion`).
    pub dest_region: String,
    /// The destination repository.
    pub repo: Repository,
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Copies newly queued.
    pub queued: u64,
    /// Copies that succeeded, as (backup id, destination region).
    pub copied: Vec<(i64, String)>,
    /// Failed attempts that will be retried.
    pub retried: u64,
    /// Copies given up after the last attempt, as (backup id, destination region).
    pub failed: Vec<(i64, String)>,
    /// Expired copies deleted from their destination.
    pub expired: u64,
}

/// Queues, runs and expires copies (see the module docs).
#[derive(Debug)]
pub struct Copier {
    catalog: Catalog,
    source: Repository,
    targets: HashMap<String, CopyTarget>,
    /// The instances whose new backups are copied (the runner's live list while serving).
    instances: crate::InstanceIds,
}

/// Whether `backup_period` (comma-separated weekdays; empty = every day) contains the UTC day of `t`.
fn period_contains(backup_period: &str, t: DateTime<Utc>) -> bool {
    let day = match t.weekday() {
        chrono::Weekday::Mon => "Monday",
        chrono::Weekday::Tue => "Tuesday",
        chrono::Weekday::Wed => "Wednesday",
        chrono::Weekday::Thu => "Thursday",
        chrono::Weekday::Fri => "Friday",
        chrono::Weekday::Sat => "Saturday",
        chrono::Weekday::Sun => "Sunday",
    };
    let days: Vec<&str> = backup_period
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    days.is_empty() || days.iter().any(|d| d.eq_ignore_ascii_case(day))
}

/// The copy job of `backup` for `region` under `policy` (`None`: copy with the backup's own expiry), or `None`
/// when the policy leaves it out.
pub fn plan_copy(
    backup: &Backup,
    region: &str,
    policy: Option<&CrossRegionPolicy>,
    now: DateTime<Utc>,
) -> Option<BackupCopy> {
    if backup.status != BackupStatus::Success {
        return None;
    }
    let end = backup.end_time.unwrap_or(backup.start_time);
    let expire_time = match policy {
        Some(p) if !p.enabled || !period_contains(&p.backup_period, backup.start_time) => {
            return None
        }
        Some(p) => match p.retention {
            CrossRetention::Days(d) => Some(end + chrono::Duration::days(d)),
            CrossRetention::Never => None,
        },
        None => backup.expire_time.filter(|e| *e < permanent_expiry()),
    };
    Some(BackupCopy {
        backup_id: backup.id,
        dest_region: region.to_string(),
        instance_id: backup.instance_id.clone(),
        status: CopyStatus::Pending,
        attempts: 0,
        next_attempt_at: now,
        last_error: String::new(),
        method: backup.method,
        start_time: backup.start_time,
        end_time: backup.end_time,
        size: 0,
        expire_time,
        created_at: now,
        copied_at: None,
    })
}

/// Delay before attempt `n + 1` after `n` failed ones: 5 s doubling, at most an hour.
fn backoff(attempts: i64) -> chrono::Duration {
    let secs = 5i64.saturating_mul(1i64 << attempts.clamp(0, 10));
    chrono::Duration::seconds(secs.min(3600))
}

impl Copier {
    /// A copier from `source` to `targets`, for the backups of `instances`.
    pub fn new(
        catalog: Catalog,
        source: Repository,
        targets: Vec<CopyTarget>,
        instances: Vec<String>,
    ) -> Self {
        Self {
            catalog,
            source,
            targets: targets
                .into_iter()
                .map(|t| (t.dest_region.clone(), t))
                .collect(),
            instances: crate::InstanceIds::Fixed(instances),
        }
    }

    /// Copies the new backups of these instances instead of the list given to [`Copier::new`] (see
    /// [`crate::InstanceIds::Live`]).
    #[must_use]
    pub fn with_instances(mut self, instances: crate::InstanceIds) -> Self {
        self.instances = instances;
        self
    }

    /// The configured destination regions.
    pub fn regions(&self) -> Vec<String> {
        let mut r: Vec<String> = self.targets.keys().cloned().collect();
        r.sort();
        r
    }

    /// Queues a copy of every successful backup that ended since each region was first configured (the time is
    /// kept in the catalog, so older backups are only copied on demand: `ddsvault repo copy`).
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn enqueue_new(&self, now: DateTime<Utc>) -> Result<u64, JobError> {
        let mut queued = 0;
        for region in self.targets.keys() {
            let since = self
                .catalog
                .init_setting(
                    &format!("copies.{region}.since_ms"),
                    &now.timestamp_millis().to_string(),
                )
                .await?;
            let since = since
                .parse::<i64>()
                .ok()
                .and_then(DateTime::from_timestamp_millis)
                .unwrap_or(now);
            for instance in &self.instances.get() {
                let policies = self.catalog.list_cross_policies(instance).await?;
                let policy = policies.iter().find(|p| &p.dest_region == region);
                let filter = BackupFilter {
                    instance_id: Some(instance.clone()),
                    start_from: Some(since - chrono::Duration::days(1)),
                    ..BackupFilter::default()
                };
                for b in self.all_backups(&filter).await? {
                    if b.end_time.is_some_and(|e| e >= since) {
                        if let Some(copy) = plan_copy(&b, region, policy, now) {
                            if self.catalog.enqueue_copy(&copy).await? {
                                queued += 1;
                            }
                        }
                    }
                }
            }
        }
        Ok(queued)
    }

    async fn all_backups(&self, filter: &BackupFilter) -> Result<Vec<Backup>, JobError> {
        let mut out = Vec::new();
        for number in 1u32.. {
            let (total, page) = self
                .catalog
                .list_backups(filter, Page { number, size: 500 })
                .await?;
            let empty = page.is_empty();
            out.extend(page);
            if empty || u64::from(number) * 500 >= total {
                break;
            }
        }
        Ok(out)
    }

    /// Copies one backup to `region` now, verifies it there and records it (`ddsvault repo copy`); a copy that
    /// exists already is left alone. Returns the bytes copied, `None` if it was there.
    ///
    /// # Errors
    /// Unknown region, catalog, copy or verification errors.
    pub async fn copy_now(
        &self,
        backup: &Backup,
        region: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<u64>, JobError> {
        let mut copy = plan_copy(backup, region, None, now).ok_or_else(|| {
            JobError::Other(format!("backup {} is not a successful backup", backup.id))
        })?;
        if let Some(existing) = self
            .catalog
            .list_copies(&backup.instance_id, region)
            .await?
            .into_iter()
            .find(|c| c.backup_id == backup.id)
        {
            if existing.status == CopyStatus::Success {
                return Ok(None);
            }
            copy = existing;
        } else {
            self.catalog.enqueue_copy(&copy).await?;
        }
        let size = self.copy_and_verify(backup, region).await?;
        copy.status = CopyStatus::Success;
        copy.size = i64::try_from(size).unwrap_or(i64::MAX);
        copy.copied_at = Some(Utc::now());
        copy.last_error.clear();
        self.catalog.update_copy(&copy).await?;
        Ok(Some(size))
    }

    async fn copy_and_verify(&self, backup: &Backup, region: &str) -> Result<u64, JobError> {
        let target = self
            .targets
            .get(region)
            .ok_or_else(|| JobError::Other(format!("no repository for region {region}")))?;
        let prefix = RepoPath::new(backup.repo_prefix.clone())?;
        let size = self
            .source
            .copy_backup_to(&target.repo, &prefix, &backup.instance_id)
            .await?;
        crate::integrity::verify_backup(&target.repo, backup).await?;
        Ok(size)
    }

    /// Attempts the copies that are due.
    ///
    /// # Errors
    /// Catalog errors (a failed copy is recorded, not returned).
    pub async fn run_due(
        &self,
        now: DateTime<Utc>,
        report: &mut CopyReport,
    ) -> Result<(), JobError> {
        for mut c in self.catalog.due_copies(now, BATCH).await? {
            let outcome = match self.catalog.get_backup(c.backup_id).await? {
                Some(b) if b.status == BackupStatus::Success => {
                    self.copy_and_verify(&b, &c.dest_region).await
                }
                _ => Err(JobError::Other(
                    "the source backup was deleted before it could be copied".into(),
                )),
            };
            c.attempts += 1;
            match outcome {
                Ok(size) => {
                    c.status = CopyStatus::Success;
                    c.size = i64::try_from(size).unwrap_or(i64::MAX);
                    c.copied_at = Some(Utc::now());
                    c.last_error.clear();
                    tracing::info!(backup_id = c.backup_id, region = %c.dest_region, bytes = size, "backup copied and verified");
                    report.copied.push((c.backup_id, c.dest_region.clone()));
                }
                Err(e) => {
                    c.last_error = e.to_string();
                    if c.attempts >= MAX_ATTEMPTS {
                        c.status = CopyStatus::Failed;
                        tracing::error!(backup_id = c.backup_id, region = %c.dest_region, error = %e, "backup copy failed for good");
                        self.remove_files(&c).await;
                        report.failed.push((c.backup_id, c.dest_region.clone()));
                    } else {
                        c.next_attempt_at = now + backoff(c.attempts);
                        tracing::warn!(backup_id = c.backup_id, region = %c.dest_region, attempt = c.attempts, error = %e, "backup copy failed; retrying");
                        report.retried += 1;
                    }
                }
            }
            self.catalog.update_copy(&c).await?;
        }
        Ok(())
    }

    async fn remove_files(&self, c: &BackupCopy) {
        if let Some(t) = self.targets.get(&c.dest_region) {
            let prefix = Repository::backup_prefix(&c.instance_id, c.backup_id);
            if let Err(e) = t.repo.delete_prefix(&prefix).await {
                tracing::warn!(backup_id = c.backup_id, region = %c.dest_region, error = %e, "could not remove a copy's files");
            }
        }
    }

    /// Deletes expired copies from their destinations, then forgets them. (Chunks of copied snapshots stay in
    /// the destination's chunk store.)
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn collect_expired(
        &self,
        now: DateTime<Utc>,
        report: &mut CopyReport,
    ) -> Result<(), JobError> {
        for c in self.catalog.expired_copies(now, BATCH).await? {
            let Some(t) = self.targets.get(&c.dest_region) else {
                continue;
            };
            let prefix = Repository::backup_prefix(&c.instance_id, c.backup_id);
            match t.repo.delete_prefix(&prefix).await {
                Ok(_) => {
                    self.catalog
                        .delete_copy(c.backup_id, &c.dest_region)
                        .await?;
                    report.expired += 1;
                }
                Err(e) => {
                    tracing::warn!(backup_id = c.backup_id, region = %c.dest_region, error = %e, "could not delete an expired copy; retrying")
                }
            }
        }
        Ok(())
    }

    /// One pass: queue new backups, run due copies, delete expired copies.
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn pass(&self, now: DateTime<Utc>) -> Result<CopyReport, JobError> {
        let mut report = CopyReport {
            queued: self.enqueue_new(now).await?,
            ..CopyReport::default()
        };
        self.run_due(now, &mut report).await?;
        self.collect_expired(now, &mut report).await?;
        Ok(report)
    }

    /// Runs a pass every `interval` until `cancel` fires.
    pub async fn run(
        self: Arc<Self>,
        interval: Duration,
        cancel: CancellationToken,
    ) -> Result<(), String> {
        loop {
            if let Err(e) = self.pass(Utc::now()).await {
                tracing::warn!(error = %e, "copy pass failed; retrying next interval");
            }
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn backup() -> Backup {
        // 2026-03-02 is a Monday.
        let start = Utc
            .with_ymd_and_hms(2026, 3, 2, 3, 0, 0)
            .single()
            .expect("t");
        Backup {
            id: 5,
            job_id: 5,
            instance_id: "dds-a".into(),
            status: BackupStatus::Success,
            method: ddsvault_catalog::BackupMethod::Logical,
            mode: "Manual".into(),
            backup_type: "FullBackup".into(),
            start_time: start,
            end_time: Some(start + chrono::Duration::minutes(10)),
            expire_time: Some(start + chrono::Duration::days(7)),
            retention_days: 7,
            size: 1,
            db_names: String::new(),
            engine_version: String::new(),
            repo_prefix: "backups/dds-a/5".into(),
            details: serde_json::json!({}),
        }
    }

    fn policy(enabled: bool, period: &str, retention: CrossRetention) -> CrossRegionPolicy {
        CrossRegionPolicy {
            instance_id: "dds-a".into(),
            dest_region: "cn-shanghai".into(),
            src_region: "cn-hangzhou".into(),
            enabled,
            backup_period: period.into(),
            retention,
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn cross_region_settings_decide_what_is_copied_and_for_how_long() {
        let b = backup();
        let now = Utc::now();
        let end = b.end_time.expect("end");
        // No settings: copied, expiring with the backup.
        assert_eq!(
            plan_copy(&b, "cn-shanghai", None, now).map(|c| c.expire_time),
            Some(b.expire_time)
        );
        let days = policy(true, "Monday,Friday", CrossRetention::Days(30));
        assert_eq!(
            plan_copy(&b, "cn-shanghai", Some(&days), now).map(|c| c.expire_time),
            Some(Some(end + chrono::Duration::days(30)))
        );
        let never = policy(true, "", CrossRetention::Never);
        assert_eq!(
            plan_copy(&b, "cn-shanghai", Some(&never), now).map(|c| c.expire_time),
            Some(None)
        );
        // Another weekday, or CrossBackupType=delete: not copied.
        let tuesday = policy(true, "Tuesday", CrossRetention::Days(30));
        assert!(plan_copy(&b, "cn-shanghai", Some(&tuesday), now).is_none());
        let off = policy(false, "", CrossRetention::Days(30));
        assert!(plan_copy(&b, "cn-shanghai", Some(&off), now).is_none());
        // Only successful backups.
        let mut failed = backup();
        failed.status = BackupStatus::Failed;
        assert!(plan_copy(&failed, "cn-shanghai", None, now).is_none());
        // Backoff grows and is capped.
        assert_eq!(backoff(1), chrono::Duration::seconds(10));
        assert_eq!(backoff(20), chrono::Duration::seconds(3600));
    }
}
