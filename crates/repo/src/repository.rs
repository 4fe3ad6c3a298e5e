//! [`Repository`]: typed, validated access to an object store.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectMeta, ObjectStore, PutPayload};

use crate::{layout, RepoError, RepoPath};

/// Metadata of one stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Where the object is.
    pub path: RepoPath,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time as reported by the store.
    pub last_modified: DateTime<Utc>,
}

/// Up to this many chunk files, [`Repository::sync_chunks`] fsyncs each file instead of the whole filesystem.
pub const SYNC_EACH_MAX: usize = 256;

/// The backup repository: every read and write of backup data goes through here.
///
/// Cheap to clone (an `Arc`). Backed by any [`ObjectStore`]: a local directory
/// ([`Repository::local`]), memory ([`Repository::memory`]) or anything built by the caller,
/// e.g. S3/OSS or a wrapper (throttling, fault injection) via [`Repository::from_store`].
///
/// Cancellation: every async method may be cancelled by dropping its future. Because each
/// write publishes atomically (see the crate docs), a dropped `put`/`write_manifest` leaves
/// either the old state or the new one, never a partial object. Long uploads additionally take
/// a cancellation token in [`crate::UploadOptions`].
#[derive(Clone)]
pub struct Repository {
    pub(crate) store: Arc<dyn ObjectStore>,
    /// Root directory of a local repository: abandoned upload files (`<name>#<n>`, left by a crash) are
    /// invisible to the store, so `delete_prefix` removes them from the filesystem itself.
    pub(crate) local_root: Option<std::path::PathBuf>,
    /// Objects are sealed ([`Repository::with_encryption`]): the files under `local_root` are larger than the
    /// objects they hold, so sizes must come through the store.
    pub(crate) encrypted: bool,
    /// The same store as `store` when it is S3: for the multipart journal and conditional creates.
    pub(crate) s3: Option<Arc<crate::s3::S3Store>>,
    /// Part size and parts in flight of this repository's uploads ([`Repository::upload_options`]).
    pub(crate) upload_tuning: UploadTuning,
}

/// Where a repository lives; see [`Repository::open`].
#[derive(Debug, Clone)]
pub enum RepositoryLocation {
    /// A local directory (`file:///path`, `local_path`).
    Local(std::path::PathBuf),
    /// An S3-compatible bucket (`s3://bucket/prefix`). Boxed: the settings are far larger than a path.
    S3(Box<crate::S3Settings>),
}

/// Upload tuning of a repository: size of the parts and how many upload at once. One upload buffers at most
/// [`crate::UploadOptions::memory_bound`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadTuning {
    /// Part size in bytes (raised to [`crate::upload::MIN_PART_SIZE`]).
    pub part_size: usize,
    /// Parts uploading concurrently (at least 1).
    pub max_in_flight_parts: usize,
}

impl Default for UploadTuning {
    fn default() -> Self {
        Self {
            part_size: crate::upload::DEFAULT_PART_SIZE,
            max_in_flight_parts: crate::upload::DEFAULT_MAX_IN_FLIGHT_PARTS,
        }
    }
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Repository({})", self.store)
    }
}

impl Repository {
    /// A repository in the local directory `dir`, created (with parents) if missing.
    ///
    /// Writes are staged in a sibling file and renamed into place, then fsynced (file and
    /// parent directories) before the call returns; see the crate docs.
    ///
    /// # Errors
    /// [`RepoError::Io`] if the directory cannot be created, [`RepoError::Store`] if it cannot
    /// be opened.
    pub fn local(dir: &std::path::Path) -> Result<Self, RepoError> {
        std::fs::create_dir_all(dir)?;
        let store = crate::local::DurableLocalFs::new(dir)?;
        Ok(Self {
            store: Arc::new(store),
            local_root: Some(std::fs::canonicalize(dir)?),
            encrypted: false,
            s3: None,
            upload_tuning: UploadTuning::default(),
        })
    }

