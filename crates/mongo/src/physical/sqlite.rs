//! FerretDB with the SQLite backend: one `<db>.sqlite` file per database, in WAL mode, plus `-wal`/`-shm`.
//!
//! Copying the files with `cp` while FerretDB writes can tear them (a page of the main file half old, half new,
//! and the WAL copied at another moment). [`image`] instead reads each file through SQLite's online backup API,
//! in a single step: the whole copy runs inside one read transaction of the source, which in WAL mode neither
//! blocks FerretDB's writers nor is disturbed by them, so the image is the database as of one commit.
//!
//! The guarantee is per database file (= per FerretDB database). Files are imaged one after another, so two
//! databases of one backup can be a few moments apart; FerretDB has no cross-database transactions, so no single
//! write is ever split, but an application invariant spanning two databases is not guaranteed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use crate::error::{MongoError, Result};

/// FerretDB's file name extension for a database.
pub const EXTENSION: &str = ".sqlite";

/// How long one image waits for a lock held by the server (WAL recovery, a checkpoint truncating the WAL).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often [`image`] retries a step that found the source busy.
const BUSY_RETRIES: u32 = 200;

/// One database file of a FerretDB SQLite data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFile {
    /// The file name, `<db>.sqlite`.
    pub name: String,
    /// The database it holds.
    pub database: String,
    /// Full path.
    pub path: PathBuf,
}

