//! HTML building: escaping, the page frame, and refusal pages. Every value placed in a page goes through [`esc`].

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use ddsvault_api::ApiError;
use serde_json::Value;

use super::Caller;

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A JSON answer field as text ("" when absent), unescaped.
pub fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// [`text`], escaped.
pub fn field(v: &Value, key: &str) -> String {
    esc(&text(v, key))
}

/// A byte count for people.
pub fn size(v: &Value, key: &str) -> String {
    let Some(n) = v.get(key).and_then(Value::as_f64) else {
        return esc(&text(v, key));
    };
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = n;
    let mut i = 0;
    while x >= 1024.0 && i + 1 < units.len() {
        x /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{x:.1} {}", units[i])
    }
}

/// The frame of every page: header, navigation (with the logout form when logged in) and `body`. With
/// `refresh`, the page reloads itself every that many seconds (live job progress without script).
pub fn page(title: &str, caller: Option<&Caller>, body: &str, refresh: Option<u32>) -> Response {
    let nav = caller.map_or_else(String::new, |c| {
        format!(
            r#"<nav><a href="/console/instances">Instances</a> <a href="/console/audit">Audit trail</a>
<span class="who">{user} ({key})</span>
<form method="post" action="/console/logout" class="inline"><input type="hidden" name="csrf" value="{csrf}"><button type="submit" id="logout">Log out</button></form></nav>"#,
            user = esc(&c.user),
            key = esc(&c.access_key_id),
            csrf = esc(&c.csrf),
        )
    });
    let refresh = refresh.map_or_else(String::new, |s| {
        format!(r#"<meta http-equiv="refresh" content="{s}">"#)
    });
    let html = format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">{refresh}<title>{t} · ddsvault</title>
<link rel="stylesheet" href="/console/style.css"></head>
<body><header><span class="brand">ddsvault</span>{nav}</header>
<main><h1>{t}</h1>
{body}
</main></body></html>"#,
        t = esc(title),
    );
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; form-action 'self'; frame-ancestors 'none'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        html,
    )
        .into_response()
}

/// A page with one message and a status.
pub fn message(status: StatusCode, title: &str, text: &str) -> Response {
    let mut r = page(
        title,
        None,
        &format!(
            r#"<p class="refused" id="message">{}</p><p><a href="/console/">Back to the console</a></p>"#,
            esc(text)
        ),
        None,
    );
    *r.status_mut() = status;
    r
}

/// The refusal box for an action's error, e.g. RAM's `Forbidden.RAM` with the action and resource it names.
pub fn error_box(e: &ApiError) -> String {
    format!(
        r#"<div class="refused" id="refused"><strong>Refused: {code}</strong><br>{msg}</div>"#,
        code = esc(&e.code),
        msg = esc(&e.message),
    )
}

/// A whole page refusing a request with the action's error and its HTTP status.
pub fn refusal(e: &ApiError) -> Response {
    let mut r = page("Refused", None, &error_box(e), None);
    *r.status_mut() = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r
}

/// Same as [`refusal`], inside the logged-in frame.
pub fn refusal_for(caller: &Caller, title: &str, e: &ApiError) -> Response {
    let mut r = page(title, Some(caller), &error_box(e), None);
    *r.status_mut() = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esc_neutralises_markup_and_quotes() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn sizes_read_well() {
        let v = serde_json::json!({"a": 512, "b": 1536, "c": "n/a"});
        assert_eq!(size(&v, "a"), "512 B");
        assert_eq!(size(&v, "b"), "1.5 KiB");
        assert_eq!(size(&v, "c"), "n/a");
    }
}
