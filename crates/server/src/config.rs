//! The configuration file (TOML). Every key is documented in docs/configuration.md, whose example is loaded by a test.
//!
//! Durations are `std::time::Duration` fields read from the integer keys the file has always had: the key keeps
//! its unit in its name (`lease_secs`, `poll_ms`), the Rust field drops it (`lease`, `poll`) and `serde_with`'s
//! `DurationSeconds<u64>` / `DurationMilliSeconds<u64>` convert, so a negative or non-integer value fails with
//! serde's own "expected u64" error pointing at the key. Validation messages quote the key and the number in
//! the unit the user wrote (`jobs.lease_secs = 1 is outside 2..=3600`), hence the `as_secs()` / `as_millis()`
//! in `Config::validate`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_with::{serde_as, DurationMilliSeconds, DurationSeconds};

use crate::error::ConfigError;

/// Default listen address: loopback only, so a fresh start never exposes the API.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default `region_id`.
pub const DEFAULT_REGION: &str = "cn-hangzhou";
/// Default `data_dir`.
pub const DEFAULT_DATA_DIR: &str = "./ddsvault-data";
/// Alibaba accepts request timestamps within 15 minutes of its clock.
pub const DEFAULT_SKEW: Duration = Duration::from_secs(900);

/// Storage types Dds knows; the `cloud_*` ones are cloud disks, which take only snapshot backups.
pub const STORAGE_TYPES: [&str; 5] = [
    "local_ssd",
    "cloud_essd1",
    "cloud_essd2",
    "cloud_essd3",
    "cloud_auto",
];

/// The whole configuration file.
#[serde_as]
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `host:port` the API listens on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// `host:port` of the HTTPS listener (needs `tls_cert` and `tls_key`); none by default. Plain `listen` stays on.
    #[serde(default)]
    pub listen_tls: Option<String>,
    /// PEM certificate chain (leaf first) for `listen_tls`.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for `listen_tls`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Region reported in answers and used in resource ARNs.
    #[serde(default = "default_region")]
    pub region_id: String,
    /// Account id used in ARNs and AccessDeniedDetail. Generated once and stored in the catalog when absent.
    #[serde(default)]
    pub account_id: Option<String>,
    /// Holds the SQLite catalog and the local repository unless `catalog_url` / `[repository]` say otherwise.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// This process's node id (owner of the jobs it runs); default: generated on the first start and kept in
    /// `<data_dir>/node_id`. Every process sharing a catalog needs its own.
    #[serde(default)]
    pub node_id: Option<String>,
    /// Catalog location; default `sqlite://<data_dir>/catalog.db`.
    #[serde(default)]
    pub catalog_url: Option<String>,
    /// Where backup files go.
    #[serde(default)]
    pub repository: RepositoryConfig,
    /// Accepted clock difference for signed requests (both directions); `timestamp_skew_secs`, in seconds.
    #[serde(rename = "timestamp_skew_secs", default = "default_skew")]
    #[serde_as(as = "DurationSeconds<u64>")]
    pub timestamp_skew: Duration,
    /// `HostId` in error bodies; default: the listen address.
    #[serde(default)]
    pub host_id: Option<String>,
    /// Base URL put in `BackupDownloadURL` (e.g. `https://backup.example.com`); default `http://<listen address>`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Lifetime of download URLs; `download_url_ttl_secs`, in seconds.
    #[serde(rename = "download_url_ttl_secs", default = "default_url_ttl")]
    #[serde_as(as = "DurationSeconds<u64>")]
    pub download_url_ttl: Duration,
    /// Backup engine tuning.
    #[serde(default)]
    pub backup: BackupConfig,
    /// Job leases (docs/deployment.md).
    #[serde(default)]
    pub jobs: JobsConfig,
    /// Retention clean-up.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Automatic backups.
    #[serde(default)]
    pub scheduler: SchedulerConfig,
    /// Continuous log (oplog) backup of instances whose policy has `EnableBackupLog=1` (docs/pitr.md).
    #[serde(default)]
    pub log_backup: LogBackupConfig,
    /// New instances restored from a backup (CreateDBInstance, docs/provisioning.md); none by default.
    #[serde(default)]
    pub provisioning: Option<ProvisioningConfig>,
    /// File holding the 256-bit master key (64 hex digits) that seals AccessKey secrets in the catalog.
    /// `DDSVAULT_MASTER_KEY` wins over it; with neither, `<data_dir>/master.key` is generated on first start.
    #[serde(default)]
    pub secret_key_file: Option<PathBuf>,
    /// Flow control per AccessKey and per action.
    #[serde(default)]
    pub throttling: ThrottlingConfig,
    /// Connection and request-path bounds.
    #[serde(default)]
    pub server: ServerConfig,
    /// `[[access_keys]]`: AccessKeys declared by the file (synchronised into the catalog at start).
    #[serde(default)]
    pub access_keys: Vec<AccessKeyConfig>,
    /// `[[ram_users]]`: RAM users declared by the file.
    #[serde(default)]
    pub ram_users: Vec<RamUserConfig>,
    /// `[[ram_policies]]`: custom RAM policies declared by the file.
    #[serde(default)]
    pub ram_policies: Vec<RamPolicyConfig>,
    /// `[[instances]]`: the configured instances.
    #[serde(default)]
    pub instances: Vec<InstanceConfig>,
    /// `/metrics`, `/healthz`, `/readyz` (docs/monitoring.md).
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Webhook notifications (docs/monitoring.md).
    #[serde(default)]
    pub alerts: AlertsConfig,
}

/// `[metrics]`: the unauthenticated monitoring endpoints `/metrics`, `/healthz` and `/readyz`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve them at all (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// `host:port` of a plain-HTTP listener of their own; then the API listeners do not serve them. Default:
    /// served on the API listeners (`listen`, `listen_tls`).
    #[serde(default)]
    pub listen: Option<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
        }
    }
}

/// The events an alert webhook can be sent.
pub const ALERT_EVENTS: [&str; 4] = [
    "job_failed",
    "slot_missed",
    "repository_error",
    "drill_failed",
];

/// `[alerts]`: where notifications go and how hard ddsvault tries.
#[serde_as]
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// `[[alerts.webhooks]]`: where notifications are sent.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// Notifications waiting per webhook; a new one finding the queue full is dropped (counted and logged).
    /// 1..=100000, default 1000.
    #[serde(default = "default_alert_queue")]
    pub queue_capacity: usize,
    /// Attempts per notification, 1..=20 (default 5); the waits between them double from 1 s up to 60 s.
    #[serde(default = "default_alert_attempts")]
    pub max_attempts: u32,
    /// `timeout_secs`: seconds one attempt may take (connecting, sending, the receiver's answer), 1..=300
    /// (default 10).
    #[serde(rename = "timeout_secs", default = "default_alert_timeout")]
    #[serde_as(as = "DurationSeconds<u64>")]
    pub timeout: Duration,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            webhooks: Vec::new(),
            queue_capacity: default_alert_queue(),
            max_attempts: default_alert_attempts(),
            timeout: default_alert_timeout(),
        }
    }
}

fn default_alert_queue() -> usize {
    1000
}
fn default_alert_attempts() -> u32 {
    5
}
fn default_alert_timeout() -> Duration {
    Duration::from_secs(10)
}

/// `[[alerts.webhooks]]`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL the notifications are POSTed to. Never logged (it may carry a token).
    pub url: String,
    /// With a secret, each POST carries `X-Ddsvault-Signature: sha256=<hex HMAC-SHA256 of the body>`.
    #[serde(default)]
    pub secret: Option<String>,
    /// The events sent to this webhook (`job_failed`, `slot_missed`, `repository_error`, `drill_failed`); default all.
    #[serde(default)]
    pub events: Vec<String>,
}

impl std::fmt::Debug for WebhookConfig {
    // The URL may carry a token and the secret signs notifications: neither reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &"***")
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .field("events", &self.events)
            .finish()
    }
}

