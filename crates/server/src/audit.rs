//! The audit trail: every API call is queued by the request handler and written to the catalog in batches by one
//! background task, so a slow catalog never sits on a request's critical path.
//!
//! No record is dropped silently: the queue is bounded and a full queue makes the handler wait (back-pressure)
//! rather than discard; on shutdown the writer stops only after the HTTP server has stopped accepting requests and
//! the queue is drained; a batch the catalog refuses is retried and, if it still fails, logged at ERROR with its
//! size.

use std::sync::Mutex;
use std::time::Duration;

use ddsvault_catalog::{AuditRecord, Catalog};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Records waiting to be written before handlers start to wait.
pub const QUEUE_CAPACITY: usize = 4096;
/// Records written in one catalog transaction at most.
const BATCH: usize = 256;
/// Attempts per batch before it is reported lost.
const ATTEMPTS: u32 = 3;
/// Longest text kept from a client-supplied field (AccessKeyId, action): enough for any real value, small enough
/// that a hostile client cannot fill the catalog with one request.
pub const MAX_FIELD_CHARS: usize = 128;

/// The handlers' side of the audit queue.
#[derive(Debug)]
pub struct AuditLog {
    tx: mpsc::Sender<AuditRecord>,
    rx: Mutex<Option<mpsc::Receiver<AuditRecord>>>,
}

impl Default for AuditLog {
    fn default() -> Self {
        Self::new(QUEUE_CAPACITY)
    }
}

impl AuditLog {
    pub fn new(capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        Self {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    /// Queues a record, waiting while the queue is full.
    pub async fn record(&self, record: AuditRecord) {
        if let Err(e) = self.tx.send(record).await {
            // Only possible once the writer has stopped, i.e. after shutdown drained the queue.
            tracing::error!(request_id = %e.0.request_id, "audit writer stopped; audit record lost");
        }
    }

    /// The queue's receiving end, for the one writer task. `None` if already taken.
    pub fn take_receiver(&self) -> Option<mpsc::Receiver<AuditRecord>> {
        self.rx.lock().ok().and_then(|mut r| r.take())
    }
}

/// Writes queued records until `token` is cancelled, then drains what is left and returns.
///
/// # Errors
/// Never: write failures are logged, because a failing audit write must not stop the writer for later records.
pub async fn run_writer(
    catalog: Catalog,
    mut rx: mpsc::Receiver<AuditRecord>,
    token: CancellationToken,
) -> Result<(), String> {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            biased;
            () = token.cancelled() => break,
            n = rx.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    return Ok(());
                }
                write(&catalog, &mut batch).await;
            }
        }
    }
    // Shutdown: refuse new records, write every queued one.
    rx.close();
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        write(&catalog, &mut batch).await;
    }
    tracing::debug!("audit queue drained");
    Ok(())
}

async fn write(catalog: &Catalog, batch: &mut Vec<AuditRecord>) {
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=ATTEMPTS {
        match catalog.append_audit(batch).await {
            Ok(()) => {
                batch.clear();
                return;
            }
            Err(e) if attempt < ATTEMPTS => {
                tracing::warn!(error = %e, records = batch.len(), attempt, "audit write failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                tracing::error!(error = %e, records = batch.len(), "audit write failed; these audit records are lost");
            }
        }
    }
    batch.clear();
}

/// Keeps client-supplied text short and printable before it is stored.
pub fn clean_field(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(MAX_FIELD_CHARS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use ddsvault_catalog::AuditFilter;

    fn rec(i: usize) -> AuditRecord {
        AuditRecord {
            id: 0,
            time: Utc::now(),
            request_id: format!("R{i}"),
            access_key_id: Some("AK".into()),
            user: None,
            action: Some("DescribeBackups".into()),
            resources: vec!["*".into()],
            source_ip: "127.0.0.1".into(),
            secure: false,
            http_status: 200,
            code: None,
        }
    }

    /// Records queued before shutdown are all written, even when the writer is cancelled before it ran at all.
    #[tokio::test]
    async fn shutdown_drains_the_queue() {
        let catalog = ddsvault_catalog::open("sqlite::memory:")
            .await
            .expect("catalog");
        let log = AuditLog::new(2000);
        for i in 0..1000 {
            log.record(rec(i)).await;
        }
        let token = CancellationToken::new();
        token.cancel();
        let rx = log.take_receiver().expect("receiver");
        assert!(log.take_receiver().is_none());
        run_writer(catalog.clone(), rx, token)
            .await
            .expect("writer");
        let all = catalog
            .list_audit(&AuditFilter {
                limit: 5000,
                ..AuditFilter::default()
            })
            .await
            .expect("list");
        assert_eq!(all.len(), 1000);
    }

    /// A full queue makes the producer wait for the writer instead of dropping records.
    #[tokio::test]
    async fn full_queue_applies_back_pressure() {
        let catalog = ddsvault_catalog::open("sqlite::memory:")
            .await
            .expect("catalog");
        let log = std::sync::Arc::new(AuditLog::new(4));
        let rx = log.take_receiver().expect("receiver");
        let token = CancellationToken::new();
        let writer = tokio::spawn(run_writer(catalog.clone(), rx, token.clone()));
        for i in 0..50 {
            log.record(rec(i)).await;
        }
        token.cancel();
        writer.await.expect("join").expect("writer");
        let n = catalog
            .list_audit(&AuditFilter {
                limit: 100,
                ..AuditFilter::default()
            })
            .await
            .expect("list")
            .len();
        assert_eq!(n, 50);
    }

    #[test]
    fn clean_field_bounds_and_strips() {
        assert_eq!(clean_field("a\nb\u{7}c"), "abc");
        assert_eq!(clean_field(&"x".repeat(1000)).len(), MAX_FIELD_CHARS);
    }
}
