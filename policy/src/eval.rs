//! Per-workload evaluation: a borrowed request view in, a decision out.
//! No parsing and, in the common case, no allocation: matchers are
//! pre-compiled, the path is normalized in place unless it needs changes,
//! the rules a request may match are found through an index
//! ([`index`]), and the decision borrows the policy names from the
//! compiled set.

mod explain;
pub(crate) mod index;
mod matching;

use crate::model::*;
use crate::path::policy_view;
use index::{Candidates, Category, Index};
use matching::{Ctx, rule_matches, valid_method};
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use ward_identity::SpiffeId;

pub use explain::{Explanation, NearMiss};

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

/// Root namespace and trust domain of the mesh. The trust domain's aliases
/// are given beside it, to [`crate::PolicySet::for_workload_with_aliases`]
/// (a new field here would break every caller that builds this struct).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalOptions {
    /// Policies here apply mesh-wide. Default `ward-system`.
    pub root_namespace: String,
    /// The mesh's trust domain: principals written for it or for
    /// `cluster.local` match its peers (and lint warns about others).
    /// Default `cluster.local`.
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

/// The policies that apply to one workload, sorted by role, and the index
/// that finds the rules a request may match. Built by
/// [`crate::PolicySet::for_workload`]; cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct WorkloadPolicy {
    pub(crate) deny: Vec<Arc<AuthorizationPolicy>>,
    pub(crate) allow: Vec<Arc<AuthorizationPolicy>>,
    pub(crate) audit: Vec<Arc<AuthorizationPolicy>>,
    pub(crate) dry_run: Vec<Arc<AuthorizationPolicy>>,
    pub(crate) index: Index,
}

/// With at most this many rules every rule is tried: looking the request's
/// values up in the index would cost more than it saves.
const SMALL: usize = 8;

/// The checks made before any policy: a malformed method or path is denied.
fn prepare<'r>(req: &RequestAttrs<'r>) -> Result<(Cow<'r, str>, Option<u16>), DecisionReason> {
    if req.protocol != Protocol::Http {
        return Ok((Cow::Borrowed(""), None));
    }
    let bit = match req.method {
        Some(m) if valid_method(m) => method_bit(m),
        _ => return Err(DecisionReason::DeniedMalformedMethod),
    };
    match req.path.map(policy_view) {
        Some(Ok(p)) => Ok((p, bit)),
        _ => Err(DecisionReason::DeniedMalformedPath),
    }
}

fn malformed<'p>(reason: DecisionReason) -> Decision<'p> {
    Decision {
        allowed: false,
        policy: None,
        rule: None,
        reason,
        dry_run_matches: Vec::new(),
        audit_matches: Vec::new(),
    }
}

/// The outcome once every category has been looked at.
fn decide<'p>(
    deny: Option<(&'p PolicyRef, usize)>,
    allow: Option<(&'p PolicyRef, usize)>,
    any_allow_policy: bool,
    dry_run_matches: Vec<PolicyMatch<'p>>,
    audit_matches: Vec<PolicyMatch<'p>>,
) -> Decision<'p> {
    let (allowed, found, reason) = match (deny, allow) {
        (Some(d), _) => (false, Some(d), DecisionReason::DeniedByDenyPolicy),
        (None, _) if !any_allow_policy => (true, None, DecisionReason::AllowedNoAllowPolicy),
        (None, Some(a)) => (true, Some(a), DecisionReason::AllowedByAllowPolicy),
        (None, None) => (false, None, DecisionReason::DeniedNoAllowMatched),
    };
    Decision {
        allowed,
        policy: found.map(|(p, _)| p),
        rule: found.map(|(_, r)| r),
        reason,
        dry_run_matches,
        audit_matches,
    }
}

impl WorkloadPolicy {
    /// Decides one connection (TCP) or request (HTTP). Only the rules the
    /// index files under the request's identity, port, method and path (and
    /// those it cannot file) are tried, in policy order, so the cost follows
    /// the rules that may match rather than all that apply; the decision is
    /// the one [`Self::evaluate_linear`] takes. With few rules, or when most
    /// are candidates anyway, every rule is tried in order, which is then
    /// cheaper.
    pub fn evaluate<'p>(&'p self, req: &RequestAttrs<'_>) -> Decision<'p> {
        let (path, method_bit) = match prepare(req) {
            Ok(p) => p,
            Err(reason) => return malformed(reason),
        };
        let c = Ctx::new(req, &path, method_bit);
        let rules = self.index.rules();
        if rules <= SMALL {
            return self.linear(&c);
        }
        let candidates = self.index.candidates(&c);
        if candidates.at_most() * 2 >= rules {
            return self.linear(&c);
        }
        self.indexed(&c, candidates)
    }

