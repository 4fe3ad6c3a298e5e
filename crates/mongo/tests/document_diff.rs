//! The `$v:2` diff applier against MongoDB's own applier test cases
//! (`tests/data/document_diff_cases.json`, provenance inside) and property tests: random
//! documents, random edits, a reference diff builder (below) that writes the edit as MongoDB's
//! `$v:2` diff; applying the diff must give the edited document exactly (BSON bytes, so field
//! order included), and applying it once more must change nothing.

use bson::{Bson, Document, RawDocumentBuf};
use ddsvault_mongo::oplog::diff::DocDiff;
use proptest::prelude::*;

fn bytes(d: &Document) -> Vec<u8> {
    bson::to_vec(d).expect("encode")
}

fn json_doc(v: &serde_json::Value) -> Document {
    match Bson::try_from(v.clone()).expect("extended JSON") {
        Bson::Document(d) => d,
        other => panic!("not a document: {other:?}"),
    }
}

/// `[[key, value], ...]` to raw BSON, keeping duplicate keys; a value that is a list of
/// pairs is a sub-document.
fn pairs_to_raw(v: &serde_json::Value) -> RawDocumentBuf {
    let mut out = RawDocumentBuf::new();
    for pair in v.as_array().expect("pairs") {
        let (k, val) = (pair[0].as_str().expect("key"), &pair[1]);
        let is_pairs = val.as_array().is_some_and(|a| {
            !a.is_empty()
                && a.iter().all(|p| {
                    p.as_array()
                        .is_some_and(|p| p.len() == 2 && p[0].is_string())
                })
        });
        if is_pairs {
            out.append(k, pairs_to_raw(val));
        } else {
            let b = Bson::try_from(val.clone()).expect("value");
            out.append(k, bson::RawBson::try_from(b).expect("raw"));
        }
    }
    out
}

fn raw(d: &Document) -> RawDocumentBuf {
    RawDocumentBuf::from_document(d).expect("raw")
}

#[test]
fn mongodb_applier_cases() {
    let text = include_str!("data/document_diff_cases.json");
    let data: serde_json::Value = serde_json::from_str(text).expect("json");
    assert!(data["provenance"]["source_repository"].is_string());
    let cases = data["cases"].as_array().expect("cases");
    let mut counts = [0usize; 3];
    for c in cases {
        let name = c["test"].as_str().expect("name");
        let pre = json_doc(&c["pre"]);
        let diff = match c.get("diff_pairs") {
            Some(p) => pairs_to_raw(p),
            None => raw(&json_doc(&c["diff"])),
        };
        let parsed = DocDiff::parse(&diff);
        match c["expect"].as_str().expect("expect") {
            "post" => {
                let d = parsed.unwrap_or_else(|e| panic!("{name}: {e}"));
                let want = json_doc(&c["post"]);
                let got = d.apply(&pre);
                assert_eq!(bytes(&got), bytes(&want), "{name}: got {got}, want {want}");
                let again = d.apply(&got);
                assert_eq!(
                    bytes(&again),
                    bytes(&want),
                    "{name}: applied twice: {again}"
                );
                counts[0] += 1;
            }
            "error" => {
                let e = parsed.expect_err(name);
                assert!(!e.unsupported, "{name}: {e}");
                counts[1] += 1;
            }
            "unsupported" => {
                let e = parsed.expect_err(name);
                assert!(e.unsupported, "{name}: {e}");
                assert!(e.to_string().contains("binary"), "{name}: {e}");
                counts[2] += 1;
            }
            other => panic!("{name}: unknown expectation {other}"),
        }
    }
    assert_eq!(counts, [29, 10, 2], "cases by expectation");
}

