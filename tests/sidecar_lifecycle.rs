//! A `ward-proxy` process over its certificate's life, against a real
//! control plane: renewal under continuous traffic, and a start while the
//! control plane is down.

#[path = "support/explicit.rs"]
mod explicit;

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use explicit::{
    Cluster, Workload, WorkloadSpec, http_get, metric_sum, served_certificate, wait_until,
};

fn prerequisites() -> bool {
    ward_testkit::require_tool("curl") && ward_testkit::require_tool("openssl")
}

/// The status curl got for `GET /echo` through `outbound` ("000": none).
fn status_through(outbound: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .arg(format!("http://{outbound}/echo"))
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn renewals(w: &Workload) -> f64 {
    metric_sum(&w.metrics(), "ward_certificate_renewals_total", &[])
}

#[test]
fn a_sidecar_renews_under_continuous_traffic_without_a_failed_request() {
    if !prerequisites() {
        return;
    }
    // 20 s certificates: renewed at about half their life.
    let cluster = Cluster::start_with_env(&[], &[("WARD_SVID_TTL", "20s")]);
    let backend = cluster.serving("backend", &["http", "--name", "backend"]);
    let frontend = cluster.calling("frontend", &backend);
    let inbound = backend.inbound.unwrap();
    let first = served_certificate(inbound);
    let first_expiry = metric_sum(
        &backend.metrics(),
        "ward_certificate_expiry_timestamp_seconds",
        &[],
    );
    assert_eq!(renewals(&backend), 1.0, "only the first certificate yet");
    assert_eq!(renewals(&frontend), 1.0, "only the first certificate yet");

    // Paced keep-alive traffic, 25 s at least, far longer than the
    // renewal takes to come.
    let outbound = frontend.outbound.unwrap().to_string();
    let mut load = Command::new(&explicit::bins().testapp)
        .args(["load", "--connect", &outbound, "--path", "/echo"])
        .args(["--requests", "10000", "--concurrency", "4"])
        .args(["--interval-ms", "10", "--timeout-ms", "10000"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the load");
    wait_until(
        Duration::from_secs(60),
        "both sidecars renewing during the load",
        || renewals(&backend) >= 2.0 && renewals(&frontend) >= 2.0,
    );
    assert!(
        load.try_wait().unwrap().is_none(),
        "the load ended before both renewals: it did not span them"
    );
    // New requests after the renewal, on the same keep-alive connections.
    let out = load.wait_with_output().expect("the load finishes");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("load summary: {e}: {:?}", out.stdout));
    assert_eq!(summary["errors"], 0, "{summary}");
    assert_eq!(summary["ok"], 10000, "{summary}");
    // The frontend retired its connection before the first certificates
    // expired, so the backend never had to close one under traffic: a
    // request sent as that close crossed it would have failed.
    let closed_at_expiry = metric_sum(
        &backend.metrics(),
        "ward_inbound_expired_connections_total",
        &[],
    );
    assert_eq!(
        closed_at_expiry, 0.0,
        "connections the backend closed at their certificates' expiry"
    );

    // The renewed certificate is the one presented now, and it lives longer.
    let now = served_certificate(inbound);
    assert_ne!(
        now, first,
        "the backend still presents its first certificate"
    );
    let expiry = metric_sum(
        &backend.metrics(),
        "ward_certificate_expiry_timestamp_seconds",
        &[],
    );
    assert!(expiry > first_expiry, "expiry {first_expiry} → {expiry}");
}

/// Accepts connections on loopback and keeps the first bytes of each.
struct Sniffer {
    addr: SocketAddr,
    first_bytes: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Sniffer {
    fn start() -> Sniffer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let first_bytes = Arc::new(Mutex::new(Vec::new()));
        let seen = first_bytes.clone();
        // Ends with the test process (blocked in accept).
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 8];
                let n = conn.read(&mut buf).unwrap_or(0);
                seen.lock().unwrap().push(buf[..n].to_vec());
            }
        });
        Sniffer { addr, first_bytes }
    }
}

