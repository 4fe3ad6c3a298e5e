//! Request authentication: parameter parsing, signature V1/V3 verification, timestamp and
//! nonce checks, in the order of docs/protocol.md §11.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use subtle::ConstantTimeEq;

use crate::encoding::parse_pairs;
use crate::error::ApiError;
use crate::keys::{KeyState, Secret, SecretLookup};
use crate::nonce::{NonceCheck, NonceStore};
use crate::params::Params;
use crate::signing::{
    hex_sha256, v1_signature, v1_string_to_sign, v3_canonical_query_variants, v3_canonical_request,
    v3_signature, v3_string_to_sign, FORM_CONTENT_TYPE, V1_SIGNATURE_METHOD, V1_SIGNATURE_VERSION,
    V3_ALGORITHM,
};

/// What the HTTP layer hands over.
#[derive(Debug, Clone)]
pub struct RawRequest {
    /// `GET`, `POST`, ... exactly as received (V1 signs it verbatim).
    pub method: String,
    /// Undecoded query string, without `?`.
    pub raw_query: String,
    /// Headers as received, names in any case. V3 needs `host` among them.
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Vec<u8>,
    /// TCP peer (for RAM `acs:SourceIp`; not used by authentication).
    pub peer: SocketAddr,
    /// True if the request came over TLS (for RAM `acs:SecureTransport`).
    pub secure: bool,
}

/// Which signature scheme authenticated a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignatureKind {
    /// HMAC-SHA1 over the parameters (`Signature` parameter).
    V1,
    /// ACS3-HMAC-SHA256 (`Authorization` header).
    V3,
}

/// The response body format the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResponseFormat {
    /// JSON: the only format served. `Format=XML` is rejected with 400
    /// `InvalidParameter.Format` rather than silently answered in JSON, because an XML
    /// client would fail to parse a JSON body in a confusing way. A missing `Format`
    /// means JSON even though Alibaba's documented default is XML: V3 clients never send
    /// `Format` and expect JSON.
    Json,
}

/// A request whose signature, timestamp and nonce were verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedRequest {
    /// API name (V1 `Action`, V3 `x-acs-action`).
    pub action: String,
    /// API version (V1 `Version`, V3 `x-acs-version`).
    pub version: String,
    /// The AccessKeyId that signed the request.
    pub access_key_id: String,
    /// The signature scheme used.
    pub kind: SignatureKind,
    /// Operation parameters (query + form body), decoded, without the V1 common
    /// parameters listed in [`COMMON_PARAMS`]. `RegionId`, `SecurityToken` and every
    /// business parameter are kept.
    pub params: Params,
    /// Response format.
    pub format: ResponseFormat,
    /// STS token (V1 `SecurityToken` parameter, V3 `x-acs-security-token` header), if any.
    /// The server checks it against the key; this crate only verifies it was signed.
    pub security_token: Option<String>,
    /// The signed request time (V1 `Timestamp`, V3 `x-acs-date`).
    pub timestamp: DateTime<Utc>,
    /// [`nonce_digest`](crate::nonce_digest) of the key and nonce: what a store shared by several processes
    /// records (fixed length whatever the client sent).
    pub nonce_digest: String,
}

/// Protocol parameters that are removed from [`AuthenticatedRequest::params`].
pub const COMMON_PARAMS: [&str; 10] = [
    "Action",
    "Version",
    "Format",
    "Timestamp",
    "SignatureNonce",
    "SignatureMethod",
    "SignatureVersion",
    "SignatureType",
    "AccessKeyId",
    "Signature",
];

/// Default accepted clock skew, both into the past and the future (docs/protocol.md §5).
pub const DEFAULT_SKEW: Duration = Duration::minutes(15);

/// Knobs of [`authenticate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyOptions {
    /// Largest accepted |now − request time|. Nonces are remembered for twice this.
    pub skew: Duration,
    /// The server's current time.
    pub now: DateTime<Utc>,
}

