//! Oplog replay against real FerretDB v1.24 (SQLite, `--repl-set-name`, capped
//! `local.oplog.rs`): a backup taken under writes of every kind FerretDB logs restores
//! exactly; a backup with an entry the restore cannot apply leaves the target untouched; a
//! target that fails mid-way gets an error naming the complete namespaces. Without the
//! FerretDB binary the tests print `SKIPPED: ferretdb not found` and return.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bson::{doc, Bson, Document, Timestamp};
use common::{
    archive_with_oplog, collection_meta, create_oplog, find_sorted, require_binary,
    restore_bytes as restore, ts_of, FerretDb, SharedBuf,
};
use ddsvault_mongo::archive::Compression;
use ddsvault_mongo::logical::{logical_dump, DumpOptions};
use ddsvault_mongo::restore::RestoreOptions;
use ddsvault_mongo::topology::connect;
use ddsvault_mongo::MongoError;
use futures::TryStreamExt;
use mongodb::{Client, IndexModel};
use tokio_util::sync::CancellationToken;

fn raw_bytes(d: &Document) -> Vec<u8> {
    bson::to_vec(d).expect("encode")
}

/// Every user collection of the server: its documents (BSON bytes, in `_id` order) and its
/// indexes.
async fn snapshot(client: &Client) -> BTreeMap<String, (Vec<Vec<u8>>, Vec<Vec<u8>>)> {
    let mut out = BTreeMap::new();
    for db in client.list_database_names().await.expect("databases") {
        if ["admin", "config", "local"].contains(&db.as_str()) {
            continue;
        }
        for coll in client
            .database(&db)
            .list_collection_names()
            .await
            .expect("collections")
        {
            let c = client.database(&db).collection::<Document>(&coll);
            let docs = find_sorted(&c, doc! { "_id": 1 }).await;
            let mut indexes: Vec<Vec<u8>> = c
                .list_indexes()
                .await
                .expect("indexes")
                .try_collect::<Vec<IndexModel>>()
                .await
                .expect("read indexes")
                .iter()
                .map(|i| raw_bytes(&bson::to_document(i).expect("index")))
                .collect();
            indexes.sort();
            out.insert(
                format!("{db}.{coll}"),
                (docs.iter().map(raw_bytes).collect(), indexes),
            );
        }
    }
    out
}

/// The writes of the test writer, step `i`: every kind of write FerretDB logs (`i` of
/// `insertOne`/`insertMany`/upserts, `u` of `$set`/`$unset`/`$inc`/`$push`/replacements/
/// `updateMany`, `d` of `deleteOne`/`deleteMany`), over documents with sub-documents and
/// arrays, and a collection created during the dump.
async fn write_step(client: &Client, i: i32) {
    let app = client.database("app");
    let people = app.collection::<Document>("people");
    let id = i % 200;
    match i % 11 {
        0 => {
            people
                .insert_one(doc! { "_id": 100_000 + i, "name": format!("n{i}"), "tags": ["new"], "addr": { "city": "x" } })
                .await
                .expect("insert");
        }
        1 => {
            app.collection::<Document>("log")
                .insert_many((0..3).map(|k| doc! { "_id": i * 10 + k, "step": i }))
                .await
                .expect("insert many");
        }
        2 => {
            people
                .update_one(
                    doc! { "_id": id },
                    doc! { "$set": { "addr.city": format!("c{i}"), "zz_new": i } },
                )
                .await
                .expect("set");
        }
        3 => {
            people
                .update_one(doc! { "_id": id }, doc! { "$unset": { "name": "" } })
                .await
                .expect("unset");
        }
        4 => {
            app.collection::<Document>("counters")
                .update_one(doc! { "_id": i % 10 }, doc! { "$inc": { "n": 1 } })
                .await
                .expect("inc");
        }
        5 => {
            people
                .update_one(
                    doc! { "_id": id },
                    doc! { "$push": { "tags": format!("t{i}") } },
                )
                .await
                .expect("push");
        }
        6 => {
            people
                .replace_one(
                    doc! { "_id": id },
                    doc! { "replaced": i, "arr": [1, { "k": i }] },
                )
                .await
                .expect("replace");
        }
        7 => {
            people
                .update_many(
                    doc! { "group": i % 7, "_id": { "$lt": 40 } },
                    doc! { "$set": { "flag": i } },
                )
                .await
                .expect("update many");
        }
        8 => {
            app.collection::<Document>("counters")
                .update_one(doc! { "_id": 100 + i }, doc! { "$set": { "n": 0 } })
                .upsert(true)
                .await
                .expect("upsert");
        }
        9 => {
            people
                .delete_one(doc! { "_id": (id + 100) % 200 })
                .await
                .expect("delete");
        }
        _ => {
            app.collection::<Document>("log")
                .delete_many(doc! { "step": i - 10 })
                .await
                .expect("delete many");
            app.collection::<Document>("newcoll")
                .insert_one(doc! { "_id": i, "made": "during the dump" })
                .await
                .expect("new collection");
        }
    }
}

