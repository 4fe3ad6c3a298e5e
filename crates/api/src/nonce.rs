//! Replay protection: remembering which (AccessKeyId, nonce) pairs were already used.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

/// Records nonces of verified requests.
pub trait NonceStore: Send + Sync {
    /// Returns true if (`access_key_id`, `nonce`) was newly recorded, false if it was
    /// already seen and has not yet reached its `expires_at`.
    fn check_and_record(&self, access_key_id: &str, nonce: &str, expires_at: DateTime<Utc>)
        -> bool;
}

/// Default bound on remembered nonces. Entries live 2 × skew (30 min by default), so this
/// sustains about 580 signed requests per second, at roughly 110 MB in the worst case.
pub const DEFAULT_NONCE_CAPACITY: usize = 1 << 20;

type Clock = Box<dyn Fn() -> DateTime<Utc> + Send + Sync>;
/// A fixed-size digest of (key, nonce), so memory per entry does not depend on how long a
/// nonce a client chooses to send (the docs put no limit on its length).
type EntryKey = [u8; 32];

/// In-process [`NonceStore`]: a hash map plus an expiry queue, behind a mutex.
///
/// Pruning pops expired entries from the front of the queue on each call, so it costs
/// O(1) amortised and never scans the map. When the store holds `capacity` live entries
/// it refuses new nonces (the caller answers `SignatureNonceUsed`) instead of evicting,
/// because forgetting a live nonce would reopen a replay window.
pub struct MemoryNonceStore {
    inner: Mutex<Inner>,
    clock: Clock,
    capacity: usize,
}

#[derive(Default)]
struct Inner {
    live: HashMap<EntryKey, DateTime<Utc>>,
    // Insertion order. Expiries are almost monotonic (now + a fixed window), so popping
    // the front while it is expired removes nearly everything that has expired.
    queue: VecDeque<(DateTime<Utc>, EntryKey)>,
}

impl MemoryNonceStore {
    /// A store with the wall clock and [`DEFAULT_NONCE_CAPACITY`].
    pub fn new() -> Self {
        Self::with_clock(DEFAULT_NONCE_CAPACITY, Utc::now)
    }

    /// A store with the wall clock and the given bound.
    pub fn with_capacity(capacity: usize) -> Self {
        Self::with_clock(capacity, Utc::now)
    }

    /// A store whose notion of "now" comes from `clock`. Tests that verify requests at a
    /// fixed `VerifyOptions::now` pass the same time here, or expiry would follow the
    /// wall clock and old test vectors would look expired at once.
    pub fn with_clock(
        capacity: usize,
        clock: impl Fn() -> DateTime<Utc> + Send + Sync + 'static,
    ) -> Self {
        MemoryNonceStore {
            inner: Mutex::new(Inner::default()),
            clock: Box::new(clock),
            capacity,
        }
    }

    /// Number of remembered (possibly expired but not yet pruned) entries.
    pub fn len(&self) -> usize {
        self.lock().live.len()
    }

    /// True if nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The critical sections cannot panic halfway through an update, so a poisoned
        // lock still guards consistent data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for MemoryNonceStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryNonceStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryNonceStore")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

fn entry_key(access_key_id: &str, nonce: &str) -> EntryKey {
    let mut h = Sha256::new();
    // Length prefix so ("ab", "c") and ("a", "bc") cannot collide.
    h.update((access_key_id.len() as u64).to_be_bytes());
    h.update(access_key_id.as_bytes());
    h.update(nonce.as_bytes());
    h.finalize().into()
}

impl Inner {
    fn prune(&mut self, now: DateTime<Utc>) {
        while let Some(&(expires, key)) = self.queue.front() {
            if expires > now {
                break;
            }
            self.queue.pop_front();
            // The key may have been re-recorded with a later expiry; only drop the
            // entry this queue slot describes.
            if self.live.get(&key) == Some(&expires) {
                self.live.remove(&key);
            }
        }
    }
}

impl NonceStore for MemoryNonceStore {
    fn check_and_record(
        &self,
        access_key_id: &str,
        nonce: &str,
        expires_at: DateTime<Utc>,
    ) -> bool {
        let now = (self.clock)();
        let key = entry_key(access_key_id, nonce);
        let mut inner = self.lock();
        inner.prune(now);
        match inner.live.get(&key) {
            Some(&seen_until) if seen_until > now => return false,
            Some(_) => {}
            None if inner.live.len() >= self.capacity => return false,
            None => {}
        }
        inner.live.insert(key, expires_at);
        inner.queue.push_back((expires_at, key));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};
    use std::sync::Arc;

