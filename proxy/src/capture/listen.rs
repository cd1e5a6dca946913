//! The capture listeners: where the redirect rules send a pod's connections.
//!
//! Both families by default, `0.0.0.0` and `[::]` on the same port: `init`
//! programs ip6tables as it programs iptables, so a pod with an IPv6
//! address gets its IPv6 connections redirected too, and with no IPv6
//! listener they would all be refused. The IPv6 socket is IPv6-only:
//! IPv4 clients have their own socket and never arrive as IPv4-mapped
//! addresses, so policies, metrics and logs see them as IPv4. A pod whose
//! kernel has IPv6 off has no IPv6 traffic to capture: the `[::]` listener
//! is then skipped, saying so; any other address that cannot be bound is an
//! error.

use std::io;
use std::net::SocketAddr;

use anyhow::Context;
use nix::sys::socket::{setsockopt, sockopt};
use tokio::net::{TcpListener, TcpSocket};
use tracing::info;

/// What the kernel's default `somaxconn` allows, as `TcpListener::bind`.
const BACKLOG: u32 = 1024;

/// Binds every address of `addrs`; `what` names them in errors and logs.
pub async fn bind_all(addrs: &[SocketAddr], what: &str) -> anyhow::Result<Vec<TcpListener>> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for &addr in addrs {
        match bind(addr) {
            Ok(listener) => listeners.push(listener),
            Err(err) if addr.ip().is_unspecified() && addr.is_ipv6() && ipv6_off(&err) => {
                info!(%addr, %err, "IPv6 is not available: no IPv6 {what} listener");
            }
            Err(err) => {
                return Err(err).with_context(|| format!("binding the {what} listener {addr}"));
            }
        }
    }
    anyhow::ensure!(
        !listeners.is_empty(),
        "no {what} listener could be bound on {addrs:?}"
    );
    Ok(listeners)
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => {
            let socket = TcpSocket::new_v6()?;
            setsockopt(&socket, sockopt::Ipv6V6Only, &true)?;
            socket
        }
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// The errors of a kernel or namespace without IPv6.
fn ipv6_off(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(nix::libc::EAFNOSUPPORT) | Some(nix::libc::EADDRNOTAVAIL)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_families_share_a_port_and_ipv4_stays_ipv4() {
        let v4 = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = v4.local_addr().unwrap().port();
        let Ok(v6) = bind(SocketAddr::new("::1".parse().unwrap(), port)) else {
            eprintln!("no IPv6 on this machine: only the IPv4 half is checked");
            return;
        };
        let client = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (_, source) = v4.accept().await.unwrap();
        assert_eq!(
            source,
            client.local_addr().unwrap(),
            "an IPv4 source, not IPv4-mapped"
        );
        let client6 = tokio::net::TcpStream::connect(("::1", port)).await.unwrap();
        let (_, source6) = v6.accept().await.unwrap();
        assert_eq!(source6, client6.local_addr().unwrap());
    }

    #[tokio::test]
    async fn an_address_that_cannot_be_bound_is_an_error_naming_it() {
        let taken = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind_all(&[addr], "inbound capture").await.unwrap_err();
        assert!(
            format!("{err:#}").contains(&format!("binding the inbound capture listener {addr}")),
            "{err:#}"
        );
    }
}
