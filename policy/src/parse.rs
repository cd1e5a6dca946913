//! YAML → validated model. Every check runs inside the deserializer of the
//! node it is about, so the YAML parser stamps the error with that node's
//! line and column, and `serde_path_to_error` gives its field path.

use crate::error::ConfigError;
use crate::matcher::StrMatch;
use crate::model::*;
use crate::template::{PathTemplate, is_template};
use ipnet::IpNet;
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::sync::Arc;
use ward_identity::SpiffeId;

pub(crate) const API_VERSIONS: [&str; 3] = [
    "security.ward.io/v1",
    "security.istio.io/v1",
    "security.istio.io/v1beta1",
];

/// Marks a sub-path inside an error message produced by a whole-mapping
/// check, so the reported field path can name the exact child.
const SUB: char = '\u{1}';

fn sub_err(sub: &str, msg: impl fmt::Display) -> String {
    format!("{SUB}{sub}{SUB}{msg}")
}

// ---------------------------------------------------------------------------
// Generic helpers

/// Deserializes a mapping as `R` then checks it with `f`, inside the
/// mapping's own deserialization (so errors carry its position).
fn validate_map<'de, D, R, T, F>(d: D, f: F) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    R: Deserialize<'de>,
    F: FnOnce(R) -> Result<T, String>,
{
    struct V<R, T, F>(F, PhantomData<fn() -> (R, T)>);
    impl<'de, R, T, F> Visitor<'de> for V<R, T, F>
    where
        R: Deserialize<'de>,
        F: FnOnce(R) -> Result<T, String>,
    {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a mapping")
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            let raw = R::deserialize(de::value::MapAccessDeserializer::new(map))?;
            (self.0)(raw).map_err(de::Error::custom)
        }
    }
    d.deserialize_map(V(f, PhantomData))
}

/// Deserializes a scalar as a string and converts it with `f`.
fn validate_str<'de, D, T, F>(d: D, expecting: &'static str, f: F) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    F: FnOnce(&str) -> Result<T, String>,
{
    struct V<T, F>(F, &'static str, PhantomData<fn() -> T>);
    impl<'de, T, F> Visitor<'de> for V<T, F>
    where
        F: FnOnce(&str) -> Result<T, String>,
    {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(self.1)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.0)(v).map_err(E::custom)
        }
    }
    d.deserialize_str(V(f, expecting, PhantomData))
}

/// A field Ward refuses whatever its value, with a specific reason.
pub(crate) trait RejectReason {
    const REASON: &'static str;
}

pub(crate) struct Rejected<R>(PhantomData<R>);

impl<'de, R: RejectReason> Deserialize<'de> for Rejected<R> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<R>(PhantomData<R>);
        impl<'de, R: RejectReason> Visitor<'de> for V<R> {
            type Value = Rejected<R>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(R::REASON)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Err(E::custom(R::REASON))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Err(E::custom(R::REASON))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Err(E::custom(R::REASON))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Err(E::custom(R::REASON))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Err(E::custom(R::REASON))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Err(E::custom(R::REASON))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Err(E::custom(R::REASON))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
                Err(de::Error::custom(R::REASON))
            }
            fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
                Err(de::Error::custom(R::REASON))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

macro_rules! reject {
    ($name:ident, $reason:expr) => {
        pub(crate) struct $name;
        impl RejectReason for $name {
            const REASON: &'static str = $reason;
        }
    };
}

reject!(
    TargetRefReason,
    "targetRef/targetRefs (Gateway API attachment) is not supported by Ward: select workloads with `selector.matchLabels`"
);
reject!(
    JwtReason,
    "requestPrincipals/notRequestPrincipals need request authentication (JWT), which Ward does not support"
);
reject!(
    ProviderReason,
    "`provider` belongs to the CUSTOM action (external authorization), which Ward does not support"
);

// ---------------------------------------------------------------------------
// Leaf values

pub(crate) struct ApiVersion;

impl<'de> Deserialize<'de> for ApiVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        validate_str(d, "an apiVersion string", |s| {
            if API_VERSIONS.contains(&s) {
                Ok(ApiVersion)
            } else {
                Err(format!(
                    "unsupported apiVersion `{s}`: expected one of {}",
                    API_VERSIONS.join(", ")
                ))
            }
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    AuthorizationPolicy,
    PeerAuthentication,
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        validate_str(d, "a kind string", |s| match s {
            "AuthorizationPolicy" => Ok(Kind::AuthorizationPolicy),
            "PeerAuthentication" => Ok(Kind::PeerAuthentication),
            other => Err(format!(
                "unsupported kind `{other}`: expected AuthorizationPolicy or PeerAuthentication"
            )),
        })
    }
}

