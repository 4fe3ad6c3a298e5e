//! Restore of Physical and Snapshot backups: the backup's data files written into a stopped node's data
//! directory (the RestoreDBInstance job). The files come out of the repository through
//! [`ddsvault_repo::export::materialize`], which `ddsvault restore --to-dir` and provisioning share.
//!
//! The job never leaves `data_path` half-written:
//! 1. every file is materialized into `<data_path>/.ddsvault-restore-<job>/` and checked against the manifest
//!    (size and SHA-256 of the whole file; a snapshot's chunks are also checked one by one as they are read);
//! 2. only then, and after checking again that the node is stopped, a journal (`swap.json`) naming the files to
//!    move is written, the node's `*.sqlite`, `*.sqlite-wal` and `*.sqlite-shm` files are moved into
//!    `<data_path>/.ddsvault-replaced-<job>/` (kept for the user to delete) and the restored files are renamed
//!    into place: same file system, so each rename is atomic.
//!
//! The old `-wal`/`-shm` files must go too: the restored files are self-contained databases, and a stale WAL
//! beside them would be replayed over them by SQLite.
//!
//! A failure, or a crash (cleaned up by [`cleanup`] when the runner fails the job), before the swap leaves
//! `data_path` untouched; during or after it the journal lets [`cleanup`] put the replaced files back, so a job
//! that did not end Success never leaves the node with a mix of old and restored files.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ddsvault_catalog::{Backup, Job};
use ddsvault_repo::{export, RepoPath};
use tokio_util::sync::CancellationToken;

use crate::progress::{percent_in, with_heartbeat, Phase, Progress};
use crate::{JobError, Runner};

/// How long the node's address may take to accept a connection before it counts as stopped.
pub const STOPPED_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

const RESTORE_DIR_PREFIX: &str = ".ddsvault-restore-";
const REPLACED_DIR_PREFIX: &str = ".ddsvault-replaced-";
/// Written in the restore directory right before the swap; its presence means `data_path` may be mid-swap.
const JOURNAL: &str = "swap.json";

/// Where a job materializes the backup, inside `data_path` so the final renames stay on one file system.
pub fn restore_dir(data_path: &Path, job_id: i64) -> PathBuf {
    data_path.join(format!("{RESTORE_DIR_PREFIX}{job_id}"))
}

/// Where a job moves the files it replaced.
pub fn replaced_dir(data_path: &Path, job_id: i64) -> PathBuf {
    data_path.join(format!("{REPLACED_DIR_PREFIX}{job_id}"))
}

fn io_err(what: impl std::fmt::Display, path: &Path, e: std::io::Error) -> JobError {
    JobError::Other(format!("{what} {}: {e}", path.display()))
}

/// Whether a file of a FerretDB SQLite data directory is a database or one of its companions: what a file
/// restore replaces.
fn is_database_file(name: &str) -> bool {
    [".sqlite", ".sqlite-wal", ".sqlite-shm"]
        .iter()
        .any(|ext| name.len() > ext.len() && name.ends_with(ext))
}

