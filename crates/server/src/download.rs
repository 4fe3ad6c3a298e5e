//! Time-limited download URLs for backup files, served by ddsvault itself (`BackupDownloadURL`).
//!
//! A URL is `<base>/download/<BackupId>/<file>?Expires=<unix seconds>&Signature=<hex>`, where the signature is
//! HMAC-SHA256 over `<BackupId>\n<file>\n<Expires>` with a key generated once and kept in the catalog, sealed
//! with the master key like AccessKey secrets ([`load_key`]). Anyone
//! holding the URL may read that one file until it expires, as with an OSS signed URL; range requests are
//! supported so `curl -C -` and parallel downloaders work.

use std::sync::Arc;

use crate::error::ActionError;

use axum::body::Body;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use chrono::Utc;
use ddsvault_api::{new_request_id, render_error, ApiError};
use ddsvault_catalog::{AuditRecord, Backup, BackupStatus, Catalog};
use ddsvault_repo::RepoPath;
use futures::TryStreamExt;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::audit::clean_field;
use crate::error::ServerError;
use crate::identity::crypto::MasterKey;
use crate::router::Transport;
use crate::state::AppState;

type HmacSha256 = Hmac<Sha256>;

/// The catalog setting holding the URL-signing key.
const KEY_SETTING: &str = "download_url_key";
/// Marks a sealed key: `aes256gcm-v1:` + [`MasterKey::seal`] of the key's hex, with the setting's name as associated
/// data. A value without it is a key an earlier version stored in clear (hex digits).
const SEALED_PREFIX: &str = "aes256gcm-v1:";
/// Bytes of a generated key.
const KEY_BYTES: usize = 32;

fn damaged_key(why: &str) -> ServerError {
    ServerError::Identity(format!(
        "the download-URL key stored in the catalog (setting {KEY_SETTING:?}) {why}; restore the catalog (or the \
         master key) it belongs to. Deleting the setting makes the next start issue a new key, and every download \
         URL handed out before stops working"
    ))
}

fn parse_key(hex_text: &str) -> Result<Vec<u8>, ServerError> {
    match hex::decode(hex_text) {
        Ok(k) if k.len() >= 16 => Ok(k),
        _ => Err(damaged_key(
            "is damaged (not a hex key of at least 16 bytes)",
        )),
    }
}

fn seal_key(master: &MasterKey, hex_key: &str) -> Result<String, ServerError> {
    let sealed = master
        .seal(KEY_SETTING, hex_key)
        .map_err(|e| ServerError::Identity(e.to_string()))?;
    Ok(format!("{SEALED_PREFIX}{sealed}"))
}

fn open_key(master: &MasterKey, stored: &str) -> Result<Vec<u8>, ServerError> {
    let sealed = stored
        .strip_prefix(SEALED_PREFIX)
        .ok_or_else(|| damaged_key("is not sealed"))?;
    let hex_key = master
        .open(KEY_SETTING, sealed)
        .map_err(|_| damaged_key("cannot be decrypted with this master key"))?;
    parse_key(hex_key.expose())
}

/// The key download URLs are signed with: the one in the catalog (so every process sharing it signs and verifies
/// alike), generated on first start. A key an earlier version stored in clear is sealed in place, keeping its
/// value so URLs already handed out stay valid. A key that cannot be read stops the start: replacing it silently
/// would break every URL handed out, and differently in each process (issue 17.7).
///
/// # Errors
/// A damaged or foreign stored key; catalog errors.
pub async fn load_key(catalog: &Catalog, master: &MasterKey) -> Result<Vec<u8>, ServerError> {
    let mut fresh = vec![0u8; KEY_BYTES];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut fresh);
    let stored = catalog
        .init_setting(KEY_SETTING, &seal_key(master, &hex::encode(&fresh))?)
        .await?;
    if stored.starts_with(SEALED_PREFIX) {
        return open_key(master, &stored);
    }
    let key = parse_key(stored.trim())?;
    let sealed = seal_key(master, &hex::encode(&key))?;
    if catalog
        .replace_setting(KEY_SETTING, &stored, &sealed)
        .await?
    {
        tracing::info!("sealed the download-URL key that was stored in clear");
        return Ok(key);
    }
    // Another process sealed it meanwhile: use what it stored.
    let now = catalog
        .get_setting(KEY_SETTING)
        .await?
        .ok_or_else(|| damaged_key("vanished during start-up"))?;
    open_key(master, &now)
}

/// Signs download URLs.
#[derive(Clone)]
pub struct UrlSigner {
    key: Vec<u8>,
    pub ttl_secs: i64,
}

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UrlSigner")
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

impl UrlSigner {
    pub fn new(key: Vec<u8>, ttl_secs: i64) -> Self {
        Self { key, ttl_secs }
    }

