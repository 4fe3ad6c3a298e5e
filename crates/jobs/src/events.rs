//! What background work reports as it happens, for whoever watches: the server's metrics and its alert webhooks.
//!
//! The jobs layer knows nothing of Prometheus or HTTP: it hands each event to an [`EventSink`], which must not
//! block (a sink queues or counts and returns), so a slow watcher can never hold up a job.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// How one job ended (as recorded in the catalog).
#[derive(Clone, Debug, PartialEq)]
pub struct JobOutcome {
    /// The job's id.
    pub job_id: i64,
    /// The instance the job worked on.
    pub instance_id: String,
    /// What the job did.
    pub kind: ddsvault_catalog::JobKind,
    /// The job's method; `None` when the job names none.
    pub method: Option<ddsvault_catalog::BackupMethod>,
    /// `Manual` | `Automated`.
    pub mode: String,
    /// `None` on success; the failure's code (e.g. `Repository.NoSpace`) otherwise.
    pub error_code: Option<String>,
    /// The failure as recorded for the task APIs (already free of secrets and URIs).
    pub error: Option<String>,
    /// From the job's start to its end.
    pub duration: Duration,
    /// What a successful backup stored (its recorded size); `None` for other jobs.
    pub bytes: Option<u64>,
}

impl JobOutcome {
    /// Whether the job reached Success.
    pub fn succeeded(&self) -> bool {
        self.error_code.is_none()
    }
}

/// How one restore drill ended (docs/drills.md).
#[derive(Clone, Debug, PartialEq)]
pub struct DrillOutcome {
    /// The id of the recorded drill.
    pub drill_id: i64,
    /// The instance the backup is of.
    pub instance_id: String,
    /// The backup set drilled.
    pub backup_id: i64,
    /// The scratch instance it was restored into.
    pub target: String,
    /// The drill job.
    pub job_id: i64,
    /// Whether the drill passed.
    pub passed: bool,
    /// How long the drill took.
    pub duration: Duration,
    /// What failed (the first mismatches, or why the restore failed); `None` when it passed.
    pub message: Option<String>,
}

/// Something a watcher may want to count or be told about.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A job reached Success or Failed.
    JobFinished(JobOutcome),
    /// A scheduled slot did not get its backup: the instance had an active job when the slot opened.
    SlotMissed {
        /// The instance whose slot was missed.
        instance_id: String,
        /// `standard` | `high_frequency`.
        schedule: String,
        /// When the slot's window starts.
        slot: DateTime<Utc>,
        /// Why: `active_job`.
        reason: &'static str,
        /// The job that held the instance.
        blocking_job_id: i64,
    },
    /// A restore drill was recorded (Passed or Failed).
    DrillFinished(DrillOutcome),
}

/// Receives events; must return quickly and never block.
pub trait EventSink: Send + Sync + std::fmt::Debug {
    /// Handles one event; must not block.
    fn emit(&self, event: &Event);
}

/// The sink a component reports to, set once after start-up wiring (none: events are dropped).
#[derive(Debug, Default)]
pub(crate) struct Events(std::sync::OnceLock<std::sync::Arc<dyn EventSink>>);

impl Events {
    pub(crate) fn set(&self, sink: std::sync::Arc<dyn EventSink>) {
        let _ = self.0.set(sink);
    }

    pub(crate) fn emit(&self, event: &Event) {
        if let Some(sink) = self.0.get() {
            sink.emit(event);
        }
    }
}
