//! Continuous log backup and point-in-time recovery (docs/pitr.md).
//!
//! # Slices
//!
//! With `EnableBackupLog=1` a follower ([`Follower::run`], one task per configured instance, started through
//! [`crate::Tasks`]) reads the instance's `local.oplog.rs` and stores it as *slices*: every entry with
//! `start_excl < ts <= end_incl`, sorted by `ts`, concatenated as raw BSON and zstd-compressed, at
//! `oplog/<instance>/<start_excl>-<end_incl>.bson.zst`. The object is written first (atomically) and then
//! indexed in the catalog with its size and SHA-256 (`log_slices`); a crash in between leaves an unindexed
//! object that the next slice of the same interval replaces, never a row without its bytes.
//!
//! The follower only takes whole seconds that have been over on the server's clock (`hello.localTime`) for
//! [`LogSettings::settle`]: FerretDB (v1.24, `internal/backends/decorators/oplog`) performs the data write,
//! then takes `time.Now()` for the entry's `ts`, then inserts the entry, so an entry of second S can become
//! visible after S is over (measured by `bench/oplog_visibility.py`: at most 0.25 s with one writer, 0.47 s
//! with four concurrent ones, on a loaded machine; docs/benchmarks.md). A slice's `end_incl` is therefore
//! always `(second, u32::MAX)`, and a slice proves that the interval held exactly its entries, also when it
//! is empty, provided the settle time exceeds that delay. Between polls the follower wakes when the next
//! second settles, so the settle time, not the poll interval, bounds the lag.
//!
//! Each read also looks again at the last [`RECHECK_SECS`] seconds already taken: an entry there that the
//! follower did not take became visible more than the settle time late, and is logged as an error naming
//! `settle_ms` (the stored slices miss it; they are not rewritten).
//!
//! # Exactly one follower, restarts and gaps
//!
//! Following needs the instance's claim in the catalog (`log_followers`, a lease renewed every poll), and a
//! slice is only indexed while the claim is held and when it continues the last one, checked in the same
//! transaction ([`ddsvault_catalog::CatalogBackend::add_log_slice`]). After a restart the follower resumes at
//! the last indexed `end_incl`. After every read it checks that the oldest entry still in the (capped) oplog is
//! at or before the entry following its position: if not, entries may have been evicted unread; the current
//! slice is closed where the position is, the entries read between the position and the oldest one are
//! discarded and the next slice starts at the oldest entry, marked `gap`: recoverable ranges break there.
//!
//! # Ranges
//!
//! Slices that follow each other form a *chain*. A successful Logical backup with a consistency point `E`
//! (`details.consistent_ts`) inside a chain makes every second from `E`'s second to the chain's end
//! recoverable: the backup's own replay brings the data to `E`, the chain's entries after `E` up to the chosen
//! second follow. [`recover_ranges`] computes them; [`plan_point_in_time`] picks the newest such backup for a
//! time and the slices to replay.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::Timestamp;
use bytes::Bytes;
use chrono::Utc;
use ddsvault_catalog::{
    ts_key, ts_parts, Backup, BackupFilter, BackupStatus, Catalog, CatalogError, LogSlice,
    NewLogSlice, Page,
};
use ddsvault_mongo::oplog;
use ddsvault_repo::{sha256_hex, RepoPath, Repository};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::{InstanceSpec, JobError};

/// Tuning of the log backup (`[log_backup]` in the configuration).
#[derive(Clone, Debug)]
pub struct LogSettings {
    /// A slice is closed after this long, or once it spans this many seconds of oplog (the RPO bound together
    /// with `settle`).
    pub slice_secs: u64,
    /// ... or once it holds this many bytes of entries (uncompressed).
    pub slice_bytes: usize,
    /// The longest pause between two polls (the follower also wakes as soon as the next second has settled).
    pub poll: Duration,
    /// How long a second must have been over on the server's clock before its entries are taken: more than
    /// the longest delay between FerretDB choosing an entry's `ts` and the entry becoming visible.
    pub settle: Duration,
    /// Lease of the follower claim; another process takes over a dead follower's instance after it.
    pub lease: Duration,
    /// At most this many seconds of oplog are read at once while catching up (bounds memory).
    pub catch_up_secs: u32,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            slice_secs: 60,
            slice_bytes: 16 * 1024 * 1024,
            poll: Duration::from_secs(1),
            settle: DEFAULT_SETTLE,
            lease: Duration::from_secs(30),
            catch_up_secs: 60,
        }
    }
}