    /// A repository over an S3-compatible bucket (AWS S3, MinIO, Alibaba OSS). Nothing is contacted yet:
    /// call [`Repository::check`] to find out whether the bucket is reachable and writable.
    ///
    /// # Errors
    /// [`RepoError::Store`] if the settings are invalid (e.g. a malformed endpoint).
    pub fn s3(settings: &crate::S3Settings) -> Result<Self, RepoError> {
        let store = Arc::new(settings.build()?);
        Ok(Self {
            store: Arc::clone(&store) as Arc<dyn ObjectStore>,
            local_root: None,
            encrypted: false,
            s3: Some(store),
            upload_tuning: UploadTuning::default(),
        })
    }

    /// Opens the repository at `location` with the given upload tuning.
    ///
    /// # Errors
    /// As [`Repository::local`] or [`Repository::s3`].
    pub fn open(location: &RepositoryLocation, tuning: UploadTuning) -> Result<Self, RepoError> {
        let mut repo = match location {
            RepositoryLocation::Local(dir) => Self::local(dir)?,
            RepositoryLocation::S3(settings) => Self::s3(settings)?,
        };
        repo.upload_tuning = tuning;
        Ok(repo)
    }

    /// The same repository with every object sealed by `key` on the way in and opened on the way out
    /// (client-side encryption, see [`crate::encrypted`]). Multipart journal markers and S3 Object Lock requests
    /// bypass it (they hold no backup data).
    pub fn with_encryption(mut self, key: Arc<crate::encrypted::MasterKey>) -> Self {
        self.store = Arc::new(crate::encrypted::EncryptedStore::new(self.store, key));
        self.encrypted = true;
        self
    }

    /// A repository over any object store (S3, OSS, a wrapper, …).
    pub fn from_store(store: Arc<dyn ObjectStore>) -> Self {
        Self {
            store,
            local_root: None,
            encrypted: false,
            s3: None,
            upload_tuning: UploadTuning::default(),
        }
    }

    /// `true` when objects are renamed atomically (local directory, memory); `false` on S3, where a rename is
    /// a copy plus a delete.
    pub fn has_atomic_rename(&self) -> bool {
        self.s3.is_none()
    }

    /// Where a job should write a file that will end up at `final_path`: `staged` where [`Repository::rename`]
    /// is atomic (written aside, renamed into place), `final_path` itself on S3 (no rename there; the backup's
    /// manifest, written last, is what makes the file part of a backup). Pass the result to
    /// [`Repository::rename`] as `from`: renaming a path onto itself does nothing.
    pub fn write_path(&self, staged: &RepoPath, final_path: &RepoPath) -> RepoPath {
        if self.has_atomic_rename() {
            staged.clone()
        } else {
            final_path.clone()
        }
    }

    /// Upload options with this repository's part size and parts in flight.
    pub fn upload_options(&self) -> crate::UploadOptions {
        crate::UploadOptions::default()
            .with_part_size(self.upload_tuning.part_size)
            .with_max_in_flight_parts(self.upload_tuning.max_in_flight_parts)
    }

    /// Checks that the repository can be used: writes, reads back and deletes a probe object and lists the
    /// backups. Meant for start-up, so a server with wrong credentials or a missing bucket refuses to start.
    ///
    /// # Errors
    /// The first failing step, as [`RepoError::Unusable`] with the store's reason.
    pub async fn check(&self) -> Result<(), RepoError> {
        self.ping().await?;
        self.list(&layout::backups_root())
            .await
            .map_err(|e| RepoError::Unusable {
                repository: self.store.to_string(),
                reason: format!("listing backups: {}", crate::error::describe(&e)),
            })?;
        Ok(())
    }

