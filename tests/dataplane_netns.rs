//! The data plane end to end, in real network namespaces: every pod has the
//! real iptables capture (`ward-proxy init`) and the real sidecar
//! (`ward-proxy run` as UID 1337, enrolled with the real control plane over a
//! join token) in front of a real application; the peers are independent
//! programs (curl, openssl, tcpdump, `ward-testapp` clients) that know
//! nothing about Ward. See `support/mesh.rs` for the layout.
//!
//! Needs root, `ip`, `iptables`, `setpriv` and `curl` (plus `openssl` and
//! `tcpdump` for the tests using them); skips without them (fails under
//! WARD_TEST_STRICT=1).

#[path = "support/mesh.rs"]
mod mesh;
#[path = "support/netns.rs"]
mod netns;

use std::time::{Duration, Instant};

use mesh::{Mesh, MeshPod, PodOptions, assert_ok, peak_rss_kib, spiffe_id};
use netns::Pod;
use serde_json::Value;

/// Pods A (client) and B (server) are planned in this order.
const B: &str = "198.18.0.3";
const HTTP_APP: &[&str] = &["ward-testapp", "http", "--listen", "0.0.0.0:8080"];

/// Peak RSS allowed for each sidecar while a 1 GiB body streams through.
const RSS_BOUND_MIB: u64 = 64;

