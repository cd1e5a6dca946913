//! Outbound to a Service address: the connection is routed to the
//! Service's endpoints, not passed through. HTTP is balanced per request,
//! opaque TCP per connection; every meshed endpoint is reached over its own
//! pooled mTLS connection and must present exactly its pod's identity.
//!
//! Retries: a request that failed goes to another endpoint, at most
//! [`MAX_RETRIES`] times, when `upstream/retry.rs` says it may go again
//! (never sent; or without a body and processed by nobody, which includes
//! the peer sidecar finding its application gone; or without a body,
//! idempotent, and cut off mid-request).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response, header};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::{Logged, Outbound, SentTo, log_request};
use crate::balance::{Endpoint, PortBalancer};
use crate::counting::{ByteCounts, Counting};
use crate::detect::{self, Peeked, Protocol};
use crate::hop::Alpn;
use crate::http::{self as h, Body};
use crate::metrics::PeerMetrics;
use crate::outcome::{self, Failure};
use crate::translate;
use crate::upstream::UpstreamError;
use crate::upstream::retry::{Reached, Resend, SendFailed};
use ward_api::discovery::AppProtocol;

/// Further attempts of one request or connection, each on another endpoint.
pub const MAX_RETRIES: usize = 2;

/// What one request's attempts came to, and the endpoint that answered
/// or failed last.
struct Attempted {
    served: Result<Response<Body>, Failure>,
    endpoint: Option<Arc<Endpoint>>,
}

impl Attempted {
    fn answered(response: Response<Body>, endpoint: Arc<Endpoint>) -> Self {
        Attempted {
            served: Ok(response),
            endpoint: Some(endpoint),
        }
    }

    fn failed(failure: impl Into<Failure>, endpoint: Option<Arc<Endpoint>>) -> Self {
        Attempted {
            served: Err(failure.into()),
            endpoint,
        }
    }
}

impl Outbound {
    pub(super) async fn service_connection(
        self: Arc<Self>,
        tcp: TcpStream,
        dest: SocketAddr,
        balancer: Arc<PortBalancer>,
        shutdown: CancellationToken,
    ) -> Result<(), Failure> {
        // Nothing behind the Service has a sidecar: kube-proxy's path, as
        // for any unmeshed destination.
        if !balancer.has_meshed() && !balancer.endpoints().is_empty() {
            return self.to_unmeshed(tcp, dest).await;
        }
        let protocol = if balancer.protocol == Some(AppProtocol::Opaque) {
            Protocol::Opaque
        } else {
            match detect::peek(&tcp, self.limits.detect_timeout).await {
                Ok(Peeked::Protocol(p)) => p,
                Ok(Peeked::Silent) => Protocol::Opaque,
                Ok(Peeked::Closed) | Err(_) => return Err(Failure::ClientClosed),
            }
        };
        // Endpoints without a sidecar get this connection's bytes in
        // plaintext, and only they: chosen once per connection.
        let first = balancer.pick(&[], false);
        if let Some(endpoint) = &first
            && endpoint.identity.is_none()
        {
            return self.to_unmeshed(tcp, endpoint.addr).await;
        }
        let peer = Arc::new(self.metrics.service_peer(
            "outbound",
            balancer.common_identity().as_ref(),
            Some(&balancer.service),
        ));
        peer.connection_opened();
        let counts = Arc::new(ByteCounts::default());
        let io = Counting::new(tcp, counts.clone());
        let idle_timeout = self.limits.idle_timeout;
        let serve = async {
            match protocol {
                Protocol::Http1 | Protocol::Http2 => {
                    let (this, peer, balancer) = (self.clone(), peer.clone(), balancer.clone());
                    let http2 = protocol == Protocol::Http2;
                    h::serve_connection(
                        io,
                        http2,
                        &self.limits,
                        shutdown,
                        "outbound",
                        move |req| {
                            let (this, balancer, peer) =
                                (this.clone(), balancer.clone(), peer.clone());
                            async move { this.service_request(&balancer, &peer, req).await }
                        },
                    )
                    .await;
                    Ok(())
                }
                Protocol::Opaque | Protocol::Tls => self.service_tunnel(io, &balancer, first).await,
            }
        };
        let served = tokio::select! {
            served = serve => served,
            _ = counts.idle_for(idle_timeout) => {
                debug!(service = %balancer.service, "closing an idle outbound connection");
                Ok(())
            }
        };
        let (received, sent) = counts.totals();
        peer.connection_closed(received, sent);
        served
    }