/// `[repository]`: where backup files are kept (docs/s3-repository.md).
#[serde_as]
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// Local directory; default `<data_dir>/repository`. Same as `url = "file:///path"`.
    #[serde(default)]
    pub local_path: Option<PathBuf>,
    /// `file:///path` or `s3://BUCKET/PREFIX` (S3, MinIO, Alibaba OSS through its S3 endpoint).
    #[serde(default)]
    pub url: Option<String>,
    /// S3 service endpoint, e.g. `http://127.0.0.1:9000`, `https://oss-cn-hangzhou.aliyuncs.com`; default:
    /// `AWS_ENDPOINT` or AWS S3.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// S3 region; default `AWS_REGION`, else `us-east-1`.
    #[serde(default)]
    pub region: Option<String>,
    /// S3 access key id; default `AWS_ACCESS_KEY_ID`.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// S3 secret; default `AWS_SECRET_ACCESS_KEY`. Never logged.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Allow an `http://` endpoint.
    #[serde(default)]
    pub allow_http: bool,
    /// Virtual-hosted style requests (`https://BUCKET.endpoint/key`); required by Alibaba OSS.
    #[serde(default)]
    pub virtual_hosted_style: bool,
    /// Multipart part size in MiB (5–5120, default 8).
    #[serde(default)]
    pub part_size_mib: Option<u64>,
    /// Parts of one upload in flight at once (1–64, default 1). One upload buffers at most about
    /// `6 MiB + parts_in_flight × part_size`.
    #[serde(default)]
    pub parts_in_flight: Option<usize>,
    /// Retries of a request that failed transiently (throttling, 5xx, timeouts), default 10.
    #[serde(default)]
    pub max_retries: Option<usize>,
    /// `retry_timeout_secs`: no retry starts after this many seconds since the first attempt, default 180.
    #[serde(rename = "retry_timeout_secs", default)]
    #[serde_as(as = "Option<DurationSeconds<u64>>")]
    pub retry_timeout: Option<Duration>,
    /// `request_timeout_secs`: timeout of one HTTP request in seconds (a part upload included), default 120.
    #[serde(rename = "request_timeout_secs", default)]
    #[serde_as(as = "Option<DurationSeconds<u64>>")]
    pub request_timeout: Option<Duration>,
    /// `retry_initial_backoff_ms`: first retry delay in milliseconds (upper end of its jitter range), default 1000.
    #[serde(rename = "retry_initial_backoff_ms", default)]
    #[serde_as(as = "Option<DurationMilliSeconds<u64>>")]
    pub retry_initial_backoff: Option<Duration>,
    /// `retry_max_backoff_secs`: longest delay between two attempts in seconds, default 20.
    #[serde(rename = "retry_max_backoff_secs", default)]
    #[serde_as(as = "Option<DurationSeconds<u64>>")]
    pub retry_max_backoff: Option<Duration>,
    /// `lost_upload_grace_secs`: multipart uploads under the prefix older than this many seconds that no running
    /// upload owns are aborted at start and by every GC pass, default 86400 (24 h).
    #[serde(rename = "lost_upload_grace_secs", default)]
    #[serde_as(as = "Option<DurationSeconds<u64>>")]
    pub lost_upload_grace: Option<Duration>,
    /// Create manifests with `If-None-Match: *` (default true); set false for a server that rejects it.
    #[serde(default)]
    pub conditional_create: Option<bool>,
    /// Client-side encryption: a file holding the 32-byte master key (64 hex digits). Every object is sealed
    /// with AES-256-GCM under its own data key wrapped by it (docs/s3-repository.md). Losing it loses the backups.
    #[serde(default)]
    pub encryption_key_file: Option<PathBuf>,
    /// In a `[[repository.copies]]` entry: the Dds region name of the copy (`DestRegion`), e.g. `cn-shanghai`.
    #[serde(default)]
    pub dest_region: Option<String>,
    /// `[[repository.copies]]`: second repositories receiving a verified copy of every new backup
    /// (docs/s3-repository.md). Same keys as `[repository]`, plus `dest_region`.
    #[serde(default)]
    pub copies: Vec<RepositoryConfig>,
}

impl std::fmt::Debug for RepositoryConfig {
    // Secrets never reach logs, even through `{:?}` of the whole configuration.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepositoryConfig")
            .field("local_path", &self.local_path)
            .field("url", &self.url)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "***"),
            )
            .field("allow_http", &self.allow_http)
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .finish_non_exhaustive()
    }
}

impl RepositoryConfig {
    /// Where the repository is, from `url` (or `local_path`, or the default under `data_dir`).
    ///
    /// # Errors
    /// An unsupported URL scheme, both `url` and `local_path`, S3 settings without an `s3://` URL.
    pub fn location(
        &self,
        data_dir: &Path,
    ) -> Result<ddsvault_repo::RepositoryLocation, ConfigError> {
        use ddsvault_repo::RepositoryLocation;
        let s3_only = self.endpoint.is_some()
            || self.region.is_some()
            || self.access_key_id.is_some()
            || self.secret_access_key.is_some()
            || self.allow_http
            || self.virtual_hosted_style
            || self.conditional_create.is_some()
            || self.retry_initial_backoff.is_some()
            || self.retry_max_backoff.is_some()
            || self.lost_upload_grace.is_some();
        let url = match (&self.url, &self.local_path) {
            (Some(_), Some(_)) => {
                return Err(ConfigError(
                    "[repository] url and local_path are alternatives: set one".into(),
                ))
            }
            (Some(u), None) => u.as_str(),
            (None, path) => {
                if s3_only {
                    return Err(ConfigError(
                        "[repository] endpoint/region/credentials need url = \"s3://BUCKET/PREFIX\"".into(),
                    ));
                }
                let dir = path.clone().unwrap_or_else(|| data_dir.join("repository"));
                return Ok(RepositoryLocation::Local(dir));
            }
        };
        if let Some(path) = url.strip_prefix("file://") {
            if s3_only {
                return Err(ConfigError(
                    "[repository] endpoint/region/credentials apply to s3:// URLs only".into(),
                ));
            }
            if !path.starts_with('/') {
                return Err(ConfigError(format!(
                    "[repository] url = {url:?}: a file URL needs an absolute path (file:///path)"
                )));
            }
            return Ok(RepositoryLocation::Local(PathBuf::from(path)));
        }
        if !url.starts_with("s3://") {
            return Err(ConfigError(format!(
                "[repository] url = {url:?}: supported are file:///path and s3://BUCKET/PREFIX"
            )));
        }
        let mut s = ddsvault_repo::S3Settings::from_url(url)
            .map_err(|e| ConfigError(format!("[repository] url: {e}")))?;
        s.endpoint = self.endpoint.clone();
        s.region = self.region.clone();
        s.access_key_id = self.access_key_id.clone();
        s.secret_access_key = self.secret_access_key.clone();
        s.allow_http = self.allow_http;
        s.virtual_hosted_style = self.virtual_hosted_style;
        if let Some(n) = self.max_retries {
            s.max_retries = n;
        }
        if let Some(t) = self.retry_timeout {
            s.retry_timeout = t;
        }
        if let Some(t) = self.request_timeout {
            if t.is_zero() {
                return Err(ConfigError(
                    "[repository] request_timeout_secs must be > 0".into(),
                ));
            }
            s.request_timeout = t;
        }
        if let Some(t) = self.retry_initial_backoff {
            if t.is_zero() {
                return Err(ConfigError(
                    "[repository] retry_initial_backoff_ms must be > 0".into(),
                ));
            }
            s.backoff_initial = t;
        }
        if let Some(t) = self.retry_max_backoff {
            s.backoff_max = t;
        }
        if s.backoff_max < s.backoff_initial {
            return Err(ConfigError(format!(
                "[repository] retry_max_backoff_secs ({} s) is shorter than retry_initial_backoff_ms ({} ms)",
                s.backoff_max.as_secs(),
                s.backoff_initial.as_millis()
            )));
        }
        if let Some(t) = self.lost_upload_grace {
            s.lost_upload_grace = t;
        }
        if let Some(c) = self.conditional_create {
            s.conditional_create = c;
        }
        if let Some(e) = &s.endpoint {
            if e.starts_with("http://") && !s.allow_http {
                return Err(ConfigError(format!(
                    "[repository] endpoint {e:?} is plain http: set allow_http = true to use it"
                )));
            }
        }
        Ok(RepositoryLocation::S3(Box::new(s)))
    }

    /// The copy repositories by region, checked: each names a distinct `dest_region` and nests no copies; the
    /// main repository names none.
    ///
    /// # Errors
    /// A missing, repeated or misplaced `dest_region`, nested copies, or an invalid copy location.
    pub fn copy_locations(
        &self,
        data_dir: &Path,
    ) -> Result<
        Vec<(
            String,
            ddsvault_repo::RepositoryLocation,
            ddsvault_repo::UploadTuning,
        )>,
        ConfigError,
    > {
        if self.dest_region.is_some() {
            return Err(ConfigError(
                "[repository] dest_region belongs in a [[repository.copies]] entry".into(),
            ));
        }
        let mut out: Vec<(String, _, _)> = Vec::new();
        for c in &self.copies {
            let region = c
                .dest_region
                .as_deref()
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .ok_or_else(|| {
                    ConfigError(
                        "[[repository.copies]] needs dest_region (e.g. \"cn-shanghai\")".into(),
                    )
                })?;
            if !c.copies.is_empty() {
                return Err(ConfigError(
                    "[[repository.copies]] entries cannot have copies of their own".into(),
                ));
            }
            if out.iter().any(|(r, _, _)| r == region) {
                return Err(ConfigError(format!(
                    "[[repository.copies]] dest_region {region:?} is named twice"
                )));
            }
            let location = c
                .location(data_dir)
                .map_err(|e| ConfigError(format!("[[repository.copies]] {region}: {}", e.0)))?;
            out.push((region.to_string(), location, c.tuning()?));
        }
        Ok(out)
    }

