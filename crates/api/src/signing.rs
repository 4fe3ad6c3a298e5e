//! Pure signing functions for signature V1 (HMAC-SHA1) and V3 (ACS3-HMAC-SHA256).
//!
//! The verifier is built on these, and so are [`sign_v1`] / [`sign_v3`], which produce
//! requests for our own CLI, load generator and tests. Keeping one implementation for both
//! directions means a canonicalisation bug shows up as a failing round trip.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::encoding::percent_encode_rfc3986;
use crate::keys::Secret;
use crate::verify::RawRequest;

/// The only V1 `SignatureMethod`.
pub const V1_SIGNATURE_METHOD: &str = "HMAC-SHA1";
/// The only V1 `SignatureVersion`.
pub const V1_SIGNATURE_VERSION: &str = "1.0";
/// The only V3 algorithm.
pub const V3_ALGORITHM: &str = "ACS3-HMAC-SHA256";
/// The Dds API version this server speaks.
pub const DDS_API_VERSION: &str = "2015-12-01";
/// `chrono` format of `Timestamp` / `x-acs-date`.
pub const TIMESTAMP_FORMAT: &str = "%Y-%m-%dT%H:%M:%SZ";
/// Content type of a form body.
pub const FORM_CONTENT_TYPE: &str = "application/x-www-form-urlencoded";

/// Lower-case hex SHA-256, as used for `x-acs-content-sha256` and the V3 string-to-sign.
pub fn hex_sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac_sha1(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(msg);
    mac.finalize().into_bytes().to_vec()
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(msg);
    mac.finalize().into_bytes().to_vec()
}

fn owned_pairs<K: AsRef<str>, V: AsRef<str>>(
    params: impl IntoIterator<Item = (K, V)>,
) -> Vec<(String, String)> {
    params
        .into_iter()
        .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned()))
        .collect()
}

