//! The original destination of a connection that iptables redirected to the
//! proxy (`SO_ORIGINAL_DST`, read through nix's safe wrappers), and a guard
//! against connecting back to the proxy itself.

#[cfg(test)]
mod tests;

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use nix::libc::{sockaddr_in, sockaddr_in6};
use nix::sys::socket::{getsockopt, sockopt};
use tokio::net::TcpStream;

/// Where the client meant to connect before REDIRECT rewrote it.
///
/// The family is chosen by the socket's local address: IPv4, and IPv4-mapped
/// IPv6 (an IPv4 client on a dual-stack listener, whose conntrack entry is
/// IPv4), use `SO_ORIGINAL_DST`; IPv6 uses `IP6T_SO_ORIGINAL_DST`. On a
/// connection that was not NATed the kernel reports the destination as is,
/// or `ENOENT` when conntrack does not track it.
pub fn original_destination(stream: &TcpStream) -> io::Result<SocketAddr> {
    match stream.local_addr()? {
        SocketAddr::V6(local) if local.ip().to_ipv4_mapped().is_none() => {
            let raw = getsockopt(stream, sockopt::Ip6tOriginalDst)?;
            Ok(SocketAddr::V6(from_sockaddr_in6(&raw)))
        }
        _ => {
            let raw = getsockopt(stream, sockopt::OriginalDst)?;
            Ok(SocketAddr::V4(from_sockaddr_in(&raw)))
        }
    }
}

/// Why a captured connection has no destination the proxy may forward to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unroutable {
    /// It was meant for one of the proxy's own listeners.
    Loop,
    /// The kernel does not know where it was going.
    Unknown,
}

/// The original destination of a captured connection, or why the proxy
/// refuses it: a loop when it is one of the proxy's own listeners
/// (`self_addrs`, see [`is_self_destination`]), unknown when the kernel
/// does not know it.
pub fn checked_destination(
    stream: &TcpStream,
    self_addrs: &[SocketAddr],
) -> Result<SocketAddr, Unroutable> {
    match original_destination(stream) {
        Ok(dest) if is_self_destination(dest, self_addrs) => Err(Unroutable::Loop),
        Ok(dest) => Ok(dest),
        Err(_) => Err(Unroutable::Unknown),
    }
}

/// Address and port are in network byte order in the kernel's struct.
fn from_sockaddr_in(raw: &sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(raw.sin_addr.s_addr)),
        u16::from_be(raw.sin_port),
    )
}

fn from_sockaddr_in6(raw: &sockaddr_in6) -> SocketAddrV6 {
    SocketAddrV6::new(
        Ipv6Addr::from(raw.sin6_addr.s6_addr),
        u16::from_be(raw.sin6_port),
        u32::from_be(raw.sin6_flowinfo),
        raw.sin6_scope_id,
    )
}

/// True when `orig` is one of the proxy's own listeners, so forwarding there
/// would loop (e.g. a client dialling 15001 directly, or a missing exclusion).
///
/// `listeners` are the addresses the proxy's listeners are reachable on.
/// Matching is by port, and then: the same address (IPv4-mapped IPv6 counts
/// as IPv4), or a loopback `orig`, or a wildcard listener (`0.0.0.0`, `::`)
/// with a loopback `orig`. This function cannot enumerate the host's
/// addresses, so for a wildcard listener the caller should also list the
/// pod's concrete addresses (e.g. `198.18.0.3:15001`).
pub fn is_self_destination(orig: SocketAddr, listeners: &[SocketAddr]) -> bool {
    let orig_ip = orig.ip().to_canonical();
    listeners.iter().any(|listener| {
        let listener_ip = listener.ip().to_canonical();
        listener.port() == orig.port() && (listener_ip == orig_ip || orig_ip.is_loopback())
    })
}

/// Test probe behind the hidden `ward-proxy debug-orig-dst` subcommand:
/// accepts on every address in `listen` and answers each connection with one
/// line, `<local address> <original destination>`, then closes it. Prints
/// `ready` once all listeners are bound.
pub async fn serve_probe(listen: &[SocketAddr]) -> io::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for &addr in listen {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tasks.spawn(probe_accept_loop(listener));
    }
    println!("ready");
    match tasks.join_next().await {
        Some(result) => result.map_err(io::Error::other)?,
        None => Ok(()),
    }
}

async fn probe_accept_loop(listener: tokio::net::TcpListener) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    loop {
        let (mut stream, _) = listener.accept().await?;
        let local = stream.local_addr()?;
        let reply = match original_destination(&stream) {
            Ok(orig) => format!("{local} {orig}\n"),
            Err(err) => format!("{local} error:{err}\n"),
        };
        // A client that went away is its own problem, not the probe's.
        let _ = stream.write_all(reply.as_bytes()).await;
    }
}

/// Client side of the probe: connects to `addr` and returns what it answered.
pub async fn probe_connect(addr: SocketAddr) -> io::Result<String> {
    use tokio::io::AsyncReadExt;
    let mut stream = TcpStream::connect(addr).await?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await?;
    Ok(reply)
}
