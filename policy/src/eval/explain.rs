//! Why a request got its decision, and which rules nearly matched it: for
//! operators (`ward authz why` through the sidecar's `/debug/authz/why`),
//! never on the request path. Each rule is taken apart field by field with
//! the helpers the evaluator itself uses, so "no field fails" is exactly
//! "the rule matches" (a test checks it over a grid of requests).

use super::matching::{Ctx, TcpMode, field, rule_matches};
use super::{Decision, RequestAttrs, WorkloadPolicy, prepare};
use crate::matcher::StrMatch;
use crate::model::*;
use std::sync::Arc;

/// A rule that failed on exactly one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NearMiss<'p> {
    pub policy: &'p PolicyRef,
    pub action: Action,
    pub dry_run: bool,
    /// Index of the rule within the policy.
    pub rule: usize,
    /// The field that did not match, as the policy writes it:
    /// `from[0].source.principals`, `to[1].operation.methods`,
    /// `when[0] request.headers[x-user]`.
    pub field: String,
}

/// A decision with the rules that came close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation<'p> {
    /// What [`WorkloadPolicy::evaluate`] decides for the request.
    pub decision: Decision<'p>,
    /// Rules, of policies none of whose rules matched, that failed on one
    /// field only: DENY, ALLOW, AUDIT, then dry-run policies, in
    /// evaluation order. Empty for a request refused as malformed.
    pub near_misses: Vec<NearMiss<'p>>,
}

impl WorkloadPolicy {
    /// The decision [`Self::evaluate`] takes, and the near misses. Tries
    /// every rule of every applying policy and allocates freely: an
    /// operator's question, not the proxy's per-request path.
    pub fn explain<'p>(&'p self, req: &RequestAttrs<'_>) -> Explanation<'p> {
        let decision = self.evaluate(req);
        let Ok((path, method_bit)) = prepare(req) else {
            return Explanation {
                decision,
                near_misses: Vec::new(),
            };
        };
        let c = Ctx::new(req, &path, method_bit);
        let mut near_misses = Vec::new();
        for list in [&self.deny, &self.allow, &self.audit, &self.dry_run] {
            for policy in list.iter() {
                near_misses.extend(policy_near_misses(policy, &c));
            }
        }
        Explanation {
            decision,
            near_misses,
        }
    }
}

fn policy_near_misses<'p>(policy: &'p Arc<AuthorizationPolicy>, c: &Ctx<'_>) -> Vec<NearMiss<'p>> {
    let failures: Vec<Vec<String>> = policy
        .rules
        .iter()
        .map(|rule| rule_failures(policy.action, rule, c))
        .collect();
    // A policy that matched did not "come close".
    if failures.iter().any(Vec::is_empty) {
        return Vec::new();
    }
    failures
        .into_iter()
        .enumerate()
        .filter(|(_, failed)| failed.len() == 1)
        .map(|(rule, mut failed)| NearMiss {
            policy: &policy.id,
            action: policy.action,
            dry_run: policy.dry_run,
            rule,
            field: failed.pop().expect("one field"),
        })
        .collect()
}

/// The fields of `rule` the request fails; empty exactly when
/// [`rule_matches`] is true. Of several sources (operations) the one
/// failing the fewest fields is named: any one of them would do.
pub(super) fn rule_failures(action: Action, rule: &Rule, c: &Ctx<'_>) -> Vec<String> {
    let mode = TcpMode::of(action, c.http);
    let mut failed = Vec::new();
    if let Some((i, fields)) = fewest(rule.from.iter().map(|s| source_failures(s, c))) {
        failed.extend(fields.iter().map(|f| format!("from[{i}].source.{f}")));
    }
    // On a TCP connection an ALLOW or AUDIT rule with HTTP fields never
    // matches: every such field fails, whatever the other operations say.
    let http_only = mode == TcpMode::NeverMatch && rule.has_http_fields();
    if http_only {
        for (i, op) in rule.to.iter().enumerate() {
            failed.extend(http_fields(op).map(|f| format!("to[{i}].operation.{f}")));
        }
    }
    let op_mode = if http_only { TcpMode::Ignore } else { mode };
    if let Some((i, fields)) = fewest(rule.to.iter().map(|o| operation_failures(o, c, op_mode))) {
        failed.extend(fields.iter().map(|f| format!("to[{i}].operation.{f}")));
    }
    for (i, condition) in rule.when.iter().enumerate() {
        if !condition.matches(c, mode) {
            failed.push(format!("when[{i}] {}", key_name(&condition.key)));
        }
    }
    debug_assert_eq!(failed.is_empty(), rule_matches(action, rule, c));
    failed
}

/// The entry failing the fewest fields with its index; `None` when there
/// is no entry (an absent `from`/`to` matches) or one fails none.
fn fewest(entries: impl Iterator<Item = Vec<&'static str>>) -> Option<(usize, Vec<&'static str>)> {
    let best = entries.enumerate().min_by_key(|(_, f)| f.len())?;
    (!best.1.is_empty()).then_some(best)
}

