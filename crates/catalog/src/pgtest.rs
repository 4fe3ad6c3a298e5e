//! A throw-away PostgreSQL cluster for tests (feature `pgtest`): `initdb` in a temporary directory, `pg_ctl start` on
//! a free loopback port, stopped and deleted on drop. CI needs no running service, only Debian's `postgresql`
//! package (scripts/setup-stack.sh installs it). `initdb` refuses to run as root, so under root the cluster runs as
//! the `postgres` system user, which then owns the directory.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running cluster; trust authentication on 127.0.0.1 only, superuser `ddsvault`.
#[derive(Debug)]
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    run_as: Option<&'static str>,
    port: u16,
}

/// The directory holding `initdb` and `pg_ctl`: `$DDSVAULT_PG_BIN`, else the newest /usr/lib/postgresql/<v>/bin.
///
/// # Errors
/// A message saying how to install PostgreSQL when none is found.
pub fn pg_bin_dir() -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var("DDSVAULT_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| {
            format!("no PostgreSQL under /usr/lib/postgresql ({e}): run scripts/setup-stack.sh")
        })?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).ok_or_else(|| {
        "no initdb under /usr/lib/postgresql/*/bin: run scripts/setup-stack.sh".to_string()
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local_addr: {e}"))
}

impl PgCluster {
    /// Creates and starts a cluster.
    ///
    /// # Errors
    /// What failed (initdb, pg_ctl), with its output.
    pub fn start() -> Result<Self, String> {
        let bin = pg_bin_dir()?;
        let run_as = is_root().then_some("postgres");
        let dir = tempfile::Builder::new()
            .prefix("ddsvault-pg-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        if let Some(user) = run_as {
            let status = Command::new("chown")
                .arg(format!("{user}:"))
                .arg(dir.path())
                .status()
                .map_err(|e| format!("chown: {e}"))?;
            if !status.success() {
                return Err(format!("chown {user} {} failed", dir.path().display()));
            }
        }
        let mut cluster = Self {
            dir,
            bin,
            run_as,
            port: 0,
        };
        cluster.run(
            "initdb",
            &[
                "-D",
                &cluster.data().display().to_string(),
                "-U",
                "ddsvault",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        // A port can be taken between our probe and the server's bind: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            cluster.port = free_port()?;
            let opts = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
                cluster.port,
                cluster.dir.path().display()
            );
            let log = cluster.dir.path().join("server.log").display().to_string();
            match cluster.run(
                "pg_ctl",
                &[
                    "-D",
                    &cluster.data().display().to_string(),
                    "-l",
                    &log,
                    "-o",
                    &opts,
                    "-w",
                    "start",
                ],
            ) {
                Ok(()) => return Ok(cluster),
                Err(e) => {
                    last = format!("{e}\n{}", std::fs::read_to_string(&log).unwrap_or_default())
                }
            }
        }
        Err(last)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let exe = self.bin.join(tool);
        let mut cmd = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        // The tools must not find (or write into) the caller's working directory.
        cmd.args(args).current_dir(self.dir.path());
        let out = cmd
            .output()
            .map_err(|e| format!("{}: {e}", exe.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{tool} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// The loopback port the server listens on.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `db` (which must exist; `postgres` always does).
    #[must_use]
    pub fn url(&self, db: &str) -> String {
        format!("postgres://ddsvault@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `name` and returns its URL: one cluster can serve several independent catalogs.
    ///
    /// # Errors
    /// The server's error.
    pub async fn create_database(&self, name: &str) -> Result<String, String> {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .map_err(|e| format!("create database {name}: {e}"))?;
        Ok(self.url(name))
    }

    /// The cluster's directory (data and server log).
    #[must_use]
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.port != 0 {
            let data = self.data().display().to_string();
            // Immediate: the cluster is thrown away, nothing needs a clean checkpoint.
            let _ = self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
        }
    }
}
