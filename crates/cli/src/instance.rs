//! `ddsvault instance list|add|remove`: the instances a server knows, and instances registered at run time
//! (DescribeDBInstances, RegisterDBInstance, UnregisterDBInstance; docs/instances.md), signed with the caller's
//! AccessKey (RAM applies).

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::client::{field, items, ApiClient, CliError, EXIT_CODES_HELP};
use crate::credentials::{resolve_from_process, ApiArgs, Resolved};
use crate::output;

#[derive(Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct InstanceArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub cmd: InstanceCmd,
}

#[derive(Subcommand)]
pub enum InstanceCmd {
    /// Lists every instance the server knows: configured, provisioned and registered (DescribeDBInstances).
    #[command(after_help = EXIT_CODES_HELP)]
    List {
        /// One JSON document: {"TotalCount", "Instances": [DescribeDBInstances items]}.
        #[arg(long)]
        json: bool,
    },
    /// Registers an instance while the server runs (RegisterDBInstance): checked (a server must answer at the
    /// connection string within 4 s) and live at once, without a restart.
    #[command(after_help = EXIT_CODES_HELP)]
    Add {
        /// The new DBInstanceId (letters, digits, '-', '_', '.').
        #[arg(long)]
        id: String,
        /// MongoDB connection string (may hold a password: prefer $DDSVAULT_INSTANCE_URI, which other local
        /// users cannot read in the process list). Stored sealed; never shown again.
        #[arg(long, env = "DDSVAULT_INSTANCE_URI", hide_env_values = true)]
        uri: String,
        /// local_ssd (default), cloud_essd1, cloud_essd2, cloud_essd3, cloud_auto.
        #[arg(long)]
        storage_type: Option<String>,
        /// The node's data directory as the server sees it (enables Physical and Snapshot backups on FerretDB).
        #[arg(long)]
        data_path: Option<String>,
        /// The ddsvault node meant to run its jobs.
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// Automatic backups: the window, `HH:mmZ-HH:mmZ` (UTC, one hour), e.g. 03:00Z-04:00Z.
        #[arg(long)]
        backup_time: Option<String>,
        /// Automatic backups: the days, e.g. Monday,Thursday (default every day).
        #[arg(long)]
        backup_period: Option<String>,
        /// Days to keep automatic backups (7-730, or -1 forever).
        #[arg(long, allow_negative_numbers = true)]
        retention_days: Option<i64>,
        /// The RegisterDBInstance answer as one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Unregisters an instance registered at run time (UnregisterDBInstance); refused while one of its jobs is
    /// pending or running. Its backups stay listed and restorable.
    #[command(after_help = EXIT_CODES_HELP)]
    Remove {
        #[arg(long)]
        id: String,
    },
}

/// Codes the server answers when the AccessKey itself is wrong (unknown, disabled, or the secret does not match).
const CREDENTIAL_CODES: [&str; 4] = [
    "InvalidAccessKeyId.NotFound",
    "InvalidAccessKeyId.Inactive",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
];

/// Names where the refused AccessKey came from, so a wrong key is told apart from a refused action.
fn explain(e: CliError, r: &Resolved) -> CliError {
    match e {
        CliError::Api {
            status,
            code,
            message,
            request_id,
        } if CREDENTIAL_CODES.contains(&code.as_str()) => CliError::Api {
            status,
            message: format!(
                "{message} [the AccessKey {} from {} was not accepted by {}: check the key id and secret \
                 (--access-key-id/--access-key-secret, the environment, or the profile)]",
                r.access_key_id, r.key_source, r.endpoint
            ),
            code,
            request_id,
        },
        other => other,
    }
}

pub async fn run(args: InstanceArgs) -> Result<(), CliError> {
    let resolved = resolve_from_process(&args.api)?;
    let client = ApiClient::new(&resolved)?;
    run_with(&client, args.cmd)
        .await
        .map_err(|e| explain(e, &resolved))
}

async fn run_with(client: &ApiClient, cmd: InstanceCmd) -> Result<(), CliError> {
    match cmd {
        InstanceCmd::List { json } => {
            let mut all: Vec<Value> = Vec::new();
            let mut page = 1u32;
            let total = loop {
                let answer = client
                    .call(
                        "DescribeDBInstances",
                        &[
                            ("PageNumber", page.to_string()),
                            ("PageSize", "100".to_string()),
                        ],
                    )
                    .await?;
                let got = items(&answer, "DBInstances", "DBInstance");
                let total = answer
                    .get("TotalCount")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                let empty = got.is_empty();
                all.extend(got);
                if empty || all.len() as u64 >= total {
                    break total;
                }
                page += 1;
            };
            if json {
                output::json(&json!({"TotalCount": total, "Instances": all}));
                return Ok(());
            }
            if all.is_empty() {
                println!("no instances");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|i| {
                    vec![
                        field(i, "DBInstanceId"),
                        field(i, "DBInstanceStatus"),
                        output::dash(field(i, "Origin")),
                        field(i, "StorageType"),
                        output::dash(field(i, "EngineVersion")),
                        output::dash(field(i, "Node")),
                        output::dash(field(i, "DBInstanceDescription")),
                    ]
                })
                .collect();
            output::table(
                &[
                    "ID",
                    "STATUS",
                    "ORIGIN",
                    "STORAGE",
                    "ENGINE",
                    "NODE",
                    "DESCRIPTION",
                ],
                &rows,
            );
            Ok(())
        }
        InstanceCmd::Add {
            id,
            uri,
            storage_type,
            data_path,
            node,
            description,
            backup_time,
            backup_period,
            retention_days,
            json,
        } => {
            let mut params = vec![("DBInstanceId", id.clone()), ("ConnectionString", uri)];
            let optional = [
                ("StorageType", storage_type),
                ("DataPath", data_path),
                ("Node", node),
                ("DBInstanceDescription", description),
                ("PreferredBackupTime", backup_time),
                ("PreferredBackupPeriod", backup_period),
                (
                    "BackupRetentionPeriod",
                    retention_days.map(|d| d.to_string()),
                ),
            ];
            for (k, v) in optional {
                if let Some(v) = v {
                    params.push((k, v));
                }
            }
            let answer = client.call("RegisterDBInstance", &params).await?;
            if json {
                output::json(&Value::Object(answer));
            } else {
                println!("instance {id} registered; it is live now (no restart needed)");
            }
            Ok(())
        }
        InstanceCmd::Remove { id } => {
            client
                .call("UnregisterDBInstance", &[("DBInstanceId", id.clone())])
                .await?;
            println!("instance {id} unregistered; its backups stay listed and restorable");
            Ok(())
        }
    }
}
