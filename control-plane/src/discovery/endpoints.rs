//! The address registry: every meshed address the control plane knows
//! (static entries, meshed pods from Kubernetes, registered workloads),
//! every Service address (from Kubernetes or the directory) with its
//! endpoints, and which discovery streams subscribed to which address. A
//! change to an address reaches only the streams that subscribed to it
//! (and a pod's change, the subscribers of the Services it backs): the cost
//! of an event does not grow with the mesh or with the number of sidecars.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use ward_api::discovery::{EndpointBody, Resource, ResourceType, ServiceBody};
use ward_identity::SpiffeId;

use crate::k8s::endpoints::Endpoint;

/// A static entry (`--endpoint`): `IP` (every port) or `IP:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointEntry {
    pub address: String,
    pub spiffe_id: String,
}

/// Where a stream learns which of its addresses changed, by type.
#[derive(Default)]
pub struct Inbox {
    dirty: Mutex<BTreeSet<(ResourceType, IpAddr)>>,
    pub notify: Notify,
}

impl Inbox {
    pub fn mark(&self, resource_type: ResourceType, ip: IpAddr) {
        self.dirty
            .lock()
            .expect("not poisoned")
            .insert((resource_type, ip));
        self.notify.notify_one();
    }

    /// The changed addresses of `resource_type`; others stay marked.
    pub fn take(&self, resource_type: ResourceType) -> BTreeSet<IpAddr> {
        let mut dirty = self.dirty.lock().expect("not poisoned");
        let (taken, kept) = std::mem::take(&mut *dirty)
            .into_iter()
            .partition::<BTreeSet<_>, _>(|(t, _)| *t == resource_type);
        *dirty = kept;
        taken.into_iter().map(|(_, ip)| ip).collect()
    }
}

type Subscribers = HashMap<IpAddr, BTreeMap<u64, Arc<Inbox>>>;

#[derive(Default)]
struct Inner {
    static_entries: HashMap<IpAddr, EndpointBody>,
    kubernetes: HashMap<IpAddr, EndpointBody>,
    /// Address → (body, registration generation).
    registered: HashMap<IpAddr, (EndpointBody, u64)>,
    /// Addresses whose registration ended, with when: a sidecar that died
    /// still owns its address, so clients keep demanding its identity
    /// (and fail over) instead of sending it plaintext.
    departed: HashMap<IpAddr, (EndpointBody, std::time::Instant)>,
    /// Service address → its Service, endpoint identities not filled in.
    services: HashMap<IpAddr, ServiceBody>,
    /// Endpoint IP → the Service addresses it backs.
    members: HashMap<IpAddr, BTreeSet<IpAddr>>,
    subscribers: Subscribers,
    service_subscribers: Subscribers,
    next_generation: u64,
}

/// How long the address of a sidecar whose registration ended stays its
/// own (a restart re-registers well within it).
pub const DEPARTED_TTL: std::time::Duration = std::time::Duration::from_secs(3600);
/// Most departed registrations remembered.
pub const MAX_DEPARTED: usize = 65_536;

fn notify(subscribers: &Subscribers, resource_type: ResourceType, ip: IpAddr) {
    for inbox in subscribers.get(&ip).into_iter().flat_map(|s| s.values()) {
        inbox.mark(resource_type, ip);
    }
}

impl Inner {
    /// The workload at `ip` changed: its subscribers hear of it, and so do
    /// the subscribers of every Service it backs (its identity is in them).
    fn changed(&self, ip: IpAddr) {
        notify(&self.subscribers, ResourceType::Endpoint, ip);
        for service_ip in self.members.get(&ip).into_iter().flatten() {
            notify(
                &self.service_subscribers,
                ResourceType::Service,
                *service_ip,
            );
        }
    }

    fn workload(&self, ip: IpAddr) -> Option<&EndpointBody> {
        self.static_entries
            .get(&ip)
            .or_else(|| self.kubernetes.get(&ip))
            .or_else(|| self.registered.get(&ip).map(|(b, _)| b))
            .or_else(|| self.departed.get(&ip).map(|(b, _)| b))
    }

    /// Keeps a departed registration for [`DEPARTED_TTL`], at most
    /// [`MAX_DEPARTED`] of them (the oldest go first).
    fn depart(&mut self, ip: IpAddr, body: EndpointBody) {
        let now = std::time::Instant::now();
        self.departed
            .retain(|_, (_, at)| now.duration_since(*at) < DEPARTED_TTL);
        if self.departed.len() >= MAX_DEPARTED
            && let Some(oldest) = self
                .departed
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(ip, _)| *ip)
        {
            self.departed.remove(&oldest);
        }
        self.departed.insert(ip, (body, now));
    }

    fn set_service(&mut self, ip: IpAddr, body: Option<ServiceBody>) {
        if self.services.get(&ip) == body.as_ref() {
            return;
        }
        if let Some(old) = self.services.remove(&ip) {
            for member in endpoint_ips(&old) {
                if let Some(set) = self.members.get_mut(&member) {
                    set.remove(&ip);
                    if set.is_empty() {
                        self.members.remove(&member);
                    }
                }
            }
        }
        if let Some(body) = body {
            for member in endpoint_ips(&body) {
                self.members.entry(member).or_default().insert(ip);
            }
            self.services.insert(ip, body);
        }
        notify(&self.service_subscribers, ResourceType::Service, ip);
    }
}

