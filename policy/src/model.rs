//! The validated, pre-compiled policy model: every value is already parsed
//! (CIDRs, ports, matchers, principals in Istio form), so evaluation never
//! parses or allocates.

use crate::matcher::StrMatch;
use crate::template::PathTemplate;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// An AuthorizationPolicy action. CUSTOM is refused at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Allow,
    Deny,
    Audit,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `namespace/name` of a policy; cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyRef {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Where a document came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: Arc<str>,
    /// 0-based index of the document within its file.
    pub document: usize,
    /// 1-based line where the document's content starts, when known.
    pub line: Option<usize>,
}

/// How `spec.rules` was written (lint tells `spec: {}` from `rules: []`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RulesWritten {
    Absent,
    Empty,
    Present,
}

#[derive(Debug, Clone)]
pub struct AuthorizationPolicy {
    pub id: PolicyRef,
    pub origin: Origin,
    /// `None`: every workload of the namespace (an empty `matchLabels` too).
    pub selector: Option<BTreeMap<String, String>>,
    pub action: Action,
    pub rules: Vec<Rule>,
    pub rules_written: RulesWritten,
    pub dry_run: bool,
    /// Content hash of the document (hex), for metrics and logs.
    pub version: String,
}

impl AuthorizationPolicy {
    /// True when any rule uses a field that needs the HTTP request.
    pub fn has_http_fields(&self) -> bool {
        self.rules.iter().any(Rule::has_http_fields)
    }
}

/// One rule: `from`, `to` and `when` must all match; an absent list matches.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rule {
    pub from: Vec<Source>,
    pub to: Vec<Operation>,
    pub when: Vec<Condition>,
}

impl Rule {
    pub fn has_http_fields(&self) -> bool {
        self.to.iter().any(Operation::has_http_fields) || self.when.iter().any(|c| c.is_http())
    }
}

/// `from[].source`. Empty lists are "not set".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Source {
    /// Istio form (`td/ns/X/sa/Y`); wildcards kept as written minus `spiffe://`.
    pub principals: Vec<StrMatch>,
    pub not_principals: Vec<StrMatch>,
    /// Matched in any trust domain; a name written without namespace is in
    /// the policy's.
    pub service_accounts: Vec<ServiceAccount>,
    pub not_service_accounts: Vec<ServiceAccount>,
    pub namespaces: Vec<StrMatch>,
    pub not_namespaces: Vec<StrMatch>,
    pub ip_blocks: Vec<IpNet>,
    pub not_ip_blocks: Vec<IpNet>,
    /// Matched against the source IP too: there is no proxy protocol or
    /// `X-Forwarded-For` handling, so the remote IP is the peer's.
    pub remote_ip_blocks: Vec<IpNet>,
    pub not_remote_ip_blocks: Vec<IpNet>,
}

/// A Kubernetes service account (`serviceAccounts`,
/// `source.serviceAccount`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceAccount {
    pub namespace: Box<str>,
    pub name: Box<str>,
}

impl fmt::Display for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A `paths`/`notPaths` value: a string pattern or a path template.
#[derive(Debug, Clone, PartialEq)]
pub enum PathMatch {
    Str(StrMatch),
    Template(PathTemplate),
}

impl PathMatch {
    /// Matches the request path (already in the policy's view).
    #[inline]
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Str(m) => m.matches(path),
            PathMatch::Template(t) => t.matches(path),
        }
    }

    /// True when every path `other` matches is matched by `self` too (a
    /// conservative check, for lint).
    pub fn covers(&self, other: &PathMatch) -> bool {
        match (self, other) {
            (PathMatch::Str(a), PathMatch::Str(b)) => a.covers(b),
            (PathMatch::Str(StrMatch::Presence), PathMatch::Template(_)) => true,
            (PathMatch::Str(StrMatch::Prefix(p)), PathMatch::Template(t)) => {
                t.literal_prefix().starts_with(&**p)
            }
            (a, b) => a == b,
        }
    }
}

impl fmt::Display for PathMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathMatch::Str(m) => m.fmt(f),
            PathMatch::Template(t) => t.fmt(f),
        }
    }
}

/// The known HTTP methods, interned as bits.
pub const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

#[inline]
pub fn method_bit(method: &str) -> Option<u16> {
    KNOWN_METHODS
        .iter()
        .position(|m| *m == method)
        .map(|i| 1u16 << i)
}

/// `methods`/`notMethods`: exact known methods as a bit set, anything else
/// (custom methods, wildcards, lower-case values that never match) as
/// case-sensitive matchers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MethodSet {
    pub known: u16,
    pub other: Vec<StrMatch>,
    /// The values as written, for lint and display.
    pub written: Vec<String>,
}

impl MethodSet {
    pub fn is_empty(&self) -> bool {
        self.written.is_empty()
    }

    #[inline]
    pub fn matches(&self, method: &str, bit: Option<u16>) -> bool {
        if let Some(bit) = bit
            && self.known & bit != 0
        {
            return true;
        }
        self.other.iter().any(|m| m.matches(method))
    }
}

/// `to[].operation`. Empty lists are "not set".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Operation {
    pub hosts: Vec<StrMatch>,
    pub not_hosts: Vec<StrMatch>,
    pub ports: Vec<u16>,
    pub not_ports: Vec<u16>,
    pub methods: MethodSet,
    pub not_methods: MethodSet,
    pub paths: Vec<PathMatch>,
    pub not_paths: Vec<PathMatch>,
}

impl Operation {
    pub fn has_http_fields(&self) -> bool {
        !(self.hosts.is_empty()
            && self.not_hosts.is_empty()
            && self.methods.is_empty()
            && self.not_methods.is_empty()
            && self.paths.is_empty()
            && self.not_paths.is_empty())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConditionKey {
    SourcePrincipal,
    SourceNamespace,
    SourceServiceAccount,
    SourceIp,
    /// The original client address; without PROXY protocol or
    /// `X-Forwarded-For` handling, the peer's (as `remoteIpBlocks`).
    RemoteIp,
    DestinationIp,
    DestinationPort,
    /// Lower-cased header name.
    RequestHeader(Box<str>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum CondValues {
    Str(Vec<StrMatch>),
    ServiceAccount(Vec<ServiceAccount>),
    Ip(Vec<IpNet>),
    Port(Vec<u16>),
}

impl CondValues {
    pub fn is_empty(&self) -> bool {
        match self {
            CondValues::Str(v) => v.is_empty(),
            CondValues::ServiceAccount(v) => v.is_empty(),
            CondValues::Ip(v) => v.is_empty(),
            CondValues::Port(v) => v.is_empty(),
        }
    }
}

/// `when[]`: `values` must match (if set) and `notValues` must not.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub key: ConditionKey,
    pub values: CondValues,
    pub not_values: CondValues,
}

impl Condition {
    pub fn is_http(&self) -> bool {
        matches!(self.key, ConditionKey::RequestHeader(_))
    }
}

/// PeerAuthentication mTLS mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MtlsMode {
    Unset,
    Disable,
    Permissive,
    Strict,
}

impl MtlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Unset => "UNSET",
            MtlsMode::Disable => "DISABLE",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Strict => "STRICT",
        }
    }
}

impl fmt::Display for MtlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct PeerAuthentication {
    pub id: PolicyRef,
    pub origin: Origin,
    pub selector: Option<BTreeMap<String, String>>,
    pub mode: MtlsMode,
    pub port_level: BTreeMap<u16, MtlsMode>,
    pub version: String,
}

/// Does `selector` (None = all) select a workload with `labels`?
pub fn selector_matches(
    selector: Option<&BTreeMap<String, String>>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
}
