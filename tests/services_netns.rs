//! Kubernetes-style Services in the network-namespace cluster: the node
//! (the bridge namespace) programs iptables like kube-proxy, pods resolve
//! Service names through their `/etc/hosts` (see `support/kube_proxy.rs`).
//! These tests prove the harness itself with plain pods (no sidecar) and a
//! meshed client: DNAT to the endpoints on the node, un-DNAT of the replies
//! that cross the bridge directly, random balancing per connection,
//! rewrites when endpoints change, rejection without endpoints, hairpin, and
//! the sidecar's capture of connections to a cluster IP.
//!
//! Needs root, `ip`, `iptables`(-restore/-save), `sysctl`, `setpriv`,
//! `curl` and the `br_netfilter` module; skips without them (fails under
//! WARD_TEST_STRICT=1).

#[path = "support/kube_proxy.rs"]
mod kube_proxy;
#[path = "support/mesh.rs"]
mod mesh;
#[path = "support/netns.rs"]
mod netns;

use std::collections::BTreeSet;

use kube_proxy::KubeProxy;
use mesh::{Mesh, PodOptions, assert_ok, bins};
use netns::{ChildGuard, Pod};
use serde_json::Value;

const CLUSTER_IP: &str = "198.19.0.10";
const SERVICE: &str = "shop/cart";
const REPLICA_PORT: u16 = 8080;

fn prerequisites() -> bool {
    mesh::prerequisites() && kube_proxy::prerequisites()
}

/// A plain pod running `ward-testapp http --name <pod name>` on :8080.
/// Field order: the app dies before its namespace.
struct Replica {
    _app: ChildGuard,
    pod: Pod,
}

impl Replica {
    fn start(mesh: &Mesh, name: &str) -> Replica {
        let pod = mesh.add_plain_pod(name);
        let listen = format!("0.0.0.0:{REPLICA_PORT}");
        let mut app = pod.spawn(&[&bins().testapp, "http", "--listen", &listen, "--name", name]);
        app.wait_for_line(&format!("listening on {listen}"));
        Replica { _app: app, pod }
    }