fn endpoint_ips(body: &ServiceBody) -> BTreeSet<IpAddr> {
    body.ports
        .values()
        .flat_map(|p| &p.endpoints)
        .filter_map(|e| e.address.parse::<SocketAddr>().ok())
        .map(|a| a.ip())
        .collect()
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
        let body = inner.workload(ip)?;
        Some(Resource::new(ip.to_string(), body))
    }

    /// The Service at address `ip`, each endpoint with the identity its
    /// workload must present (the port's, else the address's) and its
    /// workload name; endpoints the mesh does not know have none
    /// (plaintext). `None`: not a Service address.
    pub fn service_resource(&self, ip: IpAddr) -> Option<Resource> {
        let inner = self.inner.lock().expect("not poisoned");
        let mut body = inner.services.get(&ip)?.clone();
        for port in body.ports.values_mut() {
            // A port its workloads declare opaque is opaque for clients
            // too, unless the Service says what it is.
            let declared_opaque = port.endpoints.iter().any(|e| {
                e.address.parse::<SocketAddr>().ok().is_some_and(|a| {
                    inner
                        .workload(a.ip())
                        .is_some_and(|w| w.opaque_ports.contains(&a.port()))
                })
            });
            if declared_opaque && port.protocol.is_none() {
                port.protocol = Some(ward_api::discovery::AppProtocol::Opaque);
            }
        }
        for endpoint in body.ports.values_mut().flat_map(|p| &mut p.endpoints) {
            let Ok(addr) = endpoint.address.parse::<SocketAddr>() else {
                continue;
            };
            if let Some(workload) = inner.workload(addr.ip()) {
                endpoint.spiffe_id = workload
                    .ports
                    .get(&addr.port())
                    .or(workload.spiffe_id.as_ref())
                    .cloned();
                if endpoint.workload.is_none() {
                    endpoint.workload = workload.workload.clone();
                }
            } else {
                endpoint.spiffe_id = None;
            }
        }
        Some(Resource::new(ip.to_string(), &body))
    }

    /// Applies what changed in the Service source: each Service address
    /// with its Service now (`None`: gone). Endpoint identities are left
    /// out: [`Endpoints::service_resource`] fills them from the workloads.
    pub fn apply_services(&self, changes: impl IntoIterator<Item = (IpAddr, Option<ServiceBody>)>) {
        let mut inner = self.inner.lock().expect("not poisoned");
        for (ip, body) in changes {
            inner.set_service(ip, body);
        }
    }

    /// Replaces every Service address at once (a relist, or the directory
    /// read again): addresses missing from `services` are gone.
    pub fn replace_services(&self, services: BTreeMap<IpAddr, ServiceBody>) {
        let mut inner = self.inner.lock().expect("not poisoned");
        let gone: Vec<IpAddr> = inner
            .services
            .keys()
            .filter(|ip| !services.contains_key(ip))
            .copied()
            .collect();
        for ip in gone {
            inner.set_service(ip, None);
        }
        for (ip, body) in services {
            inner.set_service(ip, Some(body));
        }
    }

    /// How many Service addresses are known.
    pub fn service_count(&self) -> usize {
        self.inner.lock().expect("not poisoned").services.len()
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
        registration: ward_api::discovery::Registration,
    ) -> Registration {
        let mut inner = self.inner.lock().expect("not poisoned");
        inner.next_generation += 1;
        let generation = inner.next_generation;
        let body = EndpointBody {
            spiffe_id: Some(id.to_string()),
            labels: registration.labels,
            opaque_ports: registration.opaque_ports,
            ..Default::default()
        };
        inner.departed.remove(&ip);
        inner.registered.insert(ip, (body, generation));
        inner.changed(ip);
        Registration {
            endpoints: self.clone(),
            ip,
            generation,
        }
    }

    /// `stream` wants to hear of changes to `ip` (a workload address, or
    /// a Service address) in `inbox`.
    pub fn subscribe(
        &self,
        resource_type: ResourceType,
        ip: IpAddr,
        stream: u64,
        inbox: &Arc<Inbox>,
    ) {
        let mut inner = self.inner.lock().expect("not poisoned");
        let subscribers = match resource_type {
            ResourceType::Service => &mut inner.service_subscribers,
            _ => &mut inner.subscribers,
        };
        subscribers
            .entry(ip)
            .or_default()
            .insert(stream, inbox.clone());
    }

    pub fn unsubscribe(
        &self,
        resource_type: ResourceType,
        ips: impl IntoIterator<Item = IpAddr>,
        stream: u64,
    ) {
        let mut inner = self.inner.lock().expect("not poisoned");
        let subscribers = match resource_type {
            ResourceType::Service => &mut inner.service_subscribers,
            _ => &mut inner.subscribers,
        };
        for ip in ips {
            if let Some(subs) = subscribers.get_mut(&ip) {
                subs.remove(&stream);
                if subs.is_empty() {
                    subscribers.remove(&ip);
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
        opaque_ports: e.opaque_ports.clone(),
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
            if let Some((body, _)) = inner.registered.remove(&self.ip) {
                inner.depart(self.ip, body);
            }
            inner.changed(self.ip);
        }
    }
}

#[cfg(test)]
mod tests;
