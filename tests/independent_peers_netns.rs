//! gRPC and WebSocket through two sidecars between peers that share no code
//! with Ward or `ward-testapp`: gRPC's own library (grpcio) and an RFC 6455
//! implementation (`websockets`), client and server, in real network
//! namespaces with the real iptables capture (see `support/mesh.rs`).
//!
//! The peers are `tests/peers/*.py` (see `support/peers.rs`).

#[path = "support/mesh.rs"]
mod mesh;
#[path = "support/netns.rs"]
mod netns;
#[path = "support/peers.rs"]
mod peers;

use mesh::{Mesh, MeshPod, PodOptions, assert_ok};
use serde_json::Value;

/// The mesh's prerequisites, and Python with grpcio and websockets.
fn prerequisites() -> bool {
    mesh::prerequisites() && peers::available("grpc, websockets")
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
    let argv = peers::argv(script, args);
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
    let server = peers::argv("grpc_peer.py", &["serve", "--listen", "0.0.0.0:50051"]);
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
    let server = peers::argv("ws_peer.py", &["serve", "--listen", "0.0.0.0:8765"]);
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
