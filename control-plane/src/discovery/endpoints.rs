//! The endpoint registry: every meshed address the control plane knows
//! (static entries, meshed pods from Kubernetes, registered workloads), and
//! which discovery streams subscribed to which address. A change to an
//! address reaches only the streams that subscribed to it: the cost of a
//! pod event does not grow with the mesh or with the number of sidecars.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use ward_api::discovery::{EndpointBody, Resource};
use ward_identity::SpiffeId;

use crate::k8s::endpoints::Endpoint;

/// A static entry (`--endpoint`): `IP` (every port) or `IP:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointEntry {
    pub address: String,
    pub spiffe_id: String,
}

/// Where a stream learns which of its addresses changed.
#[derive(Default)]
pub struct Inbox {
    dirty: Mutex<BTreeSet<IpAddr>>,
    pub notify: Notify,
}

impl Inbox {
    pub fn mark(&self, ip: IpAddr) {
        self.dirty.lock().expect("not poisoned").insert(ip);
        self.notify.notify_one();
    }

    pub fn take(&self) -> BTreeSet<IpAddr> {
        std::mem::take(&mut *self.dirty.lock().expect("not poisoned"))
    }
}

#[derive(Default)]
struct Inner {
    static_entries: HashMap<IpAddr, EndpointBody>,
    kubernetes: HashMap<IpAddr, EndpointBody>,
    /// Address → (body, registration generation).
    registered: HashMap<IpAddr, (EndpointBody, u64)>,
    subscribers: HashMap<IpAddr, BTreeMap<u64, Arc<Inbox>>>,
    next_generation: u64,
}

impl Inner {
    fn changed(&self, ip: IpAddr) {
        for inbox in self
            .subscribers
            .get(&ip)
            .into_iter()
            .flat_map(|s| s.values())
        {
            inbox.mark(ip);
        }
    }
}

pub struct Endpoints {
    inner: Mutex<Inner>,
}

impl Endpoints {
    /// The registry with the static entries; a bad entry is an error.
    pub fn new(static_entries: &[EndpointEntry]) -> anyhow::Result<Self> {
        let mut entries: HashMap<IpAddr, EndpointBody> = HashMap::new();
        for entry in static_entries {
            SpiffeId::parse(&entry.spiffe_id).map_err(|e| {
                anyhow::anyhow!("endpoint {}: {:?}: {e}", entry.address, entry.spiffe_id)
            })?;
            if let Ok(addr) = entry.address.parse::<SocketAddr>() {
                let body = entries.entry(addr.ip()).or_default();
                body.ports.insert(addr.port(), entry.spiffe_id.clone());
            } else if let Ok(ip) = entry.address.parse::<IpAddr>() {
                entries.entry(ip).or_default().spiffe_id = Some(entry.spiffe_id.clone());
            } else {
                anyhow::bail!("endpoint {:?} is neither IP nor IP:PORT", entry.address);
            }
        }
        Ok(Endpoints {
            inner: Mutex::new(Inner {
                static_entries: entries,
                ..Default::default()
            }),
        })
    }

    /// The address as the mesh knows it now: a static entry wins over a
    /// pod, a pod over a registration. `None`: not meshed.
    pub fn resource(&self, ip: IpAddr) -> Option<Resource> {
        let inner = self.inner.lock().expect("not poisoned");
        let body = inner
            .static_entries
            .get(&ip)
            .or_else(|| inner.kubernetes.get(&ip))
            .or_else(|| inner.registered.get(&ip).map(|(b, _)| b))?;
        Some(Resource::new(ip.to_string(), body))
    }

    pub fn len(&self) -> usize {
        let inner = self.inner.lock().expect("not poisoned");
        let mut ips: BTreeSet<&IpAddr> = inner.static_entries.keys().collect();
        ips.extend(inner.kubernetes.keys());
        ips.extend(inner.registered.keys());
        ips.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies what changed in the Kubernetes endpoint table: each address
    /// with its endpoint now (`None`: gone). Only subscribers of these
    /// addresses hear of it.
    pub fn apply_kubernetes(&self, changes: impl IntoIterator<Item = (IpAddr, Option<Endpoint>)>) {
        let mut inner = self.inner.lock().expect("not poisoned");
        for (ip, endpoint) in changes {
            let changed = match endpoint {
                Some(e) => {
                    let body = kubernetes_body(&e);
                    inner.kubernetes.insert(ip, body.clone()) != Some(body)
                }
                None => inner.kubernetes.remove(&ip).is_some(),
            };
            if changed {
                inner.changed(ip);
            }
        }
    }

    /// Registers `ip` for `id` until the returned guard drops. A newer
    /// registration of the same address wins; dropping an older one does
    /// not remove it.
    pub fn register(
        self: &Arc<Self>,
        ip: IpAddr,
        id: &SpiffeId,
        labels: BTreeMap<String, String>,
    ) -> Registration {
        let mut inner = self.inner.lock().expect("not poisoned");
        inner.next_generation += 1;
        let generation = inner.next_generation;
        let body = EndpointBody {
            spiffe_id: Some(id.to_string()),
            labels,
            ..Default::default()
        };
        inner.registered.insert(ip, (body, generation));
        inner.changed(ip);
        Registration {
            endpoints: self.clone(),
            ip,
            generation,
        }
    }

    /// `stream` wants to hear of changes to `ip` in `inbox`.
    pub fn subscribe(&self, ip: IpAddr, stream: u64, inbox: &Arc<Inbox>) {
        let mut inner = self.inner.lock().expect("not poisoned");
        inner
            .subscribers
            .entry(ip)
            .or_default()
            .insert(stream, inbox.clone());
    }

    pub fn unsubscribe(&self, ips: impl IntoIterator<Item = IpAddr>, stream: u64) {
        let mut inner = self.inner.lock().expect("not poisoned");
        for ip in ips {
            if let Some(subs) = inner.subscribers.get_mut(&ip) {
                subs.remove(&stream);
                if subs.is_empty() {
                    inner.subscribers.remove(&ip);
                }
            }
        }
    }

    /// The Kubernetes pod at `ip`: (`namespace/pod`, labels).
    pub fn kubernetes_pod(&self, ip: IpAddr) -> Option<(String, BTreeMap<String, String>)> {
        let inner = self.inner.lock().expect("not poisoned");
        let body = inner.kubernetes.get(&ip)?;
        Some((body.workload.clone()?, body.labels.clone()))
    }

    /// How many streams subscribe to `ip` (tests and the scale benchmark).
    pub fn subscriber_count(&self, ip: IpAddr) -> usize {
        let inner = self.inner.lock().expect("not poisoned");
        inner.subscribers.get(&ip).map_or(0, BTreeMap::len)
    }
}

fn kubernetes_body(e: &Endpoint) -> EndpointBody {
    EndpointBody {
        spiffe_id: Some(e.spiffe_id.to_string()),
        ports: BTreeMap::new(),
        workload: Some(format!("{}/{}", e.namespace, e.pod_name)),
        labels: e.labels.clone(),
    }
}

pub struct Registration {
    endpoints: Arc<Endpoints>,
    ip: IpAddr,
    generation: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut inner = self.endpoints.inner.lock().expect("not poisoned");
        if inner
            .registered
            .get(&self.ip)
            .is_some_and(|(_, g)| *g == self.generation)
        {
            inner.registered.remove(&self.ip);
            inner.changed(self.ip);
        }
    }
}
