//! The Kubernetes source: the only code here that talks to the API server.
//!
//! Five kube-runtime watchers, each relisting by itself after a dropped
//! watch or a 410 Gone (with backoff while the API server is away):
//! - meshed Pods (label `security.ward.io/tlsMode=ward`) → the endpoint
//!   table → the endpoints of every watch stream;
//! - `AuthorizationPolicy` and `PeerAuthentication` (`security.ward.io/v1`)
//!   → the [`PolicyCatalog`] → the policy store, the same store and the
//!   same streams as the directory source;
//! - Services and EndpointSlices (those labelled
//!   `kubernetes.io/service-name`) → the [`ServiceCatalog`] → the Service
//!   addresses of the address registry.
//!
//! Nothing is distributed until all five initial lists are in (the store
//! is marked synced only then), so a control plane that has not read the
//! cluster's policies never hands out an empty, allow-everything set. Each
//! policy resource gets an `Accepted` condition in its `status`, written
//! only by the replica the [`Leadership`] names (every replica watches and
//! serves).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::stream::{self, Stream, StreamExt};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::reflector::store::Writer;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::WatchEvent;
use super::catalog::{FailClosed, PolicyCatalog, Verdict};
use super::endpoints::EndpointTable;
use super::leader::Leadership;
use super::source::{
    POLICY_GROUP, POLICY_KINDS, POLICY_VERSION, ResourceKey, WatcherAdapter, WatcherEvent,
};
use crate::discovery::Endpoints;
use crate::inject::{MESH_LABEL, MESH_LABEL_VALUE};
use crate::metrics::Metrics;
use crate::policy_store::{PolicySource, PolicyStore};
use crate::services::{SERVICE_NAME_LABEL, ServiceCatalog, ServiceChanges};
use ward_policy::PolicySet;

/// Field manager of the status patches of a sole writer (an elected one
/// names itself: [`super::leader::LeaseConfig::field_manager`]).
pub const FIELD_MANAGER: &str = "ward-control-plane";
/// Longest a status write may take (less when the writer's term ends
/// sooner).
const STATUS_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Policies and endpoints from the Kubernetes API.
pub struct KubernetesSource {
    pub client: kube::Client,
    /// The reflector store of meshed pods (attestation reads it).
    pub pods: Writer<Pod>,
    pub trust_domain: String,
    pub endpoints: Arc<Endpoints>,
    pub metrics: Arc<Metrics>,
    /// Whether this replica writes the policy statuses now.
    pub leadership: Leadership,
    /// The field manager of those writes.
    pub field_manager: String,
}

impl PolicySource for KubernetesSource {
    async fn run(self, store: Arc<PolicyStore>, mut shutdown: watch::Receiver<bool>) {
        let gate = SyncGate::new(store.clone());
        let KubernetesSource {
            client,
            pods,
            trust_domain,
            endpoints,
            metrics,
            leadership,
            field_manager,
        } = self;
        let writer = StatusWriter {
            client: client.clone(),
            metrics: metrics.clone(),
            leadership,
            field_manager,
        };
        tokio::select! {
            _ = watch_pods(&client, pods, trust_domain, &endpoints, &metrics, &gate) => {}
            _ = watch_policies(&client, writer, &store, &gate) => {}
            _ = watch_services(&client, &endpoints, &metrics, &gate) => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
    }
}

/// What the store waits for before it is synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Listed {
    Pods,
    Policies,
    /// Services and EndpointSlices, both.
    Services,
}

/// Marks the store synced once the pods, the policies and the Services
/// have listed.
struct SyncGate {
    store: Arc<PolicyStore>,
    pending: Mutex<BTreeSet<Listed>>,
}

impl SyncGate {
    fn new(store: Arc<PolicyStore>) -> Self {
        SyncGate {
            store,
            pending: Mutex::new(BTreeSet::from([
                Listed::Pods,
                Listed::Policies,
                Listed::Services,
            ])),
        }
    }

