//! S3-compatible object storage (AWS S3, MinIO, Alibaba OSS through its S3 endpoint): `object_store`'s
//! `AmazonS3` under the repository's key prefix, plus a journal of multipart uploads.
//!
//! Why the journal: a multipart upload that loses its process (crash, kill, power loss) leaves invisible,
//! billed parts that `object_store` cannot list (it has no `ListMultipartUploads`). Every multipart upload
//! therefore first writes a small marker object, `uploads/<target key>/<uuid>`, holding its upload id, and
//! removes it after completing or aborting. [`crate::Repository::delete_prefix`] of a prefix aborts the uploads
//! whose target is under it (a failed or recovered job deletes its backup prefix, so its lost uploads go with
//! it), and [`crate::Repository::sweep_uploads`] aborts any older than a limit. A process killed between
//! `CreateMultipartUpload` and its marker leaves an upload no marker names: the sweep also lists the uploads
//! under the prefix (`ListMultipartUploads`, [`crate::s3_uploads`]) and aborts those older than the limit that
//! are not in progress in this process. A bucket lifecycle rule *AbortIncompleteMultipartUpload* remains a
//! useful second net (docs/s3-repository.md).
//!
//! Retries: `object_store` retries throttling (429/503), other 5xx, timeouts and connection errors with
//! exponential backoff and decorrelated jitter ([`DEFAULT_BACKOFF_INITIAL`], [`BACKOFF_BASE`]), up to
//! [`S3Settings::max_retries`] attempts within [`S3Settings::retry_timeout`]; 4xx answers (bad credentials,
//! missing bucket) fail at once.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::FutureExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::client::{HttpConnector, ReqwestConnector};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetResult, ListResult, MultipartId, MultipartUpload,
    ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
    RetryConfig, UploadPart,
};
use serde::{Deserialize, Serialize};

use crate::object_lock::ObjectLockClient;

/// Top-level directory of the multipart upload journal (see the module docs).
pub const UPLOADS_DIR: &str = "uploads";

/// Default first retry delay. object_store's own default (100 ms, growth 2, cap 15 s) gives up on a throttling
/// server within a few seconds: its decorrelated jitter draws the next delay from `[initial, previous × base]`,
/// so with base 2 the delays grow only by about `initial / 2` per attempt (10 retries ≈ 5 s in all). S3 asks
/// clients that get `SlowDown` to back off for seconds, not milliseconds.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// Default longest delay between two attempts.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(20);
/// Growth of the jitter range per attempt. With base 3 the expected delay grows by half each attempt
/// (1, 2, 3.5, 5.8, 9, 14, 20, 20 … s): the default 10 retries ride out about 2 minutes of throttling, within
/// the default `retry_timeout` of 180 s.
pub const BACKOFF_BASE: f64 = 3.0;
/// Default grace period of multipart uploads before a sweep may abort them as lost.
pub const DEFAULT_LOST_UPLOAD_GRACE: Duration = Duration::from_secs(24 * 3600);

/// How to reach an S3-compatible bucket. Values left `None` come from the usual `AWS_*` environment variables
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT`, …).
#[derive(Clone, Default)]
pub struct S3Settings {
    /// The bucket.
    pub bucket: String,
    /// Key prefix inside the bucket (no leading or trailing `/`); empty for the bucket root.
    pub prefix: String,
    /// Service endpoint, e.g. `http://127.0.0.1:9000` or `https://oss-cn-hangzhou.aliyuncs.com`. With
    /// `virtual_hosted_style` the bucket is put in front of its host name.
    pub endpoint: Option<String>,
    /// Region (`us-east-1` when neither this nor `AWS_REGION` is set).
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key. Never logged or shown.
    pub secret_access_key: Option<String>,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
    /// Allow `http://` endpoints (local MinIO).
    pub allow_http: bool,
    /// `https://<bucket>.<endpoint host>/key` instead of `https://<endpoint host>/<bucket>/key` (required by OSS).
    pub virtual_hosted_style: bool,
    /// Attempts after the first for a request that failed transiently.
    pub max_retries: usize,
    /// No retry is started after this long since the first attempt.
    pub retry_timeout: Duration,
    /// Timeout of one HTTP request (a part upload included).
    pub request_timeout: Duration,
    /// First retry delay (upper end of its jitter range); later delays grow by [`BACKOFF_BASE`].
    pub backoff_initial: Duration,
    /// Longest delay between two attempts.
    pub backoff_max: Duration,
    /// Multipart uploads under the prefix older than this that no live upload of this process owns are
    /// aborted by [`crate::Repository::sweep_uploads`] (start-up and every GC pass).
    pub lost_upload_grace: Duration,
    /// Publish manifests with a conditional create (`If-None-Match: *`); turn off for servers that reject it.
    pub conditional_create: bool,
}

impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret and the session token are never printed.
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("allow_http", &self.allow_http)
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .finish_non_exhaustive()
    }
}

impl S3Settings {
    /// Settings for `s3://bucket/prefix` with defaults for everything else.
    ///
    /// # Errors
    /// A message if `url` is not `s3://<bucket>[/<prefix>]`.
    pub fn from_url(url: &str) -> std::result::Result<Self, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("{url:?} is not an s3:// URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("{url:?} names no bucket (s3://BUCKET/PREFIX)"));
        }
        let prefix = prefix.trim_matches('/').to_string();
        if prefix.split('/').any(|s| s == "." || s == "..") || prefix.contains("//") {
            return Err(format!(
                "{url:?}: the prefix has an empty, `.` or `..` segment"
            ));
        }
        Ok(Self {
            bucket: bucket.to_string(),
            prefix,
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            allow_http: false,
            virtual_hosted_style: false,
            max_retries: 10,
            retry_timeout: Duration::from_secs(180),
            request_timeout: Duration::from_secs(120),
            backoff_initial: DEFAULT_BACKOFF_INITIAL,
            backoff_max: DEFAULT_BACKOFF_MAX,
            lost_upload_grace: DEFAULT_LOST_UPLOAD_GRACE,
            conditional_create: true,
        })
    }

    /// The endpoint the client talks to: virtual-hosted style puts the bucket in front of the host.
    fn bucket_endpoint(&self) -> Option<String> {
        let endpoint = self.endpoint.as_deref()?.trim_end_matches('/');
        if !self.virtual_hosted_style {
            return Some(endpoint.to_string());
        }
        let (scheme, host) = endpoint.split_once("://").unwrap_or(("https", endpoint));
        if host.starts_with(&format!("{}.", self.bucket)) {
            return Some(endpoint.to_string());
        }
        Some(format!("{scheme}://{}.{host}", self.bucket))
    }

    pub(crate) fn build(&self) -> Result<S3Store> {
        let mut b = AmazonS3Builder::from_env().with_bucket_name(&self.bucket);
        if let Some(e) = self.bucket_endpoint() {
            b = b.with_endpoint(e);
        }
        if let Some(r) = &self.region {
            b = b.with_region(r);
        }
        if let Some(k) = &self.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(s) = &self.secret_access_key {
            b = b.with_secret_access_key(s);
        }
        if let Some(t) = &self.session_token {
            b = b.with_token(t);
        }
        let client_options = ClientOptions::new()
            .with_allow_http(self.allow_http)
            .with_connect_timeout(Duration::from_secs(10))
            .with_timeout(self.request_timeout);
        let b = b
            .with_allow_http(self.allow_http)
            .with_virtual_hosted_style_request(self.virtual_hosted_style)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: self.backoff_initial,
                    max_backoff: self.backoff_max,
                    base: BACKOFF_BASE,
                },
                max_retries: self.max_retries,
                retry_timeout: self.retry_timeout,
            })
            .with_client_options(client_options.clone());
        // The object lock requests go to the same bucket URL object_store derives (builder.rs `bucket_endpoint`).
        let region = b
            .get_config_value(&AmazonS3ConfigKey::Region)
            .unwrap_or_else(|| "us-east-1".to_string());
        let bucket_url = match b.get_config_value(&AmazonS3ConfigKey::Endpoint) {
            Some(e) if self.virtual_hosted_style => e.trim_end_matches('/').to_string(),
            Some(e) => format!("{}/{}", e.trim_end_matches('/'), self.bucket),
            None if self.virtual_hosted_style => {
                format!("https://{}.s3.{region}.amazonaws.com", self.bucket)
            }
            None => format!("https://s3.{region}.amazonaws.com/{}", self.bucket),
        };
        let s3 = b.build()?;
        let prefix = Path::from(self.prefix.as_str());
        let object_lock = ObjectLockClient {
            http: ReqwestConnector::default().connect(&client_options)?,
            credentials: Arc::clone(s3.credentials()),
            region,
            bucket_url,
            prefix: prefix.clone(),
            known_enabled: std::sync::atomic::AtomicBool::new(false),
        };
        Ok(S3Store {
            object_lock,
            live_uploads: Arc::new(Mutex::new(HashSet::new())),
            lost_upload_grace: self.lost_upload_grace,
            inner: PrefixStore::new(s3.clone(), prefix.clone()),
            s3: Arc::new(s3),
            prefix,
            conditional_create: self.conditional_create,
            display: format!("s3://{}/{}", self.bucket, self.prefix),
        })
    }
}

