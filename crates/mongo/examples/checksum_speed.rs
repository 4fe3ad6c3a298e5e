//! What the restore-drill checksum costs a dump: digests documents shaped like `bench/run.py`'s medium dataset
//! (~221 MB of 144 B–16 KiB documents) and small dataset (50,000 documents of ~200 B) with each algorithm of
//! `ddsvault_mongo::checksum`, and prints the CPU seconds of this thread and the throughput. Numbers taken on a
//! loaded machine: compare the algorithms within one run.
//!
//! `cargo run --release -p ddsvault-mongo --example checksum_speed`

use std::time::Instant;

use ddsvault_mongo::checksum::{ChecksumAlgorithm, DocSetChecksum};

/// CPU seconds of this process so far (user + system, from /proc; 0 where there is none).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn main() {
    let sizes = [64usize, 256, 1024, 4096, 16384];
    let mut medium = Vec::new();
    let mut total = 0;
    while total < 211 * 1024 * 1024 {
        let len = sizes[(medium.len() * 7919) % sizes.len()] + 80;
        medium.push(vec![(medium.len() % 251) as u8; len]);
        total += len;
    }
    let small: Vec<Vec<u8>> = (0..50_000).map(|i| vec![(i % 251) as u8; 200]).collect();
    for (name, docs) in [("medium", &medium), ("small", &small)] {
        let bytes: usize = docs.iter().map(Vec::len).sum();
        for algorithm in [
            ChecksumAlgorithm::Sha256Sum128,
            ChecksumAlgorithm::Xxh3Sum128,
        ] {
            let (cpu0, t0) = (cpu_seconds(), Instant::now());
            let mut sum = DocSetChecksum::with_algorithm(algorithm);
            for d in docs.iter() {
                sum.add(d);
            }
            let (cpu, wall) = (cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());
            println!(
                "{name:6} {:16} {} documents, {:.0} MB: cpu {cpu:.2} s, wall {wall:.3} s, {:.0} MB/s wall ({})",
                algorithm.name(),
                docs.len(),
                bytes as f64 / 1e6,
                bytes as f64 / wall / 1e6,
                sum.to_hex()
            );
        }
    }
}
