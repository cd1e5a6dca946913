//! Quarantine enforcement: the entries the control plane pushes
//! (`quarantine` resources: SPIFFE IDs, certificate serials, pod
//! addresses), checked on every meshed connection (inbound right after
//! the mTLS handshake; outbound before connecting and after the
//! handshake), and a registry of the live meshed connections, so an
//! update that quarantines a peer closes its open connections at once
//! (their I/O fails: [`severable`]).
//!
//! Checking costs one atomic load while nothing is quarantined.

pub mod severable;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tracing::info;
use ward_api::discovery::{QuarantineBody, Resource};
use ward_identity::SpiffeId;

use crate::metrics::ProxyMetrics;
use severable::Cut;

/// What is quarantined: every key names the entry that quarantines it.
#[derive(Debug, Default)]
pub struct QuarantineSet {
    /// The control plane's version of it (0: none received).
    pub version: u64,
    /// Entries in force.
    pub entries: usize,
    ids: HashMap<String, String>,
    serials: HashMap<String, String>,
    addresses: HashMap<IpAddr, String>,
}

impl QuarantineSet {
    /// The set the `quarantine` resources held after an update describe.
    /// A resource that does not decode refuses the whole update.
    pub fn from_resources(
        version: u64,
        state: &BTreeMap<String, Resource>,
    ) -> Result<QuarantineSet, String> {
        let mut set = QuarantineSet {
            version,
            entries: state.len(),
            ..Default::default()
        };
        for (name, resource) in state {
            let body: QuarantineBody = resource.decode()?;
            for id in body.spiffe_ids {
                set.ids.insert(id, name.clone());
            }
            for serial in body.serials {
                let canonical = ward_identity::svid::canonical_serial(&serial)
                    .ok_or_else(|| format!("quarantine {name:?}: serial {serial:?} is not hex"))?;
                set.serials.insert(canonical, name.clone());
            }
            for address in body.addresses {
                let ip: IpAddr = address.parse().map_err(|_| {
                    format!("quarantine {name:?}: {address:?} is not an IP address")
                })?;
                set.addresses.insert(ip, name.clone());
            }
        }
        Ok(set)
    }

    fn is_empty(&self) -> bool {
        self.ids.is_empty() && self.serials.is_empty() && self.addresses.is_empty()
    }

    /// The entry that quarantines `peer`, and what of it matched.
    pub fn check(&self, peer: &Peer) -> Option<Hit> {
        if self.is_empty() {
            return None;
        }
        let hit = |by, entry: Option<&String>| {
            entry.map(|entry| Hit {
                entry: entry.clone(),
                by,
            })
        };
        peer.spiffe_id
            .as_ref()
            .and_then(|id| hit("spiffe_id", self.ids.get(id.as_str())))
            .or_else(|| {
                peer.serial
                    .as_ref()
                    .and_then(|s| hit("serial", self.serials.get(s)))
            })
            .or_else(|| hit("address", self.addresses.get(&peer.address)))
    }
}

/// The other side of a meshed connection, as a quarantine sees it.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Inbound: the verified client certificate's; outbound: the identity
    /// the destination must present (before the handshake) or presented.
    pub spiffe_id: Option<SpiffeId>,
    /// The certificate's serial ([`ward_identity::svid::serial_of`]'s
    /// form), once there was a handshake.
    pub serial: Option<String>,
    /// Inbound: the source address; outbound: the destination's.
    pub address: IpAddr,
}

/// Why a peer is refused: the quarantine entry, and what matched
/// (`spiffe_id`, `serial`, `address`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub entry: String,
    pub by: &'static str,
}

/// The quarantine in force and the live meshed connections.
pub struct Quarantine {
    set: ArcSwap<QuarantineSet>,
    live: Mutex<HashMap<u64, Live>>,
    next: AtomicU64,
    metrics: Arc<ProxyMetrics>,
}

struct Live {
    peer: Peer,
    direction: &'static str,
    cut: Arc<Cut>,
}

/// A live connection's place in the registry, held by its I/O
/// ([`severable::Severable`]); dropping it unregisters the connection.
pub struct Tracked {
    registry: Arc<Quarantine>,
    id: u64,
    cut: Arc<Cut>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.registry
            .live
            .lock()
            .expect("not poisoned")
            .remove(&self.id);
    }
}

impl Quarantine {
    pub fn new(metrics: Arc<ProxyMetrics>) -> Arc<Quarantine> {
        Arc::new(Quarantine {
            set: ArcSwap::from_pointee(QuarantineSet::default()),
            live: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            metrics,
        })
    }

    /// The entry that quarantines `peer`, if one does.
    pub fn check(&self, peer: &Peer) -> Option<Hit> {
        self.set.load().check(peer)
    }

    /// Registers a connection that passed the handshake, so a later update
    /// can close it; refused (nothing registered) when it is quarantined.
    /// Checked after registering: an update that lands in between either
    /// is seen here or sees the registration.
    pub fn admit(self: &Arc<Self>, peer: Peer, direction: &'static str) -> Result<Tracked, Hit> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let cut = Arc::new(Cut::default());
        self.live.lock().expect("not poisoned").insert(
            id,
            Live {
                peer: peer.clone(),
                direction,
                cut: cut.clone(),
            },
        );
        let tracked = Tracked {
            registry: self.clone(),
            id,
            cut,
        };
        match self.check(&peer) {
            // Dropping `tracked` unregisters it.
            Some(hit) => Err(hit),
            None => Ok(tracked),
        }
    }

    /// Puts `set` in force and closes every live connection it names.
    pub fn apply(&self, set: QuarantineSet) {
        let (version, entries) = (set.version, set.entries);
        let set = Arc::new(set);
        // Stored before the registry is read (see `admit`).
        self.set.store(set.clone());
        self.metrics.quarantined_identities.set(entries as i64);
        let mut closed = 0;
        {
            let live = self.live.lock().expect("not poisoned");
            for conn in live.values() {
                if conn.cut.is_cut() {
                    continue;
                }
                let Some(hit) = set.check(&conn.peer) else {
                    continue;
                };
                conn.cut.sever();
                closed += 1;
                self.metrics
                    .quarantine_closed
                    .with_label_values(&[conn.direction])
                    .inc();
                info!(target: "ward::access", direction = conn.direction, peer = ?conn.peer.spiffe_id.as_ref().map(|p| p.as_str()), address = %conn.peer.address, serial = ?conn.peer.serial, decision = "refused", reason = "quarantined", entry = %hit.entry, matched = hit.by, "open connection closed: its peer is quarantined");
            }
        }
        info!(version, entries, closed, "quarantine in force");
    }

    /// Live meshed connections (for tests and debugging).
    pub fn live_connections(&self) -> usize {
        self.live.lock().expect("not poisoned").len()
    }
}

#[cfg(test)]
mod tests;
