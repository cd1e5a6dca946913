//! A loaded set of policies: loading, per-workload compilation and
//! PeerAuthentication resolution.

use crate::error::{ConfigError, PolicyError};
use crate::eval::index::{Category, Index};
use crate::eval::{EvalOptions, WorkloadPolicy};
use crate::model::*;
use crate::parse::{Parsed, parse_file};
use crate::trust_domain::{Bundle, TrustDomainAliases};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Every policy loaded from a set of files. Immutable; build a new one to
/// reload.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    authz: Vec<Arc<AuthorizationPolicy>>,
    peer: Vec<Arc<PeerAuthentication>>,
}

/// A policy, for metrics and listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyInfo<'a> {
    pub kind: &'static str,
    pub id: &'a PolicyRef,
    /// `ALLOW`/`DENY`/`AUDIT`, or the mTLS mode for PeerAuthentication.
    pub action: &'static str,
    pub dry_run: bool,
    /// Content hash of the document (hex): changes whenever it does.
    pub version: &'a str,
    pub origin: &'a Origin,
}

impl PolicySet {
    /// An empty set: everything is allowed, mTLS is STRICT.
    pub fn empty() -> PolicySet {
        PolicySet::default()
    }

    /// Parses one YAML text (one or more `---` documents); `file_label`
    /// names it in errors.
    pub fn parse_str(file_label: &str, yaml: &str) -> Result<PolicySet, PolicyError> {
        let parsed = parse_file(file_label, yaml).map_err(PolicyError::Invalid)?;
        let mut set = PolicySet::default();
        set.add(parsed);
        set.finish(Vec::new())
    }

