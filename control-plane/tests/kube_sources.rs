//! The Kubernetes source end to end, against a fake API server that answers
//! with recorded API shapes (lists, watch event lines, 410 Gone, Status
//! failures): real kube-runtime watchers over HTTPS, a real control plane,
//! and a real mTLS watch stream as a proxy opens it.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};
use support::apiserver::{
    ApiServer, Recorded, Reply, list, not_found, status_failure, watch_event,
};
use support::control_plane::{
    admin_get, api_client, attestation_failures, cluster_role_allows, join_token,
    keyed_svid_request, loopback_config, metric_value, refusal, svid_cell, svid_request,
};
use tokio::sync::mpsc;
use ward_api::client::ControlPlaneClient;
use ward_api::client::discovery::{DiscoveryClient, DiscoveryConfig, DiscoveryHandler};
use ward_api::discovery::{
    AppProtocol, EndpointBody, Node, PolicyBody, Resource, ResourceType, ServiceBody, Update,
};
use ward_control_plane::attest::Credential;
use ward_control_plane::k8s::ApiClient;
use ward_control_plane::server::ControlPlane;
use ward_identity::SpiffeId;
use ward_identity::tls::SvidCell;

const TD: &str = "cluster.local";
const MESH_SELECTOR: &str = "labelSelector=security.ward.io%2FtlsMode%3Dward";

/// The cluster the fake API server serves: objects by resource (`pods`,
/// `authorizationpolicies`, `peerauthentications`, `services`,
/// `endpointslices`, `quarantines`), open watches, and resources whose list fails (a CRD
/// not installed yet).
#[derive(Default)]
struct Cluster {
    resource_version: u64,
    objects: BTreeMap<&'static str, Vec<Value>>,
    watches: HashMap<&'static str, Vec<mpsc::Sender<Value>>>,
    missing: Vec<&'static str>,
}

type Shared = Arc<Mutex<Cluster>>;

/// Built-in kinds: their list items come without `apiVersion` and `kind`.
const BUILT_IN: [&str; 3] = ["pods", "services", "endpointslices"];

const RESOURCES: [(&str, &str, &str); 6] = [
    ("pods", "/api/v1/pods", "v1"),
    ("services", "/api/v1/services", "v1"),
    (
        "endpointslices",
        "/apis/discovery.k8s.io/v1/endpointslices",
        "discovery.k8s.io/v1",
    ),
    (
        "authorizationpolicies",
        "/apis/security.ward.io/v1/authorizationpolicies",
        "security.ward.io/v1",
    ),
    (
        "peerauthentications",
        "/apis/security.ward.io/v1/peerauthentications",
        "security.ward.io/v1",
    ),
    // Cluster-scoped; none here (tests/k8s_cluster.rs makes real ones).
    (
        "quarantines",
        "/apis/ward.io/v1alpha1/quarantines",
        "ward.io/v1alpha1",
    ),
];

