//! Shared harness for the explicit-mode integration tests: a throwaway CA
//! with certificates in a temp dir, proxies started in-process from their
//! command-line flags, and small in-process applications. Everything listens
//! on 127.0.0.1:0; every wait is bounded.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use clap::Parser;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use ward_identity::SpiffeId;
use ward_identity::bundle::TrustBundles;
use ward_identity::ca::{self, CertificateAuthority};
use ward_identity::tls::{self, SvidCell};
use ward_proxy::config::RunArgs;
use ward_proxy::proxy::{self, Running};

pub const TD: &str = "cluster.local";
pub const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
pub const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/server";

/// Panics if `fut` takes longer than `secs`: no test may hang.
pub async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: did not finish within {secs}s"),
    }
}

// ---------------------------------------------------------------- PKI

/// A CA for one trust domain, its certificates written to a temp dir.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: CertificateAuthority,
    pub trust_domain: String,
    pub ca_path: PathBuf,
    issued: AtomicUsize,
}

/// Files of one issued SVID, plus the bundle to pass as `--ca`.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub id: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl Pki {
    pub fn new() -> Self {
        Self::for_trust_domain(TD)
    }

    pub fn for_trust_domain(td: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = CertificateAuthority::generate_root(td, Duration::from_secs(24 * 3600))
            .expect("root CA");
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.bundle_pem()).expect("write ca.pem");
        Pki {
            dir,
            ca,
            trust_domain: td.to_owned(),
            ca_path,
            issued: AtomicUsize::new(0),
        }
    }

    pub fn bundle_pem(&self) -> String {
        self.ca.bundle_pem()
    }

    /// Issues an SVID for `id` (full SPIFFE ID) and writes chain and key.
    pub fn issue(&self, id: &str) -> CertFiles {
        let spiffe = SpiffeId::parse(id).expect("SPIFFE ID");
        let key = ca::generate_key();
        let csr = ca::build_csr(&key, &spiffe).expect("CSR");
        let svid = self
            .ca
            .sign_csr(&csr, &spiffe, Duration::from_secs(3600))
            .expect("sign");
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        let cert = self.dir.path().join(format!("svid{n}.pem"));
        let key_path = self.dir.path().join(format!("svid{n}.key"));
        std::fs::write(&cert, svid.chain_pem).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        CertFiles {
            id: id.to_owned(),
            cert,
            key: key_path,
            ca: self.ca_path.clone(),
        }
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// A TLS connector speaking mesh mTLS directly (a test peer, not a proxy):
/// presents `cert`, trusts the roots in `roots` (trust domain, PEM) and
/// accepts only a server presenting `expected_server`.
pub fn mesh_connector(
    cert: &CertFiles,
    roots: &[(&str, String)],
    expected_server: &str,
    alpn: &[&[u8]],
) -> tokio_rustls::TlsConnector {
    let mut bundles = TrustBundles::new();
    for (td, pem) in roots {
        bundles.add_pem(td, pem).expect("roots");
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert.cert)
        .expect("cert file")
        .collect::<Result<_, _>>()
        .expect("PEM chain");
    let key = PrivateKeyDer::from_pem_file(&cert.key).expect("key file");
    let svid = Arc::new(SvidCell::new());
    svid.install(chain, key, &bundles)
        .expect("test SVID verifies against its own roots");
    let config = tls::client_config(
        svid,
        tls::shared_bundles(bundles),
        SpiffeId::parse(expected_server).expect("SPIFFE ID"),
    );
    let mut config = Arc::unwrap_or_clone(config);
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

pub fn server_name() -> ServerName<'static> {
    ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into())
}

// ---------------------------------------------------------------- proxies

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
}

pub fn parse_args(args: &[String]) -> RunArgs {
    let argv = std::iter::once("ward-proxy".to_owned()).chain(args.iter().cloned());
    Cli::try_parse_from(argv)
        .unwrap_or_else(|e| panic!("bad proxy flags {args:?}: {e}"))
        .run
}

