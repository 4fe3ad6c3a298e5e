//! Opening the configured repository (`[repository]`: a local directory or an S3-compatible bucket).

use std::time::Duration;

use ddsvault_repo::Repository;

use crate::config::Config;
use crate::error::ConfigError;
use crate::ServerError;

/// How long the start-up check may take: an unreachable endpoint is retried by the client for much longer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// Opens the repository in effect; contacts nothing.
///
/// # Errors
/// Invalid settings, or a local directory that cannot be created.
pub fn open(cfg: &Config) -> Result<Repository, ServerError> {
    open_with(&cfg.repository, &cfg.data_dir)
}

/// Opens the repository `rc` describes (the main one or a copy), with its encryption key if it has one.
///
/// # Errors
/// Invalid settings, an unreadable key file, or a local directory that cannot be created.
pub fn open_with(
    rc: &crate::config::RepositoryConfig,
    data_dir: &std::path::Path,
) -> Result<Repository, ServerError> {
    let repo = Repository::open(&rc.location(data_dir)?, rc.tuning()?)?;
    Ok(match &rc.encryption_key_file {
        Some(path) => {
            let key = ddsvault_repo::encrypted::MasterKey::from_file(path).map_err(ConfigError)?;
            repo.with_encryption(std::sync::Arc::new(key))
        }
        None => repo,
    })
}

/// Opens the repository and proves it usable (write, read, delete, list), so a server with wrong credentials, a
/// missing bucket or an unreachable endpoint refuses to start and says why. Then aborts lost uploads.
///
/// # Errors
/// As [`open`], or the failed check.
pub async fn open_checked(cfg: &Config) -> Result<Repository, ServerError> {
    let repo = open(cfg)?;
    match tokio::time::timeout(CHECK_TIMEOUT, repo.check()).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(ConfigError(format!(
                "repository {} did not answer within {} s (is the endpoint reachable?)",
                repo.store(),
                CHECK_TIMEOUT.as_secs()
            ))
            .into())
        }
    }
    match repo.sweep_uploads(repo.lost_upload_grace()).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(uploads = n, "aborted lost multipart uploads"),
        Err(e) => tracing::warn!(error = %e, "could not sweep lost multipart uploads"),
    }
    Ok(repo)
}

/// Opens the `[[repository.copies]]` repositories and proves each usable, like the main one.
///
/// # Errors
/// Invalid settings, or a copy repository that fails its check.
pub async fn open_copies(
    cfg: &Config,
) -> Result<Vec<ddsvault_jobs::copies::CopyTarget>, ServerError> {
    let mut out = Vec::new();
    let regions = cfg.repository.copy_locations(&cfg.data_dir)?;
    for ((region, _, _), rc) in regions.into_iter().zip(&cfg.repository.copies) {
        let repo = open_with(rc, &cfg.data_dir)?;
        match tokio::time::timeout(CHECK_TIMEOUT, repo.check()).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(ConfigError(format!(
                    "copy repository {} ({region}) did not answer within {} s",
                    repo.store(),
                    CHECK_TIMEOUT.as_secs()
                ))
                .into())
            }
        }
        out.push(ddsvault_jobs::copies::CopyTarget {
            dest_region: region,
            repo,
        });
    }
    Ok(out)
}
