//! The CLI's API client: every call is signed with signature V3 exactly as Alibaba's SDKs sign it
//! ([`ddsvault_api::sign_v3`]), so the server checks the key and RAM applies to a person at a terminal as it
//! does to a program.

use std::time::Duration;

use ddsvault_api::{sign_v3, Secret, SignRequest, DDS_API_VERSION};
use serde_json::{Map, Value};

use crate::credentials::Resolved;

/// The exit codes, as `--help` of every API verb shows them.
pub const EXIT_CODES_HELP: &str = "Exit codes: 0 success; 1 the server refused the call (its Code and Message are \
printed) or the job waited for failed; 2 usage error or no credentials; 3 server unreachable; 4 timed out waiting.

Credentials: --access-key-id/--access-key-secret or --profile; else DDSVAULT_ACCESS_KEY_ID/DDSVAULT_ACCESS_KEY_SECRET \
(or ALIBABA_CLOUD_ACCESS_KEY_ID/ALIBABA_CLOUD_ACCESS_KEY_SECRET); else the profile file ($DDSVAULT_PROFILE_FILE or \
~/.ddsvault/config.json). Endpoint: --endpoint, DDSVAULT_ENDPOINT, the profile's `endpoint`, else http://127.0.0.1:8080. \
See docs/cli.md.";

/// Exit codes of the API verbs (documented in docs/cli.md and `ddsvault --help`).
pub mod exit {
    /// The server refused the call, or the job waited for failed.
    pub const REFUSED_OR_FAILED: i32 = 1;
    /// Bad usage or no credentials (clap's own usage errors exit 2 too).
    pub const USAGE: i32 = 2;
    /// The server could not be reached.
    pub const UNREACHABLE: i32 = 3;
    /// `--timeout` passed before the job ended.
    pub const TIMEOUT: i32 = 4;
}

/// What can go wrong in an API verb; each kind has its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// An Alibaba error answer: its Code and Message.
    #[error("{code}: {message} (HTTP {status}, RequestId {request_id})")]
    Api {
        status: u16,
        code: String,
        message: String,
        request_id: String,
    },
    /// A job ended Failed.
    #[error("{what} failed: {code}: {message}")]
    JobFailed {
        what: String,
        code: String,
        message: String,
    },
    /// Something asked for does not exist (e.g. no such job): the server did not refuse, but there is nothing.
    #[error("{0}")]
    NotFound(String),
    /// Some of several calls were refused (their codes are in the message).
    #[error("{0}")]
    Refused(String),
    /// An answer that is not a Dds answer (e.g. the endpoint is another kind of server).
    #[error("unexpected answer from {endpoint}: {why}")]
    BadAnswer { endpoint: String, why: String },
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Credentials(String),
    #[error("cannot reach the ddsvault API at {endpoint}: {why}")]
    Unreachable { endpoint: String, why: String },
    #[error("{0}")]
    Timeout(String),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Api { .. }
            | CliError::JobFailed { .. }
            | CliError::NotFound(_)
            | CliError::Refused(_)
            | CliError::BadAnswer { .. } => exit::REFUSED_OR_FAILED,
            CliError::Usage(_) | CliError::Credentials(_) => exit::USAGE,
            CliError::Unreachable { .. } => exit::UNREACHABLE,
            CliError::Timeout(_) => exit::TIMEOUT,
        }
    }

    /// Worth another try inside a wait loop: the server is busy, restarting, or throttling.
    pub fn is_transient(&self) -> bool {
        match self {
            CliError::Unreachable { .. } => true,
            CliError::Api { status, code, .. } => {
                *status == 429 || *status >= 500 || code.starts_with("Throttling")
            }
            _ => false,
        }
    }
}

/// A signed-call client for one endpoint and key.
pub struct ApiClient {
    http: reqwest::Client,
    endpoint: String,
    /// `host[:port]` as sent in the Host header, which V3 signs.
    host: String,
    access_key_id: String,
    secret: Secret,
}