    /// Opaque TCP: one endpoint per connection; a connect or handshake
    /// failure (before any byte was relayed) moves on to another.
    async fn service_tunnel(
        &self,
        mut tcp: Counting<TcpStream>,
        balancer: &PortBalancer,
        first: Option<Arc<Endpoint>>,
    ) -> Result<(), Failure> {
        let started = Instant::now();
        let mut tried = Vec::new();
        let mut next = first;
        for attempt in 0..=MAX_RETRIES {
            let Some(endpoint) = next.take().or_else(|| balancer.pick(&tried, true)) else {
                break;
            };
            tried.push(endpoint.addr);
            let Some(expected) = &endpoint.identity else {
                continue;
            };
            if attempt > 0 {
                self.count_retry(balancer, "connect");
            }
            let in_flight = endpoint.start();
            match self
                .upstream
                .connect_tls(endpoint.addr, expected, Alpn::Tcp)
                .await
            {
                Ok(mut tls) => {
                    in_flight.succeeded();
                    let (sent, received) = tokio::io::copy_bidirectional(&mut tcp, &mut tls)
                        .await
                        .unwrap_or_default();
                    info!(target: "ward::access", direction = "outbound", protocol = "tcp", service = &*balancer.service, endpoint = %endpoint.addr, peer = expected.as_str(), outcome = "served", bytes_sent = sent, bytes_received = received, duration_ms = started.elapsed().as_millis() as u64, "connection closed");
                    return Ok(());
                }
                Err(err) => {
                    // The connection's one line comes at its end; this
                    // endpoint's failure counts towards its ejection.
                    debug!(service = &*balancer.service, endpoint = %endpoint.addr, error = %err, "endpoint failed; trying another");
                    self.endpoint_failed(balancer, &endpoint);
                }
            }
        }
        Err(Failure::NoEndpoints)
    }

    async fn service_request(
        &self,
        balancer: &PortBalancer,
        connection_peer: &PeerMetrics,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let started = Instant::now();
        let (method, path) = (req.method().clone(), req.uri().path().to_owned());
        let Attempted { served, endpoint } = match balancer.timeout {
            Some(limit) => tokio::time::timeout(limit, self.service_attempts(balancer, req))
                .await
                .unwrap_or_else(|_| Attempted::failed(Failure::Timeout, None)),
            None => self.service_attempts(balancer, req).await,
        };
        let served = served.map(|mut resp| {
            translate::response_to_client(&mut resp);
            resp
        });
        let (response, failure) = outcome::answer(served);
        let peer = endpoint
            .as_ref()
            .map(|e| self.endpoint_metrics(balancer, e));
        let peer_metrics = peer.as_deref().unwrap_or(connection_peer);
        let elapsed = peer_metrics.exchange(response.status(), started);
        let to = SentTo {
            peer: endpoint
                .as_ref()
                .and_then(|e| e.identity.as_ref())
                .map_or("", |id| id.as_str()),
            service: Some((&balancer.service, endpoint.as_ref().map(|e| e.addr))),
        };
        let request = Logged {
            method: &method,
            path: &path,
            status: response.status(),
            elapsed,
        };
        log_request(&to, &request, failure.as_ref());
        response
    }

    /// The per-endpoint request metrics (its peer identity, the Service).
    fn endpoint_metrics(&self, balancer: &PortBalancer, endpoint: &Endpoint) -> Arc<PeerMetrics> {
        endpoint
            .metrics
            .get_or_init(|| {
                Arc::new(self.metrics.service_peer(
                    "outbound",
                    endpoint.identity.as_ref(),
                    Some(&balancer.service),
                ))
            })
            .clone()
    }

