//! Oplog capture and replay against real FerretDB v1.24 (SQLite, `--repl-set-name`, with and
//! without `local.oplog.rs`). Without the FerretDB binary the tests print
//! `SKIPPED: <reason>` and return, or fail under `CI=true`.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bson::{doc, Document, Timestamp};
use common::{
    archive_with_oplog, collection_meta, create_oplog, find_sorted, require_binary,
    restore_bytes as restore, ts_of, FerretDb, SharedBuf,
};
use ddsvault_mongo::archive::Compression;
use ddsvault_mongo::logical::{logical_dump, DumpOptions, DumpSummary};
use ddsvault_mongo::restore::{verify_archive, RestoreOptions};
use ddsvault_mongo::topology::connect;
use ddsvault_mongo::MongoError;
use futures::TryStreamExt;
use mongodb::Client;
use tokio_util::sync::CancellationToken;

async fn dump(client: &Client, dbs: &[&str]) -> (Result<DumpSummary, MongoError>, Vec<u8>) {
    let buf = SharedBuf::default();
    let opts = DumpOptions {
        compression: Compression::None,
        parallel_collections: 1,
        batch_size: 200,
        ..DumpOptions::default()
    };
    let dbs: Vec<String> = dbs.iter().map(|s| s.to_string()).collect();
    let r = logical_dump(
        client,
        &dbs,
        &opts,
        Box::new(buf.clone()),
        &|_| {},
        &CancellationToken::new(),
    )
    .await;
    let bytes = buf.0.lock().expect("lock").clone();
    (r, bytes)
}

