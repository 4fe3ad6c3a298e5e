//! Shares one look at an instance between concurrent calls.
//!
//! A burst of CreateBackup calls on one instance (a retrying client, a fleet of cron jobs) would otherwise send one
//! `hello` + `listDatabases` each; FerretDB computes `listDatabases` from its files, so two hundred of them queue
//! up behind the connection pool and the later ones time out although the server is healthy. The first caller
//! looks, the others wait for that answer, and an answer younger than `fresh` serves later callers too.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

type Slot<T> = Arc<tokio::sync::Mutex<Option<(Instant, Result<T, String>)>>>;

pub struct Coalesce<T> {
    fresh: Duration,
    slots: std::sync::Mutex<HashMap<String, Slot<T>>>,
}

impl<T: Clone> Coalesce<T> {
    pub fn new(fresh: Duration) -> Self {
        Self {
            fresh,
            slots: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The answer for `key`: a fresh shared one, or `look()`'s (shared with the callers waiting meanwhile).
    /// Failures are shared as their message, so an unreachable instance costs one timeout per burst, not one each.
    pub async fn get<F, Fut>(&self, key: &str, look: F) -> Result<T, String>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let slot = {
            // A poisoned map only means another caller panicked while inserting; the map itself is intact.
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(slots.entry(key.to_string()).or_default())
        };
        let mut answer = slot.lock().await;
        if let Some((at, result)) = answer.as_ref() {
            if at.elapsed() < self.fresh {
                return result.clone();
            }
        }
        let result = look().await;
        *answer = Some((Instant::now(), result.clone()));
        result
    }
}

#[cfg(test)]
mod tests {
    use super::Coalesce;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_look_and_stale_answers_are_refreshed() {
        let c = Arc::new(Coalesce::<u32>::new(Duration::from_millis(200)));
        let looks = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (c, looks) = (Arc::clone(&c), Arc::clone(&looks));
            tasks.push(tokio::spawn(async move {
                c.get("dds-a", || async {
                    looks.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(7)
                })
                .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.expect("task"), Ok(7));
        }
        assert_eq!(looks.load(Ordering::SeqCst), 1, "one look for the burst");
        // Another key looks on its own; errors are shared like answers.
        let err = c
            .get("dds-b", || async { Err::<u32, _>("down".to_string()) })
            .await;
        assert_eq!(err, Err("down".to_string()));
        assert_eq!(
            c.get("dds-b", || async { Ok(1) }).await,
            Err("down".to_string())
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(c.get("dds-b", || async { Ok(1) }).await, Ok(1));
    }
}
