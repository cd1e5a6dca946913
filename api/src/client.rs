//! The one client transport to the control plane: TCP, TLS 1.3 with the
//! control plane's SPIFFE ID checked, HTTP/2 with keepalives, and a timeout
//! on every step, so nothing waits forever on a peer. SVID issuance
//! ([`ControlPlaneIssuer`]) and the discovery stream ([`discovery`]) both
//! go through [`ControlPlaneClient`].

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use ward_identity::SpiffeId;
use ward_identity::bundle::TrustBundles;
use ward_identity::tls::{self, SharedBundles, SvidCell};

use crate::error::ErrorBody;
use crate::svid::{SvidRequest, SvidResponse};
use crate::{SVID_PATH, control_plane_id};

pub mod discovery;
mod issuer;

pub use issuer::{ControlPlaneIssuer, CredentialSource};

/// Request bodies: a whole JSON document, or a stream of lines.
pub type Body = BoxBody<Bytes, Infallible>;

/// How long each step of a call may take.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// The TLS handshake.
    pub handshake: Duration,
    /// From sending a request to the response's headers, and for a unary
    /// call to its whole body.
    pub response: Duration,
    /// HTTP/2 PING interval on an idle connection; a PING unanswered for
    /// as long again closes the connection (a dead control plane is
    /// noticed within twice this).
    pub keepalive: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            handshake: Duration::from_secs(5),
            response: Duration::from_secs(10),
            keepalive: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to the control plane at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS handshake with the control plane at {addr}: {source}")]
    Tls {
        addr: String,
        source: std::io::Error,
    },
    #[error("{step} with the control plane at {addr} timed out after {after:?}")]
    Timeout {
        addr: String,
        step: &'static str,
        after: Duration,
    },
    #[error("HTTP exchange with the control plane: {0}")]
    Http(#[from] hyper::Error),
    #[error("control plane refused the request ({status}): {code}: {message}")]
    Refused {
        status: StatusCode,
        code: String,
        message: String,
    },
    #[error("control plane sent an unreadable answer: {0}")]
    Decode(String),
    #[error("invalid control plane address {0:?}")]
    Address(String),
}

impl ClientError {
    /// True when retrying cannot help (the control plane said no).
    pub fn is_refusal(&self) -> bool {
        matches!(self, ClientError::Refused { .. })
    }
}

pub struct ControlPlaneClient {
    addr: String,
    server_name: ServerName<'static>,
    expected: SpiffeId,
    bundles: SharedBundles,
    timeouts: Timeouts,
}