impl VerifyOptions {
    /// [`DEFAULT_SKEW`] at the given time.
    pub fn at(now: DateTime<Utc>) -> Self {
        VerifyOptions {
            skew: DEFAULT_SKEW,
            now,
        }
    }
}

impl Default for VerifyOptions {
    /// [`DEFAULT_SKEW`] at the wall-clock time of the call.
    fn default() -> Self {
        Self::at(Utc::now())
    }
}

/// Verifies a request and returns its action, key and parameters.
///
/// Checks run in the order of docs/protocol.md §11: parameter parsing (duplicates, UTF-8);
/// signature version detection; mandatory parameters/headers (`Missing*`); signature
/// method (`InvalidSignatureMethod`), and for V3 the signed-header set
/// (`IncompleteSignature`); `Format`; timestamp format and skew; AccessKey lookup;
/// signature (`SignatureDoesNotMatch`, for V3 after the body hash); nonce replay
/// (`SignatureNonceUsed`, only after the signature verified, so that nobody can burn
/// another client's nonces), or a key over its nonce quota (`Throttling.User`). Action/Version existence, throttling and RAM are the
/// server's job.
///
/// # Errors
/// Every failure is an [`ApiError`] ready to render; errors from `keys` pass through.
pub fn authenticate(
    req: &RawRequest,
    keys: &dyn SecretLookup,
    nonces: &dyn NonceStore,
    opts: &VerifyOptions,
) -> Result<AuthenticatedRequest, ApiError> {
    let parsed = parse_params(req)?;
    let headers = Headers(&req.headers);
    match headers.single("authorization")? {
        Some(authorization) if authorization.starts_with("ACS3-") => {
            verify_v3(req, &headers, authorization, parsed, keys, nonces, opts)
        }
        _ => verify_v1(req, parsed, keys, nonces, opts),
    }
}

/// Query pairs (needed separately for the V3 canonical query) and the merged,
/// duplicate-free map of query + form parameters.
struct Parsed {
    query: Vec<(String, String)>,
    all: BTreeMap<String, String>,
}

fn is_form(headers: &Headers<'_>) -> bool {
    headers.all("content-type").next().is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case(FORM_CONTENT_TYPE))
    })
}

fn parse_params(req: &RawRequest) -> Result<Parsed, ApiError> {
    let query = parse_pairs(&req.raw_query)?;
    let form = if req.method.eq_ignore_ascii_case("POST") && is_form(&Headers(&req.headers)) {
        let body = std::str::from_utf8(&req.body).map_err(|_| ApiError::body_not_utf8())?;
        parse_pairs(body)?
    } else {
        Vec::new()
    };
    let mut all = BTreeMap::new();
    for (k, v) in query.iter().cloned().chain(form) {
        // The docs leave the signing order of repeated names open (docs/protocol.md §2.2), and
        // a repeated name would make "the" value of a parameter ambiguous: refuse them.
        if all.contains_key(&k) {
            return Err(ApiError::invalid_parameter(
                &k,
                "The parameter is specified more than once.",
            ));
        }
        all.insert(k, v);
    }
    Ok(Parsed { query, all })
}

/// Case-insensitive view over the received headers.
struct Headers<'a>(&'a [(String, String)]);

impl<'a> Headers<'a> {
    fn all(&self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k.eq_ignore_ascii_case(name))
    }

    /// The header's value; a header the protocol reads as one value must not repeat.
    fn single(&self, name: &'a str) -> Result<Option<&'a str>, ApiError> {
        let mut values = self.all(name);
        let first = values.next();
        if values.next().is_some() {
            return Err(ApiError::invalid_parameter(
                name,
                "The header must be sent only once.",
            ));
        }
        Ok(first)
    }
}

fn non_empty(v: Option<&str>) -> Option<&str> {
    v.filter(|s| !s.is_empty())
}

