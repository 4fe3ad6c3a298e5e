//! Following a backup or restore job to its end: a progress bar on a terminal, a line per change otherwise
//! (on stderr, so that stdout carries only the result), a timeout, and patience with a server that is
//! briefly busy or restarting.

use std::future::Future;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::client::CliError;

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
    let bar = std::io::stdout().is_terminal().then(|| {
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