    /// [`Self::evaluate`] always through the index, however few the rules or
    /// many the candidates (for tests).
    #[doc(hidden)]
    pub fn evaluate_indexed<'p>(&'p self, req: &RequestAttrs<'_>) -> Decision<'p> {
        let (path, method_bit) = match prepare(req) {
            Ok(p) => p,
            Err(reason) => return malformed(reason),
        };
        let c = Ctx::new(req, &path, method_bit);
        self.indexed(&c, self.index.candidates(&c))
    }

    /// The reference evaluator: every rule of every applying policy, in
    /// order. Same decision as [`Self::evaluate`] (a property test checks
    /// it); kept for tests, fuzzing and benchmarks.
    pub fn evaluate_linear<'p>(&'p self, req: &RequestAttrs<'_>) -> Decision<'p> {
        let (path, method_bit) = match prepare(req) {
            Ok(p) => p,
            Err(reason) => return malformed(reason),
        };
        self.linear(&Ctx::new(req, &path, method_bit))
    }

    /// Tries the candidate rules, ascending (category, policy, rule).
    fn indexed<'p>(&'p self, c: &Ctx<'_>, candidates: Candidates<'_>) -> Decision<'p> {
        let mut dry_run_matches = Vec::new();
        let mut audit_matches = Vec::new();
        let mut deny = None;
        let mut allow = None;
        // A dry-run or AUDIT policy is reported once, with its first
        // matching rule: later rules of a policy already reported are skipped.
        let mut reported: Option<(Category, u32)> = None;
        for id in candidates {
            let e = self.index.entry(id);
            if reported == Some((e.category, e.policy)) {
                continue;
            }
            let p = &self.list(e.category)[e.policy as usize];
            let rule = e.rule as usize;
            if !rule_matches(p.action, &p.rules[rule], c) {
                continue;
            }
            let found = PolicyMatch {
                policy: &p.id,
                action: p.action,
                rule,
            };
            match e.category {
                Category::DryRun => dry_run_matches.push(found),
                Category::Audit => audit_matches.push(found),
                Category::Deny => {
                    deny = Some((&p.id, rule));
                    break;
                }
                Category::Allow => {
                    allow = Some((&p.id, rule));
                    break;
                }
            }
            reported = Some((e.category, e.policy));
        }
        decide(
            deny,
            allow,
            !self.allow.is_empty(),
            dry_run_matches,
            audit_matches,
        )
    }

    /// Every rule of every policy, in order.
    fn linear<'p>(&'p self, c: &Ctx<'_>) -> Decision<'p> {
        let all = |list: &'p [Arc<AuthorizationPolicy>]| -> Vec<PolicyMatch<'p>> {
            list.iter()
                .filter_map(|p| {
                    p.first_match(c).map(|rule| PolicyMatch {
                        policy: &p.id,
                        action: p.action,
                        rule,
                    })
                })
                .collect()
        };
        let first = |list: &'p [Arc<AuthorizationPolicy>]| {
            list.iter()
                .find_map(|p| p.first_match(c).map(|rule| (&p.id, rule)))
        };
        let dry_run_matches = all(&self.dry_run);
        let audit_matches = all(&self.audit);
        let deny = first(&self.deny);
        let allow = if deny.is_none() {
            first(&self.allow)
        } else {
            None
        };
        decide(
            deny,
            allow,
            !self.allow.is_empty(),
            dry_run_matches,
            audit_matches,
        )
    }

    fn list(&self, category: Category) -> &[Arc<AuthorizationPolicy>] {
        match category {
            Category::DryRun => &self.dry_run,
            Category::Audit => &self.audit,
            Category::Deny => &self.deny,
            Category::Allow => &self.allow,
        }
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

#[cfg(test)]
mod tests;