    fn endpoint(&self) -> String {
        format!("{}:{REPLICA_PORT}", self.pod.ip())
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

/// `ward-testapp load ARGS` in `pod` (as root: plain pods have no capture);
/// its JSON summary.
fn load(pod: &Pod, args: &[&str]) -> Value {
    let mut argv = vec![bins().testapp.as_str(), "load"];
    argv.extend_from_slice(args);
    json(&assert_ok(pod.exec(&argv), "ward-testapp load"))
}

/// The replica names that answered, from a load summary.
fn names(summary: &Value) -> BTreeSet<String> {
    summary["names"]
        .as_object()
        .map(|names| names.keys().cloned().collect())
        .unwrap_or_default()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// `curl ARGS` in `pod`: (exit code, stdout).
fn curl(pod: &Pod, args: &[&str]) -> (Option<i32>, String) {
    let mut argv = vec!["curl", "-sS"];
    argv.extend_from_slice(args);
    let out = pod.exec(&argv);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_cluster_ip_balances_over_its_ready_endpoints_and_refuses_without_any() {
    if !prerequisites() {
        return;
    }
    let mesh = Mesh::new("ward-svc-lb");
    let replicas: Vec<Replica> = (1..=3)
        .map(|i| Replica::start(&mesh, &format!("replica-{i}")))
        .collect();
    let client = mesh.add_plain_pod("client");
    let node = KubeProxy::new(mesh.network());
    let endpoints: Vec<String> = replicas.iter().map(Replica::endpoint).collect();
    let endpoints: Vec<&str> = endpoints.iter().map(String::as_str).collect();
    node.set_service(SERVICE, CLUSTER_IP, 80, &endpoints);

    // kube-proxy's layout: one KUBE-SVC chain choosing among three
    // KUBE-SEP chains with probabilities 1/3, 1/2, then the rest.
    let rules = node.rules();
    assert_eq!(
        rules.matches("-j DNAT --to-destination").count(),
        3,
        "{rules}"
    );
    assert!(rules.contains("--probability 0.33333333"), "{rules}");
    assert!(rules.contains("--probability 0.50000000"), "{rules}");
    assert_eq!(rules.matches("--mode random").count(), 2, "{rules}");

    // 300 requests on 60+ connections (5 requests each): every one answered,
    // and each replica got some (a replica missing 60 random 1-in-3 picks:
    // 3 * (2/3)^60, about 1e-10).
    let target = format!("{CLUSTER_IP}:80");
    let args = [
        "--connect",
        &target,
        "--requests",
        "300",
        "--concurrency",
        "10",
        "--requests-per-connection",
        "5",
    ];
    let summary = load(&client, &args);
    assert_eq!(summary["ok"], 300, "{summary}");
    assert_eq!(summary["errors"], 0, "{summary}");
    assert_eq!(summary["statuses"]["200"], 300, "{summary}");
    assert_eq!(
        names(&summary),
        set(&["replica-1", "replica-2", "replica-3"]),
        "{summary}"
    );
    assert!(summary["connections"].as_u64().unwrap() >= 60, "{summary}");

    // By name, as cluster DNS would answer (the client's /etc/hosts). The
    // replica sees the client's own address: DNAT only, no SNAT.
    for host in ["cart.shop.svc.cluster.local", "cart.shop", "cart"] {
        let url = format!("http://{host}/echo");
        let (code, body) = curl(&client, &["--max-time", "5", &url]);
        assert_eq!(code, Some(0), "curl {url}");
        let echo = json(&body);
        assert!(
            echo["name"].as_str().unwrap().starts_with("replica-"),
            "{echo}"
        );
        assert_eq!(echo["authority"], host, "{echo}");
        let peer = echo["peer"].as_str().unwrap();
        assert!(peer.starts_with(&format!("{}:", client.ip())), "{echo}");
    }
    let summary = load(
        &client,
        &[
            "--connect",
            "cart.shop:80",
            "--requests",
            "30",
            "--concurrency",
            "3",
        ],
    );
    assert_eq!(summary["ok"], 30, "{summary}");

    // One ready endpoint left: only it answers; the other chains are gone.
    node.set_service(SERVICE, CLUSTER_IP, 80, &[&replicas[1].endpoint()]);
    let rules = node.rules();
    assert_eq!(
        rules.matches("-j DNAT --to-destination").count(),
        1,
        "{rules}"
    );
    assert!(!rules.contains("--mode random"), "{rules}");
    assert_eq!(rules.matches(":KUBE-SEP-").count(), 1, "{rules}");
    let summary = load(&client, &args);
    assert_eq!(summary["ok"], 300, "{summary}");
    assert_eq!(names(&summary), set(&["replica-2"]), "{summary}");

    // None: refused at once, like kube-proxy's REJECT (no chain left).
    node.set_service(SERVICE, CLUSTER_IP, 80, &[]);
    let rules = node.rules();
    assert!(!rules.contains(":KUBE-SVC-"), "{rules}");
    assert!(!rules.contains(":KUBE-SEP-"), "{rules}");
    assert!(rules.contains("shop/cart:80 has no endpoints"), "{rules}");
    let summary = load(
        &client,
        &[
            "--connect",
            &target,
            "--requests",
            "20",
            "--concurrency",
            "2",
        ],
    );
    assert_eq!(summary["errors"], 20, "{summary}");
    assert_eq!(summary["ok"], 0, "{summary}");
    let sample = summary["error_samples"][0].as_str().unwrap();
    // Refused at once by the node (REJECT), not timed out.
    assert!(sample.contains("Connection refused"), "{summary}");
    let (code, _) = curl(&client, &["--max-time", "5", "http://cart/echo"]);
    assert_eq!(code, Some(7), "curl: couldn't connect");

    // Endpoints back: served again, by every replica.
    node.set_service(SERVICE, CLUSTER_IP, 80, &endpoints);
    let summary = load(&client, &args);
    assert_eq!(summary["ok"], 300, "{summary}");
    assert_eq!(names(&summary).len(), 3, "{summary}");

    // Removed: no rule mentions it, and the name no longer resolves.
    node.remove_service(SERVICE);
    let rules = node.rules();
    assert!(!rules.contains("shop/cart"), "{rules}");
    let (code, _) = curl(&client, &["--max-time", "5", "http://cart.shop/echo"]);
    assert_eq!(code, Some(6), "curl: couldn't resolve host");
}

/// The endpoint answers the client over the bridge, never through the
/// node's IP stack: only `bridge-nf-call-iptables` lets conntrack see those
/// frames and give the reply the cluster IP back as its source. The sysctl
/// is per namespace: turning it off in the node leaves the host's alone.
#[test]
fn replies_over_the_bridge_are_un_dnated_only_with_bridge_nf_call_iptables() {
    if !prerequisites() {
        return;
    }
    let mesh = Mesh::new("ward-svc-brnf");
    let replica = Replica::start(&mesh, "replica");
    let client = mesh.add_plain_pod("client");
    let node = KubeProxy::new(mesh.network());
    node.set_service(SERVICE, CLUSTER_IP, 80, &[&replica.endpoint()]);
    let key = "net.bridge.bridge-nf-call-iptables";
    assert_eq!(node.sysctl(key), "1");
    assert_eq!(node.sysctl("net.ipv4.ip_forward"), "1");
    let url = format!("http://{CLUSTER_IP}/echo");
    let (code, _) = curl(&client, &["--max-time", "5", &url]);
    assert_eq!(code, Some(0), "with bridged conntrack");

    let host = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    let host_before = std::fs::read_to_string(host).unwrap();
    node.set_sysctl(key, "0");
    assert_eq!(std::fs::read_to_string(host).unwrap(), host_before);
    // The SYN-ACK comes from the endpoint's own address: the client's
    // kernel answers it with a reset and the connection never opens.
    let (code, _) = curl(&client, &["--connect-timeout", "2", &url]);
    assert_eq!(code, Some(28), "without bridged conntrack: connect timeout");
    // The endpoint itself is fine.
    let direct = format!("http://{}/echo", replica.endpoint());
    assert_eq!(curl(&client, &["--max-time", "5", &direct]).0, Some(0));

    node.set_sysctl(key, "1");
    let (code, _) = curl(&client, &["--max-time", "5", &url]);
    assert_eq!(code, Some(0), "bridged conntrack back on");
}

/// A replica calling its own Service and picked as the endpoint: the node
/// masquerades the connection (kube-proxy's KUBE-MARK-MASQ for hairpin) and
/// the bridge sends it back out of the port it came in (hairpin mode).
#[test]
fn a_pod_reaches_itself_through_its_service() {
    if !prerequisites() {
        return;
    }
    let mesh = Mesh::new("ward-svc-hairpin");
    let replica = Replica::start(&mesh, "replica");
    let node = KubeProxy::new(mesh.network());
    node.set_service(SERVICE, CLUSTER_IP, 80, &[&replica.endpoint()]);
    let (code, body) = curl(&replica.pod, &["--max-time", "5", "http://cart.shop/echo"]);
    assert_eq!(code, Some(0), "hairpin through the Service");
    let echo = json(&body);
    assert_eq!(echo["name"], "replica", "{echo}");
    // Masqueraded to the node's address.
    let node_address = mesh.network().bridge_address().unwrap();
    let peer = echo["peer"].as_str().unwrap();
    assert!(peer.starts_with(&format!("{node_address}:")), "{echo}");
}

/// A meshed client's connection to a cluster IP is captured inside its own
/// pod (`ward-proxy init`'s nat OUTPUT redirect) before anything leaves it;
/// the sidecar's own connection onwards (to the original destination, the
/// cluster IP) is let through by the owner rule and translated by the node.
#[test]
fn a_meshed_client_reaches_a_cluster_ip_through_its_sidecar() {
    if !prerequisites() {
        return;
    }
    let mesh = Mesh::new("ward-svc-meshed");
    let replicas: Vec<Replica> = (1..=2)
        .map(|i| Replica::start(&mesh, &format!("replica-{i}")))
        .collect();
    let client = mesh.add_pod("client", "client", &[], PodOptions::default());
    let node = KubeProxy::new(mesh.network());
    let endpoints: Vec<String> = replicas.iter().map(Replica::endpoint).collect();
    let endpoints: Vec<&str> = endpoints.iter().map(String::as_str).collect();
    node.set_service(SERVICE, CLUSTER_IP, 80, &endpoints);

    let redirected = || redirect_count(client.pod());
    let before = redirected();
    let target = format!("{CLUSTER_IP}:80");
    let out = client.testapp(&[
        "load",
        "--connect",
        &target,
        "--requests",
        "20",
        "--concurrency",
        "2",
        "--requests-per-connection",
        "5",
    ]);
    let summary = json(&assert_ok(out, "ward-testapp load"));
    assert_eq!(summary["ok"], 20, "{summary}\n{}", client.proxy_log());
    let connections = summary["connections"].as_u64().unwrap();
    assert!(
        redirected() >= before + connections,
        "the pod's nat OUTPUT did not redirect the connections to the sidecar"
    );
    // By name too (the meshed pod's /etc/hosts).
    let out = client.exec(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        "http://cart.shop.svc.cluster.local/echo",
    ]);
    let echo = json(&assert_ok(out, "curl by name"));
    assert!(
        echo["name"].as_str().unwrap().starts_with("replica-"),
        "{echo}"
    );
    // The sidecar's connection, from the pod's address (no SNAT on the way).
    let peer = echo["peer"].as_str().unwrap();
    assert!(peer.starts_with(&format!("{}:", client.ip())), "{echo}");
}

/// Packets the pod's `WARD_REDIRECT` chain (nat, to the sidecar's outbound
/// port) has seen: one per redirected connection.
fn redirect_count(pod: &Pod) -> u64 {
    let out = pod.exec(&[
        "iptables",
        "-w",
        "-t",
        "nat",
        "-L",
        "WARD_REDIRECT",
        "-v",
        "-x",
        "-n",
    ]);
    let text = assert_ok(out, "iptables -L WARD_REDIRECT");
    text.lines()
        .filter(|line| line.contains("REDIRECT"))
        .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}
