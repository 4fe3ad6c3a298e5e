//! S3 `ListMultipartUploads`, filtered to the repository prefix: finds uploads that no journal marker names.
//!
//! The journal (see [`crate::s3`]) records an upload right after `CreateMultipartUpload`; a process killed
//! between those two requests leaves an upload nothing names. `object_store` cannot list multipart uploads, so
//! the request is made here like the object lock requests: signed with `object_store`'s own SigV4 signer and
//! credential provider and sent through its HTTP client ([`ObjectLockClient::send`]), which adds no S3 SDK and
//! no second signer (`aws-sigv4`/`rusty-s3` would duplicate what `object_store` already ships and keeps
//! current, credential refresh included).

use chrono::{DateTime, Utc};
use http::Method;
use serde::Deserialize;

use crate::object_lock::{ObjectLockClient, KEY_ENCODE_SET};

/// One in-progress multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListedUpload {
    /// Full key in the bucket (the repository prefix included).
    pub key: String,
    /// The server's upload id.
    pub upload_id: String,
    /// When `CreateMultipartUpload` was answered.
    pub initiated: DateTime<Utc>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListXml {
    #[serde(default)]
    is_truncated: Option<bool>,
    #[serde(default)]
    next_key_marker: Option<String>,
    #[serde(default)]
    next_upload_id_marker: Option<String>,
    #[serde(default, rename = "Upload")]
    uploads: Vec<UploadXml>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UploadXml {
    key: String,
    upload_id: String,
    initiated: String,
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, &KEY_ENCODE_SET).to_string()
}

/// The key and upload id markers a truncated page says to continue from.
type NextPage = Option<(String, String)>;

/// Decodes one page: its uploads and, if truncated, the markers of the next page.
fn decode_page(text: &str) -> Result<(Vec<ListedUpload>, NextPage), String> {
    let page: ListXml = quick_xml::de::from_str(text).map_err(|e| format!("decoding: {e}"))?;
    let mut out = Vec::with_capacity(page.uploads.len());
    for u in page.uploads {
        let initiated = DateTime::parse_from_rfc3339(u.initiated.trim())
            .map_err(|e| format!("upload {:?} initiated {:?}: {e}", u.key, u.initiated))?
            .with_timezone(&Utc);
        out.push(ListedUpload {
            key: u.key,
            upload_id: u.upload_id,
            initiated,
        });
    }
    let next = match (
        page.is_truncated,
        page.next_key_marker,
        page.next_upload_id_marker,
    ) {
        (Some(true), Some(k), Some(u)) if !k.is_empty() => Some((k, u)),
        (Some(true), _, _) => return Err("a truncated page without its next markers".into()),
        _ => None,
    };
    Ok((out, next))
}

impl ObjectLockClient {
    /// Every in-progress multipart upload whose key is under the repository prefix (all pages of the bucket's
    /// list, filtered).
    ///
    /// # Errors
    /// The failing step and the server's answer.
    pub(crate) async fn list_multipart_uploads(&self) -> Result<Vec<ListedUpload>, String> {
        let prefix = if self.prefix.as_ref().is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix.as_ref())
        };
        let mut out = Vec::new();
        let mut marker: Option<(String, String)> = None;
        // A bound on pages, so a server that keeps answering "truncated" with the same markers cannot loop us.
        for _ in 0..10_000 {
            // No `prefix=` parameter: MinIO answers a prefix that is not an exact object key with an empty list
            // (it lists uploads of one object, or of the whole bucket), so the whole bucket is listed and
            // filtered here. Uploads outside the repository prefix are never returned.
            let mut url = format!("{}/?uploads=", self.bucket_url);
            if let Some((k, u)) = &marker {
                url.push_str(&format!(
                    "&key-marker={}&upload-id-marker={}",
                    enc(k),
                    enc(u)
                ));
            }
            let a = self
                .send(
                    Method::GET,
                    &url,
                    None,
                    "listing multipart uploads",
                    &prefix,
                )
                .await
                .map_err(|e| e.to_string())?;
            if !a.status.is_success() {
                return Err(format!(
                    "listing multipart uploads: HTTP {} {}",
                    a.status.as_u16(),
                    a.code()
                ));
            }
            let (uploads, next) = decode_page(&String::from_utf8_lossy(&a.body))
                .map_err(|e| format!("listing multipart uploads: {e}"))?;
            out.extend(uploads.into_iter().filter(|u| u.key.starts_with(&prefix)));
            if next.is_none() || next == marker {
                return Ok(out);
            }
            marker = next;
        }
        Err("listing multipart uploads: more than 10000 pages".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_decode() {
        let (u, next) = decode_page(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListMultipartUploadsResult \
             xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Bucket>b</Bucket><KeyMarker></KeyMarker>\
             <UploadIdMarker></UploadIdMarker><NextKeyMarker>p/x</NextKeyMarker>\
             <NextUploadIdMarker>id2</NextUploadIdMarker><Prefix>p/</Prefix><MaxUploads>1000</MaxUploads>\
             <IsTruncated>true</IsTruncated><Upload><Key>p/a</Key><UploadId>id1</UploadId>\
             <Initiator><ID>x</ID></Initiator><StorageClass>STANDARD</StorageClass>\
             <Initiated>2026-12-06T02:00:00.123Z</Initiated></Upload><Upload><Key>p/x</Key><UploadId>id2</UploadId>\
             <Initiated>2026-12-06T02:00:01Z</Initiated></Upload></ListMultipartUploadsResult>",
        )
        .expect("decode");
        assert_eq!(u.len(), 2);
        assert_eq!((u[0].key.as_str(), u[0].upload_id.as_str()), ("p/a", "id1"));
        assert_eq!(u[1].initiated.to_rfc3339(), "2026-12-06T02:00:01+00:00");
        assert_eq!(next, Some(("p/x".to_string(), "id2".to_string())));

        let (u, next) = decode_page(
            "<ListMultipartUploadsResult><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>",
        )
        .expect("decode an empty page");
        assert!(u.is_empty() && next.is_none());

        assert!(decode_page(
            "<ListMultipartUploadsResult><IsTruncated>true</IsTruncated></ListMultipartUploadsResult>"
        )
        .is_err());
        assert!(decode_page(
            "<ListMultipartUploadsResult><Upload><Key>k</Key><UploadId>i</UploadId>\
             <Initiated>yesterday</Initiated></Upload></ListMultipartUploadsResult>"
        )
        .is_err());
    }
}
