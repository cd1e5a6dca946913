use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Container, Pod, PodIP, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;

use super::WatchEvent::{Applied, Deleted, Restarted};
use super::catalog::{FailClosed, PolicyCatalog};
use super::endpoints::EndpointTable;
use super::source::{WatcherAdapter, WatcherEvent};

fn pod(name: &str, ip: Option<&str>, labels: &[(&str, &str)], meshed: bool) -> Pod {
    let mut containers = vec![Container {
        name: "app".into(),
        ..Default::default()
    }];
    if meshed {
        containers.insert(
            0,
            Container {
                name: "ward-proxy".into(),
                ..Default::default()
            },
        );
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("shop".into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers,
            service_account_name: Some("cart".into()),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: ip.map(Into::into),
            pod_ips: ip.map(|ip| vec![PodIP { ip: ip.into() }]),
            ..Default::default()
        }),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn add_update_delete() {
    let mut table = EndpointTable::new("example.org");
    let d = table.apply(Applied(pod(
        "a",
        Some("10.0.0.1"),
        &[("app", "cart")],
        true,
    )));
    assert_eq!(d.added, [ip("10.0.0.1")].into());
    assert_eq!(table.version(), 1);
    let e = table.get(&ip("10.0.0.1")).unwrap();
    assert_eq!(e.spiffe_id.as_str(), "spiffe://example.org/ns/shop/sa/cart");
    assert_eq!(e.labels["app"], "cart");
    assert_eq!(table.snapshot().version, 1);
    assert_eq!(table.snapshot().endpoints.len(), 1);

    // The same pod again: no change, no bump.
    let d = table.apply(Applied(pod(
        "a",
        Some("10.0.0.1"),
        &[("app", "cart")],
        true,
    )));
    assert!(d.is_empty());
    assert_eq!(table.version(), 1);

    // Label change: updated.
    let d = table.apply(Applied(pod(
        "a",
        Some("10.0.0.1"),
        &[("app", "cart2")],
        true,
    )));
    assert_eq!(d.updated, [ip("10.0.0.1")].into());
    assert_eq!(table.version(), 2);
    assert_eq!(
        table.snapshot().endpoints[&ip("10.0.0.1")].labels["app"],
        "cart2"
    );

    // IP change: old removed, new added, one bump.
    let d = table.apply(Applied(pod(
        "a",
        Some("10.0.0.2"),
        &[("app", "cart2")],
        true,
    )));
    assert_eq!(d.added, [ip("10.0.0.2")].into());
    assert_eq!(d.removed, [ip("10.0.0.1")].into());
    assert_eq!(table.version(), 3);

    // Delete.
    let d = table.apply(Deleted(pod("a", Some("10.0.0.2"), &[], true)));
    assert_eq!(d.removed, [ip("10.0.0.2")].into());
    assert!(table.is_empty());
    assert_eq!(table.version(), 4);
    // Deleting it again changes nothing.
    assert!(table.apply(Deleted(pod("a", None, &[], true))).is_empty());
    assert_eq!(table.version(), 4);
}

#[test]
fn unmeshed_pending_and_finished_pods_are_not_endpoints() {
    let mut table = EndpointTable::new("example.org");
    assert!(
        table
            .apply(Applied(pod("plain", Some("10.0.0.9"), &[], false)))
            .is_empty()
    );
    assert!(
        table
            .apply(Applied(pod("pending", None, &[], true)))
            .is_empty()
    );
    assert_eq!(table.version(), 0);
    // Pending pod gets its IP.
    assert_eq!(
        table
            .apply(Applied(pod("pending", Some("10.0.0.3"), &[], true)))
            .added
            .len(),
        1
    );
    // It finishes: its IP is released.
    let mut done = pod("pending", Some("10.0.0.3"), &[], true);
    done.status.as_mut().unwrap().phase = Some("Succeeded".into());
    assert_eq!(table.apply(Applied(done)).removed, [ip("10.0.0.3")].into());
}

#[test]
fn dual_stack_pod_has_both_ips() {
    let mut table = EndpointTable::new("example.org");
    let mut p = pod("a", Some("10.0.0.1"), &[], true);
    p.status.as_mut().unwrap().pod_ips = Some(vec![
        PodIP {
            ip: "10.0.0.1".into(),
        },
        PodIP {
            ip: "fd00::1".into(),
        },
    ]);
    assert_eq!(table.apply(Applied(p)).added.len(), 2);
    assert_eq!(table.version(), 1);
}

#[test]
fn resync_after_a_dropped_watch_replaces_everything() {
    let mut table = EndpointTable::new("example.org");
    table.apply(Applied(pod("a", Some("10.0.0.1"), &[("v", "1")], true)));
    table.apply(Applied(pod("b", Some("10.0.0.2"), &[], true)));
    table.apply(Applied(pod("c", Some("10.0.0.3"), &[], true)));
    assert_eq!(table.version(), 3);
    // While the watch was down: b deleted, a relabelled, d created, c unchanged.
    let d = table.apply(Restarted(vec![
        pod("a", Some("10.0.0.1"), &[("v", "2")], true),
        pod("c", Some("10.0.0.3"), &[], true),
        pod("d", Some("10.0.0.4"), &[], true),
    ]));
    assert_eq!(d.removed, [ip("10.0.0.2")].into());
    assert_eq!(d.updated, [ip("10.0.0.1")].into());
    assert_eq!(d.added, [ip("10.0.0.4")].into());
    assert_eq!(table.version(), 4, "one bump for the whole resync");
    assert_eq!(table.len(), 3);
    // The same relist again is a no-op.
    let same = vec![
        pod("a", Some("10.0.0.1"), &[("v", "2")], true),
        pod("c", Some("10.0.0.3"), &[], true),
        pod("d", Some("10.0.0.4"), &[], true),
    ];
    assert!(table.apply(Restarted(same)).is_empty());
    assert_eq!(table.version(), 4);
    // An empty relist removes everything.
    assert_eq!(table.apply(Restarted(vec![])).removed.len(), 3);
    assert!(table.is_empty());
    assert_eq!(table.version(), 5);
}

#[test]
fn reused_ip_is_not_dropped_by_the_old_pod_leaving() {
    let mut table = EndpointTable::new("example.org");
    table.apply(Applied(pod("old", Some("10.0.0.7"), &[("v", "old")], true)));
    table.apply(Applied(pod("new", Some("10.0.0.7"), &[("v", "new")], true)));
    assert_eq!(table.get(&ip("10.0.0.7")).unwrap().pod_name, "new");
    let d = table.apply(Deleted(pod("old", Some("10.0.0.7"), &[], true)));
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(table.get(&ip("10.0.0.7")).unwrap().pod_name, "new");
    // And the other way round: the newer claimant leaves, the IP returns to the other.
    table.apply(Applied(pod("old", Some("10.0.0.7"), &[("v", "old")], true)));
    let d = table.apply(Deleted(pod("old", Some("10.0.0.7"), &[], true)));
    assert_eq!(d.updated, [ip("10.0.0.7")].into());
    assert_eq!(table.get(&ip("10.0.0.7")).unwrap().pod_name, "new");
}

#[test]
fn watcher_adapter_buffers_a_relist() {
    let mut adapter = WatcherAdapter::default();
    assert_eq!(adapter.push(WatcherEvent::Init), None);
    assert_eq!(adapter.push(WatcherEvent::InitApply(1)), None);
    assert_eq!(adapter.push(WatcherEvent::InitApply(2)), None);
    assert_eq!(
        adapter.push(WatcherEvent::InitDone),
        Some(Restarted(vec![1, 2]))
    );
    assert_eq!(adapter.push(WatcherEvent::Apply(3)), Some(Applied(3)));
    assert_eq!(adapter.push(WatcherEvent::Delete(3)), Some(Deleted(3)));
}

fn policy(name: &str, generation: i64, action: &str) -> serde_json::Value {
    json!({"apiVersion": "security.ward.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": "shop", "generation": generation,
            "resourceVersion": format!("{generation}00"), "uid": "3f1c",
            "managedFields": [{"manager": "kubectl"}]},
        "spec": {"action": action, "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}})
}

#[test]
fn catalog_accepts_valid_resources_and_reports_them() {
    let mut catalog = PolicyCatalog::default();
    assert!(catalog.apply(Applied(policy("allow-get", 1, "ALLOW"))));
    let texts = catalog.texts();
    assert_eq!(texts.len(), 1);
    assert_eq!(texts[0].label, "AuthorizationPolicy shop/allow-get");
    // What the API server adds is not part of the enforced document.
    assert!(
        !texts[0].text.contains("managedFields"),
        "{}",
        texts[0].text
    );
    assert!(
        !texts[0].text.contains("resourceVersion"),
        "{}",
        texts[0].text
    );
    let unreported = catalog.unreported();
    assert_eq!(unreported.len(), 1);
    let (key, verdict) = &unreported[0];
    assert_eq!(key.2, "allow-get");
    assert_eq!(verdict.rejected, None);
    let status = verdict.status("2026-11-23T00:00:00Z");
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["conditions"][0]["type"], "Accepted");
    assert_eq!(status["conditions"][0]["status"], "True");
    // The status written back comes in as an update: the enforced set does
    // not change and nothing is left to report.
    let mut reported = policy("allow-get", 1, "ALLOW");
    reported["status"] = status;
    reported["metadata"]["resourceVersion"] = json!("101");
    assert!(!catalog.apply(Applied(reported)));
    assert!(catalog.unreported().is_empty());
    assert_eq!(catalog.counts(), (1, 0));
}

#[test]
fn catalog_rejects_an_invalid_resource_alone() {
    let mut catalog = PolicyCatalog::default();
    catalog.apply(Applied(policy("allow-get", 1, "ALLOW")));
    // Enforced as its fail-closed stand-in (an unknown action: deny all).
    assert!(catalog.apply(Applied(policy("bad", 1, "MAYBE"))));
    let texts = catalog.texts();
    assert_eq!(texts.len(), 2);
    assert!(!texts.iter().any(|t| t.text.contains("MAYBE")));
    assert_eq!(catalog.counts(), (1, 1));
    let (_, verdict) = catalog
        .unreported()
        .into_iter()
        .find(|(k, _)| k.2 == "bad")
        .unwrap();
    let reason = verdict.rejected.clone().unwrap();
    assert!(reason.contains("AuthorizationPolicy shop/bad"), "{reason}");
    assert!(reason.contains("action"), "{reason}");
    assert_eq!(verdict.fail_closed, Some(FailClosed::DenyAll));
    let status = verdict.status("2026-11-23T00:00:00Z");
    assert_eq!(status["conditions"][0]["status"], "False");
    assert_eq!(status["conditions"][0]["reason"], "Invalid");
    let message = status["conditions"][0]["message"].as_str().unwrap();
    assert!(message.contains("DENY of every request"), "{message}");
    // A status update of the rejected resource changes nothing enforced.
    let mut reported = policy("bad", 1, "MAYBE");
    reported["status"] = status;
    assert!(!catalog.apply(Applied(reported)));
}

#[test]
fn catalog_replaces_an_invalid_edit_with_its_fail_closed_stand_in() {
    let mut catalog = PolicyCatalog::default();
    catalog.apply(Applied(policy("deny-get", 1, "DENY")));
    let before = catalog.texts();
    // An invalid edit is enforced as its stand-in, not as the earlier
    // generation (which may allow more than the operator now means).
    assert!(catalog.apply(Applied(policy("deny-get", 2, "DENNY"))));
    assert_ne!(catalog.texts(), before);
    let (_, verdict) = catalog.unreported().pop().unwrap();
    assert_eq!(verdict.generation, Some(2));
    assert_eq!(verdict.fail_closed, Some(FailClosed::DenyAll));
    // ...and fixing it takes effect.
    assert!(catalog.apply(Applied(policy("deny-get", 3, "ALLOW"))));
    assert!(catalog.texts()[0].text.contains("ALLOW"));
    assert_eq!(catalog.counts(), (1, 0));
}

#[test]
fn catalog_resync_and_delete() {
    let mut catalog = PolicyCatalog::default();
    catalog.apply(Applied(policy("a", 1, "ALLOW")));
    catalog.apply(Applied(policy("b", 1, "ALLOW")));
    // A relist after a dropped watch: `a` was deleted meanwhile.
    assert!(catalog.apply(Restarted(vec![policy("b", 1, "ALLOW")])));
    assert_eq!(catalog.texts().len(), 1);
    assert_eq!(catalog.counts(), (1, 0));
    assert!(!catalog.apply(Restarted(vec![policy("b", 1, "ALLOW")])));
    assert!(catalog.apply(Deleted(policy("b", 1, "ALLOW"))));
    assert!(catalog.texts().is_empty());
    // Other kinds are not policies.
    let other = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}});
    assert!(!catalog.apply(Applied(other)));
    assert_eq!(catalog.counts(), (0, 0));
}