/// The state at `end` computed from a baseline and the source's oplog (FerretDB logs full
/// images), independently of the restore's replay code.
fn expected_state(
    baseline: &BTreeMap<String, Vec<Document>>,
    oplog: &[Document],
    end: Timestamp,
) -> BTreeMap<String, BTreeMap<Vec<u8>, Document>> {
    let key = |id: &Bson| raw_bytes(&doc! { "_id": id.clone() });
    let mut state: BTreeMap<String, BTreeMap<Vec<u8>, Document>> = baseline
        .iter()
        .map(|(ns, docs)| {
            (
                ns.clone(),
                docs.iter()
                    .map(|d| (key(d.get("_id").expect("_id")), d.clone()))
                    .collect(),
            )
        })
        .collect();
    for e in oplog.iter().filter(|e| ts_of(e) <= end) {
        let ns = e.get_str("ns").expect("ns").to_string();
        let o = e.get_document("o").expect("o");
        let coll = state.entry(ns).or_default();
        match e.get_str("op").expect("op") {
            "i" => {
                coll.insert(key(o.get("_id").expect("_id")), o.clone());
            }
            "u" => {
                let image = match o.get_document("$set") {
                    Ok(full) if full.contains_key("_id") => full.clone(),
                    _ => o.clone(),
                };
                coll.insert(key(image.get("_id").expect("_id")), image);
            }
            "d" => {
                coll.remove(&key(o.get("_id").expect("_id")));
            }
            other => panic!("FerretDB logged op {other:?}"),
        }
    }
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_under_every_ferretdb_write_kind_restores_exactly() {
    let Some(bin) = require_binary("ferretdb") else {
        return;
    };
    let src = FerretDb::start(&bin, true);
    let dst = FerretDb::start(&bin, true);
    let client = connect(&src.uri()).await.expect("connect");
    let app = client.database("app");
    let pad = "p".repeat(200);
    app.collection::<Document>("people")
        .insert_many((0..2000).map(|i| {
            doc! { "_id": i, "name": format!("p{i}"), "group": i % 7, "tags": ["a", "b"],
            "addr": { "city": "y", "zip": i }, "pad": &pad }
        }))
        .await
        .expect("people");
    app.collection::<Document>("counters")
        .insert_many((0..10).map(|i| doc! { "_id": i, "n": 0 }))
        .await
        .expect("counters");
    app.collection::<Document>("log")
        .insert_many((0..30_000).map(|i| doc! { "_id": -1 - i, "step": -1 }))
        .await
        .expect("log");
    create_oplog(&client).await;

    let mut baseline = BTreeMap::new();
    for coll in app.list_collection_names().await.expect("collections") {
        let docs = find_sorted(&app.collection::<Document>(&coll), doc! { "_id": 1 }).await;
        baseline.insert(format!("app.{coll}"), docs);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    // On its own thread and runtime: the dump's progress callback below blocks a worker of this one.
    let writer = {
        let (uri, stop, written) = (src.uri(), stop.clone(), written.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let client = connect(&uri).await.expect("connect");
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    write_step(&client, i).await;
                    written.fetch_add(1, Ordering::SeqCst);
                    i += 1;
                }
                i
            })
        })
    };
    wait_until("the writer's first step", || {
        written.load(Ordering::SeqCst) > 0
    });
    // Every kind of write must land inside the dump's oplog window, however fast the dump or slow the writer:
    // once a collection is done (the window is open), the dump waits for two whole cycles of the writer.
    let waited = AtomicBool::new(false);
    let hold = |p: ddsvault_mongo::logical::DumpProgress| {
        if p.namespaces_done == 0 || waited.swap(true, Ordering::SeqCst) {
            return;
        }
        let seen = written.load(Ordering::SeqCst);
        wait_until("two whole cycles of the writer", || {
            written.load(Ordering::SeqCst) >= seen + 23
        });
    };
    let buf = SharedBuf::default();
    let summary = logical_dump(
        &client,
        &["app".to_string()],
        &DumpOptions {
            compression: Compression::None,
            parallel_collections: 1,
            batch_size: 100,
            ..DumpOptions::default()
        },
        Box::new(buf.clone()),
        &hold,
        &CancellationToken::new(),
    )
    .await
    .expect("dump (its oplog check included)");
    stop.store(true, Ordering::SeqCst);
    let steps = writer.join().expect("writer");
    let o = summary.oplog.expect("oplog captured");
    assert!(
        steps > 22,
        "the writer made every kind of write ({steps} steps)"
    );
    eprintln!("writer steps: {steps}; window entries: {}", o.entries);

    let oplog = find_sorted(
        &client.database("local").collection::<Document>("oplog.rs"),
        doc! { "$natural": 1 },
    )
    .await;
    let kinds: std::collections::BTreeSet<&str> = oplog
        .iter()
        .filter(|e| ts_of(e) >= o.start_ts && ts_of(e) <= o.end_ts)
        .map(|e| e.get_str("op").unwrap_or(""))
        .collect();
    assert_eq!(
        kinds,
        ["d", "i", "u"].into(),
        "the window holds every kind FerretDB logs"
    );
    let expected = expected_state(&baseline, &oplog, o.end_ts);
    assert!(expected.contains_key("app.newcoll"));

    let dclient = connect(&dst.uri()).await.expect("connect dst");
    let bytes = buf.0.lock().expect("lock").clone();
    let s = restore(&dclient, bytes, &RestoreOptions::default())
        .await
        .expect("restore");
    assert!(s.oplog_replayed > 0, "{s:?}");
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    let got = snapshot(&dclient).await;
    for (ns, docs) in &expected {
        let want: Vec<Vec<u8>> = {
            // The target is read in _id order; order the expected documents the same way.
            let mut v: Vec<&Document> = docs.values().collect();
            v.sort_by(|a, b| {
                let (a, b) = (a.get("_id").expect("_id"), b.get("_id").expect("_id"));
                match (a, b) {
                    (Bson::Int32(a), Bson::Int32(b)) => a.cmp(b),
                    _ => panic!("_id types"),
                }
            });
            v.into_iter().map(raw_bytes).collect()
        };
        let have = got.get(ns).map(|(d, _)| d.clone()).unwrap_or_default();
        assert_eq!(have.len(), want.len(), "{ns}: documents");
        for (h, w) in have.iter().zip(&want) {
            assert_eq!(
                h,
                w,
                "{ns}: restored {:?} expected {:?}",
                Document::from_reader(h.as_slice()).ok(),
                Document::from_reader(w.as_slice()).ok()
            );
        }
    }
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
}