/// `flags` plus the identity in `cert` and an admin listener on an
/// ephemeral port: the parsed flags of a test proxy.
pub fn proxy_args(cert: &CertFiles, flags: &[String]) -> RunArgs {
    let mut args: Vec<String> = flags.to_vec();
    for (flag, value) in [
        ("--admin", "127.0.0.1:0".to_owned()),
        ("--cert", cert.cert.display().to_string()),
        ("--key", cert.key.display().to_string()),
        ("--ca", cert.ca.display().to_string()),
    ] {
        args.push(flag.to_owned());
        args.push(value);
    }
    parse_args(&args)
}

/// Starts a proxy with `flags` plus the identity in `cert` and an admin
/// listener on an ephemeral port.
pub async fn start_proxy(cert: &CertFiles, flags: &[String]) -> Running {
    proxy::start(&proxy_args(cert, flags))
        .await
        .expect("proxy starts")
}

/// `--inbound 127.0.0.1:0=APP_PORT` plus `extra`, with the server identity.
pub async fn start_inbound(pki: &Pki, app: SocketAddr, extra: &[&str]) -> Running {
    start_inbound_as(&pki.issue(SERVER_ID), app, extra).await
}

/// `start_inbound` with the identity files in `server`.
pub async fn start_inbound_as(server: &CertFiles, app: SocketAddr, extra: &[&str]) -> Running {
    let mut flags = vec![
        "--inbound".to_owned(),
        format!("127.0.0.1:0={}", app.port()),
    ];
    flags.extend(extra.iter().map(|s| s.to_string()));
    start_proxy(server, &flags).await
}

/// `--outbound 127.0.0.1:0=DEST --endpoint DEST=EXPECTED` plus `extra`,
/// with the client identity. `expected: None` leaves DEST unmeshed.
pub async fn start_outbound(
    pki: &Pki,
    dest: SocketAddr,
    expected: Option<&str>,
    extra: &[&str],
) -> Running {
    let client = pki.issue(CLIENT_ID);
    let mut flags = vec!["--outbound".to_owned(), format!("127.0.0.1:0={dest}")];
    if let Some(id) = expected {
        flags.push("--endpoint".to_owned());
        flags.push(format!("{dest}={id}"));
    }
    flags.extend(extra.iter().map(|s| s.to_string()));
    start_proxy(&client, &flags).await
}

/// An app behind an inbound proxy behind an outbound proxy.
pub struct Mesh {
    pub pki: Pki,
    pub inbound: Running,
    pub outbound: Running,
}

impl Mesh {
    pub async fn new(app: SocketAddr, inbound_extra: &[&str], outbound_extra: &[&str]) -> Mesh {
        let pki = Pki::new();
        let inbound = start_inbound(&pki, app, inbound_extra).await;
        Mesh::in_front_of(pki, inbound, outbound_extra).await
    }

    /// Both proxies declare the next hop's port opaque (`--opaque-ports`):
    /// the inbound the app's, the outbound the inbound's.
    pub async fn opaque(app: SocketAddr) -> Mesh {
        Mesh::opaque_with(app, &[]).await
    }

    /// [`Mesh::opaque`] with `extra` flags for both proxies.
    pub async fn opaque_with(app: SocketAddr, extra: &[&str]) -> Mesh {
        let pki = Pki::new();
        let app_port = app.port().to_string();
        let inbound_flags = [&["--opaque-ports", app_port.as_str()][..], extra].concat();
        let inbound = start_inbound(&pki, app, &inbound_flags).await;
        let inbound_port = inbound.inbound_addrs[0].port().to_string();
        let outbound_flags = [&["--opaque-ports", inbound_port.as_str()][..], extra].concat();
        Mesh::in_front_of(pki, inbound, &outbound_flags).await
    }

    /// An outbound proxy (with `outbound_extra`) in front of `inbound`.
    async fn in_front_of(pki: Pki, inbound: Running, outbound_extra: &[&str]) -> Mesh {
        let outbound = start_outbound(
            &pki,
            inbound.inbound_addrs[0],
            Some(SERVER_ID),
            outbound_extra,
        )
        .await;
        Mesh {
            pki,
            inbound,
            outbound,
        }
    }

