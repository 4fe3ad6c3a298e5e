//! Serving connections with bounds that `axum::serve` does not have (issue 17.3: 20,000 half-sent requests used
//! up the process's file descriptors and the API stopped answering, with nothing logged).
//!
//! - **Header timeout**: hyper's `header_read_timeout` closes a connection that has not sent a complete request
//!   head within `header_timeout` of waiting for one: after it opened, and again after each answer on a
//!   kept-alive connection (hyper restarts the timer there), so it is also the keep-alive idle limit.
//! - **Stalled answers**: a write that makes no progress for `idle_timeout` (a client that stopped reading) fails
//!   the connection ([`WriteDeadline`]). Request bodies get the same time in the router.
//! - **Connection cap**: at most `max_connections` connections per listener. At the cap the connection that has
//!   waited longest for a request head (fresh or kept alive, with no request in flight) is closed to make room,
//!   so stalled connections cannot keep a new client out; only when every connection has a request in flight
//!   does accepting wait. Both are logged, at most every [`CAP_LOG_EVERY`].
//! - **File descriptors**: [`raise_fd_limit`] lifts the soft `RLIMIT_NOFILE` to the hard limit, and the cap is
//!   lowered to what the limit leaves after a reserve for data files and driver connections.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::config::ServerConfig;
use crate::router::Transport;

/// Least interval between two "connection cap reached" log lines.
pub const CAP_LOG_EVERY: Duration = Duration::from_secs(10);
/// File descriptors kept out of the connection cap: catalog, repository files, driver connections, TLS
/// handshakes in progress.
const FD_RESERVE: u64 = 512;
/// How long shutdown waits for connections with a request in flight before dropping them.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// The bounds of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Limits {
    /// The configured bounds, with the cap lowered to what `fd_limit` (the soft `RLIMIT_NOFILE`, if known)
    /// leaves for `listeners` listeners.
    pub fn new(cfg: &ServerConfig, fd_limit: Option<u64>, listeners: usize) -> Self {
        let mut max_connections = cfg.max_connections;
        if let Some(limit) = fd_limit {
            let usable = limit.saturating_sub(FD_RESERVE) / (listeners.max(1) as u64);
            let allowed = usize::try_from(usable).unwrap_or(usize::MAX).max(16);
            if allowed < max_connections {
                tracing::warn!(
                    configured = max_connections,
                    allowed,
                    fd_limit = limit,
                    "server.max_connections lowered to fit the open-file limit (raise `ulimit -n` to allow more)"
                );
                max_connections = allowed;
            }
        }
        Self {
            header_timeout: cfg.header_timeout,
            idle_timeout: cfg.idle_timeout,
            max_connections,
        }
    }
}

/// Raises the soft open-file limit to the hard one; returns the soft limit in effect (None if unlimited or
/// unknown).
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        let before = lim.current;
        lim.current = lim.maximum;
        match setrlimit(Resource::Nofile, lim) {
            Ok(()) => {
                tracing::debug!(from = ?before, to = ?lim.current, "raised the open-file limit")
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not raise the open-file limit");
                lim.current = before;
            }
        }
    }
    lim.current
}

/// Serves `router` on `listener` until `shutdown`, then lets connections with a request in flight finish (for at
/// most [`DRAIN_DEADLINE`]).
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: Limits,
    secure: bool,
    shutdown: CancellationToken,
) where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let tracker = Arc::new(Tracker::default());
    let tasks = TaskTracker::new();
    let mut cap_log = CapLog::default();
    'accept: loop {
        // Make room before accepting, so that at most `max_connections` are ever open.
        loop {
            let open = tracker.open();
            if open < limits.max_connections {
                break;
            }
            if tracker.evict_oldest_idle() {
                cap_log.evicted(limits.max_connections);
                break;
            }
            cap_log.waiting(limits.max_connections);
            tokio::select! {
                () = tracker.changed.notified() => {}
                () = shutdown.cancelled() => break 'accept,
            }
        }
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let conn = tracker.register();
        let router = router.clone();
        let stop = shutdown.clone();
        tasks.spawn(serve_connection(
            io, peer, conn, router, limits, secure, stop,
        ));
    }
    drop(listener);
    tasks.close();
    if tokio::time::timeout(DRAIN_DEADLINE, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = tracker.open(),
            "connections still busy after the shutdown deadline; closing them"
        );
    }
}

