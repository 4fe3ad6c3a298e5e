//! The subcommands that work on the catalog and the repository directly, without a server (they call
//! `ddsvault_server::offline` and the retention passes): one function per subcommand, called from `main`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use ddsvault_server::offline;

use crate::{load_config, selectors};

/// `ddsvault nodes`: the processes sharing the catalog.
pub async fn nodes(config: Option<PathBuf>, stale_secs: u64, json: bool) -> anyhow::Result<()> {
    use ddsvault_server::nodes;
    let cfg = load_config(config.as_ref())?;
    let now = chrono::Utc::now();
    let listed = nodes::list(&cfg, std::time::Duration::from_secs(stale_secs), now).await?;
    for n in &listed {
        if json {
            println!("{}", nodes::json(n));
        } else {
            println!("{}", nodes::line(n, now));
        }
    }
    Ok(())
}

/// `ddsvault download`: a backup's archive (or files tar), verified against its manifest.
pub async fn download(
    config: Option<PathBuf>,
    backup_id: i64,
    output: &Path,
) -> anyhow::Result<()> {
    let cfg = load_config(config.as_ref())?;
    let d = offline::download(&cfg, backup_id, output).await?;
    println!(
        "{}: {} ({} bytes, sha256 {}, verified against the manifest)",
        output.display(),
        d.file,
        d.size,
        d.sha256
    );
    Ok(())
}

/// `ddsvault verify`: re-reads a backup and checks it.
pub async fn verify(config: Option<PathBuf>, backup_id: i64) -> anyhow::Result<()> {
    let cfg = load_config(config.as_ref())?;
    let v = offline::verify(&cfg, backup_id).await?;
    println!("{}", v.report(backup_id));
    Ok(())
}

/// `ddsvault restore` without `--to-instance`: what to restore and where (clap checked which flags go together).
pub struct Restore {
    pub backup_id: Option<i64>,
    pub to: Option<String>,
    pub to_dir: Option<PathBuf>,
    pub archive: Option<PathBuf>,
    pub gzip: bool,
    pub dbs: Vec<String>,
    pub collections: Vec<String>,
    pub ns_include: Vec<String>,
    pub drop: bool,
}

/// `ddsvault restore` read from the repository (or an archive file): an archive file into a server, a file backup
/// into a directory, or a logical backup into a server, in that order of precedence.
pub async fn restore(config: Option<PathBuf>, r: Restore) -> anyhow::Result<()> {
    let cfg = load_config(config.as_ref())?;
    if let Some(archive) = &r.archive {
        return restore_archive(&cfg, archive, &r).await;
    }
    let backup_id = r
        .backup_id
        .context("--backup-id or --archive is required")?;
    if let Some(dir) = &r.to_dir {
        return restore_to_dir(&cfg, backup_id, dir, &r).await;
    }
    restore_logical(&cfg, backup_id, r).await
}

/// A `mongodump --archive` file into the server `--to`.
async fn restore_archive(
    cfg: &ddsvault_server::Config,
    archive: &Path,
    r: &Restore,
) -> anyhow::Result<()> {
    let to = r.to.as_deref().context("--archive needs --to")?;
    let select = selectors(&r.dbs, &r.collections, &r.ns_include)?;
    let s = offline::restore_archive(cfg, archive, r.gzip, to, select, r.drop).await?;
    for w in &s.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "restored archive {}: {} collections, {} documents, {} oplog entries replayed",
        archive.display(),
        s.namespaces.len(),
        s.documents,
        s.oplog_replayed
    );
    Ok(())
}

/// A Physical or Snapshot backup's data files into the directory `--to-dir`.
async fn restore_to_dir(
    cfg: &ddsvault_server::Config,
    backup_id: i64,
    dir: &Path,
    r: &Restore,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        r.dbs.is_empty() && r.collections.is_empty() && r.ns_include.is_empty() && !r.drop,
        "--db, --collection, --ns-include and --drop apply to logical restores (--to), not to --to-dir"
    );
    let res = offline::restore_to_dir(cfg, backup_id, dir).await?;
    println!(
        "restored {} backup {backup_id} into {}: {} file(s) {:?}, {} bytes, each verified against the manifest",
        res.method,
        dir.display(),
        res.files.len(),
        res.files,
        res.bytes
    );
    Ok(())
}

/// A logical backup into the server `--to`.
async fn restore_logical(
    cfg: &ddsvault_server::Config,
    backup_id: i64,
    r: Restore,
) -> anyhow::Result<()> {
    let to = r.to.context("--to or --to-dir is required")?;
    let select = selectors(&r.dbs, &r.collections, &r.ns_include)?;
    let s = offline::restore(cfg, backup_id, &to, select, r.drop).await?;
    for w in &s.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "restored backup {backup_id}: {} collections, {} documents",
        s.namespaces.len(),
        s.documents
    );
    Ok(())
}

/// `ddsvault import`: a `mongodump --archive` file stored as a Logical backup of `instance`.
pub async fn import(
    config: Option<PathBuf>,
    instance: String,
    archive: PathBuf,
    gzip: bool,
    start_time: Option<String>,
    end_time: Option<String>,
    retention_days: Option<i64>,
) -> anyhow::Result<()> {
    let cfg = load_config(config.as_ref())?;
    let time = |flag: &str, v: Option<String>| {
        v.map(|s| {
            chrono::DateTime::parse_from_rfc3339(&s)
                .map(|t| t.with_timezone(&chrono::Utc))
                .with_context(|| format!("{flag} {s:?}: expected an RFC 3339 time"))
        })
        .transpose()
    };
    let start = time("--start-time", start_time)?;
    let end = time("--end-time", end_time)?;
    let i = offline::import(&cfg, &instance, &archive, gzip, start, end, retention_days).await?;
    let t = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    println!(
        "imported {} as backup {} of {instance} (job {}): {} ({} bytes, sha256 {}), {} collections, {} documents, {} oplog entries, databases {}",
        archive.display(),
        i.backup_id,
        i.job_id,
        i.archive_name,
        i.size,
        i.sha256,
        i.collections,
        i.documents,
        i.oplog_entries,
        i.databases.join(",")
    );
    println!(
        "  start {} end {} (from the {}), expires {}",
        t(i.start_time),
        t(i.end_time),
        match i.times_from {
            ddsvault_jobs::import::TimesFrom::Given => "times given",
            ddsvault_jobs::import::TimesFrom::Oplog => "archive's oplog",
            ddsvault_jobs::import::TimesFrom::File => "file's times",
        },
        t(i.expire_time)
    );
    Ok(())
}