    /// Sends the request to one endpoint after another until one answers
    /// or retrying is no longer safe.
    async fn service_attempts(&self, balancer: &PortBalancer, req: Request<Incoming>) -> Attempted {
        if translate::is_tunnel(req.method(), req.headers()) {
            return self.service_tunnel_request(balancer, req).await;
        }
        let (mut parts, body) = req.into_parts();
        let translated = translate::request_to_h2_hop(
            &mut parts,
            fallback_authority(balancer),
            &Default::default(),
        );
        if translated.is_err() {
            return Attempted::failed(UpstreamError::InvalidRequest, None);
        }
        // What may go to another endpoint after a failure is decided in
        // upstream/retry.rs, as for a pod address.
        let body = body.boxed();
        let resend = Resend::new(&parts, &body);
        let mut req = Some(Request::from_parts(parts, body));
        let mut tried = Vec::new();
        let mut last: Option<(UpstreamError, Arc<Endpoint>)> = None;
        for attempt in 0..=MAX_RETRIES {
            let Some(endpoint) = balancer.pick(&tried, true) else {
                break;
            };
            let Some(request) = req.take() else {
                break;
            };
            tried.push(endpoint.addr);
            if attempt > 0 {
                self.count_retry(balancer, "unprocessed");
            }
            let in_flight = endpoint.start();
            let error = match self.send_to_endpoint(&endpoint, request).await {
                Ok(resp) if is_app_unavailable(&resp) && resend.allows(Reached::Unprocessed) => {
                    // The peer sidecar could not reach its application:
                    // nothing was processed, another replica may serve it.
                    self.endpoint_failed(balancer, &endpoint);
                    drop(in_flight);
                    if attempt == MAX_RETRIES || balancer.pick(&tried, true).is_none() {
                        return Attempted::answered(resp, endpoint);
                    }
                    req = resend.again(&UpstreamError::AppUnavailable, None);
                    UpstreamError::AppUnavailable
                }
                // A small answer to a request that may go elsewhere is read
                // whole first: a replica dying mid-body is then retried
                // rather than handed to the application truncated.
                Ok(resp) if resend.allows(Reached::Unknown) && small_body(&resp) => {
                    let (parts, body) = resp.into_parts();
                    match body.collect().await {
                        Ok(body) => {
                            in_flight.succeeded();
                            let body = h::full(body.to_bytes());
                            return Attempted::answered(
                                Response::from_parts(parts, body),
                                endpoint,
                            );
                        }
                        Err(err) => {
                            self.endpoint_failed(balancer, &endpoint);
                            let error = UpstreamError::Http(err);
                            req = resend.again(&error, None);
                            error
                        }
                    }
                }
                Ok(resp) => {
                    in_flight.succeeded();
                    return Attempted::answered(resp, endpoint);
                }
                Err(SendFailed { error, unsent }) => {
                    self.endpoint_failed(balancer, &endpoint);
                    req = resend.again(&error, unsent);
                    error
                }
            };
            last = Some((error, endpoint));
        }
        match last {
            Some((error, endpoint)) => Attempted::failed(error, Some(endpoint)),
            None => Attempted::failed(Failure::NoEndpoints, None),
        }
    }

    /// One attempt on `endpoint`'s pooled connection; a request that could
    /// not get a connection comes back unsent.
    async fn send_to_endpoint(
        &self,
        endpoint: &Endpoint,
        req: Request<Body>,
    ) -> Result<Response<Body>, SendFailed> {
        let expected = endpoint.identity.as_ref().expect("meshed endpoints only");
        match self
            .upstream
            .pooled_stream(&endpoint.pool, endpoint.addr, expected)
            .await
        {
            Ok(stream) => stream.send(req).await,
            Err(error) => Err(SendFailed {
                error,
                unsent: Some(req),
            }),
        }
    }

