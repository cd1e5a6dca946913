//! The policy source of the embedded control plane: a directory of YAML
//! files, polled for changes. A change is validated whole; an invalid set
//! is rejected (logged, counted) and the last good one stays in force.
//! Every accepted set gets a new, increasing version.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tracing::{error, info};
use ward_policy::{EvalOptions, PolicyError, PolicySet};

use crate::metrics::Metrics;

/// How often the directory is checked. Well under a second end to end.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// One YAML document of the accepted set, kept as written so proxies get
/// exactly what the operator wrote (and parse it with the same code).
#[derive(Debug, Clone)]
pub struct PolicyDoc {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub text: String,
}

/// An accepted policy set.
#[derive(Debug, Default)]
pub struct PolicySnapshot {
    pub version: u64,
    pub set: PolicySet,
    pub docs: Vec<PolicyDoc>,
    /// When it was accepted (for push latency).
    pub accepted_at: Option<std::time::Instant>,
}

impl PolicySnapshot {
    /// The documents a workload needs, as one multi-document YAML text:
    /// the AuthorizationPolicies that select it, and the PeerAuthentications
    /// of its namespace and of the root namespace.
    pub fn documents_for(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        options: &EvalOptions,
    ) -> String {
        let applies: Vec<_> = self
            .set
            .authorization_policies()
            .filter(|p| PolicySet::applies(p, namespace, labels, options))
            .map(|p| (p.id.namespace.to_string(), p.id.name.to_string()))
            .collect();
        let mut out = String::new();
        for doc in &self.docs {
            let wanted = match doc.kind {
                "AuthorizationPolicy" => applies
                    .iter()
                    .any(|(ns, name)| *ns == doc.namespace && *name == doc.name),
                _ => doc.namespace == namespace || doc.namespace == options.root_namespace,
            };
            if wanted {
                out.push_str("---\n");
                out.push_str(&doc.text);
                if !doc.text.ends_with('\n') {
                    out.push('\n');
                }
            }
        }
        out
    }
}

/// Loads and validates every `*.yaml`/`*.yml` file in `dir`.
pub fn load_dir(dir: &Path) -> Result<(PolicySet, Vec<PolicyDoc>), PolicyError> {
    let set = PolicySet::load_paths(&[dir.to_owned()])?;
    let mut docs = Vec::new();
    for file in yaml_files(dir) {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for chunk in split_documents(&text) {
            // Each chunk was valid as part of the whole; parse it alone to
            // learn which policies it holds.
            let label = file.display().to_string();
            let Ok(one) = PolicySet::parse_str(&label, &chunk) else {
                continue;
            };
            for info in one.policies() {
                docs.push(PolicyDoc {
                    kind: info.kind,
                    namespace: info.id.namespace.to_string(),
                    name: info.id.name.to_string(),
                    text: chunk.clone(),
                });
            }
        }
    }
    Ok((set, docs))
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Splits a multi-document YAML text at `---` separator lines.
fn split_documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line == "---" || line.starts_with("--- ") {
            docs.push(String::new());
            continue;
        }
        let current = docs.last_mut().expect("never empty");
        current.push_str(line);
        current.push('\n');
    }
    docs.into_iter()
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect()
}

/// A fingerprint of the directory's YAML files: names and contents.
fn fingerprint(dir: &Path) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for file in yaml_files(dir) {
        file.hash(&mut hasher);
        std::fs::read(&file).unwrap_or_default().hash(&mut hasher);
    }
    hasher.finish()
}

/// Versions increase across restarts too: milliseconds since the epoch,
/// or one more than the previous version if the clock went backwards.
fn next_version(previous: u64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    now.max(previous + 1)
}

pub struct PolicyStore {
    tx: watch::Sender<Arc<PolicySnapshot>>,
}

impl PolicyStore {
    /// Loads `dir` (an invalid set at start is an error: the control plane
    /// refuses to start rather than run without the operator's policies).
    /// Without a directory the set is empty and never changes.
    pub fn open(dir: Option<&Path>, metrics: &Metrics) -> anyhow::Result<Self> {
        let snapshot = match dir {
            Some(dir) => {
                let (set, docs) = load_dir(dir)
                    .map_err(|e| anyhow::anyhow!("policies in {}: {e}", dir.display()))?;
                metrics.policy_sets.with_label_values(&["accepted"]).inc();
                PolicySnapshot {
                    version: next_version(0),
                    set,
                    docs,
                    accepted_at: Some(std::time::Instant::now()),
                }
            }
            None => PolicySnapshot::default(),
        };
        metrics.policy_version.set(snapshot.version as i64);
        let (tx, _) = watch::channel(Arc::new(snapshot));
        Ok(PolicyStore { tx })
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<PolicySnapshot>> {
        self.tx.subscribe()
    }

    pub fn current(&self) -> Arc<PolicySnapshot> {
        self.tx.borrow().clone()
    }

    /// Reloads when the directory changes, until `shutdown`.
    pub async fn watch_dir(
        self: Arc<Self>,
        dir: PathBuf,
        metrics: Arc<Metrics>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut seen = fingerprint(&dir);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            let now = fingerprint(&dir);
            if now == seen {
                continue;
            }
            seen = now;
            self.reload(&dir, &metrics);
        }
    }

    /// Validates the directory and, if valid, publishes it as a new version.
    pub fn reload(&self, dir: &Path, metrics: &Metrics) -> bool {
        match load_dir(dir) {
            Ok((set, docs)) => {
                let version = next_version(self.current().version);
                let count = docs.len();
                self.tx.send_replace(Arc::new(PolicySnapshot {
                    version,
                    set,
                    docs,
                    accepted_at: Some(std::time::Instant::now()),
                }));
                metrics.policy_sets.with_label_values(&["accepted"]).inc();
                metrics.policy_version.set(version as i64);
                info!(version, documents = count, dir = %dir.display(), "policy set accepted");
                true
            }
            Err(err) => {
                metrics.policy_sets.with_label_values(&["rejected"]).inc();
                error!(dir = %dir.display(), error = %err, version_in_force = self.current().version, "policy set rejected; the previous set stays in force");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_split_at_separator_lines() {
        let text = "# header comment\n---\nkind: A\n---\n\n--- # trailing\nkind: B\nx: '---'\n";
        let docs = split_documents(text);
        assert_eq!(
            docs,
            vec!["kind: A\n".to_owned(), "kind: B\nx: '---'\n".to_owned()]
        );
    }
}
