//! Accepting and serving connections, shared by the control plane's three
//! listeners (API, admin, webhook). Nothing waits forever on a peer:
//!
//! - a connection cap that *refuses* (closes at once, counted) instead of
//!   queueing, so a flood never delays the connections already served;
//! - a bound on unauthenticated connections (before the TLS handshake, or
//!   without a client certificate) per source address, so one pod cannot
//!   take the whole cap;
//! - a TLS handshake timeout, an HTTP/1 request-header timeout, and an idle
//!   timeout (no request in flight) that also ends HTTP/2 connections whose
//!   client never sends a request;
//! - HTTP/2 keepalive PINGs (a dead peer is dropped) and a per-listener
//!   concurrent-stream limit;
//! - a graceful end when `shutdown` turns true.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{debug, warn};

/// Bounds of one listener. Defaults suit a deployment; every one is a flag
/// (`WARD_MAX_CONNECTIONS`, `WARD_MAX_UNAUTHENTICATED_PER_SOURCE`,
/// `WARD_HANDSHAKE_TIMEOUT`, `WARD_HEADER_TIMEOUT`, `WARD_IDLE_TIMEOUT`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Connections from one source address that have not (yet) presented
    /// a verified client certificate.
    pub max_unauthenticated_per_source: usize,
    /// Longest a client may take to finish the TLS handshake.
    pub handshake_timeout: Duration,
    /// Longest a client may take to send an HTTP/1 request's headers.
    pub header_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            max_unauthenticated_per_source: 64,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
        }
    }
}

/// HTTP/2 PING interval; a PING unanswered for as long again drops the peer.
const KEEPALIVE: Duration = Duration::from_secs(20);
/// Longest a graceful close (GOAWAY, in-flight requests) may take.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// `ward_cp_connections_*`: per listener, what was refused, what the
/// timeouts closed, what is open.
pub struct ListenerMetrics {
    pub refused: IntCounterVec,
    pub closed: IntCounterVec,
    pub open: IntGaugeVec,
}

impl ListenerMetrics {
    pub fn new() -> Self {
        let refused = IntCounterVec::new(
            Opts::new(
                "ward_cp_connections_refused_total",
                "Connections closed as soon as accepted, by listener and reason (max_connections, per_source).",
            ),
            &["listener", "reason"],
        )
        .expect("valid metric");
        let closed = IntCounterVec::new(
            Opts::new(
                "ward_cp_connections_timed_out_total",
                "Connections the control plane closed because the peer was too slow, by listener and reason (handshake, idle).",
            ),
            &["listener", "reason"],
        )
        .expect("valid metric");
        let open = IntGaugeVec::new(
            Opts::new("ward_cp_connections", "Open connections, by listener."),
            &["listener"],
        )
        .expect("valid metric");
        for listener in ["api", "webhook", "admin"] {
            for reason in ["max_connections", "per_source"] {
                refused.with_label_values(&[listener, reason]).reset();
            }
            for reason in ["handshake", "idle"] {
                closed.with_label_values(&[listener, reason]).reset();
            }
            open.with_label_values(&[listener]).set(0);
        }
        ListenerMetrics {
            refused,
            closed,
            open,
        }
    }

    pub fn register(&self, registry: &Registry) {
        for collector in [
            Box::new(self.refused.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(self.closed.clone()),
            Box::new(self.open.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric registered once");
        }
    }
}

impl Default for ListenerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// One listener's settings: its name (metrics, logs), bounds and HTTP/2
/// stream limit.
#[derive(Clone)]
pub struct Settings {
    pub what: &'static str,
    pub limits: Limits,
    /// Concurrent HTTP/2 streams per connection.
    pub max_streams: u32,
    /// HTTP/2 flow-control windows (bytes a peer may send unread).
    pub stream_window: u32,
    pub connection_window: u32,
    pub metrics: Arc<ListenerMetrics>,
}

/// Counts of open and unauthenticated connections, shared by a listener's
/// connections.
struct Tally {
    open: usize,
    unauthenticated: HashMap<IpAddr, usize>,
}

/// A connection's place in the tally, given back when it ends.
struct Slot {
    tally: Arc<Mutex<Tally>>,
    source: Option<IpAddr>,
    gauge: prometheus::IntGauge,
}

impl Slot {
    fn release_source(&mut self) {
        if let Some(ip) = self.source.take() {
            let mut tally = self.tally.lock().expect("not poisoned");
            if let Some(n) = tally.unauthenticated.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    tally.unauthenticated.remove(&ip);
                }
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.release_source();
        self.tally.lock().expect("not poisoned").open -= 1;
        self.gauge.dec();
    }
}

/// An accepted connection: its peer, its slot, and the listener's settings.
pub struct Conn {
    pub peer: SocketAddr,
    slot: Slot,
    settings: Settings,
    shutdown: watch::Receiver<bool>,
}

impl Conn {
    /// The peer presented a verified client certificate: it no longer
    /// counts against its source address's unauthenticated bound.
    pub fn authenticated(&mut self) {
        self.slot.release_source();
    }

    /// The TLS handshake, within the handshake timeout; `None` (logged,
    /// counted when it timed out) when it fails.
    pub async fn handshake(
        &self,
        acceptor: &TlsAcceptor,
        tcp: TcpStream,
    ) -> Option<TlsStream<TcpStream>> {
        let (what, peer) = (self.settings.what, self.peer);
        match tokio::time::timeout(self.settings.limits.handshake_timeout, acceptor.accept(tcp))
            .await
        {
            Ok(Ok(tls)) => Some(tls),
            Ok(Err(err)) => {
                warn!(listener = what, %peer, %err, "TLS handshake failed");
                None
            }
            Err(_) => {
                self.timed_out("handshake");
                debug!(listener = what, %peer, "TLS handshake timed out");
                None
            }
        }
    }

    fn timed_out(&self, reason: &str) {
        self.settings
            .metrics
            .closed
            .with_label_values(&[self.settings.what, reason])
            .inc();
    }

    /// Serves HTTP/1.1 or HTTP/2 on `io` until the client is done, it has
    /// been idle for the idle timeout, or `shutdown` (which lets requests
    /// in flight finish, within [`CLOSE_GRACE`]).
    pub async fn serve_http<I, S, B>(self, io: I, service: S)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: Service<http::Request<Incoming>, Response = http::Response<B>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: Body + Unpin + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Conn {
            peer,
            slot,
            settings,
            mut shutdown,
        } = self;
        let what = settings.what;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(settings.limits.header_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(settings.max_streams)
            .initial_stream_window_size(settings.stream_window)
            .initial_connection_window_size(settings.connection_window)
            .max_header_list_size(64 * 1024)
            .keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE);
        let (activity, mut idle) = watch::channel(Activity {
            in_flight: 0,
            since: Instant::now(),
        });
        let service = Tracked {
            inner: service,
            activity: Arc::new(activity),
        };
        let conn = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let idle_timeout = settings.limits.idle_timeout;
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(err) = result {
                    debug!(listener = what, %peer, %err, "connection ended with an error");
                }
            }
            _ = idle_for(&mut idle, idle_timeout) => {
                settings.metrics.closed.with_label_values(&[what, "idle"]).inc();
                debug!(listener = what, %peer, "closing an idle connection");
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
            }
            _ = stopping(&mut shutdown) => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
            }
        }
        drop(slot);
    }
}