fn check_format(format: Option<&str>) -> Result<ResponseFormat, ApiError> {
    match format {
        None | Some("") => Ok(ResponseFormat::Json),
        Some(f) if f.eq_ignore_ascii_case("JSON") => Ok(ResponseFormat::Json),
        Some(_) => Err(ApiError::unsupported_format()),
    }
}

/// Parses exactly `YYYY-MM-DDThh:mm:ssZ`: no fractions, offsets or lower-case letters,
/// which is what every SDK sends and what the docs specify.
fn parse_timestamp(s: &str) -> Result<DateTime<Utc>, ApiError> {
    let b = s.as_bytes();
    let shape_ok = b.len() == 20
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'Z',
            _ => c.is_ascii_digit(),
        });
    if !shape_ok {
        return Err(ApiError::timestamp_format());
    }
    // All bytes are ASCII now, so these slices are on char boundaries.
    let num = |from: usize, to: usize| s[from..to].parse::<u32>().ok();
    let date = num(0, 4)
        .and_then(|y| NaiveDate::from_ymd_opt(i32::try_from(y).ok()?, num(5, 7)?, num(8, 10)?));
    date.and_then(|d| d.and_hms_opt(num(11, 13)?, num(14, 16)?, num(17, 19)?))
        .map(|t| t.and_utc())
        .ok_or_else(ApiError::timestamp_format)
}

fn check_time(raw: &str, opts: &VerifyOptions) -> Result<DateTime<Utc>, ApiError> {
    let ts = parse_timestamp(raw)?;
    if opts.now.signed_duration_since(ts).abs() > opts.skew.abs() {
        return Err(ApiError::timestamp_expired());
    }
    Ok(ts)
}

fn lookup(keys: &dyn SecretLookup, access_key_id: &str) -> Result<Secret, ApiError> {
    match keys.secret(access_key_id)? {
        Some(KeyState::Active(secret)) => Ok(secret),
        Some(KeyState::Inactive) => Err(ApiError::access_key_inactive()),
        None => Err(ApiError::access_key_not_found()),
    }
}

fn ct_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

fn record_nonce(
    nonces: &dyn NonceStore,
    access_key_id: &str,
    nonce: &str,
    opts: &VerifyOptions,
) -> Result<(), ApiError> {
    // A request dated up to `skew` ahead stays acceptable until now + 2·skew, so the nonce
    // must be remembered at least that long.
    let keep = opts
        .skew
        .abs()
        .checked_mul(2)
        .and_then(|d| opts.now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    match nonces.check_and_record(access_key_id, nonce, keep) {
        NonceCheck::Recorded => Ok(()),
        NonceCheck::Replayed => Err(ApiError::nonce_used()),
        NonceCheck::OverQuota { retry_after } => Err(ApiError::nonce_quota_exceeded(
            u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX),
        )),
    }
}

fn business_params(all: BTreeMap<String, String>) -> Params {
    all.into_iter()
        .filter(|(k, _)| !COMMON_PARAMS.contains(&k.as_str()))
        .collect()
}

