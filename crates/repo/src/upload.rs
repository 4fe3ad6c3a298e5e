//! Streaming upload from a blocking producer: [`UploadWriter`] + [`UploadHandle`].
//!
//! ```text
//!  blocking thread                          async runtime
//!  ───────────────                          ─────────────
//!  producer ──write()──▶ UploadWriter       uploader task ──put_part──▶ store
//!                        · SHA-256, size    · groups chunks into parts
//!                        · chunk buffer     · ≤ max_in_flight_parts in flight
//!                        └─blocking_send──▶ bounded channel (channel_capacity chunks)
//!  producer ──close()──▶ sends Close{size, sha256}
//!                                           UploadHandle::finish() ──▶ complete()
//! ```
//!
//! Publication needs *both* a clean [`UploadWriter::close`] and [`UploadHandle::finish`]. If
//! the writer is dropped unclosed (producer error or panic), the handle is dropped, the
//! finish future is dropped, [`UploadHandle::abort`] is called or the cancellation token
//! fires, the multipart upload is aborted and no object appears at the destination.
//!
//! # Memory bound
//!
//! At most `(channel_capacity + 2) × chunk_size + max_in_flight_parts × part_size` bytes are
//! buffered: `channel_capacity` chunks queued, one being filled by the writer, at most one
//! being split by the uploader, and the parts being uploaded (the part being assembled counts
//! against those). With the defaults (4 × 1 MiB chunks, 8 MiB parts, 1 part in flight) that is
//! 14 MiB; see [`UploadOptions::memory_bound`].

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use object_store::{MultipartUpload, ObjectStore, PutPayload, PutPayloadMut};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::Instrument;

use crate::{RepoError, RepoPath, Repository};

/// Smallest part size accepted by S3 (and OSS) for all parts but the last.
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// Default part size.
pub const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;
/// Default size of the chunks the writer hands to the uploader.
pub const DEFAULT_CHUNK_SIZE: usize = 1024 * 1024;
/// Default number of chunks that may wait in the channel.
pub const DEFAULT_CHANNEL_CAPACITY: usize = 4;
/// Default number of parts uploaded concurrently.
pub const DEFAULT_MAX_IN_FLIGHT_PARTS: usize = 1;
/// Smallest chunk size (smaller values are raised to it).
const MIN_CHUNK_SIZE: usize = 4 * 1024;

/// Tuning and cancellation of one upload. Build with [`UploadOptions::default`] and the
/// `with_*` setters.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct UploadOptions {
    /// Size of every part but the last (≥ [`MIN_PART_SIZE`]).
    pub part_size: usize,
    /// Size of the chunks sent from the writer to the uploader (≤ `part_size`).
    pub chunk_size: usize,
    /// How many chunks may be queued between writer and uploader (≥ 1).
    pub channel_capacity: usize,
    /// How many parts may be uploading at once (≥ 1).
    pub max_in_flight_parts: usize,
    /// Cancels the upload (nothing is published; the writer's next write fails).
    pub cancel: CancellationToken,
}

impl Default for UploadOptions {
    fn default() -> Self {
        Self {
            part_size: DEFAULT_PART_SIZE,
            chunk_size: DEFAULT_CHUNK_SIZE,
            channel_capacity: DEFAULT_CHANNEL_CAPACITY,
            max_in_flight_parts: DEFAULT_MAX_IN_FLIGHT_PARTS,
            cancel: CancellationToken::new(),
        }
    }
}

impl UploadOptions {
    /// Sets the part size; values below [`MIN_PART_SIZE`] are raised to it.
    pub fn with_part_size(mut self, part_size: usize) -> Self {
        self.part_size = part_size;
        self
    }

    /// Sets the chunk size (clamped to `4 KiB..=part_size` when the upload starts).
    pub fn with_chunk_size(mut self, chunk_size: usize) -> Self {
        self.chunk_size = chunk_size;
        self
    }

    /// Sets the channel capacity in chunks (at least 1).
    pub fn with_channel_capacity(mut self, channel_capacity: usize) -> Self {
        self.channel_capacity = channel_capacity;
        self
    }

    /// Sets how many parts may upload concurrently (at least 1).
    pub fn with_max_in_flight_parts(mut self, max_in_flight_parts: usize) -> Self {
        self.max_in_flight_parts = max_in_flight_parts;
        self
    }