    /// Part size and parts in flight of uploads.
    ///
    /// # Errors
    /// Values out of range.
    pub fn tuning(&self) -> Result<ddsvault_repo::UploadTuning, ConfigError> {
        let mut t = ddsvault_repo::UploadTuning::default();
        if let Some(mib) = self.part_size_mib {
            if !(5..=5120).contains(&mib) {
                return Err(ConfigError(format!(
                    "[repository] part_size_mib = {mib}: must be 5..=5120 (S3's part limits)"
                )));
            }
            t.part_size = usize::try_from(mib * 1024 * 1024)
                .map_err(|_| ConfigError("[repository] part_size_mib too large".into()))?;
        }
        if let Some(n) = self.parts_in_flight {
            if !(1..=64).contains(&n) {
                return Err(ConfigError(format!(
                    "[repository] parts_in_flight = {n}: must be 1..=64"
                )));
            }
            t.max_in_flight_parts = n;
        }
        Ok(t)
    }
}

/// `[backup]`: how backups are made.
#[serde_as]
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// `zstd` (default) or `gzip` for logical archives.
    #[serde(default)]
    pub compression: ddsvault_catalog::ArchiveCompression,
    /// zstd level, 1–19.
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
    /// Collections dumped at once by one logical backup.
    #[serde(default = "default_parallel")]
    pub parallel_collections: usize,
    /// Jobs one ddsvault process runs at once.
    #[serde(default = "default_jobs")]
    pub max_concurrent_jobs: usize,
    /// `stall_timeout_secs`: a job whose progress (phase, documents, bytes, oplog entries) does not change for
    /// this many seconds is failed by its watchdog (`Job.Stalled`), releasing what it holds. 2..=86400.
    #[serde(rename = "stall_timeout_secs", default = "default_stall_timeout")]
    #[serde_as(as = "DurationSeconds<u64>")]
    pub stall_timeout: Duration,
}

fn default_stall_timeout() -> Duration {
    ddsvault_jobs::progress::DEFAULT_STALL_TIMEOUT
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            compression: ddsvault_catalog::ArchiveCompression::default(),
            zstd_level: default_zstd_level(),
            parallel_collections: default_parallel(),
            max_concurrent_jobs: default_jobs(),
            stall_timeout: default_stall_timeout(),
        }
    }
}

/// `[jobs]`: how long a claimed job stays its process's without renewal (docs/deployment.md).
#[serde_as]
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    /// `lease_secs`: a process renews the lease of each job it runs every third of this; a job whose lease ran
    /// out (its process died, was paused or lost the catalog) is taken over and failed by any process within this
    /// plus min(half of it, 5) seconds. 2..=3600, default 30. Clocks of the processes sharing a catalog must agree
    /// to well within it.
    #[serde(rename = "lease_secs", default = "default_lease")]
    #[serde_as(as = "DurationSeconds<u64>")]
    pub lease: Duration,
}

fn default_lease() -> Duration {
    ddsvault_jobs::DEFAULT_LEASE
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            lease: default_lease(),
        }
    }
}

/// `[retention]`: the garbage collector that deletes expired backups.
#[serde_as]
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// `gc_interval_secs`: seconds between two collector passes (a pass also runs at start), 1..=86400.
    #[serde(rename = "gc_interval_secs", default = "default_gc_interval")]
    #[serde_as(as = "DurationSeconds<u64>")]
    pub gc_interval: Duration,
    /// `lock_cooling_off_secs`: seconds a retention lock stays on after an unlock request, 1..=31536000 (default
    /// 24 h).
    #[serde(rename = "lock_cooling_off_secs", default = "default_lock_cooling_off")]
    #[serde_as(as = "DurationSeconds<u64>")]
    pub lock_cooling_off: Duration,
    /// `chunk_grace_secs`: seconds an orphan snapshot chunk must have existed before the collector sweeps it,
    /// 0..=604800 (default 1 h): protects the chunks a snapshot in progress has just written.
    #[serde(rename = "chunk_grace_secs", default = "default_chunk_grace")]
    #[serde_as(as = "DurationSeconds<u64>")]
    pub chunk_grace: Duration,
    /// Days audit records are kept, 0..=36500 (0: forever; default 180). Stays a count of days rather than a
    /// `Duration`: 0 is not a zero-length period but "keep forever", the collector takes whole days
    /// (`Gc::with_audit_retention`), and serde_with has no day unit to read the key with.
    #[serde(default = "default_audit_retention")]
    pub audit_retention_days: u32,
    /// `scrub_interval_secs`: seconds between two scrub passes (every chunk re-hashed, every backup verified; see
    /// docs/integrity.md), 0 = never (default; `ddsvault scrub` runs one by hand), else 3600..=31536000. See
    /// [`RetentionConfig::scrub_every`].
    #[serde(rename = "scrub_interval_secs", default)]
    #[serde_as(as = "DurationSeconds<u64>")]
    pub scrub_interval: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            gc_interval: default_gc_interval(),
            lock_cooling_off: default_lock_cooling_off(),
            chunk_grace: default_chunk_grace(),
            audit_retention_days: default_audit_retention(),
            scrub_interval: Duration::ZERO,
        }
    }
}

impl RetentionConfig {
    /// The scrub interval, or `None` when scrubbing is not scheduled (`scrub_interval_secs = 0`).
    pub fn scrub_every(&self) -> Option<Duration> {
        (!self.scrub_interval.is_zero()).then_some(self.scrub_interval)
    }
}

fn default_audit_retention() -> u32 {
    180
}

fn default_lock_cooling_off() -> Duration {
    Duration::from_secs(86_400)
}

fn default_chunk_grace() -> Duration {
    Duration::from_secs(3600)
}

fn default_gc_interval() -> Duration {
    Duration::from_secs(600)
}

/// `[server]`: bounds on connections and on what one client can hold (see docs/reliability.md).
#[serde_as]
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// `header_timeout_secs`: seconds a connection gets to send a complete request head: from its opening, and
    /// again after each answer while it is kept alive (so this is the keep-alive idle limit too). 1..=300.
    #[serde(rename = "header_timeout_secs", default = "default_header_timeout")]
    #[serde_as(as = "DurationSeconds<u64>")]
    pub header_timeout: Duration,
    /// `idle_timeout_secs`: seconds a request's body may take to arrive, and an answer may wait for a client that
    /// does not read it. 1..=3600.
    #[serde(rename = "idle_timeout_secs", default = "default_idle_timeout")]
    #[serde_as(as = "DurationSeconds<u64>")]
    pub idle_timeout: Duration,
    /// Connections served at once (plain and TLS each). At the cap, the connection that has waited longest for
    /// a request head is closed to make room. 16..=1000000; lowered at start to what the file-descriptor limit
    /// allows.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Signature nonces remembered per AccessKey (replay window: 2 × timestamp_skew_secs). 1..=100000000.
    #[serde(default = "default_nonces_per_key")]
    pub nonces_per_access_key: usize,
    /// Signature nonces remembered over all keys; when full, only keys below their fair share may add.
    /// 1..=100000000.
    #[serde(default = "default_nonce_capacity")]
    pub nonce_capacity: usize,
    /// Also record signature nonces in the catalog, so a request replayed to another process sharing the catalog
    /// is refused (one catalog write per signed request). Unset: on when the catalog is PostgreSQL (several
    /// machines), off for SQLite (one process).
    #[serde(default)]
    pub shared_nonces: Option<bool>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            header_timeout: default_header_timeout(),
            idle_timeout: default_idle_timeout(),
            max_connections: default_max_connections(),
            nonces_per_access_key: default_nonces_per_key(),
            nonce_capacity: default_nonce_capacity(),
            shared_nonces: None,
        }
    }
}

fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_connections() -> usize {
    4096
}
fn default_nonces_per_key() -> usize {
    ddsvault_api::DEFAULT_NONCES_PER_KEY
}
fn default_nonce_capacity() -> usize {
    ddsvault_api::DEFAULT_NONCE_CAPACITY
}

/// `[scheduler]`: automatic backups following each instance's backup policy.
#[serde_as]
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Run automatic backups at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// `tick_secs`: seconds between two looks at the policies, 1..=600.
    #[serde(rename = "tick_secs", default = "default_tick")]
    #[serde_as(as = "DurationSeconds<u64>")]
    pub tick: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            tick: default_tick(),
        }
    }
}

