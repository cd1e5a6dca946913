use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Container, Pod, PodIP, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;

use super::WatchEvent::{Applied, Deleted, Restarted};
use super::endpoints::EndpointTable;
use super::source::{PolicyResources, WatcherAdapter, WatcherEvent};
use super::*;

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
    let rx = table.subscribe();
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
    assert_eq!(rx.borrow().version, 1);
    assert_eq!(rx.borrow().endpoints.len(), 1);

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
        rx.borrow().endpoints[&ip("10.0.0.1")].labels["app"],
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

#[tokio::test]
async fn channel_source_drives_the_table() {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut table = EndpointTable::new("example.org");
    let mut sub = table.subscribe();
    tx.send(Applied(pod("a", Some("10.0.0.1"), &[], true)))
        .await
        .unwrap();
    tx.send(Deleted(pod("a", Some("10.0.0.1"), &[], true)))
        .await
        .unwrap();
    drop(tx);
    source::drive(source::ChannelSource(rx), |e| {
        table.apply(e);
    })
    .await;
    assert_eq!(table.version(), 2);
    assert!(sub.has_changed().unwrap());
    assert_eq!(sub.borrow_and_update().version, 2);
}

#[test]
fn policy_resources_keep_ward_kinds_only() {
    let mut store = PolicyResources::default();
    let ap = json!({"apiVersion": "security.ward.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "allow", "namespace": "shop"}, "spec": {"action": "ALLOW"}});
    let other = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}});
    assert!(store.apply(Applied(ap.clone())));
    assert!(!store.apply(Applied(ap.clone())));
    assert!(!store.apply(Applied(other.clone())));
    assert_eq!(store.version(), 1);
    assert!(store.apply(Restarted(vec![other])));
    assert!(store.docs().is_empty());
    assert_eq!(store.subscribe().borrow().0, 2);
    let _: BTreeMap<_, _> = store.docs().clone();
}

#[tokio::test]
async fn file_source_reads_multi_document_yaml() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.yaml"),
        "apiVersion: security.ward.io/v1\nkind: PeerAuthentication\nmetadata: {name: strict, namespace: shop}\nspec: {mtls: {mode: STRICT}}\n---\n---\napiVersion: security.ward.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny}\nspec: {action: DENY}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("ignored.txt"), "not yaml: [").unwrap();
    let mut src = source::FileSource::new(dir.path()).unwrap();
    use source::EventSource;
    let Some(Restarted(docs)) = src.next().await else {
        panic!("expected a relist")
    };
    assert_eq!(docs.len(), 2);
    assert!(src.next().await.is_none());
    let mut store = PolicyResources::default();
    store.apply(Restarted(docs));
    assert_eq!(store.docs().len(), 2);
}
