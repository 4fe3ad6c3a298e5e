//! Commands that work on the catalog and repository directly, without a running server (`ddsvault download`,
//! `ddsvault verify`). They open the same catalog and repository the server uses, so they work beside it.

use std::io::Write;
use std::path::Path;

use ddsvault_catalog::{Backup, BackupStatus, Catalog};
use ddsvault_repo::{Manifest, RepoPath, Repository};
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};

use crate::{Config, ConfigError, ServerError};

/// What `download` wrote.
#[derive(Debug)]
pub struct Downloaded {
    pub file: String,
    pub size: u64,
    pub sha256: String,
}

async fn open(cfg: &Config) -> Result<(Catalog, Repository), ServerError> {
    let catalog = ddsvault_catalog::open(&cfg.catalog_url()).await?;
    let repo = crate::repository::open(cfg)?;
    Ok((catalog, repo))
}

async fn finished_backup(catalog: &Catalog, backup_id: i64) -> Result<Backup, ServerError> {
    match catalog.get_backup(backup_id).await? {
        Some(b) if b.status == BackupStatus::Success => Ok(b),
        Some(b) => Err(ConfigError(format!(
            "backup {backup_id} is {} and has nothing to download",
            b.status.as_str()
        ))
        .into()),
        None => Err(ConfigError(format!("backup {backup_id} does not exist")).into()),
    }
}

/// Copies the archive of a backup to `out`, checking its size and SHA-256 against the manifest as it goes. The
/// file is written under a temporary name and renamed only once it is verified.
///
/// # Errors
/// Unknown or unfinished backup, repository errors, a checksum mismatch (the partial file is removed).
pub async fn download(cfg: &Config, backup_id: i64, out: &Path) -> Result<Downloaded, ServerError> {
    let (catalog, repo) = open(cfg).await?;
    let backup = finished_backup(&catalog, backup_id).await?;
    let prefix = RepoPath::new(backup.repo_prefix.clone())?;
    if backup.method == "Physical" || backup.method == "Snapshot" {
        return download_files_tar(&repo, &prefix, backup_id, out).await;
    }
    let manifest = repo.read_manifest(&prefix).await?.ok_or_else(|| {
        ConfigError(format!(
            "backup {backup_id} has no manifest in the repository"
        ))
    })?;
    let file = backup
        .details
        .get("archive")
        .and_then(|v| v.as_str())
        .unwrap_or("archive.zst")
        .to_string();
    let expected = manifest
        .files
        .iter()
        .find(|f| f.name == file)
        .ok_or_else(|| {
            ConfigError(format!(
                "manifest of backup {backup_id} does not list {file}"
            ))
        })?;
    let (size, stream) = repo.get_stream(&prefix.join(&file)?).await?;
    let (written, sha256) = write_checked(stream.map_err(ServerError::from), out, |written, sha256| {
        if written != expected.size || size != expected.size || sha256 != expected.sha256 {
            return Err(ConfigError(format!(
                "backup {backup_id} file {file} is corrupt: manifest says {} bytes sha256 {}, repository gave {written} bytes sha256 {sha256}",
                expected.size, expected.sha256
            ))
            .into());
        }
        Ok(())
    })
    .await?;
    Ok(Downloaded {
        file,
        size: written,
        sha256,
    })
}

/// Writes `stream` to `out` through a temporary file, hashing it as it goes; `check` sees the byte count and
/// SHA-256 before the rename. On any error (stream, disk or `check`) the temporary file is removed and nothing is
/// left at `out`. Returns the byte count and SHA-256.
async fn write_checked(
    mut stream: impl futures::Stream<Item = Result<axum::body::Bytes, ServerError>> + Unpin,
    out: &Path,
    check: impl FnOnce(u64, &str) -> Result<(), ServerError>,
) -> Result<(u64, String), ServerError> {
    let tmp = out.with_extension("partial");
    let io = |e: std::io::Error| ConfigError(format!("write {}: {e}", tmp.display()));
    let copied: Result<(u64, String), ServerError> = async {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        while let Some(part) = stream.next().await {
            let part = part?;
            hasher.update(&part);
            written += part.len() as u64;
            w.write_all(&part).map_err(io)?;
        }
        w.flush().map_err(io)?;
        let sha256 = hex::encode(hasher.finalize());
        check(written, &sha256)?;
        Ok((written, sha256))
    }
    .await;
    if copied.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return copied;
    }
    std::fs::rename(&tmp, out)
        .map_err(|e| ConfigError(format!("rename to {}: {e}", out.display())))?;
    copied
}

