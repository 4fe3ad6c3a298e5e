//! Local-directory store: `object_store`'s `LocalFileSystem` plus fsync.
//!
//! `LocalFileSystem` already makes writes atomic (stage to `<name>#<n>`, then `rename(2)`),
//! but it never calls `fsync`: after a power loss a file that was reported written may be
//! missing or empty. This wrapper fsyncs the file and its parent directories (up to the
//! repository root) after every write, copy, rename and multipart completion, so a
//! successful return means the object is durable. It is the only code in the crate that knows
//! about local files.

use std::fmt;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result, UploadPart,
};

/// `LocalFileSystem` that fsyncs what it writes. See the module docs.
#[derive(Debug)]
pub(crate) struct DurableLocalFs {
    inner: Arc<LocalFileSystem>,
    /// Canonical root directory; ancestors are synced up to and including it.
    root: PathBuf,
}

impl DurableLocalFs {
    pub(crate) fn new(dir: &FsPath) -> Result<Self> {
        let root = std::fs::canonicalize(dir).map_err(io_error)?;
        let inner = LocalFileSystem::new_with_prefix(&root)?.with_automatic_cleanup(true);
        Ok(Self {
            inner: Arc::new(inner),
            root,
        })
    }

    /// Syncs the object at `location` and its directories.
    async fn sync(&self, location: &Path) -> Result<()> {
        let file = self.inner.path_to_filesystem(location)?;
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || sync_file_and_parents(&file, &root))
            .await
            .map_err(|e| object_store::Error::JoinError { source: e })?
            .map_err(io_error)
    }

    /// Removes the directories of `location` that became empty (like `LocalFileSystem`'s
    /// automatic cleanup does on delete), so renames out of staging and aborted uploads leave
    /// no empty directory trees behind. Best effort: a directory that is not empty, or that a
    /// concurrent writer re-populates, simply stays.
    async fn remove_empty_parents(&self, location: &Path) {
        let Ok(file) = self.inner.path_to_filesystem(location) else {
            return;
        };
        let root = self.root.clone();
        let _ = tokio::task::spawn_blocking(move || remove_empty_parents(&file, &root)).await;
    }

    /// Syncs the directories of `location` only (after its file was removed or renamed away).
    async fn sync_parents(&self, location: &Path) -> Result<()> {
        let file = self.inner.path_to_filesystem(location)?;
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || sync_parents(&file, &root))
            .await
            .map_err(|e| object_store::Error::JoinError { source: e })?
            .map_err(io_error)
    }
}

/// A `put` carrying this extension is atomic (staged and renamed) but not yet durable: the writer calls
/// [`sync_filesystem`] once after a batch of such puts (many small chunk files, where an fsync of each file and
/// its directories would cost more than writing them).
#[derive(Clone, Copy, Debug)]
pub(crate) struct DeferSync;

/// Makes everything written under `root` durable with one `syncfs(2)` (data and metadata of the whole
/// filesystem, directory entries included).
pub(crate) async fn sync_filesystem(root: &FsPath) -> std::io::Result<()> {
    let root = root.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let dir = std::fs::File::open(&root)?;
        rustix::fs::syncfs(&dir).map_err(std::io::Error::from)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// fsyncs run at once by [`sync_files`]: the filesystem's journal commits them together.
const SYNCS_IN_FLIGHT: usize = 16;

/// Makes `files` (under `root`) durable with an fsync each, and their directories up to `root` with one each (the
/// renames that published the files, and any directory created for them). All of it before returning.
pub(crate) async fn sync_files(root: &FsPath, files: Vec<PathBuf>) -> std::io::Result<()> {
    use futures::StreamExt;
    let mut dirs = std::collections::BTreeSet::new();
    for file in &files {
        for dir in file.ancestors().skip(1) {
            if !dir.starts_with(root) {
                break;
            }
            dirs.insert(dir.to_path_buf());
            if dir == root {
                break;
            }
        }
    }
    let mut syncs = futures::stream::iter(files.into_iter().chain(dirs).map(|p| {
        tokio::task::spawn_blocking(move || {
            std::fs::File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(|e| std::io::Error::new(e.kind(), format!("sync {}: {e}", p.display())))
        })
    }))
    .buffer_unordered(SYNCS_IN_FLIGHT);
    while let Some(done) = syncs.next().await {
        done.map_err(std::io::Error::other)??;
    }
    Ok(())
}

fn io_error(e: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "LocalFileSystem",
        source: Box::new(e),
    }
}