async fn all_docs(client: &Client, db: &str, coll: &str) -> Vec<Document> {
    find_sorted(
        &client.database(db).collection::<Document>(coll),
        doc! { "_id": 1 },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_set_without_oplog_collection_is_a_plain_dump() {
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
    let (r, bytes) = dump(&client, &["app"]).await;
    let s = r.expect("dump");
    assert_eq!(s.oplog, None);
    let v = verify_archive(std::io::Cursor::new(bytes)).expect("verify");
    assert!(v.namespaces.iter().all(|(m, _)| !m.db.is_empty()));

    // An empty oplog cannot give a starting point: the backup fails clearly.
    create_oplog(&client).await;
    let (r, _) = dump(&client, &["app"]).await;
    let e = r.unwrap_err();
    assert!(matches!(e, MongoError::OplogUnusable(_)), "{e}");
    assert!(e.to_string().contains("empty"), "{e}");
}

/// A writer keeps going during the dump: each step inserts `{_id: i}` into `app.log` and
/// sets `app.state.counter.n = i`. The restored copy equals the source at the dump's
/// `oplogEnd`, computed independently from the source oplog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_under_writes_restores_the_state_at_oplog_end() {
    let Some(bin) = require_binary("ferretdb") else {
        return;
    };
    let src = FerretDb::start(&bin, true);
    let dst = FerretDb::start(&bin, true);
    let client = connect(&src.uri()).await.expect("connect");
    let app = client.database("app");
    let pad = "p".repeat(1000);
    app.collection::<Document>("big")
        .insert_many((0..10_000).map(|i| doc! { "_id": i, "pad": &pad }))
        .await
        .expect("big");
    app.collection::<Document>("log")
        .insert_many((0..30_000).map(|i| doc! { "_id": i }))
        .await
        .expect("log");
    app.collection::<Document>("state")
        .insert_one(doc! { "_id": "counter", "n": 29_999 })
        .await
        .expect("state");
    create_oplog(&client).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let client = client.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let app = client.database("app");
            let mut i = 30_000;
            while !stop.load(Ordering::Relaxed) {
                app.collection::<Document>("log")
                    .insert_one(doc! { "_id": i })
                    .await
                    .expect("log insert");
                app.collection::<Document>("state")
                    .update_one(doc! { "_id": "counter" }, doc! { "$set": { "n": i } })
                    .await
                    .expect("state update");
                i += 1;
            }
            i
        })
    };
    // Let the oplog get entries before the dump starts.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (r, bytes) = dump(&client, &["app"]).await;
    stop.store(true, Ordering::Relaxed);
    let steps = writer.await.expect("writer");
    let s = r.expect("dump");
    let o = s.oplog.expect("oplog captured");
    assert!(o.start_ts <= o.end_ts);
    assert!(o.entries > 0, "{o:?}");
    assert!(steps > 30_002, "the writer made progress ({steps})");

    // The expected state at oplogEnd, from the source oplog.
    let entries: Vec<Document> = client
        .database("local")
        .collection::<Document>("oplog.rs")
        .find(doc! {})
        .sort(doc! { "$natural": 1 })
        .await
        .expect("oplog")
        .try_collect()
        .await
        .expect("read oplog");
    let mut max_log = 29_999;
    let mut n = 29_999;
    for e in entries.iter().filter(|e| ts_of(e) <= o.end_ts) {
        match (e.get_str("ns").unwrap_or(""), e.get_str("op").unwrap_or("")) {
            ("app.log", "i") => {
                max_log = max_log.max(e.get_document("o").unwrap().get_i32("_id").unwrap())
            }
            ("app.state", "u") => {
                n = e
                    .get_document("o")
                    .unwrap()
                    .get_document("$set")
                    .unwrap()
                    .get_i32("n")
                    .unwrap()
            }
            _ => {}
        }
    }
    let in_window = entries
        .iter()
        .filter(|e| ts_of(e) >= o.start_ts && ts_of(e) <= o.end_ts)
        .count() as u64;
    assert_eq!(in_window, o.entries);

    let dclient = connect(&dst.uri()).await.expect("connect dst");
    let summary = restore(&dclient, bytes.clone(), &RestoreOptions::default())
        .await
        .expect("restore");
    assert!(summary.oplog_replayed > 0, "{summary:?}");
    assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
    let log = all_docs(&dclient, "app", "log").await;
    let ids: Vec<i32> = log.iter().map(|d| d.get_i32("_id").unwrap()).collect();
    assert_eq!(ids, (0..=max_log).collect::<Vec<_>>(), "log is contiguous");
    let state = all_docs(&dclient, "app", "state").await;
    assert_eq!(state, vec![doc! { "_id": "counter", "n": n }]);
    assert!(n == max_log || n == max_log - 1, "n {n} max {max_log}");
    assert_eq!(all_docs(&dclient, "app", "big").await.len(), 10_000);

    // Selecting one collection replays only its entries.
    let summary = restore(
        &dclient,
        bytes,
        &RestoreOptions {
            drop: true,
            select: vec![ddsvault_mongo::restore::NsSelector::collection(
                "app", "state",
            )],
            ..RestoreOptions::default()
        },
    )
    .await
    .expect("restore state only");
    let state = all_docs(&dclient, "app", "state").await;
    assert_eq!(state, vec![doc! { "_id": "counter", "n": n }]);
    assert!(summary.oplog_replayed > 0);
    assert!(summary.oplog_replayed < o.entries);
    assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
}

fn archive(data: &[Document], oplog: &[Document]) -> Vec<u8> {
    let users = collection_meta(
        "app",
        "users",
        &[
            doc! { "v": 2, "key": { "_id": 1 }, "name": "_id_" },
            doc! { "v": 2, "key": { "email": 1 }, "name": "email_1", "unique": true },
        ],
    );
    archive_with_oplog(&[(users, data.to_vec())], oplog)
}

