//! Point reads on every request's path, done in the calling task.
//!
//! sqlx runs each SQLite query on its connection's worker thread and hands the answer back through a channel:
//! two thread wake-ups per query, which cost far more than the indexed read itself. A profile of 64 clients
//! sending CreateBackup put 42% of the server's time in those worker threads and most of the rest in waking them.
//! The two reads every such call makes (the identity version, the instance's active job) therefore run here on a
//! plain read-only connection under a mutex: a few microseconds in the caller's thread. Any failure (busy,
//! schema, I/O) returns `None` and the caller takes the sqlx path, which reports the error properly.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

#[derive(Debug)]
pub(crate) struct FastReader {
    conn: Mutex<Connection>,
}

impl FastReader {
    /// A read-only connection to the catalog file, or `None` if it cannot be opened (the sqlx path serves then).
    pub(crate) fn open(path: &Path) -> Option<Self> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| tracing::warn!(error = %e, "catalog fast reader unavailable"))
        .ok()?;
        // Never wait for a lock in the caller's thread: a busy database is left to the async path.
        conn.busy_timeout(std::time::Duration::ZERO).ok()?;
        Some(Self {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(
        &self,
        what: &str,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Option<T> {
        // A poisoned lock means a panic mid-read; the connection holds no transaction between reads.
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        read(&conn)
            .map_err(|e| tracing::debug!(error = %e, read = what, "fast catalog read failed; using the pool"))
            .ok()
    }

    pub(crate) fn identity_version(&self) -> Option<i64> {
        self.with("identity version", |c| {
            c.prepare_cached(super::IDENTITY_VERSION_SQL)?
                .query_row([], |r| r.get(0))
        })
    }

    /// The newest Pending or Running job of an instance, as (id, kind); `Some(None)` when there is none.
    pub(crate) fn active_job(&self, instance_id: &str) -> Option<Option<(i64, String)>> {
        self.with("active job", |c| {
            c.prepare_cached(super::ACTIVE_JOB_SQL)?
                .query_row([instance_id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::{CatalogBackend, NewBackupJob, SqliteCatalog};

    /// The fast path is really taken for a file catalog and sees the pool's commits at once.
    #[tokio::test]
    async fn file_catalogs_read_through_the_fast_reader() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cat = SqliteCatalog::open_file(&dir.path().join("c.db"))
            .await
            .expect("open");
        let fast = cat.fast.clone().expect("a file catalog has a fast reader");
        assert_eq!(
            fast.identity_version(),
            Some(cat.identity_version_impl().await.expect("version"))
        );
        assert_eq!(fast.active_job("dds-f"), Some(None));
        let (job, _) = cat
            .create_backup_job(&NewBackupJob {
                instance_id: "dds-f".into(),
                method: crate::BackupMethod::Logical,
                mode: "Manual".into(),
                retention_days: 7,
                engine_version: String::new(),
                params: serde_json::json!({}),
                now: chrono::Utc::now(),
            })
            .await
            .expect("job");
        assert_eq!(
            fast.active_job("dds-f"),
            Some(Some((job.id, crate::JobKind::Backup.as_str().into())))
        );
    }
}