#[test]
fn malformed_diffs_are_refused_with_their_path() {
    let cases = [
        (bson::doc! { "x": {} }, "unexpected section"),
        (
            bson::doc! { "u": { "a": 1 }, "d": { "b": false } },
            "out of order",
        ),
        (bson::doc! { "u": 1 }, "not a document"),
        (bson::doc! { "sa": { "a": false } }, "array header"),
        (bson::doc! { "sa": { "a": true, "l": 2_i64 } }, "int32"),
        (bson::doc! { "sa": { "a": true, "l": -1 } }, "out of range"),
        (
            bson::doc! { "sa": { "a": true, "u2": 1, "u1": 1 } },
            "out of order",
        ),
        (
            bson::doc! { "sa": { "a": true, "l": 2, "u2": 1 } },
            "past the new length",
        ),
        (bson::doc! { "sa": { "a": true, "x1": 1 } }, "neither"),
        (bson::doc! { "sa": { "a": true, "u": 1 } }, "not u<index>"),
        (
            bson::doc! { "sa": { "a": true, "u99999999": 1 } },
            "out of range",
        ),
        (
            bson::doc! { "sa": { "a": true, "s1": 3 } },
            "not a document",
        ),
        (bson::doc! { "sa": {} }, "non-empty"),
        (
            bson::doc! { "sa": { "sb": { "sc": { "q": {} } } } },
            "a.b.c",
        ),
    ];
    for (d, want) in cases {
        let e = DocDiff::parse(&raw(&d)).expect_err(&d.to_string());
        assert!(e.to_string().contains(want), "{d}: {e}");
    }
}

// ---------------------------------------------------------------------------------------
// Reference diff builder: writes the change from `pre` to `post` as a `$v:2` diff, the way
// MongoDB's serializer lays one out (sections d, u, i, then s<field>; array diffs a, l,
// then u<idx>/s<idx> by index). It is written from the format, independently of the
// applier: the post-image is the pre-image's fields that stay in order (kept, updated in
// place or sub-diffed), then the new fields in order. Returns None when nothing changed.
// ---------------------------------------------------------------------------------------

fn same(a: &Bson, b: &Bson) -> bool {
    // Byte equality (Bson's == treats documents with the same fields in another order as equal).
    bson::to_vec(&bson::doc! { "v": a.clone() }).ok()
        == bson::to_vec(&bson::doc! { "v": b.clone() }).ok()
}

fn build_doc_diff(pre: &Document, post: &Document) -> Option<Document> {
    if bytes(pre) == bytes(post) {
        return None;
    }
    let pre_keys: Vec<&String> = pre.keys().collect();
    let pos = |k: &str| pre_keys.iter().position(|p| p.as_str() == k);
    // Longest prefix of `post` whose keys appear in `pre` in increasing order: kept in place.
    let mut last: Option<usize> = None;
    let mut in_place = 0;
    for k in post.keys() {
        match pos(k) {
            Some(p) if last.is_none_or(|l| p > l) => {
                last = Some(p);
                in_place += 1;
            }
            _ => break,
        }
    }
    let tail: Vec<(&String, &Bson)> = post.iter().skip(in_place).collect();
    // The applier appends the `u` fields the pre-image lacks, then every `i` field: the tail's
    // leading new fields may go to `u`, the rest (and any moved field) must go to `i`.
    let u_tail = tail.iter().take_while(|(k, _)| pos(k).is_none()).count();
    let mut d = Document::new();
    let mut u = Document::new();
    let mut i = Document::new();
    let mut subs = Document::new();
    for k in pre.keys() {
        if !post.contains_key(k) {
            d.insert(k.clone(), false);
        }
    }
    for (k, v) in post.iter().take(in_place) {
        let old = pre.get(k).expect("kept field");
        if same(old, v) {
            continue;
        }
        match (old, v) {
            (Bson::Document(a), Bson::Document(b)) => {
                if let Some(sd) = build_doc_diff(a, b) {
                    subs.insert(format!("s{k}"), sd);
                }
            }
            (Bson::Array(a), Bson::Array(b)) => {
                subs.insert(format!("s{k}"), build_array_diff(a, b));
            }
            _ => {
                u.insert(k.clone(), v.clone());
            }
        }
    }
    for (n, (k, v)) in tail.iter().enumerate() {
        if n < u_tail {
            u.insert((*k).clone(), (*v).clone());
        } else {
            i.insert((*k).clone(), (*v).clone());
        }
    }
    let mut out = Document::new();
    for (name, section) in [("d", d), ("u", u), ("i", i)] {
        if !section.is_empty() {
            out.insert(name, section);
        }
    }
    out.extend(subs);
    if out.is_empty() {
        None
    } else {
        Some(out)
    }
}

