//! Kubernetes Services and their EndpointSlices → one [`ServiceBody`] per
//! Service address (ClusterIP).
//!
//! The [`ServiceCatalog`] keeps what it needs of every Service and
//! EndpointSlice (parsed once, when the object changes) and, per Service,
//! the bodies it publishes. An event recomputes only the Service it touches
//! (a slice event, the Service the slice belongs to) and returns the
//! Service addresses whose body changed, for
//! [`crate::discovery::Endpoints::apply_services`]; a relist
//! ([`WatchEvent::Restarted`]) replaces the whole kind, recomputing the
//! Services whose objects differ.
//!
//! Rules, as Kubernetes (kube-proxy) reads the same objects:
//! - addresses from `spec.clusterIPs` (else `spec.clusterIP`); headless
//!   Services (`None`) and `type: ExternalName` have none: clients reach
//!   their pods by address. Each address of a dual-stack Service is its own
//!   entry, with the endpoints of the slices of its family (`addressType`
//!   `IPv4` or `IPv6`; `FQDN` slices are ignored);
//! - TCP ports only;
//! - endpoints from the slices labelled `kubernetes.io/service-name=<name>`
//!   in the Service's namespace. A slice port belongs to the Service port of
//!   the same name (no name for a Service's single unnamed port), and its
//!   number is the target port, resolved (named target ports included);
//!   each endpoint's first address (kube-proxy ignores the others) on that
//!   port is one [`ServiceEndpoint`]. An address in two slices (a slice
//!   being replaced) counts once, from the first slice by name. Endpoints
//!   are sorted by address, so equal states have equal content versions;
//! - conditions: `ready` defaults to true, `serving` to `ready`,
//!   `terminating` to false;
//! - a port's protocol from its `appProtocol`
//!   ([`AppProtocol::from_app_protocol`]), else opaque when the Service's
//!   `ward.io/opaque-ports` annotation lists the port; its timeout from the
//!   Service's `ward.io/timeout` (`2s`, `500ms`; invalid: logged, no
//!   timeout; `0s`: no timeout).
//!
//! Endpoint identities (`spiffe_id`) are not filled in here: the address
//! registry fills them from the workloads it knows.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tracing::warn;
use ward_api::discovery::{AppProtocol, ServiceBody, ServiceEndpoint, ServicePort};

use crate::k8s::WatchEvent;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Service annotation: request timeout of every port (humantime).
pub const TIMEOUT_ANNOTATION: &str = "ward.io/timeout";
/// Service annotation: comma-separated service ports that are opaque.
pub const OPAQUE_PORTS_ANNOTATION: &str = "ward.io/opaque-ports";

/// Service addresses whose body changed, with the body now (`None`: gone).
pub type ServiceChanges = BTreeMap<IpAddr, Option<ServiceBody>>;

