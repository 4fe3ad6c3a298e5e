//! Provisioned instances (CreateDBInstance, docs/provisioning.md): the server processes ddsvault starts from the
//! `[provisioning]` command template; the `provision` job that fills a new instance from a backup is [`job`].
//!
//! Layout of an instance: `<base_dir>/<id>/` is the process's working directory (FerretDB keeps its `state.json`
//! there) and holds `server.log` (its stdout and stderr); `<base_dir>/<id>/data/` is `{data_dir}` of the template.

pub(crate) mod job;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ddsvault_catalog::{Catalog, ProvisionStatus, ProvisionedInstance};
use tokio_util::sync::CancellationToken;

use crate::{InstanceSpec, JobError};

/// How long a stopped process may take to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// The storage type provisioned instances report (a local data directory, like `[[instances]]`' default).
pub const STORAGE_TYPE: &str = "local_ssd";

/// `[provisioning]`, resolved.
#[derive(Clone, Debug)]
pub struct ProvisionSettings {
    /// The command template, split into arguments; `{data_dir}`, `{dir}`, `{port}` and `{id}` are replaced in each.
    pub command: Vec<String>,
    /// Ports handed to new instances (on 127.0.0.1), both ends included.
    pub ports: std::ops::RangeInclusive<u16>,
    /// Where instance directories are created.
    pub base_dir: PathBuf,
    /// How long a started process may take to answer `ping`.
    pub start_timeout: Duration,
}

/// Splits a command template into arguments: whitespace separates, single or double quotes group (no escapes).
///
/// # Errors
/// An unbalanced quote.
pub fn split_command(template: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in template.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => cur.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            None => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err("unbalanced quote".into());
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// The placeholders a template may use.
pub const PLACEHOLDERS: [&str; 4] = ["{data_dir}", "{dir}", "{port}", "{id}"];

/// How often the supervisor looks for servers that died.
const WATCH_EVERY: Duration = Duration::from_millis(500);
/// The first restart of a server that died waits this long; each death soon after a restart doubles it.
const RESTART_BACKOFF_MIN: Duration = Duration::from_secs(1);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A server that ran this long since its last (re)start counts as healthy again: its next death restarts it after
/// the shortest backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// What the supervisor knows of a provisioned server it restarts (DescribeDBInstanceAttribute shows it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Supervision {
    /// Times the server was started again after it died while ddsvault ran.
    pub restarts: u32,
    /// How it last ended (`exit status: 1`, `signal: 9 (SIGKILL)`), if it ever died.
    pub last_exit: Option<String>,
    /// It died and its restart is due (or failed and is retried): DBInstanceStatus `Rebooting`.
    pub restarting: bool,
    /// Why the last restart attempt failed.
    pub last_error: Option<String>,
}

/// A dead server waiting for its restart.
#[derive(Debug)]
struct Pending {
    port: u16,
    dir: PathBuf,
    due: tokio::time::Instant,
    backoff: Duration,
}

/// Starts, watches and stops the processes of provisioned instances.
#[derive(Debug)]
pub struct Provisioner {
    settings: ProvisionSettings,
    children: tokio::sync::Mutex<HashMap<String, std::process::Child>>,
    /// Where each running server listens and keeps its files, and when it was (re)started.
    started: std::sync::Mutex<HashMap<String, (u16, PathBuf, tokio::time::Instant)>>,
    /// Servers that died and are restarted by the supervisor.
    pending: std::sync::Mutex<HashMap<String, Pending>>,
    /// The backoff of each server's last restart (doubled when it dies again soon after).
    last_backoff: std::sync::Mutex<HashMap<String, Duration>>,
    supervision: std::sync::Mutex<HashMap<String, Supervision>>,
}