/// The default [`LogSettings::settle`]: 1.6 times the longest visibility delay measured with four concurrent
/// writers on a loaded machine (0.47 s), 3 times the longest with one writer (0.25 s); docs/benchmarks.md.
pub const DEFAULT_SETTLE: Duration = Duration::from_millis(750);

/// The newest second that has been over for `settle` when the server's clock reads `server_ms`, and how long
/// until the next one has.
fn settled_second(server_ms: i64, settle: Duration) -> (u32, Duration) {
    let settle_ms = i64::try_from(settle.as_millis()).unwrap_or(i64::MAX);
    let ref_ms = server_ms.saturating_sub(settle_ms);
    // Second S is over at (S + 1) * 1000 ms.
    let second = ref_ms.div_euclid(1000) - 1;
    let next_in = 1000 - ref_ms.rem_euclid(1000);
    (
        u32::try_from(second.max(0)).unwrap_or(u32::MAX),
        Duration::from_millis(u64::try_from(next_in).unwrap_or(1000)),
    )
}

fn key(ts: Timestamp) -> i64 {
    ts_key(ts.time, ts.increment)
}

fn ts_of(key: i64) -> Timestamp {
    let (time, increment) = ts_parts(key);
    Timestamp { time, increment }
}

/// The timestamp right after `ts`.
fn succ(ts: Timestamp) -> Timestamp {
    match ts.increment.checked_add(1) {
        Some(i) => Timestamp {
            time: ts.time,
            increment: i,
        },
        None => Timestamp {
            time: ts.time.saturating_add(1),
            increment: 0,
        },
    }
}

/// The timestamp right before `ts` (so that `pred(ts) < x` means `x >= ts`).
fn pred(ts: Timestamp) -> Timestamp {
    match ts.increment.checked_sub(1) {
        Some(i) => Timestamp {
            time: ts.time,
            increment: i,
        },
        None => Timestamp {
            time: ts.time.saturating_sub(1),
            increment: u32::MAX,
        },
    }
}

/// The end of a whole second: every entry of second `secs` is at or before it.
pub fn end_of_second(secs: u32) -> Timestamp {
    Timestamp {
        time: secs,
        increment: u32::MAX,
    }
}

/// `oplog/<instance>/<start>-<end>.bson.zst`.
pub fn slice_path(instance_id: &str, start_excl: i64, end_incl: i64) -> RepoPath {
    // "oplog" is a valid single segment; the instance id is escaped by join_escaped.
    RepoPath::new("oplog")
        .map(|p| {
            p.join_escaped(instance_id)
                .join_escaped(&format!("{start_excl:016x}-{end_incl:016x}.bson.zst"))
        })
        .unwrap_or_else(|_| unreachable_path())
}

#[allow(clippy::unwrap_used)]
fn unreachable_path() -> RepoPath {
    // Only reached if the literal "oplog" stopped being a valid path: a programming error caught by tests.
    RepoPath::new("oplog-invalid").unwrap()
}

/// The slice being filled.
struct Open {
    start_excl: Timestamp,
    gap: bool,
    covered: Timestamp,
    buf: Vec<u8>,
    entries: i64,
    first: Option<Timestamp>,
    last: Option<Timestamp>,
    opened: Instant,
}

impl Open {
    fn new(start_excl: Timestamp, gap: bool) -> Open {
        Open {
            start_excl,
            gap,
            covered: start_excl,
            buf: Vec::new(),
            entries: 0,
            first: None,
            last: None,
            opened: Instant::now(),
        }
    }
}

/// How many seconds already taken each read looks at again, for entries that became visible late.
const RECHECK_SECS: u32 = 3;

/// The entries taken in the last [`RECHECK_SECS`] seconds, for the late-entry check: only entries after
/// `from` (where this process started following) are compared.
struct Recent {
    from: Timestamp,
    keys: std::collections::BTreeSet<i64>,
}

