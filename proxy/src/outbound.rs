//! Outbound (app → world): find where the application meant to go, look it
//! up in the endpoint table, and either carry the traffic over mTLS to the
//! destination's sidecar (verifying its SPIFFE ID) or pass it through.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::uri::Authority;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1 as client1, http2 as client2};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};
use ward_identity::SpiffeId;

use crate::counting::{ByteCounts, Counting};
use crate::detect::{self, Peeked, Protocol};
use crate::endpoints::{Destinations, Resolved, Unknown};
use crate::hop::Alpn;
use crate::http::{self as h, Body};
use crate::limits::Limits;
use crate::metrics::{OpenGuard, PeerMetrics, ProxyMetrics};
use crate::orig_dst;
use crate::outcome::{self, Failure};
use crate::translate;
use crate::upstream::retire::Retire;
use crate::upstream::retry::{Resend, SendFailed};
use crate::upstream::{PoolSlot, Upstream, UpstreamError};

mod service;

/// What the outbound side does with a destination that has no sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum UnmeshedEgress {
    /// Pass the connection through untouched (plaintext stays plaintext).
    #[default]
    Allow,
    /// Refuse it: locked-down egress.
    Deny,
}

/// The protocol between the two sidecars for HTTP traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum UpstreamProtocol {
    /// HTTP/2: one multiplexed connection per destination carries every
    /// request, whatever the application spoke.
    #[default]
    H2,
    /// HTTP/1.1 for HTTP/1.1 clients, one upstream connection per
    /// application connection. HTTP/2 clients (gRPC) still get HTTP/2, on
    /// one upstream connection per application connection.
    Http1,
}

#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// Transparent mode: where the application connected before iptables.
    Original,
    /// Explicit mode: a fixed destination.
    Fixed(SocketAddr),
}

pub struct Outbound {
    pub destinations: Arc<Destinations>,
    /// How long a connection to an address not known yet waits for
    /// discovery's answer before it is refused.
    pub discovery_timeout: std::time::Duration,
    pub upstream: Arc<Upstream>,
    pub unmeshed: UnmeshedEgress,
    pub opaque_ports: Vec<u16>,
    pub pooled: bool,
    pub protocol: UpstreamProtocol,
    pub metrics: Arc<ProxyMetrics>,
    pub limits: Limits,
    pub self_addrs: Vec<SocketAddr>,
    /// The proxy's connection tracker, for tunnels (see `Inbound::tracker`).
    pub tracker: TaskTracker,
}

/// The upstream connection owned by one application connection (no pool,
/// or HTTP/1.1 between sidecars), replaced by a new one when it closes or
/// retires (its certificates are about to expire: upstream/retire.rs).
enum Owned {
    Http1(client1::SendRequest<Body>, Retire),
    Http2(client2::SendRequest<Body>, Retire),
}

type OwnedSlot = Arc<tokio::sync::Mutex<Option<Owned>>>;

/// Per application connection: where it goes and, when not pooled, its own
/// upstream connection.
struct Route {
    dest: SocketAddr,
    expected: SpiffeId,
    link: Link,
    /// The authority of requests whose URI has none, from `Host`.
    authority: h::FirstParsed<Authority>,
}

/// How a route reaches its destination's sidecar.
enum Link {
    /// Its own upstream connection (no pool, or HTTP/1.1 between sidecars).
    Owned(OwnedSlot),
    /// The destination's shared HTTP/2 connection.
    Pooled(PoolSlot),
}

