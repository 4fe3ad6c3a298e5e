//! The HTTPS listener (`listen_tls`): rustls over the same router as plain HTTP, marked secure so that RAM's
//! `acs:SecureTransport` is true for its calls.
//!
//! Handshakes run concurrently inside `accept` and each has a deadline (`[server] header_timeout_secs`), so a
//! client that connects and never finishes its handshake cannot hold up other clients; when
//! [`MAX_PENDING_HANDSHAKES`] are in progress, the oldest is abandoned to make room, so stalled handshakes cannot
//! keep new clients waiting either.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinSet};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::error::ConfigError;

/// How long a client gets to complete its TLS handshake unless set with [`TlsListener::handshake_timeout`].
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; at this number the oldest is abandoned for a new connection.
pub const MAX_PENDING_HANDSHAKES: usize = 256;

/// Builds the server configuration from PEM files: a certificate chain (leaf first) and its private key (PKCS#8,
/// PKCS#1 or SEC1).
///
/// # Errors
/// Unreadable or invalid files, or a key that does not match the certificate. Messages name the file, never its
/// contents.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| ConfigError(format!("tls_cert {}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| ConfigError(format!("tls_cert {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(ConfigError(format!(
            "tls_cert {}: no certificate found",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ConfigError(format!("tls_key {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError(format!("TLS setup: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ConfigError(format!("tls_cert/tls_key do not form a usable pair: {e}")))?;
    Ok(Arc::new(config))
}

/// A TCP listener that hands out completed TLS connections.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
    /// Handshakes in start order, to abandon the oldest (finished ones are skipped and pruned).
    started: VecDeque<AbortHandle>,
    timeout: Duration,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> Self {
        Self {
            tcp,
            acceptor: TlsAcceptor::from(config),
            handshakes: JoinSet::new(),
            started: VecDeque::new(),
            timeout: HANDSHAKE_TIMEOUT,
        }
    }

    /// Sets the handshake deadline.
    #[must_use]
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Abandons the oldest handshake still in progress.
    fn abandon_oldest(&mut self) {
        while let Some(h) = self.started.pop_front() {
            if !h.is_finished() {
                h.abort();
                tracing::debug!("abandoned the oldest pending TLS handshake to make room");
                return;
            }
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept() => match accepted {
                    Ok((stream, peer)) => {
                        if self.handshakes.len() >= MAX_PENDING_HANDSHAKES {
                            self.abandon_oldest();
                        }
                        if self.started.len() > 2 * MAX_PENDING_HANDSHAKES {
                            self.started.retain(|h| !h.is_finished());
                        }
                        let acceptor = self.acceptor.clone();
                        let timeout = self.timeout;
                        let handle = self.handshakes.spawn(async move {
                            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => Some((tls, peer)),
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                    None
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    None
                                }
                            }
                        });
                        self.started.push_back(handle);
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "TLS accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(conn)) = done {
                        return conn;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_are_named_without_contents() {
        let dir = tempfile_dir();
        let missing = dir.join("missing.pem");
        let e = server_config(&missing, &missing).expect_err("missing");
        assert!(
            e.0.contains("tls_cert") && e.0.contains("missing.pem"),
            "{}",
            e.0
        );
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "SECRETJUNK not a pem file").expect("write");
        let e = server_config(&junk, &junk).expect_err("junk");
        assert!(e.0.contains("tls_cert"), "{}", e.0);
        assert!(!e.0.contains("SECRETJUNK"), "{}", e.0);
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("ddsvault-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }
}
