//! A gRPC-probed pod (#14): `ward inject` rewrites its `grpc` probe to the
//! sidecar's admin port like an HTTP probe and leaves the serving port
//! captured, so under STRICT a plaintext client is refused there while the
//! kubelet's probe (from outside the pod) answers by the app's own
//! `grpc.health.v1` status. Real network namespaces and iptables rules
//! (`support/mesh.rs`); the app is gRPC's own library (grpcio), run as in
//! `independent_peers_netns.rs`.

#[path = "support/mesh.rs"]
mod mesh;
#[path = "support/netns.rs"]
mod netns;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use mesh::{Mesh, MeshPod, PodOptions, assert_ok, bins};
use serde_json::Value;

const PYTHON: &str = "/usr/bin/python3";
const GRPC_PORT: u16 = 50051;

fn peers_pythonpath() -> String {
    std::env::var("WARD_TEST_PEERS_PYTHONPATH")
        .unwrap_or_else(|_| "/opt/ward-test-peers/python".to_owned())
}

fn prerequisites() -> bool {
    if !mesh::prerequisites() {
        return false;
    }
    let imports = Command::new(PYTHON)
        .args(["-c", "import grpc"])
        .env("PYTHONPATH", peers_pythonpath())
        .output()
        .is_ok_and(|out| out.status.success());
    ward_testkit::prerequisite(
        imports,
        &format!(
            "{PYTHON} cannot import grpc from {} (.ci/run installs it)",
            peers_pythonpath()
        ),
    )
}

/// `python3 tests/peers/grpc_health_peer.py ARGS…` with grpcio, as argv.
fn health_peer(args: &[&str]) -> Vec<String> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/grpc_health_peer.py");
    let mut argv = vec![
        "env".to_owned(),
        format!("PYTHONPATH={}", peers_pythonpath()),
        PYTHON.to_owned(),
        script.to_str().unwrap().to_owned(),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    argv
}

const POD: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: greeter
  namespace: default
  annotations: {ward.io/inject: "true"}
spec:
  serviceAccountName: server
  containers:
  - name: app
    image: greeter
    ports: [{name: grpc, containerPort: 50051}]
    readinessProbe:
      grpc: {port: 50051}
      periodSeconds: 5
"#;

/// What `ward inject` gave the pod: the init container's environment and
/// the sidecar's `WARD_APP_PROBES`.
fn injected() -> (Vec<(String, String)>, String) {
    let mut child = Command::new(&bins().ward)
        .args(["inject", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ward inject");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), POD.as_bytes()).unwrap();
    let out = assert_ok(child.wait_with_output().unwrap(), "ward inject");
    let pod: Value = serde_yaml_ng::from_str(&out).expect("one injected pod");
    let spec = &pod["spec"];
    let all: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|k| spec[k].as_array().into_iter().flatten())
        .collect();
    let env = |name: &str| -> Vec<(String, String)> {
        let c = all
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} container:\n{out}"));
        c["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                Some((
                    e["name"].as_str()?.to_owned(),
                    e["value"].as_str()?.to_owned(),
                ))
            })
            .collect()
    };
    let app = all.iter().find(|c| c["name"] == "app").expect("app");
    assert_eq!(
        app["readinessProbe"]["httpGet"]["path"], "/app-health/app/readyz",
        "the gRPC probe goes to the sidecar:\n{out}"
    );
    let probes = env("ward-proxy")
        .into_iter()
        .find(|(k, _)| k == "WARD_APP_PROBES")
        .map(|(_, v)| v)
        .expect("WARD_APP_PROBES");
    (env("ward-init"), probes)
}

/// The kubelet's probe, sent from `from` (outside the server pod): the status.
fn probe(from: &netns::Pod, server: &MeshPod) -> String {
    let url = format!("http://{}:15020/app-health/app/readyz", server.ip());
    let out = from.exec(&[
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "15",
        &url,
    ]);
    assert_ok(out, "curl the app probe")
}

fn check(from: &[&str], pod_exec: impl Fn(&[&str]) -> std::process::Output) -> Value {
    let argv = health_peer(from);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = assert_ok(pod_exec(&argv), "grpc health check");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn write_status(path: &Path, status: &str) {
    std::fs::write(path, status).unwrap();
}

#[test]
fn a_grpc_probed_pod_keeps_its_serving_port_captured_and_strict() {
    if !prerequisites() {
        return;
    }
    let (init_env, app_probes) = injected();
    let excluded = init_env
        .iter()
        .find(|(k, _)| k == "WARD_EXCLUDE_INBOUND_PORTS")
        .map(|(_, v)| v.as_str());
    assert_eq!(excluded, Some(""), "no port leaves capture for a probe");

    // The app reads its health from a file the test flips (readable by
    // the pods' application user).
    let dir = tempfile::Builder::new()
        .prefix("ward-grpc-probe")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let status_file = dir.path().join("status");
    write_status(&status_file, "SERVING");
    std::fs::set_permissions(&status_file, std::fs::Permissions::from_mode(0o644)).unwrap();

    let mesh = Mesh::planned("ward-grpc-probe", &[("a", "client"), ("b", "server")]);
    let listen = format!("0.0.0.0:{GRPC_PORT}");
    let app = health_peer(&[
        "serve",
        "--listen",
        &listen,
        "--status-file",
        status_file.to_str().unwrap(),
    ]);
    let app: Vec<&str> = app.iter().map(String::as_str).collect();
    let opts = PodOptions {
        init_env,
        ..PodOptions::default()
    }
    .proxy_arg("--app-probes")
    .proxy_arg(&app_probes);
    let b = mesh.add_pod("b", "server", &app, opts);
    let a = mesh.add_pod("a", "client", &[], PodOptions::default());
    let outsider = mesh.add_plain_pod("outsider");
    let target = format!("{}:{GRPC_PORT}", b.ip());

    // Through the mesh the port serves.
    let meshed = check(&["check", "--connect", &target], |argv| a.exec(argv));
    assert_eq!(meshed["code"], "OK", "{meshed}");
    assert_eq!(meshed["status"], 1, "{meshed}");
    // Plaintext from outside the mesh is refused on the serving port.
    let plain = check(&["check", "--connect", &target], |argv| outsider.exec(argv));
    assert_ne!(plain["code"], "OK", "plaintext reached the app: {plain}");

    // The kubelet's probe answers by the app's gRPC health.
    assert_eq!(probe(&outsider, &b), "200");
    write_status(&status_file, "NOT_SERVING");
    assert_eq!(probe(&outsider, &b), "503");
    write_status(&status_file, "SERVING");
    assert_eq!(probe(&outsider, &b), "200");
}
