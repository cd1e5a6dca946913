//! The outbound side's connections to other sidecars: TCP, then mTLS with
//! the destination's expected SPIFFE ID verified, then HTTP/2 (pooled:
//! multiplexed connections per destination, more as streams run out; see
//! [`pool`]), HTTP/1.1, or an opaque tunnel chosen by ALPN.

pub mod pool;
pub mod retire;
pub mod retry;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tracing::{debug, info};
use ward_identity::SpiffeId;
use ward_identity::tls;

use crate::hop::{Alpn, tls_error_reason};
use crate::http::Body;
use crate::identity::WorkloadIdentity;
use crate::limits::{H2_CONNECTION_WINDOW, H2_STREAM_WINDOW};
use crate::metrics::ProxyMetrics;
use crate::quarantine::severable::Severable;
use crate::quarantine::{Hit, Peer, Quarantine};
use retire::Retire;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    #[error("mTLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("HTTP exchange failed: {0}")]
    Http(hyper::Error),
    #[error("the request cannot be expressed upstream (invalid authority)")]
    InvalidRequest,
    #[error("the peer sidecar's application is unavailable")]
    AppUnavailable,
    #[error("every pooled connection to the destination is at its stream limit")]
    PoolExhausted,
    /// The destination (its identity, address, or the certificate it
    /// presented) is quarantined.
    #[error("the destination is quarantined")]
    Quarantined,
}

impl UpstreamError {
    /// The status the application gets: 503 nothing listening, 504 timed
    /// out, 502 the peer is not who it should be or spoke nonsense.
    pub fn status(&self) -> StatusCode {
        match self {
            UpstreamError::ConnectTimeout => StatusCode::GATEWAY_TIMEOUT,
            UpstreamError::Connect(_)
            | UpstreamError::AppUnavailable
            | UpstreamError::PoolExhausted => StatusCode::SERVICE_UNAVAILABLE,
            UpstreamError::Tls(_) | UpstreamError::Http(_) => StatusCode::BAD_GATEWAY,
            UpstreamError::InvalidRequest => StatusCode::BAD_REQUEST,
            UpstreamError::Quarantined => StatusCode::FORBIDDEN,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            UpstreamError::ConnectTimeout => "upstream connect timeout",
            UpstreamError::Connect(_) => "upstream connect failed",
            UpstreamError::Tls(_) => "upstream mTLS failed",
            UpstreamError::Http(_) => "upstream protocol error",
            UpstreamError::InvalidRequest => "invalid request authority",
            UpstreamError::AppUnavailable => "application unavailable",
            UpstreamError::PoolExhausted => "upstream pool exhausted",
            UpstreamError::Quarantined => "quarantined",
        }
    }
}

/// Logs a refused destination; the caller records the failure.
fn refused(peer: &Peer, hit: &Hit) -> UpstreamError {
    info!(direction = "outbound", peer = ?peer.spiffe_id.as_ref().map(|p| p.as_str()), address = %peer.address, serial = ?peer.serial, entry = %hit.entry, matched = hit.by, "destination refused: quarantined");
    UpstreamError::Quarantined
}

/// The pooled HTTP/2 connections to one destination (none until first use).
pub type PoolSlot = Arc<pool::Pool>;

pub struct Upstream {
    identity: WorkloadIdentity,
    configs: Mutex<HashMap<(SpiffeId, Alpn), Arc<ClientConfig>>>,
    pool: Mutex<HashMap<(SocketAddr, SpiffeId), PoolSlot>>,
    connect_timeout: Duration,
    /// Largest response header block accepted from the peer sidecar.
    max_header_bytes: u32,
    metrics: Arc<ProxyMetrics>,
    /// Quarantined destinations are not connected to, and connections
    /// whose peer becomes quarantined are cut.
    quarantine: Arc<Quarantine>,
}

/// An mTLS connection to a peer sidecar, cut if its peer is quarantined.
pub type PeerStream = Severable<TlsStream<TcpStream>>;

impl Upstream {
    pub fn new(
        identity: WorkloadIdentity,
        connect_timeout: Duration,
        max_header_bytes: u32,
        metrics: Arc<ProxyMetrics>,
        quarantine: Arc<Quarantine>,
    ) -> Self {
        Upstream {
            identity,
            configs: Mutex::new(HashMap::new()),
            pool: Mutex::new(HashMap::new()),
            connect_timeout,
            max_header_bytes,
            metrics,
            quarantine,
        }
    }

    /// Client configs are built once per (identity, ALPN): they read the
    /// current certificate and bundles at each handshake, so rotation needs
    /// no rebuild.
    fn config(&self, expected: &SpiffeId, alpn: Alpn) -> Arc<ClientConfig> {
        let mut configs = self.configs.lock().expect("not poisoned");
        configs
            .entry((expected.clone(), alpn))
            .or_insert_with(|| {
                let base = tls::client_config(
                    self.identity.svid.clone(),
                    self.identity.bundles.clone(),
                    expected.clone(),
                );
                let mut config = Arc::unwrap_or_clone(base);
                config.alpn_protocols = vec![alpn.id().to_vec()];
                Arc::new(config)
            })
            .clone()
    }

    /// An mTLS connection to `dest`'s sidecar, which must present
    /// `expected`. Refused before connecting when the destination is
    /// quarantined, and after the handshake when the certificate it
    /// presented is.
    pub async fn connect_tls(
        &self,
        dest: SocketAddr,
        expected: &SpiffeId,
        alpn: Alpn,
    ) -> Result<PeerStream, UpstreamError> {
        self.connect(dest, expected, alpn)
            .await
            .map(|(stream, _)| stream)
    }

