//! Logical restore against a real FerretDB v1.24 (SQLite): dump with `logical_dump`,
//! restore with `logical_restore` into another instance, compare byte for byte.
//! Without the FerretDB binary (or mongodump) a test prints `SKIPPED: <reason>` and returns, or
//! fails under `CI=true`.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bson::{doc, Bson, Document, RawDocumentBuf};
use common::{require_binary, FerretDb};
use ddsvault_mongo::archive::{
    ArchiveHeader, ArchiveWriter, CollectionMetadata, Compression, Violation,
};
use ddsvault_mongo::logical::{logical_dump, metadata_json, DumpOptions};
use ddsvault_mongo::restore::{
    archive_databases, logical_restore, verify_archive, NsSelector, RestoreOptions,
    RestoreProgress, RestoreSummary,
};
use ddsvault_mongo::topology::{connect, list_user_databases};
use ddsvault_mongo::MongoError;
use futures::TryStreamExt;
use mongodb::options::{CreateCollectionOptions, IndexOptions};
use mongodb::{Client, IndexModel};
use tokio_util::sync::CancellationToken;

type Opener = Box<dyn Fn() -> std::io::Result<Box<dyn Read + Send>> + Send + Sync>;

/// Three databases: many small documents of varied types, six ~1 MB documents, an empty
/// collection with an index, a capped collection with `max`, unique and compound indexes.
/// Returns the document count.
async fn seed(client: &Client) -> u64 {
    let shop = client.database("shop");
    let users = shop.collection::<Document>("users");
    let docs: Vec<Document> = (0..3000)
        .map(|i: i32| {
            doc! {
                "_id": bson::oid::ObjectId::new(),
                "email": format!("user{i}@example.com"),
                "name": format!("Zoë ñ 名前 {i}"),
                "age": 18 + i % 60,
                "score": f64::from(i) * 1.25,
                "created": bson::DateTime::from_millis(1_700_000_000_000 + i64::from(i) * 1000),
                "tags": ["a", format!("t{}", i % 7)],
                "address": { "city": "Zürich", "zip": format!("{i:04}") },
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
        .expect("unique index");
    users
        .create_index(
            IndexModel::builder()
                .keys(doc! { "age": 1, "name": -1 })
                .build(),
        )
        .await
        .expect("compound index");

    let orders = shop.collection::<Document>("orders");
    let docs: Vec<Document> = (0..6000)
        .map(|i: i32| {
            doc! {
                "_id": i,
                "payload": "x".repeat(usize::try_from(i % 300).unwrap_or(0)),
                "bin": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![(i % 256) as u8; 16] },
                "re": bson::Regex { pattern: "^ab+c$".into(), options: "i".into() },
                "ts": bson::Timestamp { time: 1_700_000_000, increment: i as u32 },
                "lines": [ { "sku": "A1", "qty": 2 }, { "sku": "B2", "qty": i } ],
                "big": 1_i64 << 40 | i64::from(i),
                "neg": -f64::from(i) / 3.0,
            }
        })
        .collect();
    orders.insert_many(docs).await.expect("insert orders");

    // ~1 MB documents: one insert each keeps every command far below 16 MiB.
    let big = shop.collection::<Document>("big");
    for i in 0..6_i32 {
        big.insert_one(doc! {
            "_id": i,
            "blob": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![(i * 37) as u8; 700_000] },
            "text": "lorem ipsum ".repeat(25_000),
        })
        .await
        .expect("insert big");
    }

    shop.create_collection("empty").await.expect("create empty");
    shop.collection::<Document>("empty")
        .create_index(IndexModel::builder().keys(doc! { "k": 1 }).build())
        .await
        .expect("index on empty");

    let analytics = client.database("analytics");
    let events = analytics.collection::<Document>("events");
    let docs: Vec<Document> = (0..2000)
        .map(|i: i64| doc! { "_id": format!("ev-{i:06}"), "n": i, "kind": if i % 3 == 0 { "click" } else { "view" } })
        .collect();
    events.insert_many(docs).await.expect("insert events");
    events
        .create_index(
            IndexModel::builder()
                .keys(doc! { "kind": 1, "n": -1 })
                .build(),
        )
        .await
        .expect("compound index events");
    analytics
        .create_collection("capped_log")
        .with_options(
            CreateCollectionOptions::builder()
                .capped(true)
                .size(1024 * 1024)
                .max(100)
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
    3000 + 6000 + 6 + 2000 + 10 + 1
}

/// Everything the restore must reproduce, per namespace.
#[derive(Debug, PartialEq)]
struct Snapshot {
    /// Raw bytes of every document, sorted (order-insensitive comparison).
    docs: BTreeMap<String, Vec<Vec<u8>>>,
    /// (name, key, unique) of every index, sorted by name.
    indexes: BTreeMap<String, Vec<(String, Document, bool)>>,
    /// `listCollections.options` (capped, size, max).
    options: BTreeMap<String, Document>,
}

async fn snapshot(client: &Client) -> Snapshot {
    let mut s = Snapshot {
        docs: BTreeMap::new(),
        indexes: BTreeMap::new(),
        options: BTreeMap::new(),
    };
    for db in list_user_databases(client).await.expect("list dbs") {
        let d = client.database(&db);
        let colls: Vec<Document> = d
            .run_cursor_command(doc! { "listCollections": 1 })
            .await
            .expect("listCollections")
            .try_collect()
            .await
            .expect("read listCollections");
        for c in colls {
            let name = c.get_str("name").expect("name").to_string();
            let ns = format!("{db}.{name}");
            let docs: Vec<RawDocumentBuf> = d
                .collection::<RawDocumentBuf>(&name)
                .find(doc! {})
                .batch_size(1000)
                .await
                .expect("find")
                .try_collect()
                .await
                .expect("read");
            let mut docs: Vec<Vec<u8>> = docs.into_iter().map(RawDocumentBuf::into_bytes).collect();
            docs.sort();
            s.docs.insert(ns.clone(), docs);
            let idx: Vec<Document> = d
                .run_cursor_command(doc! { "listIndexes": &name })
                .await
                .expect("listIndexes")
                .try_collect()
                .await
                .expect("read listIndexes");
            let mut idx: Vec<(String, Document, bool)> = idx
                .into_iter()
                .map(|i| {
                    (
                        i.get_str("name").expect("index name").to_string(),
                        i.get_document("key").expect("index key").clone(),
                        i.get_bool("unique").unwrap_or(false),
                    )
                })
                .collect();
            idx.sort_by(|a, b| a.0.cmp(&b.0));
            s.indexes.insert(ns.clone(), idx);
            s.options
                .insert(ns, c.get_document("options").cloned().unwrap_or_default());
        }
    }
    s
}

impl Snapshot {
    /// Only the namespaces `keep` accepts.
    fn only(&self, keep: impl Fn(&str) -> bool) -> Snapshot {
        fn pick<T: Clone>(
            m: &BTreeMap<String, T>,
            keep: &dyn Fn(&str) -> bool,
        ) -> BTreeMap<String, T> {
            m.iter()
                .filter(|(k, _)| keep(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }
        Snapshot {
            docs: pick(&self.docs, &keep),
            indexes: pick(&self.indexes, &keep),
            options: pick(&self.options, &keep),
        }
    }
}

/// `open_input` over a file, counting how often it is called.
fn file_input(path: &Path, c: Compression, opens: Arc<AtomicUsize>) -> Opener {
    let path: PathBuf = path.to_path_buf();
    Box::new(move || {
        opens.fetch_add(1, Ordering::SeqCst);
        let f = std::fs::File::open(&path)?;
        Ok(Box::new(c.wrap_reader(f)?) as Box<dyn Read + Send>)
    })
}

fn bytes_input(bytes: Vec<u8>) -> Opener {
    Box::new(move || Ok(Box::new(std::io::Cursor::new(bytes.clone())) as Box<dyn Read + Send>))
}

async fn restore(
    client: &Client,
    input: Opener,
    opts: &RestoreOptions,
) -> (Result<RestoreSummary, MongoError>, Vec<RestoreProgress>) {
    let seen = Mutex::new(Vec::new());
    let progress = |p: RestoreProgress| seen.lock().expect("lock").push(p);
    let r = logical_restore(client, input, opts, &progress, &CancellationToken::new()).await;
    (r, seen.into_inner().expect("lock"))
}

async fn drop_all(client: &Client) {
    for db in list_user_databases(client).await.expect("list") {
        client.database(&db).drop().await.expect("drop database");
    }
}

fn test_opts() -> RestoreOptions {
    RestoreOptions {
        parallel_collections: 3,
        batch_docs: 500,
        batch_bytes: 1024 * 1024,
        channel_batches: 2,
        ..RestoreOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_restore_round_trip_select_drop_corruption_cancel() {
    let Some(ferretdb) = require_binary("ferretdb") else {
        return;
    };
    let src = FerretDb::start(&ferretdb, true);
    let src_client = connect(&src.uri()).await.expect("connect src");
    let total = seed(&src_client).await;
    let expected = snapshot(&src_client).await;
    assert_eq!(expected.docs.len(), 7, "{:?}", expected.docs.keys());
    assert_eq!(
        expected.options["analytics.capped_log"].get_bool("capped"),
        Ok(true)
    );
    assert_eq!(expected.indexes["shop.users"].len(), 3);

    let tmp = tempfile::tempdir().expect("tempdir");
    let gz = tmp.path().join("dump.archive.gz");
    let t = Instant::now();
    let dump = logical_dump(
        &src_client,
        &[],
        &DumpOptions {
            compression: Compression::Gzip,
            ..DumpOptions::default()
        },
        Box::new(std::fs::File::create(&gz).expect("create")),
        &|_| {},
        &CancellationToken::new(),
    )
    .await
    .expect("dump");
    let dump_secs = t.elapsed().as_secs_f64();
    assert_eq!(dump.documents, total);

    // The plain archive, for the byte-level corruption checks and archive_databases.
    let plain = tmp.path().join("dump.archive");
    let mut r = Compression::Gzip
        .wrap_reader(std::fs::File::open(&gz).expect("open"))
        .expect("gunzip");
    let mut archive = Vec::new();
    r.read_to_end(&mut archive).expect("gunzip");
    std::fs::write(&plain, &archive).expect("write plain");
    assert_eq!(
        archive_databases(archive.as_slice()).expect("databases"),
        ["analytics", "shop", "zeta"]
    );
    let verified = verify_archive(archive.as_slice()).expect("verify");
    assert_eq!(verified.documents, total);

    // 1. Full restore into an empty instance: identical documents, indexes, options.
    let dst = FerretDb::start(&ferretdb, false);
    let dst_client = connect(&dst.uri()).await.expect("connect dst");
    let opens = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let (r, progress) = restore(
        &dst_client,
        file_input(&gz, Compression::Gzip, opens.clone()),
        &test_opts(),
    )
    .await;
    let restore_secs = t.elapsed().as_secs_f64();
    let summary = r.expect("restore");
    eprintln!(
        "dataset: {total} docs, {:.1} MB raw; logical_dump (gzip) {dump_secs:.2} s, \
         logical_restore (gzip, P=3) {restore_secs:.2} s",
        dump.raw_bytes as f64 / 1e6
    );
    assert_eq!(opens.load(Ordering::SeqCst), 2, "verify pass + apply pass");
    assert_eq!(summary.documents, total);
    assert_eq!(summary.bytes, dump.raw_bytes);
    assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
    let users = summary
        .namespaces
        .iter()
        .find(|n| n.db == "shop" && n.collection == "users")
        .expect("shop.users in summary");
    assert_eq!(users.documents, 3000);
    let mut names = users.indexes.clone();
    names.sort();
    assert_eq!(names, ["age_1_name_-1", "email_1"]);
    let last = progress.last().expect("progress");
    assert_eq!((last.docs_done, last.docs_total), (total, total));
    assert!(progress.first().is_some_and(|p| p.docs_done == 0));
    assert!(progress
        .windows(2)
        .all(|w| w[0].docs_done <= w[1].docs_done));
    assert!(progress.len() > 20, "{}", progress.len());
    let restored = snapshot(&dst_client).await;
    assert_eq!(restored, expected);

    // 2. Again without drop: refused, naming the namespaces, nothing written. zeta.c is
    // removed first so that any write would show (it would be recreated).
    dst_client.database("zeta").drop().await.expect("drop zeta");
    let before = snapshot(&dst_client).await;
    let (r, _) = restore(&dst_client, bytes_input(archive.clone()), &test_opts()).await;
    let e = r.expect_err("existing target");
    let MongoError::TargetExists { namespaces } = &e else {
        panic!("expected TargetExists, got {e:?}");
    };
    assert!(namespaces.contains(&"shop.users".to_string()), "{e}");
    assert!(
        namespaces.contains(&"analytics.capped_log".to_string()),
        "{e}"
    );
    assert!(!namespaces.contains(&"zeta.c".to_string()), "{e}");
    assert!(e.to_string().contains("shop.users"), "{e}");
    assert_eq!(snapshot(&dst_client).await, before, "refused restore wrote");

    // 3. With drop: replaced (an extra document disappears) and identical again.
    dst_client
        .database("shop")
        .collection::<Document>("orders")
        .insert_one(doc! { "_id": -1, "extra": true })
        .await
        .expect("insert extra");
    let (r, _) = restore(
        &dst_client,
        bytes_input(archive.clone()),
        &RestoreOptions {
            drop: true,
            ..test_opts()
        },
    )
    .await;
    assert_eq!(r.expect("restore with drop").documents, total);
    assert_eq!(snapshot(&dst_client).await, expected);

    // 4. Selection of one database, then of one collection, into an empty instance.
    let dst2 = FerretDb::start(&ferretdb, false);
    let dst2_client = connect(&dst2.uri()).await.expect("connect dst2");
    let (r, _) = restore(
        &dst2_client,
        bytes_input(archive.clone()),
        &RestoreOptions {
            select: vec![NsSelector::database("analytics")],
            ..test_opts()
        },
    )
    .await;
    assert_eq!(r.expect("restore analytics").documents, 2010);
    assert_eq!(
        snapshot(&dst2_client).await,
        expected.only(|ns| ns.starts_with("analytics."))
    );
    drop_all(&dst2_client).await;
    let (r, _) = restore(
        &dst2_client,
        bytes_input(archive.clone()),
        &RestoreOptions {
            select: vec![NsSelector::collection("shop", "users")],
            ..test_opts()
        },
    )
    .await;
    let s = r.expect("restore shop.users");
    assert_eq!(s.namespaces.len(), 1);
    assert_eq!(
        snapshot(&dst2_client).await,
        expected.only(|ns| ns == "shop.users")
    );
    drop_all(&dst2_client).await;

    // 5. Truncated and bit-flipped archives: refused by the verify pass, target untouched.
    let opens = Arc::new(AtomicUsize::new(0));
    let truncated = tmp.path().join("truncated.archive");
    std::fs::write(&truncated, &archive[..archive.len() * 2 / 3]).expect("write");
    let (r, _) = restore(
        &dst2_client,
        file_input(&truncated, Compression::None, opens.clone()),
        &test_opts(),
    )
    .await;
    let e = r.expect_err("truncated archive");
    assert!(e.to_string().contains("truncated"), "{e}");
    assert_eq!(
        opens.load(Ordering::SeqCst),
        1,
        "refused in the verify pass"
    );
    let mut flipped = archive.clone();
    // Inside shop.big's 700 kB binary: data, not framing.
    let at = flipped
        .windows(4)
        .position(|w| w == [37, 37, 37, 37])
        .expect("shop.big data")
        + 1000;
    flipped[at] ^= 0x04;
    let (r, _) = restore(&dst2_client, bytes_input(flipped), &test_opts()).await;
    let e = r.expect_err("flipped archive");
    assert!(
        matches!(
            &e,
            MongoError::Archive(a) if matches!(a.violation(), Some(Violation::CrcMismatch { .. }))
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("\"shop.big\""), "{e}");
    assert!(
        list_user_databases(&dst2_client)
            .await
            .expect("list")
            .is_empty(),
        "a refused archive created something"
    );

    // 6. Cancellation mid-restore.
    let token = CancellationToken::new();
    let calls = AtomicUsize::new(0);
    let progress = |p: RestoreProgress| {
        if p.docs_done > 0 && calls.fetch_add(1, Ordering::SeqCst) == 3 {
            token.cancel();
        }
    };
    let t = Instant::now();
    let e = logical_restore(
        &dst2_client,
        bytes_input(archive.clone()),
        &RestoreOptions {
            batch_docs: 50,
            ..test_opts()
        },
        &progress,
        &token,
    )
    .await
    .expect_err("cancelled");
    assert!(matches!(e, MongoError::Cancelled), "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    let partial: usize = snapshot(&dst2_client)
        .await
        .docs
        .values()
        .map(Vec::len)
        .sum();
    assert!(
        partial < usize::try_from(total).unwrap_or(usize::MAX),
        "{partial}"
    );
}

/// Writes an archive with the public writer: namespaces' segments round-robin, so many
/// namespaces are open at once.
fn build_archive(namespaces: &[(CollectionMetadata, Vec<Vec<u8>>)]) -> Vec<u8> {
    let mut w =
        ArchiveWriter::new(Vec::new(), &ArchiveHeader::new(8, "7.0.0", "test")).expect("writer");
    let idx: Vec<usize> = namespaces
        .iter()
        .map(|(m, _)| w.add_namespace(m.clone()).expect("add"))
        .collect();
    w.finish_prelude().expect("prelude");
    let rounds = namespaces.iter().map(|(_, s)| s.len()).max().unwrap_or(0);
    for round in 0..=rounds {
        for (i, (_, segs)) in namespaces.iter().enumerate() {
            if round < segs.len() {
                w.write_segment(idx[i], &segs[round]).expect("segment");
            } else if round == segs.len() {
                w.close_namespace(idx[i]).expect("close");
            }
        }
    }
    w.finish().expect("finish")
}

fn raw_docs(docs: &[Document]) -> Vec<u8> {
    docs.iter()
        .flat_map(|d| bson::to_vec(d).expect("encode"))
        .collect()
}

fn meta(db: &str, coll: &str, options: &Document, indexes: &[Document]) -> CollectionMetadata {
    CollectionMetadata::collection(
        db,
        coll,
        metadata_json(options, indexes, None, coll, Some("collection")),
    )
}

/// Metadata as real MongoDB writes it (validators, collation, `v`/`ns`/`background` in
/// index specs), an oplog, users, and more interleaved namespaces than batch slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_metadata_interleaving_and_skipped_namespaces() {
    let Some(ferretdb) = require_binary("ferretdb") else {
        return;
    };
    let dst = FerretDb::start(&ferretdb, false);
    let client = connect(&dst.uri()).await.expect("connect");

    let mut namespaces = Vec::new();
    let mut expected: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for c in 0..12 {
        let coll = format!("c{c:02}");
        let all: Vec<Document> = (0..40)
            .map(|i| doc! { "_id": i, "c": c, "s": "y".repeat(i as usize) })
            .collect();
        expected.insert(
            format!("inter.{coll}"),
            all.iter()
                .map(|d| bson::to_vec(d).expect("encode"))
                .collect(),
        );
        namespaces.push((
            meta("inter", &coll, &Document::new(), &[]),
            all.chunks(5).map(raw_docs).collect(),
        ));
    }
    let capped_docs: Vec<Document> = (0..5).map(|i| doc! { "_id": i, "line": i }).collect();
    namespaces.push((
        meta(
            "foreign",
            "capped",
            &doc! {
                "capped": true, "size": 4096_i64, "max": 5,
                "validator": { "line": { "$exists": true } }, "validationLevel": "strict",
            },
            &[
                doc! { "v": 2, "key": { "_id": 1 }, "name": "_id_", "ns": "foreign.capped" },
                doc! { "v": 2, "key": { "line": 1 }, "name": "line_1", "unique": true, "ns": "foreign.capped", "background": true },
                doc! { "v": 2, "key": { "a": 1, "b": -1 }, "name": "a_1_b_-1", "collation": { "locale": "fr", "strength": 2 } },
            ],
        ),
        vec![raw_docs(&capped_docs)],
    ));
    namespaces.push((
        meta("admin", "system.users", &Document::new(), &[]),
        vec![raw_docs(&[doc! { "_id": "admin.root", "user": "root" }])],
    ));
    namespaces.push((
        CollectionMetadata::oplog(),
        vec![raw_docs(&[
            doc! { "ts": bson::Timestamp { time: 1, increment: 1 }, "op": "i", "ns": "inter.c00", "o": { "_id": 99 } },
        ])],
    ));
    // The oplog entry is replayed after the collections: inter.c00 gains {_id: 99}.
    expected
        .get_mut("inter.c00")
        .expect("c00")
        .push(bson::to_vec(&doc! { "_id": 99 }).expect("encode"));
    let archive = build_archive(&namespaces);

    // 12 namespaces open at once, but only 1 × (1 + 1) = 2 batch slots: the reader must
    // push partial batches out instead of waiting (a deadlock otherwise).
    let opts = RestoreOptions {
        parallel_collections: 1,
        channel_batches: 1,
        batch_docs: 3,
        ..RestoreOptions::default()
    };
    let (r, progress) = tokio::time::timeout(
        Duration::from_secs(120),
        restore(&client, bytes_input(archive.clone()), &opts),
    )
    .await
    .expect("restore finished (no deadlock)");
    let summary = r.expect("restore");
    assert_eq!(summary.documents, 12 * 40 + 5);
    assert_eq!(summary.oplog_replayed, 1);
    assert_eq!(progress.last().map(|p| p.docs_done), Some(12 * 40 + 5));
    let w = summary.warnings.join("\n");
    for needle in [
        "foreign.capped: collection option \"validator\"",
        "foreign.capped: collection option \"validationLevel\"",
        "index \"a_1_b_-1\": option \"collation\"",
        "admin.system.users: skipped",
    ] {
        assert!(w.contains(needle), "{needle:?} not in {w}");
    }
    assert_eq!(summary.warnings.len(), 4, "{w}");

    let snap = snapshot(&client).await;
    for (ns, docs) in &expected {
        let mut docs = docs.clone();
        docs.sort();
        assert_eq!(&snap.docs[ns], &docs, "{ns}");
    }
    assert_eq!(
        snap.options["foreign.capped"],
        doc! { "capped": true, "size": 4096_i64, "max": 5_i64 },
        "{:?}",
        snap.options["foreign.capped"]
    );
    let idx: Vec<(&str, bool)> = snap.indexes["foreign.capped"]
        .iter()
        .map(|(n, _, u)| (n.as_str(), *u))
        .collect();
    assert_eq!(
        idx,
        [("_id_", false), ("a_1_b_-1", false), ("line_1", true)]
    );
    assert_eq!(
        list_user_databases(&client).await.expect("list"),
        ["foreign", "inter"]
    );
    let admin: Vec<String> = client
        .database("admin")
        .list_collection_names()
        .await
        .expect("admin collections");
    assert!(!admin.contains(&"system.users".to_string()), "{admin:?}");

    // An input that changes between the passes is detected (at the namespace's EOF).
    let one = |v: i32| {
        build_archive(&[(
            meta("chg", "c", &Document::new(), &[]),
            vec![raw_docs(&[doc! { "_id": 1, "v": v }])],
        )])
    };
    let (first, second) = (one(1), one(2));
    let calls = AtomicUsize::new(0);
    let input: Opener = Box::new(move || {
        let b = if calls.fetch_add(1, Ordering::SeqCst) == 0 {
            first.clone()
        } else {
            second.clone()
        };
        Ok(Box::new(std::io::Cursor::new(b)) as Box<dyn Read + Send>)
    });
    let (r, _) = restore(&client, input, &RestoreOptions::default()).await;
    let e = r.expect_err("changed input");
    assert!(
        e.to_string().contains("changed between the verify pass"),
        "{e}"
    );
    assert!(e.to_string().contains("chg.c"), "{e}");
}

/// Real `mongodump --archive` archives (the current release: plain, `--gzip`, and `--oplog` from a
/// replica set with an oplog) restore through `logical_restore` to identical data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_real_mongodump_archives() {
    let Some(ferretdb) = require_binary("ferretdb") else {
        return;
    };
    let Some(mongodump) = require_binary("mongodump") else {
        return;
    };
    eprintln!("mongodump {}", common::tool_version(&mongodump));
    // The oplog must exist before the writes for FerretDB to log them: mongodump --oplog needs
    // at least one entry to start from.
    let src = FerretDb::start(&ferretdb, true);
    let client = connect(&src.uri()).await.expect("connect");
    common::create_oplog(&client).await;
    seed(&client).await;
    let expected = snapshot(&client).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    for (name, args, compression) in [
        ("plain", &[][..], Compression::None),
        ("gzip", &["--gzip"][..], Compression::Gzip),
        ("oplog", &["--oplog"][..], Compression::None),
        ("oplog-gzip", &["--oplog", "--gzip"][..], Compression::Gzip),
    ] {
        let path = tmp.path().join(format!("mongodump-{name}.archive"));
        let out = std::process::Command::new(&mongodump)
            .arg(format!("--uri={}?directConnection=true", src.uri()))
            .arg(format!("--archive={}", path.display()))
            .args(args)
            .output()
            .expect("run mongodump");
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dst = FerretDb::start(&ferretdb, false);
        let dst_client = connect(&dst.uri()).await.expect("connect dst");
        let (r, _) = restore(
            &dst_client,
            file_input(&path, compression, Arc::default()),
            &RestoreOptions::default(),
        )
        .await;
        let summary = r.unwrap_or_else(|e| panic!("restore mongodump {name} archive: {e}"));
        assert_eq!(snapshot(&dst_client).await, expected, "{name}");
        if name.starts_with("oplog") {
            // The entries written since the dump started (at least the newest one before it).
            assert!(summary.oplog_replayed >= 1, "{name}: {summary:?}");
        } else {
            assert_eq!(summary.oplog_replayed, 0, "{name}");
        }
    }
}

fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Restore vs dump throughput on the same data (run explicitly:
/// `cargo test -p ddsvault-mongo --release --test restore -- --ignored --nocapture bench`).
/// `DDSVAULT_BENCH_DOCS` sets the document count (default 100 000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run explicitly"]
async fn bench_logical_restore_vs_dump() {
    let Some(ferretdb) = require_binary("ferretdb") else {
        return;
    };
    let n: u32 = std::env::var("DDSVAULT_BENCH_DOCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let src = FerretDb::start(&ferretdb, true);
    let client = connect(&src.uri()).await.expect("connect");
    let t = Instant::now();
    for (coll, share) in [("a", 2), ("b", 1), ("c", 1)] {
        let c = client.database("bench").collection::<Document>(coll);
        let count = n / 4 * share;
        for chunk in (0..count).collect::<Vec<_>>().chunks(10_000) {
            let docs = chunk.iter().map(|&i| {
                doc! { "_id": i64::from(i), "name": format!("user-{i}"), "n": i, "ok": i % 2 == 0, "score": f64::from(i) / 7.0 }
            });
            c.insert_many(docs).await.expect("insert");
        }
    }
    eprintln!("seeded {n} docs in {:.1?}", t.elapsed());
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("bench.archive");
    let t = Instant::now();
    let dump = logical_dump(
        &client,
        &[],
        &DumpOptions::default(),
        Box::new(std::fs::File::create(&path).expect("create")),
        &|_| {},
        &CancellationToken::new(),
    )
    .await
    .expect("dump");
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "logical_dump: {secs:.2} s, {:.0} docs/s, {:.1} MB raw",
        dump.documents as f64 / secs,
        dump.raw_bytes as f64 / 1e6
    );
    let t = Instant::now();
    verify_archive(std::fs::File::open(&path).expect("open")).expect("verify");
    eprintln!("verify_archive alone: {:.2} s", t.elapsed().as_secs_f64());
    for parallel in [1, 4] {
        let dst = FerretDb::start(&ferretdb, false);
        let dst_client = connect(&dst.uri()).await.expect("connect dst");
        let t = Instant::now();
        let (r, _) = restore(
            &dst_client,
            file_input(&path, Compression::None, Arc::default()),
            &RestoreOptions {
                parallel_collections: parallel,
                ..RestoreOptions::default()
            },
        )
        .await;
        let summary = r.expect("restore");
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(summary.documents, dump.documents);
        eprintln!(
            "logical_restore P={parallel}: {secs:.2} s, {:.0} docs/s (test process peak RSS {:.0} MiB)",
            summary.documents as f64 / secs,
            peak_rss_mib().unwrap_or(f64::NAN)
        );
    }
}
