//! Loopback exposure (#14): the inbound reaches the application on the
//! pod's own address, so a service the pod binds to 127.0.0.1 (or `::1`)
//! only is not reachable through the mesh, while one on 0.0.0.0 (or the
//! pod's IPv6 address) is; a pod that opts in (`--inbound-to-loopback`, the
//! `ward.io/inbound-to-loopback` annotation) gets the old loopback
//! forwarding. Real network namespaces and iptables/ip6tables rules from
//! `ward-proxy init` (`support/mesh.rs`).
//!
//! IPv6 addresses come from 2001:2::/48, the IPv6 benchmarking prefix
//! (RFC 5180), as 198.18.0.0/15 is IPv4's; nothing is routed outside the
//! test's namespaces.

#[path = "support/mesh.rs"]
mod mesh;
#[path = "support/netns.rs"]
mod netns;

use mesh::{Mesh, MeshPod, PodOptions, assert_ok, spiffe_id};
use serde_json::Value;

const PUBLIC: &str = "0.0.0.0:8080";
const PRIVATE: &str = "127.0.0.1:8081";
const PRIVATE_V6: &str = "[::1]:8081";

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

/// `GET http://<authority>/echo/private` from `client` through both
/// sidecars: the HTTP status curl saw, and the body.
fn get(client: &MeshPod, authority: &str) -> (String, String) {
    let url = format!("http://{authority}/echo/private");
    let out = client.exec(&[
        "curl",
        "-sS",
        "-g",
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
    let (status, body) = get(&a, &format!("{}:8080", b.ip()));
    assert_eq!(status, "200", "{body}");
    assert!(body.contains("/echo/private"), "{body}");

    // The loopback-only one is not: the inbound finds nothing on the pod
    // address (the sidecar's 503), and the private app saw no request.
    let (status, body) = get(&a, &format!("{}:8081", b.ip()));
    assert_eq!(status, "503", "a loopback-only service answered: {body}");
    assert!(!body.contains("/echo/private"), "{body}");

    // Opted in, the same loopback-only service is reachable.
    let (status, body) = get(&a, &format!("{}:8081", c.ip()));
    assert_eq!(status, "200", "{body}");
    assert!(body.contains("/echo/private"), "{body}");
}

/// The pod's IPv6 address, next to its IPv4 one (198.18.0.N: 2001:2::N).
fn ipv6_of(pod: &MeshPod) -> String {
    let std::net::IpAddr::V4(v4) = pod.ip() else {
        panic!("the mesh gives pods IPv4 addresses");
    };
    format!("2001:2::{}", v4.octets()[3])
}

/// Gives the pod's `eth0` its IPv6 address (`/64`: every pod on-link)
/// without duplicate address detection: a tentative address can be neither
/// bound by an app nor reached (ip6tables' REDIRECT skips it too) for the
/// second or more DAD takes.
fn add_ipv6(pod: &MeshPod) {
    let cidr = format!("{}/64", ipv6_of(pod));
    let out = pod
        .pod()
        .exec(&["ip", "-6", "addr", "add", &cidr, "dev", "eth0", "nodad"]);
    assert_ok(out, &format!("ip -6 addr add {cidr}"));
}

fn ipv6_prerequisites() -> bool {
    mesh::prerequisites()
        && ward_testkit::require_tool("ip6tables")
        && ward_testkit::require_tool("ip6tables-restore")
        && ward_testkit::prerequisite(
            std::path::Path::new("/proc/sys/net/ipv6").exists(),
            "the kernel has no IPv6",
        )
}

#[test]
fn over_ipv6_a_loopback_only_listener_is_unreachable_and_the_pod_address_is_served() {
    if !ipv6_prerequisites() {
        return;
    }
    let mesh = Mesh::planned(
        "ward-loopback6",
        &[("a", "client"), ("b", "server"), ("c", "server")],
    );
    let mut b = mesh.add_pod("b", "server", &[], PodOptions::default());
    let mut c = mesh.add_pod(
        "c",
        "server",
        &[],
        PodOptions::default().proxy_arg("--inbound-to-loopback"),
    );
    for pod in [&b, &c] {
        add_ipv6(pod);
    }
    // b: one app on its own IPv6 address only, one on ::1 only.
    let public = format!("[{}]:8080", ipv6_of(&b));
    b.start_app(&["ward-testapp", "http", "--listen", &public]);
    b.start_app(&["ward-testapp", "http", "--listen", PRIVATE_V6]);
    c.start_app(&["ward-testapp", "http", "--listen", PRIVATE_V6]);
    // The client's sidecar knows the servers' IPv6 addresses as meshed (the
    // harness declares the IPv4 ones).
    // The default capture listeners take both families.
    let mut client_opts = PodOptions::default();
    for pod in [&b, &c] {
        client_opts = client_opts.proxy_arg("--endpoint").proxy_arg(&format!(
            "{}={}",
            ipv6_of(pod),
            spiffe_id("server")
        ));
    }
    let a = mesh.add_pod("a", "client", &[], client_opts);
    add_ipv6(&a);

    // init gave lo the inbound's IPv6 source.
    let lo = assert_ok(
        b.pod()
            .exec(&["ip", "-6", "-o", "addr", "show", "dev", "lo"]),
        "ip -6 addr show dev lo",
    );
    assert!(lo.contains(" ::6/128 "), "{lo}");

    // The app on the pod's IPv6 address is served over the mesh (mTLS:
    // the echo carries the client's identity), reached from ::6.
    let (status, body) = get(&a, &public);
    assert_eq!(status, "200", "{body}");
    let echo: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(echo["path"], "/echo/private", "{echo}");
    assert_eq!(
        echo["headers"]["x-forwarded-client-cert"],
        format!("URI={}", spiffe_id("client")),
        "{echo}"
    );
    let peer = echo["peer"].as_str().unwrap_or_default();
    assert!(peer.starts_with("[::6]:"), "{echo}");

    // The ::1-only one is not: the sidecar's 503, no request reached it.
    let (status, body) = get(&a, &format!("[{}]:8081", ipv6_of(&b)));
    assert_eq!(
        status, "503",
        "a loopback-only IPv6 service answered: {body}"
    );
    assert!(!body.contains("/echo/private"), "{body}");

    // Opted in, the same ::1-only service is reachable over IPv6.
    let (status, body) = get(&a, &format!("[{}]:8081", ipv6_of(&c)));
    assert_eq!(status, "200", "{body}");
    assert!(body.contains("/echo/private"), "{body}");
}
