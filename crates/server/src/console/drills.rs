//! The console's restore drill page (docs/drills.md, docs/console.md): an instance's drill policy, its recorded
//! drills (backup, result and why, duration), the backups a failed drill left unverified, and a form that starts a
//! drill. Everything is read and done through the Dds actions (`DescribeRestoreDrills`, `DescribeBackups`,
//! `StartRestoreDrill`), so RAM decides exactly as for the API.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::{Map, Value};

use super::auth::form;
use super::html::{esc, field, page, refusal_for, text};
use super::pages::{hidden_csrf, instance_links, items, status_class, url};
use super::{Audit, Caller, Console};
use crate::actions::Action;

/// Drills shown on the page.
const DRILL_ROWS: &str = "20";
/// Seconds between reloads while the drill the console started is still running.
const REFRESH_SECONDS: u32 = 2;
/// Mismatches spelled out per drill (the rest are counted).
const MISMATCHES_SHOWN: usize = 3;

/// Why a drill ended as it did, in one line, from its `Detail`.
pub(super) fn why(d: &Value) -> String {
    let detail = d.get("Detail").cloned().unwrap_or(Value::Null);
    if let Some(err) = detail.get("error").and_then(Value::as_str) {
        let stage = detail
            .get("stage")
            .and_then(Value::as_str)
            .unwrap_or("drill");
        return format!("{stage}: {err}");
    }
    let mismatches = detail
        .get("mismatches")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let count = detail
        .get("mismatch_count")
        .and_then(Value::as_u64)
        .unwrap_or(mismatches.len() as u64);
    if count > 0 {
        let shown: Vec<String> = mismatches
            .iter()
            .take(MISMATCHES_SHOWN)
            .map(|m| {
                let s = |k: &str| text(m, k);
                if s("expected_documents") == s("restored_documents") {
                    format!(
                        "{}.{}: checksum {} (recorded {})",
                        s("db"),
                        s("collection"),
                        s("restored_checksum"),
                        s("expected_checksum")
                    )
                } else {
                    format!(
                        "{}.{}: {} documents restored, {} recorded",
                        s("db"),
                        s("collection"),
                        s("restored_documents"),
                        s("expected_documents")
                    )
                }
            })
            .collect();
        return format!(
            "{count} collection(s) differ from what the backup recorded: {}",
            shown.join("; ")
        );
    }
    format!(
        "{} collections, {} documents as recorded ({})",
        text(&detail, "collections"),
        text(&detail, "documents"),
        text(&detail, "compared"),
    )
}

fn seconds(ms: &Value) -> String {
    ms.as_f64()
        .map_or_else(|| "-".into(), |ms| format!("{:.1} s", ms / 1000.0))
}

