//! Integration tests against a real FerretDB v1.24 (SQLite) and real `mongodump`/`mongorestore`
//! (100.18.0, and 100.11.0 for restores into FerretDB). Binaries come from `scripts/setup-stack.sh`
//! (`.stack/bin`, `.stack/mongo-tools-100.11.0`); without one a test prints `SKIPPED: <reason>` and
//! returns, or fails under `CI=true`.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bson::{doc, Bson, Document, RawDocumentBuf};
use common::{
    current_mongorestore_reads_every_namespace, require_binary, require_mongorestore_for_ferretdb,
    FerretDb,
};
use ddsvault_mongo::archive::{ArchiveEvent, ArchiveReader, Compression};
use ddsvault_mongo::logical::{logical_dump, DumpOptions, DumpProgress, DumpSummary};
use ddsvault_mongo::topology::{connect, discover, list_user_databases, TopologyKind};
use ddsvault_mongo::MongoError;
use futures::TryStreamExt;
use mongodb::options::{CreateCollectionOptions, IndexOptions};
use mongodb::{Client, IndexModel};
use sha2::Digest;
use tokio_util::sync::CancellationToken;

type NsDocs = BTreeMap<String, Vec<Vec<u8>>>;

/// Inserts the fixture: three databases, varied BSON types, an empty collection,
/// a capped collection and a unique index. Returns the document count.
async fn seed(client: &Client) -> u64 {
    let shop = client.database("shop");
    let users = shop.collection::<Document>("users");
    let base = bson::DateTime::from_millis(1_700_000_000_000);
    let docs: Vec<Document> = (0..300)
        .map(|i| {
            doc! {
                "_id": bson::oid::ObjectId::new(),
                "name": format!("Zoë ñ 名前 {i}"),
                "email": format!("user{i}@example.com"),
                "age": 20 + (i % 50),
                "score": f64::from(i) * 1.5,
                "balance": 1_i64 << 40 | i64::from(i),
                "active": i % 2 == 0,
                "created": bson::DateTime::from_millis(base.timestamp_millis() + i64::from(i) * 1000),
                "tags": ["a", "b", format!("t{}", i % 7)],
                "address": { "city": "Zürich", "zip": format!("{:04}", i), "geo": { "lat": 47.37, "lon": 8.54 } },
                "nothing": Bson::Null,
            }
        })
        .collect();
    users.insert_many(docs).await.expect("insert users");
    users
        .create_index(
            IndexModel::builder()
                .keys(doc! { "email": 1 })
                .options(IndexOptions::builder().unique(true).build())
                .build(),
        )
        .await
        .expect("create unique index");

    let orders = shop.collection::<Document>("orders");
    let docs: Vec<Document> = (0..5000)
        .map(|i: i32| {
            doc! {
                "_id": i,
                "payload": "x".repeat(usize::try_from(i % 300).unwrap()),
                "bin": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![(i % 256) as u8; 16] },
                "uuid": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: (0..16).map(|b| (b * i) as u8).collect() },
                "re": bson::Regex { pattern: "^ab+c$".into(), options: "i".into() },
                "ts": bson::Timestamp { time: 1_700_000_000, increment: i as u32 },
                "lines": [ { "sku": "A1", "qty": 2 }, { "sku": "B2", "qty": i } ],
                "neg": -f64::from(i) / 3.0,
            }
        })
        .collect();
    orders.insert_many(docs).await.expect("insert orders");
    shop.create_collection("empty").await.expect("create empty");

    let analytics = client.database("analytics");
    let docs: Vec<Document> = (0..2000)
        .map(|i: i64| doc! { "_id": format!("ev-{i:06}"), "n": i, "kind": if i % 3 == 0 { "click" } else { "view" } })
        .collect();
    analytics
        .collection::<Document>("events")
        .insert_many(docs)
        .await
        .expect("insert events");
    analytics
        .create_collection("capped_log")
        .with_options(
            CreateCollectionOptions::builder()
                .capped(true)
                .size(1024 * 1024)
                .build(),
        )
        .await
        .expect("create capped");
    analytics
        .collection::<Document>("capped_log")
        .insert_many((0..10).map(|i| doc! { "line": i }))
        .await
        .expect("insert capped");

    client
        .database("zeta")
        .collection::<Document>("c")
        .insert_one(doc! { "_id": "only", "v": { "deep": { "deeper": [1, 2, 3] } } })
        .await
        .expect("insert zeta");
    300 + 5000 + 2000 + 10 + 1
}