impl Default for Recent {
    /// Nothing tracked until the follower resumes somewhere.
    fn default() -> Recent {
        Recent::starting_at(end_of_second(u32::MAX))
    }
}

impl Recent {
    fn starting_at(from: Timestamp) -> Recent {
        Recent {
            from,
            keys: std::collections::BTreeSet::new(),
        }
    }

    fn note(&mut self, taken: impl Iterator<Item = Timestamp>, upto: Timestamp) {
        self.keys.extend(taken.map(key));
        let keep = key(end_of_second(upto.time.saturating_sub(RECHECK_SECS)));
        self.keys = self.keys.split_off(&keep.saturating_add(1));
    }
}

/// Follows one instance's oplog into slices (see the module docs).
pub struct Follower {
    /// Where the slices are recorded.
    pub catalog: Catalog,
    /// Where the slice objects are stored.
    pub repo: Repository,
    /// The instance whose oplog is followed.
    pub instance: InstanceSpec,
    /// This process's node id, the owner of the follower claim.
    pub node_id: String,
    /// Slice size and timing.
    pub settings: LogSettings,
}

/// How often slices past `LogBackupRetentionPeriod` are looked for.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

impl Follower {
    /// Runs until `token` is cancelled. Errors (server unreachable, repository down) are logged and retried;
    /// they never advance the position, so nothing is skipped.
    pub async fn run(self, token: CancellationToken) -> Result<(), String> {
        let id = self.instance.id.clone();
        let mut open: Option<Open> = None;
        let mut recent = Recent::default();
        let mut client: Option<mongodb::Client> = None;
        let mut last_retention: Option<Instant> = None;
        loop {
            if token.is_cancelled() {
                break;
            }
            let mut wait = self.settings.poll;
            match self
                .step(&mut open, &mut recent, &mut client, &mut last_retention)
                .await
            {
                Ok(next) => wait = wait.min(next),
                Err(e) => {
                    tracing::warn!(instance = %id, error = %e, "log backup: retrying");
                    open = None;
                    client = None;
                    wait = self.settings.poll.max(Duration::from_secs(2));
                }
            }
            tokio::select! {
                () = token.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
        // Store what was followed so far, so a clean stop loses no time from the range.
        if let Some(o) = open.take() {
            if o.covered > o.start_excl {
                if let Err(e) = self.close(o).await {
                    tracing::warn!(instance = %id, error = %e, "log backup: last slice not stored at stop");
                }
            }
        }
        let _ = self.catalog.release_log_follower(&id, &self.node_id).await;
        Ok(())
    }

    /// One poll; how soon to poll again at the latest: at once while catching up, else when the next second
    /// settles (the caller waits at most `poll`).
    async fn step(
        &self,
        open: &mut Option<Open>,
        recent: &mut Recent,
        client: &mut Option<mongodb::Client>,
        last_retention: &mut Option<Instant>,
    ) -> Result<Duration, JobError> {
        let idle = self.settings.poll;
        let id = &self.instance.id;
        let now = Utc::now();
        if !self.hold_claim().await? {
            // Another process follows this instance.
            *open = None;
            return Ok(idle);
        }
        if last_retention.is_none_or(|t| t.elapsed() >= RETENTION_EVERY) {
            *last_retention = Some(Instant::now());
            if let Err(e) = expire_slices(&self.catalog, &self.repo, id, now).await {
                tracing::warn!(instance = %id, error = %e, "log backup retention failed");
            }
        }
        let enabled = self
            .catalog
            .get_policy(id)
            .await?
            .is_some_and(|p| p.enable_backup_log == 1);
        if !enabled {
            if let Some(o) = open.take() {
                if o.covered > o.start_excl {
                    self.close(o).await?;
                }
            }
            return Ok(idle);
        }
        if client.is_none() {
            *client = Some(ddsvault_mongo::topology::connect(&self.instance.uri).await?);
        }
        let Some(c) = client.as_ref() else {
            return Ok(idle);
        };
        let (second, next_in) =
            settled_second(oplog::server_time_millis(c).await?, self.settings.settle);
        let settled = end_of_second(second);
        if open.is_none() {
            let o = self.resume(c, settled).await?;
            *recent = Recent::starting_at(o.start_excl);
            *open = Some(o);
        }
        let Some(o) = open.as_mut() else {
            return Ok(idle);
        };
        let pos = o.covered;
        let cap = end_of_second(pos.time.saturating_add(self.settings.catch_up_secs));
        let upto = settled.min(cap);
        let mut busy = false;
        if upto > pos {
            busy = upto < settled;
            // Also the last RECHECK_SECS seconds already taken: an entry there that was not taken became visible
            // more than `settle` late (module docs).
            let back = end_of_second(pos.time.saturating_sub(RECHECK_SECS))
                .max(recent.from)
                .min(pos);
            let (again, entries): (Vec<_>, Vec<_>) = oplog::entries_between(c, back, upto)
                .await?
                .into_iter()
                .partition(|(ts, _)| *ts <= pos);
            let late: Vec<Timestamp> = again
                .iter()
                .map(|(ts, _)| *ts)
                .filter(|ts| !recent.keys.contains(&key(*ts)))
                .collect();
            if let Some(first) = late.first() {
                tracing::error!(instance = %id, entries = late.len(), first = %oplog::fmt_ts(*first),
                    settle_ms = self.settings.settle.as_millis(),
                    "log backup: oplog entries became visible after their second was stored, so stored slices miss \
                     them: restores to those seconds and later would lack them; raise [log_backup] settle_ms");
                recent.keys.extend(late.iter().map(|t| key(*t)));
            }
            recent.note(entries.iter().map(|(ts, _)| *ts), upto);
            let oldest = oplog::edge_ts_opt(c, 1).await?;
            // FerretDB 1.24 answers the read above by scanning the whole oplog, which can outlast the lease on a
            // long one; without holding it again here, storing would be refused and the same read repeated forever.
            // Lost to another process meanwhile: what was read is dropped, that process follows from the catalog.
            if !self.hold_claim().await? {
                *open = None;
                return Ok(idle);
            }
            match oldest {
                Some(oldest) if oldest > succ(pos) => {
                    // Entries after the position may have been evicted unread: close what is certain and start a
                    // new range at the oldest entry still there.
                    tracing::warn!(instance = %id, position = %oplog::fmt_ts(pos), oldest = %oplog::fmt_ts(oldest),
                        "log backup: the oplog rolled past the follower's position; the recoverable range breaks here");
                    if let Some(prev) = open.take() {
                        if prev.covered > prev.start_excl {
                            self.close(prev).await?;
                        }
                    }
                    let mut fresh = Open::new(pred(oldest), true);
                    Self::append(
                        &mut fresh,
                        entries.into_iter().filter(|(ts, _)| *ts >= oldest),
                    );
                    fresh.covered = upto.max(fresh.start_excl);
                    *recent = Recent::starting_at(fresh.covered);
                    *open = Some(fresh);
                }
                _ => {
                    Self::append(o, entries.into_iter());
                    o.covered = upto;
                }
            }
        }
        let ready = open.as_ref().is_some_and(|o| {
            o.covered > o.start_excl
                && (o.buf.len() >= self.settings.slice_bytes
                    || o.opened.elapsed() >= Duration::from_secs(self.settings.slice_secs)
                    || u64::from(o.covered.time.saturating_sub(o.start_excl.time))
                        >= self.settings.slice_secs)
        });
        if ready {
            if let Some(o) = open.take() {
                let next = Open::new(o.covered, false);
                self.close(o).await?;
                *open = Some(next);
            }
        }
        // A few milliseconds late, so that the server's clock has surely passed the moment.
        Ok(if busy {
            Duration::ZERO
        } else {
            next_in + Duration::from_millis(5)
        })
    }

    /// Takes or renews this process's claim on following the instance, for one lease from now; `false` when
    /// another process holds it.
    async fn hold_claim(&self) -> Result<bool, JobError> {
        let now = Utc::now();
        let lease = chrono::Duration::from_std(self.settings.lease)
            .unwrap_or_else(|_| chrono::Duration::seconds(30));
        Ok(self
            .catalog
            .claim_log_follower(&self.instance.id, &self.node_id, now, now + lease)
            .await?)
    }

    fn append(o: &mut Open, entries: impl Iterator<Item = (Timestamp, bson::RawDocumentBuf)>) {
        for (ts, raw) in entries {
            o.buf.extend_from_slice(raw.as_bytes());
            o.entries += 1;
            o.first.get_or_insert(ts);
            o.last = Some(ts);
        }
    }

    /// Where following starts: after the last stored slice, or (first time) after the newest entry now.
    async fn resume(&self, c: &mongodb::Client, settled: Timestamp) -> Result<Open, JobError> {
        let slices = self.catalog.list_log_slices(&self.instance.id).await?;
        if let Some(last) = slices.last() {
            return Ok(Open::new(ts_of(last.end_incl), false));
        }
        let start = match oplog::edge_ts_opt(c, -1).await? {
            Some(newest) => newest,
            None => settled,
        };
        tracing::info!(instance = %self.instance.id, from = %oplog::fmt_ts(start), "log backup starts");
        Ok(Open::new(start, false))
    }

    /// Compresses, stores and indexes a slice.
    async fn close(&self, o: Open) -> Result<(), JobError> {
        let id = self.instance.id.clone();
        let (start, end) = (key(o.start_excl), key(o.covered));
        let raw = o.buf;
        let compressed = tokio::task::spawn_blocking(move || zstd::bulk::compress(&raw, 3))
            .await
            .map_err(|e| JobError::Other(format!("compress a log slice: {e}")))?
            .map_err(|e| JobError::Filesystem(format!("compress a log slice: {e}")))?;
        let sha256 = sha256_hex(&compressed);
        let size = compressed.len() as i64;
        let path = slice_path(&id, start, end);
        self.repo.put(&path, Bytes::from(compressed)).await?;
        self.catalog
            .add_log_slice(
                &NewLogSlice {
                    instance_id: id.clone(),
                    start_excl: start,
                    end_incl: end,
                    first_ts: o.first.map(key),
                    last_ts: o.last.map(key),
                    entries: o.entries,
                    size,
                    sha256,
                    path: path.as_str().to_string(),
                    gap: o.gap,
                    now: Utc::now(),
                },
                &self.node_id,
            )
            .await?;
        tracing::debug!(instance = %id, entries = o.entries, bytes = size, "log slice stored");
        Ok(())
    }
}

/// Slices that follow each other without a gap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// Exclusive lower bound of the chain (a [`ddsvault_catalog::ts_key`]).
    pub start_excl: i64,
    /// Inclusive upper bound of the chain (a [`ddsvault_catalog::ts_key`]).
    pub end_incl: i64,
    /// The chain's slices, oldest first.
    pub slices: Vec<LogSlice>,
}

/// Groups slices (oldest first) into chains.
pub fn chains(slices: &[LogSlice]) -> Vec<Chain> {
    let mut out: Vec<Chain> = Vec::new();
    for s in slices {
        match out.last_mut() {
            Some(c) if !s.gap && s.start_excl == c.end_incl => {
                c.end_incl = s.end_incl;
                c.slices.push(s.clone());
            }
            _ => out.push(Chain {
                start_excl: s.start_excl,
                end_incl: s.end_incl,
                slices: vec![s.clone()],
            }),
        }
    }
    out
}

/// A full backup a point-in-time restore can start from: its consistency point as a [`ts_key`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Base {
    /// The backup set.
    pub backup_id: i64,
    /// Its consistency point (a [`ddsvault_catalog::ts_key`]).
    pub consistent: i64,
}

