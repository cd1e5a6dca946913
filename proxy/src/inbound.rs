//! Inbound (world → app): detect TLS, terminate mTLS with the workload's
//! SVID, learn the peer's SPIFFE ID, detect HTTP/1, HTTP/2 or opaque TCP,
//! authorize (per connection for TCP, per request for HTTP) and forward to
//! the application on loopback.

mod canonical;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use http::uri::Authority;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::app::{AppClients, AppPort};
use crate::authz::{Authorizer, ConnInfo, Protocol as AuthzProtocol, Verdict};
use crate::counting::{ByteCounts, Counting};
use crate::denial;
use crate::detect::{self, Peeked, Protocol};
use crate::hop::{Alpn, tls_error_reason};
use crate::http::{self as h, Body};
use crate::limits::Limits;
use crate::metrics::{OpenGuard, PeerMetrics, ProxyMetrics};
use crate::orig_dst;
use crate::outcome::{self, BadRequest, Failure};
use crate::policy::{MtlsMode, Recheck};
use crate::quarantine::severable::Severable;
use crate::quarantine::{Peer, Quarantine};
use crate::rewind::{self, Rewind};
use crate::translate;
use ward_policy::path::PathNormalization;

/// On opaque ports a plaintext client may wait for the server to speak
/// first; a mesh client always sends its ClientHello at once. So a short
/// wait tells them apart without delaying server-first protocols long.
const OPAQUE_DETECT_TIMEOUT: Duration = Duration::from_millis(250);

/// Where an inbound connection goes.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// Transparent mode: the original destination (the pod address, or its
    /// port on loopback with `--inbound-to-loopback`).
    Original,
    /// Explicit mode: this application port on loopback.
    AppPort(u16),
}

pub struct Inbound {
    pub tls: TlsAcceptor,
    pub mode: MtlsMode,
    pub opaque_ports: Vec<u16>,
    pub authz: Arc<dyn Authorizer>,
    /// The policy engine, when policies are enforced: it also decides the
    /// mTLS mode per port and closes TCP connections a change denies.
    pub policy: Option<Arc<crate::policy::PolicyAuthorizer>>,
    pub apps: AppClients,
    pub metrics: Arc<ProxyMetrics>,
    pub limits: Limits,
    /// Addresses of the proxy's own listeners, to refuse loops.
    pub self_addrs: Vec<SocketAddr>,
    /// How request paths are normalized before they are authorized and
    /// forwarded.
    pub path_normalization: PathNormalization,
    /// The workload's own certificate: a connection ends when it expires.
    pub svid: Arc<ward_identity::tls::SvidCell>,
    /// Quarantined peers are refused after the handshake, and cut when an
    /// update quarantines them.
    pub quarantine: Arc<Quarantine>,
}

/// What every request on one inbound HTTP connection shares.
struct HttpConn {
    conn: Arc<ConnInfo>,
    app: AppPort,
    /// The connection's verdict: a denied connection denies every request.
    verdict: Verdict,
    peer: Arc<PeerMetrics>,
    /// The authority of requests whose URI has none, from `Host`.
    authority: h::FirstParsed<Authority>,
    /// `Host` for requests downgraded to HTTP/1.1, from their URI's authority.
    host: h::FirstParsed<HeaderValue>,
    /// The first request's decision and its `ward_authorization_decisions_total`
    /// counter: most connections get the same decision on every request.
    first_decision: OnceLock<(Verdict, IntCounter)>,
    /// Application data moved (message frames and tunnel bytes, not HTTP/2
    /// PINGs or SETTINGS): the idle timeout's clock.
    activity: Arc<ByteCounts>,
    /// Upgraded tunnels of this connection: run inside its task, so they
    /// keep its connection slot, idle timeout and policy tracking.
    tunnels: Mutex<JoinSet<()>>,
}

