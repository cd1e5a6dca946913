//! gRPC and WebSocket through two sidecars between peers that share no code
//! with Ward or `ward-testapp`: gRPC's own library (grpcio) and an RFC 6455
//! implementation (`websockets`), client and server, in real network
//! namespaces with the real iptables capture (see `support/mesh.rs`).
//!
//! The peers are `tests/peers/*.py`, run with the system's `/usr/bin/python3`
//! (the pods' application user cannot read root's home) and the libraries
//! `.ci/run` installs into `/opt/ward-test-peers/python`
//! (`WARD_TEST_PEERS_PYTHONPATH` to use another directory).

#[path = "support/mesh.rs"]
mod mesh;
#[path = "support/netns.rs"]
mod netns;

use std::path::PathBuf;
use std::process::Command;

use mesh::{Mesh, MeshPod, PodOptions, assert_ok};
use serde_json::Value;

const PYTHON: &str = "/usr/bin/python3";

fn peers_pythonpath() -> String {
    std::env::var("WARD_TEST_PEERS_PYTHONPATH")
        .unwrap_or_else(|_| "/opt/ward-test-peers/python".to_owned())
}

fn peer_script(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers")
        .join(name);
    path.to_str().unwrap().to_owned()
}

/// The mesh's prerequisites, and Python with grpcio and websockets.
fn prerequisites() -> bool {
    if !mesh::prerequisites() {
        return false;
    }
    let imports = Command::new(PYTHON)
        .args(["-c", "import grpc, websockets"])
        .env("PYTHONPATH", peers_pythonpath())
        .output()
        .is_ok_and(|out| out.status.success());
    ward_testkit::prerequisite(
        imports,
        &format!(
            "{PYTHON} cannot import grpc and websockets from {} (.ci/run installs them)",
            peers_pythonpath()
        ),
    )
}

/// `python3 SCRIPT ARGS…` with the peers' libraries, as argv.
fn python_argv(script: &str, args: &[&str]) -> Vec<String> {
    let mut argv = vec![
        "env".to_owned(),
        format!("PYTHONPATH={}", peers_pythonpath()),
        PYTHON.to_owned(),
        peer_script(script),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    argv
}

/// Server pod `b` running `app` and client pod `a`, both with sidecars.
fn client_server(name: &str, app: &[String]) -> (Mesh, MeshPod, MeshPod) {
    let mesh = Mesh::planned(name, &[("a", "client"), ("b", "server")]);
    let app: Vec<&str> = app.iter().map(String::as_str).collect();
    let b = mesh.add_pod("b", "server", &app, PodOptions::default());
    let a = mesh.add_pod("a", "client", &[], PodOptions::default());
    (mesh, b, a)
}

fn run_client(client: &MeshPod, script: &str, args: &[&str]) -> Value {
    let argv = python_argv(script, args);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = assert_ok(client.exec(&argv), script);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{script}: {e}: {out}"))
}

/// The server's sidecar served `client` over mTLS: its access log names it.
fn served_over_mtls(server: &MeshPod, client: &MeshPod) {
    let log = server.proxy_log();
    assert!(
        log.lines()
            .any(|l| l.contains("direction=\"inbound\"") && l.contains(client.spiffe_id())),
        "the server's sidecar never saw {}:\n{log}",
        client.spiffe_id()
    );
}

#[test]
fn grpc_between_independent_peers_through_two_sidecars() {
    if !prerequisites() {
        return;
    }
    let server = python_argv("grpc_peer.py", &["serve", "--listen", "0.0.0.0:50051"]);
    let (_mesh, b, a) = client_server("ward-peer-grpc", &server);
    let target = format!("{}:50051", b.ip());
    let result = run_client(
        &a,
        "grpc_peer.py",
        &["call", "--connect", &target, "--messages", "40"],
    );
    assert_eq!(result["unary"], "hello over grpc", "{result}");
    // Streaming both ways, messages up to 70 KB, and a custom trailer.
    assert_eq!(result["received"], 40, "{result}");
    assert_eq!(result["mismatched"], 0, "{result}");
    assert_eq!(result["bidi_code"], "OK", "{result}");
    assert_eq!(result["trailers"]["x-peer-count"], "40", "{result}");
    // An error status crosses in the trailers of a 200.
    assert_eq!(result["fail_code"], "PERMISSION_DENIED", "{result}");
    assert_eq!(result["fail_details"], "denied by the peer", "{result}");
    served_over_mtls(&b, &a);
}

#[test]
fn websocket_between_independent_peers_through_two_sidecars() {
    if !prerequisites() {
        return;
    }
    let server = python_argv("ws_peer.py", &["serve", "--listen", "0.0.0.0:8765"]);
    let (_mesh, b, a) = client_server("ward-peer-ws", &server);
    let target = format!("{}:8765", b.ip());
    let result = run_client(&a, "ws_peer.py", &["call", "--connect", &target]);
    assert_eq!(result["text"], "hello through two sidecars", "{result}");
    assert_eq!(result["binary_ok"], true, "{result}");
    assert_eq!(result["pong"], true, "{result}");
    // A clean close handshake through both sidecars.
    assert_eq!(result["close_code"], 1000, "{result}");
    served_over_mtls(&b, &a);
}
