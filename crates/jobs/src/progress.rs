//! What a running job is doing, as the task APIs show it: a phase, a percent, and the documents and bytes done
//! and estimated. Its heartbeat writes them to the catalog, and a watchdog fails a job whose progress stalls.
//!
//! The percent is computed per phase from counters, so it moves in every phase and never claims 100 before the
//! job is done: estimates (document counts from collection statistics, file sizes) can undershoot, so a counter
//! past its estimate stretches the estimate instead of pinning the percent.

use std::sync::atomic::{AtomicI32, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::{JobError, Runner};

/// How often a running job refreshes its heartbeat and progress in the catalog.
pub(crate) const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);

/// A job's phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[repr(u8)]
pub enum Phase {
    /// Connecting, listing and planning.
    Preparing = 0,
    /// Reading collections into the archive (logical backups).
    Dumping = 1,
    /// Copying the oplog entries written during the dump (logical backups of replica sets).
    CapturingOplog = 2,
    /// Taking and storing consistent images of the data files (Physical and Snapshot backups).
    Imaging = 3,
    /// Completing the upload and publishing the backup.
    Uploading = 4,
    /// Checking what was read or written (archives, manifests, captured oplog).
    Verifying = 5,
    /// Writing documents or files into the target (restores).
    Restoring = 6,
    /// Replaying the backup's oplog entries on the target (restores).
    ReplayingOplog = 7,
}

impl Phase {
    const ALL: [Phase; 8] = [
        Phase::Preparing,
        Phase::Dumping,
        Phase::CapturingOplog,
        Phase::Imaging,
        Phase::Uploading,
        Phase::Verifying,
        Phase::Restoring,
        Phase::ReplayingOplog,
    ];

    fn from_u8(v: u8) -> Phase {
        Phase::ALL
            .get(usize::from(v))
            .copied()
            .unwrap_or(Phase::Preparing)
    }
}

/// Shared progress of one job: written by its work, read by its heartbeat.
#[derive(Debug)]
pub struct Progress {
    job_id: i64,
    phase: AtomicU8,
    percent: AtomicI32,
    docs_done: AtomicU64,
    docs_total: AtomicU64,
    bytes_done: AtomicU64,
    bytes_total: AtomicU64,
    oplog_entries: AtomicU64,
    /// Wakes the heartbeat at a phase change, so that every phase reaches the catalog (and the task APIs), even
    /// one shorter than the heartbeat interval.
    phase_changed: tokio::sync::Notify,
}

/// The progress detail stored with the job and answered by the task APIs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProgressDetail {
    /// The job's current phase.
    pub phase: Phase,
    /// Documents done in the current phase.
    pub docs_done: u64,
    /// Estimate; 0 when unknown.
    pub docs_total: u64,
    /// Bytes done in the current phase.
    pub bytes_done: u64,
    /// Estimate; 0 when unknown.
    pub bytes_total: u64,
    /// Oplog entries captured or replayed so far.
    pub oplog_entries: u64,
}

