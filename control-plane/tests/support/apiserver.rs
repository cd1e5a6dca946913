//! A fake Kubernetes API server for integration tests: real HTTPS (its own
//! CA, verified by the client), HTTP/1.1 as kube-rs speaks it, every request
//! recorded, and answers chosen by the test.
//!
//! ```ignore
//! let server = ApiServer::start(|req| match req.path_and_query.as_str() {
//!     "/api/v1/namespaces/shop/pods" => Reply::Json(StatusCode::OK, list("v1", "PodList", "7", vec![])),
//!     _ => Reply::Json(StatusCode::NOT_FOUND, status_failure(404, "NotFound", "not found")),
//! })
//! .await;
//! let pods: kube::Api<Pod> = kube::Api::namespaced(server.client(), "shop");
//! ```
//!
//! A watch is a [`Reply::Stream`]: each value sent on the channel reaches
//! the client as one JSON line as soon as it is sent (chunked encoding), and
//! the response ends when the sender is dropped, as when the API server
//! closes a watch at its timeout.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// What the server answers to one request.
pub enum Reply {
    /// A whole JSON document with this status (`application/json`).
    Json(StatusCode, Value),
    /// `200 OK`, then one JSON line per value received, flushed as it comes;
    /// the response ends when the sender is dropped.
    Stream(mpsc::Receiver<Value>),
}

/// A request as the server saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub method: Method,
    /// e.g. `/api/v1/namespaces/shop/pods?watch=true&resourceVersion=7`.
    pub path_and_query: String,
    /// The JSON body; `Null` when empty, a JSON string when not JSON.
    pub body: Value,
}

type Handler = dyn Fn(&Recorded) -> Reply + Send + Sync;
type Body = BoxBody<Bytes, Infallible>;

/// A running fake API server on `127.0.0.1`. Dropping it stops it, and
/// closes every connection it had open.
pub struct ApiServer {
    addr: SocketAddr,
    ca: CertificateDer<'static>,
    requests: Arc<Mutex<Vec<Recorded>>>,
    task: JoinHandle<()>,
}

impl ApiServer {
    /// HTTPS on 127.0.0.1:0 with a fresh CA and a serving certificate for
    /// `127.0.0.1` and `localhost`; `handler` picks each answer.
    pub async fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> ApiServer {
        let (ca, tls) = tls_config();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake API server");
        let addr = listener.local_addr().expect("local address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(serve(
            listener,
            TlsAcceptor::from(Arc::new(tls)),
            Arc::new(handler),
            requests.clone(),
        ));
        ApiServer {
            addr,
            ca,
            requests,
            task,
        }
    }

    /// A kube client for this server: `kube::Config::new(url)` trusting only
    /// this server's CA (TLS is verified, not skipped), namespace `default`.
    pub fn client(&self) -> kube::Client {
        let mut config = kube::Config::new(self.url().parse().expect("valid URL"));
        config.root_cert = Some(vec![self.ca.to_vec()]);
        config.default_namespace = "default".into();
        kube::Client::try_from(config).expect("kube client for the fake API server")
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // The listener and every connection live inside this one task (see
        // `serve`), so cancelling it closes them all together.
        self.task.abort();
    }
}

/// A `meta/v1 Status` failure, exactly as the API server writes one, e.g.
/// `status_failure(403, "Forbidden", "pods is forbidden: …")`.
pub fn status_failure(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

/// `404 NotFound`, as the API server answers a path it does not serve
/// (a resource whose CRD is not installed, say).
pub fn not_found() -> Reply {
    Reply::Json(
        StatusCode::NOT_FOUND,
        status_failure(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ),
    )
}

/// A list answer, e.g. `list("v1", "PodList", "42", pods)`.
pub fn list(api_version: &str, kind: &str, resource_version: &str, items: Vec<Value>) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"resourceVersion": resource_version},
        "items": items,
    })
}

/// One watch event line: `type` is `ADDED`, `MODIFIED`, `DELETED`,
/// `BOOKMARK` or `ERROR` (then `object` is a Status).
pub fn watch_event(event_type: &str, object: Value) -> Value {
    json!({"type": event_type, "object": object})
}

/// A fresh CA and a server config with a leaf it signed.
fn tls_config() -> (CertificateDer<'static>, ServerConfig) {
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "fake-kubernetes-ca");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf.signed_by(&leaf_key, &ca).unwrap();

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    // kube-rs's connector speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (ca.der().clone(), config)
}

/// Accepts and serves every connection on this one task (not a task per
/// connection), so that aborting it drops them all at once: a stopped
/// server leaves no connection a pooled client could still reach.
async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handler: Arc<Handler>,
    requests: Arc<Mutex<Vec<Recorded>>>,
) {
    let mut connections = FuturesUnordered::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((tcp, _)) = accepted {
                    connections.push(connection(
                        tcp,
                        acceptor.clone(),
                        handler.clone(),
                        requests.clone(),
                    ));
                }
            }
            Some(()) = connections.next(), if !connections.is_empty() => {}
        }
    }
}

async fn connection(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    handler: Arc<Handler>,
    requests: Arc<Mutex<Vec<Recorded>>>,
) {
    let Ok(tls) = acceptor.accept(tcp).await else {
        return; // e.g. a client that does not trust the CA
    };
    let service = service_fn(move |req| {
        let (handler, requests) = (handler.clone(), requests.clone());
        async move { Ok::<_, Infallible>(answer(req, &*handler, &requests).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tls), service)
        .await;
}

async fn answer(
    req: Request<Incoming>,
    handler: &Handler,
    requests: &Mutex<Vec<Recorded>>,
) -> Response<Body> {
    let method = req.method().clone();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |pq| pq.as_str().to_owned());
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|body| body.to_bytes())
        .unwrap_or_default();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    let recorded = Recorded {
        method,
        path_and_query,
        body,
    };
    requests.lock().unwrap().push(recorded.clone());
    let (status, body) = match handler(&recorded) {
        Reply::Json(status, value) => (status, Full::new(Bytes::from(value.to_string())).boxed()),
        // No length: hyper sends it chunked, one chunk per line.
        Reply::Stream(rx) => (
            StatusCode::OK,
            BodyExt::boxed(StreamBody::new(futures_util::stream::unfold(
                rx,
                |mut rx| async move {
                    let value = rx.recv().await?;
                    let line = Bytes::from(format!("{value}\n"));
                    Some((Ok::<_, Infallible>(Frame::data(line)), rx))
                },
            ))),
        ),
    };
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .expect("valid response")
}
