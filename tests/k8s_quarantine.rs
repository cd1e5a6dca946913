//! Quarantine in Kubernetes (#15, "a workload's SVID can be revoked", in a
//! cluster) against a real API server (etcd, kube-apiserver and
//! kube-controller-manager; harness in `tests/support/cluster.rs`): the
//! `Quarantine` CRD refuses every target the control plane's parser
//! refuses; `ward quarantine --kubernetes` creates the object, both
//! control-plane replicas (`--kubernetes`, each with the ServiceAccount and
//! RBAC of `deploy/base`) refuse the quarantined identity's renewals and
//! push the quarantine to a sidecar's discovery stream (the `ward_api`
//! client), and `--lift` deletes it and undoes it all. Skips when the
//! Kubernetes binaries are unavailable, fails instead under
//! `WARD_TEST_STRICT=1`.

#[path = "support/bins.rs"]
mod bins;
#[path = "support/cluster.rs"]
mod cluster;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::{Cluster, text};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio_util::sync::{CancellationToken, DropGuard};
use ward_api::client::discovery::{DiscoveryClient, DiscoveryConfig, DiscoveryHandler};
use ward_api::client::{ClientError, ControlPlaneClient};
use ward_api::discovery::{Node, QuarantineBody, Resource, ResourceType, Update};
use ward_api::svid::{Credential, SvidRequest};
use ward_control_plane::quarantine::Target;
use ward_identity::SpiffeId;
use ward_identity::bundle::TrustBundles;
use ward_identity::ca;
use ward_identity::tls::SvidCell;

const TD: &str = "cluster.local";
const NAMESPACE: &str = "ward-system";
const SERVICE_ACCOUNT: &str = "ward-control-plane";
/// Waits end as soon as their condition holds; this only bounds a failure.
const WITHIN: Duration = Duration::from_secs(60);

/// A Quarantine object with `target` (the rest valid), as JSON.
fn quarantine_object(name: &str, target: &str) -> Value {
    json!({
        "apiVersion": "ward.io/v1alpha1",
        "kind": "Quarantine",
        "metadata": {"name": name},
        "spec": {
            "target": target,
            "reason": "INC-4711",
            "requestedBy": "alice",
            "requestedAt": "2026-12-03T12:00:00.123Z",
        },
    })
}

/// `kubectl create --dry-run=server` of `object` (admin): Ok, or the API
/// server's refusal.
fn server_dry_run(c: &Cluster, object: &Value) -> Result<(), String> {
    let out = c.kubectl_as(
        &c.kubeconfig,
        &["create", "--dry-run=server", "-f", "-"],
        Some(&object.to_string()),
    );
    match text(&out) {
        (true, _, _) => Ok(()),
        (false, out, err) => Err(format!("{err}{out}")),
    }
}

fn quarantine_crd(c: &Cluster) {
    c.kubectl_ok(&["apply", "-f", "deploy/base/crds/quarantines.yaml"]);
    c.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "crd/quarantines.ward.io",
    ]);
}