/// The consistency point of a successful Logical backup, if it has one.
pub fn base_of(b: &Backup) -> Option<Base> {
    if b.status != BackupStatus::Success || b.method != ddsvault_catalog::BackupMethod::Logical {
        return None;
    }
    let c = b.details.get("consistent_ts")?;
    let t = u32::try_from(c.get("t")?.as_u64()?).ok()?;
    let i = u32::try_from(c.get("i")?.as_u64()?).ok()?;
    Some(Base {
        backup_id: b.id,
        consistent: ts_key(t, i),
    })
}

/// A recoverable range, in whole seconds (both included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoverRange {
    /// First recoverable second (Unix time).
    pub begin: u32,
    /// Last recoverable second (Unix time).
    pub end: u32,
}

/// The recoverable ranges: per chain, from the second of the oldest backup inside it to its end.
pub fn recover_ranges(chains: &[Chain], bases: &[Base]) -> Vec<RecoverRange> {
    chains
        .iter()
        .filter_map(|c| {
            let first = bases
                .iter()
                .filter(|b| c.start_excl <= b.consistent && b.consistent <= c.end_incl)
                .map(|b| b.consistent)
                .min()?;
            Some(RecoverRange {
                begin: ts_parts(first).0,
                end: ts_parts(c.end_incl).0,
            })
        })
        .collect()
}

