//! The backup manifest: the commit marker of a backup.

use std::collections::HashSet;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{hash, layout, RepoError, RepoPath, Repository, UploadedObject};

/// The manifest format this crate writes: 2 = format 1 plus the checksum trailer (see [`Repository::write_manifest`]).
pub const MANIFEST_FORMAT: u32 = 2;

/// The oldest format still read: format 1, written before manifests carried their own checksum. It is accepted
/// without a trailer; whether such a backup is authenticated is then up to the catalog (which has no hash for it
/// either, see `docs/integrity.md`).
const MANIFEST_FORMAT_UNSEALED: u32 = 1;

/// The trailer of a format-2 manifest: the last member of its JSON object, `"manifest_sha256": "<64 hex>"`,
/// the SHA-256 of the manifest's pretty JSON without this member. Spelled out byte for byte so that a reader
/// finds it at a fixed offset from the end and recomputes the digest over the exact bytes written, never over a
/// re-encoding (which could differ from what was hashed).
const TRAILER_HEAD: &[u8] = b",\n  \"manifest_sha256\": \"";
const TRAILER_TAIL: &[u8] = b"\"\n}\n";
const TRAILER_LEN: usize = TRAILER_HEAD.len() + 64 + TRAILER_TAIL.len();

/// Describes one complete backup. Stored as `<backup prefix>/manifest.json`, written after
/// every data file: a backup without a manifest is incomplete and must not be restored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version, [`MANIFEST_FORMAT`].
    pub format: u32,
    /// The catalog id of the backup.
    pub backup_id: i64,
    /// The instance the backup belongs to.
    pub instance_id: String,
    /// How the backup was taken (e.g. `"logical"`, `"physical"`).
    pub method: String,
    /// When the backup was committed.
    pub created_at: DateTime<Utc>,
    /// Every data file of the backup.
    pub files: Vec<ManifestFile>,
    /// Method-specific metadata (oplog range, server version, …).
    #[serde(default)]
    pub extra: serde_json::Value,
}

/// One data file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Path relative to the backup prefix (a valid [`RepoPath`]).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
}

impl ManifestFile {
    /// The entry for an uploaded object, named `name` relative to the backup prefix.
    pub fn from_uploaded(name: impl Into<String>, uploaded: &UploadedObject) -> Self {
        Self {
            name: name.into(),
            size: uploaded.size,
            sha256: uploaded.sha256.clone(),
        }
    }
}

impl Manifest {
    /// A format-1 manifest with no files, created now, `extra` = `null`.
    pub fn new(backup_id: i64, instance_id: impl Into<String>, method: impl Into<String>) -> Self {
        Self {
            format: MANIFEST_FORMAT,
            backup_id,
            instance_id: instance_id.into(),
            method: method.into(),
            created_at: Utc::now(),
            files: Vec::new(),
            extra: serde_json::Value::Null,
        }
    }

    /// Sum of the file sizes.
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Checks what a reader relies on: the format, file names that stay inside the prefix and
    /// do not shadow the manifest, no duplicates, well-formed digests.
    fn validate(&self, manifest_path: &RepoPath) -> Result<(), RepoError> {
        let bad = |reason: String| RepoError::Manifest {
            path: manifest_path.to_string(),
            reason,
        };
        if self.format != MANIFEST_FORMAT && self.format != MANIFEST_FORMAT_UNSEALED {
            return Err(bad(format!(
                "unsupported format {} (expected {MANIFEST_FORMAT_UNSEALED} or {MANIFEST_FORMAT})",
                self.format
            )));
        }
        let mut seen = HashSet::new();
        for f in &self.files {
            if let Err(e) = RepoPath::new(f.name.as_str()) {
                return Err(bad(format!("file name {:?}: {e}", f.name)));
            }
            if f.name == layout::MANIFEST_FILE {
                return Err(bad(format!("file name {:?} is reserved", f.name)));
            }
            if !seen.insert(f.name.as_str()) {
                return Err(bad(format!("file {:?} listed twice", f.name)));
            }
            let hex_ok = f.sha256.len() == 64
                && f.sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !hex_ok {
                return Err(bad(format!(
                    "file {:?}: sha256 {:?} is not 64 lowercase hex digits",
                    f.name, f.sha256
                )));
            }
        }
        Ok(())
    }
}