/// (namespace, name) of a Service, or of an EndpointSlice.
type Key = (String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// What the catalog keeps of a Service.
#[derive(Debug, Clone, PartialEq)]
struct ServiceInfo {
    cluster_ips: Vec<IpAddr>,
    ports: Vec<PortInfo>,
}

#[derive(Debug, Clone, PartialEq)]
struct PortInfo {
    port: u16,
    /// `None` for an unnamed port (never `Some("")`).
    name: Option<String>,
    protocol: Option<AppProtocol>,
    timeout_ms: Option<u64>,
}

/// What the catalog keeps of an EndpointSlice that belongs to a Service.
#[derive(Debug, Clone, PartialEq)]
struct SliceInfo {
    /// The Service's name (same namespace).
    service: String,
    family: Family,
    /// (port name, `""` when unnamed; target port number), TCP only.
    ports: Vec<(String, u16)>,
    endpoints: Vec<SliceEndpoint>,
}

#[derive(Debug, Clone, PartialEq)]
struct SliceEndpoint {
    ip: IpAddr,
    ready: bool,
    serving: bool,
    terminating: bool,
    workload: Option<String>,
}

/// Services and EndpointSlices, and the Service bodies they make.
#[derive(Debug, Default)]
pub struct ServiceCatalog {
    services: HashMap<Key, ServiceInfo>,
    slices: HashMap<Key, SliceInfo>,
    /// Service → the names of its slices (same namespace), in name order.
    slices_of: HashMap<Key, BTreeSet<String>>,
    /// Service → the body of each of its addresses.
    bodies: HashMap<Key, BTreeMap<IpAddr, ServiceBody>>,
    /// Address → the Services that claim it. The first (by namespace and
    /// name) is published; two Services never share an address in a
    /// cluster, but a directory (or a moment between events) can say so.
    claims: HashMap<IpAddr, BTreeSet<Key>>,
}

impl ServiceCatalog {
    /// Applies one Service event; returns the addresses whose body changed.
    pub fn apply_service(&mut self, event: WatchEvent<Service>) -> ServiceChanges {
        let mut changes = ServiceChanges::new();
        match event {
            WatchEvent::Applied(service) => {
                let Some(key) = key_of(&service.metadata) else {
                    warn!("Service without a name ignored");
                    return changes;
                };
                let info = lenient(&key, "Service", service_info(&key, &service)).flatten();
                self.set_service(&key, info, &mut changes);
            }
            WatchEvent::Deleted(service) => {
                if let Some(key) = key_of(&service.metadata) {
                    self.set_service(&key, None, &mut changes);
                }
            }
            WatchEvent::Restarted(services) => {
                let mut listed: HashMap<Key, ServiceInfo> = HashMap::new();
                for service in &services {
                    let Some(key) = key_of(&service.metadata) else {
                        continue;
                    };
                    if let Some(Some(info)) = lenient(&key, "Service", service_info(&key, service))
                    {
                        listed.insert(key, info);
                    }
                }
                let gone: Vec<Key> = self
                    .services
                    .keys()
                    .filter(|k| !listed.contains_key(*k))
                    .cloned()
                    .collect();
                for key in gone {
                    self.set_service(&key, None, &mut changes);
                }
                for (key, info) in listed {
                    self.set_service(&key, Some(info), &mut changes);
                }
            }
        }
        changes
    }

    /// Applies one EndpointSlice event; returns the addresses whose body
    /// changed.
    pub fn apply_slice(&mut self, event: WatchEvent<EndpointSlice>) -> ServiceChanges {
        let mut changes = ServiceChanges::new();
        match event {
            WatchEvent::Applied(slice) => {
                let Some(key) = key_of(&slice.metadata) else {
                    warn!("EndpointSlice without a name ignored");
                    return changes;
                };
                let info = lenient(&key, "EndpointSlice", slice_info(&key, &slice)).flatten();
                self.set_slice(&key, info, &mut changes);
            }
            WatchEvent::Deleted(slice) => {
                if let Some(key) = key_of(&slice.metadata) {
                    self.set_slice(&key, None, &mut changes);
                }
            }
            WatchEvent::Restarted(slices) => {
                let mut listed: HashMap<Key, SliceInfo> = HashMap::new();
                for slice in &slices {
                    let Some(key) = key_of(&slice.metadata) else {
                        continue;
                    };
                    if let Some(info) =
                        lenient(&key, "EndpointSlice", slice_info(&key, slice)).flatten()
                    {
                        listed.insert(key, info);
                    }
                }
                let gone: Vec<Key> = self
                    .slices
                    .keys()
                    .filter(|k| !listed.contains_key(*k))
                    .cloned()
                    .collect();
                for key in gone {
                    self.set_slice(&key, None, &mut changes);
                }
                for (key, info) in listed {
                    self.set_slice(&key, Some(info), &mut changes);
                }
            }
        }
        changes
    }

    /// Adds a Service strictly (the directory source): a malformed one is
    /// an error and changes nothing.
    pub fn add_service(&mut self, service: &Service) -> Result<(), String> {
        let key = key_of(&service.metadata).ok_or("metadata.name is required")?;
        let info = service_info(&key, service)?;
        self.set_service(&key, info, &mut ServiceChanges::new());
        Ok(())
    }

    /// Adds an EndpointSlice strictly (the directory source): a malformed
    /// one is an error and changes nothing. A slice of `addressType: FQDN`
    /// or without the `kubernetes.io/service-name` label is valid and
    /// ignored, as in a cluster.
    pub fn add_slice(&mut self, slice: &EndpointSlice) -> Result<(), String> {
        let key = key_of(&slice.metadata).ok_or("metadata.name is required")?;
        let info = slice_info(&key, slice)?;
        self.set_slice(&key, info, &mut ServiceChanges::new());
        Ok(())
    }

    /// Every Service address with its body.
    pub fn snapshot(&self) -> BTreeMap<IpAddr, ServiceBody> {
        self.claims
            .keys()
            .filter_map(|ip| Some((*ip, self.effective(ip)?.clone())))
            .collect()
    }

    /// How many Services are known (with or without an address).
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    fn set_service(&mut self, key: &Key, info: Option<ServiceInfo>, changes: &mut ServiceChanges) {
        if self.services.get(key) == info.as_ref() {
            return;
        }
        match info {
            Some(info) => self.services.insert(key.clone(), info),
            None => self.services.remove(key),
        };
        self.recompute(key, changes);
    }

    fn set_slice(&mut self, key: &Key, info: Option<SliceInfo>, changes: &mut ServiceChanges) {
        if self.slices.get(key) == info.as_ref() {
            return;
        }
        let (namespace, name) = key;
        let old_owner = self
            .slices
            .remove(key)
            .map(|old| (namespace.clone(), old.service));
        if let Some(owner) = &old_owner
            && let Some(names) = self.slices_of.get_mut(owner)
        {
            names.remove(name);
            if names.is_empty() {
                self.slices_of.remove(owner);
            }
        }
        let new_owner = info
            .as_ref()
            .map(|i| (namespace.clone(), i.service.clone()));
        if let (Some(owner), Some(info)) = (&new_owner, info) {
            self.slices_of
                .entry(owner.clone())
                .or_default()
                .insert(name.clone());
            self.slices.insert(key.clone(), info);
        }
        if let Some(owner) = &old_owner {
            self.recompute(owner, changes);
        }
        if let Some(owner) = new_owner
            && Some(&owner) != old_owner.as_ref()
        {
            self.recompute(&owner, changes);
        }
    }

    /// The body published at `ip`: its first claimant's.
    fn effective(&self, ip: &IpAddr) -> Option<&ServiceBody> {
        let owner = self.claims.get(ip)?.first()?;
        self.bodies.get(owner)?.get(ip)
    }

    /// Computes the Service's bodies again and records which published
    /// addresses changed. Costs the Service's size, not the catalog's.
    fn recompute(&mut self, key: &Key, changes: &mut ServiceChanges) {
        let new = self.compute(key);
        let old: Vec<IpAddr> = self
            .bodies
            .get(key)
            .map(|bodies| bodies.keys().copied().collect())
            .unwrap_or_default();
        let touched: BTreeSet<IpAddr> = old.iter().chain(new.keys()).copied().collect();
        let before: Vec<Option<ServiceBody>> = touched
            .iter()
            .map(|ip| self.effective(ip).cloned())
            .collect();
        for ip in old.iter().filter(|ip| !new.contains_key(ip)) {
            if let Some(claimants) = self.claims.get_mut(ip) {
                claimants.remove(key);
                if claimants.is_empty() {
                    self.claims.remove(ip);
                }
            }
        }
        for ip in new.keys() {
            let claimants = self.claims.entry(*ip).or_default();
            if claimants.insert(key.clone()) && claimants.len() > 1 {
                let names: Vec<String> = claimants
                    .iter()
                    .map(|(ns, name)| format!("{ns}/{name}"))
                    .collect();
                warn!(address = %ip, services = ?names, published = %names[0], "two Services claim one address; the first by namespace and name is published");
            }
        }
        if new.is_empty() {
            self.bodies.remove(key);
        } else {
            self.bodies.insert(key.clone(), new);
        }
        for (ip, before) in touched.into_iter().zip(before) {
            let after = self.effective(&ip);
            if before.as_ref() != after {
                changes.insert(ip, after.cloned());
            }
        }
    }

    /// The Service's bodies from what the catalog holds now.
    fn compute(&self, key: &Key) -> BTreeMap<IpAddr, ServiceBody> {
        let Some(info) = self.services.get(key) else {
            return BTreeMap::new();
        };
        let slices: Vec<&SliceInfo> = self
            .slices_of
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|name| self.slices.get(&(key.0.clone(), name.clone())))
            .collect();
        let service = format!("{}/{}", key.0, key.1);
        let mut by_family: Vec<(Family, ServiceBody)> = Vec::new();
        let mut bodies = BTreeMap::new();
        for ip in &info.cluster_ips {
            let family = Family::of(ip);
            let body = match by_family.iter().find(|(f, _)| *f == family) {
                Some((_, body)) => body.clone(),
                None => {
                    let body = body_for(&service, info, &slices, family);
                    by_family.push((family, body.clone()));
                    body
                }
            };
            bodies.insert(*ip, body);
        }
        bodies
    }
}

