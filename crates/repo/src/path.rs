//! [`RepoPath`]: a validated, store-independent object key.

use std::fmt;
use std::str::FromStr;

use crate::error::RepoError;

/// A relative, `/`-separated path inside the repository.
///
/// The string is used verbatim as the object key (S3/OSS) or as the relative file name (local
/// directory), so the rules are the intersection of what every backend accepts unchanged:
///
/// * not empty, not absolute (no leading `/`), no trailing `/`, no empty segment (`a//b`);
/// * no `.` or `..` segment;
/// * no backslash (a path separator on Windows, and a trap for tools that treat keys as paths);
/// * no ASCII control character (NUL included): `object_store` rejects them;
/// * no segment of the form `name#<digits>`: the local-filesystem backend uses that suffix for
///   its in-progress (staged) files and hides or refuses such names.
///
/// Everything else (spaces, `%`, `+`, `#tag`, any non-ASCII Unicode) is allowed and stored as is:
/// `a%20b` is a file literally named `a%20b`, never `a b`.
///
/// A `RepoPath` used as a *prefix* (for [`crate::Repository::list`] or
/// [`crate::Repository::delete_prefix`]) denotes a directory: it matches whole segments, so
/// `backups/i1` covers `backups/i1/7/x` but not `backups/i10/7/x`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RepoPath(String);

impl RepoPath {
    /// Validates `path` (see the type docs for the rules).
    ///
    /// # Errors
    /// [`RepoError::InvalidPath`] naming the offending path and rule.
    pub fn new(path: impl Into<String>) -> Result<Self, RepoError> {
        let path = path.into();
        match validate(&path) {
            Ok(()) => Ok(Self(path)),
            Err(reason) => Err(RepoError::InvalidPath { path, reason }),
        }
    }

    /// The path as the object key.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Appends a relative path (one or more `/`-separated segments), validating the result.
    ///
    /// # Errors
    /// [`RepoError::InvalidPath`] if `rel` is empty or breaks a rule (`..`, absolute, …).
    pub fn join(&self, rel: &str) -> Result<Self, RepoError> {
        if let Err(reason) = validate(rel) {
            return Err(RepoError::InvalidPath {
                path: format!("{}/{}", self.0, rel),
                reason,
            });
        }
        Ok(Self(format!("{}/{}", self.0, rel)))
    }

    /// Appends one segment that may contain *any* characters, escaping it so that the result
    /// is a single valid segment. The escaping is deterministic and injective (distinct inputs
    /// give distinct segments): bytes outside `[A-Za-z0-9._-]` become `%XX`, and the
    /// segments `.`/`..`/empty, which would otherwise be invalid, are spelled out with escapes.
    ///
    /// Use it for identifiers that come from outside (instance ids, job tokens) so they can
    /// never escape their prefix.
    pub fn join_escaped(&self, segment: &str) -> Self {
        Self(format!("{}/{}", self.0, escape_segment(segment)))
    }

    /// The segments of the path.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The last segment.
    pub fn file_name(&self) -> &str {
        // `validate` guarantees at least one non-empty segment.
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// `true` if `self` lies (strictly) under the directory `prefix`.
    pub fn starts_with(&self, prefix: &RepoPath) -> bool {
        self.strip_prefix(prefix).is_some()
    }

    /// The part of `self` below the directory `prefix`, or `None` if `self` is not under it.
    pub fn strip_prefix(&self, prefix: &RepoPath) -> Option<&str> {
        self.0
            .strip_prefix(prefix.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
    }

    /// The object_store location for this path. Infallible in practice: every `RepoPath` is a
    /// valid `object_store::path::Path` (our rules are a superset of its rules), and we parse
    /// rather than encode so the key is exactly [`Self::as_str`].
    pub(crate) fn to_location(&self) -> Result<object_store::path::Path, RepoError> {
        object_store::path::Path::parse(&self.0).map_err(|e| RepoError::InvalidPath {
            path: self.0.clone(),
            reason: format!("rejected by object_store: {e}"),
        })
    }

    /// Converts a location returned by the store back into a `RepoPath`.
    pub(crate) fn from_location(location: &object_store::path::Path) -> Result<Self, RepoError> {
        Self::new(location.as_ref())
    }

    /// Internal constructor for paths built from already-valid parts.
    pub(crate) fn from_valid(path: String) -> Self {
        debug_assert!(validate(&path).is_ok(), "invalid internal path {path:?}");
        Self(path)
    }
}

/// Checks the rules documented on [`RepoPath`]; returns the broken rule.
fn validate(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("path is empty".into());
    }
    if path.starts_with('/') {
        return Err("path is absolute (starts with '/')".into());
    }
    if let Some(c) = path.chars().find(|c| c.is_ascii_control()) {
        return Err(format!("path contains control character {c:?}"));
    }
    if path.contains('\\') {
        return Err("path contains a backslash".into());
    }
    for segment in path.split('/') {
        match segment {
            "" => return Err("path has an empty segment (leading, trailing or '//')".into()),
            "." | ".." => return Err(format!("path has a '{segment}' segment")),
            _ => {}
        }
        if let Some((_, suffix)) = segment.split_once('#') {
            if !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "segment {segment:?} ends in '#<digits>', reserved for staged local files"
                ));
            }
        }
    }
    Ok(())
}