    /// Sets the cancellation token.
    pub fn with_cancel(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    /// The options with every value clamped into its valid range.
    fn normalized(mut self) -> Self {
        self.part_size = self.part_size.max(MIN_PART_SIZE);
        self.chunk_size = self.chunk_size.clamp(MIN_CHUNK_SIZE, self.part_size);
        self.channel_capacity = self.channel_capacity.max(1);
        self.max_in_flight_parts = self.max_in_flight_parts.max(1);
        self
    }

    /// Upper bound of the bytes buffered by one upload (see the module docs).
    pub fn memory_bound(&self) -> usize {
        let o = self.clone().normalized();
        (o.channel_capacity + 2) * o.chunk_size + o.max_in_flight_parts * o.part_size
    }
}

/// What a finished upload stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedObject {
    /// Where it was stored.
    pub path: RepoPath,
    /// Bytes written.
    pub size: u64,
    /// Lowercase hex SHA-256 of the bytes written.
    pub sha256: String,
}

enum Msg {
    Data(Bytes),
    Close { size: u64, sha256: String },
}

/// Failure reported by the uploader to the writer.
#[derive(Default)]
struct Shared {
    failed: AtomicBool,
    message: Mutex<Option<String>>,
}

impl Shared {
    fn fail(&self, message: String) {
        let mut slot = self.message.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(message);
        self.failed.store(true, Ordering::Release);
    }

    fn error(&self) -> io::Error {
        let slot = self.message.lock().unwrap_or_else(|p| p.into_inner());
        let msg = slot.as_deref().unwrap_or("upload task stopped");
        io::Error::other(format!("upload failed: {msg}"))
    }
}

/// The producer's end of an upload: a blocking [`io::Write`].
///
/// Use it from a blocking thread (`spawn_blocking`, a `std::thread`): a full channel blocks the
/// writer, which is the backpressure. **Calling `write`/`flush`/`close` from inside an async
/// task panics** (`blocking_send`).
///
/// Hashing happens here, on the producer's thread. After any error the writer is poisoned and
/// every further call fails. Call [`UploadWriter::close`] when done; dropping the writer
/// without closing it aborts the upload.
pub struct UploadWriter {
    tx: Option<mpsc::Sender<Msg>>,
    buf: BytesMut,
    chunk_size: usize,
    hasher: Sha256,
    size: u64,
    shared: Arc<Shared>,
    poisoned: bool,
    path: RepoPath,
}

impl std::fmt::Debug for UploadWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadWriter")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl UploadWriter {
    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.size
    }

    fn check(&mut self) -> io::Result<()> {
        if self.poisoned || self.tx.is_none() {
            return Err(io::Error::other(
                "upload writer is poisoned by an earlier error",
            ));
        }
        if self.shared.failed.load(Ordering::Acquire) {
            self.poisoned = true;
            return Err(self.shared.error());
        }
        Ok(())
    }

    fn send(&mut self, msg: Msg) -> io::Result<()> {
        let Some(tx) = self.tx.as_ref() else {
            return Err(io::Error::other("upload writer is closed"));
        };
        if tx.blocking_send(msg).is_err() {
            // The uploader stopped; it records why before dropping the receiver.
            self.poisoned = true;
            return Err(self.shared.error());
        }
        Ok(())
    }

    fn send_buffer(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        self.send(Msg::Data(chunk))
    }

    /// Flushes the last chunk and tells the uploader that the data is complete. The object is
    /// published when [`UploadHandle::finish`] completes.
    ///
    /// # Errors
    /// The uploader's error if it failed, or if the writer was poisoned.
    pub fn close(mut self) -> io::Result<()> {
        self.check()?;
        let result = self.send_buffer().and_then(|()| {
            let sha256 = hex::encode(std::mem::take(&mut self.hasher).finalize());
            self.send(Msg::Close {
                size: self.size,
                sha256,
            })
        });
        // Dropping the sender after Close is the normal end of the stream.
        self.tx = None;
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }
}

impl io::Write for UploadWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.check()?;
        // Take at most what fits in the current chunk, so one huge write cannot exceed the
        // memory bound; `write_all` loops over the rest.
        let take = data.len().min(self.chunk_size - self.buf.len());
        let data = &data[..take];
        self.hasher.update(data);
        self.size += take as u64;
        self.buf.extend_from_slice(data);
        if self.buf.len() >= self.chunk_size {
            self.send_buffer()?;
        }
        Ok(take)
    }

    /// Hands the partial chunk to the uploader. This does not make anything durable or
    /// visible; only [`UploadWriter::close`] + [`UploadHandle::finish`] publish.
    fn flush(&mut self) -> io::Result<()> {
        self.check()?;
        self.send_buffer()
    }
}

impl Drop for UploadWriter {
    fn drop(&mut self) {
        if self.tx.is_some() {
            // Dropping the sender without Close tells the uploader to abort.
            tracing::debug!(path = %self.path, "upload writer dropped without close; aborting upload");
        }
    }
}