/// The bytes of `m` as written: its pretty JSON with the checksum trailer as last member.
///
/// # Errors
/// [`RepoError::Manifest`] if `m` cannot be encoded.
fn seal(path: &RepoPath, m: &Manifest) -> Result<Vec<u8>, RepoError> {
    let bad = |reason: String| RepoError::Manifest {
        path: path.to_string(),
        reason,
    };
    let body = serde_json::to_vec_pretty(m).map_err(|e| bad(format!("encoding: {e}")))?;
    // A struct always encodes as a non-empty pretty object, which ends in "\n}".
    let Some(open) = body.strip_suffix(b"\n}") else {
        return Err(bad("encoding: not a JSON object".into()));
    };
    let mut out = Vec::with_capacity(body.len() + TRAILER_LEN);
    out.extend_from_slice(open);
    out.extend_from_slice(TRAILER_HEAD);
    out.extend_from_slice(hash::sha256_hex(&body).as_bytes());
    out.extend_from_slice(TRAILER_TAIL);
    Ok(out)
}

/// Decodes manifest bytes and, for format 2, checks the trailer against the exact bytes before it.
fn unseal(path: &RepoPath, bytes: &[u8]) -> Result<Manifest, RepoError> {
    let bad = |reason: String| RepoError::Manifest {
        path: path.to_string(),
        reason,
    };
    let m: Manifest = serde_json::from_slice(bytes).map_err(|e| bad(format!("decoding: {e}")))?;
    m.validate(path)?;
    if m.format == MANIFEST_FORMAT_UNSEALED {
        return Ok(m);
    }
    let split = bytes
        .len()
        .checked_sub(TRAILER_LEN)
        .filter(|&at| bytes[at..].starts_with(TRAILER_HEAD) && bytes.ends_with(TRAILER_TAIL))
        .ok_or_else(|| bad("format 2 without its checksum trailer (damaged)".into()))?;
    let recorded = &bytes[split + TRAILER_HEAD.len()..bytes.len() - TRAILER_TAIL.len()];
    let mut body = Vec::with_capacity(split + 2);
    body.extend_from_slice(&bytes[..split]);
    body.extend_from_slice(b"\n}");
    let actual = hash::sha256_hex(&body);
    if actual.as_bytes() != recorded {
        return Err(RepoError::Integrity {
            path: path.to_string(),
            what: "manifest checksum trailer",
            expected: String::from_utf8_lossy(recorded).into_owned(),
            actual,
        });
    }
    Ok(m)
}

