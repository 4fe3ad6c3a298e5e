//! A fault-injecting wrapper around a repository's store, for tests only (cargo feature `fault-injection`, off
//! in production builds): it fails chosen operations — the Nth put, multipart part, get, list, delete or rename,
//! or every write once N bytes were written — with an I/O error such as "No space left on device", so the job
//! tests can prove that an error at each stage of a backup, restore or collector pass fails the job cleanly
//! (issue 17, docs/reliability.md).
//!
//! ```ignore
//! let faults = Arc::new(FaultPlan::default());
//! let repo = Repository::local(dir)?.with_faults(Arc::clone(&faults));
//! faults.fail(FaultOp::PutPart, 3, u64::MAX, FaultKind::NoSpace); // the 3rd part and every later one
//! faults.clear();                                                  // the disk was freed
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result, UploadPart,
};

/// The operations a fault can hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultOp {
    /// A whole-object write (`put`, including chunk writes and manifests).
    Put,
    /// One part of a multipart (streamed) upload, or its completion.
    PutPart,
    /// A read (`get`, ranged or whole, and `head`).
    Get,
    /// A listing.
    List,
    /// A delete.
    Delete,
    /// A rename or copy (publishing a staged file).
    Rename,
}

const OPS: usize = 6;

impl FaultOp {
    fn index(self) -> usize {
        self as usize
    }
}

/// The error an injected fault raises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// `ENOSPC`: "No space left on device (os error 28)".
    NoSpace,
    /// `EIO`: "Input/output error (os error 5)".
    Io,
}

impl FaultKind {
    fn error(&self, op: FaultOp, location: &Path) -> object_store::Error {
        let io = match self {
            FaultKind::NoSpace => std::io::Error::from_raw_os_error(28),
            FaultKind::Io => std::io::Error::from_raw_os_error(5),
        };
        object_store::Error::Generic {
            store: "FaultInjection",
            source: Box::new(std::io::Error::new(
                io.kind(),
                format!("injected fault on {op:?} of {location}: {io}"),
            )),
        }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    op: FaultOp,
    /// 1-based: the rule fires from the `from`-th operation of its kind counted since it was set.
    from: u64,
    /// How many operations it fails before it stops (`u64::MAX`: until cleared).
    times: u64,
    kind: FaultKind,
    seen: u64,
    fired: u64,
}

/// What to fail, shared between a test and the store it wraps. Cheap to check; every counter is atomic or
/// behind a short lock.
#[derive(Debug, Default)]
pub struct FaultPlan {
    rules: Mutex<Vec<Rule>>,
    /// Bytes written (puts and parts) since the last [`FaultPlan::clear`].
    written: AtomicU64,
    /// Writes fail once `written` would exceed this (`0`: no limit).
    byte_limit: AtomicU64,
    calls: [AtomicU64; OPS],
    injected: AtomicU64,
}

impl FaultPlan {
    /// Fails `times` operations of kind `op`, starting with the `nth` one (1-based) from now.
    pub fn fail(&self, op: FaultOp, nth: u64, times: u64, kind: FaultKind) {
        if let Ok(mut rules) = self.rules.lock() {
            rules.push(Rule {
                op,
                from: nth.max(1),
                times,
                kind,
                seen: 0,
                fired: 0,
            });
        }
    }

    /// Fails every write (put or part) that would take the bytes written from now beyond `limit` with
    /// "No space left on device": a repository that fills up.
    pub fn fail_after_bytes(&self, limit: u64) {
        self.written.store(0, Ordering::SeqCst);
        self.byte_limit.store(limit.max(1), Ordering::SeqCst);
    }

    /// Removes every fault (the disk was freed, the network came back).
    pub fn clear(&self) {
        if let Ok(mut rules) = self.rules.lock() {
            rules.clear();
        }
        self.byte_limit.store(0, Ordering::SeqCst);
        self.written.store(0, Ordering::SeqCst);
    }

    /// How many faults were injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    /// How many operations of kind `op` went through the store so far (failed ones included).
    pub fn calls(&self, op: FaultOp) -> u64 {
        self.calls[op.index()].load(Ordering::SeqCst)
    }

    fn check(&self, op: FaultOp, location: &Path, bytes: u64) -> Result<()> {
        self.calls[op.index()].fetch_add(1, Ordering::SeqCst);
        let fault = match self.rules.lock() {
            Ok(mut rules) => rules.iter_mut().find_map(|r| {
                if r.op != op {
                    return None;
                }
                r.seen += 1;
                (r.seen >= r.from && r.fired < r.times).then(|| {
                    r.fired += 1;
                    r.kind.clone()
                })
            }),
            Err(_) => None,
        };
        let fault = fault.or_else(|| {
            let limit = self.byte_limit.load(Ordering::SeqCst);
            if limit == 0 || bytes == 0 {
                return None;
            }
            let before = self.written.fetch_add(bytes, Ordering::SeqCst);
            (before + bytes > limit).then_some(FaultKind::NoSpace)
        });
        match fault {
            Some(kind) => {
                self.injected.fetch_add(1, Ordering::SeqCst);
                Err(kind.error(op, location))
            }
            None => Ok(()),
        }
    }
}

/// The wrapping store (see the module docs).
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    plan: Arc<FaultPlan>,
}

