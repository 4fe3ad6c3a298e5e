//! The console's pages and actions. Each page is one or more Dds action calls through [`Console::call`] (so RAM
//! decides exactly as for the API) rendered as a table; each form POST checks the session's CSRF token, then runs
//! the action and is audited.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use ddsvault_catalog::AuditFilter;
use serde_json::{Map, Value};

use super::auth::form;
use super::html::{self, esc, field, page, refusal_for, size, text};
use super::{Audit, Caller, Console};
use crate::actions::Action;

/// Backups per page of the backups table (a Dds `PageSize`).
const PAGE_SIZE: &str = "30";
/// Seconds between reloads of a jobs page while a job is still running.
const REFRESH_SECONDS: u32 = 2;
/// Audit rows shown.
const AUDIT_ROWS: u32 = 100;
const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// The items of a Dds list answer, e.g. `DBInstances.DBInstance`.
pub(super) fn items<'a>(
    out: &'a Map<String, Value>,
    outer: &str,
    inner: Option<&str>,
) -> Vec<&'a Value> {
    let v = out.get(outer);
    let v = match inner {
        Some(i) => v.and_then(|v| v.get(i)),
        None => v,
    };
    v.and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

pub(super) fn status_class(status: &str) -> &'static str {
    match status {
        "Success" | "Running" | "Finished" | "Enabled" | "Locked" => "ok",
        "Failed" | "Unavailable" => "bad",
        _ => "run",
    }
}

fn drill_class(status: &str) -> &'static str {
    match status {
        "Verified" => "ok",
        "Unverified" => "bad",
        _ => "",
    }
}

pub(super) fn hidden_csrf(c: &Caller) -> String {
    format!(
        r#"<input type="hidden" name="csrf" value="{}">"#,
        esc(&c.csrf)
    )
}

pub(super) fn instance_links(id: &str) -> String {
    let e = esc(id);
    format!(
        r#"<p class="links"><a href="/console/instances/{e}/backups">Backups</a> · <a href="/console/instances/{e}/jobs">Jobs</a> · <a href="/console/instances/{e}/policy">Backup policy</a> · <a href="/console/instances/{e}/drills">Restore drills</a></p>"#
    )
}

pub async fn instances(State(cs): State<Arc<Console>>, caller: Caller) -> Response {
    let title = "Instances";
    let list = match cs
        .call(
            &caller,
            Action::DescribeDBInstances,
            &[("PageSize", "100")],
            Audit::No,
        )
        .await
    {
        Ok(out) => out,
        Err(e) => return refusal_for(&caller, title, &e),
    };
    let mut body = String::from(
        r#"<table id="instances"><tr><th>Instance</th><th>Description</th><th>Type</th><th>Status</th><th>Engine</th><th>Last backup</th><th>Backup policy</th><th>Last restore drill</th><th></th></tr>"#,
    );
    for inst in items(&list, "DBInstances", Some("DBInstance")) {
        let id = text(inst, "DBInstanceId");
        let last = match cs
            .call(
                &caller,
                Action::DescribeBackups,
                &[("DBInstanceId", &id), ("PageSize", "30")],
                Audit::No,
            )
            .await
        {
            Ok(out) => match items(&out, "Backups", Some("Backup")).first() {
                Some(b) => format!(
                    r#"{} <span class="{}">{}</span> ({})"#,
                    field(b, "BackupStartTime"),
                    status_class(&text(b, "BackupStatus")),
                    field(b, "BackupStatus"),
                    field(b, "BackupMethod")
                ),
                None => "none yet".into(),
            },
            Err(e) => format!("not shown: {}", esc(&e.code)),
        };
        let policy = match cs
            .call(
                &caller,
                Action::DescribeBackupPolicy,
                &[("DBInstanceId", &id)],
                Audit::No,
            )
            .await
        {
            Ok(p) => {
                let p = Value::Object(p);
                format!(
                    "{}: {} at {}, kept {} days",
                    field(&p, "AutomaticBackup"),
                    field(&p, "PreferredBackupPeriod"),
                    field(&p, "PreferredBackupTime"),
                    field(&p, "BackupRetentionPeriod")
                )
            }
            Err(e) => format!("not shown: {}", esc(&e.code)),
        };
        let drill = super::drills::last_drill_cell(
            cs.call(
                &caller,
                Action::DescribeRestoreDrills,
                &[("DBInstanceId", &id), ("MaxRecords", "1")],
                Audit::No,
            )
            .await
            .as_ref(),
        );
        let status = text(inst, "DBInstanceStatus");
        let e = esc(&id);
        let _ = write!(
            body,
            r#"<tr><td><a href="/console/instances/{e}/backups">{e}</a></td><td>{}</td><td>{}</td><td class="{}">{}</td><td>{}</td><td>{last}</td><td>{policy}</td><td class="drill">{drill}</td><td><a href="/console/instances/{e}/jobs">Jobs</a> · <a href="/console/instances/{e}/policy">Policy</a> · <a href="/console/instances/{e}/drills">Drills</a></td></tr>"#,
            field(inst, "DBInstanceDescription"),
            field(inst, "DBInstanceType"),
            status_class(&status),
            esc(&status),
            field(inst, "EngineVersion"),
        );
    }
    body.push_str("</table>");
    page(title, Some(&caller), &body, None)
}