impl Repository {
    /// Writes `<prefix>/manifest.json` and returns the SHA-256 of the bytes written, which the
    /// caller records in the catalog: readers that know it ([`Repository::read_manifest_sealed`]) then trust
    /// nothing the manifest says unless its bytes hash to it. The file also carries its own checksum (a trailer,
    /// see [`MANIFEST_FORMAT`]) for readers without a catalog. Call it after every file it lists has been
    /// stored: its presence is what makes the backup complete. Every listed file is first confirmed present
    /// with the listed size. On S3 the manifest is created conditionally (`If-None-Match: *`) unless the
    /// repository is configured without conditional creates.
    ///
    /// # Errors
    /// [`RepoError::Manifest`] if the manifest is invalid (format other than [`MANIFEST_FORMAT`], bad file name,
    /// duplicate, malformed digest), [`RepoError::NotFound`] / [`RepoError::Integrity`] if a listed file is
    /// missing or has another size, or the store error (a manifest already there on S3: `AlreadyExists`).
    pub async fn write_manifest(
        &self,
        prefix: &RepoPath,
        m: &Manifest,
    ) -> Result<String, RepoError> {
        let path = layout::manifest_path(prefix);
        if m.format != MANIFEST_FORMAT {
            return Err(RepoError::Manifest {
                path: path.to_string(),
                reason: format!("writes format {MANIFEST_FORMAT} only, got {}", m.format),
            });
        }
        m.validate(&path)?;
        let bytes = seal(&path, m)?;
        let sha256 = hash::sha256_hex(&bytes);
        // Nothing is committed that is not all there: every listed file must exist with its size. (On S3 a
        // part or a PUT that the server lost, or an object deleted behind our back, is caught here.)
        for f in &m.files {
            let at = prefix.join(&f.name)?;
            let info = self.head(&at).await?;
            if info.size != f.size {
                return Err(RepoError::Integrity {
                    path: at.to_string(),
                    what: "size",
                    expected: f.size.to_string(),
                    actual: info.size.to_string(),
                });
            }
        }
        match &self.s3 {
            // Conditional create: a backup's manifest is written once; a second writer (a recovered job
            // racing its successor) fails instead of replacing it.
            Some(s3) if s3.conditional_create => {
                let location = path.to_location()?;
                let opts = object_store::PutOptions::from(object_store::PutMode::Create);
                match self
                    .store
                    .put_opts(
                        &location,
                        object_store::PutPayload::from(bytes.clone()),
                        opts,
                    )
                    .await
                {
                    Ok(_) => {}
                    // Servers without conditional writes: an unconditional put is what local stores do.
                    Err(object_store::Error::NotImplemented)
                    | Err(object_store::Error::NotSupported { .. }) => {
                        self.put(&path, Bytes::from(bytes)).await?;
                    }
                    Err(e) => return Err(RepoError::from_store(&path, e)),
                }
            }
            _ => self.put(&path, Bytes::from(bytes)).await?,
        }
        Ok(sha256)
    }

    /// Reads `<prefix>/manifest.json`; `Ok(None)` if there is none (incomplete or no backup).
    ///
    /// # Errors
    /// [`RepoError::Manifest`] if it exists but cannot be decoded or is invalid, [`RepoError::Integrity`] if its
    /// checksum trailer does not match, or the store error.
    pub async fn read_manifest(&self, prefix: &RepoPath) -> Result<Option<Manifest>, RepoError> {
        Ok(self.read_manifest_sealed(prefix).await?.map(|(m, _)| m))
    }

