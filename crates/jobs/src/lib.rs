//! Background work: the named-task helper every background task goes through, and the job runner that claims
//! jobs from the catalog and executes them.
//!
//! Jobs live in the catalog, never only in memory: any ddsvault process sharing the catalog can claim a pending
//! job, and a job whose process died (its lease expired) is taken over and failed by any other process.
#![forbid(unsafe_code)]

mod backup;
pub mod copies;
pub mod drill;
mod error;
pub mod events;
pub mod file_restore;
pub mod gc;
pub mod import;
pub mod instances;
pub mod integrity;
pub mod object_lock;
pub mod physical;
pub mod pitr;
pub mod progress;
pub mod provision;
mod restore;
pub mod retention;
mod runner;
pub mod scheduler;
pub mod scrub;
pub mod storage;
mod tasks;

pub use error::JobError;
pub use events::{DrillOutcome, Event, EventSink, JobOutcome};
pub use gc::{Clock, Gc, ManualClock, SystemClock};
pub use instances::InstanceIds;
pub use restore::{archive_opener, compression_of};
pub use runner::{BackupSettings, InstanceSpec, Runner, DEFAULT_LEASE, MIN_LEASE};
pub use scheduler::Scheduler;
pub use tasks::Tasks;