fn sync_file_and_parents(file: &FsPath, root: &FsPath) -> std::io::Result<()> {
    std::fs::File::open(file)?.sync_all()?;
    sync_parents(file, root)
}

fn remove_empty_parents(file: &FsPath, root: &FsPath) {
    for dir in file.ancestors().skip(1) {
        if dir == root || !dir.starts_with(root) || std::fs::remove_dir(dir).is_err() {
            break;
        }
    }
}

fn sync_parents(file: &FsPath, root: &FsPath) -> std::io::Result<()> {
    // A freshly created directory chain needs every new entry persisted, so sync each ancestor
    // up to the root (a handful of directories).
    for dir in file.ancestors().skip(1) {
        if !dir.starts_with(root) {
            break;
        }
        match std::fs::File::open(dir) {
            Ok(d) => d.sync_all()?,
            // Removed concurrently by empty-directory cleanup: nothing left to persist.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if dir == root {
            break;
        }
    }
    Ok(())
}

impl fmt::Display for DurableLocalFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DurableLocalFs({})", self.root.display())
    }
}

#[async_trait]
impl ObjectStore for DurableLocalFs {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let deferred = opts.extensions.get::<DeferSync>().is_some();
        let result = self.inner.put_opts(location, payload, opts).await?;
        if !deferred {
            self.sync(location).await?;
        }
        Ok(result)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(DurableUpload {
            inner,
            file: self.inner.path_to_filesystem(location)?,
            root: self.root.clone(),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_range(&self, location: &Path, range: Range<u64>) -> Result<Bytes> {
        self.inner.get_range(location, range).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    async fn head(&self, location: &Path) -> Result<ObjectMeta> {
        self.inner.head(location).await
    }

    async fn delete(&self, location: &Path) -> Result<()> {
        // Deletes are not synced: a delete that is lost in a crash is simply retried by
        // retention, and syncing every directory of a large backup is costly.
        self.inner.delete(location).await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        self.inner.copy(from, to).await?;
        self.sync(to).await
    }

    async fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        self.inner.rename(from, to).await?;
        self.sync(to).await?;
        self.remove_empty_parents(from).await;
        self.sync_parents(from).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        self.inner.copy_if_not_exists(from, to).await?;
        self.sync(to).await
    }

    async fn rename_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        self.inner.rename_if_not_exists(from, to).await?;
        self.sync(to).await?;
        self.remove_empty_parents(from).await;
        self.sync_parents(from).await
    }
}

/// A local multipart upload whose completion is synced.
#[derive(Debug)]
struct DurableUpload {
    inner: Box<dyn MultipartUpload>,
    file: PathBuf,
    root: PathBuf,
}

#[async_trait]
impl MultipartUpload for DurableUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let result = self.inner.complete().await?;
        let file = self.file.clone();
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || sync_file_and_parents(&file, &root))
            .await
            .map_err(|e| object_store::Error::JoinError { source: e })?
            .map_err(io_error)?;
        Ok(result)
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await?;
        let file = self.file.clone();
        let root = self.root.clone();
        let _ = tokio::task::spawn_blocking(move || remove_empty_parents(&file, &root)).await;
        Ok(())
    }
}

/// Removes the staging files of uploads that never completed (`<name>#<digits>`, written by
/// `LocalFileSystem` and left behind by a crash) under `dir`, then the directories that became
/// empty. Returns how many files were removed. A missing `dir` is not an error.
pub(crate) fn remove_abandoned_uploads(dir: &FsPath) -> std::io::Result<u64> {
    fn is_abandoned(name: &str) -> bool {
        matches!(name.rsplit_once('#'), Some((base, n)) if !base.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }
    fn walk(dir: &FsPath, removed: &mut u64) -> std::io::Result<()> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                walk(&path, removed)?;
                // Best effort: a directory that still holds something stays.
                let _ = std::fs::remove_dir(&path);
            } else if entry.file_name().to_str().is_some_and(is_abandoned) {
                std::fs::remove_file(&path)?;
                *removed += 1;
            }
        }
        Ok(())
    }
    let mut removed = 0;
    walk(dir, &mut removed)?;
    let _ = std::fs::remove_dir(dir);
    Ok(removed)
}

