//! `ddsvault backup create|list|show|wait`: backups through the API (CreateBackup, DescribeBackups,
//! DescribeBackupTasks), signed with the caller's AccessKey.

use chrono::Utc;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::client::{field, items, ApiClient, CliError, EXIT_CODES_HELP};
use crate::credentials::{resolve_from_process, ApiArgs};
use crate::output;
use crate::wait::{follow_task, Task};

#[derive(Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct BackupArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub cmd: BackupCmd,
}

/// Dds spells the methods capitalised; any case is accepted.
#[derive(Clone, Copy, ValueEnum)]
#[value(rename_all = "PascalCase")]
pub enum Method {
    Logical,
    Physical,
    Snapshot,
}

impl Method {
    fn as_str(self) -> &'static str {
        let method = match self {
            Method::Logical => ddsvault_catalog::BackupMethod::Logical,
            Method::Physical => ddsvault_catalog::BackupMethod::Physical,
            Method::Snapshot => ddsvault_catalog::BackupMethod::Snapshot,
        };
        method.as_str()
    }
}

#[derive(Subcommand)]
pub enum BackupCmd {
    /// Starts a backup (CreateBackup); with --wait, follows it to its end.
    #[command(after_help = EXIT_CODES_HELP)]
    Create {
        #[arg(long)]
        instance: String,
        /// Default: what the server chooses for the instance (see `ddsvault check`).
        #[arg(long, value_enum, ignore_case = true)]
        method: Option<Method>,
        /// Days to keep the backup (7-730, or -1 forever); default: the instance's backup policy.
        #[arg(long, allow_negative_numbers = true)]
        retention: Option<i64>,
        /// Wait for the backup to end; exit 1 if it fails.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds (exit 4; the backup goes on).
        #[arg(long, requires = "wait", value_name = "SECS")]
        timeout: Option<u64>,
        /// One JSON document on stdout: the CreateBackup answer (and the backup, with --wait).
        #[arg(long)]
        json: bool,
    },
    /// Lists an instance's finished backups, newest first (DescribeBackups).
    #[command(after_help = EXIT_CODES_HELP)]
    List {
        #[arg(long)]
        instance: String,
        /// At most this many backups.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// One JSON document: {"DBInstanceId", "TotalCount", "Backups": [DescribeBackups items]}.
        #[arg(long)]
        json: bool,
    },
    /// Shows one finished backup (DescribeBackups with BackupId).
    #[command(after_help = EXIT_CODES_HELP)]
    Show {
        #[arg(long)]
        instance: String,
        #[arg(long)]
        backup_id: i64,
        /// The DescribeBackups item as one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Follows a backup job (BackupJobId of CreateBackup) to its end, showing its progress; exit 1 if it fails.
    #[command(after_help = EXIT_CODES_HELP)]
    Wait {
        #[arg(long)]
        instance: String,
        #[arg(long)]
        job_id: i64,
        /// Give up after this many seconds (exit 4; the backup goes on).
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
        /// The finished backup (DescribeBackups item) as one JSON document.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(args: BackupArgs) -> Result<(), CliError> {
    let client = ApiClient::new(&resolve_from_process(&args.api)?)?;
    match args.cmd {
        BackupCmd::Create {
            instance,
            method,
            retention,
            wait,
            timeout,
            json,
        } => {
            let mut params = vec![("DBInstanceId", instance.clone())];
            if let Some(m) = method {
                params.push(("BackupMethod", m.as_str().to_string()));
            }
            if let Some(r) = retention {
                params.push(("BackupRetentionPeriod", r.to_string()));
            }
            let answer = client.call("CreateBackup", &params).await?;
            let backup_id = field(&Value::Object(answer.clone()), "BackupId");
            let job_id = field(&Value::Object(answer.clone()), "BackupJobId");
            if !wait {
                if json {
                    output::json(
                        &json!({"DBInstanceId": instance, "BackupId": backup_id, "BackupJobId": job_id}),
                    );
                } else {
                    println!("backup {backup_id} of {instance} started (job {job_id})");
                    println!(
                        "  follow it: ddsvault backup wait --instance {instance} --job-id {job_id}"
                    );
                }
                return Ok(());
            }
            if !json {
                eprintln!("backup {backup_id} of {instance} started (job {job_id})");
            }
            let job: i64 = job_id.parse().map_err(|_| CliError::BadAnswer {
                endpoint: instance.clone(),
                why: format!("CreateBackup answered BackupJobId {job_id:?}"),
            })?;
            let backup = wait_backup(&client, &instance, job, timeout).await?;
            if json {
                output::json(&json!({
                    "DBInstanceId": instance, "BackupId": backup_id, "BackupJobId": job_id, "Backup": backup,
                }));
            } else {
                show(&backup);
            }
            Ok(())
        }
        BackupCmd::List {
            instance,
            limit,
            json,
        } => {
            if limit == 0 {
                return Err(CliError::Usage("--limit must be at least 1".into()));
            }
            let (total, backups) = list_backups(&client, &instance, &[], limit as usize).await?;
            if json {
                output::json(
                    &json!({"DBInstanceId": instance, "TotalCount": total, "Backups": backups}),
                );
                return Ok(());
            }
            if backups.is_empty() {
                println!("no finished backups of {instance}");
                return Ok(());
            }
            let now = Utc::now();
            let rows: Vec<Vec<String>> = backups
                .iter()
                .map(|b| {
                    vec![
                        field(b, "BackupId"),
                        field(b, "BackupStatus"),
                        field(b, "BackupMethod"),
                        field(b, "BackupMode"),
                        field(b, "BackupStartTime"),
                        output::relative_str(&field(b, "BackupStartTime"), now),
                        duration(b),
                        b.get("BackupSize")
                            .and_then(Value::as_i64)
                            .map_or("-".into(), output::size),
                        output::dash(field(b, "BackupDBNames")),
                        output::dash(field(b, "ErrorCode")),
                    ]
                })
                .collect();
            output::table(
                &[
                    "ID",
                    "STATUS",
                    "METHOD",
                    "MODE",
                    "STARTED",
                    "AGE",
                    "TOOK",
                    "SIZE",
                    "DATABASES",
                    "ERROR",
                ],
                &rows,
            );
            if total > backups.len() as i64 {
                println!("({} of {total} shown; --limit N shows more)", backups.len());
            }
            Ok(())
        }
        BackupCmd::Show {
            instance,
            backup_id,
            json,
        } => {
            let (_, found) = list_backups(
                &client,
                &instance,
                &[("BackupId", backup_id.to_string())],
                1,
            )
            .await?;
            let Some(b) = found.into_iter().next() else {
                return Err(CliError::NotFound(format!(
                    "instance {instance} has no finished backup {backup_id} (a running backup is listed once it \
                     ends: see `ddsvault status`)"
                )));
            };
            if json {
                output::json(&b);
            } else {
                show(&b);
            }
            Ok(())
        }
        BackupCmd::Wait {
            instance,
            job_id,
            timeout,
            json,
        } => {
            let backup = wait_backup(&client, &instance, job_id, timeout).await?;
            if json {
                output::json(&backup);
            } else {
                show(&backup);
            }
            Ok(())
        }
    }
}

/// DescribeBackups of an instance, page after page, up to `limit` items. Returns (TotalCount, items).
pub async fn list_backups(
    client: &ApiClient,
    instance: &str,
    extra: &[(&str, String)],
    limit: usize,
) -> Result<(i64, Vec<Value>), CliError> {
    let mut out = Vec::new();
    let mut page = 1u32;
    loop {
        let mut params = vec![
            ("DBInstanceId", instance.to_string()),
            ("PageSize", "100".to_string()),
            ("PageNumber", page.to_string()),
        ];
        params.extend(extra.iter().cloned());
        let answer = client.call("DescribeBackups", &params).await?;
        let total = answer
            .get("TotalCount")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let got = items(&answer, "Backups", "Backup");
        let last_page = got.len() < 100;
        out.extend(got);
        if last_page || out.len() >= limit || out.len() as i64 >= total {
            out.truncate(limit);
            return Ok((total, out));
        }
        page += 1;
    }
}

/// Follows backup job `job_id` of `instance` and returns its backup (the DescribeBackups item).
pub async fn wait_backup(
    client: &ApiClient,
    instance: &str,
    job_id: i64,
    timeout: Option<u64>,
) -> Result<Value, CliError> {
    let id = job_id.to_string();
    let task = Task {
        kind: "backup job",
        action: "DescribeBackupTasks",
        instance,
        id_param: "BackupJobId",
        id: &id,
        outer: "BackupJobs",
        inner: "BackupJob",
        // JobStatus (ddsvault extension) tells the outcome; Dds' BackupSetStatus has no failed value.
        status_field: "JobStatus",
        phase_field: "BackupSetStatus",
    };
    follow_task(client, &task, timeout).await?;
    // The job and its backup set end in one catalog transaction: the set is listed now.
    let (_, found) =
        list_backups(client, instance, &[("BackupJobId", job_id.to_string())], 1).await?;
    found.into_iter().next().ok_or_else(|| {
        CliError::NotFound(format!(
            "backup job {job_id} of {instance} ended but lists no backup"
        ))
    })
}

/// How long a backup took, from its start and end times.
fn duration(b: &Value) -> String {
    match (
        output::parse_time(&field(b, "BackupStartTime")),
        output::parse_time(&field(b, "BackupEndTime")),
    ) {
        (Some(s), Some(e)) => output::span((e - s).num_seconds()),
        _ => "-".into(),
    }
}

/// Every non-empty field of a backup, one per line, plus its age.
fn show(b: &Value) {
    let Some(obj) = b.as_object() else {
        return;
    };
    let width = obj.keys().map(String::len).max().unwrap_or(0);
    for (k, v) in obj {
        let text = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if text.is_empty() {
            continue;
        }
        let extra = match k.as_str() {
            "BackupStartTime" | "BackupEndTime" | "BackupExpireTime" => {
                format!(" ({})", output::relative_str(&text, Utc::now()))
            }
            "BackupSize" => v
                .as_i64()
                .map(|n| format!(" ({})", output::size(n)))
                .unwrap_or_default(),
            _ => String::new(),
        };
        println!("{k:<width$}  {text}{extra}");
    }
}