/// The async end of an upload: await [`UploadHandle::finish`] to publish, or
/// [`UploadHandle::abort`]. Dropping it aborts the upload.
#[derive(Debug)]
pub struct UploadHandle {
    path: RepoPath,
    task: JoinHandle<Result<UploadedObject, RepoError>>,
    commit: oneshot::Sender<()>,
    /// Cancels the uploader when the handle (or the `finish` future) is dropped.
    guard: DropGuard,
}

impl UploadHandle {
    /// The destination.
    pub fn path(&self) -> &RepoPath {
        &self.path
    }

    /// Waits for the writer to be closed and all parts to be uploaded, then publishes the
    /// object. Can be awaited while the producer is still writing.
    ///
    /// Dropping this future (or cancelling the token) aborts the upload up to the moment the
    /// final "complete" request is issued; from then on the completion runs to its end.
    ///
    /// # Errors
    /// [`RepoError::WriterDropped`] if the writer was dropped without `close()`,
    /// [`RepoError::Cancelled`] if the token fired, or the store error. In every error case
    /// nothing is published at the destination (a previous object there is left unchanged).
    pub async fn finish(self) -> Result<UploadedObject, RepoError> {
        let Self {
            task,
            commit,
            guard,
            ..
        } = self;
        // If the uploader already stopped, it has its result; ignoring the send error is fine.
        let _ = commit.send(());
        let result = task.await;
        // Finished normally: nothing left to cancel. (If this future is dropped before here,
        // the guard cancels the uploader.)
        drop(guard.disarm());
        match result {
            Ok(r) => r,
            Err(e) => Err(RepoError::Internal(format!("upload task failed: {e}"))),
        }
    }

    /// Aborts the upload and waits until the store has discarded it. The writer's next call
    /// fails.
    pub async fn abort(self) {
        let Self { task, guard, .. } = self;
        drop(guard); // cancels
        match task.await {
            Ok(Err(RepoError::Cancelled)) | Ok(Err(RepoError::WriterDropped { .. })) => {}
            Ok(Ok(_)) => {
                // Unreachable: the uploader only publishes after `commit`, which abort never
                // sends.
                tracing::warn!("upload published despite abort");
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "upload failed before abort"),
            Err(e) => tracing::warn!(error = %e, "upload task failed"),
        }
    }
}

impl Repository {
    /// Starts a streaming upload to `path`; see the [module docs](crate::upload).
    ///
    /// Returns the writer (for a blocking producer thread) and the handle (to await). The
    /// object appears at `path` only after both [`UploadWriter::close`] and
    /// [`UploadHandle::finish`] succeed; it replaces any object there atomically.
    ///
    /// # Panics
    /// If called outside a Tokio runtime (the uploader is a spawned task).
    pub fn upload(&self, path: &RepoPath, opts: UploadOptions) -> (UploadWriter, UploadHandle) {
        let opts = opts.normalized();
        let (tx, rx) = mpsc::channel(opts.channel_capacity);
        let (commit_tx, commit_rx) = oneshot::channel();
        let cancel = opts.cancel.child_token();
        let shared = Arc::new(Shared::default());

        let uploader = Uploader {
            store: Arc::clone(&self.store),
            path: path.clone(),
            part_size: opts.part_size,
            max_in_flight: opts.max_in_flight_parts,
            cancel: cancel.clone(),
        };
        let span = tracing::debug_span!("upload", path = %path);
        let task = tokio::spawn(
            uploader
                .run(rx, commit_rx, Arc::clone(&shared))
                .instrument(span),
        );

        let writer = UploadWriter {
            tx: Some(tx),
            buf: BytesMut::with_capacity(opts.chunk_size),
            chunk_size: opts.chunk_size,
            hasher: Sha256::new(),
            size: 0,
            shared,
            poisoned: false,
            path: path.clone(),
        };
        let handle = UploadHandle {
            path: path.clone(),
            task,
            commit: commit_tx,
            guard: cancel.drop_guard(),
        };
        (writer, handle)
    }
}

struct Uploader {
    store: Arc<dyn ObjectStore>,
    path: RepoPath,
    part_size: usize,
    max_in_flight: usize,
    cancel: CancellationToken,
}

/// The multipart upload being assembled.
struct Parts {
    upload: Box<dyn MultipartUpload>,
    buffer: PutPayloadMut,
    in_flight: JoinSet<object_store::Result<()>>,
}

impl Parts {
    fn start_part(&mut self) {
        let payload: PutPayload = std::mem::take(&mut self.buffer).into();
        let _ = self.in_flight.spawn(self.upload.put_part(payload));
    }

    /// Waits for the oldest in-flight part; `None` when none is in flight.
    async fn join_next(&mut self) -> Option<Result<(), RepoError>> {
        let joined = self.in_flight.join_next().await?;
        Some(match joined {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(RepoError::Store(e)),
            Err(e) => Err(RepoError::Internal(format!("part upload task failed: {e}"))),
        })
    }