impl Outbound {
    pub async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        source: SocketAddr,
        target: Target,
        shutdown: CancellationToken,
    ) {
        let _open = OpenGuard::new(&self.metrics, "outbound");
        let metrics = self.metrics.clone();
        // Requests and TCP connections are recorded as they end; a
        // connection that ends before anything was proxied, here.
        if let Err(failure) = self.route(tcp, target, shutdown).await {
            outcome::record_refused(&metrics, "outbound", source, &failure);
        }
    }

    /// Finds where the connection goes and carries it there; `Err` when it
    /// ends before anything was proxied.
    async fn route(
        self: Arc<Self>,
        tcp: TcpStream,
        target: Target,
        shutdown: CancellationToken,
    ) -> Result<(), Failure> {
        let _ = tcp.set_nodelay(true);
        let dest = match target {
            Target::Fixed(dest) => dest,
            Target::Original => orig_dst::checked_destination(&tcp, &self.self_addrs)?,
        };
        // An address discovery has not answered for is never guessed to
        // be plaintext: the connection waits (bounded), then is refused.
        let expected = match self
            .destinations
            .resolve(dest, self.discovery_timeout)
            .await
        {
            Ok(Resolved::Meshed(id)) => id,
            Ok(Resolved::Service(balancer)) => {
                return self.service_connection(tcp, dest, balancer, shutdown).await;
            }
            Ok(Resolved::NoSuchServicePort) => return Err(Failure::ServicePortUnknown),
            Ok(Resolved::Unmeshed) => return self.to_unmeshed(tcp, dest).await,
            Err(Unknown) => return Err(Failure::DestinationUnknown),
        };
        let protocol = if self.opaque_ports.contains(&dest.port())
            || self.destinations.declared_opaque(dest)
        {
            Protocol::Opaque
        } else {
            match detect::peek(&tcp, self.limits.detect_timeout).await {
                Ok(Peeked::Protocol(p)) => p,
                Ok(Peeked::Silent) => Protocol::Opaque,
                Ok(Peeked::Closed) | Err(_) => return Err(Failure::ClientClosed),
            }
        };
        let peer = Arc::new(self.metrics.peer("outbound", Some(&expected)));
        peer.connection_opened();
        let counts = Arc::new(ByteCounts::default());
        let io = Counting::new(tcp, counts.clone());
        let link = if !self.pooled || self.protocol == UpstreamProtocol::Http1 {
            Link::Owned(OwnedSlot::default())
        } else {
            Link::Pooled(self.upstream.pool_slot(dest, &expected))
        };
        let route = Arc::new(Route {
            dest,
            expected,
            link,
            authority: Default::default(),
        });
        let idle_timeout = self.limits.idle_timeout;
        let serve = async {
            match protocol {
                Protocol::Http1 | Protocol::Http2 => {
                    let (this, peer) = (self.clone(), peer.clone());
                    let http2 = protocol == Protocol::Http2;
                    h::serve_connection(
                        io,
                        http2,
                        &self.limits,
                        shutdown,
                        "outbound",
                        move |req| {
                            let (this, route, peer) = (this.clone(), route.clone(), peer.clone());
                            async move { this.request(&route, &peer, req).await }
                        },
                    )
                    .await;
                    Ok(())
                }
                // Opaque bytes, or TLS the application does itself: wrapped in mTLS.
                Protocol::Opaque | Protocol::Tls => self.tunnel_tcp(io, &route).await,
            }
        };
        let served = tokio::select! {
            served = serve => served,
            _ = counts.idle_for(idle_timeout) => {
                debug!(%dest, "closing an idle outbound connection");
                Ok(())
            }
        };
        let (received, sent) = counts.totals();
        peer.connection_closed(received, sent);
        served
    }

    /// A destination without a sidecar: its bytes pass through untouched,
    /// unless such egress is denied.
    async fn to_unmeshed<S>(&self, tcp: S, dest: SocketAddr) -> Result<(), Failure>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        match self.unmeshed {
            UnmeshedEgress::Allow => self.passthrough(tcp, dest).await,
            UnmeshedEgress::Deny => Err(Failure::UnmeshedEgressDenied),
        }
    }

    /// Bytes pass through untouched.
    async fn passthrough<S>(&self, mut tcp: S, dest: SocketAddr) -> Result<(), Failure>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let mut upstream =
            match tokio::time::timeout(self.limits.connect_timeout, TcpStream::connect(dest)).await
            {
                Ok(Ok(upstream)) => upstream,
                Ok(Err(err)) => return Err(UpstreamError::Connect(err).into()),
                Err(_) => return Err(UpstreamError::ConnectTimeout.into()),
            };
        let _ = upstream.set_nodelay(true);
        let _ = tokio::io::copy_bidirectional(&mut tcp, &mut upstream).await;
        Ok(())
    }

    /// Opaque TCP over an mTLS tunnel to the destination's sidecar.
    async fn tunnel_tcp(&self, mut tcp: Counting<TcpStream>, route: &Route) -> Result<(), Failure> {
        let started = Instant::now();
        let mut tls = self
            .upstream
            .connect_tls(route.dest, &route.expected, Alpn::Tcp)
            .await?;
        let (sent, received) = tokio::io::copy_bidirectional(&mut tcp, &mut tls)
            .await
            .unwrap_or_default();
        info!(target: "ward::access", direction = "outbound", protocol = "tcp", peer = route.expected.as_str(), outcome = "served", bytes_sent = sent, bytes_received = received, duration_ms = started.elapsed().as_millis() as u64, "connection closed");
        Ok(())
    }

    async fn request(
        &self,
        route: &Route,
        peer: &PeerMetrics,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let started = peer.request();
        let (method, uri) = (req.method().clone(), req.uri().clone());
        let served = self.forward(route, req).await.map_err(Failure::Upstream);
        let (response, failure) = outcome::answer(served);
        let elapsed = peer.response(response.status(), started);
        let to = SentTo {
            peer: route.expected.as_str(),
            service: None,
        };
        let request = Logged {
            method: &method,
            path: uri.path(),
            status: response.status(),
            elapsed,
        };
        log_request(&to, &request, failure.as_ref());
        response
    }

    async fn forward(
        &self,
        route: &Route,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, UpstreamError> {
        if translate::is_tunnel(req.method(), req.headers()) {
            return self.forward_tunnel(route, req).await;
        }
        let (mut parts, body) = req.into_parts();
        let spoke_http1 = parts.version != Version::HTTP_2;
        let req_body = body.boxed();
        // HTTP/2 clients keep HTTP/2 upstream whatever the setting: their
        // concurrent streams and trailers (gRPC) cannot ride one HTTP/1.1
        // connection, and the inbound would speak HTTP/1.1 to the app.
        let protocol = if spoke_http1 {
            self.protocol
        } else {
            UpstreamProtocol::H2
        };
        let response = match protocol {
            UpstreamProtocol::H2 => {
                translate::request_to_h2_hop(&mut parts, route.dest, &route.authority)
                    .map_err(|_| UpstreamError::InvalidRequest)?;
                // Once more on a fresh connection when the peer had none of
                // it, or when sending it again is safe (upstream/retry.rs).
                // Not after failing to connect: the same destination again
                // would only double the wait.
                let resend = Resend::new(&parts, &req_body);
                let mut req = Request::from_parts(parts, req_body);
                let mut retried = false;
                loop {
                    match self.send_h2(route, req).await? {
                        Ok(resp) => break Ok(resp),
                        Err(SendFailed { error, unsent }) => {
                            match resend.again(&error, unsent).filter(|_| !retried) {
                                Some(again) => {
                                    retried = true;
                                    req = again;
                                }
                                None => break Err(error),
                            }
                        }
                    }
                }
            }
            UpstreamProtocol::Http1 => {
                translate::request_to_http1_hop(&mut parts, route.dest);
                // `connection` always gives HTTP/1.1 upstreams an owned link;
                // should that ever change, fail the request rather than panic.
                let Link::Owned(slot) = &route.link else {
                    return Err(UpstreamError::InvalidRequest);
                };
                let pending = self
                    .owned_http1_send(slot, route, Request::from_parts(parts, req_body))
                    .await?;
                pending
                    .await
                    .map(|resp| resp.map(|b| b.boxed()))
                    .map_err(UpstreamError::Http)
            }
        };
        let mut resp = response?;
        translate::response_to_client(&mut resp);
        Ok(resp)
    }

    /// One attempt on the route's HTTP/2 connection to the peer sidecar:
    /// `Err` when no connection could be had, else how the attempt went.
    async fn send_h2(
        &self,
        route: &Route,
        req: Request<Body>,
    ) -> Result<Result<Response<Body>, SendFailed>, UpstreamError> {
        Ok(match &route.link {
            Link::Owned(slot) => self
                .owned_http2(slot, route)
                .await?
                .try_send_request(req)
                .await
                .map(|resp| resp.map(|b| b.boxed()))
                .map_err(|mut err| SendFailed {
                    unsent: err.take_message(),
                    error: UpstreamError::Http(err.into_error()),
                }),
            Link::Pooled(pool) => {
                self.upstream
                    .pooled_stream(pool, route.dest, &route.expected)
                    .await?
                    .send(req)
                    .await
            }
        })
    }

    async fn owned_http2(
        &self,
        slot: &OwnedSlot,
        route: &Route,
    ) -> Result<client2::SendRequest<Body>, UpstreamError> {
        let mut slot = slot.lock().await;
        if let Some(Owned::Http2(sender, retire)) = slot.as_ref()
            && !sender.is_closed()
            && !retire.is_due()
        {
            return Ok(sender.clone());
        }
        let (sender, retire) = self.upstream.http2(route.dest, &route.expected).await?;
        *slot = Some(Owned::Http2(sender.clone(), retire));
        Ok(sender)
    }

    /// Sends on this connection's own HTTP/1.1 upstream, waiting for the
    /// previous exchange to finish; returns the pending response.
    async fn owned_http1_send(
        &self,
        slot: &OwnedSlot,
        route: &Route,
        req: Request<Body>,
    ) -> Result<impl Future<Output = hyper::Result<Response<Incoming>>> + use<>, UpstreamError>
    {
        let mut slot = slot.lock().await;
        let reusable = match slot.as_mut() {
            Some(Owned::Http1(sender, retire)) => sender.ready().await.is_ok() && !retire.is_due(),
            _ => false,
        };
        if !reusable {
            let (sender, retire) = self.upstream.http1(route.dest, &route.expected).await?;
            *slot = Some(Owned::Http1(sender, retire));
        }
        let Some(Owned::Http1(sender, _)) = slot.as_mut() else {
            unreachable!("just stored an HTTP/1.1 sender")
        };
        Ok(sender.send_request(req))
    }

    /// WebSocket and CONNECT: a dedicated HTTP/1.1 connection to the peer
    /// sidecar carries the request, then the two upgraded streams are spliced.
    async fn forward_tunnel(
        &self,
        route: &Route,
        mut req: Request<Incoming>,
    ) -> Result<Response<Body>, UpstreamError> {
        let method = req.method().clone();
        let downstream = hyper::upgrade::on(&mut req);
        let (mut parts, body) = req.into_parts();
        translate::tunnel_request_to_hop(&mut parts, route.dest);
        // A tunnel lives until the peer closes it at its certificates'
        // expiry.
        let (mut sender, _) = self.upstream.http1(route.dest, &route.expected).await?;
        let mut resp = sender
            .send_request(Request::from_parts(parts, body.boxed()))
            .await
            .map_err(UpstreamError::Http)?;
        if translate::is_upgrade_response(&method, &resp) {
            let upstream = hyper::upgrade::on(&mut resp);
            self.tracker
                .spawn(crate::tunnel::splice(downstream, upstream));
        }
        translate::response_to_client(&mut resp);
        Ok(resp.map(|b| b.boxed()))
    }
}