/// An archive of `collections` (db `app`, each with an index on `email`) and an oplog.
fn archive(collections: &[(&str, Vec<Document>)], oplog: &[Document]) -> Vec<u8> {
    let collections: Vec<_> = collections
        .iter()
        .map(|(c, docs)| {
            let index = doc! { "v": 2, "key": { "email": 1 }, "name": "email_1" };
            (collection_meta("app", c, &[index]), docs.clone())
        })
        .collect();
    archive_with_oplog(&collections, oplog)
}

/// An entry the restore cannot apply fails it before the first drop or insert: the target,
/// which holds other versions of the backup's collections, stays byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unappliable_entries_leave_the_target_byte_identical() {
    let Some(bin) = require_binary("ferretdb") else {
        return;
    };
    let dst = FerretDb::start(&bin, true);
    let client = connect(&dst.uri()).await.expect("connect");
    let app = client.database("app");
    app.collection::<Document>("users")
        .insert_many([
            doc! { "_id": "a", "email": "old", "n": [1, 2] },
            doc! { "_id": "z", "email": "zz" },
        ])
        .await
        .expect("users");
    app.collection::<Document>("users")
        .create_index(IndexModel::builder().keys(doc! { "email": 1 }).build())
        .await
        .expect("index");
    app.collection::<Document>("orders")
        .insert_one(doc! { "_id": 1, "total": 5 })
        .await
        .expect("orders");
    client
        .database("other")
        .collection::<Document>("keep")
        .insert_one(doc! { "_id": 1 })
        .await
        .expect("other");
    let before = snapshot(&client).await;
    assert_eq!(before.len(), 3);

    let t = |i| Timestamp {
        time: 1_800_000_000,
        increment: i,
    };
    let good = [
        doc! { "ts": t(1), "ns": "app.users", "op": "u", "o": { "$v": 2, "diff": { "u": { "email": "new" } } }, "o2": { "_id": "a" } },
        doc! { "ts": t(2), "ns": "app.orders", "op": "i", "o": { "_id": 2, "total": 9 } },
    ];
    let txn = |i: u32, prev: u32, o: Document| {
        doc! { "ts": t(i), "ns": "admin.$cmd", "op": "c", "o": o, "lsid": { "id": 1 }, "txnNumber": 1_i64,
        "prevOpTime": { "ts": t(prev), "t": 1_i64 } }
    };
    let bad: Vec<(Document, &str)> = vec![
        (
            doc! { "ts": t(3), "ns": "app.users", "op": "x", "o": { "_id": "a" } },
            "unknown op \"x\"",
        ),
        (
            doc! { "ts": t(3), "ns": "app.users", "op": "u", "o": { "$v": 2, "diff": { "sn": { "a": true, "u3": 1, "u1": 2 } } }, "o2": { "_id": "a" } },
            "out of order",
        ),
        (
            doc! { "ts": t(3), "ns": "app.$cmd", "op": "c", "o": { "frobnicate": "users" } },
            "unknown command",
        ),
        (
            txn(
                3,
                1,
                doc! { "applyOps": [{ "op": "i", "ns": "app.users", "o": { "_id": "t" } }] },
            ),
            "precede the backup's oplog window",
        ),
    ];
    // The backup: other versions of the target's collections, and an oplog.
    let backup = |oplog: &[Document]| {
        archive(
            &[
                ("users", vec![doc! { "_id": "a", "email": "x", "n": [1] }]),
                ("orders", vec![doc! { "_id": 1, "total": 1 }]),
            ],
            oplog,
        )
    };
    let with_drop = RestoreOptions {
        drop: true,
        ..RestoreOptions::default()
    };
    for (entry, want) in bad {
        let mut oplog = good.to_vec();
        oplog.push(entry.clone());
        let e = restore(&client, backup(&oplog), &with_drop)
            .await
            .expect_err(want);
        let msg = e.to_string();
        assert!(
            msg.contains(want) && msg.contains("Timestamp(1800000000, 3)"),
            "{msg}"
        );
        assert!(!matches!(e, MongoError::RestoreIncomplete { .. }), "{msg}");
        assert_eq!(
            snapshot(&client).await,
            before,
            "the target changed after: {msg}"
        );
    }

    // The same archive with only applicable entries restores (so the refusals above were the
    // bad entries' doing).
    restore(&client, backup(&good), &with_drop)
        .await
        .expect("restore");
    let after = snapshot(&client).await;
    assert_eq!(
        after["app.users"].0,
        vec![raw_bytes(&doc! { "_id": "a", "email": "new", "n": [1] })]
    );
    assert_eq!(after["other.keep"], before["other.keep"]);
}