impl Cluster {
    /// Creates or updates an object (by namespace and name) and tells the
    /// open watches, as the API server does: a new resourceVersion on every
    /// write, a new generation when the spec changes.
    fn apply(&mut self, resource: &'static str, mut object: Value) {
        self.resource_version += 1;
        object["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        let objects = self.objects.entry(resource).or_default();
        let key = |o: &Value| {
            (
                o["metadata"]["namespace"].clone(),
                o["metadata"]["name"].clone(),
            )
        };
        let event = match objects.iter_mut().find(|o| key(o) == key(&object)) {
            Some(existing) => {
                let generation = existing["metadata"]["generation"].as_i64().unwrap_or(1);
                let spec_changed = existing.get("spec") != object.get("spec");
                object["metadata"]["generation"] = json!(generation + i64::from(spec_changed));
                if object.get("status").is_none()
                    && let Some(status) = existing.get("status")
                {
                    object["status"] = status.clone();
                }
                *existing = object.clone();
                "MODIFIED"
            }
            None => {
                object["metadata"]["generation"] = json!(1);
                objects.push(object.clone());
                "ADDED"
            }
        };
        self.notify(resource, watch_event(event, object));
    }

    fn delete(&mut self, resource: &'static str, namespace: &str, name: &str) {
        self.resource_version += 1;
        let objects = self.objects.entry(resource).or_default();
        let index = objects
            .iter()
            .position(|o| o["metadata"]["namespace"] == namespace && o["metadata"]["name"] == name)
            .expect("object exists");
        let mut object = objects.remove(index);
        object["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        self.notify(resource, watch_event("DELETED", object));
    }

    /// The watch ends with `410 Gone` (resourceVersion too old): the client
    /// must relist.
    fn expire_watches(&mut self, resource: &'static str) {
        let gone = status_failure(410, "Expired", "too old resource version: 1 (42)");
        self.notify(resource, watch_event("ERROR", gone));
        self.watches.remove(resource);
    }

    fn notify(&mut self, resource: &'static str, event: Value) {
        let watches = self.watches.entry(resource).or_default();
        watches.retain(|tx| tx.try_send(event.clone()).is_ok());
    }

    fn answer(&mut self, req: &Recorded) -> Reply {
        let path = req.path_and_query.split('?').next().unwrap_or_default();
        if req.method == Method::PATCH && path.ends_with("/status") {
            return self.patch_status(path, &req.body);
        }
        if req.method == Method::POST && path == "/apis/authentication.k8s.io/v1/tokenreviews" {
            return token_review(&req.body);
        }
        let Some((resource, _, api_version)) = RESOURCES.iter().find(|(_, p, _)| *p == path) else {
            return not_found();
        };
        if self.missing.contains(resource) {
            return not_found();
        }
        if *resource == "pods" && !req.path_and_query.contains(MESH_SELECTOR) {
            return Reply::Json(
                StatusCode::BAD_REQUEST,
                status_failure(
                    400,
                    "BadRequest",
                    "the test expects the mesh label selector",
                ),
            );
        }
        if req.path_and_query.contains("watch=true") {
            let (tx, rx) = mpsc::channel(64);
            self.watches.entry(resource).or_default().push(tx);
            return Reply::Stream(rx);
        }
        if *resource == "endpointslices"
            && !req
                .path_and_query
                .contains("labelSelector=kubernetes.io%2Fservice-name")
        {
            return Reply::Json(
                StatusCode::BAD_REQUEST,
                status_failure(
                    400,
                    "BadRequest",
                    "the test expects the service-name label selector",
                ),
            );
        }
        let kind = match *resource {
            "pods" => "PodList",
            "services" => "ServiceList",
            "endpointslices" => "EndpointSliceList",
            "authorizationpolicies" => "AuthorizationPolicyList",
            "quarantines" => "QuarantineList",
            _ => "PeerAuthenticationList",
        };
        let items = self.objects.get(resource).cloned().unwrap_or_default();
        // Built-in types come without apiVersion/kind in list items.
        let items = items
            .into_iter()
            .map(|mut o| {
                if BUILT_IN.contains(resource) {
                    let map = o.as_object_mut().unwrap();
                    map.remove("apiVersion");
                    map.remove("kind");
                }
                o
            })
            .collect();
        Reply::Json(
            StatusCode::OK,
            list(api_version, kind, &self.resource_version.to_string(), items),
        )
    }

    /// `PATCH .../namespaces/{ns}/{plural}/{name}/status` (merge patch).
    fn patch_status(&mut self, path: &str, body: &Value) -> Reply {
        let parts: Vec<&str> = path.split('/').collect();
        let (namespace, plural, name) = (parts[5], parts[6], parts[7]);
        let Some((resource, _, _)) = RESOURCES.iter().find(|(r, _, _)| *r == plural) else {
            return Reply::Json(
                StatusCode::NOT_FOUND,
                status_failure(404, "NotFound", plural),
            );
        };
        let Some(mut object) = self.objects.get(resource).and_then(|objects| {
            objects
                .iter()
                .find(|o| o["metadata"]["namespace"] == namespace && o["metadata"]["name"] == name)
                .cloned()
        }) else {
            return Reply::Json(StatusCode::NOT_FOUND, status_failure(404, "NotFound", name));
        };
        object["status"] = body["status"].clone();
        self.apply(resource, object.clone());
        Reply::Json(StatusCode::OK, object)
    }
}

/// Test tokens are `token:<service account>:<pod name>:<pod uid>`; the
/// review answers as the API server does for a pod-bound projected token.
fn token_review(request: &Value) -> Reply {
    let token = request["spec"]["token"].as_str().unwrap_or_default();
    let status = match token.split(':').collect::<Vec<_>>()[..] {
        ["token", sa, pod, uid] => json!({
            "authenticated": true,
            "user": {
                "username": format!("system:serviceaccount:shop:{sa}"),
                "uid": "7c1e0d2a-0000-4000-8000-000000000001",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:shop", "system:authenticated"],
                "extra": {
                    "authentication.kubernetes.io/pod-name": [pod],
                    "authentication.kubernetes.io/pod-uid": [uid],
                },
            },
            "audiences": ["ward"],
        }),
        _ => json!({"user": {}, "error": "[invalid bearer token]"}),
    };
    let mut review = request.clone();
    review["status"] = status;
    review["metadata"] = json!({"creationTimestamp": null});
    Reply::Json(StatusCode::CREATED, review)
}

fn pod(name: &str, ip: &str, sa: &str, meshed: bool) -> Value {
    let mut containers = vec![json!({"name": "app", "image": "shop/web:1"})];
    let mut annotations = json!({});
    if meshed {
        containers.insert(0, json!({"name": "ward-proxy", "image": "ward/ward:0.1.0"}));
        annotations = json!({"ward.io/status": "{\"version\":\"0.1.0\"}"});
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
            "labels": {"app": "web", "security.ward.io/tlsMode": "ward"},
            "annotations": annotations},
        "spec": {"serviceAccountName": sa, "containers": containers},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    })
}

fn authorization_policy(name: &str, action: &str, methods: &[&str]) -> Value {
    json!({
        "apiVersion": "security.ward.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
            "managedFields": [{"manager": "kubectl-client-side-apply", "operation": "Update"}]},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "action": action,
            "rules": [{"to": [{"operation": {"methods": methods}}]}]}
    })
}

fn peer_authentication(mode: &str) -> Value {
    json!({
        "apiVersion": "security.ward.io/v1", "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": "shop", "uid": "uid-pa"},
        "spec": {"mtls": {"mode": mode}}
    })
}

struct Harness {
    cp: ControlPlane,
    _data: tempfile::TempDir,
    cluster: Shared,
    api: ApiServer,
    cell: Arc<SvidCell>,
}

impl Harness {
    async fn start(cluster: Cluster) -> Harness {
        Self::start_with(cluster, false).await
    }

    async fn start_with(cluster: Cluster, token_review: bool) -> Harness {
        let cluster: Shared = Arc::new(Mutex::new(cluster));
        let shared = cluster.clone();
        let api = ApiServer::start(move |req| shared.lock().unwrap().answer(req)).await;
        let data = tempfile::tempdir().unwrap();
        let mut config = loopback_config(TD, data.path());
        config.kube = Some(ApiClient(api.client()));
        config.kubernetes_sources = true;
        config.token_review = token_review;
        let cp = ControlPlane::start(config).await.unwrap();
        let cell = enrol(&cp, data.path(), "web").await;
        Harness {
            cp,
            _data: data,
            cluster,
            api,
            cell,
        }
    }

