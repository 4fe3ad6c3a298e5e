//! Authenticating a backup before anything trusts it, and verifying one end to end.
//!
//! A manifest states what a backup is (its instance, method, files and their digests, the details a restore acts
//! on), so a flipped bit in it must never go unnoticed. When a backup completes, the SHA-256 of the exact manifest
//! bytes written is recorded in its catalog row (`details.manifest_sha256`, beside what the completion already
//! records). Every reader — verify, restore, file restore, download — goes through [`authenticated_manifest`]:
//! the manifest's bytes must hash to the recorded value, and its statements must agree with the row, before any
//! of it is used. The manifest also carries its own checksum trailer (see `ddsvault_repo::MANIFEST_FORMAT`), for
//! readers that have no catalog row (the chunk collector).
//!
//! Backups completed before this existed have no recorded hash: they are accepted, reported as unauthenticated
//! (see `docs/integrity.md`), and their statements are still compared with the row.

use ddsvault_catalog::{Backup, BackupMethod};
use ddsvault_repo::chunks::SNAPSHOT_INDEX_FILE;
use ddsvault_repo::{Manifest, RepoError, RepoPath, Repository};

use crate::JobError;

/// Key of the manifest's SHA-256 in a backup's catalog `details`.
pub const MANIFEST_SHA256: &str = "manifest_sha256";

/// `details` as the catalog records them at completion: the manifest's `details` plus its hash.
pub(crate) fn sealed_details(
    mut details: serde_json::Value,
    manifest_sha256: String,
) -> serde_json::Value {
    if let Some(map) = details.as_object_mut() {
        map.insert(MANIFEST_SHA256.into(), manifest_sha256.into());
    }
    details
}

/// A manifest checked against its backup's catalog row.
#[derive(Debug, Clone)]
pub struct CheckedManifest {
    /// The manifest as read from the repository.
    pub manifest: Manifest,
    /// The manifest's bytes matched the hash the catalog recorded. False only for backups completed before
    /// hashes were recorded.
    pub authenticated: bool,
}

/// The manifest of `backup`, authenticated against its catalog row: its bytes hash to the recorded SHA-256 (when
/// there is one) and what it states — backup id, instance, method, commit time, databases, details, the files a
/// method must have — agrees with the row.
///
/// # Errors
/// [`RepoError::NotFound`] for a missing manifest, [`RepoError::Integrity`] for a hash mismatch,
/// [`RepoError::Manifest`] naming the first statement that disagrees, or the store error.
pub async fn authenticated_manifest(
    repo: &Repository,
    backup: &Backup,
) -> Result<CheckedManifest, JobError> {
    let prefix = RepoPath::new(backup.repo_prefix.clone())?;
    let path = Repository::manifest_path(&prefix);
    let (manifest, sha256) =
        repo.read_manifest_sealed(&prefix)
            .await?
            .ok_or_else(|| RepoError::NotFound {
                path: path.to_string(),
            })?;
    let recorded = backup.details.get(MANIFEST_SHA256);
    let authenticated = match recorded {
        None => false,
        Some(v) if v.as_str() == Some(sha256.as_str()) => true,
        Some(v) => {
            return Err(RepoError::Integrity {
                path: path.to_string(),
                what: "manifest sha256 (recorded in the catalog)",
                expected: v.as_str().map_or_else(|| v.to_string(), str::to_string),
                actual: sha256,
            }
            .into())
        }
    };
    check_statements(&path, &manifest, backup)?;
    Ok(CheckedManifest {
        manifest,
        authenticated,
    })
}

