//! The RPC entry point: every request is authenticated, authorized as `dds:<Action>` on its resource, then
//! dispatched to the action's handler.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Extension;
use axum::Router;
use chrono::Utc;
use ddsvault_api::{
    authenticate, new_request_id, render_error, render_success, ApiError, Params, RawRequest,
    VerifyOptions,
};
use ddsvault_catalog::AuditRecord;
use ddsvault_ram::{access_denied_detail, evaluate, Context, Decision, Request as RamRequest};
use http_body_util::BodyExt;
use serde_json::{Map, Value};

use crate::actions;
use crate::audit::clean_field;
use crate::state::{AppState, ROOT_USER};
use crate::throttle::{retry_after_ms, Refusal};

/// The only API version this server speaks.
pub const API_VERSION: &str = "2015-12-01";
/// Requests larger than this are refused before parsing: no Dds action needs more.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Query strings longer than this are refused before parsing (the SDKs put every parameter there, and the longest
/// real Dds call is a few KiB). Beyond ~64 KiB the HTTP layer itself answers a bare 414 (`http::Uri`'s limit);
/// headers are bounded by hyper too: at most 100, in a request head of at most ~400 KiB.
pub const MAX_QUERY_BYTES: usize = 32 * 1024;

/// The result of an action handler: the fields of the JSON answer (RequestId is added by the renderer).
pub type ActionResult = Result<Map<String, Value>, ApiError>;

/// The API's routes; with `monitoring`, also `/metrics`, `/healthz` and `/readyz` ([`crate::metrics::routes`]).
pub fn router(state: Arc<AppState>, monitoring: bool) -> Router {
    let api = Router::new()
        .route("/", any(handle))
        .route(
            "/download/{backup_id}/{file}",
            axum::routing::get(crate::download::serve_download),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(Arc::clone(&state));
    let api = api.merge(crate::console::routes(Arc::clone(&state)));
    if monitoring {
        api.merge(crate::metrics::routes(state))
    } else {
        api
    }
}

/// Whether a router serves the TLS listener; set as an extension so both listeners share one handler.
#[derive(Clone, Copy, Debug)]
pub struct Transport {
    pub secure: bool,
}

/// Who and what a call was about, for the access log and the audit trail (never a secret or signature).
#[derive(Debug, Default)]
struct CallInfo {
    access_key_id: Option<String>,
    user: Option<String>,
    action: Option<String>,
    resources: Vec<String>,
}

async fn handle(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    transport: Option<Extension<Transport>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let secure = transport.is_some_and(|Extension(t)| t.secure);
    // hyper drops this future when the client hangs up (a CreateBackup waiting on a dead instance, an SDK read
    // timeout): the call itself runs as a task of its own, so it finishes, is logged and is audited regardless.
    let task = st.requests.spawn(call(
        Arc::clone(&st),
        peer,
        secure,
        method,
        uri,
        headers,
        body,
    ));
    match task.await {
        Ok(response) => response,
        Err(e) => {
            let request_id = new_request_id();
            tracing::error!(request_id = %request_id, error = %e, "request task failed");
            into_response(render_error(
                &ApiError::internal(e.to_string()),
                &request_id,
                &st.host_id,
            ))
        }
    }
}

/// Why a request body could not be read.
#[derive(Debug)]
enum BodyError {
    TooLarge,
    Stalled,
    Broken(String),
}

impl BodyError {
    fn into_api(self, timeout: std::time::Duration) -> ApiError {
        match self {
            BodyError::TooLarge => ApiError::request_entity_too_large(MAX_BODY_BYTES),
            BodyError::Stalled => ApiError::request_timeout(timeout.as_secs()),
            BodyError::Broken(why) => ApiError::incomplete_body(&why),
        }
    }
}

/// Reads at most `limit` bytes of body within `timeout`, telling a body that is too large from one that is late
/// or broken off (issue 17.7: every failure used to be answered `RequestEntityTooLarge`).
async fn read_body(
    body: Body,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Vec<u8>, BodyError> {
    // A declared length over the limit is refused before a byte is read.
    if usize::try_from(axum::body::HttpBody::size_hint(&body).lower()).map_or(true, |n| n > limit) {
        return Err(BodyError::TooLarge);
    }
    let read = async move {
        let mut body = body;
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BodyError::Broken(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                if out.len() + data.len() > limit {
                    return Err(BodyError::TooLarge);
                }
                out.extend_from_slice(&data);
            }
        }
        Ok(out)
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(BodyError::Stalled))
}

async fn call(
    st: Arc<AppState>,
    peer: SocketAddr,
    secure: bool,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let request_id = new_request_id();
    let now = Utc::now();
    let started = std::time::Instant::now();
    let header_pairs: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| {
            v.to_str()
                .ok()
                .map(|v| (k.as_str().to_string(), v.to_string()))
        })
        .collect();
    let mut raw = RawRequest {
        method: method.as_str().to_string(),
        raw_query: uri.query().unwrap_or("").to_string(),
        headers: header_pairs,
        body: Vec::new(),
        peer,
        secure,
    };
    let (outcome, info) = if raw.raw_query.len() > MAX_QUERY_BYTES {
        raw.raw_query.truncate(0);
        (Err(ApiError::uri_too_long(MAX_QUERY_BYTES)), claimed(&raw))
    } else {
        match read_body(body, MAX_BODY_BYTES, st.body_timeout).await {
            Ok(b) => {
                raw.body = b;
                process(&st, &raw, now).await
            }
            Err(e) => (Err(e.into_api(st.body_timeout)), claimed(&raw)),
        }
    };
    let action = info.action.as_deref().unwrap_or("-");
    let key = info.access_key_id.as_deref().unwrap_or("-");
    let code = outcome.as_ref().err().map(|e| e.code.clone());
    // Only names of real actions become labels: a client cannot grow the metrics with invented ones.
    let known = actions::Action::from_name(action)
        .map(actions::Action::name)
        .or_else(|| crate::ram_api::action(action))
        .unwrap_or("-");
    st.metrics
        .api_call(known, code.as_deref().unwrap_or("OK"), started.elapsed());
    let (status, hdrs, body) = match outcome {
        Ok(map) => {
            tracing::info!(request_id = %request_id, action = %action, access_key = %key, "ok");
            render_success(&request_id, map)
        }
        Err(e) => {
            if e.is_server_error() {
                tracing::error!(request_id = %request_id, action = %action, access_key = %key,
                    code = %e.code, detail = ?e.detail, "request failed");
            } else {
                tracing::info!(request_id = %request_id, action = %action, access_key = %key,
                    code = %e.code, "request refused");
            }
            render_error(&e, &request_id, &st.host_id)
        }
    };
    st.audit
        .record(AuditRecord {
            id: 0,
            time: now,
            request_id,
            access_key_id: info.access_key_id,
            user: info.user,
            action: info.action,
            resources: info.resources,
            source_ip: peer.ip().to_canonical().to_string(),
            secure,
            http_status: status,
            code,
        })
        .await;
    into_response((status, hdrs, body))
}

