use bson::{doc, Document};
use proptest::prelude::*;

use super::*;
use crate::archive::{ArchiveWriter, MAGIC};
use crate::logical::metadata_json;

fn id_index() -> Document {
    doc! { "v": 2, "key": { "_id": 1 }, "name": "_id_" }
}

fn meta(db: &str, coll: &str, options: &Document, indexes: &[Document]) -> CollectionMetadata {
    CollectionMetadata::collection(
        db,
        coll,
        metadata_json(
            options,
            indexes,
            Some("0123456789abcdef0123456789abcdef"),
            coll,
            Some("collection"),
        ),
    )
}

fn docs(range: std::ops::Range<i32>, pad: usize) -> Vec<u8> {
    range
        .flat_map(|i| bson::to_vec(&doc! { "_id": i, "s": "x".repeat(pad) }).unwrap())
        .collect()
}

/// Builds an archive from `(metadata, segments)`; segments of different namespaces are
/// written round-robin (interleaved), each namespace closed after its last segment.
fn build(namespaces: Vec<(CollectionMetadata, Vec<Vec<u8>>)>) -> Vec<u8> {
    let header = ArchiveHeader::new(4, "7.0.0", "restore-tests");
    let mut w = ArchiveWriter::new(Vec::new(), &header).unwrap();
    let mut idx = Vec::new();
    for (m, _) in &namespaces {
        idx.push(w.add_namespace(m.clone()).unwrap());
    }
    w.finish_prelude().unwrap();
    let rounds = namespaces.iter().map(|(_, s)| s.len()).max().unwrap_or(0);
    for round in 0..=rounds {
        for (i, (_, segs)) in namespaces.iter().enumerate() {
            if round < segs.len() {
                w.write_segment(idx[i], &segs[round]).unwrap();
            } else if round == segs.len() {
                w.close_namespace(idx[i]).unwrap();
            }
        }
    }
    w.finish().unwrap()
}

/// The fixture of the corruption tests: interleaved segments, an empty collection, a
/// capped collection with options, a unique index and an oplog namespace.
fn fixture() -> Vec<u8> {
    let users = meta(
        "shop",
        "users",
        &Document::new(),
        &[
            id_index(),
            doc! { "v": 2, "key": { "email": 1 }, "name": "email_1", "unique": true },
        ],
    );
    let empty = meta("shop", "empty", &Document::new(), &[id_index()]);
    let capped = meta(
        "logs",
        "capped",
        &doc! { "capped": true, "size": 4096_i64, "max": 10 },
        &[id_index()],
    );
    let oplog_docs: Vec<u8> = (0..2)
        .flat_map(|i| {
            bson::to_vec(&doc! { "ts": bson::Timestamp { time: 1, increment: i }, "op": "i", "ns": "shop.users", "o": { "_id": i } })
                .unwrap()
        })
        .collect();
    build(vec![
        (users, vec![docs(0..2, 10), docs(2..4, 3)]),
        (empty, vec![]),
        (capped, vec![docs(0..3, 1)]),
        (CollectionMetadata::oplog(), vec![oplog_docs]),
    ])
}

// ---------------------------------------------------------------------------------------
// Selection, options and index filters
// ---------------------------------------------------------------------------------------