/// Accepts until `shutdown`, serving each connection with `serve` on its
/// own task, then waits for the open ones to end. Over the cap (or over
/// its source's unauthenticated bound) a connection is closed at once.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    settings: Settings,
    mut shutdown: watch::Receiver<bool>,
    serve: F,
) where
    F: Fn(TcpStream, Conn) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let what = settings.what;
    let tally = Arc::new(Mutex::new(Tally {
        open: 0,
        unauthenticated: HashMap::new(),
    }));
    let gauge = settings.metrics.open.with_label_values(&[what]);
    let mut conns = JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, say: do not spin.
                    warn!(listener = what, %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopping(&mut shutdown) => break,
        };
        let refusal = {
            let mut tally = tally.lock().expect("not poisoned");
            let from_source = tally.unauthenticated.get(&peer.ip()).copied().unwrap_or(0);
            if tally.open >= settings.limits.max_connections {
                Some("max_connections")
            } else if from_source >= settings.limits.max_unauthenticated_per_source {
                Some("per_source")
            } else {
                tally.open += 1;
                *tally.unauthenticated.entry(peer.ip()).or_default() += 1;
                None
            }
        };
        if let Some(reason) = refusal {
            settings
                .metrics
                .refused
                .with_label_values(&[what, reason])
                .inc();
            debug!(listener = what, %peer, reason, "connection refused");
            drop(tcp);
            continue;
        }
        gauge.inc();
        let _ = tcp.set_nodelay(true);
        let conn = Conn {
            peer,
            slot: Slot {
                tally: tally.clone(),
                source: Some(peer.ip()),
                gauge: gauge.clone(),
            },
            settings: settings.clone(),
            shutdown: shutdown.clone(),
        };
        conns.spawn(serve(tcp, conn));
        // Reap finished connections so the set does not grow without bound.
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// Resolves when `shutdown` turns true (or its sender is gone).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Requests in flight on a connection, and since when there are none.
struct Activity {
    in_flight: usize,
    since: Instant,
}

/// Resolves once no request has been in flight for `timeout`.
async fn idle_for(activity: &mut watch::Receiver<Activity>, timeout: Duration) {
    loop {
        let deadline = {
            let now = activity.borrow_and_update();
            (now.in_flight == 0).then(|| now.since + timeout)
        };
        match deadline {
            Some(deadline) => tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                changed = activity.changed() => if changed.is_err() { return },
            },
            None => {
                if activity.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A service that counts its requests in flight: from the call until the
/// response body is finished or dropped.
struct Tracked<S> {
    inner: S,
    activity: Arc<watch::Sender<Activity>>,
}

struct InFlight(Arc<watch::Sender<Activity>>);

impl InFlight {
    fn start(activity: &Arc<watch::Sender<Activity>>) -> Self {
        activity.send_modify(|a| a.in_flight += 1);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|a| {
            a.in_flight -= 1;
            if a.in_flight == 0 {
                a.since = Instant::now();
            }
        });
    }
}

impl<S, B> Service<http::Request<Incoming>> for Tracked<S>
where
    S: Service<http::Request<Incoming>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    B: Body + Unpin + Send + 'static,
{
    type Response = http::Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        let guard = InFlight::start(&self.activity);
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody {
                inner: body,
                _guard: guard,
            }))
        })
    }
}

/// A response body that keeps its request counted as in flight.
struct TrackedBody<B> {
    inner: B,
    _guard: InFlight,
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
