//! The data plane end to end, in real network namespaces: every pod has the
//! real iptables capture (`ward-proxy init`) and the real sidecar
//! (`ward-proxy run` as UID 1337, enrolled with the real control plane over a
//! join token) in front of a real application; the peers are independent
//! programs (curl, openssl, tcpdump, `ward-testapp` clients) that know
//! nothing about Ward. See `support/mesh.rs` for the layout.
//!
//! Needs root, `ip`, `iptables`, `setpriv` and `curl` (plus `openssl`,
//! `tcpdump` and `nghttp` for the tests using them); skips without them
//! (fails under WARD_TEST_STRICT=1). Each test builds its own mesh (control
//! plane + pods, about a second); the file takes ~30 s, most of it the
//! 1 GiB transfer.

#[path = "support/mesh.rs"]
mod mesh;
#[path = "support/netns.rs"]
mod netns;
#[path = "support/pcap.rs"]
mod pcap;
use pcap::{Segment, contains, pcap_tcp_segments};

use std::path::Path;
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
    for (version, extra) in [
        ("HTTP/1.1", None),
        ("HTTP/2.0", Some("--http2-prior-knowledge")),
    ] {
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
        // The app sees the connection from its own sidecar, which reaches
        // it on the pod address from 127.0.0.6 (docs/proxy.md, Inbound).
        assert!(
            echo["peer"].as_str().unwrap().starts_with("127.0.0.6:"),
            "{echo}"
        );
    }
}

#[test]
fn http2_streams_are_multiplexed_through_the_sidecars() {
    if !mesh::prerequisites() || !ward_testkit::require_tool("nghttp") {
        return;
    }
    let (_mesh, _b, a) = client_server("ward-dp-h2mux", HTTP_APP, PodOptions::default());
    // 100 streams on one client connection (nghttp2's own client), each
    // answered by the app only once all 100 are in it at the same time:
    // a path that serialised or capped them would get 504s.
    let url = format!("http://{B}:8080/together?n=100");
    let out = a.exec(&["nghttp", "-ns", "-m", "100", &url]);
    let stats = assert_ok(out, "nghttp");
    assert_eq!(stats.matches(" 200 ").count(), 100, "{stats}");
}

#[test]
fn grpc_bidi_streaming_and_trailers() {
    grpc_through_sidecars("ward-dp-grpc", PodOptions::default(), true);
}

/// With `--upstream-protocol http1` the client sidecar tells the server
/// sidecar that the application spoke HTTP/2 (so it talks HTTP/2 to the
/// gRPC server again), and gRPC's status trailers cross the HTTP/1.1 hop as
/// chunked trailers. Custom trailers the application does not declare in a
/// `Trailer` header cannot cross HTTP/1.1 (documented limitation).
#[test]
fn grpc_with_http1_between_sidecars() {
    let opts = PodOptions::default()
        .proxy_arg("--upstream-protocol")
        .proxy_arg("http1");
    grpc_through_sidecars("ward-dp-grpc1", opts, false);
}

