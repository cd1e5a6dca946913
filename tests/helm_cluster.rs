//! `helm install` of `deploy/helm/ward` on the real Kubernetes API server of
//! the test harness (`tests/support/cluster.rs`: etcd, kube-apiserver,
//! kube-controller-manager built by `tests/cluster/build-k8s.sh`, which
//! also builds `helm`), following docs/operations.md: the namespace made
//! with kubectl, `helm install`, `deploy/scripts/install-ca.sh`, `helm
//! upgrade`, `helm uninstall`.
//!
//! Harness deviations, the same as `tests/k8s_cluster.rs`'s (there is no
//! kubelet and no image here): the control plane runs as a
//! `ward-control-plane` process with the chart's settings (ConfigMap
//! `ward-control-plane-env` as its environment, the Deployment's arguments
//! with loopback addresses), the CA Secret's files and a token of the
//! chart's ServiceAccount (so the chart's RBAC is what it runs with); the
//! Deployment is scaled to 0 and the webhook's `clientConfig.service` is
//! replaced by `url: https://127.0.0.1:<port>/...` (the API server on
//! loopback cannot reach a Service). Skips without the binaries, fails
//! instead under `WARD_TEST_STRICT=1`.

#[path = "support/bins.rs"]
mod bins;
#[path = "support/cluster.rs"]
mod cluster;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cluster::{Cluster, text};
use serde_json::{Value, json};

const NAMESPACE: &str = "ward-system";

/// `helm ARGS` against the cluster, its own configuration directories in
/// the cluster's; panics with the output unless it succeeded.
fn helm(c: &Cluster, args: &[&str]) -> String {
    let home = c.dir().join("helm-home");
    let out = c
        .command(c.bin.join("helm"))
        .args(args)
        .arg(format!("--kubeconfig={}", c.kubeconfig.display()))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("HELM_NAMESPACE")
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run helm");
    match text(&out) {
        (true, out, _) => out,
        (false, out, err) => c.fail(&format!("helm {}: {err}{out}", args.join(" "))),
    }
}

fn json_of(c: &Cluster, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&c.kubectl_ok(&all)).unwrap()
}