    /// Writes, reads back and deletes a probe object: the cheap part of [`Repository::check`], for readiness
    /// probes (nothing is listed, so its cost does not grow with the repository).
    ///
    /// # Errors
    /// The first failing step, as [`RepoError::Unusable`] with the store's reason.
    pub async fn ping(&self) -> Result<(), RepoError> {
        // Straight on the store: its errors carry the server's answer (NoSuchBucket, InvalidAccessKeyId, …)
        // in their source chain, which `RepoError::NotFound` would drop.
        let unusable = |step: &str, e: &(dyn std::error::Error + 'static)| RepoError::Unusable {
            repository: self.store.to_string(),
            reason: format!("{step}: {}", crate::error::describe(e)),
        };
        let probe =
            object_store::path::Path::from(format!("ddsvault-probe/{}", uuid::Uuid::new_v4()));
        let body = crate::s3::probe_body();
        self.store
            .put(&probe, PutPayload::from(body.clone()))
            .await
            .map_err(|e| unusable("writing a probe object", &e))?;
        let read = match self.store.get(&probe).await {
            Ok(r) => r.bytes().await,
            Err(e) => Err(e),
        };
        let deleted = self.store.delete(&probe).await;
        match read {
            Ok(b) if b == body => {}
            Ok(_) => {
                return Err(RepoError::Unusable {
                    repository: self.store.to_string(),
                    reason: "a probe object read back different bytes".into(),
                })
            }
            Err(e) => return Err(unusable("reading the probe object back", &e)),
        }
        deleted.map_err(|e| unusable("deleting the probe object", &e))?;
        Ok(())
    }