impl FaultyStore {
    /// `inner`, failing what `plan` says.
    pub fn new(inner: Arc<dyn ObjectStore>, plan: Arc<FaultPlan>) -> Self {
        Self { inner, plan }
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

struct FaultyUpload {
    inner: Box<dyn MultipartUpload>,
    plan: Arc<FaultPlan>,
    location: Path,
}

impl fmt::Debug for FaultyUpload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyUpload")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let len = data.content_length() as u64;
        match self.plan.check(FaultOp::PutPart, &self.location, len) {
            Ok(()) => self.inner.put_part(data),
            Err(e) => async move { Err(e) }.boxed(),
        }
    }

    async fn complete(&mut self) -> Result<PutResult> {
        self.plan.check(FaultOp::PutPart, &self.location, 0)?;
        self.inner.complete().await
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.plan
            .check(FaultOp::Put, location, payload.content_length() as u64)?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(FaultyUpload {
            inner,
            plan: Arc::clone(&self.plan),
            location: location.clone(),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.plan.check(FaultOp::Get, location, 0)?;
        self.inner.get_opts(location, options).await
    }

    async fn head(&self, location: &Path) -> Result<ObjectMeta> {
        self.plan.check(FaultOp::Get, location, 0)?;
        self.inner.head(location).await
    }

    async fn delete(&self, location: &Path) -> Result<()> {
        self.plan.check(FaultOp::Delete, location, 0)?;
        self.inner.delete(location).await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let at = prefix.cloned().unwrap_or_default();
        match self.plan.check(FaultOp::List, &at, 0) {
            Ok(()) => self.inner.list(prefix),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        }
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let at = prefix.cloned().unwrap_or_default();
        match self.plan.check(FaultOp::List, &at, 0) {
            Ok(()) => self.inner.list_with_offset(prefix, offset),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let at = prefix.cloned().unwrap_or_default();
        self.plan.check(FaultOp::List, &at, 0)?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        self.plan.check(FaultOp::Rename, to, 0)?;
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        self.plan.check(FaultOp::Rename, to, 0)?;
        self.inner.copy_if_not_exists(from, to).await
    }

    async fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        self.plan.check(FaultOp::Rename, to, 0)?;
        self.inner.rename(from, to).await
    }

    async fn rename_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        self.plan.check(FaultOp::Rename, to, 0)?;
        self.inner.rename_if_not_exists(from, to).await
    }
}

impl crate::Repository {
    /// The same repository with its store wrapped in a [`FaultyStore`] failing what `plan` says (tests only).
    /// A local repository stays local (deferred syncs, abandoned-upload cleanup).
    pub fn with_faults(mut self, plan: Arc<FaultPlan>) -> Self {
        self.store = Arc::new(FaultyStore::new(self.store, plan));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RepoPath, Repository};
    use bytes::Bytes;

    #[tokio::test]
    async fn the_nth_operation_fails_with_the_chosen_error_until_cleared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = Arc::new(FaultPlan::default());
        let repo = Repository::local(dir.path())
            .expect("local")
            .with_faults(Arc::clone(&plan));
        let p = |n: u32| RepoPath::new(format!("a/{n}")).expect("path");
        plan.fail(FaultOp::Put, 2, 1, FaultKind::NoSpace);
        repo.put(&p(1), Bytes::from_static(b"one"))
            .await
            .expect("1st");
        let e = repo
            .put(&p(2), Bytes::from_static(b"two"))
            .await
            .expect_err("2nd fails");
        assert!(e.to_string().contains("No space left on device"), "{e}");
        repo.put(&p(3), Bytes::from_static(b"three"))
            .await
            .expect("3rd: the rule fired its one time");
        assert_eq!(plan.injected(), 1);
        assert_eq!(plan.calls(FaultOp::Put), 3);

        plan.fail(FaultOp::List, 1, u64::MAX, FaultKind::Io);
        assert!(repo.list(&RepoPath::new("a").expect("p")).await.is_err());
        assert!(repo.list(&RepoPath::new("a").expect("p")).await.is_err());
        plan.fail(FaultOp::Get, 1, 1, FaultKind::Io);
        assert!(repo.get(&p(1)).await.is_err());
        plan.fail(FaultOp::Delete, 1, 1, FaultKind::Io);
        assert!(repo.delete(&p(1)).await.is_err());
        plan.clear();
        assert_eq!(
            repo.list(&RepoPath::new("a").expect("p"))
                .await
                .expect("list")
                .len(),
            2
        );
        assert_eq!(
            repo.get(&p(1)).await.expect("get"),
            Bytes::from_static(b"one")
        );
    }

    #[tokio::test]
    async fn writes_beyond_the_byte_limit_fail_as_a_full_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = Arc::new(FaultPlan::default());
        let repo = Repository::local(dir.path())
            .expect("local")
            .with_faults(Arc::clone(&plan));
        plan.fail_after_bytes(10);
        let p = |n: u32| RepoPath::new(format!("b/{n}")).expect("path");
        repo.put(&p(1), Bytes::from(vec![1u8; 8]))
            .await
            .expect("fits");
        let e = repo
            .put(&p(2), Bytes::from(vec![1u8; 8]))
            .await
            .expect_err("full");
        assert!(e.to_string().contains("No space left on device"), "{e}");
        plan.clear();
        repo.put(&p(2), Bytes::from(vec![1u8; 8]))
            .await
            .expect("freed");
    }
}