/// What a restore to second `t` does: restore `base`, then replay the entries of `slices` after its
/// consistency point up to the end of second `t`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PitrPlan {
    /// The full backup restored first.
    pub base: Base,
    /// The slices replayed after it, oldest first.
    pub slices: Vec<LogSlice>,
    /// Replay stops after this point: the end of second `t` (a [`ddsvault_catalog::ts_key`]).
    pub until: i64,
}

/// The newest base at or before second `t` whose chain reaches `t` (see [`PitrPlan`]); `only` restricts the
/// base to one backup. `None`: `t` is in no recoverable range.
pub fn plan_point_in_time(
    chains: &[Chain],
    bases: &[Base],
    t: u32,
    only: Option<i64>,
) -> Option<PitrPlan> {
    let until = key(end_of_second(t));
    chains.iter().find_map(|c| {
        if until > c.end_incl {
            return None;
        }
        let base = bases
            .iter()
            .filter(|b| only.is_none_or(|id| id == b.backup_id))
            .filter(|b| c.start_excl <= b.consistent && b.consistent <= until)
            .max_by_key(|b| (b.consistent, b.backup_id))?;
        let slices = c
            .slices
            .iter()
            .filter(|s| s.end_incl > base.consistent && s.start_excl < until)
            .cloned()
            .collect();
        Some(PitrPlan {
            base: base.clone(),
            slices,
            until,
        })
    })
}

