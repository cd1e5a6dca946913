//! The mTLS hop between two sidecars, as both ends see it: the ALPN
//! protocols that say what the connection carries, and the fixed label of
//! a handshake that failed (`ward_tls_handshake_failures_total{reason}`).

use ward_identity::tls;

/// Application protocols between sidecars, announced with ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alpn {
    H2,
    Http1,
    Tcp,
}

impl Alpn {
    pub const fn id(self) -> &'static [u8] {
        match self {
            Alpn::H2 => b"h2",
            Alpn::Http1 => b"http/1.1",
            Alpn::Tcp => b"ward-tcp",
        }
    }

    pub fn from_id(id: &[u8]) -> Option<Alpn> {
        [Alpn::H2, Alpn::Http1, Alpn::Tcp]
            .into_iter()
            .find(|a| a.id() == id)
    }
}

/// A fixed label for a failed TLS handshake, for metrics and logs.
pub fn tls_error_reason(err: &std::io::Error) -> &'static str {
    match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(tls_err) => tls::tls_failure_reason(tls_err),
        None if err.kind() == std::io::ErrorKind::UnexpectedEof => "connection_closed",
        None => "protocol_error",
    }
}