/// The target refuses a document mid-way (FerretDB 1.24 stores no nested arrays): the error
/// says which namespaces are complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_failing_mid_way_names_the_complete_namespaces() {
    let Some(bin) = require_binary("ferretdb") else {
        return;
    };
    let dst = FerretDb::start(&bin, true);
    let client = connect(&dst.uri()).await.expect("connect");
    let good: Vec<Document> = (0..50).map(|i| doc! { "_id": i }).collect();
    let bad = vec![doc! { "_id": 1 }, doc! { "_id": 2, "nested": [[1, 2]] }];
    let bytes = archive_with_oplog(
        &[
            (collection_meta("app", "good", &[]), good),
            (collection_meta("app", "bad", &[]), bad),
        ],
        &[],
    );
    let e = restore(
        &client,
        bytes,
        &RestoreOptions {
            parallel_collections: 1,
            ..RestoreOptions::default()
        },
    )
    .await
    .unwrap_err();
    let MongoError::RestoreIncomplete {
        complete,
        incomplete,
        source,
    } = &e
    else {
        panic!("{e}");
    };
    assert_eq!(complete, &["app.good"], "{e}");
    assert_eq!(incomplete, &["app.bad"], "{e}");
    assert!(source.to_string().contains("app.bad"), "{e}");
    assert!(
        e.to_string()
            .contains("complete: app.good; incomplete: app.bad"),
        "{e}"
    );
}