/// A fuzzy copy can violate a unique index until the replay is done: indexes are built
/// after the replay. A collection created during the dump is restored by the replay; a
/// MongoDB 5.0+ diff update is applied; an entry of an unknown kind fails the restore,
/// naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_runs_before_unique_indexes_and_refuses_unsupported_entries() {
    let Some(bin) = require_binary("ferretdb") else {
        return;
    };
    let dst = FerretDb::start(&bin, true);
    let client = connect(&dst.uri()).await.expect("connect");
    let t = |i| Timestamp {
        time: 1_800_000_000,
        increment: i,
    };
    // Source history: a@x, b@y; then a moved to z, b moved to x. The dump read `a` before
    // the first change and `b` after the second: both hold x.
    let data = [
        doc! { "_id": "a", "email": "x" },
        doc! { "_id": "b", "email": "x" },
    ];
    let oplog = [
        doc! { "ts": t(1), "ns": "app.users", "op": "u", "o": { "$v": 1, "$set": { "_id": "a", "email": "z" } }, "o2": { "_id": "a" } },
        doc! { "ts": t(2), "ns": "app.users", "op": "u", "o": { "$v": 1, "$set": { "_id": "b", "email": "x" } }, "o2": { "_id": "b" } },
        doc! { "ts": t(3), "ns": "app.users", "op": "i", "o": { "_id": "c", "email": "w" } },
        doc! { "ts": t(4), "ns": "app.users", "op": "d", "o": { "_id": "c" } },
        doc! { "ts": t(5), "ns": "other.coll", "op": "i", "o": { "_id": 1 } },
        doc! { "ts": t(6), "ns": "", "op": "n", "o": { "msg": "periodic noop" } },
        // A collection created during the dump: not in the backup, created by the replay.
        doc! { "ts": t(7), "ns": "app.newcoll", "op": "i", "o": { "_id": 1 } },
    ];
    let s = restore(&client, archive(&data, &oplog), &RestoreOptions::default())
        .await
        .expect("restore");
    assert_eq!(s.oplog_replayed, 5);
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    assert_eq!(
        all_docs(&client, "app", "newcoll").await,
        [doc! { "_id": 1 }]
    );
    assert_eq!(s.namespaces[0].indexes, ["email_1"]);
    assert_eq!(
        all_docs(&client, "app", "users").await,
        [
            doc! { "_id": "a", "email": "z" },
            doc! { "_id": "b", "email": "x" }
        ]
    );
    let names: Vec<String> = client
        .database("other")
        .list_collection_names()
        .await
        .unwrap();
    assert!(names.is_empty(), "{names:?}");

    // Without replay the fuzzy copy breaks the unique index.
    let e = restore(
        &client,
        archive(&data, &oplog),
        &RestoreOptions {
            drop: true,
            replay_oplog: false,
            ..RestoreOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("email_1"), "{e}");

    // A MongoDB 5.0+ diff update is applied (an inserted field goes last).
    let diff = [
        doc! { "ts": t(9), "ns": "app.users", "op": "u", "o": { "$v": 2, "diff": { "u": { "email": "q" }, "i": { "z": 1 } } }, "o2": { "_id": "a" } },
    ];
    restore(
        &client,
        archive(&[doc! { "_id": "a", "email": "x" }], &diff),
        &RestoreOptions {
            drop: true,
            ..RestoreOptions::default()
        },
    )
    .await
    .expect("restore with a diff");
    let users = all_docs(&client, "app", "users").await;
    assert_eq!(
        bson::to_vec(&users[0]).unwrap(),
        bson::to_vec(&doc! { "_id": "a", "email": "q", "z": 1 }).unwrap()
    );

    // An entry of an unknown kind is refused, naming it, never skipped.
    let unknown = [doc! { "ts": t(9), "ns": "app.users", "op": "x", "o": { "_id": "a" } }];
    let e = restore(
        &client,
        archive(&[doc! { "_id": "a", "email": "x" }], &unknown),
        &RestoreOptions {
            drop: true,
            ..RestoreOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(e, MongoError::Unsupported(_)), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("Timestamp(1800000000, 9)") && msg.contains("app.users"),
        "{msg}"
    );
}
