//! The policy store and its sources.
//!
//! Sources ([`PolicySource`]) say what the policy documents are now: a
//! directory of YAML files ([`DirSource`], watched with inotify) or the Kubernetes custom
//! resources ([`crate::k8s::kube_sources`]). The store validates each offer
//! whole; an invalid offer is rejected (logged, counted) and the last good
//! set stays in force. Every accepted set gets a new, increasing version,
//! which the discovery streams push to the sidecars.

use std::future::Future;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tracing::{error, info};
use ward_api::discovery::{PolicyBody, Resource};
use ward_policy::{PolicyError, PolicySet};

use crate::metrics::Metrics;

/// After a change event, how long the directory must stay quiet before it
/// is read (an editor or `kubectl cp` writes in several steps).
pub const SETTLE: Duration = Duration::from_millis(15);
/// A full re-check even without events, for file systems where inotify
/// says nothing (network mounts).
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(10);

/// One YAML document of the accepted set, kept as written so proxies get
/// exactly what the operator wrote (and parse it with the same code).
#[derive(Debug, Clone)]
pub struct PolicyDoc {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub text: String,
}

impl PolicyDoc {
    /// The document as a discovery resource, named `<kind>/<ns>/<name>`.
    pub fn resource(&self) -> Resource {
        let body = PolicyBody {
            kind: self.kind.to_owned(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            yaml: self.text.clone(),
        };
        Resource::new(body.resource_name(), &body)
    }
}

/// An accepted policy set.
#[derive(Debug, Default)]
pub struct PolicySnapshot {
    pub version: u64,
    pub set: PolicySet,
    pub docs: Vec<PolicyDoc>,
    /// `docs` as discovery resources, in the same order.
    pub resources: Vec<Resource>,
    /// When it was accepted (for push latency).
    pub accepted_at: Option<std::time::Instant>,
}

/// One text a source offers: a policy file, or one custom resource
/// rendered as YAML. The label names it in errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceText {
    pub label: String,
    pub text: String,
}

/// Where policies come from: the one interface the file and Kubernetes
/// sources sit behind. A source runs until `shutdown`, offering each new
/// set of documents to the store; validation, versioning and publication
/// are the store's.
pub trait PolicySource: Send + 'static {
    fn run(
        self,
        store: Arc<PolicyStore>,
        shutdown: watch::Receiver<bool>,
    ) -> impl Future<Output = ()> + Send;
}