    fn clocked(capacity: usize) -> (MemoryNonceStore, Arc<Mutex<DateTime<Utc>>>) {
        let t0 = Utc
            .with_ymd_and_hms(2024, 1, 1, 0, 0, 0)
            .single()
            .expect("valid");
        let now = Arc::new(Mutex::new(t0));
        let c = Arc::clone(&now);
        let store = MemoryNonceStore::with_clock(capacity, move || {
            *c.lock().unwrap_or_else(|p| p.into_inner())
        });
        (store, now)
    }

    fn advance(now: &Mutex<DateTime<Utc>>, d: Duration) {
        let mut g = now.lock().unwrap_or_else(|p| p.into_inner());
        *g += d;
    }

    fn at(now: &Mutex<DateTime<Utc>>) -> DateTime<Utc> {
        *now.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[test]
    fn second_use_is_rejected_until_expiry() {
        let (s, now) = clocked(10);
        let exp = at(&now) + Duration::minutes(30);
        assert!(s.check_and_record("ak", "n1", exp));
        assert!(!s.check_and_record("ak", "n1", exp));
        // Same nonce under another key is a different pair.
        assert!(s.check_and_record("ak2", "n1", exp));
        // Length-prefixing keeps these apart.
        assert!(s.check_and_record("a", "kn1", exp));
        advance(&now, Duration::minutes(31));
        assert!(s.check_and_record("ak", "n1", at(&now) + Duration::minutes(30)));
    }

    #[test]
    fn prunes_expired_entries() {
        let (s, now) = clocked(1000);
        for i in 0..100 {
            assert!(s.check_and_record("ak", &i.to_string(), at(&now) + Duration::minutes(1)));
        }
        assert_eq!(s.len(), 100);
        advance(&now, Duration::minutes(2));
        assert!(s.check_and_record("ak", "fresh", at(&now) + Duration::minutes(1)));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn full_store_fails_closed_then_recovers() {
        let (s, now) = clocked(2);
        let exp = at(&now) + Duration::minutes(1);
        assert!(s.check_and_record("ak", "a", exp));
        assert!(s.check_and_record("ak", "b", exp));
        assert!(!s.check_and_record("ak", "c", exp));
        advance(&now, Duration::minutes(2));
        assert!(s.check_and_record("ak", "c", at(&now) + Duration::minutes(1)));
    }

    #[test]
    fn rerecorded_key_survives_stale_queue_slot() {
        let (s, now) = clocked(10);
        assert!(s.check_and_record("ak", "n", at(&now) + Duration::minutes(1)));
        advance(&now, Duration::seconds(30));
        // A store shared by callers with different windows: a later, longer entry.
        assert!(s.check_and_record("ak", "m", at(&now) + Duration::minutes(10)));
        advance(&now, Duration::minutes(1));
        assert!(s.check_and_record("ak", "n", at(&now) + Duration::minutes(1)));
        advance(&now, Duration::seconds(30));
        assert!(!s.check_and_record("ak", "n", at(&now) + Duration::minutes(1)));
        assert!(!s.check_and_record("ak", "m", at(&now) + Duration::minutes(1)));
    }

    #[test]
    fn debug_does_not_dump_entries() {
        let s = MemoryNonceStore::with_capacity(5);
        assert!(format!("{s:?}").contains("capacity: 5"));
        assert!(s.is_empty());
    }
}
