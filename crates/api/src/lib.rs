//! The Alibaba Cloud RPC protocol layer of ddsvault (product Dds, API version 2015-12-01).
//!
//! This crate turns a raw HTTP request into an [`AuthenticatedRequest`] and errors or
//! results into Alibaba-shaped JSON responses, so that Alibaba's own SDKs work against our
//! server. It has no HTTP framework dependency: the server adapts its requests into a
//! [`RawRequest`] and sends back what [`render_success`] / [`render_error`] return.
//!
//! - [`authenticate`] parses the query string and form body, detects signature V1
//!   (HMAC-SHA1, `Signature` parameter) or V3 (`Authorization: ACS3-HMAC-SHA256 ...`),
//!   checks the mandatory parameters, timestamp and skew, looks the AccessKey up through
//!   [`SecretLookup`], verifies the signature in constant time and records the nonce in a
//!   [`NonceStore`] (see [`MemoryNonceStore`]).
//! - [`ApiError`] is the one place where protocol error codes, HTTP statuses and messages
//!   are defined; the server builds its business errors with it too.
//! - The signing functions ([`v1_string_to_sign`], [`v3_canonical_request`], ...) are pure
//!   and shared by the verifier and by [`sign_v1`] / [`sign_v3`], which our CLI, load
//!   generator and tests use to produce requests.
//!
//! The rules implemented here are those of `docs/protocol.md` (§2 V1, §3 V3, §5 time and
//! nonce, §6 errors, §11 check order) and `dds-api.md` §2–4 (SDK wire behaviour).
//!
//! ```
//! use ddsvault_api::*;
//! use std::net::SocketAddr;
//!
//! let keys = |ak: &str| -> Result<Option<KeyState>, ApiError> {
//!     Ok((ak == "testid").then(|| KeyState::Active(Secret::new("testsecret"))))
//! };
//! let nonces = MemoryNonceStore::new();
//! let signed = sign_v3(
//!     &SignRequest::new("POST", "127.0.0.1:8080", "CreateBackup", DDS_API_VERSION,
//!                       "testid", Secret::new("testsecret"))
//!         .with_query("DBInstanceId", "dds-bp1test"),
//! );
//! let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
//! let req = signed.into_raw_request(peer, false);
//! let ok = authenticate(&req, &keys, &nonces, &VerifyOptions::default()).unwrap();
//! assert_eq!(ok.action, "CreateBackup");
//! assert_eq!(ok.params.required("DBInstanceId").unwrap(), "dds-bp1test");
//!
//! // A replay of the same request is refused.
//! let err = authenticate(&req, &keys, &nonces, &VerifyOptions::default()).unwrap_err();
//! assert_eq!(err.code, "SignatureNonceUsed");
//! let (status, _headers, _body) = render_error(&err, &new_request_id(), "mongodb.aliyuncs.com");
//! assert_eq!(status, 400);
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

mod encoding;
mod error;
mod keys;
mod nonce;
mod params;
mod signing;
mod verify;

pub use encoding::percent_encode_rfc3986;
pub use error::{
    codes, new_request_id, render_error, render_success, ApiError, RenderedResponse,
    JSON_CONTENT_TYPE, REQUEST_ID_HEADER, RETRY_AFTER_HEADER,
};
pub use keys::{KeyState, Secret, SecretLookup};
pub use nonce::{
    nonce_digest, MemoryNonceStore, NonceCheck, NonceStore, DEFAULT_NONCES_PER_KEY,
    DEFAULT_NONCE_CAPACITY,
};
pub use params::Params;
pub use signing::{
    format_timestamp, hex_sha256, new_nonce, sign_v1, sign_v3, v1_canonicalized_query,
    v1_signature, v1_string_to_sign, v3_canonical_query, v3_canonical_request, v3_signature,
    v3_signed_headers, v3_string_to_sign, SignRequest, SignedRequest, DDS_API_VERSION,
    FORM_CONTENT_TYPE, TIMESTAMP_FORMAT, V1_SIGNATURE_METHOD, V1_SIGNATURE_VERSION, V3_ALGORITHM,
};
pub use verify::{
    authenticate, AuthenticatedRequest, RawRequest, ResponseFormat, SignatureKind, VerifyOptions,
    COMMON_PARAMS, DEFAULT_SKEW,
};
