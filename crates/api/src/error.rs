//! The API error type and the JSON rendering of errors and successes.
//!
//! Every protocol-level code, HTTP status and message text lives in this file, so that what
//! clients see can be audited in one place (docs/protocol.md §6). Business errors are built through
//! the same type with [`ApiError::new`] or the generic constructors.

// The one place where codes are built (clippy.toml forbids ApiError::new everywhere else).
#![allow(clippy::disallowed_methods)]

use serde_json::{Map, Value};

use crate::encoding::percent_encode_rfc3986;

/// Error codes returned by this crate, for callers and tests that match on `ApiError::code`.
pub mod codes {
    /// A required common parameter or header is absent: the code is `Missing` + the name.
    pub const MISSING_PREFIX: &str = "Missing";
    /// An API-level parameter is absent.
    pub const MISSING_PARAMETER: &str = "MissingParameter";
    /// An API-level parameter, or the shape of the request, is not valid.
    pub const INVALID_PARAMETER: &str = "InvalidParameter";
    /// `Format` is something other than JSON.
    pub const INVALID_FORMAT: &str = "InvalidParameter.Format";
    /// The signing algorithm (or V1 signature version) is not supported.
    pub const INVALID_SIGNATURE_METHOD: &str = "InvalidSignatureMethod";
    /// A V3 `Authorization` header is malformed or does not sign the mandatory headers.
    pub const INCOMPLETE_SIGNATURE: &str = "IncompleteSignature";
    /// `Timestamp` / `x-acs-date` is not `YYYY-MM-DDThh:mm:ssZ`.
    pub const TIMESTAMP_FORMAT: &str = "InvalidTimeStamp.Format";
    /// `Timestamp` / `x-acs-date` is outside the accepted clock skew.
    pub const TIMESTAMP_EXPIRED: &str = "InvalidTimeStamp.Expired";
    /// The AccessKeyId is unknown.
    pub const ACCESS_KEY_NOT_FOUND: &str = "InvalidAccessKeyId.NotFound";
    /// The AccessKey exists but is disabled.
    pub const ACCESS_KEY_INACTIVE: &str = "InvalidAccessKeyId.Inactive";
    /// The signature (or the V3 body hash) does not verify.
    pub const SIGNATURE_DOES_NOT_MATCH: &str = "SignatureDoesNotMatch";
    /// The nonce was already used with this AccessKey.
    pub const SIGNATURE_NONCE_USED: &str = "SignatureNonceUsed";
    /// An STS AccessKey was used without its token.
    pub const MISSING_SECURITY_TOKEN: &str = "MissingSecurityToken";
    /// The STS token has expired.
    pub const SECURITY_TOKEN_EXPIRED: &str = "InvalidSecurityToken.Expired";
    /// The STS token cannot be parsed.
    pub const SECURITY_TOKEN_MALFORMED: &str = "InvalidSecurityToken.Malformed";
    /// The STS token belongs to another AccessKey.
    pub const SECURITY_TOKEN_MISMATCH: &str = "InvalidSecurityToken.MismatchWithAccessKey";
    /// No such Action (or no such Action for this Version).
    pub const API_NOT_FOUND: &str = "InvalidApi.NotFound";
    /// The Version is not one this server speaks.
    pub const INVALID_VERSION: &str = "InvalidVersion";
    /// RAM denied the request.
    pub const FORBIDDEN_RAM: &str = "Forbidden.RAM";
    /// Per-AccessKey flow control.
    pub const THROTTLING_USER: &str = "Throttling.User";
    /// Per-API flow control.
    pub const THROTTLING_API: &str = "Throttling.Api";
    /// A dependency is temporarily unavailable.
    pub const SERVICE_UNAVAILABLE: &str = "ServiceUnavailable";
    /// Anything unexpected on the server side.
    pub const INTERNAL_ERROR: &str = "InternalError";
}

