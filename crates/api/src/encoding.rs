//! Percent-encoding as the Alibaba signatures define it, and decoding of
//! `application/x-www-form-urlencoded` strings (query strings and form bodies).

use percent_encoding::{percent_decode, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::error::ApiError;

/// RFC 3986 unreserved characters stay as they are; every other byte is escaped.
const RFC3986: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes `s` the way both Alibaba signature versions do: UTF-8 bytes, only
/// `A-Z a-z 0-9 - _ . ~` left as is, upper-case hex, so a space is `%20` (never `+`),
/// `*` is `%2A` and `~` stays `~`.
pub fn percent_encode_rfc3986(s: &str) -> String {
    utf8_percent_encode(s, RFC3986).to_string()
}

/// Decodes one form-urlencoded component: `+` is a space (tea's query builder uses
/// `urlencode`), `%XX` is a byte. An invalid escape is kept literally, as browsers and
/// Python's `unquote` do, so only the UTF-8 check can fail.
fn decode_component(raw: &str) -> Result<String, Vec<u8>> {
    let plus_as_space: Vec<u8> = raw
        .bytes()
        .map(|b| if b == b'+' { b' ' } else { b })
        .collect();
    let bytes: Vec<u8> = percent_decode(&plus_as_space).collect();
    String::from_utf8(bytes).map_err(|e| e.into_bytes())
}

/// Splits and decodes `a=1&b=2`. Empty segments (`a=1&&b=2`, a trailing `&`) carry no
/// parameter and are skipped; a segment without `=` is a parameter with an empty value.
pub(crate) fn parse_pairs(raw: &str) -> Result<Vec<(String, String)>, ApiError> {
    let mut out = Vec::new();
    for segment in raw.split('&').filter(|s| !s.is_empty()) {
        let (raw_name, raw_value) = segment.split_once('=').unwrap_or((segment, ""));
        let name = decode_component(raw_name).map_err(|bytes| {
            ApiError::invalid_parameter(
                &String::from_utf8_lossy(&bytes),
                "The parameter name is not valid UTF-8.",
            )
        })?;
        let value = decode_component(raw_value).map_err(|_| {
            ApiError::invalid_parameter(&name, "The parameter value is not valid UTF-8.")
        })?;
        out.push((name, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_alibaba() {
        assert_eq!(percent_encode_rfc3986("a b*c~d+e/f"), "a%20b%2Ac~d%2Be%2Ff");
        assert_eq!(percent_encode_rfc3986("-_.~AZaz09"), "-_.~AZaz09");
        assert_eq!(percent_encode_rfc3986("12:46:24"), "12%3A46%3A24");
        assert_eq!(percent_encode_rfc3986("é"), "%C3%A9");
        assert_eq!(percent_encode_rfc3986(""), "");
    }

    #[test]
    fn decodes_plus_and_escapes() {
        let pairs = parse_pairs("a=x+y&b=x%20y&c=%2B&d&e=&&f=%zz&g=%E9%98%BF").expect("ok");
        let want = [
            ("a", "x y"),
            ("b", "x y"),
            ("c", "+"),
            ("d", ""),
            ("e", ""),
            ("f", "%zz"),
            ("g", "阿"),
        ];
        let got: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn value_split_at_first_equals() {
        let pairs = parse_pairs("TemplateParam=a=b").expect("ok");
        assert_eq!(pairs, vec![("TemplateParam".to_owned(), "a=b".to_owned())]);
    }

    #[test]
    fn rejects_non_utf8() {
        let err = parse_pairs("Name=%FF").expect_err("non-utf8 value");
        assert_eq!((err.status, err.code.as_str()), (400, "InvalidParameter"));
        assert!(err.message.contains("\"Name\""), "{}", err.message);
        let err = parse_pairs("%C3=1").expect_err("non-utf8 name");
        assert_eq!(err.code, "InvalidParameter");
    }
}