struct ActionField(Action);

impl<'de> Deserialize<'de> for ActionField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        validate_str(d, "an action", |s| match s {
            "ALLOW" => Ok(ActionField(Action::Allow)),
            "DENY" => Ok(ActionField(Action::Deny)),
            "AUDIT" => Ok(ActionField(Action::Audit)),
            "CUSTOM" => Err(
                "the CUSTOM action (external authorization) is not supported by Ward".to_owned(),
            ),
            other => Err(format!(
                "unknown action `{other}`: expected ALLOW, DENY or AUDIT"
            )),
        })
    }
}

struct ModeField(MtlsMode);

impl<'de> Deserialize<'de> for ModeField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        validate_str(d, "an mTLS mode", |s| match s {
            "STRICT" => Ok(ModeField(MtlsMode::Strict)),
            "PERMISSIVE" => Ok(ModeField(MtlsMode::Permissive)),
            "DISABLE" => Ok(ModeField(MtlsMode::Disable)),
            "UNSET" => Ok(ModeField(MtlsMode::Unset)),
            other => Err(format!(
                "unknown mTLS mode `{other}`: expected STRICT, PERMISSIVE, DISABLE or UNSET"
            )),
        })
    }
}

pub(crate) fn parse_cidr(s: &str) -> Result<IpNet, String> {
    if s.contains('/') {
        s.parse::<IpNet>()
            .map(|n| n.trunc())
            .map_err(|_| format!("invalid CIDR `{s}`"))
    } else {
        s.parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| format!("invalid IP address or CIDR `{s}`"))
    }
}

struct Cidr(IpNet);

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        validate_str(d, "an IP address or CIDR", |s| parse_cidr(s).map(Cidr))
    }
}

pub(crate) fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u32>() {
        Ok(0) => Err("invalid port `0`: ports are 1-65535".to_owned()),
        Ok(p) if p <= 65535 && !s.starts_with('+') => Ok(p as u16),
        Ok(_) => Err(format!("invalid port `{s}`: ports are 1-65535")),
        Err(_) => Err(format!("invalid port `{s}`: not a number")),
    }
}

struct Port(u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        validate_str(d, "a port number", |s| parse_port(s).map(Port))
    }
}

/// Parses a principal written as `td/ns/X/sa/Y`, `spiffe://…`, or with a
/// leading/trailing `*`; exact values must be valid SPIFFE IDs.
pub(crate) fn parse_principal(s: &str) -> Result<StrMatch, String> {
    let m = StrMatch::parse(s).map_err(|e| format!("invalid principal `{s}`: {e}"))?;
    Ok(match m {
        StrMatch::Exact(v) => {
            let id = SpiffeId::from_istio_principal(&v)
                .map_err(|e| format!("invalid principal `{s}`: {e}"))?;
            if id.path().is_empty() {
                return Err(format!(
                    "invalid principal `{s}`: a principal names a workload, `<trust-domain>/ns/<namespace>/sa/<account>`; this is only a trust domain"
                ));
            }
            StrMatch::Exact(id.istio_principal().into())
        }
        StrMatch::Prefix(p) => match p.strip_prefix("spiffe://") {
            Some(rest) => StrMatch::Prefix(rest.into()),
            None => StrMatch::Prefix(p),
        },
        other => other,
    })
}

struct Principal(StrMatch);

impl<'de> Deserialize<'de> for Principal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        validate_str(d, "a principal", |s| parse_principal(s).map(Principal))
    }
}

struct Pattern(StrMatch);

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        validate_str(d, "a string", |s| {
            StrMatch::parse(s)
                .map(Pattern)
                .map_err(|e| format!("invalid value `{s}`: {e}"))
        })
    }
}

struct PathPattern(PathMatch);

impl<'de> Deserialize<'de> for PathPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        validate_str(d, "a path", |s| parse_path(s).map(PathPattern))
    }
}

