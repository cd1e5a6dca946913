//! The watch stream: one long-lived `POST /v1/watch` per proxy, over mTLS.
//! The proxy's namespace comes from its certificate, its labels from the
//! request; it gets the policies that select it and the endpoint table,
//! first at once and then on every change, as newline-delimited JSON.
//! Connected proxies are registered as endpoints under the address their
//! stream comes from, so a mesh on one network needs no endpoint list.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info};
use ward_identity::SpiffeId;
use ward_policy::EvalOptions;

use crate::k8s::endpoints::EndpointSnapshot;
use crate::metrics::Metrics;
use crate::policy_store::PolicySnapshot;

/// `POST /v1/watch` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchRequest {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Register the stream's source address as this workload's endpoint
    /// (transparent mode, one pod address per workload).
    #[serde(default)]
    pub register: bool,
}

/// One line of the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchUpdate {
    /// Version of the policy set the documents come from.
    pub version: u64,
    /// The AuthorizationPolicy and PeerAuthentication documents for this
    /// workload, as multi-document YAML.
    pub policies: String,
    pub endpoints: Vec<EndpointEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EndpointEntry {
    /// `IP` (every port) or `IP:PORT`.
    pub address: String,
    pub spiffe_id: String,
}

/// The endpoint table: static entries, the meshed pods the Kubernetes
/// source knows, and every connected proxy.
pub struct Endpoints {
    static_entries: Vec<EndpointEntry>,
    kubernetes: Mutex<Vec<EndpointEntry>>,
    registered: Mutex<HashMap<IpAddr, (SpiffeId, u64)>>,
    changed: watch::Sender<u64>,
}

impl Endpoints {
    pub fn new(static_entries: Vec<EndpointEntry>) -> Self {
        Endpoints {
            static_entries,
            kubernetes: Mutex::new(Vec::new()),
            registered: Mutex::new(HashMap::new()),
            changed: watch::channel(0).0,
        }
    }

    /// Replaces the entries from the Kubernetes endpoint table.
    pub fn set_kubernetes(&self, snapshot: &EndpointSnapshot) {
        let entries = snapshot
            .endpoints
            .iter()
            .map(|(ip, e)| EndpointEntry {
                address: ip.to_string(),
                spiffe_id: e.spiffe_id.to_string(),
            })
            .collect();
        *self.kubernetes.lock().expect("not poisoned") = entries;
        self.changed.send_modify(|g| *g += 1);
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Registers `ip` for `id` until the returned guard drops. A newer
    /// registration of the same address wins; dropping an older one does
    /// not remove it.
    pub fn register(self: &Arc<Self>, ip: IpAddr, id: SpiffeId) -> Registration {
        let generation = self.changed.send_modify_and_get(|g| *g += 1);
        self.registered
            .lock()
            .expect("not poisoned")
            .insert(ip, (id, generation));
        Registration {
            endpoints: self.clone(),
            ip,
            generation,
        }
    }

    pub fn snapshot(&self) -> Vec<EndpointEntry> {
        let mut entries = self.static_entries.clone();
        entries.extend(
            self.kubernetes
                .lock()
                .expect("not poisoned")
                .iter()
                .cloned(),
        );
        entries.extend(self.registered.lock().expect("not poisoned").iter().map(
            |(ip, (id, _))| EndpointEntry {
                address: ip.to_string(),
                spiffe_id: id.to_string(),
            },
        ));
        entries.sort();
        // An address both registered and in the table is listed once.
        entries.dedup();
        entries
    }
}

trait SendModifyAndGet {
    fn send_modify_and_get(&self, f: impl FnOnce(&mut u64)) -> u64;
}

impl SendModifyAndGet for watch::Sender<u64> {
    fn send_modify_and_get(&self, f: impl FnOnce(&mut u64)) -> u64 {
        let mut value = 0;
        self.send_modify(|g| {
            f(g);
            value = *g;
        });
        value
    }
}

pub struct Registration {
    endpoints: Arc<Endpoints>,
    ip: IpAddr,
    generation: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut registered = self.endpoints.registered.lock().expect("not poisoned");
        if registered
            .get(&self.ip)
            .is_some_and(|(_, g)| *g == self.generation)
        {
            registered.remove(&self.ip);
            drop(registered);
            self.endpoints.changed.send_modify(|g| *g += 1);
        }
    }
}

/// Everything one stream needs.
pub struct WatchContext {
    pub id: SpiffeId,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub options: EvalOptions,
    pub policies: watch::Receiver<Arc<PolicySnapshot>>,
    /// True once the policy and endpoint sources have read their state.
    pub synced: watch::Receiver<bool>,
    pub endpoints: Arc<Endpoints>,
    pub registration: Option<Registration>,
    pub metrics: Arc<Metrics>,
    pub shutdown: watch::Receiver<bool>,
}

/// Feeds one proxy's stream until it goes away or the control plane stops.
pub async fn run_stream(mut ctx: WatchContext, tx: mpsc::Sender<Bytes>) {
    // Nothing is pushed before the sources have synced: an empty set from
    // a control plane that has not read the cluster's policies yet would
    // let everything through.
    tokio::select! {
        synced = ctx.synced.wait_for(|s| *s) => if synced.is_err() { return },
        _ = tx.closed() => return,
        _ = ctx.shutdown.wait_for(|stop| *stop) => return,
    }
    ctx.metrics.watch_streams.inc();
    info!(spiffe_id = %ctx.id, labels = ?ctx.labels, "proxy connected to the watch stream");
    let mut endpoint_changes = ctx.endpoints.subscribe();
    let mut last: Option<WatchUpdate> = None;
    loop {
        let snapshot = ctx.policies.borrow_and_update().clone();
        endpoint_changes.borrow_and_update();
        let update = WatchUpdate {
            version: snapshot.version,
            policies: snapshot.documents_for(&ctx.namespace, &ctx.labels, &ctx.options),
            endpoints: ctx.endpoints.snapshot(),
        };
        // Only what changed for this workload is pushed.
        let differs = last
            .as_ref()
            .is_none_or(|l| l.policies != update.policies || l.endpoints != update.endpoints);
        if differs {
            let mut line = serde_json::to_vec(&update).expect("serializable");
            line.push(b'\n');
            if tx.send(Bytes::from(line)).await.is_err() {
                break;
            }
            if let Some(accepted) = snapshot.accepted_at {
                ctx.metrics
                    .push_latency
                    .observe(accepted.elapsed().as_secs_f64());
            }
            debug!(spiffe_id = %ctx.id, version = update.version, "pushed update");
            last = Some(update);
        }
        tokio::select! {
            changed = ctx.policies.changed() => if changed.is_err() { break },
            changed = endpoint_changes.changed() => if changed.is_err() { break },
            _ = tx.closed() => break,
            _ = ctx.shutdown.wait_for(|stop| *stop) => break,
        }
    }
    ctx.registration.take();
    ctx.metrics.watch_streams.dec();
    info!(spiffe_id = %ctx.id, "proxy left the watch stream");
}
