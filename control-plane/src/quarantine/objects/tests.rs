use serde_json::{Value, json};

use super::*;
use crate::quarantine::Target;

/// A `Quarantine` object as the API server hands it out: server-set
/// metadata, and the spec `ward quarantine --kubernetes` writes.
fn object(name: &str, target: &str) -> Value {
    json!({
        "apiVersion": "ward.io/v1alpha1",
        "kind": "Quarantine",
        "metadata": {
            "name": name,
            "uid": "5f0c6a52-8a3e-4d0e-9d57-1b1d2f0e4c11",
            "resourceVersion": "4711",
            "generation": 1,
            "creationTimestamp": "2026-12-03T12:00:00Z",
            "managedFields": [{"manager": "ward", "operation": "Update"}],
        },
        "spec": {
            "target": target,
            "reason": "key in build logs (INC-4711)",
            "requestedBy": "alice",
            "requestedAt": "2026-12-03T12:00:00.123Z",
        },
    })
}

fn targets(objects: &QuarantineObjects) -> Vec<(String, String)> {
    objects
        .snapshot()
        .entries
        .into_iter()
        .map(|(name, entry)| (name, entry.target.to_string()))
        .collect()
}

#[test]
fn an_object_becomes_the_entry_the_same_file_would() {
    let target: Target = "spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap();
    let name = target.entry_name();
    let entry = entry_of(&object(&name, &target.to_string())).unwrap();
    assert_eq!(entry.name, name);
    assert_eq!(entry.target, target);
    assert_eq!(entry.reason, "key in build logs (INC-4711)");
    assert_eq!(entry.requested_by, "alice");
    assert_eq!(entry.requested_at, "2026-12-03T12:00:00.123Z");
    // The document a file holds, and the one the CLI sends, are the same.
    assert_eq!(Entry::parse(&entry.to_yaml()).unwrap(), entry);
    assert_eq!(entry_of(&entry.to_value()).unwrap(), entry);
    // A status (or any field the API server adds) changes nothing.
    let mut with_status = object(&name, &target.to_string());
    with_status["status"] = json!({"observed": true});
    assert_eq!(entry_of(&with_status).unwrap(), entry);
}

#[test]
fn objects_that_are_not_valid_quarantines_are_refused_with_the_rule() {
    let good = object("identity-1", "spiffe://cluster.local/ns/shop/sa/cart");
    let with = |pointer: &str, value: Value| {
        let mut object = good.clone();
        *object.pointer_mut(pointer).expect("a field of the object") = value;
        object
    };
    let without = |section: &str, field: &str| {
        let mut object = good.clone();
        object[section].as_object_mut().unwrap().remove(field);
        object
    };
    let cases = [
        (with("/apiVersion", json!("ward.io/v1")), "apiVersion"),
        (with("/kind", json!("Policy")), "kind"),
        (with("/spec/target", json!("cart")), "spec.target"),
        (
            with("/spec/target", json!("spiffe://Cluster.Local/ns/a/sa/b")),
            "spec.target",
        ),
        (with("/spec/target", json!("serial:xyz")), "spec.target"),
        (with("/spec/reason", json!("")), "spec.reason"),
        (with("/spec/requestedBy", json!("")), "spec.requestedBy"),
        (
            with("/spec/requestedAt", json!("yesterday")),
            "spec.requestedAt",
        ),
        (with("/metadata/name", json!("Not_A_Name")), "metadata.name"),
        (with("/spec/target", json!(42)), "not a Quarantine document"),
        (without("spec", "reason"), "not a Quarantine document"),
        (without("metadata", "name"), "not a Quarantine document"),
    ];
    for (object, expected) in cases {
        let err = entry_of(&object).unwrap_err().to_string();
        assert!(err.contains(expected), "{expected}: {err}\n{object}");
    }
}

#[test]
fn objects_come_and_go_with_their_watch_events() {
    let mut objects = QuarantineObjects::default();
    assert_eq!(objects.snapshot(), ObjectEntries::default());
    objects.apply(WatchEvent::Restarted(vec![
        object("a", "shop/web-1"),
        object("b", "serial:1f"),
    ]));
    assert_eq!(
        targets(&objects),
        [
            ("a".into(), "shop/web-1".into()),
            ("b".into(), "serial:1f".into())
        ]
    );
    objects.apply(WatchEvent::Applied(object(
        "c",
        "spiffe://cluster.local/ns/shop/sa/api",
    )));
    objects.apply(WatchEvent::Deleted(object("a", "shop/web-1")));
    assert_eq!(
        targets(&objects),
        [
            ("b".into(), "serial:1f".into()),
            ("c".into(), "spiffe://cluster.local/ns/shop/sa/api".into())
        ]
    );
    // A relist is everything there is: what it lacks was deleted while the
    // watch was down.
    objects.apply(WatchEvent::Restarted(vec![object(
        "c",
        "spiffe://cluster.local/ns/shop/sa/api",
    )]));
    assert_eq!(objects.snapshot().entries.len(), 1);
    assert_eq!(objects.snapshot().invalid, 0);
}

#[test]
fn an_object_that_stops_validating_keeps_its_quarantine_until_deleted() {
    let mut objects = QuarantineObjects::default();
    objects.apply(WatchEvent::Restarted(vec![object("a", "shop/web-1")]));
    let before = objects.snapshot();

    let mut broken = object("a", "shop/web-1");
    broken["spec"]["target"] = json!("not a target");
    objects.apply(WatchEvent::Applied(broken.clone()));
    let after = objects.snapshot();
    assert_eq!(
        after.entries, before.entries,
        "an invalid edit lifted nothing"
    );
    assert_eq!(after.invalid, 1);

    // Still refused after a relist: the quarantine it held stays.
    objects.apply(WatchEvent::Restarted(vec![broken.clone()]));
    assert_eq!(objects.snapshot().entries, before.entries);
    assert_eq!(objects.snapshot().invalid, 1);

    // Fixed: valid again, nothing refused.
    objects.apply(WatchEvent::Applied(object("a", "shop/web-1")));
    assert_eq!(objects.snapshot(), before);

    // A new object that never validated holds nothing, and is counted.
    let mut new = object("b", "shop/web-2");
    new["spec"]["reason"] = json!("");
    objects.apply(WatchEvent::Applied(new.clone()));
    assert_eq!(objects.snapshot().entries, before.entries);
    assert_eq!(objects.snapshot().invalid, 1);

    // Only a deletion lifts, valid or not.
    objects.apply(WatchEvent::Deleted(broken));
    objects.apply(WatchEvent::Deleted(new));
    assert_eq!(objects.snapshot(), ObjectEntries::default());
}

#[test]
fn the_watched_resource_is_the_documents_kind() {
    let resource = crate::k8s::source::quarantine_resource();
    assert_eq!(
        resource.api_version,
        crate::quarantine::document::API_VERSION
    );
    assert_eq!(resource.kind, crate::quarantine::document::KIND);
    assert_eq!(resource.plural, "quarantines");
    // The CRD that serves it.
    let crd: Value = serde_yaml_ng::from_str(include_str!(
        "../../../../deploy/base/crds/quarantines.yaml"
    ))
    .unwrap();
    assert_eq!(crd["spec"]["group"], resource.group.as_str());
    assert_eq!(crd["spec"]["scope"], "Cluster");
    assert_eq!(crd["spec"]["names"]["plural"], resource.plural.as_str());
    assert_eq!(
        crd["spec"]["versions"][0]["name"],
        resource.version.as_str()
    );
}