/// Every base of an instance (successful Logical backups with a consistency point).
pub async fn bases(catalog: &Catalog, instance_id: &str) -> Result<Vec<Base>, CatalogError> {
    let filter = BackupFilter {
        instance_id: Some(instance_id.to_string()),
        ..BackupFilter::default()
    };
    let mut out = Vec::new();
    for number in 1u32.. {
        let (total, page) = catalog
            .list_backups(&filter, Page { number, size: 500 })
            .await?;
        out.extend(page.iter().filter_map(base_of));
        if page.is_empty() || u64::from(number) * 500 >= total {
            break;
        }
    }
    Ok(out)
}

/// The recoverable ranges of an instance now.
pub async fn instance_ranges(
    catalog: &Catalog,
    instance_id: &str,
) -> Result<Vec<RecoverRange>, CatalogError> {
    let slices = catalog.list_log_slices(instance_id).await?;
    let bases = bases(catalog, instance_id).await?;
    Ok(recover_ranges(&chains(&slices), &bases))
}

/// Deletes slices older than the policy's `LogBackupRetentionPeriod`, except those a restore to a time inside
/// the retention window still needs: every slice after the consistency point of the newest base at or before
/// the window's start is kept. The object goes first, then the row (a crash in between leaves a row whose
/// object is gone: the next pass deletes the row; a restore needing it fails its checksum check, not silently).
pub async fn expire_slices(
    catalog: &Catalog,
    repo: &Repository,
    instance_id: &str,
    now: chrono::DateTime<Utc>,
) -> Result<u64, JobError> {
    let days = catalog
        .get_policy(instance_id)
        .await?
        .map(|p| p.log_backup_retention_period)
        .unwrap_or(7)
        .max(1);
    let cutoff = u32::try_from((now - chrono::Duration::days(days)).timestamp()).unwrap_or(0);
    let slices = catalog.list_log_slices(instance_id).await?;
    if slices.is_empty() {
        return Ok(0);
    }
    let needed_from = bases(catalog, instance_id)
        .await?
        .iter()
        .filter(|b| ts_parts(b.consistent).0 <= cutoff)
        .map(|b| b.consistent)
        .max();
    let mut removed = 0;
    for s in slices {
        let old = ts_parts(s.end_incl).0 < cutoff;
        let unneeded = needed_from.is_none_or(|e| s.end_incl <= e);
        if !(old && unneeded) {
            continue;
        }
        let path = RepoPath::new(s.path.clone())?;
        match repo.delete(&path).await {
            Ok(()) | Err(ddsvault_repo::RepoError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        catalog.delete_log_slice(s.id).await?;
        removed += 1;
    }
    if removed > 0 {
        tracing::info!(instance = %instance_id, slices = removed, "log backup: expired slices removed");
    }
    Ok(removed)
}

/// The entries a point-in-time restore replays after its base, read from the repository on the restore's
/// blocking threads: each slice is checked against its indexed size and SHA-256 before any entry of it is used.
pub fn slice_entries(repo: Repository, plan: &PitrPlan) -> ddsvault_mongo::restore::ExtraOplog {
    let handle = Handle::current();
    let slices = Arc::new(plan.slices.clone());
    let after = plan.base.consistent;
    let until = plan.until;
    Arc::new(move || {
        let it = SliceIter {
            handle: handle.clone(),
            repo: repo.clone(),
            slices: Arc::clone(&slices),
            next: 0,
            buf: Vec::new(),
            off: 0,
            after,
            until,
        };
        Ok(Box::new(it)
            as Box<
                dyn Iterator<Item = std::io::Result<Vec<u8>>> + Send,
            >)
    })
}

struct SliceIter {
    handle: Handle,
    repo: Repository,
    slices: Arc<Vec<LogSlice>>,
    next: usize,
    buf: Vec<u8>,
    off: usize,
    after: i64,
    until: i64,
}

impl SliceIter {
    fn load(&mut self) -> std::io::Result<bool> {
        let Some(s) = self.slices.get(self.next) else {
            return Ok(false);
        };
        self.next += 1;
        let path = RepoPath::new(s.path.clone()).map_err(std::io::Error::other)?;
        let bytes = self
            .handle
            .block_on(self.repo.get(&path))
            .map_err(std::io::Error::other)?;
        if bytes.len() as i64 != s.size || sha256_hex(&bytes) != s.sha256 {
            return Err(std::io::Error::other(format!(
                "log slice {} is damaged: size or SHA-256 differs from the catalog",
                s.path
            )));
        }
        let mut out = Vec::new();
        zstd::stream::Decoder::new(&bytes[..])
            .and_then(|mut d| d.read_to_end(&mut out))
            .map_err(|e| std::io::Error::other(format!("log slice {}: {e}", s.path)))?;
        self.buf = out;
        self.off = 0;
        Ok(true)
    }
}

impl Iterator for SliceIter {
    type Item = std::io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.off >= self.buf.len() {
                match self.load() {
                    Ok(true) => continue,
                    Ok(false) => return None,
                    Err(e) => {
                        self.next = self.slices.len();
                        self.buf.clear();
                        return Some(Err(e));
                    }
                }
            }
            let rest = &self.buf[self.off..];
            let len = rest
                .get(..4)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(i32::from_le_bytes)
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| *n >= 5 && *n <= rest.len());
            let Some(len) = len else {
                self.buf.clear();
                self.next = self.slices.len();
                return Some(Err(std::io::Error::other(
                    "log slice holds a truncated BSON document",
                )));
            };
            let doc = rest[..len].to_vec();
            self.off += len;
            let ts = bson::RawDocument::from_bytes(&doc)
                .ok()
                .and_then(|d| d.get_timestamp("ts").ok());
            let Some(ts) = ts else {
                self.buf.clear();
                self.next = self.slices.len();
                return Some(Err(std::io::Error::other(
                    "log slice holds an entry without a timestamp",
                )));
            };
            let k = key(ts);
            if k > self.after && k <= self.until {
                return Some(Ok(doc));
            }
        }
    }
}