fn grpc_through_sidecars(name: &str, opts: PodOptions, custom_trailers: bool) {
    if !mesh::prerequisites() {
        return;
    }
    let app = &["ward-testapp", "grpc", "--listen", "0.0.0.0:9090"];
    let (_mesh, _b, a) = client_server(name, app, opts);
    let target = format!("{B}:9090");
    let out = a.testapp(&["grpc-client", "--connect", &target, "--messages", "50"]);
    let result = json(&assert_ok(out, "grpc-client"));
    assert_eq!(result["received"], 50, "{result}");
    assert_eq!(result["mismatched"], 0, "{result}");
    assert_eq!(result["grpc_status"], "0", "{result}");
    if custom_trailers {
        assert_eq!(result["trailers"]["x-echo-count"], "50", "{result}");
    }

    // An error status travels in trailers after a 200 too.
    let out = a.testapp(&[
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
    let out = a.testapp(&[
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
    let out = a.testapp(&[
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
    let text = "no HTTP here, just bytes";
    let out = a.testapp(&["tcp-client", "--connect", &target, "--send", text]);
    // The server's `bye` comes only after it saw our half-close, and we read
    // it after having half-closed: both directions closed independently.
    assert_eq!(
        assert_ok(out, "tcp-client"),
        format!("{text}bye {}\n", text.len())
    );
    let out = a.testapp(&["tcp-client", "--connect", &target, "--bytes", "3000000"]);
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
    let out = a.testapp(&[
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
    // No sniffing on an opaque port: sniffing a server-first protocol
    // would hold the connection for the detection timeout (5 s), past the
    // client's own 5 s limit above.
    // It went through the server's sidecar over mTLS, which knew the client
    // and treated the connection as TCP.
    let client = spiffe_id("client");
    let log = wait_for_log(&b, "connection closed");
    let line = log
        .lines()
        .find(|l| l.contains("connection closed") && l.contains(&client))
        .unwrap_or_else(|| panic!("no access-log line for {client}:\n{log}"));
    assert!(
        line.contains("direction=\"inbound\"")
            && line.contains("protocol=\"tcp\"")
            && line.contains("decision=\"allow\""),
        "{line}"
    );
}

/// Polls `check` every 50 ms; panics with `what` if it never holds (the
/// deadline is generous: it only bounds how long a failing test hangs).
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The sidecar's log once it mentions `needle` (access logs are written when
/// connections close, which may be just after the client returned).
fn wait_for_log(pod: &MeshPod, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = pod.proxy_log();
        if log.contains(needle) {
            return log;
        }
        assert!(Instant::now() < deadline, "{needle} not in the log:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn traffic_between_pods_is_tls_on_the_wire() {
    if !mesh::prerequisites() || !ward_testkit::require_tool("tcpdump") {
        return;
    }
    let (mesh, _b, a) = client_server("ward-dp-wire", HTTP_APP, PodOptions::default());
    // Positive control for the capture itself: a plain server outside the
    // mesh, which A's sidecar passes through unencrypted.
    let outsider = mesh.add_plain_pod("outsider");
    let testapp = &mesh::bins().testapp;
    let mut plain_app = outsider.spawn_as(
        mesh::APP_UID,
        &[testapp, "http", "--listen", "0.0.0.0:8080"],
    );
    plain_app.wait_for_line("listening on 0.0.0.0:8080");
    let pcap = mesh.dir().join("br0.pcap");
    let mut tcpdump = mesh.network().spawn(&[
        "sh",
        "-c",
        &format!(
            "exec tcpdump -i br0 -n -U --immediate-mode -s 0 -Z root -w {} 'tcp port 8080' 2>&1",
            pcap.display()
        ),
    ]);
    tcpdump.wait_for_line_starting("tcpdump: listening on br0");

    let in_clear = "ward-wire-unmeshed-5e1d";
    let url = format!("http://{}:8080/echo/{in_clear}", outsider.ip());
    assert_ok(curl(a.pod(), &[&url]), "curl to the unmeshed pod");
    let marker = "ward-wire-marker-7f3a9c";
    let url = format!("http://{B}:8080/echo/{marker}");
    let header = format!("x-secret: {marker}");
    let echo = json(&assert_ok(curl(a.pod(), &["-H", &header, &url]), "curl"));
    assert_eq!(echo["headers"]["x-secret"], marker, "{echo}");

    tcpdump.terminate();
    assert!(
        tcpdump.wait_timeout(Duration::from_secs(5)).is_some(),
        "tcpdump did not stop"
    );
    let segments = pcap_tcp_segments(&std::fs::read(&pcap).expect("read the pcap"));
    let (ip_a, ip_b) = ([198, 18, 0, 2], [198, 18, 0, 3]);
    let request: Vec<&Segment> = segments
        .iter()
        .filter(|s| s.src.0 == ip_a && s.dst == (ip_b, 8080) && !s.payload.is_empty())
        .collect();
    let response: Vec<&Segment> = segments
        .iter()
        .filter(|s| s.src == (ip_b, 8080) && s.dst.0 == ip_a && !s.payload.is_empty())
        .collect();
    assert!(
        !request.is_empty() && !response.is_empty(),
        "no A <-> B:8080 data captured ({} TCP segments)",
        segments.len()
    );
    // Both directions open with a TLS handshake record (ClientHello,
    // ServerHello), on the application's own port: no plaintext preamble.
    assert_eq!(
        request[0].payload[..2],
        [0x16, 0x03],
        "client's first bytes"
    );
    assert_eq!(
        response[0].payload[..2],
        [0x16, 0x03],
        "server's first bytes"
    );
    let on_the_wire: Vec<u8> = segments.iter().flat_map(|s| s.payload.clone()).collect();
    assert!(
        contains(&on_the_wire, in_clear.as_bytes()),
        "the capture does not even show unmeshed plaintext"
    );
    let on_the_wire: Vec<u8> = request
        .iter()
        .chain(&response)
        .flat_map(|s| s.payload.clone())
        .collect();
    for secret in [marker.as_bytes(), b"GET /echo", b"x-secret", b"HTTP/1.1"] {
        assert!(
            !contains(&on_the_wire, secret),
            "{:?} seen in clear on br0",
            String::from_utf8_lossy(secret)
        );
    }
    // Every record on these connections is TLS (handshake or application
    // data): the first byte of each direction's stream is a record type.
    for s in request.iter().chain(&response) {
        if s.payload.len() >= 5 && s.payload[1] == 0x03 {
            assert!(matches!(s.payload[0], 0x14..=0x17), "not a TLS record");
        }
    }
}

#[test]
fn plaintext_is_refused_in_strict_and_served_in_permissive() {
    if !mesh::prerequisites() {
        return;
    }
    let mesh = Mesh::planned(
        "ward-dp-plain",
        &[("a", "client"), ("b", "server"), ("b2", "server2")],
    );
    let b = mesh.add_pod("b", "server", HTTP_APP, PodOptions::default());
    let _b2 = mesh.add_pod(
        "b2",
        "server2",
        HTTP_APP,
        PodOptions::default().mtls_mode("permissive"),
    );
    let a = mesh.add_pod("a", "client", &[], PodOptions::default());
    let outsider = mesh.add_plain_pod("outsider");
    let b2 = "198.18.0.4";

    // Positive controls: meshed clients are served by both.
    for server in [B, b2] {
        let url = format!("http://{server}:8080/echo");
        let echo = json(&assert_ok(curl(a.pod(), &[&url]), "curl from a"));
        assert_eq!(
            echo["headers"]["x-forwarded-client-cert"],
            format!("URI={}", spiffe_id("client")).as_str()
        );
    }

    // STRICT: the connection is accepted (iptables sends it to the sidecar)
    // and then closed without an answer: curl sees a reset or an empty reply,
    // not "connection refused" (nothing listening) nor any HTTP status.
    let url = format!("http://{B}:8080/echo");
    let out = curl(&outsider, &["-o", "/dev/null", "-w", "%{http_code}", &url]);
    let code = out.status.code();
    assert!(
        matches!(code, Some(52 | 56)),
        "plaintext to a STRICT pod: curl exit {code:?} (want 52 empty reply or 56 reset), stdout {:?}, stderr {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "000");
    let metrics = mesh.metrics(&b);
    let refused = mesh::metric_sum(
        &metrics,
        "ward_connections_refused_total",
        &[
            ("direction", "inbound"),
            ("reason", "plaintext_in_strict_mode"),
        ],
    );
    assert_eq!(refused, 1.0, "{metrics}");

    // PERMISSIVE: served, and without an identity.
    let url = format!("http://{b2}:8080/echo");
    let echo = json(&assert_ok(curl(&outsider, &[&url]), "plaintext to b2"));
    assert!(
        echo["headers"].get("x-forwarded-client-cert").is_none(),
        "{echo}"
    );
    assert_eq!(echo["path"], "/echo");
}

/// `openssl s_client` from `pod` to `target` with a client certificate,
/// sending one HTTP/1.1 request; returns (exit success, stdout + stderr).
fn s_client(pod: &Pod, target: &str, cert: &Path, key: &Path, ca: &str) -> (bool, String) {
    use std::io::Write;
    let mut cmd = pod.command(&[
        "openssl",
        "s_client",
        "-connect",
        target,
        "-cert",
        cert.to_str().unwrap(),
        "-key",
        key.to_str().unwrap(),
        "-CAfile",
        ca,
        "-verify_return_error",
        "-ign_eof",
    ]);
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run openssl s_client");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET /echo HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn foreign_and_forged_certificates_fail_the_handshake() {
    if !mesh::prerequisites() || !ward_testkit::require_tool("openssl") {
        return;
    }
    let mesh = Mesh::planned("ward-dp-certs", &[("a", "client"), ("b", "server")]);
    let b = mesh.add_pod("b", "server", HTTP_APP, PodOptions::default());
    let outsider = mesh.add_plain_pod("outsider");
    let target = format!("{B}:8080");
    let bundle = mesh.bundle();
    let bundle = bundle.to_str().unwrap();
    let client_id = spiffe_id("client");

    // Positive control: a certificate from the mesh CA completes the
    // handshake and the request reaches the app with that identity.
    let (cert, key) = mesh.issue(&client_id, "mesh-client");
    let (ok, out) = s_client(&outsider, &target, &cert, &key, bundle);
    assert!(ok, "mesh certificate: s_client failed:\n{out}");
    assert!(out.contains("HTTP/1.1 200"), "{out}");
    assert!(out.contains(&format!("URI={client_id}")), "{out}");

    // A valid certificate from another trust domain's CA.
    let other = mesh.dir().join("other");
    mesh::ca_init(&other, "other.example");
    let (other_cert, other_key) = mesh::issue(
        &other,
        mesh.dir(),
        "spiffe://other.example/ns/default/sa/client",
        "other-client",
    );
    // A self-signed certificate claiming the right SPIFFE ID.
    let forged_cert = mesh.dir().join("forged.crt");
    let forged_key = mesh.dir().join("forged.key");
    assert_ok(
        std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec"])
            .args([
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "1",
            ])
            .args(["-subj", "/O=forged"])
            .arg("-addext")
            .arg(format!("subjectAltName=URI:{client_id}"))
            .arg("-keyout")
            .arg(&forged_key)
            .arg("-out")
            .arg(&forged_cert)
            .output()
            .unwrap(),
        "openssl req -x509",
    );
    for (what, cert, key) in [
        ("other trust domain", &other_cert, &other_key),
        ("self-signed", &forged_cert, &forged_key),
    ] {
        let (ok, out) = s_client(&outsider, &target, cert, key, bundle);
        assert!(!ok, "{what}: s_client succeeded:\n{out}");
        assert!(!out.contains("HTTP/1.1"), "{what}: got an answer:\n{out}");
        // TLS 1.3: the client has sent its Finished when the server checks
        // its certificate, so the refusal arrives as the server's alert.
        assert!(
            out.contains("SSL alert number"),
            "{what}: no TLS alert:\n{out}"
        );
    }
    let log = b.proxy_log();
    assert_eq!(
        log.matches("mTLS handshake failed").count(),
        2,
        "the server's sidecar logs both refusals:\n{log}"
    );
    let metrics = mesh.metrics(&b);
    let failures = mesh::metric_sum(
        &metrics,
        "ward_tls_handshake_failures_total",
        &[("direction", "inbound")],
    );
    assert_eq!(failures, 2.0, "{metrics}");
}

#[test]
fn sigterm_drains_in_flight_requests_and_refuses_new_connections() {
    if !mesh::prerequisites() {
        return;
    }
    let (mesh, mut b, a) = client_server("ward-dp-drain", HTTP_APP, PodOptions::default());
    let outsider = mesh.add_plain_pod("outsider");
    let url = format!("http://{B}:8080/slow?ms=3000");
    let mut slow = a.pod().command_as(
        mesh::APP_UID,
        &[
            "curl",
            "-sS",
            "--max-time",
            "15",
            "-w",
            "\n%{http_code}",
            &url,
        ],
    );
    let started = Instant::now();
    let in_flight = std::thread::spawn(move || {
        let out = slow.output().expect("run curl");
        (out, Instant::now())
    });
    // Signal only once the slow request is in the server's sidecar.
    eventually("the slow request counted by the server's sidecar", || {
        let metrics = mesh.metrics(&b);
        mesh::metric_sum(
            &metrics,
            "ward_http_requests_total",
            &[("direction", "inbound")],
        ) >= 1.0
    });

    b.proxy().terminate();
    let signalled = Instant::now();
    // Draining: the pod reports not ready, so it leaves the load balancers
    // (polled: the signal is handled asynchronously).
    let ready = || {
        let out = b.pod().exec(&[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://127.0.0.1:15020/ready",
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    eventually("/ready says 503 while draining", || ready() == "503");
    // The listener is closed while iptables still redirects to it: refused.
    let url = format!("http://{B}:8080/echo");
    eventually("a new connection after SIGTERM is refused", || {
        curl(&outsider, &["--max-time", "3", &url]).status.code() == Some(7)
    });
    // And a meshed client is not served either.
    let out = curl(
        a.pod(),
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{B}:8080/echo"),
        ],
    );
    assert_ne!(String::from_utf8_lossy(&out.stdout), "200");

    // The proxy did not exit before the request ended: the whole answer
    // came through it.
    let (out, finished) = in_flight.join().unwrap();
    let stdout = assert_ok(out, "the in-flight request");
    assert_eq!(stdout, "slow done\n\n200", "{stdout:?}");
    assert!(finished - started >= Duration::from_millis(2900));

    // The drain timeout (5 s) bounds the exit: that bound is the behaviour,
    // checked with a margin generous for a loaded machine.
    let status = b
        .proxy()
        .wait_timeout(Duration::from_secs(30))
        .expect("the proxy did not exit within 30 s of SIGTERM");
    let exited = Instant::now();
    assert!(status.success(), "proxy exit status {status}");
    assert!(
        exited - signalled < Duration::from_secs(5) + Duration::from_secs(10),
        "exited {:?} after SIGTERM",
        exited - signalled
    );
    eprintln!(
        "SIGTERM drain: request finished {:?} after the signal, proxy exited {:?} after it",
        finished - signalled,
        exited - signalled
    );
}
