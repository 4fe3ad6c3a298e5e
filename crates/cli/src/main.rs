//! The `ddsvault` binary: `ddsvault serve [--config FILE]`.
#![forbid(unsafe_code)]

mod backup;
mod client;
mod credentials;
mod instance;
mod offline;
mod output;
mod ram;
mod remote_restore;
mod status;
mod wait;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ddsvault_server::Config;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "ddsvault",
    version,
    about = "Self-hosted MongoDB backups behind Alibaba Cloud's Dds API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum RepoCommand {
    /// Copies successful backups (older ones included) into a second repository and verifies every copy there.
    /// TARGET is a configured [[repository.copies]] dest_region or url (copies are recorded and listed by
    /// DescribeBackups with DestRegion), or another s3:// or file:/// URL.
    Copy {
        #[arg(long, short, env = "DDSVAULT_CONFIG")]
        config: Option<PathBuf>,
        /// Destination: a dest_region, or a repository URL.
        #[arg(long)]
        to: String,
        /// Only this backup.
        #[arg(long)]
        backup_id: Option<i64>,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Runs the API server and the backup job runner.
    Serve {
        /// Configuration file (TOML). Without it, embedded defaults: SQLite catalog and local repository under
        /// ./ddsvault-data, listening on 127.0.0.1:8080.
        #[arg(long, short, env = "DDSVAULT_CONFIG")]
        config: Option<PathBuf>,
        /// Overrides `listen` from the configuration.
        #[arg(long)]
        listen: Option<String>,
        /// Overrides `data_dir` from the configuration.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Runs jobs, the scheduler and the other background work without the API listener (as `ddsvault agent`).
        #[arg(long)]
        no_api: bool,
    },
    /// Runs jobs (and the scheduler) without the API listener: a node on a database host sharing the catalog of
    /// the API nodes (docs/deployment.md). `kill -USR1` drains it: no new jobs, running ones finish.
    Agent {
        #[arg(long, short, env = "DDSVAULT_CONFIG")]
        config: Option<PathBuf>,
        /// Overrides `data_dir` from the configuration.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Lists the nodes (ddsvault processes) sharing the catalog: up, draining, or down (no heartbeat within
    /// --stale-secs).
    Nodes {
        #[arg(long, short, env = "DDSVAULT_CONFIG")]
        config: Option<PathBuf>,
        /// A node whose last heartbeat (every 10 s) is older than this many seconds is shown down.
        #[arg(long, default_value_t = 30)]
        stale_secs: u64,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Copies a backup out of the repository, verified against its manifest: a logical backup's archive, or a
    /// Physical/Snapshot backup's data files as one tar (`files.tar`, as its BackupDownloadURL serves it).
    Download {
        #[arg(long, short, env = "DDSVAULT_CONFIG")]
        config: Option<PathBuf>,
        /// The BackupId shown by DescribeBackups.
        #[arg(long)]
        backup_id: i64,
        /// Output file.
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Re-reads a backup and checks the manifest checksums and the archive's per-collection CRCs.
    Verify {
        #[arg(long, short, env = "DDSVAULT_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long)]
        backup_id: i64,
    },
    /// Restores a logical backup into a MongoDB-wire server (verified before anything is written), or a Physical or
    /// Snapshot backup into a data directory (`--to-dir`), or a mongodump archive file (`--archive`) into a server;
    /// these read the repository (or file) directly. With `--to-instance`, asks the server instead
    /// (RestoreDBInstance; RAM applies).
    #[command(after_help = client::EXIT_CODES_HELP)]
    Restore {
        #[arg(long, short, env = "DDSVAULT_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long, required_unless_present = "archive", conflicts_with = "archive")]
        backup_id: Option<i64>,
        /// A `mongodump --archive` file (plain or gzip, found from its content; a downloaded ddsvault archive too)
        /// to restore with --to, instead of a backup from the repository.
        #[arg(long, conflicts_with = "to_dir")]
        archive: Option<PathBuf>,
        /// With --archive: the file must be gzip-compressed (mongorestore's flag; gzip is also detected without it).
        #[arg(long, requires = "archive")]
        gzip: bool,
        /// Target connection string (logical backups).
        #[arg(long, required_unless_present_any = ["to_dir", "to_instance"], conflicts_with = "to_dir")]
        to: Option<String>,
        /// Empty (or new) directory to write the data files of a Physical or Snapshot backup into; start the server
        /// on it afterwards.
        #[arg(long)]
        to_dir: Option<PathBuf>,
        /// Only this database (repeatable).
        #[arg(long = "db")]
        dbs: Vec<String>,
        /// Only this collection of the (single) --db given (repeatable).
        #[arg(long = "collection")]
        collections: Vec<String>,
        /// Only this namespace, as mongorestore's --nsInclude: `db.*` or `db.collection` (repeatable; other
        /// wildcards are not supported).
        #[arg(long = "ns-include", visible_alias = "nsInclude")]
        ns_include: Vec<String>,
        /// Replace collections that already exist in the target (default: refuse).
        #[arg(long)]
        drop: bool,
        /// Restore through the ddsvault API into this registered instance (the server runs the job).
        #[arg(long, conflicts_with_all = ["to", "to_dir", "archive"])]
        to_instance: Option<String>,
        /// With --to-instance: the instance the backup belongs to (default: found by asking each instance).
        #[arg(long, requires = "to_instance")]
        from_instance: Option<String>,
        /// With --to-instance: follow the restore job to its end; exit 1 if it fails.
        #[arg(long, requires = "to_instance")]
        wait: bool,
        /// With --wait: give up after this many seconds (exit 4; the restore goes on).
        #[arg(long, requires = "wait", value_name = "SECS")]
        timeout: Option<u64>,
        /// With --to-instance: one JSON document on stdout.
        #[arg(long, requires = "to_instance")]
        json: bool,
        #[command(flatten)]
        api: credentials::ApiArgs,
    },
    /// Backups through the ddsvault API, signed with your AccessKey (RAM applies): create, list, show, wait.
    Backup(backup::BackupArgs),
    /// Instances through the API: list every one, add (register) or remove one while the server runs, without a
    /// restart (RAM applies; docs/instances.md).
    Instance(instance::InstanceArgs),
    /// Every instance at a glance through the API: last backup and its age, running jobs with progress, the next
    /// automatic backup, failures in the last 24 hours.
    Status(status::OverviewArgs),
    /// The next automatic backup of each instance and the policy behind it, through the API.
    Schedule(status::OverviewArgs),
    /// Verifies a `mongodump --archive` file (plain or gzip) and stores it in the repository as a Logical backup of
    /// an instance, listed by DescribeBackups and restorable and downloadable like ddsvault's own. Start and end
    /// times come from the archive's oplog (`mongodump --oplog`), else from the file's times, unless given.
    Import {
        #[arg(long, short, env = "DDSVAULT_CONFIG")]
        config: Option<PathBuf>,
        /// The configured instance the archive is a backup of.
        #[arg(long)]
        instance: String,
        /// The archive file.
        #[arg(long)]
        archive: PathBuf,
        /// The file must be gzip-compressed (gzip is also detected without it).
        #[arg(long)]
        gzip: bool,
        /// When the dump started (RFC 3339), if the archive and the file do not tell.
        #[arg(long)]
        start_time: Option<String>,
        /// When the dump finished (RFC 3339), if the archive and the file do not tell.
        #[arg(long)]
        end_time: Option<String>,
        /// Days to keep it from its end time (7 to 730, or -1 = permanent; default: the instance's backup policy).
        #[arg(long, allow_hyphen_values = true)]
        retention_days: Option<i64>,
    },
    /// Re-hashes every snapshot chunk (damaged ones are moved to quarantine/, so the next snapshot rewrites them)
    /// and verifies every successful backup; exits non-zero if anything is damaged.
    Scrub {
        #[arg(long, short, env = "DDSVAULT_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Works on second repositories (`[[repository.copies]]`).
    Repo {
        #[command(subcommand)]
        command: RepoCommand,
    },
    /// Runs one retention pass now: deletes expired backups, finishes interrupted deletions and sweeps orphan
    /// snapshot chunks (the server does this every `[retention] gc_interval_secs`).
    Gc {
        #[arg(long, short, env = "DDSVAULT_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Applies the retention policies now (the same pass as `gc`), or with --dry-run prints what would be deleted
    /// or kept longer, and why, without changing anything.
    Retention {
        #[arg(long, short, env = "DDSVAULT_CONFIG")]
        config: Option<PathBuf>,
        /// Change nothing; print the decisions.
        #[arg(long)]
        dry_run: bool,
        /// Only this instance (with --dry-run).
        #[arg(long)]
        instance: Option<String>,
    },
    /// Checks a configuration against reality: every instance reachable, its topology, oplog and data_path, the
    /// method a backup takes, example secrets still in use. Exit code 0 (warnings included unless --strict),
    /// 1 with --strict and a warning, 2 for an invalid configuration.
    Check {
        #[arg(long, short, env = "DDSVAULT_CONFIG")]
        config: Option<PathBuf>,
        /// One JSON object per finding instead of a table.
        #[arg(long)]
        json: bool,
        /// Exit with 1 when any check warns.
        #[arg(long)]
        strict: bool,
    },
    /// Manages RAM users, groups, policies and AccessKeys in the catalog (also while servers run).
    Ram(ram::RamArgs),
    /// Lists the audit trail (every API call, allowed or refused), newest first.
    Audit {
        #[arg(long, short, env = "DDSVAULT_CONFIG")]
        config: Option<PathBuf>,
        /// Only calls at or after this time: RFC 3339 (2026-11-28T01:00:00Z) or an age (90s, 15m, 2h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Only calls naming this AccessKeyId.
        #[arg(long)]
        access_key: Option<String>,
        /// Only calls of this action (e.g. CreateBackup; case-insensitive).
        #[arg(long)]
        action: Option<String>,
        /// At most this many records.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn load_config(config: Option<&PathBuf>) -> anyhow::Result<Config> {
    Ok(match config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    })
}

fn selectors(
    dbs: &[String],
    collections: &[String],
    ns_include: &[String],
) -> anyhow::Result<Vec<ddsvault_mongo::restore::NsSelector>> {
    use ddsvault_mongo::restore::NsSelector;
    if !ns_include.is_empty() {
        anyhow::ensure!(
            dbs.is_empty() && collections.is_empty(),
            "--ns-include cannot be combined with --db/--collection"
        );
        return ns_include.iter().map(|ns| ns_selector(ns)).collect();
    }
    if collections.is_empty() {
        return Ok(dbs
            .iter()
            .map(|d| NsSelector {
                db: d.clone(),
                collection: None,
            })
            .collect());
    }
    let [db] = dbs else {
        anyhow::bail!("--collection needs exactly one --db");
    };
    Ok(collections
        .iter()
        .map(|c| NsSelector {
            db: db.clone(),
            collection: Some(c.clone()),
        })
        .collect())
}

/// One `--ns-include` pattern: `db.*` (a database) or `db.collection` (one collection; the name may hold dots).
fn ns_selector(ns: &str) -> anyhow::Result<ddsvault_mongo::restore::NsSelector> {
    use ddsvault_mongo::restore::NsSelector;
    let Some((db, coll)) = ns.split_once('.') else {
        anyhow::bail!("--ns-include {ns:?}: expected db.* or db.collection");
    };
    anyhow::ensure!(
        !db.is_empty()
            && !coll.is_empty()
            && !db.contains('*')
            && (coll == "*" || !coll.contains('*')),
        "--ns-include {ns:?}: expected db.* or db.collection (no other wildcards)"
    );
    Ok(if coll == "*" {
        NsSelector::database(db)
    } else {
        NsSelector::collection(db, coll)
    })
}

/// Keep the returned guard until the process ends: dropping it writes out what is still queued.
fn init_logging() -> anyhow::Result<tracing_appender::non_blocking::WorkerGuard> {
    // Checked before anything is logged: a typo must not silently give the other format.
    let format = LogFormat::from_env()?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("DDSVAULT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr; stdout carries only what a user must read (listen address, a newly created key).
    // Lines are written by a thread of their own: a write(2) per access-log line inside the request cost a
    // quarter of the server's throughput at 64 concurrent clients. Not lossy: a full queue makes the logger wait
    // rather than drop lines.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("ddsvault-log")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        // One JSON object per line (timestamp, level, target, fields, spans) for log shippers.
        LogFormat::Json => builder.json().with_ansi(false).init(),
        LogFormat::Text => {
            // Colours only for a person at a terminal: escape codes in a log file or the journal are noise.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            builder.with_ansi(ansi).init();
        }
    }
    Ok(guard)
}

/// `DDSVAULT_LOG_FORMAT`: `text` (default) or `json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    fn from_env() -> anyhow::Result<Self> {
        match std::env::var("DDSVAULT_LOG_FORMAT") {
            Err(std::env::VarError::NotPresent) => Ok(Self::Text),
            Ok(v) if v.eq_ignore_ascii_case("text") || v.is_empty() => Ok(Self::Text),
            Ok(v) if v.eq_ignore_ascii_case("json") => Ok(Self::Json),
            Ok(v) => anyhow::bail!("DDSVAULT_LOG_FORMAT={v:?}: expected \"text\" or \"json\""),
            Err(std::env::VarError::NotUnicode(_)) => {
                anyhow::bail!(
                    "DDSVAULT_LOG_FORMAT is not valid UTF-8: expected \"text\" or \"json\""
                )
            }
        }
    }
}

/// Installs the SIGTERM/SIGINT handlers now (so a signal sent right after start-up is never missed) and
/// returns a future that cancels `token` when one arrives.
fn shutdown_signal(
    token: CancellationToken,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listen for SIGTERM")?;
    #[cfg(unix)]
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("listen for SIGINT")?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown signal received");
        token.cancel();
    })
}

/// `ddsvault check`: prints every finding; returns whether any warned.
async fn check(cfg: &Config, json: bool) -> bool {
    use ddsvault_server::checks::{self, Finding, Status};
    let mut rows: Vec<(String, Finding)> = checks::check_config(cfg)
        .into_iter()
        .map(|f| ("-".to_string(), f))
        .collect();
    let runs = cfg.instances.iter().map(|i| async move {
        (
            i.id.clone(),
            checks::check_instance(&i.uri, i.data_path.as_deref(), &i.storage_type).await,
        )
    });
    for (id, findings) in futures::future::join_all(runs).await {
        rows.extend(findings.into_iter().map(|f| (id.clone(), f)));
    }
    for (instance, f) in &rows {
        if json {
            println!(
                "{}",
                serde_json::json!({"instance": instance, "check": f.check, "status": f.status, "message": f.message})
            );
        } else {
            let s = match f.status {
                Status::Ok => "ok  ",
                Status::Warning => "WARN",
            };
            println!("{s}  {instance:<20} {:<15} {}", f.check, f.message);
        }
    }
    rows.iter().any(|(_, f)| f.status == Status::Warning)
}

/// `ddsvault check`: exit code 2 for an invalid configuration, 1 with `--strict` when a check warned.
fn check_command(
    rt: &tokio::runtime::Runtime,
    config: Option<PathBuf>,
    json: bool,
    strict: bool,
) -> anyhow::Result<()> {
    let cfg = match load_config(config.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Error: invalid configuration: {e:#}");
            std::process::exit(2);
        }
    };
    let warned = rt.block_on(check(&cfg, json));
    if strict && warned {
        std::process::exit(1);
    }
    Ok(())
}

/// Writes `text` to a new file of mode 0600 (an existing one is replaced).
fn write_secret_file(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    #[cfg(unix)]
    {
        // A file that existed keeps its mode through open(): tighten it.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// Drains the node on each SIGUSR1 (installed now, so a signal right after start-up is not lost).
fn drain_signal(drain: ddsvault_server::nodes::Drain) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut usr1 =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
                .context("listen for SIGUSR1")?;
        tokio::spawn(async move {
            while usr1.recv().await.is_some() {
                tracing::info!("SIGUSR1 received: draining");
                drain.start();
            }
        });
    }
    #[cfg(not(unix))]
    let _ = drain;
    Ok(())
}

async fn serve(
    config: Option<PathBuf>,
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    api: bool,
) -> anyhow::Result<()> {
    let mut cfg = load_config(config.as_ref())?;
    if let Some(l) = listen {
        cfg.listen = l;
    }
    if let Some(d) = data_dir {
        cfg.data_dir = d;
    }
    let prepared = ddsvault_server::prepare_node(cfg, api)
        .await
        .context("start ddsvault")?;
    if let Some(k) = &prepared.created_root_key {
        // The secret goes to a file only the owner can read, never to stdout: a service's stdout ends up in the
        // journal, where every reader of the logs would see it.
        let path = prepared.root_key_file();
        write_secret_file(
            &path,
            &format!(
                "# The root AccessKey of this ddsvault, created {}. Store it in a safe place and delete this file.\n\
                 AccessKeyId: {}\nAccessKeySecret: {}\n",
                chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ"),
                k.id,
                k.secret
            ),
        )
        .with_context(|| format!("write the new root AccessKey to {}", path.display()))?;
        println!("Created the root AccessKey {}", k.id);
        println!(
            "  its secret is in {} (readable by this user only; shown nowhere else)",
            path.display()
        );
    } else if let Some(id) = &prepared.root_key_id {
        println!("Root AccessKeyId: {id}");
    }
    let token = CancellationToken::new();
    tokio::spawn(shutdown_signal(token.clone())?);
    drain_signal(prepared.drain_handle())?;
    if !api {
        // Tools wait for this line as they wait for "listening on" from an API node.
        println!(
            "ddsvault agent {} running jobs (no API listener)",
            prepared.node_id()
        );
    }
    prepared
        .serve(token, |addr, tls_addr| {
            // The HTTPS line comes first: tools wait for the plain one and then expect both.
            if let Some(tls) = tls_addr {
                println!("ddsvault listening on https://{tls}");
            }
            println!("ddsvault listening on http://{addr}");
        })
        .await?;
    Ok(())
}

/// Parses the command line and runs one subcommand: the table below names the function of each, most of them
/// in `offline` (catalog and repository read directly) or in the API clients' modules.
fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _log = init_logging()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
            no_api,
        } => rt.block_on(serve(config, listen, data_dir, !no_api)),
        Command::Agent { config, data_dir } => rt.block_on(serve(config, None, data_dir, false)),
        Command::Nodes {
            config,
            stale_secs,
            json,
        } => rt.block_on(offline::nodes(config, stale_secs, json)),
        Command::Download {
            config,
            backup_id,
            output,
        } => rt.block_on(offline::download(config, backup_id, &output)),
        Command::Verify { config, backup_id } => rt.block_on(offline::verify(config, backup_id)),
        // clap makes --backup-id required with --to-instance (only --archive does without it).
        Command::Restore {
            backup_id: Some(backup_id),
            dbs,
            collections,
            ns_include,
            drop,
            to_instance: Some(target),
            from_instance,
            wait,
            timeout,
            json,
            api,
            ..
        } => client::finish(
            rt.block_on(remote_restore::run(remote_restore::RemoteRestore {
                api,
                target,
                source: from_instance,
                backup_id,
                dbs,
                collections,
                ns_include,
                drop,
                wait,
                timeout,
                json,
            })),
        ),
        Command::Restore {
            config,
            backup_id,
            to,
            to_dir,
            archive,
            gzip,
            dbs,
            collections,
            ns_include,
            drop,
            ..
        } => rt.block_on(offline::restore(
            config,
            offline::Restore {
                backup_id,
                to,
                to_dir,
                archive,
                gzip,
                dbs,
                collections,
                ns_include,
                drop,
            },
        )),
        Command::Import {
            config,
            instance,
            archive,
            gzip,
            start_time,
            end_time,
            retention_days,
        } => rt.block_on(offline::import(
            config,
            instance,
            archive,
            gzip,
            start_time,
            end_time,
            retention_days,
        )),
        Command::Retention {
            config,
            dry_run: true,
            instance,
        } => rt.block_on(offline::retention_dry_run(config, instance)),
        Command::Retention {
            instance: Some(_), ..
        } => anyhow::bail!("--instance needs --dry-run: a retention pass covers every instance"),
        Command::Scrub { config } => rt.block_on(offline::scrub(config)),
        Command::Repo {
            command:
                RepoCommand::Copy {
                    config,
                    to,
                    backup_id,
                },
        } => rt.block_on(offline::repo_copy(config, to, backup_id)),
        Command::Retention { config, .. } | Command::Gc { config } => {
            rt.block_on(offline::retention_pass(config))
        }
        Command::Check {
            config,
            json,
            strict,
        } => check_command(&rt, config, json, strict),
        Command::Ram(args) => rt.block_on(ram::run(args)),
        Command::Backup(args) => client::finish(rt.block_on(backup::run(args))),
        Command::Instance(args) => client::finish(rt.block_on(instance::run(args))),
        Command::Status(args) => client::finish(rt.block_on(status::status(args))),
        Command::Schedule(args) => client::finish(rt.block_on(status::schedule(args))),
        Command::Audit {
            config,
            since,
            access_key,
            action,
            limit,
            json,
        } => rt.block_on(offline::audit(
            config, since, access_key, action, limit, json,
        )),
    }
}