/// `[log_backup]`: the oplog followers (docs/pitr.md).
#[serde_as]
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogBackupConfig {
    /// Run followers at all (an instance is followed only when its policy has `EnableBackupLog=1`).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// `slice_secs`: a slice is closed after this many seconds, 1..=3600.
    #[serde(rename = "slice_secs", default = "default_slice")]
    #[serde_as(as = "DurationSeconds<u64>")]
    pub slice: Duration,
    /// ... or once it holds this many MiB of entries, 1..=1024.
    #[serde(default = "default_slice_mib")]
    pub slice_mib: usize,
    /// `poll_ms`: milliseconds between two reads of the oplog at the most, 100..=60000 (the follower also wakes
    /// when the next second settles).
    #[serde(rename = "poll_ms", default = "default_poll")]
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub poll: Duration,
    /// `settle_ms`: milliseconds a second must have been over on the server's clock before its oplog entries are
    /// taken, 100..=60000: more than FerretDB's longest delay between choosing an entry's `ts` and the entry
    /// being visible (docs/pitr.md).
    #[serde(rename = "settle_ms", default = "default_settle")]
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub settle: Duration,
}

fn default_slice() -> Duration {
    Duration::from_secs(60)
}
fn default_slice_mib() -> usize {
    16
}
fn default_poll() -> Duration {
    Duration::from_secs(1)
}
fn default_settle() -> Duration {
    ddsvault_jobs::pitr::DEFAULT_SETTLE
}

impl Default for LogBackupConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            slice: default_slice(),
            slice_mib: default_slice_mib(),
            poll: default_poll(),
            settle: default_settle(),
        }
    }
}

impl LogBackupConfig {
    /// The follower settings.
    pub fn settings(&self) -> ddsvault_jobs::pitr::LogSettings {
        ddsvault_jobs::pitr::LogSettings {
            // The follower counts slice ages in whole seconds (also against oplog timestamps, which are seconds).
            slice_secs: self.slice.as_secs(),
            slice_bytes: self.slice_mib.saturating_mul(1024 * 1024),
            poll: self.poll,
            settle: self.settle,
            ..ddsvault_jobs::pitr::LogSettings::default()
        }
    }
}

/// `[provisioning]`: how CreateDBInstance runs a new instance (docs/provisioning.md).
#[serde_as]
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisioningConfig {
    /// The server command, split on whitespace (quotes group); `{data_dir}`, `{dir}`, `{port}` and `{id}` are
    /// replaced in each argument. Must use `{port}` (listening on 127.0.0.1) and `{data_dir}`.
    pub command: String,
    /// First and last port handed to new instances (on 127.0.0.1).
    #[serde(default = "default_port_min")]
    pub port_min: u16,
    /// See `port_min`; default 27199.
    #[serde(default = "default_port_max")]
    pub port_max: u16,
    /// Where instance directories go; default `<data_dir>/instances`.
    #[serde(default)]
    pub base_dir: Option<PathBuf>,
    /// `start_timeout_secs`: how long a new server may take to answer `ping`, 1..=600 seconds.
    #[serde(rename = "start_timeout_secs", default = "default_start_timeout")]
    #[serde_as(as = "DurationSeconds<u64>")]
    pub start_timeout: Duration,
}

fn default_port_min() -> u16 {
    27100
}
fn default_port_max() -> u16 {
    27199
}
fn default_start_timeout() -> Duration {
    Duration::from_secs(30)
}

impl ProvisioningConfig {
    /// The provisioner settings (`data_dir`: ddsvault's, for the default base directory).
    ///
    /// # Errors
    /// A template that does not split (validated at load, so only for a hand-built config).
    pub fn settings(
        &self,
        data_dir: &Path,
    ) -> Result<ddsvault_jobs::provision::ProvisionSettings, ConfigError> {
        Ok(ddsvault_jobs::provision::ProvisionSettings {
            command: ddsvault_jobs::provision::split_command(&self.command)
                .map_err(|e| ConfigError(format!("provisioning.command: {e}")))?,
            ports: self.port_min..=self.port_max,
            base_dir: self
                .base_dir
                .clone()
                .unwrap_or_else(|| data_dir.join("instances")),
            start_timeout: self.start_timeout,
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(format!("provisioning: {m}")));
        let args = ddsvault_jobs::provision::split_command(&self.command)
            .map_err(|e| ConfigError(format!("provisioning.command: {e}")))?;
        if args.is_empty() {
            return err("command is empty".into());
        }
        for needed in ["{port}", "{data_dir}"] {
            if !args.iter().any(|a| a.contains(needed)) {
                return err(format!("command must use {needed}"));
            }
        }
        for a in &args {
            let mut rest = a.as_str();
            while let Some(open) = rest.find('{') {
                let Some(close) = rest[open..].find('}') else {
                    break;
                };
                let name = &rest[open..open + close + 1];
                if !ddsvault_jobs::provision::PLACEHOLDERS.contains(&name) {
                    return err(format!(
                        "unknown placeholder {name} in command (known: {})",
                        ddsvault_jobs::provision::PLACEHOLDERS.join(", ")
                    ));
                }
                rest = &rest[open + close + 1..];
            }
        }
        if self.port_min < 1024 || self.port_min > self.port_max {
            return err(format!(
                "port_min = {} and port_max = {}: need 1024 <= port_min <= port_max",
                self.port_min, self.port_max
            ));
        }
        if !(1..=600).contains(&self.start_timeout.as_secs()) {
            return err(format!(
                "start_timeout_secs = {} is outside 1..=600",
                self.start_timeout.as_secs()
            ));
        }
        Ok(())
    }
}

/// A token bucket: `burst` calls at once, refilled at `rate` calls per second.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Calls per second refilled.
    pub rate: f64,
    /// Calls allowed at once (the bucket's size).
    pub burst: u32,
}

impl RateLimit {
    /// `burst` as a float, for the bucket arithmetic.
    pub fn burst_f64(self) -> f64 {
        f64::from(self.burst)
    }
}

/// `[throttling]`: Alibaba-style flow control (`Throttling.User` per AccessKey, `Throttling.Api` per action).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottlingConfig {
    /// Whether flow control applies at all; default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Each AccessKey's own limit, over all actions.
    #[serde(default = "default_per_key")]
    pub per_access_key: RateLimit,
    /// Each action's limit, over all AccessKeys, unless `actions` names it.
    #[serde(default = "default_per_action")]
    pub per_action: RateLimit,
    /// Per-action overrides, keyed by action name (e.g. `CreateBackup`).
    #[serde(default)]
    pub actions: HashMap<String, RateLimit>,
}

impl Default for ThrottlingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            per_access_key: default_per_key(),
            per_action: default_per_action(),
            actions: HashMap::new(),
        }
    }
}

fn default_per_key() -> RateLimit {
    RateLimit {
        rate: 100.0,
        burst: 200,
    }
}

fn default_per_action() -> RateLimit {
    RateLimit {
        rate: 500.0,
        burst: 1000,
    }
}

fn check_limit(name: &str, l: RateLimit) -> Result<(), ConfigError> {
    if !(l.rate.is_finite() && l.rate > 0.0 && l.rate <= 1_000_000.0) {
        return Err(ConfigError(format!(
            "{name}.rate = {} must be a number of calls per second in (0, 1000000]",
            l.rate
        )));
    }
    if !(1..=1_000_000).contains(&l.burst) {
        return Err(ConfigError(format!(
            "{name}.burst = {} is outside 1..=1000000",
            l.burst
        )));
    }
    Ok(())
}

fn default_true() -> bool {
    true
}

fn default_tick() -> Duration {
    Duration::from_secs(30)
}

/// `[[access_keys]]`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessKeyConfig {
    /// The AccessKeyId.
    pub id: String,
    /// The AccessKeySecret; never logged.
    pub secret: String,
    /// `root` for the account itself, otherwise the name of a `[[ram_users]]` entry.
    pub user: String,
}

impl std::fmt::Debug for AccessKeyConfig {
    // Secrets never reach logs, even through `{:?}` of the whole configuration.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKeyConfig")
            .field("id", &self.id)
            .field("secret", &"***")
            .field("user", &self.user)
            .finish()
    }
}

/// `[[ram_users]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RamUserConfig {
    /// The user name.
    pub name: String,
    /// Names of the policies attached to the user.
    #[serde(default)]
    pub policies: Vec<String>,
}

/// `[[ram_policies]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RamPolicyConfig {
    /// The policy name.
    pub name: String,
    /// A RAM policy document (JSON).
    pub document: String,
}

