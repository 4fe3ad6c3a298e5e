//! Automatic backups: the scheduler starts one backup per policy slot (`BackupMode = Automated`).
//!
//! A slot is the start of an instance's one-hour `PreferredBackupTime` window on one of its
//! `PreferredBackupPeriod` days. Every tick the scheduler looks, per instance, for the latest slot at or before
//! now; while now is still inside that slot's window it asks the catalog to take the slot and create the job in
//! one transaction ([`CatalogBackend::create_scheduled_backup_job`]), whose primary key `(instance, slot)` makes
//! the slot run at most once across restarts and across processes sharing the catalog. So:
//! - a slot missed while ddsvault was down runs late only if ddsvault is back inside the window; otherwise it is
//!   not run at all (the next slot is);
//! - a slot that meets an active job of the instance (a manual backup, a restore) is recorded as skipped, never
//!   queued behind it.
//!
//! Automatic backups take the method a manual CreateBackup without `BackupMethod` would
//! ([`crate::backup::plan::automatic_method`] of the instance the runner knows; Logical without a runner) with the
//! policy's
//! `BackupRetentionPeriod`; an instance that cannot take one (unreachable, standalone) gets a Failed backup with
//! the reason, like a manual one.
//!
//! Under advanced (tiered) policies the window runs on every day some day-based data policy matches, and the
//! backup's retention is the longest of the matching policies' (see [`crate::retention`]); the job parameters
//! record its tiers.
//!
//! High-frequency snapshots (standard `SnapshotBackupType = Flash` with `BackupInterval`, or an advanced
//! `backupInterval` policy) have slots of their own every interval minutes from UTC midnight, taken through the
//! same catalog slot mechanism under the `high_frequency` schedule. They never block the window: while the
//! window's slot is untaken and a high-frequency job is active, the window waits for it (inside the window)
//! instead of being recorded as skipped, and no new high-frequency slot starts before the window's.
//!
//! Restore drills (docs/drills.md) have slots of their own under the `drill` schedule: the start of the drill
//! window on each drill day, taken like a backup slot (once across processes and restarts) while the window is
//! open. The slot's job restores the instance's newest successful Logical backup into the drill's scratch target;
//! a target busy with another job gets the slot recorded as skipped, and an instance with no such backup yet gets
//! no drill (the slot stays untaken, so a backup finished inside the window is still drilled).
//!
//! [`CatalogBackend::create_scheduled_backup_job`]: ddsvault_catalog::CatalogBackend::create_scheduled_backup_job

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use ddsvault_catalog::policy::{
    last_slot_at_or_before, next_slot_at_or_after, parse_backup_period, parse_backup_window,
    slot_on_day,
};
use ddsvault_catalog::{
    AdvancedPolicy, ArchiveCompression, BackupJobParams, BackupMethod, BackupPolicy, Catalog,
    DrillPolicy, NewBackupJob, NewJob, ScheduledDrill, ScheduledJob, SCHEDULE_DRILL,
    SCHEDULE_HIGH_FREQUENCY, SCHEDULE_STANDARD,
};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::retention::RetentionRules;
use crate::{Clock, JobError, Runner, SystemClock};

/// Length of the policy window.
pub const WINDOW: chrono::Duration = chrono::Duration::hours(1);

/// The slot due at `now`: the latest window start at or before `now` on a policy day, if `now` is still inside its
/// window. `None` outside windows, or for a policy that does not parse (never stored by ModifyBackupPolicy).
pub fn due_slot(policy: &BackupPolicy, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let start = parse_backup_window(&policy.preferred_backup_time).ok()?;
    let days = parse_backup_period(&policy.preferred_backup_period).ok()?;
    let slot = last_slot_at_or_before(now, start, &days)?;
    (now < slot + WINDOW).then_some(slot)
}

/// When the next automatic backup starts: the first window start at or after `now` (under advanced policies, on
/// a day some day-based policy matches).
pub fn next_backup_time(
    policy: &BackupPolicy,
    advanced: Option<&AdvancedPolicy>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let start = parse_backup_window(&policy.preferred_backup_time).ok()?;
    let rules = RetentionRules::from_policies(policy, advanced);
    if rules.tiers.is_empty() {
        let days = parse_backup_period(&policy.preferred_backup_period).ok()?;
        return next_slot_at_or_after(now, start, &days);
    }
    // A yearly policy on 02-29 may be four years away.
    let mut day = now.date_naive();
    for _ in 0..(4 * 366 + 1) {
        let slot = slot_on_day(day, start);
        if slot >= now && !rules.tiers_on(day).is_empty() {
            return Some(slot);
        }
        day = day.succ_opt()?;
    }
    None
}

/// The drill slot due at `now`: the latest drill window start at or before `now` on a drill day, while `now` is
/// inside that window. `None` when drills are not scheduled (empty period) or outside windows.
pub fn due_drill_slot(policy: &DrillPolicy, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if policy.period.is_empty() {
        return None;
    }
    let start = parse_backup_window(&policy.window).ok()?;
    let days = parse_backup_period(&policy.period).ok()?;
    let slot = last_slot_at_or_before(now, start, &days)?;
    (now < slot + WINDOW).then_some(slot)
}

/// When the next scheduled drill starts (the first drill window start at or after `now`).
pub fn next_drill_time(policy: &DrillPolicy, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if policy.period.is_empty() {
        return None;
    }
    let start = parse_backup_window(&policy.window).ok()?;
    let days = parse_backup_period(&policy.period).ok()?;
    next_slot_at_or_after(now, start, &days)
}

