//! FerretDB with the SQLite backend: one `<db>.sqlite` file per database, in WAL mode, plus `-wal`/`-shm`.
//!
//! Copying the files with `cp` while FerretDB writes can tear them (a page of the main file half old, half new,
//! and the WAL copied at another moment). [`image`] instead reads each file through SQLite's online backup API,
//! in a single step: the whole copy runs inside one read transaction of the source, which in WAL mode neither
//! blocks FerretDB's writers nor is disturbed by them, so the image is the database as of one commit.
//!
//! When the bundled SQLite has the `sqlite_dbpage` virtual table (the workspace's `.cargo/config.toml` turns it
//! on), [`ImageStream`] is used instead: it reads every page of the database out of one read transaction and
//! hands them on as a byte stream, so the image goes straight into the repository without a scratch file.
//!
//! The guarantee is per database file (= per FerretDB database). Files are imaged one after another, so two
//! databases of one backup can be a few moments apart; FerretDB has no cross-database transactions, so no single
//! write is ever split, but an application invariant spanning two databases is not guaranteed.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::OnceLock;
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
    let file = file_label(src);
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
    let from = open_source(src).map_err(sql)?;
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

/// The source's file name, for messages.
fn file_label(src: &Path) -> String {
    src.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| src.display().to_string())
}

/// A read-only connection to a live database that waits a while for the server's locks.
fn open_source(src: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        src,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// The largest memory mapping [`ImageStream`] asks for (SQLite caps it at its compile-time maximum).
const MMAP_SIZE: i64 = 1 << 40;

/// Pages handed from the reading thread to the consumer at once (256 KiB with 4 KiB pages).
const PAGES_PER_MESSAGE: usize = 64;
/// Messages buffered between the reading thread and the consumer.
const MESSAGES_IN_FLIGHT: usize = 8;
/// The file format write/read version bytes of the database header: 2 = WAL, 1 = rollback journal.
const HEADER_VERSION_BYTES: std::ops::Range<usize> = 18..20;

/// Whether the linked SQLite has the `sqlite_dbpage` virtual table [`ImageStream`] needs.
pub fn has_page_reader() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        Connection::open_in_memory()
            .and_then(|c| {
                c.query_row(
                    "SELECT count(*) FROM pragma_compile_options WHERE compile_options = 'ENABLE_DBPAGE_VTAB'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
            })
            .map(|n| n > 0)
            .unwrap_or(false)
    })
}

enum Message {
    Pages(Vec<u8>),
    /// Every page was sent and the image passed `quick_check`: only now may the consumer see the end.
    Done,
    Failed(String),
}

/// A consistent image of a live SQLite database as a byte stream (the same bytes [`image`] would write, in
/// rollback-journal mode): a thread reads the pages through `sqlite_dbpage` inside one read transaction of the
/// source, which in WAL mode neither blocks the server's writers nor sees half of a commit, then runs
/// `PRAGMA quick_check` in the same transaction (so it checks exactly the pages sent). A failure, or the thread
/// ending without that check, is a read error, never an early end of stream: a truncated image cannot look
/// complete. Blocking: read it on a blocking thread.
pub struct ImageStream {
    rx: Receiver<Message>,
    buf: Vec<u8>,
    pos: usize,
    done: bool,
    size: u64,
    file: String,
}

