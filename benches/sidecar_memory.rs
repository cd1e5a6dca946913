//! Sidecar memory against mesh size: a `ward-proxy` process (release build)
//! whose app talks to 10 destinations, on a control plane that knows 0,
//! 10,000 or 100,000 pods. With on-demand discovery the sidecar holds only
//! what it asked for, so its RSS should not follow the mesh. Run with
//! `cargo bench --bench sidecar_memory`; prints RSS and peak RSS per size.
//!
//! The 10 destinations are loopback addresses (127.0.1.1-10, nothing
//! listens there); the mesh's other pods are in 198.18.0.0/15 and are never
//! contacted.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ward_control_plane::attest::JoinTokenStore;
use ward_control_plane::data_dir::DataDir;
use ward_control_plane::k8s::endpoints::Endpoint;
use ward_control_plane::server::{Config, ControlPlane};
use ward_identity::SpiffeId;

const TD: &str = "cluster.local";
const DESTINATIONS: u8 = 10;

fn endpoint(i: usize) -> Endpoint {
    Endpoint {
        spiffe_id: SpiffeId::for_service_account(TD, "mesh", &format!("sa-{}", i % 100)).unwrap(),
        namespace: "mesh".into(),
        pod_name: format!("pod-{i}"),
        labels: BTreeMap::from([("app".to_owned(), format!("app-{}", i % 100))]),
        opaque_ports: Vec::new(),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// (VmRSS, VmHWM) in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn proxy_binary() -> String {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet", "-p", "ward-proxy"])
        .status()
        .unwrap();
    assert!(status.success());
    dir.join("ward-proxy").display().to_string()
}

async fn measure(binary: &str, pods: usize) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(TD, dir.path().join("cp"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.admin_listen = None;
    let cp = ControlPlane::start(config).await.unwrap();
    cp.endpoints().apply_kubernetes((0..pods).map(|i| {
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i as u32);
        (IpAddr::V4(ip), Some(endpoint(i)))
    }));
    let destinations: Vec<IpAddr> = (1..=DESTINATIONS)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 1, i)))
        .collect();
    cp.endpoints().apply_kubernetes(
        destinations
            .iter()
            .enumerate()
            .map(|(i, ip)| (*ip, Some(endpoint(i)))),
    );
    let ca = dir.path().join("bundle.pem");
    std::fs::write(&ca, cp.bundle_pem()).unwrap();
    let id = SpiffeId::for_service_account(TD, "mesh", "client").unwrap();
    let token = JoinTokenStore::open(
        &DataDir::open(dir.path().join("cp"))
            .unwrap()
            .join_tokens_dir(),
    )
    .unwrap()
    .create(&id, Duration::from_secs(600))
    .unwrap();
    let listeners: Vec<SocketAddr> = destinations
        .iter()
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let mut command = Command::new(binary);
    command
        .arg("run")
        .args(["--admin", &format!("127.0.0.1:{}", free_port())])
        .args(["--control-plane", &cp.api_addr().to_string()])
        .args(["--ca", ca.to_str().unwrap()])
        .args(["--spiffe-id", id.as_str(), "--join-token", &token])
        .args(["--log-level", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (listen, ip) in listeners.iter().zip(&destinations) {
        command.args(["--outbound", &format!("{listen}={ip}:9")]);
    }
    let mut proxy: Child = command.spawn().unwrap();
    let pid = proxy.id();
    // The app connects to each destination once: each is resolved on demand.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for listen in &listeners {
            let _ = TcpStream::connect_timeout(listen, Duration::from_millis(200))
                .map(|mut s| std::io::Write::write_all(&mut s, b"GET / HTTP/1.1\r\n\r\n"));
        }
        let resolved = cp
            .sidecars()
            .all()
            .first()
            .is_some_and(|s| s.endpoint.acked_count == usize::from(DESTINATIONS));
        if resolved {
            break;
        }
        assert!(Instant::now() < deadline, "destinations not resolved");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = rss_kib(pid);
    let _ = proxy.kill();
    let _ = proxy.wait();
    cp.shutdown().await;
    rss
}

fn main() {
    let binary = proxy_binary();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    println!("sidecar RSS, app talking to {DESTINATIONS} destinations (release ward-proxy):");
    println!("| pods in the mesh | RSS MiB | peak RSS MiB |");
    println!("|---|---|---|");
    for pods in [0usize, 10_000, 100_000] {
        let (rss, peak) = runtime.block_on(measure(&binary, pods));
        println!(
            "| {pods} | {:.1} | {:.1} |",
            rss as f64 / 1024.0,
            peak as f64 / 1024.0
        );
    }
}
