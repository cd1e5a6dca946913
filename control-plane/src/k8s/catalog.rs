//! Policy custom resources, validated one by one.
//!
//! In a cluster each `AuthorizationPolicy` / `PeerAuthentication` is its own
//! object, so an invalid one is rejected alone: it is reported in its
//! `status` and never enforced, and when it was an update, the last valid
//! generation of the same resource stays in force (an invalid edit changes
//! nothing). Everything else keeps working. The store then gets the
//! accepted documents as one set, exactly as from a directory.
//!
//! Pure: events in, texts to offer and statuses to report out.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use ward_policy::PolicySet;

use super::WatchEvent;
use super::source::{ResourceKey, policy_key};
use crate::policy_store::{PolicyDoc, SourceText};

/// What the control plane thinks of one resource, for its `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub generation: Option<i64>,
    /// `None`: accepted. `Some(reason)`: rejected, with the validation error.
    pub rejected: Option<String>,
    /// Rejected, but an earlier generation is still enforced.
    pub previous_in_force: Option<i64>,
}

impl Verdict {
    /// The `status` object for the resource (`Accepted` condition, in the
    /// shape of `metav1.Condition`). `now` is RFC 3339.
    pub fn status(&self, now: &str) -> Value {
        let (status, reason, message) = match (&self.rejected, self.previous_in_force) {
            (None, _) => (
                "True",
                "Accepted",
                "valid; distributed to the selected workloads".to_owned(),
            ),
            (Some(err), Some(previous)) => (
                "False",
                "Invalid",
                format!("invalid, not enforced; generation {previous} stays in force: {err}"),
            ),
            (Some(err), None) => ("False", "Invalid", format!("invalid, not enforced: {err}")),
        };
        let mut condition = json!({
            "type": "Accepted",
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now,
        });
        let mut out = json!({ "conditions": [] });
        if let Some(generation) = self.generation {
            condition["observedGeneration"] = json!(generation);
            out["observedGeneration"] = json!(generation);
        }
        out["conditions"] = json!([condition]);
        out
    }