impl std::fmt::Debug for ImageStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStream")
            .field("file", &self.file)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl ImageStream {
    /// Starts the read transaction (so the image is the database as of now) and the reading thread.
    ///
    /// # Errors
    /// [`MongoError::Image`] naming the file if SQLite cannot open it, has no `sqlite_dbpage`, or the source
    /// stays locked.
    pub fn open(src: &Path) -> Result<Self> {
        let file = file_label(src);
        let err = |detail: String| MongoError::Image {
            file: file.clone(),
            detail,
        };
        let sql = |e: rusqlite::Error| err(e.to_string());
        if !has_page_reader() {
            return Err(err(
                "this build's SQLite has no sqlite_dbpage table (build with LIBSQLITE3_FLAGS=-DSQLITE_ENABLE_DBPAGE_VTAB)"
                    .into(),
            ));
        }
        let conn = open_source(src).map_err(sql)?;
        // Memory-mapped reads: the pages of the main file are read from the mapping instead of one pread(2) each
        // into a 2 MiB page cache, which `quick_check` would then read a second time. SQLite maps read-only for a
        // read-only connection and caps the size (SQLITE_MAX_MMAP_SIZE, 2 GiB by default; the rest of a larger
        // file is read as before). It changes how pages are read, not which: in WAL mode a checkpoint never
        // rewrites a page of the main file that a reader's snapshot takes from there (it copies only frames every
        // reader already sees in the WAL), and never truncates below a reader's snapshot.
        conn.pragma_update(None, "mmap_size", MMAP_SIZE)
            .map_err(sql)?;
        conn.execute_batch("BEGIN").map_err(sql)?;
        // The first read starts the read transaction: from here on every statement sees this one commit.
        let (page_size, page_count): (i64, i64) = conn
            .query_row(
                "SELECT (SELECT page_size FROM pragma_page_size), (SELECT page_count FROM pragma_page_count)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(sql)?;
        let (Ok(page_size), Ok(page_count)) =
            (usize::try_from(page_size), u64::try_from(page_count))
        else {
            return Err(err(format!(
                "unexpected page size {page_size} or count {page_count}"
            )));
        };
        let size = page_count * page_size as u64;
        let (tx, rx) = sync_channel(MESSAGES_IN_FLIGHT);
        std::thread::Builder::new()
            .name(format!("image {file}"))
            .spawn(move || {
                let outcome = send_pages(&conn, page_size, page_count, &tx);
                // Ends the read transaction; nothing was written, so there is nothing to keep or undo.
                let _ = conn.execute_batch("COMMIT");
                let _ = tx.send(match outcome {
                    Ok(()) => Message::Done,
                    Err(e) => Message::Failed(e),
                });
            })
            .map_err(|e| err(format!("start the image thread: {e}")))?;
        Ok(Self {
            rx,
            buf: Vec::new(),
            pos: 0,
            done: false,
            size,
            file,
        })
    }

    /// The image's size in bytes (pages × page size, as of the read transaction).
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// The reading thread's work. A send that fails means the consumer went away: stop quietly.
fn send_pages(
    conn: &Connection,
    page_size: usize,
    page_count: u64,
    tx: &SyncSender<Message>,
) -> std::result::Result<(), String> {
    let mut stmt = conn
        .prepare("SELECT pgno, data FROM sqlite_dbpage")
        .map_err(|e| e.to_string())?;
    let mut rows = stmt.query([]).map_err(|e| e.to_string())?;
    let mut expected: u64 = 1;
    let mut batch = Vec::with_capacity(page_size * PAGES_PER_MESSAGE);
    while let Some(row) = rows.next().map_err(|e| e.to_string())? {
        let pgno: i64 = row.get(0).map_err(|e| e.to_string())?;
        let data = row.get_ref(1).map_err(|e| e.to_string())?;
        let data = data.as_blob().map_err(|e| e.to_string())?;
        if u64::try_from(pgno).ok() != Some(expected) || data.len() != page_size {
            return Err(format!(
                "page {pgno} of {} bytes where page {expected} of {page_size} was expected",
                data.len()
            ));
        }
        let at = batch.len();
        batch.extend_from_slice(data);
        if expected == 1 {
            // The header still says WAL (the source's mode): the image is a plain rollback-journal file, complete
            // on its own, as `PRAGMA journal_mode=DELETE` would leave it.
            let v = &mut batch[at + HEADER_VERSION_BYTES.start..at + HEADER_VERSION_BYTES.end];
            if v == [2, 2] {
                v.copy_from_slice(&[1, 1]);
            }
        }
        expected += 1;
        if batch.len() >= page_size * PAGES_PER_MESSAGE {
            let full = std::mem::replace(
                &mut batch,
                Vec::with_capacity(page_size * PAGES_PER_MESSAGE),
            );
            if tx.send(Message::Pages(full)).is_err() {
                return Ok(());
            }
        }
    }
    if expected - 1 != page_count {
        return Err(format!(
            "read {} pages of the {page_count} the database has",
            expected - 1
        ));
    }
    if !batch.is_empty() && tx.send(Message::Pages(batch)).is_err() {
        return Ok(());
    }
    drop(rows);
    drop(stmt);
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if check != "ok" {
        return Err(format!("the image fails quick_check: {check}"));
    }
    Ok(())
}

impl Read for ImageStream {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Message::Pages(pages)) => {
                    self.buf = pages;
                    self.pos = 0;
                }
                Ok(Message::Done) => self.done = true,
                Ok(Message::Failed(e)) => {
                    return Err(std::io::Error::other(format!(
                        "image of {}: {e}",
                        self.file
                    )))
                }
                Err(_) => {
                    return Err(std::io::Error::other(format!(
                        "image of {}: the reading thread stopped before the end",
                        self.file
                    )))
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
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
        assert_self_contained_with_one_log_row(&dest);
        // An existing target is never overwritten.
        assert!(matches!(image(&src, &dest), Err(MongoError::Image { .. })));
    }

    /// The image holds the one row that was only in the source's WAL, in rollback-journal mode, and is intact.
    fn assert_self_contained_with_one_log_row(dest: &Path) {
        let copy = Connection::open(dest).unwrap();
        let n: i64 = copy
            .query_row("SELECT count(*) FROM log", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        let mode: String = copy
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "delete");
        let check: String = copy
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }

    /// [`ImageStream`] written to a file, as the repository would store it.
    fn stream_to(src: &Path, dest: &Path) -> Result<u64> {
        let mut stream = ImageStream::open(src)?;
        let size = stream.size();
        let mut out = std::fs::File::create_new(dest).unwrap();
        let n = std::io::copy(&mut stream, &mut out).map_err(|e| MongoError::Image {
            file: "test".into(),
            detail: e.to_string(),
        })?;
        assert_eq!(n, size);
        Ok(n)
    }

    #[test]
    fn this_build_streams_images() {
        // .cargo/config.toml turns sqlite_dbpage on; without it every backup would take the slower scratch path.
        assert!(has_page_reader());
    }

    #[test]
    fn stream_includes_uncheckpointed_wal_and_is_self_contained() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("shop.sqlite");
        let c = wal_db(&src);
        c.execute("INSERT INTO log(payload) VALUES ('only in the WAL')", [])
            .unwrap();
        let dest = dir.path().join("image.sqlite");
        let size = stream_to(&src, &dest).unwrap();
        assert_eq!(size, std::fs::metadata(&dest).unwrap().len());
        assert_self_contained_with_one_log_row(&dest);
        // The source is untouched and still in WAL mode.
        let mode: String = c
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn a_consumer_that_stops_early_releases_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("big.sqlite");
        let c = wal_db(&src);
        c.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000) \
             INSERT INTO log(payload) SELECT printf('%.500c', 'x') FROM n;",
        )
        .unwrap();
        let mut stream = ImageStream::open(&src).unwrap();
        let mut first = [0u8; 100];
        stream.read_exact(&mut first).unwrap();
        assert_eq!(&first[..16], b"SQLite format 3\0");
        drop(stream);
        // The reading thread ended its read transaction: a checkpoint can reset the whole WAL.
        let mut ok = false;
        for _ in 0..100 {
            let busy: i64 = c
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
                .unwrap();
            if busy == 0 {
                ok = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(ok, "the abandoned image still holds its read transaction");
    }

    #[test]
    fn image_under_concurrent_writes_is_one_commit() {
        concurrent_writes_each_image_is_one_commit(image);
    }

    #[test]
    fn stream_under_concurrent_writes_is_one_commit() {
        concurrent_writes_each_image_is_one_commit(stream_to);
    }

    fn concurrent_writes_each_image_is_one_commit(take: impl Fn(&Path, &Path) -> Result<u64>) {
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
            take(&src, &dest).unwrap();
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
