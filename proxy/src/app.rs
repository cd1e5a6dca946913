//! The inbound side's connections to the local application: pooled HTTP/1.1
//! and HTTP/2 (prior knowledge) clients per application port.
//!
//! Where the application is reached (as Istio does since 1.10): on the
//! address the client connected to, i.e. the pod's own address, so a
//! service the pod binds to loopback only stays private to the pod. The
//! connection leaves from [`INBOUND_SOURCE_V4`], which the capture rules let
//! through instead of redirecting it back into the proxy. Loopback instead
//! when the pod opts in (`--inbound-to-loopback`), in explicit mode (the
//! `--inbound LISTEN=APP_PORT` contract), and for IPv6 destinations (there
//! is no loopback source address to tell those connections apart).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::http::Body;

/// The source address of the proxy's connections to the application on the
/// pod address: `ward-proxy init` returns traffic from it on `lo` before
/// the rule that sends the proxy's calls to its own pod address inbound
/// (Istio's `127.0.0.6`).
pub const INBOUND_SOURCE_V4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);

/// A TCP connection to the application at `addr` within `timeout`; from
/// [`INBOUND_SOURCE_V4`] unless `addr` is loopback.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let attempt = async {
        match addr {
            SocketAddr::V4(v4) if !v4.ip().is_loopback() => {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(IpAddr::V4(INBOUND_SOURCE_V4), 0))?;
                socket.connect(addr).await
            }
            _ => TcpStream::connect(addr).await,
        }
    };
    let tcp = tokio::time::timeout(timeout, attempt).await.map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect to the application timed out",
        )
    })??;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Connects every request to one fixed address, whatever the URI says, so
/// the URI can keep the client's original authority.
#[derive(Clone)]
pub struct FixedConnector {
    addr: SocketAddr,
    timeout: Duration,
}

impl tower::Service<Uri> for FixedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let (addr, timeout) = (self.addr, self.timeout);
        Box::pin(async move { Ok(TokioIo::new(connect(addr, timeout).await?)) })
    }
}

pub type AppClient = Client<FixedConnector, Body>;

/// The HTTP/1.1 and HTTP/2 clients for one application port.
#[derive(Clone)]
pub struct AppPort {
    pub http1: AppClient,
    pub http2: AppClient,
    addr: SocketAddr,
    /// Whether the application speaks HTTP/2 with prior knowledge; learnt
    /// once by a probe, so HTTP/2 clients can reach HTTP/1-only apps.
    speaks_h2: Arc<tokio::sync::OnceCell<bool>>,
}

impl AppPort {
    /// Known after the first probe: later calls are one atomic load.
    pub async fn speaks_h2(&self) -> bool {
        let known = self
            .speaks_h2
            .get_or_try_init(|| async { probe_h2(self.addr).await.ok_or(()) })
            .await;
        // No definite answer (the application is down): try HTTP/2 and ask
        // again next time.
        known.copied().unwrap_or(true)
    }
}

/// Sends the HTTP/2 preface and an empty SETTINGS frame; an HTTP/2 server
/// answers with its own SETTINGS frame (type 4), an HTTP/1 server with
/// something else or by closing. `None` when the application is unreachable.
async fn probe_h2(addr: SocketAddr) -> Option<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
    let attempt = async {
        let mut tcp = connect(addr, Duration::from_secs(2)).await.ok()?;
        let mut hello = crate::detect::H2_PREFACE.to_vec();
        hello.extend_from_slice(&SETTINGS);
        tcp.write_all(&hello).await.ok()?;
        let mut head = [0u8; 9];
        Some(match tcp.read_exact(&mut head).await {
            Ok(_) => head[3] == 4,
            Err(_) => false,
        })
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

pub struct AppClients {
    ports: RwLock<HashMap<SocketAddr, AppPort>>,
    connect_timeout: Duration,
    /// Largest response header block accepted from the application.
    max_header_bytes: u32,
    /// Reach the application on loopback rather than the pod address.
    to_loopback: bool,
}

impl AppClients {
    pub fn new(connect_timeout: Duration, max_header_bytes: u32, to_loopback: bool) -> Self {
        AppClients {
            ports: RwLock::new(HashMap::new()),
            connect_timeout,
            max_header_bytes,
            to_loopback,
        }
    }

    /// Where the application behind `destination` (the address the client
    /// connected to) is reached: that address itself for IPv4, else
    /// loopback in the family the client used.
    pub fn app_addr(&self, destination: SocketAddr) -> SocketAddr {
        let ip = match destination.ip().to_canonical() {
            IpAddr::V4(v4) if !self.to_loopback => IpAddr::V4(v4),
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        };
        SocketAddr::new(ip, destination.port())
    }

    pub fn for_addr(&self, addr: SocketAddr) -> AppPort {
        if let Some(port) = self.ports.read().expect("not poisoned").get(&addr) {
            return port.clone();
        }
        let connector = FixedConnector {
            addr,
            timeout: self.connect_timeout,
        };
        let mut http1 = Client::builder(TokioExecutor::new());
        http1
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90));
        let mut http2 = Client::builder(TokioExecutor::new());
        http2
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(true)
            .http2_max_header_list_size(self.max_header_bytes)
            .pool_idle_timeout(Duration::from_secs(90));
        let port = AppPort {
            http1: http1.build(connector.clone()),
            http2: http2.build(connector),
            addr,
            speaks_h2: Arc::default(),
        };
        self.ports
            .write()
            .expect("not poisoned")
            .entry(addr)
            .or_insert(port)
            .clone()
    }
}
