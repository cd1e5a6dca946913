//! The endpoint table: which destinations have a sidecar, and the SPIFFE ID
//! each must present. Swapped whole (ArcSwap) when a new version arrives, so
//! lookups on the connection path never lock.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Deserialize;
use ward_api::discovery::{ResourceType, ServiceBody};
use ward_identity::SpiffeId;

use crate::balance::PortBalancer;

/// An endpoint is one `IP:PORT`, or every port of an `IP` (a pod).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndpointKey {
    Addr(SocketAddr),
    Ip(IpAddr),
}

impl FromStr for EndpointKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(EndpointKey::Addr(addr));
        }
        s.parse::<IpAddr>()
            .map(EndpointKey::Ip)
            .map_err(|_| format!("{s:?} is neither IP nor IP:PORT"))
    }
}

impl fmt::Display for EndpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointKey::Addr(a) => a.fmt(f),
            EndpointKey::Ip(ip) => ip.fmt(f),
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct EndpointTable {
    by_addr: HashMap<SocketAddr, SpiffeId>,
    by_ip: HashMap<IpAddr, SpiffeId>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointsFile {
    endpoints: Vec<EndpointEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointEntry {
    address: String,
    spiffe_id: String,
}

impl EndpointTable {
    pub fn insert(&mut self, key: EndpointKey, id: SpiffeId) {
        match key {
            EndpointKey::Addr(addr) => self.by_addr.insert(addr, id),
            EndpointKey::Ip(ip) => self.by_ip.insert(ip, id),
        };
    }

    /// The identity expected at `dest`: an exact `IP:PORT` entry wins over an `IP` one.
    pub fn lookup(&self, dest: SocketAddr) -> Option<&SpiffeId> {
        self.by_addr
            .get(&dest)
            .or_else(|| self.by_ip.get(&dest.ip()))
    }

    pub fn len(&self) -> usize {
        self.by_addr.len() + self.by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Parses the JSON endpoints file; any bad entry rejects the whole file.
    pub fn from_json(json: &str) -> Result<Self, String> {
        let file: EndpointsFile = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let mut table = EndpointTable::default();
        for (i, entry) in file.endpoints.into_iter().enumerate() {
            let key = entry
                .address
                .parse()
                .map_err(|e| format!("endpoints[{i}].address: {e}"))?;
            let id = SpiffeId::parse(&entry.spiffe_id)
                .map_err(|e| format!("endpoints[{i}].spiffe_id {:?}: {e}", entry.spiffe_id))?;
            table.insert(key, id);
        }
        Ok(table)
    }

    pub fn from_file(path: &Path) -> Result<Self, String> {
        let json = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::from_json(&json).map_err(|e| format!("{}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests;

/// What the mesh says about one address, as discovery answered it.
#[derive(Debug, Clone)]
pub enum Known {
    /// Meshed: the identity of every port, and per-port overrides.
    Meshed {
        any_port: Option<SpiffeId>,
        ports: HashMap<u16, SpiffeId>,
        /// Ports the workload declares opaque (no detection).
        opaque_ports: Vec<u16>,
    },
    /// Not meshed (the control plane said so).
    Absent,
}

/// A Service address as discovery answered it.
#[derive(Clone)]
pub enum KnownService {
    Present(Arc<ServiceRoutes>),
    /// Not a Service address.
    Absent,
}

/// A Service address's ports, each with its balancer.
pub struct ServiceRoutes {
    pub name: Arc<str>,
    pub ports: HashMap<u16, Arc<PortBalancer>>,
}

/// Where an outbound connection goes, as far as the mesh is concerned.
#[derive(Clone)]
pub enum Resolved {
    /// Over mTLS to a sidecar that must present this identity.
    Meshed(SpiffeId),
    /// A Service port: balanced over its endpoints.
    Service(Arc<PortBalancer>),
    /// A Service address, but not one of its ports.
    NoSuchServicePort,
    /// Not in the mesh: plaintext (or refused when egress is locked down).
    Unmeshed,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resolved::Meshed(id) => write!(f, "Meshed({id})"),
            Resolved::Service(b) => write!(f, "Service({}:{})", b.service, b.port),
            Resolved::NoSuchServicePort => f.write_str("NoSuchServicePort"),
            Resolved::Unmeshed => f.write_str("Unmeshed"),
        }
    }
}

impl PartialEq for Resolved {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Resolved::Meshed(a), Resolved::Meshed(b)) => a == b,
            (Resolved::Service(a), Resolved::Service(b)) => Arc::ptr_eq(a, b),
            (Resolved::NoSuchServicePort, Resolved::NoSuchServicePort)
            | (Resolved::Unmeshed, Resolved::Unmeshed) => true,
            _ => false,
        }
    }
}

/// The destination was not known and discovery did not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unknown;

/// The destinations the proxy knows: static entries (flags, file), then
/// what discovery answered for the addresses the app connected to. A
/// first connection to an address asks the control plane and waits for
/// the answer (bounded); until then nothing is guessed to be plaintext.
pub struct Destinations {
    pub static_table: EndpointTable,
    discovery: Option<Arc<ward_api::client::discovery::DiscoveryClient>>,
    known: ArcSwap<HashMap<IpAddr, Known>>,
    services: ArcSwap<HashMap<IpAddr, KnownService>>,
    changes: tokio::sync::watch::Sender<u64>,
}

impl Destinations {
    /// Static entries only: an address not in them is unmeshed.
    pub fn fixed(static_table: EndpointTable) -> Self {
        Destinations {
            static_table,
            discovery: None,
            known: ArcSwap::default(),
            services: ArcSwap::default(),
            changes: tokio::sync::watch::channel(0).0,
        }
    }

    /// Static entries, then on-demand discovery through `client`.
    pub fn discovered(
        static_table: EndpointTable,
        client: Arc<ward_api::client::discovery::DiscoveryClient>,
    ) -> Self {
        Destinations {
            discovery: Some(client),
            ..Self::fixed(static_table)
        }
    }

    /// How to reach `dest`, waiting up to `wait` for discovery's first
    /// answer about its address.
    pub async fn resolve(
        &self,
        dest: SocketAddr,
        wait: std::time::Duration,
    ) -> Result<Resolved, Unknown> {
        if let Some(id) = self.static_table.lookup(dest) {
            return Ok(Resolved::Meshed(id.clone()));
        }
        let Some(discovery) = &self.discovery else {
            return Ok(Resolved::Unmeshed);
        };
        if let Some(resolved) = self.lookup_known(dest) {
            return Ok(resolved);
        }
        let mut changes = self.changes.subscribe();
        // Workload or Service: both are asked at once, and the answer is
        // known when the address is a workload, or both have answered.
        let name = dest.ip().to_string();
        discovery.subscribe(ResourceType::Endpoint, &name);
        discovery.subscribe(ResourceType::Service, &name);
        let answered = tokio::time::timeout(wait, async {
            loop {
                if let Some(resolved) = self.lookup_known(dest) {
                    return resolved;
                }
                if changes.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        });
        answered.await.map_err(|_| Unknown)
    }

    fn lookup_known(&self, dest: SocketAddr) -> Option<Resolved> {
        let services = self.services.load();
        let service = services.get(&dest.ip());
        if let Some(KnownService::Present(routes)) = service {
            return Some(match routes.ports.get(&dest.port()) {
                Some(balancer) => Resolved::Service(balancer.clone()),
                None => Resolved::NoSuchServicePort,
            });
        }
        let known = self.known.load();
        Some(match known.get(&dest.ip())? {
            Known::Meshed {
                any_port, ports, ..
            } => match ports.get(&dest.port()).or(any_port.as_ref()) {
                Some(id) => Resolved::Meshed(id.clone()),
                None => Resolved::Unmeshed,
            },
            // Not a workload; plaintext only once it is known not to be a
            // Service either (with discovery, both are asked together).
            Known::Absent if service.is_none() && self.discovery.is_some() => return None,
            Known::Absent => Resolved::Unmeshed,
        })
    }

    /// True when the workload at `dest` declares its port opaque.
    pub fn declared_opaque(&self, dest: SocketAddr) -> bool {
        matches!(
            self.known.load().get(&dest.ip()),
            Some(Known::Meshed { opaque_ports, .. }) if opaque_ports.contains(&dest.port())
        )
    }

    /// Applies a Service update: all of it or, on any invalid entry,
    /// nothing (NACKed). Endpoints that stay keep their state.
    pub fn apply_services(&self, update: &ward_api::discovery::Update) -> Result<(), String> {
        let current = self.services.load();
        let mut changed = Vec::new();
        for resource in &update.resources {
            let ip: IpAddr = resource
                .name
                .parse()
                .map_err(|_| format!("service {:?}: not an IP address", resource.name))?;
            let body: ServiceBody = resource.decode()?;
            let previous = match current.get(&ip) {
                Some(KnownService::Present(routes)) => Some(routes.clone()),
                _ => None,
            };
            let name: Arc<str> = Arc::from(body.service.as_str());
            let mut ports = HashMap::new();
            for (port, spec) in &body.ports {
                let old = previous.as_ref().and_then(|p| p.ports.get(port));
                let balancer =
                    PortBalancer::from_resource(name.clone(), *port, spec, old.map(|b| &**b))?;
                ports.insert(*port, Arc::new(balancer));
            }
            changed.push((
                ip,
                KnownService::Present(Arc::new(ServiceRoutes { name, ports })),
            ));
        }
        for name in &update.removed {
            if let Ok(ip) = name.parse() {
                changed.push((ip, KnownService::Absent));
            }
        }
        self.services.rcu(|services| {
            let mut services = HashMap::clone(services);
            services.extend(changed.iter().cloned());
            services
        });
        self.changes.send_modify(|g| *g += 1);
        Ok(())
    }

    /// Drops Service addresses discovery no longer tracks for this proxy.
    pub fn forget_services(&self, names: &[String]) {
        let ips: Vec<IpAddr> = names.iter().filter_map(|n| n.parse().ok()).collect();
        self.services.rcu(|services| {
            let mut services = HashMap::clone(services);
            for ip in &ips {
                services.remove(ip);
            }
            services
        });
    }

    /// How many addresses discovery answered (metrics, tests).
    pub fn known_len(&self) -> usize {
        self.known.load().len()
    }

    /// Applies an endpoint update: all of it or, on any invalid entry,
    /// nothing (the update is NACKed).
    pub fn apply(&self, update: &ward_api::discovery::Update) -> Result<(), String> {
        let mut changed = Vec::new();
        for resource in &update.resources {
            let ip: IpAddr = resource
                .name
                .parse()
                .map_err(|_| format!("endpoint {:?}: not an IP address", resource.name))?;
            let body: ward_api::discovery::EndpointBody = resource.decode()?;
            let parse =
                |id: &str| SpiffeId::parse(id).map_err(|e| format!("endpoint {ip}: {id:?}: {e}"));
            let any_port = body.spiffe_id.as_deref().map(parse).transpose()?;
            let ports = body
                .ports
                .iter()
                .map(|(port, id)| Ok((*port, parse(id)?)))
                .collect::<Result<_, String>>()?;
            changed.push((
                ip,
                Known::Meshed {
                    any_port,
                    ports,
                    opaque_ports: body.opaque_ports.clone(),
                },
            ));
        }
        for name in &update.removed {
            // A name that is no address was never asked for by this proxy.
            if let Ok(ip) = name.parse() {
                changed.push((ip, Known::Absent));
            }
        }
        self.known.rcu(|known| {
            let mut known = HashMap::clone(known);
            known.extend(changed.iter().cloned());
            known
        });
        self.changes.send_modify(|g| *g += 1);
        Ok(())
    }

    /// Drops addresses discovery no longer tracks for this proxy.
    pub fn forget(&self, names: &[String]) {
        let ips: Vec<IpAddr> = names.iter().filter_map(|n| n.parse().ok()).collect();
        self.known.rcu(|known| {
            let mut known = HashMap::clone(known);
            for ip in &ips {
                known.remove(ip);
            }
            known
        });
    }
}
