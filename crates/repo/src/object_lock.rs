//! S3 Object Lock: reading a bucket's lock configuration and putting `COMPLIANCE` retention on objects.
//!
//! `object_store` has no call for `GetObjectLockConfiguration`, `GetObjectRetention` or `PutObjectRetention`, so
//! these three requests are made here, signed with `object_store`'s own SigV4 signer ([`AwsAuthorizer`]) and the
//! same credential provider the store uses (static keys, `AWS_*` variables, instance roles and their refresh), and
//! sent through `object_store`'s HTTP client. This adds no second S3 SDK (aws-sdk-s3 would bring its own HTTP
//! stack, credential chain and a long compile for three requests; rusty-s3 has no object lock actions).
//!
//! Retention is only ever extended: [`ObjectLockClient::retain`] reads the current retain-until date first and
//! leaves a later one alone (S3 refuses to shorten `COMPLIANCE` retention anyway; reading first also makes a
//! repeated pass cheap and keeps chunks shared by several backups at the longest of their dates).

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use http::{Method, StatusCode};
use md5::{Digest as _, Md5};
use object_store::aws::{AwsAuthorizer, AwsCredentialProvider};
use object_store::client::{HttpClient, HttpRequest, HttpRequestBody};
use object_store::path::Path;
use serde::Deserialize;

use crate::RepoError;

/// Percent-encoding of key segments, as `object_store` does it (RFC 3986 unreserved characters stay).
pub(crate) const KEY_ENCODE_SET: percent_encoding::AsciiSet = percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Attempts of one request that fails transiently (5xx, 429, connection errors).
const ATTEMPTS: u32 = 5;

/// The object lock requests of one bucket (see the module docs).
#[derive(Debug)]
pub(crate) struct ObjectLockClient {
    pub(crate) http: HttpClient,
    pub(crate) credentials: AwsCredentialProvider,
    pub(crate) region: String,
    /// `https://host/bucket` (path style) or `https://bucket.host` (virtual-hosted style), no trailing `/`.
    pub(crate) bucket_url: String,
    /// The repository's key prefix inside the bucket.
    pub(crate) prefix: Path,
    /// Set once the bucket was seen with object lock enabled: it cannot be turned off again, so it is not asked
    /// twice.
    pub(crate) known_enabled: std::sync::atomic::AtomicBool,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct LockConfiguration {
    object_lock_enabled: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RetentionXml {
    mode: Option<String>,
    retain_until_date: Option<String>,
}

/// The retention an object carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectRetention {
    /// `true` for `COMPLIANCE`, `false` for `GOVERNANCE` (which a privileged user can bypass).
    pub compliance: bool,
    /// Until when the object version cannot be deleted or overwritten.
    pub until: DateTime<Utc>,
}

/// What [`crate::Repository::retain_until`] did to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retained {
    /// `COMPLIANCE` retention until the requested time was put on the object.
    Extended,
    /// The object already had `COMPLIANCE` retention until this time, not earlier than requested.
    AlreadyLonger(DateTime<Utc>),
}

/// An answer: status and body.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
}

impl Answer {
    /// The S3 error code of an error answer (`<Code>…</Code>`), if any.
    pub(crate) fn code(&self) -> String {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct ErrorXml {
            code: Option<String>,
        }
        std::str::from_utf8(&self.body)
            .ok()
            .and_then(|s| quick_xml::de::from_str::<ErrorXml>(s).ok())
            .and_then(|e| e.code)
            .unwrap_or_default()
    }
}

impl ObjectLockClient {
    fn object_url(&self, location: &Path, query: &str) -> String {
        let key = self
            .prefix
            .parts()
            .chain(location.parts())
            .map(|p| percent_encoding::utf8_percent_encode(p.as_ref(), &KEY_ENCODE_SET).to_string())
            .collect::<Vec<_>>()
            .join("/");
        format!("{}/{key}?{query}", self.bucket_url)
    }

    fn failed(what: &str, path: &str, reason: impl std::fmt::Display) -> RepoError {
        RepoError::ObjectLock {
            path: path.to_string(),
            reason: format!("{what}: {reason}"),
        }
    }

