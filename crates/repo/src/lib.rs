//! `ddsvault-repo`: the backup repository.
//!
//! Every byte of backup data is read and written through [`Repository`], a thin, validated
//! layer over an [`object_store::ObjectStore`]: a local directory today
//! ([`Repository::local`]), an S3-compatible bucket — AWS S3, MinIO, Alibaba OSS ([`Repository::s3`], see
//! [`s3`]), memory in tests ([`Repository::memory`]); [`Repository::open`] picks one from configuration. Apart from `Repository::local` (and its private store
//! wrapper) nothing here assumes a filesystem.
//!
//! # Layout
//!
//! Defined once, in [`layout`]:
//!
//! ```text
//! backups/<instance>/<backup_id>/manifest.json   commit marker, written last
//! backups/<instance>/<backup_id>/<files…>        data files (names relative to the prefix)
//! staging/<job_token>/<files…>                   per-job scratch space
//! chunks/<instance>/<hh>/<sha256>                snapshot chunks, shared across backups
//! ```
//!
//! Paths are [`RepoPath`]s: relative, `/`-separated, validated (no `..`, `.`, empty segments,
//! backslashes, control characters); the string is the object key verbatim. Ids coming from
//! outside are escaped into a single segment, so no id can leave its prefix.
//!
//! # What is visible when
//!
//! | operation | local directory | S3 / OSS |
//! |---|---|---|
//! | [`Repository::put`] | data goes to a hidden staging file `<name>#<n>` in the same directory, then `rename(2)` replaces `<name>`: readers see the old object or the whole new one. The file and its directories are fsynced before `put` returns. | one `PUT`: the object appears whole when the request succeeds (both are strongly read-after-write consistent), or not at all. |
//! | [`Repository::upload`] | parts are written into the staging file; completion renames it into place (then fsync). Aborting removes it. | a multipart upload: nothing is visible until `CompleteMultipartUpload`. Aborted uploads are cleaned with `AbortMultipartUpload`; uploads lost to a crash are found through their journal marker (`uploads/…`, see [`s3`]) and aborted by `delete_prefix` of their prefix or by [`Repository::sweep_uploads`]. |
//! | [`Repository::rename`] | atomic `rename(2)` (replaces the target). | jobs avoid it ([`Repository::write_path`] gives the final key); otherwise copy then delete: the target appears whole, the source lingers until the delete; a crash in between leaves both. Single-request copy is limited to 5 GiB. |
//! | [`Repository::delete_prefix`] | file by file (manifests first), empty directories removed; not atomic. | object by object (manifests first); not atomic. |
//! | [`Repository::list`] | hides staging files. | lists only completed objects. |
//!
//! A streaming upload is published only when the producer called [`UploadWriter::close`]
//! *and* the consumer awaited [`UploadHandle::finish`]: a producer that fails, panics or is
//! cancelled drops its writer unclosed, which aborts the upload, so no complete-looking object
//! is ever published from a partial stream.
//!
//! # Backups are committed by their manifest
//!
//! A backup is complete if and only if `<prefix>/manifest.json` exists and decodes
//! ([`Repository::read_manifest`]). Writers store every data file (directly under the backup
//! prefix, or in staging and then renamed), then call [`Repository::write_manifest`] (an atomic
//! `put`). Readers ignore prefixes without a manifest (a crashed or running backup).
//! [`Repository::delete_prefix`] deletes manifests before anything else, so a half-deleted
//! backup is never mistaken for a complete one. [`Repository::verify`] re-reads every file and checks its
//! size and SHA-256 against the manifest.
//!
//! Snapshot chunks are the exception to "durable when the call returns": [`Repository::put_chunk`] writes them
//! atomically but without an fsync each, and the snapshot job calls [`Repository::sync_deferred`] (one `syncfs`)
//! before its index names them. A power loss before that sync can leave chunk files empty; such a file is not
//! counted as stored and is written again by the next snapshot that needs it.
//!
//! Crash caveat (local directory): the fsync follows the rename, so a power loss *during* a
//! `put` may leave the final name with partial content (never for a `put` that returned).
//! Because the manifest is written last, such a file belongs to an uncommitted backup, and a
//! torn manifest fails to decode ([`RepoError::Manifest`]): both read as "not a complete
//! backup". Staging files (`<name>#<n>`) left by a crash are invisible to every operation,
//! including `delete_prefix`, so they stay on disk until swept by hand.
//!
//! One writer per backup prefix is assumed (backup ids and job tokens are unique); the
//! repository does no locking.
//!
//! # CPU work
//!
//! Hashing never runs on the async runtime's worker threads: uploads hash in the producer's
//! blocking thread ([`UploadWriter`]), `verify` hashes on a blocking thread fed by a bounded
//! channel, and local file I/O goes through `object_store`'s `spawn_blocking`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod chunks;
mod copy;
pub mod encrypted;
mod error;
pub mod export;
#[cfg(feature = "fault-injection")]
pub mod faults;
mod hash;
pub mod layout;
mod local;
mod manifest;
mod object_lock;
mod path;
mod repository;
pub mod s3;
mod s3_uploads;
pub mod upload;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

#[cfg(test)]
mod tests;

pub use chunks::{ChunkRef, ChunkSeal, PutChunk, SnapshotFile, SnapshotIndex, StoredChunk};
pub use error::RepoError;
pub use hash::sha256_hex;
pub use manifest::{Manifest, ManifestFile, MANIFEST_FORMAT};
pub use object_lock::{ObjectRetention, Retained};
pub use path::RepoPath;
pub use repository::{ObjectInfo, Repository, RepositoryLocation, UploadTuning};
pub use s3::S3Settings;
pub use upload::{UploadHandle, UploadOptions, UploadWriter, UploadedObject};
