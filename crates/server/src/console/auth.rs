//! Console sessions: login with an AccessKey id and secret (checked against the same identity view the API's
//! signature check uses), a signed session cookie, CSRF tokens, logout, and a per-address login limit.
//!
//! The cookie is `base64url(key id \n expiry \n nonce \n key fingerprint) . hex(HMAC-SHA256)` under a key kept in
//! the catalog (setting `console_session_key`, created on first use), so every process sharing the catalog
//! accepts it and a restart does not log anyone out. The fingerprint is an HMAC of the AccessKey's secret: rotating
//! or disabling the key ends its sessions. The CSRF token of a session is an HMAC of its cookie payload, so it
//! needs no server-side state. A logout and the failed-login counters are kept in the catalog (migration 0021), so
//! every process sharing it honours them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::Utc;
use ddsvault_api::{KeyState, SecretLookup};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use super::html::{self, esc};
use super::Console;
use crate::router::Transport;

type HmacSha256 = Hmac<Sha256>;

/// The session cookie.
pub const SESSION_COOKIE: &str = "ddsvault_console";
/// The login form's double-submit CSRF cookie (there is no session yet to derive a token from).
const LOGIN_COOKIE: &str = "ddsvault_console_login";
/// How long a session lasts after login.
pub const SESSION_SECONDS: i64 = 8 * 3600;
/// Failed logins allowed per client address in [`LIMIT_WINDOW`] before further attempts are refused unchecked.
pub const LOGIN_FAILURES: u32 = 5;
const LIMIT_WINDOW: chrono::Duration = chrono::Duration::seconds(60);
/// Catalog setting holding the hex session key.
const KEY_SETTING: &str = "console_session_key";

/// The logged-in key of a request, with what RAM's conditions need.
pub(crate) struct Caller {
    pub access_key_id: String,
    pub user: String,
    pub peer: SocketAddr,
    pub secure: bool,
    pub user_agent: Option<String>,
    /// This session's CSRF token, put in every form.
    pub csrf: String,
    nonce: String,
    /// When the session ends (unix seconds).
    expires: i64,
}

impl Caller {
    pub fn context(&self, now: chrono::DateTime<Utc>) -> ddsvault_ram::Context {
        super::context(self.peer, self.secure, self.user_agent.as_deref(), now)
    }
}

impl Console {
    /// Seconds `ip` must wait before its next login attempt if it has used up its failures, from the catalog's
    /// counters (so every process sharing the catalog enforces the same limit), else `None`.
    async fn login_blocked(&self, ip: IpAddr) -> Result<Option<u64>, Response> {
        let now = Utc::now();
        let f = self
            .app
            .catalog
            .console_login_failures(&ip.to_string(), now - LIMIT_WINDOW)
            .await
            .map_err(|e| catalog_unavailable(&e))?;
        Ok(f.filter(|f| f.failures >= LOGIN_FAILURES).map(|f| {
            let left = (f.window_start + LIMIT_WINDOW - now).num_seconds();
            u64::try_from(left).unwrap_or(0).max(1)
        }))
    }

    async fn login_failed(&self, ip: IpAddr) {
        let now = Utc::now();
        if let Err(e) = self
            .app
            .catalog
            .record_console_login_failure(&ip.to_string(), now, now - LIMIT_WINDOW)
            .await
        {
            tracing::error!(error = %e, "console: could not count a failed login in the catalog");
        }
    }

    async fn login_succeeded(&self, ip: IpAddr) {
        if let Err(e) = self
            .app
            .catalog
            .clear_console_login_failures(&ip.to_string())
            .await
        {
            tracing::warn!(error = %e, "console: could not clear the failed logins of an address");
        }
    }
}

/// The page shown when the catalog cannot answer what a session or login needs.
fn catalog_unavailable(e: &ddsvault_catalog::CatalogError) -> Response {
    tracing::error!(error = %e, "console: the catalog is unavailable");
    html::message(
        StatusCode::SERVICE_UNAVAILABLE,
        "Console unavailable",
        "The catalog could not be read; see the server log.",
    )
}

impl Console {
    /// The session key, created in the catalog by the first process that needs it.
    pub(super) async fn session_key(&self) -> Result<&[u8], Response> {
        self.key
            .get_or_try_init(|| async {
                let mut fresh = [0u8; 32];
                rand::thread_rng().fill_bytes(&mut fresh);
                let stored = self
                    .app
                    .catalog
                    .init_setting(KEY_SETTING, &hex::encode(fresh))
                    .await
                    .map_err(|e| e.to_string())?;
                hex::decode(stored.trim()).map_err(|e| e.to_string())
            })
            .await
            .map(Vec::as_slice)
            .map_err(|e| {
                tracing::error!(error = %e, "console session key unavailable");
                html::message(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Console unavailable",
                    "The session key could not be read from the catalog; see the server log.",
                )
            })
    }
}

