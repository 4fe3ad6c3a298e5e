//! The chunk store of snapshot backups: content-addressed, zstd-compressed chunks shared by every snapshot of
//! an instance.
//!
//! ```text
//! chunks/<instance>/<hh>/<sha256>   one chunk: zstd frame of the raw bytes whose SHA-256 is <sha256>,
//!                                   then a skippable frame sealing the stored bytes (below)
//! quarantine/chunks/<instance>/…    chunks `scrub` found damaged, moved aside (never deleted)
//! ```
//!
//! The name authenticates the raw bytes, but not every stored bit: the zstd decoder ignores some bits of a frame
//! (an unused header flag, slack in Huffman and FSE table descriptions — about 0.5 % of single-bit flips of a
//! typical chunk decode to the very same bytes). So each chunk ends with a zstd *skippable frame* (magic
//! `0x184D2A50`, 32-byte payload) holding the SHA-256 of the compressed frame before it: [`Repository::get_chunk`]
//! checks it first, and the file stays a valid zstd stream for `zstd -d`. Chunks written before the seal existed
//! are read as they are (their raw digest still checked) and sealed by the next `scrub`.
//!
//! Chunks live outside every backup prefix, so deleting a backup (`delete_prefix` of its prefix) or failing a
//! job never removes a chunk another snapshot may share. A snapshot lists its files and their chunks in its
//! index ([`SnapshotIndex`], the object [`SNAPSHOT_INDEX_FILE`] of its backup prefix), which its manifest lists
//! with size and SHA-256 like any file and which is written after every chunk it names.
//! Chunks no manifest names (left by a failed or deleted snapshot) are orphans: [`Repository::referenced_chunks`]
//! gives the set a collector must keep.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::{
    hash::sha256_hex, layout, path::unescape_segment, Manifest, ManifestFile, RepoError, RepoPath,
    Repository,
};

/// Name of the snapshot index object in a snapshot's backup prefix (listed in its manifest like any file).
/// The chunk lists are kept out of `manifest.json` and compressed: a logically full snapshot names every chunk,
/// and these hex digests would otherwise weigh more than the changed data of a small increment.
pub const SNAPSHOT_INDEX_FILE: &str = "snapshot-index.json.zst";

/// One chunk of a snapshot file, in file order.
///
/// `blake3` and `stored` were added later (both optional, left out when absent): indexes written before them
/// read as they are, and readers that predate them ignore them (serde skips unknown fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// Lowercase hex SHA-256 of the raw (uncompressed) bytes.
    pub sha256: String,
    /// Raw size in bytes.
    pub size: u64,
    /// Fingerprint of the raw bytes: the first 16 bytes of their BLAKE3 hash, lowercase hex. The next snapshot
    /// of the instance looks its chunks up by it, so an unchanged chunk is neither SHA-256 hashed nor compressed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// Stored (compressed and sealed) bytes of the chunk when this snapshot wrote or reused it: a later snapshot
    /// reuses the chunk only if the store still holds it with exactly this size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<u64>,
}

impl ChunkRef {
    /// A chunk named by its SHA-256 and raw size, without fingerprint or stored size (the original format).
    pub fn new(sha256: String, size: u64) -> Self {
        Self {
            sha256,
            size,
            blake3: None,
            stored: None,
        }
    }
}

/// Length in bytes of a chunk fingerprint ([`ChunkRef::blake3`]): 128 bits of BLAKE3 keep a crafted collision
/// out of reach (2^64 work) while adding only 32 hex digits per chunk to the index.
pub const FINGERPRINT_BYTES: usize = 16;

/// The fingerprint of a chunk's raw bytes ([`ChunkRef::blake3`]).
pub fn fingerprint(raw: &[u8]) -> String {
    hex::encode(&blake3::hash(raw).as_bytes()[..FINGERPRINT_BYTES])
}

/// What [`Repository::put_chunk_checked`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutChunk {
    /// The chunk was absent and is now stored with this many bytes.
    Written(u64),
    /// The store held a chunk of that name with another size than expected (damaged or truncated): it was
    /// written again, with this many bytes. Other snapshots may name it, so it is not this writer's to delete.
    Replaced(u64),
    /// The store already held it, with this many bytes (the expected size, when one was given).
    Present(u64),
}