/// Every user collection's documents as raw bytes, from `find`.
async fn snapshot(client: &Client) -> NsDocs {
    let mut out = NsDocs::new();
    for db in list_user_databases(client).await.expect("list dbs") {
        let d = client.database(&db);
        for coll in d.list_collection_names().await.expect("list collections") {
            if coll.starts_with("system.") {
                continue;
            }
            let docs: Vec<RawDocumentBuf> = d
                .collection::<RawDocumentBuf>(&coll)
                .find(doc! {})
                // FerretDB does not cap a reply at 16 MiB: 50 documents of the largest test collection fit in the
                // driver's 48 MB message limit, 1000 would not.
                .batch_size(50)
                .await
                .expect("find")
                .try_collect()
                .await
                .expect("read");
            let mut docs: Vec<Vec<u8>> = docs.into_iter().map(|d| d.into_bytes()).collect();
            docs.sort();
            out.insert(format!("{db}.{coll}"), docs);
        }
    }
    out
}

struct ReadBack {
    namespaces: NsDocs,
    metadata: BTreeMap<String, (String, String)>,
    header_server_version: String,
    crcs: BTreeMap<String, u64>,
}

/// Reads an archive with the validating reader; documents per namespace (sorted).
fn read_archive(path: &Path, compression: Compression) -> ReadBack {
    let f = std::fs::File::open(path).expect("open archive");
    let mut r = ArchiveReader::new(compression.wrap_reader(f).expect("decompress"));
    let Some(ArchiveEvent::Prelude { header, namespaces }) = r.next_event().expect("prelude")
    else {
        panic!("archive does not start with a prelude");
    };
    let names: Vec<String> = namespaces.iter().map(|n| n.namespace()).collect();
    let mut docs: NsDocs = names.iter().map(|n| (n.clone(), Vec::new())).collect();
    let mut ended = vec![false; names.len()];
    while let Some(ev) = r.next_event().expect("valid archive") {
        match ev {
            ArchiveEvent::Document { ns_index, raw } => {
                assert!(!ended[ns_index]);
                docs.get_mut(&names[ns_index]).expect("ns").push(raw);
            }
            ArchiveEvent::NamespaceEnd { ns_index } => ended[ns_index] = true,
            ArchiveEvent::Prelude { .. } => panic!("second prelude"),
        }
    }
    assert!(ended.iter().all(|e| *e), "every namespace ends");
    for v in docs.values_mut() {
        v.sort();
    }
    let crcs = (0..names.len())
        .map(|i| (names[i].clone(), r.namespace_stats(i).expect("stats").crc))
        .collect();
    ReadBack {
        namespaces: docs,
        metadata: namespaces
            .into_iter()
            .map(|n| {
                (
                    n.namespace(),
                    (n.metadata.clone(), n.collection_type.clone()),
                )
            })
            .collect(),
        header_server_version: header.server_version,
        crcs,
    }
}

async fn dump_to_file(
    client: &Client,
    path: &Path,
    opts: &DumpOptions,
) -> (DumpSummary, Vec<DumpProgress>) {
    let file = std::fs::File::create(path).expect("create archive file");
    let seen = Mutex::new(Vec::new());
    let progress = |p: DumpProgress| seen.lock().expect("lock").push(p);
    let summary = logical_dump(
        client,
        &[],
        opts,
        Box::new(file),
        &progress,
        &CancellationToken::new(),
    )
    .await
    .expect("logical dump");
    (summary, seen.into_inner().expect("lock"))
}

fn run_tool(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run tool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed: {text}");
    text
}

