//! File-level backups of mongod: the orchestration only, behind [`MongodNode`] and [`FileCopier`].
//!
//! **Not verified against a real mongod** (none runs here) and not wired into backup jobs yet: CreateBackup
//! answers a clear error for Physical/Snapshot on mongod. What is unit tested is the decision logic a driver-backed
//! implementation must follow (mongo-internals.md §2.1):
//! * [`flavor`]: `$backupCursor` exists on MongoDB Enterprise and Percona Server; Community needs an `fsync` lock;
//! * [`choose_lock_member`]: lock a hidden member, else a secondary, never the primary (it would stop writes);
//! * [`copy_with_backup_cursor`]: keep the cursor alive while files are copied, and close it on every path;
//! * [`copy_with_fsync_lock`]: every lock is paired with an unlock, on every path, and journaled so that
//!   [`release_leftover_locks`] unlocks at start a node a crash left locked.

use std::time::Duration;

use async_trait::async_trait;
use bson::Document;
use tokio_util::sync::CancellationToken;

use crate::error::{MongoError, Result};

/// How a mongod can give a consistent set of files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// MongoDB Enterprise or Percona Server for MongoDB: `$backupCursor` (+ `$backupCursorExtend`).
    BackupCursor,
    /// MongoDB Community: `fsync` with `lock: true` on a member that is not the primary.
    FsyncLock,
}

/// The flavor from a `buildInfo` reply: `modules` containing `"enterprise"`, or Percona's `psmdbVersion`.
pub fn flavor(build_info: &Document) -> Flavor {
    let enterprise = build_info
        .get_array("modules")
        .map(|m| m.iter().any(|v| v.as_str() == Some("enterprise")))
        .unwrap_or(false);
    if enterprise || build_info.contains_key("psmdbVersion") {
        Flavor::BackupCursor
    } else {
        Flavor::FsyncLock
    }
}

/// A replica set member as `replSetGetStatus`/`hello` describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// `host:port`.
    pub host: String,
    /// The current primary.
    pub primary: bool,
    /// A healthy secondary (SECONDARY state).
    pub secondary: bool,
    /// `hidden: true` in the replica set configuration.
    pub hidden: bool,
}

/// The member to lock for a Community backup: a hidden secondary first (no client reads from it), then any
/// secondary; never the primary, whose lock would block every write.
///
/// # Errors
/// [`MongoError::Unsupported`] when no secondary is available.
pub fn choose_lock_member(members: &[Member]) -> Result<&Member> {
    let secondaries = || members.iter().filter(|m| m.secondary && !m.primary);
    secondaries()
        .find(|m| m.hidden)
        .or_else(|| secondaries().next())
        .ok_or_else(|| {
            MongoError::Unsupported(
                "no secondary or hidden member to fsync-lock: locking the primary would block all writes".into(),
            )
        })
}

/// One file listed by `$backupCursor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupFile {
    /// Path on the node.
    pub path: String,
    /// Bytes to copy (files may grow after the cursor opens; only this prefix belongs to the checkpoint).
    pub size: u64,
}

/// An open `$backupCursor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenCursor {
    /// The cursor id, for `getMore` (keep-alive) and `killCursors`.
    pub cursor_id: i64,
    /// The files of the checkpoint.
    pub files: Vec<BackupFile>,
}

/// The server side of a file-level backup; a driver-backed implementation talks to mongod.
#[async_trait]
pub trait MongodNode: Send + Sync {
    /// `aggregate [{$backupCursor: {}}]`.
    async fn open_backup_cursor(&self) -> Result<OpenCursor>;
    /// `getMore` on the cursor: without it mongod times the cursor out (10 minutes) and the checkpoint is released.
    async fn keep_alive(&self, cursor_id: i64) -> Result<()>;
    /// `killCursors`.
    async fn close_backup_cursor(&self, cursor_id: i64) -> Result<()>;
    /// `fsync: 1, lock: true` on `host`.
    async fn fsync_lock(&self, host: &str) -> Result<()>;
    /// `fsyncUnlock` on `host`; returns the remaining lock count.
    async fn fsync_unlock(&self, host: &str) -> Result<i64>;
}

/// Copies the node's files (from its data directory) into the repository.
#[async_trait]
pub trait FileCopier: Send + Sync {
    /// Copies `files` (all of the data directory when empty); returns the bytes copied.
    async fn copy(&self, files: &[BackupFile]) -> Result<u64>;
}