/// Who an outbound request went to, for its access-log line.
struct SentTo<'a> {
    /// The identity the destination had to present ("" when no endpoint
    /// was reached).
    peer: &'a str,
    /// To a Service: its name, and the endpoint that answered or failed
    /// last.
    service: Option<(&'a str, Option<SocketAddr>)>,
}

/// What the access log says of a request besides where it went.
struct Logged<'a> {
    method: &'a Method,
    path: &'a str,
    status: StatusCode,
    elapsed: Duration,
}

/// The one access-log line of an outbound request.
fn log_request(to: &SentTo<'_>, request: &Logged<'_>, failure: Option<&Failure>) {
    let Logged {
        method,
        path,
        status,
        elapsed,
    } = request;
    let status = status.as_u16();
    let duration_us = elapsed.as_micros() as u64;
    let outcome = failure.map_or("served", Failure::label);
    let error = failure.map(tracing::field::display);
    let peer = to.peer;
    match to.service {
        None => {
            info!(target: "ward::access", direction = "outbound", peer, %method, path, status, outcome, error, duration_us, "request");
        }
        Some((service, endpoint)) => {
            let endpoint = endpoint.map(|e| e.to_string()).unwrap_or_default();
            info!(target: "ward::access", direction = "outbound", service, endpoint, peer, %method, path, status, outcome, error, duration_us, "request");
        }
    }
}