/// The backup a drill of `instance_id` restores: its newest successful Logical backup, or of any method when
/// `any_method` (a drill into a provisioned scratch also drills Physical and Snapshot backups).
///
/// # Errors
/// Catalog errors.
pub async fn newest_drillable_backup(
    catalog: &Catalog,
    instance_id: &str,
    any_method: bool,
) -> Result<Option<ddsvault_catalog::Backup>, JobError> {
    let mut page = 1;
    loop {
        let (total, backups) = catalog
            .list_backups(
                &ddsvault_catalog::BackupFilter {
                    instance_id: Some(instance_id.to_string()),
                    ..Default::default()
                },
                ddsvault_catalog::Page {
                    number: page,
                    size: 100,
                },
            )
            .await?;
        if let Some(b) = backups.iter().find(|b| {
            b.status == ddsvault_catalog::BackupStatus::Success
                && (any_method || b.method == ddsvault_catalog::BackupMethod::Logical)
        }) {
            return Ok(Some(b.clone()));
        }
        if backups.is_empty() || u64::from(page) * 100 >= total {
            return Ok(None);
        }
        page += 1;
    }
}

/// The window slot due at `now` for the policies, with the retention (days, -1 = forever) and tier names its
/// backup gets. Under advanced policies the days are those some day-based policy matches.
pub fn due_window(
    policy: &BackupPolicy,
    rules: &RetentionRules,
    now: DateTime<Utc>,
) -> Option<(DateTime<Utc>, i64, Vec<&'static str>)> {
    if rules.tiers.is_empty() {
        return due_slot(policy, now).map(|s| (s, policy.backup_retention_period, Vec::new()));
    }
    let start = parse_backup_window(&policy.preferred_backup_time).ok()?;
    let today = now.date_naive();
    // A window across midnight belongs to the day it starts on: look at today's and yesterday's.
    [Some(today), today.pred_opt()]
        .into_iter()
        .flatten()
        .find_map(|day: NaiveDate| {
            let slot = slot_on_day(day, start);
            if slot > now || now >= slot + WINDOW {
                return None;
            }
            let (retention, tiers) = rules.slot_retention(day)?;
            Some((slot, retention.as_days(), tiers))
        })
}

/// The high-frequency slot containing `now`: the latest multiple of `interval_minutes` since UTC midnight (every
/// valid interval divides a day).
pub fn high_frequency_slot(interval_minutes: i64, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if interval_minutes <= 0 {
        return None;
    }
    let midnight = slot_on_day(now.date_naive(), NaiveTime::MIN);
    let minutes = (now - midnight).num_minutes();
    Some(midnight + chrono::Duration::minutes(minutes - minutes % interval_minutes))
}

/// What one tick did for one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TickOutcome {
    /// No window is open.
    Idle,
    /// The slot's job was created.
    Created {
        /// The start of the slot's window.
        slot: DateTime<Utc>,
        /// The job created.
        job_id: i64,
    },
    /// The slot had been taken already (earlier tick, restart, other process).
    AlreadyTaken {
        /// The start of the slot's window.
        slot: DateTime<Utc>,
    },
    /// The window's slot waits for an active high-frequency job to end (next tick, inside the window).
    Waiting {
        /// The start of the slot's window.
        slot: DateTime<Utc>,
        /// The active high-frequency job waited for.
        job_id: i64,
    },
    /// What the high-frequency schedule did (reported after the window's outcome, only when it is on).
    HighFrequency(Box<TickOutcome>),
    /// The slot met an active job and was recorded as skipped.
    Skipped {
        /// The start of the slot's window.
        slot: DateTime<Utc>,
        /// The active job the slot met.
        job_id: i64,
    },
    /// What the drill schedule did (reported after the backup outcomes, only inside a drill window).
    Drill(Box<TickOutcome>),
    /// A drill window is open but the instance has no successful Logical backup to drill yet.
    NothingToDrill {
        /// The start of the drill window's slot.
        slot: DateTime<Utc>,
    },
}

/// Starts automatic backups.
#[derive(Debug)]
pub struct Scheduler {
    catalog: Catalog,
    /// The instances looked at on each tick (the runner's live list while serving).
    instances: crate::InstanceIds,
    node_id: String,
    compression: ArchiveCompression,
    clock: Arc<dyn Clock>,
    tick: Duration,
    runner: Option<Arc<Runner>>,
    ticks: watch::Sender<u64>,
    events: crate::events::Events,
}

impl Scheduler {
    /// `compression` is recorded in the job parameters like CreateBackup does.
    pub fn new(
        catalog: Catalog,
        instances: Vec<String>,
        node_id: String,
        compression: ArchiveCompression,
        tick: Duration,
    ) -> Self {
        Self {
            catalog,
            instances: crate::InstanceIds::Fixed(instances),
            node_id,
            compression,
            clock: Arc::new(SystemClock),
            tick,
            runner: None,
            ticks: watch::channel(0).0,
            events: crate::events::Events::default(),
        }
    }

    /// Replaces the clock (tests).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Looks at these instances on each tick instead of the list given to [`Scheduler::new`]: with
    /// [`crate::InstanceIds::Live`], instances registered or provisioned while serving are scheduled by their
    /// policy from the next tick, and removed ones no longer are.
    #[must_use]
    pub fn with_instances(mut self, instances: crate::InstanceIds) -> Self {
        self.instances = instances;
        self
    }

    /// Wakes this runner when a job is created (otherwise it finds it at its next poll).
    #[must_use]
    pub fn with_runner(mut self, runner: Arc<Runner>) -> Self {
        self.runner = Some(runner);
        self
    }

    /// Reports missed slots to `sink` from now on (set once).
    pub fn set_event_sink(&self, sink: Arc<dyn crate::EventSink>) {
        self.events.set(sink);
    }

