//! Crate tests: the conformance suite on every built-in backend, plus upload failure modes
//! that need a fault-injecting store.

use std::io::Write;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::FutureExt;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::conformance::{conformance, pseudo_random};
use crate::upload::MIN_PART_SIZE;
use crate::{RepoError, RepoPath, Repository, UploadOptions};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_memory() {
    conformance(&Repository::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_local() -> TestResult {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("repo/nested"); // created by `local`
    let repo = Repository::local(&root)?;
    conformance(&repo).await;
    // Nothing left on disk: no staging files, no empty directories.
    let leftovers = walk(&root)?;
    assert!(leftovers.is_empty(), "left on disk: {leftovers:?}");
    Ok(())
}

fn test_key() -> std::sync::Arc<crate::encrypted::MasterKey> {
    std::sync::Arc::new(crate::encrypted::MasterKey::from_bytes(&[0x42; 32]))
}

/// Client-side encryption is transparent: the whole suite passes over sealed stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_encrypted_memory_and_local() -> TestResult {
    conformance(&Repository::memory().with_encryption(test_key())).await;
    let dir = tempfile::tempdir()?;
    let repo = Repository::local(dir.path())?.with_encryption(test_key());
    conformance(&repo).await;
    assert!(walk(dir.path())?.is_empty());
    Ok(())
}

/// The single-threaded runtime (`#[tokio::test]` default) must work too: the uploader and the
/// producer must not need a second worker.
#[tokio::test]
async fn conformance_memory_current_thread() {
    conformance(&Repository::memory()).await;
}

/// Files and directories under `root`, relative.
fn walk(root: &std::path::Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            out.push(
                path.strip_prefix(root)
                    .unwrap_or(&path)
                    .display()
                    .to_string(),
            );
            if entry.file_type()?.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_layout_on_disk() -> TestResult {
    let dir = tempfile::tempdir()?;
    let repo = Repository::local(dir.path())?;
    let prefix = Repository::backup_prefix("dds-1", 7);
    repo.put(&prefix.join("a b/100%.bson")?, Bytes::from_static(b"x"))
        .await?;
    // The key is the relative file name, verbatim.
    let on_disk = dir.path().join("backups/dds-1/7/a b/100%.bson");
    assert_eq!(std::fs::read(&on_disk)?, b"x");

    // An interrupted local upload leaves a hidden staging file only while it runs.
    let path = prefix.join("big")?;
    let (mut w, h) = repo.upload(&path, UploadOptions::default());
    let producer = tokio::task::spawn_blocking(move || w.write_all(&[1u8; 100]));
    producer.await??;
    h.abort().await;
    assert!(walk(&dir.path().join("backups/dds-1/7"))?
        .iter()
        .all(|f| !f.contains('#')));
    assert_eq!(repo.list(&prefix).await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn local_creates_and_rejects() -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"")?;
    assert!(Repository::local(&file.join("sub")).is_err());
    Ok(())
}

// ---- upload failure modes ----

/// An in-memory store whose multipart uploads can fail or stall (fault injection).
#[derive(Debug, Default)]
struct FaultyStore {
    inner: InMemory,
    /// Part number (0-based) whose upload fails, if any.
    fail_part: Option<usize>,
    /// If set, every part upload first takes a permit from here (so parts can be stalled).
    gate: Option<Arc<Semaphore>>,
    aborts: Arc<AtomicUsize>,
    /// Every deleted location, in order.
    deletes: Arc<std::sync::Mutex<Vec<String>>>,
}

impl std::fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FaultyStore")
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Ok(Box::new(FaultyUpload {
            inner: self.inner.put_multipart_opts(location, opts).await?,
            next_part: 0,
            fail_part: self.fail_part,
            gate: self.gate.clone(),
            aborts: Arc::clone(&self.aborts),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_range(&self, location: &Path, range: Range<u64>) -> object_store::Result<Bytes> {
        self.inner.get_range(location, range).await
    }

    async fn delete(&self, location: &Path) -> object_store::Result<()> {
        if let Ok(mut log) = self.deletes.lock() {
            log.push(location.to_string());
        }
        self.inner.delete(location).await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.inner.copy_if_not_exists(from, to).await
    }
}

#[derive(Debug)]
struct FaultyUpload {
    inner: Box<dyn MultipartUpload>,
    next_part: usize,
    fail_part: Option<usize>,
    gate: Option<Arc<Semaphore>>,
    aborts: Arc<AtomicUsize>,
}

#[async_trait]
impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let n = self.next_part;
        self.next_part += 1;
        let inner = self.inner.put_part(data);
        let fail = self.fail_part == Some(n);
        let gate = self.gate.clone();
        async move {
            if let Some(gate) = gate {
                let _permit = gate.acquire().await;
            }
            if fail {
                return Err(object_store::Error::Generic {
                    store: "FaultyStore",
                    source: format!("injected failure of part {n}").into(),
                });
            }
            inner.await
        }
        .boxed()
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.aborts.fetch_add(1, Ordering::SeqCst);
        self.inner.abort().await
    }
}

fn small_parts() -> UploadOptions {
    UploadOptions::default()
        .with_part_size(MIN_PART_SIZE)
        .with_chunk_size(256 * 1024)
        .with_channel_capacity(2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_error_surfaces_to_writer_and_finish() -> TestResult {
    let store = Arc::new(FaultyStore {
        fail_part: Some(1),
        ..Default::default()
    });
    let aborts = Arc::clone(&store.aborts);
    let repo = Repository::from_store(store);
    let path = RepoPath::new("x/failing")?;
    let (mut w, h) = repo.upload(&path, small_parts());
    let producer = tokio::task::spawn_blocking(move || -> Result<u64, String> {
        let chunk = pseudo_random(1, 64 * 1024);
        // Far more than the memory bound: the writer must hit the error, not block forever.
        for _ in 0..(64 * 16) {
            if let Err(e) = w.write_all(&chunk) {
                return Ok(w.bytes_written()).and_then(|n| {
                    if e.to_string().contains("injected failure of part 1") {
                        Ok(n)
                    } else {
                        Err(format!("unexpected writer error: {e}"))
                    }
                });
            }
        }
        Err("writer never saw the store error".into())
    });
    let finished = h.finish().await;
    let written = producer.await??;
    assert!(
        written > MIN_PART_SIZE as u64,
        "failed too early: {written}"
    );
    match finished {
        Err(e @ RepoError::Store(_)) => {
            assert!(!e.is_permanent(), "a generic store error is retryable");
            assert!(e.to_string().contains("injected failure of part 1"), "{e}");
        }
        other => panic!("finish returned {other:?}"),
    }
    assert_eq!(
        aborts.load(Ordering::SeqCst),
        1,
        "multipart upload not aborted"
    );
    assert!(matches!(
        repo.head(&path).await,
        Err(RepoError::NotFound { .. })
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_bounded_while_the_store_stalls() -> TestResult {
    let gate = Arc::new(Semaphore::new(0));
    let store = Arc::new(FaultyStore {
        gate: Some(Arc::clone(&gate)),
        ..Default::default()
    });
    let repo = Repository::from_store(store);
    let path = RepoPath::new("x/stalled")?;
    let opts = small_parts();
    let bound = opts.memory_bound() as u64;
    assert_eq!(bound, 4 * 256 * 1024 + 5 * 1024 * 1024);
    let (mut w, h) = repo.upload(&path, opts);
    let accepted = Arc::new(AtomicU64::new(0));
    let accepted_in_producer = Arc::clone(&accepted);
    let total = 3 * MIN_PART_SIZE + 17;
    let producer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let data = pseudo_random(2, total);
        for piece in data.chunks(10_000) {
            w.write_all(piece)?;
            accepted_in_producer.store(w.bytes_written(), Ordering::SeqCst);
        }
        w.close()
    });
    let finish = tokio::spawn(h.finish());
    // Let the producer run into the backpressure.
    let mut last = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = accepted.load(Ordering::SeqCst);
        if now == last && now > 0 {
            break;
        }
        last = now;
    }
    let stalled_at = accepted.load(Ordering::SeqCst);
    // The first part must have been started (and stalled) before the writer blocked.
    assert!(
        stalled_at >= MIN_PART_SIZE as u64,
        "producer stopped early: {stalled_at}"
    );
    assert!(
        stalled_at <= bound,
        "writer accepted {stalled_at} bytes with the store stalled; bound is {bound}"
    );
    gate.add_permits(1000);
    producer.await??;
    let uploaded = finish.await??;
    assert_eq!(uploaded.size, total as u64);
    assert_eq!(repo.head(&path).await?.size, total as u64);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_token_aborts() -> TestResult {
    let repo = Repository::memory();
    let path = RepoPath::new("x/cancelled")?;
    let cancel = CancellationToken::new();
    let (mut w, h) = repo.upload(&path, small_parts().with_cancel(cancel.clone()));
    let producer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        w.write_all(&pseudo_random(3, 1_000_000))?;
        w.close()
    });
    producer.await??;
    // Closed cleanly, but cancelled before finish: nothing is published.
    cancel.cancel();
    let finished = h.finish().await;
    assert!(
        matches!(finished, Err(RepoError::Cancelled)),
        "{finished:?}"
    );
    assert!(matches!(
        repo.head(&path).await,
        Err(RepoError::NotFound { .. })
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_handle_aborts() -> TestResult {
    let store = Arc::new(FaultyStore::default());
    let aborts = Arc::clone(&store.aborts);
    let repo = Repository::from_store(store);
    let path = RepoPath::new("x/orphan")?;
    let (mut w, h) = repo.upload(&path, small_parts());
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let producer = tokio::task::spawn_blocking(move || -> bool {
        let chunk = [0u8; 64 * 1024];
        let mut started = Some(started_tx);
        for _ in 0..(64 * 16) {
            if w.write_all(&chunk).is_err() {
                return true;
            }
            // Signal once at least one part has been handed to the store.
            if w.bytes_written() > 2 * MIN_PART_SIZE as u64 {
                if let Some(tx) = started.take() {
                    let _ = tx.send(());
                }
            }
        }
        false
    });
    let _ = started_rx.await;
    drop(h);
    assert!(
        producer.await?,
        "writer kept accepting data after the handle was dropped"
    );
    assert_eq!(aborts.load(Ordering::SeqCst), 1);
    assert!(matches!(
        repo.head(&path).await,
        Err(RepoError::NotFound { .. })
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_finish_future_aborts() -> TestResult {
    let repo = Repository::memory();
    let path = RepoPath::new("x/timeout")?;
    let (mut w, h) = repo.upload(&path, small_parts());
    // finish() times out while the producer has not closed: the upload is aborted.
    let timed_out = tokio::time::timeout(Duration::from_millis(50), h.finish()).await;
    assert!(timed_out.is_err());
    let producer = tokio::task::spawn_blocking(move || -> bool {
        let chunk = [0u8; 64 * 1024];
        (0..(64 * 16)).any(|_| w.write_all(&chunk).is_err())
    });
    assert!(producer.await?);
    assert!(repo.list(&RepoPath::new("x")?).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn delete_prefix_removes_manifests_first() -> TestResult {
    let store = Arc::new(FaultyStore::default());
    let deletes = Arc::clone(&store.deletes);
    let repo = Repository::from_store(store);
    let instance = Repository::instance_prefix("i");
    for id in [1, 2] {
        let prefix = Repository::backup_prefix("i", id);
        for name in ["a", "manifest.json", "z/z"] {
            repo.put(&prefix.join(name)?, Bytes::from_static(b"x"))
                .await?;
        }
    }
    assert_eq!(repo.delete_prefix(&instance).await?, 6);
    let log = deletes.lock().map_err(|e| e.to_string())?.clone();
    assert_eq!(log.len(), 6);
    assert!(
        log[..2].iter().all(|l| l.ends_with("/manifest.json")),
        "delete order: {log:?}"
    );
    Ok(())
}

#[test]
fn public_types_are_thread_safe() {
    fn send_static<T: Send + 'static>() {}
    fn send_sync<T: Send + Sync + 'static>() {}
    send_static::<crate::UploadWriter>();
    send_static::<crate::UploadHandle>();
    send_sync::<Repository>();
    send_sync::<RepoError>();
    send_sync::<RepoPath>();
}

#[test]
fn options_are_clamped() {
    let o = UploadOptions::default()
        .with_part_size(1)
        .with_chunk_size(usize::MAX)
        .with_channel_capacity(0)
        .with_max_in_flight_parts(0);
    // part 5 MiB, chunk = part, 1 slot, 1 part in flight
    assert_eq!(o.memory_bound(), 3 * MIN_PART_SIZE + MIN_PART_SIZE);
    assert_eq!(
        UploadOptions::default().memory_bound(),
        6 * 1024 * 1024 + 8 * 1024 * 1024
    );
}

#[tokio::test]
async fn writer_after_close_error_is_poisoned() -> TestResult {
    // Using the writer after the uploader failed keeps failing (poisoned), and close reports it.
    let repo = Repository::memory();
    let cancel = CancellationToken::new();
    let (mut w, h) = repo.upload(
        &RepoPath::new("x/y")?,
        UploadOptions::default().with_cancel(cancel.clone()),
    );
    cancel.cancel();
    h.abort().await;
    let r = tokio::task::spawn_blocking(move || {
        let first = w.write_all(&[0u8; 2 * 1024 * 1024]).is_err();
        let second = w.write(&[0u8; 1]).is_err();
        (first, second, w.close().is_err())
    })
    .await?;
    assert_eq!(r, (true, true, true));
    Ok(())
}
