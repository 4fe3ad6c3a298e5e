//! Flow control: a token bucket per AccessKey and one per action (all keys together), as Alibaba's gateways do
//! with `Throttling.User` and `Throttling.Api`.
//!
//! Buckets are only created for authenticated AccessKeys and known actions, so their number is bounded by the
//! catalog's keys and the action list; on top of that, once more than [`MAX_BUCKETS`] exist, full buckets (which
//! behave exactly like absent ones) are dropped.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{RateLimit, ThrottlingConfig};

/// Bucket count above which full buckets are forgotten.
pub const MAX_BUCKETS: usize = 10_000;

/// Why a call was refused, and when it would be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The AccessKey's own limit (`Throttling.User`).
    User { retry_after: Duration },
    /// The action's limit (`Throttling.Api`).
    Api { retry_after: Duration },
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(limit: RateLimit, now: Instant) -> Self {
        Self {
            tokens: limit.burst_f64(),
            at: now,
        }
    }

    fn refill(&mut self, limit: RateLimit, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * limit.rate).min(limit.burst_f64());
        self.at = now;
    }

    fn is_full(&self, limit: RateLimit) -> bool {
        self.tokens >= limit.burst_f64()
    }

    /// Time until one token is available (zero if one is).
    fn wait(&self, limit: RateLimit) -> Duration {
        if self.tokens >= 1.0 {
            return Duration::ZERO;
        }
        // `try_`: a tiny configured rate must not overflow `Duration` (which would panic).
        Duration::try_from_secs_f64((1.0 - self.tokens) / limit.rate).unwrap_or(Duration::MAX)
    }
}

#[derive(Debug, Default)]
struct Buckets {
    keys: HashMap<String, Bucket>,
    actions: HashMap<String, Bucket>,
}

/// The limiter shared by every request.
#[derive(Debug)]
pub struct Throttle {
    config: ThrottlingConfig,
    buckets: Mutex<Buckets>,
}

impl Throttle {
    pub fn new(config: ThrottlingConfig) -> Self {
        Self {
            config,
            buckets: Mutex::new(Buckets::default()),
        }
    }

    fn action_limit(&self, action: &str) -> RateLimit {
        self.config
            .actions
            .get(action)
            .copied()
            .unwrap_or(self.config.per_action)
    }

    /// Takes one token from the key's and the action's buckets, or neither if either is empty.
    ///
    /// # Errors
    /// The refusal, with the time after which the same call would pass.
    pub fn check(&self, access_key_id: &str, action: &str, now: Instant) -> Result<(), Refusal> {
        if !self.config.enabled {
            return Ok(());
        }
        let key_limit = self.config.per_access_key;
        let action_limit = self.action_limit(action);
        // A poisoned lock only means another request panicked mid-update; the buckets are still usable numbers.
        let mut b = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if b.keys.len() + b.actions.len() > MAX_BUCKETS {
            b.keys.retain(|_, k| {
                k.refill(key_limit, now);
                !k.is_full(key_limit)
            });
        }
        let mut key = b
            .keys
            .get(access_key_id)
            .copied()
            .unwrap_or_else(|| Bucket::full(key_limit, now));
        key.refill(key_limit, now);
        let mut act = b
            .actions
            .get(action)
            .copied()
            .unwrap_or_else(|| Bucket::full(action_limit, now));
        act.refill(action_limit, now);
        let refusal = if key.tokens < 1.0 {
            Some(Refusal::User {
                retry_after: key.wait(key_limit),
            })
        } else if act.tokens < 1.0 {
            Some(Refusal::Api {
                retry_after: act.wait(action_limit),
            })
        } else {
            key.tokens -= 1.0;
            act.tokens -= 1.0;
            None
        };
        b.keys.insert(access_key_id.to_owned(), key);
        b.actions.insert(action.to_owned(), act);
        refusal.map_or(Ok(()), Err)
    }
}

