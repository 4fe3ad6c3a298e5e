//! Tests of [`authenticate`]: round trips, the §4 vectors as whole requests, every error
//! code produced by a crafted request, and property tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;

use super::*;
use crate::encoding::{parse_pairs, percent_encode_rfc3986};
use crate::keys::{KeyState, Secret};
use crate::nonce::MemoryNonceStore;
use crate::signing::{
    hex_sha256, sign_v1, sign_v3, v1_string_to_sign, v3_canonical_request, v3_signature,
    v3_signed_headers, SignRequest, DDS_API_VERSION,
};

const NOW: &str = "2026-11-27T20:30:57Z";
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("valid test time")
        .with_timezone(&Utc)
}

fn opts() -> VerifyOptions {
    VerifyOptions::at(t(NOW))
}

fn store() -> MemoryNonceStore {
    MemoryNonceStore::with_clock(1000, || t(NOW))
}

fn keys(ak: &str) -> Result<Option<KeyState>, ApiError> {
    match ak {
        "testid" => Ok(Some(KeyState::Active(Secret::new("testsecret")))),
        "YourAccessKeyId" => Ok(Some(KeyState::Active(Secret::new("YourAccessKeySecret")))),
        "otherid" => Ok(Some(KeyState::Active(Secret::new("othersecret")))),
        "disabled" => Ok(Some(KeyState::Inactive)),
        "broken" => Err(ApiError::internal("catalog unavailable")),
        _ => Ok(None),
    }
}

fn peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50000))
}

fn base() -> SignRequest {
    SignRequest::new(
        "POST",
        "127.0.0.1:8080",
        "CreateBackup",
        DDS_API_VERSION,
        "testid",
        Secret::new("testsecret"),
    )
    .at(t(NOW))
    .with_nonce("530c40e4523a55cb239e8ad332372ec0")
    .with_query("DBInstanceId", "dds-bp1test")
}

fn run(req: &RawRequest) -> Result<AuthenticatedRequest, ApiError> {
    authenticate(req, &keys, &store(), &opts())
}

fn err_of(req: &RawRequest) -> ApiError {
    match run(req) {
        Ok(ok) => panic!("expected an error, got {ok:?}"),
        Err(e) => e,
    }
}

fn assert_err(req: &RawRequest, status: u16, code: &str) -> ApiError {
    let e = err_of(req);
    assert_eq!((e.status, e.code.as_str()), (status, code), "{e:?}");
    e
}

fn v1(sr: &SignRequest) -> RawRequest {
    sign_v1(sr).into_raw_request(peer(), false)
}

fn v3(sr: &SignRequest) -> RawRequest {
    sign_v3(sr).into_raw_request(peer(), true)
}

