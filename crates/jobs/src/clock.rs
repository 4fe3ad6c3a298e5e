//! Where "now" comes from for the scheduler and the collector: the system clock in production, one moved by hand in
//! tests.

use chrono::{DateTime, Utc};

/// Where "now" comes from: the system clock in production, a controlled one in tests.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current instant.
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