/// An error answered to an API client: HTTP status, Alibaba error `Code` and `Message`.
///
/// `detail` is for the server's own logs only; [`render_error`] never puts it on the wire.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub status: u16,
    /// Alibaba-style error code, e.g. `SignatureDoesNotMatch`.
    pub code: String,
    /// Human-readable message returned to the client.
    pub message: String,
    /// RAM denial details (`AccessDeniedDetail`), rendered as a JSON object when present.
    /// Boxed because `serde_json::Value` (with `preserve_order`) would make every
    /// `Result<_, ApiError>` large enough to trip clippy's `result_large_err` in each crate
    /// that returns one.
    pub access_denied_detail: Option<Box<Value>>,
    /// Server-side context (e.g. the cause of an internal error); never returned to clients.
    pub detail: Option<String>,
    /// For throttling errors: milliseconds until a retry may pass, sent as `x-acs-retry-after` (the header the
    /// tea SDK turns into `ThrottlingException.retry_after`, which it sleeps as milliseconds).
    pub retry_after_ms: Option<u64>,
}

impl ApiError {
    /// Builds an error with an arbitrary status, code and message.
    pub fn new(status: u16, code: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
            access_denied_detail: None,
            detail: None,
            retry_after_ms: None,
        }
    }

    /// Sets the `x-acs-retry-after` header value (milliseconds; clamped to at least 1, since the SDK ignores 0).
    #[must_use]
    pub fn with_retry_after_ms(mut self, ms: u64) -> Self {
        self.retry_after_ms = Some(ms.max(1));
        self
    }

    /// Attaches server-side context that is logged but never rendered.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// 400 `MissingParameter` for an API-level parameter.
    pub fn missing_parameter(name: &str) -> Self {
        Self::new(
            400,
            codes::MISSING_PARAMETER,
            format!(
                "The input parameter \"{name}\" that is mandatory for processing this request is not supplied."
            ),
        )
    }

    /// 400 `InvalidParameter` naming the parameter; `why` (may be empty) is appended.
    pub fn invalid_parameter(name: &str, why: &str) -> Self {
        let mut message = format!("The specified parameter \"{name}\" is not valid.");
        if !why.is_empty() {
            message.push(' ');
            message.push_str(why);
        }
        Self::new(400, codes::INVALID_PARAMETER, message)
    }

    /// 400 `Missing<Name>` for a protocol-level parameter, e.g. `MissingSignatureNonce`.
    pub fn missing_common(name: &str) -> Self {
        Self::missing_common_as(name, name)
    }

    /// 400 `Missing<code_name>` whose message names what the client actually has to send
    /// (a V3 header such as `x-acs-date` maps onto the V1 code `MissingTimestamp`).
    pub fn missing_common_as(code_name: &str, shown: &str) -> Self {
        Self::new(
            400,
            format!("{}{code_name}", codes::MISSING_PREFIX),
            format!("{shown} is mandatory for this action."),
        )
    }

    /// 400 `InvalidParameter.Format`: only JSON responses are produced.
    pub fn unsupported_format() -> Self {
        Self::new(
            400,
            codes::INVALID_FORMAT,
            "The specified parameter \"Format\" is not valid. Only JSON is supported.",
        )
    }

    /// 400 `InvalidSignatureMethod`; `what` names the rejected method or version.
    pub fn invalid_signature_method(what: &str) -> Self {
        Self::new(
            400,
            codes::INVALID_SIGNATURE_METHOD,
            format!("Specified signature method is not supported. {what}"),
        )
    }

    /// 400 `IncompleteSignature`; `why` says what is wrong with the V3 signing metadata.
    pub fn incomplete_signature(why: &str) -> Self {
        Self::new(
            400,
            codes::INCOMPLETE_SIGNATURE,
            format!("The request signature does not conform to Aliyun standards. {why}"),
        )
    }

    /// 400 `InvalidTimeStamp.Format`.
    pub fn timestamp_format() -> Self {
        Self::new(
            400,
            codes::TIMESTAMP_FORMAT,
            "Specified time stamp or date value is not well formatted.",
        )
    }

    /// 400 `InvalidTimeStamp.Expired` (too old or too far in the future).
    pub fn timestamp_expired() -> Self {
        Self::new(
            400,
            codes::TIMESTAMP_EXPIRED,
            "Specified time stamp or date value is expired.",
        )
    }

    /// 404 `InvalidAccessKeyId.NotFound`.
    pub fn access_key_not_found() -> Self {
        Self::new(
            404,
            codes::ACCESS_KEY_NOT_FOUND,
            "Specified access key is not found.",
        )
    }

    /// 400 `InvalidAccessKeyId.Inactive`.
    pub fn access_key_inactive() -> Self {
        Self::new(
            400,
            codes::ACCESS_KEY_INACTIVE,
            "Specified access key is disabled.",
        )
    }

    /// 400 `SignatureDoesNotMatch` for V1.
    ///
    /// aliyun-python-sdk-core takes `Message.split(':')[1]` and compares it with its own
    /// string-to-sign to tell a wrong secret from a wrong canonicalisation, and raises
    /// `IndexError` if there is no `:`. So the string-to-sign must follow the first `:`
    /// directly; it holds no `:` of its own because it is percent-encoded twice.
    pub fn signature_mismatch_v1(string_to_sign: &str) -> Self {
        Self::new(
            400,
            codes::SIGNATURE_DOES_NOT_MATCH,
            format!(
                "Specified signature does not match our calculation. server string to sign is:{string_to_sign}"
            ),
        )
    }

    /// 400 `SignatureDoesNotMatch` for V3. Both strings are derived from what the client
    /// sent, so echoing them leaks nothing and lets the client diff its canonicalisation.
    pub fn signature_mismatch_v3(string_to_sign: &str, canonical_request: &str) -> Self {
        Self::new(
            400,
            codes::SIGNATURE_DOES_NOT_MATCH,
            format!(
                "Specified signature does not match our calculation. server StringToSign is [{string_to_sign}] server CanonicalRequest is [{canonical_request}]"
            ),
        )
    }

    /// 400 `SignatureDoesNotMatch` because `x-acs-content-sha256` is not the body's hash.
    pub fn content_hash_mismatch() -> Self {
        Self::new(
            400,
            codes::SIGNATURE_DOES_NOT_MATCH,
            "Specified signature does not match our calculation. The x-acs-content-sha256 header is not the SHA-256 of the request body.",
        )
    }

    /// 400 `SignatureNonceUsed`.
    pub fn nonce_used() -> Self {
        Self::new(
            400,
            codes::SIGNATURE_NONCE_USED,
            "Specified signature nonce was used already.",
        )
    }

    /// 400 `MissingSecurityToken`.
    pub fn missing_security_token() -> Self {
        Self::new(
            400,
            codes::MISSING_SECURITY_TOKEN,
            "SecurityToken is mandatory for this action.",
        )
    }

    /// 400 `InvalidSecurityToken.Expired`.
    pub fn security_token_expired() -> Self {
        Self::new(
            400,
            codes::SECURITY_TOKEN_EXPIRED,
            "Specified SecurityToken is expired.",
        )
    }

    /// 400 `InvalidSecurityToken.Malformed`.
    pub fn security_token_malformed() -> Self {
        Self::new(
            400,
            codes::SECURITY_TOKEN_MALFORMED,
            "Specified SecurityToken is malformed.",
        )
    }

    /// 400 `InvalidSecurityToken.MismatchWithAccessKey`.
    pub fn security_token_mismatch() -> Self {
        Self::new(
            400,
            codes::SECURITY_TOKEN_MISMATCH,
            "Specified SecurityToken mismatch with the AccessKey.",
        )
    }

    /// 404 `InvalidApi.NotFound`.
    pub fn api_not_found() -> Self {
        Self::new(
            404,
            codes::API_NOT_FOUND,
            "Specified api is not found, please check your url and method.",
        )
    }

    /// 400 `InvalidVersion`.
    pub fn invalid_version() -> Self {
        Self::new(
            400,
            codes::INVALID_VERSION,
            "Specified parameter Version is not valid.",
        )
    }

    /// 403 `Forbidden.RAM` carrying an `AccessDeniedDetail` object.
    pub fn forbidden_ram(detail: Value) -> Self {
        let mut err = Self::new(
            403,
            codes::FORBIDDEN_RAM,
            "User not authorized to operate on the specified resource, or this API doesn't support RAM.",
        );
        err.access_denied_detail = Some(Box::new(detail));
        err
    }

    /// 400 `Throttling.User` (legacy POP gateways answer throttling with 400).
    pub fn throttling_user() -> Self {
        Self::new(
            400,
            codes::THROTTLING_USER,
            "Request was denied due to user flow control.",
        )
    }

    /// 400 `Throttling.User` because the AccessKey signed more requests within the replay window than the nonce
    /// store keeps for one key. Alibaba documents no code for this; it is flow control of that one key, so it
    /// takes the key's flow-control code and says when a retry can pass (`x-acs-retry-after`), and other keys
    /// are unaffected. `SignatureNonceUsed` would be wrong: the nonce is fresh, and some clients retry that code
    /// at once with a new nonce.
    pub fn nonce_quota_exceeded(retry_after_ms: u64) -> Self {
        Self::new(
            400,
            codes::THROTTLING_USER,
            "Request was denied due to user flow control: this AccessKey sent more signed requests within the replay window than the server remembers for one key.",
        )
        .with_retry_after_ms(retry_after_ms)
    }

    /// 400 `Throttling.Api`.
    pub fn throttling_api() -> Self {
        Self::new(
            400,
            codes::THROTTLING_API,
            "Request was denied due to api flow control.",
        )
    }

    /// 413 `RequestEntityTooLarge`: the body is over `limit` bytes.
    pub fn request_entity_too_large(limit: usize) -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            format!("The request body is larger than {limit} bytes."),
        )
    }

    /// 414 `RequestURITooLong`: the query string is over `limit` bytes.
    pub fn uri_too_long(limit: usize) -> Self {
        Self::new(
            414,
            "RequestURITooLong",
            format!("The query string is longer than {limit} bytes."),
        )
    }

    /// 400 `InvalidParameter` for a form body that is not UTF-8.
    pub fn body_not_utf8() -> Self {
        Self::new(
            400,
            codes::INVALID_PARAMETER,
            "The request body is not valid UTF-8.",
        )
    }

    /// 400 `RequestTimeout`: the body did not arrive within `secs` seconds. Alibaba documents no POP code for
    /// this; OSS, Alibaba's own HTTP gateway, answers a socket left idle with `RequestTimeout` (400).
    pub fn request_timeout(secs: u64) -> Self {
        Self::new(
            400,
            "RequestTimeout",
            format!("The request body did not arrive within {secs} seconds."),
        )
    }

    /// 400 `IncompleteBody`: the body broke off or was malformed (e.g. bad chunked encoding). OSS's code for a
    /// body shorter than its `Content-Length`.
    pub fn incomplete_body(why: &str) -> Self {
        Self::new(
            400,
            "IncompleteBody",
            format!("The request body could not be read completely: {why}"),
        )
    }

    /// 503 `ServiceUnavailable`.
    pub fn service_unavailable() -> Self {
        Self::new(
            503,
            codes::SERVICE_UNAVAILABLE,
            "The request has failed due to a temporary failure of the server.",
        )
    }

    /// 500 `InternalError` with the generic Alibaba message. `detail` is kept for logging
    /// and never rendered, because internals (paths, SQL, hosts) must not reach clients.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(
            500,
            codes::INTERNAL_ERROR,
            "The request processing has failed due to some unknown error, exception or failure.",
        )
        .with_detail(detail)
    }

    /// True for 5xx errors, which callers log at ERROR with their `detail`.
    pub fn is_server_error(&self) -> bool {
        self.status >= 500
    }
}