    fn cluster(&self) -> std::sync::MutexGuard<'_, Cluster> {
        self.cluster.lock().unwrap()
    }

    async fn admin(&self, path: &str) -> (u16, String) {
        admin_get(self.cp.admin_addr().unwrap(), path).await
    }

    /// Polls for up to 60 s (generous: it only bounds a failing test).
    async fn wait_ready(&self) {
        for _ in 0..2400 {
            if self.admin("/ready").await.0 == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("control plane never became ready");
    }

    /// The latest status patch for `name` that satisfies `pred`, waiting
    /// for it (statuses are written after the policies are published).
    async fn status_where(&self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..2400 {
            if let Some((_, status)) = self
                .status_patches()
                .into_iter()
                .rfind(|(n, s)| n == name && pred(s))
            {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no status for {name}: {:?}", self.status_patches());
    }

    /// The status patches the control plane sent, as (name, status).
    /// Waits until the API server was asked `count` times for a path
    /// starting with `prefix`.
    async fn wait_for_requests(&self, prefix: &str, count: usize) {
        let asked = || {
            self.api
                .requests()
                .iter()
                .filter(|r| r.path_and_query.starts_with(prefix))
                .count()
        };
        tokio::time::timeout(Duration::from_secs(60), async {
            while asked() < count {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("asked {} times for {prefix}, not {count}", asked()));
    }

    fn status_patches(&self) -> Vec<(String, Value)> {
        self.api
            .requests()
            .into_iter()
            .filter(|r| r.method == Method::PATCH)
            .map(|r| {
                let path = r.path_and_query.split('?').next().unwrap().to_owned();
                let name = path.split('/').nth(7).unwrap().to_owned();
                (name, r.body["status"].clone())
            })
            .collect()
    }
}

/// An SVID for `shop/<sa>` through a join token.
async fn enrol(cp: &ControlPlane, data: &std::path::Path, sa: &str) -> Arc<SvidCell> {
    let id = SpiffeId::for_service_account(TD, "shop", sa).unwrap();
    let token = join_token(data, &id, Duration::from_secs(60));
    let (key, request) = keyed_svid_request(&id, Some(Credential::JoinToken(token)), None);
    let client = api_client(cp, TD);
    // Until the Quarantine objects are listed the answer is 503
    // not_synced, which a sidecar retries the same way.
    let mut tries = 0;
    let answer = loop {
        match client.request_svid(&request, None).await {
            Ok(answer) => break answer,
            Err(err) => {
                let (status, code, message) = refusal(err);
                assert!(
                    code == "not_synced" && tries < 1500,
                    "{status} {code}: {message}"
                );
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    svid_cell(&answer, &key, TD)
}

/// Until the Quarantine objects are listed (here their CRD is not
/// installed yet) the control plane cannot know whom it must refuse: no
/// certificate is issued (503 not_synced, which sidecars retry; the join
/// token is not spent) and it is not ready. Once they list, the same
/// request succeeds.
#[tokio::test]
async fn nothing_is_issued_until_the_quarantines_are_listed() {
    let mut cluster = Cluster::default();
    cluster.missing.push("quarantines");
    let cluster: Shared = Arc::new(Mutex::new(cluster));
    let shared = cluster.clone();
    let api = ApiServer::start(move |req| shared.lock().unwrap().answer(req)).await;
    let data = tempfile::tempdir().unwrap();
    let mut config = loopback_config(TD, data.path());
    config.kube = Some(ApiClient(api.client()));
    config.kubernetes_sources = true;
    let cp = ControlPlane::start(config).await.unwrap();
    let admin = cp.admin_addr().unwrap();

    // Tried, and tried again: waiting for the list, not past it.
    for _ in 0..1500 {
        let lists = api
            .requests()
            .iter()
            .filter(|r| {
                r.path_and_query
                    .starts_with("/apis/ward.io/v1alpha1/quarantines?")
            })
            .count();
        if lists >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let id = SpiffeId::for_service_account(TD, "shop", "web").unwrap();
    let token = join_token(data.path(), &id, Duration::from_secs(60));
    let request = svid_request(&id, Some(Credential::JoinToken(token)), None);
    let client = api_client(&cp, TD);
    let (status, code, _) = refusal(client.request_svid(&request, None).await.unwrap_err());
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "not_synced")
    );
    let mut body = String::new();
    for _ in 0..1500 {
        body = admin_get(admin, "/ready").await.1;
        if body.contains("Quarantine objects") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(body.starts_with("HTTP/1.1 503"), "{body}");
    assert!(body.contains("Quarantine objects"), "{body}");
    let metrics = admin_get(admin, "/metrics").await.1;
    for series in [
        r#"ward_cp_kubernetes_watch_errors_total{resource="Quarantine"}"#,
        r#"ward_ca_certificate_refusals_total{reason="quarantine_not_synced"}"#,
    ] {
        assert!(metric_value(&metrics, series) >= 1.0, "{series}\n{metrics}");
    }

    // The CRD is installed: the watcher's retry lists it, and the token
    // refused meanwhile is still good.
    cluster.lock().unwrap().missing.clear();
    let mut answer = None;
    for _ in 0..1500 {
        match client.request_svid(&request, None).await {
            Ok(issued) => {
                answer = Some(issued);
                break;
            }
            Err(err) => {
                let (_, code, message) = refusal(err);
                assert_eq!(code, "not_synced", "{message}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    assert!(answer.is_some(), "never issued after the list succeeded");
    for _ in 0..1500 {
        if admin_get(admin, "/ready").await.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(admin_get(admin, "/ready").await.0, 200);
    assert_calls_allowed_by_rbac(&api.requests());
    cp.shutdown().await;
}

/// What a sidecar holds from its discovery stream after each update.
#[derive(Debug, Clone, Default)]
struct View {
    version: u64,
    /// The policy documents, joined.
    policies: String,
    /// Meshed addresses → SPIFFE ID, of the subscribed ones.
    endpoints: BTreeMap<String, String>,
    /// Subscribed addresses the control plane said are not meshed.
    absent: BTreeSet<String>,
    /// Subscribed Service addresses → the Service.
    services: BTreeMap<String, ServiceBody>,
    /// Subscribed addresses the control plane said are no Service.
    no_service: BTreeSet<String>,
}

impl View {
    fn answered(&self, address: &str) -> bool {
        self.endpoints.contains_key(address) || self.absent.contains(address)
    }
}

/// The sidecar's own discovery client, with a handler that records a
/// [`View`] after every update it applies.
struct Collector {
    view: Mutex<View>,
    tx: mpsc::UnboundedSender<View>,
}

impl DiscoveryHandler for Collector {
    fn apply(&self, update: &Update, state: &BTreeMap<String, Resource>) -> Result<(), String> {
        let mut view = self.view.lock().unwrap();
        match update.resource_type {
            ResourceType::Policy => {
                view.version = update.system_version;
                let docs: Vec<String> = state
                    .values()
                    .map(|r| r.decode::<PolicyBody>().map(|b| b.yaml))
                    .collect::<Result<_, _>>()?;
                view.policies = docs.join("---\n");
            }
            ResourceType::Endpoint => {
                for r in &update.resources {
                    let body: EndpointBody = r.decode()?;
                    view.endpoints
                        .insert(r.name.clone(), body.spiffe_id.unwrap_or_default());
                    view.absent.remove(&r.name);
                }
                for name in &update.removed {
                    view.endpoints.remove(name);
                    view.absent.insert(name.clone());
                }
            }
            ResourceType::Service => {
                for r in &update.resources {
                    view.services.insert(r.name.clone(), r.decode()?);
                    view.no_service.remove(&r.name);
                }
                for name in &update.removed {
                    view.services.remove(name);
                    view.no_service.insert(name.clone());
                }
            }
            _ => {}
        }
        let _ = self.tx.send(view.clone());
        Ok(())
    }
}

struct Watch {
    rx: mpsc::UnboundedReceiver<View>,
    _stop: tokio_util::sync::DropGuard,
}

/// Opens the discovery stream over mTLS as the sidecar of pod `shop/<pod>`
/// does, subscribed to `addresses` (as if its app had connected to them).
async fn open_watch(h: &Harness, pod: &str, addresses: &[&str]) -> Watch {
    open_watch_with(h, pod, addresses, &[]).await
}

/// [`open_watch`], subscribed to the Service addresses `services` too.
async fn open_watch_with(h: &Harness, pod: &str, addresses: &[&str], services: &[&str]) -> Watch {
    let client =
        ControlPlaneClient::from_bundle_pem(h.cp.api_addr().to_string(), TD, h.cp.bundle_pem())
            .unwrap();
    let discovery = DiscoveryClient::new(DiscoveryConfig {
        client,
        svid: h.cell.clone(),
        node: Node {
            pod: Some(pod.to_owned()),
            // Ignored in Kubernetes: the pod's labels count.
            labels: BTreeMap::from([("app".to_owned(), "not-web".to_owned())]),
            proxy_version: "test".into(),
        },
        resource_types: vec![
            ResourceType::Policy,
            ResourceType::Endpoint,
            ResourceType::Service,
        ],
        max_subscriptions: 100,
        extra_hello: BTreeMap::new(),
    });
    for address in addresses {
        discovery.subscribe(ResourceType::Endpoint, address);
    }
    for address in services {
        discovery.subscribe(ResourceType::Service, address);
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = Arc::new(Collector {
        view: Mutex::new(View::default()),
        tx,
    });
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(discovery.run(handler, stop.clone()));
    Watch {
        rx,
        _stop: stop.drop_guard(),
    }
}

async fn next_update(watch: &mut Watch) -> View {
    tokio::time::timeout(Duration::from_secs(60), watch.rx.recv())
        .await
        .expect("an update within 60 s")
        .expect("stream open")
}

/// Waits for a view satisfying `pred` (intermediate ones are skipped).
async fn update_where(watch: &mut Watch, pred: impl Fn(&View) -> bool) -> View {
    loop {
        let view = next_update(watch).await;
        if pred(&view) {
            return view;
        }
    }
}

fn endpoint_ids(view: &View) -> BTreeMap<String, String> {
    view.endpoints.clone()
}

fn web_id() -> String {
    format!("spiffe://{TD}/ns/shop/sa/web")
}

#[tokio::test]
async fn policies_and_endpoints_flow_from_the_api_to_the_watch_stream() {
    let mut cluster = Cluster::default();
    cluster.apply("pods", pod("web-1", "198.18.0.10", "web", true));
    // Labelled but without a sidecar: not an endpoint.
    cluster.apply("pods", pod("web-plain", "198.18.0.11", "web", false));
    cluster.apply(
        "authorizationpolicies",
        authorization_policy("allow-get", "ALLOW", &["GET"]),
    );
    cluster.apply(
        "authorizationpolicies",
        authorization_policy("bad", "MAYBE", &["GET"]),
    );
    cluster.objects.entry("peerauthentications").or_default();
    let h = Harness::start(cluster).await;
    h.wait_ready().await;
    let watched = ["198.18.0.10", "198.18.0.11", "198.18.0.12", "198.18.0.13"];
    let mut stream = open_watch(&h, "web-1", &watched).await;

    // First: the valid policy, the invalid one as its fail-closed stand-in
    // (an unknown action: a DENY of every request to app=web), and of the
    // addresses, the meshed pod.
    let first = update_where(&mut stream, |v| watched.iter().all(|a| v.answered(a))).await;
    assert!(first.version > 0);
    assert!(
        first.policies.contains("name: allow-get"),
        "{}",
        first.policies
    );
    assert!(first.policies.contains("name: bad"), "{}", first.policies);
    assert!(!first.policies.contains("MAYBE"), "{}", first.policies);
    assert!(
        !first.policies.contains("managedFields"),
        "{}",
        first.policies
    );
    assert_eq!(
        endpoint_ids(&first),
        BTreeMap::from([("198.18.0.10".to_owned(), web_id())])
    );

    // The watchers asked for meshed pods only, and both kinds of policy.
    let paths: Vec<String> = h
        .api
        .requests()
        .into_iter()
        .map(|r| r.path_and_query)
        .collect();
    assert!(
        paths
            .iter()
            .any(|p| p.starts_with("/api/v1/pods?") && p.contains("watch=true"))
    );
    assert!(
        paths
            .iter()
            .any(|p| p.starts_with("/apis/security.ward.io/v1/peerauthentications?"))
    );

    // Each policy got its verdict in its status.
    let accepted = h.status_where("allow-get", |_| true).await;
    assert_eq!(accepted["conditions"][0]["type"], "Accepted");
    assert_eq!(accepted["conditions"][0]["status"], "True");
    assert_eq!(accepted["observedGeneration"], 1);
    let rejected = h.status_where("bad", |_| true).await;
    assert_eq!(rejected["conditions"][0]["status"], "False");
    assert_eq!(rejected["conditions"][0]["reason"], "Invalid");
    let message = rejected["conditions"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("AuthorizationPolicy shop/bad") && message.contains("action"),
        "{message}"
    );
    assert!(message.contains("fail-closed"), "{message}");
    let metrics = h.admin("/metrics").await.1;
    assert_eq!(
        metric_value(
            &metrics,
            "ward_cp_policies_fail_closed{effect=\"deny_all\",kind=\"AuthorizationPolicy\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "ward_cp_policy_resources{kind=\"AuthorizationPolicy\",state=\"rejected\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "ward_cp_policy_resources{kind=\"AuthorizationPolicy\",state=\"accepted\"}"
        ),
        1.0
    );
    // A new policy is pushed.
    h.cluster().apply(
        "authorizationpolicies",
        authorization_policy("deny-delete", "DENY", &["DELETE"]),
    );
    let update = update_where(&mut stream, |u| u.policies.contains("deny-delete")).await;
    assert!(update.version > first.version);
    // The first two status updates came back as watch events before the
    // new policy's (one watch, in order): they changed nothing and were
    // not written again. Only the new policy's status was written since.
    h.status_where("deny-delete", |_| true).await;
    let written: Vec<String> = h.status_patches().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        {
            let mut sorted = written.clone();
            sorted.sort();
            sorted
        },
        ["allow-get", "bad", "deny-delete"],
        "{written:?}"
    );

    // The sidecar's pod is relabelled: its policies are selected again from
    // the pod's new labels (the stream stays up), and again when it is back.
    let mut relabelled = pod("web-1", "198.18.0.10", "web", true);
    relabelled["metadata"]["labels"]["app"] = json!("billing");
    h.cluster().apply("pods", relabelled);
    let update = update_where(&mut stream, |u| !u.policies.contains("allow-get")).await;
    assert!(
        !update.policies.contains("deny-delete"),
        "{}",
        update.policies
    );
    h.cluster()
        .apply("pods", pod("web-1", "198.18.0.10", "web", true));
    update_where(&mut stream, |u| {
        u.policies.contains("allow-get") && u.policies.contains("deny-delete")
    })
    .await;

    // An invalid edit of an enforced policy is enforced as its stand-in
    // (not as the earlier generation, which may allow more than meant).
    h.cluster().apply(
        "authorizationpolicies",
        authorization_policy("allow-get", "ALOW", &["GET", "HEAD"]),
    );
    h.cluster()
        .apply("peerauthentications", peer_authentication("PERMISSIVE"));
    let update = update_where(&mut stream, |u| u.policies.contains("PERMISSIVE")).await;
    assert!(update.policies.contains("name: allow-get"));
    assert!(!update.policies.contains("HEAD"), "{}", update.policies);
    assert!(!update.policies.contains("ALOW"), "{}", update.policies);
    assert!(!update.policies.contains("GET"), "{}", update.policies);
    let stale = h
        .status_where("allow-get", |s| s["observedGeneration"] == 2)
        .await;
    let message = stale["conditions"][0]["message"].as_str().unwrap();
    assert!(message.contains("fail-closed"), "{message}");

    // A pod leaves; a new one comes.
    h.cluster().delete("pods", "shop", "web-1");
    let update = update_where(&mut stream, |u| u.endpoints.is_empty()).await;
    assert!(endpoint_ids(&update).is_empty());
    h.cluster()
        .apply("pods", pod("web-2", "198.18.0.12", "web", true));
    update_where(&mut stream, |u| endpoint_ids(u).contains_key("198.18.0.12")).await;

    // The pod watch expires (410 Gone); meanwhile web-2 went away and
    // web-3 came without a watch event: the relist finds out.
    {
        let mut cluster = h.cluster();
        let open = cluster.watches.remove("pods").unwrap();
        cluster.objects.insert("pods", Vec::new());
        cluster.apply("pods", pod("web-3", "198.18.0.13", "api", true));
        cluster.watches.insert("pods", open);
        cluster.expire_watches("pods");
    }
    let update = update_where(&mut stream, |u| endpoint_ids(u).contains_key("198.18.0.13")).await;
    let pod_lists = h
        .api
        .requests()
        .iter()
        .filter(|r| {
            r.path_and_query.starts_with("/api/v1/pods?")
                && !r.path_and_query.contains("watch=true")
        })
        .count();
    assert_eq!(pod_lists, 2, "the 410 made the watcher relist");
    assert_calls_allowed_by_rbac(&h.api.requests());
    assert_eq!(
        endpoint_ids(&update),
        BTreeMap::from([(
            "198.18.0.13".to_owned(),
            format!("spiffe://{TD}/ns/shop/sa/api")
        )])
    );
    h.cp.shutdown().await;
}

#[tokio::test]
async fn nothing_is_distributed_until_every_resource_is_listed() {
    // The PeerAuthentication CRD is not installed yet: its list is 404.
    let mut cluster = Cluster::default();
    cluster.apply("pods", pod("web-1", "198.18.0.10", "web", true));
    cluster.apply(
        "authorizationpolicies",
        authorization_policy("deny-all-get", "DENY", &["GET"]),
    );
    cluster.missing.push("peerauthentications");
    let h = Harness::start(cluster).await;

    // Not ready, and a proxy that connects gets nothing: an empty policy
    // set now would allow what deny-all-get denies.
    let mut stream = open_watch(&h, "web-1", &["198.18.0.10"]).await;
    // The control plane tried the missing list, and tried again: it is
    // waiting for it, not past it.
    h.wait_for_requests("/apis/security.ward.io/v1/peerauthentications?", 2)
        .await;
    let (code, body) = h.admin("/ready").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        stream.rx.try_recv().is_err(),
        "nothing may be pushed before sync"
    );
    let metrics = h.admin("/metrics").await.1;
    assert!(
        metric_value(
            &metrics,
            "ward_cp_kubernetes_watch_errors_total{resource=\"PeerAuthentication\"}"
        ) >= 1.0,
        "{metrics}"
    );

    // The CRD is installed: the watcher's retry lists it, and the first
    // update carries the DENY policy.
    h.cluster().missing.clear();
    let first = update_where(&mut stream, |v| v.answered("198.18.0.10")).await;
    assert!(
        first.policies.contains("deny-all-get"),
        "{}",
        first.policies
    );
    assert_eq!(endpoint_ids(&first).len(), 1);
    h.wait_ready().await;
    h.cp.shutdown().await;
}

/// Every API call the control plane made is allowed by the ClusterRole in
/// `deploy/base/rbac.yaml` (so the least-privilege role is enough).
fn assert_calls_allowed_by_rbac(requests: &[Recorded]) {
    for request in requests {
        let (path, query) = request
            .path_and_query
            .split_once('?')
            .unwrap_or((&request.path_and_query, ""));
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        // /api/v1/<res> | /apis/<group>/<version>/[namespaces/<ns>/]<res>[/<name>[/<sub>]]
        let (group, rest) = match parts[0] {
            "api" => ("", &parts[2..]),
            _ => (parts[1], &parts[3..]),
        };
        let rest = if rest.first() == Some(&"namespaces") {
            &rest[2..]
        } else {
            rest
        };
        let resource = match rest {
            [res] | [res, _] => (*res).to_owned(),
            [res, _, sub] => format!("{res}/{sub}"),
            _ => panic!("unexpected path {path}"),
        };
        let verb = match request.method {
            Method::GET if query.contains("watch=true") => "watch",
            Method::GET if rest.len() == 1 => "list",
            Method::GET => "get",
            Method::PATCH => "patch",
            Method::POST => "create",
            _ => "other",
        };
        assert!(
            cluster_role_allows(group, &resource, verb),
            "the ClusterRole does not allow {verb} {group}/{resource} ({path})"
        );
    }
}

#[tokio::test]
async fn a_service_account_token_must_name_a_meshed_pod_the_cluster_has() {
    let mut cluster = Cluster::default();
    cluster.apply("pods", pod("web-1", "198.18.0.10", "web", true));
    cluster.objects.entry("authorizationpolicies").or_default();
    cluster.objects.entry("peerauthentications").or_default();
    let h = Harness::start_with(cluster, true).await;
    h.wait_ready().await;
    let client = api_client(&h.cp, TD);
    let ask = |sa: &str, token: &str, pod: &str| {
        let id = SpiffeId::for_service_account(TD, "shop", sa).unwrap();
        let credential = Credential::ServiceAccountToken(token.to_owned());
        svid_request(&id, Some(credential), Some(pod))
    };

    // The pod the token is bound to is there, same UID, same account.
    client
        .request_svid(&ask("web", "token:web:web-1:uid-web-1", "web-1"), None)
        .await
        .expect("issued");
    // (service account, token, claimed pod); the reasons are counted below.
    let refused = [
        // A pod the cluster does not have (deleted, or never meshed).
        ("web", "token:web:web-9:uid-web-9", "web-9"),
        // Same name, another pod: the token outlived the pod it was issued to.
        ("web", "token:web:web-1:uid-gone", "web-1"),
        // The pod runs as another service account than the token says.
        ("api", "token:api:web-1:uid-web-1", "web-1"),
    ];
    for (sa, token, pod) in refused {
        let err = client
            .request_svid(&ask(sa, token, pod), None)
            .await
            .unwrap_err();
        let (status, code, message) = refusal(err);
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::FORBIDDEN, "attestation_failed"),
            "{message}"
        );
        // The caller is not authenticated: the answer says nothing about
        // the cluster's pods or their service accounts.
        assert!(!message.contains(pod), "{token}: {message}");
        assert!(!message.contains("service account"), "{token}: {message}");
    }

    let metrics = h.admin("/metrics").await.1;
    assert_eq!(
        attestation_failures(&metrics, "k8s_sa_token", "pod_unknown"),
        2.0
    );
    assert_eq!(
        attestation_failures(&metrics, "k8s_sa_token", "pod_service_account_mismatch"),
        1.0
    );
    assert_calls_allowed_by_rbac(&h.api.requests());
    h.cp.shutdown().await;
}

/// Renewal re-checks the attestation's subject (#15): once the pod is
/// deleted, neither its SVID (mTLS renewal) nor its token renews it.
#[tokio::test]
async fn a_deleted_pods_identity_is_not_renewed() {
    let mut cluster = Cluster::default();
    cluster.apply("pods", pod("web-1", "198.18.0.10", "web", true));
    cluster.objects.entry("authorizationpolicies").or_default();
    cluster.objects.entry("peerauthentications").or_default();
    let h = Harness::start_with(cluster, true).await;
    h.wait_ready().await;
    let client = api_client(&h.cp, TD);
    let id = SpiffeId::for_service_account(TD, "shop", "web").unwrap();
    let token = || {
        Some(Credential::ServiceAccountToken(
            "token:web:web-1:uid-web-1".into(),
        ))
    };
    let (key, request) = keyed_svid_request(&id, token(), Some("web-1"));
    let answer = client.request_svid(&request, None).await.expect("enrolled");
    let svid = svid_cell(&answer, &key, TD);

    // While the pod runs: renewal over mTLS naming it works; not naming
    // a pod, or naming another one, does not.
    client
        .request_svid(&svid_request(&id, None, Some("web-1")), Some(&svid))
        .await
        .expect("renewed while the pod runs");
    for pod in [None, Some("web-9")] {
        let err = client
            .request_svid(&svid_request(&id, None, pod), Some(&svid))
            .await
            .unwrap_err();
        let (status, code, message) = refusal(err);
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::FORBIDDEN, "renewal_pod_unknown"),
            "{message}"
        );
    }

    // The pod is deleted: once the control plane's view has it gone, the
    // stolen-key renewal and the token both fail.
    h.cluster().delete("pods", "shop", "web-1");
    let refused = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let renewal = svid_request(&id, None, Some("web-1"));
            match client.request_svid(&renewal, Some(&svid)).await {
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(err) => return refusal(err),
            }
        }
    })
    .await
    .expect("renewals refused once the pod is gone");
    assert_eq!(refused.0, StatusCode::FORBIDDEN);
    assert_eq!(refused.1, "renewal_pod_unknown");
    assert!(
        refused.2.contains("no meshed pod shop/web-1"),
        "{}",
        refused.2
    );
    let err = client
        .request_svid(&svid_request(&id, token(), Some("web-1")), Some(&svid))
        .await
        .unwrap_err();
    let (status, code, message) = refusal(err);
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "attestation_failed"),
        "{message}"
    );
    assert!(!message.contains("web-1"), "{message}");
    let metrics = h.admin("/metrics").await.1;
    assert_eq!(
        attestation_failures(&metrics, "k8s_sa_token", "pod_unknown"),
        1.0,
        "{metrics}"
    );
    h.cp.shutdown().await;
}

/// A Service as the API server returns it: `clusterIPs` with their
/// families, `type: ClusterIP`, the defaults it fills in.
fn k8s_service(name: &str, cluster_ips: &[&str], ports: Value, annotations: Value) -> Value {
    let families: Vec<&str> = cluster_ips
        .iter()
        .map(|ip| if ip.contains(':') { "IPv6" } else { "IPv4" })
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-svc-{name}"),
            "creationTimestamp": "2026-01-05T10:00:00Z", "annotations": annotations},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ips[0], "clusterIPs": cluster_ips,
            "ipFamilies": families,
            "ipFamilyPolicy": if cluster_ips.len() > 1 { "PreferDualStack" } else { "SingleStack" },
            "selector": {"app": name},
            "ports": ports,
            "sessionAffinity": "None",
            "internalTrafficPolicy": "Cluster",
        },
        "status": {"loadBalancer": {}}
    })
}

