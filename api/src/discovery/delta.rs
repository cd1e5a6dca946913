//! The delta logic of both ends, kept together so it is tested together:
//! [`TypeState`] is the control plane's record of what one sidecar holds of
//! one resource type; [`ResourceCache`] is the sidecar's copy.

use std::collections::{BTreeMap, BTreeSet};

use super::{Resource, ResourceType, Update};

/// Resource name → version.
pub type Versions = BTreeMap<String, String>;

/// The control plane's view of one type on one stream: what the sidecar
/// acknowledged, and the one update awaiting its answer. A second update
/// of the same type waits for that answer, so the two ends never disagree
/// on what a NACK rejected.
#[derive(Debug, Default, Clone)]
pub struct TypeState {
    acked: Versions,
    in_flight: Option<(u64, Versions)>,
    /// The last NACK: its nonce and the sidecar's reason.
    rejected: Option<(u64, String)>,
}

impl TypeState {
    /// Starts from what a reconnecting sidecar says it holds.
    pub fn resume(held: Versions) -> Self {
        TypeState {
            acked: held,
            ..Default::default()
        }
    }

    /// What the sidecar enforces.
    pub fn acked(&self) -> &Versions {
        &self.acked
    }

    pub fn in_flight(&self) -> Option<u64> {
        self.in_flight.as_ref().map(|(nonce, _)| *nonce)
    }

    /// The last update this sidecar refused, and why; cleared by an ACK.
    pub fn rejected(&self) -> Option<&(u64, String)> {
        self.rejected.as_ref()
    }

    /// For a pushed type: the delta that takes the sidecar from what it
    /// acknowledged to `current` (the whole state for its workload), or
    /// `None` when it already holds exactly that.
    pub fn delta_to<'a>(
        &self,
        current: impl IntoIterator<Item = &'a Resource>,
    ) -> Option<(Vec<Resource>, Vec<String>)> {
        let mut changed = Vec::new();
        let mut present = BTreeSet::new();
        for resource in current {
            present.insert(resource.name.as_str());
            if self.acked.get(&resource.name) != Some(&resource.version) {
                changed.push(resource.clone());
            }
        }
        let removed: Vec<String> = self
            .acked
            .keys()
            .filter(|name| !present.contains(name.as_str()))
            .cloned()
            .collect();
        (!changed.is_empty() || !removed.is_empty()).then_some((changed, removed))
    }

    /// For an on-demand type: the delta for `names`, given each name's
    /// current resource (`None`: it does not exist). A name that does not
    /// exist is always listed as removed, so a first subscription learns
    /// that the address is not meshed.
    pub fn delta_for<'a, F>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
        mut lookup: F,
    ) -> (Vec<Resource>, Vec<String>)
    where
        F: FnMut(&str) -> Option<Resource>,
    {
        let mut changed = Vec::new();
        let mut removed = Vec::new();
        for name in names {
            match lookup(name) {
                Some(r) if self.acked.get(name) == Some(&r.version) => {}
                Some(r) => changed.push(r),
                None => removed.push(name.to_owned()),
            }
        }
        (changed, removed)
    }

    /// Records an update as sent: on ACK the sidecar holds `acked` plus it.
    pub fn sent(&mut self, nonce: u64, resources: &[Resource], removed: &[String]) {
        let mut after = self.acked.clone();
        for r in resources {
            after.insert(r.name.clone(), r.version.clone());
        }
        for name in removed {
            after.remove(name);
        }
        self.in_flight = Some((nonce, after));
    }

    /// The sidecar enforces the update `nonce`. False for any other nonce.
    pub fn ack(&mut self, nonce: u64) -> bool {
        match self.in_flight.take() {
            Some((sent, after)) if sent == nonce => {
                self.acked = after;
                self.rejected = None;
                true
            }
            other => {
                self.in_flight = other;
                false
            }
        }
    }

    /// The sidecar refused the update `nonce` and keeps what it acknowledged
    /// before. False for any other nonce.
    pub fn nack(&mut self, nonce: u64, error: String) -> bool {
        match self.in_flight.take() {
            Some((sent, _)) if sent == nonce => {
                self.rejected = Some((nonce, error));
                true
            }
            other => {
                self.in_flight = other;
                false
            }
        }
    }

    /// Forgets names the sidecar unsubscribed from.
    pub fn forget(&mut self, names: &[String]) {
        for name in names {
            self.acked.remove(name);
        }
    }
}

/// The sidecar's copy of what it enforces, by type and name. An update is
/// applied to a copy ([`ResourceCache::apply`]); only if the sidecar could
/// put that copy in force is it committed, so a NACKed update leaves the
/// cache (and what the next hello reports) as it was.
#[derive(Debug, Default, Clone)]
pub struct ResourceCache {
    types: BTreeMap<ResourceType, BTreeMap<String, Resource>>,
}

impl ResourceCache {
    pub fn get(&self, resource_type: ResourceType) -> Option<&BTreeMap<String, Resource>> {
        self.types.get(&resource_type)
    }

    /// The state of the update's type once the update is applied.
    pub fn apply(&self, update: &Update) -> BTreeMap<String, Resource> {
        let mut state = self
            .types
            .get(&update.resource_type)
            .cloned()
            .unwrap_or_default();
        for r in &update.resources {
            state.insert(r.name.clone(), r.clone());
        }
        for name in &update.removed {
            state.remove(name);
        }
        state
    }

    pub fn commit(&mut self, resource_type: ResourceType, state: BTreeMap<String, Resource>) {
        self.types.insert(resource_type, state);
    }

    /// Drops names no longer subscribed to.
    pub fn forget(&mut self, resource_type: ResourceType, names: &[String]) {
        if let Some(state) = self.types.get_mut(&resource_type) {
            for name in names {
                state.remove(name);
            }
        }
    }

    /// What a hello reports, to resume from.
    pub fn held(&self) -> BTreeMap<ResourceType, Versions> {
        self.types
            .iter()
            .map(|(t, state)| {
                let versions = state
                    .iter()
                    .map(|(name, r)| (name.clone(), r.version.clone()))
                    .collect();
                (*t, versions)
            })
            .collect()
    }
}
