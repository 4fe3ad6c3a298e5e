//! Alert webhooks (`[[alerts.webhooks]]`): a JSON POST per event, optionally signed with HMAC-SHA256 over the
//! body, retried with exponential backoff.
//!
//! Jobs never wait for a receiver: each webhook has its own bounded queue and its own sender task; an event that
//! finds the queue full is dropped, counted (`ddsvault_alerts_total{result="dropped"}`) and logged. A receiver
//! that is down or slow therefore costs at most its queue, never a job's progress, and never delays the other
//! webhooks. Notifications still queued at shutdown are not sent.
//!
//! Neither the webhook URL (it often carries a token, e.g. Slack's) nor its secret is ever logged: logs name the
//! webhook by its position and host.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use ddsvault_jobs::{Event, EventSink};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{AlertsConfig, ALERT_EVENTS};
use crate::metrics::Metrics;

/// The header carrying `sha256=<hex HMAC-SHA256 of the body>` when the webhook has a secret.
pub const SIGNATURE_HEADER: &str = "X-Ddsvault-Signature";
/// The header naming the event (`job_failed`, `slot_missed`, `repository_error`, `drill_failed`).
pub const EVENT_HEADER: &str = "X-Ddsvault-Event";
/// The header carrying the notification's id, the same on every attempt (receivers can drop repeats).
pub const DELIVERY_HEADER: &str = "X-Ddsvault-Delivery";
/// The first retry waits this long; each next one twice as long, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// One notification waiting to be sent.
#[derive(Debug)]
struct Notification {
    event: &'static str,
    id: String,
    body: Vec<u8>,
}

/// The events' side: one queue per webhook.
#[derive(Debug)]
struct Hook {
    /// Events this webhook wants (empty: all).
    events: Vec<String>,
    tx: mpsc::Sender<Notification>,
    name: String,
}

/// A webhook's sender, taken once by the task that runs it.
#[derive(Debug)]
pub struct Sender {
    name: String,
    url: reqwest::Url,
    secret: Option<String>,
    rx: mpsc::Receiver<Notification>,
    client: reqwest::Client,
    attempts: u32,
    metrics: Arc<Metrics>,
}

/// The configured webhooks.
#[derive(Debug)]
pub struct Alerts {
    hooks: Vec<Hook>,
    senders: Mutex<Vec<Sender>>,
    region_id: String,
    metrics: Arc<Metrics>,
}

impl Alerts {
    /// `None` without webhooks.
    ///
    /// # Errors
    /// A URL that does not parse (the configuration's validation refuses it first) or an HTTP client that cannot
    /// be built.
    pub fn new(
        cfg: &AlertsConfig,
        region_id: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Self>, crate::ConfigError> {
        if cfg.webhooks.is_empty() {
            return Ok(None);
        }
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .user_agent(concat!("ddsvault/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| crate::ConfigError(format!("[alerts] HTTP client: {e}")))?;
        let mut hooks = Vec::new();
        let mut senders = Vec::new();
        for (i, w) in cfg.webhooks.iter().enumerate() {
            let url = reqwest::Url::parse(&w.url).map_err(|e| {
                crate::ConfigError(format!("[[alerts.webhooks]] #{}: url: {e}", i + 1))
            })?;
            let name = format!("#{} ({})", i + 1, url.host_str().unwrap_or("?"));
            let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1));
            hooks.push(Hook {
                events: w.events.clone(),
                tx,
                name: name.clone(),
            });
            senders.push(Sender {
                name,
                url,
                secret: w.secret.clone(),
                rx,
                client: client.clone(),
                attempts: cfg.max_attempts.max(1),
                metrics: Arc::clone(&metrics),
            });
        }
        Ok(Some(Self {
            hooks,
            senders: Mutex::new(senders),
            region_id: region_id.to_string(),
            metrics,
        }))
    }

    /// The senders, for their tasks (empty once taken).
    pub fn take_senders(&self) -> Vec<Sender> {
        self.senders
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default()
    }

    /// Queues `event` for every webhook that wants it; never waits.
    fn queue(&self, event: &'static str, mut fields: Value) {
        let id = crate::random_string(20).to_lowercase();
        if let Some(map) = fields.as_object_mut() {
            map.insert("event".into(), json!(event));
            map.insert("id".into(), json!(id));
            map.insert(
                "time".into(),
                json!(Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            );
            map.insert("region_id".into(), json!(self.region_id));
        }
        let body = fields.to_string().into_bytes();
        for hook in &self.hooks {
            if !hook.events.is_empty() && !hook.events.iter().any(|e| e == event) {
                continue;
            }
            let n = Notification {
                event,
                id: id.clone(),
                body: body.clone(),
            };
            if hook.tx.try_send(n).is_err() {
                // Full (a dead or slow receiver) or closed (shutdown): the job goes on either way.
                self.metrics.alert(event, "dropped");
                tracing::warn!(webhook = %hook.name, event, "alert dropped: the webhook's queue is full");
            }
        }
    }
}

impl EventSink for Alerts {
    fn emit(&self, event: &Event) {
        match event {
            Event::JobFinished(o) => {
                let Some(code) = &o.error_code else {
                    return;
                };
                let fields = json!({
                    "instance_id": o.instance_id,
                    "job_id": o.job_id,
                    "kind": o.kind,
                    "method": o.method,
                    "mode": o.mode,
                    "error_code": code,
                    "message": o.error,
                });
                self.queue("job_failed", fields.clone());
                if code.starts_with("Repository.") {
                    self.queue("repository_error", fields);
                }
            }
            // A drill that passed is no news; one that failed means a backup that does not restore as recorded.
            Event::DrillFinished(d) if !d.passed => self.queue(
                "drill_failed",
                json!({
                    "instance_id": d.instance_id,
                    "backup_id": d.backup_id,
                    "target_instance_id": d.target,
                    "drill_id": d.drill_id,
                    "job_id": d.job_id,
                    "duration_seconds": d.duration.as_secs_f64(),
                    "message": d.message,
                }),
            ),
            Event::DrillFinished(_) => {}
            Event::SlotMissed {
                instance_id,
                schedule,
                slot,
                reason,
                blocking_job_id,
            } => self.queue(
                "slot_missed",
                json!({
                    "instance_id": instance_id,
                    "schedule": schedule,
                    "slot": slot.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    "reason": reason,
                    "blocking_job_id": blocking_job_id,
                }),
            ),
        }
    }
}

/// `sha256=<hex>` of the body under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl Sender {
    /// Sends queued notifications one after the other until `cancel` fires.
    pub async fn run(mut self, cancel: CancellationToken) -> Result<(), String> {
        loop {
            let n = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                n = self.rx.recv() => match n {
                    Some(n) => n,
                    None => return Ok(()),
                },
            };
            let delivered = self.deliver(&n, &cancel).await;
            if cancel.is_cancelled() && !delivered {
                return Ok(());
            }
            self.metrics
                .alert(n.event, if delivered { "delivered" } else { "failed" });
        }
    }