/// One file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFile {
    /// File name relative to the node's data directory.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the whole file.
    pub sha256: String,
    /// The chunks that make up the file, in order.
    pub chunks: Vec<ChunkRef>,
}

/// What a snapshot manifest records: every file, as chunks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotIndex {
    /// The files of the image.
    pub files: Vec<SnapshotFile>,
}

impl SnapshotIndex {
    /// Decodes and checks an index (digests well-formed, chunk sizes adding up to each file's size).
    fn decode(path: &RepoPath, json: &[u8]) -> Result<Self, RepoError> {
        let bad = |reason: String| RepoError::Manifest {
            path: path.to_string(),
            reason,
        };
        let idx: SnapshotIndex =
            serde_json::from_slice(json).map_err(|e| bad(format!("snapshot index: {e}")))?;
        for f in &idx.files {
            if !is_digest(&f.sha256) {
                return Err(bad(format!("file {:?}: malformed sha256", f.name)));
            }
            if let Some(c) = f.chunks.iter().find(|c| {
                !is_digest(&c.sha256)
                    || c.blake3
                        .as_deref()
                        .is_some_and(|b| b.len() != 2 * FINGERPRINT_BYTES || !is_hex(b))
            }) {
                return Err(bad(format!(
                    "file {:?}: malformed chunk digest {:?}",
                    f.name, c.sha256
                )));
            }
            let sum: u64 = f.chunks.iter().map(|c| c.size).sum();
            if sum != f.size {
                return Err(bad(format!(
                    "file {:?}: chunks add up to {sum} bytes, the file has {}",
                    f.name, f.size
                )));
            }
        }
        Ok(idx)
    }

    /// Sum of the file sizes (the logical size of the snapshot).
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// `chunks/<instance>`: every chunk of one instance.
pub fn chunks_prefix(instance_id: &str) -> RepoPath {
    RepoPath::from_valid(layout::CHUNKS_DIR.to_string()).join_escaped(instance_id)
}

/// `chunks/<instance>/<hh>/<sha256>`.
///
/// # Errors
/// [`RepoError::InvalidPath`] if `sha256` is not 64 lowercase hex digits.
pub fn chunk_path(instance_id: &str, sha256: &str) -> Result<RepoPath, RepoError> {
    if !is_digest(sha256) {
        return Err(RepoError::InvalidPath {
            path: sha256.to_string(),
            reason: "a chunk is named by 64 lowercase hex digits".into(),
        });
    }
    chunks_prefix(instance_id).join(&format!("{}/{sha256}", &sha256[..2]))
}

/// One chunk found in a chunk store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChunk {
    /// Lowercase hex SHA-256 of the raw bytes (the chunk's name).
    pub sha256: String,
    /// Where it is stored.
    pub path: RepoPath,
    /// Stored (compressed) bytes.
    pub size: u64,
    /// When the store last wrote it. `put_chunk` never rewrites an existing chunk, so a chunk reused by a later
    /// snapshot keeps the time it was first written.
    pub last_modified: DateTime<Utc>,
}

/// Magic of the zstd skippable frame that seals a chunk (the first of the 16 skippable magics, little-endian).
const SEAL_MAGIC: [u8; 4] = 0x184D_2A50_u32.to_le_bytes();
/// The seal: magic, payload length (32, little-endian), SHA-256 of the zstd frame before it.
const SEAL_LEN: usize = 8 + 32;

/// `frame` followed by its seal.
fn seal_chunk(mut frame: Vec<u8>) -> Vec<u8> {
    let digest = sha2::Sha256::digest(&frame);
    frame.extend_from_slice(&SEAL_MAGIC);
    frame.extend_from_slice(&32u32.to_le_bytes());
    frame.extend_from_slice(&digest);
    frame
}

/// Whether a stored chunk carries a seal (it was written by this version) or not (written before seals existed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkSeal {
    /// The stored bytes matched their seal.
    Sealed,
    /// No seal: only the raw digest could be checked (see the module docs).
    Legacy,
}