/// A Physical or Snapshot backup as the same `files.tar` its `BackupDownloadURL` serves. Every file the manifest
/// lists is checked first (size, SHA-256: a Physical backup's data files, a snapshot's index), and snapshot chunks
/// are checked against their hashes as the tar is assembled; nothing is left at `out` unless all matched.
async fn download_files_tar(
    repo: &Repository,
    prefix: &RepoPath,
    backup_id: i64,
    out: &Path,
) -> Result<Downloaded, ServerError> {
    let manifest = repo.verify(prefix).await?;
    let (length, stream) = ddsvault_jobs::file_restore::tar_stream(repo, prefix, &manifest)
        .await
        .map_err(|e| ConfigError(format!("backup {backup_id}: {e}")))?;
    let stream =
        stream.map_err(|e| ServerError::from(ConfigError(format!("backup {backup_id}: {e}"))));
    let (written, sha256) = write_checked(stream, out, |written, _| {
        if written != length {
            return Err(ConfigError(format!(
                "backup {backup_id}: the tar came out {written} bytes long instead of {length}"
            ))
            .into());
        }
        Ok(())
    })
    .await?;
    Ok(Downloaded {
        file: crate::download::FILES_TAR.to_string(),
        size: written,
        sha256,
    })
}

/// A backup whose files all match its manifest, with the name of its archive and an opener of decompressed
/// readers over it.
async fn checked_archive(
    cfg: &Config,
    backup_id: i64,
) -> Result<(Manifest, String, ArchiveOpener), ServerError> {
    let (catalog, repo) = open(cfg).await?;
    let backup = finished_backup(&catalog, backup_id).await?;
    let prefix = RepoPath::new(backup.repo_prefix.clone())?;
    let manifest = repo.verify(&prefix).await?;
    let archive = backup
        .details
        .get("archive")
        .and_then(|v| v.as_str())
        .ok_or_else(|| ConfigError(format!("backup {backup_id} records no archive")))?
        .to_string();
    let opener = ddsvault_jobs::archive_opener(
        repo,
        prefix.join(&archive)?,
        ddsvault_jobs::compression_of(&backup.details),
    );
    Ok((manifest, archive, opener))
}

type ArchiveOpener = Box<dyn Fn() -> std::io::Result<Box<dyn std::io::Read + Send>> + Send + Sync>;

/// What `verify` checked.
#[derive(Debug)]
pub struct Verified {
    pub files: usize,
    pub bytes: u64,
    pub namespaces: usize,
    pub documents: u64,
    /// Snapshot chunks read back and checked (0 for other methods).
    pub chunks: u64,
    pub method: String,
}

/// A Physical or Snapshot backup: every file listed by the manifest (size, SHA-256), and for a snapshot every
/// chunk its index names (decompressed, size and SHA-256).
async fn verify_files(repo: &Repository, backup: &Backup) -> Result<Verified, ServerError> {
    let prefix = RepoPath::new(backup.repo_prefix.clone())?;
    let manifest = repo.verify(&prefix).await?;
    let mut chunks = 0u64;
    let mut bytes = manifest.total_size();
    let mut files = manifest.files.len();
    if let Some(index) = repo.read_snapshot_index(&prefix, &manifest).await? {
        files = index.files.len();
        bytes = index.total_size();
        for f in &index.files {
            for c in &f.chunks {
                repo.get_chunk(&manifest.instance_id, c).await?;
                chunks += 1;
            }
        }
    }
    Ok(Verified {
        files,
        bytes,
        namespaces: 0,
        documents: 0,
        chunks,
        method: backup.method.clone(),
    })
}

