//! The RPC entry point: every request is authenticated, authorized as `dds:<Action>` on its resource, then
//! dispatched to the action's handler.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use chrono::Utc;
use ddsvault_api::{
    authenticate, new_request_id, render_error, render_success, ApiError, Params, RawRequest,
    VerifyOptions,
};
use ddsvault_ram::{access_denied_detail, evaluate, Context, Decision, Request as RamRequest};
use serde_json::{Map, Value};

use crate::actions;
use crate::state::{AppState, ROOT_USER};

/// The only API version this server speaks.
pub const API_VERSION: &str = "2015-12-01";
/// Requests larger than this are refused before parsing: no Dds action needs more.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The result of an action handler: the fields of the JSON answer (RequestId is added by the renderer).
pub type ActionResult = Result<Map<String, Value>, ApiError>;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", any(handle))
        .route(
            "/download/{backup_id}/{file}",
            axum::routing::get(crate::download::serve_download),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn handle(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request_id = new_request_id();
    let body = match body {
        Ok(b) => b,
        Err(rejection) => {
            let e = ApiError::new(
                rejection.status().as_u16(),
                "RequestEntityTooLarge",
                format!("The request body could not be read: {rejection}. At most {MAX_BODY_BYTES} bytes are accepted."),
            );
            return into_response(render_error(&e, &request_id, &st.host_id));
        }
    };
    let raw = RawRequest {
        method: method.as_str().to_string(),
        raw_query: uri.query().unwrap_or("").to_string(),
        headers: headers
            .iter()
            .filter_map(|(k, v)| {
                v.to_str()
                    .ok()
                    .map(|v| (k.as_str().to_string(), v.to_string()))
            })
            .collect(),
        body: body.to_vec(),
        peer,
        secure: false,
    };
    let (outcome, action, key) = process(&st, &raw).await;
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
    into_response((status, hdrs, body))
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

/// Returns the outcome plus the action name and AccessKeyId for the access log (never a secret or signature).
async fn process(st: &AppState, raw: &RawRequest) -> (ActionResult, String, String) {
    let now = Utc::now();
    let opts = VerifyOptions { skew: st.skew, now };
    let auth = match authenticate(raw, &st.keys, &st.nonces, &opts) {
        Ok(a) => a,
        Err(e) => return (Err(e), "-".into(), "-".into()),
    };
    let action = auth.action.clone();
    let key = auth.access_key_id.clone();
    let result = async {
        if auth.version != API_VERSION {
            return Err(ApiError::invalid_version());
        }
        let Some(act) = actions::Action::from_name(&auth.action) else {
            return Err(ApiError::api_not_found());
        };
        authorize(
            st,
            &auth.access_key_id,
            act,
            &auth.params,
            &condition_context(raw, now),
        )?;
        actions::dispatch(st, act, &auth.params).await
    }
    .await;
    (result, action, key)
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
fn authorize(
    st: &AppState,
    access_key_id: &str,
    act: actions::Action,
    params: &Params,
    context: &Context,
) -> Result<(), ApiError> {
    let user = st
        .keys
        .user_of(access_key_id)
        .ok_or_else(|| ApiError::internal("authenticated key has no user"))?;
    if user == ROOT_USER {
        return Ok(());
    }
    let ram_action = format!("dds:{}", act.name());
    let mut resources: Vec<String> = act
        .instance_params()
        .iter()
        .filter_map(|p| params.get(p))
        .filter(|id| !id.is_empty())
        .map(|id| st.instance_arn(id))
        .collect();
    if resources.is_empty() {
        resources.push("*".to_string());
    }
    let policies: Vec<&ddsvault_ram::Policy> = st
        .ram_users
        .get(&user)
        .map(|ps| ps.iter().map(|p| p.as_ref()).collect())
        .unwrap_or_default();
    // Every resource the call touches must be allowed.
    for resource in &resources {
        let decision = evaluate(
            &policies,
            &RamRequest::new(&ram_action, resource).with_context(context),
        );
        if decision != Decision::Allow {
            return Err(ApiError::forbidden_ram(access_denied_detail(
                decision,
                &ram_action,
                resource,
                &user,
                &st.account_id,
            )));
        }
    }
    Ok(())
}