/// Content type of every response body this crate renders.
pub const JSON_CONTENT_TYPE: &str = "application/json;charset=utf-8";
/// Response header that mirrors `RequestId`.
pub const REQUEST_ID_HEADER: &str = "x-acs-request-id";
/// Response header of throttling errors: milliseconds until a retry may pass.
pub const RETRY_AFTER_HEADER: &str = "x-acs-retry-after";

/// A rendered HTTP response: status, headers, body.
pub type RenderedResponse = (u16, Vec<(String, String)>, Vec<u8>);

fn response_headers(request_id: &str) -> Vec<(String, String)> {
    vec![
        ("content-type".to_owned(), JSON_CONTENT_TYPE.to_owned()),
        (REQUEST_ID_HEADER.to_owned(), request_id.to_owned()),
    ]
}

/// Renders an error as Alibaba's JSON error body:
/// `{RequestId, HostId, Code, Message, Recommend[, AccessDeniedDetail]}`.
pub fn render_error(err: &ApiError, request_id: &str, host_id: &str) -> RenderedResponse {
    let recommend = format!(
        "https://api.aliyun.com/troubleshoot?q={}&product=Dds&requestId={}",
        percent_encode_rfc3986(&err.code),
        percent_encode_rfc3986(request_id)
    );
    let mut body = Map::new();
    body.insert("RequestId".into(), Value::String(request_id.to_owned()));
    body.insert("HostId".into(), Value::String(host_id.to_owned()));
    body.insert("Code".into(), Value::String(err.code.clone()));
    body.insert("Message".into(), Value::String(err.message.clone()));
    body.insert("Recommend".into(), Value::String(recommend));
    if let Some(detail) = &err.access_denied_detail {
        body.insert("AccessDeniedDetail".into(), Value::clone(detail));
    }
    let mut headers = response_headers(request_id);
    if let Some(ms) = err.retry_after_ms {
        headers.push((RETRY_AFTER_HEADER.to_owned(), ms.to_string()));
    }
    (
        err.status,
        headers,
        Value::Object(body).to_string().into_bytes(),
    )
}

