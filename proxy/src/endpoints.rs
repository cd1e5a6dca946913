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
use ward_identity::SpiffeId;

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

pub type SharedEndpoints = Arc<ArcSwap<EndpointTable>>;

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