fn mac(key: &[u8], parts: &[&str]) -> HmacSha256 {
    // HMAC accepts keys of any length: this cannot fail.
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            m.update(b"\n");
        }
        m.update(p.as_bytes());
    }
    m
}

fn sign(key: &[u8], parts: &[&str]) -> String {
    hex::encode(mac(key, parts).finalize().into_bytes())
}

/// Constant-time check of a hex MAC.
fn verify(key: &[u8], parts: &[&str], hex_tag: &str) -> bool {
    hex::decode(hex_tag).is_ok_and(|tag| mac(key, parts).verify_slice(&tag).is_ok())
}

fn fingerprint(key: &[u8], access_key_id: &str, secret: &str) -> String {
    sign(key, &["fingerprint", access_key_id, secret])[..32].to_string()
}

fn random_hex() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn set_cookie(name: &str, value: &str, max_age: i64, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    )
}

pub(crate) fn form(body: &Bytes) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn peer_and_transport(parts: &Parts) -> (SocketAddr, bool) {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0);
    let secure = parts
        .extensions
        .get::<Transport>()
        .is_some_and(|t| t.secure);
    (peer, secure)
}

impl FromRequestParts<Arc<Console>> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, cs: &Arc<Console>) -> Result<Self, Response> {
        let to_login = || Redirect::to("/console/login").into_response();
        let key = cs.session_key().await?;
        let raw = cookie(&parts.headers, SESSION_COOKIE).ok_or_else(to_login)?;
        let (payload_b64, tag) = raw.split_once('.').ok_or_else(to_login)?;
        if !verify(key, &["session", payload_b64], tag) {
            return Err(to_login());
        }
        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(to_login)?;
        let mut fields = payload.split('\n');
        let (Some(id), Some(expires), Some(nonce), Some(fp), None) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            return Err(to_login());
        };
        let expires: i64 = expires.parse().map_err(|_| to_login())?;
        if expires <= Utc::now().timestamp() {
            return Err(to_login());
        }
        // Logouts are kept in the catalog: a session ended on any process is ended on all of them.
        if cs
            .app
            .catalog
            .console_session_revoked(nonce)
            .await
            .map_err(|e| catalog_unavailable(&e))?
        {
            return Err(to_login());
        }
        // The key must still exist, be active and have the secret the session was opened with.
        let view = cs
            .app
            .identities
            .view()
            .await
            .map_err(|e| html::refusal(&e))?;
        match view.secret(id) {
            Ok(Some(KeyState::Active(secret))) if fingerprint(key, id, secret.expose()) == fp => {}
            Ok(_) => return Err(to_login()),
            Err(e) => return Err(html::refusal(&e)),
        }
        let user = view.principal(id).map_err(|e| html::refusal(&e))?.0;
        let (peer, secure) = peer_and_transport(parts);
        Ok(Caller {
            access_key_id: id.to_string(),
            user,
            peer,
            secure,
            user_agent: parts
                .headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            csrf: sign(key, &["csrf", payload_b64]),
            nonce: nonce.to_string(),
            expires,
        })
    }
}

