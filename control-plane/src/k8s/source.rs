//! From kube-runtime watcher events to [`WatchEvent`]s.
//!
//! `kube::runtime::watcher` yields `Init`, `InitApply(obj)`, `InitDone`,
//! `Apply(obj)` and `Delete(obj)`; after a dropped watch (or a 410 Gone) it
//! relists, starting again at `Init`. [`WatcherAdapter`] buffers a relist
//! until `InitDone`, so a resync is applied atomically: anything missing
//! from it is gone.

use kube::runtime::watcher;
use serde_json::Value;

use super::WatchEvent;

/// The events of `kube::runtime::watcher::Event`, one for one.
#[derive(Debug, Clone, PartialEq)]
pub enum WatcherEvent<T> {
    Init,
    InitApply(T),
    InitDone,
    Apply(T),
    Delete(T),
}

impl<T> From<watcher::Event<T>> for WatcherEvent<T> {
    fn from(event: watcher::Event<T>) -> Self {
        match event {
            watcher::Event::Init => WatcherEvent::Init,
            watcher::Event::InitApply(obj) => WatcherEvent::InitApply(obj),
            watcher::Event::InitDone => WatcherEvent::InitDone,
            watcher::Event::Apply(obj) => WatcherEvent::Apply(obj),
            watcher::Event::Delete(obj) => WatcherEvent::Delete(obj),
        }
    }
}

impl<T> WatcherEvent<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> WatcherEvent<U> {
        match self {
            WatcherEvent::Init => WatcherEvent::Init,
            WatcherEvent::InitApply(obj) => WatcherEvent::InitApply(f(obj)),
            WatcherEvent::InitDone => WatcherEvent::InitDone,
            WatcherEvent::Apply(obj) => WatcherEvent::Apply(f(obj)),
            WatcherEvent::Delete(obj) => WatcherEvent::Delete(f(obj)),
        }
    }
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

/// Group and version of Ward's policy custom resources.
pub const POLICY_GROUP: &str = "security.ward.io";
pub const POLICY_VERSION: &str = "v1";
/// (kind, plural) of each policy custom resource.
pub const POLICY_KINDS: [(&str, &str); 2] = [
    ("AuthorizationPolicy", "authorizationpolicies"),
    ("PeerAuthentication", "peerauthentications"),
];

/// Group, version, kind and plural of the `Quarantine` custom resource
/// (cluster-scoped: `deploy/base/crds/quarantines.yaml`).
pub const QUARANTINE_GROUP: &str = "ward.io";
pub const QUARANTINE_VERSION: &str = "v1alpha1";
pub const QUARANTINE_KIND: &str = "Quarantine";
pub const QUARANTINE_PLURAL: &str = "quarantines";

/// The `Quarantine` resource, for a dynamic `Api`.
pub fn quarantine_resource() -> kube::api::ApiResource {
    kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk(QUARANTINE_GROUP, QUARANTINE_VERSION, QUARANTINE_KIND),
        QUARANTINE_PLURAL,
    )
}

/// (kind, namespace, name) of a custom resource.
pub type ResourceKey = (String, String, String);

/// The key of a Ward policy document, `None` for anything else.
pub fn policy_key(doc: &Value) -> Option<ResourceKey> {
    let group = doc.get("apiVersion")?.as_str()?.split('/').next()?;
    let kind = doc.get("kind")?.as_str()?;
    if group != POLICY_GROUP || !POLICY_KINDS.iter().any(|(k, _)| *k == kind) {
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
