//! Services from the policy directory: Kubernetes `Service` and
//! `EndpointSlice` documents next to the policies reach a sidecar that
//! subscribes to the Service address, over its own discovery client and a
//! real mTLS stream; edits follow, and an invalid document changes nothing.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::control_plane::{
    api_client, join_token, keyed_svid_request, loopback_config, metric_value, metrics, svid_cell,
};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};
use ward_api::client::ControlPlaneClient;
use ward_api::client::discovery::{DiscoveryClient, DiscoveryConfig, DiscoveryHandler};
use ward_api::discovery::{
    AppProtocol, Node, Resource, ResourceType, ServiceBody, ServiceEndpoint, Update,
};
use ward_control_plane::attest::Credential;
use ward_control_plane::discovery::EndpointEntry;
use ward_control_plane::server::ControlPlane;
use ward_identity::SpiffeId;

const TD: &str = "example.org";
const CLUSTER_IP: &str = "10.96.0.10";

fn web_id() -> String {
    format!("spiffe://{TD}/ns/shop/sa/web")
}

/// A policy, the Service `shop/web` (named target port, appProtocol,
/// annotations) and its EndpointSlice, in two files.
fn write_directory(dir: &Path, second_ready: bool) {
    std::fs::write(
        dir.join("policies.yaml"),
        "apiVersion: security.ward.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-get, namespace: shop}\nspec:\n  action: ALLOW\n  rules: [{to: [{operation: {methods: [GET]}}]}]\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("web.yaml"),
        format!(
            r#"# The web Service, as `kubectl get -o yaml` shows it.
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations:
    ward.io/timeout: 2s
    ward.io/opaque-ports: "5432"
spec:
  type: ClusterIP
  clusterIP: {CLUSTER_IP}
  clusterIPs: [{CLUSTER_IP}]
  selector: {{app: web}}
  ports:
    - {{name: http, port: 80, targetPort: http, protocol: TCP, appProtocol: http}}
    - {{name: sql, port: 5432, targetPort: 5432, protocol: TCP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-x7k2p
  namespace: shop
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports:
  - {{name: http, port: 8080, protocol: TCP}}
  - {{name: sql, port: 5432, protocol: TCP}}
endpoints:
  - addresses: [198.18.0.10]
    conditions: {{ready: true, serving: true, terminating: false}}
    targetRef: {{kind: Pod, namespace: shop, name: web-1}}
  - addresses: [198.18.0.11]
    conditions: {{ready: {second_ready}, serving: {second_ready}, terminating: {terminating}}}
    targetRef: {{kind: Pod, namespace: shop, name: web-2}}
"#,
            terminating = !second_ready,
        ),
    )
    .unwrap();
}

/// Records every Service body the sidecar holds after each update.
struct Services {
    tx: mpsc::UnboundedSender<BTreeMap<String, ServiceBody>>,
    held: Mutex<BTreeMap<String, ServiceBody>>,
}

impl DiscoveryHandler for Services {
    fn apply(&self, update: &Update, _state: &BTreeMap<String, Resource>) -> Result<(), String> {
        if update.resource_type != ResourceType::Service {
            return Ok(());
        }
        let mut held = self.held.lock().unwrap();
        for r in &update.resources {
            held.insert(r.name.clone(), r.decode()?);
        }
        for name in &update.removed {
            held.remove(name);
        }
        let _ = self.tx.send(held.clone());
        Ok(())
    }
}

struct Sidecar {
    rx: mpsc::UnboundedReceiver<BTreeMap<String, ServiceBody>>,
    _stop: DropGuard,
}

impl Sidecar {
    /// The state after the next update (the deadline only bounds a failing
    /// test).
    async fn next(&mut self) -> BTreeMap<String, ServiceBody> {
        tokio::time::timeout(Duration::from_secs(60), self.rx.recv())
            .await
            .expect("a service update within 60 s")
            .expect("stream open")
    }

    /// Waits for a state satisfying `pred`.
    async fn services_where(
        &mut self,
        pred: impl Fn(&BTreeMap<String, ServiceBody>) -> bool,
    ) -> BTreeMap<String, ServiceBody> {
        loop {
            let held = self.next().await;
            if pred(&held) {
                return held;
            }
        }
    }
}

async fn sidecar(cp: &ControlPlane, data: &Path) -> Sidecar {
    let id = SpiffeId::for_service_account(TD, "shop", "frontend").unwrap();
    let token = join_token(data, &id, Duration::from_secs(60));
    let (key, request) = keyed_svid_request(&id, Some(Credential::JoinToken(token)), None);
    let answer = api_client(cp, TD)
        .request_svid(&request, None)
        .await
        .unwrap();
    let client =
        ControlPlaneClient::from_bundle_pem(cp.api_addr().to_string(), TD, cp.bundle_pem())
            .unwrap();
    let discovery = DiscoveryClient::new(DiscoveryConfig {
        client,
        svid: svid_cell(&answer, &key, TD),
        node: Node {
            pod: None,
            labels: BTreeMap::from([("app".to_owned(), "frontend".to_owned())]),
            proxy_version: "test".into(),
        },
        resource_types: vec![ResourceType::Policy, ResourceType::Service],
        max_subscriptions: 100,
        extra_hello: BTreeMap::new(),
    });
    // As its app connecting to the ClusterIP, and to an address that is no
    // Service.
    discovery.subscribe(ResourceType::Service, CLUSTER_IP);
    discovery.subscribe(ResourceType::Service, "10.96.0.99");
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = Arc::new(Services {
        tx,
        held: Mutex::new(BTreeMap::new()),
    });
    let stop = CancellationToken::new();
    tokio::spawn(discovery.run(handler, stop.clone()));
    Sidecar {
        rx,
        _stop: stop.drop_guard(),
    }
}

async fn rejected_sets(cp: &ControlPlane) -> f64 {
    metric_value(
        &metrics(cp).await,
        "ward_cp_policy_sets_total{result=\"rejected\"}",
    )
}

#[tokio::test]
async fn services_in_the_policy_directory_reach_subscribed_sidecars() {
    let data = tempfile::tempdir().unwrap();
    let policies = tempfile::tempdir().unwrap();
    write_directory(policies.path(), true);
    let mut config = loopback_config(TD, data.path());
    config.policy_dir = Some(policies.path().to_owned());
    // web-1 is meshed (its identity is filled in), web-2 is not.
    config.static_endpoints = vec![EndpointEntry {
        address: "198.18.0.10".into(),
        spiffe_id: web_id(),
    }];
    let cp = ControlPlane::start(config).await.unwrap();
    let mut sidecar = sidecar(&cp, data.path()).await;

    let held = sidecar.services_where(|s| s.contains_key(CLUSTER_IP)).await;
    assert_eq!(held.len(), 1, "10.96.0.99 is no Service: {held:?}");
    let web = &held[CLUSTER_IP];
    assert_eq!(web.service, "shop/web");
    let http = &web.ports[&80];
    assert_eq!(http.name.as_deref(), Some("http"));
    assert_eq!(http.protocol, Some(AppProtocol::Http1));
    assert_eq!(http.timeout_ms, Some(2000));
    // The named target port, resolved from the slice.
    assert_eq!(
        http.endpoints,
        vec![
            ServiceEndpoint {
                address: "198.18.0.10:8080".into(),
                spiffe_id: Some(web_id()),
                workload: Some("shop/web-1".into()),
                ready: true,
                serving: true,
                terminating: false,
            },
            ServiceEndpoint {
                address: "198.18.0.11:8080".into(),
                spiffe_id: None,
                workload: Some("shop/web-2".into()),
                ready: true,
                serving: true,
                terminating: false,
            },
        ]
    );
    assert_eq!(web.ports[&5432].protocol, Some(AppProtocol::Opaque));
    assert_eq!(web.ports[&5432].endpoints[0].address, "198.18.0.10:5432");

    // An edit: web-2 is terminating, not ready.
    write_directory(policies.path(), false);
    let held = sidecar
        .services_where(|s| {
            s.get(CLUSTER_IP)
                .is_some_and(|w| !w.ports[&80].endpoints[1].ready)
        })
        .await;
    let second = &held[CLUSTER_IP].ports[&80].endpoints[1];
    assert_eq!(
        (second.ready, second.serving, second.terminating),
        (false, false, true)
    );
    let before = cp
        .endpoints()
        .service_resource(CLUSTER_IP.parse().unwrap())
        .unwrap();

    // A malformed EndpointSlice (and a change to the Service in the same
    // read) is rejected whole: nothing changes.
    assert_eq!(rejected_sets(&cp).await, 0.0);
    let text = std::fs::read_to_string(policies.path().join("web.yaml")).unwrap();
    std::fs::write(
        policies.path().join("web.yaml"),
        text.replace("198.18.0.11]", "198.18.0.x]")
            .replace("ward.io/timeout: 2s", "ward.io/timeout: 5s"),
    )
    .unwrap();
    // Polled for up to 60 s (generous: it only bounds a failing test).
    for _ in 0..2400 {
        if rejected_sets(&cp).await == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(rejected_sets(&cp).await, 1.0);
    assert_eq!(
        cp.endpoints()
            .service_resource(CLUSTER_IP.parse().unwrap())
            .unwrap(),
        before
    );

    // Fixed, and the Service removed from the directory: gone. That removal
    // is the very next update the sidecar gets: the rejected read before it
    // sent nothing (updates arrive in order on the stream).
    std::fs::remove_file(policies.path().join("web.yaml")).unwrap();
    let next = sidecar.next().await;
    assert!(
        !next.contains_key(CLUSTER_IP),
        "an update came between the rejected read and the removal: {next:?}"
    );
    assert_eq!(cp.endpoints().service_count(), 0);
    cp.shutdown().await;
}

#[tokio::test]
async fn a_malformed_service_at_start_stops_the_control_plane() {
    let data = tempfile::tempdir().unwrap();
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(
        policies.path().join("svc.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{port: eighty}]\n",
    )
    .unwrap();
    let mut config = loopback_config(TD, data.path());
    config.policy_dir = Some(policies.path().to_owned());
    let err = ControlPlane::start(config).await.err().expect("refused");
    let message = format!("{err:#}");
    assert!(
        message.contains("svc.yaml:6") && message.contains("document 0: Service:"),
        "{message}"
    );
}