    /// Counts finished ticks (tests wait on it instead of sleeping).
    pub fn ticks(&self) -> watch::Receiver<u64> {
        self.ticks.subscribe()
    }

    /// One look at every instance's policy at the clock's now.
    ///
    /// # Errors
    /// The first catalog error (the other instances are looked at next tick).
    pub async fn tick(&self) -> Result<Vec<(String, TickOutcome)>, JobError> {
        let now = self.clock.now();
        let ids = self.instances.get();
        let mut out = Vec::with_capacity(ids.len());
        for id in &ids {
            // Automatic backups are opt-in: an instance without a stored policy (none set through
            // ModifyBackupPolicy or `[[instances]] policy`) has none, e.g. a restore target.
            let Some(policy) = self.catalog.get_policy(id).await? else {
                out.push((id.clone(), TickOutcome::Idle));
                continue;
            };
            let advanced = self.catalog.get_advanced_policy(id).await?;
            let rules = RetentionRules::from_policies(&policy, advanced.as_ref());
            let window = match due_window(&policy, &rules, now) {
                None => TickOutcome::Idle,
                Some((slot, retention_days, tiers)) => {
                    self.window_slot(id, slot, retention_days, &tiers, now)
                        .await?
                }
            };
            let waiting = matches!(window, TickOutcome::Waiting { .. });
            out.push((id.clone(), window));
            if let Some(hf) = &rules.high_frequency {
                // The window goes first: no new snapshot while it waits.
                if waiting {
                    continue;
                }
                if let Some(slot) = high_frequency_slot(hf.interval_minutes, now) {
                    let job = self.job(
                        id,
                        BackupMethod::Snapshot,
                        SCHEDULE_HIGH_FREQUENCY,
                        slot,
                        hf.all.as_days(),
                        &[],
                        now,
                    );
                    let outcome = self
                        .run_slot(id, job, SCHEDULE_HIGH_FREQUENCY, slot)
                        .await?;
                    out.push((id.clone(), TickOutcome::HighFrequency(Box::new(outcome))));
                }
            }
        }
        self.drill_tick(now, &mut out).await?;
        Ok(out)
    }

    /// Whether this scheduler starts the automatic work of `id`.
    fn covers(&self, id: &str) -> bool {
        self.instances.get().iter().any(|i| i == id)
    }

    /// The drill slots due now (see the module comment).
    async fn drill_tick(
        &self,
        now: DateTime<Utc>,
        out: &mut Vec<(String, TickOutcome)>,
    ) -> Result<(), JobError> {
        for policy in self.catalog.list_drill_policies().await? {
            let id = &policy.instance_id;
            if !self.covers(id) {
                continue;
            }
            let Some(slot) = due_drill_slot(&policy, now) else {
                continue;
            };
            let taken = self
                .catalog
                .list_schedule_runs(id, 16)
                .await?
                .iter()
                .any(|r| r.schedule == SCHEDULE_DRILL && r.slot_start == slot);
            if taken {
                out.push((
                    id.clone(),
                    TickOutcome::Drill(Box::new(TickOutcome::AlreadyTaken { slot })),
                ));
                continue;
            }
            let provisioned = policy.target == crate::drill::PROVISION_TARGET;
            let Some(backup) = newest_drillable_backup(&self.catalog, id, provisioned).await?
            else {
                out.push((id.clone(), TickOutcome::NothingToDrill { slot }));
                continue;
            };
            let mut params = serde_json::json!({
                "source_instance": id,
                "schedule": SCHEDULE_DRILL,
                "slot": slot.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            });
            if provisioned {
                params["target"] = crate::drill::PROVISION_TARGET.into();
            }
            let job = NewJob {
                kind: ddsvault_catalog::JobKind::Drill,
                // A provisioned scratch exists only inside the job: the job takes the source instance's slot.
                instance_id: if provisioned {
                    id.clone()
                } else {
                    policy.target.clone()
                },
                backup_id: Some(backup.id),
                mode: "Automated".into(),
                params,
                now,
            };
            let outcome = match self
                .catalog
                .create_scheduled_drill_job(id, slot, &self.node_id, &job)
                .await?
            {
                ScheduledDrill::Created(job) => {
                    tracing::info!(instance = %id, %slot, job_id = job.id, backup_id = backup.id, target = %policy.target, "restore drill started");
                    if let Some(r) = &self.runner {
                        r.wake();
                    }
                    TickOutcome::Created {
                        slot,
                        job_id: job.id,
                    }
                }
                ScheduledDrill::AlreadyTaken => TickOutcome::AlreadyTaken { slot },
                ScheduledDrill::Skipped { job_id, kind } => {
                    tracing::warn!(instance = %id, %slot, job_id, kind = %kind, target = %policy.target, "restore drill skipped: the scratch target has an active job");
                    self.events.emit(&crate::Event::SlotMissed {
                        instance_id: id.clone(),
                        schedule: SCHEDULE_DRILL.to_string(),
                        slot,
                        reason: "active_job",
                        blocking_job_id: job_id,
                    });
                    TickOutcome::Skipped { slot, job_id }
                }
            };
            out.push((id.clone(), TickOutcome::Drill(Box::new(outcome))));
        }
        Ok(())
    }