/// Records `name` when its check failed.
fn check(out: &mut Vec<&'static str>, name: &'static str, holds: bool) {
    if !holds {
        out.push(name);
    }
}

/// A positive identity field: set, it needs an identity that matches.
fn id_values(values: &[StrMatch], id: Option<&str>) -> bool {
    values.is_empty() || id.is_some_and(|id| values.iter().any(|m| m.matches(id)))
}

/// A negative identity field: a peer without identity satisfies it.
fn id_not_values(not_values: &[StrMatch], id: Option<&str>) -> bool {
    id.is_none_or(|id| !not_values.iter().any(|m| m.matches(id)))
}

/// `matching::Source::matches`, one field at a time.
fn source_failures(s: &Source, c: &Ctx<'_>) -> Vec<&'static str> {
    let mut out = Vec::new();
    check(
        &mut out,
        "principals",
        id_values(&s.principals, c.principal),
    );
    check(
        &mut out,
        "notPrincipals",
        id_not_values(&s.not_principals, c.principal),
    );
    check(
        &mut out,
        "namespaces",
        id_values(&s.namespaces, c.namespace),
    );
    check(
        &mut out,
        "notNamespaces",
        id_not_values(&s.not_namespaces, c.namespace),
    );
    let has_id = c.principal.is_some();
    check(
        &mut out,
        "serviceAccounts",
        s.service_accounts.is_empty()
            || (has_id && s.service_accounts.iter().any(|a| c.has_service_account(a))),
    );
    check(
        &mut out,
        "notServiceAccounts",
        !has_id
            || !s
                .not_service_accounts
                .iter()
                .any(|a| c.has_service_account(a)),
    );
    let ip = c.source_ip;
    check(
        &mut out,
        "ipBlocks",
        field(&s.ip_blocks, &[], |n| n.contains(&ip)),
    );
    check(
        &mut out,
        "notIpBlocks",
        field(&[], &s.not_ip_blocks, |n| n.contains(&ip)),
    );
    check(
        &mut out,
        "remoteIpBlocks",
        field(&s.remote_ip_blocks, &[], |n| n.contains(&ip)),
    );
    check(
        &mut out,
        "notRemoteIpBlocks",
        field(&[], &s.not_remote_ip_blocks, |n| n.contains(&ip)),
    );
    out
}

/// The HTTP-only fields an operation sets.
fn http_fields(o: &Operation) -> impl Iterator<Item = &'static str> {
    [
        ("hosts", o.hosts.is_empty()),
        ("notHosts", o.not_hosts.is_empty()),
        ("methods", o.methods.is_empty()),
        ("notMethods", o.not_methods.is_empty()),
        ("paths", o.paths.is_empty()),
        ("notPaths", o.not_paths.is_empty()),
    ]
    .into_iter()
    .filter(|(_, empty)| !empty)
    .map(|(name, _)| name)
}

/// `matching::Operation::matches`, one field at a time.
fn operation_failures(o: &Operation, c: &Ctx<'_>, mode: TcpMode) -> Vec<&'static str> {
    let mut out = Vec::new();
    let port = c.req.destination_port;
    check(&mut out, "ports", field(&o.ports, &[], |p| *p == port));
    check(
        &mut out,
        "notPorts",
        field(&[], &o.not_ports, |p| *p == port),
    );
    match mode {
        TcpMode::Ignore => return out,
        TcpMode::NeverMatch => {
            out.extend(http_fields(o));
            return out;
        }
        TcpMode::Http => {}
    }
    let method = c.req.method.unwrap_or("");
    check(
        &mut out,
        "methods",
        o.methods.is_empty() || o.methods.matches(method, c.method_bit),
    );
    check(
        &mut out,
        "notMethods",
        !o.not_methods.matches(method, c.method_bit),
    );
    check(
        &mut out,
        "paths",
        field(&o.paths, &[], |m| m.matches(c.path)),
    );
    check(
        &mut out,
        "notPaths",
        field(&[], &o.not_paths, |m| m.matches(c.path)),
    );
    let host = c.req.host;
    check(
        &mut out,
        "hosts",
        o.hosts.is_empty()
            || host.is_some_and(|h| o.hosts.iter().any(|m| m.matches_ignore_case(h))),
    );
    check(
        &mut out,
        "notHosts",
        host.is_none_or(|h| !o.not_hosts.iter().any(|m| m.matches_ignore_case(h))),
    );
    out
}

/// A condition's key as the policy writes it.
fn key_name(key: &ConditionKey) -> String {
    match key {
        ConditionKey::SourcePrincipal => "source.principal".into(),
        ConditionKey::SourceNamespace => "source.namespace".into(),
        ConditionKey::SourceServiceAccount => "source.serviceAccount".into(),
        ConditionKey::SourceIp => "source.ip".into(),
        ConditionKey::RemoteIp => "remote.ip".into(),
        ConditionKey::DestinationIp => "destination.ip".into(),
        ConditionKey::DestinationPort => "destination.port".into(),
        ConditionKey::RequestHeader(name) => format!("request.headers[{name}]"),
    }
}

#[cfg(test)]
mod tests;