impl Inbound {
    pub async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        source: SocketAddr,
        target: Target,
        shutdown: CancellationToken,
    ) {
        let _open = OpenGuard::new(&self.metrics, "inbound");
        let metrics = self.metrics.clone();
        // Requests and TCP connections are recorded as they end; a
        // connection that ends before anything was proxied, here.
        if let Err(failure) = self.accept(tcp, source, target, shutdown).await {
            outcome::record_refused(&metrics, "inbound", source, &failure);
        }
    }

    /// Serves a connection; `Err` when it ends before anything was proxied.
    async fn accept(
        self: Arc<Self>,
        tcp: TcpStream,
        source: SocketAddr,
        target: Target,
        shutdown: CancellationToken,
    ) -> Result<(), Failure> {
        let _ = tcp.set_nodelay(true);
        let destination = match target {
            Target::AppPort(port) => {
                let local = tcp.local_addr().map_err(|_| Failure::ClientClosed)?;
                SocketAddr::new(local.ip(), port)
            }
            Target::Original => orig_dst::checked_destination(&tcp, &self.self_addrs)?,
        };
        // A quarantined pod's address, whatever it speaks (its plaintext
        // too, in PERMISSIVE or DISABLE mode).
        let from = Peer {
            spiffe_id: None,
            serial: None,
            address: source.ip(),
        };
        if self.quarantine.check(&from).is_some() {
            return Err(Failure::Quarantined);
        }
        let app = self.apps.for_addr(self.apps.app_addr(destination));
        let opaque = self.opaque_ports.contains(&destination.port());
        let mode = match &self.policy {
            Some(policy) => policy.mtls_mode(destination.port()),
            None => self.mode,
        };
        if mode == MtlsMode::Disable {
            let protocol = if opaque {
                Protocol::Opaque
            } else {
                self.peek_plaintext(&tcp).await
            };
            self.serve_plaintext(tcp, source, destination, protocol, app, shutdown)
                .await;
            return Ok(());
        }
        let timeout = if opaque {
            OPAQUE_DETECT_TIMEOUT
        } else {
            self.limits.detect_timeout
        };
        let plaintext = match detect::peek(&tcp, timeout).await {
            Ok(Peeked::Protocol(Protocol::Tls)) => {
                return self
                    .terminate_tls(tcp, source, destination, app, opaque, shutdown)
                    .await;
            }
            Ok(Peeked::Protocol(_) | Peeked::Silent) if mode != MtlsMode::Permissive => {
                return Err(Failure::PlaintextInStrictMode);
            }
            Ok(Peeked::Protocol(protocol)) if !opaque => protocol,
            Ok(Peeked::Protocol(_) | Peeked::Silent) => Protocol::Opaque,
            Ok(Peeked::Closed) | Err(_) => return Err(Failure::ClientClosed),
        };
        self.serve_plaintext(tcp, source, destination, plaintext, app, shutdown)
            .await;
        Ok(())
    }

    async fn peek_plaintext(&self, tcp: &TcpStream) -> Protocol {
        match detect::peek(tcp, self.limits.detect_timeout).await {
            Ok(Peeked::Protocol(Protocol::Http1)) => Protocol::Http1,
            Ok(Peeked::Protocol(Protocol::Http2)) => Protocol::Http2,
            _ => Protocol::Opaque,
        }
    }

    async fn terminate_tls(
        self: Arc<Self>,
        tcp: TcpStream,
        source: SocketAddr,
        destination: SocketAddr,
        app: AppPort,
        opaque: bool,
        shutdown: CancellationToken,
    ) -> Result<(), Failure> {
        let counts = Arc::new(ByteCounts::default());
        let accept = self.tls.accept(Counting::new(tcp, counts.clone()));
        let tls = match tokio::time::timeout(self.limits.header_timeout, accept).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(err)) => {
                return Err(Failure::TlsHandshake {
                    reason: tls_error_reason(&err),
                    error: Some(err),
                });
            }
            Err(_) => {
                return Err(Failure::TlsHandshake {
                    reason: "timeout",
                    error: None,
                });
            }
        };
        self.metrics
            .tls_handshakes
            .with_label_values(&["inbound"])
            .inc();
        let (leaf, alpn) = {
            let session = tls.get_ref().1;
            let leaf = session
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| ward_identity::svid::leaf_facts(leaf).ok());
            (leaf, session.alpn_protocol().and_then(Alpn::from_id))
        };
        let peer_id = leaf.as_ref().map(|l| l.spiffe_id.clone());
        let peer = Peer {
            spiffe_id: peer_id.clone(),
            serial: leaf.as_ref().map(|l| l.serial.clone()),
            address: source.ip(),
        };
        // Before a byte reaches the application; registered, so an update
        // that quarantines the peer later cuts the connection.
        let tracked = self.quarantine.admit(peer, "inbound").map_err(|hit| {
            debug!(%source, peer = ?peer_id.as_ref().map(|p| p.as_str()), entry = %hit.entry, matched = hit.by, "quarantined peer refused");
            Failure::Quarantined
        })?;
        let mut tls = Severable::new(tls, tracked);
        let conn = ConnInfo::new(peer_id, source, destination);
        // A connection lives no longer than either certificate it was
        // authenticated with: TLS checks validity only at the handshake,
        // and pooled HTTP/2 connections can live for days.
        let peer_expiry = leaf.map(|l| l.not_after);
        let expires = [peer_expiry, self.svid.not_after()]
            .into_iter()
            .flatten()
            .min();
        let protocol = match alpn {
            Some(Alpn::H2) => Protocol::Http2,
            Some(Alpn::Http1) => Protocol::Http1,
            Some(Alpn::Tcp) => Protocol::Opaque,
            None if opaque => Protocol::Opaque,
            // A peer that announced nothing: sniff the decrypted bytes.
            None => match rewind::sniff(&mut tls, self.limits.detect_timeout).await {
                Ok((prefix, detected)) => {
                    let protocol = match detected {
                        Some(Protocol::Http1) => Protocol::Http1,
                        Some(Protocol::Http2) => Protocol::Http2,
                        _ => Protocol::Opaque,
                    };
                    let io = Rewind::new(prefix, tls);
                    self.serve(io, counts, conn, expires, protocol, app, shutdown)
                        .await;
                    return Ok(());
                }
                Err(_) => return Err(Failure::ClientClosed),
            },
        };
        self.serve(tls, counts, conn, expires, protocol, app, shutdown)
            .await;
        Ok(())
    }

    /// Serves a plaintext connection: its peer has no identity.
    async fn serve_plaintext(
        self: Arc<Self>,
        tcp: TcpStream,
        source: SocketAddr,
        destination: SocketAddr,
        protocol: Protocol,
        app: AppPort,
        shutdown: CancellationToken,
    ) {
        // Registered with the quarantine by its source address: a pod
        // quarantined later (whose sidecar a root process inside it can
        // bypass to speak plaintext) loses its open plaintext connections
        // too, not only the new ones refused at accept.
        let from = Peer {
            spiffe_id: None,
            serial: None,
            address: source.ip(),
        };
        let Ok(tracked) = self.quarantine.admit(from, "inbound") else {
            debug!(%source, "plaintext connection from a quarantined address closed");
            return;
        };
        let counts = Arc::new(ByteCounts::default());
        let io = Counting::new(Severable::new(tcp, tracked), counts.clone());
        let conn = ConnInfo::new(None, source, destination);
        self.serve(io, counts, conn, None, protocol, app, shutdown)
            .await;
    }

    /// Serves a connection whose peer is known, counting it for that peer,
    /// until it ends, idles, a policy change denies it or `expires` (the
    /// earlier notAfter of the certificates of an mTLS connection) passes.
    #[allow(clippy::too_many_arguments)]
    async fn serve<I>(
        self: Arc<Self>,
        io: I,
        counts: Arc<ByteCounts>,
        conn: ConnInfo,
        expires: Option<time::OffsetDateTime>,
        protocol: Protocol,
        app: AppPort,
        shutdown: CancellationToken,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = Arc::new(self.metrics.peer("inbound", conn.peer_id.as_ref()));
        peer.connection_opened();
        let conn = Arc::new(conn);
        let http = matches!(protocol, Protocol::Http1 | Protocol::Http2);
        // Re-checked on every policy change: TCP against the policy, and a
        // plaintext connection against its port's mTLS mode.
        let recheck = match (http, conn.peer_id.is_some()) {
            (false, _) => Some(Recheck::Tcp),
            (true, false) => Some(Recheck::Mode),
            (true, true) => None,
        };
        let tracked = match (&self.policy, recheck) {
            (Some(policy), Some(recheck)) => Some(policy.track(conn.clone(), recheck)),
            _ => None,
        };
        let closed_by_policy = async {
            match &tracked {
                Some(t) => t.close.cancelled().await,
                None => std::future::pending().await,
            }
        };
        // HTTP idles on application data only; TCP on any byte.
        let activity = if http {
            Arc::new(ByteCounts::default())
        } else {
            counts.clone()
        };
        // Cancelled by a drain, or when a certificate of this connection
        // expires: HTTP connections then close gracefully.
        let closing = shutdown.child_token();
        let serve = async {
            if http {
                let http = Arc::new(HttpConn {
                    verdict: self.authz.connection(&conn, AuthzProtocol::Http),
                    conn: conn.clone(),
                    app,
                    peer: peer.clone(),
                    authority: Default::default(),
                    host: Default::default(),
                    first_decision: OnceLock::new(),
                    activity: activity.clone(),
                    tunnels: Mutex::new(JoinSet::new()),
                });
                let this = self.clone();
                let http2 = protocol == Protocol::Http2;
                let conn_http = http.clone();
                h::serve_connection(
                    io,
                    http2,
                    &self.limits,
                    closing.clone(),
                    "inbound",
                    move |req| {
                        let (this, http) = (this.clone(), conn_http.clone());
                        async move { this.request(&http, req).await }
                    },
                )
                .await;
                // An upgraded HTTP/1.1 connection ends here and lives on as
                // its tunnel.
                let mut tunnels = std::mem::take(&mut *http.tunnels.lock().expect("not poisoned"));
                while tunnels.join_next().await.is_some() {}
            } else {
                let verdict = self.authz.connection(&conn, AuthzProtocol::Tcp);
                self.serve_tcp(io, conn.clone(), verdict).await
            }
        };
        tokio::pin!(serve);
        tokio::select! {
            _ = &mut serve => {}
            _ = activity.idle_for(self.limits.idle_timeout) => {
                debug!(source = %conn.source, "closing an idle inbound connection");
            }
            _ = closed_by_policy => {
                debug!(source = %conn.source, "closing an inbound connection a policy change no longer allows");
            }
            _ = until(expires) => {
                info!(source = %conn.source, peer = ?conn.peer_id, "closing an inbound connection: a certificate it was authenticated with expired");
                self.metrics.expired_closed.inc();
                // Gracefully, as a drain does (HTTP/2 GOAWAY, HTTP/1.1 after
                // the request in flight): requests already sent finish, new
                // ones go over a new connection with the renewed
                // certificates. Opaque TCP ends at once.
                closing.cancel();
                let _ = tokio::time::timeout(EXPIRY_GRACE, &mut serve).await;
            }
        }
        let (received, sent) = counts.totals();
        peer.connection_closed(received, sent);
    }

    fn decision_counter(&self, verdict: &Verdict, protocol: AuthzProtocol) -> IntCounter {
        let (ns, name) = verdict.policy_labels();
        self.metrics
            .authz
            .with_label_values(&[verdict.action(), ns, name, protocol.as_str()])
    }

    /// Counts a request's decision; one the same as the connection's first
    /// (action and policy) costs an atomic add instead of a label lookup.
    fn count_request_decision(&self, http: &HttpConn, verdict: &Verdict) {
        match http.first_decision.get() {
            Some((first, counter))
                if first.allowed == verdict.allowed && first.policy == verdict.policy =>
            {
                counter.inc()
            }
            _ => {
                let counter = self.decision_counter(verdict, AuthzProtocol::Http);
                counter.inc();
                let _ = http.first_decision.set((verdict.clone(), counter));
            }
        }
    }

    async fn serve_tcp<I>(&self, io: I, conn: Arc<ConnInfo>, verdict: Verdict)
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let started = Instant::now();
        self.decision_counter(&verdict, AuthzProtocol::Tcp).inc();
        let relayed = if verdict.allowed {
            self.relay_tcp(io, &conn).await
        } else {
            // Closed before a single byte reaches the application.
            Err(Failure::Denied)
        };
        self.record_tcp(&conn, &verdict, started, relayed);
    }

    /// Copies an allowed TCP connection to the application and back;
    /// the bytes received and sent.
    async fn relay_tcp<I>(&self, mut io: I, conn: &ConnInfo) -> Result<(u64, u64), Failure>
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let app_addr = self.apps.app_addr(conn.destination);
        let mut app = crate::app::connect(app_addr, self.limits.connect_timeout)
            .await
            .map_err(|_| Failure::AppUnavailable)?;
        // A policy change that denies it ends the whole task (see `serve`).
        Ok(tokio::io::copy_bidirectional(&mut io, &mut app)
            .await
            .unwrap_or_default())
    }

    /// The one record of an opaque TCP connection: its access-log line
    /// and, when it never reached the application, its metric.
    fn record_tcp(
        &self,
        conn: &ConnInfo,
        verdict: &Verdict,
        started: Instant,
        relayed: Result<(u64, u64), Failure>,
    ) {
        let peer = conn.peer_id.as_ref().map(|p| p.as_str());
        match relayed {
            Ok((received, sent)) => {
                info!(target: "ward::access", direction = "inbound", protocol = "tcp", ?peer, decision = "allow", policy = %verdict.policy_display(), outcome = "served", bytes_received = received, bytes_sent = sent, duration_ms = started.elapsed().as_millis() as u64, "connection closed");
            }
            Err(Failure::Denied) => {
                info!(target: "ward::access", direction = "inbound", protocol = "tcp", ?peer, decision = "deny", policy = %verdict.policy_display(), rule = ?verdict.rule, reason = verdict.reason, outcome = Failure::Denied.label(), "connection denied");
            }
            Err(failure) => {
                outcome::record_refused(&self.metrics, "inbound", conn.source, &failure)
            }
        }
    }

    async fn request(&self, http: &HttpConn, req: Request<Incoming>) -> Response<Body> {
        http.activity.touch();
        let started = http.peer.request();
        let (mut parts, body) = req.into_parts();
        let shaped = canonical::canonicalize(
            &mut parts,
            http.conn.destination,
            self.path_normalization,
            &http.authority,
        );
        // Logged as authorized and forwarded.
        let (method, uri) = (parts.method.clone(), parts.uri.clone());
        let (verdict, served) = match shaped {
            Err(bad) => (None, Err(Failure::BadRequest(bad))),
            Ok(shape) => {
                let verdict = self.authorize(http, &parts, shape);
                let served = if verdict.allowed {
                    let body = self.watched_body(http, body);
                    self.forward(http, parts, body, shape).await
                } else {
                    Err(Failure::Denied)
                };
                (Some(verdict), served)
            }
        };
        let (mut response, failure) = outcome::answer(served);
        // What decided a 403, for an authenticated caller only.
        let denied = matches!(failure, Some(Failure::Denied));
        denial::mark(response.headers_mut(), &http.conn, verdict.as_ref(), denied);
        let elapsed = http.peer.response(response.status(), started);
        let request = Logged {
            method: &method,
            uri: &uri,
            status: response.status(),
            elapsed,
        };
        log_request(http, &request, verdict.as_ref(), failure.as_ref());
        response
    }

    /// A request's verdict, counted: a denied connection denies every
    /// request, and a CONNECT tunnel (arbitrary bytes) is allowed only
    /// where opaque TCP would be.
    fn authorize(
        &self,
        http: &HttpConn,
        parts: &http::request::Parts,
        shape: canonical::Shape,
    ) -> Verdict {
        let verdict = match (http.verdict.allowed, shape) {
            (false, _) => http.verdict.clone(),
            (true, canonical::Shape::Connect) => {
                self.authz.connection(&http.conn, AuthzProtocol::Tcp)
            }
            (true, _) => self.authz.request(&http.conn, parts),
        };
        self.count_request_decision(http, &verdict);
        verdict
    }

    /// The request body as forwarded: its frames keep the connection from
    /// idling, and a malformed body (bad chunking) is remembered, so the
    /// client hears 400 rather than a 502 blaming the application.
    fn watched_body(&self, http: &HttpConn, body: Incoming) -> WatchedBody {
        let activity = http.activity.clone();
        let failed = Arc::new(AtomicBool::new(false));
        let flag = failed.clone();
        let body = body
            .map_frame(move |frame| {
                activity.touch();
                frame
            })
            .map_err(move |err| {
                flag.store(true, Ordering::Relaxed);
                err
            })
            .boxed();
        WatchedBody { body, failed }
    }

    async fn forward(
        &self,
        http: &HttpConn,
        mut parts: http::request::Parts,
        body: WatchedBody,
        shape: canonical::Shape,
    ) -> Result<Response<Body>, Failure> {
        let (conn, app) = (&http.conn, &http.app);
        let downstream_http1 = parts.version != Version::HTTP_2;
        let accepts_trailers = translate::accepts_trailers(&parts.headers);
        // Only the proxy says who the peer is (hop-by-hop headers are gone
        // already, so nothing the client sent can remove this).
        parts.headers.remove(&h::XFCC);
        if let Some(value) = &conn.peer_header {
            parts.headers.insert(h::XFCC, value.clone());
        }
        let client_h2 = translate::client_spoke_h2(&mut parts);
        let tunnel = shape != canonical::Shape::Plain;
        let method = parts.method.clone();
        let use_http2 = client_h2 && !tunnel && app.speaks_h2().await;
        if !use_http2 {
            translate::request_to_http1_app(&mut parts, &http.host);
        }
        // A tunnel is re-checked on policy changes as what it was allowed as.
        let recheck = match shape {
            canonical::Shape::Plain => None,
            canonical::Shape::Connect => Some(Recheck::Tcp),
            canonical::Shape::Upgrade => Some(Recheck::Request(Box::new(copy_head(&parts)))),
        };
        if shape == canonical::Shape::Connect && !translate::connect_request_to_app(&mut parts) {
            return Err(BadRequest::ConnectTarget.into());
        }
        let WatchedBody { body, failed } = body;
        let mut req = Request::from_parts(parts, body);
        let downstream_upgrade = tunnel.then(|| hyper::upgrade::on(&mut req));
        let client = if use_http2 { &app.http2 } else { &app.http1 };
        let mut resp = match client.request(req).await {
            Ok(resp) => resp,
            Err(_) if failed.load(Ordering::Relaxed) => return Err(Failure::InvalidBody),
            Err(err) if err.is_connect() => return Err(Failure::AppUnavailable),
            Err(err) => {
                debug!(%err, "forwarding to the application failed");
                return Err(Failure::AppError);
            }
        };
        if let Some(downstream) = downstream_upgrade
            && translate::is_upgrade_response(&method, &resp)
        {
            let upstream = hyper::upgrade::on(&mut resp);
            self.spawn_tunnel(http, downstream, upstream, recheck);
        }
        translate::response_to_client(&mut resp);
        if downstream_http1 && accepts_trailers {
            translate::declare_grpc_trailers(resp.headers_mut());
        }
        let activity = http.activity.clone();
        activity.touch();
        Ok(resp.map(|b| {
            b.map_frame(move |frame| {
                activity.touch();
                frame
            })
            .boxed()
        }))
    }

    /// Runs a tunnel inside its connection's task: it counts against the
    /// connection cap, idles on its own bytes, and ends when a policy or
    /// mode change no longer allows what opened it.
    fn spawn_tunnel(
        &self,
        http: &HttpConn,
        downstream: hyper::upgrade::OnUpgrade,
        upstream: hyper::upgrade::OnUpgrade,
        recheck: Option<Recheck>,
    ) {
        let tracked = match (&self.policy, recheck) {
            (Some(policy), Some(recheck)) => Some(policy.track(http.conn.clone(), recheck)),
            _ => None,
        };
        let activity = http.activity.clone();
        http.tunnels
            .lock()
            .expect("not poisoned")
            .spawn(async move {
                let closed = async {
                    match &tracked {
                        Some(t) => t.close.cancelled().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = crate::tunnel::splice_counted(downstream, upstream, Some(activity)) => {}
                    _ = closed => debug!("tunnel closed by a policy change"),
                }
            });
    }
}

