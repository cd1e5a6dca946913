//! The authorization hook: asked once per connection and once per HTTP
//! request on the inbound side, after the peer's identity is known. Its
//! place on the path is final; the policy engine plugs in behind it.

use std::net::SocketAddr;

use ward_identity::SpiffeId;

/// What is known about an inbound connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The verified peer identity; `None` for plaintext (PERMISSIVE) peers.
    pub peer_id: Option<SpiffeId>,
    pub source: SocketAddr,
    /// The destination the client asked for (original destination in
    /// transparent mode).
    pub destination: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny { reason: &'static str },
}

impl Verdict {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Verdict::Allow)
    }
}

pub trait Authorizer: Send + Sync + 'static {
    /// Called when a connection's protocol is known. For HTTP the engine may
    /// defer to `request`.
    fn connection(&self, conn: &ConnInfo, protocol: Protocol) -> Verdict;
    /// Called for every HTTP request before it is forwarded.
    fn request(&self, conn: &ConnInfo, request: &http::request::Parts) -> Verdict;
}

/// Every peer admitted (no policy configured).
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn connection(&self, _: &ConnInfo, _: Protocol) -> Verdict {
        Verdict::Allow
    }

    fn request(&self, _: &ConnInfo, _: &http::request::Parts) -> Verdict {
        Verdict::Allow
    }
}

/// Only the listed peer identities are admitted (`--allow-peer`); checked
/// once per connection since the identity cannot change on it.
pub struct AllowPeers(pub Vec<SpiffeId>);

impl Authorizer for AllowPeers {
    fn connection(&self, conn: &ConnInfo, _: Protocol) -> Verdict {
        match &conn.peer_id {
            Some(id) if self.0.contains(id) => Verdict::Allow,
            Some(_) => Verdict::Deny {
                reason: "peer identity not allowed",
            },
            None => Verdict::Deny {
                reason: "no peer identity",
            },
        }
    }

    fn request(&self, _: &ConnInfo, _: &http::request::Parts) -> Verdict {
        Verdict::Allow
    }
}
