//! One rule against one request: the semantics both evaluators share (the
//! indexed one only chooses which rules to try).

use super::{Protocol, RequestAttrs};
use crate::matcher::StrMatch;
use crate::model::*;
use ipnet::IpNet;
use std::net::IpAddr;

/// Per-request values computed once.
pub(crate) struct Ctx<'a> {
    pub(crate) req: &'a RequestAttrs<'a>,
    pub(crate) http: bool,
    /// The policy view of the path (HTTP; `""` for TCP).
    pub(crate) path: &'a str,
    pub(crate) method_bit: Option<u16>,
    /// The peer's principal in Istio form (`td/ns/X/sa/Y`).
    pub(crate) principal: Option<&'a str>,
    /// From an ID of the exact form `/ns/X/sa/Y`.
    pub(crate) namespace: Option<&'a str>,
    pub(crate) ns_sa: Option<(&'a str, &'a str)>,
    /// The path of the peer's ID (for service accounts of other forms).
    pub(crate) id_path: Option<&'a str>,
    pub(crate) source_ip: IpAddr,
    pub(crate) destination_ip: IpAddr,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(
        req: &'a RequestAttrs<'a>,
        path: &'a str,
        method_bit: Option<u16>,
    ) -> Ctx<'a> {
        let id = req.source_principal;
        let namespace = id.and_then(|id| id.namespace());
        let account = id.and_then(|id| id.service_account());
        Ctx {
            req,
            http: req.protocol == Protocol::Http,
            path,
            method_bit,
            principal: id.map(|id| id.istio_principal()),
            namespace,
            ns_sa: namespace.zip(account),
            id_path: id.map(|id| id.path()),
            source_ip: req.source_ip.to_canonical(),
            destination_ip: req.destination_ip.to_canonical(),
        }
    }

    /// Does the peer's ID name service account `sa` of namespace `ns`?
    #[inline]
    pub(crate) fn has_service_account(&self, account: &ServiceAccount) -> bool {
        match (self.ns_sa, self.id_path) {
            (Some((ns, sa)), _) => *account.namespace == *ns && *account.name == *sa,
            (None, Some(path)) => service_accounts_in(path)
                .any(|(ns, sa)| *account.namespace == *ns && *account.name == *sa),
            (None, None) => false,
        }
    }
}

/// Every `(namespace, service account)` a SPIFFE ID path names, as Istio
/// reads `serviceAccounts`: the regex `spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?`
/// (pilot/pkg/security/authz/model/generator.go, `serviceAccountRegex`)
/// matches when a segment `ns` is followed by the namespace, and a later
/// segment `sa` by the account, whatever other segments surround them.
/// `/ns/X/sa/Y` names exactly `(X, Y)`.
pub(crate) fn service_accounts_in(path: &str) -> impl Iterator<Item = (&str, &str)> {
    let segments = move || path.strip_prefix('/').unwrap_or("").split('/');
    segments()
        .enumerate()
        .zip(segments().skip(1))
        .filter(|((_, key), _)| *key == "ns")
        .flat_map(move |((i, _), ns)| {
            segments()
                .skip(i + 2)
                .zip(segments().skip(i + 3))
                .filter(|(key, _)| *key == "sa")
                .map(move |(_, sa)| (ns, sa))
        })
}

/// How HTTP-only fields are treated.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum TcpMode {
    /// HTTP request: evaluate everything.
    Http,
    /// ALLOW/AUDIT on TCP: a rule with HTTP-only fields never matches.
    NeverMatch,
    /// DENY on TCP: HTTP-only fields are ignored (fail closed).
    Ignore,
}

impl TcpMode {
    pub(crate) fn of(action: Action, http: bool) -> TcpMode {
        if http {
            TcpMode::Http
        } else if action == Action::Deny {
            TcpMode::Ignore
        } else {
            TcpMode::NeverMatch
        }
    }
}

pub(crate) fn valid_method(m: &str) -> bool {
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
pub(super) fn field<T>(values: &[T], not_values: &[T], matches: impl Fn(&T) -> bool) -> bool {
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

/// `serviceAccounts`/`source.serviceAccount`, with the same rule for a
/// peer without identity.
#[inline]
fn sa_field(values: &[ServiceAccount], not_values: &[ServiceAccount], c: &Ctx) -> bool {
    match c.principal {
        Some(_) => field(values, not_values, |sa| c.has_service_account(sa)),
        None => values.is_empty(),
    }
}

impl Source {
    fn matches(&self, c: &Ctx) -> bool {
        id_field(&self.principals, &self.not_principals, c.principal)
            && id_field(&self.namespaces, &self.not_namespaces, c.namespace)
            && sa_field(&self.service_accounts, &self.not_service_accounts, c)
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
    pub(super) fn matches(&self, c: &Ctx, mode: TcpMode) -> bool {
        fn str_vals(v: &CondValues) -> &[StrMatch] {
            match v {
                CondValues::Str(v) => v.as_slice(),
                _ => &[],
            }
        }
        fn sa_vals(v: &CondValues) -> &[ServiceAccount] {
            match v {
                CondValues::ServiceAccount(v) => v.as_slice(),
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
            ConditionKey::SourceServiceAccount => {
                sa_field(sa_vals(&self.values), sa_vals(&self.not_values), c)
            }
            ConditionKey::SourceIp | ConditionKey::RemoteIp => self.ip(c.source_ip),
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

/// Does `rule` of a policy with `action` match the request? The one
/// per-rule decision of both evaluators.
#[inline]
pub(crate) fn rule_matches(action: Action, rule: &Rule, c: &Ctx) -> bool {
    let mode = TcpMode::of(action, c.http);
    !(mode == TcpMode::NeverMatch && rule.has_http_fields()) && rule.matches(c, mode)
}

impl AuthorizationPolicy {
    /// Index of the first matching rule.
    pub(crate) fn first_match(&self, c: &Ctx) -> Option<usize> {
        self.rules
            .iter()
            .position(|r| rule_matches(self.action, r, c))
    }
}