/// `[[instances]]`: a MongoDB-wire deployment ddsvault backs up.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// The instance id (`DBInstanceId`).
    pub id: String,
    /// MongoDB connection string; may hold a password, so it is never logged or returned.
    pub uri: String,
    /// The Dds `StorageType`, one of [`STORAGE_TYPES`]; default `local_ssd`.
    #[serde(default = "default_storage_type")]
    pub storage_type: String,
    /// Free text answered as `DBInstanceDescription`; default empty.
    #[serde(default)]
    pub description: String,
    /// The node's data directory as ddsvault sees it (ddsvault must run on that host, or have it mounted):
    /// needed by Physical and Snapshot backups, which copy data files.
    #[serde(default)]
    pub data_path: Option<PathBuf>,
    /// Turns automatic backups on with this policy (stored at the first start that finds no policy for the
    /// instance; ModifyBackupPolicy changes it afterwards). Without it (and without ModifyBackupPolicy) the
    /// instance has no automatic backups.
    #[serde(default)]
    pub policy: Option<InstancePolicyConfig>,
    /// Pins the instance's jobs to the node with this `node_id` (the host that can read `data_path`): no other
    /// node claims them, and they wait while that node is down. Unset: any node that knows the instance.
    #[serde(default)]
    pub node: Option<String>,
}

/// `[instances.policy]`: the standard backup policy, with DescribeBackupPolicy's defaults for absent keys.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstancePolicyConfig {
    /// `HH:mmZ-HH:mmZ` (UTC, one hour), e.g. `03:00Z-04:00Z`.
    #[serde(default)]
    pub preferred_backup_time: Option<String>,
    /// Comma-separated weekdays, e.g. `Monday,Thursday`.
    #[serde(default)]
    pub preferred_backup_period: Option<String>,
    /// Days (7–730) or -1 (permanent). A count of days, not a `Duration`: it is Dds's `BackupRetentionPeriod`,
    /// stored and answered by the API in days, with -1 as a value of its own.
    #[serde(default)]
    pub backup_retention_period: Option<i64>,
}

impl InstancePolicyConfig {
    /// The policy to store.
    pub fn to_policy(&self) -> ddsvault_catalog::BackupPolicy {
        let mut p = ddsvault_catalog::BackupPolicy::default();
        if let Some(t) = &self.preferred_backup_time {
            p.preferred_backup_time = t.clone();
        }
        if let Some(d) = &self.preferred_backup_period {
            p.preferred_backup_period = ddsvault_catalog::policy::parse_backup_period(d)
                .map(|days| ddsvault_catalog::policy::format_backup_period(&days))
                .unwrap_or_else(|_| d.clone());
        }
        if let Some(r) = self.backup_retention_period {
            p.backup_retention_period = r;
        }
        p
    }

