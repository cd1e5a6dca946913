//! Explicit-mode data path, without root: test client → outbound proxy →
//! mTLS → inbound proxy → in-process application, all on 127.0.0.1.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::*;

fn post(uri: &str, body: &'static [u8]) -> Request<Full<Bytes>> {
    Request::post(uri)
        .header(header::HOST, "app.test")
        .body(Full::new(Bytes::from_static(body)))
        .unwrap()
}

// ------------------------------------------------------------ 1. HTTP/1.1

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_through_mesh_carries_peer_identity_and_replaces_client_xfcc() {
    let app = echo_app(Flavor::Http1Only).await;
    let mesh = Mesh::new(app.addr, &[], &[]).await;

    let mut req = post("/hello?x=1", b"request body, intact");
    forge_xfcc(&mut req);
    req.headers_mut()
        .insert("x-custom", "kept".parse().unwrap());
    let reply = within(10, "request", http1(mesh.entry(), req))
        .await
        .unwrap();

    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = reply.json();
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["path"], "/hello");
    assert_eq!(seen["version"], "HTTP/1.1");
    assert_eq!(seen["body"], "request body, intact");
    assert_eq!(seen["body_len"], 20);
    assert_eq!(seen["headers"]["host"], "app.test");
    assert_eq!(seen["headers"]["x-custom"], "kept");
    // Exactly the proxy's value: the client's claim is gone, not appended.
    assert_eq!(
        seen["headers"]["x-forwarded-client-cert"],
        format!("URI={CLIENT_ID}")
    );
    // Internal headers between sidecars never reach the application.
    assert!(seen["headers"].get("x-ward-proto").is_none(), "{seen}");
    mesh.shutdown().await;
}

