//! MongoDB 5.0+ `$v:2` update diffs (`{op: "u", o: {$v: 2, diff: {...}}}`): parsing and applying.
//!
//! The format and the applier's behaviour follow MongoDB's own reader and applier
//! (`src/mongo/db/update/document_diff_serialization.cpp` and `document_diff_applier.cpp` in
//! `mongodb/mongo`); the vectors in `crates/mongo/tests/data/document_diff_cases.json` are
//! MongoDB's applier test cases.
//!
//! # Document diff
//!
//! Sections, each at most once and in this order: `d` (fields to delete, `{name: false}`), `u`
//! (fields to set), `i` (fields to insert), `b` (binary diffs, MongoDB 8.0+), then any number of
//! `s<name>` entries (a sub-diff of the sub-document or array in field `<name>`). A field may
//! appear only once across all sections; an empty diff is refused, as MongoDB refuses it.
//!
//! The post-image is built from the pre-image's fields **in their order**: a deleted field is
//! left out, an updated field takes its new value in place, a field with a sub-diff gets it
//! applied in place (or becomes `null` when its type is not the one the diff expects: a later
//! entry overwrites it), a field that is also in `i` is left out here. Then come the `u` fields
//! the pre-image did not have, in diff order, then every `i` field, in diff order. Applying the
//! same diff twice gives the same document (the replay of a fuzzy copy relies on it).
//!
//! # Array diff
//!
//! `{a: true, l?: <new length, int32>, u<idx>: <value>, s<idx>: <sub-diff>, ...}` with
//! increasing indexes: the pre-image's elements up to the new length, each replaced by its
//! update or sub-diff, then indexes past the pre-image's end (updates, `null` for sub-diffs
//! that have nothing to apply to, `null` padding for indexes the diff does not name).
//!
//! # Not supported
//!
//! The `b` (binary) section: MongoDB 8.0 writes it only for BSONColumn binaries of timeseries
//! buckets, which logical restores refuse anyway. It is reported as unsupported, never skipped.

use std::collections::{HashMap, HashSet};

use bson::{Bson, Document, RawBsonRef, RawDocument};

/// Largest array index or length a diff may name. A document is at most 16 MiB and an array
/// element with an index of 7 digits takes at least 9 bytes, so no real array holds more than
/// about 1.9 million elements; this bound keeps a crafted diff from making the applier pad
/// billions of `null`s.
pub const MAX_ARRAY_INDEX: usize = 2_000_000;

/// Nesting depth of sub-diffs accepted (MongoDB documents nest at most 180 levels for users,
/// 200 internally); bounds the parser's recursion on crafted input.
const MAX_DEPTH: usize = 200;

/// Why a diff cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("$v:2 diff{}: {detail}", if .path.is_empty() { String::new() } else { format!(" at {}", .path) })]
pub struct DiffError {
    /// Dotted path of the (sub-)diff at fault (empty for the top level).
    pub path: String,
    /// What is wrong.
    pub detail: String,
    /// True when the diff is well-formed but uses a form this version does not apply (the
    /// binary section); false when it is malformed.
    pub unsupported: bool,
}

/// A parsed document diff.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DocDiff {
    deletes: Vec<String>,
    updates: Vec<(String, Bson)>,
    inserts: Vec<(String, Bson)>,
    subs: Vec<(String, SubDiff)>,
}

/// A sub-diff: of a sub-document or of an array.
#[derive(Debug, Clone, PartialEq)]
pub enum SubDiff {
    /// `s<field>: {d?, u?, i?, s...}`.
    Doc(DocDiff),
    /// `s<field>: {a: true, l?, u<idx>?, s<idx>?...}`.
    Array(ArrayDiff),
}

/// A parsed array diff.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArrayDiff {
    resize: Option<usize>,
    /// Strictly increasing indexes (checked by the parser).
    mods: Vec<(usize, ArrayMod)>,
}

/// What an array diff does at one index.
#[derive(Debug, Clone, PartialEq)]
pub enum ArrayMod {
    /// `u<idx>`: the new element.
    Update(Bson),
    /// `s<idx>`: a sub-diff of the element.
    Sub(SubDiff),
}