/// The AccessKeyId and action a request names, read without verifying anything, for auditing a request that
/// failed before (or during) authentication. Only these two names are looked at: no other parameter value (which
/// might carry a secret) is read. Both are cleaned (bounded, no control characters) since they reach the log.
fn claimed(raw: &RawRequest) -> CallInfo {
    let mut info = CallInfo::default();
    let header = |name: &str| {
        raw.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    // V3: `Authorization: ACS3-HMAC-SHA256 Credential=<id>,SignedHeaders=...,Signature=...`.
    if let Some(auth) = header("authorization") {
        info.access_key_id = auth
            .split([' ', ','])
            .find_map(|part| part.strip_prefix("Credential="))
            .map(clean_field);
    }
    info.action = header("x-acs-action").map(clean_field);
    let is_form = header("content-type")
        .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    let body: &[u8] = if is_form { &raw.body } else { &[] };
    for (k, v) in
        form_urlencoded::parse(raw.raw_query.as_bytes()).chain(form_urlencoded::parse(body))
    {
        match k.as_ref() {
            "AccessKeyId" if info.access_key_id.is_none() => {
                info.access_key_id = Some(clean_field(&v))
            }
            "Action" if info.action.is_none() => info.action = Some(clean_field(&v)),
            _ => {}
        }
    }
    info
}

fn into_response((status, hdrs, body): ddsvault_api::RenderedResponse) -> Response {
    let mut resp = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body,
    )
        .into_response();
    for (k, v) in hdrs {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::try_from(k),
            axum::http::HeaderValue::try_from(v),
        ) {
            resp.headers_mut().insert(name, value);
        }
    }
    resp
}

