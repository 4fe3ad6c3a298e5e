//! The one way background tasks are started: named, cancellable, tracked, and logged when they end.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Owns the root cancellation token and every task started through it.
#[derive(Clone, Debug, Default)]
pub struct Tasks {
    root: CancellationToken,
    tracker: TaskTracker,
}

impl Tasks {
    /// A fresh root token with no task.
    pub fn new() -> Self {
        Self::default()
    }

    /// The root token: cancelled when shutdown starts.
    pub fn token(&self) -> CancellationToken {
        self.root.clone()
    }

    /// Starts `make(token)` as a task called `name`. The task gets a child of the root token; a panic is caught
    /// and logged instead of vanishing with the task.
    pub fn spawn<F, Fut>(&self, name: impl Into<String>, make: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let name = name.into();
        let fut = make(self.root.child_token());
        self.tracker.spawn(async move {
            tracing::debug!(task = %name, "task started");
            match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(Ok(())) => tracing::debug!(task = %name, "task finished"),
                Ok(Err(e)) => tracing::error!(task = %name, error = %e, "task failed"),
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    tracing::error!(task = %name, panic = %what, "task panicked");
                }
            }
        });
    }

    /// Cancels every task and waits up to `deadline` for them to end. Returns false if some did not.
    pub async fn shutdown(&self, deadline: Duration) -> bool {
        self.root.cancel();
        self.tracker.close();
        let n = self.tracker.len();
        tracing::info!(tasks = n, "waiting for background tasks to stop");
        let done = tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok();
        if done {
            tracing::info!("background tasks stopped");
        } else {
            tracing::warn!(
                remaining = self.tracker.len(),
                "background tasks did not stop in time"
            );
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn shutdown_cancels_and_waits() {
        let tasks = Tasks::new();
        let saw_cancel = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&saw_cancel);
        tasks.spawn("waiter", move |token| async move {
            token.cancelled().await;
            flag.store(true, Ordering::SeqCst);
            Ok(())
        });
        tasks.spawn("panicker", |_| async { panic!("boom") });
        assert!(tasks.shutdown(Duration::from_secs(5)).await);
        assert!(saw_cancel.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_reports_stuck_tasks() {
        let tasks = Tasks::new();
        tasks.spawn("stuck", |_| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        });
        assert!(!tasks.shutdown(Duration::from_secs(1)).await);
    }
}
