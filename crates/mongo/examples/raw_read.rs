//! The limit a logical backup can reach: reads every document of every user collection as raw BSON and
//! discards it, with the same driver and parallelism the dump uses. Used by `bench/run.py`.
//! Batches are 1,000 documents: the dump's default maximum. The dump asks fewer when a collection's average
//! document is over 4 KiB (it aims at 4 MiB replies); this reader, knowing the bench data, does not need to ask.
//! Prints two times: `seconds` includes finding what to read (listDatabases, listCollections), which any
//! reader, a backup included, has to do; `find_seconds` is the reads alone.
//!
//! `cargo run --release -p ddsvault-mongo --example raw_read -- mongodb://127.0.0.1:27017 [parallel]`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::TryStreamExt;
use mongodb::bson::{doc, RawDocumentBuf};

mod common;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let uri = args.next().ok_or("usage: raw_read <uri> [parallel]")?;
    let parallel: usize = args.next().map(|p| p.parse()).transpose()?.unwrap_or(4);
    let client = ddsvault_mongo::topology::connect(&uri).await?;
    let listing_started = Instant::now();
    let namespaces = common::user_namespaces(&client).await?;
    let started = Instant::now();
    let docs = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut tasks = Vec::new();
    for (db, coll) in namespaces {
        let client = client.clone();
        let (docs, bytes, sem) = (docs.clone(), bytes.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let c = client.database(&db).collection::<RawDocumentBuf>(&coll);
            let mut cursor = c.find(doc! {}).batch_size(1000).await?;
            while let Some(d) = cursor.try_next().await? {
                docs.fetch_add(1, Ordering::Relaxed);
                bytes.fetch_add(d.as_bytes().len() as u64, Ordering::Relaxed);
            }
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    for t in tasks {
        t.await?.map_err(|e| e.to_string())?;
    }
    let find_secs = started.elapsed().as_secs_f64();
    let secs = listing_started.elapsed().as_secs_f64();
    println!(
        "{{\"seconds\": {secs:.3}, \"find_seconds\": {find_secs:.3}, \"documents\": {}, \"bytes\": {}}}",
        docs.load(Ordering::Relaxed),
        bytes.load(Ordering::Relaxed)
    );
    Ok(())
}