    fn mac(&self, backup_id: i64, file: &str, expires: i64) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail; the fallback keeps the type total.
        let mut mac = HmacSha256::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(format!("{backup_id}\n{file}\n{expires}").as_bytes());
        mac
    }

    fn sign(&self, backup_id: i64, file: &str, expires: i64) -> String {
        hex::encode(self.mac(backup_id, file, expires).finalize().into_bytes())
    }

    fn verify(&self, backup_id: i64, file: &str, expires: i64, signature: &str) -> bool {
        let Ok(sig) = hex::decode(signature) else {
            return false;
        };
        self.mac(backup_id, file, expires)
            .verify_slice(&sig)
            .is_ok()
    }

    /// The URL of a finished backup's main file, or "" when it has none to download.
    pub fn url_for(&self, base: &str, b: &Backup) -> String {
        let file = match b.details.get("archive").and_then(|v| v.as_str()) {
            Some(archive) => archive,
            None if is_file_backup(b) => FILES_TAR,
            None => return String::new(),
        };
        if b.status != BackupStatus::Success || base.is_empty() {
            return String::new();
        }
        let expires = Utc::now().timestamp() + self.ttl_secs;
        format!(
            "{base}/download/{}/{file}?Expires={expires}&Signature={}",
            b.id,
            self.sign(b.id, file, expires)
        )
    }
}

/// What a Physical or Snapshot backup is downloaded as: a tar of its data files, assembled while it is sent.
pub const FILES_TAR: &str = "files.tar";

fn is_file_backup(b: &Backup) -> bool {
    b.method.is_file_level()
}

#[derive(Deserialize)]
pub struct DownloadQuery {
    #[serde(rename = "Expires")]
    expires: Option<String>,
    #[serde(rename = "Signature")]
    signature: Option<String>,
}

/// The refusal code of an error response, read back by [`serve_download`] for the audit trail.
#[derive(Clone)]
struct RefusalCode(String);

fn error(st: &AppState, e: ApiError) -> Response {
    let request_id = new_request_id();
    let (status, headers, body) = render_error(&e, &request_id, &st.host_id);
    let mut resp = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        body,
    )
        .into_response();
    for (k, v) in headers {
        if let (Ok(n), Ok(v)) = (header::HeaderName::try_from(k), HeaderValue::try_from(v)) {
            resp.headers_mut().insert(n, v);
        }
    }
    resp.extensions_mut().insert(RefusalCode(e.code.clone()));
    resp
}

/// Parses a single `bytes=` range against `size`. `Ok(None)`: serve the whole file (no or unusable header, as
/// RFC 9110 allows); `Err(())`: the range cannot be satisfied (416).
fn parse_range(h: Option<&HeaderValue>, size: u64) -> Result<Option<std::ops::Range<u64>>, ()> {
    let Some(v) = h.and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        // Multiple ranges would need multipart/byteranges; the whole file is a valid answer.
        return Ok(None);
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        size.saturating_sub(n)..size
    } else {
        let start: u64 = a.parse().map_err(|_| ())?;
        let end = if b.is_empty() {
            size
        } else {
            b.parse::<u64>()
                .map_err(|_| ())?
                .saturating_add(1)
                .min(size)
        };
        start..end
    };
    if range.start >= size || range.start >= range.end {
        return Err(());
    }
    Ok(Some(range))
}