pub async fn backups(
    State(cs): State<Arc<Console>>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let title = format!("Backups of {id}");
    let page_no = q
        .get("page")
        .and_then(|p| p.parse::<u32>().ok())
        .filter(|p| *p >= 1)
        .unwrap_or(1)
        .to_string();
    let out = match cs
        .call(
            &caller,
            Action::DescribeBackups,
            &[
                ("DBInstanceId", &id),
                ("PageNumber", &page_no),
                ("PageSize", PAGE_SIZE),
            ],
            Audit::No,
        )
        .await
    {
        Ok(out) => out,
        Err(e) => return refusal_for(&caller, &title, &e),
    };
    let lock = match cs
        .call(
            &caller,
            Action::DescribeBackupRetentionLock,
            &[("DBInstanceId", &id)],
            Audit::No,
        )
        .await
    {
        Ok(l) => esc(&text(&Value::Object(l), "RetentionLock")),
        Err(e) => format!("not shown: {}", esc(&e.code)),
    };
    // Restore targets: the instances this key may list; the source itself when it may not.
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
            .collect(),
        Err(_) => vec![id.clone()],
    };
    let e = esc(&id);
    let csrf = hidden_csrf(&caller);
    let mut body = instance_links(&id);
    let _ = write!(
        body,
        r#"<h2>Start a backup</h2><form method="post" action="/console/instances/{e}/backup" id="start-backup">{csrf}
<label>Method <select name="method" id="method"><option value="">default for this instance</option><option>Logical</option><option>Physical</option><option>Snapshot</option></select></label>
<button type="submit" id="start">Start backup</button></form>
<h2>Backups</h2><p>Retention lock of this instance: <strong id="lock">{lock}</strong></p>
<table id="backups"><tr><th>Backup</th><th>Started</th><th>Ended</th><th>Size</th><th>Method</th><th>Status</th><th>Expires</th><th>Lock</th><th>Restore drill</th><th>Actions</th></tr>"#
    );
    let options: String = targets
        .iter()
        .map(|t| {
            let sel = if *t == id { " selected" } else { "" };
            format!("<option{sel}>{}</option>", esc(t))
        })
        .collect();
    for b in items(&out, "Backups", Some("Backup")) {
        let bid = field(b, "BackupId");
        let status = text(b, "BackupStatus");
        let actions = if status == "Success" {
            format!(
                r#"<form method="post" action="/console/instances/{e}/restore" class="inline">{csrf}<input type="hidden" name="backup_id" value="{bid}"><select name="target">{options}</select> <button type="submit" class="restore">Restore</button></form>
<form method="post" action="/console/instances/{e}/download" class="inline">{csrf}<input type="hidden" name="backup_id" value="{bid}"><button type="submit" class="download">Download URL</button></form>"#
            )
        } else {
            format!("{} {}", field(b, "ErrorCode"), field(b, "ErrorMessage"))
        };
        let _ = write!(
            body,
            r#"<tr class="backup" data-id="{bid}"><td>{bid}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="{}">{}</td><td>{}</td><td>{lock}</td><td class="{} drill-status">{}</td><td class="actions">{actions}</td></tr>"#,
            field(b, "BackupStartTime"),
            field(b, "BackupEndTime"),
            size(b, "BackupSize"),
            field(b, "BackupMethod"),
            status_class(&status),
            esc(&status),
            field(b, "BackupExpireTime"),
            drill_class(&text(b, "RestoreDrillStatus")),
            field(b, "RestoreDrillStatus"),
        );
    }
    body.push_str("</table>");
    let total = out.get("TotalCount").and_then(Value::as_u64).unwrap_or(0);
    let current: u64 = page_no.parse().unwrap_or(1);
    let pages = total.div_ceil(30).max(1);
    let _ = write!(
        body,
        r#"<p class="paging">Page {current} of {pages} ({total} backups) "#
    );
    if current > 1 {
        let _ = write!(
            body,
            r#"<a href="/console/instances/{e}/backups?page={}" id="prev">previous</a> "#,
            current - 1
        );
    }
    if current < pages {
        let _ = write!(
            body,
            r#"<a href="/console/instances/{e}/backups?page={}" id="next">next</a>"#,
            current + 1
        );
    }
    body.push_str("</p>");
    page(&title, Some(&caller), &body, None)
}