/// Validates `texts` as one set and splits it into per-policy documents.
pub fn load_texts(texts: &[SourceText]) -> Result<(PolicySet, Vec<PolicyDoc>), PolicyError> {
    let pairs: Vec<(String, String)> = texts
        .iter()
        .map(|t| (t.label.clone(), t.text.clone()))
        .collect();
    let set = PolicySet::parse_texts(&pairs)?;
    let mut docs = Vec::new();
    for source in texts {
        for chunk in split_documents(&source.text) {
            // Each chunk was valid as part of the whole; parse it alone to
            // learn which policies it holds.
            let Ok(one) = PolicySet::parse_str(&source.label, &chunk) else {
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
    synced: watch::Sender<bool>,
    metrics: Arc<Metrics>,
}

impl PolicyStore {
    /// An empty store (version 0: everything allowed, mTLS STRICT) until a
    /// source offers a set. `synced`: whether version 0 is the truth (no
    /// source, or a source that offers at start); otherwise nothing is
    /// distributed until the source calls [`Self::mark_synced`].
    pub fn new(metrics: Arc<Metrics>, synced: bool) -> Self {
        metrics.policy_version.set(0);
        let (tx, _) = watch::channel(Arc::new(PolicySnapshot::default()));
        PolicyStore {
            tx,
            synced: watch::channel(synced).0,
            metrics,
        }
    }

    /// The source has offered the state it started with.
    pub fn mark_synced(&self) {
        self.synced
            .send_if_modified(|s| !std::mem::replace(s, true));
    }

    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    pub fn subscribe_synced(&self) -> watch::Receiver<bool> {
        self.synced.subscribe()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<PolicySnapshot>> {
        self.tx.subscribe()
    }

    pub fn current(&self) -> Arc<PolicySnapshot> {
        self.tx.borrow().clone()
    }

    /// Validates `texts` whole and, if valid, publishes them as a new
    /// version (returned). Invalid: nothing changes, the error is logged,
    /// counted and returned.
    pub fn offer(&self, source: &str, texts: &[SourceText]) -> Result<u64, PolicyError> {
        match load_texts(texts) {
            Ok((set, docs)) => Ok(self.publish(source, set, docs)),
            Err(err) => {
                self.reject(source, &err);
                Err(err)
            }
        }
    }

    /// Publishes a set the source has validated (parsed and merged) as a
    /// new version.
    pub fn publish(&self, source: &str, set: PolicySet, docs: Vec<PolicyDoc>) -> u64 {
        let version = next_version(self.current().version);
        let count = docs.len();
        let resources = docs.iter().map(PolicyDoc::resource).collect();
        self.tx.send_replace(Arc::new(PolicySnapshot {
            version,
            set,
            docs,
            resources,
            accepted_at: Some(std::time::Instant::now()),
        }));
        self.metrics
            .policy_sets
            .with_label_values(&["accepted"])
            .inc();
        self.metrics.policy_version.set(version as i64);
        info!(version, documents = count, source, "policy set accepted");
        version
    }

    /// Counts and logs a set the source found invalid; nothing changes.
    pub fn reject(&self, source: &str, err: &PolicyError) {
        self.metrics
            .policy_sets
            .with_label_values(&["rejected"])
            .inc();
        error!(source, error = %err, version_in_force = self.current().version, "policy set rejected; the previous set stays in force");
    }
}

/// Policies from a directory: every `*.yaml`/`*.yml` file directly in it,
/// re-read when inotify reports a change (and every [`RESCAN_INTERVAL`]),
/// and offered whole when any changed.
pub struct DirSource {
    dir: PathBuf,
    seen: u64,
}

impl DirSource {
    /// Offers the directory's current contents. An invalid set at start is
    /// an error: the control plane refuses to start rather than run
    /// without the operator's policies.
    pub fn open(dir: PathBuf, store: &PolicyStore) -> anyhow::Result<Self> {
        let seen = fingerprint(&dir);
        let texts = read_dir_texts(&dir)
            .map_err(|e| anyhow::anyhow!("policies in {}: {e}", dir.display()))?;
        store
            .offer(&dir.display().to_string(), &texts)
            .map_err(|e| anyhow::anyhow!("policies in {}: {e}", dir.display()))?;
        Ok(DirSource { dir, seen })
    }

    /// Offers the directory again if it changed since the last look.
    pub fn poll(&mut self, store: &PolicyStore) {
        let now = fingerprint(&self.dir);
        if now == self.seen {
            return;
        }
        self.seen = now;
        let label = self.dir.display().to_string();
        match read_dir_texts(&self.dir) {
            Ok(texts) => {
                let _ = store.offer(&label, &texts);
            }
            Err(err) => {
                error!(dir = %label, error = %err, "reading the policy directory failed; the previous set stays in force")
            }
        }
    }
}

impl PolicySource for DirSource {
    async fn run(mut self, store: Arc<PolicyStore>, mut shutdown: watch::Receiver<bool>) {
        let (tx, mut events) = tokio::sync::mpsc::channel::<()>(1);
        // Kept alive for the loop: dropping the watcher stops the events.
        let _watcher = match watch_dir(&self.dir, tx) {
            Ok(w) => Some(w),
            Err(err) => {
                error!(dir = %self.dir.display(), error = %err, interval = ?RESCAN_INTERVAL, "cannot watch the policy directory with inotify; re-reading it periodically instead");
                None
            }
        };
        loop {
            let event = tokio::select! {
                event = events.recv() => event.is_some(),
                _ = tokio::time::sleep(RESCAN_INTERVAL) => false,
                _ = shutdown.wait_for(|stop| *stop) => return,
            };
            if event {
                // Let a burst of writes finish, then read once.
                while let Ok(Some(())) = tokio::time::timeout(SETTLE, events.recv()).await {}
            }
            self.poll(&store);
        }
    }
}

/// Signals `tx` on every change inside `dir` (not recursive: ConfigMap
/// volumes swap a `..data` symlink in the directory itself).
fn watch_dir(
    dir: &Path,
    tx: tokio::sync::mpsc::Sender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

fn read_dir_texts(dir: &Path) -> std::io::Result<Vec<SourceText>> {
    if !dir.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "not a directory",
        ));
    }
    yaml_files(dir)
        .into_iter()
        .map(|file| {
            Ok(SourceText {
                text: std::fs::read_to_string(&file)?,
                label: file.display().to_string(),
            })
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
