//! Loopback exposure (#14): the inbound reaches the application on the
//! pod's own address, so a service the pod binds to 127.0.0.1 only is not
//! reachable through the mesh, while one on 0.0.0.0 is; a pod that opts in
//! (`--inbound-to-loopback`, the `ward.io/inbound-to-loopback` annotation)
//! gets the old loopback forwarding. Real network namespaces and iptables
//! rules from `ward-proxy init` (`support/mesh.rs`).

#[path = "support/mesh.rs"]
mod mesh;
#[path = "support/netns.rs"]
mod netns;

use mesh::{Mesh, MeshPod, PodOptions};

const PUBLIC: &str = "0.0.0.0:8080";
const PRIVATE: &str = "127.0.0.1:8081";

/// A server pod with one app on every address and one on loopback only.
fn server(mesh: &Mesh, name: &str, opts: PodOptions) -> MeshPod {
    let mut pod = mesh.add_pod(
        name,
        "server",
        &["ward-testapp", "http", "--listen", PUBLIC],
        opts,
    );
    pod.start_app(&["ward-testapp", "http", "--listen", PRIVATE]);
    pod
}

/// `GET http://<server>:<port>/echo` from `client` through both sidecars:
/// the HTTP status curl saw, and the body.
fn get(client: &MeshPod, server: &MeshPod, port: u16) -> (String, String) {
    let url = format!("http://{}:{port}/echo/private", server.ip());
    let out = client.exec(&[
        "curl",
        "-sS",
        "--max-time",
        "15",
        "-w",
        "\n%{http_code}",
        &url,
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.to_owned(), body.to_owned())
}

#[test]
fn a_loopback_only_listener_is_unreachable_through_the_mesh() {
    if !mesh::prerequisites() {
        return;
    }
    let mesh = Mesh::planned(
        "ward-loopback",
        &[("a", "client"), ("b", "server"), ("c", "server")],
    );
    let b = server(&mesh, "b", PodOptions::default());
    let c = server(
        &mesh,
        "c",
        PodOptions::default().proxy_arg("--inbound-to-loopback"),
    );
    let a = mesh.add_pod("a", "client", &[], PodOptions::default());

    // The app on 0.0.0.0 is served over the mesh.
    let (status, body) = get(&a, &b, 8080);
    assert_eq!(status, "200", "{body}");
    assert!(body.contains("/echo/private"), "{body}");

    // The loopback-only one is not: the inbound finds nothing on the pod
    // address (the sidecar's 503), and the private app saw no request.
    let (status, body) = get(&a, &b, 8081);
    assert_eq!(status, "503", "a loopback-only service answered: {body}");
    assert!(!body.contains("/echo/private"), "{body}");

    // Opted in, the same loopback-only service is reachable.
    let (status, body) = get(&a, &c, 8081);
    assert_eq!(status, "200", "{body}");
    assert!(body.contains("/echo/private"), "{body}");
}