/// The zstd frame of a stored chunk, its seal checked. A tail that looks like any skippable frame is taken as a
/// seal and must be exactly ours (so a flip inside the seal cannot make it pass as something zstd skips).
fn unseal_chunk<'a>(at: &str, stored: &'a [u8]) -> Result<(&'a [u8], ChunkSeal), RepoError> {
    let Some(split) = stored.len().checked_sub(SEAL_LEN) else {
        return Ok((stored, ChunkSeal::Legacy));
    };
    let tail = &stored[split..];
    if tail[1..4] != SEAL_MAGIC[1..4] || tail[0] & 0xF0 != SEAL_MAGIC[0] & 0xF0 {
        return Ok((stored, ChunkSeal::Legacy));
    }
    let frame = &stored[..split];
    let bad = |expected: String, actual: String| RepoError::Integrity {
        path: at.to_string(),
        what: "chunk seal",
        expected,
        actual,
    };
    if tail[..8] != [&SEAL_MAGIC[..], &32u32.to_le_bytes()[..]].concat() {
        return Err(bad(
            hex::encode([&SEAL_MAGIC[..], &32u32.to_le_bytes()[..]].concat()),
            hex::encode(&tail[..8]),
        ));
    }
    let actual = sha2::Sha256::digest(frame);
    if actual.as_slice() != &tail[8..] {
        return Err(bad(hex::encode(&tail[8..]), hex::encode(actual)));
    }
    Ok((frame, ChunkSeal::Sealed))
}

/// Checks `data` against an expected size and SHA-256, naming `at` in the error.
fn check_bytes(at: &str, data: &[u8], size: u64, sha256: &str) -> Result<(), RepoError> {
    let integrity = |what: &'static str, expected: String, actual: String| RepoError::Integrity {
        path: at.to_string(),
        what,
        expected,
        actual,
    };
    if data.len() as u64 != size {
        return Err(integrity("size", size.to_string(), data.len().to_string()));
    }
    let actual = sha256_hex(data);
    if actual != sha256 {
        return Err(integrity("sha256", sha256.to_string(), actual));
    }
    Ok(())
}

/// Decompresses a stored chunk and checks it against `want` (size and SHA-256); CPU work, for a blocking thread.
fn open_chunk(at: &str, stored: &[u8], want: &ChunkRef) -> Result<(Vec<u8>, ChunkSeal), RepoError> {
    let integrity = |what: &'static str, expected: String, actual: String| RepoError::Integrity {
        path: at.to_string(),
        what,
        expected,
        actual,
    };
    let (frame, seal) = unseal_chunk(at, stored)?;
    let capacity = usize::try_from(want.size).unwrap_or(usize::MAX);
    let raw = zstd::bulk::decompress(frame, capacity).map_err(|e| {
        integrity(
            "zstd frame",
            format!("{} raw bytes", want.size),
            e.to_string(),
        )
    })?;
    check_bytes(at, &raw, want.size, &want.sha256)?;
    Ok((raw, seal))
}

fn is_digest(s: &str) -> bool {
    s.len() == 64 && is_hex(s)
}