/// What a journal marker records.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct UploadMarker {
    /// Target key relative to the repository root.
    pub key: String,
    /// The server's upload id.
    pub upload_id: String,
}

/// Upload ids in progress in this process.
type LiveUploads = Arc<Mutex<HashSet<String>>>;

/// `AmazonS3` under a key prefix whose multipart uploads are journaled. Everything but multipart uploads goes
/// through `PrefixStore`.
#[derive(Debug)]
pub(crate) struct S3Store {
    /// The S3 Object Lock requests object_store does not make.
    pub(crate) object_lock: ObjectLockClient,
    /// Upload ids of this process's multipart uploads still in progress: the sweep never aborts them.
    live_uploads: LiveUploads,
    /// See [`S3Settings::lost_upload_grace`].
    pub(crate) lost_upload_grace: Duration,
    inner: PrefixStore<AmazonS3>,
    s3: Arc<AmazonS3>,
    prefix: Path,
    pub(crate) conditional_create: bool,
    display: String,
}

impl S3Store {
    fn full(&self, location: &Path) -> Path {
        self.prefix.parts().chain(location.parts()).collect()
    }

    /// `uploads/<key>/<uuid>` (relative to the repository root).
    fn marker_path(location: &Path) -> Path {
        Path::from(UPLOADS_DIR)
            .parts()
            .chain(location.parts())
            .chain(Path::from(uuid::Uuid::new_v4().to_string()).parts())
            .collect()
    }

