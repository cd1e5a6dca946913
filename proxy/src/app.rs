//! The inbound side's connections to the local application: pooled HTTP/1.1
//! and HTTP/2 (prior knowledge) clients per application port.
//!
//! Where the application is reached (as Istio does since 1.10): on the
//! address the client connected to, i.e. the pod's own address, IPv4 and
//! IPv6 alike, so a service the pod binds to loopback only (`127.0.0.1`,
//! `::1`) stays private to the pod. The connection leaves from
//! [`INBOUND_SOURCE_V4`] or [`INBOUND_SOURCE_V6`], which the capture rules
//! let through instead of redirecting it back into the proxy. Loopback
//! instead when the pod opts in (`--inbound-to-loopback`) and in explicit
//! mode (the `--inbound LISTEN=APP_PORT` contract).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::http::Body;

/// The source address of the proxy's IPv4 connections to the application
/// on the pod address: `ward-proxy init` returns traffic from it on `lo`
/// before the rule that sends the proxy's calls to its own pod address
/// inbound (Istio's `127.0.0.6`).
pub const INBOUND_SOURCE_V4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);

/// The same for IPv6 (Istio's `::6`). IPv6 has a single loopback address,
/// so `ward-proxy init` adds this one to `lo` (`ip -6 addr replace ::6/128
/// dev lo nodad`); not a loopback address, so an application that trusts
/// `::1` does not take the sidecar's connections for local ones.
pub const INBOUND_SOURCE_V6: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6);

/// Whether the missing IPv6 source address was logged already (once per
/// process: every IPv6 request would repeat it).
static V6_SOURCE_MISSING_LOGGED: AtomicBool = AtomicBool::new(false);

/// A TCP connection to the application at `addr` within `timeout`; from
/// [`INBOUND_SOURCE_V4`] or [`INBOUND_SOURCE_V6`] unless `addr` is loopback.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let attempt = async {
        let socket = match addr {
            _ if addr.ip().is_loopback() => return TcpStream::connect(addr).await,
            SocketAddr::V4(_) => {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(IpAddr::V4(INBOUND_SOURCE_V4), 0))?;
                socket
            }
            SocketAddr::V6(_) => {
                let socket = tokio::net::TcpSocket::new_v6()?;
                socket
                    .bind(SocketAddr::new(IpAddr::V6(INBOUND_SOURCE_V6), 0))
                    .map_err(v6_source_error)?;
                socket
            }
        };
        socket.connect(addr).await
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

/// `::6` not on `lo` (`ward-proxy init` did not run, or ran without
/// `ip6tables`/`ip`): the application cannot be reached over IPv6 without
/// the capture rules sending the connection back into the proxy, so it is
/// not reached at all (503 application unavailable), and the cause is
/// logged once.
fn v6_source_error(err: std::io::Error) -> std::io::Error {
    if err.kind() == std::io::ErrorKind::AddrNotAvailable
        && !V6_SOURCE_MISSING_LOGGED.swap(true, Ordering::Relaxed)
    {
        tracing::warn!(
            source = %INBOUND_SOURCE_V6,
            "IPv6 inbound connections cannot reach the application: {INBOUND_SOURCE_V6} is not an address of lo (ward-proxy init adds it)"
        );
    }
    std::io::Error::new(
        err.kind(),
        format!("binding the inbound source {INBOUND_SOURCE_V6}: {err}"),
    )
}

/// Most application addresses whose clients are kept at once. Entries are
/// made when a connection is accepted, before it is authenticated, so a
/// port scan would otherwise add one per port it tries.
const MAX_APP_ADDRS: usize = 1024;

/// Connects every request to one fixed address, whatever the URI says, so
/// the URI can keep the client's original authority.
#[derive(Clone)]
pub struct FixedConnector {
    addr: SocketAddr,
    timeout: Duration,
    /// Set once a connection to the application succeeded.
    used: Arc<AtomicBool>,
}

impl tower::Service<Uri> for FixedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let (addr, timeout, used) = (self.addr, self.timeout, self.used.clone());
        Box::pin(async move {
            let tcp = connect(addr, timeout).await?;
            used.store(true, Ordering::Relaxed);
            Ok(TokioIo::new(tcp))
        })
    }
}

pub type AppClient = Client<FixedConnector, Body>;

