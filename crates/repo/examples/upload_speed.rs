//! Streams N MiB through `Repository::upload` into a local repository and compares with writing + fsyncing the
//! same bytes directly, to see what the upload path costs (bench/physical.py times whole backups).
//!
//!   cargo run --release -p ddsvault-repo --example upload_speed -- /tmp/repo 100

use std::io::Write;
use std::time::Instant;

use ddsvault_repo::{RepoPath, Repository, UploadOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().ok_or("usage: upload_speed <dir> <MiB>")?);
    let mib: usize = args.next().unwrap_or_else(|| "100".into()).parse()?;
    std::fs::create_dir_all(&dir)?;
    let data: Vec<u8> = (0..mib << 20).map(|i| (i * 7 % 251) as u8).collect();
    let repo = Repository::local(&dir)?;
    for round in 0..3 {
        let t0 = Instant::now();
        let raw = dir.join(format!("raw-{round}"));
        let mut f = std::fs::File::create(&raw)?;
        f.write_all(&data)?;
        f.sync_all()?;
        let direct = t0.elapsed();
        let path = RepoPath::new(format!("bench/up-{round}"))?;
        let t0 = Instant::now();
        let opts = match round {
            0 => UploadOptions::default(),
            1 => UploadOptions::default().with_max_in_flight_parts(4),
            _ => UploadOptions::default()
                .with_max_in_flight_parts(4)
                .with_part_size(32 << 20)
                .with_chunk_size(4 << 20),
        };
        let (mut writer, upload) = repo.upload(&path, opts);
        let bytes = data.clone();
        let producer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            for c in bytes.chunks(64 << 10) {
                writer.write_all(c)?;
            }
            writer.flush()?;
            writer.close()
        });
        let (p, u) = tokio::join!(producer, upload.finish());
        p??;
        u?;
        let up = t0.elapsed();
        println!(
            "{mib} MiB (options {round}): write+fsync {:.3}s, Repository::upload {:.3}s",
            direct.as_secs_f64(),
            up.as_secs_f64()
        );
    }
    Ok(())
}