/// `x-acs-retry-after` is in milliseconds (the tea SDK sleeps `retry_after / 1000` seconds) and must be positive
/// for the SDK to raise `ThrottlingException`.
pub fn retry_after_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(key: (f64, u32), action: (f64, u32)) -> ThrottlingConfig {
        ThrottlingConfig {
            enabled: true,
            per_access_key: RateLimit {
                rate: key.0,
                burst: key.1,
            },
            per_action: RateLimit {
                rate: action.0,
                burst: action.1,
            },
            actions: HashMap::new(),
        }
    }

    #[test]
    fn per_key_burst_then_refill() {
        let t = Throttle::new(config((2.0, 3), (1000.0, 1000)));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(t.check("AK1", "DescribeBackups", t0), Ok(()));
        }
        let Err(Refusal::User { retry_after }) = t.check("AK1", "DescribeBackups", t0) else {
            panic!("fourth call must be throttled per key");
        };
        assert_eq!(retry_after_ms(retry_after), 500);
        // Another key is not affected.
        assert_eq!(t.check("AK2", "DescribeBackups", t0), Ok(()));
        // Half a second later one token (rate 2/s) is back, and only one.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(t.check("AK1", "DescribeBackups", t1), Ok(()));
        assert!(matches!(
            t.check("AK1", "DescribeBackups", t1),
            Err(Refusal::User { .. })
        ));
        // Refill never exceeds the burst.
        let t2 = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(t.check("AK1", "DescribeBackups", t2), Ok(()));
        }
        assert!(t.check("AK1", "DescribeBackups", t2).is_err());
    }

    #[test]
    fn per_action_limit_spans_keys_and_overrides_apply() {
        let mut c = config((1000.0, 1000), (10.0, 2));
        c.actions.insert(
            "CreateBackup".into(),
            RateLimit {
                rate: 0.5,
                burst: 1,
            },
        );
        let t = Throttle::new(c);
        let t0 = Instant::now();
        assert_eq!(t.check("AK1", "DescribeBackups", t0), Ok(()));
        assert_eq!(t.check("AK2", "DescribeBackups", t0), Ok(()));
        let Err(Refusal::Api { retry_after }) = t.check("AK3", "DescribeBackups", t0) else {
            panic!("third call of the action must be throttled per action");
        };
        assert_eq!(retry_after_ms(retry_after), 100);
        assert_eq!(t.check("AK1", "CreateBackup", t0), Ok(()));
        let Err(Refusal::Api { retry_after }) = t.check("AK2", "CreateBackup", t0) else {
            panic!("override applies");
        };
        assert_eq!(retry_after_ms(retry_after), 2000);
    }

    /// A refused call consumes nothing: the key is not charged for an action-level refusal.
    #[test]
    fn refusal_takes_no_token() {
        let t = Throttle::new(config((1.0, 2), (1.0, 1)));
        let t0 = Instant::now();
        assert_eq!(t.check("AK1", "A", t0), Ok(()));
        assert!(matches!(t.check("AK1", "A", t0), Err(Refusal::Api { .. })));
        // The key still has its second token for another action.
        assert_eq!(t.check("AK1", "B", t0), Ok(()));
        assert!(matches!(t.check("AK1", "C", t0), Err(Refusal::User { .. })));
    }

    #[test]
    fn disabled_never_refuses() {
        let mut c = config((0.001, 1), (0.001, 1));
        c.enabled = false;
        let t = Throttle::new(c);
        let t0 = Instant::now();
        for _ in 0..100 {
            assert_eq!(t.check("AK1", "A", t0), Ok(()));
        }
    }

    #[test]
    fn buckets_stay_bounded() {
        let t = Throttle::new(config((1.0, 1), (1e9, 1_000_000_000)));
        let t0 = Instant::now();
        for i in 0..(MAX_BUCKETS + 500) {
            // Every key spends its token, then time passes and it is full (forgettable) again.
            let now = t0 + Duration::from_secs(u64::try_from(i).unwrap_or(0) * 2);
            let _ = t.check(&format!("AK{i}"), "A", now);
        }
        let n = t.buckets.lock().map(|b| b.keys.len()).unwrap_or(0);
        assert!(n <= MAX_BUCKETS + 1, "{n} buckets kept");
    }

    #[test]
    fn tiny_rates_do_not_overflow() {
        let t = Throttle::new(config((1e-300, 1), (1e9, 1_000_000_000)));
        let t0 = Instant::now();
        assert_eq!(t.check("AK1", "A", t0), Ok(()));
        let Err(Refusal::User { retry_after }) = t.check("AK1", "A", t0) else {
            panic!("throttled");
        };
        assert_eq!(retry_after_ms(retry_after), u64::MAX);
    }

    #[test]
    fn retry_after_is_positive_milliseconds() {
        assert_eq!(retry_after_ms(Duration::from_micros(10)), 1);
        assert_eq!(retry_after_ms(Duration::from_millis(1500)), 1500);
    }
}