/// The HTTP/1.1 and HTTP/2 clients for one application port.
#[derive(Clone)]
pub struct AppPort {
    pub http1: AppClient,
    pub http2: AppClient,
    addr: SocketAddr,
    /// Whether a request ever reached the application through these clients.
    used: Arc<AtomicBool>,
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
    /// connected to) is reached: that address itself, in either family
    /// (an IPv4-mapped IPv6 address as the IPv4 address it is), or
    /// loopback in the same family when the pod opted in.
    pub fn app_addr(&self, destination: SocketAddr) -> SocketAddr {
        let port = destination.port();
        match destination {
            _ if self.to_loopback => match destination.ip().to_canonical() {
                IpAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
                IpAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
            },
            SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(IpAddr::V4(v4), port),
                // The scope keeps a link-local destination on its link.
                None => SocketAddr::V6(SocketAddrV6::new(*v6.ip(), port, 0, v6.scope_id())),
            },
            SocketAddr::V4(_) => destination,
        }
    }

    /// The clients for the application at `addr`, kept for the next
    /// connection to it. At most [`MAX_APP_ADDRS`] are kept: when full, the
    /// ones no request ever went through (a port scan's) make room, and if
    /// none did, the new clients serve their connection without being kept.
    pub fn for_addr(&self, addr: SocketAddr) -> AppPort {
        if let Some(port) = self.ports.read().expect("not poisoned").get(&addr) {
            return port.clone();
        }
        let used = Arc::new(AtomicBool::new(false));
        let connector = FixedConnector {
            addr,
            timeout: self.connect_timeout,
            used: used.clone(),
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
            used,
            speaks_h2: Arc::default(),
        };
        let mut ports = self.ports.write().expect("not poisoned");
        if let Some(existing) = ports.get(&addr) {
            return existing.clone();
        }
        if ports.len() >= MAX_APP_ADDRS {
            ports.retain(|_, kept| kept.used.load(Ordering::Relaxed));
        }
        if ports.len() < MAX_APP_ADDRS {
            ports.insert(addr, port.clone());
        }
        port
    }

    /// How many addresses have clients kept.
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.ports.read().expect("not poisoned").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clients(to_loopback: bool) -> AppClients {
        AppClients::new(Duration::from_secs(1), 64 * 1024, to_loopback)
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_application_is_reached_on_the_address_the_client_connected_to() {
        let apps = clients(false);
        for destination in ["198.18.0.3:8080", "[2001:2::3]:8080"] {
            assert_eq!(apps.app_addr(addr(destination)), addr(destination));
        }
        // An IPv4 client on a dual-stack listener: IPv4, as it is.
        assert_eq!(
            apps.app_addr(addr("[::ffff:198.18.0.3]:8080")),
            addr("198.18.0.3:8080")
        );
        // A link-local destination keeps its interface.
        let link_local = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 80, 7, 3));
        let SocketAddr::V6(reached) = apps.app_addr(link_local) else {
            panic!("IPv6 stays IPv6");
        };
        assert_eq!(
            (reached.ip(), reached.port()),
            (&"fe80::1".parse::<Ipv6Addr>().unwrap(), 80)
        );
        assert_eq!(reached.scope_id(), 3);
    }

    #[test]
    fn loopback_only_when_opted_in_in_the_family_the_client_used() {
        let apps = clients(true);
        assert_eq!(
            apps.app_addr(addr("198.18.0.3:8080")),
            addr("127.0.0.1:8080")
        );
        assert_eq!(
            apps.app_addr(addr("[::ffff:198.18.0.3]:8080")),
            addr("127.0.0.1:8080")
        );
        assert_eq!(apps.app_addr(addr("[2001:2::3]:8080")), addr("[::1]:8080"));
    }

    #[tokio::test]
    async fn a_port_scan_does_not_grow_the_kept_clients_without_bound() {
        let apps = clients(false);
        let port = |p: u16| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 3)), p);
        // A port that served requests, then a scan of every other port.
        apps.for_addr(port(8080))
            .used
            .store(true, Ordering::Relaxed);
        for p in 1..=5000 {
            if p != 8080 {
                apps.for_addr(port(p));
            }
        }
        assert!(apps.kept() <= MAX_APP_ADDRS, "{}", apps.kept());
        // The one in use survived every clean-up.
        assert!(apps.for_addr(port(8080)).used.load(Ordering::Relaxed));
        // The same address gets the same clients while it is kept.
        let a = apps.for_addr(port(9000));
        assert!(Arc::ptr_eq(&a.used, &apps.for_addr(port(9000)).used));
    }

    #[test]
    fn the_inbound_sources_are_not_loopback_in_ipv6() {
        assert!(INBOUND_SOURCE_V4.is_loopback());
        // ::1 is IPv6's only loopback address: ::6 is an ordinary one, so
        // ward-proxy init has to add it to lo.
        assert!(!INBOUND_SOURCE_V6.is_loopback());
        assert_eq!(INBOUND_SOURCE_V6.to_string(), "::6");
    }
}
