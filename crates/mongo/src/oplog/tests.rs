use bson::{doc, Bson, Document, RawDocumentBuf, Timestamp};

use super::entry::{Command, Write};
use super::replay::{Action, ActionKind};
use super::*;

fn ts(i: u32) -> Timestamp {
    Timestamp {
        time: 1_700_000_000,
        increment: i,
    }
}

fn raw(d: &Document) -> RawDocumentBuf {
    RawDocumentBuf::from_document(d).unwrap()
}

fn seq(mode: Mode) -> Sequencer {
    Sequencer::new(Scope::all(), mode, true)
}

fn run(s: &mut Sequencer, e: Document) -> crate::Result<Vec<Action>> {
    s.push(&raw(&e))
}

fn one(e: Document) -> crate::Result<Vec<Action>> {
    run(&mut seq(Mode::Restore(ApplyPath::Translate)), e)
}

fn write_of(a: &Action) -> (&str, &str, &Write) {
    match &a.kind {
        ActionKind::Write { db, coll, write } => (db, coll, write),
        other => panic!("not a write: {other:?}"),
    }
}

fn cmd_of(a: &Action) -> (&str, &Command) {
    match &a.kind {
        ActionKind::Command { db, cmd } => (db, cmd),
        other => panic!("not a command: {other:?}"),
    }
}

#[test]
fn inserts_deletes_and_full_image_updates() {
    let a = one(doc! { "ts": ts(1), "ns": "a.b.c", "op": "i", "o": { "_id": 1, "x": 2 } }).unwrap();
    assert_eq!(
        write_of(&a[0]),
        (
            "a",
            "b.c",
            &Write::Upsert {
                id: Bson::Int32(1),
                doc: doc! { "_id": 1, "x": 2 }
            }
        )
    );
    let a = one(doc! { "ns": "a.b", "op": "d", "o": { "_id": 9 } }).unwrap();
    assert_eq!(write_of(&a[0]).2, &Write::Delete { id: Bson::Int32(9) });
    // FerretDB: $set of the full document.
    let a = one(doc! { "ns": "a.b", "op": "u",
    "o": { "$v": 1, "$set": { "_id": "k", "n": 41 } }, "o2": { "_id": "k" } })
    .unwrap();
    assert_eq!(
        write_of(&a[0]).2,
        &Write::Upsert {
            id: Bson::String("k".into()),
            doc: doc! { "_id": "k", "n": 41 }
        }
    );
    // Replacement, with o2 or (old FerretDB) without.
    for e in [
        doc! { "ns": "a.b", "op": "u", "o": { "_id": 3, "v": 1 }, "o2": { "_id": 3 } },
        doc! { "ns": "a.b", "op": "u", "o": { "_id": 3, "v": 1 } },
    ] {
        let a = one(e).unwrap();
        assert!(matches!(
            write_of(&a[0]).2,
            Write::Upsert {
                id: Bson::Int32(3),
                ..
            }
        ));
    }
    // Legacy partial update.
    let a = one(doc! { "ns": "a.b", "op": "u",
    "o": { "$v": 1, "$set": { "x.y": 2 }, "$unset": { "z": true } }, "o2": { "_id": 5 } })
    .unwrap();
    assert_eq!(
        write_of(&a[0]).2,
        &Write::Modify {
            id: Bson::Int32(5),
            update: doc! { "$set": { "x.y": 2 }, "$unset": { "z": true } }
        }
    );
    // Malformed.
    for e in [
        doc! { "ns": "a.b", "op": "i", "o": { "x": 1 } },
        doc! { "ns": "a.b", "op": "u", "o": { "v": 1 } },
        doc! { "ns": "a.b", "op": "u", "o": { "_id": 1 }, "o2": { "_id": 2 } },
        doc! { "ns": "a.b", "op": "u", "o": { "$v": 1, "$set": { "_id": "x" } }, "o2": { "_id": "y" } },
        doc! { "ns": "ab", "op": "i", "o": { "_id": 1 } },
        doc! { "ns": "a.b", "op": "i" },
    ] {
        assert!(
            matches!(one(e.clone()), Err(MongoError::Protocol { .. })),
            "{e}"
        );
    }
}