/// The database files of `data_path` (regular files only), sorted.
fn database_files(data_path: &Path) -> Result<Vec<String>, JobError> {
    let entries =
        std::fs::read_dir(data_path).map_err(|e| io_err("read data directory", data_path, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_err("read data directory", data_path, e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        if is_file && is_database_file(&name) {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// The database files of `data_path` another process holds a lock on, as `name (pid N)`. A running FerretDB
/// keeps a read lock on every database it has open (SQLite's SHARED lock, and the `-shm` "dead man switch"),
/// even when idle, so this finds a running node whatever address it listens on.
///
/// POSIX locks of this process are invisible to F_GETLK, and closing the probe's descriptor would drop them:
/// the only ones ddsvault takes are a backup's reads, which never run beside a restore of the same instance.
///
/// # Errors
/// The directory or a file cannot be read.
pub fn locked_files(data_path: &Path) -> Result<Vec<String>, JobError> {
    use rustix::process::{fcntl_getlk, Flock, FlockType, Pid};
    let mut held = Vec::new();
    for name in database_files(data_path)? {
        let path = data_path.join(&name);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            // Removed since the listing (a node shutting down removes its -shm files).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("open", &path, e)),
        };
        // A write lock over the whole file conflicts with any lock another process holds on any byte of it.
        let probe = Flock::from(FlockType::WriteLock);
        match fcntl_getlk(&file, &probe) {
            Ok(Some(lock)) => held.push(format!("{name} (pid {})", Pid::as_raw(lock.pid))),
            Ok(None) => {}
            Err(e) => return Err(io_err("lock probe on", &path, e.into())),
        }
    }
    Ok(held)
}

/// Checks that the node of `uri`, whose data directory is `data_path`, is stopped: nothing accepts connections
/// at its address and no process holds a lock on its database files.
///
/// # Errors
/// [`JobError::NodeRunning`] saying what answered; [`JobError::NodeStateUnknown`] if it cannot be checked.
pub async fn ensure_stopped(uri: &str, data_path: &Path) -> Result<(), JobError> {
    match ddsvault_mongo::topology::accepts_connections(uri, STOPPED_PROBE_TIMEOUT).await {
        Ok(true) => {
            return Err(JobError::NodeRunning(
                "something accepts connections at its address".into(),
            ))
        }
        Ok(false) => {}
        Err(e) => return Err(JobError::NodeStateUnknown(e.to_string())),
    }
    let dir = data_path.to_path_buf();
    let held = tokio::task::spawn_blocking(move || locked_files(&dir))
        .await
        .map_err(|e| JobError::NodeStateUnknown(format!("lock probe task: {e}")))?
        .map_err(|e| JobError::NodeStateUnknown(e.to_string()))?;
    if !held.is_empty() {
        return Err(JobError::NodeRunning(format!(
            "a process holds its data files open: {}",
            held.join(", ")
        )));
    }
    Ok(())
}

/// Makes renames and creations in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), JobError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("sync", dir, e))
}

/// The journal of a swap: what it moves, so an interrupted swap can be undone.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Journal {
    /// Files of `data_path` moved into the replaced directory.
    old: Vec<String>,
    /// Restored files renamed from the restore directory into `data_path`.
    new: Vec<String>,
}

/// Replaces the database files of `data_path` by the verified files of the job's restore directory. The old
/// files end up in the replaced directory. On failure the swap is undone before returning.
///
/// # Errors
/// I/O errors; `data_path` is then as before (or, if even the undo failed, the error says so).
pub fn swap(data_path: &Path, job_id: i64, new: &[String]) -> Result<PathBuf, JobError> {
    let staged = restore_dir(data_path, job_id);
    let replaced = replaced_dir(data_path, job_id);
    let journal = Journal {
        old: database_files(data_path)?,
        new: new.to_vec(),
    };
    let text =
        serde_json::to_vec(&journal).map_err(|e| JobError::Other(format!("swap journal: {e}")))?;
    let journal_path = staged.join(JOURNAL);
    std::fs::File::create_new(&journal_path)
        .and_then(|mut f| {
            f.write_all(&text)?;
            f.sync_all()
        })
        .map_err(|e| io_err("write", &journal_path, e))?;
    sync_dir(&staged)?;
    let moved = (|| {
        std::fs::create_dir(&replaced).map_err(|e| io_err("create", &replaced, e))?;
        for name in &journal.old {
            let (from, to) = (data_path.join(name), replaced.join(name));
            std::fs::rename(&from, &to).map_err(|e| io_err("move aside", &from, e))?;
        }
        for name in &journal.new {
            let (from, to) = (staged.join(name), data_path.join(name));
            std::fs::rename(&from, &to).map_err(|e| io_err("move into place", &from, e))?;
        }
        sync_dir(&replaced)?;
        sync_dir(data_path)
    })();
    if let Err(e) = moved {
        return Err(match undo(data_path, job_id, &journal) {
            Ok(()) => e,
            Err(u) => JobError::Other(format!(
                "{e}; undoing the swap failed too ({u}): the replaced files are in {}",
                replaced.display()
            )),
        });
    }
    Ok(replaced)
}

/// Puts `data_path` back as it was before a (possibly partial) swap: restored files go back to the restore
/// directory, replaced ones back into `data_path`. Idempotent, so it can be retried after a crash in the middle.
fn undo(data_path: &Path, job_id: i64, journal: &Journal) -> Result<(), JobError> {
    let staged = restore_dir(data_path, job_id);
    let replaced = replaced_dir(data_path, job_id);
    for name in &journal.new {
        let (placed, back) = (data_path.join(name), staged.join(name));
        // Still in the restore directory: never placed. Otherwise the file of that name in data_path is the
        // restored one, unless it is an old file that was not moved aside yet (then its twin is not in the
        // replaced directory and the name is not in the journal's moved set).
        if back.exists() || !placed.exists() {
            continue;
        }
        let old_twin_pending = journal.old.contains(name) && !replaced.join(name).exists();
        if old_twin_pending {
            continue;
        }
        std::fs::rename(&placed, &back).map_err(|e| io_err("undo: move back", &placed, e))?;
    }
    for name in &journal.old {
        let (aside, home) = (replaced.join(name), data_path.join(name));
        if aside.exists() {
            std::fs::rename(&aside, &home).map_err(|e| io_err("undo: restore", &aside, e))?;
        }
    }
    match std::fs::remove_dir(&replaced) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("undo: remove", &replaced, e)),
    }
    sync_dir(data_path)
}

