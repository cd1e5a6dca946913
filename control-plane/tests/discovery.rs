//! The discovery stream at scale and across versions, with the sidecar's own
//! client (`ward_api::client::discovery`) against a real control plane over
//! mTLS, in process.

mod support;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::control_plane::{
    api_client, join_token, keyed_svid_request, loopback_config, metric_value, metrics, svid_cell,
};
use tokio_util::sync::{CancellationToken, DropGuard};
use ward_api::client::ControlPlaneClient;
use ward_api::client::discovery::{DiscoveryClient, DiscoveryConfig, DiscoveryHandler};
use ward_api::discovery::{Node, Resource, ResourceType, Update};
use ward_control_plane::attest::Credential;
use ward_control_plane::k8s::endpoints::Endpoint;
use ward_control_plane::server::ControlPlane;
use ward_identity::SpiffeId;
use ward_identity::tls::SvidCell;

const TD: &str = "cluster.local";
const PODS: usize = 10_000;
const POLICIES: usize = 1_000;
const SIDECARS: usize = 1_000;
/// The sidecars that subscribe to the pod that changes.
const WATCHERS: usize = 5;

/// Pod `i`'s address, inside 198.18.0.0/15.
fn pod_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(
        u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i as u32,
    ))
}

fn pod(i: usize, version: &str) -> Endpoint {
    Endpoint {
        spiffe_id: SpiffeId::for_service_account(TD, "mesh", &format!("sa-{}", i % 50)).unwrap(),
        namespace: "mesh".into(),
        pod_name: format!("pod-{i}"),
        labels: BTreeMap::from([
            ("app".to_owned(), format!("app-{}", i % 100)),
            ("version".to_owned(), version.to_owned()),
        ]),
        opaque_ports: Vec::new(),
    }
}

/// 1,000 AuthorizationPolicies, ten per app label.
fn write_policies(dir: &std::path::Path) {
    let mut yaml = String::new();
    for i in 0..POLICIES {
        yaml.push_str(&format!(
            "---\napiVersion: security.ward.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p-{i}, namespace: mesh}}\nspec:\n  selector: {{matchLabels: {{app: app-{}}}}}\n  rules: [{{to: [{{operation: {{paths: [\"/p{i}/*\"]}}}}]}}]\n",
            i % 100
        ));
    }
    std::fs::write(dir.join("policies.yaml"), yaml).unwrap();
}

/// Counts what one in-process sidecar applies.
#[derive(Default)]
struct Counter {
    policy_updates: AtomicUsize,
    policies: AtomicUsize,
    endpoint_updates: AtomicUsize,
    endpoints: Mutex<BTreeMap<String, String>>,
    /// The stream's ups and downs, in order.
    connected: Mutex<Vec<bool>>,
}

impl DiscoveryHandler for Counter {
    fn apply(&self, update: &Update, state: &BTreeMap<String, Resource>) -> Result<(), String> {
        match update.resource_type {
            ResourceType::Policy => {
                self.policy_updates.fetch_add(1, Ordering::SeqCst);
                self.policies.store(state.len(), Ordering::SeqCst);
            }
            ResourceType::Endpoint => {
                let mut endpoints = self.endpoints.lock().unwrap();
                for r in &update.resources {
                    endpoints.insert(r.name.clone(), r.version.clone());
                }
                for name in &update.removed {
                    endpoints.insert(name.clone(), "absent".into());
                }
                self.endpoint_updates.fetch_add(1, Ordering::SeqCst);
            }
            _ => {}
        }
        Ok(())
    }

    fn connected(&self, up: bool) {
        self.connected.lock().unwrap().push(up);
    }
}

struct Sidecar {
    counter: Arc<Counter>,
    _stop: DropGuard,
}

fn start_sidecar(
    cp: &ControlPlane,
    svid: &Arc<SvidCell>,
    app: &str,
    subscribe: &[IpAddr],
    extra_hello: BTreeMap<String, serde_json::Value>,
) -> Sidecar {
    let client =
        ControlPlaneClient::from_bundle_pem(cp.api_addr().to_string(), TD, cp.bundle_pem())
            .unwrap();
    let discovery = DiscoveryClient::new(DiscoveryConfig {
        client,
        svid: svid.clone(),
        node: Node {
            pod: None,
            labels: BTreeMap::from([("app".to_owned(), app.to_owned())]),
            proxy_version: "test".into(),
        },
        resource_types: vec![ResourceType::Policy, ResourceType::Endpoint],
        max_subscriptions: 100,
        extra_hello,
    });
    for ip in subscribe {
        discovery.subscribe(ResourceType::Endpoint, &ip.to_string());
    }
    let counter = Arc::new(Counter::default());
    let stop = CancellationToken::new();
    tokio::spawn(discovery.run(counter.clone(), stop.clone()));
    Sidecar {
        counter,
        _stop: stop.drop_guard(),
    }
}