/// A `paths`/`notPaths` value: a template when it has `{*}` or `{**}`
/// (validated as Istio does), otherwise exact, `prefix*`, `*suffix` or `*`.
pub(crate) fn parse_path(s: &str) -> Result<PathMatch, String> {
    if is_template(s) {
        return PathTemplate::parse(s)
            .map(PathMatch::Template)
            .map_err(|e| format!("invalid path template `{s}`: {e}"));
    }
    if s.contains(['{', '}']) {
        return Err(format!(
            "invalid path `{s}`: `{{` and `}}` are only allowed in the path template operators `{{*}}` and `{{**}}` (named variables such as `{{id}}` are not supported, as in Istio)"
        ));
    }
    StrMatch::parse(s)
        .map(PathMatch::Str)
        .map_err(|e| format!("invalid path `{s}`: {e}"))
}

/// Istio's limits on `serviceAccounts`, `notServiceAccounts` and
/// `source.serviceAccount` (pkg/config/security/security.go,
/// `CheckServiceAccount`).
pub(crate) const MAX_SERVICE_ACCOUNTS: usize = 16;
const MAX_SERVICE_ACCOUNT_LEN: usize = 320;

/// `<namespace>/<name>`, or `<name>` alone, which means the policy's
/// namespace (an empty namespace here, filled in once the document is
/// read). No wildcards.
pub(crate) fn parse_service_account(s: &str) -> Result<ServiceAccount, String> {
    let bad = |why: &str| {
        Err(format!(
            "invalid service account `{s}`: {why}; expected `<serviceAccount>` (in the policy's namespace) or `<namespace>/<serviceAccount>`"
        ))
    };
    if s.is_empty() {
        return bad("empty");
    }
    if s.contains('*') {
        return bad("wildcards are not allowed");
    }
    if s.len() > MAX_SERVICE_ACCOUNT_LEN {
        return bad("longer than 320 characters");
    }
    match s.split_once('/') {
        None => Ok(ServiceAccount {
            namespace: "".into(),
            name: s.into(),
        }),
        Some((_, sa)) if sa.contains('/') => bad("more than one `/`"),
        Some(("", _)) => bad("empty namespace"),
        Some((_, "")) => bad("empty service account"),
        Some((ns, sa)) => Ok(ServiceAccount {
            namespace: ns.into(),
            name: sa.into(),
        }),
    }
}

struct ServiceAccountField(ServiceAccount);

impl<'de> Deserialize<'de> for ServiceAccountField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        validate_str(d, "a service account `[<namespace>/]<name>`", |s| {
            parse_service_account(s).map(ServiceAccountField)
        })
    }
}

fn unwrap_vec<T, U>(v: Option<Vec<T>>, f: impl Fn(T) -> U) -> Vec<U> {
    v.unwrap_or_default().into_iter().map(f).collect()
}

// ---------------------------------------------------------------------------
// Structures

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSource {
    principals: Option<Vec<Principal>>,
    not_principals: Option<Vec<Principal>>,
    service_accounts: Option<Vec<ServiceAccountField>>,
    not_service_accounts: Option<Vec<ServiceAccountField>>,
    request_principals: Option<Rejected<JwtReason>>,
    not_request_principals: Option<Rejected<JwtReason>>,
    namespaces: Option<Vec<Pattern>>,
    not_namespaces: Option<Vec<Pattern>>,
    ip_blocks: Option<Vec<Cidr>>,
    not_ip_blocks: Option<Vec<Cidr>>,
    remote_ip_blocks: Option<Vec<Cidr>>,
    not_remote_ip_blocks: Option<Vec<Cidr>>,
}