/// Compares what the manifest states with the catalog row.
fn check_statements(path: &RepoPath, m: &Manifest, b: &Backup) -> Result<(), RepoError> {
    let differs = |what: &str, manifest: String, catalog: String| RepoError::Manifest {
        path: path.to_string(),
        reason: format!("states {what} {manifest}, the catalog {catalog}"),
    };
    if m.backup_id != b.id {
        return Err(differs(
            "backup id",
            m.backup_id.to_string(),
            b.id.to_string(),
        ));
    }
    if m.instance_id != b.instance_id {
        return Err(differs(
            "instance",
            format!("{:?}", m.instance_id),
            format!("{:?}", b.instance_id),
        ));
    }
    if m.method != b.method.as_str() {
        return Err(differs(
            "method",
            format!("{:?}", m.method),
            format!("{:?}", b.method),
        ));
    }
    // The catalog keeps milliseconds.
    if let Some(end) = b.end_time {
        if m.created_at.timestamp_millis() != end.timestamp_millis() {
            return Err(differs(
                "commit time",
                m.created_at.to_rfc3339(),
                end.to_rfc3339(),
            ));
        }
    }
    let mut row_details = b.details.clone();
    if let Some(map) = row_details.as_object_mut() {
        map.shift_remove(MANIFEST_SHA256);
    }
    let stated = m.extra.get("details").unwrap_or(&serde_json::Value::Null);
    if *stated != row_details {
        return Err(differs(
            "details",
            stated.to_string(),
            row_details.to_string(),
        ));
    }
    let databases = m
        .extra
        .get("databases")
        .and_then(|d| d.as_array())
        .map(|a| {
            a.iter()
                .map(|d| d.as_str().unwrap_or("?"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    if databases != b.db_names {
        return Err(differs(
            "databases",
            format!("{databases:?}"),
            format!("{:?}", b.db_names),
        ));
    }
    let must_list = match b.method {
        BackupMethod::Logical => b.details.get("archive").and_then(|a| a.as_str()),
        BackupMethod::Snapshot => Some(SNAPSHOT_INDEX_FILE),
        BackupMethod::Physical => None,
    };
    if let Some(name) = must_list {
        if !m.files.iter().any(|f| f.name == name) {
            return Err(differs(
                "no file",
                format!("{name:?}"),
                "names it".to_string(),
            ));
        }
    }
    if b.method == BackupMethod::Logical && i64::try_from(m.total_size()).ok() != Some(b.size) {
        return Err(differs(
            "size",
            m.total_size().to_string(),
            b.size.to_string(),
        ));
    }
    Ok(())
}

/// What [`verify_backup`] checked.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The backup's method.
    pub method: BackupMethod,
    /// Data files (a snapshot's files as its index lists them).
    pub files: usize,
    /// Bytes of the data files that matched the manifest.
    pub bytes: u64,
    /// Collections read from a logical archive (0 for other methods).
    pub namespaces: usize,
    /// Documents read from a logical archive (0 for other methods).
    pub documents: u64,
    /// Snapshot chunks read back and checked (0 for other methods).
    pub chunks: u64,
    /// See [`CheckedManifest::authenticated`].
    pub authenticated: bool,
}

impl Verified {
    /// The one-line report `ddsvault verify` prints.
    pub fn report(&self, backup_id: i64) -> String {
        let manifest = if self.authenticated {
            "manifest authenticated by the catalog"
        } else {
            "manifest unauthenticated (older backup: the catalog recorded no hash for it)"
        };
        if self.method == BackupMethod::Logical {
            format!(
                "backup {backup_id} OK: {} file(s), {} bytes match the manifest; {} collections, {} documents, \
                 every CRC matches; {manifest}",
                self.files, self.bytes, self.namespaces, self.documents
            )
        } else {
            format!(
                "backup {backup_id} OK: {} backup, {} data file(s), {} bytes match the manifest; {} snapshot \
                 chunk(s) checked; {manifest}",
                self.method, self.files, self.bytes, self.chunks
            )
        }
    }
}

/// Re-reads a successful backup end to end: the manifest authenticated against the catalog, every file it lists
/// (size, SHA-256), then for a logical backup the archive's framing and per-collection CRC-64, for a snapshot
/// every chunk its index names (seal, size, SHA-256).
///
/// # Errors
/// The first problem found, naming the file, chunk or namespace.
pub async fn verify_backup(repo: &Repository, backup: &Backup) -> Result<Verified, JobError> {
    let checked = authenticated_manifest(repo, backup).await?;
    let prefix = RepoPath::new(backup.repo_prefix.clone())?;
    let manifest = &checked.manifest;
    repo.verify_files(&prefix, manifest).await?;
    let mut v = Verified {
        method: backup.method,
        files: manifest.files.len(),
        bytes: manifest.total_size(),
        namespaces: 0,
        documents: 0,
        chunks: 0,
        authenticated: checked.authenticated,
    };
    match backup.method {
        BackupMethod::Logical => {
            let archive = backup
                .details
                .get("archive")
                .and_then(|a| a.as_str())
                .ok_or_else(|| {
                    JobError::Other(format!("backup {} records no archive", backup.id))
                })?;
            let opener = crate::archive_opener(
                repo.clone(),
                prefix.join(archive)?,
                crate::compression_of(&backup.details),
            );
            let summary = tokio::task::spawn_blocking(move || {
                let input = opener().map_err(|e| format!("open archive: {e}"))?;
                ddsvault_mongo::restore::verify_archive(input).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| JobError::Other(format!("verify task: {e}")))?
            .map_err(|e| {
                JobError::Other(format!(
                    "backup {} archive {archive} is corrupt: {e}",
                    backup.id
                ))
            })?;
            v.namespaces = summary.namespaces.len();
            v.documents = summary.documents;
        }
        BackupMethod::Physical | BackupMethod::Snapshot => {
            if let Some(index) = repo.read_snapshot_index(&prefix, manifest).await? {
                v.files = index.files.len();
                v.bytes = index.total_size();
                for f in &index.files {
                    for c in &f.chunks {
                        repo.get_chunk(&manifest.instance_id, c).await?;
                        v.chunks += 1;
                    }
                }
            }
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use chrono::{TimeZone, Utc};
    use ddsvault_catalog::BackupStatus;
    use ddsvault_repo::ManifestFile;

    /// A logical backup as `publish_logical` leaves it: archive, manifest, and the catalog row (with the
    /// manifest's hash unless `older`).
    async fn logical(repo: &Repository, older: bool) -> Backup {
        let prefix = Repository::backup_prefix("dds-i", 9);
        let archive = Bytes::from_static(b"not really an archive");
        repo.put(&prefix.join("archive.zst").expect("path"), archive.clone())
            .await
            .expect("put");
        let end = Utc.with_ymd_and_hms(2026, 3, 1, 2, 3, 4).unwrap();
        let details = serde_json::json!({"archive": "archive.zst", "compression": "zstd",
            "consistent_time": "2026-03-01T02:03:00Z"});
        let mut m = Manifest::new(9, "dds-i", BackupMethod::Logical.as_str());
        m.created_at = end;
        m.files.push(ManifestFile {
            name: "archive.zst".into(),
            size: archive.len() as u64,
            sha256: ddsvault_repo::sha256_hex(&archive),
        });
        m.extra = serde_json::json!({"databases": ["app", "crm"], "details": details});
        let sha = repo.write_manifest(&prefix, &m).await.expect("manifest");
        Backup {
            id: 9,
            job_id: 1,
            instance_id: "dds-i".into(),
            status: BackupStatus::Success,
            method: BackupMethod::Logical,
            mode: "Manual".into(),
            backup_type: "FullBackup".into(),
            start_time: end,
            end_time: Some(end),
            expire_time: Some(end),
            retention_days: 7,
            size: archive.len() as i64,
            db_names: "app,crm".into(),
            engine_version: "7.0".into(),
            repo_prefix: prefix.to_string(),
            details: if older {
                details
            } else {
                sealed_details(details, sha)
            },
        }
    }

    #[tokio::test]
    async fn a_manifest_matching_its_row_is_authenticated() {
        let repo = Repository::memory();
        let b = logical(&repo, false).await;
        let c = authenticated_manifest(&repo, &b).await.expect("authentic");
        assert!(c.authenticated);
        assert_eq!(c.manifest.backup_id, 9);
    }

    #[tokio::test]
    async fn an_older_backup_without_hash_is_accepted_as_unauthenticated() {
        let repo = Repository::memory();
        let b = logical(&repo, true).await;
        let c = authenticated_manifest(&repo, &b).await.expect("accepted");
        assert!(!c.authenticated);
        let v = Verified {
            method: BackupMethod::Logical,
            files: 1,
            bytes: 1,
            namespaces: 0,
            documents: 0,
            chunks: 0,
            authenticated: false,
        };
        assert!(v.report(9).contains("unauthenticated (older backup"));
    }

    #[tokio::test]
    async fn a_hash_mismatch_is_refused_naming_the_catalog() {
        let repo = Repository::memory();
        let mut b = logical(&repo, false).await;
        b.details[MANIFEST_SHA256] = serde_json::json!("0".repeat(64));
        let e = authenticated_manifest(&repo, &b)
            .await
            .expect_err("mismatch");
        assert!(
            matches!(&e, JobError::Repo(RepoError::Integrity { what, .. }) if what.contains("catalog")),
            "{e}"
        );
    }

    /// Each statement that disagrees with the row is named (the row is what changes here: the hash still
    /// matches, so only the statement check can catch it).
    #[tokio::test]
    async fn every_statement_is_compared_with_the_row() {
        let repo = Repository::memory();
        let good = logical(&repo, false).await;
        type Change = Box<dyn Fn(&mut Backup)>;
        let cases: Vec<(&str, Change)> = vec![
            ("backup id", Box::new(|b| b.id = 10)),
            ("instance", Box::new(|b| b.instance_id = "dds-j".into())),
            (
                "method",
                Box::new(|b| b.method = ddsvault_catalog::BackupMethod::Physical),
            ),
            (
                "commit time",
                Box::new(|b| {
                    b.end_time = b.end_time.map(|t| t + chrono::Duration::milliseconds(1))
                }),
            ),
            (
                "details",
                Box::new(|b| b.details["consistent_time"] = "2026-03-01T02:03:01Z".into()),
            ),
            ("databases", Box::new(|b| b.db_names = "app".into())),
            ("size", Box::new(|b| b.size += 1)),
        ];
        for (what, change) in cases {
            let mut b = good.clone();
            change(&mut b);
            let e = authenticated_manifest(&repo, &b)
                .await
                .expect_err(what)
                .to_string();
            assert!(e.contains(&format!("states {what}")), "{what}: {e}");
        }
    }
}