/// The log storage of each instance (DescribeBackupStorage `LogStorageSize`).
pub async fn log_storage_size(catalog: &Catalog, instance_id: &str) -> Result<i64, CatalogError> {
    Ok(catalog
        .list_log_slices(instance_id)
        .await?
        .iter()
        .map(|s| s.size)
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(start: i64, end: i64, gap: bool) -> LogSlice {
        LogSlice {
            id: end,
            instance_id: "i".into(),
            start_excl: start,
            end_incl: end,
            first_ts: None,
            last_ts: None,
            entries: 0,
            size: 0,
            sha256: String::new(),
            path: String::new(),
            gap,
            created_at: Utc::now(),
        }
    }

    fn s(t: u32) -> i64 {
        key(end_of_second(t))
    }

    #[test]
    fn ranges_follow_chains_and_break_at_gaps() {
        let slices = vec![
            slice(ts_key(100, 5), s(110), false),
            slice(s(110), s(120), false),
            slice(ts_key(130, 0), s(140), true),
            slice(s(140), s(150), false),
        ];
        let ch = chains(&slices);
        assert_eq!(ch.len(), 2);
        let bases = vec![
            Base {
                backup_id: 1,
                consistent: ts_key(105, 3),
            },
            Base {
                backup_id: 2,
                consistent: ts_key(112, 1),
            },
            // Inside the gap: no chain holds it.
            Base {
                backup_id: 3,
                consistent: ts_key(125, 1),
            },
            Base {
                backup_id: 4,
                consistent: ts_key(145, 0),
            },
        ];
        assert_eq!(
            recover_ranges(&ch, &bases),
            vec![
                RecoverRange {
                    begin: 105,
                    end: 120
                },
                RecoverRange {
                    begin: 145,
                    end: 150
                }
            ]
        );
        // The newest base at or before the time, and only the slices after it.
        let p = plan_point_in_time(&ch, &bases, 115, None).unwrap();
        assert_eq!(p.base.backup_id, 2);
        assert_eq!(p.slices.len(), 1);
        assert_eq!(p.until, s(115));
        let p = plan_point_in_time(&ch, &bases, 108, None).unwrap();
        assert_eq!(p.base.backup_id, 1);
        assert_eq!(p.slices.len(), 1);
        // A base's own second is recoverable.
        assert!(plan_point_in_time(&ch, &bases, 105, None).is_some());
        // Before every base, inside the gap, after the end: refused.
        assert!(plan_point_in_time(&ch, &bases, 104, None).is_none());
        assert!(plan_point_in_time(&ch, &bases, 125, None).is_none());
        assert!(plan_point_in_time(&ch, &bases, 144, None).is_none());
        assert!(plan_point_in_time(&ch, &bases, 151, None).is_none());
        // Restricted to one backup.
        assert_eq!(
            plan_point_in_time(&ch, &bases, 115, Some(1))
                .unwrap()
                .base
                .backup_id,
            1
        );
        assert!(plan_point_in_time(&ch, &bases, 108, Some(2)).is_none());
    }

    #[test]
    fn a_second_is_taken_once_it_has_been_over_for_the_settle_time() {
        let settle = Duration::from_millis(750);
        // Second 99 ends at 100_000 ms: taken from 100_750 ms on, not before.
        assert_eq!(settled_second(100_749, settle).0, 98);
        assert_eq!(settled_second(100_750, settle).0, 99);
        assert_eq!(settled_second(101_749, settle).0, 99);
        // The wait until the next second settles.
        assert_eq!(settled_second(100_749, settle).1, Duration::from_millis(1));
        assert_eq!(
            settled_second(100_750, settle).1,
            Duration::from_millis(1000)
        );
        assert_eq!(
            settled_second(101_000, settle).1,
            Duration::from_millis(750)
        );
        // The old whole-second rule (server seconds minus 2) equals a settle time of one second.
        assert_eq!(settled_second(101_999, Duration::from_secs(1)).0, 99);
        assert_eq!(settled_second(102_000, Duration::from_secs(1)).0, 100);
        // Before the epoch's second settles: nothing (0), no underflow.
        assert_eq!(settled_second(0, settle).0, 0);
    }

    #[test]
    fn successor_and_predecessor_invert() {
        for ts in [
            Timestamp {
                time: 5,
                increment: 0,
            },
            Timestamp {
                time: 5,
                increment: u32::MAX,
            },
            Timestamp {
                time: 5,
                increment: 7,
            },
        ] {
            assert_eq!(succ(pred(ts)), ts);
            assert!(pred(ts) < ts && ts < succ(ts));
            assert_eq!(ts_of(key(ts)), ts);
        }
    }
}