fn decompress_to(src: &Path, dst: &Path, c: Compression) {
    let mut r = c
        .wrap_reader(std::fs::File::open(src).expect("open"))
        .expect("wrap");
    let mut w = std::fs::File::create(dst).expect("create");
    std::io::copy(&mut r, &mut w).expect("decompress");
    w.flush().expect("flush");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_dump_round_trips_through_reader_and_mongorestore() {
    let Some(ferretdb) = require_binary("ferretdb") else {
        return;
    };
    let src = FerretDb::start(&ferretdb, true);
    let client = connect(&src.uri()).await.expect("connect");
    let total = seed(&client).await;
    let expected = snapshot(&client).await;
    assert_eq!(
        expected.len(),
        6,
        "{:?}",
        expected.keys().collect::<Vec<_>>()
    );
    let server_version = discover(&client).await.expect("discover").server_version;
    // Set DDSVAULT_KEEP_ARCHIVES=<dir> to keep the archives for inspection with other tools.
    let keep = std::env::var_os("DDSVAULT_KEEP_ARCHIVES").map(std::path::PathBuf::from);
    // The current mongorestore reads every archive; the FerretDB-compatible one restores it.
    let Some(mongorestore) = require_binary("mongorestore") else {
        return;
    };
    let Some(mongorestore_ferretdb) = require_mongorestore_for_ferretdb() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");

    for compression in [
        Compression::None,
        Compression::Gzip,
        Compression::Zstd { level: 3 },
    ] {
        let opts = DumpOptions {
            compression,
            parallel_collections: 3,
            segment_bytes: 64 * 1024,
            batch_size: 500,
            channel_segments: 4,
        };
        let path = tmp
            .path()
            .join(format!("dump.archive{}", compression.extension()));
        let (summary, progress) = dump_to_file(&client, &path, &opts).await;

        // Summary agrees with the server and with the file.
        assert_eq!(summary.databases, ["analytics", "shop", "zeta"]);
        assert_eq!(summary.documents, total);
        let bytes = std::fs::read(&path).expect("read archive");
        if let Some(dir) = &keep {
            std::fs::copy(&path, dir.join(path.file_name().expect("name"))).expect("keep archive");
        }
        assert_eq!(summary.archive_bytes, bytes.len() as u64);
        assert_eq!(
            summary.archive_sha256,
            hex::encode(sha2::Sha256::digest(&bytes))
        );
        assert_eq!(
            summary.raw_bytes,
            expected
                .values()
                .flatten()
                .map(|d| d.len() as u64)
                .sum::<u64>()
        );
        let last = progress.last().expect("progress reported");
        assert_eq!(last.docs_done, total);
        assert_eq!(last.docs_total_estimate, total);
        assert!(
            progress.len() > 10,
            "progress per segment, got {}",
            progress.len()
        );
        assert!(progress
            .windows(2)
            .all(|w| w[0].docs_done <= w[1].docs_done));

        // (a) The validating reader returns exactly the documents `find` returns.
        let back = read_archive(&path, compression);
        assert_eq!(back.namespaces, expected, "{compression:?}");
        assert_eq!(back.header_server_version, server_version);
        for ns in &summary.namespaces {
            let key = format!("{}.{}", ns.db, ns.collection);
            assert_eq!(back.crcs[&key], ns.crc, "{key}");
            assert_eq!(ns.documents, expected[&key].len() as u64, "{key}");
        }

        // Metadata is mongodump's metadata.json.
        let (users_meta, ty) = &back.metadata["shop.users"];
        assert_eq!(ty, "collection");
        let v: serde_json::Value = serde_json::from_str(users_meta).expect("metadata json");
        let keys: Vec<&String> = v.as_object().expect("object").keys().collect();
        assert_eq!(
            keys,
            ["indexes", "uuid", "collectionName", "type"],
            "{users_meta}"
        );
        assert_eq!(v["collectionName"], "users");
        assert_eq!(v["uuid"].as_str().expect("uuid").len(), 32);
        let unique = v["indexes"]
            .as_array()
            .expect("indexes")
            .iter()
            .find(|i| i["name"] == "email_1")
            .expect("email_1 index in metadata");
        assert_eq!(unique["unique"], true, "{users_meta}");
        assert_eq!(unique["key"]["email"]["$numberInt"], "1");
        let capped: serde_json::Value =
            serde_json::from_str(&back.metadata["analytics.capped_log"].0).expect("json");
        assert_eq!(capped["options"]["capped"], true, "{capped}");
        assert!(back.namespaces["shop.empty"].is_empty());

        // (b) Real mongorestore accepts it and restores the same documents: the current release
        // reads every namespace (it cannot insert into FerretDB 1.24), the FerretDB-compatible
        // release restores them (checking every namespace's CRC-64 on the way).
        let dst = FerretDb::start(&ferretdb, false);
        let dst_uri = format!("{}?directConnection=true", dst.uri());
        let (archive, gzip) = match compression {
            Compression::None => (path.clone(), false),
            Compression::Gzip => (path.clone(), true),
            Compression::Zstd { .. } => {
                let plain = tmp.path().join("unzstd.archive");
                decompress_to(&path, &plain, compression);
                (plain, false)
            }
        };
        let namespaces: Vec<String> = expected.keys().cloned().collect();
        current_mongorestore_reads_every_namespace(
            &mongorestore,
            &dst_uri,
            &archive,
            gzip,
            &namespaces,
        );
        let mut cmd = Command::new(&mongorestore_ferretdb);
        cmd.arg(format!("--uri={dst_uri}"))
            .arg("--noIndexRestore")
            .arg("--nsExclude=admin.*")
            .arg(format!("--archive={}", archive.display()));
        if gzip {
            cmd.arg("--gzip");
        }
        let log = run_tool(&mut cmd);
        let restored_client = connect(&dst.uri()).await.expect("connect dst");
        let restored = snapshot(&restored_client).await;
        assert_eq!(restored, expected, "mongorestore of {compression:?}: {log}");
        assert!(
            log.contains(&format!("{total} document(s) restored successfully")),
            "{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_accepts_real_mongodump_archives() {
    let Some(ferretdb) = require_binary("ferretdb") else {
        return;
    };
    let Some(mongodump) = require_binary("mongodump") else {
        return;
    };
    let src = FerretDb::start(&ferretdb, true);
    let client = connect(&src.uri()).await.expect("connect");
    seed(&client).await;
    let expected = snapshot(&client).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    for gzip in [false, true] {
        let path = tmp.path().join(format!("mongodump-{gzip}.archive"));
        let mut cmd = Command::new(&mongodump);
        cmd.arg(format!("--uri={}?directConnection=true", src.uri()))
            .arg(format!("--archive={}", path.display()));
        if gzip {
            cmd.arg("--gzip");
        }
        run_tool(&mut cmd);
        let c = if gzip {
            Compression::Gzip
        } else {
            Compression::None
        };
        // Validates mongodump's CRCs with our CRC-64/XZ: proves the two agree.
        let back = read_archive(&path, c);
        assert_eq!(back.namespaces, expected);
        // Our metadata text matches mongodump's (modulo key order inside `options`).
        let ours_path = tmp.path().join("ours.archive");
        let (_, _) = dump_to_file(&client, &ours_path, &DumpOptions::default()).await;
        let ours = read_archive(&ours_path, Compression::None);
        for (ns, (meta, ty)) in &back.metadata {
            let (our_meta, our_ty) = &ours.metadata[ns];
            assert_eq!(ty, our_ty, "{ns}");
            let a: serde_json::Value = serde_json::from_str(meta).expect("their json");
            let mut b: serde_json::Value = serde_json::from_str(our_meta).expect("our json");
            // Older mongo-tools releases predate the `type` key (written by current ones, as we do); their
            // mongorestore ignores it. Compare the rest against such a mongodump.
            if a.get("type").is_none() {
                if let Some(o) = b.as_object_mut() {
                    o.remove("type");
                }
            }
            assert_eq!(a, b, "{ns}: mongodump {meta} vs ours {our_meta}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_reports_replica_set_and_standalone() {
    let Some(ferretdb) = require_binary("ferretdb") else {
        return;
    };
    let rs = FerretDb::start(&ferretdb, true);
    let client = connect(&rs.uri()).await.expect("connect rs");
    let t = discover(&client).await.expect("discover rs");
    assert_eq!(t.kind, TopologyKind::ReplicaSet, "{t:?}");
    assert_eq!(t.set_name.as_deref(), Some("rs0"));
    assert!(t.is_ferretdb, "{t:?}");
    assert_eq!(t.ferretdb_version.as_deref(), Some("v1.24.0"));
    assert_eq!(t.engine_version.matches('.').count(), 1, "{t:?}");
    assert!(t.server_version.starts_with(&t.engine_version));

    let sa = FerretDb::start(&ferretdb, false);
    let client = connect(&sa.uri()).await.expect("connect standalone");
    let t = discover(&client).await.expect("discover standalone");
    assert_eq!(t.kind, TopologyKind::Standalone, "{t:?}");
    assert_eq!(t.set_name, None);
    assert!(t.is_ferretdb);

    // list_user_databases hides admin/local/config and sorts.
    for db in ["b", "a"] {
        client
            .database(db)
            .collection::<Document>("x")
            .insert_one(doc! { "k": 1 })
            .await
            .expect("insert");
    }
    assert_eq!(
        list_user_databases(&client).await.expect("list"),
        ["a", "b"]
    );
}

#[tokio::test]
async fn connect_to_closed_port_fails_fast() {
    // Bound but never listening: connections are refused, and no FerretDB started by a test running in parallel
    // can take the port meanwhile (a port that was merely free once could be).
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    let port = socket.local_addr().expect("local address").port();
    let start = Instant::now();
    let err = connect(&format!("mongodb://127.0.0.1:{port}/"))
        .await
        .expect_err("nothing listens there");
    let took = start.elapsed();
    assert!(matches!(err, MongoError::Unreachable(_)), "{err:?}");
    assert!(!err.is_permanent());
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(err.to_string().contains(&port.to_string()), "{err}");
    drop(socket);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_dump_promptly() {
    let Some(ferretdb) = require_binary("ferretdb") else {
        return;
    };
    let src = FerretDb::start(&ferretdb, true);
    let client = connect(&src.uri()).await.expect("connect");
    seed(&client).await;
    let opts = DumpOptions {
        segment_bytes: 4096,
        batch_size: 50,
        ..DumpOptions::default()
    };

    // Already cancelled: nothing happens.
    let token = CancellationToken::new();
    token.cancel();
    let err = logical_dump(
        &client,
        &[],
        &opts,
        Box::new(std::io::sink()),
        &|_| {},
        &token,
    )
    .await
    .expect_err("cancelled");
    assert!(matches!(err, MongoError::Cancelled), "{err:?}");

    // Cancelled from the progress callback after the first segments.
    let token = CancellationToken::new();
    let calls = AtomicU64::new(0);
    let progress = |p: DumpProgress| {
        if p.docs_done > 0 && calls.fetch_add(1, Ordering::SeqCst) == 2 {
            token.cancel();
        }
    };
    let start = Instant::now();
    let err = logical_dump(
        &client,
        &[],
        &opts,
        Box::new(std::io::sink()),
        &progress,
        &token,
    )
    .await
    .expect_err("cancelled");
    assert!(matches!(err, MongoError::Cancelled), "{err:?}");
    assert!(err.is_permanent());
    assert!(start.elapsed() < Duration::from_secs(10));
}

/// A sink that fails after `limit` bytes, like a full disk.
struct FailingWriter {
    written: usize,
    limit: usize,
}

impl Write for FailingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written + buf.len() > self.limit {
            return Err(std::io::Error::other("disk full"));
        }
        self.written += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_errors_surface_and_unknown_databases_are_empty() {
    let Some(ferretdb) = require_binary("ferretdb") else {
        return;
    };
    let src = FerretDb::start(&ferretdb, true);
    let client = connect(&src.uri()).await.expect("connect");
    seed(&client).await;
    let out = Box::new(FailingWriter {
        written: 0,
        limit: 100_000,
    });
    let err = logical_dump(
        &client,
        &["shop".to_string()],
        &DumpOptions::default(),
        out,
        &|_| {},
        &CancellationToken::new(),
    )
    .await
    .expect_err("output fails");
    assert!(err.to_string().contains("disk full"), "{err}");
    assert!(!err.is_permanent(), "{err:?}");

    // Only the named database is dumped.
    let mut buf = Vec::new();
    let sink = SharedVec::default();
    let summary = logical_dump(
        &client,
        &["zeta".to_string()],
        &DumpOptions::default(),
        Box::new(sink.clone()),
        &|_| {},
        &CancellationToken::new(),
    )
    .await
    .expect("dump zeta");
    assert_eq!(summary.databases, ["zeta"]);
    assert_eq!(summary.documents, 1);
    sink.0
        .lock()
        .expect("lock")
        .as_slice()
        .read_to_end(&mut buf)
        .expect("read");
    assert_eq!(buf.len() as u64, summary.archive_bytes);

    let err = logical_dump(
        &client,
        &["bad.name".to_string()],
        &DumpOptions::default(),
        Box::new(std::io::sink()),
        &|_| {},
        &CancellationToken::new(),
    )
    .await
    .expect_err("invalid name");
    assert!(matches!(err, MongoError::InvalidArgument(_)), "{err:?}");
}

#[derive(Clone, Default)]
struct SharedVec(std::sync::Arc<Mutex<Vec<u8>>>);

impl Write for SharedVec {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Throughput comparison with `mongodump --archive` (run explicitly:
/// `cargo test -p ddsvault-mongo --test ferretdb -- --ignored --nocapture bench`).
/// `DDSVAULT_BENCH_DOCS` sets the document count (default 200 000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run explicitly"]
async fn bench_logical_dump_vs_mongodump() {
    let Some(ferretdb) = require_binary("ferretdb") else {
        return;
    };
    let n: u32 = std::env::var("DDSVAULT_BENCH_DOCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let src = FerretDb::start(&ferretdb, true);
    let client = connect(&src.uri()).await.expect("connect");
    let t = Instant::now();
    let coll = client.database("bench").collection::<Document>("small");
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let docs = chunk.iter().map(|&i| {
            doc! { "_id": i64::from(i), "name": format!("user-{i}"), "n": i, "ok": i % 2 == 0, "score": f64::from(i) / 7.0 }
        });
        coll.insert_many(docs).await.expect("insert");
    }
    eprintln!("inserted {n} docs in {:.1?}", t.elapsed());
    let tmp = tempfile::tempdir().expect("tempdir");

    let t = Instant::now();
    let estimate = coll.estimated_document_count().await.expect("count");
    eprintln!("estimatedDocumentCount = {estimate} in {:.2?}", t.elapsed());

    let t = Instant::now();
    let stats = client
        .database("bench")
        .run_command(doc! { "collStats": "small" })
        .await
        .expect("collStats");
    eprintln!(
        "collStats count = {:?} in {:.2?}",
        stats.get("count"),
        t.elapsed()
    );

    // Baseline: draining a raw cursor without writing anything.
    for batch in [1000u32, 10_000] {
        let t = Instant::now();
        let mut cursor = coll
            .clone_with_type::<RawDocumentBuf>()
            .find(doc! {})
            .batch_size(batch)
            .await
            .expect("find");
        let mut count = 0u64;
        while cursor.advance().await.expect("advance") {
            count += 1;
        }
        assert_eq!(count, u64::from(n));
        let secs = t.elapsed().as_secs_f64();
        eprintln!(
            "bare find drain, batchSize {batch}: {secs:.2} s, {:.0} docs/s",
            f64::from(n) / secs
        );
    }

    for compression in [
        Compression::None,
        Compression::Zstd { level: 3 },
        Compression::Gzip,
    ] {
        let path = tmp.path().join("ours.archive");
        let opts = DumpOptions {
            compression,
            ..DumpOptions::default()
        };
        let t = Instant::now();
        let (summary, _) = dump_to_file(&client, &path, &opts).await;
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(summary.documents, u64::from(n));
        eprintln!(
            "ddsvault logical_dump {compression:?}: {:.2} s, {:.0} docs/s, {:.1} MB raw -> {:.1} MB archive",
            secs,
            f64::from(n) / secs,
            summary.raw_bytes as f64 / 1e6,
            summary.archive_bytes as f64 / 1e6
        );
    }
    if let Some(mongodump) = require_binary("mongodump") {
        for gzip in [false, true] {
            let path = tmp.path().join("mongodump.archive");
            let mut cmd = Command::new(&mongodump);
            cmd.arg(format!("--uri={}?directConnection=true", src.uri()))
                .arg("--quiet")
                .arg(format!("--archive={}", path.display()));
            if gzip {
                cmd.arg("--gzip");
            }
            let t = Instant::now();
            run_tool(&mut cmd);
            let secs = t.elapsed().as_secs_f64();
            let size = std::fs::metadata(&path).expect("stat").len();
            eprintln!(
                "mongodump --archive{}: {:.2} s, {:.0} docs/s, {:.1} MB archive",
                if gzip { " --gzip" } else { "" },
                secs,
                f64::from(n) / secs,
                size as f64 / 1e6
            );
        }
    }
}

/// A FerretDB database with more than `COUNT_MAX_COLLECTIONS` collections is dumped without asking sizes: each
/// collection is read from a first sample (whole when small, sized from it when larger, through the size fallback
/// when its first reply would exceed the message limit) and every document still arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_collections_are_dumped_from_samples() {
    use ddsvault_mongo::logical::COUNT_MAX_COLLECTIONS;
    let Some(ferretdb) = require_binary("ferretdb") else {
        return;
    };
    let src = FerretDb::start(&ferretdb, false);
    let client = connect(&src.uri()).await.expect("connect");
    let db = client.database("tenants");
    // Around the sample size (101): under, exactly, just over, and several replies.
    let counts = [0usize, 1, 100, 101, 102, 350];
    let n = COUNT_MAX_COLLECTIONS + 6;
    for c in 0..n {
        let name = format!("t{c:03}");
        db.create_collection(&name).await.expect("create");
        let count = counts[c % counts.len()];
        if count > 0 {
            let docs: Vec<Document> = (0..count)
                .map(|i| doc! { "_id": i as i64, "c": c as i64, "pad": "x".repeat(40 + i % 200) })
                .collect();
            db.collection::<Document>(&name)
                .insert_many(docs)
                .await
                .expect("insert");
        }
    }
    // 110 documents of ~600 KB: the 101-document sample would be a ~60 MB reply, over the 48 MB message limit.
    let big = db.collection::<Document>("zz_big");
    let blob = "b".repeat(600 * 1024);
    for chunk in (0..110i64).collect::<Vec<_>>().chunks(10) {
        let docs: Vec<Document> = chunk
            .iter()
            .map(|i| doc! { "_id": *i, "blob": blob.clone() })
            .collect();
        big.insert_many(docs).await.expect("insert big");
    }
    let expected = snapshot(&client).await;

    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("many.archive");
    let opts = DumpOptions {
        compression: Compression::Zstd { level: 1 },
        ..DumpOptions::default()
    };
    let (summary, progress) = dump_to_file(&client, &path, &opts).await;
    let back = read_archive(&path, opts.compression);
    assert_eq!(back.namespaces, expected, "every document exactly once");
    assert_eq!(summary.namespaces.len(), n + 1);
    let last = progress.last().expect("progress");
    assert_eq!(last.docs_total_estimate, 0, "sizes were not asked");
    assert_eq!(
        (last.namespaces_done, last.namespaces_total),
        (n as u64 + 1, n as u64 + 1)
    );
    assert!(
        progress
            .windows(2)
            .all(|w| w[0].namespaces_done <= w[1].namespaces_done),
        "collection progress never goes back"
    );
}
