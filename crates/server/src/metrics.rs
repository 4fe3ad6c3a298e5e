//! `/metrics` (Prometheus/OpenMetrics text), `/healthz` and `/readyz`.
//!
//! Two kinds of numbers: what this process saw happen (API calls and their latency, throttled calls, finished
//! jobs with their durations and bytes, missed slots, alerts), kept in counters and histograms updated as it
//! happens; and what the catalog holds (jobs by state, backups and their bytes, each instance's last successful
//! backup), read in one aggregate query when scraped, so every process sharing a catalog reports the same. None of
//! them carries a secret or an instance URI: labels are action names, Dds error codes, job kinds, methods, states
//! and instance ids.
//!
//! The endpoints are unauthenticated (as Prometheus and Kubernetes expect), so what they cost is bounded: the
//! catalog is read at most once per [`REFRESH_EVERY`] and the readiness checks run at most once per
//! [`READY_EVERY`], however often they are called.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use ddsvault_jobs::{Event, EventSink};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::sync::Mutex;

use crate::state::AppState;

/// The catalog's counts are read at most this often (a scrape in between gets the last reading).
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// The readiness checks run at most this often (`/readyz` writes a probe object to the repository).
pub const READY_EVERY: Duration = Duration::from_secs(2);
/// A readiness check that takes longer than this fails.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// What `/metrics` answers with: the OpenMetrics text format, which Prometheus scrapes natively.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    action: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ThrottleLabels {
    action: String,
    /// `user` (per AccessKey) or `api` (per action).
    scope: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    kind: String,
    method: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindMethod {
    kind: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SlotLabels {
    instance: String,
    schedule: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackupLabels {
    method: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    instance: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DrillLabels {
    instance: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    event: String,
    /// `delivered`, `failed` (every attempt failed) or `dropped` (the queue was full).
    result: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms .. 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

fn job_duration_histogram() -> Histogram {
    // 1 s .. 9 h.
    Histogram::new(exponential_buckets(1.0, 2.0, 16))
}

fn job_bytes_histogram() -> Histogram {
    // 1 KiB .. 1 TiB.
    Histogram::new(exponential_buckets(1024.0, 4.0, 16))
}

/// Every metric of the process, and the registry that renders them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    api_calls: Family<CallLabels, Counter>,
    api_latency: HistogramFamily<ActionLabels>,
    throttled: Family<ThrottleLabels, Counter>,
    jobs_finished: Family<JobLabels, Counter>,
    job_duration: HistogramFamily<JobLabels>,
    job_bytes: HistogramFamily<KindMethod>,
    slots_missed: Family<SlotLabels, Counter>,
    alerts: Family<AlertLabels, Counter>,
    // Read from the catalog when scraped.
    jobs: Family<JobLabels, Gauge>,
    backups: Family<BackupLabels, Gauge>,
    repository_bytes: Family<BackupLabels, Gauge>,
    last_success: Family<InstanceLabels, Gauge<f64, AtomicU64>>,
    log_backup_end: Family<InstanceLabels, Gauge>,
    log_backup_lag: Family<InstanceLabels, Gauge>,
    drill_result: Family<InstanceLabels, Gauge>,
    drill_duration: Family<InstanceLabels, Gauge<f64, AtomicU64>>,
    drill_time: Family<InstanceLabels, Gauge>,
    drills_finished: Family<DrillLabels, Counter>,
    catalog_up: Gauge,
    /// When the catalog was last read; held while reading so concurrent scrapes share one read.
    refreshed: Mutex<Option<Instant>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every ddsvault metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ddsvault");
        let api_calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "api_calls",
            "API calls by action and answer code (OK or the Dds error code); unknown actions are counted as \"-\"",
            api_calls.clone(),
        );
        let api_latency = HistogramFamily::<ActionLabels>::new_with_constructor(latency_histogram);
        registry.register(
            "api_call_duration_seconds",
            "Time from a request's arrival to its answer, by action",
            api_latency.clone(),
        );
        let throttled = Family::<ThrottleLabels, Counter>::default();
        registry.register(
            "api_throttled_calls",
            "Calls refused by flow control (Throttling.User: scope user, Throttling.Api: scope api)",
            throttled.clone(),
        );
        let jobs_finished = Family::<JobLabels, Counter>::default();
        registry.register(
            "jobs_finished",
            "Jobs this process ran to an end, by kind, method and final state",
            jobs_finished.clone(),
        );
        let job_duration =
            HistogramFamily::<JobLabels>::new_with_constructor(job_duration_histogram);
        registry.register(
            "job_duration_seconds",
            "Run time of the jobs this process finished, by kind, method and final state",
            job_duration.clone(),
        );
        let job_bytes = HistogramFamily::<KindMethod>::new_with_constructor(job_bytes_histogram);
        registry.register(
            "job_bytes",
            "Bytes stored by the successful backups this process ran, by method",
            job_bytes.clone(),
        );
        let slots_missed = Family::<SlotLabels, Counter>::default();
        registry.register(
            "scheduled_slots_missed",
            "Automatic-backup slots that got no backup (reason active_job: the instance had a job running)",
            slots_missed.clone(),
        );
        let alerts = Family::<AlertLabels, Counter>::default();
        registry.register(
            "alerts",
            "Webhook notifications by event and result (delivered, failed after every retry, dropped on a full queue)",
            alerts.clone(),
        );
        let jobs = Family::<JobLabels, Gauge>::default();
        registry.register(
            "jobs",
            "Jobs in the catalog by kind, method and state",
            jobs.clone(),
        );
        let backups = Family::<BackupLabels, Gauge>::default();
        registry.register(
            "backups",
            "Backup sets in the catalog by method and status",
            backups.clone(),
        );
        let repository_bytes = Family::<BackupLabels, Gauge>::default();
        registry.register(
            "repository_bytes",
            "Recorded size of the backup sets in the catalog by method and status (shared snapshot chunks count \
             in every set that uses them)",
            repository_bytes.clone(),
        );
        let last_success = Family::<InstanceLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "last_successful_backup_timestamp_seconds",
            "End time (Unix seconds) of each instance's newest successful backup",
            last_success.clone(),
        );
        let log_backup_end = Family::<InstanceLabels, Gauge>::default();
        registry.register(
            "log_backup_stored_until_timestamp_seconds",
            "Oplog time (Unix seconds) up to which each instance's continuous log backup is durably stored",
            log_backup_end.clone(),
        );
        let log_backup_lag = Family::<InstanceLabels, Gauge>::default();
        registry.register(
            "log_backup_lag_seconds",
            "Seconds between now and the end of each instance's newest stored log slice: how much recent history a \
             point-in-time restore could not reach if the instance were lost now",
            log_backup_lag.clone(),
        );
        let drill_result = Family::<InstanceLabels, Gauge>::default();
        registry.register(
            "restore_drill_last_result",
            "Result of each instance's newest restore drill: 1 passed, 0 failed (its backup is unverified)",
            drill_result.clone(),
        );
        let drill_duration = Family::<InstanceLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "restore_drill_last_duration_seconds",
            "Duration of each instance's newest restore drill (restore and comparison)",
            drill_duration.clone(),
        );
        let drill_time = Family::<InstanceLabels, Gauge>::default();
        registry.register(
            "restore_drill_last_timestamp_seconds",
            "End time (Unix seconds) of each instance's newest restore drill",
            drill_time.clone(),
        );
        let drills_finished = Family::<DrillLabels, Counter>::default();
        registry.register(
            "restore_drills",
            "Restore drills this process ran, by instance and result",
            drills_finished.clone(),
        );
        let catalog_up = Gauge::default();
        registry.register(
            "catalog_up",
            "1 if the catalog answered the last scrape's read, else 0 (the catalog numbers are then absent)",
            catalog_up.clone(),
        );
        Self {
            registry,
            api_calls,
            api_latency,
            throttled,
            jobs_finished,
            job_duration,
            job_bytes,
            slots_missed,
            alerts,
            jobs,
            backups,
            repository_bytes,
            last_success,
            log_backup_end,
            log_backup_lag,
            drill_result,
            drill_duration,
            drill_time,
            drills_finished,
            catalog_up,
            refreshed: Mutex::new(None),
        }
    }

    /// Counts one answered API call. `action` must already be a known action name (or "-"), `code` "OK" or a Dds
    /// error code: both bounded sets, so a client cannot grow the label space.
    pub fn api_call(&self, action: &str, code: &str, elapsed: Duration) {
        self.api_calls
            .get_or_create(&CallLabels {
                action: action.to_string(),
                code: code.to_string(),
            })
            .inc();
        self.api_latency
            .get_or_create(&ActionLabels {
                action: action.to_string(),
            })
            .observe(elapsed.as_secs_f64());
        let scope = match code {
            "Throttling.User" => "user",
            "Throttling.Api" => "api",
            _ => return,
        };
        self.throttled
            .get_or_create(&ThrottleLabels {
                action: action.to_string(),
                scope: scope.to_string(),
            })
            .inc();
    }

    /// Counts one webhook notification's fate.
    pub fn alert(&self, event: &str, result: &str) {
        self.alerts
            .get_or_create(&AlertLabels {
                event: event.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    /// The text of `/metrics`, with the catalog's counts read again if the last reading is older than
    /// [`REFRESH_EVERY`].
    pub async fn render(&self, catalog: &ddsvault_catalog::Catalog) -> String {
        {
            let mut refreshed = self.refreshed.lock().await;
            if !refreshed.is_some_and(|t| t.elapsed() < REFRESH_EVERY) {
                self.refresh(catalog).await;
                *refreshed = Some(Instant::now());
            }
        }
        let mut out = String::new();
        // Writing into a String cannot fail; an encoder error would be a bug in a label set.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "could not encode the metrics");
        }
        out
    }

    async fn refresh(&self, catalog: &ddsvault_catalog::Catalog) {
        // Groups that emptied since the last reading (a job that moved on) must disappear, not stay frozen.
        self.jobs.clear();
        self.backups.clear();
        self.repository_bytes.clear();
        self.last_success.clear();
        self.log_backup_end.clear();
        self.log_backup_lag.clear();
        self.drill_result.clear();
        self.drill_duration.clear();
        self.drill_time.clear();
        let stats = match catalog.stats().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: the catalog could not be read");
                self.catalog_up.set(0);
                return;
            }
        };
        self.catalog_up.set(1);
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        for j in stats.jobs {
            self.jobs
                .get_or_create(&JobLabels {
                    kind: j.kind.as_str().to_string(),
                    method: method_label(j.method),
                    state: j.state.as_str().to_string(),
                })
                .set(gauge(j.count));
        }
        for b in stats.backups {
            let labels = BackupLabels {
                method: b.method.as_str().to_string(),
                status: b.status,
            };
            self.backups.get_or_create(&labels).set(gauge(b.count));
            self.repository_bytes
                .get_or_create(&labels)
                .set(gauge(b.bytes));
        }
        for (instance, t) in stats.last_success {
            // Milliseconds are kept: two backups within a second stay distinguishable.
            #[allow(clippy::cast_precision_loss)]
            let secs = t.timestamp_millis() as f64 / 1000.0;
            self.last_success
                .get_or_create(&InstanceLabels { instance })
                .set(secs);
        }
        let now = chrono::Utc::now().timestamp();
        for (instance, end) in stats.log_backup_end {
            let labels = InstanceLabels { instance };
            self.log_backup_end
                .get_or_create(&labels)
                .set(i64::from(end));
            // A slice ends at most a few seconds in the future of this clock (server clocks differ): never below 0.
            self.log_backup_lag
                .get_or_create(&labels)
                .set((now - i64::from(end)).max(0));
        }
        match catalog.latest_restore_drills().await {
            Ok(drills) => {
                for d in drills {
                    let labels = InstanceLabels {
                        instance: d.instance_id,
                    };
                    self.drill_result
                        .get_or_create(&labels)
                        .set(i64::from(d.result == ddsvault_catalog::DrillResult::Passed));
                    #[allow(clippy::cast_precision_loss)]
                    self.drill_duration
                        .get_or_create(&labels)
                        .set(d.duration_ms as f64 / 1000.0);
                    self.drill_time
                        .get_or_create(&labels)
                        .set(d.finished_at.timestamp());
                }
            }
            Err(e) => tracing::warn!(error = %e, "metrics: the restore drills could not be read"),
        }
    }
}