    /// The window's slot: taken unless already taken, or waiting while a high-frequency job holds the instance.
    async fn window_slot(
        &self,
        id: &str,
        slot: DateTime<Utc>,
        retention_days: i64,
        tiers: &[&str],
        now: DateTime<Utc>,
    ) -> Result<TickOutcome, JobError> {
        let taken = self
            .catalog
            .list_schedule_runs(id, 8)
            .await?
            .iter()
            .any(|r| r.schedule == SCHEDULE_STANDARD && r.slot_start == slot);
        if taken {
            return Ok(TickOutcome::AlreadyTaken { slot });
        }
        let active = self.catalog.list_jobs(id, true).await?;
        if let Some(j) = active.iter().find(|j| {
            j.backup_params()
                .is_ok_and(|p| p.schedule.as_deref() == Some(SCHEDULE_HIGH_FREQUENCY))
        }) {
            tracing::info!(instance = %id, %slot, job_id = j.id, "automatic backup waits for a high-frequency snapshot");
            return Ok(TickOutcome::Waiting { slot, job_id: j.id });
        }
        // CreateBackup's rules without `BackupMethod`; without a runner (no instance to look at), Logical.
        let method = match self.runner.as_ref().map(|r| r.instance(id)) {
            Some(Ok(spec)) => crate::backup::plan::automatic_method(&spec).await,
            _ => BackupMethod::Logical,
        };
        let job = self.job(
            id,
            method,
            SCHEDULE_STANDARD,
            slot,
            retention_days,
            tiers,
            now,
        );
        self.run_slot(id, job, SCHEDULE_STANDARD, slot).await
    }