/// An EndpointSlice as the EndpointSlice controller writes it.
fn endpoint_slice(
    name: &str,
    service: &str,
    address_type: &str,
    ports: Value,
    endpoints: Vec<Value>,
) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
            "generateName": format!("{service}-"),
            "creationTimestamp": "2026-01-05T10:00:01Z",
            "labels": {"kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": service,
                "uid": format!("uid-svc-{service}"), "controller": true, "blockOwnerDeletion": true}]},
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": ports,
    })
}

/// One endpoint of a slice: the pod's address, its conditions (a pod
/// shutting down is terminating, not ready, not serving).
fn slice_endpoint(address: &str, pod: &str, ready: bool) -> Value {
    json!({
        "addresses": [address],
        "conditions": {"ready": ready, "serving": ready, "terminating": !ready},
        "nodeName": "node-1", "zone": "zone-a",
        "targetRef": {"kind": "Pod", "namespace": "shop", "name": pod, "uid": format!("uid-{pod}")},
    })
}

/// `shop/web`, dual-stack, with named target ports, appProtocols, a UDP
/// port and a timeout.
fn web_service() -> Value {
    k8s_service(
        "web",
        &["10.96.0.10", "fd00:10:96::a"],
        json!([
            {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"},
            {"name": "grpc", "port": 9090, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"},
            {"name": "dns", "port": 53, "targetPort": 53, "protocol": "UDP"},
        ]),
        json!({"ward.io/timeout": "2s"}),
    )
}

fn web_slice_ports() -> Value {
    json!([
        {"name": "http", "port": 8080, "protocol": "TCP", "appProtocol": "http"},
        {"name": "grpc", "port": 9000, "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"},
        {"name": "dns", "port": 53, "protocol": "UDP"},
    ])
}

fn web_slice_v4(plain_ready: bool) -> Value {
    endpoint_slice(
        "web-7x2kq",
        "web",
        "IPv4",
        web_slice_ports(),
        vec![
            slice_endpoint("198.18.0.10", "web-1", true),
            slice_endpoint("198.18.0.11", "web-plain", plain_ready),
        ],
    )
}

#[tokio::test]
async fn services_and_endpoint_slices_flow_from_the_api_to_the_watch_stream() {
    let mut cluster = Cluster::default();
    cluster.apply("pods", pod("web-1", "198.18.0.10", "web", true));
    cluster.apply("pods", pod("web-plain", "198.18.0.11", "web", false));
    cluster.apply("services", web_service());
    // Headless: nothing to publish.
    let mut headless = k8s_service("db", &["None"], json!([{"port": 5432}]), json!({}));
    headless["spec"]["ipFamilies"] = json!(["IPv4"]);
    cluster.apply("services", headless);
    cluster.apply("endpointslices", web_slice_v4(true));
    cluster.apply(
        "endpointslices",
        endpoint_slice(
            "web-9fz1m",
            "web",
            "IPv6",
            web_slice_ports(),
            vec![slice_endpoint("fd00::10", "web-1", true)],
        ),
    );
    let h = Harness::start(cluster).await;
    h.wait_ready().await;
    let subscribed = ["10.96.0.10", "fd00:10:96::a", "10.96.0.99"];
    let mut stream = open_watch_with(&h, "web-1", &[], &subscribed).await;

    let first = update_where(&mut stream, |v| {
        v.services.len() == 2 && v.no_service.contains("10.96.0.99")
    })
    .await;
    let web = &first.services["10.96.0.10"];
    assert_eq!(web.service, "shop/web");
    assert_eq!(
        web.ports.keys().copied().collect::<Vec<_>>(),
        vec![80, 9090]
    );
    let http = &web.ports[&80];
    assert_eq!(
        (http.name.as_deref(), http.protocol, http.timeout_ms),
        (Some("http"), Some(AppProtocol::Http1), Some(2000))
    );
    // Named target ports resolved from the slice; the meshed pod's
    // identity filled in, the plain one's not (plaintext).
    let endpoints: Vec<(&str, Option<&str>, Option<&str>, bool)> = http
        .endpoints
        .iter()
        .map(|e| {
            (
                e.address.as_str(),
                e.spiffe_id.as_deref(),
                e.workload.as_deref(),
                e.ready,
            )
        })
        .collect();
    let web_id = web_id();
    assert_eq!(
        endpoints,
        vec![
            (
                "198.18.0.10:8080",
                Some(web_id.as_str()),
                Some("shop/web-1"),
                true
            ),
            ("198.18.0.11:8080", None, Some("shop/web-plain"), true),
        ]
    );
    let grpc = &web.ports[&9090];
    assert_eq!(grpc.protocol, Some(AppProtocol::Http2));
    assert_eq!(
        grpc.endpoints
            .iter()
            .map(|e| e.address.as_str())
            .collect::<Vec<_>>(),
        vec!["198.18.0.10:9000", "198.18.0.11:9000"]
    );
    // The IPv6 address: the IPv6 slice's endpoints.
    let v6 = &first.services["fd00:10:96::a"];
    assert_eq!(v6.service, "shop/web");
    assert_eq!(
        v6.ports[&80]
            .endpoints
            .iter()
            .map(|e| e.address.as_str())
            .collect::<Vec<_>>(),
        vec!["[fd00::10]:8080"]
    );

    // The watchers asked for every Service, and the slices of Services.
    let paths: Vec<String> = h
        .api
        .requests()
        .into_iter()
        .map(|r| r.path_and_query)
        .collect();
    assert!(
        paths
            .iter()
            .any(|p| p.starts_with("/api/v1/services?") && p.contains("watch=true"))
    );
    assert!(paths.iter().any(|p| {
        p.starts_with("/apis/discovery.k8s.io/v1/endpointslices?") && p.contains("watch=true")
    }));

    // The plain pod is shutting down: MODIFIED slice.
    h.cluster().apply("endpointslices", web_slice_v4(false));
    let update = update_where(&mut stream, |v| {
        v.services
            .get("10.96.0.10")
            .is_some_and(|w| !w.ports[&80].endpoints[1].ready)
    })
    .await;
    let plain = &update.services["10.96.0.10"].ports[&80].endpoints[1];
    assert_eq!(
        (plain.ready, plain.serving, plain.terminating),
        (false, false, true)
    );
    // The IPv6 address did not change.
    assert_eq!(
        update.services["fd00:10:96::a"],
        first.services["fd00:10:96::a"]
    );

    // The Service is deleted: both addresses are gone.
    h.cluster().delete("services", "shop", "web");
    let update = update_where(&mut stream, |v| v.services.is_empty()).await;
    assert!(
        update.no_service.contains("10.96.0.10") && update.no_service.contains("fd00:10:96::a"),
        "{update:?}"
    );
    assert_eq!(h.cp.endpoints().service_count(), 0);
    assert_calls_allowed_by_rbac(&h.api.requests());
    h.cp.shutdown().await;
}

#[tokio::test]
async fn nothing_is_distributed_until_the_endpoint_slices_are_listed() {
    let mut cluster = Cluster::default();
    cluster.apply("pods", pod("web-1", "198.18.0.10", "web", true));
    cluster.apply("services", web_service());
    cluster.apply("endpointslices", web_slice_v4(true));
    // The list of EndpointSlices fails (as when RBAC does not allow it).
    cluster.missing.push("endpointslices");
    let h = Harness::start(cluster).await;
    let mut stream = open_watch_with(&h, "web-1", &[], &["10.96.0.10"]).await;
    h.wait_for_requests("/apis/discovery.k8s.io/v1/endpointslices?", 2)
        .await;
    let (code, body) = h.admin("/ready").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        stream.rx.try_recv().is_err(),
        "nothing may be pushed before sync"
    );
    assert_eq!(h.cp.endpoints().service_count(), 0);
    let metrics = h.admin("/metrics").await.1;
    assert!(
        metric_value(
            &metrics,
            "ward_cp_kubernetes_watch_errors_total{resource=\"endpointslices\"}"
        ) >= 1.0,
        "{metrics}"
    );

    // The list works: the Service arrives whole, endpoints included.
    h.cluster().missing.clear();
    let first = update_where(&mut stream, |v| v.services.contains_key("10.96.0.10")).await;
    assert_eq!(first.services["10.96.0.10"].ports[&80].endpoints.len(), 2);
    h.wait_ready().await;
    h.cp.shutdown().await;
}