    /// Loads files and directories. A directory contributes every `*.yaml`
    /// and `*.yml` file directly in it (not recursive), in name order; an
    /// empty directory contributes nothing. Any invalid document anywhere
    /// fails the whole load, reporting every error found.
    pub fn load_paths(paths: &[PathBuf]) -> Result<PolicySet, PolicyError> {
        let mut files = Vec::new();
        for path in paths {
            let meta = std::fs::metadata(path).map_err(|source| PolicyError::Io {
                path: path.clone(),
                source,
            })?;
            if meta.is_dir() {
                let mut found = Vec::new();
                let entries = std::fs::read_dir(path).map_err(|source| PolicyError::Io {
                    path: path.clone(),
                    source,
                })?;
                for entry in entries {
                    let entry = entry.map_err(|source| PolicyError::Io {
                        path: path.clone(),
                        source,
                    })?;
                    let p = entry.path();
                    let is_yaml = p
                        .extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| e == "yaml" || e == "yml");
                    if is_yaml && p.is_file() {
                        found.push(p);
                    }
                }
                found.sort();
                files.extend(found);
            } else {
                files.push(path.clone());
            }
        }
        let mut texts = Vec::with_capacity(files.len());
        for file in files {
            texts.push((file.display().to_string(), read(&file)?));
        }
        PolicySet::parse_texts(&texts)
    }

    /// Parses several YAML texts as one set, each `(label, text)` named by
    /// its label in errors (a file path, or the custom resource it came
    /// from). Any invalid document fails the whole set, reporting every
    /// error found; a policy defined twice is an error.
    pub fn parse_texts(texts: &[(String, String)]) -> Result<PolicySet, PolicyError> {
        let mut set = PolicySet::default();
        let mut errors = Vec::new();
        for (label, text) in texts {
            match parse_file(label, text) {
                Ok(parsed) => set.add(parsed),
                Err(e) => errors.extend(e),
            }
        }
        set.finish(errors)
    }

    fn add(&mut self, parsed: Parsed) {
        self.authz.extend(parsed.authz.into_iter().map(Arc::new));
        self.peer.extend(parsed.peer.into_iter().map(Arc::new));
    }

    /// Combines sets validated separately (each custom resource of a
    /// cluster, say) without parsing them again. A policy defined in two of
    /// them is an error, as in [`Self::parse_texts`].
    pub fn merge<'a>(
        sets: impl IntoIterator<Item = &'a PolicySet>,
    ) -> Result<PolicySet, PolicyError> {
        let mut merged = PolicySet::default();
        for set in sets {
            merged.authz.extend(set.authz.iter().cloned());
            merged.peer.extend(set.peer.iter().cloned());
        }
        merged.finish(Vec::new())
    }

    /// Sorts by name and reports every policy defined twice (after the
    /// `errors` already found). The sort is stable, so the first definition
    /// is the one named as first.
    fn finish(mut self, mut errors: Vec<ConfigError>) -> Result<PolicySet, PolicyError> {
        self.authz.sort_by(|a, b| a.id.cmp(&b.id));
        self.peer.sort_by(|a, b| a.id.cmp(&b.id));
        for pair in self.authz.windows(2) {
            if pair[0].id == pair[1].id {
                errors.push(duplicate(
                    "AuthorizationPolicy",
                    &pair[1].id,
                    &pair[0].origin,
                    &pair[1].origin,
                ));
            }
        }
        for pair in self.peer.windows(2) {
            if pair[0].id == pair[1].id {
                errors.push(duplicate(
                    "PeerAuthentication",
                    &pair[1].id,
                    &pair[0].origin,
                    &pair[1].origin,
                ));
            }
        }
        if errors.is_empty() {
            Ok(self)
        } else {
            Err(PolicyError::Invalid(errors))
        }
    }

    pub fn is_empty(&self) -> bool {
        self.authz.is_empty() && self.peer.is_empty()
    }

    /// AuthorizationPolicies, sorted by namespace and name.
    pub fn authorization_policies(&self) -> impl Iterator<Item = &AuthorizationPolicy> {
        self.authz.iter().map(|p| &**p)
    }

    /// PeerAuthentications, sorted by namespace and name.
    pub fn peer_authentications(&self) -> impl Iterator<Item = &PeerAuthentication> {
        self.peer.iter().map(|p| &**p)
    }

    /// Every policy with its kind, name and version, for metrics.
    pub fn policies(&self) -> impl Iterator<Item = PolicyInfo<'_>> {
        self.authz
            .iter()
            .map(|p| PolicyInfo {
                kind: "AuthorizationPolicy",
                id: &p.id,
                action: p.action.as_str(),
                dry_run: p.dry_run,
                version: &p.version,
                origin: &p.origin,
            })
            .chain(self.peer.iter().map(|p| PolicyInfo {
                kind: "PeerAuthentication",
                id: &p.id,
                action: p.mode.as_str(),
                dry_run: false,
                version: &p.version,
                origin: &p.origin,
            }))
    }

    /// Does this AuthorizationPolicy apply to the workload?
    pub fn applies(
        policy: &AuthorizationPolicy,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        options: &EvalOptions,
    ) -> bool {
        (*policy.id.namespace == *namespace || *policy.id.namespace == *options.root_namespace)
            && selector_matches(policy.selector.as_ref(), labels)
    }

    /// Compiles the policies that apply to one workload: those of its
    /// namespace whose selector matches its labels (no selector: all), and
    /// those of the root namespace likewise (mesh-wide). The mesh has no
    /// trust-domain alias (see [`Self::for_workload_with_aliases`]).
    pub fn for_workload(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        options: &EvalOptions,
    ) -> WorkloadPolicy {
        self.for_workload_with_aliases(namespace, labels, options, &TrustDomainAliases::default())
    }

    /// [`Self::for_workload`] in a mesh whose trust domain has `aliases`
    /// (Istio's `trustDomainAliases`): principals written for the trust
    /// domain, an alias or `cluster.local` match peers of all of them.
    pub fn for_workload_with_aliases(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        options: &EvalOptions,
        aliases: &TrustDomainAliases,
    ) -> WorkloadPolicy {
        let bundle = Bundle::new(&options.trust_domain, aliases);
        let mut deny = Vec::new();
        let mut allow = Vec::new();
        let mut audit = Vec::new();
        let mut dry_run = Vec::new();
        // Root-namespace policies first, then the workload's namespace.
        let mut seen = HashSet::new();
        let root_first = self
            .authz
            .iter()
            .filter(|p| *p.id.namespace == *options.root_namespace)
            .chain(
                self.authz
                    .iter()
                    .filter(|p| *p.id.namespace != *options.root_namespace),
            );
        for p in root_first {
            if !Self::applies(p, namespace, labels, options) || !seen.insert(p.id.clone()) {
                continue;
            }
            let list = if p.dry_run {
                &mut dry_run
            } else {
                match p.action {
                    Action::Deny => &mut deny,
                    Action::Allow => &mut allow,
                    Action::Audit => &mut audit,
                }
            };
            list.push(bundle.apply(p));
        }
        let index = Index::build([
            (Category::DryRun, dry_run.as_slice()),
            (Category::Audit, audit.as_slice()),
            (Category::Deny, deny.as_slice()),
            (Category::Allow, allow.as_slice()),
        ]);
        WorkloadPolicy {
            deny,
            allow,
            audit,
            dry_run,
            index,
        }
    }

    /// The PeerAuthentication mode for a workload's port: workload-level
    /// (selector) > namespace-level > mesh-level (root namespace, no
    /// selector) > STRICT; `portLevelMtls` of the workload-level policy
    /// overrides; UNSET inherits. When several policies tie, the first by
    /// name wins. Never returns `Unset`.
    pub fn mtls_mode(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        port: u16,
        options: &EvalOptions,
    ) -> MtlsMode {
        let mesh = self
            .peer
            .iter()
            .find(|p| *p.id.namespace == *options.root_namespace && p.selector.is_none());
        let ns = self
            .peer
            .iter()
            .find(|p| *p.id.namespace == *namespace && p.selector.is_none());
        let workload = self.peer.iter().find(|p| {
            *p.id.namespace == *namespace
                && p.selector.is_some()
                && selector_matches(p.selector.as_ref(), labels)
        });
        let mut mode = MtlsMode::Strict;
        let mut apply = |m: MtlsMode| {
            if m != MtlsMode::Unset {
                mode = m;
            }
        };
        if let Some(p) = mesh {
            apply(p.mode);
        }
        if let Some(p) = ns {
            apply(p.mode);
        }
        if let Some(p) = workload {
            apply(p.mode);
            if let Some(m) = p.port_level.get(&port) {
                apply(*m);
            }
        }
        mode
    }
}

fn read(path: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
        path: path.to_owned(),
        source,
    })
}

fn duplicate(kind: &str, id: &PolicyRef, first: &Origin, second: &Origin) -> ConfigError {
    ConfigError {
        file: second.file.to_string(),
        document: Some(second.document),
        field: Some("metadata.name".into()),
        line: second.line,
        column: None,
        reason: format!(
            "duplicate {kind} {id}: already defined in {} document {}",
            first.file, first.document
        ),
    }
}

#[cfg(test)]
mod tests;