    /// Like [`Repository::read_manifest`], and also returns the SHA-256 of the manifest's bytes, to compare with
    /// the one the catalog recorded when the backup completed.
    ///
    /// # Errors
    /// As [`Repository::read_manifest`].
    pub async fn read_manifest_sealed(
        &self,
        prefix: &RepoPath,
    ) -> Result<Option<(Manifest, String)>, RepoError> {
        let path = layout::manifest_path(prefix);
        let bytes = match self.get(&path).await {
            Ok(b) => b,
            Err(RepoError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let m = unseal(&path, &bytes)?;
        Ok(Some((m, hash::sha256_hex(&bytes))))
    }

    /// Re-reads every file of the backup at `prefix`, streaming, and checks its size and
    /// SHA-256 against the manifest. Returns the manifest if everything matches.
    ///
    /// The size is checked first from the object metadata (no read needed for a truncated
    /// file); hashing runs on a blocking thread.
    ///
    /// # Errors
    /// [`RepoError::NotFound`] naming the manifest or the missing file,
    /// [`RepoError::Integrity`] naming the file and what differs, or the store error.
    pub async fn verify(&self, prefix: &RepoPath) -> Result<Manifest, RepoError> {
        let Some(manifest) = self.read_manifest(prefix).await? else {
            return Err(RepoError::NotFound {
                path: layout::manifest_path(prefix).to_string(),
            });
        };
        self.verify_files(prefix, &manifest).await?;
        Ok(manifest)
    }

    /// Re-reads every file `manifest` lists under `prefix` and checks its size and SHA-256 (what
    /// [`Repository::verify`] does once it has the manifest; for callers that authenticated it themselves).
    ///
    /// # Errors
    /// As [`Repository::verify`].
    pub async fn verify_files(
        &self,
        prefix: &RepoPath,
        manifest: &Manifest,
    ) -> Result<(), RepoError> {
        for f in &manifest.files {
            let path = prefix.join(&f.name)?;
            let (size, stream) = self.get_stream(&path).await?;
            if size != f.size {
                return Err(integrity(&path, "size", f.size, size));
            }
            let (read, sha256) = hash::hash_stream(stream).await?;
            if read != f.size {
                return Err(integrity(&path, "size", f.size, read));
            }
            if sha256 != f.sha256 {
                return Err(integrity(&path, "sha256", &f.sha256, sha256));
            }
            tracing::trace!(path = %path, size, "verified");
        }
        Ok(())
    }
}

fn integrity(
    path: &RepoPath,
    what: &'static str,
    expected: impl ToString,
    actual: impl ToString,
) -> RepoError {
    RepoError::Integrity {
        path: path.to_string(),
        what,
        expected: expected.to_string(),
        actual: actual.to_string(),
    }
}

#[cfg(test)]
mod seal_tests {
    use super::*;

    fn sample() -> Manifest {
        let mut m = Manifest::new(
            7,
            "dds-seal",
            ddsvault_catalog::BackupMethod::Logical.as_str(),
        );
        m.files.push(ManifestFile {
            name: "archive.zst".into(),
            size: 1234,
            sha256: hash::sha256_hex(b"archive"),
        });
        m.extra = serde_json::json!({
            "databases": ["app"],
            "namespaces": [{"db": "app", "collection": "c", "documents": 3, "raw_bytes": 99, "crc": 12345}],
            "details": {"archive": "archive.zst", "consistent_time": "2026-01-01T00:00:00Z", "ratio": 0.25},
        });
        m
    }

    fn path() -> RepoPath {
        layout::manifest_path(&layout::backup_prefix("dds-seal", 7))
    }

    #[test]
    fn sealed_bytes_are_json_with_the_trailer_last_and_read_back() {
        let m = sample();
        let bytes = seal(&path(), &m).expect("seal");
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("still plain JSON");
        let keys: Vec<&String> = v.as_object().expect("object").keys().collect();
        assert_eq!(keys.last().map(|k| k.as_str()), Some("manifest_sha256"));
        assert_eq!(unseal(&path(), &bytes).expect("unseal"), m);
    }

    #[test]
    fn every_single_bit_flip_of_a_sealed_manifest_is_refused() {
        let bytes = seal(&path(), &sample()).expect("seal");
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(
                unseal(&path(), &b).is_err(),
                "flip of bit {} of byte {} ({:?}) accepted",
                i % 8,
                i / 8,
                char::from(bytes[i / 8])
            );
        }
    }

    #[test]
    fn a_format_1_manifest_without_trailer_is_still_read() {
        let mut m = sample();
        m.format = MANIFEST_FORMAT_UNSEALED;
        let bytes = serde_json::to_vec_pretty(&m).expect("encode");
        assert_eq!(unseal(&path(), &bytes).expect("format 1"), m);
        // ...but a format-2 manifest that lost its trailer is damaged.
        let mut two = sample();
        two.format = MANIFEST_FORMAT;
        let bytes = serde_json::to_vec_pretty(&two).expect("encode");
        assert!(matches!(
            unseal(&path(), &bytes),
            Err(RepoError::Manifest { .. })
        ));
    }

    #[tokio::test]
    async fn write_returns_the_hash_of_the_stored_bytes() {
        let repo = Repository::memory();
        let prefix = layout::backup_prefix("dds-seal", 7);
        let m = sample();
        // write_manifest confirms every listed file is present with its size first.
        let archive = prefix.join("archive.zst").expect("name");
        repo.put(&archive, Bytes::from(vec![0u8; 1234]))
            .await
            .expect("archive");
        let written = repo.write_manifest(&prefix, &m).await.expect("write");
        let stored = repo.get(&path()).await.expect("get");
        assert_eq!(written, hash::sha256_hex(&stored));
        let (read, sha) = repo
            .read_manifest_sealed(&prefix)
            .await
            .expect("read")
            .expect("present");
        assert_eq!((read, sha), (m.clone(), written));
        let mut old = m;
        old.format = 1;
        assert!(matches!(
            repo.write_manifest(&prefix, &old).await,
            Err(RepoError::Manifest { .. })
        ));
    }
}