pub async fn drills(
    State(cs): State<Arc<Console>>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let title = format!("Restore drills of {id}");
    let job = q.get("job").map(|j| j.trim()).filter(|j| !j.is_empty());
    let mut params: Vec<(&str, &str)> = vec![("DBInstanceId", &id), ("MaxRecords", DRILL_ROWS)];
    if let Some(j) = job {
        params.push(("DrillJobId", j));
    }
    let out = match cs
        .call(&caller, Action::DescribeRestoreDrills, &params, Audit::No)
        .await
    {
        Ok(out) => out,
        Err(e) => return refusal_for(&caller, &title, &e),
    };
    let backups = cs
        .call(
            &caller,
            Action::DescribeBackups,
            &[("DBInstanceId", &id), ("PageSize", "100")],
            Audit::No,
        )
        .await;
    let targets: Vec<String> = match cs
        .call(
            &caller,
            Action::DescribeDBInstances,
            &[("PageSize", "100")],
            Audit::No,
        )
        .await
    {
        Ok(l) => items(&l, "DBInstances", Some("DBInstance"))
            .iter()
            .map(|i| text(i, "DBInstanceId"))
            .filter(|t| *t != id)
            .collect(),
        Err(_) => Vec::new(),
    };
    let policy = Value::Object(out.clone());
    let e = esc(&id);
    let mut body = instance_links(&id);
    let mut refresh = None;

    // The drill this console started, followed until it is recorded (or failed before it could be).
    if let Some(j) = out.get("DrillJob") {
        let state = text(j, "JobStatus");
        let jid = field(j, "DrillJobId");
        if state == "Pending" || state == "Running" {
            refresh = Some(REFRESH_SECONDS);
            let _ = write!(
                body,
                r#"<p class="notice" id="drill-live">Drill job {jid} is {} ({}%, into {}): this page reloads every {REFRESH_SECONDS} s until it ends.</p>"#,
                esc(&state),
                field(j, "Progress"),
                field(j, "TargetDBInstanceId"),
            );
        } else if state == "Failed" {
            let _ = write!(
                body,
                r#"<p class="refused" id="drill-job">Drill job {jid} failed: {} {}</p>"#,
                field(j, "ErrorCode"),
                field(j, "ErrorMessage"),
            );
        } else {
            let _ = write!(
                body,
                r#"<p class="notice" id="drill-job">Drill job {jid} finished.</p>"#
            );
        }
    }

    body.push_str(r#"<h2>Drill policy</h2><table id="drill-policy">"#);
    if text(&policy, "RestoreDrillTarget").is_empty() {
        body.push_str(r#"<tr><td>No drill policy: drills run only when started here or with StartRestoreDrill (set one with ModifyBackupPolicy's RestoreDrillTarget, RestoreDrillPeriod, RestoreDrillTime).</td></tr>"#);
    } else {
        for k in [
            "RestoreDrillTarget",
            "RestoreDrillPeriod",
            "RestoreDrillTime",
            "NextRestoreDrillTime",
        ] {
            let _ = write!(
                body,
                r#"<tr><th>{k}</th><td id="drill-{k}">{}</td></tr>"#,
                field(&policy, k)
            );
        }
    }
    body.push_str("</table>");

    // The start form: the backup (newest by default) and the target (the policy's by default).
    let successful: Vec<(String, String)> = backups
        .as_ref()
        .map(|b| {
            items(b, "Backups", Some("Backup"))
                .into_iter()
                .filter(|b| text(b, "BackupStatus") == "Success")
                .map(|b| {
                    (
                        text(b, "BackupId"),
                        format!(
                            "{} · {}",
                            text(b, "BackupMethod"),
                            text(b, "BackupStartTime")
                        ),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let backup_options: String = successful
        .iter()
        .map(|(bid, label)| {
            format!(
                r#"<option value="{}">{} ({})</option>"#,
                esc(bid),
                esc(bid),
                esc(label)
            )
        })
        .collect();
    let mut target_options = String::from(r#"<option value="">the policy's target</option>"#);
    for t in &targets {
        let _ = write!(target_options, "<option>{}</option>", esc(t));
    }
    target_options.push_str(r#"<option value="provision">provision a temporary instance</option>"#);
    let _ = write!(
        body,
        r#"<h2>Start a drill</h2><form method="post" action="/console/instances/{e}/drill" id="start-drill">{csrf}
<label>Backup <select name="backup_id" id="drill-backup"><option value="">newest drillable backup</option>{backup_options}</select></label>
<label>Restore into <select name="target" id="drill-target">{target_options}</select></label>
<button type="submit" id="drill">Start drill</button></form>"#,
        csrf = hidden_csrf(&caller),
    );

    body.push_str(
        r#"<h2>Recorded drills</h2><table id="drills"><tr><th>Drill</th><th>Backup</th><th>Into</th><th>Started</th><th>Duration</th><th>Result</th><th>Compared</th><th>Why</th></tr>"#,
    );
    let recorded = items(&out, "RestoreDrills", Some("RestoreDrill"));
    if recorded.is_empty() {
        body.push_str(r#"<tr><td colspan="8">No drill recorded yet.</td></tr>"#);
    }
    for d in recorded {
        let result = text(d, "Result");
        let class = if result == "Passed" { "ok" } else { "bad" };
        let _ = write!(
            body,
            r#"<tr class="drill" data-id="{did}" data-backup="{bid}" data-job="{}"><td>{did}</td><td>{bid}</td><td>{}</td><td>{}</td><td>{}</td><td class="{class} result">{}</td><td>{}</td><td class="why">{}</td></tr>"#,
            field(d, "DrillJobId"),
            field(d, "TargetDBInstanceId"),
            field(d, "StartTime"),
            seconds(d.get("DurationMs").unwrap_or(&Value::Null)),
            esc(&result),
            field(d, "Compared"),
            esc(&why(d)),
            did = field(d, "DrillId"),
            bid = field(d, "BackupId"),
        );
    }
    body.push_str("</table>");

    body.push_str(r#"<h2>Unverified backups</h2>"#);
    match &backups {
        Ok(b) => {
            let bad: Vec<&Value> = items(b, "Backups", Some("Backup"))
                .into_iter()
                .filter(|b| text(b, "RestoreDrillStatus") == "Unverified")
                .collect();
            if bad.is_empty() {
                body.push_str(r#"<p id="unverified-none">No backup of the newest 100 failed its newest drill.</p>"#);
            } else {
                body.push_str(r#"<p>Their newest drill failed: do not count on them until a drill passes.</p><table id="unverified"><tr><th>Backup</th><th>Method</th><th>Started</th><th>Status</th><th>Drilled</th></tr>"#);
                for b in bad {
                    let status = text(b, "BackupStatus");
                    let _ = write!(
                        body,
                        r#"<tr class="unverified" data-id="{bid}"><td>{bid}</td><td>{}</td><td>{}</td><td class="{}">{}</td><td>{}</td></tr>"#,
                        field(b, "BackupMethod"),
                        field(b, "BackupStartTime"),
                        status_class(&status),
                        esc(&status),
                        field(b, "RestoreDrillTime"),
                        bid = field(b, "BackupId"),
                    );
                }
                body.push_str("</table>");
            }
        }
        Err(e) => body.push_str(&super::html::error_box(e)),
    }
    page(&title, Some(&caller), &body, refresh)
}

pub async fn start_drill(
    State(cs): State<Arc<Console>>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let f = form(&body);
    if let Err(r) = caller.check_csrf(&f) {
        return *r;
    }
    let mut params: Vec<(&str, &str)> = vec![("DBInstanceId", &id)];
    if let Some(b) = f
        .get("backup_id")
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
    {
        params.push(("BackupId", b));
    }
    if let Some(t) = f.get("target").map(|v| v.trim()).filter(|v| !v.is_empty()) {
        params.push(("TargetDBInstanceId", t));
    }
    match cs
        .call(&caller, Action::StartRestoreDrill, &params, Audit::Yes)
        .await
    {
        Ok(out) => {
            let job = text(&Value::Object(out), "DrillJobId");
            Redirect::to(&format!(
                "/console/instances/{}/drills?job={}",
                url(&id),
                url(&job)
            ))
            .into_response()
        }
        Err(e) => refusal_for(&caller, &format!("Start a drill of {id}"), &e),
    }
}

/// The instances page's drill cell: the newest drill's result, backup and age, or why it is not shown.
pub(super) fn last_drill_cell(out: Result<&Map<String, Value>, &ddsvault_api::ApiError>) -> String {
    match out {
        Ok(out) => match items(out, "RestoreDrills", Some("RestoreDrill")).first() {
            Some(d) => {
                let result = text(d, "Result");
                format!(
                    r#"<span class="{}">{}</span>: backup {} at {}"#,
                    if result == "Passed" { "ok" } else { "bad" },
                    esc(&result),
                    field(d, "BackupId"),
                    field(d, "EndTime"),
                )
            }
            None => "none yet".into(),
        },
        Err(e) => format!("not shown: {}", esc(&e.code)),
    }
}
