//! Background work: the named-task helper every background task goes through, and the job runner that claims
//! jobs from the catalog and executes them.
//!
//! Jobs live in the catalog, never only in memory: any ddsvault process sharing the catalog can claim a pending
//! job, and a job whose process died (its lease expired) is taken over and failed by any other process.
//!
//! Layout, top to bottom (no two modules import each other, directly or in a loop; `tests/no_import_cycles.rs`
//! checks it): [`runner`](Runner) claims jobs and dispatches them by kind to [`backup`], [`restore`],
//! [`provision`] and [`drill`]; the kinds work with the handles of `context` (catalog, repository, instances,
//! settings), report through [`progress`] and check backups through [`integrity`]. [`scheduler`], [`gc`],
//! [`retention`], [`copies`], [`pitr`] and the rest run beside the runner.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod archive;
pub mod backup;
pub mod clock;
mod context;
pub mod copies;
pub mod drill;
mod error;
pub mod events;
pub mod gc;
pub mod import;
pub mod instances;
pub mod integrity;
pub mod object_lock;
pub mod pitr;
pub mod progress;
pub mod provision;
pub mod restore;
pub mod retention;
mod runner;
pub mod scheduler;
pub mod scrub;
mod spec;
pub mod storage;
mod tasks;

pub use archive::{archive_opener, compression_of};
pub use clock::{Clock, ManualClock, SystemClock};
pub use context::{BackupSettings, Runner, DEFAULT_LEASE, MIN_LEASE};
pub use error::JobError;
pub use events::{DrillOutcome, Event, EventSink, JobOutcome};
pub use gc::Gc;
pub use instances::InstanceIds;
pub use scheduler::Scheduler;
pub use spec::InstanceSpec;
pub use tasks::Tasks;