    /// Aborts the multipart uploads (S3 only) started more than `older_than` ago — uploads whose process died —
    /// and removes their markers: first those the journal names, then any other under the repository prefix
    /// that this process is not uploading (`ListMultipartUploads`: an upload whose process died before its
    /// marker was written). Returns how many were aborted. A local or memory repository has none.
    ///
    /// # Errors
    /// The store error.
    pub async fn sweep_uploads(&self, older_than: std::time::Duration) -> Result<u64, RepoError> {
        let cutoff =
            Utc::now() - chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::zero());
        let journaled = self
            .abort_journaled(crate::s3::UPLOADS_DIR.to_string(), Some(cutoff))
            .await?;
        let Some(s3) = &self.s3 else {
            return Ok(journaled);
        };
        let listed = s3.abort_listed(cutoff).await.map_err(|e| {
            RepoError::from_store(&RepoPath::from_valid(crate::s3::UPLOADS_DIR.into()), e)
        })?;
        Ok(journaled + listed)
    }

    /// How old a multipart upload must be before [`Repository::sweep_uploads`] may abort it as lost: the S3
    /// setting `lost_upload_grace` (24 hours by default); a local or memory repository has no uploads to sweep
    /// and answers the default.
    pub fn lost_upload_grace(&self) -> std::time::Duration {
        self.s3
            .as_ref()
            .map_or(crate::s3::DEFAULT_LOST_UPLOAD_GRACE, |s| {
                s.lost_upload_grace
            })
    }

    /// Aborts the journaled uploads whose target is under `prefix` (S3 only).
    async fn abort_uploads_under(&self, prefix: &RepoPath) -> Result<u64, RepoError> {
        self.abort_journaled(format!("{}/{prefix}", crate::s3::UPLOADS_DIR), None)
            .await
    }

    /// Aborts the uploads journaled under `markers` (markers written before `cutoff`, if given). S3 only.
    async fn abort_journaled(
        &self,
        markers: String,
        cutoff: Option<DateTime<Utc>>,
    ) -> Result<u64, RepoError> {
        let Some(s3) = &self.s3 else {
            return Ok(0);
        };
        let mut aborted = 0;
        for m in self.list(&RepoPath::from_valid(markers)).await? {
            if cutoff.map_or(true, |c| m.last_modified <= c)
                && s3
                    .abort_marked(&m.path.to_location()?)
                    .await
                    .map_err(|e| RepoError::from_store(&m.path, e))?
            {
                aborted += 1;
            }
        }
        Ok(aborted)
    }

    /// Whether the repository itself can refuse early deletions: an S3 bucket with Object Lock enabled. Local
    /// and memory repositories answer `false` without contacting anything.
    ///
    /// # Errors
    /// [`RepoError::ObjectLock`] if the bucket's configuration cannot be read.
    pub async fn object_lock_enabled(&self) -> Result<bool, RepoError> {
        match &self.s3 {
            Some(s3) => s3.object_lock.bucket_lock_enabled().await,
            None => Ok(false),
        }
    }

    /// The S3 Object Lock retention of the object at `path` (its current version); `None` when it has none or
    /// the repository is not S3.
    ///
    /// # Errors
    /// [`RepoError::NotFound`], or [`RepoError::ObjectLock`] with the server's answer.
    pub async fn retention(
        &self,
        path: &RepoPath,
    ) -> Result<Option<crate::ObjectRetention>, RepoError> {
        match &self.s3 {
            Some(s3) => s3.object_lock.retention(&path.to_location()?).await,
            None => Ok(None),
        }
    }

    /// Puts `COMPLIANCE` retention until `until` on the object at `path`, or leaves a longer one in place: never
    /// shortens. Needs an S3 bucket with Object Lock enabled ([`Repository::object_lock_enabled`]).
    ///
    /// # Errors
    /// [`RepoError::ObjectLock`] on a repository without object lock or when the server refuses,
    /// [`RepoError::NotFound`] if the object is gone.
    pub async fn retain_until(
        &self,
        path: &RepoPath,
        until: DateTime<Utc>,
    ) -> Result<crate::Retained, RepoError> {
        match &self.s3 {
            Some(s3) => s3.object_lock.retain(&path.to_location()?, until).await,
            None => Err(RepoError::ObjectLock {
                path: path.to_string(),
                reason: "the repository is not an S3 bucket with object lock".into(),
            }),
        }
    }

    /// Every object a committed backup consists of: everything under its prefix (manifest last-written but
    /// listed like the rest) and, for a snapshot, the chunks its index names (shared with other snapshots).
    ///
    /// # Errors
    /// The store error, or a manifest or index that does not decode.
    pub async fn backup_objects(
        &self,
        prefix: &RepoPath,
        instance_id: &str,
    ) -> Result<Vec<RepoPath>, RepoError> {
        let mut out: Vec<RepoPath> = self
            .list(prefix)
            .await?
            .into_iter()
            .map(|o| o.path)
            .collect();
        if let Some(m) = self.read_manifest(prefix).await? {
            if let Some(idx) = self.read_snapshot_index(prefix, &m).await? {
                let digests: std::collections::BTreeSet<String> = idx
                    .files
                    .into_iter()
                    .flat_map(|f| f.chunks.into_iter().map(|c| c.sha256))
                    .collect();
                for d in digests {
                    out.push(crate::chunks::chunk_path(instance_id, &d)?);
                }
            }
        }
        Ok(out)
    }

    /// Refuses ([`RepoError::Retained`]) when the manifest under `prefix` is under S3 Object Lock retention
    /// after `now`. On a versioned (object lock) bucket a plain DELETE only adds a delete marker and succeeds,
    /// hiding the backup while its locked versions stay: deletions of backups check this first instead.
    ///
    /// # Errors
    /// [`RepoError::Retained`], or the error reading the retention (a missing manifest is not retained).
    pub async fn check_not_retained(
        &self,
        prefix: &RepoPath,
        now: DateTime<Utc>,
    ) -> Result<(), RepoError> {
        if !self.object_lock_enabled().await? {
            return Ok(());
        }
        let manifest = Self::manifest_path(prefix);
        match self.retention(&manifest).await {
            Ok(Some(r)) if r.until > now => Err(RepoError::Retained {
                path: manifest.to_string(),
                mode: if r.compliance {
                    "COMPLIANCE"
                } else {
                    "GOVERNANCE"
                },
                until: r.until,
            }),
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// An empty in-memory repository, for tests.
    pub fn memory() -> Self {
        Self::from_store(Arc::new(object_store::memory::InMemory::new()))
    }

    /// The underlying store, for wrappers and diagnostics. Writing through it bypasses the
    /// path rules of this type.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// `backups/<instance>/<backup_id>` (see [`crate::layout`]).
    pub fn backup_prefix(instance_id: &str, backup_id: i64) -> RepoPath {
        layout::backup_prefix(instance_id, backup_id)
    }

    /// `backups/<instance>`: the parent of every backup prefix of that instance.
    pub fn instance_prefix(instance_id: &str) -> RepoPath {
        layout::instance_prefix(instance_id)
    }

    /// `staging/<job_token>` (see [`crate::layout`]).
    pub fn staging_prefix(job_token: &str) -> RepoPath {
        layout::staging_prefix(job_token)
    }

    /// `<prefix>/manifest.json`.
    pub fn manifest_path(prefix: &RepoPath) -> RepoPath {
        layout::manifest_path(prefix)
    }

    /// Stores `bytes` at `path`, replacing any existing object. Atomic: readers see the old
    /// object (or none) until the new one is complete, never a prefix of it.
    ///
    /// # Errors
    /// [`RepoError::Store`] on store failure.
    pub async fn put(&self, path: &RepoPath, bytes: Bytes) -> Result<(), RepoError> {
        let location = path.to_location()?;
        self.store
            .put(&location, PutPayload::from(bytes))
            .await
            .map_err(|e| RepoError::from_store(path, e))?;
        Ok(())
    }

    /// Like [`Repository::put`], but on a local repository the object is durable only after the next
    /// [`Repository::sync_deferred`] (it is still atomic: absent or whole). Other stores make every `PUT` durable
    /// when it succeeds.
    ///
    /// # Errors
    /// The store error.
    pub async fn put_deferred(&self, path: &RepoPath, bytes: Bytes) -> Result<(), RepoError> {
        if self.local_root.is_none() {
            return self.put(path, bytes).await;
        }
        let location = path.to_location()?;
        let mut opts = object_store::PutOptions::default();
        opts.extensions.insert(crate::local::DeferSync);
        self.store
            .put_opts(&location, PutPayload::from(bytes), opts)
            .await
            .map_err(|e| RepoError::from_store(path, e))?;
        Ok(())
    }

    /// Makes every [`Repository::put_deferred`] so far durable (one `syncfs` on a local repository; nothing to do
    /// elsewhere).
    ///
    /// # Errors
    /// [`RepoError::Io`] if the filesystem cannot be synced.
    pub async fn sync_deferred(&self) -> Result<(), RepoError> {
        match &self.local_root {
            Some(root) => Ok(crate::local::sync_filesystem(root).await?),
            None => Ok(()),
        }
    }

    /// Makes the chunks `digests` of `instance_id`, written with [`Repository::put_deferred`] (as
    /// [`Repository::put_chunk_checked`] does), durable. On a local repository a few files
    /// (≤ [`SYNC_EACH_MAX`]) get an fsync each and their directories one each: a `syncfs` would also wait for
    /// everything else written to the filesystem (other programs' files included), which costs far more than
    /// the few chunks of an incremental snapshot. More files are synced with one `syncfs`
    /// ([`Repository::sync_deferred`]). Nothing to do elsewhere.
    ///
    /// # Errors
    /// [`RepoError::Io`] if a file or directory cannot be synced (a chunk that is not there included).
    pub async fn sync_chunks(
        &self,
        instance_id: &str,
        digests: &[String],
    ) -> Result<(), RepoError> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        if digests.len() > SYNC_EACH_MAX {
            return self.sync_deferred().await;
        }
        // The same mapping from object paths to files as the store's (DurableLocalFs wraps this type).
        let fs = object_store::local::LocalFileSystem::new_with_prefix(root)?;
        let mut files = Vec::with_capacity(digests.len());
        for d in digests {
            let path = crate::chunks::chunk_path(instance_id, d)?;
            let file = fs
                .path_to_filesystem(&path.to_location()?)
                .map_err(|e| RepoError::from_store(&path, e))?;
            files.push(file);
        }
        Ok(crate::local::sync_files(root, files).await?)
    }

    /// Reads a whole object into memory. Use [`Repository::get_stream`] for large objects.
    ///
    /// # Errors
    /// [`RepoError::NotFound`] if there is no object at `path`.
    pub async fn get(&self, path: &RepoPath) -> Result<Bytes, RepoError> {
        let location = path.to_location()?;
        let result = self
            .store
            .get(&location)
            .await
            .map_err(|e| RepoError::from_store(path, e))?;
        result
            .bytes()
            .await
            .map_err(|e| RepoError::from_store(path, e))
    }

    /// Reads exactly the bytes `range` of an object. An empty range returns empty bytes
    /// without contacting the store.
    ///
    /// # Errors
    /// [`RepoError::RangeNotSatisfiable`] if the range is inverted or extends past the end of
    /// the object (backends differ: some clamp, some fail; we always fail), and
    /// [`RepoError::NotFound`] if there is no object.
    pub async fn get_range(&self, path: &RepoPath, range: Range<u64>) -> Result<Bytes, RepoError> {
        if range.start > range.end {
            return Err(RepoError::RangeNotSatisfiable {
                path: path.to_string(),
                range,
                size: 0,
            });
        }
        if range.start == range.end {
            return Ok(Bytes::new());
        }
        let location = path.to_location()?;
        match self.store.get_range(&location, range.clone()).await {
            Ok(bytes) if bytes.len() as u64 == range.end - range.start => Ok(bytes),
            Ok(bytes) => Err(RepoError::RangeNotSatisfiable {
                path: path.to_string(),
                size: range.start + bytes.len() as u64,
                range,
            }),
            Err(e @ object_store::Error::NotFound { .. }) => Err(RepoError::from_store(path, e)),
            Err(e) => {
                // Stores report "start past the end" in backend-specific ways (416, a generic
                // local error, …). Classify it so callers see one permanent error.
                match self.head(path).await {
                    Ok(info) if range.end > info.size => Err(RepoError::RangeNotSatisfiable {
                        path: path.to_string(),
                        range,
                        size: info.size,
                    }),
                    _ => Err(RepoError::from_store(path, e)),
                }
            }
        }
    }

    /// Opens an object for streaming. Returns its size and a stream of its bytes.
    ///
    /// # Errors
    /// [`RepoError::NotFound`] if there is no object; the stream yields store errors.
    pub async fn get_stream(
        &self,
        path: &RepoPath,
    ) -> Result<(u64, BoxStream<'static, Result<Bytes, RepoError>>), RepoError> {
        let location = path.to_location()?;
        let result = self
            .store
            .get(&location)
            .await
            .map_err(|e| RepoError::from_store(path, e))?;
        let size = result.meta.size;
        let owned = path.clone();
        let stream = result
            .into_stream()
            .map_err(move |e| RepoError::from_store(&owned, e))
            .boxed();
        Ok((size, stream))
    }

    /// Streams the bytes `range` of an object (for HTTP range requests), without buffering it.
    ///
    /// # Errors
    /// [`RepoError::NotFound`] if there is no object; [`RepoError::RangeNotSatisfiable`] if the range is empty,
    /// inverted or past the end.
    pub async fn get_range_stream(
        &self,
        path: &RepoPath,
        range: Range<u64>,
    ) -> Result<BoxStream<'static, Result<Bytes, RepoError>>, RepoError> {
        let size = self.head(path).await?.size;
        if range.start >= range.end || range.end > size {
            return Err(RepoError::RangeNotSatisfiable {
                path: path.to_string(),
                range: range.clone(),
                size,
            });
        }
        let location = path.to_location()?;
        let options = object_store::GetOptions {
            range: Some(object_store::GetRange::Bounded(range)),
            ..Default::default()
        };
        let result = self
            .store
            .get_opts(&location, options)
            .await
            .map_err(|e| RepoError::from_store(path, e))?;
        let owned = path.clone();
        Ok(result
            .into_stream()
            .map_err(move |e| RepoError::from_store(&owned, e))
            .boxed())
    }

    /// Size and modification time of an object.
    ///
    /// # Errors
    /// [`RepoError::NotFound`] if there is no object.
    pub async fn head(&self, path: &RepoPath) -> Result<ObjectInfo, RepoError> {
        let location = path.to_location()?;
        let meta = self
            .store
            .head(&location)
            .await
            .map_err(|e| RepoError::from_store(path, e))?;
        Ok(ObjectInfo {
            path: path.clone(),
            size: meta.size,
            last_modified: meta.last_modified,
        })
    }

    /// Every object under the directory `prefix` (recursively), sorted by path. An object
    /// *at* `prefix` itself is not included. A missing prefix lists as empty.
    ///
    /// Objects whose key is not a valid [`RepoPath`] (written by someone else) are skipped with
    /// a warning; [`Repository::delete_prefix`] still removes them.
    ///
    /// # Errors
    /// [`RepoError::Store`] on store failure.
    pub async fn list(&self, prefix: &RepoPath) -> Result<Vec<ObjectInfo>, RepoError> {
        let metas = self.list_raw(prefix).await?;
        let mut out = Vec::with_capacity(metas.len());
        for meta in metas {
            match RepoPath::from_location(&meta.location) {
                Ok(path) => out.push(ObjectInfo {
                    path,
                    size: meta.size,
                    last_modified: meta.last_modified,
                }),
                Err(e) => {
                    tracing::warn!(location = %meta.location, error = %e, "skipping foreign object in listing")
                }
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    async fn list_raw(&self, prefix: &RepoPath) -> Result<Vec<ObjectMeta>, RepoError> {
        let location = prefix.to_location()?;
        self.store
            .list(Some(&location))
            .try_collect()
            .await
            .map_err(|e| RepoError::from_store(prefix, e))
    }

    /// Deletes every object under the directory `prefix`; returns how many were deleted.
    /// Idempotent: deleting an empty or missing prefix returns `Ok(0)`, and objects that
    /// vanish concurrently are not errors.
    ///
    /// Not atomic, but ordered: every `manifest.json` under the prefix is deleted before any
    /// other object, so a backup whose deletion fails half-way no longer looks complete.
    /// On S3, unfinished multipart uploads into the prefix (left by a crash, see [`crate::s3`]) are aborted
    /// and counted too.
    ///
    /// # Errors
    /// [`RepoError::Store`] on store failure (retrying is safe).
    pub async fn delete_prefix(&self, prefix: &RepoPath) -> Result<u64, RepoError> {
        // List first, then delete: deleting while a local directory walk is in progress
        // (with empty-directory cleanup) would be needlessly subtle.
        let (manifests, data): (Vec<_>, Vec<_>) = self
            .list_raw(prefix)
            .await?
            .into_iter()
            .map(|m| m.location)
            .partition(|l| l.filename() == Some(layout::MANIFEST_FILE));
        // Uploads that a crashed writer left under this prefix (S3): aborted so their parts are freed.
        let mut deleted = self.abort_uploads_under(prefix).await?;
        for batch in [manifests, data] {
            let locations = futures::stream::iter(batch.into_iter().map(Ok)).boxed();
            let mut results = self.store.delete_stream(locations);
            while let Some(r) = results.next().await {
                match r {
                    Ok(_) => deleted += 1,
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(RepoError::from_store(prefix, e)),
                }
            }
        }
        if let Some(root) = &self.local_root {
            let dir = prefix.segments().fold(root.clone(), |d, seg| d.join(seg));
            deleted +=
                tokio::task::spawn_blocking(move || crate::local::remove_abandoned_uploads(&dir))
                    .await
                    .map_err(|e| RepoError::Internal(format!("remove abandoned uploads: {e}")))??;
        }
        Ok(deleted)
    }

    /// Deletes one object. Idempotent: a missing object is not an error.
    ///
    /// # Errors
    /// [`RepoError::Store`] on store failure.
    pub async fn delete(&self, path: &RepoPath) -> Result<(), RepoError> {
        let location = path.to_location()?;
        match self.store.delete(&location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(RepoError::from_store(path, e)),
        }
    }

    /// Moves an object, replacing `to` if it exists.
    ///
    /// Atomic on a local filesystem (`rename(2)`). On S3/OSS it is a server-side copy followed
    /// by a delete: `to` appears complete (copies are atomic) but `from` may briefly coexist
    /// with it, and a crash in between leaves both. S3's single-request copy is limited to
    /// 5 GiB, so prefer uploading directly under the final prefix and committing with the
    /// manifest over staging + rename for large files.
    ///
    /// # Errors
    /// [`RepoError::NotFound`] (naming `from`) if there is no source object.
    pub async fn rename(&self, from: &RepoPath, to: &RepoPath) -> Result<(), RepoError> {
        if from == to {
            // `write_path` already wrote the file under its final name.
            return Ok(());
        }
        let from_location = from.to_location()?;
        let to_location = to.to_location()?;
        self.store
            .rename(&from_location, &to_location)
            .await
            .map_err(|e| RepoError::from_store(from, e))
    }
}
