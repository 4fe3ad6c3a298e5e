//! `ddsvault status` and `ddsvault schedule`: an overview of every instance the key may see, from the API
//! (DescribeDBInstances, DescribeBackups, DescribeBackupTasks, DescribeRestoreTasks, DescribeBackupPolicy).

use chrono::{DateTime, Utc};
use clap::Args;
use ddsvault_catalog::JobKind;
use futures::future::join_all;
use serde_json::{json, Map, Value};

use crate::backup::list_backups;
use crate::client::{field, items, ApiClient, CliError, EXIT_CODES_HELP};
use crate::credentials::{resolve_from_process, ApiArgs};
use crate::output;

/// The arguments of `status` and `schedule`.
#[derive(Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct OverviewArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Only this instance (repeatable); default: every instance the key may see.
    #[arg(long = "instance")]
    pub instances: Vec<String>,
    /// One JSON document on stdout instead of a table (its shape: docs/cli.md).
    #[arg(long)]
    pub json: bool,
}

/// Every instance the key may list (both DBInstanceType values), sorted by id: `(id, DescribeDBInstances item)`.
pub async fn instances(client: &ApiClient) -> Result<Vec<(String, Value)>, CliError> {
    let mut out = Vec::new();
    for ty in ["replicate", "sharding"] {
        let mut page = 1u32;
        loop {
            let answer = client
                .call(
                    "DescribeDBInstances",
                    &[
                        ("DBInstanceType", ty.to_string()),
                        ("PageSize", "100".to_string()),
                        ("PageNumber", page.to_string()),
                    ],
                )
                .await?;
            let got = items(&answer, "DBInstances", "DBInstance");
            let n = got.len();
            out.extend(got.into_iter().map(|i| (field(&i, "DBInstanceId"), i)));
            if n < 100 {
                break;
            }
            page += 1;
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The instances asked for, or all of them.
async fn chosen(client: &ApiClient, want: &[String]) -> Result<Vec<(String, Value)>, CliError> {
    let all = instances(client).await?;
    if want.is_empty() {
        return Ok(all);
    }
    want.iter()
        .map(|w| {
            all.iter().find(|(id, _)| id == w).cloned().ok_or_else(|| {
                CliError::NotFound(format!("no instance {w:?} (or this key may not list it)"))
            })
        })
        .collect()
}

/// A refused call inside an overview: the overview goes on without that part, and the run exits 1.
fn refusal(action: &str, e: &CliError) -> Value {
    match e {
        CliError::Api { code, message, .. } => {
            json!({"Action": action, "Code": code, "Message": message})
        }
        other => json!({"Action": action, "Code": "", "Message": other.to_string()}),
    }
}

/// Runs one call about instance `id` for an overview: an unreachable server ends the run, a refusal is noted
/// in `errors`.
async fn part(
    client: &ApiClient,
    action: &str,
    id: &str,
    errors: &mut Vec<Value>,
) -> Result<Option<Map<String, Value>>, CliError> {
    match client
        .call(action, &[("DBInstanceId", id.to_string())])
        .await
    {
        Ok(a) => Ok(Some(a)),
        Err(e @ CliError::Unreachable { .. }) => Err(e),
        Err(e) => {
            errors.push(refusal(action, &e));
            Ok(None)
        }
    }
}

/// The overview of one instance, as its JSON object.
async fn instance_status(
    client: &ApiClient,
    id: &str,
    inst: &Value,
    now: DateTime<Utc>,
) -> Result<Value, CliError> {
    let mut errors = Vec::new();
    // The newest successful backup: what a restore would start from.
    let (last, recent) = {
        let since = (now - chrono::Duration::hours(24))
            .format("%Y-%m-%dT%H:%MZ")
            .to_string();
        let window = [("StartTime", since)];
        let (latest, day) = tokio::join!(
            list_backups(client, id, &[], 100),
            list_backups(client, id, &window, 1000)
        );
        let keep = |r: Result<(i64, Vec<Value>), CliError>, errors: &mut Vec<Value>| match r {
            Ok((_, v)) => Ok(Some(v)),
            Err(e @ CliError::Unreachable { .. }) => Err(e),
            Err(e) => {
                errors.push(refusal("DescribeBackups", &e));
                Ok(None)
            }
        };
        (keep(latest, &mut errors)?, keep(day, &mut errors)?)
    };
    let last_success = last
        .unwrap_or_default()
        .into_iter()
        .find(|b| field(b, "BackupStatus") == "Success");
    let age = last_success.as_ref().and_then(|b| {
        let end = field(b, "BackupEndTime");
        let t = output::parse_time(&end)
            .or_else(|| output::parse_time(&field(b, "BackupStartTime")))?;
        Some((now - t).num_seconds())
    });
    let mut failures: Vec<Value> = recent
        .unwrap_or_default()
        .iter()
        .filter(|b| field(b, "BackupStatus") == "Failed")
        .map(|b| {
            json!({
                "Kind": JobKind::Backup, "BackupId": field(b, "BackupId"), "JobId": field(b, "BackupJobId"),
                "Time": field(b, "BackupStartTime"), "ErrorCode": field(b, "ErrorCode"),
                "ErrorMessage": field(b, "ErrorMessage"),
            })
        })
        .collect();

    let mut running = Vec::new();
    if let Some(a) = part(client, "DescribeBackupTasks", id, &mut errors).await? {
        for j in items(&a, "BackupJobs", "BackupJob") {
            running.push(json!({
                "Kind": JobKind::Backup, "JobId": field(&j, "BackupjobId"), "Status": field(&j, "JobStatus"),
                "Phase": field(&j, "BackupSetStatus"), "Progress": field(&j, "Progress"),
                "Mode": field(&j, "JobMode"), "StartTime": field(&j, "BackupStartTime"),
            }));
        }
    }
    if let Some(a) = part(client, "DescribeRestoreTasks", id, &mut errors).await? {
        for j in items(&a, "RestoreJobs", "RestoreJob") {
            match field(&j, "Status").as_str() {
                "Scheduled" | "Restoring" => running.push(json!({
                    "Kind": JobKind::Restore, "JobId": field(&j, "RestoreJobId"), "Status": field(&j, "Status"),
                    "Phase": field(&j, "Status"), "Progress": field(&j, "Progress"),
                    "BackupId": field(&j, "BackupId"), "StartTime": field(&j, "CreateTime"),
                })),
                "Failed"
                    if output::parse_time(&field(&j, "EndTime"))
                        .is_some_and(|t| now - t <= chrono::Duration::hours(24)) =>
                {
                    failures.push(json!({
                        "Kind": JobKind::Restore, "JobId": field(&j, "RestoreJobId"), "BackupId": field(&j, "BackupId"),
                        "Time": field(&j, "EndTime"), "ErrorCode": field(&j, "ErrorCode"),
                        "ErrorMessage": field(&j, "ErrorMessage"),
                    }));
                }
                _ => {}
            }
        }
    }
    let drill = last_drill(client, id).await?;
    let policy = part(client, "DescribeBackupPolicy", id, &mut errors).await?;
    let pol = |k: &str| policy.as_ref().map(|p| field(&Value::Object(p.clone()), k));
    Ok(json!({
        "DBInstanceId": id,
        "DBInstanceStatus": field(inst, "DBInstanceStatus"),
        "DBInstanceType": field(inst, "DBInstanceType"),
        "EngineVersion": field(inst, "EngineVersion"),
        "LastBackup": last_success,
        "LastBackupAgeSeconds": age,
        "RunningJobs": running,
        "AutomaticBackup": pol("AutomaticBackup"),
        "NextBackupTime": pol("PreferredNextBackupTime"),
        "FailuresLast24h": failures,
        "LastRestoreDrill": drill,
        "Errors": errors,
    }))
}

/// The instance's newest restore drill (docs/drills.md), `null` when none ran. A key without
/// DescribeRestoreDrills (or a server without drills) just shows none: drills are an extra of the overview.
async fn last_drill(client: &ApiClient, id: &str) -> Result<Value, CliError> {
    match client
        .call(
            "DescribeRestoreDrills",
            &[
                ("DBInstanceId", id.to_string()),
                ("MaxRecords", "1".to_string()),
            ],
        )
        .await
    {
        Ok(a) => Ok(items(&a, "RestoreDrills", "RestoreDrill")
            .into_iter()
            .next()
            .map_or(Value::Null, |d| {
                json!({
                    "Result": field(&d, "Result"), "BackupId": field(&d, "BackupId"),
                    "EndTime": field(&d, "EndTime"), "DurationMs": d["DurationMs"],
                    "Compared": field(&d, "Compared"),
                    "Error": d["Detail"]["error"].as_str().map(str::to_string).or_else(|| {
                        d["Detail"]["mismatch_count"].as_u64().filter(|n| *n > 0)
                            .map(|n| format!("{n} collections differ from what the backup recorded"))
                    }),
                })
            })),
        Err(e @ CliError::Unreachable { .. }) => Err(e),
        Err(_) => Ok(Value::Null),
    }
}

/// `ddsvault status`. Exits 1 (after printing) when a call was refused.
pub async fn status(args: OverviewArgs) -> Result<(), CliError> {
    let client = ApiClient::new(&resolve_from_process(&args.api)?)?;
    let now = Utc::now();
    let list = chosen(&client, &args.instances).await?;
    let rows: Vec<Value> = join_all(
        list.iter()
            .map(|(id, inst)| instance_status(&client, id, inst, now)),
    )
    .await
    .into_iter()
    .collect::<Result<_, _>>()?;
    if args.json {
        output::json(
            &json!({"Time": now.format("%Y-%m-%dT%H:%M:%SZ").to_string(), "Instances": rows}),
        );
    } else {
        print_status(&rows, now);
    }
    refused_parts(&rows)
}

fn refused_parts(rows: &[Value]) -> Result<(), CliError> {
    let refused: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            let id = field(r, "DBInstanceId");
            r["Errors"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |e| format!("{} of {id}: {}", field(&e, "Action"), field(&e, "Code")))
        })
        .collect();
    match refused.first() {
        None => Ok(()),
        Some(_) => Err(CliError::Refused(format!(
            "some calls were refused: {}",
            refused.join("; ")
        ))),
    }
}

fn print_status(rows: &[Value], now: DateTime<Utc>) {
    if rows.is_empty() {
        println!("no instances (none configured, or this key may not list them)");
        return;
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let last = &r["LastBackup"];
            let last_text = if last.is_null() {
                "never".to_string()
            } else {
                format!(
                    "{} {}",
                    field(last, "BackupId"),
                    field(last, "BackupMethod")
                )
            };
            let age = r["LastBackupAgeSeconds"]
                .as_i64()
                .map_or("-".into(), |s| format!("{} ago", output::span(s)));
            let running: Vec<String> = r["RunningJobs"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|j| {
                            format!(
                                "{} {} {} {}%",
                                field(j, "Kind"),
                                field(j, "JobId"),
                                field(j, "Phase"),
                                field(j, "Progress")
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let failures = r["FailuresLast24h"].as_array().map_or(0, Vec::len);
            vec![
                field(r, "DBInstanceId"),
                field(r, "DBInstanceStatus"),
                last_text,
                age,
                output::dash(running.join(", ")),
                next_text(r, "AutomaticBackup", "NextBackupTime", now),
                failures.to_string(),
            ]
        })
        .collect();
    output::table(
        &[
            "INSTANCE",
            "STATUS",
            "LAST BACKUP",
            "AGE",
            "RUNNING",
            "NEXT BACKUP",
            "FAILED 24H",
        ],
        &table,
    );
    for r in rows {
        let id = field(r, "DBInstanceId");
        for f in r["FailuresLast24h"].as_array().into_iter().flatten() {
            let which = match JobKind::parse(&field(f, "Kind")) {
                Some(JobKind::Backup) => format!("backup {}", field(f, "BackupId")),
                _ => format!("restore job {}", field(f, "JobId")),
            };
            println!(
                "{id}: {which} failed {}: {}: {}",
                output::relative_str(&field(f, "Time"), now),
                field(f, "ErrorCode"),
                field(f, "ErrorMessage")
            );
        }
        let d = &r["LastRestoreDrill"];
        if !d.is_null() {
            let secs = d["DurationMs"].as_i64().unwrap_or(0) / 1000;
            let mut line = format!(
                "{id}: restore drill of backup {} {} {} ({}, {})",
                field(d, "BackupId"),
                if field(d, "Result") == "Passed" {
                    "passed"
                } else {
                    "FAILED, backup unverified"
                },
                output::relative_str(&field(d, "EndTime"), now),
                output::span(secs),
                if field(d, "Compared") == "CountsOnly" {
                    "counts"
                } else {
                    "counts and checksums"
                },
            );
            if let Some(err) = d["Error"].as_str() {
                line.push_str(": ");
                line.push_str(err);
            }
            println!("{line}");
        }
        for e in r["Errors"].as_array().into_iter().flatten() {
            println!(
                "{id}: {} refused: {}: {}",
                field(e, "Action"),
                field(e, "Code"),
                field(e, "Message")
            );
        }
    }
}

/// The next automatic backup for people: "in 3h (2026-01-02T03:00Z)", "off", or why there is none.
fn next_text(r: &Value, auto_key: &str, next_key: &str, now: DateTime<Utc>) -> String {
    let next = field(r, next_key);
    match field(r, auto_key).as_str() {
        "" if r[auto_key].is_null() => "?".into(),
        "Disabled" => "off".into(),
        _ if next.is_empty() => "none (scheduler off)".into(),
        _ => format!("{} ({next})", output::relative_str(&next, now)),
    }
}

/// `ddsvault schedule`: the next automatic backup of each instance and the policy behind it.
pub async fn schedule(args: OverviewArgs) -> Result<(), CliError> {
    let client = ApiClient::new(&resolve_from_process(&args.api)?)?;
    let now = Utc::now();
    let list = chosen(&client, &args.instances).await?;
    let answers = join_all(list.iter().map(|(id, _)| {
        let client = &client;
        async move {
            client
                .call("DescribeBackupPolicy", &[("DBInstanceId", id.clone())])
                .await
                .map(|mut p| {
                    p.remove("RequestId");
                    p.insert("DBInstanceId".into(), json!(id));
                    // The instance id first, for people reading the JSON.
                    let mut ordered = Map::new();
                    ordered.insert("DBInstanceId".into(), json!(id));
                    ordered.extend(p);
                    Value::Object(ordered)
                })
        }
    }))
    .await;
    let policies: Vec<Value> = answers.into_iter().collect::<Result<_, _>>()?;
    if args.json {
        output::json(&json!({"Instances": policies}));
        return Ok(());
    }
    if policies.is_empty() {
        println!("no instances (none configured, or this key may not list them)");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = policies
        .iter()
        .map(|p| {
            let interval = field(p, "BackupInterval");
            vec![
                field(p, "DBInstanceId"),
                field(p, "AutomaticBackup"),
                next_text(p, "AutomaticBackup", "PreferredNextBackupTime", now),
                field(p, "PreferredBackupTime"),
                match field(p, "PreferredBackupPeriod") {
                    d if d.split(',').count() == 7 => "daily".into(),
                    d => d,
                },
                match field(p, "BackupRetentionPeriod").as_str() {
                    "-1" => "forever".into(),
                    d => format!("{d}d"),
                },
                match interval.as_str() {
                    "" | "-1" => "-".into(),
                    m => format!("every {m}m"),
                },
            ]
        })
        .collect();
    output::table(
        &[
            "INSTANCE",
            "AUTOMATIC",
            "NEXT BACKUP",
            "WINDOW",
            "DAYS",
            "RETENTION",
            "HIGH-FREQUENCY",
        ],
        &rows,
    );
    Ok(())
}
