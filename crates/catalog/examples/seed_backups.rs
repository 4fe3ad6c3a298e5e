//! Fills a catalog with successful backups for API latency benchmarks (bench/api.py).
//!
//! Goes through the catalog trait, as the job runner does, so the rows are exactly what real backups leave.
//!
//!   cargo run --release -p ddsvault-catalog --example seed_backups -- sqlite://<path>/catalog.db <instance> <count> \
//!       [<busy-prefix> <busy-count>]
//!
//! With a busy prefix, instances `<prefix>0..` each get a Running backup job owned by another (live-looking) node,
//! so that CreateBackup on them measures the BackupJobExists refusal alone.

use chrono::{Duration, Utc};
use ddsvault_catalog::{BackupCompletion, NewBackupJob};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (url, instance, count, busy) = match args.as_slice() {
        [_, url, instance, count] => (url, instance, count, None),
        [_, url, instance, count, prefix, n] => {
            (url, instance, count, Some((prefix, n.parse::<u32>()?)))
        }
        _ => return Err(
            "usage: seed_backups <catalog-url> <instance-id> <count> [<busy-prefix> <busy-count>]"
                .into(),
        ),
    };
    let count: u64 = count.parse()?;
    let catalog = ddsvault_catalog::open(url).await?;
    if let Some((prefix, n)) = busy {
        for i in 0..n {
            let id = format!("{prefix}{i}");
            catalog.register_instance(&id, Utc::now()).await?;
            catalog
                .create_backup_job(&NewBackupJob {
                    instance_id: id.clone(),
                    method: ddsvault_catalog::BackupMethod::Logical,
                    mode: "Manual".into(),
                    retention_days: 7,
                    engine_version: "7.0".into(),
                    params: serde_json::json!({"method": ddsvault_catalog::BackupMethod::Logical, "seeded": true}),
                    now: Utc::now(),
                })
                .await?;
            // Claimed by a node that is not the server, with a lease of ten years: the server neither runs nor
            // recovers it.
            catalog
                .claim_next_job("bench-busy", Utc::now(), Utc::now() + Duration::days(3650))
                .await?
                .ok_or("the busy job just created was not claimable")?;
        }
    }
    catalog.register_instance(instance, Utc::now()).await?;
    let owner = "bench-seed";
    let start = Utc::now() - Duration::days(700);
    for i in 0..count {
        // Spread start times so time filters and ordering have real work to do.
        let t = start + Duration::seconds(i64::try_from(i)? * 60);
        let (job, backup) = catalog
            .create_backup_job(&NewBackupJob {
                instance_id: instance.clone(),
                method: ddsvault_catalog::BackupMethod::Logical,
                mode: "Automated".into(),
                retention_days: -1,
                engine_version: "7.0".into(),
                params: serde_json::json!({"method": ddsvault_catalog::BackupMethod::Logical, "seeded": true}),
                now: t,
            })
            .await?;
        let claimed = catalog
            .claim_next_job(owner, t, t + Duration::seconds(60))
            .await?
            .ok_or("the job just created was not claimable")?;
        if claimed.id != job.id {
            return Err(format!("claimed job {} instead of {}", claimed.id, job.id).into());
        }
        catalog
            .complete_backup(
                job.id,
                owner,
                claimed.lease_token,
                &BackupCompletion {
                    end_time: t + Duration::seconds(30),
                    expire_time: ddsvault_catalog::permanent_expiry(),
                    size: 1_048_576,
                    db_names: "app,sales".into(),
                    repo_prefix: format!("backups/{instance}/{}", backup.id),
                    details: serde_json::json!({"format": "seeded"}),
                },
            )
            .await?;
        if (i + 1) % 10_000 == 0 {
            eprintln!("seeded {} backups", i + 1);
        }
    }
    Ok(())
}
