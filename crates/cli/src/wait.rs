//! Following a backup or restore job to its end: a progress bar on a terminal, a line per change otherwise
//! (on stderr, so that stdout carries only the result), a timeout, and patience with a server that is
//! briefly busy or restarting.

use std::future::Future;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::client::{field, items, ApiClient, CliError};

/// How often a job is asked about.
const POLL: Duration = Duration::from_millis(500);
/// How long a wait rides out an unreachable or throttling server (once it answered) before giving up.
const TRANSIENT_GRACE: Duration = Duration::from_secs(60);

/// One look at a job.
pub struct Seen {
    /// 0–100.
    pub progress: u64,
    /// What the job is doing, as its task API says it (e.g. Scheduled, Backuping, Restoring).
    pub phase: String,
    pub outcome: Option<Outcome>,
    /// The task item as answered.
    pub item: Value,
}

impl Seen {
    /// Reads a task item: `status_field` is `Success`/`Failed` at the end (with ErrorCode and ErrorMessage
    /// beside it), `phase_field` what the job is doing, `Progress` its percentage.
    pub fn read(item: Value, status_field: &str, phase_field: &str) -> Seen {
        let outcome = match field(&item, status_field).as_str() {
            "Success" => Some(Outcome::Success),
            "Failed" => Some(Outcome::Failed {
                code: field(&item, "ErrorCode"),
                message: field(&item, "ErrorMessage"),
            }),
            _ => None,
        };
        Seen {
            progress: field(&item, "Progress").parse().unwrap_or(0),
            phase: field(&item, phase_field),
            outcome,
            item,
        }
    }
}

pub enum Outcome {
    Success,
    Failed { code: String, message: String },
}

/// Polls `look` until the job ends. Returns the last item on success; a failed job is
/// [`CliError::JobFailed`], a passed `timeout` [`CliError::Timeout`].
pub async fn follow<F, Fut>(
    what: &str,
    timeout: Option<Duration>,
    mut look: F,
) -> Result<Value, CliError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Seen, CliError>>,
{
    let started = Instant::now();
    // A bar for a person at a terminal (it is drawn on stderr, so both must be one); lines for anything else.
    let bar = (std::io::stdout().is_terminal() && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(100);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {bar:40} {pos:>3}% {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_prefix(what.to_string());
        b.enable_steady_tick(Duration::from_millis(200));
        b
    });
    let mut last_shown: Option<(u64, String)> = None;
    let mut failing_since: Option<Instant> = None;
    loop {
        match look().await {
            Ok(seen) => {
                failing_since = None;
                let now = (seen.progress.min(100), seen.phase.clone());
                if last_shown.as_ref() != Some(&now) {
                    match &bar {
                        Some(b) => {
                            b.set_position(now.0);
                            b.set_message(now.1.clone());
                        }
                        None => eprintln!("{what}: {} {}%", now.1, now.0),
                    }
                    last_shown = Some(now);
                }
                match seen.outcome {
                    Some(Outcome::Success) => {
                        if let Some(b) = &bar {
                            b.finish_and_clear();
                        }
                        return Ok(seen.item);
                    }
                    Some(Outcome::Failed { code, message }) => {
                        if let Some(b) = &bar {
                            b.abandon();
                        }
                        return Err(CliError::JobFailed {
                            what: what.to_string(),
                            code,
                            message,
                        });
                    }
                    None => {}
                }
            }
            // Only once the job was seen: a server that never answered is a wrong endpoint, not a hiccup.
            Err(e) if e.is_transient() && last_shown.is_some() => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() > TRANSIENT_GRACE {
                    if let Some(b) = &bar {
                        b.abandon();
                    }
                    return Err(e);
                }
            }
            Err(e) => {
                if let Some(b) = &bar {
                    b.abandon();
                }
                return Err(e);
            }
        }
        if let Some(t) = timeout {
            if started.elapsed() >= t {
                if let Some(b) = &bar {
                    b.abandon();
                }
                return Err(CliError::Timeout(format!(
                    "{what} had not ended after {}s (it goes on in the server)",
                    t.as_secs()
                )));
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A job to follow through its task API, e.g. DescribeBackupTasks with BackupJobId.
pub struct Task<'a> {
    /// "backup job" or "restore job", for messages.
    pub kind: &'a str,
    pub action: &'a str,
    pub instance: &'a str,
    /// The id parameter of `action` (BackupJobId, RestoreJobId) and its value.
    pub id_param: &'a str,
    pub id: &'a str,
    /// Where the answer lists the jobs: `{outer: [...]}` or `{outer: {inner: [...]}}`.
    pub outer: &'a str,
    pub inner: &'a str,
    /// The field saying whether the job ended (`Success`/`Failed`), and the one naming its phase.
    pub status_field: &'a str,
    pub phase_field: &'a str,
}

/// [`follow`] of a job through its task API; a job the API does not list is [`CliError::NotFound`].
pub async fn follow_task(
    client: &ApiClient,
    t: &Task<'_>,
    timeout: Option<u64>,
) -> Result<Value, CliError> {
    let what = format!("{} {}", t.kind, t.id);
    follow(&what, timeout.map(Duration::from_secs), || async {
        let answer = client
            .call(
                t.action,
                &[
                    ("DBInstanceId", t.instance.to_string()),
                    (t.id_param, t.id.to_string()),
                ],
            )
            .await?;
        match items(&answer, t.outer, t.inner).into_iter().next() {
            Some(item) => Ok(Seen::read(item, t.status_field, t.phase_field)),
            None => Err(CliError::NotFound(format!(
                "instance {} has no {} {}",
                t.instance, t.kind, t.id
            ))),
        }
    })
    .await
}