#[test]
fn a_sidecar_started_while_the_control_plane_is_down_sends_no_plaintext_and_recovers() {
    if !prerequisites() {
        return;
    }
    let mut cluster = Cluster::start(&[]);
    let backend = cluster.serving("backend", &["http", "--name", "backend"]);
    // A destination declared meshed that records what reaches it: TLS
    // starts with a handshake record (0x16), plaintext HTTP with a method.
    let sniffer = Sniffer::start();
    let sniffed_outbound = format!("127.0.0.1:{}", explicit::free_port());
    let outbound_arg = format!("{sniffed_outbound}={}", sniffer.addr);
    let endpoint_arg = format!("{}={}", sniffer.addr, explicit::spiffe_id("backend"));
    cluster.stop_control_plane();

    let frontend = cluster.workload(WorkloadSpec {
        name: "frontend",
        calls: Some(&backend),
        proxy_args: &["--outbound", &outbound_arg, "--endpoint", &endpoint_arg],
        unready: true,
        ..Default::default()
    });
    let (status, body) = http_get(frontend.admin, "/ready").unwrap();
    assert_eq!((status, body.as_str()), (503, "no certificate yet\n"));
    // Without a certificate the app's requests are not served, and nothing
    // in plaintext leaves the sidecar.
    let to_backend = frontend.outbound.unwrap().to_string();
    assert_ne!(status_through(&to_backend), "200");
    assert_ne!(status_through(&sniffed_outbound), "200");
    for bytes in sniffer.first_bytes.lock().unwrap().iter() {
        assert!(
            bytes.is_empty() || bytes[0] == 0x16,
            "plaintext left the sidecar: {:?}",
            String::from_utf8_lossy(bytes)
        );
    }

    // The control plane comes back: the sidecar gets its certificate and
    // policies with no restart and serves.
    cluster.start_control_plane();
    wait_until(Duration::from_secs(60), "the frontend ready", || {
        matches!(http_get(frontend.admin, "/ready"), Ok((200, _)))
    });
    assert_eq!(frontend.curl("/echo"), 200);
}

fn expiry(w: &Workload) -> f64 {
    metric_sum(
        &w.metrics(),
        "ward_certificate_expiry_timestamp_seconds",
        &[],
    )
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// What docs/proxy.md promises for a certificate that expires while the
/// control plane is away: open connections end with it, the sidecar is not
/// ready and serves nothing (nothing in plaintext either). Enrolled with a
/// single-use join token, it cannot prove who it is any more once the
/// certificate is gone: it stays out of service, saying why, even after
/// the control plane is back (a service-account token would re-attest).
#[test]
fn a_certificate_that_expires_during_an_outage_fails_closed() {
    if !prerequisites() {
        return;
    }
    let mut cluster = Cluster::start_with_env(&[], &[("WARD_SVID_TTL", "15s")]);
    let backend = cluster.serving("backend", &["http", "--name", "backend"]);
    let frontend = cluster.calling("frontend", &backend);
    let outbound = frontend.outbound.unwrap().to_string();
    // A pooled mTLS connection is open from here on.
    assert_eq!(status_through(&outbound), "200");

    cluster.stop_control_plane();
    let expires = expiry(&backend).max(expiry(&frontend));
    wait_until(Duration::from_secs(60), "both certificates expired", || {
        unix_now() > expires + 1.0
    });
    for w in [&backend, &frontend] {
        let (status, body) = http_get(w.admin, "/ready").unwrap();
        assert_eq!(
            (status, body.as_str()),
            (503, "certificate expired\n"),
            "{}",
            w.name
        );
    }
    // The connection opened before expiry was closed with the certificates:
    // the request needs a new handshake, which the expired ones fail.
    assert_ne!(status_through(&outbound), "200");
    assert!(
        backend
            .proxy_log()
            .contains("a certificate it was authenticated with expired"),
        "{}",
        backend.proxy_log()
    );

    cluster.start_control_plane();
    wait_until(
        Duration::from_secs(60),
        "the renewal attempt to say why it cannot",
        || {
            frontend
                .proxy_log()
                .contains("no valid SVID is left to renew with")
        },
    );
    let (status, _) = http_get(frontend.admin, "/ready").unwrap();
    assert_eq!(status, 503);
    assert_ne!(status_through(&outbound), "200");
}