    fn done(&self, listed: Listed) {
        let mut pending = self.pending.lock().expect("not poisoned");
        pending.remove(&listed);
        if pending.is_empty() && !self.store.is_synced() {
            info!("Kubernetes sources synced: distributing policies, endpoints and Services");
            self.store.mark_synced();
        }
    }
}

async fn watch_pods(
    client: &kube::Client,
    store: Writer<Pod>,
    trust_domain: String,
    endpoints: &Endpoints,
    metrics: &Metrics,
    gate: &SyncGate,
) {
    let api: Api<Pod> = Api::all(client.clone());
    let config = watcher::Config::default().labels(&format!("{MESH_LABEL}={MESH_LABEL_VALUE}"));
    let mut table = EndpointTable::new(trust_domain);
    let mut adapter = WatcherAdapter::default();
    let mut events = std::pin::pin!(watcher(api, config).default_backoff().reflect(store));
    while let Some(batch) = next_batch(&mut events).await {
        let mut changed = std::collections::BTreeSet::new();
        let mut relisted = false;
        for event in batch {
            let event = match event {
                Ok(event) => event,
                Err(err) => {
                    watch_failed(metrics, "pods", &err);
                    continue;
                }
            };
            let Some(event) = adapter.push(event.into()) else {
                continue;
            };
            relisted |= matches!(event, WatchEvent::Restarted(_));
            let diff = table.apply(event);
            changed.extend(
                diff.added
                    .into_iter()
                    .chain(diff.updated)
                    .chain(diff.removed),
            );
        }
        // One publication per batch of the addresses that changed: only
        // the streams subscribed to them hear of it.
        if !changed.is_empty() {
            endpoints.apply_kubernetes(changed.into_iter().map(|ip| (ip, table.get(&ip).cloned())));
            debug!(
                endpoints = table.len(),
                version = table.version(),
                "endpoint table changed"
            );
        }
        if relisted {
            info!(endpoints = table.len(), "meshed pods listed");
            gate.done(Listed::Pods);
        }
    }
}

/// The next event and every other one already waiting (up to a bound), so
/// a burst is folded and published once.
pub(super) async fn next_batch<S: Stream + Unpin>(events: &mut S) -> Option<Vec<S::Item>> {
    const MAX_BATCH: usize = 1024;
    let first = events.next().await?;
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match events.next().now_or_never() {
            Some(Some(event)) => batch.push(event),
            _ => break,
        }
    }
    Some(batch)
}

/// An event of either watcher of [`watch_services`] (boxed: a Service
/// is large).
enum ServiceEvent {
    Service(Box<Result<watcher::Event<Service>, watcher::Error>>),
    Slice(Box<Result<watcher::Event<EndpointSlice>, watcher::Error>>),
}