/// How long a single call may take: the slowest actions (CreateBackup, DescribeDBInstanceAttribute) wait on the
/// instance, which the server bounds well below this.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl ApiClient {
    pub fn new(r: &Resolved) -> Result<Self, CliError> {
        let url = reqwest::Url::parse(&r.endpoint)
            .map_err(|e| CliError::Usage(format!("invalid endpoint {}: {e}", r.endpoint)))?;
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => return Err(CliError::Usage(format!("invalid endpoint {}", r.endpoint))),
        };
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .user_agent(concat!("ddsvault-cli/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &r.ca_cert {
            let pem = std::fs::read(path).map_err(|e| {
                CliError::Usage(format!("cannot read the CA file {}: {e}", path.display()))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                CliError::Usage(format!(
                    "{} holds no usable PEM certificate: {e}",
                    path.display()
                ))
            })?;
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder
            .build()
            .map_err(|e| CliError::Usage(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Self {
            http,
            endpoint: r.endpoint.clone(),
            host,
            access_key_id: r.access_key_id.clone(),
            secret: Secret::new(r.access_key_secret.clone()),
        })
    }

    /// Calls `action` with `params` and returns the answer's JSON object (RequestId included).
    pub async fn call(
        &self,
        action: &str,
        params: &[(&str, String)],
    ) -> Result<Map<String, Value>, CliError> {
        let mut req = SignRequest::new(
            "POST",
            &self.host,
            action,
            DDS_API_VERSION,
            &self.access_key_id,
            self.secret.clone(),
        );
        for (k, v) in params {
            req = req.with_query(k, v);
        }
        let signed = sign_v3(&req);
        let url = format!("{}/?{}", self.endpoint, signed.query);
        let mut builder = self.http.post(url);
        for (k, v) in &signed.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let resp = builder
            .body(signed.body)
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| self.transport_error(e))?;
        let parsed: Option<Map<String, Value>> = serde_json::from_slice(&body).ok();
        let Some(obj) = parsed else {
            let head: String = String::from_utf8_lossy(&body).chars().take(120).collect();
            return Err(CliError::BadAnswer {
                endpoint: self.endpoint.clone(),
                why: format!(
                    "HTTP {status}, not a JSON object: {head:?} (is this a ddsvault endpoint?)"
                ),
            });
        };
        if (200..300).contains(&status) {
            return Ok(obj);
        }
        let text = |k: &str| obj.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let code = text("Code");
        if code.is_empty() {
            return Err(CliError::BadAnswer {
                endpoint: self.endpoint.clone(),
                why: format!("HTTP {status} without an error Code (is this a ddsvault endpoint?)"),
            });
        }
        Err(CliError::Api {
            status,
            code,
            message: text("Message"),
            request_id: text("RequestId"),
        })
    }

    fn transport_error(&self, e: reqwest::Error) -> CliError {
        // reqwest's Display stops at the outermost layer ("error sending request"): the cause (connection
        // refused, certificate unknown, timed out) is what a user can act on.
        // The URL is left out: the endpoint is named already, and the query is noise.
        let e = e.without_url();
        let mut why = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            why.push_str(": ");
            why.push_str(&s.to_string());
            source = s.source();
        }
        CliError::Unreachable {
            endpoint: self.endpoint.clone(),
            why,
        }
    }
}

/// A string field of an answer object ("" when absent; numbers are rendered).
pub fn field(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// The items of a Dds list answer such as `{"Backups": {"Backup": [...]}}`, or a plain array under `outer`.
pub fn items(answer: &Map<String, Value>, outer: &str, inner: &str) -> Vec<Value> {
    match answer.get(outer) {
        Some(Value::Array(a)) => a.clone(),
        Some(Value::Object(o)) => o
            .get(inner)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// Prints the error and exits with its code; returns normally on success.
pub fn finish(result: Result<(), CliError>) -> anyhow::Result<()> {
    if let Err(e) = result {
        eprintln!("Error: {e}");
        std::process::exit(e.exit_code());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        let api = CliError::Api {
            status: 403,
            code: "Forbidden.RAM".into(),
            message: "m".into(),
            request_id: "r".into(),
        };
        assert_eq!(api.exit_code(), 1);
        assert!(!api.is_transient());
        assert_eq!(CliError::Usage("x".into()).exit_code(), 2);
        assert_eq!(CliError::Credentials("x".into()).exit_code(), 2);
        let down = CliError::Unreachable {
            endpoint: "e".into(),
            why: "w".into(),
        };
        assert_eq!(down.exit_code(), 3);
        assert!(down.is_transient());
        assert_eq!(CliError::Timeout("x".into()).exit_code(), 4);
        let throttled = CliError::Api {
            status: 400,
            code: "Throttling.User".into(),
            message: String::new(),
            request_id: String::new(),
        };
        assert!(throttled.is_transient());
    }

    #[test]
    fn list_answers_in_both_shapes() {
        let a: Map<String, Value> = serde_json::from_str(
            r#"{"Backups": {"Backup": [{"BackupId": "1"}]}, "BackupJobs": [{"x": 1}]}"#,
        )
        .unwrap();
        assert_eq!(items(&a, "Backups", "Backup").len(), 1);
        assert_eq!(items(&a, "BackupJobs", "").len(), 1);
        assert!(items(&a, "Nope", "x").is_empty());
        assert_eq!(field(&a["Backups"]["Backup"][0], "BackupId"), "1");
        assert_eq!(field(&a["BackupJobs"][0], "x"), "1");
    }
}
