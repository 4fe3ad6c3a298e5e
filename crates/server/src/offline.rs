//! Commands that work on the catalog and repository directly, without a running server (`ddsvault download`,
//! `ddsvault verify`). They open the same catalog and repository the server uses, so they work beside it.

use std::io::Write;
use std::path::Path;

use ddsvault_catalog::{Backup, BackupStatus, Catalog};
use ddsvault_jobs::integrity::authenticated_manifest;
use ddsvault_repo::{Manifest, RepoPath, Repository};
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};

use crate::{Config, ConfigError, ServerError};

/// What `download` wrote.
#[derive(Debug)]
pub struct Downloaded {
    /// The backup file written (its name in the manifest).
    pub file: String,
    /// Bytes written.
    pub size: u64,
    /// Hex SHA-256 of the bytes written (checked against the manifest).
    pub sha256: String,
}

async fn open(cfg: &Config) -> Result<(Catalog, Repository), ServerError> {
    let catalog = ddsvault_catalog::open_existing(&cfg.catalog_url()).await?;
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
    if backup.method.is_file_level() {
        return download_files_tar(&repo, &backup, out).await;
    }
    let manifest = authenticated_manifest(&repo, &backup).await?.manifest;
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
    backup: &Backup,
    out: &Path,
) -> Result<Downloaded, ServerError> {
    let backup_id = backup.id;
    let prefix = &RepoPath::new(backup.repo_prefix.clone())?;
    let manifest = authenticated_manifest(repo, backup).await?.manifest;
    repo.verify_files(prefix, &manifest).await?;
    let (length, stream) = ddsvault_repo::export::tar_stream(repo, prefix, &manifest)
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
    let manifest = authenticated_manifest(&repo, &backup).await?.manifest;
    repo.verify_files(&prefix, &manifest).await?;
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
pub use ddsvault_jobs::integrity::Verified;

/// Re-reads a backup end to end (see [`ddsvault_jobs::integrity::verify_backup`]): the manifest authenticated
/// against the catalog, every file against the manifest (size, SHA-256), then the archive's own framing and
/// per-collection CRC-64, or a snapshot's every chunk.
///
/// # Errors
/// Unknown backup, or the first problem found, naming the file, chunk or namespace.
pub async fn verify(cfg: &Config, backup_id: i64) -> Result<Verified, ServerError> {
    let (catalog, repo) = open(cfg).await?;
    let backup = finished_backup(&catalog, backup_id).await?;
    Ok(ddsvault_jobs::integrity::verify_backup(&repo, &backup).await?)
}

/// One scrub pass over the repository now (`ddsvault scrub`, see [`ddsvault_jobs::scrub`]): every chunk re-hashed
/// (damaged ones quarantined, never deleted), every successful backup verified.
///
/// # Errors
/// Catalog or repository errors that stop the pass (damage is in the report, not an error).
pub async fn scrub(cfg: &Config) -> Result<ddsvault_jobs::scrub::ScrubReport, ServerError> {
    let (catalog, repo) = open(cfg).await?;
    let cancel = tokio_util::sync::CancellationToken::new();
    Ok(ddsvault_jobs::scrub::scrub(&catalog, &repo, &cancel).await?)
}

/// The lines `ddsvault scrub` prints for a report: one per finding, then a summary.
pub fn scrub_lines(r: &ddsvault_jobs::scrub::ScrubReport) -> Vec<String> {
    let mut out = Vec::new();
    for c in &r.chunks_quarantined {
        out.push(format!(
            "DAMAGED chunk {} of instance {}: {}; moved to {}",
            c.sha256, c.instance_id, c.reason, c.moved_to
        ));
    }
    for (id, e) in &r.backups_damaged {
        out.push(format!("DAMAGED backup {id}: {e}"));
    }
    for id in &r.backups_unauthenticated {
        out.push(format!(
            "backup {id}: intact, manifest unauthenticated (older backup: the catalog recorded no hash for it)"
        ));
    }
    out.push(format!(
        "scrub: {} chunk(s) re-hashed ({} sealed now, {} quarantined); {} backup(s) verified ({} damaged)",
        r.chunks_checked,
        r.chunks_sealed,
        r.chunks_quarantined.len(),
        r.backups_checked,
        r.backups_damaged.len()
    ));
    out
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
    restore_from(cfg, opener, to_uri, select, drop)
        .await
        .map_err(|e| ConfigError(format!("restore of backup {backup_id}: {e}")).into())
}

/// Runs ddsvault's logical restore (verify, then write) of `opener`'s archive into `to_uri` from this process. The
/// error text has the URI's credentials redacted.
async fn restore_from(
    cfg: &Config,
    opener: ArchiveOpener,
    to_uri: &str,
    select: Vec<ddsvault_mongo::restore::NsSelector>,
    drop: bool,
) -> Result<ddsvault_mongo::restore::RestoreSummary, String> {
    let client = ddsvault_mongo::topology::connect(to_uri)
        .await
        .map_err(|e| crate::redact(&e.to_string(), to_uri))?;
    let opts = ddsvault_mongo::restore::RestoreOptions {
        drop,
        select,
        parallel_collections: cfg.backup.parallel_collections,
        ..Default::default()
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    ddsvault_mongo::restore::logical_restore(&client, opener, &opts, &|_| {}, &cancel)
        .await
        .map_err(|e| crate::redact(&e.to_string(), to_uri))
}

/// How a mongodump archive file given on the command line is stored, found from its first bytes (plain, gzip as
/// `mongodump --archive --gzip` writes it, or zstd as ddsvault stores it). `gzip` (mongorestore's `--gzip`) insists on
/// gzip.
///
/// # Errors
/// The file cannot be read, is not an archive in any of these forms, or is not gzip while `gzip` is set; each
/// names the file.
pub fn archive_file_compression(
    path: &Path,
    gzip: bool,
) -> Result<ddsvault_mongo::archive::Compression, ServerError> {
    use ddsvault_mongo::archive::Compression;
    use std::io::Read;
    let mut head = Vec::with_capacity(4);
    std::fs::File::open(path)
        .and_then(|f| f.take(4).read_to_end(&mut head))
        .map_err(|e| ServerError::Input(format!("archive {}: {e}", path.display())))?;
    let found = Compression::detect(&head).ok_or_else(|| {
        ServerError::Input(format!(
            "{} is not a mongodump archive (neither plain, gzip nor zstd): it starts with {}",
            path.display(),
            if head.is_empty() {
                "nothing (empty file)".to_string()
            } else {
                format!("bytes {}", hex::encode(&head))
            }
        ))
    })?;
    if gzip && found != Compression::Gzip {
        return Err(ServerError::Input(format!(
            "{}: --gzip given, but the file is not gzip-compressed",
            path.display()
        )));
    }
    Ok(found)
}

/// Decompressed readers over an archive file, for engines that read on a blocking thread.
pub fn archive_file_opener(
    path: &Path,
    compression: ddsvault_mongo::archive::Compression,
) -> ArchiveOpener {
    let path = path.to_path_buf();
    Box::new(move || {
        let f = std::io::BufReader::with_capacity(256 * 1024, std::fs::File::open(&path)?);
        Ok(Box::new(compression.wrap_reader(f)?) as Box<dyn std::io::Read + Send>)
    })
}

/// Restores a mongodump archive file (`mongodump --archive[=FILE] [--gzip]`, or a downloaded ddsvault archive)
/// into `to_uri` with ddsvault's restore: the whole archive is verified first (framing, every namespace's CRC-64,
/// metadata, the selection), so a truncated or corrupt archive or a selection that matches nothing writes nothing.
///
/// # Errors
/// Not an archive, corrupt or truncated (nothing written), existing target collections without `drop`, a
/// selection matching nothing, server errors; each names the file.
pub async fn restore_archive(
    cfg: &Config,
    archive: &Path,
    gzip: bool,
    to_uri: &str,
    select: Vec<ddsvault_mongo::restore::NsSelector>,
    drop: bool,
) -> Result<ddsvault_mongo::restore::RestoreSummary, ServerError> {
    let compression = archive_file_compression(archive, gzip)?;
    let opener = archive_file_opener(archive, compression);
    restore_from(cfg, opener, to_uri, select, drop)
        .await
        .map_err(|e| ServerError::Input(format!("restore of archive {}: {e}", archive.display())))
}

/// Imports a mongodump archive file as a Logical backup of `instance_id` (`ddsvault import`): verified in full
/// before anything is written, then stored, manifested and recorded as a backup job stores its own archive (see
/// `ddsvault_jobs::import`). Never creates a catalog: the server must have run with this configuration once.
///
/// # Errors
/// A missing catalog (naming its path), an unconfigured instance, a file that is not a valid archive (nothing
/// written), bad times or retention, an active job on the instance, repository or catalog errors.
pub async fn import(
    cfg: &Config,
    instance_id: &str,
    file: &Path,
    gzip: bool,
    start_time: Option<chrono::DateTime<chrono::Utc>>,
    end_time: Option<chrono::DateTime<chrono::Utc>>,
    retention_days: Option<i64>,
) -> Result<ddsvault_jobs::import::Imported, ServerError> {
    let url = cfg.catalog_url();
    if let Some(path) = url.strip_prefix("sqlite://") {
        if !Path::new(path).is_file() {
            return Err(ServerError::Input(format!(
                "catalog {path} does not exist: import adds to the catalog of a ddsvault that has run with this \
                 configuration (start `ddsvault serve` once); it never creates one"
            )));
        }
    }
    let inst = cfg
        .instances
        .iter()
        .find(|i| i.id == instance_id)
        .ok_or_else(|| {
            ServerError::Input(format!(
                "instance {instance_id:?} is not configured ([[instances]] in the configuration)"
            ))
        })?;
    let compression = archive_file_compression(file, gzip)?;
    let (catalog, repo) = open(cfg).await?;
    let spec = ddsvault_jobs::InstanceSpec {
        id: inst.id.clone(),
        uri: inst.uri.clone(),
        storage_type: inst.storage_type.clone(),
        data_path: inst.data_path.clone(),
    };
    // An owner id of its own: a server sharing the catalog neither claims this job nor mistakes it for one its
    // previous life left running (it fails it only once its lease expired, i.e. this process died or was stuck).
    let node_id = format!("import-{}", hex::encode(rand::random::<[u8; 6]>()));
    let runner = ddsvault_jobs::Runner::new(
        catalog,
        repo,
        std::sync::Arc::new([(spec.id.clone(), spec)].into_iter().collect()),
        node_id,
        ddsvault_jobs::BackupSettings {
            compression,
            parallel_collections: cfg.backup.parallel_collections,
            scratch_dir: cfg.data_dir.join("scratch"),
            stall_timeout: cfg.backup.stall_timeout,
        },
        1,
    )
    .with_lease(cfg.jobs.lease);
    let req = ddsvault_jobs::import::ImportRequest {
        instance_id: instance_id.to_string(),
        file: file.to_path_buf(),
        compression,
        start_time,
        end_time,
        retention_days,
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    ddsvault_jobs::import::import_logical_archive(&runner, &req, &cancel)
        .await
        .map_err(|e| ServerError::Input(format!("import of {}: {e}", file.display())))
}

/// What `restore --to-dir` wrote.
#[derive(Debug)]
pub struct RestoredFiles {
    /// The backup's method.
    pub method: ddsvault_catalog::BackupMethod,
    /// The files written.
    pub files: Vec<String>,
    /// Total bytes written.
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
    if !backup.method.is_file_level() {
        return Err(ConfigError(format!(
            "backup {backup_id} is a {} backup, which holds no data files; restore it into a server with --to",
            backup.method
        ))
        .into());
    }
    let prefix = RepoPath::new(backup.repo_prefix.clone())?;
    let manifest = authenticated_manifest(&repo, &backup).await?.manifest;
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
    let m = ddsvault_repo::export::materialize(&repo, &prefix, &manifest, dir, &cancel, done)
        .await
        .map_err(ddsvault_jobs::JobError::from)?;
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
    let catalog = ddsvault_catalog::open_existing(&cfg.catalog_url()).await?;
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

/// `ddsvault repo copy --to TARGET`: copies successful backups (all, or `backup_id`) into a second repository
/// and verifies each copy there against the catalog's record of its manifest. `to` is a configured
/// `[[repository.copies]]` `dest_region` or `url` (the copies are then recorded, so DescribeBackups with
/// `DestRegion` lists them and they expire with the region's retention), or any other `s3://…`/`file:///…` URL
/// (an unrecorded copy; an `s3://` URL uses the main `[repository]`'s endpoint and credentials). Backups already
/// copied are skipped. Returns one line per backup.
///
/// # Errors
/// Catalog errors, or an unusable target; a failed copy is reported in its line and makes the result `Err` at
/// the end.
pub async fn copy_backups(
    cfg: &Config,
    to: &str,
    backup_id: Option<i64>,
) -> Result<Vec<String>, ServerError> {
    let (catalog, source) = open(cfg).await?;
    let configured = cfg
        .repository
        .copy_locations(&cfg.data_dir)?
        .into_iter()
        .zip(cfg.repository.copies.iter())
        .find(|((region, _, _), c)| region == to || c.url.as_deref() == Some(to));
    let (region, target) = match configured {
        Some(((region, _, _), rc)) => (
            Some(region),
            crate::repository::open_with(rc, &cfg.data_dir)?,
        ),
        None => {
            let mut rc = cfg.repository.clone();
            rc.url = Some(to.to_string());
            rc.local_path = None;
            rc.copies.clear();
            if to.starts_with("file://") {
                rc = crate::config::RepositoryConfig {
                    url: Some(to.to_string()),
                    ..Default::default()
                };
            }
            // An unconfigured target is sealed with the main repository's key, if it has one.
            rc.encryption_key_file = cfg.repository.encryption_key_file.clone();
            (None, crate::repository::open_with(&rc, &cfg.data_dir)?)
        }
    };
    target.check().await?;
    let backups: Vec<Backup> = match backup_id {
        Some(id) => vec![finished_backup(&catalog, id).await?],
        None => {
            let mut all = Vec::new();
            for inst in &cfg.instances {
                let filter = ddsvault_catalog::BackupFilter {
                    instance_id: Some(inst.id.clone()),
                    ..Default::default()
                };
                for number in 1u32.. {
                    let (total, page) = catalog
                        .list_backups(&filter, ddsvault_catalog::Page { number, size: 500 })
                        .await?;
                    let empty = page.is_empty();
                    all.extend(
                        page.into_iter()
                            .filter(|b| b.status == BackupStatus::Success),
                    );
                    if empty || u64::from(number) * 500 >= total {
                        break;
                    }
                }
            }
            all.sort_by_key(|b| b.id);
            all
        }
    };
    let mut lines = Vec::new();
    let mut failed = 0;
    let copier = region.as_ref().map(|r| {
        ddsvault_jobs::copies::Copier::new(
            catalog.clone(),
            source.clone(),
            vec![ddsvault_jobs::copies::CopyTarget {
                dest_region: r.clone(),
                repo: target.clone(),
            }],
            Vec::new(),
        )
    });
    for b in backups {
        let outcome = match (&copier, &region) {
            (Some(c), Some(r)) => c.copy_now(&b, r, chrono::Utc::now()).await,
            _ => copy_unrecorded(&source, &target, &b).await,
        };
        match outcome {
            Ok(Some(bytes)) => lines.push(format!(
                "backup {} copied to {to} and verified ({bytes} bytes)",
                b.id
            )),
            Ok(None) => lines.push(format!("backup {} already in {to}", b.id)),
            Err(e) => {
                failed += 1;
                lines.push(format!("backup {} NOT copied: {e}", b.id));
            }
        }
    }
    if failed > 0 {
        return Err(ConfigError(format!(
            "{failed} backup(s) could not be copied to {to}:\n{}",
            lines.join("\n")
        ))
        .into());
    }
    Ok(lines)
}

/// A copy to a repository that is not a configured region: skipped when it verifies there already.
async fn copy_unrecorded(
    source: &Repository,
    target: &Repository,
    b: &Backup,
) -> Result<Option<u64>, ddsvault_jobs::JobError> {
    if ddsvault_jobs::integrity::verify_backup(target, b)
        .await
        .is_ok()
    {
        return Ok(None);
    }
    let prefix = RepoPath::new(b.repo_prefix.clone())?;
    let bytes = source
        .copy_backup_to(target, &prefix, &b.instance_id)
        .await?;
    ddsvault_jobs::integrity::verify_backup(target, b).await?;
    Ok(Some(bytes))
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
