//! The authorization hook: asked once per connection and once per HTTP
//! request on the inbound side, after the peer's identity is known. Its
//! place on the path is final; the policy engine plugs in behind it.

use std::fmt;
use std::net::SocketAddr;

use ward_identity::SpiffeId;
use ward_policy::PolicyRef;

/// What is known about an inbound connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The verified peer identity; `None` for plaintext (PERMISSIVE) peers.
    pub peer_id: Option<SpiffeId>,
    pub source: SocketAddr,
    /// The destination the client asked for (original destination in
    /// transparent mode).
    pub destination: SocketAddr,
    /// `x-forwarded-client-cert: URI=<peer>` for the application, built
    /// once per connection rather than per request.
    pub peer_header: Option<http::HeaderValue>,
}

impl ConnInfo {
    pub fn new(peer_id: Option<SpiffeId>, source: SocketAddr, destination: SocketAddr) -> Self {
        let peer_header = peer_id
            .as_ref()
            .and_then(|p| http::HeaderValue::from_str(&format!("URI={p}")).ok());
        ConnInfo {
            peer_id,
            source,
            destination,
            peer_header,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Tcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
        }
    }
}

/// Label value for decisions no policy made (a default).
pub const DEFAULT_POLICY: &str = "default";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// The deciding policy; `None` when a default decided.
    pub policy: Option<PolicyRef>,
    /// Index of the deciding rule within the policy.
    pub rule: Option<usize>,
    pub reason: &'static str,
}

impl Verdict {
    pub fn allow(reason: &'static str) -> Self {
        Verdict {
            allowed: true,
            policy: None,
            rule: None,
            reason,
        }
    }

    pub fn deny(reason: &'static str) -> Self {
        Verdict {
            allowed: false,
            policy: None,
            rule: None,
            reason,
        }
    }

    pub fn action(&self) -> &'static str {
        if self.allowed { "allow" } else { "deny" }
    }

    /// `(policy_namespace, policy_name)` metric labels.
    pub fn policy_labels(&self) -> (&str, &str) {
        match &self.policy {
            Some(p) => (&p.namespace, &p.name),
            None => (DEFAULT_POLICY, DEFAULT_POLICY),
        }
    }

    /// `ns/name` of the deciding policy, or `default`, for access logs
    /// (written straight into the log line, no String in between).
    pub fn policy_display(&self) -> impl fmt::Display + '_ {
        struct Shown<'a>(Option<&'a PolicyRef>);
        impl fmt::Display for Shown<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.0 {
                    Some(policy) => policy.fmt(f),
                    None => f.write_str(DEFAULT_POLICY),
                }
            }
        }
        Shown(self.policy.as_ref())
    }
}

pub trait Authorizer: Send + Sync + 'static {
    /// Called when a connection's protocol is known. For HTTP an engine may
    /// allow here and decide per request.
    fn connection(&self, conn: &ConnInfo, protocol: Protocol) -> Verdict;
    /// Called for every HTTP request before it is forwarded.
    fn request(&self, conn: &ConnInfo, request: &http::request::Parts) -> Verdict;
}

/// Every peer admitted (no policy configured).
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn connection(&self, _: &ConnInfo, _: Protocol) -> Verdict {
        Verdict::allow("no policy")
    }

    fn request(&self, _: &ConnInfo, _: &http::request::Parts) -> Verdict {
        Verdict::allow("no policy")
    }
}

/// Only the listed peer identities are admitted (`--allow-peer`); checked
/// once per connection since the identity cannot change on it.
pub struct AllowPeers(pub Vec<SpiffeId>);

impl Authorizer for AllowPeers {
    fn connection(&self, conn: &ConnInfo, _: Protocol) -> Verdict {
        match &conn.peer_id {
            Some(id) if self.0.contains(id) => Verdict::allow("peer allowed"),
            Some(_) => Verdict::deny("peer identity not allowed"),
            None => Verdict::deny("no peer identity"),
        }
    }

    fn request(&self, _: &ConnInfo, _: &http::request::Parts) -> Verdict {
        Verdict::allow("peer allowed")
    }
}
