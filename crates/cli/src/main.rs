//! The `ddsvault` binary: `ddsvault serve [--config FILE]`.

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
    },
    /// Copies a backup's archive out of the repository, verified against its manifest.
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
}

fn load_config(config: Option<&PathBuf>) -> anyhow::Result<Config> {
    Ok(match config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    })
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DDSVAULT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr; stdout carries only what a user must read (listen address, a newly created key).
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn shutdown_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    token.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutdown signal received");
    token.cancel();
}

async fn serve(
    config: Option<PathBuf>,
    listen: Option<String>,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let mut cfg = load_config(config.as_ref())?;
    if let Some(l) = listen {
        cfg.listen = l;
    }
    if let Some(d) = data_dir {
        cfg.data_dir = d;
    }
    let prepared = ddsvault_server::prepare(cfg)
        .await
        .context("start ddsvault")?;
    if let Some(k) = &prepared.created_root_key {
        println!("Created the root AccessKey (the secret is shown only now; it is stored in the catalog):");
        println!("  AccessKeyId:     {}", k.id);
        println!("  AccessKeySecret: {}", k.secret);
    } else if let Some(id) = &prepared.root_key_id {
        println!("Root AccessKeyId: {id}");
    }
    let token = CancellationToken::new();
    tokio::spawn(shutdown_signal(token.clone()));
    prepared
        .serve(token, |addr| {
            println!("ddsvault listening on http://{addr}");
        })
        .await?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
        } => rt.block_on(serve(config, listen, data_dir)),
        Command::Download {
            config,
            backup_id,
            output,
        } => rt.block_on(async {
            let cfg = load_config(config.as_ref())?;
            let d = ddsvault_server::offline::download(&cfg, backup_id, &output).await?;
            println!(
                "{}: {} ({} bytes, sha256 {}, verified against the manifest)",
                output.display(),
                d.file,
                d.size,
                d.sha256
            );
            Ok(())
        }),
    }
}