fn build_array_diff(pre: &[Bson], post: &[Bson]) -> Document {
    let mut out = bson::doc! { "a": true };
    if pre.len() != post.len() {
        out.insert("l", post.len() as i32);
    }
    for (idx, v) in post.iter().enumerate() {
        match pre.get(idx) {
            Some(old) if same(old, v) => {}
            Some(Bson::Document(a)) if matches!(v, Bson::Document(_)) => {
                let Bson::Document(b) = v else { unreachable!() };
                if let Some(sd) = build_doc_diff(a, b) {
                    out.insert(format!("s{idx}"), sd);
                }
            }
            Some(Bson::Array(a)) if matches!(v, Bson::Array(_)) => {
                let Bson::Array(b) = v else { unreachable!() };
                out.insert(format!("s{idx}"), build_array_diff(a, b));
            }
            _ => {
                out.insert(format!("u{idx}"), v.clone());
            }
        }
    }
    out
}

#[test]
fn mongodb_document_sets_round_trip() {
    let data: serde_json::Value =
        serde_json::from_str(include_str!("data/document_diff_cases.json")).expect("json");
    let docs: Vec<Document> = data["document_sets"]["documents"]
        .as_array()
        .expect("documents")
        .iter()
        .map(|v| {
            let mut d = bson::doc! { "prefixLargeField": "a".repeat(200) };
            d.extend(json_doc(v));
            d
        })
        .collect();
    let mut checked = 0;
    for pre in &docs {
        for post in &docs {
            let Some(diff) = build_doc_diff(pre, post) else {
                continue;
            };
            let parsed = DocDiff::parse(&raw(&diff)).unwrap_or_else(|e| panic!("{diff}: {e}"));
            let got = parsed.apply(pre);
            assert_eq!(
                bytes(&got),
                bytes(post),
                "diff {diff}\npre {pre}\ngot {got}\nwant {post}"
            );
            assert_eq!(
                bytes(&parsed.apply(&got)),
                bytes(post),
                "idempotent: {diff}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, docs.len() * (docs.len() - 1));
}

// ---------------------------------------------------------------------------------------
// Random documents and random edits.
// ---------------------------------------------------------------------------------------

const KEYS: [&str; 7] = ["a", "b", "c", "d", "e", "_x", "long_field_name"];

fn arb_scalar() -> impl Strategy<Value = Bson> {
    prop_oneof![
        any::<i32>().prop_map(Bson::Int32),
        any::<i64>().prop_map(Bson::Int64),
        (-1e9f64..1e9).prop_map(Bson::Double),
        "[a-z]{0,6}".prop_map(Bson::String),
        any::<bool>().prop_map(Bson::Boolean),
        Just(Bson::Null),
        any::<i64>().prop_map(|t| Bson::DateTime(bson::DateTime::from_millis(t))),
        proptest::collection::vec(any::<u8>(), 0..6).prop_map(|b| Bson::Binary(bson::Binary {
            subtype: bson::spec::BinarySubtype::Generic,
            bytes: b
        })),
    ]
}

fn arb_value() -> impl Strategy<Value = Bson> {
    arb_scalar().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Bson::Array),
            proptest::collection::vec((proptest::sample::select(&KEYS[..]), inner), 0..6).prop_map(
                |fields| Bson::Document(
                    fields
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect()
                )
            ),
        ]
    })
}

fn arb_doc() -> impl Strategy<Value = Document> {
    proptest::collection::vec((proptest::sample::select(&KEYS[..]), arb_value()), 0..7).prop_map(
        |fields| {
            fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect()
        },
    )
}

/// A small deterministic generator for the edits (seeded by proptest).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn scalar(&mut self) -> Bson {
        match self.below(5) {
            0 => Bson::Int32(self.next() as i32),
            1 => Bson::String(format!("v{}", self.below(100))),
            2 => Bson::Null,
            3 => Bson::Document(bson::doc! { "n": self.below(9) as i32 }),
            _ => Bson::Array(vec![Bson::Int32(self.below(9) as i32); self.below(4)]),
        }
    }
}