    async fn abort(mut self, path: &RepoPath) {
        self.in_flight.shutdown().await;
        if let Err(e) = self.upload.abort().await {
            // Orphaned parts on S3 are removed by the bucket's lifecycle rule (see crate docs).
            tracing::warn!(path = %path, error = %e, "aborting multipart upload failed");
        }
    }
}

impl Uploader {
    async fn run(
        self,
        mut rx: mpsc::Receiver<Msg>,
        commit: oneshot::Receiver<()>,
        shared: Arc<Shared>,
    ) -> Result<UploadedObject, RepoError> {
        let result = self.run_inner(&mut rx, commit).await;
        if let Err(e) = &result {
            // Record the reason *before* `rx` is dropped, so the writer's failing send finds it.
            shared.fail(e.to_string());
        }
        drop(rx);
        result
    }

    async fn run_inner(
        &self,
        rx: &mut mpsc::Receiver<Msg>,
        commit: oneshot::Receiver<()>,
    ) -> Result<UploadedObject, RepoError> {
        let location = self.path.to_location()?;
        let upload = tokio::select! {
            biased;
            () = self.cancel.cancelled() => return Err(RepoError::Cancelled),
            r = self.store.put_multipart(&location) => r.map_err(|e| RepoError::from_store(&self.path, e))?,
        };
        let mut parts = Parts {
            upload,
            buffer: PutPayloadMut::new(),
            in_flight: JoinSet::new(),
        };

        let (size, sha256) = match self.receive(rx, &mut parts).await {
            Ok(summary) => summary,
            Err(e) => {
                parts.abort(&self.path).await;
                return Err(e);
            }
        };

        // Everything is written; publish only if the handle says so.
        let committed = tokio::select! {
            biased;
            () = self.cancel.cancelled() => false,
            r = commit => r.is_ok(),
        };
        if !committed {
            parts.abort(&self.path).await;
            return Err(RepoError::Cancelled);
        }
        if let Err(e) = self.complete(&mut parts).await {
            parts.abort(&self.path).await;
            return Err(e);
        }
        tracing::debug!(size, "upload published");
        Ok(UploadedObject {
            path: self.path.clone(),
            size,
            sha256,
        })
    }

    /// Moves chunks into parts until the writer closes. Returns the writer's size and hash.
    async fn receive(
        &self,
        rx: &mut mpsc::Receiver<Msg>,
        parts: &mut Parts,
    ) -> Result<(u64, String), RepoError> {
        let mut received = 0u64;
        loop {
            let msg = tokio::select! {
                biased;
                () = self.cancel.cancelled() => return Err(RepoError::Cancelled),
                // Notice a failed part while the producer is slow, and free a slot.
                Some(r) = parts.join_next(), if !parts.in_flight.is_empty() => {
                    r?;
                    continue;
                }
                // Backpressure: accept no data while `max_in_flight` parts are uploading, so
                // the uploader holds at most `max_in_flight` parts plus one chunk.
                msg = rx.recv(), if parts.in_flight.len() < self.max_in_flight => msg,
            };
            match msg {
                Some(Msg::Data(mut bytes)) => {
                    received += bytes.len() as u64;
                    // chunk_size <= part_size, so this starts at most one part.
                    while !bytes.is_empty() {
                        let room = self.part_size - parts.buffer.content_length();
                        if bytes.len() < room {
                            parts.buffer.push(bytes);
                            break;
                        }
                        parts.buffer.push(bytes.split_to(room));
                        parts.start_part();
                    }
                }
                Some(Msg::Close { size, sha256 }) => {
                    if size != received {
                        return Err(RepoError::Internal(format!(
                            "writer reported {size} bytes but {received} were received"
                        )));
                    }
                    return Ok((size, sha256));
                }
                None => {
                    return Err(RepoError::WriterDropped {
                        path: self.path.to_string(),
                    })
                }
            }
        }
    }

    /// Uploads the last part, waits for all parts, completes the upload.
    async fn complete(&self, parts: &mut Parts) -> Result<(), RepoError> {
        if parts.buffer.content_length() > 0 {
            parts.start_part();
        }
        loop {
            let joined = tokio::select! {
                biased;
                () = self.cancel.cancelled() => return Err(RepoError::Cancelled),
                r = parts.join_next() => r,
            };
            match joined {
                Some(r) => r?,
                None => break,
            }
        }
        // Not cancellable: abandoning a completion half-way could publish the object (a local
        // rename runs on, S3 may have received the request) while we report failure.
        parts
            .upload
            .complete()
            .await
            .map(|_| ())
            .map_err(|e| RepoError::from_store(&self.path, e))
    }
}