/// The `method` label: the method's name, "" for jobs that name none.
fn method_label(method: Option<ddsvault_catalog::BackupMethod>) -> String {
    method.map_or("", |m| m.as_str()).to_string()
}

impl EventSink for Metrics {
    fn emit(&self, event: &Event) {
        match event {
            Event::JobFinished(o) => {
                let labels = JobLabels {
                    kind: o.kind.as_str().to_string(),
                    method: method_label(o.method),
                    state: if o.succeeded() { "Success" } else { "Failed" }.to_string(),
                };
                self.jobs_finished.get_or_create(&labels).inc();
                self.job_duration
                    .get_or_create(&labels)
                    .observe(o.duration.as_secs_f64());
                if let Some(bytes) = o.bytes {
                    #[allow(clippy::cast_precision_loss)]
                    self.job_bytes
                        .get_or_create(&KindMethod {
                            kind: o.kind.as_str().to_string(),
                            method: method_label(o.method),
                        })
                        .observe(bytes as f64);
                }
            }
            Event::DrillFinished(d) => {
                self.drills_finished
                    .get_or_create(&DrillLabels {
                        instance: d.instance_id.clone(),
                        result: if d.passed { "Passed" } else { "Failed" }.to_string(),
                    })
                    .inc();
            }
            Event::SlotMissed {
                instance_id,
                schedule,
                reason,
                ..
            } => {
                self.slots_missed
                    .get_or_create(&SlotLabels {
                        instance: instance_id.clone(),
                        schedule: schedule.clone(),
                        reason: (*reason).to_string(),
                    })
                    .inc();
            }
        }
    }
}