/// Durable record of fsync locks taken, so a restart can release one a crash left behind.
#[async_trait]
pub trait LockJournal: Send + Sync {
    /// Records that `host` is about to be locked (before the lock is taken).
    async fn record(&self, host: &str) -> Result<()>;
    /// Forgets `host` (after it was unlocked).
    async fn clear(&self, host: &str) -> Result<()>;
    /// Hosts recorded and not cleared.
    async fn pending(&self) -> Result<Vec<String>>;
}

/// How often the backup cursor is kept alive while files are copied (well under mongod's 10-minute timeout).
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(60);

/// Opens `$backupCursor`, copies its files while keeping it alive, and closes it whatever happens.
///
/// # Errors
/// The first error of opening, copying or keeping alive (a failed keep-alive stops the copy: the checkpoint may
/// be gone), [`MongoError::Cancelled`]; a failure to close is reported only if everything else succeeded.
pub async fn copy_with_backup_cursor(
    node: &dyn MongodNode,
    copier: &dyn FileCopier,
    keep_alive_every: Duration,
    cancel: &CancellationToken,
) -> Result<u64> {
    let cursor = node.open_backup_cursor().await?;
    let copy = async {
        let keep_alive = async {
            loop {
                tokio::time::sleep(keep_alive_every).await;
                node.keep_alive(cursor.cursor_id).await?;
            }
            #[allow(unreachable_code)]
            Ok::<u64, MongoError>(0)
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(MongoError::Cancelled),
            r = copier.copy(&cursor.files) => r,
            r = keep_alive => r,
        }
    };
    let result = copy.await;
    let closed = node.close_backup_cursor(cursor.cursor_id).await;
    match (result, closed) {
        (Ok(n), Ok(())) => Ok(n),
        (Ok(_), Err(e)) => Err(e),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(close)) => {
            tracing::warn!(error = %close, "could not close the backup cursor (mongod times it out)");
            Err(e)
        }
    }
}

/// Locks `host`, copies, and unlocks on every path. The lock is journaled before it is taken and cleared only
/// once mongod reports no lock left, so a crash anywhere in between is repaired by [`release_leftover_locks`].
///
/// # Errors
/// The lock, copy or unlock error (an unlock failure leaves the journal entry for the next start), or
/// [`MongoError::Cancelled`].
pub async fn copy_with_fsync_lock(
    node: &dyn MongodNode,
    journal: &dyn LockJournal,
    host: &str,
    copier: &dyn FileCopier,
    cancel: &CancellationToken,
) -> Result<u64> {
    journal.record(host).await?;
    if let Err(e) = node.fsync_lock(host).await {
        // The lock may have been taken even if the reply was lost: unlock to be sure.
        let _ = unlock_fully(node, journal, host).await;
        return Err(e);
    }
    let result = tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(MongoError::Cancelled),
        r = copier.copy(&[]) => r,
    };
    let unlocked = unlock_fully(node, journal, host).await;
    match (result, unlocked) {
        (Ok(n), Ok(())) => Ok(n),
        (Ok(_), Err(e)) | (Err(e), Ok(())) => Err(e),
        (Err(e), Err(unlock)) => {
            tracing::error!(host, error = %unlock, "could not unlock after a failed copy; retried at next start");
            Err(e)
        }
    }
}

/// fsync locks nest: unlock until mongod reports none left (bounded), then clear the journal.
async fn unlock_fully(node: &dyn MongodNode, journal: &dyn LockJournal, host: &str) -> Result<()> {
    for _ in 0..16 {
        if node.fsync_unlock(host).await? <= 0 {
            return journal.clear(host).await;
        }
    }
    Err(MongoError::Protocol {
        context: format!("fsyncUnlock on {host}"),
        detail: "the node stays locked after 16 unlocks".into(),
    })
}