/// Re-reads a backup: every file against the manifest (size, SHA-256), then the archive's own framing and
/// per-collection CRC-64.
///
/// # Errors
/// Unknown backup, or the first problem found, naming the file or namespace.
pub async fn verify(cfg: &Config, backup_id: i64) -> Result<Verified, ServerError> {
    {
        let (catalog, repo) = open(cfg).await?;
        let backup = finished_backup(&catalog, backup_id).await?;
        if backup.method == "Physical" || backup.method == "Snapshot" {
            return verify_files(&repo, &backup).await;
        }
    }
    let (manifest, archive, opener) = checked_archive(cfg, backup_id).await?;
    let summary = tokio::task::spawn_blocking(move || {
        let input = opener().map_err(|e| format!("open archive: {e}"))?;
        ddsvault_mongo::restore::verify_archive(input).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| ConfigError(format!("verify task: {e}")))?
    .map_err(|e| {
        ConfigError(format!(
            "backup {backup_id} archive {archive} is corrupt: {e}"
        ))
    })?;
    Ok(Verified {
        files: manifest.files.len(),
        bytes: manifest.files.iter().map(|f| f.size).sum(),
        namespaces: summary.namespaces.len(),
        documents: summary.documents,
        chunks: 0,
        method: "Logical".into(),
    })
}

/// Restores a logical backup straight into `to_uri` from this process (no server, no job).
///
/// # Errors
/// Unknown backup, a corrupt backup (nothing written), existing target collections without `drop`, server errors.
pub async fn restore(
    cfg: &Config,
    backup_id: i64,
    to_uri: &str,
    select: Vec<ddsvault_mongo::restore::NsSelector>,
    drop: bool,
) -> Result<ddsvault_mongo::restore::RestoreSummary, ServerError> {
    let (_, _, opener) = checked_archive(cfg, backup_id).await?;
    let client = ddsvault_mongo::topology::connect(to_uri)
        .await
        .map_err(|e| ConfigError(crate::redact(&e.to_string(), to_uri)))?;
    let opts = ddsvault_mongo::restore::RestoreOptions {
        drop,
        select,
        parallel_collections: cfg.backup.parallel_collections,
        ..Default::default()
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    ddsvault_mongo::restore::logical_restore(&client, opener, &opts, &|_| {}, &cancel)
        .await
        .map_err(|e| {
            ConfigError(format!(
                "restore of backup {backup_id}: {}",
                crate::redact(&e.to_string(), to_uri)
            ))
            .into()
        })
}

/// What `restore --to-dir` wrote.
#[derive(Debug)]
pub struct RestoredFiles {
    pub method: String,
    pub files: Vec<String>,
    pub bytes: u64,
}

/// Materializes a Physical or Snapshot backup as data files in `dir` (created if missing, refused if not empty),
/// each checked against the manifest (size and SHA-256; snapshot chunks are also checked one by one) before it
/// gets its final name. Start the server (FerretDB: `--sqlite-url=file:<dir>/`) on the directory afterwards.
///
/// # Errors
/// Unknown or unfinished backup, a logical backup, a non-empty target, repository errors, a mismatch (the
/// files written so far are removed).
pub async fn restore_to_dir(
    cfg: &Config,
    backup_id: i64,
    dir: &Path,
) -> Result<RestoredFiles, ServerError> {
    let (catalog, repo) = open(cfg).await?;
    let backup = finished_backup(&catalog, backup_id).await?;
    if backup.method != "Physical" && backup.method != "Snapshot" {
        return Err(ConfigError(format!(
            "backup {backup_id} is a {} backup, which holds no data files; restore it into a server with --to",
            backup.method
        ))
        .into());
    }
    let prefix = RepoPath::new(backup.repo_prefix.clone())?;
    let manifest = repo.read_manifest(&prefix).await?.ok_or_else(|| {
        ConfigError(format!(
            "backup {backup_id} has no manifest in the repository"
        ))
    })?;
    std::fs::create_dir_all(dir)
        .map_err(|e| ConfigError(format!("create {}: {e}", dir.display())))?;
    let mut entries =
        std::fs::read_dir(dir).map_err(|e| ConfigError(format!("read {}: {e}", dir.display())))?;
    if entries.next().is_some() {
        return Err(ConfigError(format!(
            "{} is not empty: restore into an empty directory (nothing was written)",
            dir.display()
        ))
        .into());
    }
    let cancel = tokio_util::sync::CancellationToken::new();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let m = ddsvault_jobs::file_restore::materialize(&repo, &prefix, &manifest, dir, &cancel, done)
        .await?;
    Ok(RestoredFiles {
        method: backup.method,
        files: m.files,
        bytes: m.bytes,
    })
}

/// Reads the audit trail (`ddsvault audit`), newest first.
///
/// # Errors
/// Catalog errors.
pub async fn audit(
    cfg: &Config,
    filter: &ddsvault_catalog::AuditFilter,
) -> Result<Vec<ddsvault_catalog::AuditRecord>, ServerError> {
    let catalog = ddsvault_catalog::open(&cfg.catalog_url()).await?;
    Ok(catalog.list_audit(filter).await?)
}

/// Parses `--since`: an RFC 3339 time (`2026-11-28T01:00:00Z`) or an age such as `90s`, `15m`, `2h`, `7d`.
///
/// # Errors
/// A message saying what is accepted.
pub fn parse_since(
    s: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<chrono::DateTime<chrono::Utc>, ConfigError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let bad = || {
        ConfigError(format!(
            "--since {s:?}: expected an RFC 3339 time (2026-11-28T01:00:00Z) or an age like 90s, 15m, 2h, 7d"
        ))
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: i64 = n.parse().map_err(|_| bad())?;
    let age = match unit {
        "s" => chrono::Duration::try_seconds(n),
        "m" => chrono::Duration::try_minutes(n),
        "h" => chrono::Duration::try_hours(n),
        "d" => chrono::Duration::try_days(n),
        _ => None,
    }
    .ok_or_else(bad)?;
    now.checked_sub_signed(age).ok_or_else(bad)
}

/// One audit record as the JSON object `ddsvault audit --json` prints (one per line).
pub fn audit_json(r: &ddsvault_catalog::AuditRecord) -> serde_json::Value {
    serde_json::json!({
        "Time": r.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "RequestId": r.request_id,
        "AccessKeyId": r.access_key_id,
        "User": r.user,
        "Action": r.action,
        "Resources": r.resources,
        "SourceIp": r.source_ip,
        "SecureTransport": r.secure,
        "HttpStatus": r.http_status,
        "Code": r.code,
    })
}

/// One audit record as a line of `ddsvault audit`'s table.
pub fn audit_line(r: &ddsvault_catalog::AuditRecord) -> String {
    let dash = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    format!(
        "{}  {}  {:<24} {:<10} {:<28} {:<15} {} {:<28} {}",
        r.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        r.request_id,
        dash(&r.access_key_id),
        dash(&r.user),
        dash(&r.action),
        r.source_ip,
        r.http_status,
        r.code.clone().unwrap_or_else(|| "OK".into()),
        if r.resources.is_empty() {
            "-".to_owned()
        } else {
            r.resources.join(",")
        },
    )
}

#[cfg(test)]
mod audit_tests {
    use super::parse_since;
    use chrono::{TimeZone, Utc};

    #[test]
    fn since_accepts_times_and_ages() {
        let now = Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap();
        let at = |h, m, s| Utc.with_ymd_and_hms(2026, 11, 28, h, m, s).unwrap();
        assert_eq!(
            parse_since("2026-11-28T09:00:00+08:00", now).unwrap(),
            at(1, 0, 0)
        );
        assert_eq!(parse_since("90s", now).unwrap(), at(11, 58, 30));
        assert_eq!(parse_since("15m", now).unwrap(), at(11, 45, 0));
        assert_eq!(parse_since("2h", now).unwrap(), at(10, 0, 0));
        assert_eq!(
            parse_since("1d", now).unwrap(),
            Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0).unwrap()
        );
        for bad in [
            "",
            "h",
            "5",
            "5w",
            "-5m",
            "yesterday",
            "99999999999999999999d",
        ] {
            let e = parse_since(bad, now).expect_err(bad);
            assert!(e.0.contains("RFC 3339"), "{bad}: {}", e.0);
        }
    }
}