/// Hands each event to every watcher: the metrics, and the alert webhooks when configured.
#[derive(Debug)]
pub struct Watchers {
    /// The Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// The alert webhooks; `None` when none are configured.
    pub alerts: Option<Arc<crate::alerts::Alerts>>,
}

impl EventSink for Watchers {
    fn emit(&self, event: &Event) {
        self.metrics.emit(event);
        if let Some(alerts) = &self.alerts {
            alerts.emit(event);
        }
    }
}

/// The last readiness verdict and when it was reached.
#[derive(Debug, Default)]
pub struct Readiness(Mutex<Option<(Instant, ReadyReport)>>);

/// What `/readyz` found: each check's verdict, never an error text (which might name a path or an endpoint);
/// the reasons go to the log.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ReadyReport {
    /// `ok` when the catalog answered a read in time, else `unavailable`.
    pub catalog: &'static str,
    /// `ok` when the repository answered a ping in time, else `unavailable`.
    pub repository: &'static str,
}

impl ReadyReport {
    fn ready(&self) -> bool {
        self.catalog == "ok" && self.repository == "ok"
    }
}

impl Readiness {
    async fn check(&self, st: &AppState) -> ReadyReport {
        let mut last = self.0.lock().await;
        if let Some((at, report)) = last.as_ref() {
            if at.elapsed() < READY_EVERY {
                return report.clone();
            }
        }
        let catalog =
            match tokio::time::timeout(READY_TIMEOUT, st.catalog.get_setting("account_id")).await {
                Ok(Ok(_)) => "ok",
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "readiness: the catalog cannot be read");
                    "unavailable"
                }
                Err(_) => {
                    tracing::warn!("readiness: the catalog did not answer in time");
                    "unavailable"
                }
            };
        let repository = match tokio::time::timeout(READY_TIMEOUT, st.repo.ping()).await {
            Ok(Ok(())) => "ok",
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "readiness: the repository is not usable");
                "unavailable"
            }
            Err(_) => {
                tracing::warn!("readiness: the repository did not answer in time");
                "unavailable"
            }
        };
        let report = ReadyReport {
            catalog,
            repository,
        };
        *last = Some((Instant::now(), report.clone()));
        report
    }
}