/// The caBundle of each webhook entry of `ward-injector`.
fn ca_bundles(c: &Cluster) -> Vec<String> {
    json_of(c, &["get", "mutatingwebhookconfiguration", "ward-injector"])["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            w["clientConfig"]["caBundle"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The CA Secret's two files in `data/ca`, private as the data directory
/// requires (a Secret volume would present them as symlinks, see
/// docs/operations.md, "Known issue").
fn copy_ca(c: &Cluster, data: &Path) {
    let ca_dir = data.join("ca");
    std::fs::create_dir_all(&ca_dir).unwrap();
    let secret = json_of(c, &["-n", NAMESPACE, "get", "secret", "ward-ca"]);
    for file in ["ca.pem", "ca-key.pem"] {
        let b64 = secret["data"][file].as_str().expect(file);
        let out = Command::new("base64")
            .arg("-d")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(b64.as_bytes())?;
                child.wait_with_output()
            })
            .expect("base64 -d");
        assert!(out.status.success() && !out.stdout.is_empty(), "{file}");
        std::fs::write(ca_dir.join(file), &out.stdout).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ca_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(
        ca_dir.join("ca-key.pem"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
}

const SHOP: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {ward.io/inject: enabled}
"#;

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: cart, namespace: shop}
spec:
  containers: [{name: app, image: registry.example/shop/cart:1.0}]
"#;

#[test]
fn helm_install_upgrade_and_uninstall_on_a_real_api_server() {
    let began = Instant::now();
    let Some(c) = Cluster::start() else { return };
    if !ward_testkit::prerequisite(
        c.bin.join("helm").is_file(),
        &format!("helm is not in {}", c.bin.display()),
    ) {
        return;
    }
    let secs = Duration::from_secs;

    // ---- docs/operations.md, "Install": the namespace, then the chart.
    c.kubectl_ok(&["create", "namespace", NAMESPACE]);
    c.kubectl_ok(&[
        "label",
        "namespace",
        NAMESPACE,
        "app.kubernetes.io/part-of=ward",
        "ward.io/inject=disabled",
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    let t = Instant::now();
    let installed = helm(
        &c,
        &[
            "install",
            "ward",
            "deploy/helm/ward",
            "--namespace",
            NAMESPACE,
        ],
    );
    eprintln!(
        "helm install ({:.1} s):\n{installed}",
        t.elapsed().as_secs_f64()
    );
    let status: Value = serde_json::from_str(&helm(
        &c,
        &["status", "ward", "--namespace", NAMESPACE, "-o", "json"],
    ))
    .unwrap();
    assert_eq!(status["info"]["status"], "deployed", "{installed}");
    c.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "crd/authorizationpolicies.security.ward.io",
        "crd/peerauthentications.security.ward.io",
        "crd/quarantines.ward.io",
    ]);
    // Every object of the render is in the cluster, owned by the release.
    let deployment = json_of(
        &c,
        &["-n", NAMESPACE, "get", "deployment", "ward-control-plane"],
    );
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(
        deployment["metadata"]["annotations"]["meta.helm.sh/release-name"],
        "ward"
    );
    for object in [
        "clusterrole/ward-control-plane",
        "clusterrolebinding/ward-control-plane",
        "mutatingwebhookconfiguration/ward-injector",
    ] {
        c.kubectl_ok(&["get", object]);
    }
    for object in [
        "serviceaccount/ward-control-plane",
        "configmap/ward-control-plane-env",
        "service/ward-control-plane",
        "poddisruptionbudget/ward-control-plane",
        "role/ward-control-plane-leader-election",
        "rolebinding/ward-control-plane-leader-election",
        "networkpolicy/ward-control-plane-api",
        "networkpolicy/ward-control-plane-webhook",
        "networkpolicy/ward-control-plane-metrics",
    ] {
        c.kubectl_ok(&["-n", NAMESPACE, "get", object]);
    }
    // The pod template passes the namespace's `restricted` Pod Security
    // level: the ReplicaSet controller creates both pods (Pending: no node).
    c.wait_until("the Deployment's 2 pods are created", secs(60), || {
        let pods = json_of(
            &c,
            &[
                "-n",
                NAMESPACE,
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/name=ward-control-plane",
            ],
        );
        match pods["items"].as_array().map(Vec::len) {
            Some(2) => Ok(()),
            n => Err(format!(
                "{n:?} pods; events: {}",
                c.kubectl_ok(&["-n", NAMESPACE, "get", "events"])
            )),
        }
    });

    // ---- the CA, as an operator runs install-ca.sh (ward, kubectl on PATH).
    c.apply(SHOP);
    let ward_dir = Path::new(&bins::bins().ward).parent().unwrap().to_owned();
    let path = std::env::join_paths([c.bin.clone(), ward_dir].into_iter().chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();
    let out = c
        .command("bash")
        .arg("deploy/scripts/install-ca.sh")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PATH", path)
        .env("KUBECONFIG", &c.kubeconfig)
        .output()
        .expect("run install-ca.sh");
    if let (false, o, e) = text(&out) {
        c.fail(&format!("deploy/scripts/install-ca.sh: {e}{o}"));
    }
    let bundles = ca_bundles(&c);
    assert_eq!(bundles.len(), 2);
    assert!(
        !bundles[0].is_empty() && bundles[0] == bundles[1],
        "{bundles:?}"
    );

    // ---- docs/operations.md, "Upgrade": a changed value takes effect, and
    // the caBundle install-ca.sh wrote survives (the chart does not manage
    // it without ca.bundle).
    helm(
        &c,
        &[
            "upgrade",
            "ward",
            "deploy/helm/ward",
            "--namespace",
            NAMESPACE,
            "--set",
            "controlPlane.replicas=3",
            "--set",
            "injection.proxyLogLevel=debug",
        ],
    );
    let deployment = json_of(
        &c,
        &["-n", NAMESPACE, "get", "deployment", "ward-control-plane"],
    );
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert_eq!(ca_bundles(&c), bundles, "helm upgrade kept the caBundle");
    let settings = json_of(
        &c,
        &[
            "-n",
            NAMESPACE,
            "get",
            "configmap",
            "ward-control-plane-env",
        ],
    );
    assert_eq!(settings["data"]["WARD_PROXY_LOG_LEVEL"], "debug");
    let history = helm(&c, &["history", "ward", "--namespace", NAMESPACE]);
    assert_eq!(
        history.lines().count(),
        3,
        "header and two revisions: {history}"
    );

    // ---- the control plane with the chart's settings, CA, ServiceAccount.
    c.kubectl_ok(&[
        "-n",
        NAMESPACE,
        "scale",
        "deployment/ward-control-plane",
        "--replicas=0",
    ]);
    let data = c.dir().join("ward-data");
    copy_ca(&c, &data);
    let token = c.kubectl_ok(&[
        "-n",
        NAMESPACE,
        "create",
        "token",
        "ward-control-plane",
        "--duration=1h",
    ]);
    let kubeconfig = c.token_kubeconfig("ward-control-plane.kubeconfig", token.trim());
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["command"], json!(["ward-control-plane"]));
    let mut args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    // Loopback ports instead of the pod's, the data directory here.
    let admin = format!("127.0.0.1:{}", cluster::free_port());
    let webhook = format!("127.0.0.1:{}", cluster::free_port());
    for (flag, value) in [
        ("--listen", format!("127.0.0.1:{}", cluster::free_port())),
        ("--admin-listen", admin.clone()),
        ("--data-dir", data.to_str().unwrap().to_owned()),
    ] {
        let i = args.iter().position(|a| a == flag).expect(flag);
        args[i + 1] = value;
    }
    let log = c.dir().join("ward-control-plane.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut cmd = c.command(&bins::bins().control_plane);
    cmd.args(&args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("KUBECONFIG", &kubeconfig)
        .env("WARD_LEASE_IDENTITY", "helm-test-0")
        .env("WARD_LEASE_NAMESPACE", NAMESPACE);
    for (key, value) in settings["data"].as_object().unwrap() {
        cmd.env(key, value.as_str().unwrap());
    }
    cmd.env("WARD_WEBHOOK_LISTEN", &webhook);
    let mut cp = Process(
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start ward-control-plane"),
    );
    let url = |path: &str| format!("https://{webhook}{path}");
    let patch = json!([
        {"op": "remove", "path": "/webhooks/0/clientConfig/service"},
        {"op": "add", "path": "/webhooks/0/clientConfig/url", "value": url("/inject/namespace-enabled")},
        {"op": "remove", "path": "/webhooks/1/clientConfig/service"},
        {"op": "add", "path": "/webhooks/1/clientConfig/url", "value": url("/inject")},
    ]);
    c.kubectl_ok(&[
        "patch",
        "mutatingwebhookconfiguration",
        "ward-injector",
        "--type=json",
        "-p",
        &patch.to_string(),
    ]);
    let t = Instant::now();
    c.wait_until("ward-control-plane /ready", secs(60), || {
        if let Ok(Some(status)) = cp.0.try_wait() {
            return Err(format!("exited ({status}):\n{}", bins::tail(&log, 30)));
        }
        match c.http_get(&admin, "/ready")? {
            (200, _) => Ok(()),
            (code, body) => Err(format!("{code} {}\n{}", body.trim(), bins::tail(&log, 30))),
        }
    });
    eprintln!("control plane ready in {:.1} s", t.elapsed().as_secs_f64());
    // In Kubernetes mode (WARD_KUBERNETES from the chart's ConfigMap) it
    // takes the leader-election Lease the chart's Role allows.
    c.wait_until("the control plane holds the Lease", secs(30), || {
        let out = c.kubectl(&[
            "-n",
            NAMESPACE,
            "get",
            "lease",
            "ward-control-plane",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ]);
        match text(&out) {
            (true, holder, _) if holder.trim() == "helm-test-0" => Ok(()),
            (_, o, e) => Err(format!("holder {o:?} {e}")),
        }
    });
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        !logged.contains("forbidden"),
        "RBAC refused a call:\n{logged}"
    );

    // ---- a pod in the labelled namespace: the API server calls the
    // webhook, which injects the sidecar with the chart's settings.
    c.apply(POD);
    let pod = json_of(&c, &["-n", "shop", "get", "pod", "cart"]);
    let init: Vec<&str> = pod["spec"]["initContainers"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(init, ["ward-init", "ward-proxy"], "{pod:#}");
    let proxy = &pod["spec"]["initContainers"][1];
    assert_eq!(proxy["restartPolicy"], "Always", "native sidecar");
    assert_eq!(proxy["image"], "ghcr.io/ward-mesh/ward:0.1.0");
    let env = |name: &str| {
        proxy["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].clone())
    };
    assert_eq!(
        env("WARD_LOG_LEVEL"),
        Some(json!("debug")),
        "the upgraded setting"
    );
    assert_eq!(env("WARD_TRUST_DOMAIN"), Some(json!("cluster.local")));

    // ---- docs/operations.md, "Uninstall".
    drop(cp);
    let t = Instant::now();
    let uninstalled = helm(&c, &["uninstall", "ward", "--namespace", NAMESPACE]);
    eprintln!(
        "helm uninstall ({:.1} s): {uninstalled}",
        t.elapsed().as_secs_f64()
    );
    for (ns, object) in [
        (None, "mutatingwebhookconfiguration/ward-injector"),
        (None, "clusterrole/ward-control-plane"),
        (None, "clusterrolebinding/ward-control-plane"),
        (Some(NAMESPACE), "deployment/ward-control-plane"),
        (Some(NAMESPACE), "configmap/ward-control-plane-env"),
        (Some(NAMESPACE), "networkpolicy/ward-control-plane-api"),
    ] {
        let mut args = vec!["get", object, "--ignore-not-found", "-o", "name"];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        assert_eq!(
            c.kubectl_ok(&args).trim(),
            "",
            "{object} outlived helm uninstall"
        );
    }
    // What the chart did not create, and the CRDs (crds/), stay.
    c.kubectl_ok(&["get", "crd", "authorizationpolicies.security.ward.io"]);
    c.kubectl_ok(&["get", "crd", "quarantines.ward.io"]);
    c.kubectl_ok(&["-n", NAMESPACE, "get", "secret", "ward-ca"]);
    eprintln!("test took {:.1} s", began.elapsed().as_secs_f64());
}
