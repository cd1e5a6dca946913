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
use crate::policy_store::SourceText;

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

/// The policy resources of one kind as the API has them, and the text of
/// each one's last valid generation.
#[derive(Debug, Default)]
pub struct PolicyCatalog {
    resources: BTreeMap<ResourceKey, Resource>,
    in_force: BTreeMap<ResourceKey, (Option<i64>, SourceText)>,
}

impl PolicyCatalog {
    /// Folds one event. Returns whether the enforced set changed.
    pub fn apply(&mut self, event: WatchEvent<Value>) -> bool {
        let before: Vec<SourceText> = self.texts();
        match event {
            WatchEvent::Applied(object) => self.upsert(object),
            WatchEvent::Deleted(object) => {
                if let Some(key) = policy_key(&object) {
                    self.resources.remove(&key);
                    self.in_force.remove(&key);
                }
            }
            WatchEvent::Restarted(objects) => {
                let keys: Vec<ResourceKey> = objects.iter().filter_map(policy_key).collect();
                self.resources.retain(|k, _| keys.contains(k));
                self.in_force.retain(|k, _| keys.contains(k));
                for object in objects {
                    self.upsert(object);
                }
            }
        }
        before != self.texts()
    }

    fn upsert(&mut self, object: Value) {
        let Some(key) = policy_key(&object) else {
            return;
        };
        let generation = object
            .pointer("/metadata/generation")
            .and_then(Value::as_i64);
        let text = SourceText {
            label: format!("{} {}/{}", key.0, key.1, key.2),
            text: render(&object),
        };
        let verdict = match PolicySet::parse_texts(&[(text.label.clone(), text.text.clone())]) {
            Ok(_) => {
                self.in_force.insert(key.clone(), (generation, text));
                Verdict {
                    generation,
                    rejected: None,
                    previous_in_force: None,
                }
            }
            Err(err) => Verdict {
                generation,
                rejected: Some(err.to_string()),
                previous_in_force: self.in_force.get(&key).and_then(|(g, _)| *g),
            },
        };
        self.resources.insert(key, Resource { object, verdict });
    }

    /// The enforced documents: each resource's last valid generation.
    pub fn texts(&self) -> Vec<SourceText> {
        self.in_force.values().map(|(_, t)| t.clone()).collect()
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