/// The API server and the control plane agree on every target: the CRD's
/// schema (CEL rules and patterns) accepts exactly what
/// `control-plane/src/quarantine/target.rs` parses, so a typo fails at
/// `kubectl apply` rather than in a replica's log. The other fields and
/// the immutability of `spec` are checked too.
#[test]
fn the_quarantine_crd_refuses_what_the_control_plane_refuses() {
    let Some(c) = Cluster::start() else { return };
    quarantine_crd(&c);

    let hex40 = "0123456789abcdef0123456789ABCDEF01234567";
    let label63 = "a".repeat(63);
    let pod253 = format!("{label63}.{label63}.{label63}.{}", "b".repeat(61));
    let pod255 = format!("{label63}.{label63}.{label63}.{label63}");
    let long_td = format!("spiffe://{}/x", "t".repeat(256));
    let targets: Vec<String> = [
        // Accepted by both.
        "spiffe://cluster.local/ns/shop/sa/cart",
        "spiffe://example.org/workload/x.y_z-1/Deep",
        "shop/cart-7d9f-x2",
        "shop/web.v2",
        "a/b",
        "serial:5f0c",
        "serial:01:AB:cd",
        "serial:::a",
        // Refused by both.
        " ",
        "spiffe://Cluster.Local/ns/a/sa/b",
        "spiffe://cluster.local",
        "spiffe://cluster.local/",
        "spiffe://cluster.local/ns/shop/sa/",
        "spiffe://cluster.local/ns//sa/b",
        "spiffe://cluster.local/ns/a/../b",
        "spiffe://cluster.local/ns/./b",
        "spiffe://cluster.local/ns/a/sa/b?x=1",
        "spiffe://cluster.local/ns/a#b",
        "spiffe://cluster.local/ns/a%20b",
        "spiffe://user@cluster.local/x",
        "spiffe://cluster.local:443/x",
        "spiffe:cluster.local/x",
        "https://example.org/x",
        "serial:",
        "serial:xyz",
        "serial:0x1f",
        "web",
        "Shop/web",
        "shop/Web",
        "shop/web/x",
        "shop/",
        "/web",
        "-shop/web",
        "shop/web-",
        "shop/web_1",
        "shop/web:80",
        "shop/web ",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain([
        format!("serial:{hex40}"),
        format!("serial:{hex40}0"),
        format!("{label63}/web"),
        format!("{label63}a/web"),
        format!("shop/{pod253}"),
        format!("shop/{pod255}"),
        format!("shop/{label63}a"),
        long_td,
    ])
    .collect();
    let mut disagreements = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        let parsed = target.parse::<Target>();
        let applied = server_dry_run(&c, &quarantine_object(&format!("t-{i}"), target));
        eprintln!(
            "{target:?}: parser {}, API server {}",
            if parsed.is_ok() { "accepts" } else { "refuses" },
            match &applied {
                Ok(()) => "accepts".to_owned(),
                Err(e) => format!("refuses: {}", e.trim()),
            }
        );
        if parsed.is_ok() != applied.is_ok() {
            disagreements.push(format!(
                "{target:?}: parser {parsed:?}, API server {applied:?}"
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "the CRD and the parser disagree:\n{}",
        disagreements.join("\n")
    );
    // The message names the rule.
    let err = server_dry_run(&c, &quarantine_object("bad", "serial:xyz")).unwrap_err();
    assert!(err.contains("1 to 40 hex digits"), "{err}");

    // The other fields.
    let good = quarantine_object("fields", "shop/web");
    let changed = |pointer: &str, value: Value| {
        let mut object = good.clone();
        *object.pointer_mut(pointer).unwrap() = value;
        object
    };
    let without = |field: &str| {
        let mut object = good.clone();
        object["spec"].as_object_mut().unwrap().remove(field);
        object
    };
    for (object, expect) in [
        (without("reason"), "spec.reason: Required value"),
        (changed("/spec/reason", json!("")), "spec.reason"),
        (changed("/spec/reason", json!("  \n")), "say why"),
        (
            changed("/spec/reason", json!("é".repeat(600))),
            "1024 bytes",
        ),
        (without("requestedBy"), "spec.requestedBy: Required value"),
        (changed("/spec/requestedBy", json!("")), "spec.requestedBy"),
        (
            changed("/spec/requestedAt", json!("yesterday")),
            "spec.requestedAt",
        ),
        (
            changed("/spec/requestedAt", json!("2026-13-03T12:00:00Z")),
            "spec.requestedAt",
        ),
        (without("target"), "spec.target: Required value"),
        (
            changed("/metadata/name", json!("Not_A_Name")),
            "metadata.name",
        ),
    ] {
        let err = server_dry_run(&c, &object).expect_err(&object.to_string());
        assert!(err.contains(expect), "expected {expect:?} in: {err}");
    }
    server_dry_run(&c, &good).expect("the valid object");

    // A quarantine is lifted by deleting it, never by changing its target.
    let out = c.kubectl_as(
        &c.kubeconfig,
        &["create", "-f", "-"],
        Some(&good.to_string()),
    );
    assert!(out.status.success(), "{}", text(&out).2);
    let (ok, _, err) = text(&c.kubectl(&[
        "patch",
        "quarantine",
        "fields",
        "--type=merge",
        "-p",
        r#"{"spec":{"target":"shop/other"}}"#,
    ]));
    assert!(!ok && err.contains("spec is immutable"), "{err}");
}

/// A `ward-control-plane --kubernetes` replica, killed on drop.
struct Replica {
    name: String,
    child: Child,
    log: PathBuf,
    admin: String,
    /// The API listener sidecars enrol with.
    listen: String,
    data: PathBuf,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    fn start(c: &Cluster, name: &str, data: &Path, kubeconfig: &Path) -> Replica {
        let log = c.dir().join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let admin = format!("127.0.0.1:{}", cluster::free_port());
        let listen = format!("127.0.0.1:{}", cluster::free_port());
        let child = c
            .command(&bins::bins().control_plane)
            .args(["--kubernetes", "--k8s-token-review", "--data-dir"])
            .arg(data)
            .args(["--listen", &listen, "--admin-listen", &admin])
            .args(["--lease-identity", name, "--log-level", "info"])
            .env("KUBECONFIG", kubeconfig)
            // kube-rs prefers the in-cluster configuration when these are set.
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start ward-control-plane");
        Replica {
            name: name.to_owned(),
            child,
            log,
            admin,
            listen,
            data: data.to_owned(),
        }
    }

    fn tail(&self) -> String {
        format!("\n---- {} log:\n{}", self.name, bins::tail(&self.log, 30))
    }

    fn ready(&mut self) -> Result<(), String> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(format!("{} exited ({status}){}", self.name, self.tail()));
        }
        match cluster::http_get(&self.admin, "/ready")? {
            (200, _) => Ok(()),
            (code, body) => Err(format!("{code} {}{}", body.trim(), self.tail())),
        }
    }

    fn client(&self) -> ControlPlaneClient {
        let bundle = std::fs::read_to_string(self.data.join("ca/ca.pem")).unwrap();
        ControlPlaneClient::from_bundle_pem(self.listen.clone(), TD, &bundle).unwrap()
    }

    /// `ward audit --json` of its data directory: (action, target) pairs.
    fn audit(&self) -> Vec<(String, String)> {
        let out = bins::ward(&["audit", "--json", "--data-dir", self.data.to_str().unwrap()]);
        bins::assert_ok(out, "ward audit")
            .lines()
            .map(|line| {
                let record: Value = serde_json::from_str(line).unwrap();
                let field = |k: &str| record[k].as_str().unwrap_or_default().to_owned();
                (field("action"), field("target"))
            })
            .collect()
    }
}

/// A workload's certificate, enrolled with a join token as its sidecar
/// would: a cell holding it, for renewals and its discovery stream.
async fn enrol(replica: &Replica, id: &SpiffeId, pod: &str) -> Arc<SvidCell> {
    let token = bins::join_token(&replica.data, id.as_str());
    let key = ca::generate_key();
    let request = SvidRequest {
        spiffe_id: id.to_string(),
        csr: ca::build_csr(&key, id).unwrap(),
        credential: Some(Credential::JoinToken(token)),
        pod: Some(pod.to_owned()),
    };
    let answer = match replica.client().request_svid(&request, None).await {
        Ok(answer) => answer,
        Err(err) => panic!("enrolling {id}: {err}{}", replica.tail()),
    };
    let mut bundles = TrustBundles::new();
    bundles.add_pem(TD, &answer.bundle_pem).unwrap();
    let chain = CertificateDer::pem_slice_iter(answer.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let cell = Arc::new(SvidCell::new());
    cell.install(
        chain,
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        &bundles,
    )
    .unwrap();
    cell
}

/// A renewal over mTLS with `cell`: Ok, or the refusal's (status, code).
async fn renew(
    replica: &Replica,
    id: &SpiffeId,
    cell: &Arc<SvidCell>,
    pod: &str,
) -> Result<(), (u16, String)> {
    let key = ca::generate_key();
    let request = SvidRequest {
        spiffe_id: id.to_string(),
        csr: ca::build_csr(&key, id).unwrap(),
        credential: None,
        pod: Some(pod.to_owned()),
    };
    match replica.client().request_svid(&request, Some(cell)).await {
        Ok(_) => Ok(()),
        Err(ClientError::Refused { status, code, .. }) => Err((status.as_u16(), code)),
        Err(other) => Err((0, other.to_string())),
    }
}

/// Renews until the answer is `want` (a refusal's (status, code), or Ok).
async fn renewal_until(
    replica: &Replica,
    id: &SpiffeId,
    cell: &Arc<SvidCell>,
    pod: &str,
    want: Result<(), (u16, String)>,
) {
    let began = Instant::now();
    loop {
        let got = renew(replica, id, cell, pod).await;
        if got == want {
            return;
        }
        assert!(
            began.elapsed() < WITHIN,
            "renewal of {id} at {}: {got:?}, waiting for {want:?}{}",
            replica.name,
            replica.tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One in-process sidecar's discovery stream: the quarantine resources it
/// holds.
#[derive(Default)]
struct Watcher {
    up: Mutex<bool>,
    quarantine: Mutex<BTreeMap<String, QuarantineBody>>,
}

impl DiscoveryHandler for Watcher {
    fn apply(&self, update: &Update, state: &BTreeMap<String, Resource>) -> Result<(), String> {
        if update.resource_type == ResourceType::Quarantine {
            let mut held = self.quarantine.lock().unwrap();
            held.clear();
            for (name, resource) in state {
                held.insert(name.clone(), resource.decode()?);
            }
        }
        Ok(())
    }

    fn connected(&self, up: bool) {
        *self.up.lock().unwrap() = up;
    }
}

impl Watcher {
    fn holds(&self, id: &SpiffeId) -> bool {
        self.quarantine
            .lock()
            .unwrap()
            .values()
            .any(|body| body.spiffe_ids == [id.to_string()])
    }

    fn holds_nothing(&self) -> bool {
        *self.up.lock().unwrap() && self.quarantine.lock().unwrap().is_empty()
    }
}

fn watch(replica: &Replica, svid: &Arc<SvidCell>, pod: &str) -> (Arc<Watcher>, DropGuard) {
    let discovery = DiscoveryClient::new(DiscoveryConfig {
        client: replica.client(),
        svid: svid.clone(),
        node: Node {
            pod: Some(pod.to_owned()),
            ..Node::default()
        },
        resource_types: vec![ResourceType::Policy, ResourceType::Quarantine],
        max_subscriptions: 10,
        extra_hello: BTreeMap::new(),
    });
    let watcher = Arc::new(Watcher::default());
    let stop = CancellationToken::new();
    tokio::spawn(discovery.run(watcher.clone(), stop.clone()));
    (watcher, stop.drop_guard())
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let began = Instant::now();
    while !check() {
        assert!(began.elapsed() < WITHIN, "{what}: not within {WITHIN:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `ward quarantine --kubernetes ARGS` as an operator runs it (the admin
/// kubeconfig).
fn ward_quarantine(c: &Cluster, args: &[&str]) -> Output {
    Command::new(&bins::bins().ward)
        .args(["quarantine", "--kubernetes"])
        .args(args)
        .env("KUBECONFIG", &c.kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .stdin(Stdio::null())
        .output()
        .expect("run ward quarantine")
}

/// A meshed pod (never scheduled here: the test plays its sidecar) running
/// as service account `sa` in namespace shop.
fn meshed_pod(name: &str, sa: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: shop\n  labels: {{app: {name}, security.ward.io/tlsMode: ward}}\nspec:\n  serviceAccountName: {sa}\n  containers:\n  - {{name: app, image: ward-testapp}}\n"
    )
}

#[test]
fn ward_quarantine_kubernetes_is_enforced_by_every_replica_until_lifted() {
    let began = Instant::now();
    let Some(c) = Cluster::start() else { return };

    // ---- deploy/base as an operator applies it; its replicas are the
    // processes below (the Deployment is scaled to 0), with its
    // ServiceAccount and RBAC, and one CA as the ward-ca Secret gives them.
    c.kubectl_ok(&["apply", "-k", "deploy/base"]);
    c.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "crd/authorizationpolicies.security.ward.io",
        "crd/peerauthentications.security.ward.io",
        "crd/quarantines.ward.io",
    ]);
    c.kubectl_ok(&[
        "-n",
        NAMESPACE,
        "scale",
        "deployment/ward-control-plane",
        "--replicas=0",
    ]);
    let token = c.kubectl_ok(&[
        "-n",
        NAMESPACE,
        "create",
        "token",
        SERVICE_ACCOUNT,
        "--duration=1h",
    ]);
    let kubeconfig = c.token_kubeconfig("ward-control-plane.kubeconfig", token.trim());
    let first = c.dir().join("replica-1-data");
    bins::ca_init(&first, TD);
    let second = c.dir().join("replica-2-data");
    copy_ca(&first, &second);
    // Two workloads: web (to be quarantined) and api (watching). Made
    // first, so a ready replica has listed their pods.
    c.kubectl_ok(&["create", "namespace", "shop"]);
    for sa in ["web", "api"] {
        c.kubectl_ok(&["-n", "shop", "create", "serviceaccount", sa]);
        c.apply(&meshed_pod(sa, sa));
    }
    let mut replicas = [
        Replica::start(&c, "replica-1", &first, &kubeconfig),
        Replica::start(&c, "replica-2", &second, &kubeconfig),
    ];
    for replica in &mut replicas {
        c.wait_until("the replica /ready", WITHIN, || replica.ready());
    }
    let web = SpiffeId::for_service_account(TD, "shop", "web").unwrap();
    let api = SpiffeId::for_service_account(TD, "shop", "api").unwrap();
    let target = Target::Identity(web.clone());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let [r1, r2] = &replicas;
        let web_cell = enrol(r1, &web, "web").await;
        let api_cell = enrol(r1, &api, "api").await;
        for replica in [r1, r2] {
            renewal_until(replica, &web, &web_cell, "web", Ok(())).await;
        }
        let (api_at_1, _stop_1) = watch(r1, &api_cell, "api");
        let (api_at_2, _stop_2) = watch(r2, &api_cell, "api");
        for watcher in [&api_at_1, &api_at_2] {
            eventually("the api sidecar's streams up, nothing quarantined", || {
                watcher.holds_nothing()
            })
            .await;
        }

        // ---- a typo is refused before anything is sent
        let out = ward_quarantine(
            &c,
            &["spiffe://Cluster.Local/ns/shop/sa/web", "--reason", "x"],
        );
        let (ok, _, err) = text(&out);
        assert!(!ok && err.contains("not a valid SPIFFE ID"), "{err}");

        // ---- ward quarantine --kubernetes
        let asked = Instant::now();
        let out = ward_quarantine(
            &c,
            &[
                web.as_str(),
                "--reason",
                "key in build logs (INC-4711)",
                "--by",
                "alice",
            ],
        );
        let stdout = bins::assert_ok(out, "ward quarantine --kubernetes");
        assert!(stdout.contains(&target.entry_name()), "{stdout}");
        let objects: Value =
            serde_json::from_str(&c.kubectl_ok(&["get", "quarantines.ward.io", "-o", "json"]))
                .unwrap();
        let items = objects["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{objects}");
        assert_eq!(items[0]["metadata"]["name"], target.entry_name().as_str());
        assert_eq!(items[0]["spec"]["target"], web.as_str());
        assert_eq!(items[0]["spec"]["requestedBy"], "alice");
        assert_eq!(items[0]["spec"]["reason"], "key in build logs (INC-4711)");

        // (b) both replicas push it to the api sidecar's streams ...
        for (watcher, replica) in [(&api_at_1, r1), (&api_at_2, r2)] {
            eventually("the quarantine on the api sidecar's stream", || {
                watcher.holds(&web)
            })
            .await;
            eprintln!(
                "{}: on the stream {:.0} ms after `ward quarantine` started",
                replica.name,
                asked.elapsed().as_secs_f64() * 1e3
            );
        }
        // (a) ... and refuse web's renewals, generically.
        for replica in [r1, r2] {
            renewal_until(
                replica,
                &web,
                &web_cell,
                "web",
                Err((403, "refused".into())),
            )
            .await;
        }
        renew(r2, &api, &api_cell, "api")
            .await
            .expect("another identity is not concerned");

        // ---- twice: refused, naming the object in force
        let out = ward_quarantine(&c, &[web.as_str(), "--reason", "again"]);
        let (ok, _, err) = text(&out);
        assert!(
            !ok && err.contains("already quarantined") && err.contains(&target.entry_name()),
            "{err}"
        );

        // ---- ward quarantine --kubernetes --lift
        let out = ward_quarantine(&c, &["--lift", web.as_str()]);
        let stdout = bins::assert_ok(out, "ward quarantine --kubernetes --lift");
        assert!(stdout.contains("lifted"), "{stdout}");
        assert_eq!(
            c.kubectl_ok(&["get", "quarantines.ward.io", "-o", "name"])
                .trim(),
            ""
        );
        for watcher in [&api_at_1, &api_at_2] {
            eventually("the lift on the api sidecar's stream", || {
                watcher.holds_nothing()
            })
            .await;
        }
        for replica in [r1, r2] {
            renewal_until(replica, &web, &web_cell, "web", Ok(())).await;
        }
        let out = ward_quarantine(&c, &["--lift", web.as_str()]);
        let (ok, _, err) = text(&out);
        assert!(!ok && err.contains("is not quarantined"), "{err}");
    });

    // ---- each replica's audit trail: enforced, then lifted
    for replica in &replicas {
        let trail: Vec<(String, String)> = replica
            .audit()
            .into_iter()
            .filter(|(_, t)| t == web.as_str())
            .collect();
        assert_eq!(
            trail,
            [
                ("enforced".to_owned(), web.to_string()),
                ("lifted".to_owned(), web.to_string())
            ],
            "{}",
            replica.name
        );
        let log = std::fs::read_to_string(&replica.log).unwrap_or_default();
        assert!(
            !log.to_lowercase().contains("forbidden"),
            "{} met an RBAC denial:\n{log}",
            replica.name
        );
    }
    eprintln!("test took {:.1} s", began.elapsed().as_secs_f64());
}

/// `from`'s CA files into a new data directory `to`, as a second replica
/// mounts the same Secret.
fn copy_ca(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let ca = to.join("ca");
    std::fs::create_dir_all(&ca).unwrap();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o700)).unwrap();
    for file in ["ca.pem", "ca-key.pem"] {
        std::fs::copy(from.join("ca").join(file), ca.join(file)).unwrap();
    }
    std::fs::set_permissions(
        ca.join("ca-key.pem"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
}