impl Caller {
    /// Refuses a form whose `csrf` field is not this session's token.
    pub fn check_csrf(&self, form: &HashMap<String, String>) -> Result<(), Box<Response>> {
        let ok = form.get("csrf").is_some_and(|t| {
            t.len() == self.csrf.len()
                && t.bytes()
                    .zip(self.csrf.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        if ok {
            Ok(())
        } else {
            Err(Box::new(csrf_refused()))
        }
    }
}

fn csrf_refused() -> Response {
    html::message(
        StatusCode::FORBIDDEN,
        "Refused: missing or wrong CSRF token",
        "The form did not carry this session's CSRF token. Reload the page and submit it again.",
    )
}

pub async fn login_form(transport: Option<Extension<Transport>>) -> Response {
    let secure = transport.is_some_and(|Extension(t)| t.secure);
    let token = random_hex();
    let body = format!(
        r#"<form method="post" action="/console/login" class="login">
<input type="hidden" name="login_csrf" value="{t}">
<label>AccessKey ID <input name="access_key_id" id="access_key_id" autocomplete="username" required></label>
<label>AccessKey secret <input name="access_key_secret" id="access_key_secret" type="password" autocomplete="current-password" required></label>
<button type="submit" id="login">Log in</button>
</form>"#,
        t = esc(&token)
    );
    let mut resp = html::page("Log in", None, &body, None);
    if let Ok(v) = set_cookie(LOGIN_COOKIE, &token, 3600, secure).parse() {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

pub async fn login(
    State(cs): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    transport: Option<Extension<Transport>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let secure = transport.is_some_and(|Extension(t)| t.secure);
    let f = form(&body);
    let expected = cookie(&headers, LOGIN_COOKIE);
    if expected.is_none() || f.get("login_csrf") != expected.as_ref() {
        return csrf_refused();
    }
    let ip = peer.ip().to_canonical();
    let blocked = match cs.login_blocked(ip).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    if let Some(wait) = blocked {
        return html::message(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed logins",
            &format!("Too many failed logins from this address. Try again in {wait} s."),
        );
    }
    let key = match cs.session_key().await {
        Ok(k) => k,
        Err(resp) => return resp,
    };
    let id = f.get("access_key_id").map(|s| s.trim()).unwrap_or_default();
    let given = f.get("access_key_secret").map_or("", String::as_str);
    let view = match cs.app.identities.view().await {
        Ok(v) => v,
        Err(e) => return html::refusal(&e),
    };
    let secret = match view.secret(id) {
        Ok(Some(KeyState::Active(s))) => Some(s),
        Ok(_) => None,
        Err(e) => return html::refusal(&e),
    };
    // Compare MACs of both secrets: constant time whatever their lengths.
    let ok = secret.as_ref().is_some_and(|s| {
        let tag = mac(key, &["login", s.expose()]).finalize().into_bytes();
        mac(key, &["login", given]).verify_slice(&tag).is_ok()
    });
    let user = view.principal(id).ok().map(|(u, _)| u);
    let audit_id = (!id.is_empty()).then(|| crate::audit::clean_field(id));
    let record = |status: u16, code: Option<&str>| ddsvault_catalog::AuditRecord {
        id: 0,
        time: Utc::now(),
        request_id: ddsvault_api::new_request_id(),
        access_key_id: audit_id.clone(),
        user: user.clone(),
        action: Some("ConsoleLogin".into()),
        resources: vec!["*".into()],
        source_ip: ip.to_string(),
        secure,
        http_status: status,
        code: code.map(str::to_string),
    };
    let Some(secret) = secret.filter(|_| ok) else {
        cs.login_failed(ip).await;
        cs.app
            .audit
            .record(record(401, Some(LOGIN_REFUSED_CODE)))
            .await;
        tracing::info!(access_key = %crate::audit::clean_field(id), peer = %ip, "console login refused");
        return html::message(
            StatusCode::UNAUTHORIZED,
            "Login refused",
            "The AccessKey ID or secret is wrong, or the key is disabled.",
        );
    };
    cs.login_succeeded(ip).await;
    cs.app.identities.touch(id, Utc::now()).await;
    cs.app.audit.record(record(200, None)).await;
    let expires = Utc::now().timestamp() + SESSION_SECONDS;
    let payload = format!(
        "{id}\n{expires}\n{}\n{}",
        random_hex(),
        fingerprint(key, id, secret.expose())
    );
    let payload_b64 = URL_SAFE_NO_PAD.encode(payload);
    let value = format!("{payload_b64}.{}", sign(key, &["session", &payload_b64]));
    let mut resp = Redirect::to("/console/instances").into_response();
    for c in [
        set_cookie(SESSION_COOKIE, &value, SESSION_SECONDS, secure),
        set_cookie(LOGIN_COOKIE, "", 0, secure),
    ] {
        if let Ok(v) = c.parse() {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

/// The audit code of a refused console login (the wrong id and the wrong secret are not told apart).
pub const LOGIN_REFUSED_CODE: &str = "InvalidAccessKeyIdOrSecret";

pub async fn logout(State(cs): State<Arc<Console>>, caller: Caller, body: Bytes) -> Response {
    if let Err(r) = caller.check_csrf(&form(&body)) {
        return *r;
    }
    let now = Utc::now();
    let expires = chrono::DateTime::from_timestamp(caller.expires, 0)
        .unwrap_or(now + chrono::Duration::seconds(SESSION_SECONDS));
    if let Err(e) = cs
        .app
        .catalog
        .revoke_console_session(&caller.nonce, expires, now)
        .await
    {
        // Not logged out: say so rather than drop the cookie of a session that still works elsewhere.
        return catalog_unavailable(&e);
    }
    cs.audit(
        &caller,
        "ConsoleLogout",
        vec!["*".into()],
        200,
        None,
        Utc::now(),
    )
    .await;
    let mut resp = Redirect::to("/console/login").into_response();
    if let Ok(v) = set_cookie(SESSION_COOKIE, "", 0, caller.secure).parse() {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}
