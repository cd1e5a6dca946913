//! `ward authz lint`: policies that load but probably do not do what their
//! author meant.

use crate::eval::EvalOptions;
use crate::matcher::StrMatch;
use crate::model::*;
use crate::set::PolicySet;
use crate::trust_domain::{Bundle, TrustDomainAliases};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::fmt;

/// A workload the policies are meant for (from `--workloads`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Parses a YAML or JSON list of `{namespace, labels}`.
pub fn parse_workloads(label: &str, text: &str) -> Result<Vec<Workload>, String> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        format!("{label}: {path}: {}", e.inner())
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Probably a mistake.
    Warning,
    /// Worth knowing, but written on purpose (e.g. `spec: {}`).
    Note,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LintWarning {
    pub severity: Severity,
    pub file: String,
    pub document: usize,
    pub kind: &'static str,
    pub policy: String,
    pub rule: Option<usize>,
    pub message: String,
}

impl fmt::Display for LintWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Warning => "warning",
            Severity::Note => "note",
        };
        write!(
            f,
            "{sev}: {}: document {}: {} {}",
            self.file, self.document, self.kind, self.policy
        )?;
        if let Some(r) = self.rule {
            write!(f, ": spec.rules[{r}]")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Lints the set. With `workloads`, also reports selectors and namespaces
/// that match none of them.
pub fn lint(
    set: &PolicySet,
    workloads: Option<&[Workload]>,
    options: &EvalOptions,
    aliases: &TrustDomainAliases,
) -> Vec<LintWarning> {
    let bundle = Bundle::new(&options.trust_domain, aliases);
    let mut out = Vec::new();
    for p in set.authorization_policies() {
        let mut warn = |severity, rule: Option<usize>, message: String| {
            out.push(LintWarning {
                severity,
                file: p.origin.file.to_string(),
                document: p.origin.document,
                kind: "AuthorizationPolicy",
                policy: p.id.to_string(),
                rule,
                message,
            })
        };
        if let Some(ws) = workloads
            && !ws
                .iter()
                .any(|w| PolicySet::applies(p, &w.namespace, &w.labels, options))
        {
            warn(
                Severity::Warning,
                None,
                match &p.selector {
                    Some(sel) => format!("selector {} matches no listed workload", labels_str(sel)),
                    None => format!("namespace `{}` has no listed workload", p.id.namespace),
                },
            );
        }
        if p.action == Action::Allow && !p.dry_run {
            match p.rules_written {
                RulesWritten::Absent => warn(
                    Severity::Note,
                    None,
                    "ALLOW policy without rules (`spec: {}`): denies every request to the workloads it selects (intentional deny-all form)".into(),
                ),
                RulesWritten::Empty => warn(
                    Severity::Warning,
                    None,
                    "`rules: []` allows nothing: every request to the selected workloads is denied; write `spec: {}` if deny-all is intended".into(),
                ),
                RulesWritten::Present => {}
            }
        }
        for (i, rule) in p.rules.iter().enumerate() {
            if let Some(j) = p.rules[..i]
                .iter()
                .position(|earlier| covers_rule(earlier, rule))
            {
                let how = if p.rules[j] == *rule {
                    "a duplicate of"
                } else {
                    "shadowed by"
                };
                warn(
                    Severity::Warning,
                    Some(i),
                    format!("rule is {how} spec.rules[{j}], which matches everything it does"),
                );
            }
            for m in never_matching(rule) {
                warn(Severity::Warning, Some(i), m);
            }
            for td in foreign_trust_domains(rule, &bundle) {
                let aliases: Vec<&str> = aliases.iter().collect();
                let also = if aliases.is_empty() {
                    String::new()
                } else {
                    format!(" and its aliases `{}`", aliases.join("`, `"))
                };
                warn(
                    Severity::Warning,
                    Some(i),
                    format!(
                        "principal `{td}` is outside the mesh trust domain `{}`{also}",
                        options.trust_domain
                    ),
                );
            }
            if p.action == Action::Allow && lets_plaintext_in(rule) {
                warn(
                    Severity::Warning,
                    Some(i),
                    "notPrincipals/notNamespaces/notServiceAccounts without a positive identity field also allow plaintext peers (no identity); add `principals: [\"*\"]` to require mTLS".into(),
                );
            }
        }
    }
    if let Some(ws) = workloads {
        for p in set.peer_authentications() {
            let used = ws.iter().any(|w| {
                (*p.id.namespace == *w.namespace
                    || (*p.id.namespace == *options.root_namespace && p.selector.is_none()))
                    && selector_matches(p.selector.as_ref(), &w.labels)
            });
            if !used {
                out.push(LintWarning {
                    severity: Severity::Warning,
                    file: p.origin.file.to_string(),
                    document: p.origin.document,
                    kind: "PeerAuthentication",
                    policy: p.id.to_string(),
                    rule: None,
                    message: match &p.selector {
                        Some(sel) => {
                            format!("selector {} matches no listed workload", labels_str(sel))
                        }
                        None => format!("namespace `{}` has no listed workload", p.id.namespace),
                    },
                });
            }
        }
    }
    out
}

fn labels_str(sel: &BTreeMap<String, String>) -> String {
    let parts: Vec<String> = sel.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", parts.join(","))
}

/// Values that load but can never match a request.
fn never_matching(rule: &Rule) -> Vec<String> {
    let mut out = Vec::new();
    for op in &rule.to {
        for set in [&op.methods, &op.not_methods] {
            for m in &set.other {
                if let StrMatch::Exact(v) = m
                    && !v.bytes().all(|b| {
                        b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                    })
                {
                    out.push(format!(
                        "method `{v}` can never match: methods are case-sensitive and requests with such methods are refused"
                    ));
                }
            }
        }
        for m in op.paths.iter().chain(&op.not_paths) {
            match m {
                PathMatch::Str(StrMatch::Exact(v) | StrMatch::Prefix(v)) => {
                    if !v.starts_with('/') {
                        out.push(format!(
                            "path `{m}` can never match: request paths start with `/`"
                        ));
                    } else if crate::path::policy_view(v).ok().as_deref() != Some(&**v)
                        && !matches!(m, PathMatch::Str(StrMatch::Prefix(_)))
                    {
                        out.push(format!(
                            "path `{m}` can never match: request paths are normalized before matching"
                        ));
                    }
                }
                PathMatch::Template(t) => {
                    // A path the template matches, its operators filled in:
                    // if normalization changes (or refuses) it, the
                    // template's literal parts never appear in a request.
                    let sample = t.sample();
                    if crate::path::policy_view(&sample).ok().as_deref() != Some(&*sample) {
                        out.push(format!(
                            "path template `{t}` can never match: its literal parts are not in normalized form (`.`/`..` segments, lower-case or needless percent-escapes, escaped `/`), and request paths are normalized before matching"
                        ));
                    }
                }
                PathMatch::Str(_) => {}
            }
        }
    }
    out
}

fn principal_values(rule: &Rule) -> impl Iterator<Item = &StrMatch> {
    rule.from
        .iter()
        .flat_map(|s| s.principals.iter().chain(&s.not_principals))
        .chain(rule.when.iter().flat_map(|c| {
            let v: &[StrMatch] = match (&c.key, &c.values, &c.not_values) {
                (ConditionKey::SourcePrincipal, CondValues::Str(a), _) => a,
                _ => &[],
            };
            let n: &[StrMatch] = match (&c.key, &c.not_values) {
                (ConditionKey::SourcePrincipal, CondValues::Str(a)) => a,
                _ => &[],
            };
            v.iter().chain(n)
        }))
}

/// Principals whose trust domain is not the mesh's, an alias, or the
/// `cluster.local` pointer.
fn foreign_trust_domains(rule: &Rule, bundle: &Bundle) -> Vec<String> {
    principal_values(rule)
        .filter_map(|m| match m {
            StrMatch::Exact(v) | StrMatch::Prefix(v) => {
                let td = v.split('/').next().unwrap_or("");
                let complete = v.contains('/') || m.is_exact();
                (complete && !bundle.covers(td)).then(|| m.to_string())
            }
            _ => None,
        })
        .collect()
}

fn lets_plaintext_in(rule: &Rule) -> bool {
    let negative = rule.from.iter().any(|s| {
        !s.not_principals.is_empty()
            || !s.not_namespaces.is_empty()
            || !s.not_service_accounts.is_empty()
    });
    if !negative {
        return false;
    }
    let positive_when = rule.when.iter().any(|c| {
        matches!(
            c.key,
            ConditionKey::SourcePrincipal
                | ConditionKey::SourceNamespace
                | ConditionKey::SourceServiceAccount
        ) && !c.values.is_empty()
    });
    let all_sources_positive = rule.from.iter().all(|s| {
        !s.principals.is_empty() || !s.namespaces.is_empty() || !s.service_accounts.is_empty()
    });
    !(positive_when || all_sources_positive)
}

// --- shadowing: does rule `a` match every request rule `b` matches? ---

fn covers_strs(a: &[StrMatch], b: &[StrMatch]) -> bool {
    a.is_empty() || (!b.is_empty() && b.iter().all(|y| a.iter().any(|x| x.covers(y))))
}

fn covers_nets(a: &[IpNet], b: &[IpNet]) -> bool {
    a.is_empty() || (!b.is_empty() && b.iter().all(|y| a.iter().any(|x| x.contains(y))))
}

fn covers_paths(a: &[PathMatch], b: &[PathMatch]) -> bool {
    a.is_empty() || (!b.is_empty() && b.iter().all(|y| a.iter().any(|x| x.covers(y))))
}

fn covers_eq<T: PartialEq>(a: &[T], b: &[T]) -> bool {
    a.is_empty() || (!b.is_empty() && b.iter().all(|y| a.contains(y)))
}

/// Negative fields: `a` must exclude no more than `b`.
fn neg_ok<T: PartialEq>(a: &[T], b: &[T]) -> bool {
    a.iter().all(|x| b.contains(x))
}

fn covers_source(a: &Source, b: &Source) -> bool {
    covers_strs(&a.principals, &b.principals)
        && neg_ok(&a.not_principals, &b.not_principals)
        && covers_strs(&a.namespaces, &b.namespaces)
        && neg_ok(&a.not_namespaces, &b.not_namespaces)
        && covers_eq(&a.service_accounts, &b.service_accounts)
        && neg_ok(&a.not_service_accounts, &b.not_service_accounts)
        && covers_nets(&a.ip_blocks, &b.ip_blocks)
        && neg_ok(&a.not_ip_blocks, &b.not_ip_blocks)
        && covers_nets(&a.remote_ip_blocks, &b.remote_ip_blocks)
        && neg_ok(&a.not_remote_ip_blocks, &b.not_remote_ip_blocks)
}

fn covers_methods(a: &MethodSet, b: &MethodSet) -> bool {
    a.is_empty()
        || (!b.is_empty() && b.known & !a.known == 0 && covers_strs(&a.other, &b.other) || a == b)
}

fn covers_op(a: &Operation, b: &Operation) -> bool {
    covers_strs(&a.hosts, &b.hosts)
        && neg_ok(&a.not_hosts, &b.not_hosts)
        && covers_eq(&a.ports, &b.ports)
        && neg_ok(&a.not_ports, &b.not_ports)
        && covers_methods(&a.methods, &b.methods)
        && (a.not_methods.is_empty() || a.not_methods == b.not_methods)
        && covers_paths(&a.paths, &b.paths)
        && neg_ok(&a.not_paths, &b.not_paths)
}

fn covers_list<T>(a: &[T], b: &[T], f: impl Fn(&T, &T) -> bool) -> bool {
    a.is_empty() || (!b.is_empty() && b.iter().all(|y| a.iter().any(|x| f(x, y))))
}

fn covers_rule(a: &Rule, b: &Rule) -> bool {
    a == b
        || (covers_list(&a.from, &b.from, covers_source)
            && covers_list(&a.to, &b.to, covers_op)
            && a.when.iter().all(|c| b.when.contains(c)))
}

#[cfg(test)]
mod tests;