impl Provisioner {
    /// A provisioner with `settings` and no server started yet.
    pub fn new(settings: ProvisionSettings) -> Self {
        Self {
            settings,
            children: tokio::sync::Mutex::new(HashMap::new()),
            started: std::sync::Mutex::new(HashMap::new()),
            pending: std::sync::Mutex::new(HashMap::new()),
            last_backoff: std::sync::Mutex::new(HashMap::new()),
            supervision: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// What the supervisor did about `id`'s server (default: nothing happened to it).
    pub fn supervision(&self, id: &str) -> Supervision {
        lock(&self.supervision).get(id).cloned().unwrap_or_default()
    }

    /// The `[provisioning]` settings it runs with.
    pub fn settings(&self) -> &ProvisionSettings {
        &self.settings
    }

    /// The directory of a new instance.
    pub fn instance_dir(&self, id: &str) -> PathBuf {
        self.settings.base_dir.join(id)
    }

    /// The data directory (`{data_dir}`) inside an instance directory.
    pub fn data_dir(dir: &Path) -> PathBuf {
        dir.join("data")
    }

    /// The connection string of a provisioned instance.
    pub fn uri(port: u16) -> String {
        format!("mongodb://127.0.0.1:{port}/")
    }

    /// What jobs need to know of a provisioned instance.
    pub fn spec(p: &ProvisionedInstance) -> InstanceSpec {
        InstanceSpec {
            id: p.id.clone(),
            uri: Self::uri(p.port),
            storage_type: STORAGE_TYPE.into(),
            data_path: Some(Self::data_dir(Path::new(&p.dir))),
        }
    }

    /// A port of the range that no provisioned instance holds and that is free on 127.0.0.1 now, starting at a
    /// random place so concurrent calls rarely collide (the catalog's unique port settles a collision).
    pub fn pick_port(&self, taken: &[u16], start: u32) -> Option<u16> {
        let (lo, hi) = (*self.settings.ports.start(), *self.settings.ports.end());
        let n = u32::from(hi - lo) + 1;
        (0..n)
            .map(|k| lo + u16::try_from((start % n + k) % n).unwrap_or(0))
            .filter(|p| !taken.contains(p))
            .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
    }

    fn command_for(&self, id: &str, port: u16, dir: &Path) -> Vec<String> {
        let data = Self::data_dir(dir);
        self.settings
            .command
            .iter()
            .map(|a| {
                a.replace("{data_dir}", &data.display().to_string())
                    .replace("{dir}", &dir.display().to_string())
                    .replace("{port}", &port.to_string())
                    .replace("{id}", id)
            })
            .collect()
    }

    /// Whether ddsvault runs the process of `id` now.
    pub async fn is_running(&self, id: &str) -> bool {
        let mut children = self.children.lock().await;
        match children.get_mut(id) {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The process id of `id`'s server, while it runs.
    pub async fn pid(&self, id: &str) -> Option<u32> {
        let mut children = self.children.lock().await;
        let c = children.get_mut(id)?;
        match c.try_wait() {
            Ok(None) => Some(c.id()),
            _ => None,
        }
    }

    /// Starts the server of `id` (unless it runs already) and waits until it answers `ping`.
    ///
    /// # Errors
    /// The process cannot be started, exits, or does not answer within the start timeout (it is stopped then).
    pub async fn start(&self, id: &str, port: u16, dir: &Path) -> Result<(), JobError> {
        if self.is_running(id).await {
            return Ok(());
        }
        let args = self.command_for(id, port, dir);
        let (program, rest) = args
            .split_first()
            .ok_or_else(|| JobError::Other("the [provisioning] command is empty".into()))?;
        std::fs::create_dir_all(Self::data_dir(dir))
            .map_err(|e| JobError::Filesystem(format!("create {}: {e}", dir.display())))?;
        let log_path = dir.join("server.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| JobError::Filesystem(format!("open {}: {e}", log_path.display())))?;
        let log2 = log
            .try_clone()
            .map_err(|e| JobError::Filesystem(format!("open {}: {e}", log_path.display())))?;
        // Spawning only forks and execs: no need for a blocking thread.
        let child = std::process::Command::new(program)
            .args(rest)
            .current_dir(dir)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| JobError::Other(format!("could not start {program:?} for {id}: {e}")))?;
        tracing::info!(instance = %id, port, pid = child.id(), "started a provisioned instance");
        self.children.lock().await.insert(id.to_string(), child);
        lock(&self.started).insert(
            id.to_string(),
            (port, dir.to_path_buf(), tokio::time::Instant::now()),
        );

        let uri = Self::uri(port);
        let deadline = tokio::time::Instant::now() + self.settings.start_timeout;
        loop {
            {
                let mut children = self.children.lock().await;
                if let Some(c) = children.get_mut(id) {
                    if let Ok(Some(status)) = c.try_wait() {
                        children.remove(id);
                        return Err(JobError::Other(format!(
                            "the server of {id} exited during start ({status}); last lines of {}: {}",
                            log_path.display(),
                            tail(&log_path, 5)
                        )));
                    }
                }
            }
            let ping = tokio::time::timeout(
                Duration::from_secs(3),
                ddsvault_mongo::topology::connect(&uri),
            )
            .await;
            if let Ok(Ok(_)) = ping {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                self.stop(id).await;
                return Err(JobError::Other(format!(
                    "the server of {id} did not answer ping on port {port} within {}s; last lines of {}: {}",
                    self.settings.start_timeout.as_secs(),
                    log_path.display(),
                    tail(&log_path, 5)
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops the server of `id` if ddsvault runs it: SIGTERM, then SIGKILL after a grace period. A stopped server
    /// is not restarted by the supervisor.
    pub async fn stop(&self, id: &str) {
        lock(&self.pending).remove(id);
        lock(&self.started).remove(id);
        lock(&self.last_backoff).remove(id);
        lock(&self.supervision).remove(id);
        let Some(mut child) = self.children.lock().await.remove(id) else {
            return;
        };
        if let Some(pid) = i32::try_from(child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        // Polled: std's wait would block the runtime thread.
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if tokio::time::Instant::now() >= deadline => {
                    tracing::warn!(instance = %id, "the provisioned server ignored SIGTERM; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        tracing::info!(instance = %id, "stopped a provisioned instance");
    }

    /// Stops every process ddsvault started (shutdown).
    pub async fn stop_all(&self) {
        let ids: Vec<String> = self.children.lock().await.keys().cloned().collect();
        futures::future::join_all(ids.iter().map(|id| self.stop(id))).await;
    }

    /// Stops `id`'s process and removes its directory.
    ///
    /// # Errors
    /// The directory cannot be removed.
    pub async fn destroy(&self, id: &str, dir: &Path) -> Result<(), JobError> {
        self.stop(id).await;
        match tokio::fs::remove_dir_all(dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(JobError::Filesystem(format!(
                "remove {}: {e}",
                dir.display()
            ))),
        }
    }

    /// Servers that exited on their own since the last look: taken out of the running set and queued for a
    /// restart after their backoff.
    async fn reap(&self) {
        let mut died = Vec::new();
        {
            let mut children = self.children.lock().await;
            let mut gone = Vec::new();
            for (id, child) in children.iter_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    gone.push((id.clone(), status.to_string()));
                }
            }
            for (id, status) in gone {
                children.remove(&id);
                died.push((id, status));
            }
        }
        for (id, status) in died {
            let Some((port, dir, since)) = lock(&self.started).remove(&id) else {
                continue;
            };
            let previous = lock(&self.last_backoff).get(&id).copied();
            let backoff = match previous {
                Some(b) if since.elapsed() < HEALTHY_AFTER => (b * 2).min(RESTART_BACKOFF_MAX),
                _ => RESTART_BACKOFF_MIN,
            };
            lock(&self.last_backoff).insert(id.clone(), backoff);
            let mut pending = lock(&self.pending);
            tracing::warn!(instance = %id, exit = %status, restart_in_ms = backoff.as_millis() as u64, "a provisioned server died; restarting it");
            pending.insert(
                id.clone(),
                Pending {
                    port,
                    dir,
                    due: tokio::time::Instant::now() + backoff,
                    backoff,
                },
            );
            drop(pending);
            let mut sup = lock(&self.supervision);
            let s = sup.entry(id).or_default();
            s.last_exit = Some(status);
            s.restarting = true;
        }
    }

    /// Restarts the dead servers whose backoff is over. A failed start is retried after twice the backoff.
    async fn restart_due(&self, catalog: &Catalog) {
        let now = tokio::time::Instant::now();
        #[allow(clippy::type_complexity)]
        let due: Vec<(String, u16, PathBuf, Duration)> = lock(&self.pending)
            .iter()
            .filter(|(_, p)| p.due <= now)
            .map(|(id, p)| (id.clone(), p.port, p.dir.clone(), p.backoff))
            .collect();
        for (id, port, dir, backoff) in due {
            // Only an instance that is still meant to run (DeleteDBInstance may have removed it meanwhile).
            match catalog.get_provisioned_instance(&id).await {
                Ok(Some(row)) if row.status == ProvisionStatus::Running => {}
                Ok(_) => {
                    lock(&self.pending).remove(&id);
                    lock(&self.supervision).remove(&id);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(instance = %id, error = %e, "could not read the provisioned instance; restart retried");
                    continue;
                }
            }
            if !lock(&self.pending).contains_key(&id) {
                continue; // stopped meanwhile
            }
            match self.start(&id, port, &dir).await {
                Ok(()) => {
                    // The backoff stays in `last_backoff`: a death soon after this restart waits longer (`reap`).
                    lock(&self.pending).remove(&id);
                    let mut sup = lock(&self.supervision);
                    let s = sup.entry(id.clone()).or_default();
                    s.restarts += 1;
                    s.restarting = false;
                    s.last_error = None;
                    tracing::info!(instance = %id, restarts = s.restarts, "restarted a provisioned server");
                }
                Err(e) => {
                    let next = (backoff * 2).min(RESTART_BACKOFF_MAX);
                    tracing::warn!(instance = %id, error = %e, retry_in_ms = next.as_millis() as u64, "restarting a provisioned server failed");
                    // A start that timed out stopped the process (and cleared the queue entry): queued again.
                    lock(&self.pending).insert(
                        id.clone(),
                        Pending {
                            port,
                            dir,
                            due: tokio::time::Instant::now() + next,
                            backoff: next,
                        },
                    );
                    let mut sup = lock(&self.supervision);
                    let s = sup.entry(id).or_default();
                    s.restarting = true;
                    s.last_error = Some(e.to_string());
                }
            }
        }
    }

    /// The supervisor task: starts every `Running` provisioned instance again (ddsvault's own start), restarts a
    /// server that dies while ddsvault runs (after a backoff: 1 s, doubling up to 60 s while it keeps dying within
    /// a minute of its restart), and, when `cancel` fires (shutdown), stops every process it started.
    pub async fn supervise(
        self: Arc<Self>,
        catalog: Catalog,
        cancel: CancellationToken,
    ) -> Result<(), String> {
        let rows = catalog
            .list_provisioned_instances()
            .await
            .map_err(|e| e.to_string())?;
        for p in rows.iter().filter(|p| p.status == ProvisionStatus::Running) {
            if cancel.is_cancelled() {
                break;
            }
            if let Err(e) = self.start(&p.id, p.port, Path::new(&p.dir)).await {
                tracing::error!(instance = %p.id, error = %e, "could not start a provisioned instance again");
            }
        }
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(WATCH_EVERY) => {}
            }
            self.reap().await;
            self.restart_due(&catalog).await;
        }
        self.stop_all().await;
        Ok(())
    }
}

/// A std mutex's guard; a poisoned lock only means a panic elsewhere while it was held, the map is intact.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The last `n` lines of a log file, on one line (empty if it cannot be read).
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_split_on_whitespace_and_quotes_group() {
        assert_eq!(
            split_command(
                "ferretdb --handler=sqlite  --sqlite-url=file:{data_dir}/ --x='a b' \"c d\""
            )
            .expect("split"),
            [
                "ferretdb",
                "--handler=sqlite",
                "--sqlite-url=file:{data_dir}/",
                "--x=a b",
                "c d"
            ]
        );
        assert!(split_command("a 'b").is_err());
        assert!(split_command("   ").expect("empty").is_empty());
    }

    #[test]
    fn placeholders_are_replaced_in_every_argument() {
        let p = Provisioner::new(ProvisionSettings {
            command: split_command("srv --data={data_dir}/ --port={port} --dir={dir} --name={id}")
                .expect("split"),
            ports: 40000..=40010,
            base_dir: PathBuf::from("/b"),
            start_timeout: Duration::from_secs(1),
        });
        let dir = p.instance_dir("dds-x");
        assert_eq!(
            p.command_for("dds-x", 40001, &dir),
            [
                "srv",
                "--data=/b/dds-x/data/",
                "--port=40001",
                "--dir=/b/dds-x",
                "--name=dds-x"
            ]
        );
    }

    #[test]
    fn picked_ports_skip_taken_ones_and_stay_in_range() {
        let p = Provisioner::new(ProvisionSettings {
            command: vec!["x".into()],
            ports: 40100..=40102,
            base_dir: PathBuf::from("/b"),
            start_timeout: Duration::from_secs(1),
        });
        let port = p.pick_port(&[40100, 40101], 0).expect("a port");
        assert_eq!(port, 40102);
        assert_eq!(p.pick_port(&[40100, 40101, 40102], 5), None);
    }
}