fn join_encoded<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    pairs
        .map(|(k, v)| {
            format!(
                "{}={}",
                percent_encode_rfc3986(k),
                percent_encode_rfc3986(v)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// V1 CanonicalizedQueryString: every parameter except `Signature`, sorted by raw name
/// (then value), each side RFC 3986-encoded. Raw-name order is what every SDK uses
/// (Python `sorted`, Go `url.Values.Encode`, Java `TreeMap`). `Signature` is skipped here
/// so the same map can be passed before and after signing.
pub fn v1_canonicalized_query<K: AsRef<str>, V: AsRef<str>>(
    params: impl IntoIterator<Item = (K, V)>,
) -> String {
    let mut pairs = owned_pairs(params);
    pairs.retain(|(k, _)| k != "Signature");
    pairs.sort();
    join_encoded(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

/// V1 StringToSign: `METHOD & %2F & percentEncode(CanonicalizedQueryString)`, with the
/// method exactly as sent.
pub fn v1_string_to_sign<K: AsRef<str>, V: AsRef<str>>(
    method: &str,
    params: impl IntoIterator<Item = (K, V)>,
) -> String {
    format!(
        "{method}&%2F&{}",
        percent_encode_rfc3986(&v1_canonicalized_query(params))
    )
}

/// V1 Signature: `Base64(HMAC-SHA1(secret + "&", StringToSign))`.
pub fn v1_signature(secret: &str, string_to_sign: &str) -> String {
    let key = format!("{secret}&");
    base64::engine::general_purpose::STANDARD
        .encode(hmac_sha1(key.as_bytes(), string_to_sign.as_bytes()))
}

/// V3 CanonicalQueryString in its documented form: `name=value` pairs (empty value gives
/// `name=`), both sides RFC 3986-encoded, sorted by raw name then value.
pub fn v3_canonical_query<K: AsRef<str>, V: AsRef<str>>(
    params: impl IntoIterator<Item = (K, V)>,
) -> String {
    let mut pairs = owned_pairs(params);
    pairs.sort();
    join_encoded(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

/// Every canonical query string a conforming client may have signed, the documented
/// form first. Clients disagree in two places (docs/protocol.md §3.2 step 4):
/// darabonba util-py writes an empty value as a bare `name`, and the V3 doc sorts by the
/// encoded name while the SDKs sort by the raw one (the orders differ only for names with
/// reserved characters). Trying a handful of variants costs a few HMACs; none of them lets
/// one request pass as another, because names are always encoded, so `&` and `=` can
/// only be separators.
pub(crate) fn v3_canonical_query_variants(pairs: &[(String, String)]) -> Vec<String> {
    let encoded: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (percent_encode_rfc3986(k), percent_encode_rfc3986(v)))
        .collect();
    let mut by_raw: Vec<usize> = (0..pairs.len()).collect();
    by_raw.sort_by(|&a, &b| pairs[a].cmp(&pairs[b]));
    let mut by_encoded = by_raw.clone();
    by_encoded.sort_by(|&a, &b| encoded[a].cmp(&encoded[b]));
    let has_empty = pairs.iter().any(|(_, v)| v.is_empty());

    let render = |order: &[usize], bare_empty: bool| -> String {
        order
            .iter()
            .map(|&i| {
                let (k, v) = &encoded[i];
                if bare_empty && v.is_empty() {
                    k.clone()
                } else {
                    format!("{k}={v}")
                }
            })
            .collect::<Vec<_>>()
            .join("&")
    };

    let mut out = vec![render(&by_raw, false)];
    if by_encoded != by_raw {
        out.push(render(&by_encoded, false));
    }
    if has_empty {
        out.push(render(&by_raw, true));
        if by_encoded != by_raw {
            out.push(render(&by_encoded, true));
        }
    }
    out
}

/// Groups headers by lower-cased name; several values for one name are trimmed, sorted
/// and comma-joined, as the V3 rules and the util-py/util-go vectors require.
fn canonical_header_map(headers: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut grouped: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (name, value) in headers {
        grouped
            .entry(name.to_ascii_lowercase())
            .or_default()
            .push(value.trim());
    }
    grouped
        .into_iter()
        .map(|(name, mut values)| {
            values.sort_unstable();
            (name, values.join(","))
        })
        .collect()
}

/// V3 SignedHeaders for these headers: lower-cased unique names, sorted, `;`-joined.
pub fn v3_signed_headers(headers: &[(&str, &str)]) -> String {
    canonical_header_map(headers)
        .into_keys()
        .collect::<Vec<_>>()
        .join(";")
}

/// V3 CanonicalRequest. `headers` are exactly the headers to sign (name, value), in any
/// order and case; a name may repeat. `canonical_query` is already canonical (see
/// [`v3_canonical_query`]) because clients differ in how they build it.
pub fn v3_canonical_request(
    method: &str,
    canonical_uri: &str,
    canonical_query: &str,
    headers: &[(&str, &str)],
    hashed_payload: &str,
) -> String {
    let map = canonical_header_map(headers);
    let canonical_headers: String = map.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed_headers = map.keys().cloned().collect::<Vec<_>>().join(";");
    format!(
        "{method}\n{canonical_uri}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{hashed_payload}"
    )
}

/// V3 StringToSign: `ACS3-HMAC-SHA256 \n hex(SHA256(CanonicalRequest))`.
pub fn v3_string_to_sign(canonical_request: &str) -> String {
    format!(
        "{V3_ALGORITHM}\n{}",
        hex_sha256(canonical_request.as_bytes())
    )
}

/// V3 Signature: lower-case hex `HMAC-SHA256(secret, StringToSign)`; unlike V1 the key
/// has no trailing `&`.
pub fn v3_signature(secret: &str, canonical_request: &str) -> String {
    hex::encode(hmac_sha256(
        secret.as_bytes(),
        v3_string_to_sign(canonical_request).as_bytes(),
    ))
}

/// A random nonce in the shape the SDKs send (32 lower-case hex characters).
pub fn new_nonce() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Formats a time as `YYYY-MM-DDThh:mm:ssZ`.
pub fn format_timestamp(t: DateTime<Utc>) -> String {
    t.format(TIMESTAMP_FORMAT).to_string()
}

/// What to sign: one RPC call. Build it with [`SignRequest::new`] and the `with_*`
/// methods, then pass it to [`sign_v1`] or [`sign_v3`].
#[derive(Debug, Clone)]
pub struct SignRequest {
    /// HTTP method, normally `POST` (what the generated SDKs send) or `GET`.
    pub method: String,
    /// `host[:port]`; signed by V3 and so must equal the `Host` header that is sent.
    pub host: String,
    /// API name, e.g. `CreateBackup`.
    pub action: String,
    /// API version, normally [`DDS_API_VERSION`].
    pub version: String,
    /// The AccessKeyId.
    pub access_key_id: String,
    /// The AccessKey secret.
    pub secret: Secret,
    /// STS token: V1 sends it as `SecurityToken`, V3 as `x-acs-security-token`.
    pub security_token: Option<String>,
    /// Operation parameters for the query string. Must not repeat the V1 common names.
    pub query: BTreeMap<String, String>,
    /// Operation parameters for a form body (sent only if non-empty).
    pub form: BTreeMap<String, String>,
    /// Signing time.
    pub timestamp: DateTime<Utc>,
    /// Replay-protection nonce.
    pub nonce: String,
}

impl SignRequest {
    /// A call signed now with a fresh nonce and no parameters.
    pub fn new(
        method: &str,
        host: &str,
        action: &str,
        version: &str,
        access_key_id: &str,
        secret: Secret,
    ) -> Self {
        SignRequest {
            method: method.to_owned(),
            host: host.to_owned(),
            action: action.to_owned(),
            version: version.to_owned(),
            access_key_id: access_key_id.to_owned(),
            secret,
            security_token: None,
            query: BTreeMap::new(),
            form: BTreeMap::new(),
            timestamp: Utc::now(),
            nonce: new_nonce(),
        }
    }

    /// Adds a query parameter.
    pub fn with_query(mut self, k: &str, v: &str) -> Self {
        self.query.insert(k.to_owned(), v.to_owned());
        self
    }

    /// Adds a form-body parameter.
    pub fn with_form(mut self, k: &str, v: &str) -> Self {
        self.form.insert(k.to_owned(), v.to_owned());
        self
    }

    /// Sets the signing time.
    pub fn at(mut self, timestamp: DateTime<Utc>) -> Self {
        self.timestamp = timestamp;
        self
    }

    /// Sets the nonce.
    pub fn with_nonce(mut self, nonce: &str) -> Self {
        self.nonce = nonce.to_owned();
        self
    }

    /// Sets an STS token.
    pub fn with_security_token(mut self, token: &str) -> Self {
        self.security_token = Some(token.to_owned());
        self
    }

    fn form_body(&self) -> Vec<u8> {
        join_encoded(self.form.iter().map(|(k, v)| (k.as_str(), v.as_str()))).into_bytes()
    }
}

/// A signed request, ready to send as `METHOD /?{query}` with `headers` and `body`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRequest {
    /// HTTP method.
    pub method: String,
    /// Encoded query string, without `?`.
    pub query: String,
    /// Headers the signature depends on (V3: including `host` and `authorization`).
    pub headers: Vec<(String, String)>,
    /// Form body, empty if there are no form parameters.
    pub body: Vec<u8>,
}

impl SignedRequest {
    /// The request as the HTTP layer would hand it to [`crate::authenticate`].
    pub fn into_raw_request(self, peer: SocketAddr, secure: bool) -> RawRequest {
        RawRequest {
            method: self.method,
            raw_query: self.query,
            headers: self.headers,
            body: self.body,
            peer,
            secure,
        }
    }
}

/// Signs with V1 (HMAC-SHA1): the common parameters and `Signature` go in the query
/// string, as aliyun-python-sdk-core sends them.
pub fn sign_v1(req: &SignRequest) -> SignedRequest {
    let mut query = req.query.clone();
    let common = [
        ("AccessKeyId", req.access_key_id.clone()),
        ("Action", req.action.clone()),
        ("Format", "JSON".to_owned()),
        ("SignatureMethod", V1_SIGNATURE_METHOD.to_owned()),
        ("SignatureNonce", req.nonce.clone()),
        ("SignatureVersion", V1_SIGNATURE_VERSION.to_owned()),
        ("Timestamp", format_timestamp(req.timestamp)),
        ("Version", req.version.clone()),
    ];
    for (k, v) in common {
        query.insert(k.to_owned(), v);
    }
    if let Some(token) = &req.security_token {
        query.insert("SecurityToken".to_owned(), token.clone());
    }
    let sts = v1_string_to_sign(&req.method, query.iter().chain(req.form.iter()));
    let signature = v1_signature(req.secret.expose(), &sts);
    let mut query_string = join_encoded(query.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    query_string.push_str("&Signature=");
    query_string.push_str(&percent_encode_rfc3986(&signature));

    let mut headers = vec![("host".to_owned(), req.host.clone())];
    if !req.form.is_empty() {
        headers.push(("content-type".to_owned(), FORM_CONTENT_TYPE.to_owned()));
    }
    SignedRequest {
        method: req.method.clone(),
        query: query_string,
        headers,
        body: req.form_body(),
    }
}

/// Signs with V3 (ACS3-HMAC-SHA256): action, version, date and nonce travel in `x-acs-*`
/// headers and the query holds only operation parameters, as the tea SDKs send them.
pub fn sign_v3(req: &SignRequest) -> SignedRequest {
    let body = req.form_body();
    let payload_hash = hex_sha256(&body);
    let mut headers: Vec<(String, String)> = vec![
        ("host".to_owned(), req.host.clone()),
        ("x-acs-action".to_owned(), req.action.clone()),
        ("x-acs-version".to_owned(), req.version.clone()),
        ("x-acs-date".to_owned(), format_timestamp(req.timestamp)),
        ("x-acs-signature-nonce".to_owned(), req.nonce.clone()),
        ("x-acs-content-sha256".to_owned(), payload_hash.clone()),
    ];
    if let Some(token) = &req.security_token {
        headers.push(("x-acs-security-token".to_owned(), token.clone()));
    }
    if !req.form.is_empty() {
        headers.push(("content-type".to_owned(), FORM_CONTENT_TYPE.to_owned()));
    }
    let signed: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let canonical_query = v3_canonical_query(req.query.iter());
    let canonical_request =
        v3_canonical_request(&req.method, "/", &canonical_query, &signed, &payload_hash);
    let signature = v3_signature(req.secret.expose(), &canonical_request);
    let authorization = format!(
        "{V3_ALGORITHM} Credential={},SignedHeaders={},Signature={signature}",
        req.access_key_id,
        v3_signed_headers(&signed)
    );
    headers.push(("authorization".to_owned(), authorization));
    SignedRequest {
        method: req.method.clone(),
        query: join_encoded(req.query.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
        headers,
        body,
    }
}

#[cfg(test)]
mod tests {
    //! Every vector of docs/protocol.md §4, recomputed.
    use super::*;

    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn ecs() -> Vec<(&'static str, &'static str)> {
        vec![
            ("AccessKeyId", "testid"),
            ("Action", "DescribeRegions"),
            ("Format", "XML"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
            ("SignatureVersion", "1.0"),
            ("Timestamp", "2016-02-23T12:46:24Z"),
            ("Version", "2014-05-26"),
        ]
    }

    #[test]
    fn v1_a_ecs_describe_regions() {
        let sts = v1_string_to_sign("GET", ecs());
        assert_eq!(
            sts,
            "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions%26Format%3DXML%26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3D3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf%26SignatureVersion%3D1.0%26Timestamp%3D2016-02-23T12%253A46%253A24Z%26Version%3D2014-05-26"
        );
        let sig = v1_signature("testsecret", &sts);
        assert_eq!(sig, "OLeaidS1JvxuMvnyHOwuJ+uX5qY=");
        assert_eq!(
            percent_encode_rfc3986(&sig),
            "OLeaidS1JvxuMvnyHOwuJ%2BuX5qY%3D"
        );
    }

    #[test]
    fn v1_b_old_timestamp_key() {
        let params: Vec<(&str, &str)> = ecs()
            .into_iter()
            .map(|(k, v)| {
                if k == "Timestamp" {
                    ("TimeStamp", v)
                } else {
                    (k, v)
                }
            })
            .collect();
        let sts = v1_string_to_sign("GET", params);
        assert_eq!(
            v1_signature("testsecret", &sts),
            "CT9X0VtwR86fNWSnsc6v8YGOjuE="
        );
    }

    #[test]
    fn v1_c_util_py() {
        let sts = v1_string_to_sign("GET", [("query", "test"), ("body", "test")]);
        assert_eq!(sts, "GET&%2F&body%3Dtest%26query%3Dtest");
        assert_eq!(v1_signature("secret", &sts), "XlUyV4sXjOuX5FnjUz9IF9tm5rU=");
    }

    #[test]
    fn v1_d_util_go_empty_method() {
        let sts = v1_string_to_sign("", [("test", "ok")]);
        assert_eq!(sts, "&%2F&test%3Dok");
        assert_eq!(
            v1_signature("accessKeySecret", &sts),
            "jHx/oHoHNrbVfhncHEvPdHXZwHU="
        );
    }

    fn go_params() -> Vec<(&'static str, &'static str)> {
        vec![
            ("AccessKeyId", "accessKeyId"),
            ("Action", ""),
            ("Format", "JSON"),
            ("RegionId", "regionId"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", "MOCK_UUID"),
            ("SignatureType", ""),
            ("SignatureVersion", "1.0"),
            ("Timestamp", "mock date"),
            ("Version", ""),
        ]
    }

    #[test]
    fn v1_e1_sdk_go_empty_values_and_space() {
        let sts = v1_string_to_sign("GET", go_params());
        assert!(sts.contains("mock%2520date"), "{sts}");
        assert!(sts.contains("Action%3D%26"), "{sts}");
        assert_eq!(
            v1_signature("accessKeySecret", &sts),
            "7loPmFjvDnzOVnQeQNj85S6nFGY="
        );
    }

    #[test]
    fn v1_e2_sdk_go_security_token() {
        let mut p = go_params();
        p.push(("SecurityToken", "accessKeyStsToken"));
        let sts = v1_string_to_sign("GET", p);
        assert_eq!(
            v1_signature("accessKeySecret", &sts),
            "5Nxdcler+ihqWqv0Hr2On4PsBf4="
        );
    }

    #[test]
    fn v1_f_dysms_non_ascii() {
        let p = [
            ("AccessKeyId", "testId"),
            ("Action", "SendSms"),
            ("Format", "XML"),
            ("OutId", "123"),
            ("PhoneNumbers", "15300000001"),
            ("RegionId", "cn-hangzhou"),
            ("SignName", "阿里云短信测试专用"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", "45e25e9b-0a6f-4070-8c85-2956eda1b466"),
            ("SignatureVersion", "1.0"),
            ("TemplateCode", "SMS_71390007"),
            ("TemplateParam", "{\"customer\":\"test\"}"),
            ("Timestamp", "2017-07-12T02:42:19Z"),
            ("Version", "2017-05-25"),
        ];
        let sts = v1_string_to_sign("GET", p);
        assert_eq!(
            v1_signature("testSecret", &sts),
            "zJDF+Lrzhj/ThnlvIToysFRq6t4="
        );
    }

    #[test]
    fn v1_ignores_signature_param() {
        let mut p = ecs();
        p.push(("Signature", "whatever"));
        assert_eq!(v1_string_to_sign("GET", p), v1_string_to_sign("GET", ecs()));
    }

    fn ecs_v3_headers(
        date: &'static str,
        nonce: &'static str,
    ) -> Vec<(&'static str, &'static str)> {
        vec![
            ("host", "ecs.cn-shanghai.aliyuncs.com"),
            ("x-acs-action", "RunInstances"),
            ("x-acs-content-sha256", EMPTY_SHA256),
            ("x-acs-date", date),
            ("x-acs-signature-nonce", nonce),
            ("x-acs-version", "2014-05-26"),
        ]
    }

    fn ecs_v3_query() -> String {
        v3_canonical_query([
            ("RegionId", "cn-shanghai"),
            (
                "ImageId",
                "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd",
            ),
        ])
    }

    #[test]
    fn v3_a_official_doc_example() {
        assert_eq!(hex_sha256(b""), EMPTY_SHA256);
        let headers = ecs_v3_headers("2023-10-26T10:22:32Z", "3156853299f313e23d1673dc12e1703d");
        let cr = v3_canonical_request("POST", "/", &ecs_v3_query(), &headers, EMPTY_SHA256);
        let want_cr = "POST\n/\nImageId=win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd&RegionId=cn-shanghai\nhost:ecs.cn-shanghai.aliyuncs.com\nx-acs-action:RunInstances\nx-acs-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\nx-acs-date:2023-10-26T10:22:32Z\nx-acs-signature-nonce:3156853299f313e23d1673dc12e1703d\nx-acs-version:2014-05-26\n\nhost;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(cr, want_cr);
        assert_eq!(
            v3_string_to_sign(&cr),
            "ACS3-HMAC-SHA256\n7ea06492da5221eba5297e897ce16e55f964061054b7695beedaac1145b1e259"
        );
        assert_eq!(
            v3_signature("YourAccessKeySecret", &cr),
            "06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
        );
        assert_eq!(
            v3_signed_headers(&headers),
            "host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version"
        );
    }

    #[test]
    fn v3_b_doc_header_table() {
        let headers = ecs_v3_headers("2023-10-26T09:01:01Z", "d410180a5abf7fe235dd9b74aca91fc0");
        let cr = v3_canonical_request("POST", "/", &ecs_v3_query(), &headers, EMPTY_SHA256);
        assert_eq!(
            v3_signature("YourAccessKeySecret", &cr),
            "e521358f7776c97df52e6b2891a8bc73026794a071b50c3323388c4e0df64804"
        );
    }

    const UTIL_PAYLOAD: &str = "55e12e91650d2fec56ec74e1d3e4ddbfce2ef3a65890c2a19ecf88a307e76a23";

    #[test]
    fn v3_c_util_py_bare_empty_and_multi_value() {
        // Given as two raw values to exercise the trim/sort/join rule.
        let headers = [("X-Acs-Test", " https "), ("x-acs-test", "http")];
        let cr = v3_canonical_request("GET", "", "empty&test=ok", &headers, UTIL_PAYLOAD);
        assert_eq!(
            cr,
            format!("GET\n\nempty&test=ok\nx-acs-test:http,https\n\nx-acs-test\n{UTIL_PAYLOAD}")
        );
        assert_eq!(
            v3_signature("secret", &cr),
            "da772425f29289d3460d5fc961455d40c5e8c6afd0888b78a910c991e6a14846"
        );
        let variants = v3_canonical_query_variants(&[
            ("test".to_owned(), "ok".to_owned()),
            ("empty".to_owned(), String::new()),
        ]);
        assert_eq!(variants, ["empty=&test=ok", "empty&test=ok"]);
    }

    #[test]
    fn v3_d_util_go_equals_empty() {
        let headers = [("x-acs-test", "http,https")];
        let cq = v3_canonical_query([("test", "ok"), ("empty", "")]);
        assert_eq!(cq, "empty=&test=ok");
        let cr = v3_canonical_request("", "/", &cq, &headers, UTIL_PAYLOAD);
        assert_eq!(
            v3_signature("secret", &cr),
            "4ab59fffe3c5738ff8a2729f90cc04fe18b02a4b15b2102cbaf92f9ff3df2ea3"
        );
    }

    #[test]
    fn v3_query_sort_variants() {
        // '.' sorts before '/' raw, but "%2F" sorts before "." once encoded.
        let pairs = [
            ("a/".to_owned(), "1".to_owned()),
            ("a.".to_owned(), "2".to_owned()),
        ];
        let v = v3_canonical_query_variants(&pairs);
        assert_eq!(v, ["a.=2&a%2F=1", "a%2F=1&a.=2"]);
    }

    #[test]
    fn sign_v1_shape() {
        let t = DateTime::parse_from_rfc3339("2026-11-27T20:30:57Z")
            .expect("valid")
            .with_timezone(&Utc);
        let s = sign_v1(
            &SignRequest::new(
                "POST",
                "h",
                "CreateBackup",
                DDS_API_VERSION,
                "testid",
                "s".into(),
            )
            .at(t)
            .with_nonce("n")
            .with_query("DBInstanceId", "dds-1"),
        );
        assert!(
            s.query.contains("Timestamp=2026-11-27T20%3A30%3A57Z"),
            "{}",
            s.query
        );
        assert!(s.query.contains("Format=JSON"));
        assert!(s.query.contains("&Signature="));
        assert!(s.body.is_empty());
    }
}
