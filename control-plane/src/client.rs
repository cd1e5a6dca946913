//! Client for the control plane API, used by proxies (enrolment, renewal)
//! and by the CLI. One HTTP/2 connection per call: calls are rare (one per
//! certificate lifetime half), so pooling would buy nothing.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use ward_identity::bundle::TrustBundles;
use ward_identity::tls::{self, SharedBundles, SvidCell};
use ward_identity::{SpiffeId, SpiffeIdError};

use crate::api::{self, ErrorBody, SvidRequest, SvidResponse};

/// The SPIFFE ID the control plane serves under in trust domain `td`.
pub fn control_plane_id(trust_domain: &str) -> Result<SpiffeId, SpiffeIdError> {
    SpiffeId::for_service_account(trust_domain, "ward-system", "ward-control-plane")
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
}

impl ControlPlaneClient {
    /// `addr` is `host:port`; the server must present the control plane's
    /// SPIFFE ID in `bundles`' trust domain.
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
        })
    }

    /// Builds a client from a PEM trust bundle for `trust_domain`.
    pub fn from_bundle_pem(
        addr: impl Into<String>,
        trust_domain: &str,
        bundle_pem: &str,
    ) -> anyhow::Result<Self> {
        let mut bundles = TrustBundles::new();
        bundles.add_pem(trust_domain, bundle_pem)?;
        let expected = control_plane_id(trust_domain)?;
        Ok(Self::new(
            addr,
            expected,
            Arc::new(arc_swap::ArcSwap::from_pointee(bundles)),
        )?)
    }

    /// Requests an SVID. With `current` holding a valid SVID the connection
    /// presents it as client certificate (renewal without a credential).
    pub async fn request_svid(
        &self,
        request: &SvidRequest,
        current: Option<&Arc<SvidCell>>,
    ) -> Result<SvidResponse, ClientError> {
        let body = serde_json::to_vec(request).expect("serializable");
        let answer = self
            .call(Method::POST, api::SVID_PATH, Some(body), current)
            .await?;
        serde_json::from_slice(&answer).map_err(|e| ClientError::Decode(e.to_string()))
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        current: Option<&Arc<SvidCell>>,
    ) -> Result<Bytes, ClientError> {
        let config = match current.filter(|cell| cell.is_ready()) {
            Some(cell) => {
                tls::client_config(cell.clone(), self.bundles.clone(), self.expected.clone())
            }
            None => tls::client_config_no_client_auth(self.bundles.clone(), self.expected.clone()),
        };
        let mut config = Arc::unwrap_or_clone(config);
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = TcpStream::connect(&self.addr)
            .await
            .map_err(|source| ClientError::Connect {
                addr: self.addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let tls = TlsConnector::from(Arc::new(config))
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|source| ClientError::Tls {
                addr: self.addr.clone(),
                source,
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let request = Request::builder()
            .method(method)
            .uri(format!("https://{}{path}", self.addr))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("valid request");
        let response = sender.send_request(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if status.is_success() {
            return Ok(bytes);
        }
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
}

/// How a workload proves its identity on first enrolment.
pub enum CredentialSource {
    /// A one-time join token (used once; renewals go over mTLS).
    JoinToken(std::sync::Mutex<Option<String>>),
    /// A projected service-account token file, re-read at every use because
    /// the kubelet rotates it.
    ServiceAccountTokenFile(std::path::PathBuf),
}

impl CredentialSource {
    pub fn join_token(token: impl Into<String>) -> Self {
        CredentialSource::JoinToken(std::sync::Mutex::new(Some(token.into())))
    }

    /// The credential to send. A join token stays here until an SVID was
    /// obtained with it, so a network failure does not lose it.
    fn get(&self) -> Result<crate::attest::Credential, String> {
        match self {
            CredentialSource::JoinToken(token) => token
                .lock()
                .expect("not poisoned")
                .clone()
                .map(crate::attest::Credential::JoinToken)
                .ok_or_else(|| {
                    "the join token was already used and no valid SVID is left to renew with".into()
                }),
            CredentialSource::ServiceAccountTokenFile(path) => std::fs::read_to_string(path)
                .map(|t| crate::attest::Credential::ServiceAccountToken(t.trim().to_owned()))
                .map_err(|e| format!("reading {}: {e}", path.display())),
        }
    }

    fn used(&self) {
        if let CredentialSource::JoinToken(token) = self {
            token.lock().expect("not poisoned").take();
        }
    }
}

/// Obtains SVIDs from the control plane: with the credential the first
/// time, then by renewing over mTLS with the current SVID.
pub struct ControlPlaneIssuer {
    pub client: ControlPlaneClient,
    pub credential: CredentialSource,
    /// The pod this workload is (Kubernetes), checked against the token.
    pub pod: Option<String>,
}

impl ward_identity::manager::SvidIssuer for ControlPlaneIssuer {
    async fn issue(
        &self,
        id: &SpiffeId,
        csr_pem: String,
        current: &Arc<SvidCell>,
    ) -> Result<ward_identity::manager::IssuedChain, String> {
        let renewing = current.is_ready()
            && current
                .not_after()
                .is_some_and(|t| t > time::OffsetDateTime::now_utc());
        let credential = if renewing {
            None
        } else {
            Some(self.credential.get()?)
        };
        let request = SvidRequest {
            spiffe_id: id.to_string(),
            csr: csr_pem,
            credential,
            pod: self.pod.clone(),
        };
        let answer = self
            .client
            .request_svid(&request, renewing.then_some(current))
            .await
            .map_err(|e| e.to_string())?;
        if !renewing {
            self.credential.used();
        }
        Ok(ward_identity::manager::IssuedChain {
            chain_pem: answer.chain_pem,
            trust_domain: answer.trust_domain,
            bundle_pem: answer.bundle_pem,
        })
    }
}