    /// Where the application connects: the outbound listener.
    pub fn entry(&self) -> SocketAddr {
        self.outbound.outbound_addrs[0]
    }

    pub fn inbound_addr(&self) -> SocketAddr {
        self.inbound.inbound_addrs[0]
    }

    pub async fn shutdown(self) {
        drain_both(self.outbound, self.inbound).await;
    }
}

/// Drains two proxies at once (2 s each).
pub async fn drain_both(outbound: Running, inbound: Running) {
    let _ = tokio::join!(
        outbound.drain(Duration::from_secs(2)),
        inbound.drain(Duration::from_secs(2))
    );
}

// ---------------------------------------------------------------- metrics

/// Sum of the samples of `name` whose labels include all of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric_name, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest),
                None => (series, ""),
            };
            if metric_name != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Asserts that `name` with `labels` is `value` in `running`'s metrics now.
#[track_caller]
pub fn assert_metric(running: &Running, name: &str, labels: &[(&str, &str)], value: f64) {
    let metrics = running.metrics.render();
    assert_eq!(metric(&metrics, name, labels), value, "{metrics}");
}

/// Waits for a metric to reach `value`: counters move just
/// after the socket closes, so a test that saw the close may be early.
pub async fn wait_for_metric(running: &Running, name: &str, labels: &[(&str, &str)], value: f64) {
    // Generous: it only bounds how long a failing test waits.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = running.metrics.render();
        let got = metric(&text, name, labels);
        if got == value {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("{name}{labels:?} = {got}, expected {value}:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- bodies

/// A response or request body fed from a channel (streaming, no buffering).
pub struct ChannelBody {
    rx: mpsc::Receiver<Frame<Bytes>>,
}

impl ChannelBody {
    pub fn new(capacity: usize) -> (mpsc::Sender<Frame<Bytes>>, ChannelBody) {
        let (tx, rx) = mpsc::channel(capacity);
        (tx, ChannelBody { rx })
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|f| f.map(Ok))
    }
}

static CHUNK: [u8; 64 * 1024] = [b'w'; 64 * 1024];

/// `len` bytes of filler generated on the fly (never held in memory).
pub struct RepeatBody {
    remaining: u64,
}

impl RepeatBody {
    pub fn new(len: u64) -> Self {
        RepeatBody { remaining: len }
    }
}

impl Body for RepeatBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(CHUNK.len() as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..n])))))
    }
    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

// ---------------------------------------------------------------- clients

/// A complete response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not the echo app's JSON ({e}): {} {:?}",
                self.status, self.body
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn collect(resp: Response<Incoming>) -> anyhow::Result<Reply> {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Reply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

/// One HTTP/1.1 request on a new connection to `addr`.
pub async fn http1<B>(addr: SocketAddr, req: Request<B>) -> anyhow::Result<Reply>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    let driver = tokio::spawn(conn);
    let resp = sender.send_request(req).await;
    let reply = match resp {
        Ok(resp) => collect(resp).await,
        Err(e) => Err(e.into()),
    };
    driver.abort();
    reply
}