async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    conn: Arc<ConnHandle>,
    router: Router,
    limits: Limits,
    secure: bool,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let evicted = Arc::clone(&conn.evict);
    let svc_conn = Arc::clone(&conn);
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        // What `into_make_service_with_connect_info` and the TLS layer used to provide.
        req.extensions_mut().insert(ConnectInfo(peer));
        if secure {
            req.extensions_mut().insert(Transport { secure: true });
        }
        let busy = BusyGuard::new(Arc::clone(&svc_conn));
        let mut router = router.clone();
        async move {
            // `Router` is always ready: `call` without `poll_ready` is what axum's own server does.
            let response = match router.call(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            // The connection stays busy until the answer's body has been written (or dropped), so a download
            // in progress is never taken for an idle connection.
            Ok::<_, Infallible>(response.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _ = &busy;
                    frame
                }))
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let io = TokioIo::new(WriteDeadline::new(io, limits.idle_timeout));
    let connection = builder.serve_connection(io, svc);
    tokio::pin!(connection);
    let result = tokio::select! {
        r = connection.as_mut() => r,
        () = evicted.notified() => {
            tracing::debug!(%peer, "closed an idle connection to make room (connection cap)");
            return;
        }
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        // Timeouts and resets are the client's business; they are counted, not each logged loudly.
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
    drop(conn);
}

/// Which connections are open and which of them wait for a request head (oldest first).
#[derive(Default)]
struct Tracker {
    state: Mutex<TrackerState>,
    /// A connection closed or became idle: the accept loop may find room.
    changed: Notify,
}

#[derive(Default)]
struct TrackerState {
    next_id: u64,
    conns: HashMap<u64, Slot>,
    idle: BTreeSet<(Instant, u64)>,
}

struct Slot {
    busy: usize,
    idle_since: Option<Instant>,
    evict: Arc<Notify>,
}

impl Tracker {
    fn lock(&self) -> MutexGuard<'_, TrackerState> {
        // Every critical section leaves the maps consistent before it could panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn open(&self) -> usize {
        self.lock().conns.len()
    }

    fn register(self: &Arc<Self>) -> Arc<ConnHandle> {
        let now = Instant::now();
        let evict = Arc::new(Notify::new());
        let mut st = self.lock();
        let id = st.next_id;
        st.next_id += 1;
        st.conns.insert(
            id,
            Slot {
                busy: 0,
                idle_since: Some(now),
                evict: Arc::clone(&evict),
            },
        );
        st.idle.insert((now, id));
        Arc::new(ConnHandle {
            id,
            tracker: Arc::clone(self),
            evict,
        })
    }

    /// Closes the connection that has waited longest for a request head; false if every connection is busy.
    fn evict_oldest_idle(&self) -> bool {
        let mut st = self.lock();
        let Some((_, id)) = st.idle.pop_first() else {
            return false;
        };
        if let Some(slot) = st.conns.remove(&id) {
            // `notify_one` keeps the permit if the task is not waiting yet.
            slot.evict.notify_one();
        }
        true
    }

    fn busy(&self, id: u64) {
        let mut st = self.lock();
        let Some(slot) = st.conns.get_mut(&id) else {
            return;
        };
        slot.busy += 1;
        if let Some(since) = slot.idle_since.take() {
            st.idle.remove(&(since, id));
        }
    }

    fn done(&self, id: u64) {
        let mut st = self.lock();
        let Some(slot) = st.conns.get_mut(&id) else {
            return;
        };
        slot.busy = slot.busy.saturating_sub(1);
        if slot.busy == 0 {
            let now = Instant::now();
            slot.idle_since = Some(now);
            st.idle.insert((now, id));
            drop(st);
            self.changed.notify_one();
        }
    }

    fn closed(&self, id: u64) {
        let mut st = self.lock();
        if let Some(slot) = st.conns.remove(&id) {
            if let Some(since) = slot.idle_since {
                st.idle.remove(&(since, id));
            }
        }
        drop(st);
        self.changed.notify_one();
    }
}

/// One open connection; dropping it (when its task ends) frees its place.
struct ConnHandle {
    id: u64,
    tracker: Arc<Tracker>,
    evict: Arc<Notify>,
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        self.tracker.closed(self.id);
    }
}