fn body_for(
    service: &str,
    info: &ServiceInfo,
    slices: &[&SliceInfo],
    family: Family,
) -> ServiceBody {
    let ports = info
        .ports
        .iter()
        .map(|port| {
            let name = port.name.as_deref().unwrap_or("");
            let mut endpoints: BTreeMap<SocketAddr, ServiceEndpoint> = BTreeMap::new();
            for slice in slices.iter().filter(|s| s.family == family) {
                let Some((_, target)) = slice.ports.iter().find(|(n, _)| n == name) else {
                    continue;
                };
                for endpoint in &slice.endpoints {
                    let address = SocketAddr::new(endpoint.ip, *target);
                    endpoints.entry(address).or_insert_with(|| ServiceEndpoint {
                        address: address.to_string(),
                        spiffe_id: None,
                        workload: endpoint.workload.clone(),
                        ready: endpoint.ready,
                        serving: endpoint.serving,
                        terminating: endpoint.terminating,
                    });
                }
            }
            let port_body = ServicePort {
                name: port.name.clone(),
                protocol: port.protocol,
                timeout_ms: port.timeout_ms,
                endpoints: endpoints.into_values().collect(),
            };
            (port.port, port_body)
        })
        .collect();
    ServiceBody {
        service: service.to_owned(),
        ports,
    }
}

