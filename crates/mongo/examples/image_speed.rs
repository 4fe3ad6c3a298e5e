//! Reads a consistent image of a live SQLite database and discards it, to time the imaging step alone against
//! `cat` of the same file (bench/physical.py times whole backups), and times its parts: every page read through
//! `sqlite_dbpage` and `PRAGMA quick_check`, each with the default page cache (one pread per page) and with
//! memory-mapped reads (what [`ImageStream`] uses), and SHA-256 of the file.
//!
//!   cargo run --release -p ddsvault-mongo --example image_speed -- /path/to/db.sqlite

use std::io::Read;
use std::time::Instant;

use ddsvault_mongo::physical::sqlite::ImageStream;
use rusqlite::{Connection, OpenFlags};
use sha2::Digest;

/// Seconds to run `f` on a fresh read-only connection with `mmap_size` set.
fn timed(
    path: &str,
    mmap: i64,
    f: impl Fn(&Connection),
) -> Result<f64, Box<dyn std::error::Error>> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.execute_batch(&format!("PRAGMA mmap_size={mmap}"))?;
    let t0 = Instant::now();
    f(&conn);
    Ok(t0.elapsed().as_secs_f64())
}

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
        let pages = |c: &Connection| {
            let mut stmt = c
                .prepare("SELECT data FROM sqlite_dbpage")
                .expect("prepare");
            let mut rows = stmt.query([]).expect("query");
            let mut bytes = 0usize;
            while let Some(r) = rows.next().expect("row") {
                bytes += r.get_ref(0).expect("data").as_blob().expect("blob").len();
            }
            assert!(bytes > 0);
        };
        let check = |c: &Connection| {
            let ok: String = c
                .query_row("PRAGMA quick_check", [], |r| r.get(0))
                .expect("quick_check");
            assert_eq!(ok, "ok");
        };
        let t0 = Instant::now();
        let mut sha = sha2::Sha256::new();
        sha.update(std::fs::read(&path)?);
        let _ = sha.finalize();
        let sha = t0.elapsed().as_secs_f64();
        println!(
            "  pages via sqlite_dbpage {:.3}s (mmap {:.3}s); quick_check {:.3}s (mmap {:.3}s); read + SHA-256 {:.3}s",
            timed(&path, 0, pages)?,
            timed(&path, 1 << 40, pages)?,
            timed(&path, 0, check)?,
            timed(&path, 1 << 40, check)?,
            sha
        );
    }
    Ok(())
}