/// A backup checks its captured oplog with the restore's code: an entry no restore could
/// apply fails the backup, naming the entry and its kind, instead of a later restore.
///
/// The crafted entries are written into `local.oplog.rs` with a `ts` two seconds ahead
/// (`crafted`), and a writer keeps FerretDB logging during the dump. The window must hold the
/// crafted entry, which is waited for, not assumed from a pause: the dump's progress callback,
/// once a collection is done (the window's start `oplogStart` is read before that), notes
/// whether the clock is still before `crafted`'s second (then `oplogStart`, a `ts` of an entry
/// written earlier, is before `crafted`), and then blocks until the clock is past that second
/// and two more of the writer's inserts completed (the second of them began after the clock
/// passed, so its entry, the newest when the dump reads `oplogEnd`, is after `crafted`). An
/// attempt whose dump started too late (a loaded machine) is repeated with a new entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_whose_oplog_cannot_be_replayed_fails() {
    let Some(bin) = require_binary("ferretdb") else {
        return;
    };
    let src = FerretDb::start(&bin, true);
    let client = connect(&src.uri()).await.expect("connect");
    client
        .database("app")
        .collection::<Document>("c")
        .insert_many((0..10).map(|i| doc! { "_id": i }))
        .await
        .expect("insert");
    create_oplog(&client).await;
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    // On its own thread and runtime: the dump's progress callback blocks a worker of this one.
    let writer = {
        let (uri, stop, written) = (src.uri(), stop.clone(), written.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let client = connect(&uri).await.expect("connect");
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    client
                        .database("app")
                        .collection::<Document>("w")
                        .insert_one(doc! { "_id": i })
                        .await
                        .expect("write");
                    written.fetch_add(1, Ordering::SeqCst);
                    i += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            });
        })
    };
    wait_until("the writer's first insert", || {
        written.load(Ordering::SeqCst) > 0
    });
    let oplog = client.database("local").collection::<Document>("oplog.rs");
    let ahead = || Timestamp {
        time: u32::try_from(chrono_now_secs() + 2).expect("time"),
        increment: 1,
    };
    let cases = [
        (
            doc! { "ns": "app.c", "op": "x", "o": { "_id": 1 } },
            "unknown op \"x\"",
        ),
        // (FerretDB refuses `$` keys, so no $v:2 entry can be crafted here; the unit tests
        // and the restore tests cover malformed diffs.)
        (
            doc! { "ns": "app.c", "op": "u", "o": { "x": 1 } },
            "replacement update without o2._id or o._id",
        ),
        (
            doc! { "ns": "app.$cmd", "op": "c", "o": { "frobnicate": "c" } },
            "unknown command \"frobnicate\"",
        ),
        (
            doc! { "ns": "admin.$cmd", "op": "c", "o": { "renameCollection": "app.c", "to": "app.d" } },
            "renameCollection app.c to app.d during the backup",
        ),
    ];
    for (entry, want) in cases {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let ts = ahead();
            let mut entry = entry.clone();
            entry.insert("ts", ts);
            oplog.insert_one(entry).await.expect("crafted entry");
            let (result, in_time) = dump_around(&client, Some(ts), &written).await;
            if !in_time {
                assert!(
                    attempts < 10,
                    "the dump never started before the crafted entry's second"
                );
                continue;
            }
            let e = result.expect_err(want);
            let msg = e.to_string();
            assert!(
                msg.contains(want) && msg.contains(&format!("Timestamp({}, 1)", ts.time)),
                "{msg}"
            );
            break;
        }
    }
    // Entries of databases the backup does not hold are not its business.
    let ts = ahead();
    oplog
        .insert_one(doc! { "ts": ts, "ns": "zzz.c", "op": "x", "o": {} })
        .await
        .expect("crafted entry");
    let (s, _) = dump_around(&client, Some(ts), &written).await;
    let s = s.expect("a backup of app");
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("writer");
    assert!(s.oplog.is_some_and(|o| o.entries > 1));
}

