//! The retention lock enforced by the repository: S3 Object Lock `COMPLIANCE` retention on every object of
//! every backup an instance's active retention lock protects.
//!
//! While an instance's retention lock is on (`ModifyBackupRetentionLock`), ddsvault refuses to delete its
//! backups before they expire. On an S3 bucket with Object Lock the bucket refuses too, even to its owner: every
//! object of each successful backup — manifest, archive or files, snapshot index, and the chunks the index
//! names — gets `COMPLIANCE` retention until the time retention keeps the backup (its recorded expiry, or the
//! longer hold of a tier of the advanced policies, as `ddsvault retention --dry-run` shows it). Backups kept
//! forever get a rolling [`FOREVER_HORIZON_DAYS`]-day retention, renewed by the periodic pass, so that nothing is
//! made undeletable for ever by a setting that can be changed.
//!
//! Retention is only extended, never shortened (S3 forbids shortening `COMPLIANCE` anyway): a chunk shared by
//! several backups ends up with the latest of their dates. Turning the retention lock off stops further
//! extensions, but what was put stays until its date — that is what compliance mode means.
//!
//! A pass runs when the lock is turned on (the answer waits for it) and periodically, which covers backups
//! taken while the lock is on, extended expiries and longer tiers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ddsvault_catalog::Catalog;
use ddsvault_repo::{Repository, Retained};
use tokio_util::sync::CancellationToken;

use crate::gc::{candidates, prefixes_of};
use crate::retention::{plan_retention, RetentionRules};
use crate::JobError;

/// Backups kept forever are retained this far ahead, renewed by every pass once less than
/// `FOREVER_HORIZON_DAYS - RENEW_AFTER_DAYS` days remain.
pub const FOREVER_HORIZON_DAYS: i64 = 730;
const RENEW_AFTER_DAYS: i64 = 30;

/// What one pass over an instance did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockPass {
    /// Backups whose every object is retained at least as long as their retention keeps them.
    pub retained_backups: u64,
    /// Objects whose retention this pass put or extended.
    pub objects_extended: u64,
    /// Backups that could not be (fully) retained, with the reason; retried by the next pass.
    pub failed: Vec<(i64, String)>,
}

/// Puts the retention lock onto the repository (see the module docs).
#[derive(Debug)]
pub struct ObjectLocker {
    catalog: Catalog,
    repo: Repository,
    /// Backup id → retain-until already put on all of its objects by this process (a restart asks the store
    /// again, which is cheap: objects already retained long enough are only read).
    applied: Mutex<HashMap<i64, DateTime<Utc>>>,
}

impl ObjectLocker {
    /// A locker for the backups in `catalog` whose objects are in `repo`.
    pub fn new(catalog: Catalog, repo: Repository) -> Self {
        Self {
            catalog,
            repo,
            applied: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the repository enforces the lock itself (an S3 bucket with Object Lock enabled).
    ///
    /// # Errors
    /// The bucket's configuration cannot be read.
    pub async fn supported(&self) -> Result<bool, JobError> {
        Ok(self.repo.object_lock_enabled().await?)
    }

    fn applied(&self, backup_id: i64) -> Option<DateTime<Utc>> {
        self.applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&backup_id)
            .copied()
    }

    /// Retains the objects of every backup of `instance_id` that its active retention lock protects at `now`.
    /// Does nothing when the lock is off or the repository has no object lock.
    ///
    /// # Errors
    /// Catalog errors, or the bucket's configuration cannot be read. Failures of single backups are reported
    /// in [`LockPass::failed`].
    pub async fn pass_instance(
        &self,
        instance_id: &str,
        now: DateTime<Utc>,
    ) -> Result<LockPass, JobError> {
        let mut out = LockPass::default();
        let active = self
            .catalog
            .get_retention_lock(instance_id)
            .await?
            .is_some_and(|l| l.is_active(now));
        if !active || !self.supported().await? {
            return Ok(out);
        }
        let standard = self
            .catalog
            .get_policy(instance_id)
            .await?
            .unwrap_or_default();
        let advanced = self.catalog.get_advanced_policy(instance_id).await?;
        let rules = RetentionRules::from_policies(&standard, advanced.as_ref());
        let plan = plan_retention(&candidates(&self.catalog, instance_id).await?, &rules, now);
        let horizon = now + chrono::Duration::days(FOREVER_HORIZON_DAYS);
        for keep in plan.keep {
            let (target, renew_from) = match keep.until {
                Some(u) => (u, u),
                None => (horizon, horizon - chrono::Duration::days(RENEW_AFTER_DAYS)),
            };
            if target <= now {
                continue;
            }
            if self
                .applied(keep.backup_id)
                .is_some_and(|a| a >= renew_from)
            {
                out.retained_backups += 1;
                continue;
            }
            match self.retain_backup(keep.backup_id, target).await {
                Ok(Some(n)) => {
                    out.objects_extended += n;
                    out.retained_backups += 1;
                    self.applied
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(keep.backup_id, target);
                }
                // Deleted meanwhile.
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(backup_id = keep.backup_id, error = %e, "could not put object lock retention");
                    out.failed.push((keep.backup_id, e.to_string()));
                }
            }
        }
        if out.objects_extended > 0 || !out.failed.is_empty() {
            tracing::info!(instance = %instance_id, backups = out.retained_backups, objects = out.objects_extended,
                failed = out.failed.len(), "object lock retention applied");
        }
        Ok(out)
    }

    /// Puts retention until `until` on every object of one backup; the number of objects extended, `None` if
    /// the backup is gone.
    async fn retain_backup(
        &self,
        backup_id: i64,
        until: DateTime<Utc>,
    ) -> Result<Option<u64>, JobError> {
        let Some(b) = self.catalog.get_backup(backup_id).await? else {
            return Ok(None);
        };
        let mut extended = 0;
        for prefix in prefixes_of(&b) {
            for object in self.repo.backup_objects(&prefix, &b.instance_id).await? {
                match self.repo.retain_until(&object, until).await {
                    Ok(Retained::Extended) => extended += 1,
                    Ok(Retained::AlreadyLonger(_)) => {}
                    // Only a second, absent recorded prefix can list nothing; objects listed a moment ago and
                    // gone now mean the backup is being deleted (by expiry: its retention has passed).
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(Some(extended))
    }

    /// Runs a pass over `instances` (as they are at each pass) every `interval` until `cancel` fires.
    pub async fn run(
        self: std::sync::Arc<Self>,
        instances: crate::InstanceIds,
        interval: Duration,
        cancel: CancellationToken,
    ) -> Result<(), String> {
        loop {
            for id in &instances.get() {
                if let Err(e) = self.pass_instance(id, Utc::now()).await {
                    tracing::warn!(instance = %id, error = %e, "object lock pass failed; retrying next interval");
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}
