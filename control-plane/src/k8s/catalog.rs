//! Policy custom resources, validated one by one.
//!
//! In a cluster each `AuthorizationPolicy` / `PeerAuthentication` is its own
//! object, so an invalid one is rejected alone and reported in its
//! `status`. It still never *widens* access for the workloads it selects
//! (the schema should have refused it; one stored anyway, by an older CRD
//! or a skewed parser, fails closed): Ward enforces a stand-in in its place
//! ([`fail_closed`]): an invalid ALLOW allows nothing, an invalid DENY (or
//! CUSTOM, or an unknown action) denies every request, an invalid
//! PeerAuthentication is STRICT, for the workloads its selector picks (the
//! whole namespace when the selector itself is unusable). An invalid AUDIT
//! or dry-run policy never decided anything and gets no stand-in. The
//! stand-in replaces any earlier valid generation too: what the operator
//! meant is unknown, so the earlier rules might allow more than intended.
//! Everything else keeps working. The store then gets the enforced
//! documents as one set, exactly as from a directory.
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
    /// Rejected, and enforced as this stand-in instead.
    pub fail_closed: Option<FailClosed>,
}

/// What Ward enforces in place of a policy it cannot apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FailClosed {
    /// An ALLOW with no rules: the selected workloads allow only what
    /// other ALLOW policies allow.
    AllowNothing,
    /// A DENY matching every request to the selected workloads.
    DenyAll,
    /// mTLS STRICT for the selected workloads.
    Strict,
}

impl FailClosed {
    pub const ALL: [FailClosed; 3] = [
        FailClosed::AllowNothing,
        FailClosed::DenyAll,
        FailClosed::Strict,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailClosed::AllowNothing => "allow_nothing",
            FailClosed::DenyAll => "deny_all",
            FailClosed::Strict => "strict",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            FailClosed::AllowNothing => "enforced fail-closed as an ALLOW that allows nothing",
            FailClosed::DenyAll => "enforced fail-closed as a DENY of every request",
            FailClosed::Strict => "enforced fail-closed as mTLS STRICT",
        }
    }
}

impl Verdict {
    /// The `status` object for the resource (`Accepted` condition, in the
    /// shape of `metav1.Condition`). `now` is RFC 3339.
    pub fn status(&self, now: &str) -> Value {
        let (status, reason, message) = match (&self.rejected, self.fail_closed) {
            (None, _) => (
                "True",
                "Accepted",
                "valid; distributed to the selected workloads".to_owned(),
            ),
            (Some(err), Some(stand_in)) => (
                "False",
                "Invalid",
                format!("invalid, {} until fixed: {err}", stand_in.describe()),
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
                fail_closed: None,
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
                        fail_closed: None,
                    }
                }
                Err(err) => {
                    let stand_in = fail_closed(&key, &object);
                    let effect = stand_in.as_ref().map(|(effect, _)| *effect);
                    match stand_in {
                        Some((_, in_force)) => {
                            changed = self
                                .in_force
                                .get(&key)
                                .is_none_or(|f| f.text.text != in_force.text.text);
                            self.in_force.insert(key.clone(), in_force);
                        }
                        None => changed = self.in_force.remove(&key).is_some(),
                    }
                    Verdict {
                        generation,
                        rejected: Some(err.to_string()),
                        fail_closed: effect,
                    }
                }
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

    /// Rejected resources enforced as a stand-in, by effect.
    pub fn fail_closed_counts(&self) -> BTreeMap<FailClosed, usize> {
        let mut counts = BTreeMap::new();
        for effect in self
            .resources
            .values()
            .filter_map(|r| r.verdict.fail_closed)
        {
            *counts.entry(effect).or_default() += 1;
        }
        counts
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

/// The stand-in Ward enforces for an invalid resource (see the module
/// docs), parsed; `None` when the resource never decided anything (AUDIT,
/// dry-run).
fn fail_closed(key: &ResourceKey, object: &Value) -> Option<(FailClosed, InForce)> {
    let kind = object.get("kind").and_then(Value::as_str)?;
    let spec = object.get("spec");
    let dry_run = object
        .pointer("/metadata/annotations/ward.io~1dry-run")
        .and_then(Value::as_str)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let (effect, body) = match kind {
        "AuthorizationPolicy" => {
            if dry_run {
                return None;
            }
            match spec.and_then(|s| s.get("action")).map(Value::as_str) {
                None | Some(Some("ALLOW")) => {
                    (FailClosed::AllowNothing, json!({"action": "ALLOW"}))
                }
                Some(Some("AUDIT")) => return None,
                _ => (
                    FailClosed::DenyAll,
                    json!({"action": "DENY", "rules": [{}]}),
                ),
            }
        }
        "PeerAuthentication" => (FailClosed::Strict, json!({"mtls": {"mode": "STRICT"}})),
        _ => return None,
    };
    let document = |selector: Option<&Value>| {
        let mut spec = body.clone();
        if let Some(selector) = selector {
            spec["selector"] = json!({ "matchLabels": selector });
        }
        let doc = json!({
            "apiVersion": "security.ward.io/v1",
            "kind": kind,
            "metadata": {"name": key.2, "namespace": key.1},
            "spec": spec,
        });
        serde_yaml_ng::to_string(&doc).expect("JSON values serialize as YAML")
    };
    let label = format!("{} {}/{} (fail-closed stand-in)", key.0, key.1, key.2);
    // The resource's own selector when it is usable, else the namespace
    // (wider, which is the closed side for a stand-in).
    let selector = spec.and_then(|s| s.pointer("/selector/matchLabels"));
    let (text, set) = [selector, None]
        .into_iter()
        .filter_map(|selector| {
            let text = document(selector);
            PolicySet::parse_str(&label, &text)
                .ok()
                .map(|set| (text, set))
        })
        .next()?;
    let doc = PolicyDoc {
        kind: if kind == "PeerAuthentication" {
            "PeerAuthentication"
        } else {
            "AuthorizationPolicy"
        },
        namespace: key.1.clone(),
        name: key.2.clone(),
        text: text.clone(),
    };
    let generation = object
        .pointer("/metadata/generation")
        .and_then(Value::as_i64);
    Some((
        effect,
        InForce {
            generation,
            text: SourceText { label, text },
            doc,
            set,
        },
    ))
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
