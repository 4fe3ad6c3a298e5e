//! Reads a consistent image of a live SQLite database and discards it, to time the imaging step alone against
//! `cat` of the same file (bench/physical.py times whole backups).
//!
//!   cargo run --release -p ddsvault-mongo --example image_speed -- /path/to/db.sqlite

use std::io::Read;
use std::time::Instant;

use ddsvault_mongo::physical::sqlite::ImageStream;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: image_speed <db.sqlite>")?;
    for _ in 0..3 {
        let t0 = Instant::now();
        let mut raw = std::fs::File::open(&path)?;
        let n = std::io::copy(&mut raw, &mut std::io::sink())?;
        let read = t0.elapsed();
        let t0 = Instant::now();
        let mut image = ImageStream::open(std::path::Path::new(&path))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut m = 0u64;
        loop {
            let k = image.read(&mut buf)?;
            if k == 0 {
                break;
            }
            m += k as u64;
        }
        let imaged = t0.elapsed();
        println!(
            "file {:.1} MiB read in {:.3}s; image {:.1} MiB in {:.3}s ({:.2}x the read rate)",
            n as f64 / 1048576.0,
            read.as_secs_f64(),
            m as f64 / 1048576.0,
            imaged.as_secs_f64(),
            read.as_secs_f64() / imaged.as_secs_f64()
        );
    }
    Ok(())
}