/// `ddsvault retention --dry-run`: what a pass would do, changing nothing.
pub async fn retention_dry_run(
    config: Option<PathBuf>,
    instance: Option<String>,
) -> anyhow::Result<()> {
    let cfg = load_config(config.as_ref())?;
    let d = ddsvault_server::retention_dry_run(&cfg, instance.as_deref()).await?;
    print_dry_run(&d);
    Ok(())
}

/// Prints a retention dry run: one line per decision.
fn print_dry_run(d: &ddsvault_jobs::gc::DryRun) {
    let t = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    println!("retention dry run at {} (nothing is changed)", t(d.now));
    for b in &d.unfinished {
        println!(
            "  delete backup {} of {}: an interrupted deletion (the next pass finishes it)",
            b.id, b.instance_id
        );
    }
    let (mut deleted, mut kept) = (d.unfinished.len(), 0);
    for p in &d.plans {
        for x in &p.plan.delete {
            deleted += 1;
            println!(
                "  delete backup {} of {}: {}",
                x.backup_id, p.instance_id, x.reason
            );
        }
        for k in &p.plan.keep {
            kept += 1;
            println!(
                "  keep   backup {} of {} until {}: {}",
                k.backup_id,
                p.instance_id,
                k.until.map_or_else(|| "forever".to_string(), t),
                k.reason
            );
        }
    }
    println!(
        "{deleted} backup(s) would be deleted, {kept} expired backup(s) kept longer by a policy"
    );
    let (mut chunks, mut bytes) = (0u64, 0u64);
    for c in &d.chunks {
        if let Some(why) = &c.skipped {
            println!("  chunk store of {}: not swept now: {why}", c.instance_id);
        } else if c.chunks > 0 || c.young > 0 {
            println!(
                "  chunk store of {}: sweep {} orphan chunk(s), {} byte(s); {} younger orphan(s) kept by the grace period",
                c.instance_id, c.chunks, c.bytes, c.young
            );
        }
        chunks += c.chunks;
        bytes += c.bytes;
    }
    println!(
        "{chunks} orphan chunk(s) ({bytes} byte(s)) would be swept, not counting the chunks only the backups above use"
    );
}

/// `ddsvault retention` and `ddsvault gc`: one retention pass now.
pub async fn retention_pass(config: Option<PathBuf>) -> anyhow::Result<()> {
    let cfg = load_config(config.as_ref())?;
    let r = ddsvault_server::retention_pass(&cfg).await?;
    println!(
        "retention pass: {} backup(s) deleted {:?}, {} kept longer by a policy {:?}, {} kept because a restore reads them, {} failed",
        r.deleted.len(),
        r.deleted,
        r.extended.len(),
        r.extended,
        r.in_use.len(),
        r.failed
    );
    println!(
        "chunk sweep: {} orphan chunk(s) deleted, {} byte(s) freed",
        r.chunks_swept, r.chunk_bytes_swept
    );
    for (instance, why) in &r.chunk_stores_skipped {
        println!("  chunk store of {instance} not swept this pass: {why}");
    }
    anyhow::ensure!(
        r.failed == 0,
        "{} deletion(s) or chunk sweep(s) failed; see the log",
        r.failed
    );
    Ok(())
}

/// `ddsvault scrub`: re-hashes every chunk and verifies every backup; an error if anything is damaged.
pub async fn scrub(config: Option<PathBuf>) -> anyhow::Result<()> {
    let cfg = load_config(config.as_ref())?;
    let r = offline::scrub(&cfg).await?;
    for line in offline::scrub_lines(&r) {
        println!("{line}");
    }
    anyhow::ensure!(r.is_clean(), "scrub found damage (listed above)");
    Ok(())
}

/// `ddsvault repo copy`: successful backups into a second repository.
pub async fn repo_copy(
    config: Option<PathBuf>,
    to: String,
    backup_id: Option<i64>,
) -> anyhow::Result<()> {
    let cfg = load_config(config.as_ref())?;
    for line in offline::copy_backups(&cfg, &to, backup_id).await? {
        println!("{line}");
    }
    Ok(())
}

/// `ddsvault audit`: the audit trail, newest first.
pub async fn audit(
    config: Option<PathBuf>,
    since: Option<String>,
    access_key: Option<String>,
    action: Option<String>,
    limit: u32,
    json: bool,
) -> anyhow::Result<()> {
    let cfg = load_config(config.as_ref())?;
    let since = since
        .map(|s| offline::parse_since(&s, std::time::SystemTime::now().into()))
        .transpose()?;
    anyhow::ensure!(limit > 0, "--limit must be at least 1");
    let filter = ddsvault_server::AuditFilter {
        since,
        access_key_id: access_key,
        action,
        limit,
    };
    for r in offline::audit(&cfg, &filter).await? {
        if json {
            println!("{}", offline::audit_json(&r));
        } else {
            println!("{}", offline::audit_line(&r));
        }
    }
    Ok(())
}
