//! Replay protection: remembering which (AccessKeyId, nonce) pairs were already used.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

/// What [`NonceStore::check_and_record`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NonceCheck {
    /// The pair is new and is now remembered.
    Recorded,
    /// The pair was already used and has not expired (`SignatureNonceUsed`).
    Replayed,
    /// The key already holds as many live nonces as it may (its own quota, or its fair share of a full store).
    /// Nothing was recorded; `retry_after` is when the key's oldest entry expires.
    OverQuota {
        /// Time until a slot of this key frees up.
        retry_after: std::time::Duration,
    },
}

/// Records nonces of verified requests.
pub trait NonceStore: Send + Sync {
    /// Records (`access_key_id`, `nonce`) until `expires_at` unless it was already seen and has not expired yet,
    /// or the key has no room left.
    fn check_and_record(
        &self,
        access_key_id: &str,
        nonce: &str,
        expires_at: DateTime<Utc>,
    ) -> NonceCheck;
}

/// Default bound on remembered nonces over all keys. Entries live 2 × skew (30 min by default); at about 130 bytes
/// an entry this is ~135 MB when full.
pub const DEFAULT_NONCE_CAPACITY: usize = 1 << 20;
/// Default bound per AccessKey: 200,000 entries in 30 minutes is 111 signed requests per second sustained, above
/// the default per-key throttling rate (100/s), so the quota never bites before the throttle would for a client
/// that keeps to it.
pub const DEFAULT_NONCES_PER_KEY: usize = 200_000;

type Clock = Box<dyn Fn() -> DateTime<Utc> + Send + Sync>;
/// A fixed-size digest of (key, nonce), so memory per entry does not depend on how long a
/// nonce a client chooses to send (the docs put no limit on its length).
type EntryKey = [u8; 32];

/// In-process [`NonceStore`]: a hash map plus an expiry queue, behind a mutex.
///
/// Pruning pops expired entries from the front of the queue on each call, so it costs
/// O(1) amortised and never scans the map. Two bounds keep one client from locking out the others:
///
/// - each AccessKey holds at most `per_key` live entries; past that its requests are refused
///   ([`NonceCheck::OverQuota`]) until its oldest entry expires, while every other key goes on;
/// - the store as a whole holds `capacity` entries; once full, only keys below their fair share
///   (`capacity / keys holding entries`) may add, so a few flooding keys cannot take the room of the rest.
///   Entries added that way are bounded too: the store never holds more than `2 × capacity`.
///
/// A full store refuses instead of evicting, because forgetting a live nonce would reopen a replay window.
/// Only authenticated requests reach the store (the caller checks the signature first), so the keys it
/// counts are real AccessKeys.
pub struct MemoryNonceStore {
    inner: Mutex<Inner>,
    clock: Clock,
    capacity: usize,
    per_key: usize,
}

#[derive(Default)]
struct Inner {
    live: HashMap<EntryKey, DateTime<Utc>>,
    // Insertion order. Expiries are almost monotonic (now + a fixed window), so popping
    // the front while it is expired removes nearly everything that has expired.
    queue: VecDeque<(DateTime<Utc>, EntryKey, Arc<str>)>,
    // Each key's queue slots, in the same order as `queue` (a slot is pushed to both at once and popped from
    // both at once), so the front is the key's oldest slot.
    keys: HashMap<Arc<str>, VecDeque<DateTime<Utc>>>,
}

impl MemoryNonceStore {
    /// A store with the wall clock, [`DEFAULT_NONCE_CAPACITY`] and [`DEFAULT_NONCES_PER_KEY`].
    pub fn new() -> Self {
        Self::with_limits(DEFAULT_NONCE_CAPACITY, DEFAULT_NONCES_PER_KEY)
    }

    /// A store with the wall clock and the given overall bound (also the per-key bound).
    pub fn with_capacity(capacity: usize) -> Self {
        Self::with_clock(capacity, Utc::now)
    }

    /// A store with the wall clock, an overall bound and a per-key bound.
    pub fn with_limits(capacity: usize, per_key: usize) -> Self {
        Self::with_clock(capacity, Utc::now).per_key(per_key)
    }

    /// A store whose notion of "now" comes from `clock`, with `capacity` as both bounds. Tests that verify
    /// requests at a fixed `VerifyOptions::now` pass the same time here, or expiry would follow the
    /// wall clock and old test vectors would look expired at once.
    pub fn with_clock(
        capacity: usize,
        clock: impl Fn() -> DateTime<Utc> + Send + Sync + 'static,
    ) -> Self {
        MemoryNonceStore {
            inner: Mutex::new(Inner::default()),
            clock: Box::new(clock),
            capacity,
            per_key: capacity,
        }
    }

    /// Sets the per-AccessKey bound.
    #[must_use]
    pub fn per_key(mut self, per_key: usize) -> Self {
        self.per_key = per_key;
        self
    }