fn progress_cell(j: &Value) -> String {
    let pct = text(j, "Progress");
    format!(
        r#"<progress max="100" value="{p}"></progress> {p}% · {} · {} / {} docs · {}"#,
        field(j, "Phase"),
        field(j, "DocsDone"),
        field(j, "DocsTotal"),
        size(j, "BytesDone"),
        p = esc(&pct),
    )
}

pub async fn jobs(
    State(cs): State<Arc<Console>>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let title = format!("Jobs of {id}");
    let mut backup_jobs = match cs
        .call(
            &caller,
            Action::DescribeBackupTasks,
            &[("DBInstanceId", &id)],
            Audit::No,
        )
        .await
    {
        Ok(out) => items(&out, "BackupJobs", None)
            .into_iter()
            .cloned()
            .collect::<Vec<_>>(),
        Err(e) => return refusal_for(&caller, &title, &e),
    };
    // The job the console just started is followed to its end, also once it is no longer active.
    if let Some(job) = q.get("job").filter(|j| !j.is_empty()) {
        if !backup_jobs.iter().any(|j| text(j, "BackupjobId") == *job) {
            match cs
                .call(
                    &caller,
                    Action::DescribeBackupTasks,
                    &[("DBInstanceId", &id), ("BackupJobId", job)],
                    Audit::No,
                )
                .await
            {
                Ok(out) => backup_jobs.extend(items(&out, "BackupJobs", None).into_iter().cloned()),
                Err(e) => return refusal_for(&caller, &title, &e),
            }
        }
    }
    let restores = cs
        .call(
            &caller,
            Action::DescribeRestoreTasks,
            &[("DBInstanceId", &id)],
            Audit::No,
        )
        .await;
    let mut active = false;
    let mut body = instance_links(&id);
    body.push_str(
        r#"<h2>Backup jobs</h2><table id="backup-jobs"><tr><th>Job</th><th>Started</th><th>Mode</th><th>State</th><th>Progress</th><th>Error</th></tr>"#,
    );
    if backup_jobs.is_empty() {
        body.push_str(r#"<tr><td colspan="6">No backup job running.</td></tr>"#);
    }
    for j in &backup_jobs {
        let state = text(j, "JobStatus");
        active |= state == "Pending" || state == "Running";
        let _ = write!(
            body,
            r#"<tr class="job" data-id="{id}"><td>{id}</td><td>{}</td><td>{}</td><td class="{} state">{}</td><td>{}</td><td>{} {}</td></tr>"#,
            field(j, "BackupStartTime"),
            field(j, "JobMode"),
            status_class(&state),
            esc(&state),
            progress_cell(j),
            field(j, "ErrorCode"),
            field(j, "ErrorMessage"),
            id = field(j, "BackupjobId"),
        );
    }
    body.push_str("</table><h2>Restore jobs</h2>");
    match restores {
        Ok(out) => {
            body.push_str(r#"<table id="restore-jobs"><tr><th>Job</th><th>Backup</th><th>From</th><th>Created</th><th>Ended</th><th>Status</th><th>Progress</th><th>Error</th></tr>"#);
            for j in items(&out, "RestoreJobs", None).into_iter().take(50) {
                let status = text(j, "Status");
                active |= status == "Scheduled" || status == "Restoring";
                let _ = write!(
                    body,
                    r#"<tr class="restore-job"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="{}">{}</td><td>{}</td><td>{} {}</td></tr>"#,
                    field(j, "RestoreJobId"),
                    field(j, "BackupId"),
                    field(j, "SourceDBInstanceId"),
                    field(j, "CreateTime"),
                    field(j, "EndTime"),
                    status_class(&status),
                    esc(&status),
                    progress_cell(j),
                    field(j, "ErrorCode"),
                    field(j, "ErrorMessage"),
                );
            }
            body.push_str("</table>");
        }
        Err(e) => body.push_str(&html::error_box(&e)),
    }
    if active {
        let _ = write!(
            body,
            r#"<p class="notice" id="live">Live: this page reloads every {REFRESH_SECONDS} s while a job runs.</p>"#
        );
    }
    page(
        &title,
        Some(&caller),
        &body,
        active.then_some(REFRESH_SECONDS),
    )
}

pub async fn policy(
    State(cs): State<Arc<Console>>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let title = format!("Backup policy of {id}");
    let p = match cs
        .call(
            &caller,
            Action::DescribeBackupPolicy,
            &[("DBInstanceId", &id)],
            Audit::No,
        )
        .await
    {
        Ok(p) => Value::Object(p),
        Err(e) => return refusal_for(&caller, &title, &e),
    };
    let mut body = instance_links(&id);
    if q.contains_key("saved") {
        body.push_str(r#"<p class="notice" id="saved">The backup policy was changed.</p>"#);
    }
    body.push_str(r#"<table id="policy">"#);
    for k in [
        "AutomaticBackup",
        "PreferredBackupPeriod",
        "PreferredBackupTime",
        "PreferredNextBackupTime",
        "BackupRetentionPeriod",
        "EnableBackupLog",
        "LogBackupRetentionPeriod",
        "SnapshotBackupType",
        "BackupInterval",
    ] {
        let _ = write!(
            body,
            r#"<tr><th>{k}</th><td id="pol-{k}">{}</td></tr>"#,
            field(&p, k)
        );
    }
    body.push_str("</table>");
    let period = text(&p, "PreferredBackupPeriod");
    let days: String = DAYS
        .iter()
        .map(|d| {
            let checked = if period.split(',').any(|x| x.trim() == *d) {
                " checked"
            } else {
                ""
            };
            format!(r#"<label class="day"><input type="checkbox" name="day" value="{d}"{checked}> {d}</label>"#)
        })
        .collect();
    let _ = write!(
        body,
        r#"<h2>Change the policy</h2><form method="post" action="/console/instances/{e}/policy" id="policy-form">{csrf}
<fieldset><legend>Days</legend>{days}</fieldset>
<label>Backup window (HH:mmZ-HH:mmZ, UTC) <input name="PreferredBackupTime" id="PreferredBackupTime" value="{time}"></label>
<label>Retention (days, 7-730, or -1 to keep forever) <input name="BackupRetentionPeriod" id="BackupRetentionPeriod" value="{ret}"></label>
<button type="submit" id="save-policy">Save policy</button></form>"#,
        e = esc(&id),
        csrf = hidden_csrf(&caller),
        time = field(&p, "PreferredBackupTime"),
        ret = field(&p, "BackupRetentionPeriod"),
    );
    page(&title, Some(&caller), &body, None)
}

pub async fn modify_policy(
    State(cs): State<Arc<Console>>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let f = form(&body);
    if let Err(r) = caller.check_csrf(&f) {
        return *r;
    }
    let days: Vec<String> = form_urlencoded::parse(&body)
        .filter(|(k, _)| k == "day")
        .map(|(_, v)| v.into_owned())
        .collect();
    let days = days.join(",");
    let mut params: Vec<(&str, &str)> = vec![("DBInstanceId", &id)];
    if !days.is_empty() {
        params.push(("PreferredBackupPeriod", &days));
    }
    for k in ["PreferredBackupTime", "BackupRetentionPeriod"] {
        if let Some(v) = f.get(k).map(|v| v.trim()).filter(|v| !v.is_empty()) {
            params.push((k, v));
        }
    }
    match cs
        .call(&caller, Action::ModifyBackupPolicy, &params, Audit::Yes)
        .await
    {
        Ok(_) => {
            Redirect::to(&format!("/console/instances/{}/policy?saved=1", url(&id))).into_response()
        }
        Err(e) => refusal_for(&caller, &format!("Backup policy of {id}"), &e),
    }
}

/// Percent-encodes a path segment for a redirect.
pub(super) fn url(s: &str) -> String {
    ddsvault_api::percent_encode_rfc3986(s)
}

pub async fn create_backup(
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
    if let Some(m) = f.get("method").filter(|m| !m.is_empty()) {
        params.push(("BackupMethod", m));
    }
    match cs
        .call(&caller, Action::CreateBackup, &params, Audit::Yes)
        .await
    {
        Ok(out) => {
            let job = text(&Value::Object(out), "BackupJobId");
            Redirect::to(&format!(
                "/console/instances/{}/jobs?job={}",
                url(&id),
                url(&job)
            ))
            .into_response()
        }
        Err(e) => refusal_for(&caller, &format!("Start a backup of {id}"), &e),
    }
}

pub async fn restore(
    State(cs): State<Arc<Console>>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let f = form(&body);
    if let Err(r) = caller.check_csrf(&f) {
        return *r;
    }
    let backup = f.get("backup_id").map_or("", String::as_str);
    let target = f.get("target").map_or("", String::as_str);
    let params = [
        ("DBInstanceId", id.as_str()),
        ("BackupId", backup),
        ("TargetDBInstanceId", target),
    ];
    match cs
        .call(&caller, Action::RestoreDBInstance, &params, Audit::Yes)
        .await
    {
        Ok(_) => {
            let into = if target.is_empty() {
                id.as_str()
            } else {
                target
            };
            Redirect::to(&format!("/console/instances/{}/jobs", url(into))).into_response()
        }
        Err(e) => refusal_for(&caller, &format!("Restore backup {backup}"), &e),
    }
}

pub async fn download(
    State(cs): State<Arc<Console>>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let f = form(&body);
    if let Err(r) = caller.check_csrf(&f) {
        return *r;
    }
    let backup = f.get("backup_id").map_or("", String::as_str);
    let title = format!("Download backup {backup}");
    let out = match cs
        .call(
            &caller,
            Action::DescribeBackups,
            &[("DBInstanceId", &id), ("BackupId", backup)],
            // A download URL is a bearer credential: handing one out is recorded.
            Audit::Yes,
        )
        .await
    {
        Ok(out) => out,
        Err(e) => return refusal_for(&caller, &title, &e),
    };
    let body = match items(&out, "Backups", Some("Backup")).first() {
        Some(b) if !text(b, "BackupDownloadURL").is_empty() => format!(
            r#"<p>This link downloads the backup without further authentication until it expires:</p><p><a id="download-url" href="{u}"><code>{u}</code></a></p>{}"#,
            instance_links(&id),
            u = field(b, "BackupDownloadURL"),
        ),
        Some(_) => format!(
            r#"<p class="refused" id="message">This backup has no download URL (it is not available, or the server has no public address for links).</p>{}"#,
            instance_links(&id)
        ),
        None => {
            let mut r = html::message(
                StatusCode::NOT_FOUND,
                &title,
                "No such backup of this instance.",
            );
            *r.status_mut() = StatusCode::NOT_FOUND;
            return r;
        }
    };
    page(&title, Some(&caller), &body, None)
}

pub async fn audit(
    State(cs): State<Arc<Console>>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let title = "Audit trail";
    if let Err(e) = cs.authorize_extension(&caller, super::AUDIT_ACTION) {
        return refusal_for(&caller, title, &e);
    }
    let nonempty = |k: &str| {
        q.get(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let filter = AuditFilter {
        since: None,
        access_key_id: nonempty("access_key"),
        action: nonempty("action"),
        limit: AUDIT_ROWS,
    };
    let rows = match cs.app.catalog.list_audit(&filter).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "console: audit trail unreadable");
            return html::message(
                StatusCode::SERVICE_UNAVAILABLE,
                title,
                "The audit trail could not be read from the catalog; see the server log.",
            );
        }
    };
    let mut body = format!(
        r#"<form method="get" action="/console/audit"><label>Action <input name="action" value="{}"></label> <label>AccessKey <input name="access_key" value="{}"></label> <button type="submit">Filter</button></form>
<p>The newest {AUDIT_ROWS} records, newest first.</p>
<table id="audit"><tr><th>Time</th><th>AccessKey</th><th>User</th><th>Action</th><th>Resources</th><th>Source</th><th>TLS</th><th>HTTP</th><th>Code</th></tr>"#,
        esc(filter.action.as_deref().unwrap_or("")),
        esc(filter.access_key_id.as_deref().unwrap_or("")),
    );
    for r in rows {
        let _ = write!(
            body,
            r#"<tr class="audit-row"><td>{}</td><td>{}</td><td>{}</td><td class="action">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            esc(&crate::actions::dds_time(r.time)),
            esc(r.access_key_id.as_deref().unwrap_or("-")),
            esc(r.user.as_deref().unwrap_or("-")),
            esc(r.action.as_deref().unwrap_or("-")),
            esc(&r.resources.join(", ")),
            esc(&r.source_ip),
            if r.secure { "yes" } else { "no" },
            r.http_status,
            esc(r.code.as_deref().unwrap_or("")),
        );
    }
    body.push_str("</table>");
    page(title, Some(&caller), &body, None)
}