fn verify_v1(
    req: &RawRequest,
    parsed: Parsed,
    keys: &dyn SecretLookup,
    nonces: &dyn NonceStore,
    opts: &VerifyOptions,
) -> Result<AuthenticatedRequest, ApiError> {
    let all = &parsed.all;
    // An empty value is as good as absent: SDKs send unset fields empty (V1-E vector).
    let need = |name: &str| {
        non_empty(all.get(name).map(String::as_str)).ok_or_else(|| ApiError::missing_common(name))
    };
    let action = need("Action")?;
    let version = need("Version")?;
    let access_key_id = need("AccessKeyId")?;
    let signature = need("Signature")?;
    let method = need("SignatureMethod")?;
    let signature_version = need("SignatureVersion")?;
    let nonce = need("SignatureNonce")?;
    let timestamp = need("Timestamp")?;

    if method != V1_SIGNATURE_METHOD || signature_version != V1_SIGNATURE_VERSION {
        return Err(ApiError::invalid_signature_method(
            "Signature version 1.0 supports only SignatureMethod HMAC-SHA1.",
        ));
    }
    let format = check_format(all.get("Format").map(String::as_str))?;
    let ts = check_time(timestamp, opts)?;
    let secret = lookup(keys, access_key_id)?;

    let string_to_sign = v1_string_to_sign(&req.method, all.iter());
    let expected = v1_signature(secret.expose(), &string_to_sign);
    if !ct_eq(&expected, signature) {
        return Err(ApiError::signature_mismatch_v1(&string_to_sign));
    }
    record_nonce(nonces, access_key_id, nonce, opts)?;
    let nonce_digest = crate::nonce_digest(access_key_id, nonce);

    let security_token = non_empty(all.get("SecurityToken").map(String::as_str)).map(str::to_owned);
    let (action, version, access_key_id) = (
        action.to_owned(),
        version.to_owned(),
        access_key_id.to_owned(),
    );
    Ok(AuthenticatedRequest {
        action,
        version,
        access_key_id,
        kind: SignatureKind::V1,
        params: business_params(parsed.all),
        format,
        security_token,
        timestamp: ts,
        nonce_digest,
    })
}

/// The fields of `ACS3-HMAC-SHA256 Credential=..,SignedHeaders=..,Signature=..`.
#[derive(Default)]
struct Authorization<'a> {
    algorithm: &'a str,
    credential: Option<&'a str>,
    signed_headers: Option<&'a str>,
    signature: Option<&'a str>,
    malformed: bool,
}

/// Parses leniently (spaces after commas are tolerated) and records malformation
/// instead of failing at once, so that a missing Credential or Signature is reported
/// as `Missing*` and an unknown algorithm as `InvalidSignatureMethod`, per §11.
fn parse_authorization(value: &str) -> Authorization<'_> {
    let (algorithm, rest) = value.split_once(' ').unwrap_or((value, ""));
    let mut auth = Authorization {
        algorithm,
        ..Authorization::default()
    };
    for part in rest.split(',').map(str::trim) {
        let Some((k, v)) = part.split_once('=') else {
            auth.malformed = true;
            continue;
        };
        let slot = match k.trim() {
            "Credential" => &mut auth.credential,
            "SignedHeaders" => &mut auth.signed_headers,
            "Signature" => &mut auth.signature,
            _ => {
                auth.malformed = true;
                continue;
            }
        };
        if slot.is_some() {
            auth.malformed = true;
        }
        *slot = non_empty(Some(v.trim()));
    }
    auth
}

/// Headers that must always be signed, and those that must be signed when present.
const V3_MANDATORY_SIGNED: [&str; 5] = [
    "host",
    "x-acs-action",
    "x-acs-version",
    "x-acs-date",
    "x-acs-content-sha256",
];
const V3_SIGNED_IF_PRESENT: [&str; 2] = ["x-acs-signature-nonce", "x-acs-security-token"];

fn signed_header_names(list: &str) -> Result<Vec<String>, ApiError> {
    let mut names: Vec<String> = Vec::new();
    for name in list.split(';') {
        let name = name.trim().to_ascii_lowercase();
        if name.is_empty() || names.contains(&name) {
            return Err(ApiError::incomplete_signature(
                "SignedHeaders has an empty or repeated name.",
            ));
        }
        names.push(name);
    }
    Ok(names)
}

