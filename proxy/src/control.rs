//! The proxy's watch stream to the control plane: policies for this
//! workload and the endpoint table, pushed on every change. When the
//! control plane is unreachable the proxy keeps enforcing what it last
//! received and reconnects with backoff; on reconnect it gets a full
//! snapshot, so nothing is missed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use ward_control_plane::client::control_plane_id;
use ward_control_plane::watch::{WatchRequest, WatchUpdate};
use ward_identity::tls;
use ward_policy::PolicySet;

use crate::endpoints::{EndpointTable, SharedEndpoints};
use crate::http::{Body, full};
use crate::identity::WorkloadIdentity;
use crate::metrics::ProxyMetrics;
use crate::policy::PolicyAuthorizer;

const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Largest single update accepted (a policy set plus endpoint table).
const MAX_UPDATE_BYTES: usize = 16 * 1024 * 1024;

pub struct WatchClient {
    pub addr: String,
    pub identity: WorkloadIdentity,
    pub labels: BTreeMap<String, String>,
    pub register: bool,
    pub authorizer: Arc<PolicyAuthorizer>,
    pub endpoints: SharedEndpoints,
    /// Entries given on the command line, kept under every update.
    pub static_endpoints: EndpointTable,
    pub metrics: Arc<ProxyMetrics>,
}

#[derive(Debug, thiserror::Error)]
enum WatchError {
    #[error("no certificate yet")]
    NotReady,
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("HTTP/2: {0}")]
    Http(#[from] hyper::Error),
    #[error("control plane answered {0}")]
    Status(StatusCode),
    #[error("update too large")]
    TooLarge,
    #[error("stream ended")]
    Ended,
}

impl WatchClient {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let started = Instant::now();
            let result = tokio::select! {
                r = self.stream_once() => r,
                _ = shutdown.cancelled() => return,
            };
            self.metrics.control_plane_connected.set(0);
            match result {
                Err(WatchError::NotReady) => backoff = MIN_BACKOFF,
                Err(err) => {
                    warn!(control_plane = %self.addr, error = %err, retry_in = ?backoff, "watch stream down; enforcing the last policies received")
                }
                Ok(()) => {}
            }
            // A stream that lived a while resets the backoff.
            if started.elapsed() > Duration::from_secs(30) {
                backoff = MIN_BACKOFF;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn stream_once(&self) -> Result<(), WatchError> {
        let Some(own_id) = self.identity.svid.current_id() else {
            return Err(WatchError::NotReady);
        };
        let cp_id = control_plane_id(own_id.trust_domain()).expect("trust domain of a valid ID");
        let mut config = Arc::unwrap_or_clone(tls::client_config(
            self.identity.svid.clone(),
            self.identity.bundles.clone(),
            cp_id,
        ));
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = TcpStream::connect(&self.addr)
            .await
            .map_err(WatchError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let host = self
            .addr
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(&self.addr);
        let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
            .unwrap_or_else(|_| ServerName::try_from("ward-control-plane").expect("valid name"));
        let tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(WatchError::Tls)?;
        let (mut sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake::<_, Body>(TokioIo::new(tls))
            .await?;
        tokio::spawn(conn);
        let body = serde_json::to_vec(&WatchRequest {
            labels: self.labels.clone(),
            register: self.register,
        })
        .expect("serializable");
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!(
                "https://{}{}",
                self.addr,
                ward_control_plane::server::WATCH_PATH
            ))
            .header(header::CONTENT_TYPE, "application/json")
            .body(full(Bytes::from(body)))
            .expect("valid request");
        let response = sender.send_request(request).await?;
        if response.status() != StatusCode::OK {
            return Err(WatchError::Status(response.status()));
        }
        self.metrics.control_plane_connected.set(1);
        info!(control_plane = %self.addr, "watch stream connected");
        let mut body = response.into_body();
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            buf.extend_from_slice(data);
            while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                let line = buf.split_to(end + 1);
                self.apply(&line[..end]);
            }
            if buf.len() > MAX_UPDATE_BYTES {
                return Err(WatchError::TooLarge);
            }
        }
        buf.advance(buf.len());
        Err(WatchError::Ended)
    }

    /// Applies one update. A policy set that does not parse here (it was
    /// validated by the control plane, so this means a version skew) is
    /// logged and the set in force kept.
    fn apply(&self, line: &[u8]) {
        let update: WatchUpdate = match serde_json::from_slice(line) {
            Ok(u) => u,
            Err(err) => {
                warn!(error = %err, "unreadable update from the control plane");
                return;
            }
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.metrics
            .control_plane_last_update
            .set(now.as_secs_f64());
        let mut table = self.static_endpoints.clone();
        for entry in &update.endpoints {
            match (
                entry.address.parse(),
                ward_identity::SpiffeId::parse(&entry.spiffe_id),
            ) {
                (Ok(key), Ok(id)) => table.insert(key, id),
                _ => {
                    warn!(address = %entry.address, spiffe_id = %entry.spiffe_id, "ignoring an invalid endpoint")
                }
            }
        }
        self.endpoints.store(Arc::new(table));
        match PolicySet::parse_str("control-plane", &update.policies) {
            Ok(set) => self.authorizer.update(update.version, set),
            Err(err) => {
                warn!(version = update.version, error = %err, "policy update does not load here; keeping the set in force")
            }
        }
    }
}

/// Reads labels in the Kubernetes downward-API file format: one
/// `key="value"` per line.
pub fn read_labels_file(path: &std::path::Path) -> anyhow::Result<BTreeMap<String, String>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut labels = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (key, value) = line.split_once('=').ok_or_else(|| {
            anyhow::anyhow!("{}:{}: expected key=\"value\"", path.display(), n + 1)
        })?;
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        labels.insert(key.trim().to_owned(), value.replace("\\\"", "\""));
    }
    Ok(labels)
}