/// A request body being forwarded, and whether the client's side of it
/// turned out malformed.
struct WatchedBody {
    body: Body,
    failed: Arc<AtomicBool>,
}

/// The request line and headers of `parts` (not its extensions), kept to
/// authorize a tunnel's request again later.
fn copy_head(parts: &http::request::Parts) -> http::request::Parts {
    let mut copy = Request::new(()).into_parts().0;
    copy.method = parts.method.clone();
    copy.uri = parts.uri.clone();
    copy.version = parts.version;
    copy.headers = parts.headers.clone();
    copy
}

/// What the access log says of a request besides its verdict and failure.
struct Logged<'a> {
    method: &'a http::Method,
    uri: &'a Uri,
    status: StatusCode,
    elapsed: Duration,
}

/// The one access-log line of an inbound request.
fn log_request(
    http: &HttpConn,
    request: &Logged<'_>,
    verdict: Option<&Verdict>,
    failure: Option<&Failure>,
) {
    let peer = http.conn.peer_id.as_ref().map(|p| p.as_str());
    let Logged {
        method,
        uri,
        status,
        elapsed,
    } = request;
    let status = status.as_u16();
    let outcome = failure.map_or("served", Failure::label);
    let duration_us = elapsed.as_micros() as u64;
    match verdict {
        Some(verdict) => {
            // An allowed request that still failed: why (a denial is the
            // verdict's to explain).
            let error = failure
                .filter(|f| !matches!(f, Failure::Denied))
                .map(tracing::field::display);
            info!(target: "ward::access", direction = "inbound", ?peer, %method, authority = ?uri.authority().map(|a| a.as_str()), path = uri.path(), status, decision = verdict.action(), policy = %verdict.policy_display(), rule = ?verdict.rule, reason = verdict.reason, outcome, error, duration_us, "request");
        }
        // Refused before the policy saw it (a bad request).
        None => {
            let reason = failure.map(tracing::field::display);
            info!(target: "ward::access", direction = "inbound", ?peer, %method, path = uri.path(), status, decision = "refused", reason, outcome, duration_us, "request");
        }
    }
}

/// How long requests in flight on a connection whose certificate expired
/// may take to finish.
const EXPIRY_GRACE: Duration = Duration::from_secs(10);

/// Resolves at `deadline` (never for `None`).
async fn until(deadline: Option<time::OffsetDateTime>) {
    let Some(deadline) = deadline else {
        return std::future::pending().await;
    };
    let left = deadline - time::OffsetDateTime::now_utc();
    tokio::time::sleep(left.try_into().unwrap_or(Duration::ZERO)).await;
}
