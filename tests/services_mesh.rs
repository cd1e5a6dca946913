//! Meshed traffic to Kubernetes-style Services in the network-namespace
//! cluster: the control plane reads `v1/Service` and
//! `discovery.k8s.io/v1/EndpointSlice` documents from its directory (the
//! directory source), endpoint identities come from the sidecars'
//! registrations, and the node programs kube-proxy's DNAT for clients
//! without a sidecar (`support/kube_proxy.rs`). Clients call the ClusterIP
//! (and Service names through `/etc/hosts`), never pod addresses.
//!
//! Needs root, `ip`, `iptables`(-restore/-save), `sysctl`, `setpriv`,
//! `curl`, `tcpdump` and the `br_netfilter` module, and for the WebSocket
//! test Python with `websockets` (`support/peers.rs`); skips without them
//! (fails under WARD_TEST_STRICT=1).

#[path = "support/kube_proxy.rs"]
mod kube_proxy;
#[path = "support/mesh.rs"]
mod mesh;
#[path = "support/netns.rs"]
mod netns;
#[path = "support/pcap.rs"]
mod pcap;
#[path = "support/peers.rs"]
mod peers;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use kube_proxy::KubeProxy;
use mesh::{Mesh, MeshPod, PodOptions, assert_ok, bins, metric_sum, spiffe_id};
use serde_json::Value;

const CLUSTER_IP: &str = "198.19.0.10";
const HTTP_APP_PORT: u16 = 8080;

fn prerequisites() -> bool {
    mesh::prerequisites() && kube_proxy::prerequisites() && ward_testkit::require_tool("tcpdump")
}

fn json(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

/// One port of a test Service: (name, port, targetPort name, target port,
/// appProtocol).
struct Port<'a> {
    name: &'a str,
    port: u16,
    target: u16,
    app_protocol: Option<&'a str>,
}

/// A `v1/Service` (`namespace/name` at [`CLUSTER_IP`]) and its
/// EndpointSlice: each endpoint `(pod, ready)`, every port at its target.
fn service_yaml(
    namespace: &str,
    name: &str,
    ports: &[Port],
    endpoints: &[(&MeshPod, bool)],
    annotations: &[(&str, &str)],
) -> String {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  annotations:\n"
    );
    yaml.push_str("    ward.io/test: \"yes\"\n");
    for (key, value) in annotations {
        yaml.push_str(&format!("    {key}: \"{value}\"\n"));
    }
    yaml.push_str(&format!(
        "spec:\n  clusterIP: {CLUSTER_IP}\n  clusterIPs: [{CLUSTER_IP}]\n  ports:\n"
    ));
    for p in ports {
        yaml.push_str(&format!(
            "    - name: {}\n      port: {}\n      targetPort: {}\n",
            p.name, p.port, p.name
        ));
        if let Some(app) = p.app_protocol {
            yaml.push_str(&format!("      appProtocol: {app}\n"));
        }
    }
    yaml.push_str(&format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-abcde\n  namespace: {namespace}\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports:\n"
    ));
    for p in ports {
        yaml.push_str(&format!("  - name: {}\n    port: {}\n", p.name, p.target));
    }
    yaml.push_str("endpoints:\n");
    if endpoints.is_empty() {
        yaml.push_str("  []\n");
    }
    for (pod, ready) in endpoints {
        yaml.push_str(&format!(
            "  - addresses: [\"{}\"]\n    conditions: {{ready: {ready}, serving: {ready}, terminating: false}}\n",
            pod.ip()
        ));
    }
    yaml
}

fn http_port() -> Vec<Port<'static>> {
    vec![Port {
        name: "http",
        port: 80,
        target: HTTP_APP_PORT,
        app_protocol: None,
    }]
}