#[cfg(test)]
mod abandoned_tests {
    use crate::{RepoPath, Repository};

    #[tokio::test]
    async fn delete_prefix_removes_abandoned_upload_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::local(dir.path()).expect("local repo");
        let staged = dir.path().join("staging").join("job-7");
        std::fs::create_dir_all(&staged).expect("mkdir");
        // What a crash in the middle of a multipart upload leaves: invisible to the store.
        std::fs::write(staged.join("archive.zst#1"), b"partial").expect("write");
        // A real object whose name merely contains '#' is not an upload leftover of another prefix.
        let keep = RepoPath::new("staging/job-8/a#b").expect("path");
        repo.put(&keep, bytes::Bytes::from_static(b"x"))
            .await
            .expect("put");
        let removed = repo
            .delete_prefix(&RepoPath::new("staging/job-7").expect("path"))
            .await
            .expect("delete");
        assert_eq!(removed, 1);
        assert!(
            !staged.exists(),
            "the abandoned file and its directory are gone"
        );
        assert_eq!(repo.get(&keep).await.expect("kept").as_ref(), b"x");
    }
}

#[cfg(test)]
mod deferred_tests {
    use crate::{RepoPath, Repository};

    #[tokio::test]
    async fn deferred_puts_are_whole_at_once_and_synced_together() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::local(dir.path()).expect("local repo");
        let paths: Vec<RepoPath> = (0..20)
            .map(|i| RepoPath::new(format!("chunks/dds-d/{:02x}/c{i}", i % 4)).expect("path"))
            .collect();
        for (i, p) in paths.iter().enumerate() {
            repo.put_deferred(p, bytes::Bytes::from(format!("chunk {i}")))
                .await
                .expect("put");
        }
        // Visible and complete before the sync (atomic rename); no staging file is left beside them.
        for (i, p) in paths.iter().enumerate() {
            assert_eq!(
                repo.get(p).await.expect("get").as_ref(),
                format!("chunk {i}").as_bytes()
            );
        }
        let leftovers = walk(dir.path())
            .into_iter()
            .filter(|f| f.to_string_lossy().contains('#'))
            .count();
        assert_eq!(leftovers, 0);
        repo.sync_deferred().await.expect("syncfs");
        // A repository that is not local has nothing to sync.
        Repository::memory()
            .sync_deferred()
            .await
            .expect("memory store");
    }

    #[tokio::test]
    async fn a_few_chunks_are_synced_file_by_file_and_a_missing_one_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::local(dir.path()).expect("repo");
        let mut digests = Vec::new();
        for i in 0..5 {
            let raw = format!("chunk {i}");
            let d = crate::sha256_hex(raw.as_bytes());
            repo.put_chunk("dds-d", &d, bytes::Bytes::from(raw), 3)
                .await
                .expect("put");
            digests.push(d);
        }
        repo.sync_chunks("dds-d", &digests)
            .await
            .expect("fsync each");
        // A chunk that is not there cannot have been made durable: the caller must not name it.
        let absent = crate::sha256_hex(b"never written");
        let e = repo
            .sync_chunks("dds-d", &[digests[0].clone(), absent.clone()])
            .await
            .expect_err("absent");
        assert!(e.to_string().contains(&absent), "{e}");
        // Many chunks take one syncfs; a store that is not local has nothing to sync.
        let many: Vec<String> = (0..=crate::repository::SYNC_EACH_MAX)
            .map(|i| crate::sha256_hex(format!("x{i}").as_bytes()))
            .collect();
        repo.sync_chunks("dds-d", &many).await.expect("syncfs");
        Repository::memory()
            .sync_chunks("dds-d", &digests)
            .await
            .expect("memory store");
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }
}