#[test]
fn v2_diffs_are_parsed_and_bad_ones_refused_naming_the_entry() {
    let a = one(doc! { "ts": ts(2), "ns": "a.b", "op": "u",
        "o": { "$v": 2, "diff": { "u": { "x": 1 }, "sy": { "a": true, "u0": 5 } } }, "o2": { "_id": 5 } })
    .unwrap();
    let Write::Diff { id, diff } = write_of(&a[0]).2 else {
        panic!()
    };
    assert_eq!(id, &Bson::Int32(5));
    assert_eq!(
        diff.apply(&doc! { "_id": 5, "y": [1, 2], "x": 0 }),
        doc! { "_id": 5, "y": [5, 2], "x": 1 }
    );
    let bad = [
        (doc! { "$v": 2, "diff": { "q": {} } }, "unexpected section"),
        (doc! { "$v": 2 }, "without a \"diff\""),
        (
            doc! { "$v": 2, "diff": { "u": { "_id": 7 } } },
            "changes _id",
        ),
        (
            doc! { "$v": 2, "diff": { "u": { "x": 1 } }, "$set": { "y": 1 } },
            "unexpected field",
        ),
    ];
    for (o, want) in bad {
        let e =
            one(doc! { "ts": ts(3), "ns": "a.b", "op": "u", "o": o.clone(), "o2": { "_id": 1 } })
                .unwrap_err();
        assert!(matches!(e, MongoError::Protocol { .. }), "{o}: {e}");
        let msg = e.to_string();
        assert!(
            msg.contains("Timestamp(1700000000, 3)") && msg.contains("a.b") && msg.contains(want),
            "{msg}"
        );
    }
    let e = one(doc! { "ns": "a.b", "op": "u",
        "o": { "$v": 2, "diff": { "b": { "f": { "o": 0, "d": Bson::Binary(bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![1] }) } } } },
        "o2": { "_id": 1 } })
    .unwrap_err();
    assert!(
        matches!(e, MongoError::Unsupported(_)) && e.to_string().contains("binary"),
        "{e}"
    );
    for o in [
        doc! { "$v": 1, "$inc": { "n": 1 } },
        doc! { "$v": 3, "$set": { "n": 1 } },
        doc! { "$v": 1 },
    ] {
        let e =
            one(doc! { "ns": "a.b", "op": "u", "o": o.clone(), "o2": { "_id": 1 } }).unwrap_err();
        assert!(matches!(e, MongoError::Unsupported(_)), "{o}: {e}");
    }
}

#[test]
fn unknown_kinds_are_refused_naming_the_entry() {
    let e = one(doc! { "ts": ts(4), "ns": "a.b", "op": "x", "o": {} }).unwrap_err();
    assert!(matches!(e, MongoError::Unsupported(_)), "{e}");
    assert!(
        e.to_string().contains("unknown op \"x\"")
            && e.to_string().contains("Timestamp(1700000000, 4)"),
        "{e}"
    );
    let e = one(doc! { "ts": ts(5), "ns": "a.$cmd", "op": "c", "o": { "frobnicate": "b" } })
        .unwrap_err();
    assert!(
        e.to_string().contains("unknown command \"frobnicate\""),
        "{e}"
    );
    let e = one(doc! { "ns": "a.$cmd", "op": "c", "o": { "importCollection": "b" } }).unwrap_err();
    assert!(e.to_string().contains("importCollection"), "{e}");
    // No-ops and what mongorestore ignores.
    for e in [
        doc! { "ns": "", "op": "n", "o": { "msg": "x" } },
        doc! { "ns": "a.b", "op": "km", "o": {} },
        doc! { "ns": "config.system.sessions", "op": "i", "o": { "_id": 1 } },
        doc! { "ns": "a.$cmd", "op": "c", "o": { "startIndexBuild": "b" } },
        doc! { "ns": "a.$cmd", "op": "c", "o": { "dbCheck": "b" } },
    ] {
        assert!(one(e.clone()).unwrap().is_empty(), "{e}");
    }
}

