//! The Kubernetes mode's quarantine entries: `Quarantine` objects
//! (`ward.io/v1alpha1`, cluster-scoped), the same document as a file of
//! `<data-dir>/quarantine/`, as the watcher of [`crate::k8s::quarantines`]
//! delivers them. Each object is validated when it changes. One that does
//! not validate is logged and counted, and keeps in force what it held when
//! it last validated: only deleting the object lifts its quarantine.

use std::collections::BTreeMap;

use serde_json::Value;
use tracing::error;

use super::document::{DocError, Entry};
use crate::k8s::WatchEvent;

/// What the Quarantine objects hold, once listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectEntries {
    /// Object name → the entry in force for it.
    pub entries: BTreeMap<String, Entry>,
    /// Objects whose content does not validate now.
    pub invalid: usize,
}

/// One object as known: what it keeps in force, and why its content is
/// refused (if it is).
#[derive(Debug, Clone)]
struct Held {
    entry: Option<Entry>,
    error: Option<DocError>,
}

/// The Quarantine objects of the cluster, by name.
#[derive(Debug, Default)]
pub struct QuarantineObjects {
    objects: BTreeMap<String, Held>,
}

/// The entry one object holds. The object is the API server's JSON, with
/// its `apiVersion` and `kind` (list items come without them: the watcher
/// puts them back).
pub fn entry_of(object: &Value) -> Result<Entry, DocError> {
    Entry::from_value(object.clone())
}

/// `metadata.name`, which every object has.
fn name_of(object: &Value) -> Option<String> {
    object
        .get("metadata")?
        .get("name")?
        .as_str()
        .map(str::to_owned)
}

impl QuarantineObjects {
    /// Applies one watch event: a changed object is validated again, a
    /// deleted one lifted, a relist replaces everything (what it lacks was
    /// deleted meanwhile).
    pub fn apply(&mut self, event: WatchEvent<Value>) {
        match event {
            WatchEvent::Applied(object) => {
                if let Some((name, held)) = validate(&object, &self.objects) {
                    self.objects.insert(name, held);
                }
            }
            WatchEvent::Deleted(object) => {
                if let Some(name) = name_of(&object) {
                    self.objects.remove(&name);
                }
            }
            WatchEvent::Restarted(objects) => {
                let before = std::mem::take(&mut self.objects);
                for object in &objects {
                    if let Some((name, held)) = validate(object, &before) {
                        self.objects.insert(name, held);
                    }
                }
            }
        }
    }

    /// What is in force, and how many objects are refused.
    pub fn snapshot(&self) -> ObjectEntries {
        ObjectEntries {
            entries: self
                .objects
                .iter()
                .filter_map(|(name, held)| Some((name.clone(), held.entry.clone()?)))
                .collect(),
            invalid: self.objects.values().filter(|h| h.error.is_some()).count(),
        }
    }
}

/// The object's name and state: its entry, or (refused) the entry it
/// held in `before`.
fn validate(object: &Value, before: &BTreeMap<String, Held>) -> Option<(String, Held)> {
    let Some(name) = name_of(object) else {
        error!(object = %object, "Quarantine object without metadata.name ignored");
        return None;
    };
    let held = match entry_of(object) {
        Ok(entry) => Held {
            entry: Some(entry),
            error: None,
        },
        Err(err) => {
            let kept = before.get(&name).and_then(|h| h.entry.clone());
            error!(quarantine = %name, error = %err, kept_in_force = ?kept.as_ref().map(|e| e.target.to_string()), "Quarantine object refused");
            Held {
                entry: kept,
                error: Some(err),
            }
        }
    };
    Some((name, held))
}

#[cfg(test)]
mod tests;