    #[allow(clippy::too_many_arguments)]
    fn job(
        &self,
        id: &str,
        method: BackupMethod,
        schedule: &str,
        slot: DateTime<Utc>,
        retention_days: i64,
        tiers: &[&str],
        now: DateTime<Utc>,
    ) -> NewBackupJob {
        NewBackupJob {
            instance_id: id.to_string(),
            method,
            mode: "Automated".into(),
            retention_days,
            engine_version: String::new(),
            params: BackupJobParams {
                compression: Some(self.compression),
                schedule: Some(schedule.to_string()),
                tiers: tiers.iter().map(|t| t.to_string()).collect(),
                slot: Some(slot.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
                ..BackupJobParams::new(method, retention_days)
            }
            .to_value(),
            now,
        }
    }

    async fn run_slot(
        &self,
        id: &str,
        new: NewBackupJob,
        schedule: &str,
        slot: DateTime<Utc>,
    ) -> Result<TickOutcome, JobError> {
        Ok(
            match self
                .catalog
                .create_scheduled_job(&new, schedule, slot, &self.node_id)
                .await?
            {
                ScheduledJob::Created(created) => {
                    let (job, backup) = *created;
                    tracing::info!(instance = %id, %slot, schedule, job_id = job.id, backup_id = backup.id, "automatic backup started");
                    if let Some(r) = &self.runner {
                        r.wake();
                    }
                    TickOutcome::Created {
                        slot,
                        job_id: job.id,
                    }
                }
                ScheduledJob::AlreadyTaken => TickOutcome::AlreadyTaken { slot },
                ScheduledJob::Skipped { job_id, kind } => {
                    tracing::warn!(instance = %id, %slot, schedule, job_id, kind = %kind, "automatic backup skipped: the instance has an active job");
                    self.events.emit(&crate::Event::SlotMissed {
                        instance_id: id.to_string(),
                        schedule: schedule.to_string(),
                        slot,
                        reason: "active_job",
                        blocking_job_id: job_id,
                    });
                    TickOutcome::Skipped { slot, job_id }
                }
            },
        )
    }

    /// Ticks at once, then every `tick`, until `cancel` fires.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) -> Result<(), String> {
        loop {
            if let Err(e) = self.tick().await {
                tracing::error!(error = %e, "scheduler tick failed; retrying next tick");
            }
            self.ticks.send_modify(|n| *n += 1);
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(self.tick) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;
    use chrono::TimeZone;
    use ddsvault_catalog::AdvancedPolicy;
    use ddsvault_catalog::{JobState, NewJob};
    use std::sync::Mutex;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    fn policy(time: &str, days: &str) -> BackupPolicy {
        BackupPolicy {
            preferred_backup_time: time.into(),
            preferred_backup_period: days.into(),
            backup_retention_period: 14,
            ..BackupPolicy::default()
        }
    }

    async fn setup(p: &BackupPolicy) -> (Catalog, Arc<ManualClock>) {
        let cat = ddsvault_catalog::open("sqlite::memory:")
            .await
            .expect("catalog");
        cat.register_instance("dds-a", Utc.timestamp_opt(0, 0).single().expect("t"))
            .await
            .expect("register");
        cat.put_policy("dds-a", p, Utc::now())
            .await
            .expect("policy");
        // 2026-11-27 is a Friday.
        (
            cat,
            Arc::new(ManualClock(Mutex::new(at("2026-11-27T02:59:00Z")))),
        )
    }

    fn scheduler(cat: &Catalog, clock: &Arc<ManualClock>, node: &str) -> Scheduler {
        Scheduler::new(
            cat.clone(),
            vec!["dds-a".into()],
            node.into(),
            ddsvault_catalog::ArchiveCompression::Zstd,
            Duration::from_secs(30),
        )
        .with_clock(clock.clone())
    }

    /// Keeps every event it is given.
    #[derive(Debug, Default)]
    struct Recorder(Mutex<Vec<crate::Event>>);

    impl crate::EventSink for Recorder {
        fn emit(&self, event: &crate::Event) {
            self.0.lock().expect("events").push(event.clone());
        }
    }

    fn set(clock: &ManualClock, s: &str) {
        *clock.0.lock().expect("clock") = at(s);
    }

    #[test]
    fn slots_and_next_time() {
        let p = policy("03:00Z-04:00Z", "Monday,Friday");
        assert_eq!(due_slot(&p, at("2026-11-27T02:59:59Z")), None);
        assert_eq!(
            due_slot(&p, at("2026-11-27T03:00:00Z")),
            Some(at("2026-11-27T03:00:00Z"))
        );
        assert_eq!(
            due_slot(&p, at("2026-11-27T03:59:59Z")),
            Some(at("2026-11-27T03:00:00Z"))
        );
        assert_eq!(due_slot(&p, at("2026-11-27T04:00:00Z")), None);
        // Saturday: not a policy day.
        assert_eq!(due_slot(&p, at("2026-11-28T03:30:00Z")), None);
        assert_eq!(
            next_backup_time(&p, None, at("2026-11-27T03:30:00Z")),
            Some(at("2026-11-30T03:00:00Z"))
        );
        assert_eq!(
            next_backup_time(&p, None, at("2026-11-27T01:00:00Z")),
            Some(at("2026-11-27T03:00:00Z"))
        );
        // A window across midnight belongs to the day it starts on.
        let late = policy("23:00Z-00:00Z", "Friday");
        assert_eq!(due_slot(&late, at("2026-11-28T00:00:00Z")), None);
        assert_eq!(
            due_slot(&late, at("2026-11-27T23:59:00Z")),
            Some(at("2026-11-27T23:00:00Z"))
        );
    }

    #[tokio::test]
    async fn an_instance_without_a_stored_policy_gets_no_automatic_backup() {
        let cat = ddsvault_catalog::open("sqlite::memory:")
            .await
            .expect("catalog");
        cat.register_instance("dds-a", Utc.timestamp_opt(0, 0).single().expect("t"))
            .await
            .expect("register");
        // Inside the default window (03:00Z-04:00Z, every day).
        let clock = Arc::new(ManualClock(Mutex::new(at("2026-11-27T03:10:00Z"))));
        let s = scheduler(&cat, &clock, "node-a");
        let out = s.tick().await.expect("tick");
        assert!(matches!(out.as_slice(), [(id, TickOutcome::Idle)] if id == "dds-a"));
        assert!(cat
            .list_jobs("dds-a", false)
            .await
            .expect("jobs")
            .is_empty());
        // Once a policy is stored, the same window takes its slot.
        cat.put_policy("dds-a", &BackupPolicy::default(), Utc::now())
            .await
            .expect("policy");
        s.tick().await.expect("tick");
        assert_eq!(cat.list_jobs("dds-a", false).await.expect("jobs").len(), 1);
    }

    #[tokio::test]
    async fn one_run_per_slot_across_ticks_restarts_and_processes() {
        let (cat, clock) = setup(&policy("03:00Z-04:00Z", "Friday")).await;
        let s1 = scheduler(&cat, &clock, "node-1");
        assert_eq!(
            s1.tick().await.expect("tick"),
            vec![("dds-a".to_string(), TickOutcome::Idle)]
        );
        set(&clock, "2026-11-27T03:00:10Z");
        let created = s1.tick().await.expect("tick");
        let TickOutcome::Created { slot, job_id } = created[0].1.clone() else {
            panic!("expected Created, got {created:?}");
        };
        assert_eq!(slot, at("2026-11-27T03:00:00Z"));
        let job = cat.get_job(job_id).await.expect("get").expect("job");
        assert_eq!(
            (job.mode.as_str(), job.kind),
            ("Automated", ddsvault_catalog::JobKind::Backup)
        );
        assert_eq!(job.method(), Some(BackupMethod::Logical));
        assert_eq!(job.backup_params().expect("params").retention_days, 14);
        let backup = cat
            .get_backup(job.backup_id.expect("backup"))
            .await
            .expect("get")
            .expect("backup");
        assert_eq!(
            (backup.mode.as_str(), backup.method),
            ("Automated", BackupMethod::Logical)
        );
        // Let the job finish, so that only the slot key can stop a second run.
        cat.fail_job(job_id, "test", at("2026-11-27T03:01:00Z"))
            .await
            .expect("end");
        set(&clock, "2026-11-27T03:30:00Z");
        // Later ticks, a restarted process and another process all see the slot taken.
        let taken = vec![("dds-a".to_string(), TickOutcome::AlreadyTaken { slot })];
        assert_eq!(s1.tick().await.expect("tick"), taken);
        assert_eq!(
            scheduler(&cat, &clock, "node-1")
                .tick()
                .await
                .expect("tick"),
            taken
        );
        assert_eq!(
            scheduler(&cat, &clock, "node-2")
                .tick()
                .await
                .expect("tick"),
            taken
        );
        assert_eq!(cat.list_jobs("dds-a", false).await.expect("jobs").len(), 1);
        // The next Friday is a new slot.
        set(&clock, "2026-12-04T03:05:00Z");
        assert!(matches!(
            s1.tick().await.expect("tick")[0].1,
            TickOutcome::Created { .. }
        ));
    }

    #[tokio::test]
    async fn two_processes_racing_create_one_job() {
        let (cat, clock) = setup(&policy("03:00Z-04:00Z", "Friday")).await;
        set(&clock, "2026-11-27T03:00:00Z");
        let a = scheduler(&cat, &clock, "node-a");
        let b = scheduler(&cat, &clock, "node-b");
        let (ra, rb) = tokio::join!(a.tick(), b.tick());
        let outcomes = [ra.expect("a")[0].1.clone(), rb.expect("b")[0].1.clone()];
        let created = outcomes
            .iter()
            .filter(|o| matches!(o, TickOutcome::Created { .. }))
            .count();
        assert_eq!(created, 1, "{outcomes:?}");
        assert_eq!(cat.list_jobs("dds-a", false).await.expect("jobs").len(), 1);
    }

    #[tokio::test]
    async fn a_missed_slot_runs_late_only_inside_its_window() {
        let (cat, clock) = setup(&policy("03:00Z-04:00Z", "Friday")).await;
        // Down from 02:00 to 04:10: the window passed; the slot is never run.
        set(&clock, "2026-11-27T04:10:00Z");
        let s = scheduler(&cat, &clock, "node-1");
        assert_eq!(s.tick().await.expect("tick")[0].1, TickOutcome::Idle);
        assert!(cat
            .list_jobs("dds-a", false)
            .await
            .expect("jobs")
            .is_empty());
        assert!(cat
            .list_schedule_runs("dds-a", 10)
            .await
            .expect("runs")
            .is_empty());
        // Back at 03:45 on the next Friday: inside the window, the slot runs late.
        set(&clock, "2026-12-04T03:45:00Z");
        assert_eq!(
            s.tick().await.expect("tick")[0].1.clone(),
            TickOutcome::Created {
                slot: at("2026-12-04T03:00:00Z"),
                job_id: cat
                    .list_jobs("dds-a", false)
                    .await
                    .expect("jobs")
                    .first()
                    .map_or(-1, |j| j.id),
            }
        );
    }

    #[tokio::test]
    async fn a_slot_meeting_an_active_job_is_skipped_and_recorded() {
        let (cat, clock) = setup(&policy("03:00Z-04:00Z", "Friday")).await;
        let manual = cat
            .create_job(&NewJob {
                kind: ddsvault_catalog::JobKind::Restore,
                instance_id: "dds-a".into(),
                backup_id: None,
                mode: "Manual".into(),
                params: serde_json::json!({}),
                now: at("2026-11-27T02:50:00Z"),
            })
            .await
            .expect("manual job");
        set(&clock, "2026-11-27T03:00:30Z");
        let s = scheduler(&cat, &clock, "node-1");
        let events = Arc::new(Recorder::default());
        s.set_event_sink(events.clone());
        let slot = at("2026-11-27T03:00:00Z");
        assert_eq!(
            s.tick().await.expect("tick")[0].1,
            TickOutcome::Skipped {
                slot,
                job_id: manual.id
            }
        );
        // Watchers (metrics, alert webhooks) are told once, with the job that held the instance.
        assert_eq!(
            *events.0.lock().expect("events"),
            vec![crate::Event::SlotMissed {
                instance_id: "dds-a".into(),
                schedule: "standard".into(),
                slot,
                reason: "active_job",
                blocking_job_id: manual.id,
            }]
        );
        // Even when the manual job ends inside the window, the skipped slot is not piled up afterwards.
        cat.fail_job(manual.id, "done", at("2026-11-27T03:10:00Z"))
            .await
            .expect("end");
        set(&clock, "2026-11-27T03:20:00Z");
        assert_eq!(
            s.tick().await.expect("tick")[0].1,
            TickOutcome::AlreadyTaken { slot }
        );
        let jobs = cat.list_jobs("dds-a", false).await.expect("jobs");
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].state, JobState::Failed);
        let runs = cat.list_schedule_runs("dds-a", 10).await.expect("runs");
        assert_eq!(
            (runs.len(), runs[0].outcome.as_str(), runs[0].job_id),
            (1, "Skipped", Some(manual.id))
        );
    }