    /// Aborts the upload a marker names and deletes the marker. A marker that is gone, or an upload the server
    /// no longer knows, counts as done.
    pub(crate) async fn abort_marked(&self, marker: &Path) -> Result<bool> {
        let bytes = match self.inner.get(marker).await {
            Ok(r) => r.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        if let Ok(m) = serde_json::from_slice::<UploadMarker>(&bytes) {
            let target = self.full(&Path::from(m.key.as_str()));
            match self.s3.abort_multipart(&target, &m.upload_id).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        match self.inner.delete(marker).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(true),
            Err(e) => Err(e),
        }
    }
}

impl S3Store {
    /// Aborts the multipart uploads under the repository prefix initiated at or before `cutoff` that are not
    /// in progress in this process, whether or not a journal marker names them (ListMultipartUploads). This
    /// closes the window between `CreateMultipartUpload` and its marker. Returns how many were aborted.
    pub(crate) async fn abort_listed(&self, cutoff: chrono::DateTime<chrono::Utc>) -> Result<u64> {
        let listed = self
            .object_lock
            .list_multipart_uploads()
            .await
            .map_err(|reason| object_store::Error::Generic {
                store: "S3",
                source: reason.into(),
            })?;
        let mut aborted = 0;
        for u in listed {
            let live = self
                .live_uploads
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&u.upload_id);
            if live || u.initiated > cutoff {
                continue;
            }
            let Ok(target) = Path::parse(&u.key) else {
                // Not a key ddsvault writes (object_store could not even name it): not ours to abort.
                tracing::warn!(key = %u.key, "multipart upload with an unusual key left alone");
                continue;
            };
            match self.s3.abort_multipart(&target, &u.upload_id).await {
                Ok(()) => {
                    tracing::info!(key = %u.key, initiated = %u.initiated, "aborted a lost multipart upload");
                    aborted += 1;
                }
                // Completed or aborted since the listing.
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(aborted)
    }
}

impl fmt::Display for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let _ = opts;
        let target = self.full(location);
        let upload_id = self.s3.create_multipart(&target).await?;
        // Registered before anything else can fail, removed when the upload ends or is dropped.
        let live = LiveUpload::new(&self.live_uploads, &upload_id);
        let marker = Self::marker_path(location);
        let record = UploadMarker {
            key: location.to_string(),
            upload_id: upload_id.clone(),
        };
        let body = serde_json::to_vec(&record).map_err(|e| object_store::Error::Generic {
            store: "S3",
            source: Box::new(e),
        })?;
        if let Err(e) = self.inner.put(&marker, PutPayload::from(body)).await {
            // Without its marker a lost upload could not be found again: do not start it.
            let _ = self.s3.abort_multipart(&target, &upload_id).await;
            return Err(e);
        }
        Ok(Box::new(JournaledUpload {
            s3: Arc::clone(&self.s3),
            marker_store: self.inner.clone(),
            target,
            upload_id,
            marker,
            parts: Arc::new(Mutex::new(Vec::new())),
            next_part: 0,
            _live: live,
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn head(&self, location: &Path) -> Result<ObjectMeta> {
        self.inner.head(location).await
    }

    async fn delete(&self, location: &Path) -> Result<()> {
        self.inner.delete(location).await
    }

    fn delete_stream<'a>(
        &'a self,
        locations: BoxStream<'a, Result<Path>>,
    ) -> BoxStream<'a, Result<Path>> {
        self.inner.delete_stream(locations)
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
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        self.inner.copy_if_not_exists(from, to).await
    }
}

/// A multipart upload with a journal marker (see the module docs).
#[derive(Debug)]
struct JournaledUpload {
    s3: Arc<AmazonS3>,
    marker_store: PrefixStore<AmazonS3>,
    target: Path,
    upload_id: MultipartId,
    marker: Path,
    /// Part ids by part index, filled as parts finish (parts upload concurrently).
    parts: Arc<Mutex<Vec<Option<PartId>>>>,
    next_part: usize,
    /// Keeps the upload out of the sweep while this value lives.
    _live: LiveUpload,
}

/// An entry of [`S3Store`]'s live uploads, removed when dropped.
#[derive(Debug)]
struct LiveUpload {
    set: LiveUploads,
    id: String,
}

impl LiveUpload {
    fn new(set: &LiveUploads, id: &str) -> Self {
        set.lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string());
        Self {
            set: Arc::clone(set),
            id: id.to_string(),
        }
    }
}

impl Drop for LiveUpload {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl JournaledUpload {
    async fn remove_marker(&self) {
        if let Err(e) = self.marker_store.delete(&self.marker).await {
            // Harmless: the marker names an upload that no longer exists; the next sweep removes it.
            tracing::warn!(marker = %self.marker, error = %e, "could not remove upload journal marker");
        }
    }
}

#[async_trait]
impl MultipartUpload for JournaledUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let idx = self.next_part;
        self.next_part += 1;
        let s3 = Arc::clone(&self.s3);
        let target = self.target.clone();
        let id = self.upload_id.clone();
        let parts = Arc::clone(&self.parts);
        async move {
            let part = s3.put_part(&target, &id, idx, data).await?;
            let mut slots = parts.lock().unwrap_or_else(|p| p.into_inner());
            if slots.len() <= idx {
                slots.resize(idx + 1, None);
            }
            slots[idx] = Some(part);
            Ok(())
        }
        .boxed()
    }

    async fn complete(&mut self) -> Result<PutResult> {
        if self.next_part == 0 {
            // S3 rejects a completion without parts: an empty object is one empty part.
            self.put_part(PutPayload::default()).await?;
        }
        let parts: Vec<PartId> = {
            let slots = self.parts.lock().unwrap_or_else(|p| p.into_inner());
            if slots.len() != self.next_part || slots.iter().any(Option::is_none) {
                return Err(object_store::Error::Generic {
                    store: "S3",
                    source: "multipart upload completed before all of its parts".into(),
                });
            }
            slots.iter().flatten().cloned().collect()
        };
        let result = self
            .s3
            .complete_multipart(&self.target, &self.upload_id, parts)
            .await?;
        self.remove_marker().await;
        Ok(result)
    }

    async fn abort(&mut self) -> Result<()> {
        self.s3
            .abort_multipart(&self.target, &self.upload_id)
            .await?;
        self.remove_marker().await;
        Ok(())
    }
}

/// The body of a probe object written by [`crate::Repository::check`].
pub(crate) fn probe_body() -> Bytes {
    Bytes::from_static(b"ddsvault repository probe\n")
}
