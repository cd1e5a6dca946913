use serde_json::json;

use super::delta::{ResourceCache, TypeState, Versions};
use super::*;

fn policy(name: &str, yaml: &str) -> Resource {
    Resource::new(
        name,
        &PolicyBody {
            kind: "AuthorizationPolicy".into(),
            namespace: "ns".into(),
            name: name.into(),
            yaml: yaml.into(),
        },
    )
}

fn versions(resources: &[&Resource]) -> Versions {
    resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect()
}

fn update(nonce: u64, resources: Vec<Resource>, removed: Vec<String>) -> Update {
    Update {
        nonce,
        resource_type: ResourceType::Policy,
        system_version: nonce,
        resources,
        removed,
    }
}

fn names(resources: &[Resource]) -> Vec<&str> {
    resources.iter().map(|r| r.name.as_str()).collect()
}

#[test]
fn versions_follow_content_only() {
    let a = policy("a", "x: 1");
    assert_eq!(a.version, policy("a", "x: 1").version);
    assert_ne!(a.version, policy("a", "x: 2").version);
    assert_eq!(a.version.len(), 16);
}

#[test]
fn initial_state_is_everything_then_nothing_once_acked() {
    let (a, b) = (policy("a", "1"), policy("b", "1"));
    let mut state = TypeState::default();
    let (changed, removed) = state.delta_to([&a, &b]).expect("a first delta");
    assert_eq!(names(&changed), ["a", "b"]);
    assert!(removed.is_empty());
    state.sent(1, &changed, &removed);
    assert_eq!(state.in_flight(), Some(1));
    assert!(state.ack(1));
    assert_eq!(state.acked(), &versions(&[&a, &b]));
    assert_eq!(state.delta_to([&a, &b]), None);
}

#[test]
fn add_change_and_remove_send_only_the_difference() {
    let (a, b, c) = (policy("a", "1"), policy("b", "1"), policy("c", "1"));
    let mut state = TypeState::resume(versions(&[&a, &b]));
    let b2 = policy("b", "2");
    let (changed, removed) = state.delta_to([&b2, &c]).expect("a delta");
    assert_eq!(names(&changed), ["b", "c"]);
    assert_eq!(removed, ["a"]);
    state.sent(7, &changed, &removed);
    assert!(state.ack(7));
    assert_eq!(state.acked(), &versions(&[&b2, &c]));
}

#[test]
fn resume_with_current_versions_sends_nothing_and_with_stale_ones_the_difference() {
    let (a, b) = (policy("a", "1"), policy("b", "1"));
    let current = TypeState::resume(versions(&[&a, &b]));
    assert_eq!(current.delta_to([&a, &b]), None);

    let stale_b = policy("b", "old");
    let gone = policy("gone", "1");
    let stale = TypeState::resume(versions(&[&a, &stale_b, &gone]));
    let (changed, removed) = stale.delta_to([&a, &b]).expect("a delta");
    assert_eq!(changed, vec![b.clone()]);
    assert_eq!(removed, ["gone"]);
}

#[test]
fn nack_keeps_the_acked_state_and_a_later_change_is_diffed_against_it() {
    let a = policy("a", "1");
    let mut state = TypeState::resume(versions(&[&a]));
    let bad = policy("a", "unparseable");
    let (changed, removed) = state.delta_to([&bad]).unwrap();
    state.sent(2, &changed, &removed);
    assert!(!state.ack(99), "an unknown nonce is not an answer");
    assert!(state.nack(2, "line 1: unknown field".into()));
    assert_eq!(state.acked(), &versions(&[&a]));
    assert_eq!(state.rejected(), Some(&(2, "line 1: unknown field".into())));
    // The fix is diffed against what the sidecar still enforces.
    let fixed = policy("a", "2");
    let (changed, _) = state.delta_to([&fixed]).unwrap();
    assert_eq!(changed, vec![fixed]);
    // Back to the acked state: nothing to send.
    assert_eq!(state.delta_to([&a]), None);
}

#[test]
fn on_demand_names_that_do_not_exist_are_answered_as_removed() {
    let ep = Resource::new(
        "198.18.0.5",
        &EndpointBody {
            spiffe_id: Some("spiffe://td/ns/a/sa/b".into()),
            ..Default::default()
        },
    );
    let state = TypeState::default();
    let lookup = |name: &str| (name == "198.18.0.5").then(|| ep.clone());
    let (changed, removed) = state.delta_for(["198.18.0.5", "198.18.0.9"], lookup);
    assert_eq!(changed, vec![ep.clone()]);
    assert_eq!(removed, ["198.18.0.9"]);
    let held = TypeState::resume(versions(&[&ep]));
    let (changed, removed) = held.delta_for(["198.18.0.5"], lookup);
    assert!(changed.is_empty() && removed.is_empty());
}

