//! Pod IP → workload identity, for meshed pods only.
//!
//! A pod is in the table while it has the Ward sidecar (`ward.io/status`
//! or a `ward-proxy` container), at least one pod IP, and has not finished
//! (`Succeeded`/`Failed` pods release their IP for reuse). Each change bumps
//! the version once (a resync with many changes bumps it once); events that
//! change nothing do not bump it. An event costs in proportion to the
//! pod's addresses, not to the table (a relist compares everything); the
//! caller takes a [`EndpointTable::snapshot`] when it wants to publish.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;
use ward_identity::SpiffeId;

use super::WatchEvent;
use crate::inject;

/// What the mesh knows about the pod behind one IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub spiffe_id: SpiffeId,
    pub namespace: String,
    pub pod_name: String,
    pub labels: BTreeMap<String, String>,
    /// `ward.io/opaque-ports` of the pod (unparsable: none).
    pub opaque_ports: Vec<u16>,
}

/// One published state of the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointSnapshot {
    pub version: u64,
    pub endpoints: BTreeMap<IpAddr, Endpoint>,
}

/// What one event changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointDiff {
    pub added: BTreeSet<IpAddr>,
    pub updated: BTreeSet<IpAddr>,
    pub removed: BTreeSet<IpAddr>,
}

impl EndpointDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.updated.is_empty() && self.removed.is_empty()
    }
}

type PodKey = (String, String);

pub struct EndpointTable {
    trust_domain: String,
    /// What each pod claims, the source of truth.
    pods: BTreeMap<PodKey, Vec<(IpAddr, Endpoint)>>,
    /// IP → (owning pod, endpoint). On an IP claimed by two pods (an old pod
    /// still terminating, a new one given its address) the latest event wins,
    /// and the IP goes to the other claimant when the winner lets go.
    by_ip: BTreeMap<IpAddr, (PodKey, Endpoint)>,
    version: u64,
}