/// Escapes an arbitrary string into one valid, injectively-encoded segment.
pub(crate) fn escape_segment(raw: &str) -> String {
    match raw {
        // '%' followed by non-hex never results from escaping a non-empty string, so these
        // spellings cannot collide with any other input.
        "" => return "%".to_string(),
        "." => return "%2E".to_string(),
        ".." => return "%2E%2E".to_string(),
        _ => {}
    }
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The inverse of [`escape_segment`]: `None` for a segment that escaping never produces (so a foreign object
/// is never mistaken for one of ours).
pub(crate) fn unescape_segment(segment: &str) -> Option<String> {
    let raw = match segment {
        "%" => String::new(),
        "%2E" => ".".to_string(),
        "%2E%2E" => "..".to_string(),
        _ => {
            let bytes = segment.as_bytes();
            let mut out = Vec::with_capacity(bytes.len());
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'%' {
                    let hex = segment.get(i + 1..i + 3)?;
                    out.push(u8::from_str_radix(hex, 16).ok()?);
                    i += 3;
                } else {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
            String::from_utf8(out).ok()?
        }
    };
    (escape_segment(&raw) == segment).then_some(raw)
}

impl fmt::Display for RepoPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepoPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepoPath({:?})", self.0)
    }
}

impl AsRef<str> for RepoPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for RepoPath {
    type Err = RepoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for RepoPath {
    type Error = RepoError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl TryFrom<&str> for RepoPath {
    type Error = RepoError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<RepoPath> for String {
    fn from(p: RepoPath) -> Self {
        p.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_awkward_but_valid_names() {
        for ok in [
            "a",
            "a/b/c.bson.zst",
            "with space/file name.bin",
            "percent/100%.txt",
            "percent/a%20b",
            "unicode/日本語/ファイル.txt",
            "hash#tag",
            "hash#12a",
            "trailing#",
            "...",
            ".hidden",
            "a+b=c&d",
        ] {
            assert!(RepoPath::new(ok).is_ok(), "{ok:?} should be valid");
        }
    }

    #[test]
    fn rejects_invalid_names() {
        for bad in [
            "",
            "/abs",
            "/",
            "a/",
            "a//b",
            "./a",
            "a/./b",
            "a/..",
            "..",
            "a\\b",
            "a\0b",
            "a\nb",
            "file#123",
            "dir/file#1",
            "dir#12/file",
        ] {
            match RepoPath::new(bad) {
                Err(RepoError::InvalidPath { path, .. }) => assert_eq!(path, bad),
                other => panic!("{bad:?} should be rejected, got {other:?}"),
            }
        }
    }

    #[test]
    fn join_and_strip() -> Result<(), RepoError> {
        let base = RepoPath::new("backups/i1")?;
        let p = base.join("7/dump.tar")?;
        assert_eq!(p.as_str(), "backups/i1/7/dump.tar");
        assert_eq!(p.strip_prefix(&base), Some("7/dump.tar"));
        assert_eq!(p.file_name(), "dump.tar");
        assert!(!RepoPath::new("backups/i10/x")?.starts_with(&base));
        assert!(!base.starts_with(&base));
        assert!(base.join("../x").is_err());
        assert!(base.join("").is_err());
        assert!(base.join("/x").is_err());
        Ok(())
    }

    #[test]
    fn serde_validates() {
        assert!(serde_json::from_str::<RepoPath>("\"a/b\"").is_ok());
        assert!(serde_json::from_str::<RepoPath>("\"a/../b\"").is_err());
    }

    fn segment_strategy() -> impl Strategy<Value = String> {
        // Mostly benign characters, plus everything that is interesting for the rules.
        proptest::collection::vec(
            prop_oneof![
                8 => proptest::char::range('a', 'z'),
                1 => Just('.'),
                1 => Just('#'),
                1 => Just('%'),
                1 => Just(' '),
                1 => proptest::char::range('0', '9'),
                1 => Just('é'),
                1 => Just('\\'),
                1 => Just('\0'),
            ],
            0..6,
        )
        .prop_map(|cs| cs.into_iter().collect())
    }

    proptest! {
        /// The constructor agrees with an independent statement of the rules.
        #[test]
        fn validation_matches_model(segments in proptest::collection::vec(segment_strategy(), 1..5),
                                    leading_slash in any::<bool>()) {
            let mut s = segments.join("/");
            if leading_slash { s.insert(0, '/'); }
            let expected_ok = !leading_slash && segments.iter().all(|seg| {
                !seg.is_empty() && seg != "." && seg != ".."
                    && !seg.contains('\\') && !seg.contains('\0')
                    && !seg.split_once('#').is_some_and(|(_, d)| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            });
            let got = RepoPath::new(s.clone());
            prop_assert_eq!(got.is_ok(), expected_ok, "path {:?}", s);
            if let Ok(p) = got {
                // Round-trips through object_store unchanged.
                let loc = p.to_location().map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(loc.as_ref(), p.as_str());
                prop_assert_eq!(RepoPath::from_location(&loc).ok(), Some(p.clone()));
                prop_assert_eq!(p.segments().count(), segments.len());
            }
        }

        /// Escaping never produces an invalid segment and never collides.
        #[test]
        fn escape_is_valid_and_injective(a in ".*", b in ".*") {
            let ea = escape_segment(&a);
            prop_assert!(validate(&ea).is_ok(), "{:?} -> {:?}", a, ea);
            prop_assert!(!ea.contains('/'));
            if a != b { prop_assert_ne!(ea, escape_segment(&b)); }
        }
    }

    #[test]
    fn escape_examples() {
        assert_eq!(escape_segment("dds-bp1abc"), "dds-bp1abc");
        assert_eq!(escape_segment("../etc"), "..%2Fetc");
        assert_eq!(escape_segment(".."), "%2E%2E");
        assert_eq!(escape_segment("a b#1"), "a%20b%231");
        assert_eq!(escape_segment(""), "%");
    }
}