impl<'de> Deserialize<'de> for Source {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        validate_map(d, |r: RawSource| {
            let _ = (r.request_principals, r.not_request_principals);
            fn set<T>(v: &Option<Vec<T>>) -> bool {
                v.as_ref().is_some_and(|v| !v.is_empty())
            }
            let has_sa = set(&r.service_accounts) || set(&r.not_service_accounts);
            let has_identity = set(&r.principals)
                || set(&r.not_principals)
                || set(&r.namespaces)
                || set(&r.not_namespaces);
            if has_sa && has_identity {
                return Err(sub_err(
                    "serviceAccounts",
                    "serviceAccounts/notServiceAccounts cannot be used together with principals, notPrincipals, namespaces or notNamespaces (Istio: \"cannot set serviceAccounts with namespaces or principals\")",
                ));
            }
            for (field, list) in [
                ("serviceAccounts", &r.service_accounts),
                ("notServiceAccounts", &r.not_service_accounts),
            ] {
                if list
                    .as_ref()
                    .is_some_and(|l| l.len() > MAX_SERVICE_ACCOUNTS)
                {
                    return Err(sub_err(
                        field,
                        format!(
                            "at most {MAX_SERVICE_ACCOUNTS} service accounts per list (Istio's limit)"
                        ),
                    ));
                }
            }
            Ok(Source {
                principals: unwrap_vec(r.principals, |p| p.0),
                not_principals: unwrap_vec(r.not_principals, |p| p.0),
                service_accounts: unwrap_vec(r.service_accounts, |s| s.0),
                not_service_accounts: unwrap_vec(r.not_service_accounts, |s| s.0),
                namespaces: unwrap_vec(r.namespaces, |p| p.0),
                not_namespaces: unwrap_vec(r.not_namespaces, |p| p.0),
                ip_blocks: unwrap_vec(r.ip_blocks, |c| c.0),
                not_ip_blocks: unwrap_vec(r.not_ip_blocks, |c| c.0),
                remote_ip_blocks: unwrap_vec(r.remote_ip_blocks, |c| c.0),
                not_remote_ip_blocks: unwrap_vec(r.not_remote_ip_blocks, |c| c.0),
            })
        })
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawOperation {
    hosts: Option<Vec<Pattern>>,
    not_hosts: Option<Vec<Pattern>>,
    ports: Option<Vec<Port>>,
    not_ports: Option<Vec<Port>>,
    methods: Option<Vec<Pattern>>,
    not_methods: Option<Vec<Pattern>>,
    paths: Option<Vec<PathPattern>>,
    not_paths: Option<Vec<PathPattern>>,
}

fn method_set(v: Option<Vec<Pattern>>) -> MethodSet {
    let mut set = MethodSet::default();
    for Pattern(m) in v.unwrap_or_default() {
        set.written.push(m.to_string());
        match &m {
            StrMatch::Exact(s) if method_bit(s).is_some() => {
                set.known |= method_bit(s).unwrap_or(0);
            }
            _ => set.other.push(m),
        }
    }
    set
}

impl<'de> Deserialize<'de> for Operation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        validate_map(d, |r: RawOperation| {
            Ok(Operation {
                hosts: unwrap_vec(r.hosts, |p| p.0),
                not_hosts: unwrap_vec(r.not_hosts, |p| p.0),
                ports: unwrap_vec(r.ports, |p| p.0),
                not_ports: unwrap_vec(r.not_ports, |p| p.0),
                methods: method_set(r.methods),
                not_methods: method_set(r.not_methods),
                paths: unwrap_vec(r.paths, |p| p.0),
                not_paths: unwrap_vec(r.not_paths, |p| p.0),
            })
        })
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFrom {
    source: Source,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTo {
    operation: Operation,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCondition {
    key: String,
    values: Option<Vec<String>>,
    not_values: Option<Vec<String>>,
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        validate_map(d, |r: RawCondition| {
            let key = condition::key(&r.key).map_err(|e| sub_err("key", e))?;
            let values = condition::values(&key, "values", r.values)?;
            let not_values = condition::values(&key, "notValues", r.not_values)?;
            if values.is_empty() && not_values.is_empty() {
                return Err(
                    "a condition needs `values` or `notValues` (Istio requires one)".into(),
                );
            }
            Ok(Condition {
                key,
                values,
                not_values,
            })
        })
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    from: Option<Vec<RawFrom>>,
    to: Option<Vec<RawTo>>,
    when: Option<Vec<Condition>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSelector {
    match_labels: Option<BTreeMap<String, String>>,
}

fn selector(s: Option<RawSelector>) -> Option<BTreeMap<String, String>> {
    s.and_then(|s| s.match_labels).filter(|m| !m.is_empty())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAuthzSpecFields {
    selector: Option<RawSelector>,
    target_ref: Option<Rejected<TargetRefReason>>,
    target_refs: Option<Rejected<TargetRefReason>>,
    action: Option<ActionField>,
    provider: Option<Rejected<ProviderReason>>,
    rules: Option<Vec<RawRule>>,
}

pub(crate) struct AuthzSpec {
    selector: Option<BTreeMap<String, String>>,
    action: Action,
    rules: Vec<Rule>,
    rules_written: RulesWritten,
}

impl Default for AuthzSpec {
    fn default() -> Self {
        AuthzSpec {
            selector: None,
            action: Action::Allow,
            rules: Vec::new(),
            rules_written: RulesWritten::Absent,
        }
    }
}

impl<'de> Deserialize<'de> for AuthzSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        validate_map(d, |r: RawAuthzSpecFields| {
            let _ = (r.target_ref, r.target_refs, r.provider);
            let action = r.action.map_or(Action::Allow, |a| a.0);
            let rules_written = match &r.rules {
                None => RulesWritten::Absent,
                Some(v) if v.is_empty() => RulesWritten::Empty,
                Some(_) => RulesWritten::Present,
            };
            if action == Action::Deny && rules_written != RulesWritten::Present {
                return Err(sub_err(
                    "rules",
                    "a DENY policy needs at least one rule (Istio refuses a DENY policy without rules)",
                ));
            }
            let rules = r
                .rules
                .unwrap_or_default()
                .into_iter()
                .map(|r| Rule {
                    from: unwrap_vec(r.from, |f| f.source),
                    to: unwrap_vec(r.to, |t| t.operation),
                    when: r.when.unwrap_or_default(),
                })
                .collect();
            Ok(AuthzSpec {
                selector: selector(r.selector),
                action,
                rules,
                rules_written,
            })
        })
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMtls {
    mode: Option<ModeField>,
}

struct PortKey(u16);

impl<'de> Deserialize<'de> for PortKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        validate_str(d, "a port number", |s| parse_port(s).map(PortKey))
    }
}

impl PartialEq for PortKey {
    fn eq(&self, o: &Self) -> bool {
        self.0 == o.0
    }
}
impl Eq for PortKey {}
impl PartialOrd for PortKey {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for PortKey {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.cmp(&o.0)
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPeerSpecFields {
    selector: Option<RawSelector>,
    mtls: Option<RawMtls>,
    port_level_mtls: Option<BTreeMap<PortKey, RawMtls>>,
}

pub(crate) struct PeerSpec {
    selector: Option<BTreeMap<String, String>>,
    mode: MtlsMode,
    port_level: BTreeMap<u16, MtlsMode>,
}

impl Default for PeerSpec {
    fn default() -> Self {
        PeerSpec {
            selector: None,
            mode: MtlsMode::Unset,
            port_level: BTreeMap::new(),
        }
    }
}

impl<'de> Deserialize<'de> for PeerSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        validate_map(d, |r: RawPeerSpecFields| {
            let selector = selector(r.selector);
            let port_level: BTreeMap<u16, MtlsMode> = r
                .port_level_mtls
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k.0, v.mode.map_or(MtlsMode::Unset, |m| m.0)))
                .collect();
            if !port_level.is_empty() && selector.is_none() {
                return Err(sub_err(
                    "portLevelMtls",
                    "portLevelMtls needs a workload selector (Istio only applies it to workload-level policies)",
                ));
            }
            Ok(PeerSpec {
                selector,
                mode: r.mtls.and_then(|m| m.mode).map_or(MtlsMode::Unset, |m| m.0),
                port_level,
            })
        })
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawMetadata {
    name: Option<String>,
    namespace: Option<String>,
    annotations: Option<BTreeMap<String, String>>,
    labels: Option<BTreeMap<String, String>>,
    // Server-populated fields, present in `kubectl get -o yaml` output.
    resource_version: Option<IgnoredAny>,
    generation: Option<IgnoredAny>,
    uid: Option<IgnoredAny>,
    creation_timestamp: Option<IgnoredAny>,
}

pub(crate) struct Metadata {
    name: String,
    namespace: String,
    dry_run: bool,
}

fn check_name(field: &str, v: Option<String>) -> Result<String, String> {
    match v {
        None => Err(sub_err(
            field,
            format!(
                "metadata.{field} is required (files must name the namespace a policy applies to)"
            ),
        )),
        Some(s) if s.is_empty() => Err(sub_err(field, format!("metadata.{field} is empty"))),
        Some(s)
            if !s
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.') =>
        {
            Err(sub_err(
                field,
                format!("invalid {field} `{s}`: lower-case letters, digits, `-` and `.` only"),
            ))
        }
        Some(s) => Ok(s),
    }
}

pub(crate) const DRY_RUN_ANNOTATIONS: [&str; 2] = ["ward.io/dry-run", "istio.io/dry-run"];

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        validate_map(d, |r: RawMetadata| {
            let _ = (
                r.labels,
                r.resource_version,
                r.generation,
                r.uid,
                r.creation_timestamp,
            );
            let name = check_name("name", r.name)?;
            let namespace = check_name("namespace", r.namespace)?;
            let mut dry_run = false;
            for (k, v) in r.annotations.iter().flatten() {
                if DRY_RUN_ANNOTATIONS.contains(&k.as_str()) {
                    match v.as_str() {
                        "true" => dry_run = true,
                        "false" => {}
                        other => {
                            return Err(sub_err(
                                &format!("annotations.{k}"),
                                format!(
                                    "invalid dry-run annotation value `{other}`: expected \"true\" or \"false\""
                                ),
                            ));
                        }
                    }
                }
            }
            Ok(Metadata {
                name,
                namespace,
                dry_run,
            })
        })
    }
}

#[derive(serde::Deserialize)]
struct Header {
    kind: Option<Kind>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Doc<S> {
    #[allow(dead_code)]
    api_version: ApiVersion,
    #[allow(dead_code)]
    kind: IgnoredAny,
    metadata: Metadata,
    spec: Option<S>,
}

// ---------------------------------------------------------------------------
// Documents

/// Everything parsed from one file.
#[derive(Default)]
pub(crate) struct Parsed {
    pub authz: Vec<AuthorizationPolicy>,
    pub peer: Vec<PeerAuthentication>,
}

fn fnv(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

type PathErr = serde_path_to_error::Error<serde_yaml_ng::Error>;

fn config_error(file: &str, doc: usize, e: PathErr) -> ConfigError {
    let mut path = e.path().to_string();
    let inner = e.into_inner();
    let loc = inner.location();
    let mut msg = inner.to_string();
    if let Some(l) = &loc {
        let suffix = format!(" at line {} column {}", l.line(), l.column());
        if let Some(m) = msg.strip_suffix(&suffix) {
            msg = m.to_owned();
        }
    }
    // serde_yaml_ng prefixes its own idea of the path; ours is better.
    if let Some(i) = msg.find(": ")
        && !msg[..i].contains([' ', '`', SUB])
    {
        msg = msg[i + 2..].to_owned();
    }
    if let Some(rest) = msg.strip_prefix(SUB)
        && let Some((sub, reason)) = rest.split_once(SUB)
    {
        if path == "." {
            path = sub.to_owned();
        } else if sub.starts_with('[') {
            path = format!("{path}{sub}");
        } else {
            path = format!("{path}.{sub}");
        }
        msg = reason.to_owned();
    } else if let Some(field) = msg
        .strip_prefix("unknown field `")
        .and_then(|r| r.split_once('`'))
        .map(|(f, _)| f.to_owned())
    {
        if path == "." {
            path = field;
        } else if !path.ends_with(&format!(".{field}")) {
            path = format!("{path}.{field}");
        }
    }
    // libyaml syntax errors carry their own position in the message.
    let syntax = msg.contains(" at line ");
    if syntax {
        path = ".".into();
    }
    ConfigError {
        file: file.to_owned(),
        document: Some(doc),
        field: (path != ".").then_some(path),
        line: loc.as_ref().map(|l| l.line()),
        column: loc.as_ref().map(|l| l.column()),
        reason: msg,
    }
}

fn header_line(yaml: &str, doc: usize) -> Option<usize> {
    // Best effort: the line after the doc-th `---` separator (or 1).
    if doc == 0 && !yaml.trim_start().starts_with("---") {
        return Some(1);
    }
    let mut seen = 0;
    let first_is_sep = yaml.trim_start().starts_with("---");
    for (i, line) in yaml.lines().enumerate() {
        if line.starts_with("---") {
            let idx = if first_is_sep { seen } else { seen + 1 };
            if idx == doc {
                return Some(i + 2);
            }
            seen += 1;
        }
    }
    None
}

/// How many documents of `yaml` may be deserialized: all of them, or up to
/// and including the first that is not well-formed YAML. After a document
/// with an unknown alias (`*x`) serde_yaml_ng's document iterator resumes
/// in the middle of it, and deserializing that "next document" panics
/// (found by fuzzing: fuzz/fuzz_targets/policy_parse.rs). Walking every
/// document whole, with no types involved, finds the first broken one
/// without touching what follows it.
fn sound_documents(yaml: &str) -> usize {
    let mut count = 0;
    for document in serde_yaml_ng::Deserializer::from_str(yaml) {
        count += 1;
        if Option::<IgnoredAny>::deserialize(document).is_err() {
            break;
        }
    }
    count
}

/// A service account written without namespace is in the policy's.
fn resolve_service_accounts(rule: &mut Rule, namespace: &str) {
    let fill = |list: &mut Vec<ServiceAccount>| {
        for sa in list.iter_mut().filter(|sa| sa.namespace.is_empty()) {
            sa.namespace = namespace.into();
        }
    };
    for source in &mut rule.from {
        fill(&mut source.service_accounts);
        fill(&mut source.not_service_accounts);
    }
    for cond in &mut rule.when {
        for values in [&mut cond.values, &mut cond.not_values] {
            if let CondValues::ServiceAccount(list) = values {
                fill(list);
            }
        }
    }
}

/// Parses every document of one file. Any error rejects the whole file.
pub(crate) fn parse_file(file: &str, yaml: &str) -> Result<Parsed, Vec<ConfigError>> {
    let file_arc: Arc<str> = file.into();
    let mut out = Parsed::default();
    let mut errors = Vec::new();
    let headers = serde_yaml_ng::Deserializer::from_str(yaml);
    let bodies = serde_yaml_ng::Deserializer::from_str(yaml);
    let documents = sound_documents(yaml);
    for (doc, (h, b)) in headers.zip(bodies).take(documents).enumerate() {
        let header: Option<Header> = match serde_path_to_error::deserialize(h) {
            Ok(h) => h,
            Err(e) => {
                let err = config_error(file, doc, e);
                let whole_document = err.field.is_none();
                errors.push(err);
                if whole_document {
                    // A YAML syntax error (or a document that is not a
                    // mapping): nothing after it can be trusted.
                    break;
                }
                continue;
            }
        };
        let Some(header) = header else {
            continue; // empty document (e.g. a trailing `---`)
        };
        let origin = Origin {
            file: file_arc.clone(),
            document: doc,
            line: header_line(yaml, doc),
        };
        match header.kind {
            None => errors.push(ConfigError {
                file: file.to_owned(),
                document: Some(doc),
                field: Some("kind".into()),
                line: origin.line,
                column: None,
                reason: "kind is required: AuthorizationPolicy or PeerAuthentication".into(),
            }),
            Some(Kind::AuthorizationPolicy) => {
                match serde_path_to_error::deserialize::<_, Doc<AuthzSpec>>(b) {
                    Err(e) => errors.push(config_error(file, doc, e)),
                    Ok(d) => {
                        let mut spec = d.spec.unwrap_or_default();
                        for rule in &mut spec.rules {
                            resolve_service_accounts(rule, &d.metadata.namespace);
                        }
                        let version = fnv(&format!(
                            "{:?}{:?}{:?}{:?}{}",
                            spec.selector,
                            spec.action,
                            spec.rules,
                            spec.rules_written,
                            d.metadata.dry_run
                        ));
                        out.authz.push(AuthorizationPolicy {
                            id: PolicyRef {
                                namespace: d.metadata.namespace.into(),
                                name: d.metadata.name.into(),
                            },
                            origin,
                            selector: spec.selector,
                            action: spec.action,
                            rules: spec.rules,
                            rules_written: spec.rules_written,
                            dry_run: d.metadata.dry_run,
                            version,
                        });
                    }
                }
            }
            Some(Kind::PeerAuthentication) => {
                match serde_path_to_error::deserialize::<_, Doc<PeerSpec>>(b) {
                    Err(e) => errors.push(config_error(file, doc, e)),
                    Ok(d) => {
                        let spec = d.spec.unwrap_or_default();
                        let version = fnv(&format!(
                            "{:?}{:?}{:?}",
                            spec.selector, spec.mode, spec.port_level
                        ));
                        out.peer.push(PeerAuthentication {
                            id: PolicyRef {
                                namespace: d.metadata.namespace.into(),
                                name: d.metadata.name.into(),
                            },
                            origin,
                            selector: spec.selector,
                            mode: spec.mode,
                            port_level: spec.port_level,
                            version,
                        });
                    }
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

mod condition;
#[cfg(test)]
mod tests;