/// The database files of `dir`, by name. `-wal`/`-shm` companions and anything else are not listed: the image
/// of a database file already includes what its WAL holds.
///
/// # Errors
/// [`MongoError::Io`] if the directory cannot be read.
pub fn list_databases(dir: &Path) -> Result<Vec<DataFile>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| MongoError::io(format!("read data directory {}", dir.display()), e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry
            .map_err(|e| MongoError::io(format!("read data directory {}", dir.display()), e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let Some(database) = name.strip_suffix(EXTENSION) else {
            continue;
        };
        let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        if database.is_empty() || !is_file {
            continue;
        }
        out.push(DataFile {
            database: database.to_string(),
            path: entry.path(),
            name,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Writes a consistent image of the live SQLite database `src` to `dest` (which must not exist) and returns
/// its size. The image is a self-contained database file in rollback-journal mode (no `-wal` beside it), which
/// FerretDB opens as is. Blocking: run it on a blocking thread.
///
/// # Errors
/// [`MongoError::Image`] naming the file if SQLite fails or the source stays locked.
pub fn image(src: &Path, dest: &Path) -> Result<u64> {
    let file = src
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| src.display().to_string());
    let err = |detail: String| MongoError::Image {
        file: file.clone(),
        detail,
    };
    let sql = |e: rusqlite::Error| err(e.to_string());
    if dest.exists() {
        return Err(err(format!(
            "image target {} already exists",
            dest.display()
        )));
    }
    let from = Connection::open_with_flags(
        src,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql)?;
    from.busy_timeout(BUSY_TIMEOUT).map_err(sql)?;
    {
        let mut to = Connection::open(dest).map_err(sql)?;
        // A scratch file: durability comes from the repository, and the content is hashed after the copy.
        to.pragma_update(None, "synchronous", "OFF").map_err(sql)?;
        let backup = Backup::new(&from, &mut to).map_err(sql)?;
        let mut busy = 0u32;
        loop {
            // -1: every page in one step, i.e. in one read transaction of the source. Smaller steps would
            // restart from scratch each time the server commits, and could never finish under steady writes.
            match backup.step(-1).map_err(sql)? {
                StepResult::Done => break,
                StepResult::More => {}
                StepResult::Busy | StepResult::Locked => {
                    busy += 1;
                    if busy > BUSY_RETRIES {
                        return Err(err("the database stayed locked by the server".into()));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                // StepResult is non-exhaustive; any other outcome is a failure to report, not to retry.
                #[allow(unreachable_patterns)]
                other => return Err(err(format!("unexpected backup step result {other:?}"))),
            }
        }
    }
    drop(from);
    // The copied header still says WAL (the source's mode); switch the image to a plain rollback-journal file so
    // it is complete on its own. Reopening is needed: the mode in the header is read when the file is opened.
    let to = Connection::open(dest).map_err(sql)?;
    let mode: String = to
        .query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))
        .map_err(sql)?;
    if !mode.eq_ignore_ascii_case("delete") {
        return Err(err(format!(
            "could not leave WAL mode (journal_mode is {mode})"
        )));
    }
    let check: String = to
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(sql)?;
    if check != "ok" {
        return Err(err(format!("the image fails quick_check: {check}")));
    }
    drop(to);
    let size = std::fs::metadata(dest)
        .map_err(|e| MongoError::io(format!("stat {}", dest.display()), e))?
        .len();
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn wal_db(path: &Path) -> Connection {
        let c = Connection::open(path).unwrap();
        let _: String = c
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .unwrap();
        c.execute_batch(
            "CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER NOT NULL);
             INSERT INTO acct VALUES (1, 1000), (2, 1000);
             CREATE TABLE log(id INTEGER PRIMARY KEY, payload TEXT NOT NULL);",
        )
        .unwrap();
        c
    }

    #[test]
    fn lists_database_files_only() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "b.sqlite",
            "a.sqlite",
            "a.sqlite-wal",
            "a.sqlite-shm",
            "x.txt",
            ".sqlite",
        ] {
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        std::fs::create_dir(dir.path().join("d.sqlite")).unwrap();
        let names: Vec<_> = list_databases(dir.path())
            .unwrap()
            .into_iter()
            .map(|f| (f.name, f.database))
            .collect();
        assert_eq!(
            names,
            vec![
                ("a.sqlite".to_string(), "a".to_string()),
                ("b.sqlite".to_string(), "b".to_string())
            ]
        );
        assert!(list_databases(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn image_includes_uncheckpointed_wal_and_is_self_contained() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("shop.sqlite");
        let c = wal_db(&src);
        c.execute("INSERT INTO log(payload) VALUES ('only in the WAL')", [])
            .unwrap();
        assert!(dir.path().join("shop.sqlite-wal").exists());
        let dest = dir.path().join("image.sqlite");
        let size = image(&src, &dest).unwrap();
        assert_eq!(size, std::fs::metadata(&dest).unwrap().len());
        assert!(!dir.path().join("image.sqlite-wal").exists());
        let copy = Connection::open(&dest).unwrap();
        let n: i64 = copy
            .query_row("SELECT count(*) FROM log", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        let mode: String = copy
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "delete");
        // An existing target is never overwritten.
        assert!(matches!(image(&src, &dest), Err(MongoError::Image { .. })));
    }

    #[test]
    fn image_under_concurrent_writes_is_one_commit() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("bank.sqlite");
        drop(wal_db(&src));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let stop = Arc::clone(&stop);
            let src = src.clone();
            std::thread::spawn(move || {
                let c = Connection::open(&src).unwrap();
                c.busy_timeout(Duration::from_secs(5)).unwrap();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // One transaction moves money and logs it: sum and log length change together.
                    c.execute_batch(&format!(
                        "BEGIN; UPDATE acct SET bal = bal - 1 WHERE id = 1; \
                         UPDATE acct SET bal = bal + 1 WHERE id = 2; \
                         INSERT INTO log(payload) VALUES ('{}'); COMMIT;",
                        "x".repeat(200 + (i % 50) as usize)
                    ))
                    .unwrap();
                    i += 1;
                }
                i
            })
        };
        let mut images = 0;
        for k in 0..5 {
            std::thread::sleep(Duration::from_millis(30));
            let dest = dir.path().join(format!("img{k}.sqlite"));
            image(&src, &dest).unwrap();
            let c = Connection::open(&dest).unwrap();
            let (sum, moved): (i64, i64) = c
                .query_row(
                    "SELECT (SELECT sum(bal) FROM acct), (SELECT bal FROM acct WHERE id = 2) - 1000",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            let logged: i64 = c
                .query_row("SELECT count(*) FROM log", [], |r| r.get(0))
                .unwrap();
            assert_eq!(sum, 2000);
            assert_eq!(moved, logged);
            images += 1;
        }
        stop.store(true, Ordering::Relaxed);
        let writes = writer.join().unwrap();
        assert!(writes > 0);
        assert_eq!(images, 5);
    }
}