    /// [`Self::connect_tls`], and when the connection should stop taking
    /// new requests (see [`retire`]).
    async fn connect(
        &self,
        dest: SocketAddr,
        expected: &SpiffeId,
        alpn: Alpn,
    ) -> Result<(PeerStream, Retire), UpstreamError> {
        let before = Peer {
            spiffe_id: Some(expected.clone()),
            serial: None,
            address: dest.ip(),
        };
        if let Some(hit) = self.quarantine.check(&before) {
            return Err(refused(&before, &hit));
        }
        // Read before the handshake: a renewal meanwhile can only make
        // the certificate used live longer than this says.
        let own_expiry = self.identity.svid.not_after();
        let tls = self.handshake(dest, expected, alpn).await?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| ward_identity::svid::leaf_facts(leaf).ok());
        let expires = [own_expiry, leaf.as_ref().map(|l| l.not_after)]
            .into_iter()
            .flatten()
            .min();
        let presented = Peer {
            spiffe_id: leaf.as_ref().map(|l| l.spiffe_id.clone()),
            serial: leaf.map(|l| l.serial),
            address: dest.ip(),
        };
        match self.quarantine.admit(presented.clone(), "outbound") {
            Ok(tracked) => Ok((Severable::new(tls, tracked), Retire::before(expires))),
            Err(hit) => Err(refused(&presented, &hit)),
        }
    }

    async fn handshake(
        &self,
        dest: SocketAddr,
        expected: &SpiffeId,
        alpn: Alpn,
    ) -> Result<TlsStream<TcpStream>, UpstreamError> {
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(dest))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout)?
            .map_err(UpstreamError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let connector = TlsConnector::from(self.config(expected, alpn));
        // The peer is verified by SPIFFE ID; the server name only fills SNI.
        let name = ServerName::IpAddress(dest.ip().into());
        let handshake = tokio::time::timeout(self.connect_timeout, connector.connect(name, tcp));
        match handshake.await {
            Ok(Ok(tls)) => {
                self.metrics
                    .tls_handshakes
                    .with_label_values(&["outbound"])
                    .inc();
                Ok(tls)
            }
            Ok(Err(err)) => {
                let reason = tls_error_reason(&err);
                self.metrics
                    .tls_failures
                    .with_label_values(&["outbound", reason])
                    .inc();
                Err(UpstreamError::Tls(err))
            }
            Err(_) => Err(UpstreamError::ConnectTimeout),
        }
    }

    /// A new HTTP/2 connection to `dest`, driven by a background task, and
    /// when it should stop taking new requests.
    pub async fn http2<B>(
        &self,
        dest: SocketAddr,
        expected: &SpiffeId,
    ) -> Result<(http2::SendRequest<B>, Retire), UpstreamError>
    where
        B: hyper::body::Body<Data = bytes::Bytes, Error = hyper::Error> + Send + Unpin + 'static,
    {
        let (tls, retire) = self.connect(dest, expected, Alpn::H2).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            .keep_alive_interval(Duration::from_secs(30))
            .max_header_list_size(self.max_header_bytes)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(UpstreamError::Http)?;
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                debug!(%err, "upstream HTTP/2 connection ended");
            }
        });
        Ok((sender, retire))
    }

    /// A new HTTP/1.1 connection to `dest` (upgrades allowed), and when it
    /// should stop taking new requests (an upgraded one lives until the
    /// peer closes it at its certificates' expiry).
    pub async fn http1(
        &self,
        dest: SocketAddr,
        expected: &SpiffeId,
    ) -> Result<(http1::SendRequest<Body>, Retire), UpstreamError> {
        let (tls, retire) = self.connect(dest, expected, Alpn::Http1).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(tls))
            .await
            .map_err(UpstreamError::Http)?;
        tokio::spawn(async move {
            if let Err(err) = conn.with_upgrades().await {
                debug!(%err, "upstream HTTP/1.1 connection ended");
            }
        });
        Ok((sender, retire))
    }

    /// The pool slot for `dest`: looked up once per application connection,
    /// so requests pay neither the map lock nor a key allocation.
    pub fn pool_slot(&self, dest: SocketAddr, expected: &SpiffeId) -> PoolSlot {
        self.pool
            .lock()
            .expect("not poisoned")
            .entry((dest, expected.clone()))
            .or_default()
            .clone()
    }

    /// A stream on one of `pool`'s connections to `dest`: a free one on an
    /// open connection, else a new connection while the pool has room
    /// (one connect at a time per destination), else the first stream
    /// freed, waiting at most the connect timeout.
    pub async fn pooled_stream(
        &self,
        pool: &PoolSlot,
        dest: SocketAddr,
        expected: &SpiffeId,
    ) -> Result<pool::Stream, UpstreamError> {
        let capacity = tokio::time::timeout(self.connect_timeout, pool.reserve())
            .await
            .map_err(|_| UpstreamError::PoolExhausted)?;
        let capacity = match pool.free_stream(capacity) {
            Ok(stream) => return Ok(stream),
            Err(capacity) => capacity,
        };
        let _connecting = pool.connecting.lock().await;
        // Another request may have opened a connection meanwhile.
        let capacity = match pool.free_stream(capacity) {
            Ok(stream) => return Ok(stream),
            Err(capacity) => capacity,
        };
        let (sender, retire) = self.http2(dest, expected).await?;
        self.metrics.upstream_pool_connections.inc();
        Ok(pool.add(sender, retire, capacity))
    }
}