#[test]
fn entries_outside_the_scope_are_not_looked_at() {
    let scope = Scope::selection([("a", Some("b")), ("d", None)]);
    let mut s = Sequencer::new(scope, Mode::Restore(ApplyPath::Translate), true);
    // Unsupported forms outside the scope are no error.
    for e in [
        doc! { "ns": "z.b", "op": "u", "o": { "$v": 2, "diff": {} }, "o2": { "_id": 1 } },
        doc! { "ns": "a.c", "op": "x", "o": {} },
        doc! { "ns": "z.$cmd", "op": "c", "o": { "frobnicate": 1 } },
        doc! { "ns": "a.$cmd", "op": "c", "o": { "drop": "c" } },
        doc! { "ns": "admin.system.users", "op": "i", "o": { "_id": 1 } },
    ] {
        assert!(run(&mut s, e.clone()).unwrap().is_empty(), "{e}");
    }
    assert_eq!(
        run(&mut s, doc! { "ns": "a.b", "op": "d", "o": { "_id": 1 } })
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        run(&mut s, doc! { "ns": "d.new", "op": "i", "o": { "_id": 1 } })
            .unwrap()
            .len(),
        1
    );
    let r = s.finish();
    assert_eq!(r.entries, 7);
    assert_eq!(r.actions, 2);
    assert_eq!(
        r.touched.into_iter().collect::<Vec<_>>(),
        [
            ("a".to_string(), "b".to_string()),
            ("d".into(), "new".into())
        ]
    );
}

#[test]
fn commands_are_parsed() {
    let c = |o: Document| {
        let a = one(doc! { "ts": ts(6), "ns": "a.$cmd", "op": "c", "o": o }).unwrap();
        assert_eq!(a.len(), 1);
        let (db, cmd) = cmd_of(&a[0]);
        assert_eq!(db, "a");
        cmd.clone()
    };
    assert_eq!(
        c(
            doc! { "create": "b", "capped": true, "size": 4096, "idIndex": { "v": 2, "key": { "_id": 1 }, "name": "_id_" } }
        ),
        Command::Create {
            coll: "b".into(),
            options: doc! { "capped": true, "size": 4096 }
        }
    );
    assert_eq!(c(doc! { "drop": "b" }), Command::Drop { coll: "b".into() });
    assert_eq!(c(doc! { "dropDatabase": 1 }), Command::DropDatabase);
    assert_eq!(
        c(doc! { "createIndexes": "b", "v": 2, "key": { "x": 1 }, "name": "x_1", "unique": true }),
        Command::AddIndexes {
            coll: "b".into(),
            specs: vec![doc! { "v": 2, "key": { "x": 1 }, "name": "x_1", "unique": true }]
        }
    );
    assert_eq!(
        c(
            doc! { "commitIndexBuild": "b", "indexBuildUUID": 1, "indexes": [{ "v": 2, "key": { "y": -1 }, "name": "y_-1" }] }
        ),
        Command::AddIndexes {
            coll: "b".into(),
            specs: vec![doc! { "v": 2, "key": { "y": -1 }, "name": "y_-1" }]
        }
    );
    assert_eq!(
        c(doc! { "dropIndexes": "b", "index": "x_1" }),
        Command::DropIndexes {
            coll: "b".into(),
            which: Bson::String("x_1".into())
        }
    );
    assert_eq!(
        c(
            doc! { "collMod": "b", "index": { "name": "t_1", "expireAfterSeconds": 60 }, "validationLevel": "off" }
        ),
        Command::CollMod {
            coll: "b".into(),
            index: Some(doc! { "name": "t_1", "expireAfterSeconds": 60 }),
            options: doc! { "validationLevel": "off" }
        }
    );
    assert_eq!(
        c(doc! { "emptycapped": "b" }),
        Command::EmptyCapped { coll: "b".into() }
    );
    let a = one(doc! { "ns": "admin.$cmd", "op": "c",
    "o": { "renameCollection": "a.b", "to": "a.c", "stayTemp": false, "dropTarget": true } })
    .unwrap();
    assert_eq!(
        cmd_of(&a[0]).1,
        &Command::Rename {
            from: ("a".into(), "b".into()),
            to: ("a".into(), "c".into()),
            drop_target: true
        }
    );
    for o in [
        doc! { "createIndexes": "b", "name": "x" },
        doc! { "dropIndexes": "b" },
        doc! { "renameCollection": "ab", "to": "a.c" },
        doc! { "drop": 1 },
        doc! {},
    ] {
        let e = one(doc! { "ns": "a.$cmd", "op": "c", "o": o.clone() }).unwrap_err();
        assert!(matches!(e, MongoError::Protocol { .. }), "{o}: {e}");
    }
}