/// Marks its connection busy from the request head until the answer is written.
struct BusyGuard(Arc<ConnHandle>);

impl BusyGuard {
    fn new(conn: Arc<ConnHandle>) -> Self {
        conn.tracker.busy(conn.id);
        Self(conn)
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.tracker.done(self.0.id);
    }
}

/// Rate-limited reporting of the connection cap.
#[derive(Default)]
struct CapLog {
    last: Option<Instant>,
    evicted: u64,
    waited: u64,
}

impl CapLog {
    fn evicted(&mut self, cap: usize) {
        self.evicted += 1;
        self.flush(cap);
    }

    fn waiting(&mut self, cap: usize) {
        self.waited += 1;
        self.flush(cap);
    }

    fn flush(&mut self, cap: usize) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < CAP_LOG_EVERY)
        {
            return;
        }
        self.last = Some(now);
        tracing::warn!(
            max_connections = cap,
            idle_closed = self.evicted,
            all_busy_waits = self.waited,
            "connection cap reached: closing the longest-idle connections to make room (counts since the last report)"
        );
        self.evicted = 0;
        self.waited = 0;
    }
}

/// Fails a write that has made no progress for `timeout`: a client that stops reading its answer cannot hold the
/// connection (and the handler's memory) forever.
struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// Called when the inner write is pending: arms the deadline, or reports that it passed.
    fn check(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let timeout = self.timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(sleep.as_mut().poll(cx));
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client did not read the answer in time",
        ))
    }

    fn on_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        res: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match res {
            Poll::Pending => match self.check(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
            done => {
                self.stalled = None;
                done
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.on_write(cx, res)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.on_write(cx, res)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = Pin::new(&mut self.inner).poll_flush(cx);
        self.on_write(cx, res)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.on_write(cx, res)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn eviction_takes_the_longest_idle_and_never_a_busy_connection() {
        let t = Arc::new(Tracker::default());
        let a = t.register();
        let b = t.register();
        let c = t.register();
        let busy_a = BusyGuard::new(Arc::clone(&a));
        assert_eq!(t.open(), 3);
        // `a` is busy: `b` is the longest idle.
        assert!(t.evict_oldest_idle());
        assert_eq!(t.open(), 2);
        assert!(!t.lock().conns.contains_key(&b.id));
        // `a` finishes its answer: it is now the youngest idle, so `c` goes next.
        drop(busy_a);
        assert!(t.evict_oldest_idle());
        assert!(t.lock().conns.contains_key(&a.id));
        let _busy = BusyGuard::new(Arc::clone(&a));
        assert!(!t.evict_oldest_idle(), "only a busy connection is left");
        drop((b, c));
        assert_eq!(t.open(), 1);
    }

    #[test]
    fn limits_fit_the_fd_limit() {
        let cfg = ServerConfig::default();
        assert_eq!(Limits::new(&cfg, None, 2).max_connections, 4096);
        assert_eq!(Limits::new(&cfg, Some(1024), 2).max_connections, 256);
        assert_eq!(Limits::new(&cfg, Some(100), 1).max_connections, 16);
        assert_eq!(Limits::new(&cfg, Some(1 << 20), 1).max_connections, 4096);
    }

    /// A peer that never reads makes the writer fail after the deadline instead of waiting forever.
    #[tokio::test]
    async fn unread_answer_times_out() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut w = WriteDeadline::new(a, Duration::from_millis(200));
        let big = vec![0u8; 64 * 1024];
        let started = Instant::now();
        let e = w.write_all(&big).await.expect_err("stalls");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));
        // A reading peer is fine, however long the whole transfer takes.
        let (a, mut b2) = tokio::io::duplex(1024);
        let mut w = WriteDeadline::new(a, Duration::from_millis(200));
        let reader = tokio::spawn(async move {
            let mut sink = Vec::new();
            b2.read_to_end(&mut sink).await.map(|_| sink.len())
        });
        w.write_all(&big).await.expect("reader keeps up");
        w.shutdown().await.expect("shutdown");
        assert_eq!(reader.await.expect("join").expect("read"), big.len());
        let mut first = [0u8; 16];
        b.read_exact(&mut first)
            .await
            .expect("the stalled peer got the start");
    }
}
