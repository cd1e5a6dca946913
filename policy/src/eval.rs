//! Per-workload evaluation: a borrowed request view in, a decision out.
//! No parsing and, in the common case, no allocation: matchers are
//! pre-compiled, the path is normalized in place unless it needs changes,
//! and the decision borrows the policy names from the compiled set.

use crate::matcher::StrMatch;
use crate::model::*;
use crate::path::policy_view;
use ipnet::IpNet;
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use ward_identity::SpiffeId;

/// The connection's protocol as the proxy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Tcp,
}

/// Request headers, looked up by lower-case name.
pub trait HeaderLookup {
    /// Header `name` (given lower-case; matched case-insensitively) as
    /// Istio matches it: `None` when absent; a header sent several times is
    /// one value, its lines joined with `,` (Envoy does the same), so
    /// repeating a header can neither dodge a DENY nor split an ALLOW.
    /// Bytes that are not UTF-8 become U+FFFD, which no literal matches.
    fn joined(&self, name: &str) -> Option<Cow<'_, str>>;
}

/// Joins `values` with `,`; `None` when there is none.
fn join_values<'a>(mut values: impl Iterator<Item = Cow<'a, str>>) -> Option<Cow<'a, str>> {
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(first);
    };
    let mut joined = format!("{first},{second}");
    for value in values {
        joined.push(',');
        joined.push_str(&value);
    }
    Some(Cow::Owned(joined))
}

/// No headers (TCP, or tests).
pub struct NoHeaders;

impl HeaderLookup for NoHeaders {
    fn joined(&self, _: &str) -> Option<Cow<'_, str>> {
        None
    }
}

impl HeaderLookup for http::HeaderMap {
    fn joined(&self, name: &str) -> Option<Cow<'_, str>> {
        join_values(
            self.get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes())),
        )
    }
}

impl<K: AsRef<str>, V: AsRef<str>> HeaderLookup for [(K, V)] {
    fn joined(&self, name: &str) -> Option<Cow<'_, str>> {
        join_values(
            self.iter()
                .filter(|(k, _)| k.as_ref().eq_ignore_ascii_case(name))
                .map(|(_, v)| Cow::Borrowed(v.as_ref())),
        )
    }
}

impl<K: AsRef<str>, V: AsRef<str>> HeaderLookup for Vec<(K, V)> {
    fn joined(&self, name: &str) -> Option<Cow<'_, str>> {
        self.as_slice().joined(name)
    }
}

/// What the proxy knows about one connection or request.
#[derive(Clone, Copy)]
pub struct RequestAttrs<'a> {
    pub protocol: Protocol,
    /// The peer's verified SPIFFE ID; `None` for a plaintext peer.
    pub source_principal: Option<&'a SpiffeId>,
    pub source_ip: IpAddr,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
    /// HTTP only; `None` for TCP.
    pub method: Option<&'a str>,
    pub path: Option<&'a str>,
    /// The Host header (HTTP/1) or `:authority` (HTTP/2).
    pub host: Option<&'a str>,
    pub headers: &'a dyn HeaderLookup,
}

/// Why a decision was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionReason {
    DeniedByDenyPolicy,
    AllowedNoAllowPolicy,
    AllowedByAllowPolicy,
    DeniedNoAllowMatched,
    DeniedMalformedPath,
    DeniedMalformedMethod,
}

impl DecisionReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionReason::DeniedByDenyPolicy => "denied by DENY policy",
            DecisionReason::AllowedNoAllowPolicy => "allowed: no ALLOW policy applies",
            DecisionReason::AllowedByAllowPolicy => "allowed by ALLOW policy",
            DecisionReason::DeniedNoAllowMatched => "denied: no ALLOW policy matched",
            DecisionReason::DeniedMalformedPath => "denied: malformed path",
            DecisionReason::DeniedMalformedMethod => "denied: malformed method",
        }
    }
}

impl std::fmt::Display for DecisionReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy that matched without deciding (dry-run or AUDIT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyMatch<'p> {
    pub policy: &'p PolicyRef,
    /// The policy's action: for dry-run, what it would have done.
    pub action: Action,
    pub rule: usize,
}

/// The outcome of one evaluation. Borrows from the [`WorkloadPolicy`]; the
/// two vectors allocate only when a dry-run or AUDIT policy matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'p> {
    pub allowed: bool,
    /// The deciding policy; `None` for defaults and malformed requests.
    pub policy: Option<&'p PolicyRef>,
    /// Index of the deciding rule within that policy.
    pub rule: Option<usize>,
    pub reason: DecisionReason,
    pub dry_run_matches: Vec<PolicyMatch<'p>>,
    pub audit_matches: Vec<PolicyMatch<'p>>,
}

/// Root namespace and trust domain of the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalOptions {
    /// Policies here apply mesh-wide. Default `ward-system`.
    pub root_namespace: String,
    /// The mesh's trust domain (for lint and `serviceAccounts`). Default
    /// `cluster.local`.
    pub trust_domain: String,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            root_namespace: "ward-system".into(),
            trust_domain: "cluster.local".into(),
        }
    }
}

