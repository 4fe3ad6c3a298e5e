//! The limit a logical restore can reach: the server's insert rate. Reads every document of every user
//! collection of SOURCE into memory first (untimed), drops those databases on TARGET, then times inserting
//! the documents into TARGET with the same driver, batch limits and parallelism the restore uses (taken from
//! `RestoreOptions::default()`, ordered inserts), with nothing to decompress, parse or verify. Used by
//! `bench/run.py`.
//!
//! `cargo run --release -p ddsvault-mongo --example raw_write -- SOURCE_URI TARGET_URI [parallel [batch_docs
//! [batch_bytes]]]`: the optional arguments replace the restore's defaults, to see whether other settings would
//! make the server insert faster.

use std::sync::Arc;
use std::time::Instant;

use ddsvault_mongo::restore::RestoreOptions;
use futures::TryStreamExt;
use mongodb::bson::{doc, RawDocumentBuf};

mod common;

type Batches = Vec<Vec<RawDocumentBuf>>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: raw_write <source uri> <target uri> [parallel [batch_docs [batch_bytes]]]";
    let src_uri = args.next().ok_or(usage)?;
    let dst_uri = args.next().ok_or(usage)?;
    let defaults = RestoreOptions::default();
    let mut next_or = |default: usize| -> Result<usize, std::num::ParseIntError> {
        args.next().map_or(Ok(default), |a| a.parse())
    };
    let parallel = next_or(defaults.parallel_collections)?;
    let batch_docs = next_or(defaults.batch_docs)?;
    let batch_bytes = next_or(defaults.batch_bytes)?;
    let src = ddsvault_mongo::topology::connect(&src_uri).await?;
    let dst = ddsvault_mongo::topology::connect(&dst_uri).await?;

    let mut loaded: Vec<(String, String, Batches)> = Vec::new();
    let (mut docs, mut bytes) = (0u64, 0u64);
    let mut dbs = Vec::new();
    for (db, coll) in common::user_namespaces(&src).await? {
        let mut cursor = src
            .database(&db)
            .collection::<RawDocumentBuf>(&coll)
            .find(doc! {})
            .batch_size(1000)
            .await?;
        let (mut batches, mut cur, mut cur_bytes): (Batches, Vec<RawDocumentBuf>, usize) =
            (Vec::new(), Vec::new(), 0);
        while let Some(d) = cursor.try_next().await? {
            let len = d.as_bytes().len();
            // The restore's batch rule: a lone oversized document still forms a batch.
            if !cur.is_empty() && (cur.len() >= batch_docs || cur_bytes + len > batch_bytes) {
                batches.push(std::mem::take(&mut cur));
                cur_bytes = 0;
            }
            cur_bytes += len;
            docs += 1;
            bytes += len as u64;
            cur.push(d);
        }
        if !cur.is_empty() {
            batches.push(cur);
        }
        if !dbs.contains(&db) {
            dbs.push(db.clone());
        }
        loaded.push((db, coll, batches));
    }
    for db in &dbs {
        dst.database(db).drop().await?;
    }

    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut tasks = Vec::new();
    for (db, coll, batches) in loaded {
        let (dst, sem) = (dst.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let c = dst.database(&db).collection::<RawDocumentBuf>(&coll);
            // Like the restore, a permit per insert (not per collection) bounds the writes in flight.
            for batch in batches {
                let _permit = sem.acquire().await?;
                c.insert_many(batch).ordered(true).await?;
            }
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    for t in tasks {
        t.await?.map_err(|e| e.to_string())?;
    }
    let secs = started.elapsed().as_secs_f64();
    println!("{{\"seconds\": {secs:.3}, \"documents\": {docs}, \"bytes\": {bytes}}}");
    Ok(())
}
