//! The web console under `/console/` (issue 21.3): plain server-rendered HTML over the same AccessKeys, RAM
//! engine, action handlers, throttle, metrics and audit trail as the API. A page is one or more calls of the Dds
//! actions ([`Console::call`]) rendered as tables; nothing here reads the catalog behind RAM's back except the
//! audit page, which is authorized as the console-only action `dds:DescribeAuditRecords` (docs/decisions.md).
//!
//! Templates are Rust string builders ([`html`]): every value goes through [`html::esc`]. No script, font or
//! style comes from elsewhere: the one stylesheet is compiled in.

mod auth;
mod drills;
mod html;
mod pages;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::Utc;
use ddsvault_api::{new_request_id, ApiError, Params};
use ddsvault_catalog::AuditRecord;
use ddsvault_ram::Context;

use crate::actions::{self, Action};
use crate::router::ActionResult;
use crate::state::AppState;

pub(crate) use auth::Caller;

/// The console's own state beside the server's: the session key (loaded from the catalog on first use). Logouts
/// and failed-login counters live in the catalog (migration 0021), shared by every process.
pub struct Console {
    app: Arc<AppState>,
    key: tokio::sync::OnceCell<Vec<u8>>,
}

/// The console's routes, all under `/console/`.
pub fn routes(app: Arc<AppState>) -> Router {
    let cs = Arc::new(Console {
        app,
        key: tokio::sync::OnceCell::new(),
    });
    Router::new()
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route(
            "/console/",
            get(|| async { Redirect::to("/console/instances") }),
        )
        .route("/console/style.css", get(style))
        .route("/console/login", get(auth::login_form).post(auth::login))
        .route("/console/logout", post(auth::logout))
        .route("/console/instances", get(pages::instances))
        .route("/console/instances/{id}/backups", get(pages::backups))
        .route("/console/instances/{id}/jobs", get(pages::jobs))
        .route(
            "/console/instances/{id}/policy",
            get(pages::policy).post(pages::modify_policy),
        )
        .route("/console/instances/{id}/backup", post(pages::create_backup))
        .route("/console/instances/{id}/restore", post(pages::restore))
        .route("/console/instances/{id}/download", post(pages::download))
        .route("/console/instances/{id}/drills", get(drills::drills))
        .route("/console/instances/{id}/drill", post(drills::start_drill))
        .route("/console/audit", get(pages::audit))
        .with_state(cs)
}

async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("style.css"),
    )
        .into_response()
}

/// Whether a console call is written to the audit trail: changes and secrets handed out are (as every API call
/// is); the reads a page makes to render itself are not, so a job page refreshing every few seconds does not
/// bury the trail (docs/decisions.md).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Audit {
    Yes,
    No,
}

impl Console {
    /// Runs one Dds action for the logged-in key exactly as the API would after verifying a signature: flow
    /// control, RAM on the action's instance resources, the action's handler, the API metrics, and (for
    /// `Audit::Yes`) the audit row.
    async fn call(
        &self,
        caller: &Caller,
        act: Action,
        params: &[(&str, &str)],
        audit: Audit,
    ) -> ActionResult {
        let st = &self.app;
        let now = Utc::now();
        let started = std::time::Instant::now();
        let params = Params::new(
            params
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
        );
        let resources = crate::router::resources_of(st, act, &params);
        let result = async {
            crate::router::throttle(st, &caller.access_key_id, act.name())?;
            crate::router::authorize(
                st,
                &caller.access_key_id,
                act,
                &resources,
                &caller.context(now),
            )?;
            actions::dispatch(st, act, &params).await
        }
        .await;
        let code = result.as_ref().err().map(|e| e.code.clone());
        st.metrics.api_call(
            act.name(),
            code.as_deref().unwrap_or("OK"),
            started.elapsed(),
        );
        if let Err(e) = &result {
            if e.is_server_error() {
                tracing::error!(action = act.name(), access_key = %caller.access_key_id, code = %e.code,
                    detail = ?e.detail, "console call failed");
            }
        }
        if audit == Audit::Yes {
            let status = result.as_ref().map_or_else(|e| e.status, |_| 200);
            self.audit(caller, act.name(), resources, status, code, now)
                .await;
        }
        result
    }

    /// Authorizes the logged-in key for a console-only action on `*` (the audit page).
    fn authorize_extension(&self, caller: &Caller, ram_action: &str) -> Result<(), ApiError> {
        crate::router::authorize_named(
            &self.app,
            &caller.access_key_id,
            ram_action,
            &["*".to_string()],
            &caller.context(Utc::now()),
        )
    }

    async fn audit(
        &self,
        caller: &Caller,
        action: &str,
        resources: Vec<String>,
        status: u16,
        code: Option<String>,
        time: chrono::DateTime<Utc>,
    ) {
        self.app
            .audit
            .record(AuditRecord {
                id: 0,
                time,
                request_id: new_request_id(),
                access_key_id: Some(caller.access_key_id.clone()),
                user: Some(caller.user.clone()),
                action: Some(action.to_string()),
                resources,
                source_ip: caller.peer.ip().to_canonical().to_string(),
                secure: caller.secure,
                http_status: status,
                code,
            })
            .await;
    }
}

/// The RAM condition context of a console request: the TCP peer (never a forwarded header), the transport, and no
/// MFA (AccessKey logins carry none), as for a signed call.
fn context(
    peer: SocketAddr,
    secure: bool,
    user_agent: Option<&str>,
    now: chrono::DateTime<Utc>,
) -> Context {
    let mut ctx = Context::new();
    ctx.source_ip(peer.ip())
        .current_time(now)
        .secure_transport(secure)
        .mfa_present(false);
    if let Some(ua) = user_agent {
        ctx.user_agent(ua);
    }
    ctx
}

/// The console-only RAM action that reads the audit trail (authorized on `*`; `dds:Describe*` grants it).
pub const AUDIT_ACTION: &str = "dds:DescribeAuditRecords";
