//! Where watch events come from, behind one interface.
//!
//! [`EventSource`] is what the control plane consumes; implementations:
//! - [`ChannelSource`]: events pushed by another task (the kube-rs glue, tests);
//! - [`FileSource`]: custom resources from YAML/JSON files, delivered once
//!   as a [`WatchEvent::Restarted`] (for running without an API server);
//! - the kube-rs watcher: `kube_runtime::watcher` yields `Init`,
//!   `InitApply(obj)`, `InitDone`, `Apply(obj)`, `Delete(obj)`. kube/
//!   kube-runtime are not dependencies of this crate (compile cost); the
//!   glue is a `match` from those variants onto [`WatcherEvent`], and
//!   [`WatcherAdapter`] turns that stream into [`WatchEvent`]s, buffering
//!   a relist until `InitDone` so a resync is applied atomically.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::WatchEvent;

pub trait EventSource<T>: Send {
    /// The next event; `None` when the source has ended.
    fn next(&mut self) -> impl Future<Output = Option<WatchEvent<T>>> + Send;
}

/// Events sent by another task.
pub struct ChannelSource<T>(pub mpsc::Receiver<WatchEvent<T>>);

impl<T: Send> EventSource<T> for ChannelSource<T> {
    async fn next(&mut self) -> Option<WatchEvent<T>> {
        self.0.recv().await
    }
}

/// Feeds every event from `source` to `sink` until the source ends.
pub async fn drive<T, S: EventSource<T>>(mut source: S, mut sink: impl FnMut(WatchEvent<T>)) {
    while let Some(event) = source.next().await {
        sink(event);
    }
}

/// The events of `kube_runtime::watcher::Event`, one for one.
#[derive(Debug, Clone, PartialEq)]
pub enum WatcherEvent<T> {
    Init,
    InitApply(T),
    InitDone,
    Apply(T),
    Delete(T),
}

/// Turns a watcher's stream into [`WatchEvent`]s.
#[derive(Debug)]
pub struct WatcherAdapter<T> {
    relisting: Option<Vec<T>>,
}

impl<T> Default for WatcherAdapter<T> {
    fn default() -> Self {
        WatcherAdapter { relisting: None }
    }
}

impl<T> WatcherAdapter<T> {
    pub fn push(&mut self, event: WatcherEvent<T>) -> Option<WatchEvent<T>> {
        match event {
            WatcherEvent::Init => {
                self.relisting = Some(Vec::new());
                None
            }
            WatcherEvent::InitApply(obj) => {
                // An InitApply outside a relist is a plain apply.
                match &mut self.relisting {
                    Some(buffer) => {
                        buffer.push(obj);
                        None
                    }
                    None => Some(WatchEvent::Applied(obj)),
                }
            }
            WatcherEvent::InitDone => Some(WatchEvent::Restarted(
                self.relisting.take().unwrap_or_default(),
            )),
            WatcherEvent::Apply(obj) => Some(WatchEvent::Applied(obj)),
            WatcherEvent::Delete(obj) => Some(WatchEvent::Deleted(obj)),
        }
    }
}

/// Custom resources read from files (`.yaml`, `.yml` with several
/// documents, `.json`), delivered once as a relist.
pub struct FileSource {
    paths: Vec<PathBuf>,
    done: bool,
}

impl FileSource {
    /// A file, or every YAML/JSON file directly inside a directory.
    pub fn new(path: impl AsRef<Path>) -> std::io::Result<Self> {
        let path = path.as_ref();
        let mut paths = Vec::new();
        if path.is_dir() {
            for entry in std::fs::read_dir(path)? {
                let p = entry?.path();
                if matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                ) {
                    paths.push(p);
                }
            }
            paths.sort();
        } else {
            paths.push(path.to_owned());
        }
        Ok(FileSource { paths, done: false })
    }

    /// Every document in the files; `null` documents (empty `---`) skipped.
    pub fn load(&self) -> anyhow::Result<Vec<Value>> {
        let mut docs = Vec::new();
        for path in &self.paths {
            let text = std::fs::read_to_string(path)?;
            for doc in serde_yaml_ng::Deserializer::from_str(&text) {
                let value: Value = serde::Deserialize::deserialize(doc)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                if !value.is_null() {
                    docs.push(value);
                }
            }
        }
        Ok(docs)
    }
}

impl EventSource<Value> for FileSource {
    async fn next(&mut self) -> Option<WatchEvent<Value>> {
        if self.done {
            return None;
        }
        self.done = true;
        match self.load() {
            Ok(docs) => Some(WatchEvent::Restarted(docs)),
            Err(err) => {
                tracing::warn!(%err, "reading custom resources failed");
                None
            }
        }
    }
}

/// Group of Ward's policy custom resources.
pub const POLICY_GROUP: &str = "security.ward.io";
pub const POLICY_KINDS: [&str; 2] = ["AuthorizationPolicy", "PeerAuthentication"];

/// (kind, namespace, name) of a custom resource.
pub type ResourceKey = (String, String, String);

/// Raw `AuthorizationPolicy` and `PeerAuthentication` documents, for the
/// policy crate to parse; other kinds are ignored. Versioned like the
/// endpoint table; subscribers get the whole set on each change.
pub struct PolicyResources {
    docs: BTreeMap<ResourceKey, Value>,
    version: u64,
    publish: watch::Sender<(u64, Arc<BTreeMap<ResourceKey, Value>>)>,
}

impl Default for PolicyResources {
    fn default() -> Self {
        PolicyResources {
            docs: BTreeMap::new(),
            version: 0,
            publish: watch::channel((0, Arc::new(BTreeMap::new()))).0,
        }
    }
}

/// The key of a Ward policy document, `None` for anything else.
pub fn policy_key(doc: &Value) -> Option<ResourceKey> {
    let group = doc.get("apiVersion")?.as_str()?.split('/').next()?;
    let kind = doc.get("kind")?.as_str()?;
    if group != POLICY_GROUP || !POLICY_KINDS.contains(&kind) {
        return None;
    }
    let meta = doc.get("metadata")?;
    let name = meta.get("name")?.as_str()?;
    let namespace = meta
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    Some((kind.to_owned(), namespace.to_owned(), name.to_owned()))
}

impl PolicyResources {
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn docs(&self) -> &BTreeMap<ResourceKey, Value> {
        &self.docs
    }

    pub fn subscribe(&self) -> watch::Receiver<(u64, Arc<BTreeMap<ResourceKey, Value>>)> {
        self.publish.subscribe()
    }

    /// Folds one event; returns whether anything changed.
    pub fn apply(&mut self, event: WatchEvent<Value>) -> bool {
        let before = self.docs.clone();
        match event {
            WatchEvent::Applied(doc) => {
                if let Some(key) = policy_key(&doc) {
                    self.docs.insert(key, doc);
                }
            }
            WatchEvent::Deleted(doc) => {
                if let Some(key) = policy_key(&doc) {
                    self.docs.remove(&key);
                }
            }
            WatchEvent::Restarted(docs) => {
                self.docs = docs
                    .into_iter()
                    .filter_map(|d| Some((policy_key(&d)?, d)))
                    .collect();
            }
        }
        let changed = before != self.docs;
        if changed {
            self.version += 1;
            self.publish
                .send_replace((self.version, Arc::new(self.docs.clone())));
        }
        changed
    }
}