fn is_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Repository {
    /// Writes a snapshot's index into its backup prefix (zstd-compressed JSON) and returns the manifest entry
    /// to list it with. Call it before `write_manifest`, like any data file.
    ///
    /// # Errors
    /// The store error.
    pub async fn write_snapshot_index(
        &self,
        prefix: &RepoPath,
        index: &SnapshotIndex,
        zstd_level: i32,
    ) -> Result<ManifestFile, RepoError> {
        let json = serde_json::to_vec(index).map_err(|e| RepoError::Manifest {
            path: prefix.to_string(),
            reason: format!("encoding the snapshot index: {e}"),
        })?;
        let (compressed, sha256) = tokio::task::spawn_blocking(move || {
            let c = zstd::bulk::compress(&json, zstd_level)?;
            let h = sha256_hex(&c);
            Ok::<_, std::io::Error>((c, h))
        })
        .await
        .map_err(|e| RepoError::Internal(format!("index compression task: {e}")))??;
        let size = compressed.len() as u64;
        self.put(&prefix.join(SNAPSHOT_INDEX_FILE)?, Bytes::from(compressed))
            .await?;
        Ok(ManifestFile {
            name: SNAPSHOT_INDEX_FILE.to_string(),
            size,
            sha256,
        })
    }

    /// The index of the snapshot whose manifest is `m` (read from `prefix`), checked against the manifest's size
    /// and SHA-256; `None` if the backup is not a snapshot.
    ///
    /// # Errors
    /// [`RepoError::NotFound`] if the manifest lists an index that is missing, [`RepoError::Integrity`] if it
    /// does not match, [`RepoError::Manifest`] if it does not decode, or the store error.
    pub async fn read_snapshot_index(
        &self,
        prefix: &RepoPath,
        m: &Manifest,
    ) -> Result<Option<SnapshotIndex>, RepoError> {
        let Some(entry) = m.files.iter().find(|f| f.name == SNAPSHOT_INDEX_FILE) else {
            return Ok(None);
        };
        let path = prefix.join(SNAPSHOT_INDEX_FILE)?;
        let compressed = self.get(&path).await?;
        let want = entry.clone();
        let at = path.clone();
        let json = tokio::task::spawn_blocking(move || {
            let integrity =
                |what: &'static str, expected: String, actual: String| RepoError::Integrity {
                    path: at.to_string(),
                    what,
                    expected,
                    actual,
                };
            check_bytes(at.as_str(), &compressed, want.size, &want.sha256)?;
            let mut out = Vec::new();
            zstd::stream::copy_decode(compressed.as_ref(), &mut out)
                .map_err(|e| integrity("zstd frame", "a valid frame".into(), e.to_string()))?;
            Ok::<_, RepoError>(out)
        })
        .await
        .map_err(|e| RepoError::Internal(format!("index decompression task: {e}")))??;
        SnapshotIndex::decode(&path, &json).map(Some)
    }

    /// Stores a chunk unless the instance's store already has it. `raw` must hash to `sha256` (checked, on a
    /// blocking thread together with the compression). Returns the compressed bytes written, or `None` if the
    /// chunk was already there. On a local repository the chunk is atomic at once but durable only after
    /// [`Repository::sync_deferred`], which the writer calls once before anything names the chunk.
    ///
    /// # Errors
    /// [`RepoError::Integrity`] if `raw` does not match `sha256`, [`RepoError::InvalidPath`] for a malformed
    /// digest, or the store error.
    pub async fn put_chunk(
        &self,
        instance_id: &str,
        sha256: &str,
        raw: Bytes,
        zstd_level: i32,
    ) -> Result<Option<u64>, RepoError> {
        Ok(
            match self
                .put_chunk_checked(instance_id, sha256, raw, zstd_level, None)
                .await?
            {
                PutChunk::Written(n) | PutChunk::Replaced(n) => Some(n),
                PutChunk::Present(_) => None,
            },
        )
    }

    /// [`Repository::put_chunk`] that also says what was there: a chunk already stored counts as present only
    /// with `expect_stored` bytes when that is given (the size an earlier snapshot recorded), with any non-zero
    /// size otherwise; one of another size is written again ([`PutChunk::Replaced`]), since the name fixes the
    /// content and a rewrite can only repair it.
    ///
    /// # Errors
    /// As [`Repository::put_chunk`].
    pub async fn put_chunk_checked(
        &self,
        instance_id: &str,
        sha256: &str,
        raw: Bytes,
        zstd_level: i32,
        expect_stored: Option<u64>,
    ) -> Result<PutChunk, RepoError> {
        let path = chunk_path(instance_id, sha256)?;
        let replaced = match self.head(&path).await {
            Ok(meta) if meta.size > 0 && !expect_stored.is_some_and(|n| n != meta.size) => {
                return Ok(PutChunk::Present(meta.size))
            }
            // Empty: left by a power loss before the writer's sync (see `sync_deferred`); written again.
            Ok(meta) => meta.size > 0,
            Err(RepoError::NotFound { .. }) => false,
            Err(e) => return Err(e),
        };
        let expected = sha256.to_string();
        let at = path.to_string();
        let compressed = tokio::task::spawn_blocking(move || {
            let actual = sha256_hex(&raw);
            if actual != expected {
                return Err(RepoError::Integrity {
                    path: at,
                    what: "sha256",
                    expected,
                    actual,
                });
            }
            zstd::bulk::compress(&raw, zstd_level)
                .map(seal_chunk)
                .map_err(RepoError::Io)
        })
        .await
        .map_err(|e| RepoError::Internal(format!("chunk compression task: {e}")))??;
        let stored = compressed.len() as u64;
        self.put_deferred(&path, Bytes::from(compressed)).await?;
        Ok(if replaced {
            PutChunk::Replaced(stored)
        } else {
            PutChunk::Written(stored)
        })
    }

    /// Reads a chunk back, decompressed and checked against its size and SHA-256 (on a blocking thread).
    ///
    /// # Errors
    /// [`RepoError::NotFound`] for a missing chunk, [`RepoError::Integrity`] for one whose content does not
    /// match, or the store error.
    pub async fn get_chunk(&self, instance_id: &str, chunk: &ChunkRef) -> Result<Bytes, RepoError> {
        let path = chunk_path(instance_id, &chunk.sha256)?;
        let compressed = self.get(&path).await?;
        let want = chunk.clone();
        let at = path.to_string();
        tokio::task::spawn_blocking(move || {
            open_chunk(&at, &compressed, &want).map(|(raw, _)| Bytes::from(raw))
        })
        .await
        .map_err(|e| RepoError::Internal(format!("chunk decompression task: {e}")))?
    }

    /// Re-reads a stored chunk and checks it against its name: seal, zstd frame, SHA-256 of the raw bytes. A
    /// chunk written before seals existed that is intact gets its seal now (an atomic rewrite of the same frame).
    ///
    /// # Errors
    /// [`RepoError::Integrity`] for a damaged chunk, [`RepoError::NotFound`] if it vanished, or the store error.
    pub async fn scrub_chunk(&self, chunk: &StoredChunk) -> Result<ChunkSeal, RepoError> {
        let stored = self.get(&chunk.path).await?;
        let at = chunk.path.to_string();
        let want = chunk.sha256.clone();
        let seal = tokio::task::spawn_blocking(move || {
            let (frame, seal) = unseal_chunk(&at, &stored)?;
            let raw = zstd::stream::decode_all(frame).map_err(|e| RepoError::Integrity {
                path: at.clone(),
                what: "zstd frame",
                expected: "a valid frame".into(),
                actual: e.to_string(),
            })?;
            let actual = sha256_hex(&raw);
            if actual != want {
                return Err(RepoError::Integrity {
                    path: at,
                    what: "sha256",
                    expected: want,
                    actual,
                });
            }
            Ok(match seal {
                ChunkSeal::Sealed => None,
                ChunkSeal::Legacy => Some(seal_chunk(stored.to_vec())),
            })
        })
        .await
        .map_err(|e| RepoError::Internal(format!("chunk scrub task: {e}")))??;
        match seal {
            None => Ok(ChunkSeal::Sealed),
            Some(sealed) => {
                self.put(&chunk.path, Bytes::from(sealed)).await?;
                Ok(ChunkSeal::Legacy)
            }
        }
    }

    /// Moves a damaged chunk out of its store to `quarantine/<its path>.<unix ms>` (never deleted, never
    /// overwriting an earlier quarantined copy). The store then lacks it, so the next snapshot that has these
    /// bytes writes it again; snapshots that name it fail verification until then.
    ///
    /// # Errors
    /// The store error.
    pub async fn quarantine_chunk(&self, chunk: &StoredChunk) -> Result<RepoPath, RepoError> {
        let to = RepoPath::from_valid(layout::QUARANTINE_DIR.to_string()).join(&format!(
            "{}.{}",
            chunk.path,
            Utc::now().timestamp_millis()
        ))?;
        self.rename(&chunk.path, &to).await?;
        Ok(to)
    }

    /// Removes what the chunk writes of a crashed process left in the instance's store: on a local filesystem
    /// the staging files (`<digest>#<n>`) written before the rename that makes a chunk appear; on S3 nothing
    /// (an unfinished upload is not an object; the upload journal's sweep aborts it). Returns how many files
    /// were removed. Call only while no job of the instance runs: a live write's staging file looks the same.
    ///
    /// # Errors
    /// The filesystem error.
    pub async fn remove_abandoned_chunk_writes(&self, instance_id: &str) -> Result<u64, RepoError> {
        let Some(root) = &self.local_root else {
            return Ok(0);
        };
        let dir = chunks_prefix(instance_id)
            .segments()
            .fold(root.clone(), |d, seg| d.join(seg));
        tokio::task::spawn_blocking(move || crate::local::remove_abandoned_uploads(&dir))
            .await
            .map_err(|e| RepoError::Internal(format!("remove abandoned chunk writes: {e}")))?
            .map_err(RepoError::from)
    }

    /// How many chunks the instance's store holds and their stored (compressed) bytes.
    ///
    /// # Errors
    /// The store error.
    pub async fn chunk_store_usage(&self, instance_id: &str) -> Result<(u64, u64), RepoError> {
        let objects = self.list(&chunks_prefix(instance_id)).await?;
        Ok((
            objects.len() as u64,
            objects.iter().map(|o| o.size).sum::<u64>(),
        ))
    }

    /// The digests the instance's chunk store holds, from one listing: a snapshot checks this set instead of
    /// asking the store about each of its chunks (thousands of requests per GiB).
    ///
    /// # Errors
    /// The store error.
    pub async fn stored_chunk_digests(
        &self,
        instance_id: &str,
    ) -> Result<HashSet<String>, RepoError> {
        Ok(self
            .stored_chunk_sizes(instance_id)
            .await?
            .into_keys()
            .collect())
    }

    /// The digests the instance's chunk store holds with their stored sizes, from one listing (see
    /// [`Repository::stored_chunk_digests`]).
    ///
    /// # Errors
    /// The store error.
    pub async fn stored_chunk_sizes(
        &self,
        instance_id: &str,
    ) -> Result<HashMap<String, u64>, RepoError> {
        if let (Some(root), false) = (&self.local_root, self.encrypted) {
            // A local repository is read with `read_dir` and one `statx` per chunk, on a blocking thread: the same
            // files the store's listing finds (object_store's LocalFileSystem walks the same directories), without
            // its per-entry path and URL conversions, which made the two listings of a 100 MiB snapshot's 6,500
            // chunks a large part of an unchanged snapshot's time.
            let prefix = chunks_prefix(instance_id);
            let dir = object_store::local::LocalFileSystem::new_with_prefix(root)?
                .path_to_filesystem(&prefix.to_location()?)
                .map_err(|e| RepoError::from_store(&prefix, e))?;
            return tokio::task::spawn_blocking(move || local_chunk_sizes(&dir))
                .await
                .map_err(std::io::Error::other)?
                .map_err(RepoError::from);
        }
        Ok(self
            .list(&chunks_prefix(instance_id))
            .await?
            .into_iter()
            .filter_map(|o| {
                let name = o.path.file_name();
                // An empty chunk file is what a power loss leaves of one written but not yet synced: not a chunk.
                (is_digest(name) && o.size > 0).then(|| (name.to_string(), o.size))
            })
            .collect())
    }

    /// Every chunk store (one listing of `chunks/`): instance id → its chunks. Objects that are not laid out as
    /// `chunks/<instance>/<hh>/<sha256>` are left out, so a collector never touches what it did not write.
    ///
    /// # Errors
    /// The store error.
    pub async fn chunk_stores(&self) -> Result<BTreeMap<String, Vec<StoredChunk>>, RepoError> {
        let root = RepoPath::from_valid(layout::CHUNKS_DIR.to_string());
        let mut out: BTreeMap<String, Vec<StoredChunk>> = BTreeMap::new();
        for obj in self.list(&root).await? {
            let Some(rest) = obj.path.strip_prefix(&root) else {
                continue;
            };
            let mut parts = rest.split('/');
            let (Some(inst), Some(hh), Some(digest), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if !is_digest(digest) || hh != &digest[..2] {
                continue;
            }
            let Some(instance_id) = unescape_segment(inst) else {
                continue;
            };
            out.entry(instance_id).or_default().push(StoredChunk {
                sha256: digest.to_string(),
                path: obj.path.clone(),
                size: obj.size,
                last_modified: obj.last_modified,
            });
        }
        Ok(out)
    }

    /// Every chunk digest named by a committed snapshot manifest of the instance: what a collector of orphan
    /// chunks must keep. Chunks written by a snapshot still running are not included; a collector must not
    /// sweep while a snapshot job of the instance runs.
    ///
    /// # Errors
    /// The store error, or [`RepoError::Manifest`] for an undecodable manifest (a collector must then stop
    /// rather than risk deleting chunks that manifest names).
    pub async fn referenced_chunks(&self, instance_id: &str) -> Result<HashSet<String>, RepoError> {
        let mut out = HashSet::new();
        for obj in self.list(&layout::instance_prefix(instance_id)).await? {
            if obj.path.file_name() != layout::MANIFEST_FILE {
                continue;
            }
            let Some(prefix) = obj
                .path
                .as_str()
                .strip_suffix(layout::MANIFEST_FILE)
                .and_then(|p| p.strip_suffix('/'))
            else {
                continue;
            };
            let prefix = RepoPath::new(prefix)?;
            let Some(m) = self.read_manifest(&prefix).await? else {
                continue;
            };
            if let Some(idx) = self.read_snapshot_index(&prefix, &m).await? {
                for f in idx.files {
                    out.extend(f.chunks.into_iter().map(|c| c.sha256));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod gc_tests {
    use super::*;

    #[tokio::test]
    async fn an_empty_chunk_file_left_by_a_power_loss_is_written_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::local(dir.path()).expect("local");
        let raw = Bytes::from_static(b"chunk content");
        let digest = sha256_hex(&raw);
        let path = chunk_path("dds-p", &digest).expect("path");
        let file = dir.path().join(path.as_str());
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(&file, b"").expect("empty file");
        assert!(repo
            .stored_chunk_digests("dds-p")
            .await
            .expect("list")
            .is_empty());
        let written = repo
            .put_chunk("dds-p", &digest, raw.clone(), 3)
            .await
            .expect("put");
        assert!(written.is_some_and(|n| n > 0), "rewritten: {written:?}");
        repo.sync_deferred().await.expect("sync");
        let back = repo
            .get_chunk("dds-p", &ChunkRef::new(digest.clone(), raw.len() as u64))
            .await
            .expect("readable");
        assert_eq!(back, raw);
        assert!(repo
            .stored_chunk_digests("dds-p")
            .await
            .expect("list")
            .contains(&digest));
        // A chunk that is there is not written twice.
        assert_eq!(
            repo.put_chunk("dds-p", &digest, raw, 3).await.expect("put"),
            None
        );
    }

    #[tokio::test]
    async fn the_partial_chunk_writes_of_a_crash_are_removed_and_stored_chunks_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::local(dir.path()).expect("local");
        let raw = Bytes::from_static(b"a stored chunk");
        let digest = sha256_hex(&raw);
        repo.put_chunk("dds-p", &digest, raw, 3).await.expect("put");
        let stored = dir
            .path()
            .join(chunk_path("dds-p", &digest).expect("path").as_str());
        // What LocalFileSystem leaves when the process dies between writing and renaming.
        let partial = stored.with_file_name(format!("{}#1", sha256_hex(b"other")));
        std::fs::write(&partial, b"half").expect("write");
        let other = dir
            .path()
            .join(chunk_path("dds-q", &digest).expect("path").as_str());
        std::fs::create_dir_all(other.parent().expect("parent")).expect("mkdir");
        let foreign = other.with_file_name(format!("{digest}#2"));
        std::fs::write(&foreign, b"half").expect("write");
        assert_eq!(
            repo.remove_abandoned_chunk_writes("dds-p")
                .await
                .expect("remove"),
            1
        );
        assert!(!partial.exists());
        assert!(stored.exists(), "a complete chunk stays");
        assert!(foreign.exists(), "another instance's store is not touched");
        assert_eq!(
            Repository::memory()
                .remove_abandoned_chunk_writes("dds-p")
                .await
                .expect("memory"),
            0
        );
    }

    #[tokio::test]
    async fn chunk_stores_groups_chunks_by_instance_and_skips_foreign_objects() {
        let repo = Repository::memory();
        let a = sha256_hex(b"a");
        let b = sha256_hex(b"b");
        for (inst, raw, digest) in [("dds-1", b"a", &a), ("x/../y", b"b", &b)] {
            repo.put_chunk(inst, digest, Bytes::from_static(raw), 3)
                .await
                .expect("put");
        }
        // Not laid out as a chunk: never listed, so never swept.
        for foreign in [
            format!("chunks/dds-1/00/{a}"),
            "chunks/dds-1/notes.txt".to_string(),
            format!("chunks/dds-1/{}/{a}/x", &a[..2]),
        ] {
            repo.put(&RepoPath::new(foreign).expect("path"), Bytes::new())
                .await
                .expect("put");
        }
        let stores = repo.chunk_stores().await.expect("list");
        assert_eq!(
            stores.keys().cloned().collect::<Vec<_>>(),
            vec!["dds-1".to_string(), "x/../y".to_string()]
        );
        assert_eq!(stores["dds-1"].len(), 1);
        assert_eq!(stores["dds-1"][0].sha256, a);
        assert_eq!(stores["dds-1"][0].path, chunk_path("dds-1", &a).expect("p"));
        assert_eq!(stores["x/../y"][0].sha256, b);
    }

    #[test]
    fn unescape_inverts_escape_and_rejects_other_spellings() {
        for raw in ["", ".", "..", "dds-1", "a/b c%", "ünï"] {
            let escaped = crate::path::escape_segment(raw);
            assert_eq!(unescape_segment(&escaped).as_deref(), Some(raw));
        }
        for odd in ["%2e", "%zz", "%4", "a%41"] {
            assert_eq!(unescape_segment(odd), None, "{odd}");
        }
    }
}

#[cfg(test)]
mod flip_tests {
    use super::*;

    /// Every single-bit flip of a stored chunk is refused by `get_chunk` (the digest names the raw bytes, so this
    /// relies on the frame check for the bits the zstd decoder itself ignores).
    #[tokio::test]
    async fn every_single_bit_flip_of_a_stored_chunk_is_refused() {
        let repo = Repository::memory();
        // Compressible but varied: literals, matches and a Huffman table all occur.
        let raw: Vec<u8> = (0u32..3000)
            .flat_map(|i| format!("row {} value {}\n", i % 97, (i * 7919) % 1013).into_bytes())
            .collect();
        let raw = Bytes::from(raw);
        let digest = sha256_hex(&raw);
        repo.put_chunk("dds-f", &digest, raw.clone(), 3)
            .await
            .expect("put");
        let path = chunk_path("dds-f", &digest).expect("path");
        let stored = repo.get(&path).await.expect("stored").to_vec();
        let chunk = ChunkRef::new(digest, raw.len() as u64);
        let mut accepted = Vec::new();
        for i in 0..stored.len() * 8 {
            let mut b = stored.clone();
            b[i / 8] ^= 1 << (i % 8);
            repo.put(&path, Bytes::from(b)).await.expect("put flipped");
            if repo.get_chunk("dds-f", &chunk).await.is_ok() {
                accepted.push((i / 8, i % 8));
            }
        }
        assert!(
            accepted.is_empty(),
            "{} of {} flips accepted (byte, bit): {accepted:?}",
            accepted.len(),
            stored.len() * 8
        );
    }
}

/// `chunks/<instance>/<hh>/<sha256>` files of a local chunk store `dir` with their sizes: the same filter as the
/// listing (a 64-hex-digit name under the directory of its first two digits, not empty). A missing store is empty.
fn local_chunk_sizes(dir: &std::path::Path) -> std::io::Result<HashMap<String, u64>> {
    let mut out = HashMap::new();
    let shards = match std::fs::read_dir(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for shard in shards {
        let shard = shard?;
        let Some(hh) = shard.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if hh.len() != 2 || !shard.file_type()?.is_dir() {
            continue;
        }
        let entries = match std::fs::read_dir(shard.path()) {
            Ok(d) => d,
            // Removed by the collector meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !is_digest(&name) || name[..2] != hh {
                continue;
            }
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            // An empty chunk file is what a power loss leaves of one written but not yet synced: not a chunk.
            if meta.is_file() && meta.len() > 0 {
                out.insert(name, meta.len());
            }
        }
    }
    Ok(out)
}