    /// Sends a signed request, retrying transient failures with exponential backoff.
    pub(crate) async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<Bytes>,
        what: &str,
        path: &str,
    ) -> Result<Answer, RepoError> {
        let mut delay = Duration::from_millis(200);
        let mut attempt = 1;
        loop {
            let outcome = self.send_once(method.clone(), url, body.clone()).await;
            let transient = match &outcome {
                Ok(a) => a.status.is_server_error() || a.status == StatusCode::TOO_MANY_REQUESTS,
                Err(_) => true,
            };
            if !transient || attempt >= ATTEMPTS {
                return outcome.map_err(|e| Self::failed(what, path, e));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
            attempt += 1;
        }
    }

    async fn send_once(
        &self,
        method: Method,
        url: &str,
        body: Option<Bytes>,
    ) -> Result<Answer, String> {
        let credential = self
            .credentials
            .get_credential()
            .await
            .map_err(|e| format!("credentials: {e}"))?;
        let mut builder = http::Request::builder().method(method).uri(url);
        if let Some(b) = &body {
            // PutObjectRetention requires a Content-MD5 (or an SDK checksum) header.
            let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(b));
            builder = builder
                .header("content-md5", md5)
                .header("content-type", "application/xml");
        }
        let mut request: HttpRequest = builder
            .body(HttpRequestBody::from(body.unwrap_or_default()))
            .map_err(|e| format!("building the request: {e}"))?;
        AwsAuthorizer::new(&credential, "s3", &self.region).authorize(&mut request, None);
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .bytes()
            .await
            .map_err(|e| e.to_string())?;
        Ok(Answer { status, body })
    }

    /// Whether the bucket has Object Lock enabled (`GetObjectLockConfiguration`).
    pub(crate) async fn bucket_lock_enabled(&self) -> Result<bool, RepoError> {
        use std::sync::atomic::Ordering;
        if self.known_enabled.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let enabled = self.read_bucket_lock().await?;
        if enabled {
            self.known_enabled.store(true, Ordering::Relaxed);
        }
        Ok(enabled)
    }

    async fn read_bucket_lock(&self) -> Result<bool, RepoError> {
        let url = format!("{}/?object-lock", self.bucket_url);
        let a = self
            .send(
                Method::GET,
                &url,
                None,
                "reading the bucket's object lock configuration",
                "",
            )
            .await?;
        if a.status.is_success() {
            let text = String::from_utf8_lossy(&a.body);
            let cfg: LockConfiguration = quick_xml::de::from_str(&text)
                .map_err(|e| Self::failed("object lock configuration", "", e))?;
            return Ok(cfg.object_lock_enabled.as_deref() == Some("Enabled"));
        }
        match a.code().as_str() {
            // The bucket exists but was created without object lock.
            "ObjectLockConfigurationNotFoundError" | "ObjectLockConfigurationNotFound" => Ok(false),
            // Servers without the feature (some S3-compatible stores).
            "NotImplemented" | "MethodNotAllowed" => Ok(false),
            code => Err(Self::failed(
                "reading the bucket's object lock configuration",
                "",
                format!("HTTP {} {code}", a.status.as_u16()),
            )),
        }
    }

    /// The retention of the current version of `location` (`GetObjectRetention`); `None` if it has none.
    pub(crate) async fn retention(
        &self,
        location: &Path,
    ) -> Result<Option<ObjectRetention>, RepoError> {
        let path = location.to_string();
        let a = self
            .send(
                Method::GET,
                &self.object_url(location, "retention"),
                None,
                "reading the object's retention",
                &path,
            )
            .await?;
        if a.status.is_success() {
            let text = String::from_utf8_lossy(&a.body);
            let r: RetentionXml = quick_xml::de::from_str(&text)
                .map_err(|e| Self::failed("object retention", &path, e))?;
            let Some(until) = r.retain_until_date else {
                return Ok(None);
            };
            let until = DateTime::parse_from_rfc3339(until.trim())
                .map_err(|e| Self::failed("object retention date", &path, e))?
                .with_timezone(&Utc);
            return Ok(Some(ObjectRetention {
                compliance: r.mode.as_deref() == Some("COMPLIANCE"),
                until,
            }));
        }
        match a.code().as_str() {
            "NoSuchObjectLockConfiguration" => Ok(None),
            "NoSuchKey" | "NoSuchVersion" => Err(RepoError::NotFound { path }),
            code => Err(Self::failed(
                "reading the object's retention",
                &path,
                format!("HTTP {} {code}", a.status.as_u16()),
            )),
        }
    }

    /// Puts `COMPLIANCE` retention until `until` on the current version of `location`, unless it already has
    /// `COMPLIANCE` retention at least that long.
    pub(crate) async fn retain(
        &self,
        location: &Path,
        until: DateTime<Utc>,
    ) -> Result<Retained, RepoError> {
        if let Some(current) = self.retention(location).await? {
            if current.compliance && current.until >= until {
                return Ok(Retained::AlreadyLonger(current.until));
            }
        }
        let path = location.to_string();
        let body = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>COMPLIANCE</Mode>\
             <RetainUntilDate>{}</RetainUntilDate></Retention>",
            until.to_rfc3339_opts(SecondsFormat::Secs, true)
        );
        let a = self
            .send(
                Method::PUT,
                &self.object_url(location, "retention"),
                Some(Bytes::from(body)),
                "putting retention on the object",
                &path,
            )
            .await?;
        if a.status.is_success() {
            return Ok(Retained::Extended);
        }
        match a.code().as_str() {
            "NoSuchKey" | "NoSuchVersion" => Err(RepoError::NotFound { path }),
            code => Err(Self::failed(
                "putting retention on the object",
                &path,
                format!("HTTP {} {code}", a.status.as_u16()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_answers_decode() {
        let r: RetentionXml = quick_xml::de::from_str(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <Mode>COMPLIANCE</Mode><RetainUntilDate>2027-01-02T03:04:05.123Z</RetainUntilDate></Retention>",
        )
        .expect("decode");
        assert_eq!(r.mode.as_deref(), Some("COMPLIANCE"));
        assert_eq!(
            r.retain_until_date.as_deref(),
            Some("2027-01-02T03:04:05.123Z")
        );
        let c: LockConfiguration = quick_xml::de::from_str(
            "<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled></ObjectLockConfiguration>",
        )
        .expect("decode");
        assert_eq!(c.object_lock_enabled.as_deref(), Some("Enabled"));
        let e = Answer {
            status: StatusCode::NOT_FOUND,
            body: Bytes::from_static(
                b"<?xml version=\"1.0\"?><Error><Code>ObjectLockConfigurationNotFoundError</Code><Message>x</Message></Error>",
            ),
        };
        assert_eq!(e.code(), "ObjectLockConfigurationNotFoundError");
    }
}