impl ControlPlaneClient {
    /// `addr` is `host:port`; the server must present `expected` (the
    /// control plane's SPIFFE ID) under `bundles`.
    pub fn new(
        addr: impl Into<String>,
        expected: SpiffeId,
        bundles: SharedBundles,
    ) -> Result<Self, ClientError> {
        let addr = addr.into();
        let host = addr
            .rsplit_once(':')
            .map(|(host, _)| host.trim_start_matches('[').trim_end_matches(']'))
            .ok_or_else(|| ClientError::Address(addr.clone()))?;
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|_| ClientError::Address(addr.clone()))?;
        Ok(ControlPlaneClient {
            addr,
            server_name,
            expected,
            bundles,
            timeouts: Timeouts::default(),
        })
    }

    /// The control plane of `bundles`' trust domain `trust_domain`.
    pub fn for_trust_domain(
        addr: impl Into<String>,
        trust_domain: &str,
        bundles: SharedBundles,
    ) -> anyhow::Result<Self> {
        Ok(Self::new(addr, control_plane_id(trust_domain)?, bundles)?)
    }

    /// Builds a client from a PEM trust bundle for `trust_domain`.
    pub fn from_bundle_pem(
        addr: impl Into<String>,
        trust_domain: &str,
        bundle_pem: &str,
    ) -> anyhow::Result<Self> {
        let mut bundles = TrustBundles::new();
        bundles.add_pem(trust_domain, bundle_pem)?;
        Self::for_trust_domain(addr, trust_domain, tls::shared_bundles(bundles))
    }

    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Opens one HTTP/2 connection. With `svid` ready, it is presented as
    /// the client certificate (renewal, discovery).
    pub async fn connect(
        &self,
        svid: Option<&Arc<SvidCell>>,
    ) -> Result<http2::SendRequest<Body>, ClientError> {
        let config = match svid.filter(|cell| cell.is_ready()) {
            Some(cell) => {
                tls::client_config(cell.clone(), self.bundles.clone(), self.expected.clone())
            }
            None => tls::client_config_no_client_auth(self.bundles.clone(), self.expected.clone()),
        };
        let mut config = Arc::unwrap_or_clone(config);
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = self
            .within(
                "connect",
                self.timeouts.connect,
                TcpStream::connect(&self.addr),
            )
            .await?
            .map_err(|source| ClientError::Connect {
                addr: self.addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let connector = TlsConnector::from(Arc::new(config));
        let tls = self
            .within(
                "TLS handshake",
                self.timeouts.handshake,
                connector.connect(self.server_name.clone(), tcp),
            )
            .await?
            .map_err(|source| ClientError::Tls {
                addr: self.addr.clone(),
                source,
            })?;
        let (sender, conn) = self
            .within(
                "HTTP/2 handshake",
                self.timeouts.handshake,
                http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .keep_alive_interval(self.timeouts.keepalive)
                    .keep_alive_timeout(self.timeouts.keepalive)
                    .keep_alive_while_idle(true)
                    .handshake::<_, Body>(TokioIo::new(tls)),
            )
            .await??;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// Sends `request` and waits (bounded) for the response headers; a
    /// non-2xx answer becomes [`ClientError::Refused`].
    pub async fn send(
        &self,
        sender: &mut http2::SendRequest<Body>,
        request: Request<Body>,
    ) -> Result<http::Response<Incoming>, ClientError> {
        let response = self
            .within(
                "waiting for the response",
                self.timeouts.response,
                sender.send_request(request),
            )
            .await??;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let bytes = self
            .within(
                "reading the refusal",
                self.timeouts.response,
                response.into_body().collect(),
            )
            .await??
            .to_bytes();
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => (e.error, e.message),
            Err(_) => (
                "unknown".into(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ),
        };
        Err(ClientError::Refused {
            status,
            code,
            message,
        })
    }

    /// A request to `path` on this control plane.
    pub fn request(&self, method: Method, path: &str, body: Body) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri(format!("https://{}{path}", self.addr))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .expect("valid request")
    }

    /// Requests an SVID. With `current` holding a valid SVID the connection
    /// presents it as client certificate (renewal without a credential).
    pub async fn request_svid(
        &self,
        request: &SvidRequest,
        current: Option<&Arc<SvidCell>>,
    ) -> Result<SvidResponse, ClientError> {
        let body = serde_json::to_vec(request).expect("serializable");
        let mut sender = self.connect(current).await?;
        let request = self.request(Method::POST, SVID_PATH, full(body));
        let response = self.send(&mut sender, request).await?;
        let bytes = self
            .within(
                "reading the response",
                self.timeouts.response,
                response.into_body().collect(),
            )
            .await??
            .to_bytes();
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    async fn within<T>(
        &self,
        step: &'static str,
        after: Duration,
        future: impl Future<Output = T>,
    ) -> Result<T, ClientError> {
        tokio::time::timeout(after, future)
            .await
            .map_err(|_| ClientError::Timeout {
                addr: self.addr.clone(),
                step,
                after,
            })
    }
}

/// A whole request body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into()).boxed()
}

/// A request body fed line by line through a channel: the request side
/// of a stream. It ends when the sender is dropped.
pub fn channel_body(rx: mpsc::Receiver<Bytes>) -> Body {
    ChannelBody(rx).boxed()
}

struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|line| line.map(|bytes| Ok(Frame::data(bytes))))
    }
}