impl EndpointTable {
    pub fn new(trust_domain: impl Into<String>) -> Self {
        EndpointTable {
            trust_domain: trust_domain.into(),
            pods: BTreeMap::new(),
            by_ip: BTreeMap::new(),
            version: 0,
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn get(&self, ip: &IpAddr) -> Option<&Endpoint> {
        self.by_ip.get(ip).map(|(_, e)| e)
    }

    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }

    pub fn snapshot(&self) -> EndpointSnapshot {
        EndpointSnapshot {
            version: self.version,
            endpoints: self
                .by_ip
                .iter()
                .map(|(ip, (_, e))| (*ip, e.clone()))
                .collect(),
        }
    }

    /// Folds one event; bumps the version when anything changed.
    pub fn apply(&mut self, event: WatchEvent<Pod>) -> EndpointDiff {
        let diff = match event {
            WatchEvent::Applied(pod) => match pod_key(&pod) {
                Some(key) => {
                    let claims = self.claims(&pod);
                    self.set_pod_tracked(key, claims)
                }
                None => EndpointDiff::default(),
            },
            WatchEvent::Deleted(pod) => match pod_key(&pod) {
                Some(key) => self.set_pod_tracked(key, Vec::new()),
                None => EndpointDiff::default(),
            },
            WatchEvent::Restarted(pods) => {
                let before = self.by_ip.clone();
                let fresh: BTreeMap<PodKey, Vec<(IpAddr, Endpoint)>> = pods
                    .iter()
                    .filter_map(|pod| Some((pod_key(pod)?, self.claims(pod))))
                    .collect();
                let gone: Vec<PodKey> = self
                    .pods
                    .keys()
                    .filter(|k| !fresh.contains_key(*k))
                    .cloned()
                    .collect();
                for key in gone {
                    self.set_pod(key, Vec::new());
                }
                for (key, claims) in fresh {
                    self.set_pod(key, claims);
                }
                let ips: BTreeSet<IpAddr> =
                    before.keys().chain(self.by_ip.keys()).copied().collect();
                self.diff_since(&ips, |ip| before.get(ip).cloned())
            }
        };
        if !diff.is_empty() {
            self.version += 1;
        }
        diff
    }

    /// [`Self::set_pod`], and what it changed: only the addresses the pod
    /// held or claims can change.
    fn set_pod_tracked(&mut self, key: PodKey, claims: Vec<(IpAddr, Endpoint)>) -> EndpointDiff {
        let ips: BTreeSet<IpAddr> = self
            .pods
            .get(&key)
            .into_iter()
            .flatten()
            .chain(&claims)
            .map(|(ip, _)| *ip)
            .collect();
        let before: BTreeMap<IpAddr, (PodKey, Endpoint)> = ips
            .iter()
            .filter_map(|ip| Some((*ip, self.by_ip.get(ip)?.clone())))
            .collect();
        self.set_pod(key, claims);
        self.diff_since(&ips, |ip| before.get(ip).cloned())
    }

    /// Compares the entries of `ips` now with what `before` says they were.
    fn diff_since(
        &self,
        ips: &BTreeSet<IpAddr>,
        before: impl Fn(&IpAddr) -> Option<(PodKey, Endpoint)>,
    ) -> EndpointDiff {
        let mut d = EndpointDiff::default();
        for ip in ips {
            match (before(ip), self.by_ip.get(ip)) {
                (None, Some(_)) => {
                    d.added.insert(*ip);
                }
                (Some(_), None) => {
                    d.removed.insert(*ip);
                }
                (Some(old), Some(new)) if old != *new => {
                    d.updated.insert(*ip);
                }
                _ => {}
            }
        }
        d
    }

    fn claims(&self, pod: &Pod) -> Vec<(IpAddr, Endpoint)> {
        endpoints_of(pod, &self.trust_domain)
    }

    fn set_pod(&mut self, key: PodKey, claims: Vec<(IpAddr, Endpoint)>) {
        let old = if claims.is_empty() {
            self.pods.remove(&key).unwrap_or_default()
        } else {
            self.pods
                .insert(key.clone(), claims.clone())
                .unwrap_or_default()
        };
        for (ip, _) in old {
            if claims.iter().any(|(new_ip, _)| *new_ip == ip) {
                continue;
            }
            if self.by_ip.get(&ip).is_some_and(|(owner, _)| *owner == key) {
                self.by_ip.remove(&ip);
                // Hand the IP to another pod that still claims it, if any.
                if let Some((other, endpoint)) = self.pods.iter().find_map(|(k, claims)| {
                    claims
                        .iter()
                        .find(|(i, _)| *i == ip)
                        .map(|(_, e)| (k.clone(), e.clone()))
                }) {
                    self.by_ip.insert(ip, (other, endpoint));
                }
            }
        }
        for (ip, endpoint) in claims {
            self.by_ip.insert(ip, (key.clone(), endpoint));
        }
    }
}

fn pod_key(pod: &Pod) -> Option<PodKey> {
    Some((
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone()?,
    ))
}

/// The table entries a pod claims: none unless it is meshed, running or
/// pending with an IP, and its service account names a valid SPIFFE ID.
pub fn endpoints_of(pod: &Pod, trust_domain: &str) -> Vec<(IpAddr, Endpoint)> {
    let (Some(spec), Some(status), Some(name)) = (&pod.spec, &pod.status, &pod.metadata.name)
    else {
        return Vec::new();
    };
    if !inject::is_injected(&pod.metadata, spec)
        || matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"))
    {
        return Vec::new();
    }
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let service_account = spec.service_account_name.as_deref().unwrap_or("default");
    let Ok(spiffe_id) = SpiffeId::for_service_account(trust_domain, &namespace, service_account)
    else {
        return Vec::new();
    };
    let endpoint = Endpoint {
        spiffe_id,
        namespace,
        pod_name: name.clone(),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        opaque_ports: pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(crate::inject::annotations::ANNOTATION_OPAQUE_PORTS))
            .and_then(|v| {
                crate::inject::annotations::ports(
                    Some(v),
                    crate::inject::annotations::ANNOTATION_OPAQUE_PORTS,
                )
                .ok()
            })
            .unwrap_or_default(),
    };
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .chain(status.pod_ip.as_deref())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    ips.sort();
    ips.dedup();
    ips.into_iter().map(|ip| (ip, endpoint.clone())).collect()
}