    /// Number of remembered (possibly expired but not yet pruned) entries.
    pub fn len(&self) -> usize {
        self.lock().live.len()
    }

    /// True if nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries (slots) currently held for one AccessKey.
    pub fn len_for(&self, access_key_id: &str) -> usize {
        self.lock().keys.get(access_key_id).map_or(0, VecDeque::len)
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
            .field("per_key", &self.per_key)
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

/// The (key, nonce) pair as 64 hex digits: what the shared store in the catalog records, so a row's size does not
/// depend on the nonce a client chose.
pub fn nonce_digest(access_key_id: &str, nonce: &str) -> String {
    hex::encode(entry_key(access_key_id, nonce))
}

fn until(at: DateTime<Utc>, now: DateTime<Utc>) -> std::time::Duration {
    at.signed_duration_since(now)
        .to_std()
        .unwrap_or(std::time::Duration::ZERO)
}

impl Inner {
    fn prune(&mut self, now: DateTime<Utc>) {
        while let Some((expires, _, _)) = self.queue.front() {
            if *expires > now {
                break;
            }
            let Some((expires, key, owner)) = self.queue.pop_front() else {
                break;
            };
            // The key may have been re-recorded with a later expiry; only drop the
            // entry this queue slot describes.
            if self.live.get(&key) == Some(&expires) {
                self.live.remove(&key);
            }
            if let Some(slots) = self.keys.get_mut(&owner) {
                slots.pop_front();
                if slots.is_empty() {
                    self.keys.remove(&owner);
                }
            }
        }
    }

    /// Why `access_key_id` may not add an entry now, if it may not.
    fn refusal(
        &self,
        access_key_id: &str,
        capacity: usize,
        per_key: usize,
        now: DateTime<Utc>,
    ) -> Option<NonceCheck> {
        let slots = self.keys.get(access_key_id);
        let used = slots.map_or(0, VecDeque::len);
        let total = self.queue.len();
        let holders = self.keys.len() + usize::from(slots.is_none());
        let fair_share = capacity / holders.max(1);
        let refused = used >= per_key
            || (total >= capacity && used >= fair_share)
            || total >= capacity.saturating_mul(2);
        if !refused {
            return None;
        }
        // The key's oldest entry, else (a key with nothing stored, refused by the hard bound) the store's.
        let oldest = slots
            .and_then(VecDeque::front)
            .or_else(|| self.queue.front().map(|(at, _, _)| at))
            .copied()
            .unwrap_or(now);
        Some(NonceCheck::OverQuota {
            retry_after: until(oldest, now),
        })
    }
}

impl NonceStore for MemoryNonceStore {
    fn check_and_record(
        &self,
        access_key_id: &str,
        nonce: &str,
        expires_at: DateTime<Utc>,
    ) -> NonceCheck {
        let now = (self.clock)();
        let key = entry_key(access_key_id, nonce);
        let mut inner = self.lock();
        inner.prune(now);
        if inner.live.get(&key).is_some_and(|&until| until > now) {
            return NonceCheck::Replayed;
        }
        if let Some(refusal) = inner.refusal(access_key_id, self.capacity, self.per_key, now) {
            return refusal;
        }
        let owner: Arc<str> = match inner.keys.get_key_value(access_key_id) {
            Some((k, _)) => Arc::clone(k),
            None => Arc::from(access_key_id),
        };
        inner.live.insert(key, expires_at);
        inner.queue.push_back((expires_at, key, Arc::clone(&owner)));
        inner.keys.entry(owner).or_default().push_back(expires_at);
        NonceCheck::Recorded
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

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

    fn ok(s: &MemoryNonceStore, key: &str, nonce: &str, exp: DateTime<Utc>) -> bool {
        s.check_and_record(key, nonce, exp) == NonceCheck::Recorded
    }

    fn over_quota(s: &MemoryNonceStore, key: &str, nonce: &str, exp: DateTime<Utc>) -> u64 {
        match s.check_and_record(key, nonce, exp) {
            NonceCheck::OverQuota { retry_after } => retry_after.as_secs(),
            other => panic!("expected OverQuota, got {other:?}"),
        }
    }

    #[test]
    fn second_use_is_rejected_until_expiry() {
        let (s, now) = clocked(10);
        let exp = at(&now) + Duration::minutes(30);
        assert!(ok(&s, "ak", "n1", exp));
        assert_eq!(s.check_and_record("ak", "n1", exp), NonceCheck::Replayed);
        // Same nonce under another key is a different pair.
        assert!(ok(&s, "ak2", "n1", exp));
        // Length-prefixing keeps these apart.
        assert!(ok(&s, "a", "kn1", exp));
        advance(&now, Duration::minutes(31));
        assert!(ok(&s, "ak", "n1", at(&now) + Duration::minutes(30)));
    }

    #[test]
    fn prunes_expired_entries() {
        let (s, now) = clocked(1000);
        for i in 0..100 {
            assert!(ok(
                &s,
                "ak",
                &i.to_string(),
                at(&now) + Duration::minutes(1)
            ));
        }
        assert_eq!((s.len(), s.len_for("ak")), (100, 100));
        advance(&now, Duration::minutes(2));
        assert!(ok(&s, "ak", "fresh", at(&now) + Duration::minutes(1)));
        assert_eq!((s.len(), s.len_for("ak")), (1, 1));
    }

    #[test]
    fn full_store_fails_closed_then_recovers() {
        let (s, now) = clocked(2);
        let exp = at(&now) + Duration::minutes(1);
        assert!(ok(&s, "ak", "a", exp));
        assert!(ok(&s, "ak", "b", exp));
        assert_eq!(over_quota(&s, "ak", "c", exp), 60);
        advance(&now, Duration::minutes(2));
        assert!(ok(&s, "ak", "c", at(&now) + Duration::minutes(1)));
    }

    /// The lock-out of issue 17: one key (even one without permissions) floods; it alone is refused, with the
    /// time its oldest entry expires, and every other key goes on.
    #[test]
    fn one_keys_flood_refuses_only_that_key() {
        let (s, now) = clocked(1000);
        let s = s.per_key(50);
        for i in 0..50 {
            assert!(ok(
                &s,
                "flood",
                &format!("n{i}"),
                at(&now) + Duration::minutes(30)
            ));
            advance(&now, Duration::seconds(1));
        }
        // The oldest entry was recorded 50 s ago with a 30 min life.
        assert_eq!(
            over_quota(&s, "flood", "more", at(&now) + Duration::minutes(30)),
            30 * 60 - 50
        );
        for i in 0..50 {
            assert!(ok(
                &s,
                "other",
                &format!("n{i}"),
                at(&now) + Duration::minutes(30)
            ));
        }
        // Refusals record nothing, so the flooding key cannot grow.
        assert_eq!(s.len_for("flood"), 50);
        advance(&now, Duration::minutes(30));
        assert!(ok(&s, "flood", "more", at(&now) + Duration::minutes(30)));
    }

    /// Several keys together fill the whole store: a key below its fair share still gets in, the hogs do not,
    /// and the store stays within twice its capacity.
    #[test]
    fn full_store_keeps_room_for_keys_below_their_share() {
        let (s, now) = clocked(100);
        let exp = at(&now) + Duration::minutes(30);
        for key in ["a", "b"] {
            for i in 0..50 {
                assert!(ok(&s, key, &i.to_string(), exp));
            }
        }
        assert_eq!(s.len(), 100);
        // Share with a third key: 100 / 3 = 33. "a" holds 50, so it is refused; "c" holds none.
        over_quota(&s, "a", "x", exp);
        for i in 0..33 {
            assert!(ok(&s, "c", &i.to_string(), exp), "c entry {i}");
        }
        over_quota(&s, "c", "x", exp);
        // Many more keys: each gets its share until the hard bound (2 × capacity) stops everyone.
        let mut added = 0;
        for k in 0..200 {
            if ok(&s, &format!("k{k}"), "n", exp) {
                added += 1;
            }
        }
        assert!(s.len() <= 200, "{}", s.len());
        assert!(added > 0 && added < 200, "{added}");
    }

    #[test]
    fn rerecorded_key_survives_stale_queue_slot() {
        let (s, now) = clocked(10);
        assert!(ok(&s, "ak", "n", at(&now) + Duration::minutes(1)));
        advance(&now, Duration::seconds(30));
        // A store shared by callers with different windows: a later, longer entry.
        assert!(ok(&s, "ak", "m", at(&now) + Duration::minutes(10)));
        advance(&now, Duration::minutes(1));
        assert!(ok(&s, "ak", "n", at(&now) + Duration::minutes(1)));
        advance(&now, Duration::seconds(30));
        assert_eq!(
            s.check_and_record("ak", "n", at(&now) + Duration::minutes(1)),
            NonceCheck::Replayed
        );
        assert_eq!(
            s.check_and_record("ak", "m", at(&now) + Duration::minutes(1)),
            NonceCheck::Replayed
        );
    }

    #[test]
    fn nonce_digest_is_fixed_length_and_keeps_pairs_apart() {
        let d = nonce_digest("ak", "n1");
        assert_eq!(d.len(), 64);
        assert_eq!(d, nonce_digest("ak", "n1"));
        assert_ne!(d, nonce_digest("ak", "n2"));
        assert_ne!(nonce_digest("a", "kn1"), d);
        assert_eq!(nonce_digest("ak", &"x".repeat(100_000)).len(), 64);
    }

    #[test]
    fn debug_does_not_dump_entries() {
        let s = MemoryNonceStore::with_limits(5, 3);
        let d = format!("{s:?}");
        assert!(d.contains("capacity: 5") && d.contains("per_key: 3"), "{d}");
        assert!(s.is_empty());
    }
}