/// Services and EndpointSlices into one [`ServiceCatalog`], on one task.
/// Nothing is published before both have listed (then the whole catalog at
/// once); after that, each batch of events publishes the Service addresses
/// it changed, and only their subscribers hear of it.
async fn watch_services(
    client: &kube::Client,
    endpoints: &Endpoints,
    metrics: &Metrics,
    gate: &SyncGate,
) {
    let services = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|event| ServiceEvent::Service(Box::new(event)))
    .boxed();
    // Slices that belong to no Service are of no use: not even listed.
    let slices = watcher(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default().labels(SERVICE_NAME_LABEL),
    )
    .default_backoff()
    .map(|event| ServiceEvent::Slice(Box::new(event)))
    .boxed();
    let mut events = stream::select(services, slices);
    let mut catalog = ServiceCatalog::default();
    let mut service_adapter = WatcherAdapter::default();
    let mut slice_adapter = WatcherAdapter::default();
    let (mut services_listed, mut slices_listed, mut published) = (false, false, false);
    while let Some(batch) = next_batch(&mut events).await {
        let mut changes = ServiceChanges::new();
        for event in batch {
            match event {
                ServiceEvent::Service(event) => match *event {
                    Err(err) => watch_failed(metrics, "services", &err),
                    Ok(event) => {
                        if let Some(event) = service_adapter.push(event.into()) {
                            services_listed |= matches!(event, WatchEvent::Restarted(_));
                            changes.extend(catalog.apply_service(event));
                        }
                    }
                },
                ServiceEvent::Slice(event) => match *event {
                    Err(err) => watch_failed(metrics, "endpointslices", &err),
                    Ok(event) => {
                        if let Some(event) = slice_adapter.push(event.into()) {
                            slices_listed |= matches!(event, WatchEvent::Restarted(_));
                            changes.extend(catalog.apply_slice(event));
                        }
                    }
                },
            }
        }
        if !(services_listed && slices_listed) {
            continue;
        }
        if !published {
            published = true;
            let snapshot = catalog.snapshot();
            info!(
                services = catalog.service_count(),
                addresses = snapshot.len(),
                "Services and EndpointSlices listed"
            );
            endpoints.replace_services(snapshot);
            gate.done(Listed::Services);
        } else if !changes.is_empty() {
            debug!(addresses = changes.len(), "Service addresses changed");
            endpoints.apply_services(changes);
        }
    }
}

/// One watched policy kind.
struct PolicyKind {
    kind: &'static str,
    resource: ApiResource,
    catalog: PolicyCatalog,
    adapter: WatcherAdapter<Value>,
    listed: bool,
    /// The verdict last written to each resource's status, so a failing
    /// patch is not retried on every event (only when the verdict changes,
    /// or after a relist).
    written: BTreeMap<ResourceKey, Verdict>,
}

/// Writes policy statuses when this replica is the writer.
struct StatusWriter {
    client: kube::Client,
    metrics: Arc<Metrics>,
    leadership: Leadership,
    field_manager: String,
}

async fn watch_policies(
    client: &kube::Client,
    mut writer: StatusWriter,
    store: &PolicyStore,
    gate: &SyncGate,
) {
    let metrics = writer.metrics.clone();
    let mut kinds: Vec<PolicyKind> = POLICY_KINDS
        .iter()
        .map(|(kind, plural)| PolicyKind {
            kind,
            resource: ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk(POLICY_GROUP, POLICY_VERSION, kind),
                plural,
            ),
            catalog: PolicyCatalog::default(),
            adapter: WatcherAdapter::default(),
            listed: false,
            written: BTreeMap::new(),
        })
        .collect();
    let streams = kinds.iter().enumerate().map(|(index, k)| {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &k.resource);
        watcher(api, watcher::Config::default())
            .default_backoff()
            .map(move |event| (index, event))
            .boxed()
    });
    let mut events = stream::select_all(streams);
    let mut dirty = true;
    loop {
        let batch = tokio::select! {
            batch = next_batch(&mut events) => match batch {
                Some(batch) => batch,
                None => break,
            },
            // Became (or stopped being) the writer: every status is
            // considered again, so what changed while nobody wrote (a
            // handover) is written now.
            () = writer.leadership.changed() => {
                for kind in &mut kinds {
                    kind.written.clear();
                }
                Vec::new()
            }
        };
        for (index, event) in batch {
            let kind = &mut kinds[index];
            let event = match event {
                Ok(event) => WatcherEvent::from(event).map(|obj| to_document(obj, &kind.resource)),
                Err(err) => {
                    watch_failed(&metrics, kind.kind, &err);
                    continue;
                }
            };
            let Some(event) = kind.adapter.push(event) else {
                continue;
            };
            if matches!(event, WatchEvent::Restarted(_)) {
                kind.listed = true;
                kind.written.clear();
            }
            dirty |= kind.catalog.apply(event);
        }
        // A partial set (one kind listed, not the other) is never offered.
        if dirty && kinds.iter().all(|k| k.listed) {
            dirty = false;
            publish(&kinds, store);
            gate.done(Listed::Policies);
        }
        // Statuses after the policies are out: a slow API server delays
        // the reports, not the enforcement.
        for kind in &mut kinds {
            let (accepted, rejected) = kind.catalog.counts();
            for (state, count) in [("accepted", accepted), ("rejected", rejected)] {
                metrics
                    .policy_resources
                    .with_label_values(&[kind.kind, state])
                    .set(count as i64);
            }
            let fail_closed = kind.catalog.fail_closed_counts();
            for effect in FailClosed::ALL {
                let count = fail_closed.get(&effect).copied().unwrap_or(0);
                metrics
                    .policies_fail_closed
                    .with_label_values(&[kind.kind, effect.as_str()])
                    .set(count as i64);
            }
            writer.report(kind).await;
        }
    }
}