/// An HTTP/1.1 keep-alive connection to `addr`.
pub async fn http1_sender<B>(
    addr: SocketAddr,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<B>>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = TcpStream::connect(addr).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// An HTTP/2 prior-knowledge (h2c) connection to `addr`.
pub async fn h2c_sender<B>(
    addr: SocketAddr,
) -> anyhow::Result<hyper::client::conn::http2::SendRequest<B>>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = TcpStream::connect(addr).await?;
    // Generous response header limit: the proxies' limits are under test.
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .max_header_list_size(1024 * 1024)
        .handshake(TokioIo::new(tcp))
        .await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One h2c request on a new connection to `addr`.
pub async fn h2c(addr: SocketAddr, req: Request<Full<Bytes>>) -> anyhow::Result<Reply> {
    let mut sender = h2c_sender(addr).await?;
    let resp = sender.send_request(req).await?;
    collect(resp).await
}

pub fn get(uri: &str) -> Request<Full<Bytes>> {
    Request::get(uri)
        .header(http::header::HOST, "app.test")
        .body(Full::new(Bytes::new()))
        .expect("request")
}

/// Adds the client's own (forged) `x-forwarded-client-cert` claiming the
/// admin identity: a proxy must never pass it on.
pub fn forge_xfcc<B>(req: &mut Request<B>) {
    req.headers_mut().insert(
        "x-forwarded-client-cert",
        "URI=spiffe://cluster.local/ns/default/sa/admin"
            .parse()
            .unwrap(),
    );
}

/// The JSON body of a streamed response (the echo app's report).
pub async fn json_body(resp: Response<Incoming>) -> serde_json::Value {
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

/// Sends `GET /slow?ms=1500` to `entry` and waits (up to 5 s) until it
/// reached `app`: a request in flight. The handle yields its reply.
pub async fn start_slow_request(
    entry: SocketAddr,
    app: &App,
) -> tokio::task::JoinHandle<anyhow::Result<Reply>> {
    let slow = tokio::spawn(http1(entry, get("/slow?ms=1500")));
    within(30, "slow request reaches the app", async {
        while app.state.requests() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    slow
}

/// Opens a raw connection to `addr` and asks the echo app for an
/// `Upgrade: echo`; returns the connection and the response head.
pub async fn upgrade_to_echo(addr: SocketAddr) -> (TcpStream, String) {
    let mut ws = TcpStream::connect(addr).await.unwrap();
    ws.write_all(
        b"GET /chat HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut ws).await;
    (ws, head)
}

/// A mesh mTLS connection to `addr` with `connector` (handshake bounded).
pub async fn connect_tls(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    within(5, "handshake", connector.connect(server_name(), tcp))
        .await
        .unwrap()
}

/// Writes `bytes` to a raw connection and reads until the peer closes,
/// an error, or `secs` passed; returns what arrived and whether it closed.
pub async fn raw_exchange(stream: &mut TcpStream, bytes: &[u8], secs: u64) -> (Vec<u8>, bool) {
    let _ = stream.write_all(bytes).await;
    read_to_close(stream, secs).await
}

pub async fn read_to_close(stream: &mut TcpStream, secs: u64) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

/// Reads a response head (up to the blank line) from a raw connection.
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    within(5, "response head", async {
        while !buf.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut byte).await.expect("read head");
            assert!(n > 0, "closed before the response head ended: {buf:?}");
            buf.push(byte[0]);
        }
    })
    .await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// Reads exactly `n` bytes, bounded.
pub async fn read_n(stream: &mut (impl tokio::io::AsyncRead + Unpin), n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    within(5, "read_n", stream.read_exact(&mut buf))
        .await
        .expect("read_exact");
    buf
}

// ---------------------------------------------------------------- apps

/// What the echo app saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub version: String,
    pub headers: BTreeMap<String, String>,
    pub body_len: u64,
}

#[derive(Default)]
pub struct AppState {
    pub seen: Mutex<Vec<Seen>>,
    /// Requests whose handler started (counted before the body is read).
    pub started: AtomicUsize,
    /// `/together` requests that arrived so far.
    pub together: tokio::sync::watch::Sender<usize>,
}

impl AppState {
    pub fn requests(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }
    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the app saw a request")
    }
}

pub struct App {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// HTTP/1.1 only (HTTP/2 prior knowledge is answered with an HTTP/1 400).
    Http1Only,
    /// HTTP/1.1 and h2c (prior knowledge), auto-detected.
    Auto,
}

async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.expect("bind app")
}

fn version_name(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        _ => "other",
    }
}

pub const BIG_RESPONSE_HEADER: &str = "x-big-response-header";

type AppBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// The echo app. Any path: reports method, path, version, headers and the
/// number of body bytes (counted as they stream; only the first 64 KiB are
/// kept, and returned as `body`) as JSON.
/// With `x-big-response-header: N` the response carries an `x-big`
/// header of N bytes. `/together?n=N`: answers once N of them are in the app at once.
/// `/slow?ms=N`: waits N ms first. `/download?n=N`: answers N bytes of
/// filler, generated as they are sent. `Upgrade:` requests get 101 and `CONNECT`
/// gets 200, after which bytes are echoed back; on the client's half-close
/// the app writes `bye <n>` and closes.
pub async fn echo_app(flavor: Flavor) -> App {
    serve_app(move |tcp, st| async move {
        let svc = service_fn(move |req| echo(req, st.clone()));
        let io = TokioIo::new(tcp);
        match flavor {
            Flavor::Http1Only => {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .with_upgrades()
                    .await;
            }
            Flavor::Auto => {
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                // Generous: the proxies' limits are under test.
                builder.http2().max_header_list_size(1024 * 1024);
                let _ = builder.serve_connection_with_upgrades(io, svc).await;
            }
        }
    })
    .await
}

/// Binds an app on 127.0.0.1:0 and, for each accepted connection, calls
/// `on_connection` in the accept loop and runs the future it returns in a
/// task of its own.
async fn serve_app<F, Fut>(on_connection: F) -> App
where
    F: Fn(TcpStream, Arc<AppState>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = bind().await;
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(AppState::default());
    let st = state.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(on_connection(tcp, st.clone()));
        }
    });
    App { addr, state, task }
}

/// Echoes what arrives on `io` (through `buf`) until the peer half-closes,
/// then writes `bye <n>` (n = bytes received) and closes; gives up
/// silently on an error.
async fn echo_then_bye(io: &mut (impl AsyncRead + AsyncWrite + Unpin), buf: &mut [u8]) {
    let mut total = 0usize;
    loop {
        match io.read(buf).await {
            Ok(0) => break,
            Ok(n) => {
                total += n;
                if io.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
    let _ = io.write_all(format!("bye {total}").as_bytes()).await;
    let _ = io.shutdown().await;
}

async fn echo(
    mut req: Request<Incoming>,
    state: Arc<AppState>,
) -> Result<Response<AppBody>, Infallible> {
    state.started.fetch_add(1, Ordering::SeqCst);
    let tunnel =
        req.method() == http::Method::CONNECT || req.headers().contains_key(http::header::UPGRADE);
    let mut headers = BTreeMap::new();
    for (name, value) in req.headers() {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|old: &mut String| {
                old.push_str(", ");
                old.push_str(&v)
            })
            .or_insert(v);
    }
    let mut seen = Seen {
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
        version: version_name(req.version()).to_owned(),
        headers,
        body_len: 0,
    };
    if tunnel {
        state.seen.lock().unwrap().push(seen);
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                echo_then_bye(&mut TokioIo::new(upgraded), &mut [0u8; 4096]).await;
            }
        });
        let resp = if req.method() == http::Method::CONNECT {
            Response::new(Full::new(Bytes::new()).boxed())
        } else {
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(http::header::CONNECTION, "upgrade")
                .header(http::header::UPGRADE, "echo")
                .body(Full::new(Bytes::new()).boxed())
                .unwrap()
        };
        return Ok(resp);
    }
    if seen.path == "/download" {
        let n = query_param(req.uri(), "n").unwrap_or(0);
        state.seen.lock().unwrap().push(seen);
        return Ok(Response::new(RepeatBody::new(n).boxed()));
    }
    if seen.path == "/slow" {
        let ms = query_param(req.uri(), "ms").unwrap_or(1500);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if seen.path == "/together" {
        // Answered once `n` of them are in the app at the same time (a
        // path that serialised them would never get there).
        let n = query_param(req.uri(), "n").unwrap_or(1) as usize;
        let mut arrivals = state.together.subscribe();
        state.together.send_modify(|count| *count += 1);
        if tokio::time::timeout(Duration::from_secs(60), arrivals.wait_for(|c| *c >= n))
            .await
            .is_err()
        {
            let resp = Response::builder()
                .status(StatusCode::GATEWAY_TIMEOUT)
                .body(Full::new(Bytes::from("not together")).boxed())
                .unwrap();
            return Ok(resp);
        }
    }
    let mut body = req.into_body();
    let mut sample = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    seen.body_len += data.len() as u64;
                    if sample.len() < 64 * 1024 {
                        sample.extend_from_slice(data);
                    }
                }
            }
            Err(_) => break,
        }
    }
    let json = serde_json::json!({
        "method": seen.method,
        "path": seen.path,
        "version": seen.version,
        "headers": seen.headers,
        "body_len": seen.body_len,
        "body": String::from_utf8_lossy(&sample[..sample.len().min(64 * 1024)]),
    });
    let big = seen
        .headers
        .get(BIG_RESPONSE_HEADER)
        .and_then(|n| n.parse::<usize>().ok());
    state.seen.lock().unwrap().push(seen);
    let mut resp = Response::builder()
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(json.to_string())).boxed())
        .unwrap();
    if let Some(n) = big {
        let value = HeaderValue::from_str(&"b".repeat(n)).unwrap();
        resp.headers_mut().insert("x-big", value);
    }
    Ok(resp)
}