#[test]
fn the_cache_commits_only_what_was_put_in_force() {
    let (a, b) = (policy("a", "1"), policy("b", "1"));
    let mut cache = ResourceCache::default();
    let first = update(1, vec![a.clone(), b.clone()], vec![]);
    let state = cache.apply(&first);
    cache.commit(ResourceType::Policy, state);
    // A refused update: applied to a copy, never committed.
    let refused = update(2, vec![policy("a", "bad")], vec!["b".into()]);
    let tentative = cache.apply(&refused);
    assert_eq!(tentative.len(), 1);
    assert_eq!(
        cache.held()[&ResourceType::Policy],
        versions(&[&a, &b]),
        "the NACKed update left the cache as it was"
    );
    let removal = update(3, vec![], vec!["a".into()]);
    let state = cache.apply(&removal);
    cache.commit(ResourceType::Policy, state);
    assert_eq!(cache.held()[&ResourceType::Policy], versions(&[&b]));
}

#[test]
fn messages_round_trip_as_documented_lines() {
    let hello = ClientMessage::Hello(Hello {
        api_version: API_VERSION.into(),
        resource_types: vec![ResourceType::Policy, ResourceType::Endpoint],
        ..Default::default()
    });
    let line = encode_line(&hello);
    assert_eq!(line.last(), Some(&b'\n'));
    let text = std::str::from_utf8(&line).unwrap();
    assert!(text.starts_with(r#"{"type":"hello","api_version":"ward.io/discovery/v2""#));
    assert_eq!(
        serde_json::from_slice::<ClientMessage>(&line).unwrap(),
        hello
    );
    let ack: ClientMessage = serde_json::from_str(r#"{"type":"ack","nonce":3}"#).unwrap();
    assert_eq!(ack, ClientMessage::Ack(Ack { nonce: 3 }));
}

#[test]
fn unknown_fields_types_and_messages_from_newer_peers_are_tolerated() {
    // A newer sidecar: extra fields, an unknown resource type, an unknown message.
    let hello: ClientMessage = serde_json::from_value(json!({
        "type": "hello", "api_version": API_VERSION, "zone": "eu-1",
        "node": {"pod": "p", "labels": {}, "proxy_version": "9", "arch": "riscv"},
        "resource_types": ["policy", "route"],
    }))
    .unwrap();
    let ClientMessage::Hello(hello) = hello else {
        panic!("not a hello")
    };
    assert_eq!(
        hello.resource_types,
        [ResourceType::Policy, ResourceType::Unknown]
    );
    assert_eq!(hello.extra["zone"], "eu-1");
    assert_eq!(hello.node.pod.as_deref(), Some("p"));
    let later: ClientMessage = serde_json::from_str(r#"{"type":"trace","id":1}"#).unwrap();
    assert_eq!(later, ClientMessage::Unknown);
    // A newer control plane: extra fields and an unknown message type.
    let update: ServerMessage = serde_json::from_value(json!({
        "type": "update", "nonce": 1, "resource_type": "endpoint", "shard": 4,
        "resources": [{"name": "198.18.0.5", "version": "v", "ttl": 3,
                       "body": {"spiffe_id": "spiffe://td/ns/a/sa/b", "zone": "x"}}],
    }))
    .unwrap();
    let ServerMessage::Update(update) = update else {
        panic!("not an update")
    };
    let body: EndpointBody = update.resources[0].decode().unwrap();
    assert_eq!(body.spiffe_id.as_deref(), Some("spiffe://td/ns/a/sa/b"));
    assert!(update.removed.is_empty());
    let heartbeat: ServerMessage = serde_json::from_str(r#"{"type":"heartbeat"}"#).unwrap();
    assert_eq!(heartbeat, ServerMessage::Unknown);
}

#[test]
fn a_quarantine_resource_is_its_own_type_and_omits_what_it_does_not_revoke() {
    assert_eq!(
        serde_json::to_string(&ResourceType::Quarantine).unwrap(),
        "\"quarantine\""
    );
    assert!(!ResourceType::Quarantine.is_on_demand());
    let body = QuarantineBody {
        target: "shop/web-1".into(),
        serials: vec!["1a2b".into()],
        addresses: vec!["198.18.0.9".into()],
        ..Default::default()
    };
    let json = serde_json::to_value(&body).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"target": "shop/web-1", "serials": ["1a2b"], "addresses": ["198.18.0.9"]})
    );
    assert_eq!(
        serde_json::from_value::<QuarantineBody>(json).unwrap(),
        body
    );
}