/// The policies that apply to one workload, sorted by role. Built by
/// [`crate::PolicySet::for_workload`]; cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct WorkloadPolicy {
    pub(crate) deny: Vec<Arc<AuthorizationPolicy>>,
    pub(crate) allow: Vec<Arc<AuthorizationPolicy>>,
    pub(crate) audit: Vec<Arc<AuthorizationPolicy>>,
    pub(crate) dry_run: Vec<Arc<AuthorizationPolicy>>,
    pub(crate) trust_domain: Box<str>,
}

/// Per-request values computed once.
struct Ctx<'a> {
    req: &'a RequestAttrs<'a>,
    http: bool,
    path: &'a str,
    method_bit: Option<u16>,
    principal: Option<&'a str>,
    namespace: Option<&'a str>,
    service_account: Option<&'a str>,
    peer_trust_domain: Option<&'a str>,
    source_ip: IpAddr,
    destination_ip: IpAddr,
}

/// How HTTP-only fields are treated on a TCP connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TcpMode {
    /// HTTP request: evaluate everything.
    Http,
    /// ALLOW/AUDIT on TCP: a rule with HTTP-only fields never matches.
    NeverMatch,
    /// DENY on TCP: HTTP-only fields are ignored (fail closed).
    Ignore,
}

fn valid_method(m: &str) -> bool {
    !m.is_empty()
        && m.len() <= 32
        && m.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[inline]
fn any_ip(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(&ip))
}

/// `values` (if set) must match, `not_values` (if set) must not.
#[inline]
fn field<T>(values: &[T], not_values: &[T], matches: impl Fn(&T) -> bool) -> bool {
    (values.is_empty() || values.iter().any(&matches)) && !not_values.iter().any(matches)
}

/// Identity fields for a peer that may have no identity: positive values
/// fail, negative values are satisfied (as Istio).
#[inline]
fn id_field(values: &[StrMatch], not_values: &[StrMatch], id: Option<&str>) -> bool {
    match id {
        Some(id) => field(values, not_values, |m| m.matches(id)),
        None => values.is_empty(),
    }
}

impl Source {
    fn matches(&self, c: &Ctx) -> bool {
        id_field(&self.principals, &self.not_principals, c.principal)
            && id_field(&self.namespaces, &self.not_namespaces, c.namespace)
            && {
                let sa_match = |(ns, sa): &(String, String)| {
                    c.namespace == Some(ns.as_str()) && c.service_account == Some(sa.as_str())
                };
                match c.principal {
                    Some(_) => field(&self.service_accounts, &self.not_service_accounts, sa_match),
                    None => self.service_accounts.is_empty(),
                }
            }
            && field(&self.ip_blocks, &self.not_ip_blocks, |n| {
                n.contains(&c.source_ip)
            })
            && field(&self.remote_ip_blocks, &self.not_remote_ip_blocks, |n| {
                n.contains(&c.source_ip)
            })
    }
}

impl Operation {
    fn matches(&self, c: &Ctx, mode: TcpMode) -> bool {
        if !field(&self.ports, &self.not_ports, |p| {
            *p == c.req.destination_port
        }) {
            return false;
        }
        match mode {
            TcpMode::Ignore => return true,
            TcpMode::NeverMatch => return !self.has_http_fields(),
            TcpMode::Http => {}
        }
        let method = c.req.method.unwrap_or("");
        let methods_ok = (self.methods.is_empty() || self.methods.matches(method, c.method_bit))
            && !self.not_methods.matches(method, c.method_bit);
        methods_ok
            && field(&self.paths, &self.not_paths, |m| m.matches(c.path))
            && match c.req.host {
                Some(h) => field(&self.hosts, &self.not_hosts, |m| m.matches_ignore_case(h)),
                None => self.hosts.is_empty(),
            }
    }
}

impl Condition {
    fn matches(&self, c: &Ctx, mode: TcpMode) -> bool {
        fn str_vals(v: &CondValues) -> &[StrMatch] {
            match v {
                CondValues::Str(v) => v.as_slice(),
                _ => &[],
            }
        }
        match &self.key {
            ConditionKey::SourcePrincipal => id_field(
                str_vals(&self.values),
                str_vals(&self.not_values),
                c.principal,
            ),
            ConditionKey::SourceNamespace => id_field(
                str_vals(&self.values),
                str_vals(&self.not_values),
                c.namespace,
            ),
            ConditionKey::SourceIp => self.ip(c.source_ip),
            ConditionKey::DestinationIp => self.ip(c.destination_ip),
            ConditionKey::DestinationPort => {
                let port = c.req.destination_port;
                let has = |v: &CondValues| matches!(v, CondValues::Port(p) if p.contains(&port));
                (self.values.is_empty() || has(&self.values)) && !has(&self.not_values)
            }
            ConditionKey::RequestHeader(name) => match mode {
                TcpMode::Ignore => true,
                TcpMode::NeverMatch => false,
                TcpMode::Http => {
                    let values = str_vals(&self.values);
                    let not_values = str_vals(&self.not_values);
                    let value = c.req.headers.joined(name);
                    let any = |set: &[StrMatch]| {
                        value
                            .as_deref()
                            .is_some_and(|v| set.iter().any(|m| m.matches(v)))
                    };
                    (values.is_empty() || any(values))
                        && (not_values.is_empty() || !any(not_values))
                }
            },
        }
    }