    fn validate(&self, id: &str) -> Result<(), ConfigError> {
        use ddsvault_catalog::policy::{parse_backup_period, parse_backup_window};
        if let Some(t) = &self.preferred_backup_time {
            parse_backup_window(t).map_err(|e| {
                ConfigError(format!("instance {id}: policy.preferred_backup_time: {e}"))
            })?;
        }
        if let Some(d) = &self.preferred_backup_period {
            parse_backup_period(d).map_err(|e| {
                ConfigError(format!(
                    "instance {id}: policy.preferred_backup_period: {e}"
                ))
            })?;
        }
        if let Some(r) = self.backup_retention_period {
            if r != -1 && !(7..=730).contains(&r) {
                return Err(ConfigError(format!(
                    "instance {id}: policy.backup_retention_period = {r}: valid values are 7 to 730, or -1"
                )));
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for InstanceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceConfig")
            .field("id", &self.id)
            .field("uri", &"***")
            .field("storage_type", &self.storage_type)
            .field("data_path", &self.data_path)
            .field("node", &self.node)
            .finish()
    }
}

fn default_listen() -> String {
    DEFAULT_LISTEN.into()
}
fn default_region() -> String {
    DEFAULT_REGION.into()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from(DEFAULT_DATA_DIR)
}
fn default_skew() -> Duration {
    DEFAULT_SKEW
}
fn default_url_ttl() -> Duration {
    Duration::from_secs(3600)
}
fn default_zstd_level() -> i32 {
    3
}
fn default_parallel() -> usize {
    4
}
fn default_jobs() -> usize {
    2
}
fn default_storage_type() -> String {
    "local_ssd".into()
}

impl Default for Config {
    fn default() -> Self {
        // An empty document takes every default, so the two can never disagree.
        match toml::from_str("") {
            Ok(c) => c,
            Err(_) => unreachable!("the empty configuration is valid"),
        }
    }
}

impl Config {
    /// Reads and validates a configuration file.
    ///
    /// # Errors
    /// Unreadable file, TOML syntax, unknown keys, or a failed validation rule (message names the key).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("read {}: {e}", path.display())))?;
        let mut cfg = Self::parse(&text)?;
        // Relative paths in a file mean "beside this file", whatever directory a command is started from
        // (`ddsvault audit --config /etc/ddsvault/ddsvault.toml` run from $HOME must find the same catalog).
        let base = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        cfg.resolve_paths(&base);
        Ok(cfg)
    }

    /// Makes every relative path of the configuration relative to `base` (the configuration file's directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.data_dir);
        for p in [
            &mut self.tls_cert,
            &mut self.tls_key,
            &mut self.secret_key_file,
            &mut self.repository.local_path,
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
        if let Some(p) = self.provisioning.as_mut().and_then(|p| p.base_dir.as_mut()) {
            fix(p);
        }
        for i in &mut self.instances {
            if let Some(p) = &mut i.data_path {
                fix(p);
            }
        }
        if let Some(url) = &self.catalog_url {
            if let Some(rest) = url.strip_prefix("sqlite://") {
                if Path::new(rest).is_relative() {
                    self.catalog_url = Some(format!("sqlite://{}", base.join(rest).display()));
                }
            }
        }
    }

    /// Parses and validates configuration text.
    ///
    /// # Errors
    /// TOML syntax, unknown keys, or a failed validation rule.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        self.repository.location(&self.data_dir)?;
        self.repository.tuning()?;
        self.repository.copy_locations(&self.data_dir)?;
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return err(format!(
                "listen = {:?} is not an ip:port address",
                self.listen
            ));
        }
        match (&self.listen_tls, &self.tls_cert, &self.tls_key) {
            (None, None, None) | (Some(_), Some(_), Some(_)) => {}
            (Some(_), _, _) => return err("listen_tls needs both tls_cert and tls_key".into()),
            (None, _, _) => return err("tls_cert and tls_key are only used with listen_tls".into()),
        }
        if let Some(l) = &self.listen_tls {
            if l.parse::<std::net::SocketAddr>().is_err() {
                return err(format!("listen_tls = {l:?} is not an ip:port address"));
            }
        }
        if !(2..=86_400).contains(&self.backup.stall_timeout.as_secs()) {
            return err(format!(
                "backup.stall_timeout_secs = {} must be between 2 and 86400",
                self.backup.stall_timeout.as_secs()
            ));
        }
        if let Some(url) = &self.catalog_url {
            let known = ["sqlite://", "postgres://", "postgresql://"];
            if url != "sqlite::memory:" && !known.iter().any(|p| url.starts_with(p)) {
                return err(format!(
                    "catalog_url = {:?} must be sqlite://<path> or postgres://user:password@host:port/database",
                    ddsvault_catalog::redact_url(url)
                ));
            }
        }
        if let Some(n) = &self.node_id {
            if !crate::startup::valid_node_id(n) {
                return err(format!(
                    "node_id = {n:?} must be 1-64 characters of letters, digits, '-', '_' or '.'"
                ));
            }
        }
        if self.region_id.is_empty() {
            return err("region_id must not be empty".into());
        }
        if let Some(a) = &self.account_id {
            if a.is_empty() || !a.chars().all(|c| c.is_ascii_digit()) {
                return err(format!("account_id = {a:?} must be digits"));
            }
        }
        if !(1..=19).contains(&self.backup.zstd_level) {
            return err(format!(
                "backup.zstd_level = {} is outside 1..=19",
                self.backup.zstd_level
            ));
        }
        if self.backup.parallel_collections == 0 || self.backup.parallel_collections > 64 {
            return err("backup.parallel_collections must be 1..=64".into());
        }
        if self.backup.max_concurrent_jobs == 0 || self.backup.max_concurrent_jobs > 64 {
            return err("backup.max_concurrent_jobs must be 1..=64".into());
        }
        if !(2..=3600).contains(&self.jobs.lease.as_secs()) {
            return err(format!(
                "jobs.lease_secs = {} is outside 2..=3600",
                self.jobs.lease.as_secs()
            ));
        }
        if !(1..=86_400).contains(&self.retention.gc_interval.as_secs()) {
            return err(format!(
                "retention.gc_interval_secs = {} is outside 1..=86400",
                self.retention.gc_interval.as_secs()
            ));
        }
        let scrub = self.retention.scrub_interval.as_secs();
        if scrub != 0 && !(3600..=31_536_000).contains(&scrub) {
            return err(format!(
                "retention.scrub_interval_secs = {scrub} is outside 3600..=31536000 (or 0: never)"
            ));
        }
        if !(1..=31_536_000).contains(&self.retention.lock_cooling_off.as_secs()) {
            return err(format!(
                "retention.lock_cooling_off_secs = {} is outside 1..=31536000",
                self.retention.lock_cooling_off.as_secs()
            ));
        }
        if self.retention.audit_retention_days > 36_500 {
            return err(format!(
                "retention.audit_retention_days = {} is outside 0..=36500",
                self.retention.audit_retention_days
            ));
        }
        if self.retention.chunk_grace.as_secs() > 604_800 {
            return err(format!(
                "retention.chunk_grace_secs = {} is outside 0..=604800",
                self.retention.chunk_grace.as_secs()
            ));
        }
        let srv = &self.server;
        for (name, value, range) in [
            ("header_timeout_secs", srv.header_timeout.as_secs(), 1..=300),
            ("idle_timeout_secs", srv.idle_timeout.as_secs(), 1..=3600),
            (
                "max_connections",
                srv.max_connections as u64,
                16..=1_000_000,
            ),
            (
                "nonces_per_access_key",
                srv.nonces_per_access_key as u64,
                1..=100_000_000,
            ),
            ("nonce_capacity", srv.nonce_capacity as u64, 1..=100_000_000),
        ] {
            if !range.contains(&value) {
                return err(format!(
                    "server.{name} = {value} is outside {}..={}",
                    range.start(),
                    range.end()
                ));
            }
        }
        if !(1..=600).contains(&self.scheduler.tick.as_secs()) {
            return err(format!(
                "scheduler.tick_secs = {} is outside 1..=600",
                self.scheduler.tick.as_secs()
            ));
        }
        let log = &self.log_backup;
        let (slice_secs, poll_ms, settle_ms) = (
            log.slice.as_secs(),
            log.poll.as_millis(),
            log.settle.as_millis(),
        );
        if !(1..=3600).contains(&slice_secs)
            || !(1..=1024).contains(&log.slice_mib)
            || !(100..=60_000).contains(&poll_ms)
            || !(100..=60_000).contains(&settle_ms)
        {
            return err(format!(
                "log_backup: slice_secs = {slice_secs} (1..=3600), slice_mib = {} (1..=1024), poll_ms = {poll_ms} (100..=60000), settle_ms = {settle_ms} (100..=60000): a value is out of range",
                log.slice_mib
            ));
        }
        if let Some(p) = &self.provisioning {
            p.validate()?;
        }
        check_limit("throttling.per_access_key", self.throttling.per_access_key)?;
        check_limit("throttling.per_action", self.throttling.per_action)?;
        for (action, limit) in &self.throttling.actions {
            if crate::actions::Action::from_name(action).is_none() {
                return err(format!("throttling.actions: unknown action {action:?}"));
            }
            check_limit(&format!("throttling.actions.{action}"), *limit)?;
        }
        let mut policy_names = HashSet::new();
        for p in &self.ram_policies {
            if !policy_names.insert(p.name.as_str()) {
                return err(format!("ram_policies: duplicate name {:?}", p.name));
            }
            if let Err(e) = ddsvault_ram::Policy::parse(&p.document) {
                return err(format!("ram_policies {:?}: {e}", p.name));
            }
        }
        let mut user_names = HashSet::new();
        for u in &self.ram_users {
            if u.name == "root" {
                return err("ram_users: \"root\" is the account itself, not a RAM user".into());
            }
            if !user_names.insert(u.name.as_str()) {
                return err(format!("ram_users: duplicate name {:?}", u.name));
            }
            for p in &u.policies {
                if !policy_names.contains(p.as_str()) {
                    return err(format!("ram_users {:?}: unknown policy {p:?}", u.name));
                }
            }
        }
        let mut key_ids = HashSet::new();
        for k in &self.access_keys {
            if k.id.is_empty() || k.secret.is_empty() {
                return err("access_keys: id and secret must not be empty".into());
            }
            if !key_ids.insert(k.id.as_str()) {
                return err(format!("access_keys: duplicate id {:?}", k.id));
            }
            if k.user != "root" && !user_names.contains(k.user.as_str()) {
                return err(format!("access_keys {:?}: unknown user {:?}", k.id, k.user));
            }
        }
        let mut instance_ids = HashSet::new();
        for i in &self.instances {
            if i.id.is_empty() || i.id.contains(['/', '\\']) || i.id.contains("..") {
                return err(format!("instances: invalid id {:?}", i.id));
            }
            if !instance_ids.insert(i.id.as_str()) {
                return err(format!("instances: duplicate id {:?}", i.id));
            }
            if !STORAGE_TYPES.contains(&i.storage_type.as_str()) {
                return err(format!(
                    "instances {:?}: storage_type {:?} is not one of {}",
                    i.id,
                    i.storage_type,
                    STORAGE_TYPES.join(" | ")
                ));
            }
            if !(i.uri.starts_with("mongodb://") || i.uri.starts_with("mongodb+srv://")) {
                return err(format!(
                    "instances {:?}: uri must start with mongodb:// or mongodb+srv://",
                    i.id
                ));
            }
            if let Some(p) = &i.policy {
                p.validate(&i.id)?;
            }
            if let Some(n) = &i.node {
                if !crate::startup::valid_node_id(n) {
                    return err(format!(
                        "instances {:?}: node = {n:?} must be a node_id (1-64 characters of letters, digits, '-', '_' or '.')",
                        i.id
                    ));
                }
            }
        }
        self.validate_observability()
    }

    fn validate_observability(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        if let Some(addr) = &self.metrics.listen {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return err(format!(
                    "[metrics] listen = {addr:?} is not an ip:port address"
                ));
            }
        }
        let a = &self.alerts;
        if !(1..=100_000).contains(&a.queue_capacity) {
            return err("[alerts] queue_capacity must be 1..=100000".into());
        }
        if !(1..=20).contains(&a.max_attempts) {
            return err("[alerts] max_attempts must be 1..=20".into());
        }
        if !(1..=300).contains(&a.timeout.as_secs()) {
            return err("[alerts] timeout_secs must be 1..=300".into());
        }
        for (i, w) in a.webhooks.iter().enumerate() {
            let n = i + 1;
            // The URL itself is not quoted: it may carry a token.
            match reqwest::Url::parse(&w.url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
                Ok(_) => {
                    return err(format!(
                    "[[alerts.webhooks]] #{n}: url must be an http:// or https:// URL with a host"
                ))
                }
                Err(e) => return err(format!("[[alerts.webhooks]] #{n}: url does not parse: {e}")),
            }
            if w.secret.as_deref() == Some("") {
                return err(format!(
                    "[[alerts.webhooks]] #{n}: secret is empty (remove it to send unsigned notifications)"
                ));
            }
            if let Some(e) = crate::alerts::unknown_event(&w.events) {
                return err(format!(
                    "[[alerts.webhooks]] #{n}: unknown event {e:?}; known: {}",
                    ALERT_EVENTS.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// The catalog URL in effect.
    pub fn catalog_url(&self) -> String {
        self.catalog_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("catalog.db").display()))
    }

    /// Whether signature nonces are shared through the catalog (`[server] shared_nonces`, default: on for a
    /// PostgreSQL catalog).
    pub fn shared_nonces(&self) -> bool {
        self.server.shared_nonces.unwrap_or_else(|| {
            let url = self.catalog_url();
            url.starts_with("postgres://") || url.starts_with("postgresql://")
        })
    }

    /// The local repository directory in effect.
    pub fn repository_path(&self) -> PathBuf {
        self.repository
            .local_path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("repository"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provisioning_is_validated_and_defaults_under_data_dir() {
        let c = Config::parse(
            "data_dir = \"/d\"\n[provisioning]\ncommand = \"ferretdb --sqlite-url=file:{data_dir}/ --listen-addr=127.0.0.1:{port}\"\n",
        )
        .expect("valid");
        let s = c
            .provisioning
            .as_ref()
            .expect("section")
            .settings(&c.data_dir)
            .expect("settings");
        assert_eq!(s.base_dir, PathBuf::from("/d/instances"));
        assert_eq!(s.ports, 27100..=27199);
        assert_eq!(s.command.len(), 3);
        for bad in [
            "command = \"ferretdb --listen-addr=127.0.0.1:{port}\"",
            "command = \"ferretdb {data_dir}\"",
            "command = \"ferretdb {data_dir} {port} {nope}\"",
            "command = \"ferretdb '{data_dir} {port}\"",
            "command = \"x {data_dir} {port}\"\nport_min = 80",
            "command = \"x {data_dir} {port}\"\nport_min = 30000\nport_max = 29999",
        ] {
            assert!(
                Config::parse(&format!("[provisioning]\n{bad}\n")).is_err(),
                "{bad}"
            );
        }
        assert!(Config::parse("").expect("empty").provisioning.is_none());
    }

    #[test]
    fn relative_paths_of_a_file_are_relative_to_the_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("ddsvault.toml");
        std::fs::write(
            &path,
            "data_dir = \"data\"\ncatalog_url = \"sqlite://cat/catalog.db\"\nsecret_key_file = \"keys/master\"\n\
             [repository]\nlocal_path = \"/abs/repo\"\n\
             [[instances]]\nid = \"dds-a\"\nuri = \"mongodb://127.0.0.1:1/\"\ndata_path = \"../node\"\n",
        )
        .expect("write");
        let c = Config::load(&path).expect("load");
        assert_eq!(c.data_dir, dir.path().join("data"));
        assert_eq!(
            c.catalog_url(),
            format!("sqlite://{}", dir.path().join("cat/catalog.db").display())
        );
        assert_eq!(c.secret_key_file, Some(dir.path().join("keys/master")));
        assert_eq!(c.repository.local_path, Some(PathBuf::from("/abs/repo")));
        assert_eq!(c.instances[0].data_path, Some(dir.path().join("../node")));
        // Without a file, the embedded defaults stay relative to the working directory.
        assert_eq!(Config::default().data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn log_backup_settle_is_milliseconds_with_a_measured_default() {
        let d = Config::parse("").expect("empty").log_backup.settings();
        assert_eq!(d.settle, ddsvault_jobs::pitr::DEFAULT_SETTLE);
        let s = Config::parse("[log_backup]\nsettle_ms = 400\npoll_ms = 100\n")
            .expect("valid")
            .log_backup
            .settings();
        assert_eq!(s.settle, Duration::from_millis(400));
        assert_eq!(s.poll, Duration::from_millis(100));
        for bad in ["0", "99", "60001"] {
            let e = Config::parse(&format!("[log_backup]\nsettle_ms = {bad}\n"))
                .expect_err("out of range")
                .to_string();
            assert!(e.contains("settle_ms"), "{e}");
        }
    }

    #[test]
    fn job_lease_defaults_to_30_s_and_is_bounded() {
        assert_eq!(
            Config::parse("").expect("empty").jobs.lease,
            Duration::from_secs(30)
        );
        assert_eq!(
            Config::parse("[jobs]\nlease_secs = 3\n")
                .expect("short")
                .jobs
                .lease,
            Duration::from_secs(3)
        );
        for bad in ["0", "1", "3601"] {
            let e = Config::parse(&format!("[jobs]\nlease_secs = {bad}\n"))
                .expect_err("out of range")
                .to_string();
            assert!(e.contains("jobs.lease_secs"), "{e}");
        }
    }

    /// The duration keys keep their names and integer units; only the Rust side is typed.
    #[test]
    fn duration_keys_parse_in_their_units() {
        let c = Config::parse(
            "timestamp_skew_secs = 300\ndownload_url_ttl_secs = 120\n\
             [repository]\nurl = \"s3://b/p\"\nretry_timeout_secs = 90\nretry_initial_backoff_ms = 250\n\
             retry_max_backoff_secs = 5\n\
             [jobs]\nlease_secs = 45\n\
             [retention]\ngc_interval_secs = 60\nscrub_interval_secs = 7200\n\
             [server]\nidle_timeout_secs = 120\n\
             [log_backup]\nslice_secs = 10\npoll_ms = 250\n\
             [alerts]\ntimeout_secs = 7\n",
        )
        .expect("valid");
        assert_eq!(c.timestamp_skew, Duration::from_secs(300));
        assert_eq!(c.download_url_ttl, Duration::from_secs(120));
        assert_eq!(c.jobs.lease, Duration::from_secs(45));
        assert_eq!(c.retention.gc_interval, Duration::from_secs(60));
        assert_eq!(c.retention.scrub_every(), Some(Duration::from_secs(7200)));
        assert_eq!(c.server.idle_timeout, Duration::from_secs(120));
        assert_eq!(c.log_backup.poll, Duration::from_millis(250));
        assert_eq!(c.log_backup.settings().slice_secs, 10);
        assert_eq!(c.alerts.timeout, Duration::from_secs(7));
        match c.repository.location(&c.data_dir).expect("location") {
            ddsvault_repo::RepositoryLocation::S3(s) => {
                assert_eq!(s.retry_timeout, Duration::from_secs(90));
                assert_eq!(s.backoff_initial, Duration::from_millis(250));
                assert_eq!(s.backoff_max, Duration::from_secs(5));
            }
            other => panic!("{other:?}"),
        }
        // Unset optional keys leave the repository's own defaults; 0 still means "never scrub".
        let d = Config::parse("").expect("empty");
        assert_eq!(d.repository.retry_timeout, None);
        assert_eq!(d.retention.scrub_every(), None);
        assert_eq!(d.download_url_ttl, Duration::from_secs(3600));
        assert_eq!(d.log_backup.poll, Duration::from_secs(1));

        // A negative, fractional or string value is refused by the TOML reader, pointing at the key.
        for (text, key) in [
            ("[jobs]\nlease_secs = -1", "lease_secs"),
            ("[scheduler]\ntick_secs = \"30s\"", "tick_secs"),
            ("[log_backup]\npoll_ms = 1.5", "poll_ms"),
            (
                "[repository]\nurl = \"s3://b\"\nretry_initial_backoff_ms = -250",
                "retry_initial_backoff_ms",
            ),
            ("timestamp_skew_secs = \"900\"", "timestamp_skew_secs"),
        ] {
            let e = Config::parse(text).expect_err(text).0;
            assert!(
                e.contains(key) && e.contains("expected u64"),
                "{text:?} gave {e:?}"
            );
        }
        // Range errors quote the key and the number in the unit written.
        let e = Config::parse("[jobs]\nlease_secs = 1")
            .expect_err("short lease")
            .0;
        assert_eq!(e, "jobs.lease_secs = 1 is outside 2..=3600");
        let e = Config::parse("[log_backup]\npoll_ms = 60001")
            .expect_err("slow poll")
            .0;
        assert!(e.contains("poll_ms = 60001 (100..=60000)"), "{e}");
        let e = Config::parse("[repository]\nurl = \"s3://b\"\nretry_initial_backoff_ms = 0")
            .expect_err("zero backoff")
            .0;
        assert!(e.contains("retry_initial_backoff_ms must be > 0"), "{e}");
    }

    #[test]
    fn empty_config_takes_defaults() {
        let c = Config::parse("").expect("valid");
        assert_eq!(c.listen, DEFAULT_LISTEN);
        assert_eq!(c.region_id, DEFAULT_REGION);
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.timestamp_skew, Duration::from_secs(900));
        assert_eq!(
            c.backup.compression,
            ddsvault_catalog::ArchiveCompression::Zstd
        );
        assert_eq!(c.retention.chunk_grace, Duration::from_secs(3600));
        assert_eq!(c.retention.audit_retention_days, 180);
        assert!(c.catalog_url().ends_with("ddsvault-data/catalog.db"));
    }

    /// The example in docs/configuration.md must load as documented.
    #[test]
    fn readme_example_loads() {
        let readme = include_str!("../../../docs/configuration.md");
        let start = readme
            .find("<!-- config-example -->")
            .expect("README has a config example marker");
        let rest = &readme[start..];
        let body_start = rest.find("```toml\n").expect("toml block") + "```toml\n".len();
        let body_end = rest[body_start..].find("```").expect("block end");
        let c = Config::parse(&rest[body_start..body_start + body_end])
            .expect("README example is valid");
        assert_eq!(c.instances.len(), 1);
        assert_eq!(c.instances[0].id, "dds-bp1aaaa");
        assert_eq!(c.access_keys.len(), 2);
        assert_eq!(c.ram_users[0].policies, vec!["BackupOnly".to_string()]);
        assert!(c.throttling.enabled);
        assert_eq!(
            c.throttling.per_access_key,
            RateLimit {
                rate: 100.0,
                burst: 200
            }
        );
        assert_eq!(c.throttling.per_action.burst, 1000);
        assert_eq!(
            c.throttling.actions.get("CreateBackup"),
            Some(&RateLimit {
                rate: 1.0,
                burst: 10
            })
        );
        assert_eq!(c.listen_tls, None);
        assert_eq!(c.server.header_timeout, Duration::from_secs(10));
        assert_eq!(c.server.nonces_per_access_key, 200_000);
    }

    #[test]
    fn shared_nonces_default_to_on_only_for_postgres() {
        let parse = |text: &str| Config::parse(text).expect("valid");
        assert!(!parse("").shared_nonces());
        assert!(parse("catalog_url = \"postgres://u:p@h/db\"").shared_nonces());
        assert!(parse("catalog_url = \"postgresql://u:p@h/db\"").shared_nonces());
        assert!(
            !parse("catalog_url = \"postgres://u:p@h/db\"\n[server]\nshared_nonces = false")
                .shared_nonces()
        );
        assert!(parse("[server]\nshared_nonces = true").shared_nonces());
        let pinned =
            parse("[[instances]]\nid = \"a\"\nuri = \"mongodb://x\"\nnode = \"db-host-1\"");
        assert_eq!(pinned.instances[0].node.as_deref(), Some("db-host-1"));
    }

    #[test]
    fn rejects_bad_values() {
        let cases = [
            ("listen = \"nope\"", "listen"),
            ("bogus = 1", "unknown field"),
            ("[[instances]]\nid = \"a\"\nuri = \"mongodb://x\"\nstorage_type = \"floppy\"", "storage_type"),
            ("[[instances]]\nid = \"a\"\nuri = \"http://x\"", "uri"),
            (
                "[[instances]]\nid = \"a\"\nuri = \"mongodb://x\"\n[instances.policy]\npreferred_backup_time = \"3am\"",
                "preferred_backup_time",
            ),
            (
                "[[instances]]\nid = \"a\"\nuri = \"mongodb://x\"\n[instances.policy]\nbackup_retention_period = 3",
                "backup_retention_period",
            ),
            ("[[access_keys]]\nid = \"k\"\nsecret = \"s\"\nuser = \"ghost\"", "unknown user"),
            ("[[ram_users]]\nname = \"u\"\npolicies = [\"P\"]", "unknown policy"),
            (
                "[[ram_policies]]\nname = \"P\"\ndocument = '{\"Version\":\"1\",\"Statement\":[{\"Effect\":\"Allow\",\"Action\":\"dds:*\",\"Resource\":\"*\",\"Condition\":{\"Bool\":{\"acs:SourceIp\":\"true\"}}}]}'",
                "Condition.Bool cannot test acs:SourceIp",
            ),
            ("[backup]\ncompression = \"lz4\"", "compression"),
            ("[retention]\nchunk_grace_secs = 604801", "retention.chunk_grace_secs"),
            ("[retention]\naudit_retention_days = 36501", "retention.audit_retention_days"),
            ("[server]\nheader_timeout_secs = 0", "server.header_timeout_secs"),
            ("[server]\nmax_connections = 2", "server.max_connections"),
            ("[server]\nnonces_per_access_key = 0", "server.nonces_per_access_key"),
            ("[[instances]]\nid = \"a\"\nuri = \"mongodb://x\"\nnode = \"db host\"", "node = \"db host\""),
            ("listen_tls = \"127.0.0.1:8443\"", "listen_tls needs both tls_cert and tls_key"),
            ("tls_cert = \"c.pem\"", "only used with listen_tls"),
            ("listen_tls = \"x\"\ntls_cert = \"c\"\ntls_key = \"k\"", "listen_tls = \"x\""),
            ("[throttling]\nper_access_key = { rate = 0, burst = 5 }", "throttling.per_access_key.rate"),
            ("[throttling]\nper_action = { rate = 5, burst = 0 }", "throttling.per_action.burst"),
            ("[throttling.actions]\nCreateBackupz = { rate = 1, burst = 1 }", "unknown action \"CreateBackupz\""),
            ("[throttling.actions]\nCreateBackup = { rate = 1, burst = 1, x = 1 }", "unknown field"),
            ("[metrics]\nlisten = \"9187\"", "[metrics] listen"),
            ("[[alerts.webhooks]]\nurl = \"ftp://h/x\"", "http:// or https://"),
            ("[[alerts.webhooks]]\nurl = \"not a url\"", "does not parse"),
            ("[[alerts.webhooks]]\nurl = \"http://h/\"\nsecret = \"\"", "secret is empty"),
            ("[[alerts.webhooks]]\nurl = \"http://h/\"\nevents = [\"job_done\"]", "unknown event \"job_done\""),
            ("[alerts]\nmax_attempts = 0", "[alerts] max_attempts"),
            ("[alerts]\ntimeout_secs = 301", "[alerts] timeout_secs"),
        ];
        for (text, needle) in cases {
            let e = Config::parse(text).expect_err(text);
            assert!(
                e.0.contains(needle),
                "{text:?} gave {:?}, expected mention of {needle:?}",
                e.0
            );
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let c = Config::parse(
            "[[access_keys]]\nid = \"k\"\nsecret = \"TOPSECRET\"\nuser = \"root\"\n[[instances]]\nid = \"a\"\nuri = \"mongodb://u:PASSWORD@h\"\n[[alerts.webhooks]]\nurl = \"https://hooks.example/HOOKTOKEN\"\nsecret = \"HOOKSECRET\"",
        )
        .expect("valid");
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("TOPSECRET")
                && !dbg.contains("PASSWORD")
                && !dbg.contains("HOOKTOKEN")
                && !dbg.contains("HOOKSECRET"),
            "{dbg}"
        );
    }

    #[test]
    fn repository_locations() {
        use ddsvault_repo::RepositoryLocation as L;
        let loc = |body: &str| {
            Config::parse(&format!("data_dir = \"/d\"\n[repository]\n{body}"))
                .map(|c| c.repository.location(&c.data_dir).expect("location"))
        };
        assert!(
            matches!(loc("").expect("default"), L::Local(p) if p == Path::new("/d/repository"))
        );
        assert!(
            matches!(loc("url = \"file:///srv/r\"").expect("file"), L::Local(p) if p == Path::new("/srv/r"))
        );
        match loc("url = \"s3://b/x/y/\"\nendpoint = \"http://127.0.0.1:9000\"\nallow_http = true\nsecret_access_key = \"S3SECRET\"")
            .expect("s3")
        {
            L::S3(s) => {
                assert_eq!((s.bucket.as_str(), s.prefix.as_str()), ("b", "x/y"));
                assert!(!format!("{s:?}").contains("S3SECRET"));
            }
            other => panic!("{other:?}"),
        }
        for (body, needle) in [
            ("url = \"s3://b\"\nlocal_path = \"/x\"", "alternatives"),
            ("url = \"gs://b\"", "supported are"),
            ("url = \"file://rel\"", "absolute"),
            ("url = \"s3:///p\"", "no bucket"),
            ("endpoint = \"http://h\"", "need url"),
            ("url = \"s3://b\"\nendpoint = \"http://h\"", "allow_http"),
            ("part_size_mib = 4", "part_size_mib"),
            ("parts_in_flight = 0", "parts_in_flight"),
        ] {
            let e = loc(body).expect_err(body);
            assert!(e.0.contains(needle), "{body:?}: {}", e.0);
        }
        let c = Config::parse("[repository]\nsecret_access_key = \"S3SECRET\"\nurl = \"s3://b\"")
            .expect("valid");
        assert!(!format!("{c:?}").contains("S3SECRET"));
    }

    #[test]
    fn copy_repositories() {
        let parse = |body: &str| Config::parse(&format!("data_dir = \"/d\"\n[repository]\n{body}"));
        let c = parse(
            "[[repository.copies]]\ndest_region = \"cn-shanghai\"\nurl = \"s3://second/c\"\n\
             [[repository.copies]]\ndest_region = \"cn-beijing\"\nurl = \"file:///srv/copy\"",
        )
        .expect("valid");
        let regions: Vec<String> = c
            .repository
            .copy_locations(&c.data_dir)
            .expect("copies")
            .into_iter()
            .map(|(r, _, _)| r)
            .collect();
        assert_eq!(regions, ["cn-shanghai", "cn-beijing"]);
        for (body, needle) in [
            (
                "[[repository.copies]]\nurl = \"file:///c\"",
                "needs dest_region",
            ),
            (
                "[[repository.copies]]\ndest_region = \"a\"\nurl = \"file:///c\"\n\
                 [[repository.copies]]\ndest_region = \"a\"\nurl = \"file:///e\"",
                "named twice",
            ),
            ("dest_region = \"a\"", "belongs in"),
            (
                "[[repository.copies]]\ndest_region = \"a\"\nurl = \"gs://x\"",
                "supported are",
            ),
        ] {
            let e = parse(body).expect_err(body);
            assert!(e.0.contains(needle), "{body:?}: {}", e.0);
        }
    }
}
