//! Requests captured from the real Alibaba Python SDKs (tea-openapi V3 and V1, and
//! aliyun-python-sdk-core V1) must verify, with exactly the expected parameters.
//!
//! `fixtures/sdk_requests.json` was recorded by pointing each SDK at a local capture
//! server with AccessKey `testid` / `testsecret` (and an STS key `STS.testid`). Each entry
//! is verified at the time it was signed, so the fixture never expires.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ddsvault_api::{
    authenticate, ApiError, KeyState, MemoryNonceStore, RawRequest, Secret, VerifyOptions,
};
use serde_json::Value;

const FIXTURE: &str = include_str!("fixtures/sdk_requests.json");

fn keys(ak: &str) -> Result<Option<KeyState>, ApiError> {
    Ok(matches!(ak, "testid" | "STS.testid").then(|| KeyState::Active(Secret::new("testsecret"))))
}

fn text(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("fixture field {key} is a string"))
        .to_owned()
}

struct Captured {
    label: String,
    req: RawRequest,
    signed_at: chrono::DateTime<chrono::Utc>,
    expect: Value,
}

fn load() -> Vec<Captured> {
    let all: Value = serde_json::from_str(FIXTURE).expect("fixture is JSON");
    let entries = all.as_array().expect("fixture is a list");
    assert!(entries.len() >= 8, "fixture lost entries");
    entries
        .iter()
        .map(|e| {
            let headers: Vec<(String, String)> = e["headers"]
                .as_array()
                .expect("headers list")
                .iter()
                .map(|h| {
                    (
                        h[0].as_str().expect("name").to_owned(),
                        h[1].as_str().expect("value").to_owned(),
                    )
                })
                .collect();
            let raw_query = text(e, "raw_query");
            // V3 signs the time in x-acs-date, V1 in the Timestamp parameter.
            let date = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("x-acs-date"))
                .map(|(_, v)| v.clone())
                .or_else(|| {
                    raw_query
                        .split('&')
                        .find_map(|p| p.strip_prefix("Timestamp=").map(|v| v.replace("%3A", ":")))
                })
                .expect("every capture carries its signing time");
            let signed_at = chrono::DateTime::parse_from_rfc3339(&date)
                .expect("RFC 3339")
                .with_timezone(&chrono::Utc);
            Captured {
                label: text(e, "label"),
                req: RawRequest {
                    method: text(e, "method"),
                    raw_query,
                    headers,
                    body: text(e, "body").into_bytes(),
                    peer: SocketAddr::from(([127, 0, 0, 1], 40000)),
                    secure: false,
                },
                signed_at,
                expect: e["expect"].clone(),
            }
        })
        .collect()
}

#[test]
fn every_captured_sdk_request_verifies() {
    for c in load() {
        let opts = VerifyOptions::at(c.signed_at + chrono::Duration::seconds(3));
        let nonces = MemoryNonceStore::with_clock(16, move || opts.now);
        let ok = authenticate(&c.req, &keys, &nonces, &opts)
            .unwrap_or_else(|e| panic!("{}: {e:?}", c.label));
        assert_eq!(ok.action, c.expect["action"], "{}", c.label);
        assert_eq!(ok.version, "2015-12-01", "{}", c.label);
        let want: BTreeMap<String, String> =
            serde_json::from_value(c.expect["params"].clone()).expect("params map");
        assert_eq!(ok.params.into_inner(), want, "{}", c.label);
        if let Some(token) = c.expect.get("security_token") {
            assert_eq!(ok.security_token.as_deref(), token.as_str(), "{}", c.label);
        }
        // Replaying the captured request is refused.
        let e = authenticate(&c.req, &keys, &nonces, &opts).expect_err("replay");
        assert_eq!(e.code, "SignatureNonceUsed", "{}", c.label);
    }
}

#[test]
fn captured_requests_fail_with_the_wrong_secret() {
    let wrong = |_: &str| -> Result<Option<KeyState>, ApiError> {
        Ok(Some(KeyState::Active(Secret::new("not-testsecret"))))
    };
    for c in load() {
        let opts = VerifyOptions::at(c.signed_at);
        let e = authenticate(&c.req, &wrong, &MemoryNonceStore::new(), &opts)
            .expect_err("wrong secret");
        assert_eq!((e.status, e.code.as_str()), (400, "SignatureDoesNotMatch"));
        let is_v1 = c.req.raw_query.contains("Signature=");
        if is_v1 {
            // aliyun-python-sdk-core compares Message.split(':')[1] with its own
            // string-to-sign; ours must be the whole second field.
            let parts: Vec<&str> = e.message.split(':').collect();
            assert_eq!(parts.len(), 2, "{}: {}", c.label, e.message);
            assert!(
                parts[1].starts_with(&format!("{}&%2F&", c.req.method)),
                "{}",
                c.label
            );
        }
    }
}