/// Cleans up after a file restore job that did not succeed: an interrupted swap is undone, then the restore
/// directory is removed. Does nothing if the node is running (it may already use the files): the directories
/// are then left for the user, and the reason is logged.
///
/// # Errors
/// I/O errors while undoing.
pub fn cleanup(data_path: &Path, job_id: i64) -> Result<(), JobError> {
    let staged = restore_dir(data_path, job_id);
    if !staged.exists() {
        return Ok(());
    }
    let journal_path = staged.join(JOURNAL);
    match std::fs::read(&journal_path) {
        Ok(text) => {
            let held = locked_files(data_path)?;
            if !held.is_empty() {
                return Err(JobError::NodeRunning(format!(
                    "cannot undo the interrupted swap of restore job {job_id}: a process holds data files open ({})",
                    held.join(", ")
                )));
            }
            let journal: Journal = serde_json::from_slice(&text)
                .map_err(|e| JobError::Other(format!("read {}: {e}", journal_path.display())))?;
            undo(data_path, job_id, &journal)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("read", &journal_path, e)),
    }
    std::fs::remove_dir_all(&staged).map_err(|e| io_err("remove", &staged, e))
}

/// The RestoreDBInstance job of a Physical or Snapshot backup into the stopped node of `job.instance_id`.
pub(crate) async fn run(
    runner: &Runner,
    job: &Job,
    backup: &Backup,
    cancel: &CancellationToken,
) -> Result<(), JobError> {
    let spec = runner.instance(&job.instance_id)?;
    let data_path = spec.data_path.clone().ok_or_else(|| {
        JobError::Other(format!(
            "restoring a {} backup needs data_path in the configuration of instance {}",
            backup.method, job.instance_id
        ))
    })?;
    ensure_stopped(&spec.uri, &data_path).await?;
    let prefix = RepoPath::new(backup.repo_prefix.clone())?;
    let manifest = crate::integrity::authenticated_manifest(&runner.repo, backup)
        .await?
        .manifest;

    let staged = restore_dir(&data_path, job.id);
    // Left by an earlier attempt of this job that never swapped (cleanup removes it, this is belt and braces).
    if staged.join(JOURNAL).exists() {
        cleanup(&data_path, job.id)?;
    }
    let _ = std::fs::remove_dir_all(&staged);
    std::fs::create_dir(&staged).map_err(|e| io_err("create", &staged, e))?;

    let total = export::restore_size(&runner.repo, &prefix, &manifest).await?;
    let done = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(Progress::new(job.id));
    progress.set_phase(Phase::Restoring);
    let work_cancel = cancel.child_token();
    let work = async {
        let ticker = {
            let (done, progress) = (Arc::clone(&done), Arc::clone(&progress));
            async move {
                #[allow(clippy::infinite_loop)]
                loop {
                    let d = done.load(Ordering::Relaxed);
                    progress.bytes(d, total);
                    progress.set_percent(percent_in(2..95, d, total));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        tokio::select! {
            r = export::materialize(&runner.repo, &prefix, &manifest, &staged, &work_cancel, Arc::clone(&done)) => r.map_err(JobError::from),
            () = ticker => Err(JobError::Other("the progress ticker stopped".into())),
        }
    };
    let materialized = match with_heartbeat(runner, job, &progress, &work_cancel, work).await {
        Ok(Ok(m)) => m,
        Ok(Err(e)) | Err(e) => {
            let _ = std::fs::remove_dir_all(&staged);
            return Err(e);
        }
    };

    // The node may have been started while the files were written.
    if let Err(e) = ensure_stopped(&spec.uri, &data_path).await {
        let _ = std::fs::remove_dir_all(&staged);
        return Err(e);
    }
    let swap_path = data_path.clone();
    let files = materialized.files.clone();
    let job_id = job.id;
    let replaced = tokio::task::spawn_blocking(move || swap(&swap_path, job_id, &files))
        .await
        .map_err(|e| JobError::Other(format!("swap task: {e}")))??;

    let result = serde_json::json!({
        "source_instance": backup.instance_id,
        "backup_id": backup.id,
        "method": backup.method,
        "files": materialized.files,
        "bytes": materialized.bytes,
        "replaced_dir": replaced.display().to_string(),
    });
    // If this fails the runner fails the job and cleanup undoes the swap: the node never keeps restored files
    // under a job that says Failed.
    runner.complete(job, &result).await?;
    if let Err(e) = std::fs::remove_dir_all(&staged) {
        tracing::warn!(dir = %staged.display(), error = %e, "could not remove the restore directory");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) {
        std::fs::write(dir.join(name), body).expect("write");
    }

    fn read(dir: &Path, name: &str) -> String {
        std::fs::read_to_string(dir.join(name)).expect("read")
    }

    /// A data directory with an old database (and its WAL files) and a restore directory holding new files.
    fn prepared(job: i64) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = tmp.path();
        write(d, "shop.sqlite", "old shop");
        write(d, "shop.sqlite-wal", "old wal");
        write(d, "shop.sqlite-shm", "old shm");
        write(d, "gone.sqlite", "old gone");
        write(d, "notes.txt", "not a database");
        let staged = restore_dir(d, job);
        std::fs::create_dir(&staged).expect("mkdir");
        write(&staged, "shop.sqlite", "new shop");
        write(&staged, "fresh.sqlite", "new fresh");
        tmp
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn swap_moves_every_database_file_aside_and_places_the_restored_ones() {
        let tmp = prepared(7);
        let d = tmp.path();
        let new = vec!["shop.sqlite".to_string(), "fresh.sqlite".to_string()];
        let replaced = swap(d, 7, &new).expect("swap");
        assert_eq!(replaced, replaced_dir(d, 7));
        assert_eq!(read(d, "shop.sqlite"), "new shop");
        assert_eq!(read(d, "fresh.sqlite"), "new fresh");
        assert!(!d.join("gone.sqlite").exists());
        assert!(!d.join("shop.sqlite-wal").exists() && !d.join("shop.sqlite-shm").exists());
        assert_eq!(read(d, "notes.txt"), "not a database");
        assert_eq!(
            names(&replaced),
            [
                "gone.sqlite",
                "shop.sqlite",
                "shop.sqlite-shm",
                "shop.sqlite-wal"
            ]
        );
        assert_eq!(read(&replaced, "shop.sqlite"), "old shop");
        // Only the journal is left in the restore directory; cleanup of a SUCCESSFUL job is not called, but
        // the job removes that directory itself.
        assert_eq!(names(&restore_dir(d, 7)), [JOURNAL]);
    }

    #[test]
    fn cleanup_undoes_a_complete_or_interrupted_swap() {
        // Complete swap, then the job failed to record success.
        let tmp = prepared(8);
        let d = tmp.path();
        let new = vec!["shop.sqlite".to_string(), "fresh.sqlite".to_string()];
        swap(d, 8, &new).expect("swap");
        cleanup(d, 8).expect("cleanup");
        assert_eq!(
            names(d),
            [
                "gone.sqlite",
                "notes.txt",
                "shop.sqlite",
                "shop.sqlite-shm",
                "shop.sqlite-wal"
            ]
        );
        assert_eq!(read(d, "shop.sqlite"), "old shop");

        // A crash halfway: the journal written, one old file moved aside, nothing placed yet.
        let tmp = prepared(9);
        let d = tmp.path();
        let journal = Journal {
            old: database_files(d).expect("ls"),
            new: new.clone(),
        };
        std::fs::write(
            restore_dir(d, 9).join(JOURNAL),
            serde_json::to_vec(&journal).expect("json"),
        )
        .expect("journal");
        std::fs::create_dir(replaced_dir(d, 9)).expect("mkdir");
        std::fs::rename(
            d.join("gone.sqlite"),
            replaced_dir(d, 9).join("gone.sqlite"),
        )
        .expect("mv");
        cleanup(d, 9).expect("cleanup");
        assert_eq!(read(d, "gone.sqlite"), "old gone");
        assert_eq!(read(d, "shop.sqlite"), "old shop");
        assert!(!d.join("fresh.sqlite").exists());
        assert!(!restore_dir(d, 9).exists() && !replaced_dir(d, 9).exists());

        // A crash after every old file moved and one restored file placed.
        let tmp = prepared(10);
        let d = tmp.path();
        let journal = Journal {
            old: database_files(d).expect("ls"),
            new,
        };
        std::fs::write(
            restore_dir(d, 10).join(JOURNAL),
            serde_json::to_vec(&journal).expect("json"),
        )
        .expect("journal");
        std::fs::create_dir(replaced_dir(d, 10)).expect("mkdir");
        for n in &journal.old {
            std::fs::rename(d.join(n), replaced_dir(d, 10).join(n)).expect("mv");
        }
        std::fs::rename(
            restore_dir(d, 10).join("shop.sqlite"),
            d.join("shop.sqlite"),
        )
        .expect("mv");
        cleanup(d, 10).expect("cleanup");
        assert_eq!(read(d, "shop.sqlite"), "old shop");
        assert_eq!(read(d, "shop.sqlite-wal"), "old wal");
        assert!(!d.join("fresh.sqlite").exists());
        assert!(!restore_dir(d, 10).exists() && !replaced_dir(d, 10).exists());
    }

    #[test]
    fn cleanup_before_the_swap_only_removes_the_restore_directory() {
        let tmp = prepared(11);
        let d = tmp.path();
        let before = names(d);
        cleanup(d, 11).expect("cleanup");
        let mut expected = before;
        expected.retain(|n| !n.starts_with(RESTORE_DIR_PREFIX));
        assert_eq!(names(d), expected);
        assert_eq!(read(d, "shop.sqlite"), "old shop");
        cleanup(d, 11).expect("nothing left to do");
    }

    #[test]
    fn database_files_are_the_sqlite_files_and_their_companions() {
        for yes in ["a.sqlite", "a.sqlite-wal", "a.sqlite-shm"] {
            assert!(is_database_file(yes), "{yes}");
        }
        for no in [
            ".sqlite",
            "a.sqlite.partial",
            "a.db",
            "swap.json",
            "a.sqlite-journal",
        ] {
            assert!(!is_database_file(no), "{no}");
        }
    }

    /// Run by [`a_lock_held_by_another_process_is_found`] in a child process: holds a POSIX read lock on the
    /// file named by the environment until its stdin closes.
    #[test]
    #[ignore = "helper process of a_lock_held_by_another_process_is_found"]
    fn hold_lock_helper() {
        use rustix::fs::{fcntl_lock, FlockOperation};
        let Ok(path) = std::env::var("DDSVAULT_TEST_LOCK_FILE") else {
            return;
        };
        let file = std::fs::File::open(path).expect("open");
        fcntl_lock(&file, FlockOperation::NonBlockingLockShared).expect("lock");
        println!("LOCKED");
        std::io::stdout().flush().expect("flush");
        let mut sink = String::new();
        let _ = std::io::stdin().read_line(&mut sink);
    }

    #[test]
    fn a_lock_held_by_another_process_is_found() {
        use std::io::BufRead;
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = tmp.path();
        write(d, "shop.sqlite", "db");
        write(d, "shop.sqlite-shm", "shm");
        write(d, "other.sqlite", "db");
        assert!(locked_files(d).expect("probe").is_empty());

        let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args([
                "--exact",
                "restore::files::tests::hold_lock_helper",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("DDSVAULT_TEST_LOCK_FILE", d.join("shop.sqlite-shm"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn helper");
        let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut locked = false;
        let mut line = String::new();
        while !locked && out.read_line(&mut line).unwrap_or(0) > 0 {
            locked = line.contains("LOCKED");
            line.clear();
        }
        assert!(locked, "the helper took its lock");
        let held = locked_files(d).expect("probe");
        let pid = child.id();
        drop(child.stdin.take());
        // Read the helper's output to its end, so it never writes into a closed pipe.
        let _ = std::io::copy(&mut out, &mut std::io::sink());
        let _ = child.wait();
        assert_eq!(held, [format!("shop.sqlite-shm (pid {pid})")]);
        assert!(locked_files(d).expect("probe").is_empty(), "released");
    }

    #[tokio::test]
    async fn a_node_without_listener_or_locks_is_stopped() {
        let tmp = tempfile::tempdir().expect("tempdir");
        write(tmp.path(), "shop.sqlite", "db");
        // A port nobody listens on: bind one, note it, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let uri = format!("mongodb://127.0.0.1:{port}/");
        ensure_stopped(&uri, tmp.path()).await.expect("stopped");

        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("rebind");
        let e = ensure_stopped(&uri, tmp.path())
            .await
            .expect_err("something listens");
        assert!(matches!(e, JobError::NodeRunning(_)), "{e}");
        drop(listener);

        let e = ensure_stopped("not a uri", tmp.path())
            .await
            .expect_err("cannot tell");
        assert!(e.to_string().contains("cannot check"), "{e}");
    }
}