    #[test]
    fn high_frequency_slots_and_advanced_windows() {
        assert_eq!(
            high_frequency_slot(15, at("2026-11-27T10:07:59Z")),
            Some(at("2026-11-27T10:00:00Z"))
        );
        assert_eq!(
            high_frequency_slot(720, at("2026-11-27T13:00:00Z")),
            Some(at("2026-11-27T12:00:00Z"))
        );
        assert_eq!(
            high_frequency_slot(480, at("2026-11-27T23:59:59Z")),
            Some(at("2026-11-27T16:00:00Z"))
        );
        assert_eq!(high_frequency_slot(-1, at("2026-11-27T10:00:00Z")), None);
        let standard = policy("23:00Z-00:00Z", "Friday");
        let advanced = AdvancedPolicy {
            enabled: true,
            data_policies: vec![
                ddsvault_catalog::DataPolicy {
                    policy_id: "1".into(),
                    backup_policy: "dayOfWeek".into(),
                    preferred_backup_period: "1,2".into(),
                    retention_type: "delay".into(),
                    retention_period: 7,
                    ..Default::default()
                },
                ddsvault_catalog::DataPolicy {
                    policy_id: "2".into(),
                    backup_policy: "dayOfMonth".into(),
                    preferred_backup_period: "-1".into(),
                    retention_type: "never".into(),
                    ..Default::default()
                },
            ],
            log_policies: Vec::new(),
            last_policy_id: 2,
        };
        let rules = RetentionRules::from_policies(&standard, Some(&advanced));
        // Friday 2026-11-27 is no longer a backup day; Monday 2026-11-30 is both weekly and the month's last day.
        assert_eq!(
            due_window(&standard, &rules, at("2026-11-27T23:30:00Z")),
            None
        );
        assert_eq!(
            due_window(&standard, &rules, at("2026-11-30T23:10:00Z")),
            Some((at("2026-11-30T23:00:00Z"), -1, vec!["monthly", "weekly"]))
        );
        assert_eq!(
            due_window(&standard, &rules, at("2026-12-01T23:10:00Z")),
            Some((at("2026-12-01T23:00:00Z"), 7, vec!["weekly"]))
        );
        assert_eq!(
            next_backup_time(&standard, Some(&advanced), at("2026-11-27T23:30:00Z")),
            Some(at("2026-11-30T23:00:00Z"))
        );
        // Without advanced policies the standard days and retention apply.
        let plain = RetentionRules::from_policies(&standard, None);
        assert_eq!(
            due_window(&standard, &plain, at("2026-11-27T23:30:00Z")),
            Some((at("2026-11-27T23:00:00Z"), 14, vec![]))
        );
    }