    /// Whether `current` (the resource's `status` as the API has it)
    /// already says what [`Self::status`] would, transition time aside.
    pub fn is_reported_in(&self, current: Option<&Value>) -> bool {
        let strip = |mut v: Value| {
            if let Some(conditions) = v.get_mut("conditions").and_then(Value::as_array_mut) {
                for c in conditions {
                    if let Some(c) = c.as_object_mut() {
                        c.remove("lastTransitionTime");
                    }
                }
            }
            v
        };
        current.is_some_and(|c| strip(c.clone()) == strip(self.status("")))
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Resource {
    /// As the API has it (status included), for reporting.
    object: Value,
    verdict: Verdict,
}

/// The last valid generation of one resource, parsed once.
#[derive(Debug)]
struct InForce {
    generation: Option<i64>,
    text: SourceText,
    doc: PolicyDoc,
    set: PolicySet,
}

/// The policy resources of one kind as the API has them, and the last
/// valid generation of each.
#[derive(Debug, Default)]
pub struct PolicyCatalog {
    resources: BTreeMap<ResourceKey, Resource>,
    in_force: BTreeMap<ResourceKey, InForce>,
}

impl PolicyCatalog {
    /// Folds one event. Returns whether the enforced set changed. Costs
    /// one parse per changed resource, whatever the catalog's size.
    pub fn apply(&mut self, event: WatchEvent<Value>) -> bool {
        match event {
            WatchEvent::Applied(object) => self.upsert(object),
            WatchEvent::Deleted(object) => policy_key(&object).is_some_and(|key| {
                self.resources.remove(&key);
                self.in_force.remove(&key).is_some()
            }),
            WatchEvent::Restarted(objects) => {
                let keys: std::collections::BTreeSet<ResourceKey> =
                    objects.iter().filter_map(policy_key).collect();
                self.resources.retain(|k, _| keys.contains(k));
                let before = self.in_force.len();
                self.in_force.retain(|k, _| keys.contains(k));
                let mut changed = before != self.in_force.len();
                for object in objects {
                    changed |= self.upsert(object);
                }
                changed
            }
        }
    }

    /// Returns whether the enforced text of the resource changed.
    fn upsert(&mut self, object: Value) -> bool {
        let Some(key) = policy_key(&object) else {
            return false;
        };
        let generation = object
            .pointer("/metadata/generation")
            .and_then(Value::as_i64);
        let text = SourceText {
            label: format!("{} {}/{}", key.0, key.1, key.2),
            text: render(&object),
        };
        let unchanged = self
            .in_force
            .get(&key)
            .is_some_and(|f| f.text.text == text.text);
        let mut changed = false;
        let verdict = if unchanged {
            // A status or metadata-only update: nothing to parse again.
            Verdict {
                generation,
                rejected: None,
                previous_in_force: None,
            }
        } else {
            match PolicySet::parse_str(&text.label, &text.text) {
                Ok(set) => {
                    let info = set.policies().next();
                    let doc = PolicyDoc {
                        kind: info.map_or("AuthorizationPolicy", |i| i.kind),
                        namespace: key.1.clone(),
                        name: key.2.clone(),
                        text: text.text.clone(),
                    };
                    self.in_force.insert(
                        key.clone(),
                        InForce {
                            generation,
                            text,
                            doc,
                            set,
                        },
                    );
                    changed = true;
                    Verdict {
                        generation,
                        rejected: None,
                        previous_in_force: None,
                    }
                }
                Err(err) => Verdict {
                    generation,
                    rejected: Some(err.to_string()),
                    previous_in_force: self.in_force.get(&key).and_then(|f| f.generation),
                },
            }
        };
        if let Some(f) = self.in_force.get_mut(&key)
            && verdict.rejected.is_none()
        {
            f.generation = generation;
        }
        self.resources.insert(key, Resource { object, verdict });
        changed
    }

    /// The enforced documents: each resource's last valid generation.
    pub fn texts(&self) -> Vec<SourceText> {
        self.in_force.values().map(|f| f.text.clone()).collect()
    }

    /// The enforced documents with their parsed policies, for
    /// [`PolicySet::merge`] (no parsing again).
    pub fn in_force(&self) -> impl Iterator<Item = (&PolicyDoc, &PolicySet)> {
        self.in_force.values().map(|f| (&f.doc, &f.set))
    }

    /// Resources whose `status` does not say what the control plane
    /// thinks of them yet, with the verdict to write.
    pub fn unreported(&self) -> Vec<(ResourceKey, Verdict)> {
        self.resources
            .iter()
            .filter(|(_, r)| !r.verdict.is_reported_in(r.object.get("status")))
            .map(|(k, r)| (k.clone(), r.verdict.clone()))
            .collect()
    }

    /// (accepted, rejected) resources.
    pub fn counts(&self) -> (usize, usize) {
        let rejected = self
            .resources
            .values()
            .filter(|r| r.verdict.rejected.is_some())
            .count();
        (self.resources.len() - rejected, rejected)
    }
}

/// The resource as a policy document: what the operator wrote, without
/// what the API server adds (status, resourceVersion, managedFields...),
/// so a status update does not change the enforced text.
fn render(object: &Value) -> String {
    let mut metadata = serde_json::Map::new();
    if let Some(meta) = object.get("metadata").and_then(Value::as_object) {
        for field in ["name", "namespace", "labels"] {
            if let Some(v) = meta.get(field) {
                metadata.insert(field.to_owned(), v.clone());
            }
        }
        if let Some(annotations) = meta.get("annotations").and_then(Value::as_object) {
            let kept: serde_json::Map<String, Value> = annotations
                .iter()
                .filter(|(k, _)| *k != "kubectl.kubernetes.io/last-applied-configuration")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if !kept.is_empty() {
                metadata.insert("annotations".to_owned(), Value::Object(kept));
            }
        }
    }
    let mut doc = serde_json::Map::new();
    for field in ["apiVersion", "kind"] {
        if let Some(v) = object.get(field) {
            doc.insert(field.to_owned(), v.clone());
        }
    }
    doc.insert("metadata".to_owned(), Value::Object(metadata));
    if let Some(spec) = object.get("spec") {
        doc.insert("spec".to_owned(), spec.clone());
    }
    serde_yaml_ng::to_string(&Value::Object(doc)).expect("JSON values serialize as YAML")
}