fn txn_entry(i: u32, prev: Option<u32>, o: Document) -> Document {
    let prev = match prev {
        Some(p) => doc! { "ts": ts(p), "t": 1_i64 },
        None => doc! { "ts": Timestamp { time: 0, increment: 0 }, "t": -1_i64 },
    };
    doc! { "ts": ts(i), "ns": "admin.$cmd", "op": "c", "o": o,
    "lsid": { "id": 7 }, "txnNumber": 3_i64, "prevOpTime": prev }
}

fn ins(ns: &str, id: i32) -> Document {
    doc! { "op": "i", "ns": ns, "ui": 1, "o": { "_id": id } }
}

/// Feeds a transaction entry `i` (after `prev`) with `o`; asserts it applies nothing yet.
fn held(s: &mut Sequencer, i: u32, prev: Option<u32>, o: Document) {
    let a = run(s, txn_entry(i, prev, o.clone())).unwrap();
    assert!(a.is_empty(), "{o}: {a:?}");
}

#[test]
fn transactions_are_applied_at_their_commit() {
    // One entry: applied at once, operations outside the scope left out.
    let mut s = Sequencer::new(
        Scope::databases(["a"]),
        Mode::Restore(ApplyPath::Translate),
        true,
    );
    let a = run(
        &mut s,
        txn_entry(
            1,
            None,
            doc! { "applyOps": [ins("a.b", 1), ins("z.b", 2), ins("a.c", 3)] },
        ),
    )
    .unwrap();
    assert_eq!(
        a.iter().map(|a| write_of(a).1).collect::<Vec<_>>(),
        ["b", "c"]
    );
    assert!(
        a[0].name
            .contains("operation 0 of oplog entry Timestamp(1700000000, 1)"),
        "{}",
        a[0].name
    );

    // A chain of partial entries: nothing until the last one, then everything in order.
    let mut s = seq(Mode::Restore(ApplyPath::Translate));
    held(
        &mut s,
        1,
        None,
        doc! { "applyOps": [ins("a.b", 1)], "partialTxn": true },
    );
    assert!(
        run(
            &mut s,
            doc! { "ts": ts(2), "ns": "a.b", "op": "i", "o": { "_id": 100 } }
        )
        .unwrap()
        .len()
            == 1
    );
    held(
        &mut s,
        3,
        Some(1),
        doc! { "applyOps": [ins("a.b", 2)], "partialTxn": true },
    );
    let a = run(
        &mut s,
        txn_entry(4, Some(3), doc! { "applyOps": [ins("a.b", 3)], "count": 3 }),
    )
    .unwrap();
    let ids: Vec<&Bson> = a
        .iter()
        .map(|a| match write_of(a).2 {
            Write::Upsert { id, .. } => id,
            _ => panic!(),
        })
        .collect();
    assert_eq!(ids, [&Bson::Int32(1), &Bson::Int32(2), &Bson::Int32(3)]);
    let r = s.finish();
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert_eq!(r.actions, 4);

    // Prepared: applied at commitTransaction; an aborted one never.
    let mut s = seq(Mode::Restore(ApplyPath::Translate));
    held(
        &mut s,
        1,
        None,
        doc! { "applyOps": [ins("a.b", 1)], "prepare": true },
    );
    let a = run(
        &mut s,
        txn_entry(
            2,
            Some(1),
            doc! { "commitTransaction": 1, "commitTimestamp": ts(2) },
        ),
    )
    .unwrap();
    assert_eq!(a.len(), 1);
    let mut s = seq(Mode::Restore(ApplyPath::Translate));
    held(
        &mut s,
        1,
        None,
        doc! { "applyOps": [ins("a.b", 1)], "prepare": true },
    );
    held(&mut s, 2, Some(1), doc! { "abortTransaction": 1 });
    assert_eq!(s.finish().actions, 0);

    // Not committed by the end of the window: not applied, reported.
    let mut s = seq(Mode::Restore(ApplyPath::Translate));
    held(
        &mut s,
        1,
        None,
        doc! { "applyOps": [ins("a.b", 1)], "partialTxn": true },
    );
    let r = s.finish();
    assert_eq!(r.actions, 0);
    assert!(r.warnings[0].contains("not committed"), "{:?}", r.warnings);

    // multiOpType 1 (batched writes) is no transaction.
    let mut e = txn_entry(
        1,
        None,
        doc! { "applyOps": [ins("a.b", 1)], "partialTxn": true },
    );
    e.insert("multiOpType", 1);
    assert_eq!(one(e).unwrap().len(), 1);
}