async fn enrol(cp: &ControlPlane, data: &std::path::Path, sa: &str) -> Arc<SvidCell> {
    let id = SpiffeId::for_service_account(TD, "mesh", sa).unwrap();
    let token = join_token(data, &id, Duration::from_secs(60));
    let (key, request) = keyed_svid_request(&id, Some(Credential::JoinToken(token)), None);
    let answer = api_client(cp, TD)
        .request_svid(&request, None)
        .await
        .unwrap();
    svid_cell(&answer, &key, TD)
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(60), async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

async fn endpoint_bytes(cp: &ControlPlane) -> f64 {
    metric_value(
        &metrics(cp).await,
        "ward_discovery_sent_bytes_total{resource_type=\"endpoint\"}",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pod_change_reaches_only_its_watchers_and_costs_the_same_in_any_mesh_size() {
    let data = tempfile::tempdir().unwrap();
    let policy_dir = tempfile::tempdir().unwrap();
    write_policies(policy_dir.path());
    let mut config = loopback_config(TD, data.path());
    config.policy_dir = Some(policy_dir.path().to_owned());
    let cp = ControlPlane::start(config).await.unwrap();
    cp.endpoints()
        .apply_kubernetes((0..PODS).map(|i| (pod_ip(i), Some(pod(i, "v1")))));

    // 1,000 sidecars (ten identities), each subscribed to its own pod's
    // address; the first five also to the pod that will change.
    let mut cells = Vec::new();
    for n in 0..10 {
        cells.push(enrol(&cp, data.path(), &format!("client-{n}")).await);
    }
    let target = pod_ip(PODS / 2);
    let sidecars: Vec<Sidecar> = (0..SIDECARS)
        .map(|i| {
            let mut subscribe = vec![pod_ip(i)];
            if i < WATCHERS {
                subscribe.push(target);
            }
            let app = format!("app-{}", i % 100);
            start_sidecar(&cp, &cells[i % 10], &app, &subscribe, BTreeMap::new())
        })
        .collect();
    let answered = |s: &Sidecar, i: usize| {
        let endpoints = s.counter.endpoints.lock().unwrap();
        endpoints.contains_key(&pod_ip(i).to_string())
            && (i >= WATCHERS || endpoints.contains_key(&target.to_string()))
    };
    eventually("every sidecar's initial state", || {
        sidecars
            .iter()
            .enumerate()
            .all(|(i, s)| s.counter.policy_updates.load(Ordering::SeqCst) == 1 && answered(s, i))
    })
    .await;
    // Each got the ten policies that select its app, not the thousand.
    for s in &sidecars {
        assert_eq!(s.counter.policies.load(Ordering::SeqCst), 10);
    }
    let endpoint_updates: Vec<usize> = sidecars
        .iter()
        .map(|s| s.counter.endpoint_updates.load(Ordering::SeqCst))
        .collect();
    assert_eq!(cp.endpoints().subscriber_count(target), WATCHERS);

    // One pod changes: its five watchers hear of it, nobody else.
    let before = endpoint_bytes(&cp).await;
    cp.endpoints()
        .apply_kubernetes([(target, Some(pod(PODS / 2, "v2")))]);
    let new_version = cp.endpoints().resource(target).unwrap().version;
    eventually("the watchers' update", || {
        sidecars[..WATCHERS]
            .iter()
            .all(|s| s.counter.endpoints.lock().unwrap()[&target.to_string()] == new_version)
    })
    .await;
    let bytes_10k = endpoint_bytes(&cp).await - before;
    for (i, s) in sidecars.iter().enumerate() {
        let expected = endpoint_updates[i] + usize::from(i < WATCHERS);
        assert_eq!(
            s.counter.endpoint_updates.load(Ordering::SeqCst),
            expected,
            "sidecar {i}"
        );
        assert_eq!(
            s.counter.policy_updates.load(Ordering::SeqCst),
            1,
            "sidecar {i}: an endpoint change sent no policy update"
        );
    }
    assert!(bytes_10k > 0.0);

    // Ten thousand more pods nobody subscribed to: nothing is sent. The
    // same change in the twice-as-large mesh costs the same bytes.
    let at_20k = endpoint_bytes(&cp).await;
    cp.endpoints()
        .apply_kubernetes((PODS..2 * PODS).map(|i| (pod_ip(i), Some(pod(i, "v1")))));
    assert_eq!(
        endpoint_bytes(&cp).await,
        at_20k,
        "unsubscribed pods cost nothing"
    );
    cp.endpoints()
        .apply_kubernetes([(target, Some(pod(PODS / 2, "v1")))]);
    let old_version = cp.endpoints().resource(target).unwrap().version;
    eventually("the watchers' second update", || {
        sidecars[..WATCHERS]
            .iter()
            .all(|s| s.counter.endpoints.lock().unwrap()[&target.to_string()] == old_version)
    })
    .await;
    let bytes_20k = endpoint_bytes(&cp).await - at_20k;
    assert_eq!(
        bytes_20k, bytes_10k,
        "bytes per change do not grow with the mesh"
    );
    println!(
        "one pod change: {bytes_10k} bytes on the wire to {WATCHERS} of {SIDECARS} sidecars, at {PODS} and at {} pods",
        2 * PODS
    );
    drop(sidecars);
    cp.shutdown().await;
}

#[tokio::test]
async fn a_sidecar_sending_fields_this_control_plane_does_not_know_is_served() {
    let data = tempfile::tempdir().unwrap();
    let policy_dir = tempfile::tempdir().unwrap();
    write_policies(policy_dir.path());
    let mut config = loopback_config(TD, data.path());
    config.policy_dir = Some(policy_dir.path().to_owned());
    let cp = ControlPlane::start(config).await.unwrap();
    cp.endpoints()
        .apply_kubernetes([(pod_ip(1), Some(pod(1, "v1")))]);
    let cell = enrol(&cp, data.path(), "newer").await;
    // What a newer sidecar might add to its hello.
    let extra = BTreeMap::from([
        ("zone".to_owned(), serde_json::json!("eu-west-1a")),
        (
            "capabilities".to_owned(),
            serde_json::json!({"routes": true}),
        ),
    ]);
    let sidecar = start_sidecar(&cp, &cell, "app-1", &[pod_ip(1), pod_ip(2)], extra);
    eventually("policies and both answers", || {
        let endpoints = sidecar.counter.endpoints.lock().unwrap();
        sidecar.counter.policies.load(Ordering::SeqCst) == 10
            && endpoints.get(&pod_ip(2).to_string()).map(String::as_str) == Some("absent")
            && endpoints.contains_key(&pod_ip(1).to_string())
    })
    .await;
    // The sidecar counts a policy before its ack reaches the control plane.
    eventually("the control plane to see the sidecar in sync", || {
        let report = cp.sidecars().report();
        report.sidecars.len() == 1 && report.sidecars[0].policy.state() == "in_sync"
    })
    .await;
    cp.shutdown().await;
}

#[tokio::test]
async fn a_stream_ends_when_the_certificate_that_opened_it_expires() {
    let data = tempfile::tempdir().unwrap();
    let mut config = loopback_config(TD, data.path());
    config.svid_ttl = Duration::from_secs(3);
    let cp = ControlPlane::start(config).await.unwrap();
    // A certificate that is never renewed here: it expires in 3 s.
    let cell = enrol(&cp, data.path(), "short-lived").await;
    let expiry = cell.not_after().unwrap();
    let sidecar = start_sidecar(&cp, &cell, "app-1", &[], BTreeMap::new());
    eventually("the stream up", || {
        sidecar.counter.connected.lock().unwrap().first() == Some(&true)
    })
    .await;
    assert_eq!(cp.sidecars().all().len(), 1);
    eventually("the stream closed by the control plane", || {
        sidecar.counter.connected.lock().unwrap().get(1) == Some(&false)
    })
    .await;
    assert!(
        time::OffsetDateTime::now_utc() >= expiry,
        "closed at expiry, not before"
    );
    eventually("the stream forgotten", || cp.sidecars().all().is_empty()).await;
    cp.shutdown().await;
}