/// Random edits of a document: delete, set, add, move a field to the end, and recursive edits
/// of sub-documents and arrays (set, truncate, extend, edit elements).
fn edit_doc(d: &Document, rng: &mut Rng, depth: usize) -> Document {
    let mut fields: Vec<(String, Bson)> = d.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for _ in 0..=rng.below(4) {
        match rng.below(7) {
            0 if !fields.is_empty() => {
                let i = rng.below(fields.len());
                fields.remove(i);
            }
            1 if !fields.is_empty() => {
                let i = rng.below(fields.len());
                fields[i].1 = rng.scalar();
            }
            2 => {
                let k = KEYS[rng.below(KEYS.len())].to_string();
                if !fields.iter().any(|(f, _)| *f == k) {
                    let at = rng.below(fields.len() + 1);
                    fields.insert(at, (k, rng.scalar()));
                }
            }
            3 if !fields.is_empty() => {
                let i = rng.below(fields.len());
                let f = fields.remove(i);
                fields.push(f);
            }
            _ if !fields.is_empty() && depth < 4 => {
                let i = rng.below(fields.len());
                fields[i].1 = edit_value(&fields[i].1, rng, depth + 1);
            }
            _ => {}
        }
    }
    fields.into_iter().collect()
}

fn edit_value(v: &Bson, rng: &mut Rng, depth: usize) -> Bson {
    match v {
        Bson::Document(d) => Bson::Document(edit_doc(d, rng, depth)),
        Bson::Array(a) => {
            let mut a = a.clone();
            match rng.below(4) {
                0 => a.truncate(rng.below(a.len() + 1)),
                1 => {
                    for _ in 0..=rng.below(3) {
                        a.push(rng.scalar());
                    }
                }
                2 if !a.is_empty() => {
                    let i = rng.below(a.len());
                    a[i] = rng.scalar();
                }
                _ if !a.is_empty() => {
                    let i = rng.below(a.len());
                    a[i] = edit_value(&a[i], rng, depth + 1);
                }
                _ => a.push(Bson::Null),
            }
            Bson::Array(a)
        }
        _ => rng.scalar(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Random document, random edits: the reference diff applied to the pre-image is exactly
    /// the edited document, and applying it again changes nothing.
    #[test]
    fn random_edits_round_trip(pre in arb_doc(), seed in any::<u64>()) {
        let mut rng = Rng(seed | 1);
        let post = edit_doc(&pre, &mut rng, 0);
        if let Some(diff) = build_doc_diff(&pre, &post) {
            let parsed = DocDiff::parse(&raw(&diff)).map_err(|e| TestCaseError::fail(format!("{diff}: {e}")))?;
            let got = parsed.apply(&pre);
            prop_assert_eq!(bytes(&got), bytes(&post), "diff {}\npre {}\ngot {}\nwant {}", diff, pre, got, post);
            prop_assert_eq!(bytes(&parsed.apply(&got)), bytes(&post), "idempotent: {}", diff);
        }
    }

    /// Two unrelated random documents (often sharing field names): the same holds.
    #[test]
    fn random_pairs_round_trip(pre in arb_doc(), post in arb_doc()) {
        if let Some(diff) = build_doc_diff(&pre, &post) {
            let parsed = DocDiff::parse(&raw(&diff)).map_err(|e| TestCaseError::fail(format!("{diff}: {e}")))?;
            prop_assert_eq!(bytes(&parsed.apply(&pre)), bytes(&post), "diff {}", diff);
        }
    }

    /// Arbitrary documents as diffs: parsing either refuses them or yields a diff that applies
    /// without panicking.
    #[test]
    fn arbitrary_diffs_never_panic(diff in arb_doc(), pre in arb_doc()) {
        if let Ok(parsed) = DocDiff::parse(&raw(&diff)) {
            let _ = parsed.apply(&pre);
        }
    }
}