// ------------------------------------------------------------ 2. h2c

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_client_is_downgraded_for_an_http1_only_app() {
    let app = echo_app(Flavor::Http1Only).await;
    let mesh = Mesh::new(app.addr, &[], &[]).await;
    for _ in 0..2 {
        let reply = within(
            10,
            "h2c request",
            h2c(mesh.entry(), get("http://app.test/v")),
        )
        .await
        .unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.version, http::Version::HTTP_2);
        let seen = reply.json();
        assert_eq!(seen["version"], "HTTP/1.1", "{seen}");
        assert_eq!(seen["path"], "/v");
        assert_eq!(seen["headers"]["host"], "app.test", "{seen}");
        assert_eq!(
            seen["headers"]["x-forwarded-client-cert"],
            format!("URI={CLIENT_ID}")
        );
    }
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_client_stays_http2_to_an_h2c_app() {
    let app = echo_app(Flavor::Auto).await;
    let mesh = Mesh::new(app.addr, &[], &[]).await;
    let reply = within(
        10,
        "h2c request",
        h2c(mesh.entry(), get("http://app.test/v2")),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = reply.json();
    assert_eq!(seen["version"], "HTTP/2", "{seen}");
    assert_eq!(seen["path"], "/v2");
    assert_eq!(
        seen["headers"]["x-forwarded-client-cert"],
        format!("URI={CLIENT_ID}")
    );

    // And an HTTP/1.1 client to the same app still reaches it as HTTP/1.1.
    let reply = within(10, "http1 request", http1(mesh.entry(), get("/v1")))
        .await
        .unwrap();
    assert_eq!(reply.json()["version"], "HTTP/1.1");
    mesh.shutdown().await;
}

// ------------------------------------------------------------ 3. gRPC streaming

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_bidi_stream_is_not_buffered_and_trailers_arrive() {
    grpc_bidi_stream(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_bidi_stream_without_pool() {
    grpc_bidi_stream(&["--no-pool"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_bidi_stream_over_http1_between_sidecars() {
    grpc_bidi_stream(&["--upstream-protocol", "http1"]).await;
}

async fn grpc_bidi_stream(outbound_flags: &[&str]) {
    let app = grpc_app().await;
    let mesh = Mesh::new(app.addr, &[], outbound_flags).await;
    let mut sender = within(5, "h2c handshake", h2c_sender::<ChannelBody>(mesh.entry()))
        .await
        .unwrap();
    let (tx, body) = ChannelBody::new(4);
    let req = Request::post("http://app.test/ward.test.Echo/Stream")
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .body(body)
        .unwrap();
    let message = |i: usize| grpc_message(format!("message number {i}").as_bytes());
    tx.send(Frame::data(message(0))).await.unwrap();
    let resp = within(10, "response headers", sender.send_request(req))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut pending = BytesMut::new();
    for i in 0..5 {
        // Message i+1 is sent only once echo i came back: a proxy that
        // buffered the request or the response would stall here.
        if i > 0 {
            tx.send(Frame::data(message(i))).await.unwrap();
        }
        let expected = message(i);
        while pending.len() < expected.len() {
            let frame = within(5, &format!("echo of message {i}"), body.frame())
                .await
                .expect("stream ended early")
                .expect("stream error");
            let data = frame.into_data().expect("data before trailers");
            pending.extend_from_slice(&data);
        }
        assert_eq!(pending.split_to(expected.len()).freeze(), expected);
    }
    drop(tx); // end of the request stream
    let mut trailers = None;
    while let Some(frame) = within(5, "trailers", body.frame()).await {
        let frame = frame.expect("stream error");
        match frame.into_trailers() {
            Ok(t) => trailers = Some(t),
            Err(frame) => panic!("unexpected data after the last echo: {frame:?}"),
        }
    }
    let trailers = trailers.expect("trailers arrived");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers[GRPC_TRAILER], "5");
    mesh.shutdown().await;
}

// ------------------------------------------------------------ 4. tunnels

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_and_connect_tunnel_echo_both_ways() {
    let app = echo_app(Flavor::Http1Only).await;
    let mesh = Mesh::new(app.addr, &[], &[]).await;

    let (mut ws, head) = upgrade_to_echo(mesh.entry()).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: echo"),
        "{head}"
    );
    for msg in [
        &b"ping"[..],
        b"a longer second frame",
        &[0u8, 159, 146, 150],
    ] {
        ws.write_all(msg).await.unwrap();
        assert_eq!(read_n(&mut ws, msg.len()).await, msg);
    }
    let seen = app.state.last();
    assert_eq!(
        seen.headers.get("upgrade").map(String::as_str),
        Some("echo")
    );
    assert_eq!(
        seen.headers.get("x-forwarded-client-cert"),
        Some(&format!("URI={CLIENT_ID}"))
    );

    let mut tunnel = TcpStream::connect(mesh.entry()).await.unwrap();
    tunnel
        .write_all(b"CONNECT db.test:5432 HTTP/1.1\r\nHost: db.test:5432\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut tunnel).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    for msg in [&b"through the tunnel"[..], b"and back"] {
        tunnel.write_all(msg).await.unwrap();
        assert_eq!(read_n(&mut tunnel, msg.len()).await, msg);
    }
    assert_eq!(app.state.last().method, "CONNECT");
    // Half-close travels through the tunnel, and the answer comes back.
    tunnel.shutdown().await.unwrap();
    let (rest, closed) = read_to_close(&mut tunnel, 5).await;
    assert_eq!(String::from_utf8_lossy(&rest), "bye 26");
    assert!(closed);
    drop((ws, tunnel));
    mesh.shutdown().await;
}

// ------------------------------------------------------------ 6, 7. opaque TCP

async fn opaque_echo_with_half_close(declare_opaque: bool) {
    let app = tcp_echo_app().await;
    let mesh = if declare_opaque {
        Mesh::opaque(app.addr).await
    } else {
        Mesh::new(app.addr, &[], &[]).await
    };

    let mut tcp = TcpStream::connect(mesh.entry()).await.unwrap();
    // Not HTTP, not TLS: detection must fall back to opaque at once.
    let first = b"\x00\x01hello opaque world";
    tcp.write_all(first).await.unwrap();
    assert_eq!(read_n(&mut tcp, first.len()).await, first);
    tcp.write_all(b"more").await.unwrap();
    assert_eq!(read_n(&mut tcp, 4).await, b"more");
    // Half-close: the app only answers once it saw our FIN.
    tcp.shutdown().await.unwrap();
    let (rest, closed) = read_to_close(&mut tcp, 5).await;
    assert_eq!(
        String::from_utf8_lossy(&rest),
        format!("bye {}", first.len() + 4)
    );
    assert!(closed, "the app's close did not come through");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_echo_with_half_close_on_declared_port() {
    opaque_echo_with_half_close(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_echo_with_half_close_detected() {
    opaque_echo_with_half_close(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_first_protocol_on_opaque_port() {
    let app = banner_app().await;
    // Protocol detection, were it run on this opaque port, would wait 600 s
    // for the client's first bytes.
    let mesh = Mesh::opaque_with(app.addr, &["--detect-timeout", "600s"]).await;

    let mut tcp = TcpStream::connect(mesh.entry()).await.unwrap();
    // We send nothing: the banner must come anyway, not at a detection
    // timeout (the 60 s here only bound a failing test).
    let mut banner = vec![0u8; BANNER.len()];
    within(
        60,
        "the banner, the client having sent nothing",
        tcp.read_exact(&mut banner),
    )
    .await
    .unwrap();
    assert_eq!(banner, BANNER);
    tcp.write_all(b"HELO client\r\n").await.unwrap();
    assert_eq!(read_n(&mut tcp, 13).await, b"HELO client\r\n");
    drop(tcp);
    mesh.shutdown().await;
}

// ------------------------------------------------------------ 8. mTLS modes

const PLAINTEXT_GET: &[u8] = b"GET / HTTP/1.1\r\nHost: app.test\r\nx-forwarded-client-cert: URI=spiffe://cluster.local/ns/default/sa/admin\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_refuses_plaintext() {
    let app = echo_app(Flavor::Http1Only).await;
    let pki = Pki::new();
    let inbound = start_inbound(&pki, app.addr, &[]).await;
    let mut tcp = TcpStream::connect(inbound.inbound_addrs[0]).await.unwrap();
    let (got, closed) = raw_exchange(&mut tcp, PLAINTEXT_GET, 5).await;
    assert!(closed, "strict inbound kept a plaintext connection open");
    assert!(
        got.is_empty(),
        "plaintext got an answer: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(app.state.requests(), 0);
    assert_metric(
        &inbound,
        "ward_connections_refused_total",
        &[
            ("direction", "inbound"),
            ("reason", "plaintext_in_strict_mode"),
        ],
        1.0,
    );
    inbound.drain(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_mode_serves_plaintext_without_identity() {
    let app = echo_app(Flavor::Http1Only).await;
    let pki = Pki::new();
    let inbound = start_inbound(&pki, app.addr, &["--mtls-mode", "permissive"]).await;
    let mut req = get("/plain");
    forge_xfcc(&mut req);
    let reply = within(
        10,
        "plaintext request",
        http1(inbound.inbound_addrs[0], req),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = reply.json();
    assert_eq!(seen["path"], "/plain");
    // No identity, and the client's forged one is not passed on either.
    assert!(
        seen["headers"].get("x-forwarded-client-cert").is_none(),
        "{seen}"
    );

    // mTLS still works on the same listener.
    let outbound = start_outbound(&pki, inbound.inbound_addrs[0], Some(SERVER_ID), &[]).await;
    let reply = within(
        10,
        "mTLS request",
        http1(outbound.outbound_addrs[0], get("/m")),
    )
    .await
    .unwrap();
    assert_eq!(
        reply.json()["headers"]["x-forwarded-client-cert"],
        format!("URI={CLIENT_ID}")
    );
    drain_both(outbound, inbound).await;
}

// ------------------------------------------------------------ 9. handshakes

/// Connects with `connector`, sends a request and reads: true when the
/// server refused (handshake error, alert, or close without an answer).
async fn refused_at_handshake(
    connector: tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
) -> bool {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = match within(5, "handshake", connector.connect(server_name(), tcp)).await {
        Ok(tls) => tls,
        Err(_) => return true,
    };
    // TLS 1.3: the server checks the client certificate after the client
    // considers the handshake done, so the refusal shows on the first read.
    let _ = tls
        .write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    // An alert is a read error; a close is EOF. Either way nothing of the
    // application may arrive (bytes read before an error stay in `buf`).
    let _ = within(5, "read after handshake", tls.read_to_end(&mut buf)).await;
    buf.is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_refuses_foreign_and_unissued_client_certificates() {
    let app = echo_app(Flavor::Http1Only).await;
    let pki = Pki::new();
    let inbound = start_inbound(&pki, app.addr, &[]).await;
    let addr = inbound.inbound_addrs[0];

    // Control: a client with a certificate from the mesh CA gets through,
    // so the refusals below are about the certificates, not the harness.
    let good = pki.issue(CLIENT_ID);
    let connector = mesh_connector(&good, &[(TD, pki.bundle_pem())], SERVER_ID, &[b"http/1.1"]);
    assert!(!refused_at_handshake(connector, addr).await);
    assert_eq!(app.state.requests(), 1);

    // A valid certificate, from another trust domain's CA.
    let other = Pki::for_trust_domain("other.example");
    let foreign = other.issue("spiffe://other.example/ns/default/sa/client");
    let connector = mesh_connector(
        &foreign,
        &[
            ("other.example", other.bundle_pem()),
            (TD, pki.bundle_pem()),
        ],
        SERVER_ID,
        &[b"http/1.1"],
    );
    assert!(
        refused_at_handshake(connector, addr).await,
        "foreign trust domain admitted"
    );

    // The right SPIFFE ID, signed by a CA the mesh never trusted.
    let rogue = Pki::new();
    let forged = rogue.issue(CLIENT_ID);
    let connector = mesh_connector(
        &forged,
        &[(TD, rogue.bundle_pem()), (TD, pki.bundle_pem())],
        SERVER_ID,
        &[b"http/1.1"],
    );
    assert!(
        refused_at_handshake(connector, addr).await,
        "unissued certificate admitted"
    );

    assert_eq!(app.state.requests(), 1, "a refused client reached the app");
    // Counted as the handshake fails, which may be just after the client
    // saw the alert.
    wait_for_metric(
        &inbound,
        "ward_tls_handshake_failures_total",
        &[("direction", "inbound")],
        2.0,
    )
    .await;
    inbound.drain(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_refuses_an_inbound_with_the_wrong_identity() {
    let app = echo_app(Flavor::Http1Only).await;
    let pki = Pki::new();
    let inbound = start_inbound(&pki, app.addr, &[]).await;
    let outbound = start_outbound(
        &pki,
        inbound.inbound_addrs[0],
        Some("spiffe://cluster.local/ns/default/sa/not-the-server"),
        &[],
    )
    .await;
    let reply = within(10, "request", http1(outbound.outbound_addrs[0], get("/")))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert!(ward_error(&reply).is_some(), "{:?}", reply.headers);
    assert_eq!(app.state.requests(), 0);
    let metrics = outbound.metrics.render();
    assert!(
        metric(
            &metrics,
            "ward_tls_handshake_failures_total",
            &[("direction", "outbound")]
        ) >= 1.0,
        "{metrics}"
    );
    drain_both(outbound, inbound).await;
}

// ------------------------------------------------------------ 10. --allow-peer

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_peer_denies_other_identities_with_403() {
    let app = echo_app(Flavor::Http1Only).await;
    let mesh = Mesh::new(
        app.addr,
        &[
            "--allow-peer",
            "spiffe://cluster.local/ns/default/sa/someone-else",
        ],
        &[],
    )
    .await;
    for _ in 0..2 {
        let reply = within(10, "request", http1(mesh.entry(), post("/x", b"data")))
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
        assert_eq!(reply.text(), "RBAC: access denied");
    }
    let reply = within(
        10,
        "h2c request",
        h2c(mesh.entry(), get("http://app.test/y")),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(app.state.requests(), 0, "a denied request reached the app");
    mesh.shutdown().await;

    // Control: the same flag naming the client admits it.
    let mesh = Mesh::new(app.addr, &["--allow-peer", CLIENT_ID], &[]).await;
    let reply = within(10, "request", http1(mesh.entry(), get("/z")))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(app.state.requests(), 1);
    mesh.shutdown().await;
}

// ------------------------------------------------------------ 11. errors

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshed_endpoint_down_gives_503_quickly() {
    let pki = Pki::new();
    let dead = dead_port().await;
    // "Quickly": answered on the refusal, not at a timeout (a minute here).
    let outbound = start_outbound(&pki, dead, Some(SERVER_ID), &["--connect-timeout", "60s"]).await;
    for request in 0..2 {
        let started = Instant::now();
        let reply = within(60, "request", http1(outbound.outbound_addrs[0], get("/")))
            .await
            .unwrap();
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "request {request}"
        );
        assert!(ward_error(&reply).is_some(), "{:?}", reply.headers);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
    }
    let reply = within(
        5,
        "h2c request",
        h2c(outbound.outbound_addrs[0], get("http://a.test/")),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    outbound.drain(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmeshed_destination_passes_through_or_is_refused() {
    let app = echo_app(Flavor::Http1Only).await;
    let pki = Pki::new();
    let outbound = start_outbound(&pki, app.addr, None, &[]).await;
    let reply = within(
        10,
        "request",
        http1(outbound.outbound_addrs[0], get("/plain")),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let seen = reply.json();
    assert!(
        seen["headers"].get("x-forwarded-client-cert").is_none(),
        "{seen}"
    );
    outbound.drain(Duration::from_secs(2)).await;

    let denying = start_outbound(&pki, app.addr, None, &["--unmeshed-egress", "deny"]).await;
    let result = within(
        5,
        "request",
        http1(denying.outbound_addrs[0], get("/plain")),
    )
    .await;
    assert!(result.is_err(), "denied egress answered: {result:?}");
    assert_eq!(app.state.requests(), 1);
    assert_metric(
        &denying,
        "ward_connections_refused_total",
        &[
            ("direction", "outbound"),
            ("reason", "unmeshed_egress_denied"),
        ],
        1.0,
    );
    denying.drain(Duration::from_secs(2)).await;
}

// ------------------------------------------------------------ 12. drain

/// The drain limit in the drain tests: far beyond the 1.5 s slow request,
/// so a drain that returns `true` (finished before its limit) ended with the
/// request on any machine, not by a race with the limit.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_in_flight_requests_and_stops_accepting() {
    let app = echo_app(Flavor::Http1Only).await;
    let Mesh {
        pki: _pki,
        inbound,
        outbound,
    } = Mesh::new(app.addr, &[], &[]).await;
    let inbound_addr = inbound.inbound_addrs[0];
    let entry = outbound.outbound_addrs[0];

    let slow = start_slow_request(entry, &app).await;
    let drain = tokio::spawn(inbound.drain(DRAIN_LIMIT));
    within(30, "the draining inbound to stop accepting", async {
        while TcpStream::connect(inbound_addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    let reply = within(30, "slow request", slow).await.unwrap().unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["path"], "/slow");
    let drained = within(DRAIN_LIMIT.as_secs() + 30, "drain", drain)
        .await
        .unwrap();
    // Finished before its limit: it waited for the request, no longer.
    assert!(drained, "drain ran out of time");

    // New requests through the outbound now fail fast instead of hanging.
    let reply = within(5, "after drain", http1(entry, get("/")))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    outbound.drain(Duration::from_secs(2)).await;
}

// ------------------------------------------------------------ 13. admin

async fn admin_get(addr: std::net::SocketAddr, path: &str) -> Reply {
    within(5, "admin request", http1(addr, get(path)))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_ready_live_and_metrics() {
    // Note: /ready and /live are refused to non-loopback peers; every
    // address here is loopback, so only the allowed side is tested.
    let app = echo_app(Flavor::Http1Only).await;
    let mesh = Mesh::new(app.addr, &[], &[]).await;
    for running in [&mesh.inbound, &mesh.outbound] {
        let ready = admin_get(running.admin_addr, "/ready").await;
        assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());
        assert_eq!(
            admin_get(running.admin_addr, "/live").await.status,
            StatusCode::OK
        );
    }
    let reply = within(10, "request", http1(mesh.entry(), get("/m")))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    for (running, direction) in [(&mesh.inbound, "inbound"), (&mesh.outbound, "outbound")] {
        let metrics = admin_get(running.admin_addr, "/metrics").await;
        assert_eq!(metrics.status, StatusCode::OK);
        let text = metrics.text();
        assert_eq!(
            metric(
                &text,
                "ward_http_responses_total",
                &[("direction", direction), ("status_code", "200")]
            ),
            1.0,
            "{text}"
        );
    }
    assert_eq!(
        admin_get(mesh.inbound.admin_addr, "/nope").await.status,
        StatusCode::NOT_FOUND
    );
    mesh.shutdown().await;
}

// ------------------------------------------------------------ 14. slowloris

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_header_is_cut_off_after_header_timeout() {
    let app = echo_app(Flavor::Http1Only).await;
    let mesh = Mesh::new(
        app.addr,
        &["--header-timeout", "1s"],
        &["--header-timeout", "1s"],
    )
    .await;

    // Plaintext side: the outbound listener.
    let mut tcp = TcpStream::connect(mesh.entry()).await.unwrap();
    let started = Instant::now();
    let (got, closed) = raw_exchange(
        &mut tcp,
        b"GET /slowloris HTTP/1.1\r\nHost: app.test\r\nX-A: ",
        30,
    )
    .await;
    assert!(closed, "outbound kept a stalled header open");
    let elapsed = started.elapsed();
    assert!(
        // A 1 s timeout firing: not before it, and well within 10 s.
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(10),
        "{elapsed:?}"
    );
    let got = String::from_utf8_lossy(&got);
    // hyper closes on a header timeout without writing a response (it has
    // no 408 path: only parse errors get a status).
    assert!(got.is_empty(), "{got}");

    // mTLS side: a mesh peer that stalls inside its header block.
    let client = mesh.pki.issue(CLIENT_ID);
    let connector = mesh_connector(
        &client,
        &[(TD, mesh.pki.bundle_pem())],
        SERVER_ID,
        &[b"http/1.1"],
    );
    let tcp = TcpStream::connect(mesh.inbound_addr()).await.unwrap();
    let mut tls = connector.connect(server_name(), tcp).await.unwrap();
    tls.write_all(b"GET /slowloris HTTP/1.1\r\nHost: app.test\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = within(30, "inbound header timeout", tls.read_to_end(&mut buf)).await;
    let elapsed = started.elapsed();
    // The same 1 s timeout firing, well within 10 s.
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    assert_eq!(app.state.requests(), 0);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_header_block_gets_431() {
    let app = echo_app(Flavor::Http1Only).await;
    let mesh = Mesh::new(app.addr, &[], &["--max-header-bytes", "16384"]).await;
    let mut request = b"GET /big HTTP/1.1\r\nHost: app.test\r\nX-Big: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 32 * 1024));
    request.extend_from_slice(b"\r\n\r\n");
    let mut tcp = TcpStream::connect(mesh.entry()).await.unwrap();
    let (got, closed) = raw_exchange(&mut tcp, &request, 5).await;
    let got = String::from_utf8_lossy(&got);
    // hyper answers a header block over its read buffer limit with 431 and
    // closes the connection.
    assert!(got.starts_with("HTTP/1.1 431"), "{got}");
    assert!(closed);
    assert_eq!(app.state.requests(), 0);

    // Within the limit is fine.
    let mut req = get("/ok");
    req.headers_mut()
        .insert("x-big", "a".repeat(8 * 1024).parse().unwrap());
    let reply = within(10, "request", http1(mesh.entry(), req))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_open_tunnels() {
    let app = echo_app(Flavor::Http1Only).await;
    let Mesh {
        pki: _pki,
        inbound,
        outbound,
    } = Mesh::new(app.addr, &[], &[]).await;
    let (mut ws, head) = upgrade_to_echo(outbound.outbound_addrs[0]).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");

    let admin = inbound.admin_addr;
    let drain = tokio::spawn(inbound.drain(DRAIN_LIMIT));
    // Draining has begun once /ready says so.
    within(30, "/ready to say draining", async {
        while admin_get(admin, "/ready").await.text() != "draining\n" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // The WebSocket is a connection like any other: drain waits for it,
    // and it keeps working meanwhile.
    ws.write_all(b"still there").await.unwrap();
    assert_eq!(read_n(&mut ws, 11).await, b"still there");
    assert!(
        !drain.is_finished(),
        "drain returned with a tunnel still open"
    );

    drop(ws);
    // Done before its limit: it ended with the tunnel, not by timing out.
    let drained = within(DRAIN_LIMIT.as_secs() + 30, "drain", drain)
        .await
        .unwrap();
    assert!(drained, "drain ran out of time after the tunnel closed");
    outbound.drain(Duration::from_secs(2)).await;
}

/// A request that arrives while the peer sidecar drains must not be lost on
/// the pooled connection the peer is closing (GOAWAY): it was never sent,
/// so the outbound retries it on a new connection; here nothing listens any
/// more, so that is a 503 (connect refused), not a 502 (protocol error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_during_peer_drain_is_retried_on_a_new_connection() {
    let app = echo_app(Flavor::Http1Only).await;
    let Mesh {
        pki: _pki,
        inbound,
        outbound,
    } = Mesh::new(app.addr, &[], &[]).await;
    let entry = outbound.outbound_addrs[0];
    let inbound_addr = inbound.inbound_addrs[0];
    let slow = start_slow_request(entry, &app).await;
    let drain = tokio::spawn(inbound.drain(DRAIN_LIMIT));
    within(30, "the draining inbound to stop accepting", async {
        while TcpStream::connect(inbound_addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    for i in 0..3 {
        let reply = within(5, "request during drain", http1(entry, get("/during")))
            .await
            .unwrap();
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "request {i}: {:?} {}",
            ward_error(&reply),
            reply.text()
        );
    }
    assert_eq!(
        within(30, "slow", slow).await.unwrap().unwrap().status,
        StatusCode::OK
    );
    assert!(
        within(DRAIN_LIMIT.as_secs() + 30, "drain", drain)
            .await
            .unwrap()
    );
    outbound.drain(Duration::from_secs(2)).await;
}

// ------------------------------------------------------------ upstream modes

/// The non-default upstream modes (`--no-pool`: a multiplexed connection
/// per application connection; `--upstream-protocol http1`: HTTP/1.1
/// between the sidecars) carry the same traffic: keep-alive HTTP/1.1,
/// concurrent h2c streams, identity, and upgrades.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_default_upstream_modes_carry_http_and_upgrades() {
    for flags in [&["--no-pool"][..], &["--upstream-protocol", "http1"][..]] {
        let app = echo_app(Flavor::Http1Only).await;
        let mesh = Mesh::new(app.addr, &[], flags).await;

        // Keep-alive: three requests on one client connection.
        let mut sender = http1_sender(mesh.entry()).await.unwrap();
        for i in 0..3 {
            within(5, "ready", sender.ready()).await.unwrap();
            let resp = within(
                5,
                "keep-alive request",
                sender.send_request(post(&format!("/k{i}"), b"abc")),
            )
            .await
            .unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "{flags:?}");
            let seen = json_body(resp).await;
            assert_eq!(seen["path"], format!("/k{i}"));
            assert_eq!(seen["body"], "abc");
            assert_eq!(
                seen["headers"]["x-forwarded-client-cert"],
                format!("URI={CLIENT_ID}")
            );
        }

        // Concurrent h2c streams on one client connection.
        let sender = within(5, "h2c", h2c_sender::<Full<Bytes>>(mesh.entry()))
            .await
            .unwrap();
        let tasks: Vec<_> = (0..3)
            .map(|i| {
                let mut sender = sender.clone();
                tokio::spawn(async move {
                    // Each answered only once all three are in the app.
                    let req = get(&format!("http://app.test/together?n=3&i={i}"));
                    sender.send_request(req).await.map(|r| r.status())
                })
            })
            .collect();
        for task in tasks {
            let status = within(10, "concurrent stream", task)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(status, StatusCode::OK, "{flags:?}");
        }
        // Multiplexed end to end, in both modes (HTTP/2 clients keep
        // HTTP/2 upstream): the three were in the app side by side.

        // An upgrade still works.
        let (mut ws, head) = upgrade_to_echo(mesh.entry()).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{flags:?}: {head}");
        ws.write_all(b"ping").await.unwrap();
        assert_eq!(read_n(&mut ws, 4).await, b"ping");
        drop(ws);
        mesh.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_down_behind_the_inbound_gives_503_or_close_quickly() {
    let dead = dead_port().await;
    // "Quickly": answered on the refusal, not at a timeout (a minute here).
    let mesh = Mesh::new(dead, &["--connect-timeout", "60s"], &[]).await;
    let entry = mesh.entry();
    for make in [|| get("/"), || get("http://app.test/")] {
        let started = Instant::now();
        let reply = within(60, "request", http1(entry, make())).await.unwrap();
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            reply.text()
        );
        assert!(ward_error(&reply).is_some());
        assert!(started.elapsed() < Duration::from_secs(30));
    }
    let reply = within(5, "h2c request", h2c(entry, get("http://app.test/")))
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );
    // Opaque: the client's connection is closed, not left hanging.
    let mut tcp = TcpStream::connect(entry).await.unwrap();
    let (got, closed) = raw_exchange(&mut tcp, b"\x00opaque", 5).await;
    assert!(closed && got.is_empty(), "{got:?}");
    mesh.shutdown().await;
}

// ------------------------------------------------------------ identity files

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_files_are_reloaded_and_bad_files_ignored() {
    let app = echo_app(Flavor::Http1Only).await;
    let pki = Pki::new();
    let server = pki.issue(SERVER_ID);
    let inbound = start_inbound_as(&server, app.addr, &[]).await;
    let addr = inbound.inbound_addrs[0];
    let request_as = |expected: &'static str| {
        let pki = &pki;
        async move {
            // A fresh outbound: no pooled connection from before the change.
            let outbound = start_outbound(pki, addr, Some(expected), &[]).await;
            let reply = within(10, "request", http1(outbound.outbound_addrs[0], get("/")))
                .await
                .unwrap();
            outbound.drain(Duration::from_secs(2)).await;
            reply.status
        }
    };
    assert_eq!(request_as(SERVER_ID).await, StatusCode::OK);

    // A file that does not load is seen, refused (counted as a failed
    // renewal) and ignored: the current identity stays.
    let failures = || inbound.identity.stats.failures.load(Ordering::Relaxed);
    let failures_before = failures();
    std::fs::write(&server.cert, "not a certificate").unwrap();
    within(30, "the watcher to refuse the bad file", async {
        while failures() == failures_before {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(request_as(SERVER_ID).await, StatusCode::OK);
    assert_eq!(
        inbound.identity.svid.current_id().unwrap().as_str(),
        SERVER_ID
    );

    // A new certificate (another identity, to tell them apart) is picked up.
    const V2: &str = "spiffe://cluster.local/ns/default/sa/server-v2";
    let v2 = pki.issue(V2);
    std::fs::copy(&v2.key, &server.key).unwrap();
    std::fs::copy(&v2.cert, &server.cert).unwrap();
    within(10, "reload", async {
        while inbound
            .identity
            .svid
            .current_id()
            .map(|id| id.as_str().to_owned())
            != Some(V2.to_owned())
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(request_as(V2).await, StatusCode::OK);
    assert_eq!(request_as(SERVER_ID).await, StatusCode::BAD_GATEWAY);
    inbound.drain(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_peer_closes_denied_opaque_connections_before_the_app() {
    let app = tcp_echo_app().await;
    let app_port = app.addr.port().to_string();
    let mesh = Mesh::new(
        app.addr,
        &[
            "--opaque-ports",
            &app_port,
            "--allow-peer",
            "spiffe://cluster.local/ns/default/sa/someone-else",
        ],
        &[],
    )
    .await;
    let mut tcp = TcpStream::connect(mesh.entry()).await.unwrap();
    let (got, closed) = raw_exchange(&mut tcp, b"\x00secret bytes", 5).await;
    assert!(closed, "denied opaque connection left open");
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(
        app.state.requests(),
        0,
        "the app accepted a denied connection"
    );
    assert_metric(
        &mesh.inbound,
        "ward_authorization_decisions_total",
        &[("action", "deny"), ("protocol", "tcp")],
        1.0,
    );
    mesh.shutdown().await;
}

/// `--max-header-bytes` (64 KiB by default) is the limit for request and
/// response header blocks on every hop, HTTP/2 between the sidecars included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_blocks_up_to_the_limit_pass_every_hop() {
    for flavor in [Flavor::Http1Only, Flavor::Auto] {
        let app = echo_app(flavor).await;
        let mesh = Mesh::new(app.addr, &[], &[]).await;
        let big = 40 * 1024;
        for h2 in [false, true] {
            let uri = if h2 { "http://app.test/big" } else { "/big" };
            let mut req = get(uri);
            req.headers_mut()
                .insert("x-big-request", "a".repeat(big).parse().unwrap());
            req.headers_mut()
                .insert(BIG_RESPONSE_HEADER, big.to_string().parse().unwrap());
            let reply = if h2 {
                within(10, "h2c", h2c(mesh.entry(), req)).await
            } else {
                within(10, "http1", http1(mesh.entry(), req)).await
            }
            .unwrap();
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "h2={h2}: {:?} {}",
                ward_error(&reply),
                reply.text()
            );
            assert_eq!(
                reply.json()["headers"]["x-big-request"]
                    .as_str()
                    .map(str::len),
                Some(big)
            );
            assert_eq!(
                reply.headers.get("x-big").map(|v| v.len()),
                Some(big),
                "h2={h2}"
            );
        }
        mesh.shutdown().await;
    }
}

// ------------------------------------------------------------ misc

/// A mesh peer that announces no ALPN (not a Ward sidecar): the inbound
/// sniffs the decrypted bytes, HTTP/1.1 and opaque alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_peer_without_alpn_is_sniffed() {
    let app = echo_app(Flavor::Http1Only).await;
    let pki = Pki::new();
    let inbound = start_inbound(&pki, app.addr, &[]).await;
    let client = pki.issue(CLIENT_ID);
    let connector = mesh_connector(&client, &[(TD, pki.bundle_pem())], SERVER_ID, &[]);
    let mut tls = connect_tls(&connector, inbound.inbound_addrs[0]).await;
    tls.write_all(b"GET /sniffed HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = within(5, "response", tls.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"path\":\"/sniffed\""), "{text}");
    assert!(text.contains(&format!("URI={CLIENT_ID}")), "{text}");
    inbound.drain(Duration::from_secs(2)).await;

    let echo = tcp_echo_app().await;
    let inbound = start_inbound(&pki, echo.addr, &[]).await;
    let mut tls = connect_tls(&connector, inbound.inbound_addrs[0]).await;
    tls.write_all(b"\x00\x01opaque").await.unwrap();
    assert_eq!(read_n(&mut tls, 8).await, b"\x00\x01opaque");
    tls.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = within(5, "bye", tls.read_to_end(&mut rest)).await;
    assert_eq!(String::from_utf8_lossy(&rest), "bye 8");
    inbound.drain(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed_at_once() {
    let app = tcp_echo_app().await;
    let pki = Pki::new();
    let outbound = start_outbound(&pki, app.addr, None, &["--max-connections", "1"]).await;
    let entry = outbound.outbound_addrs[0];
    let mut first = TcpStream::connect(entry).await.unwrap();
    first.write_all(b"\x00one").await.unwrap();
    assert_eq!(read_n(&mut first, 4).await, b"\x00one");
    let mut second = TcpStream::connect(entry).await.unwrap();
    let (got, closed) = raw_exchange(&mut second, b"\x00two", 5).await;
    assert!(closed && got.is_empty(), "{got:?}");
    assert_metric(
        &outbound,
        "ward_connections_refused_total",
        &[("reason", "connection_limit")],
        1.0,
    );
    // The permit comes back when the first connection ends.
    drop(first);
    within(30, "permit released", async {
        loop {
            let mut third = TcpStream::connect(entry).await.unwrap();
            third.write_all(b"\x00three").await.unwrap();
            let mut buf = [0u8; 6];
            if tokio::time::timeout(Duration::from_millis(500), third.read_exact(&mut buf))
                .await
                .is_ok_and(|r| r.is_ok())
            {
                assert_eq!(&buf, b"\x00three");
                break;
            }
        }
    })
    .await;
    outbound.drain(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_mode_passes_plaintext_and_strips_forged_identity() {
    let app = echo_app(Flavor::Http1Only).await;
    let pki = Pki::new();
    let inbound = start_inbound(&pki, app.addr, &["--mtls-mode", "disable"]).await;
    let mut req = get("/off");
    forge_xfcc(&mut req);
    let reply = within(10, "request", http1(inbound.inbound_addrs[0], req))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let seen = reply.json();
    assert!(
        seen["headers"].get("x-forwarded-client-cert").is_none(),
        "{seen}"
    );
    inbound.drain(Duration::from_secs(2)).await;
}

/// A peer that accepts TCP but never completes TLS: the outbound gives up
/// after `--connect-timeout` with 504, and the inbound cuts a client that
/// stalls inside its ClientHello after `--header-timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_tls_handshakes_time_out() {
    let pki = Pki::new();
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            held.push(tcp);
        }
    });
    let outbound = start_outbound(
        &pki,
        silent_addr,
        Some(SERVER_ID),
        &["--connect-timeout", "1s"],
    )
    .await;
    let started = Instant::now();
    let reply = within(30, "request", http1(outbound.outbound_addrs[0], get("/")))
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        reply.text()
    );
    assert!(ward_error(&reply).is_some());
    let elapsed = started.elapsed();
    assert!(
        // A 1 s timeout firing: not before it, and well within 10 s.
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(10),
        "{elapsed:?}"
    );
    outbound.drain(Duration::from_secs(2)).await;
    holder.abort();

    let app = echo_app(Flavor::Http1Only).await;
    let inbound = start_inbound(&pki, app.addr, &["--header-timeout", "1s"]).await;
    let mut tcp = TcpStream::connect(inbound.inbound_addrs[0]).await.unwrap();
    let started = Instant::now();
    // The start of a ClientHello record, then nothing.
    let (got, closed) = raw_exchange(&mut tcp, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01], 30).await;
    assert!(closed && got.is_empty(), "{got:?}");
    let elapsed = started.elapsed();
    assert!(
        // A 1 s timeout firing: not before it, and well within 10 s.
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(10),
        "{elapsed:?}"
    );
    // The socket closes as the handshake future is dropped, a moment
    // before the counter moves: wait for it (bounded).
    wait_for_metric(
        &inbound,
        "ward_tls_handshake_failures_total",
        &[("direction", "inbound"), ("reason", "timeout")],
        1.0,
    )
    .await;
    inbound.drain(Duration::from_secs(2)).await;
}

/// RFC 9113 §8.2.3: HTTP/2 clients may split `cookie` into several fields;
/// they must be joined with "; " before going on over HTTP/1.1 (many
/// HTTP/1 servers read only one Cookie header).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_http2_cookies_are_joined_for_an_http1_app() {
    let app = echo_app(Flavor::Http1Only).await;
    let mesh = Mesh::new(app.addr, &[], &[]).await;
    let mut req = get("http://app.test/cookies");
    req.headers_mut()
        .append(header::COOKIE, "a=1".parse().unwrap());
    req.headers_mut()
        .append(header::COOKIE, "b=2".parse().unwrap());
    let reply = within(10, "h2c", h2c(mesh.entry(), req)).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let seen = app.state.last();
    assert_eq!(seen.version, "HTTP/1.1");
    // The echo app joins repeated fields with ", ": "a=1; b=2" proves one field.
    assert_eq!(
        seen.headers.get("cookie").map(String::as_str),
        Some("a=1; b=2")
    );
    mesh.shutdown().await;
}

/// `--idle-timeout`: a connection on which no byte moved for that long is
/// closed (activity is tracked by the byte-counting wrapper every served
/// connection goes through).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_are_closed_after_idle_timeout() {
    let app = echo_app(Flavor::Http1Only).await;
    let mesh = Mesh::new(app.addr, &[], &["--idle-timeout", "1s"]).await;
    let mut sender = within(5, "h2c", h2c_sender::<Full<Bytes>>(mesh.entry()))
        .await
        .unwrap();
    let resp = within(5, "request", sender.send_request(get("http://app.test/")))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // The last byte moved before this point: the 1 s idle timeout fires
    // from here (the 30 s only bound a failing test).
    let idle_since = Instant::now();
    within(30, "the idle h2c connection to be closed", async {
        while !sender.is_closed() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let idle = idle_since.elapsed();
    assert!(idle >= Duration::from_millis(900), "closed after {idle:?}");
    mesh.shutdown().await;
}

/// An explicit outbound pointing at the proxy's own listener would loop
/// forever: the proxy refuses to start.
#[tokio::test]
async fn outbound_to_its_own_listener_is_refused_at_start() {
    let pki = Pki::new();
    let client = pki.issue(CLIENT_ID);
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let flags = [
        "--outbound".to_owned(),
        format!("127.0.0.1:{port}=127.0.0.1:{port}"),
    ];
    let err = ward_proxy::proxy::start(&proxy_args(&client, &flags))
        .await
        .err()
        .expect("a looping outbound must not start");
    assert!(err.to_string().contains("a loop"), "{err:#}");
}