    /// WebSocket and CONNECT to a Service: one endpoint, its own HTTP/1.1
    /// connection, then the upgraded streams are spliced.
    async fn service_tunnel_request(
        &self,
        balancer: &PortBalancer,
        mut req: Request<Incoming>,
    ) -> Attempted {
        let Some(endpoint) = balancer.pick(&[], true) else {
            return Attempted::failed(Failure::NoEndpoints, None);
        };
        let expected = endpoint.identity.clone().expect("meshed endpoints only");
        let method = req.method().clone();
        let downstream = hyper::upgrade::on(&mut req);
        let (mut parts, body) = req.into_parts();
        translate::tunnel_request_to_hop(&mut parts, fallback_authority(balancer));
        // A tunnel lives until the peer closes it at its certificates'
        // expiry.
        let mut sender = match self.upstream.http1(endpoint.addr, &expected).await {
            Ok((sender, _)) => sender,
            Err(err) => {
                self.endpoint_failed(balancer, &endpoint);
                return Attempted::failed(err, Some(endpoint));
            }
        };
        match sender
            .send_request(Request::from_parts(parts, body.boxed()))
            .await
        {
            Ok(mut resp) => {
                if translate::is_upgrade_response(&method, &resp) {
                    let upstream = hyper::upgrade::on(&mut resp);
                    self.tracker
                        .spawn(crate::tunnel::splice(downstream, upstream));
                }
                Attempted::answered(resp.map(|b| b.boxed()), endpoint)
            }
            Err(err) => Attempted::failed(UpstreamError::Http(err), Some(endpoint)),
        }
    }

    fn count_retry(&self, balancer: &PortBalancer, reason: &str) {
        let service = self.metrics.service_label(&balancer.service);
        self.metrics
            .retries
            .with_label_values(&[&service, reason])
            .inc();
    }

    /// Counts a failure; an endpoint that fails repeatedly is ejected and
    /// probed (TCP and mTLS handshake) with backoff until it answers.
    fn endpoint_failed(&self, balancer: &PortBalancer, endpoint: &Arc<Endpoint>) {
        if !endpoint.failed() {
            return;
        }
        let service = self.metrics.service_label(&balancer.service);
        self.metrics.ejections.with_label_values(&[&service]).inc();
        info!(service = &*balancer.service, endpoint = %endpoint.addr, "endpoint ejected after repeated failures");
        let weak = Arc::downgrade(endpoint);
        let upstream = self.upstream.clone();
        let service = balancer.service.clone();
        tokio::spawn(async move {
            loop {
                let delay = match weak.upgrade() {
                    Some(endpoint) => endpoint.probe_delay(),
                    None => return,
                };
                tokio::time::sleep(delay).await;
                // Gone from the Service meanwhile: nothing to probe.
                let Some(endpoint) = weak.upgrade() else {
                    return;
                };
                let ok = match &endpoint.identity {
                    Some(id) => upstream
                        .connect_tls(endpoint.addr, id, Alpn::H2)
                        .await
                        .is_ok(),
                    None => TcpStream::connect(endpoint.addr).await.is_ok(),
                };
                endpoint.probed(ok);
                if ok {
                    info!(service = &*service, endpoint = %endpoint.addr, "endpoint re-admitted after a successful probe");
                    return;
                }
            }
        });
    }
}

/// The authority of a request to a Service that names none (no `Host`,
/// HTTP/1.0): the Service's port on an unspecified address.
fn fallback_authority(balancer: &PortBalancer) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], balancer.port))
}

/// Largest response body read whole before it is passed on (see
/// `service_attempts`); larger or unsized bodies stream.
const BUFFERED_BODY_BYTES: u64 = 64 * 1024;

fn small_body(resp: &Response<Body>) -> bool {
    resp.body().is_end_stream()
        || resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|n| n <= BUFFERED_BODY_BYTES)
}

/// The peer sidecar's answer when its application refused the connection
/// (its `Failure::AppUnavailable`).
fn is_app_unavailable(resp: &Response<Body>) -> bool {
    let unavailable = Failure::AppUnavailable;
    Some(resp.status()) == unavailable.http_status()
        && resp
            .headers()
            .get(h::ERROR_HEADER)
            .is_some_and(|v| Some(v.as_bytes()) == unavailable.error_header().map(str::as_bytes))
}