/// What a document diff does to one field.
enum FieldMod<'a> {
    Delete,
    Update(&'a Bson),
    Insert,
    Sub(&'a SubDiff),
}

fn err(path: &str, detail: impl Into<String>) -> DiffError {
    DiffError {
        path: path.to_string(),
        detail: detail.into(),
        unsupported: false,
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn to_bson(path: &str, v: RawBsonRef<'_>) -> Result<Bson, DiffError> {
    Bson::try_from(v).map_err(|e| err(path, format!("undecodable value: {e}")))
}

impl DocDiff {
    /// Parses the `diff` document of a `$v:2` update (raw, so that duplicate field names,
    /// which MongoDB refuses, are seen).
    ///
    /// # Errors
    /// [`DiffError`] naming the path and what is wrong.
    pub fn parse(diff: &RawDocument) -> Result<DocDiff, DiffError> {
        parse_doc(diff, "", 0)
    }

    /// The post-image of `pre` (see the module docs for the exact rules).
    pub fn apply(&self, pre: &Document) -> Document {
        let mut mods: HashMap<&str, FieldMod<'_>> = HashMap::new();
        for k in &self.deletes {
            mods.insert(k, FieldMod::Delete);
        }
        for (k, v) in &self.updates {
            mods.insert(k, FieldMod::Update(v));
        }
        for (k, _) in &self.inserts {
            mods.insert(k, FieldMod::Insert);
        }
        for (k, s) in &self.subs {
            mods.insert(k, FieldMod::Sub(s));
        }
        let mut out = Document::new();
        let mut updated_in_place: HashSet<&str> = HashSet::new();
        for (k, v) in pre {
            match mods.get(k.as_str()) {
                None => {
                    out.insert(k.clone(), v.clone());
                }
                Some(FieldMod::Delete) | Some(FieldMod::Insert) => {}
                Some(FieldMod::Update(new)) => {
                    out.insert(k.clone(), (*new).clone());
                    updated_in_place.insert(k.as_str());
                }
                Some(FieldMod::Sub(sub)) => {
                    out.insert(k.clone(), sub.apply_to(Some(v)));
                }
            }
        }
        for (k, v) in self.updates.iter().chain(&self.inserts) {
            if !updated_in_place.contains(k.as_str()) {
                out.insert(k.clone(), v.clone());
            }
        }
        out
    }

    /// Whether the diff names `_id` at the top level (`_id` is immutable: MongoDB never logs
    /// such a diff, and a replay by `_id` could not apply one).
    pub fn touches_id(&self) -> bool {
        self.deletes.iter().any(|k| k == "_id")
            || self
                .updates
                .iter()
                .chain(&self.inserts)
                .any(|(k, _)| k == "_id")
            || self.subs.iter().any(|(k, _)| k == "_id")
    }
}

impl SubDiff {
    /// The new value of a field or element whose pre-image is `pre` (`None`: absent).
    fn apply_to(&self, pre: Option<&Bson>) -> Bson {
        match (self, pre) {
            (SubDiff::Doc(d), Some(Bson::Document(p))) => Bson::Document(d.apply(p)),
            (SubDiff::Array(a), Some(Bson::Array(p))) => Bson::Array(a.apply(p)),
            // A type mismatch or a missing element: the diff is being re-applied to a state
            // a later entry overwrites; MongoDB writes null to keep the position.
            _ => Bson::Null,
        }
    }
}

impl ArrayDiff {
    /// The post-image of the array `pre`.
    pub fn apply(&self, pre: &[Bson]) -> Vec<Bson> {
        let mut out = Vec::with_capacity(self.resize.unwrap_or(pre.len()).min(pre.len() + 16));
        let mut mods = self.mods.iter().peekable();
        let limit = self.resize.unwrap_or(usize::MAX);
        let mut idx = 0usize;
        let mut apply = |out: &mut Vec<Bson>, idx: usize, pre: Option<&Bson>| match mods.peek() {
            Some((i, m)) if *i == idx => {
                out.push(match m {
                    ArrayMod::Update(v) => v.clone(),
                    ArrayMod::Sub(s) => s.apply_to(pre),
                });
                mods.next();
                true
            }
            _ => false,
        };
        for v in pre.iter().take(limit) {
            if !apply(&mut out, idx, Some(v)) {
                out.push(v.clone());
            }
            idx += 1;
        }
        // Past the pre-image: up to the new length, and up to the last index the diff names.
        let last = self.mods.last().map(|(i, _)| i + 1).unwrap_or(0);
        let end = self.resize.unwrap_or(0).max(last);
        while idx < end {
            if !apply(&mut out, idx, None) {
                out.push(Bson::Null);
            }
            idx += 1;
        }
        out
    }
}

fn parse_doc(raw: &RawDocument, path: &str, depth: usize) -> Result<DocDiff, DiffError> {
    if depth > MAX_DEPTH {
        return Err(err(path, "sub-diffs nested too deeply"));
    }
    let mut out = DocDiff::default();
    let mut names: HashSet<String> = HashSet::new();
    let mut claim = |name: &str| {
        if names.insert(name.to_string()) {
            Ok(())
        } else {
            Err(err(path, format!("duplicate field name in diff: {name:?}")))
        }
    };
    // Section order: d(1) u(2) i(3) b(4) s(5); each section at most once.
    let mut prev = 0u8;
    let mut any = false;
    for item in raw.iter() {
        let (key, value) = item.map_err(|e| err(path, format!("undecodable diff: {e}")))?;
        any = true;
        let order = match key {
            "d" => 1,
            "u" => 2,
            "i" => 3,
            "b" => 4,
            k if k.starts_with('s') && k.len() > 1 => 5,
            k => {
                return Err(err(
                    path,
                    format!("unexpected section {k:?} in document diff"),
                ))
            }
        };
        if order < prev || (order == prev && order != 5) {
            return Err(err(
                path,
                format!("section {key:?} repeated or out of order (d, u, i, b, s… expected)"),
            ));
        }
        prev = order;
        let RawBsonRef::Document(section) = value else {
            return Err(err(path, format!("section {key:?} is not a document")));
        };
        match key {
            "d" => {
                for item in section.iter() {
                    let (name, _) =
                        item.map_err(|e| err(path, format!("undecodable delete section: {e}")))?;
                    claim(name)?;
                    out.deletes.push(name.to_string());
                }
            }
            "u" | "i" => {
                for item in section.iter() {
                    let (name, v) =
                        item.map_err(|e| err(path, format!("undecodable {key} section: {e}")))?;
                    claim(name)?;
                    let v = to_bson(&join(path, name), v)?;
                    if key == "u" {
                        out.updates.push((name.to_string(), v));
                    } else {
                        out.inserts.push((name.to_string(), v));
                    }
                }
            }
            "b" => {
                return Err(DiffError {
                    path: path.to_string(),
                    detail: "binary diff section \"b\" (MongoDB 8.0+, BSONColumn of timeseries \
                             buckets) is not supported"
                        .into(),
                    unsupported: true,
                })
            }
            _ => {
                let name = &key[1..];
                claim(name)?;
                let sub = parse_sub(section, &join(path, name), depth + 1)?;
                out.subs.push((name.to_string(), sub));
            }
        }
    }
    if !any {
        return Err(err(path, "expected diff to be non-empty"));
    }
    Ok(out)
}

/// A sub-diff: an array diff when its first field is `a`, a document diff otherwise.
fn parse_sub(raw: &RawDocument, path: &str, depth: usize) -> Result<SubDiff, DiffError> {
    let mut it = raw.iter();
    let first = match it.next() {
        None => return Err(err(path, "expected diff to be non-empty")),
        Some(item) => item.map_err(|e| err(path, format!("undecodable diff: {e}")))?,
    };
    if first.0 != "a" {
        return parse_doc(raw, path, depth).map(SubDiff::Doc);
    }
    if first.1 != RawBsonRef::Boolean(true) {
        return Err(err(path, "array header \"a\" is not the boolean true"));
    }
    let mut out = ArrayDiff::default();
    let mut last: Option<usize> = None;
    for item in it {
        let (key, value) = item.map_err(|e| err(path, format!("undecodable array diff: {e}")))?;
        if key == "l" && last.is_none() && out.resize.is_none() {
            let RawBsonRef::Int32(n) = value else {
                return Err(err(path, "array resize \"l\" is not an int32"));
            };
            let n = usize::try_from(n)
                .ok()
                .filter(|n| *n <= MAX_ARRAY_INDEX)
                .ok_or_else(|| err(path, format!("array resize \"l\" out of range: {n}")))?;
            out.resize = Some(n);
            continue;
        }
        let (kind, digits) = key.split_at(key.chars().next().map_or(0, char::len_utf8));
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err(
                path,
                format!("array diff field {key:?} is not u<index> or s<index>"),
            ));
        }
        let idx: usize = digits
            .parse()
            .ok()
            .filter(|i| *i <= MAX_ARRAY_INDEX)
            .ok_or_else(|| err(path, format!("array index out of range in {key:?}")))?;
        // MongoDB's applier walks indexes in order; a writer never produces anything else.
        if last.is_some_and(|l| idx <= l) {
            return Err(err(path, format!("array index {idx} out of order")));
        }
        if out.resize.is_some_and(|l| idx >= l) {
            return Err(err(
                path,
                format!(
                    "array index {idx} is past the new length {}",
                    out.resize.unwrap_or(0)
                ),
            ));
        }
        last = Some(idx);
        let m = match kind {
            "u" => ArrayMod::Update(to_bson(&join(path, digits), value)?),
            "s" => {
                let RawBsonRef::Document(sub) = value else {
                    return Err(err(path, format!("sub-diff {key:?} is not a document")));
                };
                ArrayMod::Sub(parse_sub(sub, &join(path, digits), depth + 1)?)
            }
            _ => {
                return Err(err(
                    path,
                    format!("array diff field {key:?} is neither u (update) nor s (sub-diff)"),
                ))
            }
        };
        out.mods.push((idx, m));
    }
    Ok(SubDiff::Array(out))
}