fn key_of(meta: &ObjectMeta) -> Option<Key> {
    let name = meta.name.clone().filter(|n| !n.is_empty())?;
    let namespace = meta
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    Some((namespace, name))
}

/// From the API server an object is valid; if one is not, it is logged and
/// treated as absent.
fn lenient<T>(key: &Key, kind: &str, parsed: Result<T, String>) -> Option<T> {
    parsed
        .map_err(|error| {
            warn!(kind, namespace = %key.0, name = %key.1, %error, "malformed object ignored");
        })
        .ok()
}

fn is_tcp(protocol: Option<&str>) -> bool {
    protocol.is_none_or(|p| p == "TCP")
}

/// What the catalog keeps of a Service; `None` when it has no address to
/// publish (headless, ExternalName). Malformed values are errors.
fn service_info(key: &Key, service: &Service) -> Result<Option<ServiceInfo>, String> {
    let Some(spec) = &service.spec else {
        return Ok(None);
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Ok(None);
    }
    let (field, listed) = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ("spec.clusterIPs", ips.clone()),
        (_, Some(ip)) => ("spec.clusterIP", vec![ip.clone()]),
        _ => ("spec.clusterIP", Vec::new()),
    };
    let mut cluster_ips = Vec::new();
    for ip in listed {
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let parsed: IpAddr = ip
            .parse()
            .map_err(|_| format!("{field}: {ip:?} is not an IP address"))?;
        if !cluster_ips.contains(&parsed) {
            cluster_ips.push(parsed);
        }
    }
    if cluster_ips.is_empty() {
        return Ok(None);
    }
    let annotations = service.metadata.annotations.as_ref();
    let annotation = |name: &str| annotations.and_then(|a| a.get(name)).map(String::as_str);
    let timeout_ms = annotation(TIMEOUT_ANNOTATION).and_then(|value| match parse_timeout(value) {
        Ok(ms) => ms,
        Err(error) => {
            warn!(service = %format!("{}/{}", key.0, key.1), annotation = TIMEOUT_ANNOTATION, value, %error, "invalid annotation: no timeout");
            None
        }
    });
    let opaque = annotation(OPAQUE_PORTS_ANNOTATION)
        .map(|value| opaque_ports(key, value))
        .unwrap_or_default();
    let mut ports = Vec::new();
    for (i, port) in spec.ports.iter().flatten().enumerate() {
        if !is_tcp(port.protocol.as_deref()) {
            continue;
        }
        let number = u16::try_from(port.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("spec.ports[{i}].port: {} is not a port", port.port))?;
        let protocol = port
            .app_protocol
            .as_deref()
            .and_then(AppProtocol::from_app_protocol)
            .or_else(|| opaque.contains(&number).then_some(AppProtocol::Opaque));
        ports.push(PortInfo {
            port: number,
            name: port.name.clone().filter(|n| !n.is_empty()),
            protocol,
            timeout_ms,
        });
    }
    Ok(Some(ServiceInfo { cluster_ips, ports }))
}