    /// Tries up to `attempts` times with exponential backoff; true once the receiver answered 2xx.
    async fn deliver(&self, n: &Notification, cancel: &CancellationToken) -> bool {
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=self.attempts {
            let mut req = self
                .client
                .post(self.url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(EVENT_HEADER, n.event)
                .header(DELIVERY_HEADER, &n.id)
                .body(n.body.clone());
            if let Some(secret) = &self.secret {
                req = req.header(SIGNATURE_HEADER, signature(secret, &n.body));
            }
            let outcome = tokio::select! {
                () = cancel.cancelled() => return false,
                r = req.send() => r,
            };
            let why = match outcome {
                Ok(resp) if resp.status().is_success() => {
                    tracing::debug!(webhook = %self.name, event = n.event, attempt, "alert delivered");
                    return true;
                }
                Ok(resp) => format!("answered HTTP {}", resp.status().as_u16()),
                // reqwest's message may quote the URL (and its token): only the kind of failure is kept.
                Err(e) if e.is_timeout() => "timed out".to_string(),
                Err(e) if e.is_connect() => "connection failed".to_string(),
                Err(_) => "request failed".to_string(),
            };
            if attempt == self.attempts {
                tracing::warn!(webhook = %self.name, event = n.event, attempts = attempt, reason = %why,
                    "alert not delivered: giving up");
                return false;
            }
            tracing::info!(webhook = %self.name, event = n.event, attempt, reason = %why,
                retry_in_secs = backoff.as_secs(), "alert delivery failed; retrying");
            tokio::select! {
                () = cancel.cancelled() => return false,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        false
    }
}

/// Checks the events a webhook names.
pub(crate) fn unknown_event(events: &[String]) -> Option<&str> {
    events
        .iter()
        .map(String::as_str)
        .find(|e| !ALERT_EVENTS.contains(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_instead_of_waiting() {
        let cfg = AlertsConfig {
            webhooks: vec![crate::config::WebhookConfig {
                url: "http://127.0.0.1:9/hook".into(),
                secret: None,
                events: vec!["slot_missed".into()],
            }],
            queue_capacity: 2,
            ..AlertsConfig::default()
        };
        let metrics = Arc::new(Metrics::new());
        let alerts = Alerts::new(&cfg, "cn-hangzhou", Arc::clone(&metrics))
            .expect("alerts")
            .expect("configured");
        let missed = Event::SlotMissed {
            instance_id: "dds-1".into(),
            schedule: "standard".into(),
            slot: Utc::now(),
            reason: "active_job",
            blocking_job_id: 3,
        };
        // No sender runs: two fit, the third is dropped at once; a job failure is not wanted by this hook.
        for _ in 0..3 {
            alerts.emit(&missed);
        }
        alerts.emit(&Event::JobFinished(ddsvault_jobs::JobOutcome {
            job_id: 1,
            instance_id: "dds-1".into(),
            kind: ddsvault_catalog::JobKind::Backup,
            method: Some(ddsvault_catalog::BackupMethod::Logical),
            mode: "Manual".into(),
            error_code: Some("Repository.NoSpace".into()),
            error: Some("disk full".into()),
            duration: Duration::from_secs(1),
            bytes: None,
        }));
        let mut senders = alerts.take_senders();
        assert_eq!(senders.len(), 1);
        let rx = &mut senders[0].rx;
        let first = rx.try_recv().expect("queued");
        let body: Value = serde_json::from_slice(&first.body).expect("json");
        assert_eq!(body["event"], "slot_missed");
        assert_eq!(body["instance_id"], "dds-1");
        assert!(rx.try_recv().is_ok());
        assert!(
            rx.try_recv().is_err(),
            "the third was dropped, the failure filtered out"
        );
        let text = metrics
            .render(
                &ddsvault_catalog::open("sqlite::memory:")
                    .await
                    .expect("cat"),
            )
            .await;
        assert!(
            text.contains("ddsvault_alerts_total{event=\"slot_missed\",result=\"dropped\"} 1"),
            "{text}"
        );
    }
}
