//! The first phases of `ddsvault serve`, before anything shared is touched.
//!
//! A start may fail (port taken, another server on the same data directory). Whatever fails must leave every job,
//! file and key as it was, so the order is: bind the listeners (no side effect at all), then take this process's
//! identity (an exclusive lock on the data directory and the node id kept beside it), and only then open the
//! catalog, create keys and recover interrupted jobs (`crate::prepare`).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::error::{ConfigError, ServerError};

/// The listeners of the API, bound before anything else happens.
pub(crate) struct Listeners {
    /// `None` for a node without the API (`ddsvault agent`, `serve --no-api`).
    pub plain: Option<tokio::net::TcpListener>,
    pub tls: Option<tokio::net::TcpListener>,
    /// `[metrics] listen`: the monitoring endpoints' own listener.
    pub metrics: Option<tokio::net::TcpListener>,
}

/// Binds `listen` and, with a TLS configuration loaded, its address `tls_addr` (neither when `api` is false).
pub(crate) async fn bind_listeners(
    cfg: &Config,
    tls_addr: Option<&str>,
    api: bool,
) -> Result<Listeners, ServerError> {
    let bind = |addr: String| async move {
        tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| ServerError::Listen { addr, source })
    };
    let plain = match api {
        true => Some(bind(cfg.listen.clone()).await?),
        false => None,
    };
    let tls = match tls_addr {
        Some(addr) if api => Some(bind(addr.to_string()).await?),
        _ => None,
    };
    let metrics = match (&cfg.metrics.listen, cfg.metrics.enabled) {
        (Some(addr), true) => Some(bind(addr.clone()).await?),
        _ => None,
    };
    Ok(Listeners {
        plain,
        tls,
        metrics,
    })
}

/// This process's identity: its node id, and the lock that makes it the only server of its data directory.
/// The lock is held as long as this value lives (the process's life): the kernel releases it at exit, even on
/// SIGKILL, so a crash never leaves a stale lock behind.
#[derive(Debug)]
pub struct Identity {
    /// Owner of the jobs this process claims; never shared through the catalog.
    pub node_id: String,
    _lock: File,
}

/// The lock file inside the data directory.
pub const LOCK_FILE: &str = "ddsvault.lock";
/// The node id file inside the data directory.
pub const NODE_ID_FILE: &str = "node_id";

/// Creates the data directory if needed, locks it, and reads (or creates) the node id kept in it; a configured
/// `node_id` wins over the file.
///
/// # Errors
/// [`ConfigError`] naming the data directory when it cannot be created or locked, in particular when another
/// ddsvault process serves it.
pub fn hold_identity(cfg: &Config) -> Result<Identity, ServerError> {
    let dir = &cfg.data_dir;
    std::fs::create_dir_all(dir)
        .map_err(|e| ConfigError(format!("create data_dir {}: {e}", dir.display())))?;
    let lock = lock_data_dir(dir)?;
    let node_id = match &cfg.node_id {
        Some(id) => id.clone(),
        None => stored_node_id(dir)?,
    };
    Ok(Identity {
        node_id,
        _lock: lock,
    })
}

fn lock_data_dir(dir: &Path) -> Result<File, ServerError> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| ConfigError(format!("open {}: {e}", path.display())))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(ConfigError(format!(
            "another ddsvault process is serving the data directory {} (it holds {}); stop it first, or give this \
             one its own data_dir",
            dir.display(),
            path.display()
        ))
        .into()),
        Err(e) => Err(ConfigError(format!("lock {}: {e}", path.display())).into()),
    }
}

/// The node id stored in the data directory, created on the first start (written to a temporary file and
/// renamed, so a crash never leaves a half-written id).
fn stored_node_id(dir: &Path) -> Result<String, ServerError> {
    let path = dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if valid_node_id(id) {
                return Ok(id.to_string());
            }
            Err(ConfigError(format!(
                "{} does not hold a valid node id ({id:?}); remove it to have a new one generated",
                path.display()
            ))
            .into())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("node-{}", crate::random_string(12).to_lowercase());
            write_atomically(&path, &format!("{id}\n"))
                .map_err(|e| ConfigError(format!("write {}: {e}", path.display())))?;
            Ok(id)
        }
        Err(e) => Err(ConfigError(format!("read {}: {e}", path.display())).into()),
    }
}

/// Node ids name job owners in the catalog and in logs: short, printable, no spaces.
pub(crate) fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> Config {
        let mut cfg: Config = toml::from_str("").expect("empty config");
        cfg.data_dir = dir.to_path_buf();
        cfg
    }

    #[test]
    fn the_node_id_is_kept_in_the_data_directory_and_the_lock_is_exclusive() {
        let dir = tempfile::tempdir().expect("tmp");
        let cfg = config(dir.path());
        let first = hold_identity(&cfg).expect("first");
        assert!(valid_node_id(&first.node_id), "{}", first.node_id);
        let second = hold_identity(&cfg).expect_err("second holder");
        assert!(
            second.to_string().contains("another ddsvault process"),
            "{second}"
        );
        drop(first);
        let again = hold_identity(&cfg).expect("after release");
        let stored = std::fs::read_to_string(dir.path().join(NODE_ID_FILE)).expect("file");
        assert_eq!(stored.trim(), again.node_id);
        drop(again);
        let mut named = cfg.clone();
        named.node_id = Some("db-host-1".into());
        assert_eq!(hold_identity(&named).expect("named").node_id, "db-host-1");
    }

    #[test]
    fn a_damaged_node_id_file_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join(NODE_ID_FILE), "not a node id\n").expect("write");
        let e = hold_identity(&config(dir.path())).expect_err("damaged");
        assert!(e.to_string().contains("valid node id"), "{e}");
    }
}