/// Each resource was parsed once when it changed; the set is their merge.
/// Keys are unique, so the merge cannot fail; if it did, the previous set
/// would stay in force.
fn publish(kinds: &[PolicyKind], store: &PolicyStore) {
    let parts: Vec<_> = kinds.iter().flat_map(|k| k.catalog.in_force()).collect();
    match PolicySet::merge(parts.iter().map(|(_, set)| *set)) {
        Ok(set) => {
            let docs = parts.iter().map(|(doc, _)| (*doc).clone()).collect();
            store.publish("kubernetes", set, docs);
        }
        Err(err) => store.reject("kubernetes", &err),
    }
}

impl StatusWriter {
    /// Writes the `Accepted` condition of every resource whose status does
    /// not say it yet, while this replica is the writer: each write needs
    /// a permit and ends (or is abandoned) within the writer's term. A
    /// failure is logged and retried when the verdict changes, after a
    /// relist, or when the writer changes.
    async fn report(&self, kind: &mut PolicyKind) {
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        for (key, verdict) in kind.catalog.unreported() {
            if kind.written.get(&key) == Some(&verdict) {
                continue;
            }
            // Not the writer: nothing is written (nor marked written).
            let Some(permit) = self.leadership.permit() else {
                return;
            };
            let (_, namespace, name) = &key;
            if let Some(reason) = &verdict.rejected {
                warn!(kind = kind.kind, %namespace, %name, generation = verdict.generation, error = %reason, "policy resource rejected");
            }
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), namespace, &kind.resource);
            let patch = Patch::Merge(json!({ "status": verdict.status(&now) }));
            let params = PatchParams::apply(&self.field_manager);
            let write = api.patch_status(name, &params, &patch);
            let deadline = permit.remaining().min(STATUS_WRITE_TIMEOUT);
            let result = match tokio::time::timeout(deadline, write).await {
                Ok(Ok(_)) => "ok",
                Ok(Err(err)) => {
                    warn!(kind = kind.kind, %namespace, %name, error = %err, "writing the policy status failed");
                    "failed"
                }
                Err(_) => {
                    warn!(kind = kind.kind, %namespace, %name, timeout = ?deadline, "writing the policy status timed out");
                    "failed"
                }
            };
            drop(permit);
            self.metrics
                .status_updates
                .with_label_values(&[result])
                .inc();
            kind.written.insert(key, verdict);
        }
    }
}

/// The object as a policy document, `apiVersion` and `kind` included (list
/// items come without them).
pub(super) fn to_document(object: DynamicObject, resource: &ApiResource) -> Value {
    let mut value = serde_json::to_value(object).unwrap_or(Value::Null);
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), json!(resource.api_version));
        map.insert("kind".into(), json!(resource.kind));
    }
    value
}

pub(super) fn watch_failed(metrics: &Metrics, resource: &str, err: &watcher::Error) {
    metrics
        .kubernetes_watch_errors
        .with_label_values(&[resource])
        .inc();
    warn!(resource, error = %err, "Kubernetes watch failed; retrying with backoff, the last known state stays in force");
}