    fn ip(&self, ip: IpAddr) -> bool {
        let has = |v: &CondValues| matches!(v, CondValues::Ip(n) if any_ip(n, ip));
        (self.values.is_empty() || has(&self.values)) && !has(&self.not_values)
    }
}

impl Rule {
    fn matches(&self, c: &Ctx, mode: TcpMode) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(c)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(c, mode)))
            && self.when.iter().all(|w| w.matches(c, mode))
    }
}

impl AuthorizationPolicy {
    /// Index of the first matching rule.
    fn first_match(&self, c: &Ctx) -> Option<usize> {
        let mode = if c.http {
            TcpMode::Http
        } else if self.action == Action::Deny {
            TcpMode::Ignore
        } else {
            TcpMode::NeverMatch
        };
        self.rules.iter().position(|r| {
            !(mode == TcpMode::NeverMatch && r.has_http_fields()) && r.matches(c, mode)
        })
    }
}

impl WorkloadPolicy {
    /// Decides one connection (TCP) or request (HTTP).
    pub fn evaluate<'p>(&'p self, req: &RequestAttrs<'_>) -> Decision<'p> {
        let http = req.protocol == Protocol::Http;
        let malformed = |reason| Decision {
            allowed: false,
            policy: None,
            rule: None,
            reason,
            dry_run_matches: Vec::new(),
            audit_matches: Vec::new(),
        };
        let mut method_bit = None;
        let path = if http {
            match req.method {
                Some(m) if valid_method(m) => method_bit = method_bit_of(m),
                _ => return malformed(DecisionReason::DeniedMalformedMethod),
            }
            match req.path.map(policy_view) {
                Some(Ok(p)) => p,
                _ => return malformed(DecisionReason::DeniedMalformedPath),
            }
        } else {
            std::borrow::Cow::Borrowed("")
        };
        let canonical = |ip: IpAddr| ip.to_canonical();
        let c = Ctx {
            req,
            http,
            path: &path,
            method_bit,
            principal: req.source_principal.map(|id| id.istio_principal()),
            namespace: req.source_principal.and_then(|id| id.namespace()),
            service_account: req.source_principal.and_then(|id| id.service_account()),
            peer_trust_domain: req.source_principal.map(|id| id.trust_domain()),
            source_ip: canonical(req.source_ip),
            destination_ip: canonical(req.destination_ip),
        };
        // serviceAccounts match only peers of the mesh's trust domain.
        let c = Ctx {
            service_account: if c.peer_trust_domain == Some(&*self.trust_domain) {
                c.service_account
            } else {
                None
            },
            ..c
        };

        let mut dry_run_matches = Vec::new();
        for p in &self.dry_run {
            if let Some(rule) = p.first_match(&c) {
                dry_run_matches.push(PolicyMatch {
                    policy: &p.id,
                    action: p.action,
                    rule,
                });
            }
        }
        let mut audit_matches = Vec::new();
        for p in &self.audit {
            if let Some(rule) = p.first_match(&c) {
                audit_matches.push(PolicyMatch {
                    policy: &p.id,
                    action: p.action,
                    rule,
                });
            }
        }
        let decide = |allowed, policy: Option<&'p PolicyRef>, rule, reason| Decision {
            allowed,
            policy,
            rule,
            reason,
            dry_run_matches,
            audit_matches,
        };
        for p in &self.deny {
            if let Some(rule) = p.first_match(&c) {
                return decide(
                    false,
                    Some(&p.id),
                    Some(rule),
                    DecisionReason::DeniedByDenyPolicy,
                );
            }
        }
        if self.allow.is_empty() {
            return decide(true, None, None, DecisionReason::AllowedNoAllowPolicy);
        }
        for p in &self.allow {
            if let Some(rule) = p.first_match(&c) {
                return decide(
                    true,
                    Some(&p.id),
                    Some(rule),
                    DecisionReason::AllowedByAllowPolicy,
                );
            }
        }
        decide(false, None, None, DecisionReason::DeniedNoAllowMatched)
    }

    /// True when some applicable policy (dry-run and AUDIT included) looks
    /// at HTTP fields; when false the proxy may decide per connection.
    pub fn needs_http_fields(&self) -> bool {
        self.policies().any(|p| p.has_http_fields())
    }

    /// Every applicable policy: DENY, ALLOW, AUDIT, then dry-run.
    pub fn policies(&self) -> impl Iterator<Item = &AuthorizationPolicy> {
        self.deny
            .iter()
            .chain(&self.allow)
            .chain(&self.audit)
            .chain(&self.dry_run)
            .map(|p| &**p)
    }

    /// True when no policy applies (everything is allowed).
    pub fn is_empty(&self) -> bool {
        self.policies().next().is_none()
    }
}

fn method_bit_of(m: &str) -> Option<u16> {
    method_bit(m)
}

#[cfg(test)]
mod tests;