fn verify_v3(
    req: &RawRequest,
    headers: &Headers<'_>,
    authorization: &str,
    parsed: Parsed,
    keys: &dyn SecretLookup,
    nonces: &dyn NonceStore,
    opts: &VerifyOptions,
) -> Result<AuthenticatedRequest, ApiError> {
    let auth = parse_authorization(authorization);
    let action = non_empty(headers.single("x-acs-action")?)
        .ok_or_else(|| ApiError::missing_common_as("Action", "x-acs-action"))?;
    let version = non_empty(headers.single("x-acs-version")?)
        .ok_or_else(|| ApiError::missing_common_as("Version", "x-acs-version"))?;
    let access_key_id = auth
        .credential
        .ok_or_else(|| ApiError::missing_common("AccessKeyId"))?;
    let signature = auth
        .signature
        .ok_or_else(|| ApiError::missing_common("Signature"))?;
    let date = non_empty(headers.single("x-acs-date")?)
        .ok_or_else(|| ApiError::missing_common_as("Timestamp", "x-acs-date"))?;
    // The V3 docs mark the nonce optional, but without one a signed request could be replayed as often as
    // its date allows (a replayed CreateBackup takes a second backup). Every SDK sends it, and V1 requires
    // `SignatureNonce`: so does V3 here, with the V1 code.
    let nonce = non_empty(headers.single("x-acs-signature-nonce")?)
        .ok_or_else(|| ApiError::missing_common_as("SignatureNonce", "x-acs-signature-nonce"))?;
    let content_sha256 = headers.single("x-acs-content-sha256")?;
    let security_token = headers.single("x-acs-security-token")?;

    if auth.algorithm != V3_ALGORITHM {
        return Err(ApiError::invalid_signature_method(
            "Only ACS3-HMAC-SHA256 is supported.",
        ));
    }
    if auth.malformed {
        return Err(ApiError::incomplete_signature(
            "The Authorization header is malformed.",
        ));
    }
    let signed = signed_header_names(auth.signed_headers.unwrap_or(""))?;
    for required in V3_MANDATORY_SIGNED {
        if !signed.iter().any(|s| s == required) {
            return Err(ApiError::incomplete_signature(&format!(
                "SignedHeaders must include {required}."
            )));
        }
    }
    for name in V3_SIGNED_IF_PRESENT {
        if headers.contains(name) && !signed.iter().any(|s| s == name) {
            return Err(ApiError::incomplete_signature(&format!(
                "SignedHeaders must include {name} when it is sent."
            )));
        }
    }
    let mut signed_pairs: Vec<(&str, &str)> = Vec::new();
    for name in &signed {
        let before = signed_pairs.len();
        signed_pairs.extend(req.headers.iter().filter_map(|(k, v)| {
            k.eq_ignore_ascii_case(name)
                .then_some((name.as_str(), v.as_str()))
        }));
        if signed_pairs.len() == before {
            return Err(ApiError::incomplete_signature(&format!(
                "Signed header {name} is missing from the request."
            )));
        }
    }

    let format = check_format(parsed.all.get("Format").map(String::as_str))?;
    let ts = check_time(date, opts)?;
    let secret = lookup(keys, access_key_id)?;

    let body_hash = hex_sha256(&req.body);
    if content_sha256 != Some(body_hash.as_str()) {
        return Err(ApiError::content_hash_mismatch());
    }
    let canonical_requests: Vec<String> = v3_canonical_query_variants(&parsed.query)
        .iter()
        .map(|cq| v3_canonical_request(&req.method, "/", cq, &signed_pairs, &body_hash))
        .collect();
    // Compare against every variant (no early exit), so timing does not reveal which
    // canonical form came closest.
    let matched = canonical_requests.iter().fold(false, |acc, cr| {
        acc | ct_eq(&v3_signature(secret.expose(), cr), signature)
    });
    if !matched {
        let primary = canonical_requests.first().map(String::as_str).unwrap_or("");
        return Err(ApiError::signature_mismatch_v3(
            &v3_string_to_sign(primary),
            primary,
        ));
    }
    record_nonce(nonces, access_key_id, nonce, opts)?;
    let nonce_digest = crate::nonce_digest(access_key_id, nonce);

    Ok(AuthenticatedRequest {
        action: action.to_owned(),
        version: version.to_owned(),
        access_key_id: access_key_id.to_owned(),
        kind: SignatureKind::V3,
        params: business_params(parsed.all),
        format,
        security_token: non_empty(security_token).map(str::to_owned),
        timestamp: ts,
        nonce_digest,
    })
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
