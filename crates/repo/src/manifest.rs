//! The backup manifest: the commit marker of a backup.

use std::collections::HashSet;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{hash, layout, RepoError, RepoPath, Repository, UploadedObject};

/// The only manifest format this crate writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;

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
        if self.format != MANIFEST_FORMAT {
            return Err(bad(format!(
                "unsupported format {} (expected {MANIFEST_FORMAT})",
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

impl Repository {
    /// Writes `<prefix>/manifest.json` atomically. Call it after every file it lists has been
    /// stored: its presence is what makes the backup complete. Every listed file is first confirmed present
    /// with the listed size. On S3 the manifest is created conditionally (`If-None-Match: *`) unless the
    /// repository is configured without conditional creates.
    ///
    /// # Errors
    /// [`RepoError::Manifest`] if the manifest is invalid (wrong format, bad file name,
    /// duplicate, malformed digest), [`RepoError::NotFound`] / [`RepoError::Integrity`] if a listed file is
    /// missing or has another size, or the store error (a manifest already there on S3: `AlreadyExists`).
    pub async fn write_manifest(&self, prefix: &RepoPath, m: &Manifest) -> Result<(), RepoError> {
        let path = layout::manifest_path(prefix);
        m.validate(&path)?;
        let json = serde_json::to_vec_pretty(m).map_err(|e| RepoError::Manifest {
            path: path.to_string(),
            reason: format!("encoding: {e}"),
        })?;
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
                        object_store::PutPayload::from(json.clone()),
                        opts,
                    )
                    .await
                {
                    Ok(_) => Ok(()),
                    // Servers without conditional writes: an unconditional put is what local stores do.
                    Err(object_store::Error::NotImplemented)
                    | Err(object_store::Error::NotSupported { .. }) => {
                        self.put(&path, Bytes::from(json)).await
                    }
                    Err(e) => Err(RepoError::from_store(&path, e)),
                }
            }
            _ => self.put(&path, Bytes::from(json)).await,
        }
    }

    /// Reads `<prefix>/manifest.json`; `Ok(None)` if there is none (incomplete or no backup).
    ///
    /// # Errors
    /// [`RepoError::Manifest`] if it exists but cannot be decoded or is invalid, or the store
    /// error.
    pub async fn read_manifest(&self, prefix: &RepoPath) -> Result<Option<Manifest>, RepoError> {
        let path = layout::manifest_path(prefix);
        let bytes = match self.get(&path).await {
            Ok(b) => b,
            Err(RepoError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| RepoError::Manifest {
            path: path.to_string(),
            reason: format!("decoding: {e}"),
        })?;
        m.validate(&path)?;
        Ok(Some(m))
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
        Ok(manifest)
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
