//! SHA-256 of a byte stream, computed off the async runtime.

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::RepoError;

/// How many chunks may wait for the hashing thread (bounds memory to this × store chunk size).
const HASH_QUEUE: usize = 16;

/// Drains `stream`, returning its length and lowercase hex SHA-256.
///
/// The async side only moves chunks; the hashing itself runs on a blocking thread fed through a
/// bounded channel, so a multi-gigabyte verify never occupies a runtime worker with CPU work.
pub(crate) async fn hash_stream(
    mut stream: BoxStream<'static, Result<Bytes, RepoError>>,
) -> Result<(u64, String), RepoError> {
    let (tx, mut rx) = mpsc::channel::<Bytes>(HASH_QUEUE);
    let hasher = tokio::task::spawn_blocking(move || {
        let mut h = Sha256::new();
        while let Some(chunk) = rx.blocking_recv() {
            h.update(&chunk);
        }
        hex::encode(h.finalize())
    });

    let mut size = 0u64;
    let mut failure = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                size += chunk.len() as u64;
                if tx.send(chunk).await.is_err() {
                    // The hasher is gone: it panicked. The join below reports it.
                    break;
                }
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let digest = hasher
        .await
        .map_err(|e| RepoError::Internal(format!("hashing task failed: {e}")))?;
    match failure {
        Some(e) => Err(e),
        None => Ok((size, digest)),
    }
}

/// Lowercase hex SHA-256 of a buffer (for small in-memory payloads and tests).
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}