fn encode_pairs(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
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

/// Decodes the query, lets `f` edit it, and re-encodes it (without re-signing).
fn edit_query(req: &mut RawRequest, f: impl FnOnce(&mut Vec<(String, String)>)) {
    let mut pairs = parse_pairs(&req.raw_query).expect("test query decodes");
    f(&mut pairs);
    req.raw_query = encode_pairs(&pairs);
}

fn set_param(req: &mut RawRequest, name: &str, value: &str) {
    edit_query(req, |p| match p.iter_mut().find(|(k, _)| k == name) {
        Some(slot) => slot.1 = value.to_owned(),
        None => p.push((name.to_owned(), value.to_owned())),
    });
}

fn drop_param(req: &mut RawRequest, name: &str) {
    edit_query(req, |p| p.retain(|(k, _)| k != name));
}

fn set_header(req: &mut RawRequest, name: &str, value: &str) {
    req.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    req.headers.push((name.to_owned(), value.to_owned()));
}

fn drop_header(req: &mut RawRequest, name: &str) {
    req.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
}

fn header(req: &RawRequest, name: &str) -> String {
    req.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

fn awkward(sr: SignRequest) -> SignRequest {
    sr.with_query("Space", "a b")
        .with_query("Star", "x*y")
        .with_query("Tilde", "~home")
        .with_query("Plus", "1+1")
        .with_query("Unicode", "阿里云 é")
        .with_query("Empty", "")
        .with_query("Json", "[{\"a\":1}]")
        .with_query("Tag.1.Key", "env")
        .with_query("RegionId", "cn-hangzhou")
}

fn want_awkward() -> BTreeMap<String, String> {
    [
        ("DBInstanceId", "dds-bp1test"),
        ("Space", "a b"),
        ("Star", "x*y"),
        ("Tilde", "~home"),
        ("Plus", "1+1"),
        ("Unicode", "阿里云 é"),
        ("Empty", ""),
        ("Json", "[{\"a\":1}]"),
        ("Tag.1.Key", "env"),
        ("RegionId", "cn-hangzhou"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

// ---- round trips ----

#[test]
fn v1_get_round_trip_with_awkward_values() {
    let mut sr = awkward(base());
    sr.method = "GET".into();
    let ok = run(&v1(&sr)).expect("verifies");
    assert_eq!(ok.action, "CreateBackup");
    assert_eq!(ok.version, "2015-12-01");
    assert_eq!(ok.access_key_id, "testid");
    assert_eq!(ok.kind, SignatureKind::V1);
    assert_eq!(ok.format, ResponseFormat::Json);
    assert_eq!(ok.timestamp, t(NOW));
    assert_eq!(ok.security_token, None);
    assert_eq!(ok.params.clone().into_inner(), want_awkward());
    for common in COMMON_PARAMS {
        assert!(!ok.params.contains(common), "{common} leaked into params");
    }
}

#[test]
fn v1_query_with_plus_for_space_verifies() {
    // tea builds its URL with urlencode: a space arrives as '+'.
    let mut req = v1(&base().with_query("Desc", "a b"));
    req.raw_query = req.raw_query.replace("a%20b", "a+b");
    assert!(req.raw_query.contains("Desc=a+b"));
    assert_eq!(run(&req).expect("verifies").params.get("Desc"), Some("a b"));
}

#[test]
fn v1_post_form_round_trip() {
    let sr = base()
        .with_form("BackupMethod", "Physical")
        .with_form("Note", "x y*~+é");
    let req = v1(&sr);
    assert_eq!(
        header(&req, "content-type"),
        "application/x-www-form-urlencoded"
    );
    let ok = run(&req).expect("verifies");
    assert_eq!(ok.params.get("BackupMethod"), Some("Physical"));
    assert_eq!(ok.params.get("Note"), Some("x y*~+é"));
    assert_eq!(ok.params.get("DBInstanceId"), Some("dds-bp1test"));
}

#[test]
fn v1_form_content_type_with_charset_is_parsed() {
    let mut req = v1(&base().with_form("BackupMethod", "Physical"));
    set_header(
        &mut req,
        "Content-Type",
        "Application/X-WWW-Form-Urlencoded; charset=UTF-8",
    );
    assert!(run(&req).is_ok());
}

#[test]
fn v1_non_form_body_is_not_signed_or_parsed() {
    let mut req = v1(&base());
    req.body = b"{\"not\":\"a form\"}".to_vec();
    set_header(&mut req, "content-type", "application/json");
    let ok = run(&req).expect("verifies");
    assert!(!ok.params.contains("{\"not\":\"a form\"}"));
}

#[test]
fn v1_security_token_and_sdk_extras() {
    let mut sr = base().with_security_token("STS.token");
    sr.query.insert("SignatureType".into(), String::new());
    let ok = run(&v1(&sr)).expect("verifies");
    assert_eq!(ok.security_token.as_deref(), Some("STS.token"));
    assert_eq!(ok.params.get("SecurityToken"), Some("STS.token"));
    assert!(!ok.params.contains("SignatureType"));
}

#[test]
fn v1_lower_case_format_is_json() {
    let mut req = v1(&base());
    set_param(&mut req, "Format", "json");
    // Re-sign: Format is signed.
    let sr = base();
    let mut query = parse_pairs(&req.raw_query).expect("decodes");
    query.retain(|(k, _)| k != "Signature");
    let sts = v1_string_to_sign("POST", query.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let sig = crate::signing::v1_signature(sr.secret.expose(), &sts);
    query.push(("Signature".into(), sig));
    req.raw_query = encode_pairs(&query);
    assert_eq!(run(&req).expect("verifies").format, ResponseFormat::Json);
}

#[test]
fn v3_post_query_round_trip_with_awkward_values() {
    let ok = run(&v3(&awkward(base()))).expect("verifies");
    assert_eq!(ok.kind, SignatureKind::V3);
    assert_eq!(ok.action, "CreateBackup");
    assert_eq!(ok.version, "2015-12-01");
    assert_eq!(ok.access_key_id, "testid");
    assert_eq!(ok.params.into_inner(), want_awkward());
}

#[test]
fn v3_get_and_form_round_trips() {
    let mut get = base();
    get.method = "GET".into();
    assert!(run(&v3(&get)).is_ok());

    let form = base()
        .with_form("BackupMethod", "Physical")
        .with_form("N", "a b");
    let req = v3(&form);
    assert_ne!(header(&req, "x-acs-content-sha256"), EMPTY_SHA256);
    let ok = run(&req).expect("verifies");
    assert_eq!(ok.params.get("BackupMethod"), Some("Physical"));
    assert_eq!(ok.params.get("N"), Some("a b"));
}

#[test]
fn v3_header_names_any_case_and_space_after_commas() {
    let mut req = v3(&base());
    for (k, _) in req.headers.iter_mut() {
        *k = k.to_ascii_uppercase();
    }
    let auth = header(&req, "authorization").replace(',', ", ");
    set_header(&mut req, "Authorization", &auth);
    assert!(run(&req).is_ok());
}

#[test]
fn v3_security_token_must_be_signed() {
    let ok = run(&v3(&base().with_security_token("STS.tok"))).expect("verifies");
    assert_eq!(ok.security_token.as_deref(), Some("STS.tok"));

    let mut req = v3(&base());
    req.headers
        .push(("x-acs-security-token".into(), "smuggled".into()));
    let e = assert_err(&req, 400, "IncompleteSignature");
    assert!(e.message.contains("x-acs-security-token"));
}

/// Signs a V3 request by hand, with `canonical_query` chosen by the test, and extra
/// (possibly repeated) signed headers.
fn manual_v3(raw_query: &str, canonical_query: &str, extra: &[(&str, &str)]) -> RawRequest {
    let mut headers: Vec<(String, String)> = [
        ("host", "127.0.0.1:8080"),
        ("x-acs-action", "CreateBackup"),
        ("x-acs-version", DDS_API_VERSION),
        ("x-acs-date", NOW),
        ("x-acs-signature-nonce", "0123456789abcdef0123456789abcdef"),
        ("x-acs-content-sha256", EMPTY_SHA256),
    ]
    .iter()
    .chain(extra.iter())
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let cr = v3_canonical_request("POST", "/", canonical_query, &pairs, EMPTY_SHA256);
    let auth = format!(
        "ACS3-HMAC-SHA256 Credential=testid,SignedHeaders={},Signature={}",
        v3_signed_headers(&pairs),
        v3_signature("testsecret", &cr)
    );
    headers.push(("Authorization".into(), auth));
    RawRequest {
        method: "POST".into(),
        raw_query: raw_query.into(),
        headers,
        body: Vec::new(),
        peer: peer(),
        secure: false,
    }
}

#[test]
fn v3_empty_value_quirks() {
    // util-go / documented form.
    assert!(run(&manual_v3("empty=&test=ok", "empty=&test=ok", &[])).is_ok());
    // util-py writes a bare name; the wire query may carry either shape.
    assert!(run(&manual_v3("empty=&test=ok", "empty&test=ok", &[])).is_ok());
    assert!(run(&manual_v3("empty&test=ok", "empty&test=ok", &[])).is_ok());
    // But never the bare form for a non-empty value.
    let e = assert_err(
        &manual_v3("empty=x&test=ok", "empty&test=ok", &[]),
        400,
        "SignatureDoesNotMatch",
    );
    assert!(e
        .message
        .contains("server StringToSign is [ACS3-HMAC-SHA256\n"));
}

#[test]
fn v3_encoded_name_sort_order_is_accepted() {
    assert!(run(&manual_v3("a.=2&a%2F=1", "a%2F=1&a.=2", &[])).is_ok());
    assert!(run(&manual_v3("a.=2&a%2F=1", "a.=2&a%2F=1", &[])).is_ok());
}

#[test]
fn v3_multi_value_signed_header() {
    let req = manual_v3("", "", &[("x-acs-test", "https "), ("X-Acs-Test", " http")]);
    assert!(run(&req).is_ok());
}

// ---- the §4 vectors as whole requests ----

#[test]
fn v3_a_vector_as_request() {
    let auth = "ACS3-HMAC-SHA256 Credential=YourAccessKeyId,SignedHeaders=host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version,Signature=06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0";
    let req = RawRequest {
        method: "POST".into(),
        raw_query:
            "ImageId=win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd&RegionId=cn-shanghai"
                .into(),
        headers: [
            ("host", "ecs.cn-shanghai.aliyuncs.com"),
            ("x-acs-action", "RunInstances"),
            ("x-acs-version", "2014-05-26"),
            ("x-acs-date", "2023-10-26T10:22:32Z"),
            ("x-acs-signature-nonce", "3156853299f313e23d1673dc12e1703d"),
            ("x-acs-content-sha256", EMPTY_SHA256),
            ("Authorization", auth),
            ("Content-Length", "0"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect(),
        body: Vec::new(),
        peer: peer(),
        secure: true,
    };
    let o = VerifyOptions::at(t("2023-10-26T10:30:00Z"));
    let ok = authenticate(&req, &keys, &store(), &o).expect("official vector verifies");
    assert_eq!(ok.action, "RunInstances");
    assert_eq!(ok.version, "2014-05-26");
    assert_eq!(ok.access_key_id, "YourAccessKeyId");
    assert_eq!(ok.params.get("RegionId"), Some("cn-shanghai"));
    assert_eq!(ok.params.len(), 2);
}

#[test]
fn v1_a_vector_as_request_is_refused_for_xml() {
    let raw_query = "AccessKeyId=testid&Action=DescribeRegions&Format=XML&SignatureMethod=HMAC-SHA1&SignatureNonce=3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf&SignatureVersion=1.0&Timestamp=2016-02-23T12%3A46%3A24Z&Version=2014-05-26&Signature=OLeaidS1JvxuMvnyHOwuJ%2BuX5qY%3D";
    let req = RawRequest {
        method: "GET".into(),
        raw_query: raw_query.into(),
        headers: Vec::new(),
        body: Vec::new(),
        peer: peer(),
        secure: false,
    };
    let o = VerifyOptions::at(t("2016-02-23T12:50:00Z"));
    let e = authenticate(&req, &keys, &store(), &o).expect_err("XML is not served");
    assert_eq!(
        (e.status, e.code.as_str()),
        (400, "InvalidParameter.Format")
    );
    assert!(e.message.contains("Only JSON is supported"));

    // The same request with Format=JSON and its own signature verifies, proving the
    // vector's canonicalisation path is the verifier's.
    let mut pairs = parse_pairs(raw_query).expect("decodes");
    pairs.retain(|(k, _)| k != "Signature");
    for (k, v) in pairs.iter_mut() {
        if k == "Format" {
            *v = "JSON".into();
        }
    }
    let sts = v1_string_to_sign("GET", pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    pairs.push((
        "Signature".into(),
        crate::signing::v1_signature("testsecret", &sts),
    ));
    let req = RawRequest {
        raw_query: encode_pairs(&pairs),
        ..req
    };
    let ok = authenticate(&req, &keys, &store(), &o).expect("verifies");
    assert_eq!(ok.action, "DescribeRegions");
    assert!(ok.params.is_empty());
}

// ---- errors, in §11 order ----

#[test]
fn duplicate_parameter_is_rejected() {
    let mut req = v1(&base());
    req.raw_query.push_str("&DBInstanceId=dds-other");
    let e = assert_err(&req, 400, "InvalidParameter");
    assert!(e.message.contains("\"DBInstanceId\""), "{}", e.message);

    // Across query and form body too.
    let mut req = v1(&base().with_form("X", "1"));
    req.raw_query.push_str("&X=1");
    assert_err(&req, 400, "InvalidParameter");
}

#[test]
fn non_utf8_is_rejected() {
    let mut req = v1(&base());
    req.raw_query.push_str("&Bad=%FF%FE");
    assert_err(&req, 400, "InvalidParameter");

    let mut req = v1(&base().with_form("X", "1"));
    req.body = vec![b'X', b'=', 0xff];
    assert_err(&req, 400, "InvalidParameter");
}

#[test]
fn v1_missing_common_parameters() {
    let empty = RawRequest {
        method: "GET".into(),
        raw_query: String::new(),
        headers: Vec::new(),
        body: Vec::new(),
        peer: peer(),
        secure: false,
    };
    assert_err(&empty, 400, "MissingAction");
    for (name, code) in [
        ("Action", "MissingAction"),
        ("Version", "MissingVersion"),
        ("AccessKeyId", "MissingAccessKeyId"),
        ("Signature", "MissingSignature"),
        ("SignatureMethod", "MissingSignatureMethod"),
        ("SignatureVersion", "MissingSignatureVersion"),
        ("SignatureNonce", "MissingSignatureNonce"),
        ("Timestamp", "MissingTimestamp"),
    ] {
        let mut req = v1(&base());
        drop_param(&mut req, name);
        let e = assert_err(&req, 400, code);
        assert_eq!(e.message, format!("{name} is mandatory for this action."));
        // Empty counts as missing.
        let mut req = v1(&base());
        set_param(&mut req, name, "");
        assert_err(&req, 400, code);
    }
}

#[test]
fn v1_unsupported_signature_method() {
    for (name, value) in [
        ("SignatureMethod", "HMAC-SHA256"),
        ("SignatureVersion", "2.0"),
    ] {
        let mut req = v1(&base());
        set_param(&mut req, name, value);
        assert_err(&req, 400, "InvalidSignatureMethod");
    }
}

#[test]
fn v3_missing_mandatory_parts() {
    for (hdr, code) in [
        ("x-acs-action", "MissingAction"),
        ("x-acs-version", "MissingVersion"),
        ("x-acs-date", "MissingTimestamp"),
    ] {
        let mut req = v3(&base());
        drop_header(&mut req, hdr);
        let e = assert_err(&req, 400, code);
        assert!(e.message.contains(hdr), "{}", e.message);
    }
    let mut req = v3(&base());
    let auth = header(&req, "authorization").replace("Credential=testid", "Credential=");
    set_header(&mut req, "Authorization", &auth);
    assert_err(&req, 400, "MissingAccessKeyId");

    let mut req = v3(&base());
    let auth = header(&req, "authorization");
    let cut = auth.find(",Signature=").expect("has signature");
    set_header(&mut req, "Authorization", &auth[..cut]);
    let e = assert_err(&req, 400, "MissingSignature");
    assert_eq!(e.message, "Signature is mandatory for this action.");

    let mut req = v3(&base());
    set_header(&mut req, "x-acs-signature-nonce", "");
    assert_err(&req, 400, "MissingSignatureNonce");
}

#[test]
fn v3_unsupported_algorithm() {
    for alg in ["ACS3-HMAC-SM3", "ACS3-RSA-SHA256"] {
        let mut req = v3(&base());
        let auth = header(&req, "authorization").replace("ACS3-HMAC-SHA256", alg);
        set_header(&mut req, "Authorization", &auth);
        assert_err(&req, 400, "InvalidSignatureMethod");
    }
}

#[test]
fn v3_incomplete_signature() {
    for required in [
        "host",
        "x-acs-action",
        "x-acs-version",
        "x-acs-date",
        "x-acs-content-sha256",
    ] {
        let mut req = v3(&base());
        let auth = header(&req, "authorization");
        let start = auth.find("SignedHeaders=").expect("has list") + "SignedHeaders=".len();
        let end = start + auth[start..].find(',').expect("list ends");
        let list: Vec<&str> = auth[start..end]
            .split(';')
            .filter(|n| *n != required)
            .collect();
        let auth = format!("{}{}{}", &auth[..start], list.join(";"), &auth[end..]);
        set_header(&mut req, "Authorization", &auth);
        let e = assert_err(&req, 400, "IncompleteSignature");
        assert!(e.message.contains(required), "{}", e.message);
    }

    // A nonce header that was sent but not signed.
    let mut req = v3(&base());
    let auth = header(&req, "authorization").replace(";x-acs-signature-nonce", "");
    set_header(&mut req, "Authorization", &auth);
    let e = assert_err(&req, 400, "IncompleteSignature");
    assert!(e.message.contains("x-acs-signature-nonce"));

    // A signed header missing from the request.
    let mut req = v3(&base());
    let auth = header(&req, "authorization").replace("SignedHeaders=", "SignedHeaders=accept;");
    set_header(&mut req, "Authorization", &auth);
    let e = assert_err(&req, 400, "IncompleteSignature");
    assert!(e.message.contains("accept"));

    // Malformed header: unknown field, repeated field, missing SignedHeaders.
    for mangle in [
        |a: String| format!("{a},Region=cn"),
        |a: String| format!("{a},Credential=testid"),
        |a: String| a.replace("SignedHeaders=", "Signed="),
        |a: String| a.replace("SignedHeaders=", "SignedHeaders=;"),
    ] {
        let mut req = v3(&base());
        let auth = mangle(header(&req, "authorization"));
        set_header(&mut req, "Authorization", &auth);
        assert_err(&req, 400, "IncompleteSignature");
    }
}

#[test]
fn repeated_single_valued_header_is_rejected() {
    let mut req = v3(&base());
    req.headers.push(("X-Acs-Date".into(), NOW.into()));
    assert_err(&req, 400, "InvalidParameter");
}

#[test]
fn xml_format_is_refused() {
    let mut req = v1(&base());
    set_param(&mut req, "Format", "XML");
    let e = assert_err(&req, 400, "InvalidParameter.Format");
    assert!(e.message.contains("Only JSON is supported"));

    let mut sr = base();
    sr.query.insert("Format".into(), "xml".into());
    assert_err(&v3(&sr), 400, "InvalidParameter.Format");
}

#[test]
fn malformed_timestamps() {
    for bad in [
        "2026-11-27T20:30:57.123Z",
        "2026-11-27T20:30:57+00:00",
        "2026-11-27 20:30:57Z",
        "2026-11-27T20:30:57z",
        "2026-11-27T20:30:57",
        "2026-11-27",
        "2026-13-27T20:30:57Z",
        "2026-02-30T20:30:57Z",
        "2026-11-27T24:00:00Z",
        "2026-11-27T20:30:60Z",
        "+026-11-27T20:30:57Z",
        "２026-11-27T20:30:57Z",
        "1764275457",
    ] {
        let mut req = v1(&base());
        set_param(&mut req, "Timestamp", bad);
        let e = assert_err(&req, 400, "InvalidTimeStamp.Format");
        assert_eq!(
            e.message,
            "Specified time stamp or date value is not well formatted."
        );

        let mut req = v3(&base());
        set_header(&mut req, "x-acs-date", bad);
        assert_err(&req, 400, "InvalidTimeStamp.Format");
    }
}

#[test]
fn timestamps_outside_skew_are_expired() {
    let skew = DEFAULT_SKEW;
    for (offset, ok) in [
        (-skew - Duration::seconds(1), false),
        (skew + Duration::seconds(1), false),
        (-skew, true),
        (skew, true),
        (Duration::hours(-24), false),
    ] {
        let at = t(NOW) + offset;
        for req in [v1(&base().at(at)), v3(&base().at(at))] {
            match run(&req) {
                Ok(_) => assert!(ok, "offset {offset} accepted"),
                Err(e) => {
                    assert!(!ok, "offset {offset} refused: {e:?}");
                    assert_eq!(
                        (e.status, e.code.as_str()),
                        (400, "InvalidTimeStamp.Expired")
                    );
                    assert_eq!(e.message, "Specified time stamp or date value is expired.");
                }
            }
        }
    }
}

#[test]
fn unknown_and_inactive_keys() {
    let mut sr = base();
    sr.access_key_id = "nobody".into();
    for req in [v1(&sr), v3(&sr)] {
        let e = assert_err(&req, 404, "InvalidAccessKeyId.NotFound");
        assert_eq!(e.message, "Specified access key is not found.");
    }
    sr.access_key_id = "disabled".into();
    for req in [v1(&sr), v3(&sr)] {
        let e = assert_err(&req, 400, "InvalidAccessKeyId.Inactive");
        assert_eq!(e.message, "Specified access key is disabled.");
    }
    sr.access_key_id = "broken".into();
    assert_err(&v1(&sr), 500, "InternalError");
}

#[test]
fn v1_tampered_parameter_message_carries_string_to_sign() {
    let mut req = v1(&base());
    set_param(&mut req, "DBInstanceId", "dds-someone-else");
    let e = assert_err(&req, 400, "SignatureDoesNotMatch");

    let mut pairs = parse_pairs(&req.raw_query).expect("decodes");
    pairs.retain(|(k, _)| k != "Signature");
    let ours = v1_string_to_sign("POST", pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    // aliyun-python-sdk-core does exactly this.
    let parts: Vec<&str> = e.message.split(':').collect();
    assert_eq!(parts.len(), 2, "{}", e.message);
    assert_eq!(parts[1], ours);
    assert!(e
        .message
        .starts_with("Specified signature does not match our calculation."));
}

#[test]
fn v1_wrong_secret_and_wrong_method() {
    let mut sr = base();
    sr.secret = Secret::new("not-the-secret");
    assert_err(&v1(&sr), 400, "SignatureDoesNotMatch");

    let mut req = v1(&base());
    req.method = "GET".into();
    let e = assert_err(&req, 400, "SignatureDoesNotMatch");
    assert!(e.message.contains(":GET&%2F&"));
}

#[test]
fn v3_tampering() {
    // Query changed after signing.
    let mut req = v3(&base());
    req.raw_query = "DBInstanceId=dds-other".into();
    let e = assert_err(&req, 400, "SignatureDoesNotMatch");
    assert!(e
        .message
        .contains("server StringToSign is [ACS3-HMAC-SHA256\n"));
    assert!(!e.message.contains("testsecret"));

    // Body changed, content hash left alone.
    let mut req = v3(&base().with_form("BackupMethod", "Physical"));
    req.body = b"BackupMethod=Snapshot".to_vec();
    let e = assert_err(&req, 400, "SignatureDoesNotMatch");
    assert!(e.message.contains("x-acs-content-sha256"));

    // Body and content hash both changed: the signature catches it.
    let mut req = v3(&base().with_form("BackupMethod", "Physical"));
    req.body = b"BackupMethod=Snapshot".to_vec();
    let forged_hash = hex_sha256(&req.body);
    set_header(&mut req, "x-acs-content-sha256", &forged_hash);
    assert_err(&req, 400, "SignatureDoesNotMatch");

    // A signed header changed.
    let mut req = v3(&base());
    set_header(&mut req, "host", "evil.example");
    assert_err(&req, 400, "SignatureDoesNotMatch");

    // Wrong secret.
    let mut sr = base();
    sr.secret = Secret::new("nope");
    assert_err(&v3(&sr), 400, "SignatureDoesNotMatch");
}

#[test]
fn reused_nonce_is_refused_and_bad_signatures_do_not_burn_nonces() {
    for make in [v1 as fn(&SignRequest) -> RawRequest, v3] {
        let nonces = store();
        let good = make(&base());
        let mut forged = good.clone();
        set_param(&mut forged, "DBInstanceId", "dds-other");
        let e = authenticate(&forged, &keys, &nonces, &opts()).expect_err("forged");
        assert_eq!(e.code, "SignatureDoesNotMatch");

        authenticate(&good, &keys, &nonces, &opts()).expect("first use");
        let e = authenticate(&good, &keys, &nonces, &opts()).expect_err("replay");
        assert_eq!((e.status, e.code.as_str()), (400, "SignatureNonceUsed"));
        assert_eq!(e.message, "Specified signature nonce was used already.");
    }
}

#[test]
fn nonce_is_remembered_for_twice_the_skew() {
    struct Spy(std::sync::Mutex<Vec<DateTime<Utc>>>);
    impl NonceStore for Spy {
        fn check_and_record(&self, _: &str, _: &str, expires_at: DateTime<Utc>) -> NonceCheck {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(expires_at);
            NonceCheck::Recorded
        }
    }
    let spy = Spy(std::sync::Mutex::new(Vec::new()));
    authenticate(&v1(&base()), &keys, &spy, &opts()).expect("verifies");
    let seen = spy.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(seen, vec![t(NOW) + Duration::minutes(30)]);
}

/// Issue 17: a V3 request without `x-acs-signature-nonce` could be replayed as often as its date allowed. It is
/// refused now (correctly signed or not), before anything is recorded.
#[test]
fn v3_without_nonce_is_refused() {
    let mut req = manual_v3("", "", &[]);
    // Re-sign without the nonce header.
    drop_header(&mut req, "x-acs-signature-nonce");
    drop_header(&mut req, "Authorization");
    let pairs: Vec<(&str, &str)> = req
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let cr = v3_canonical_request("POST", "/", "", &pairs, EMPTY_SHA256);
    let auth = format!(
        "ACS3-HMAC-SHA256 Credential=testid,SignedHeaders={},Signature={}",
        v3_signed_headers(&pairs),
        v3_signature("testsecret", &cr)
    );
    req.headers.push(("Authorization".into(), auth));
    let nonces = store();
    for _ in 0..2 {
        let e = authenticate(&req, &keys, &nonces, &opts()).expect_err("no nonce");
        assert_eq!((e.status, e.code.as_str()), (400, "MissingSignatureNonce"));
        assert_eq!(
            e.message,
            "x-acs-signature-nonce is mandatory for this action."
        );
    }
    assert!(nonces.is_empty());
}

/// A key over its nonce quota gets `Throttling.User` with a retry-after; another key is not affected.
#[test]
fn key_over_its_nonce_quota_is_throttled_alone() {
    let nonces = MemoryNonceStore::with_clock(1000, || t(NOW)).per_key(3);
    for i in 0..3 {
        let mut sr = base();
        sr.nonce = format!("nonce-{i}");
        authenticate(&v3(&sr), &keys, &nonces, &opts()).expect("within quota");
    }
    let mut sr = base();
    sr.nonce = "nonce-3".into();
    for make in [v1 as fn(&SignRequest) -> RawRequest, v3] {
        let e = authenticate(&make(&sr), &keys, &nonces, &opts()).expect_err("over quota");
        assert_eq!((e.status, e.code.as_str()), (400, "Throttling.User"));
        assert_eq!(e.retry_after_ms, Some(30 * 60 * 1000));
    }
    let mut other = base();
    other.access_key_id = "otherid".into();
    other.secret = Secret::new("othersecret");
    authenticate(&v3(&other), &keys, &nonces, &opts()).expect("another key");
    assert_eq!(nonces.len_for("testid"), 3);
}

// ---- properties ----

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("authorization".to_owned()),
        Just("Authorization".to_owned()),
        Just("host".to_owned()),
        Just("x-acs-action".to_owned()),
        Just("x-acs-version".to_owned()),
        Just("x-acs-date".to_owned()),
        Just("x-acs-signature-nonce".to_owned()),
        Just("x-acs-content-sha256".to_owned()),
        Just("x-acs-security-token".to_owned()),
        Just("content-type".to_owned()),
        "[a-zA-Z-]{0,12}",
    ]
}

fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "ACS3-[A-Z0-9-]{0,20}( .{0,80})?",
        "ACS3-HMAC-SHA256 (Credential=[a-z]{0,6}|SignedHeaders=[a-z;-]{0,40}|Signature=[0-9a-f]{0,64}|,|=| ){0,8}",
        Just("application/x-www-form-urlencoded".to_owned()),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z",
    ]
}

fn query_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "([A-Za-z%+=&]|%[0-9A-Fa-f]{0,2}|Action=|Signature=|Timestamp=|Format=){0,30}",
    ]
}

proptest! {
    #[test]
    fn authenticate_never_panics(
        method in prop_oneof![Just("GET".to_owned()), Just("POST".to_owned()), any::<String>()],
        raw_query in query_string(),
        headers in proptest::collection::vec((header_name(), header_value()), 0..8),
        body in proptest::collection::vec(any::<u8>(), 0..64),
        now_secs in 0i64..4_000_000_000,
        skew_secs in proptest::option::of(any::<i64>()),
    ) {
        let req = RawRequest { method, raw_query, headers, body, peer: peer(), secure: false };
        let now = DateTime::from_timestamp(now_secs, 0).unwrap_or(t(NOW));
        let skew = skew_secs
            .and_then(Duration::try_seconds)
            .unwrap_or(DEFAULT_SKEW);
        let _ = authenticate(&req, &keys, &store(), &VerifyOptions { skew, now });
    }

    #[test]
    fn sign_then_verify_round_trips(
        params in proptest::collection::btree_map(any::<String>(), any::<String>(), 0..8),
        to_form in proptest::collection::vec(any::<bool>(), 8),
        post in any::<bool>(),
        use_v3 in any::<bool>(),
    ) {
        let params: BTreeMap<String, String> = params
            .into_iter()
            .filter(|(k, _)| !COMMON_PARAMS.contains(&k.as_str()) && k != "SecurityToken")
            .collect();
        let mut sr = base();
        sr.query.clear();
        sr.method = if post { "POST" } else { "GET" }.into();
        for (i, (k, v)) in params.iter().enumerate() {
            // Form bodies are only read on POST.
            if post && to_form[i] {
                sr.form.insert(k.clone(), v.clone());
            } else {
                sr.query.insert(k.clone(), v.clone());
            }
        }
        let req = if use_v3 { v3(&sr) } else { v1(&sr) };
        let ok = run(&req);
        prop_assert!(ok.is_ok(), "{:?}", ok);
        let ok = ok.expect("checked");
        prop_assert_eq!(ok.params.into_inner(), params);
    }
}

/// The same "never panics" property as `authenticate_never_panics`, but starting from correctly signed V1 and V3
/// requests and corrupting one part, so that the inputs get past the cheap checks and into canonicalisation and
/// signature verification (what the `verify_v1`/`verify_v3` cargo-fuzz targets exercise at depth).
fn mutate(s: &str, at: usize, with: &str, cut: bool) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.is_empty() {
        return with.to_owned();
    }
    let i = at % chars.len();
    let mut out: String = chars[..i].iter().collect();
    out.push_str(with);
    if !cut {
        out.extend(&chars[i + 1..]);
    }
    out
}

proptest! {
    #[test]
    fn corrupted_signed_requests_never_panic(
        use_v3 in any::<bool>(),
        post in any::<bool>(),
        extra in proptest::collection::btree_map("[A-Za-z.]{1,8}", any::<String>(), 0..4),
        target in 0usize..4,
        at in any::<usize>(),
        with in prop_oneof![any::<String>(), "%[0-9A-Fa-f]?", Just("&".to_owned()), Just("=".to_owned()), Just(",".to_owned())],
        cut in any::<bool>(),
    ) {
        let mut sr = base();
        sr.method = if post { "POST" } else { "GET" }.into();
        for (k, v) in extra {
            if post {
                sr.form.insert(k, v);
            } else {
                sr.query.insert(k, v);
            }
        }
        let mut req = if use_v3 { v3(&sr) } else { v1(&sr) };
        match target {
            0 => req.raw_query = mutate(&req.raw_query, at, &with, cut),
            1 => {
                let body = String::from_utf8_lossy(&req.body).into_owned();
                req.body = mutate(&body, at, &with, cut).into_bytes();
            }
            2 if !req.headers.is_empty() => {
                let i = at % req.headers.len();
                req.headers[i].1 = mutate(&req.headers[i].1, at / 7, &with, cut);
            }
            _ => req.method = mutate(&req.method, at, &with, cut),
        }
        let _ = run(&req);
    }
}