#[test]
fn selector_matching() {
    let db = NsSelector::database("shop");
    assert!(db.matches("shop", "users"));
    assert!(db.matches("shop", "system.js"));
    assert!(!db.matches("shop2", "users"));
    assert!(!db.matches("Shop", "users"), "names are case-sensitive");
    assert!(!db.matches("", "oplog"));

    let c = NsSelector::collection("shop", "users");
    assert!(c.matches("shop", "users"));
    assert!(!c.matches("shop", "users2"));
    assert!(!c.matches("shop", "user"));
    assert!(!c.matches("other", "users"));
    // A collection name containing dots is still one name, not a prefix.
    assert!(!NsSelector::collection("a", "b").matches("a", "b.c"));
    assert!(NsSelector::collection("a", "b.c").matches("a", "b.c"));

    assert_eq!(db.to_string(), "shop.*");
    assert_eq!(c.to_string(), "shop.users");

    for bad in [
        NsSelector::database(""),
        NsSelector::database("a.b"),
        NsSelector::database("a/b"),
        NsSelector::collection("a", ""),
    ] {
        let opts = RestoreOptions {
            select: vec![bad.clone()],
            ..Default::default()
        };
        assert!(
            matches!(opts.validate(), Err(MongoError::InvalidArgument(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn options_validation() {
    assert!(RestoreOptions::default().validate().is_ok());
    for bad in [
        RestoreOptions {
            parallel_collections: 0,
            ..Default::default()
        },
        RestoreOptions {
            batch_docs: 0,
            ..Default::default()
        },
        RestoreOptions {
            batch_docs: MAX_BATCH_DOCS + 1,
            ..Default::default()
        },
        RestoreOptions {
            batch_bytes: 0,
            ..Default::default()
        },
        RestoreOptions {
            batch_bytes: MAX_BSON_SIZE + 1,
            ..Default::default()
        },
        RestoreOptions {
            channel_batches: 0,
            ..Default::default()
        },
    ] {
        assert!(
            matches!(bad.validate(), Err(MongoError::InvalidArgument(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn collection_options_keep_only_capped_size_max() {
    // What real MongoDB lists for a capped collection with a validator and a collation.
    let opts = doc! {
        "capped": true, "size": 1_048_576_i64, "max": 1000,
        "validator": { "$jsonSchema": { "bsonType": "object" } },
        "validationLevel": "strict", "validationAction": "error",
        "collation": { "locale": "fr" },
        "storageEngine": { "wiredTiger": {} },
    };
    let (cmd, dropped) = create_command("c", &opts).unwrap();
    assert_eq!(
        cmd,
        doc! { "create": "c", "capped": true, "size": 1_048_576_i64, "max": 1000_i64 }
    );
    assert_eq!(
        dropped,
        [
            "validator",
            "validationLevel",
            "validationAction",
            "collation",
            "storageEngine"
        ]
    );

    // Plain collection: nothing but the name; `capped: false` is the default, not a loss.
    assert_eq!(
        create_command("c", &doc! { "capped": false }).unwrap(),
        (doc! { "create": "c" }, vec![])
    );
    assert_eq!(
        create_command("c", &Document::new()).unwrap(),
        (doc! { "create": "c" }, vec![])
    );
    // size/max without capped mean nothing: reported, not sent.
    assert_eq!(
        create_command("c", &doc! { "size": 10 }).unwrap().1,
        ["size"]
    );
    // Sizes as int32 or integral double; max ≤ 0 means "no limit" and is not sent.
    assert_eq!(
        create_command("c", &doc! { "capped": true, "size": 4096.0, "max": 0 })
            .unwrap()
            .0,
        doc! { "create": "c", "capped": true, "size": 4096_i64 }
    );
    assert_eq!(
        create_command("c", &doc! { "capped": true, "size": 4096, "max": -1_i64 })
            .unwrap()
            .0,
        doc! { "create": "c", "capped": true, "size": 4096_i64 }
    );
    // Unusable capped options are errors, not silent changes.
    for bad in [
        doc! { "capped": true },
        doc! { "capped": true, "size": 0 },
        doc! { "capped": true, "size": 1.5 },
        doc! { "capped": true, "size": "big" },
        doc! { "capped": true, "size": 10, "max": "x" },
        doc! { "capped": "yes", "size": 10 },
    ] {
        assert!(create_command("c", &bad).is_err(), "{bad}");
    }
}

#[test]
fn index_specs_are_cut_to_what_ferretdb_accepts() {
    assert_eq!(clean_index(&id_index()), None);
    // An `_id` index under another name is still the `_id` index.
    assert_eq!(
        clean_index(&doc! { "key": { "_id": 1 }, "name": "primary" }),
        None
    );
    // mongorestore adds `ns`; listIndexes gives `v`; `background` is a no-op.
    let (spec, dropped) = clean_index(&doc! {
        "v": 2, "key": { "email": 1 }, "name": "email_1", "unique": true,
        "ns": "shop.users", "background": true,
    })
    .unwrap();
    assert_eq!(
        spec,
        doc! { "key": { "email": 1 }, "name": "email_1", "unique": true }
    );
    assert!(dropped.is_empty());

    // Compound key order is preserved; `unique: false` is not sent.
    let (spec, _) = clean_index(&doc! {
        "v": 2, "key": { "a": 1, "b": -1 }, "name": "a_1_b_-1", "unique": false,
    })
    .unwrap();
    assert_eq!(
        spec,
        doc! { "key": { "a": 1, "b": -1 }, "name": "a_1_b_-1" }
    );
    assert_eq!(
        spec.get_document("key").unwrap().keys().collect::<Vec<_>>(),
        ["a", "b"]
    );

    // Semantic options are sent only when present.
    let (spec, dropped) = clean_index(&doc! {
        "v": 2, "key": { "t": 1 }, "name": "ttl", "expireAfterSeconds": 60,
        "sparse": true, "partialFilterExpression": { "t": { "$exists": true } },
        "collation": { "locale": "fr" }, "hidden": false,
    })
    .unwrap();
    assert_eq!(
        spec,
        doc! {
            "key": { "t": 1 }, "name": "ttl", "expireAfterSeconds": 60, "sparse": true,
            "partialFilterExpression": { "t": { "$exists": true } },
        }
    );
    assert_eq!(dropped, ["collation", "hidden"]);
}

// ---------------------------------------------------------------------------------------
// Batching
// ---------------------------------------------------------------------------------------

/// Packs document lengths exactly as the apply reader does (its `add`/`flush`).
fn batches(limits: BatchLimits, lens: &[usize]) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    for &len in lens {
        if limits.overflows(cur.len(), cur.iter().sum(), len) {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(len);
        if limits.is_full(cur.len(), cur.iter().sum()) {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[test]
fn batching_boundaries() {
    let l = |docs, bytes| BatchLimits { docs, bytes };
    // batch_docs: exactly N documents per batch, sent as soon as it is full.
    assert_eq!(
        batches(l(3, 1000), &[10; 7]),
        [vec![10; 3], vec![10; 3], vec![10]]
    );
    assert_eq!(batches(l(3, 1000), &[10; 6]), [vec![10; 3], vec![10; 3]]);
    assert_eq!(batches(l(1, 1000), &[10; 2]), [vec![10], vec![10]]);
    // batch_bytes: a document that fits exactly stays; one byte more starts a new batch.
    assert_eq!(batches(l(100, 100), &[60, 40, 1]), [vec![60, 40], vec![1]]);
    assert_eq!(batches(l(100, 100), &[60, 41]), [vec![60], vec![41]]);
    assert_eq!(batches(l(100, 100), &[60, 39, 2]), [vec![60, 39], vec![2]]);
    // A document larger than batch_bytes travels alone (it is ≤ 16 MiB).
    assert_eq!(
        batches(l(100, 100), &[5, 500, 5, 5]),
        [vec![5], vec![500], vec![5, 5]]
    );
    assert_eq!(batches(l(100, 100), &[100, 100]), [vec![100], vec![100]]);
    assert!(batches(l(10, 10), &[]).is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Batches keep order, respect both limits (bar a lone oversized document) and are
    /// greedy: no batch could have taken the next batch's first document.
    #[test]
    fn batching_respects_limits(
        lens in proptest::collection::vec(5usize..300, 0..200),
        max_docs in 1usize..20,
        max_bytes in 5usize..1000,
    ) {
        let limits = BatchLimits { docs: max_docs, bytes: max_bytes };
        let out = batches(limits, &lens);
        prop_assert_eq!(out.concat(), lens.clone());
        for (i, b) in out.iter().enumerate() {
            prop_assert!(!b.is_empty());
            prop_assert!(b.len() <= max_docs);
            let bytes: usize = b.iter().sum();
            prop_assert!(bytes <= max_bytes || b.len() == 1);
            if let Some(next) = out.get(i + 1) {
                prop_assert!(b.len() == max_docs || bytes + next[0] > max_bytes);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// verify_archive
// ---------------------------------------------------------------------------------------

#[test]
fn verify_counts_every_namespace() {
    let a = fixture();
    let s = verify_archive(a.as_slice()).unwrap();
    let names: Vec<String> = s.namespaces.iter().map(|(m, _)| m.namespace()).collect();
    assert_eq!(names, ["shop.users", "shop.empty", "logs.capped", ".oplog"]);
    let counts: Vec<u64> = s.namespaces.iter().map(|(_, st)| st.documents).collect();
    assert_eq!(counts, [4, 0, 3, 2]);
    assert_eq!(s.documents, 9);
    assert_eq!(
        s.bytes,
        s.namespaces.iter().map(|(_, st)| st.bytes).sum::<u64>()
    );
    let users_bytes = docs(0..2, 10).len() + docs(2..4, 3).len();
    assert_eq!(s.namespaces[0].1.bytes, users_bytes as u64);
    assert_eq!(s.header.tool_version, "restore-tests");
}

#[test]
fn verify_rejects_every_truncation() {
    let a = fixture();
    for len in 0..a.len() {
        assert!(
            verify_archive(&a[..len]).is_err(),
            "prefix of {len} of {} bytes accepted",
            a.len()
        );
    }
}

fn metadata_error(m: CollectionMetadata) -> String {
    let a = build(vec![(m, vec![])]);
    match verify_archive(a.as_slice()) {
        Err(e @ MongoError::Archive(ArchiveError::Invalid { .. })) => e.to_string(),
        other => panic!("expected an archive error, got {other:?}"),
    }
}

#[test]
fn verify_checks_prelude_entries() {
    let good = meta("d", "c", &Document::new(), &[id_index()]);
    assert!(verify_archive(build(vec![(good.clone(), vec![])]).as_slice()).is_ok());

    let e = metadata_error(CollectionMetadata {
        metadata: "{\"indexes\":[".into(),
        ..good.clone()
    });
    assert!(e.contains("\"d.c\"") && e.contains("not valid JSON"), "{e}");
    let e = metadata_error(CollectionMetadata {
        metadata: metadata_json(&Document::new(), &[], None, "other", None),
        ..good.clone()
    });
    assert!(e.contains("names collection \"other\""), "{e}");
    let e = metadata_error(CollectionMetadata {
        metadata: r#"{"collectionName":"c"}"#.into(),
        ..good.clone()
    });
    assert!(e.contains("no \"indexes\""), "{e}");
    let e = metadata_error(CollectionMetadata {
        metadata: r#"{"indexes":[{"name":"x"}],"collectionName":"c"}"#.into(),
        ..good.clone()
    });
    assert!(e.contains("no \"key\""), "{e}");
    let e = metadata_error(CollectionMetadata {
        metadata: r#"{"indexes":[],"collectionName":"c","options":{"size":{"$numberLong":"x"}}}"#
            .into(),
        ..good.clone()
    });
    assert!(e.contains("Extended JSON"), "{e}");
    let e = metadata_error(CollectionMetadata {
        collection_type: "collectiom".into(),
        ..good.clone()
    });
    assert!(e.contains("unknown collection type"), "{e}");
    let e = metadata_error(CollectionMetadata {
        metadata: String::new(),
        ..good.clone()
    });
    assert!(e.contains("no metadata for a collection"), "{e}");
    let e = metadata_error(CollectionMetadata {
        db: String::new(),
        collection: "notoplog".into(),
        metadata: String::new(),
        size: 0,
        collection_type: String::new(),
    });
    assert!(e.contains("empty database"), "{e}");

    // Entries without metadata that mongodump really writes are fine.
    let special = CollectionMetadata {
        metadata: String::new(),
        ..CollectionMetadata::collection("shop", "$admin.system.users", "")
    };
    let untyped = CollectionMetadata {
        collection_type: String::new(),
        metadata: String::new(),
        ..good
    };
    let a = build(vec![
        (special, vec![]),
        (untyped, vec![]),
        (CollectionMetadata::oplog(), vec![]),
    ]);
    assert!(verify_archive(a.as_slice()).is_ok());
}

/// Where a byte of a (valid) archive lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Region {
    Magic,
    /// `FF FF FF FF` block terminators.
    Terminator,
    /// The archive header document (informational: versions, concurrency).
    ArchiveHeader,
    /// A prelude entry, except the text of its `metadata` string.
    PreludeEntry,
    /// The text bytes of a prelude entry's `metadata` string (`metadata.json`).
    MetadataText,
    /// A namespace header (`{db, collection, EOF, CRC}`).
    NamespaceHeader,
    /// A body document, length prefix to trailing zero.
    Document,
}

/// Labels every byte of a valid archive by walking its blocks.
fn regions(a: &[u8]) -> Vec<Region> {
    let mut r = vec![Region::Magic; a.len()];
    let mut pos = 4;
    let mut block = 0;
    let mut first = true;
    while pos < a.len() {
        let len = i32::from_le_bytes(a[pos..pos + 4].try_into().unwrap());
        if len == -1 {
            r[pos..pos + 4].fill(Region::Terminator);
            pos += 4;
            block += 1;
            first = true;
            continue;
        }
        let end = pos + usize::try_from(len).unwrap();
        let kind = match (block, first) {
            (0, true) => Region::ArchiveHeader,
            (0, false) => Region::PreludeEntry,
            (_, true) => Region::NamespaceHeader,
            (_, false) => Region::Document,
        };
        r[pos..end].fill(kind);
        if kind == Region::PreludeEntry {
            let key = b"\x02metadata\x00";
            let at = a[pos..end]
                .windows(key.len())
                .position(|w| w == key)
                .unwrap()
                + pos
                + key.len();
            let n = i32::from_le_bytes(a[at..at + 4].try_into().unwrap());
            let text = at + 4;
            // The string's bytes without its trailing NUL.
            r[text..text + usize::try_from(n).unwrap() - 1].fill(Region::MetadataText);
        }
        first = false;
        pos = end;
    }
    r
}

/// What a restore takes from a verified archive: every namespace's identity, kind and
/// metadata, and its data (count, bytes, CRC-64, which identifies the byte sequence as
/// far as a one-byte change goes). The archive header is informational and not part of it.
type Content = Vec<(String, String, String, String, NamespaceStats)>;

fn content(s: &ArchiveSummary) -> Content {
    s.namespaces
        .iter()
        .map(|(m, st)| {
            // Restore treats an untyped non-oplog entry as a collection.
            let kind = if m.collection_type.is_empty() && !m.db.is_empty() {
                "collection".to_string()
            } else {
                m.collection_type.clone()
            };
            (
                m.db.clone(),
                m.collection.clone(),
                kind,
                m.metadata.clone(),
                *st,
            )
        })
        .collect()
}

/// Every byte of the fixture, flipped with four masks (one bit low, one bit high, all
/// bits, and a pseudo-random non-zero mask per offset). What is asserted, by region:
///
/// * magic, terminators, body documents (length prefix to trailing zero): every flip is
///   **rejected**. Framing flips break the parser's length/terminator/trailing-zero
///   rules; any change inside documents is caught by the namespace's CRC-64, which
///   detects every error burst of up to 64 bits, so detection is guaranteed, not likely.
/// * namespace headers, prelude entries (outside the metadata text) and the archive
///   header: every flip is rejected **or** leaves the restore content unchanged
///   (`content` above). The format tolerates some changes there that mean nothing: the
///   `CRC` of a non-EOF header, a renamed `CRC` key where the CRC is 0 (empty
///   namespace), the informational header fields and the prelude's `size`.
/// * metadata text (the bytes of each `metadata.json` string): **not covered** by any
///   checksum of the mongodump format. Flips there are caught only when they break the
///   JSON/Extended JSON, the required keys or the `collectionName` check; otherwise they
///   can change index or collection options undetected. The test asserts that such a
///   flip can change nothing but that one namespace's metadata (never data, never
///   another namespace). Stored backups are protected end to end by the SHA-256 the
///   dump records for the whole archive file.
#[test]
fn verify_detects_byte_flips_by_region() {
    let a = fixture();
    let labels = regions(&a);
    let original = content(&verify_archive(a.as_slice()).unwrap());
    let mut stats: std::collections::BTreeMap<Region, (u32, u32, u32)> = Default::default();
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    for (i, &region) in labels.iter().enumerate() {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let random = (rng as u8).max(1);
        for mask in [0x01, 0x80, 0xff, random] {
            let mut b = a.clone();
            b[i] ^= mask;
            let entry = stats.entry(region).or_default();
            let outcome = verify_archive(b.as_slice());
            let Ok(summary) = outcome else {
                entry.0 += 1;
                continue;
            };
            let got = content(&summary);
            let what = format!("flip {mask:#04x} at {i} ({region:?}) accepted");
            match region {
                Region::Magic | Region::Terminator | Region::Document => panic!("{what}"),
                Region::NamespaceHeader | Region::PreludeEntry | Region::ArchiveHeader => {
                    assert_eq!(got, original, "{what} and changed the content");
                    entry.1 += 1;
                }
                Region::MetadataText => {
                    assert_eq!(got.len(), original.len(), "{what}");
                    let changed: Vec<usize> =
                        (0..got.len()).filter(|&k| got[k] != original[k]).collect();
                    for &k in &changed {
                        let (g, o) = (&got[k], &original[k]);
                        assert_eq!((&g.0, &g.1, &g.2, &g.4), (&o.0, &o.1, &o.2, &o.4), "{what}");
                    }
                    assert!(changed.len() <= 1, "{what}: changed {changed:?}");
                    if changed.is_empty() {
                        entry.1 += 1;
                    } else {
                        entry.2 += 1;
                    }
                }
            }
        }
    }
    // Make the coverage visible (`--nocapture`): rejected / accepted harmless / accepted
    // with changed metadata, per region.
    for (region, (rejected, harmless, changed)) in &stats {
        eprintln!(
            "{region:?}: {rejected} rejected, {harmless} harmless, {changed} metadata changed"
        );
    }
    // Every region of the fixture was exercised.
    assert_eq!(stats.len(), 7, "{stats:?}");
    // The format's tolerance is narrow: most flips outside the metadata text are rejected.
    for region in [
        Region::NamespaceHeader,
        Region::PreludeEntry,
        Region::ArchiveHeader,
    ] {
        let (rejected, harmless, _) = stats[&region];
        assert!(rejected > harmless, "{region:?}: {stats:?}");
    }
}

#[test]
fn verify_names_the_corrupt_namespace() {
    let a = fixture();
    let labels = regions(&a);
    // Last byte of the first document before its trailing zero: inside shop.users' data.
    let at = labels.iter().position(|r| *r == Region::Document).unwrap() + 10;
    let mut b = a.clone();
    b[at] ^= 0x20;
    let e = verify_archive(b.as_slice()).unwrap_err();
    assert!(
        matches!(
            e,
            MongoError::Archive(ArchiveError::Invalid {
                violation: Violation::CrcMismatch { .. },
                ..
            })
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("\"shop.users\""), "{e}");
    assert!(e.is_permanent());

    let e = verify_archive(&a[..a.len() - 3]).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
    let mut b = a.clone();
    b[0] ^= 1;
    assert!(verify_archive(b.as_slice())
        .unwrap_err()
        .to_string()
        .contains("magic"));
    assert_eq!(&a[..4], &MAGIC.to_le_bytes());
}

// ---------------------------------------------------------------------------------------
// archive_databases and planning
// ---------------------------------------------------------------------------------------

#[test]
fn archive_databases_lists_restorable_databases_from_the_prelude() {
    let a = build(vec![
        (meta("zeta", "c", &Document::new(), &[]), vec![]),
        (meta("alpha", "c", &Document::new(), &[]), vec![]),
        (meta("zeta", "d", &Document::new(), &[]), vec![]),
        (meta("admin", "system.users", &Document::new(), &[]), vec![]),
        (CollectionMetadata::oplog(), vec![]),
    ]);
    assert_eq!(archive_databases(a.as_slice()).unwrap(), ["alpha", "zeta"]);
    // Only the prelude is read: a damaged body does not matter here.
    let cut = a.len() - 10;
    assert_eq!(archive_databases(&a[..cut]).unwrap(), ["alpha", "zeta"]);
    assert!(archive_databases(&a[..10]).is_err());
}

fn summary_of(namespaces: Vec<(CollectionMetadata, Vec<Vec<u8>>)>) -> ArchiveSummary {
    verify_archive(build(namespaces).as_slice()).unwrap()
}

#[test]
fn plan_selects_skips_and_warns() {
    let s = summary_of(vec![
        (
            meta(
                "shop",
                "users",
                &doc! { "validator": { "a": 1 } },
                &[
                    id_index(),
                    doc! { "v": 2, "key": { "e": 1 }, "name": "e_1", "collation": { "locale": "fr" } },
                ],
            ),
            vec![docs(0..5, 1)],
        ),
        (
            meta("shop", "orders", &Document::new(), &[id_index()]),
            vec![docs(0..2, 1)],
        ),
        (
            meta("logs", "l", &Document::new(), &[id_index()]),
            vec![docs(0..1, 1)],
        ),
        (
            meta("admin", "system.users", &Document::new(), &[]),
            vec![docs(0..1, 1)],
        ),
        (CollectionMetadata::oplog(), vec![docs(0..3, 1)]),
    ]);

    // Everything: admin.system.users skipped, oplog routed to the replay, warnings.
    let p = plan_restore(&s, &RestoreOptions::default()).unwrap();
    assert_eq!(
        p.routes,
        [
            Route::Restore(0),
            Route::Restore(1),
            Route::Restore(2),
            Route::Skip,
            Route::Oplog
        ]
    );
    assert_eq!(p.docs_total, 8);
    assert_eq!(p.workers[0].create, doc! { "create": "users" });
    assert_eq!(
        p.workers[0].indexes,
        [doc! { "key": { "e": 1 }, "name": "e_1" }]
    );
    assert!(p.workers[1].indexes.is_empty());
    let w = p.warnings.join("\n");
    assert!(
        w.contains("shop.users: collection option \"validator\""),
        "{w}"
    );
    assert!(w.contains("index \"e_1\": option \"collation\""), "{w}");
    assert!(w.contains("admin.system.users: skipped"), "{w}");
    assert!(!w.contains("oplog"), "{w}");
    assert_eq!(p.oplog.map(|(i, st)| (i, st.documents)), Some((4, 3)));

    // Without the replay, the oplog is skipped with a warning.
    let p = plan_restore(
        &s,
        &RestoreOptions {
            replay_oplog: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(p.routes[4], Route::Skip);
    assert!(p.oplog.is_none());
    let w = p.warnings.join("\n");
    assert!(w.contains("oplog (3 entries) that was not replayed"), "{w}");

    // One database; one collection; no indexes.
    let p = plan_restore(
        &s,
        &RestoreOptions {
            select: vec![NsSelector::database("shop")],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        p.routes,
        [
            Route::Restore(0),
            Route::Restore(1),
            Route::Skip,
            Route::Skip,
            // The oplog is replayed for the selected namespaces only.
            Route::Oplog
        ]
    );
    assert_eq!(p.docs_total, 7);
    assert!(!p.warnings.join("\n").contains("oplog"));
    let p = plan_restore(
        &s,
        &RestoreOptions {
            select: vec![NsSelector::collection("logs", "l")],
            build_indexes: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(p.workers.len(), 1);
    assert_eq!(p.workers[0].ns, "logs.l");
    assert_eq!(p.workers[0].expected.documents, 1);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);

    // A selector that matches nothing is an error naming it.
    let e = plan_restore(
        &s,
        &RestoreOptions {
            select: vec![
                NsSelector::database("shop"),
                NsSelector::collection("shop", "nope"),
                NsSelector::database("nodb"),
            ],
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(e, MongoError::InvalidArgument(_)), "{e:?}");
    let m = e.to_string();
    assert!(
        m.contains("shop.nope, nodb.*") && m.contains("admin, logs, shop"),
        "{m}"
    );
}

#[test]
fn plan_refuses_views_and_timeseries_when_selected() {
    let mut view = CollectionMetadata::collection(
        "shop",
        "v",
        metadata_json(
            &doc! { "viewOn": "users", "pipeline": [] },
            &[],
            None,
            "v",
            Some("view"),
        ),
    );
    view.collection_type = "view".into();
    let mut ts = CollectionMetadata::collection(
        "metrics",
        "t",
        metadata_json(
            &doc! { "timeseries": { "timeField": "t" } },
            &[],
            None,
            "t",
            Some("timeseries"),
        ),
    );
    ts.collection_type = "timeseries".into();
    let s = summary_of(vec![
        (meta("shop", "users", &Document::new(), &[]), vec![]),
        (view, vec![]),
        (ts, vec![]),
    ]);
    for select in [vec![], vec![NsSelector::collection("shop", "v")]] {
        let e = plan_restore(
            &s,
            &RestoreOptions {
                select,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(matches!(e, MongoError::Unsupported(_)), "{e:?}");
        assert!(e.to_string().contains("shop.v is a view"), "{e}");
    }
    let e = plan_restore(
        &s,
        &RestoreOptions {
            select: vec![NsSelector::database("metrics")],
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("metrics.t is a timeseries"), "{e}");
    // Not selected: no problem.
    let p = plan_restore(
        &s,
        &RestoreOptions {
            select: vec![NsSelector::collection("shop", "users")],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(p.workers.len(), 1);
}

// ---------------------------------------------------------------------------------------
// logical_restore before it touches the server
// ---------------------------------------------------------------------------------------

fn opener(bytes: Vec<u8>) -> Box<dyn Fn() -> std::io::Result<Box<dyn Read + Send>> + Send + Sync> {
    Box::new(move || Ok(Box::new(std::io::Cursor::new(bytes.clone())) as Box<dyn Read + Send>))
}

/// A client for a port nobody listens on: any server operation would fail with
/// `Unreachable`, so getting another error proves the server was never contacted.
async fn unreachable_client() -> mongodb::Client {
    mongodb::Client::with_uri_str("mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=200")
        .await
        .unwrap()
}

#[tokio::test]
async fn corrupt_archives_and_views_are_refused_before_contacting_the_server() {
    let client = unreachable_client().await;
    let cancel = CancellationToken::new();
    let mut corrupt = fixture();
    let len = corrupt.len();
    corrupt[len / 2] ^= 0x10;
    for (bytes, what) in [
        (corrupt, "invalid archive"),
        (fixture()[..len - 1].to_vec(), "truncated"),
    ] {
        let e = logical_restore(
            &client,
            opener(bytes),
            &RestoreOptions::default(),
            &|_| {},
            &cancel,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, MongoError::Archive(_)), "{e:?}");
        assert!(e.to_string().contains(what), "{e}");
    }

    let mut view = CollectionMetadata::collection(
        "shop",
        "v",
        metadata_json(&doc! { "viewOn": "u" }, &[], None, "v", Some("view")),
    );
    view.collection_type = "view".into();
    let e = logical_restore(
        &client,
        opener(build(vec![(view, vec![])])),
        &RestoreOptions::default(),
        &|_| {},
        &cancel,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, MongoError::Unsupported(_)), "{e:?}");

    // Failing to open the input is an I/O error naming what we were doing.
    let e = logical_restore(
        &client,
        Box::new(|| Err(std::io::Error::other("no such backup"))),
        &RestoreOptions::default(),
        &|_| {},
        &cancel,
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("open the backup archive: no such backup"),
        "{e}"
    );

    // Cancelled before starting.
    cancel.cancel();
    let e = logical_restore(
        &client,
        opener(fixture()),
        &RestoreOptions::default(),
        &|_| {},
        &cancel,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, MongoError::Cancelled), "{e:?}");
}

#[test]
fn target_exists_error_names_the_namespaces() {
    let e = MongoError::TargetExists {
        namespaces: vec!["shop.users".into(), "shop.orders".into()],
    };
    assert_eq!(
        e.to_string(),
        "the target already has collections shop.users, shop.orders; nothing was restored \
         (to replace existing collections: --drop with `ddsvault restore`, DropExisting=true with RestoreDBInstance)"
    );
    assert!(e.is_permanent());
}

/// Callers spawn the restore on the runtime: its future must be `Send`.
#[allow(dead_code)]
fn restore_future_is_send(c: &mongodb::Client, o: &RestoreOptions, t: &CancellationToken) {
    fn is_send<T: Send>(_: T) {}
    is_send(logical_restore(c, opener(Vec::new()), o, &|_| {}, t));
}