/// A dump of `app` whose oplog window reaches past `crafted` (see
/// [`a_backup_whose_oplog_cannot_be_replayed_fails`]); also whether its window started before
/// `crafted`'s second.
async fn dump_around(
    client: &Client,
    crafted: Option<Timestamp>,
    written: &Arc<AtomicU64>,
) -> (
    Result<ddsvault_mongo::logical::DumpSummary, MongoError>,
    bool,
) {
    let waited = AtomicBool::new(false);
    let in_time = Arc::new(AtomicBool::new(false));
    let slow = {
        let in_time = in_time.clone();
        let written = written.clone();
        move |p: ddsvault_mongo::logical::DumpProgress| {
            let Some(crafted) = crafted else {
                return;
            };
            // The first report comes before the window starts; wait once a collection is done.
            if p.namespaces_done == 0 || waited.swap(true, Ordering::SeqCst) {
                return;
            }
            in_time.store(
                chrono_now_secs() < u64::from(crafted.time),
                Ordering::SeqCst,
            );
            wait_until("the clock to pass the crafted entry's second", || {
                chrono_now_secs() > u64::from(crafted.time)
            });
            let seen = written.load(Ordering::SeqCst);
            wait_until("two more inserts of the writer", || {
                written.load(Ordering::SeqCst) >= seen + 2
            });
        }
    };
    let r = logical_dump(
        client,
        &["app".to_string()],
        &DumpOptions {
            compression: Compression::None,
            parallel_collections: 1,
            ..DumpOptions::default()
        },
        Box::new(SharedBuf::default()),
        &slow,
        &CancellationToken::new(),
    )
    .await;
    (r, in_time.load(Ordering::SeqCst))
}

/// Blocks (the thread) until `cond` holds; fails after 120 s, naming what was waited for.
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "waited 120 s for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn chrono_now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}