/// `GET|HEAD /download/<BackupId>/<file>`: checks the URL, serves the file, and records the call in the audit trail
/// as the pseudo-action `DownloadBackup` (no AccessKey: the URL itself is the credential; the resource is the
/// instance's ARN followed by `/backup/<BackupId>/<file>`).
pub async fn serve_download(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    transport: Option<Extension<Transport>>,
    Path((backup_id, file)): Path<(String, String)>,
    Query(q): Query<DownloadQuery>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let now = Utc::now();
    let (resp, instance) = match checked_backup(&st, &backup_id, &file, q).await {
        Err(refused) => (refused, None),
        Ok(backup) => {
            let instance = backup.instance_id.clone();
            (
                serve_backup_file(&st, &backup, &file, &method, &headers).await,
                Some(instance),
            )
        }
    };
    let resource = match instance {
        Some(inst) => format!("{}/backup/{}/{}", st.instance_arn(&inst), backup_id, file),
        None => format!("backup/{backup_id}/{file}"),
    };
    let request_id = resp
        .headers()
        .get(ddsvault_api::REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map_or_else(new_request_id, str::to_string);
    st.audit
        .record(AuditRecord {
            id: 0,
            time: now,
            request_id,
            access_key_id: None,
            user: None,
            action: Some(DOWNLOAD_ACTION.to_string()),
            resources: vec![clean_field(&resource)],
            source_ip: peer.ip().to_canonical().to_string(),
            secure: transport.is_some_and(|Extension(t)| t.secure),
            http_status: resp.status().as_u16(),
            code: resp.extensions().get::<RefusalCode>().map(|c| c.0.clone()),
        })
        .await;
    resp
}

/// The audit trail's name for a download through a `BackupDownloadURL`.
pub const DOWNLOAD_ACTION: &str = "DownloadBackup";

/// The backup a download URL names, if the URL is genuine, unexpired and the backup is still there.
async fn checked_backup(
    st: &AppState,
    backup_id: &str,
    file: &str,
    q: DownloadQuery,
) -> Result<Backup, Response> {
    let invalid = |why: &str| error(st, ActionError::DownloadUrlInvalid(why.to_string()).into());
    let Ok(id) = backup_id.parse::<i64>() else {
        return Err(invalid("malformed backup id"));
    };
    let (Some(expires), Some(signature)) = (q.expires, q.signature) else {
        return Err(invalid("Expires and Signature are required"));
    };
    let Ok(expires) = expires.parse::<i64>() else {
        return Err(invalid("malformed Expires"));
    };
    if !st.downloads.verify(id, file, expires, &signature) {
        return Err(invalid("signature mismatch"));
    }
    if Utc::now().timestamp() > expires {
        return Err(error(st, ActionError::DownloadUrlExpired.into()));
    }
    match st.catalog.get_backup(id).await {
        Ok(Some(b)) if b.status == BackupStatus::Success => Ok(b),
        Ok(_) => Err(error(
            st,
            ActionError::BackupNotFound(id.to_string()).into(),
        )),
        Err(e) => Err(error(st, ApiError::internal(e.to_string()))),
    }
}

/// Serves a checked backup's file (or, for a file backup, the tar of its files).
async fn serve_backup_file(
    st: &AppState,
    backup: &Backup,
    file: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Response {
    let id = backup.id;
    if file == FILES_TAR && is_file_backup(backup) {
        return serve_tar(st, backup, method).await;
    }
    let path = match RepoPath::new(backup.repo_prefix.clone()).and_then(|p| p.join(file)) {
        Ok(p) => p,
        Err(e) => return error(st, ApiError::internal(e.to_string())),
    };
    let size = match st.repo.head(&path).await {
        Ok(info) => info.size,
        Err(e) if e.is_not_found() => {
            return error(
                st,
                ActionError::BackupFilesGone("The backup file is".into()).into(),
            )
        }
        Err(e) => return error(st, ApiError::internal(e.to_string())),
    };
    let range = match parse_range(headers.get(header::RANGE), size) {
        Ok(r) => r,
        Err(()) => {
            let mut resp = error(st, ActionError::RangeNotSatisfiable { size }.into());
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return resp;
        }
    };
    let (status, served) = match &range {
        Some(r) => (StatusCode::PARTIAL_CONTENT, r.clone()),
        None => (StatusCode::OK, 0..size),
    };
    let body = if *method == Method::HEAD || served.is_empty() {
        Body::empty()
    } else {
        match st.repo.get_range_stream(&path, served.clone()).await {
            Ok(stream) => Body::from_stream(stream),
            Err(e) => return error(st, ApiError::internal(e.to_string())),
        }
    };
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&(served.end - served.start).to_string()) {
        h.insert(header::CONTENT_LENGTH, v);
    }
    if range.is_some() {
        if let Ok(v) = HeaderValue::from_str(&format!(
            "bytes {}-{}/{size}",
            served.start,
            served.end.saturating_sub(1)
        )) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"{}-{id}-{file}\"",
        backup.instance_id
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    resp
}

/// A file backup as one tar, built from the manifest while it is sent. Its length is known up front; ranges are
/// not offered (`Accept-Ranges: none`), so a `Range` header gets the whole file (RFC 9110 allows it).
async fn serve_tar(st: &AppState, backup: &Backup, method: &Method) -> Response {
    let gone = || {
        ApiError::from(ActionError::BackupFilesGone(
            "The backup's files are".into(),
        ))
    };
    let prefix = match RepoPath::new(backup.repo_prefix.clone()) {
        Ok(p) => p,
        Err(e) => return error(st, ApiError::internal(e.to_string())),
    };
    let manifest = match ddsvault_jobs::integrity::authenticated_manifest(&st.repo, backup).await {
        Ok(m) => m.manifest,
        Err(ddsvault_jobs::JobError::Repo(ddsvault_repo::RepoError::NotFound { .. })) => {
            return error(st, gone())
        }
        Err(e) => return error(st, ApiError::internal(e.to_string())),
    };
    let (length, stream) =
        match ddsvault_repo::export::tar_stream(&st.repo, &prefix, &manifest).await {
            Ok(found) => found,
            Err(e) => return error(st, ApiError::internal(e.to_string())),
        };
    let id = backup.id;
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from_stream(stream.map_err(move |e| {
            // Headers are gone by now: the client sees the stream end early; the log says why.
            tracing::warn!(backup_id = id, error = %e, "file backup download failed midway");
            std::io::Error::other(e.to_string())
        }))
    };
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("none"));
    if let Ok(v) = HeaderValue::from_str(&length.to_string()) {
        h.insert(header::CONTENT_LENGTH, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"{}-{id}-{FILES_TAR}\"",
        backup.instance_id
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let h = |s: &str| HeaderValue::from_str(s).expect("header");
        assert_eq!(parse_range(None, 10), Ok(None));
        assert_eq!(parse_range(Some(&h("bytes=0-4")), 10), Ok(Some(0..5)));
        assert_eq!(parse_range(Some(&h("bytes=5-")), 10), Ok(Some(5..10)));
        assert_eq!(parse_range(Some(&h("bytes=-3")), 10), Ok(Some(7..10)));
        assert_eq!(parse_range(Some(&h("bytes=8-100")), 10), Ok(Some(8..10)));
        assert_eq!(parse_range(Some(&h("bytes=10-")), 10), Err(()));
        assert_eq!(parse_range(Some(&h("bytes=5-2")), 10), Err(()));
        assert_eq!(parse_range(Some(&h("bytes=0-1,3-4")), 10), Ok(None));
        assert_eq!(parse_range(Some(&h("items=0-1")), 10), Ok(None));
    }

    #[test]
    fn signatures_bind_id_file_and_expiry() {
        let s = UrlSigner::new(b"k".to_vec(), 60);
        let sig = s.sign(7, "archive.zst", 100);
        assert!(s.verify(7, "archive.zst", 100, &sig));
        assert!(!s.verify(8, "archive.zst", 100, &sig));
        assert!(!s.verify(7, "manifest.json", 100, &sig));
        assert!(!s.verify(7, "archive.zst", 101, &sig));
        assert!(!s.verify(7, "archive.zst", 100, "zz"));
        assert!(!UrlSigner::new(b"other".to_vec(), 60).verify(7, "archive.zst", 100, &sig));
    }

    fn master(b: u8) -> MasterKey {
        MasterKey::from_bytes(&[b; 32], crate::identity::crypto::KeySource::Env)
    }

    async fn catalog() -> Catalog {
        ddsvault_catalog::open("sqlite::memory:")
            .await
            .expect("catalog")
    }

    /// A fresh key is stored sealed (not in clear) and read back the same by the next start.
    #[tokio::test]
    async fn key_is_stored_sealed_and_stable() {
        let cat = catalog().await;
        let m = master(1);
        let key = load_key(&cat, &m).await.expect("first start");
        assert_eq!(key.len(), KEY_BYTES);
        let stored = cat
            .get_setting(KEY_SETTING)
            .await
            .expect("get")
            .expect("set");
        assert!(stored.starts_with(SEALED_PREFIX), "{stored}");
        assert!(
            !stored.contains(&hex::encode(&key)),
            "the key is not in clear"
        );
        assert_eq!(load_key(&cat, &m).await.expect("restart"), key);
        // Another master key cannot read it: a start-up error, not a fresh key.
        let e = load_key(&cat, &master(2))
            .await
            .expect_err("foreign master key");
        assert!(e.to_string().contains("cannot be decrypted"), "{e}");
    }

    /// A key stored in clear by an earlier version keeps its value (URLs stay valid) and is sealed in place.
    #[tokio::test]
    async fn clear_key_is_migrated() {
        let cat = catalog().await;
        let old = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        cat.init_setting(KEY_SETTING, old).await.expect("seed");
        let m = master(1);
        let key = load_key(&cat, &m).await.expect("migrate");
        assert_eq!(hex::encode(&key), old);
        let stored = cat
            .get_setting(KEY_SETTING)
            .await
            .expect("get")
            .expect("set");
        assert!(
            stored.starts_with(SEALED_PREFIX) && !stored.contains(old),
            "{stored}"
        );
        assert_eq!(load_key(&cat, &m).await.expect("again"), key);
    }

    /// A damaged stored key stops the start (it used to become a random in-memory key, silently).
    #[tokio::test]
    async fn damaged_key_is_a_start_up_error() {
        for damaged in ["not hex at all", "0011", "aes256gcm-v1:AAAA"] {
            let cat = catalog().await;
            cat.init_setting(KEY_SETTING, damaged).await.expect("seed");
            let e = load_key(&cat, &master(1)).await.expect_err(damaged);
            assert!(e.to_string().contains(KEY_SETTING), "{e}");
            assert_eq!(
                cat.get_setting(KEY_SETTING).await.expect("get").as_deref(),
                Some(damaged),
                "nothing is overwritten"
            );
        }
    }
}
