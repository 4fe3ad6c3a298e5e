//! Decoded operation parameters with typed, error-producing accessors.

use std::collections::BTreeMap;

use crate::error::ApiError;

/// The operation parameters of a request (query + form body, decoded), keyed by name.
///
/// Names are unique: [`crate::authenticate`] rejects requests that repeat a name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(BTreeMap<String, String>);

impl Params {
    /// Wraps an existing map (handy for tests of operation handlers).
    pub fn new(map: BTreeMap<String, String>) -> Self {
        Params(map)
    }

    /// The raw value; an empty string counts as present.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    /// True if the parameter was sent, even with an empty value.
    pub fn contains(&self, k: &str) -> bool {
        self.0.contains_key(k)
    }

    /// The value, or 400 `MissingParameter` if it is absent or empty: SDKs send an unset
    /// field as nothing, so an empty value can only mean "not supplied".
    pub fn required(&self, k: &str) -> Result<&str, ApiError> {
        match self.get(k) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(ApiError::missing_parameter(k)),
        }
    }

    /// The value if present and non-empty. Optional fields treat empty like absent, for the
    /// same reason as [`Params::required`].
    pub fn opt_str(&self, k: &str) -> Option<&str> {
        self.get(k).filter(|v| !v.is_empty())
    }

    /// An optional 64-bit integer; absent or empty is `None`, anything non-integer is
    /// 400 `InvalidParameter` naming the parameter.
    pub fn opt_i64(&self, k: &str) -> Result<Option<i64>, ApiError> {
        self.opt_parsed(k, "It must be an integer.")
    }

    /// An optional 32-bit integer; see [`Params::opt_i64`].
    pub fn opt_i32(&self, k: &str) -> Result<Option<i32>, ApiError> {
        self.opt_parsed(k, "It must be a 32-bit integer.")
    }

    /// An optional boolean (`true`/`false`, any case); see [`Params::opt_i64`].
    pub fn opt_bool(&self, k: &str) -> Result<Option<bool>, ApiError> {
        match self.opt_str(k) {
            None => Ok(None),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(_) => Err(ApiError::invalid_parameter(k, "It must be true or false.")),
        }
    }

    fn opt_parsed<T: std::str::FromStr>(&self, k: &str, why: &str) -> Result<Option<T>, ApiError> {
        match self.opt_str(k) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| ApiError::invalid_parameter(k, why)),
        }
    }

    /// All parameters in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The underlying map.
    pub fn into_inner(self) -> BTreeMap<String, String> {
        self.0
    }
}

impl From<BTreeMap<String, String>> for Params {
    fn from(map: BTreeMap<String, String>) -> Self {
        Params(map)
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Params {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Params(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> Params {
        [
            ("DBInstanceId", "dds-1"),
            ("Empty", ""),
            ("PageSize", "30"),
            ("Big", "9000000000"),
            ("Bad", "3x"),
            ("Flag", "True"),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn get_and_required() {
        let p = p();
        assert_eq!(p.get("Empty"), Some(""));
        assert!(p.contains("Empty"));
        assert_eq!(p.get("Nope"), None);
        assert_eq!(p.required("DBInstanceId"), Ok("dds-1"));
        let e = p.required("Empty").expect_err("empty is missing");
        assert_eq!(e.code, "MissingParameter");
        assert!(e.message.contains("\"Empty\""));
        assert_eq!(
            p.required("Nope").expect_err("missing").code,
            "MissingParameter"
        );
    }

    #[test]
    fn integers() {
        let p = p();
        assert_eq!(p.opt_i64("PageSize"), Ok(Some(30)));
        assert_eq!(p.opt_i32("PageSize"), Ok(Some(30)));
        assert_eq!(p.opt_i64("Big"), Ok(Some(9_000_000_000)));
        let e = p.opt_i32("Big").expect_err("overflow");
        assert_eq!((e.status, e.code.as_str()), (400, "InvalidParameter"));
        assert!(e.message.contains("\"Big\""));
        assert_eq!(p.opt_i64("Bad").expect_err("bad").code, "InvalidParameter");
        assert_eq!(p.opt_i64("Nope"), Ok(None));
        assert_eq!(p.opt_i64("Empty"), Ok(None));
        assert_eq!(p.opt_bool("Flag"), Ok(Some(true)));
        assert!(p.opt_bool("PageSize").is_err());
        assert_eq!(p.iter().count(), p.len());
    }
}