/// `ward.io/timeout`: a humantime duration; `0s` means none.
fn parse_timeout(value: &str) -> Result<Option<u64>, String> {
    let duration = humantime::parse_duration(value.trim()).map_err(|e| e.to_string())?;
    if duration.is_zero() {
        return Ok(None);
    }
    let ms = u64::try_from(duration.as_millis()).map_err(|_| "too long".to_owned())?;
    Ok(Some(ms.max(1)))
}

/// `ward.io/opaque-ports`: `8080,9090`. Entries that are not ports are
/// logged and skipped.
fn opaque_ports(key: &Key, value: &str) -> Vec<u16> {
    let mut ports = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match entry.parse::<u16>() {
            Ok(port) if port != 0 => ports.push(port),
            _ => {
                warn!(service = %format!("{}/{}", key.0, key.1), annotation = OPAQUE_PORTS_ANNOTATION, value, entry, "invalid annotation entry: not a port, ignored");
            }
        }
    }
    ports
}

/// What the catalog keeps of a slice; `None` for a slice that feeds no
/// Service (no `kubernetes.io/service-name` label, or `FQDN` addresses).
fn slice_info(key: &Key, slice: &EndpointSlice) -> Result<Option<SliceInfo>, String> {
    let family = match slice.address_type.as_str() {
        "IPv4" => Family::V4,
        "IPv6" => Family::V6,
        "FQDN" => return Ok(None),
        other => return Err(format!("addressType: {other:?} is not IPv4, IPv6 or FQDN")),
    };
    let mut ports = Vec::new();
    for (i, port) in slice.ports.iter().flatten().enumerate() {
        if !is_tcp(port.protocol.as_deref()) {
            continue;
        }
        // No number: "all ports", which no Service port resolves to.
        let Some(number) = port.port else {
            continue;
        };
        let number = u16::try_from(number)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("ports[{i}].port: {number} is not a port"))?;
        ports.push((port.name.clone().unwrap_or_default(), number));
    }
    let mut endpoints = Vec::new();
    for (i, endpoint) in slice.endpoints.iter().enumerate() {
        // kube-proxy uses the first address only.
        let Some(address) = endpoint.addresses.first() else {
            return Err(format!("endpoints[{i}].addresses: empty"));
        };
        let ip: IpAddr = address.parse().map_err(|_| {
            format!("endpoints[{i}].addresses[0]: {address:?} is not an IP address")
        })?;
        if Family::of(&ip) != family {
            return Err(format!(
                "endpoints[{i}].addresses[0]: {address} is not an {} address",
                slice.address_type
            ));
        }
        let conditions = endpoint.conditions.as_ref();
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
        let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
        let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
        let workload = endpoint
            .target_ref
            .as_ref()
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .and_then(|r| {
                let name = r.name.as_deref().filter(|n| !n.is_empty())?;
                let namespace = r.namespace.as_deref().unwrap_or(&key.0);
                Some(format!("{namespace}/{name}"))
            });
        endpoints.push(SliceEndpoint {
            ip,
            ready,
            serving,
            terminating,
            workload,
        });
    }
    let Some(service) = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .filter(|s| !s.is_empty())
    else {
        return Ok(None);
    };
    Ok(Some(SliceInfo {
        service: service.clone(),
        family,
        ports,
        endpoints,
    }))
}

#[cfg(test)]
mod tests;