/// The numeric query parameter `name` of `uri`.
fn query_param(uri: &http::Uri, name: &str) -> Option<u64> {
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?
        .parse()
        .ok()
}

pub const GRPC_TRAILER: &str = "x-echo-count";

/// A gRPC-style HTTP/2-only app: echoes each length-prefixed message as
/// soon as it is complete, then ends with trailers `grpc-status: 0` and
/// `x-echo-count: <messages>`.
pub async fn grpc_app() -> App {
    serve_app(|tcp, st| async move {
        let svc = service_fn(move |req| grpc_echo(req, st.clone()));
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(tcp), svc)
            .await;
    })
    .await
}

async fn grpc_echo(
    req: Request<Incoming>,
    state: Arc<AppState>,
) -> Result<Response<ChannelBody>, Infallible> {
    state.started.fetch_add(1, Ordering::SeqCst);
    let (tx, body) = ChannelBody::new(16);
    let mut incoming = req.into_body();
    tokio::spawn(async move {
        let mut buf = BytesMut::new();
        let mut count = 0u32;
        while let Some(Ok(frame)) = incoming.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while buf.len() >= 5 {
                let len = (&buf[1..5]).get_u32() as usize;
                if buf.len() < 5 + len {
                    break;
                }
                let msg = buf.split_to(5 + len).freeze();
                count += 1;
                if tx.send(Frame::data(msg)).await.is_err() {
                    return;
                }
            }
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert(GRPC_TRAILER, HeaderValue::from(count));
        let _ = tx.send(Frame::trailers(trailers)).await;
    });
    Ok(Response::builder()
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(body)
        .unwrap())
}

/// A gRPC message: compression flag 0, 4-byte big-endian length, payload.
pub fn grpc_message(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.extend_from_slice(&[0]);
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(payload);
    b.freeze()
}

/// TCP echo: echoes bytes; when the client half-closes, writes `bye <n>`
/// (n = bytes received) and closes its side.
pub async fn tcp_echo_app() -> App {
    tcp_app(false).await
}

/// Server-first: writes `BANNER` on accept, then behaves like the echo app.
pub async fn banner_app() -> App {
    tcp_app(true).await
}

pub const BANNER: &[u8] = b"220 ward-test banner\r\n";

async fn tcp_app(banner: bool) -> App {
    serve_app(move |mut tcp, st| {
        // Counted on accept, before the connection's task runs.
        st.started.fetch_add(1, Ordering::SeqCst);
        async move {
            if banner && tcp.write_all(BANNER).await.is_err() {
                return;
            }
            echo_then_bye(&mut tcp, &mut [0u8; 8192]).await;
        }
    })
    .await
}

/// A port with nothing listening (bound, then released).
pub async fn dead_port() -> SocketAddr {
    let l = bind().await;
    l.local_addr().unwrap()
}

/// VmHWM (peak resident set) of this process, in KiB.
pub fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM line")
}

/// Convenience: the `x-ward-error` header of a reply.
pub fn ward_error(reply: &Reply) -> Option<String> {
    reply
        .headers
        .get("x-ward-error")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}