#[test]
fn broken_transaction_chains_are_refused() {
    // Its first entries precede the window.
    let e = one(txn_entry(5, Some(4), doc! { "applyOps": [ins("a.b", 1)] })).unwrap_err();
    assert!(
        e.to_string().contains("precede the backup's oplog window"),
        "{e}"
    );
    let e = one(txn_entry(5, Some(4), doc! { "commitTransaction": 1 })).unwrap_err();
    assert!(e.to_string().contains("precede"), "{e}");
    // An entry that does not follow the previous one.
    let mut s = seq(Mode::Verify);
    run(
        &mut s,
        txn_entry(
            1,
            None,
            doc! { "applyOps": [ins("a.b", 1)], "partialTxn": true },
        ),
    )
    .unwrap();
    let e = run(
        &mut s,
        txn_entry(3, Some(2), doc! { "applyOps": [ins("a.b", 2)] }),
    )
    .unwrap_err();
    assert!(e.to_string().contains("does not follow"), "{e}");
    // An inner operation of an unknown kind fails the whole entry, naming it.
    let e = one(txn_entry(
        1,
        None,
        doc! { "applyOps": [{ "op": "q", "ns": "a.b", "o": {} }] },
    ))
    .unwrap_err();
    assert!(e.to_string().contains("operation 0 of oplog entry"), "{e}");
}

#[test]
fn what_each_mode_refuses() {
    let rename = doc! { "ts": ts(8), "ns": "admin.$cmd", "op": "c", "o": { "renameCollection": "a.b", "to": "a.c" } };
    // A backup refuses renames (as mongodump does); a restore applies them.
    let e = run(
        &mut Sequencer::new(Scope::databases(["a"]), Mode::Backup, false),
        rename.clone(),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("renameCollection a.b to a.c during the backup"),
        "{e}"
    );
    assert_eq!(one(rename.clone()).unwrap().len(), 1);
    // ... unless it crosses the selection.
    let mut s = Sequencer::new(Scope::selection([("a", Some("b"))]), Mode::Verify, false);
    assert!(run(&mut s, rename)
        .unwrap_err()
        .to_string()
        .contains("crosses the restore's selection"));

    // Views: recorded by the verify pass, refused when replayed as ordinary writes, passed
    // to applyOps.
    let view = doc! { "ts": ts(9), "ns": "a.$cmd", "op": "c", "o": { "create": "v", "viewOn": "b", "pipeline": [] } };
    let mut s = seq(Mode::Verify);
    assert_eq!(run(&mut s, view.clone()).unwrap().len(), 1);
    let r = s.finish();
    assert!(
        r.translate_refusal
            .as_deref()
            .is_some_and(|m| m.contains("viewOn") && m.contains("Timestamp(1700000000, 9)")),
        "{r:?}"
    );
    assert!(matches!(one(view.clone()), Err(MongoError::Unsupported(_))));
    let a = run(&mut seq(Mode::Restore(ApplyPath::ApplyOps)), view).unwrap();
    assert_eq!(a.len(), 1);
    // The applyOps path sends the entry as logged, without the collection UUID.
    let a = run(
        &mut seq(Mode::Restore(ApplyPath::ApplyOps)),
        doc! { "ts": ts(10), "ns": "a.b", "op": "i", "ui": 5, "o": { "_id": 1 } },
    )
    .unwrap();
    assert_eq!(
        a[0].raw,
        doc! { "ts": ts(10), "ns": "a.b", "op": "i", "o": { "_id": 1 } }
    );
    // A backup does not know its target: only what no target can apply is refused.
    let mut s = Sequencer::new(Scope::databases(["a"]), Mode::Backup, false);
    run(
        &mut s,
        doc! { "ns": "a.$cmd", "op": "c", "o": { "convertToCapped": "b", "size": 100 } },
    )
    .unwrap();
    assert!(s.finish().translate_refusal.is_none());
}
