use super::*;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn sockaddr_in_is_read_in_network_byte_order() {
    let raw = sockaddr_in {
        sin_family: nix::libc::AF_INET as _,
        sin_port: 8080u16.to_be(),
        sin_addr: nix::libc::in_addr {
            s_addr: u32::from(Ipv4Addr::new(198, 18, 0, 3)).to_be(),
        },
        sin_zero: [0; 8],
    };
    assert_eq!(from_sockaddr_in(&raw), "198.18.0.3:8080".parse().unwrap());
}

#[test]
fn sockaddr_in6_is_read_in_network_byte_order() {
    let ip: Ipv6Addr = "fd00::3".parse().unwrap();
    let raw = sockaddr_in6 {
        sin6_family: nix::libc::AF_INET6 as _,
        sin6_port: 9090u16.to_be(),
        sin6_flowinfo: 0,
        sin6_addr: nix::libc::in6_addr {
            s6_addr: ip.octets(),
        },
        sin6_scope_id: 0,
    };
    assert_eq!(from_sockaddr_in6(&raw), "[fd00::3]:9090".parse().unwrap());
}

#[test]
fn self_destination_matches_own_listeners_only() {
    let listeners = [
        addr("0.0.0.0:15001"),
        addr("198.18.0.3:15006"),
        addr("[::]:15001"),
    ];
    assert!(is_self_destination(addr("198.18.0.3:15006"), &listeners));
    assert!(is_self_destination(addr("127.0.0.1:15001"), &listeners));
    assert!(is_self_destination(addr("[::1]:15001"), &listeners));
    assert!(is_self_destination(
        addr("[::ffff:198.18.0.3]:15006"),
        &listeners
    ));
    // Another pod's proxy port is a legitimate destination.
    assert!(!is_self_destination(addr("198.18.0.4:15006"), &listeners));
    assert!(!is_self_destination(addr("198.18.0.3:8080"), &listeners));
    assert!(!is_self_destination(addr("198.18.0.3:15006"), &[]));
}

#[tokio::test]
async fn unredirected_connection_reports_its_destination_or_not_tracked() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    let client = TcpStream::connect(target).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    // Without conntrack the kernel answers ENOENT; with it, the real
    // destination (nothing rewrote it).
    match original_destination(&server) {
        Ok(orig) => assert_eq!(orig, target),
        Err(err) => assert_eq!(err.raw_os_error(), Some(nix::libc::ENOENT), "{err}"),
    }
    drop(client);
}