/// The routes of `/metrics`, `/healthz` and `/readyz`.
pub fn routes(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn serve_metrics(State(st): State<Arc<AppState>>) -> Response {
    let text = st.metrics.render(&st.catalog).await;
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

async fn healthz() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "ok\n",
    )
        .into_response()
}

async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    let report = st.readiness.check(&st).await;
    let status = if report.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if report.ready() { "ready" } else { "not ready" },
        "checks": report,
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ddsvault_jobs::JobOutcome;

    fn outcome(code: Option<&str>, bytes: Option<u64>) -> Event {
        Event::JobFinished(JobOutcome {
            job_id: 1,
            instance_id: "dds-1".into(),
            kind: ddsvault_catalog::JobKind::Backup,
            method: Some(ddsvault_catalog::BackupMethod::Logical),
            mode: "Manual".into(),
            error_code: code.map(str::to_string),
            error: code.map(|_| "boom".to_string()),
            duration: Duration::from_secs(3),
            bytes,
        })
    }

    #[tokio::test]
    async fn counters_and_catalog_counts_render_in_the_text_format() {
        let m = Metrics::new();
        m.api_call("CreateBackup", "OK", Duration::from_millis(3));
        m.api_call("CreateBackup", "Throttling.User", Duration::from_millis(1));
        m.emit(&outcome(None, Some(5000)));
        m.emit(&outcome(Some("MongoDB.Unreachable"), None));
        m.emit(&Event::SlotMissed {
            instance_id: "dds-1".into(),
            schedule: "standard".into(),
            slot: chrono::Utc::now(),
            reason: "active_job",
            blocking_job_id: 7,
        });
        let cat = ddsvault_catalog::open("sqlite::memory:")
            .await
            .expect("catalog");
        let now = chrono::Utc::now();
        assert!(cat
            .claim_log_follower("dds-1", "n1", now, now + chrono::Duration::minutes(1))
            .await
            .expect("claim"));
        let end = u32::try_from(now.timestamp() - 30).expect("time");
        cat.add_log_slice(
            &ddsvault_catalog::NewLogSlice {
                instance_id: "dds-1".into(),
                start_excl: ddsvault_catalog::ts_key(end - 60, 0),
                end_incl: ddsvault_catalog::ts_key(end, 0),
                first_ts: None,
                last_ts: None,
                entries: 0,
                size: 1,
                sha256: String::new(),
                path: "log/x".into(),
                gap: false,
                now,
            },
            "n1",
        )
        .await
        .expect("slice");
        let text = m.render(&cat).await;
        assert!(
            text.contains(&format!(
                "ddsvault_log_backup_stored_until_timestamp_seconds{{instance=\"dds-1\"}} {end}"
            )),
            "{text}"
        );
        let lag: i64 = text
            .lines()
            .find_map(|l| l.strip_prefix("ddsvault_log_backup_lag_seconds{instance=\"dds-1\"} "))
            .and_then(|v| v.parse().ok())
            .expect("lag line");
        assert!((30..40).contains(&lag), "{lag}");
        for line in [
            "ddsvault_api_calls_total{action=\"CreateBackup\",code=\"OK\"} 1",
            "ddsvault_api_calls_total{action=\"CreateBackup\",code=\"Throttling.User\"} 1",
            "ddsvault_api_throttled_calls_total{action=\"CreateBackup\",scope=\"user\"} 1",
            "ddsvault_api_call_duration_seconds_count{action=\"CreateBackup\"} 2",
            "ddsvault_jobs_finished_total{kind=\"backup\",method=\"Logical\",state=\"Success\"} 1",
            "ddsvault_jobs_finished_total{kind=\"backup\",method=\"Logical\",state=\"Failed\"} 1",
            "ddsvault_job_bytes_sum{kind=\"backup\",method=\"Logical\"} 5000.0",
            "ddsvault_job_duration_seconds_sum{kind=\"backup\",method=\"Logical\",state=\"Success\"} 3.0",
            "ddsvault_scheduled_slots_missed_total{instance=\"dds-1\",schedule=\"standard\",reason=\"active_job\"} 1",
            "ddsvault_catalog_up 1",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        // An empty catalog has no job groups.
        assert!(!text.contains("ddsvault_jobs{"), "{text}");
    }
}