/// Authenticates, authorizes and runs one call.
async fn process(
    st: &AppState,
    raw: &RawRequest,
    now: chrono::DateTime<Utc>,
) -> (ActionResult, CallInfo) {
    let opts = VerifyOptions { skew: st.skew, now };
    let identities = match st.identities.view().await {
        Ok(v) => v,
        Err(e) => return (Err(e), claimed(raw)),
    };
    let auth = match authenticate(raw, identities.as_ref(), &st.nonces, &opts) {
        Ok(a) => a,
        Err(e) => return (Err(e), claimed(raw)),
    };
    if st.shared_nonces {
        // After the local store (which also enforces the per-key quota): a replay to this same process never costs
        // a catalog round trip. A catalog that cannot answer refuses the call rather than accept a possible replay.
        if let Err(e) = crate::nodes::check_shared_nonce(st, &auth, now).await {
            return (Err(e), claimed(raw));
        }
    }
    st.identities.touch(&auth.access_key_id, now).await;
    let mut info = CallInfo {
        access_key_id: Some(auth.access_key_id.clone()),
        user: identities
            .principal(&auth.access_key_id)
            .ok()
            .map(|(user, _)| user),
        // The name is client text until it matches an action: bounded and without control characters before it
        // reaches the log and the audit trail.
        action: Some(clean_field(&auth.action)),
        resources: Vec::new(),
    };
    let result = async {
        if auth.version == crate::ram_api::RAM_API_VERSION {
            let Some(action) = crate::ram_api::action(&auth.action) else {
                return Err(ApiError::api_not_found());
            };
            throttle(st, &auth.access_key_id, action)?;
            info.resources = crate::ram_api::resources(st, action, &auth.params);
            return crate::ram_api::handle(
                st,
                &auth.access_key_id,
                action,
                &auth.params,
                &condition_context(raw, now),
            )
            .await;
        }
        if auth.version != API_VERSION {
            return Err(ApiError::invalid_version());
        }
        let Some(act) = actions::Action::from_name(&auth.action) else {
            return Err(ApiError::api_not_found());
        };
        throttle(st, &auth.access_key_id, act.name())?;
        info.resources = resources_of(st, act, &auth.params);
        authorize(
            st,
            &auth.access_key_id,
            act,
            &info.resources,
            &condition_context(raw, now),
        )?;
        actions::dispatch(st, act, &auth.params).await
    }
    .await;
    (result, info)
}

/// Flow control of an authenticated key and a known action (Dds or RAM: both are calls on this endpoint).
pub(crate) fn throttle(
    st: &AppState,
    access_key_id: &str,
    action: &'static str,
) -> Result<(), ApiError> {
    let Some(throttle) = st.throttle.get() else {
        return Ok(());
    };
    throttle
        .check(access_key_id, action, std::time::Instant::now())
        .map_err(|refusal| match refusal {
            Refusal::User { retry_after } => {
                ApiError::throttling_user().with_retry_after_ms(retry_after_ms(retry_after))
            }
            Refusal::Api { retry_after } => {
                ApiError::throttling_api().with_retry_after_ms(retry_after_ms(retry_after))
            }
        })
}

/// The ARNs a call touches: its instance parameters, or `*` for actions that are not resource-scoped.
pub(crate) fn resources_of(st: &AppState, act: actions::Action, params: &Params) -> Vec<String> {
    let mut resources: Vec<String> = act
        .instance_params()
        .iter()
        .filter_map(|p| params.get(p).map(|v| (*p, v)))
        .filter(|(_, id)| !id.is_empty())
        // A drill's `provision` target names no instance: the temporary one exists only inside the drill job.
        .filter(|(p, id)| {
            !(matches!(*p, "TargetDBInstanceId" | "RestoreDrillTarget")
                && matches!(
                    act,
                    actions::Action::StartRestoreDrill | actions::Action::ModifyBackupPolicy
                )
                && id.trim() == ddsvault_jobs::drill::PROVISION_TARGET)
        })
        .map(|(_, id)| st.instance_arn(id))
        .collect();
    if resources.is_empty() {
        resources.push("*".to_string());
    }
    resources
}

/// The values of the RAM condition keys for this request.
fn condition_context(raw: &RawRequest, now: chrono::DateTime<Utc>) -> Context {
    let mut ctx = Context::new();
    // The TCP peer, never X-Forwarded-For: a client controls its headers.
    ctx.source_ip(raw.peer.ip())
        .current_time(now)
        .secure_transport(raw.secure)
        // AccessKey-signed calls never carry an MFA session.
        .mfa_present(false);
    let header = |name: &str| {
        raw.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    if let Some(ua) = header("user-agent") {
        ctx.user_agent(ua);
    }
    if let Some(referer) = header("referer") {
        ctx.referer(referer);
    }
    ctx
}

/// RAM: the root key may do everything; a RAM user gets what its policies allow.
pub(crate) fn authorize(
    st: &AppState,
    access_key_id: &str,
    act: actions::Action,
    resources: &[String],
    context: &Context,
) -> Result<(), ApiError> {
    authorize_named(
        st,
        access_key_id,
        &format!("dds:{}", act.name()),
        resources,
        context,
    )
}

/// [`authorize`] for a RAM action given by name (the console's own `dds:DescribeAuditRecords`).
pub(crate) fn authorize_named(
    st: &AppState,
    access_key_id: &str,
    ram_action: &str,
    resources: &[String],
    context: &Context,
) -> Result<(), ApiError> {
    let (user, policies) = st.identities.principal(access_key_id)?;
    if user == ROOT_USER {
        return Ok(());
    }
    let policies: Vec<&ddsvault_ram::Policy> = policies.iter().map(|p| p.as_ref()).collect();
    // Every resource the call touches must be allowed.
    for resource in resources {
        let decision = evaluate(
            &policies,
            &RamRequest::new(ram_action, resource).with_context(context),
        );
        if decision != Decision::Allow {
            return Err(ApiError::forbidden_ram(access_denied_detail(
                decision,
                ram_action,
                resource,
                &user,
                &st.account_id,
            )));
        }
    }
    Ok(())
}