impl Progress {
    /// A job starting in `Preparing`.
    pub fn new(job_id: i64) -> Self {
        Self {
            job_id,
            phase: AtomicU8::new(Phase::Preparing as u8),
            percent: AtomicI32::new(0),
            docs_done: AtomicU64::new(0),
            docs_total: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            bytes_total: AtomicU64::new(0),
            oplog_entries: AtomicU64::new(0),
            phase_changed: tokio::sync::Notify::new(),
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    /// Enters `phase` (a log line at every change). Phases only move forward, in the order of [`Phase`]: a
    /// late report of an earlier stage (the dump's closing summary after the oplog capture, the restore's after
    /// the replay) updates the counters without showing the job going back.
    pub fn set_phase(&self, phase: Phase) {
        let before = self.phase.fetch_max(phase as u8, Ordering::Relaxed);
        if before < phase as u8 {
            tracing::info!(job_id = self.job_id, phase = ?phase, percent = self.percent(), "job phase");
            self.phase_changed.notify_one();
        }
    }

    /// The current percent, 0–99.
    pub fn percent(&self) -> i32 {
        self.percent.load(Ordering::Relaxed)
    }

    /// Sets the percent (clamped to 0..=99: 100 is the catalog's when the job succeeds); never moves it back.
    pub fn set_percent(&self, percent: i32) {
        self.percent
            .fetch_max(percent.clamp(0, 99), Ordering::Relaxed);
    }

    /// Documents done and estimated in the current phase.
    pub fn docs(&self, done: u64, total: u64) {
        self.docs_done.store(done, Ordering::Relaxed);
        self.docs_total.store(total, Ordering::Relaxed);
    }

    /// Bytes done and estimated in the current phase.
    pub fn bytes(&self, done: u64, total: u64) {
        self.bytes_done.store(done, Ordering::Relaxed);
        self.bytes_total.store(total, Ordering::Relaxed);
    }

    /// Oplog entries captured or replayed so far.
    pub fn oplog_entries(&self, n: u64) {
        self.oplog_entries.store(n, Ordering::Relaxed);
    }

    /// A snapshot of the phase and counters, as stored with the job.
    pub fn detail(&self) -> ProgressDetail {
        ProgressDetail {
            phase: self.phase(),
            docs_done: self.docs_done.load(Ordering::Relaxed),
            docs_total: self.docs_total.load(Ordering::Relaxed),
            bytes_done: self.bytes_done.load(Ordering::Relaxed),
            bytes_total: self.bytes_total.load(Ordering::Relaxed),
            oplog_entries: self.oplog_entries.load(Ordering::Relaxed),
        }
    }
}

/// Percent of `done` out of `total` mapped into `range` (e.g. a phase's share of the whole job). A `done` past
/// the estimate stretches it (the estimate was low), so the figure keeps moving and stays below the range's end.
pub fn percent_in(range: std::ops::Range<i32>, done: u64, total: u64) -> i32 {
    let span = i64::from(range.end - range.start);
    if span <= 0 {
        return range.start;
    }
    // Past the estimate: treat the total as 10% above what is done so far.
    let total = total.max(done.saturating_add(done / 10)).max(1);
    let share = i64::try_from(done.saturating_mul(1000) / total).unwrap_or(1000);
    let within = (span * share / 1000).min(span - 1).max(0);
    range.start + i32::try_from(within).unwrap_or(0)
}

/// Runs `work` while refreshing the job's heartbeat with `progress`. If the catalog says the job is no longer
/// ours, or nothing of `progress` changed for the runner's stall timeout (a server that stopped answering, a
/// disk that hangs), `cancel` stops the work and the job ends with that error.
pub(crate) async fn with_heartbeat<T>(
    runner: &Runner,
    job: &ddsvault_catalog::Job,
    progress: &Progress,
    cancel: &CancellationToken,
    work: impl std::future::Future<Output = T>,
) -> Result<T, JobError> {
    tokio::select! {
        r = work => Ok(r),
        lost = heartbeat_loop(runner, job, progress, cancel) => {
            cancel.cancel();
            Err(lost)
        }
    }
}

/// Refreshes the heartbeat until cancelled; returns only if the job must stop: the catalog says it is no longer
/// ours, the catalog keeps failing, or its progress stalled.
async fn heartbeat_loop(
    runner: &Runner,
    job: &ddsvault_catalog::Job,
    progress: &Progress,
    cancel: &CancellationToken,
) -> JobError {
    let mut failures = 0u32;
    let stall_after = runner.settings.stall_timeout;
    let mut last = (progress.detail(), progress.percent());
    let mut last_change = Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                // Never resolve on cancellation: the work observes the same token and ends the select.
                std::future::pending::<()>().await;
            }
            _ = tokio::time::sleep(HEARTBEAT_INTERVAL.min(stall_after)) => {}
            _ = progress.phase_changed.notified() => {}
        }
        let now = (progress.detail(), progress.percent());
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() >= stall_after {
            return JobError::Stalled(format!(
                "no progress for {}s in phase {:?} (at {}%); the watchdog limit is [backup] stall_timeout_secs",
                last_change.elapsed().as_secs(),
                last.0.phase,
                last.1
            ));
        }
        let detail = serde_json::to_value(&last.0).unwrap_or(serde_json::Value::Null);
        match runner
            .catalog
            .heartbeat_with_detail(
                job.id,
                &runner.node_id,
                job.lease_token,
                last.1,
                &detail,
                Utc::now(),
            )
            .await
        {
            Ok(()) => failures = 0,
            // Taken over by another process (this one's lease expired): stop, and write nothing more.
            Err(e @ ddsvault_catalog::CatalogError::LeaseLost(_)) => return JobError::Catalog(e),
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "heartbeat failed");
                if failures >= 10 {
                    return JobError::Catalog(e);
                }
            }
        }
    }
}

/// Default `[backup] stall_timeout_secs`.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_moves_inside_its_range_and_never_reaches_its_end() {
        assert_eq!(percent_in(5..95, 0, 100), 5);
        assert_eq!(percent_in(5..95, 50, 100), 50);
        assert!(percent_in(5..95, 100, 100) < 95);
        // An estimate that undershoots: the figure keeps moving, below the end.
        let a = percent_in(5..95, 200, 100);
        let b = percent_in(5..95, 400, 100);
        assert!((5..95).contains(&a) && (5..95).contains(&b), "{a} {b}");
        // Unknown total.
        assert!(percent_in(5..95, 10, 0) < 95);
        assert_eq!(percent_in(5..5, 10, 100), 5);
    }

    #[test]
    fn percent_never_goes_back_and_stays_below_100() {
        let p = Progress::new(1);
        p.set_percent(40);
        p.set_percent(30);
        assert_eq!(p.percent(), 40);
        p.set_percent(250);
        assert_eq!(p.percent(), 99);
        p.set_phase(Phase::CapturingOplog);
        p.set_phase(Phase::Dumping);
        assert_eq!(p.phase(), Phase::CapturingOplog, "a phase never goes back");
        p.oplog_entries(7);
        let d = serde_json::to_value(p.detail()).expect("json");
        assert_eq!(d["phase"], "CapturingOplog");
        assert_eq!(d["oplog_entries"], 7);
    }
}