/// Renders a 200 JSON success body. `RequestId` is put first and wins over any `RequestId`
/// already in `body`, so a handler cannot answer with a mismatching id.
pub fn render_success(request_id: &str, body: Map<String, Value>) -> RenderedResponse {
    let mut out = Map::with_capacity(body.len() + 1);
    out.insert("RequestId".into(), Value::String(request_id.to_owned()));
    for (k, v) in body {
        if k != "RequestId" {
            out.insert(k, v);
        }
    }
    (
        200,
        response_headers(request_id),
        Value::Object(out).to_string().into_bytes(),
    )
}

/// A fresh request id in Alibaba's shape: an upper-case hyphenated UUID.
pub fn new_request_id() -> String {
    uuid::Uuid::new_v4()
        .hyphenated()
        .to_string()
        .to_ascii_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_errors_carry_retry_after() {
        let e = ApiError::throttling_user().with_retry_after_ms(0);
        let (status, headers, _) = render_error(&e, "R", "h");
        assert_eq!(status, 400);
        assert!(headers.contains(&(RETRY_AFTER_HEADER.to_owned(), "1".to_owned())));
        let (_, headers, _) = render_error(
            &ApiError::throttling_api().with_retry_after_ms(2500),
            "R",
            "h",
        );
        assert!(headers.contains(&(RETRY_AFTER_HEADER.to_owned(), "2500".to_owned())));
        let (_, headers, _) = render_error(&ApiError::forbidden_ram(Value::Null), "R", "h");
        assert!(!headers.iter().any(|(k, _)| k == RETRY_AFTER_HEADER));
    }
    use serde_json::json;

    fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
        h.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn error_body_has_alibaba_shape() {
        let err = ApiError::access_key_not_found();
        let (status, headers, body) = render_error(&err, "REQ-1", "mongodb.aliyuncs.com");
        assert_eq!(status, 404);
        assert_eq!(header(&headers, "content-type"), Some(JSON_CONTENT_TYPE));
        assert_eq!(header(&headers, "x-acs-request-id"), Some("REQ-1"));
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            v,
            json!({
                "RequestId": "REQ-1",
                "HostId": "mongodb.aliyuncs.com",
                "Code": "InvalidAccessKeyId.NotFound",
                "Message": "Specified access key is not found.",
                "Recommend": "https://api.aliyun.com/troubleshoot?q=InvalidAccessKeyId.NotFound&product=Dds&requestId=REQ-1"
            })
        );
        let keys: Vec<&String> = v.as_object().expect("object").keys().collect();
        assert_eq!(
            keys,
            ["RequestId", "HostId", "Code", "Message", "Recommend"]
        );
    }

    #[test]
    fn forbidden_ram_renders_detail_object() {
        let detail = json!({"AuthAction": "dds:CreateBackup", "NoPermissionType": "ImplicitDeny"});
        let err = ApiError::forbidden_ram(detail.clone());
        let (status, _, body) = render_error(&err, "R", "h");
        assert_eq!(status, 403);
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["Code"], "Forbidden.RAM");
        assert_eq!(v["AccessDeniedDetail"], detail);
    }

    #[test]
    fn internal_error_hides_detail() {
        let err = ApiError::internal("sqlite: disk I/O error at /var/lib/x");
        let (status, _, body) = render_error(&err, "R", "h");
        assert_eq!(status, 500);
        let text = String::from_utf8(body).expect("utf8");
        assert!(!text.contains("sqlite"), "{text}");
        assert!(err.to_string().starts_with("500 InternalError"));
        assert_eq!(
            err.detail.as_deref(),
            Some("sqlite: disk I/O error at /var/lib/x")
        );
    }

    #[test]
    fn success_puts_request_id_first_and_overrides() {
        let mut body = Map::new();
        body.insert("BackupId".into(), json!("b-1"));
        body.insert("RequestId".into(), json!("spoofed"));
        let (status, headers, bytes) = render_success("ABC", body);
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "x-acs-request-id"), Some("ABC"));
        let v: Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(v, json!({"RequestId": "ABC", "BackupId": "b-1"}));
        assert_eq!(
            v.as_object()
                .expect("object")
                .keys()
                .next()
                .map(String::as_str),
            Some("RequestId")
        );
    }

    #[test]
    fn error_stays_small() {
        // Keeps `Result<_, ApiError>` under clippy's `result_large_err` threshold.
        assert!(std::mem::size_of::<ApiError>() <= 128);
    }

    #[test]
    fn request_id_shape() {
        let id = new_request_id();
        assert_eq!(id.len(), 36);
        assert!(id
            .chars()
            .all(|c| c == '-' || c.is_ascii_digit() || c.is_ascii_uppercase()));
        assert_eq!(id.matches('-').count(), 4);
        assert_ne!(id, new_request_id());
    }

    #[test]
    fn parameter_messages() {
        let e = ApiError::missing_parameter("DBInstanceId");
        assert_eq!((e.status, e.code.as_str()), (400, "MissingParameter"));
        assert_eq!(
            e.message,
            "The input parameter \"DBInstanceId\" that is mandatory for processing this request is not supplied."
        );
        let e = ApiError::invalid_parameter("PageSize", "It must be an integer.");
        assert_eq!(
            e.message,
            "The specified parameter \"PageSize\" is not valid. It must be an integer."
        );
        let e = ApiError::invalid_parameter("PageSize", "");
        assert_eq!(
            e.message,
            "The specified parameter \"PageSize\" is not valid."
        );
        let e = ApiError::missing_common("Signature");
        assert_eq!(e.code, "MissingSignature");
        assert_eq!(e.message, "Signature is mandatory for this action.");
        assert_eq!(ApiError::api_not_found().status, 404);
        assert_eq!(ApiError::invalid_version().code, "InvalidVersion");
    }
}