/// At start: unlocks every host a previous run journaled as locked and did not clear. Returns the hosts released.
///
/// # Errors
/// The first unlock that fails (its journal entry stays, for the next start).
pub async fn release_leftover_locks(
    node: &dyn MongodNode,
    journal: &dyn LockJournal,
) -> Result<Vec<String>> {
    let mut released = Vec::new();
    for host in journal.pending().await? {
        unlock_fully(node, journal, &host).await?;
        released.push(host);
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    /// Records every call; failures are injected by name.
    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<String>>,
        fail: BTreeSet<&'static str>,
        locks: Mutex<i64>,
        journal: Mutex<BTreeSet<String>>,
        copy_takes: Duration,
    }

    impl Fake {
        fn failing(names: &[&'static str]) -> Self {
            Self {
                fail: names.iter().copied().collect(),
                ..Self::default()
            }
        }
        fn log(&self, s: impl Into<String>) {
            self.calls.lock().unwrap().push(s.into());
        }
        fn check(&self, name: &'static str) -> Result<()> {
            if self.fail.contains(name) {
                Err(MongoError::Unreachable(format!("{name} failed")))
            } else {
                Ok(())
            }
        }
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl MongodNode for Fake {
        async fn open_backup_cursor(&self) -> Result<OpenCursor> {
            self.log("open");
            self.check("open")?;
            Ok(OpenCursor {
                cursor_id: 7,
                files: vec![BackupFile {
                    path: "/data/db/collection-1.wt".into(),
                    size: 10,
                }],
            })
        }
        async fn keep_alive(&self, id: i64) -> Result<()> {
            self.log(format!("keepalive {id}"));
            self.check("keepalive")
        }
        async fn close_backup_cursor(&self, id: i64) -> Result<()> {
            self.log(format!("close {id}"));
            self.check("close")
        }
        async fn fsync_lock(&self, host: &str) -> Result<()> {
            self.log(format!("lock {host}"));
            // A lock whose reply is lost is still taken.
            *self.locks.lock().unwrap() += 1;
            self.check("lock")
        }
        async fn fsync_unlock(&self, host: &str) -> Result<i64> {
            self.log(format!("unlock {host}"));
            self.check("unlock")?;
            let mut l = self.locks.lock().unwrap();
            *l = (*l - 1).max(0);
            Ok(*l)
        }
    }

    #[async_trait]
    impl FileCopier for Fake {
        async fn copy(&self, files: &[BackupFile]) -> Result<u64> {
            self.log(format!("copy {}", files.len()));
            tokio::time::sleep(self.copy_takes).await;
            self.check("copy")?;
            Ok(files.iter().map(|f| f.size).sum())
        }
    }

    #[async_trait]
    impl LockJournal for Fake {
        async fn record(&self, host: &str) -> Result<()> {
            self.journal.lock().unwrap().insert(host.into());
            Ok(())
        }
        async fn clear(&self, host: &str) -> Result<()> {
            self.journal.lock().unwrap().remove(host);
            Ok(())
        }
        async fn pending(&self) -> Result<Vec<String>> {
            Ok(self.journal.lock().unwrap().iter().cloned().collect())
        }
    }

    #[test]
    fn flavor_from_build_info() {
        use bson::doc;
        assert_eq!(
            flavor(&doc! {"version": "7.0.2", "modules": ["enterprise"]}),
            Flavor::BackupCursor
        );
        assert_eq!(
            flavor(&doc! {"version": "6.0.2-1", "psmdbVersion": "6.0.2-1", "modules": []}),
            Flavor::BackupCursor
        );
        assert_eq!(
            flavor(&doc! {"version": "7.0.2", "modules": []}),
            Flavor::FsyncLock
        );
        assert_eq!(flavor(&doc! {"version": "4.4"}), Flavor::FsyncLock);
    }

    #[test]
    fn lock_member_is_never_the_primary() {
        let m = |host: &str, primary, secondary, hidden| Member {
            host: host.into(),
            primary,
            secondary,
            hidden,
        };
        let set = [
            m("p:1", true, false, false),
            m("s:1", false, true, false),
            m("h:1", false, true, true),
        ];
        assert_eq!(choose_lock_member(&set).unwrap().host, "h:1");
        assert_eq!(choose_lock_member(&set[..2]).unwrap().host, "s:1");
        assert!(choose_lock_member(&set[..1]).is_err());
        // A hidden member that is not a healthy secondary (e.g. RECOVERING) is not used.
        let set = [m("p:1", true, false, false), m("h:1", false, false, true)];
        assert!(choose_lock_member(&set).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn backup_cursor_is_kept_alive_during_a_long_copy_and_closed() {
        let fake = Fake {
            copy_takes: Duration::from_secs(250),
            ..Fake::default()
        };
        let n =
            copy_with_backup_cursor(&fake, &fake, KEEP_ALIVE_INTERVAL, &CancellationToken::new())
                .await
                .unwrap();
        assert_eq!(n, 10);
        assert_eq!(
            fake.calls(),
            vec![
                "open",
                "copy 1",
                "keepalive 7",
                "keepalive 7",
                "keepalive 7",
                "keepalive 7",
                "close 7"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn backup_cursor_is_closed_on_every_error_path() {
        for failing in ["copy", "keepalive"] {
            let fake = Fake {
                copy_takes: Duration::from_secs(90),
                ..Fake::failing(&[failing])
            };
            let r = copy_with_backup_cursor(
                &fake,
                &fake,
                KEEP_ALIVE_INTERVAL,
                &CancellationToken::new(),
            )
            .await;
            assert!(r.is_err(), "{failing}");
            assert_eq!(
                fake.calls().last().map(String::as_str),
                Some("close 7"),
                "{failing}"
            );
        }
        // Cancelled: closed too.
        let fake = Fake {
            copy_takes: Duration::from_secs(90),
            ..Fake::default()
        };
        let cancel = CancellationToken::new();
        cancel.cancel();
        let r = copy_with_backup_cursor(&fake, &fake, KEEP_ALIVE_INTERVAL, &cancel).await;
        assert!(matches!(r, Err(MongoError::Cancelled)));
        assert_eq!(fake.calls().last().map(String::as_str), Some("close 7"));
        // Opening failed: nothing to close.
        let fake = Fake::failing(&["open"]);
        assert!(copy_with_backup_cursor(
            &fake,
            &fake,
            KEEP_ALIVE_INTERVAL,
            &CancellationToken::new()
        )
        .await
        .is_err());
        assert_eq!(fake.calls(), vec!["open"]);
        // Closing failed after a good copy: the backup is not reported as good.
        let fake = Fake::failing(&["close"]);
        assert!(copy_with_backup_cursor(
            &fake,
            &fake,
            KEEP_ALIVE_INTERVAL,
            &CancellationToken::new()
        )
        .await
        .is_err());
    }

    #[tokio::test]
    async fn fsync_lock_is_always_paired_with_unlock() {
        for failing in [&[][..], &["copy"], &["lock"]] {
            let fake = Fake::failing(failing);
            let r =
                copy_with_fsync_lock(&fake, &fake, "s:1", &fake, &CancellationToken::new()).await;
            assert_eq!(r.is_ok(), failing.is_empty(), "{failing:?}");
            assert_eq!(*fake.locks.lock().unwrap(), 0, "{failing:?}: left locked");
            assert!(fake.journal.lock().unwrap().is_empty(), "{failing:?}");
            assert_eq!(fake.calls().last().map(String::as_str), Some("unlock s:1"));
        }
        let fake = Fake::default();
        let cancel = CancellationToken::new();
        cancel.cancel();
        let r = copy_with_fsync_lock(&fake, &fake, "s:1", &fake, &cancel).await;
        assert!(matches!(r, Err(MongoError::Cancelled)));
        assert_eq!(*fake.locks.lock().unwrap(), 0);
    }

    #[tokio::test]
    async fn a_lock_left_behind_is_released_at_start() {
        // The unlock fails (as if the process died): the journal keeps the host.
        let fake = Fake::failing(&["unlock"]);
        let r = copy_with_fsync_lock(&fake, &fake, "s:1", &fake, &CancellationToken::new()).await;
        assert!(r.is_err());
        assert_eq!(*fake.locks.lock().unwrap(), 1);
        assert_eq!(fake.pending().await.unwrap(), vec!["s:1".to_string()]);
        // Next start, with a working node.
        let restarted = Fake {
            locks: Mutex::new(2), // nested locks are all released
            journal: Mutex::new(fake.journal.lock().unwrap().clone()),
            ..Fake::default()
        };
        let released = release_leftover_locks(&restarted, &restarted)
            .await
            .unwrap();
        assert_eq!(released, vec!["s:1".to_string()]);
        assert_eq!(*restarted.locks.lock().unwrap(), 0);
        assert!(restarted.pending().await.unwrap().is_empty());
        assert_eq!(restarted.calls(), vec!["unlock s:1", "unlock s:1"]);
    }
}
