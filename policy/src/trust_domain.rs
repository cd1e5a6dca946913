//! Trust-domain aliases (Istio's mesh settings `trustDomain` and
//! `trustDomainAliases`): a principal written for the mesh's trust domain,
//! for one of its aliases, or for `cluster.local` (which in a policy points
//! at the mesh's trust domain) stands for that workload in the mesh's trust
//! domain and in every alias. Ported from Istio's
//! `trustdomain.Bundle.ReplaceTrustDomainAliases`
//! (pilot/pkg/security/trustdomain/bundle.go), which rewrites the values of
//! `principals`, `notPrincipals` and `source.principal` conditions.

use crate::matcher::StrMatch;
use crate::model::{AuthorizationPolicy, CondValues, ConditionKey};
use std::fmt;
use std::sync::Arc;
use ward_identity::SpiffeId;

/// The trust domain a principal written with it points at the mesh's own.
pub const CLUSTER_LOCAL: &str = "cluster.local";

/// The mesh's trust-domain aliases, each a valid SPIFFE trust domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustDomainAliases(Vec<Box<str>>);

/// A trust-domain alias that is not a valid SPIFFE trust domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidAlias {
    pub alias: String,
    pub reason: String,
}

impl fmt::Display for InvalidAlias {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid trust-domain alias `{}`: {}",
            self.alias, self.reason
        )
    }
}

impl std::error::Error for InvalidAlias {}

impl TrustDomainAliases {
    /// Validates every alias as a SPIFFE trust domain (lower-case letters,
    /// digits, `.`, `-`, `_`); duplicates are dropped.
    pub fn new<I, S>(aliases: I) -> Result<TrustDomainAliases, InvalidAlias>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out: Vec<Box<str>> = Vec::new();
        for alias in aliases {
            let alias = alias.as_ref();
            let invalid = |reason: String| InvalidAlias {
                alias: alias.to_owned(),
                reason,
            };
            if alias.contains('/') {
                return Err(invalid(
                    "a trust domain has no `/` (write `example.org`, not a SPIFFE ID)".into(),
                ));
            }
            match SpiffeId::parse(&format!("spiffe://{alias}")) {
                Ok(id) if id.path().is_empty() => {}
                Ok(_) => return Err(invalid("not a trust domain".into())),
                Err(e) => return Err(invalid(e.to_string())),
            }
            if !out.iter().any(|a| **a == *alias) {
                out.push(alias.into());
            }
        }
        Ok(TrustDomainAliases(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|a| &**a)
    }
}

/// The mesh's trust domain followed by its aliases (Istio's `Bundle`).
pub(crate) struct Bundle<'a> {
    trust_domains: Vec<&'a str>,
}

impl<'a> Bundle<'a> {
    pub(crate) fn new(trust_domain: &'a str, aliases: &'a TrustDomainAliases) -> Bundle<'a> {
        let mut trust_domains = vec![trust_domain];
        trust_domains.extend(aliases.iter().filter(|a| *a != trust_domain));
        Bundle { trust_domains }
    }

    /// Is `td` (a trust domain written in a principal) the mesh's, an
    /// alias, or the `cluster.local` pointer? Lint's notion of "not
    /// foreign".
    pub(crate) fn covers(&self, td: &str) -> bool {
        td == CLUSTER_LOCAL || string_match(td, &self.trust_domains)
    }

    /// The principals one written value stands for.
    pub(crate) fn expand(&self, m: &StrMatch) -> Vec<StrMatch> {
        let written = m.to_string();
        let parts: Vec<&str> = written.split('/').collect();
        // Only `<td>/ns/<ns>/sa/<sa>` names a trust domain; `*/…` does not
        // enforce one.
        if parts.len() != 5 || parts[0] == "*" || !self.covers(parts[0]) {
            return vec![m.clone()];
        }
        let td = parts[0];
        let rest = &written[td.len()..];
        let mut out: Vec<StrMatch> = Vec::new();
        for t in &self.trust_domains {
            let value = if suffix_match(t, td) {
                // `*-td/…` already matches this trust domain: kept as is.
                m.clone()
            } else {
                match StrMatch::parse(&format!("{t}{rest}")) {
                    Ok(v) => v,
                    // Unreachable: `t` is a valid trust domain and `rest`
                    // came from a valid value.
                    Err(_) => continue,
                }
            };
            if !out.contains(&value) {
                out.push(value);
            }
        }
        out
    }

    fn expand_all(&self, values: &[StrMatch]) -> Vec<StrMatch> {
        let mut out = Vec::with_capacity(values.len());
        for v in values {
            for e in self.expand(v) {
                if !out.contains(&e) {
                    out.push(e);
                }
            }
        }
        out
    }

    /// `policy` with its principal values rewritten; the same `Arc` when
    /// nothing changes (the usual case: principals already in the mesh's
    /// trust domain and no alias).
    pub(crate) fn apply(&self, policy: &Arc<AuthorizationPolicy>) -> Arc<AuthorizationPolicy> {
        let mut changed = false;
        let mut rules = policy.rules.clone();
        for rule in &mut rules {
            for source in &mut rule.from {
                for list in [&mut source.principals, &mut source.not_principals] {
                    let expanded = self.expand_all(list);
                    if expanded != *list {
                        *list = expanded;
                        changed = true;
                    }
                }
            }
            for cond in &mut rule.when {
                if cond.key != ConditionKey::SourcePrincipal {
                    continue;
                }
                for values in [&mut cond.values, &mut cond.not_values] {
                    if let CondValues::Str(list) = values {
                        let expanded = self.expand_all(list);
                        if expanded != *list {
                            *list = expanded;
                            changed = true;
                        }
                    }
                }
            }
        }
        if changed {
            Arc::new(AuthorizationPolicy {
                rules,
                ..(**policy).clone()
            })
        } else {
            policy.clone()
        }
    }
}

/// Istio's `stringMatch`: `a` equals an entry, or either is a `prefix*` /
/// `*suffix` pattern matching the other, or the entry is `*`.
fn string_match(a: &str, list: &[&str]) -> bool {
    list.iter().any(|s| {
        a == *s
            || *s == "*"
            || prefix_match(a, s)
            || prefix_match(s, a)
            || suffix_match(a, s)
            || suffix_match(s, a)
    })
}

/// `pattern` is `prefix*` and `a` starts with `prefix`.
fn prefix_match(a: &str, pattern: &str) -> bool {
    pattern.strip_suffix('*').is_some_and(|p| a.starts_with(p))
}

/// `pattern` is `*suffix` and `a` ends with `suffix`.
fn suffix_match(a: &str, pattern: &str) -> bool {
    pattern.strip_prefix('*').is_some_and(|s| a.ends_with(s))
}

#[cfg(test)]
mod tests;