/// Waits until `pod`'s sidecar registered its address (the control plane
/// then knows the identity its endpoints must present).
fn wait_registered(pod: &MeshPod) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pod
        .proxy_log()
        .contains("address registered with the control plane")
    {
        assert!(
            Instant::now() < deadline,
            "the sidecar never registered:\n{}",
            pod.proxy_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A replica: `ward-testapp http --name <name>` on :8080 behind a sidecar.
fn replica(mesh: &Mesh, name: &str, sa: &str, opts: PodOptions) -> MeshPod {
    let listen = format!("0.0.0.0:{HTTP_APP_PORT}");
    let pod = mesh.add_pod(
        name,
        sa,
        &["ward-testapp", "http", "--listen", &listen, "--name", name],
        opts,
    );
    wait_registered(&pod);
    pod
}

/// `ward-testapp load` from a meshed client, as the application user.
fn load(client: &MeshPod, target: &str, requests: u32, extra: &[&str]) -> Value {
    let requests = requests.to_string();
    let mut args = vec![
        "load",
        "--connect",
        target,
        "--requests",
        &requests,
        "--concurrency",
        "4",
    ];
    args.extend_from_slice(extra);
    json(&assert_ok(client.testapp(&args), "ward-testapp load"))
}

fn names(summary: &Value) -> BTreeMap<String, u64> {
    summary["names"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

/// 1,500 paced requests from `client` in the background (about 1.5 s).
fn steady_load(client: &MeshPod, target: &str) -> std::process::Child {
    let testapp = &bins().testapp;
    let argv = [
        testapp.as_str(),
        "load",
        "--connect",
        target,
        "--requests",
        "1500",
        "--concurrency",
        "4",
        "--interval-ms",
        "2",
    ];
    let mut command = client.pod().command_as(mesh::APP_UID, &argv);
    command.stdout(std::process::Stdio::piped());
    command.spawn().expect("start the load")
}

/// The summary of a [`steady_load`] once it finished.
fn finish(load: std::process::Child) -> Value {
    let out = load.wait_with_output().expect("the load finishes");
    json(&String::from_utf8_lossy(&out.stdout))
}

/// Repeats small loads until `done` holds for one (an update is pushed
/// asynchronously); panics after 60 s (generous: it only bounds a failing
/// test).
fn until_load(client: &MeshPod, target: &str, what: &str, done: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let summary = load(client, target, 60, &[]);
        if done(&summary) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never happened: {what}; last load: {summary}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Requests `client`'s sidecar sent to the Service `default/cart`.
fn cart_requests(mesh: &Mesh, client: &MeshPod) -> f64 {
    metric_sum(
        &mesh.metrics(client),
        "ward_http_requests_total",
        &[("direction", "outbound"), ("dst_service", "default/cart")],
    )
}

/// Waits until `client`'s sidecar counted `more` requests to the Service
/// than `before`: a [`steady_load`] started is flowing (an event to order
/// by, not a guessed pause).
fn until_flowing(mesh: &Mesh, client: &MeshPod, before: f64, more: f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = cart_requests(mesh, client);
        if now >= before + more {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the load is not flowing: {now} requests, {before} before it"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A mesh with three `cart` replicas and a `frontend` client, and the
/// Service `default/cart` at [`CLUSTER_IP`]:80 → :8080 over all three.
struct CartMesh {
    // Field order: pods before the mesh.
    replicas: Vec<MeshPod>,
    client: MeshPod,
    mesh: Mesh,
}

impl CartMesh {
    fn start(prefix: &str) -> CartMesh {
        let planned = [
            ("cart-1", "cart"),
            ("cart-2", "cart"),
            ("cart-3", "cart"),
            ("frontend", "frontend"),
        ];
        let mesh = Mesh::with_policy_dir(prefix, &planned);
        let replicas: Vec<MeshPod> = (1..=3)
            .map(|i| replica(&mesh, &format!("cart-{i}"), "cart", PodOptions::default()))
            .collect();
        let client = mesh.add_pod("frontend", "frontend", &[], PodOptions::default());
        let cart = CartMesh {
            replicas,
            client,
            mesh,
        };
        cart.set_endpoints(&[true, true, true]);
        cart
    }

    /// Rewrites the Service: replica `i` is listed when `ready[i]` is
    /// `Some`; waits for the control plane to accept it.
    fn set_endpoints(&self, ready: &[bool]) {
        let endpoints: Vec<(&MeshPod, bool)> = self
            .replicas
            .iter()
            .zip(ready)
            .map(|(pod, ready)| (pod, *ready))
            .collect();
        self.write(&endpoints);
    }

    fn write(&self, endpoints: &[(&MeshPod, bool)]) {
        let yaml = service_yaml("default", "cart", &http_port(), endpoints, &[]);
        self.mesh.apply_policy("cart-service.yaml", &yaml, &[]);
    }

    fn target() -> String {
        format!("{CLUSTER_IP}:80")
    }
}

#[test]
fn a_meshed_client_spreads_service_requests_over_three_replicas_over_mtls() {
    if !prerequisites() {
        return;
    }
    let cart = CartMesh::start("ward-svc-spread");
    let node = KubeProxy::new(cart.mesh.network());
    let endpoints: Vec<String> = cart
        .replicas
        .iter()
        .map(|p| format!("{}:{HTTP_APP_PORT}", p.ip()))
        .collect();
    let endpoints: Vec<&str> = endpoints.iter().map(String::as_str).collect();
    node.set_service("cart", CLUSTER_IP, 80, &endpoints);
    let pcap = cart.mesh.dir().join("br0.pcap");
    let mut tcpdump = cart.mesh.network().spawn(&[
        "sh",
        "-c",
        &format!(
            "exec tcpdump -i br0 -n -U --immediate-mode -s 0 -Z root -w {} 'tcp port 8080 or host {CLUSTER_IP}' 2>&1",
            pcap.display()
        ),
    ]);
    tcpdump.wait_for_line_starting("tcpdump: listening on br0");

    let summary = load(
        &cart.client,
        &CartMesh::target(),
        3000,
        &["--path", "/echo/ward-svc-marker"],
    );
    assert_eq!(
        summary["ok"],
        3000,
        "{summary}\n{}",
        cart.client.proxy_log()
    );
    let spread = names(&summary);
    assert_eq!(spread.len(), 3, "{summary}");
    for (name, count) in &spread {
        assert!(
            (850..=1150).contains(count),
            "{name} served {count} of 3000 requests (not within ±15% of a third): {summary}"
        );
    }

    tcpdump.terminate();
    assert!(tcpdump.wait_timeout(Duration::from_secs(5)).is_some());
    let segments = pcap::pcap_tcp_segments(&std::fs::read(&pcap).expect("read the pcap"));
    let client_ip = match cart.client.ip() {
        std::net::IpAddr::V4(ip) => ip.octets(),
        other => panic!("IPv4 pods only: {other}"),
    };
    // Nothing is sent to the ClusterIP itself: the client's sidecar routed
    // every connection to a replica.
    let cluster_ip: std::net::Ipv4Addr = CLUSTER_IP.parse().unwrap();
    assert!(
        !segments.iter().any(|s| s.dst.0 == cluster_ip.octets()),
        "packets to the ClusterIP left the pod"
    );
    // Every replica got data, all of it TLS: no request line, no marker.
    for pod in &cart.replicas {
        let std::net::IpAddr::V4(ip) = pod.ip() else {
            unreachable!()
        };
        let data: Vec<&pcap::Segment> = segments
            .iter()
            .filter(|s| s.src.0 == client_ip && s.dst == (ip.octets(), 8080))
            .filter(|s| !s.payload.is_empty())
            .collect();
        assert!(!data.is_empty(), "no data to {}", pod.ip());
        assert_eq!(
            data[0].payload[0], 0x16,
            "the first bytes are a TLS handshake record"
        );
    }
    assert!(
        !segments
            .iter()
            .any(|s| pcap::contains(&s.payload, b"ward-svc-marker")),
        "the request path crossed the bridge in plaintext"
    );

    // Each request landed on a replica whose identity the client's sidecar
    // checked: its access log names the endpoint and the identity.
    let log = cart.client.proxy_log();
    for pod in &cart.replicas {
        let line = format!(
            "endpoint=\"{}:8080\" peer=\"{}\"",
            pod.ip(),
            spiffe_id("cart")
        );
        assert!(log.contains(&line), "no request logged as {line:?}");
    }
    // And the replicas saw the client's identity (mTLS both ways).
    let echo = json(&assert_ok(
        cart.client
            .exec(&["curl", "-sS", "--max-time", "5", "http://cart/echo"]),
        "curl by Service name",
    ));
    assert_eq!(
        echo["headers"]["x-forwarded-client-cert"],
        format!("URI={}", spiffe_id("frontend")),
        "{echo}"
    );
    let metrics = cart.mesh.metrics(&cart.client);
    let counted = metric_sum(
        &metrics,
        "ward_http_requests_total",
        &[("direction", "outbound"), ("dst_service", "default/cart")],
    );
    assert!(
        counted >= 3000.0,
        "requests counted for the Service: {counted}"
    );
}

#[test]
fn replicas_that_die_turn_unready_or_scale_away_lose_no_request() {
    if !prerequisites() {
        return;
    }
    let mut cart = CartMesh::start("ward-svc-resilience");
    let target = CartMesh::target();

    // Killed under steady load: requests that meet the dead replica go to
    // another one, and it is ejected.
    let before = cart_requests(&cart.mesh, &cart.client);
    let running = steady_load(&cart.client, &target);
    until_flowing(&cart.mesh, &cart.client, before, 100.0);
    let victim = cart.replicas[1].proxy_pid();
    let status = Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let summary = finish(running);
    assert_eq!(
        summary["ok"],
        1500,
        "a request failed while a replica died: {summary}\n{}",
        cart.client.proxy_log()
    );
    let metrics = cart.mesh.metrics(&cart.client);
    let service = [("dst_service", "default/cart")];
    assert!(
        metric_sum(&metrics, "ward_outbound_endpoint_ejections_total", &service) >= 1.0,
        "the dead replica was not ejected"
    );
    assert!(metric_sum(&metrics, "ward_outbound_retries_total", &service) >= 1.0);
    let after = load(&cart.client, &target, 300, &[]);
    let log = cart.client.proxy_log();
    let unusual: Vec<&str> = log.lines().filter(|l| !l.contains("status=200")).collect();
    let m = cart.mesh.metrics(&cart.client);
    let m: Vec<&str> = m
        .lines()
        .filter(|l| {
            l.contains("refused")
                || l.contains("opened")
                || l.contains("retries")
                || l.contains("ejections")
        })
        .collect();
    assert_eq!(
        after["ok"],
        300,
        "{after}\n{}\n{}",
        unusual[unusual.len().saturating_sub(30)..].join("\n"),
        m.join("\n")
    );
    assert!(!names(&after).contains_key("cart-2"), "{after}");

    // Kubernetes removes the dead pod; cart-3 turns not ready: it gets no
    // new request.
    let (dead, live) = (cart.replicas.remove(1), &cart.replicas);
    drop(dead);
    cart.write(&[(&live[0], true), (&live[1], false)]);
    until_load(&cart.client, &target, "cart-3 gets nothing", |s| {
        s["ok"] == 60 && !names(s).contains_key("cart-3")
    });
    let summary = load(&cart.client, &target, 600, &[]);
    assert_eq!(summary["ok"], 600, "{summary}");
    assert_eq!(
        names(&summary).keys().collect::<Vec<_>>(),
        ["cart-1"],
        "{summary}"
    );

    // Back to two ready, then scaled to one under load: nothing fails.
    cart.write(&[(&live[0], true), (&live[1], true)]);
    until_load(&cart.client, &target, "cart-3 serves again", |s| {
        names(s).contains_key("cart-3")
    });
    let before = cart_requests(&cart.mesh, &cart.client);
    let running = steady_load(&cart.client, &target);
    until_flowing(&cart.mesh, &cart.client, before, 100.0);
    cart.write(&[(&live[0], true)]);
    let summary = finish(running);
    assert_eq!(
        summary["ok"], 1500,
        "a request failed while scaling down: {summary}"
    );

    // No endpoint at all: 503 at once, named.
    cart.write(&[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = cart.client.exec(&[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "--max-time",
            "5",
            &format!("http://{target}/echo"),
        ]);
        let headers = String::from_utf8_lossy(&out.stdout).to_lowercase();
        if headers.contains("x-ward-error: no-endpoints") {
            // Answered by the sidecar itself (a wait would end in curl's
            // timeout, not in this header).
            assert!(headers.starts_with("http/1.1 503"), "{headers}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never answered no-endpoints: {headers}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn grpc_tcp_and_a_server_first_protocol_work_through_a_service() {
    if !prerequisites() {
        return;
    }
    let mesh = Mesh::with_policy_dir(
        "ward-svc-protocols",
        &[("server", "server"), ("client", "client")],
    );
    // The banner port is declared opaque once, on the server's side.
    let mut server = mesh.add_pod(
        "server",
        "server",
        &["ward-testapp", "grpc", "--listen", "0.0.0.0:9090"],
        PodOptions::default().opaque_ports(&[2525]),
    );
    server.start_app(&["ward-testapp", "tcp-echo", "--listen", "0.0.0.0:7000"]);
    server.start_app(&["ward-testapp", "banner", "--listen", "0.0.0.0:2525"]);
    wait_registered(&server);
    let client = mesh.add_pod("client", "client", &[], PodOptions::default());
    let ports = [
        Port {
            name: "grpc",
            port: 90,
            target: 9090,
            app_protocol: Some("grpc"),
        },
        Port {
            name: "echo",
            port: 70,
            target: 7000,
            app_protocol: Some("tcp"),
        },
        Port {
            name: "smtp",
            port: 25,
            target: 2525,
            app_protocol: None,
        },
    ];
    let yaml = service_yaml("default", "multi", &ports, &[(&server, true)], &[]);
    mesh.apply_policy("multi-service.yaml", &yaml, &[]);

    let out = client.testapp(&[
        "grpc-client",
        "--connect",
        &format!("{CLUSTER_IP}:90"),
        "--messages",
        "50",
    ]);
    let result = json(&assert_ok(out, "grpc-client through the Service"));
    assert_eq!(result["received"], 50, "{result}");
    assert_eq!(result["grpc_status"], "0", "{result}");

    let text = "bytes through a Service";
    let out = client.testapp(&[
        "tcp-client",
        "--connect",
        &format!("{CLUSTER_IP}:70"),
        "--send",
        text,
    ]);
    assert_eq!(
        assert_ok(out, "tcp-client"),
        format!("{text}bye {}\n", text.len())
    );

    // Server-first: the client's sidecar learned from discovery that the
    // port is opaque, so it does not wait for the client to speak (its
    // detection would wait 5 s).
    let out = client.testapp(&[
        "banner-client",
        "--connect",
        &format!("{CLUSTER_IP}:25"),
        "--expect-banner",
        "220 ward-test ESMTP ready",
    ]);
    let transcript = assert_ok(out, "banner-client");
    assert!(transcript.contains("S: 221 bye"), "{transcript}");
    let ms: u64 = transcript
        .lines()
        .find_map(|l| l.strip_prefix("T: banner after "))
        .and_then(|l| l.trim_end_matches(" ms").parse().ok())
        .expect("the banner's timing");
    assert!(ms < 100, "the banner took {ms} ms:\n{transcript}");
    let log = client.proxy_log();
    assert!(
        log.contains("service=\"default/multi\"") || log.contains("service=default/multi"),
        "{log}"
    );
}

#[test]
fn a_service_timeout_answers_504_and_shorter_requests_pass() {
    if !prerequisites() {
        return;
    }
    let mesh = Mesh::with_policy_dir(
        "ward-svc-timeout",
        &[("slow", "slow"), ("client", "client")],
    );
    let server = replica(&mesh, "slow", "slow", PodOptions::default());
    let client = mesh.add_pod("client", "client", &[], PodOptions::default());
    let yaml = service_yaml(
        "default",
        "slow",
        &http_port(),
        &[(&server, true)],
        &[("ward.io/timeout", "500ms")],
    );
    mesh.apply_policy("slow-service.yaml", &yaml, &[]);
    let request = |ms: u32| {
        let url = format!("http://{CLUSTER_IP}/slow?ms={ms}");
        let out = client.exec(&[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "--max-time",
            "5",
            &url,
        ]);
        String::from_utf8_lossy(&out.stdout).to_lowercase()
    };
    assert!(request(50).starts_with("http/1.1 200"));
    let headers = request(3000);
    assert!(headers.starts_with("http/1.1 504"), "{headers}");
    assert!(headers.contains("x-ward-error: timeout"), "{headers}");
    // The app answers after 3 s: a 504 means the timeout cut it short.
}

#[test]
fn an_unmeshed_client_reaches_the_service_through_the_node_only_in_permissive() {
    if !prerequisites() {
        return;
    }
    let mesh = Mesh::with_policy_dir(
        "ward-svc-unmeshed",
        &[("cart-1", "cart"), ("cart-2", "cart")],
    );
    let replicas: Vec<MeshPod> = ["cart-1", "cart-2"]
        .iter()
        .map(|name| replica(&mesh, name, "cart", PodOptions::default()))
        .collect();
    let yaml = service_yaml(
        "default",
        "cart",
        &http_port(),
        &[(&replicas[0], true), (&replicas[1], true)],
        &[],
    );
    mesh.apply_policy("cart-service.yaml", &yaml, &[]);
    let node = KubeProxy::new(mesh.network());
    let endpoints: Vec<String> = replicas
        .iter()
        .map(|p| format!("{}:{HTTP_APP_PORT}", p.ip()))
        .collect();
    let endpoints: Vec<&str> = endpoints.iter().map(String::as_str).collect();
    node.set_service("cart", CLUSTER_IP, 80, &endpoints);
    let outsider = mesh.add_plain_pod("outsider");
    let url = format!("http://{CLUSTER_IP}/echo");
    let curl = |pod: &netns::Pod| {
        pod.exec(&[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            &url,
        ])
    };

    // STRICT (the default): the node DNATs the plaintext to a replica,
    // whose sidecar refuses it.
    let out = curl(&outsider);
    assert!(!out.status.success(), "plaintext got through in STRICT");
    let refused: f64 = replicas
        .iter()
        .map(|pod| {
            metric_sum(
                &mesh.metrics(pod),
                "ward_connections_refused_total",
                &[("reason", "plaintext_in_strict_mode")],
            )
        })
        .sum();
    assert!(refused >= 1.0, "no replica counted the refusal");

    // PERMISSIVE for the namespace: the same call is served.
    let permissive = "apiVersion: security.ward.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: default\nspec:\n  mtls:\n    mode: PERMISSIVE\n";
    let pods: Vec<&MeshPod> = replicas.iter().collect();
    mesh.apply_policy("permissive.yaml", permissive, &pods);
    let out = curl(&outsider);
    assert_eq!(assert_ok(out, "curl in PERMISSIVE"), "200");
}

#[test]
fn the_shop_example_runs_with_its_service_names() {
    if !prerequisites() {
        return;
    }
    let mesh = Mesh::with_policy_dir(
        "ward-svc-shop",
        &[
            ("cart-1", "shop/cart"),
            ("cart-2", "shop/cart"),
            ("frontend", "shop/frontend"),
        ],
    );
    let cart_opts = || PodOptions::default().label("app", "cart");
    let carts: Vec<MeshPod> = ["cart-1", "cart-2"]
        .iter()
        .map(|name| replica(&mesh, name, "shop/cart", cart_opts()))
        .collect();
    let frontend = mesh.add_pod(
        "frontend",
        "shop/frontend",
        &[],
        PodOptions::default().label("app", "frontend"),
    );
    // The example's Service (port 80 → targetPort `http`, the container
    // port 8080), as the EndpointSlice controller would resolve it.
    let yaml = service_yaml(
        "shop",
        "cart",
        &http_port(),
        &[(&carts[0], true), (&carts[1], true)],
        &[],
    );
    mesh.apply_policy("cart-service.yaml", &yaml, &[]);
    let policies = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples/shop/policies.yaml"),
    )
    .expect("read the shop policies");
    let pods: Vec<&MeshPod> = carts.iter().collect();
    mesh.apply_policy("shop-policies.yaml", &policies, &pods);
    let node = KubeProxy::new(mesh.network());
    node.set_service(
        "shop/cart",
        CLUSTER_IP,
        80,
        &[
            &format!("{}:8080", carts[0].ip()),
            &format!("{}:8080", carts[1].ip()),
        ],
    );

    let status = |pod: &MeshPod, path: &str, tenant: &str| {
        let url = format!("http://cart.shop.svc.cluster.local{path}");
        let header = format!("x-shop-tenant: {tenant}");
        let out = pod.exec(&[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            "-H",
            &header,
            &url,
        ]);
        assert_ok(out, &format!("curl {url}"))
    };
    // The frontend's GET under /cart/ reaches the cart app (which has no
    // such page: its own 404, past the policy); other paths or tenants are
    // denied by the cart's sidecar.
    assert_eq!(status(&frontend, "/cart/items", "acme"), "404");
    assert_eq!(status(&frontend, "/admin", "acme"), "403");
    assert_eq!(status(&frontend, "/cart/items", "other"), "403");
    // Both replicas serve the frontend through the Service name.
    let summary = load(&frontend, "cart.shop:80", 200, &["--path", "/echo"]);
    assert_eq!(summary["statuses"]["403"], 200, "{summary}");
    let log = frontend.proxy_log();
    for pod in &carts {
        assert!(
            log.contains(&format!("endpoint=\"{}:8080\"", pod.ip())),
            "{log}"
        );
    }
}

/// Waits until `pod`'s sidecar logged a line with every one of `parts`
/// (an access-log line is written when its request or connection ends,
/// which may be just after the client saw the end); panics after 20 s.
fn logged(pod: &MeshPod, parts: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = pod.proxy_log();
        if let Some(line) = log
            .lines()
            .find(|line| parts.iter().all(|part| line.contains(part)))
        {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no line with {parts:?} in the sidecar's log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A WebSocket client (`websockets`, tests/peers/ws_peer.py) in a meshed
/// pod calls `ws://<ClusterIP>/` of a Service whose one meshed endpoint is
/// a `websockets` echo server: the upgrade is routed by the client's
/// sidecar to the Service's endpoint over mTLS, and messages cross the
/// upgraded connection both ways (several sent before the first echo is
/// read, a 100 KiB binary one, a ping) until a clean close.
#[test]
fn a_websocket_through_a_service_between_independent_peers() {
    if !(prerequisites() && peers::available("websockets")) {
        return;
    }
    let mesh = Mesh::with_policy_dir("ward-svc-ws", &[("echo", "echo"), ("client", "client")]);
    let serve = peers::argv("ws_peer.py", &["serve", "--listen", "0.0.0.0:8765"]);
    let serve: Vec<&str> = serve.iter().map(String::as_str).collect();
    let server = mesh.add_pod("echo", "echo", &serve, PodOptions::default());
    wait_registered(&server);
    let client = mesh.add_pod("client", "client", &[], PodOptions::default());
    let ports = [Port {
        name: "ws",
        port: 80,
        target: 8765,
        app_protocol: None,
    }];
    let yaml = service_yaml("default", "ws", &ports, &[(&server, true)], &[]);
    mesh.apply_policy("ws-service.yaml", &yaml, &[]);
    // The node's rules too, as in a cluster (the meshed client's sidecar
    // does not need them: it resolves the ClusterIP itself).
    let node = KubeProxy::new(mesh.network());
    let endpoint = format!("{}:8765", server.ip());
    node.set_service("ws", CLUSTER_IP, 80, &[&endpoint]);

    let target = format!("{CLUSTER_IP}:80");
    let call = peers::argv(
        "ws_peer.py",
        &[
            "call",
            "--connect",
            &target,
            "--path",
            "/",
            "--messages",
            "25",
        ],
    );
    let call: Vec<&str> = call.iter().map(String::as_str).collect();
    let out = assert_ok(client.exec(&call), "ws_peer.py call through the Service");
    let result = json(&out);
    assert_eq!(result["text"], "hello through two sidecars", "{result}");
    assert_eq!(result["binary_ok"], true, "{result}");
    assert_eq!(result["messages_echoed"], 25, "{result}");
    assert_eq!(result["pong"], true, "{result}");
    assert_eq!(result["close_code"], 1000, "{result}");

    // Through the Service: the client's sidecar logged the upgrade as a
    // request to default/ws, sent to the endpoint whose identity it checked.
    let peer = format!("peer=\"{}\"", server.spiffe_id());
    let endpoint_field = format!("endpoint=\"{endpoint}\"");
    logged(
        &client,
        &[
            "direction=\"outbound\"",
            "service=\"default/ws\"",
            &endpoint_field,
            &peer,
            "status=101",
        ],
    );
    let metrics = mesh.metrics(&client);
    let to_service = metric_sum(
        &metrics,
        "ward_http_requests_total",
        &[
            ("direction", "outbound"),
            ("dst_service", "default/ws"),
            ("peer_service_account", "echo"),
        ],
    );
    assert!(to_service >= 1.0, "{metrics}");
    // Over mTLS: the server's sidecar authenticated the client.
    logged(
        &server,
        &["direction=\"inbound\"", client.spiffe_id(), "status=101"],
    );
    let metrics = mesh.metrics(&server);
    let from_client = metric_sum(
        &metrics,
        "ward_http_requests_total",
        &[
            ("direction", "inbound"),
            ("peer_namespace", "default"),
            ("peer_service_account", "client"),
        ],
    );
    assert!(from_client >= 1.0, "{metrics}");
}