/// What `catalog` enforces for a workload `app=web` in `shop`, on a plain
/// GET from a meshed peer: allowed?
fn allows_get(catalog: &PolicyCatalog, app: &str) -> bool {
    use ward_policy::{EvalOptions, NoHeaders, Protocol, RequestAttrs};
    let set = ward_policy::PolicySet::merge(catalog.in_force().map(|(_, set)| set)).unwrap();
    let options = EvalOptions {
        root_namespace: "ward-system".into(),
        trust_domain: "cluster.local".into(),
    };
    let labels = std::collections::BTreeMap::from([("app".to_owned(), app.to_owned())]);
    let peer = ward_identity::SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/client").unwrap();
    let workload = set.for_workload("shop", &labels, &options);
    workload
        .evaluate(&RequestAttrs {
            protocol: Protocol::Http,
            source_principal: Some(&peer),
            source_ip: "10.0.0.1".parse().unwrap(),
            destination_ip: "10.0.0.2".parse().unwrap(),
            destination_port: 8080,
            method: Some("GET"),
            path: Some("/"),
            host: Some("web"),
            headers: &NoHeaders,
        })
        .allowed
}

fn selected(name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "security.ward.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": "shop", "generation": 1},
        "spec": spec})
}

#[test]
fn an_invalid_allow_stored_anyway_allows_nothing() {
    let mut catalog = PolicyCatalog::default();
    assert!(allows_get(&catalog, "web"), "no policy: allowed");
    // requestPrincipals: refused by the parser (and by the CRD schema).
    let invalid = selected(
        "jwt-only",
        json!({"selector": {"matchLabels": {"app": "web"}}, "action": "ALLOW",
            "rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]}),
    );
    assert!(catalog.apply(Applied(invalid)));
    assert!(
        !allows_get(&catalog, "web"),
        "the invalid ALLOW opened nothing"
    );
    assert!(allows_get(&catalog, "other"), "only what it selects");
    assert_eq!(
        catalog.fail_closed_counts().get(&FailClosed::AllowNothing),
        Some(&1)
    );
}

#[test]
fn an_invalid_deny_stored_anyway_denies_everything_it_could() {
    let mut catalog = PolicyCatalog::default();
    let allow_all = selected(
        "allow-all",
        json!({"selector": {"matchLabels": {"app": "web"}}, "rules": [{}]}),
    );
    catalog.apply(Applied(allow_all));
    assert!(allows_get(&catalog, "web"));
    let invalid = selected(
        "deny-delete",
        json!({"selector": {"matchLabels": {"app": "web"}}, "action": "DENY",
            "rules": [{"to": [{"operation": {"methods": ["DELETE"]}}],
                "when": [{"key": "request.auth.claims[iss]", "values": ["x"]}]}]}),
    );
    assert!(catalog.apply(Applied(invalid)));
    assert!(
        !allows_get(&catalog, "web"),
        "denies every request, not just DELETE"
    );
    assert!(allows_get(&catalog, "other"));
    // CUSTOM (external authorization) could deny anything: the same.
    let custom = selected(
        "ext-authz",
        json!({"selector": {"matchLabels": {"app": "other"}}, "action": "CUSTOM",
            "provider": {"name": "opa"}, "rules": [{}]}),
    );
    assert!(catalog.apply(Applied(custom)));
    assert!(!allows_get(&catalog, "other"));
}

#[test]
fn an_unusable_selector_fails_closed_for_the_whole_namespace() {
    let mut catalog = PolicyCatalog::default();
    let invalid = selected(
        "bad-selector",
        json!({"selector": {"matchLabels": {"app": ["web"]}}, "action": "DENY", "rules": [{}]}),
    );
    assert!(catalog.apply(Applied(invalid)));
    assert!(!allows_get(&catalog, "web"));
    assert!(!allows_get(&catalog, "anything"));
}

#[test]
fn an_invalid_audit_or_dry_run_policy_changes_no_decision() {
    let mut catalog = PolicyCatalog::default();
    let audit = selected(
        "audit",
        json!({"action": "AUDIT", "rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]}),
    );
    assert!(!catalog.apply(Applied(audit)));
    let mut dry_run = selected("dry", json!({"action": "DENY", "rules": [{"bogus": 1}]}));
    dry_run["metadata"]["annotations"] = json!({"ward.io/dry-run": "true"});
    assert!(!catalog.apply(Applied(dry_run)));
    assert!(allows_get(&catalog, "web"));
    assert_eq!(catalog.counts(), (0, 2));
    assert!(catalog.fail_closed_counts().is_empty());
}