    fn flash(time: &str, days: &str, interval: i64) -> BackupPolicy {
        BackupPolicy {
            snapshot_backup_type: "Flash".into(),
            backup_interval: interval,
            high_frequency_backup_retention: 2,
            ..policy(time, days)
        }
    }

    fn hf(o: &TickOutcome) -> TickOutcome {
        match o {
            TickOutcome::HighFrequency(inner) => (**inner).clone(),
            other => panic!("expected a high-frequency outcome, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn high_frequency_snapshots_run_once_per_interval() {
        let (cat, clock) = setup(&flash("03:00Z-04:00Z", "Friday", 30)).await;
        set(&clock, "2026-11-27T10:05:00Z");
        let s = scheduler(&cat, &clock, "node-1");
        let out = s.tick().await.expect("tick");
        assert_eq!(out[0].1, TickOutcome::Idle);
        let TickOutcome::Created { slot, job_id } = hf(&out[1].1) else {
            panic!("expected Created, got {out:?}");
        };
        assert_eq!(slot, at("2026-11-27T10:00:00Z"));
        let job = cat.get_job(job_id).await.expect("get").expect("job");
        let params = job.backup_params().expect("backup parameters");
        assert_eq!(
            (job.mode.as_str(), params.method, params.schedule.as_deref()),
            (
                "Automated",
                BackupMethod::Snapshot,
                Some(SCHEDULE_HIGH_FREQUENCY)
            )
        );
        assert_eq!(params.retention_days, 2);
        cat.fail_job(job_id, "test", at("2026-11-27T10:06:00Z"))
            .await
            .expect("end");
        set(&clock, "2026-11-27T10:29:59Z");
        assert_eq!(
            hf(&s.tick().await.expect("tick")[1].1),
            TickOutcome::AlreadyTaken { slot }
        );
        set(&clock, "2026-11-27T10:30:00Z");
        assert!(matches!(
            hf(&s.tick().await.expect("tick")[1].1),
            TickOutcome::Created { slot, .. } if slot == at("2026-11-27T10:30:00Z")
        ));
        // Standard snapshots: no high-frequency outcome at all.
        cat.put_policy("dds-a", &policy("03:00Z-04:00Z", "Friday"), Utc::now())
            .await
            .expect("policy");
        set(&clock, "2026-11-27T11:00:00Z");
        assert_eq!(
            s.tick().await.expect("tick"),
            vec![("dds-a".to_string(), TickOutcome::Idle)]
        );
    }

    #[tokio::test]
    async fn a_high_frequency_job_does_not_block_the_window() {
        let (cat, clock) = setup(&flash("03:00Z-04:00Z", "Friday", 30)).await;
        set(&clock, "2026-11-27T02:50:00Z");
        let s = scheduler(&cat, &clock, "node-1");
        let TickOutcome::Created {
            job_id: snapshot, ..
        } = hf(&s.tick().await.expect("tick")[1].1)
        else {
            panic!("expected a snapshot job");
        };
        // The window opens while the snapshot job is still active: it waits, and no new snapshot starts.
        set(&clock, "2026-11-27T03:00:10Z");
        let out = s.tick().await.expect("tick");
        assert_eq!(
            out,
            vec![(
                "dds-a".to_string(),
                TickOutcome::Waiting {
                    slot: at("2026-11-27T03:00:00Z"),
                    job_id: snapshot
                }
            )]
        );
        // The snapshot job fails (no Snapshot engine): the window's backup starts at the next tick.
        cat.fail_job(
            snapshot,
            "Snapshot backups are not implemented",
            at("2026-11-27T03:00:20Z"),
        )
        .await
        .expect("end");
        set(&clock, "2026-11-27T03:00:40Z");
        let out = s.tick().await.expect("tick");
        let TickOutcome::Created { job_id, .. } = out[0].1 else {
            panic!("expected the window's backup, got {out:?}");
        };
        let job = cat.get_job(job_id).await.expect("get").expect("job");
        assert_eq!(job.method(), Some(BackupMethod::Logical));
        // The 03:00 snapshot slot met the window's job: recorded as skipped.
        assert!(matches!(hf(&out[1].1), TickOutcome::Skipped { job_id: j, .. } if j == job_id));
    }

    /// A Success Logical backup of dds-a ending at `end`.
    async fn success_backup(cat: &Catalog, end: &str) -> i64 {
        let (job, backup) = cat
            .create_backup_job(&NewBackupJob {
                instance_id: "dds-a".into(),
                method: ddsvault_catalog::BackupMethod::Logical,
                mode: "Manual".into(),
                retention_days: 7,
                engine_version: String::new(),
                params: BackupJobParams::new(BackupMethod::Logical, 7).to_value(),
                now: at(end) - chrono::Duration::minutes(1),
            })
            .await
            .expect("backup job");
        let claimed = cat
            .claim_next_job("node-x", at(end), at(end) + chrono::Duration::minutes(1))
            .await
            .expect("claim")
            .expect("a job");
        cat.complete_backup(
            job.id,
            "node-x",
            claimed.lease_token,
            &ddsvault_catalog::BackupCompletion {
                end_time: at(end),
                expire_time: at(end) + chrono::Duration::days(7),
                size: 1,
                db_names: "app".into(),
                repo_prefix: format!("backups/dds-a/{}", backup.id),
                details: serde_json::json!({}),
            },
        )
        .await
        .expect("complete");
        backup.id
    }

    fn drill_policy(period: &str) -> DrillPolicy {
        DrillPolicy {
            instance_id: "dds-a".into(),
            period: period.into(),
            window: "05:00Z-06:00Z".into(),
            target: "dds-scratch".into(),
            updated_at: at("2026-11-27T00:00:00Z"),
        }
    }

    #[test]
    fn drill_slots_follow_their_window_and_days() {
        let p = drill_policy("Friday");
        assert_eq!(due_drill_slot(&p, at("2026-11-27T04:59:59Z")), None);
        assert_eq!(
            due_drill_slot(&p, at("2026-11-27T05:30:00Z")),
            Some(at("2026-11-27T05:00:00Z"))
        );
        assert_eq!(due_drill_slot(&p, at("2026-11-27T06:00:00Z")), None);
        assert_eq!(due_drill_slot(&p, at("2026-11-28T05:30:00Z")), None);
        assert_eq!(
            next_drill_time(&p, at("2026-11-27T05:30:00Z")),
            Some(at("2026-12-04T05:00:00Z"))
        );
        // Period empty: drills only by hand.
        assert_eq!(
            due_drill_slot(&drill_policy(""), at("2026-11-27T05:30:00Z")),
            None
        );
        assert_eq!(
            next_drill_time(&drill_policy(""), at("2026-11-27T05:30:00Z")),
            None
        );
    }

    #[tokio::test]
    async fn a_drill_slot_restores_the_newest_logical_backup_once() {
        let (cat, clock) = setup(&policy("03:00Z-04:00Z", "Friday")).await;
        cat.put_drill_policy(&drill_policy("Friday"))
            .await
            .expect("drill policy");
        let s = scheduler(&cat, &clock, "node-1");
        set(&clock, "2026-11-27T05:10:00Z");
        let slot = at("2026-11-27T05:00:00Z");
        // No backup yet: nothing to drill, and the slot stays free.
        let out = s.tick().await.expect("tick");
        assert_eq!(
            out[1],
            ("dds-a".to_string(), TickOutcome::NothingToDrill { slot })
        );
        assert!(cat
            .list_schedule_runs("dds-a", 10)
            .await
            .expect("runs")
            .is_empty());
        let older = success_backup(&cat, "2026-11-27T04:00:00Z").await;
        let newest = success_backup(&cat, "2026-11-27T05:05:00Z").await;
        assert!(newest > older);
        set(&clock, "2026-11-27T05:20:00Z");
        let out = s.tick().await.expect("tick");
        let TickOutcome::Drill(inner) = &out[1].1 else {
            panic!("expected a drill outcome, got {out:?}");
        };
        let TickOutcome::Created { job_id, .. } = **inner else {
            panic!("expected Created, got {inner:?}");
        };
        let job = cat.get_job(job_id).await.expect("get").expect("job");
        assert_eq!(
            (
                job.kind,
                job.instance_id.as_str(),
                job.backup_id,
                job.mode.as_str()
            ),
            (
                ddsvault_catalog::JobKind::Drill,
                "dds-scratch",
                Some(newest),
                "Automated"
            )
        );
        assert_eq!(job.params["source_instance"], "dds-a");
        // The same slot never runs twice, from this process or another.
        cat.fail_job(job_id, "test", at("2026-11-27T05:21:00Z"))
            .await
            .expect("end");
        assert_eq!(
            scheduler(&cat, &clock, "node-2")
                .tick()
                .await
                .expect("tick")[1]
                .1,
            TickOutcome::Drill(Box::new(TickOutcome::AlreadyTaken { slot }))
        );
    }

    #[tokio::test]
    async fn a_provisioned_drill_slot_runs_on_the_instance_itself() {
        let (cat, clock) = setup(&policy("03:00Z-04:00Z", "Friday")).await;
        cat.put_drill_policy(&DrillPolicy {
            target: crate::drill::PROVISION_TARGET.into(),
            ..drill_policy("Friday")
        })
        .await
        .expect("drill policy");
        let newest = success_backup(&cat, "2026-11-27T05:05:00Z").await;
        let s = scheduler(&cat, &clock, "node-1");
        set(&clock, "2026-11-27T05:20:00Z");
        let out = s.tick().await.expect("tick");
        let TickOutcome::Drill(inner) = &out[1].1 else {
            panic!("expected a drill outcome, got {out:?}");
        };
        let TickOutcome::Created { job_id, .. } = **inner else {
            panic!("expected Created, got {inner:?}");
        };
        let job = cat.get_job(job_id).await.expect("get").expect("job");
        // The temporary scratch exists only inside the job: the job holds the drilled instance's slot.
        assert_eq!(
            (job.instance_id.as_str(), job.backup_id),
            ("dds-a", Some(newest))
        );
        assert!(crate::drill::is_provisioned(&job));
        assert_eq!(job.params["source_instance"], "dds-a");
    }

    #[tokio::test]
    async fn the_task_ticks_at_start_and_stops_on_cancel() {
        let (cat, clock) = setup(&policy("03:00Z-04:00Z", "Friday")).await;
        set(&clock, "2026-11-27T03:15:00Z");
        let s = Arc::new(scheduler(&cat, &clock, "node-1"));
        let mut ticks = s.ticks();
        let tasks = crate::Tasks::new();
        let me = Arc::clone(&s);
        tasks.spawn("scheduler", move |token| me.run(token));
        ticks.wait_for(|n| *n >= 1).await.expect("first tick");
        assert_eq!(cat.list_jobs("dds-a", false).await.expect("jobs").len(), 1);
        assert!(tasks.shutdown(Duration::from_secs(10)).await);
    }
}