fn json(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

/// A mesh with server pod `b` (service account `server`, at [`B`]) running
/// `app`, and client pod `a` (service account `client`) without an app.
fn client_server(name: &str, app: &[&str], opts: PodOptions) -> (Mesh, MeshPod, MeshPod) {
    let mesh = Mesh::planned(name, &[("a", "client"), ("b", "server")]);
    let b = mesh.add_pod("b", "server", app, opts.clone());
    assert_eq!(b.ip().to_string(), B);
    let a = mesh.add_pod("a", "client", &[], opts);
    (mesh, b, a)
}

/// `curl ARGS` as the application user of `pod`.
fn curl(pod: &Pod, args: &[&str]) -> std::process::Output {
    let mut argv = vec!["curl", "-sS", "--max-time", "15"];
    argv.extend_from_slice(args);
    pod.exec_as(mesh::APP_UID, &argv)
}

#[test]
fn http1_and_http2_reach_the_app_unmodified_with_the_client_identity() {
    if !mesh::prerequisites() {
        return;
    }
    let (_mesh, _b, a) = client_server("ward-dp-http", HTTP_APP, PodOptions::default());
    let url = format!("http://{B}:8080/echo/some/path?q=1&r=two");
    let xfcc = format!("URI={}", spiffe_id("client"));
    for (version, extra) in [("HTTP/1.1", None), ("HTTP/2.0", Some("--http2-prior-knowledge"))] {
        let mut args = vec![
            "-X",
            "PUT",
            "-H",
            "x-ward-test: kept as is",
            "-H",
            "x-forwarded-client-cert: URI=spiffe://evil/forged",
            "--data-binary",
            "twelve bytes",
            &url,
        ];
        args.extend(extra);
        let echo = json(&assert_ok(curl(a.pod(), &args), "curl"));
        assert_eq!(echo["version"], version, "{echo}");
        assert_eq!(echo["method"], "PUT", "{echo}");
        assert_eq!(echo["path"], "/echo/some/path?q=1&r=two", "{echo}");
        assert_eq!(echo["authority"], format!("{B}:8080"), "{echo}");
        assert_eq!(echo["body_bytes"], 12, "{echo}");
        assert_eq!(echo["headers"]["x-ward-test"], "kept as is", "{echo}");
        // The forged header is replaced by what the sidecar authenticated.
        assert_eq!(
            echo["headers"]["x-forwarded-client-cert"],
            xfcc.as_str(),
            "{echo}"
        );
        // The app sees the connection from its own sidecar, on loopback.
        assert!(
            echo["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{echo}"
        );
    }
}

#[test]
fn grpc_bidi_streaming_and_trailers() {
    if !mesh::prerequisites() {
        return;
    }
    let app = &["ward-testapp", "grpc", "--listen", "0.0.0.0:9090"];
    let (_mesh, _b, a) = client_server("ward-dp-grpc", app, PodOptions::default());
    let testapp = &mesh::bins().testapp;
    let target = format!("{B}:9090");
    let out = a.exec(&[testapp, "grpc-client", "--connect", &target, "--messages", "50"]);
    let result = json(&assert_ok(out, "grpc-client"));
    assert_eq!(result["received"], 50, "{result}");
    assert_eq!(result["mismatched"], 0, "{result}");
    assert_eq!(result["grpc_status"], "0", "{result}");
    assert_eq!(result["trailers"]["x-echo-count"], "50", "{result}");

    // An error status travels in trailers after a 200 too.
    let out = a.exec(&[
        testapp,
        "grpc-client",
        "--connect",
        &target,
        "--messages",
        "1",
        "--method",
        "/ward.test.Echo/Fail",
    ]);
    let result = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(result["grpc_status"], "7", "{result}");
    assert_eq!(
        result["grpc_message"], "permission denied by ward-testapp Fail",
        "{result}"
    );
}

#[test]
fn websocket_echoes() {
    if !mesh::prerequisites() {
        return;
    }
    let (_mesh, _b, a) = client_server("ward-dp-ws", HTTP_APP, PodOptions::default());
    let target = format!("{B}:8080");
    let out = a.exec(&[
        &mesh::bins().testapp,
        "ws-client",
        "--connect",
        &target,
        "--message",
        "hello through two sidecars",
    ]);
    assert_eq!(
        assert_ok(out, "ws-client").trim(),
        "echo: hello through two sidecars"
    );
}

#[test]
fn one_gib_streams_through_in_bounded_memory() {
    if !mesh::prerequisites() {
        return;
    }
    let (_mesh, b, a) = client_server("ward-dp-big", HTTP_APP, PodOptions::default());
    let target = format!("{B}:8080");
    let bytes: u64 = 1 << 30;
    let started = Instant::now();
    let out = a.exec(&[
        &mesh::bins().testapp,
        "upload",
        "--connect",
        &target,
        "--bytes",
        &bytes.to_string(),
        "--path",
        "/sink?verify=pattern",
        "--timeout-ms",
        "150000",
    ]);
    let elapsed = started.elapsed();
    let result = json(&assert_ok(out, "upload"));
    assert_eq!(result["bytes"], bytes, "{result}");
    assert_eq!(result["pattern_ok"], true, "{result}");
    let (rss_a, rss_b) = (peak_rss_kib(a.proxy_pid()), peak_rss_kib(b.proxy_pid()));
    eprintln!(
        "1 GiB upload in {elapsed:?}; sidecar peak RSS: client {} KiB, server {} KiB (bound {RSS_BOUND_MIB} MiB)",
        rss_a, rss_b
    );
    for (who, rss) in [("client", rss_a), ("server", rss_b)] {
        assert!(
            rss < RSS_BOUND_MIB * 1024,
            "{who} sidecar peak RSS {rss} KiB over {RSS_BOUND_MIB} MiB"
        );
    }
}

#[test]
fn tcp_echo_with_half_close() {
    if !mesh::prerequisites() {
        return;
    }
    let app = &["ward-testapp", "tcp-echo", "--listen", "0.0.0.0:7000"];
    let (_mesh, _b, a) = client_server("ward-dp-tcp", app, PodOptions::default());
    let target = format!("{B}:7000");
    let testapp = &mesh::bins().testapp;
    let text = "no HTTP here, just bytes";
    let out = a.exec(&[testapp, "tcp-client", "--connect", &target, "--send", text]);
    // The server's `bye` comes only after it saw our half-close, and we read
    // it after having half-closed: both directions closed independently.
    assert_eq!(
        assert_ok(out, "tcp-client"),
        format!("{text}bye {}\n", text.len())
    );
    let out = a.exec(&[testapp, "tcp-client", "--connect", &target, "--bytes", "3000000"]);
    let stdout = assert_ok(out, "tcp-client --bytes");
    assert!(
        stdout.contains("echoed 3000000 of 3000000 bytes, pattern ok"),
        "{stdout}"
    );
}

#[test]
fn server_first_protocol_on_an_opaque_port() {
    if !mesh::prerequisites() {
        return;
    }
    let app = &["ward-testapp", "banner", "--listen", "0.0.0.0:2525"];
    let opts = PodOptions::default().opaque_ports(&[2525]);
    let (_mesh, b, a) = client_server("ward-dp-opaque", app, opts);
    let target = format!("{B}:2525");
    let started = Instant::now();
    let out = a.exec(&[
        &mesh::bins().testapp,
        "banner-client",
        "--connect",
        &target,
        "--expect-banner",
        "220 ward-test ESMTP ready",
        "--timeout-ms",
        "5000",
    ]);
    let transcript = assert_ok(out, "banner-client");
    assert!(transcript.contains("S: 221 bye"), "{transcript}");
    // No sniffing delay worth the name on an opaque port.
    assert!(started.elapsed() < Duration::from_secs(3));
    // It went through the server's sidecar over mTLS, which knew the client.
    let log = wait_for_log(&b, &spiffe_id("client"));
    assert!(log.contains("protocol=\"tcp\"") || log.contains("tcp"), "{log}");
}

/// The sidecar's log once it mentions `needle` (access logs are written when
/// connections close, which may be just after the client returned).
fn wait_for_log(pod: &MeshPod, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = pod.proxy_log();
        if log.contains(needle) {
            return log;
        }
        assert!(Instant::now() < deadline, "{needle} not in the log:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
