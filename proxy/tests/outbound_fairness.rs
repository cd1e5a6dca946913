//! The outbound keeps serving everyone under slow clients (#14): 200
//! uploads trickling one byte every two seconds through one outbound
//! listener hold their upstream streams, yet another client's requests
//! through the same listener keep succeeding. Explicit mode, on 127.0.0.1.

mod support;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use http::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use support::*;

const SLOW_UPLOADERS: usize = 200;
/// Each upload declares this many body bytes and sends one per tick, so
/// none finishes while the test runs.
const UPLOAD_BYTES: usize = 64;
const TICK: Duration = Duration::from_secs(2);

/// Starts an HTTP/1.1 upload to `entry` whose body trickles: the head and
/// the first body byte now, the rest by `trickle`.
async fn start_upload(entry: std::net::SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(entry).await.expect("connect");
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: {UPLOAD_BYTES}\r\n\r\nx"
    );
    tcp.write_all(head.as_bytes()).await.expect("send head");
    tcp
}

/// One byte per tick on every upload, for at most the declared length.
async fn trickle(mut uploads: Vec<TcpStream>) {
    for _ in 1..UPLOAD_BYTES {
        tokio::time::sleep(TICK).await;
        for tcp in &mut uploads {
            let _ = tcp.write_all(b"x").await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploaders_do_not_starve_other_clients() {
    let app = echo_app(Flavor::Http1Only).await;
    let mesh = Mesh::new(app.addr, &[], &[]).await;

    let mut uploads = Vec::with_capacity(SLOW_UPLOADERS);
    for _ in 0..SLOW_UPLOADERS {
        uploads.push(start_upload(mesh.entry()).await);
    }
    let trickling = tokio::spawn(trickle(uploads));
    // Every upload is in the app, holding its stream between the sidecars.
    within(60, "all slow uploads reach the app", async {
        while app.state.requests() < SLOW_UPLOADERS {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    // Another client, HTTP/1.1 and HTTP/2, through the same listener.
    for i in 0..10 {
        let reply = within(20, "an HTTP/1.1 request beside the uploads", async {
            http1(mesh.entry(), get(&format!("/normal/{i}"))).await
        })
        .await
        .expect("request");
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.json()["path"], format!("/normal/{i}"));
    }
    let h2 = h2c_sender(mesh.entry()).await.expect("h2c connection");
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..20 {
        let mut h2 = h2.clone();
        requests.spawn(async move {
            h2.send_request(get(&format!("http://app.test/h2/{i}")))
                .await
        });
    }
    within(
        20,
        "20 concurrent HTTP/2 requests beside the uploads",
        async {
            while let Some(reply) = requests.join_next().await {
                let reply = reply.expect("task").expect("h2 request");
                assert_eq!(reply.status(), StatusCode::OK);
            }
        },
    )
    .await;
    assert_eq!(
        app.state.requests(),
        SLOW_UPLOADERS + 30,
        "the uploads are still in flight"
    );
    assert!(!trickling.is_finished(), "the uploads are still trickling");
    // Two connections are full of uploads; the rest went on a third.
    let opened = metric(
        &mesh.outbound.metrics.render(),
        "ward_outbound_pool_connections_opened_total",
        &[],
    );
    assert!(opened >= 3.0, "pooled connections opened: {opened}");

    trickling.abort();
    mesh.shutdown().await;
}

/// One client connection cannot take more than one pooled connection's
/// worth of streams: the outbound listener advertises the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_http2_client_is_limited_to_100_concurrent_streams() {
    let app = echo_app(Flavor::Http1Only).await;
    let mesh = Mesh::new(app.addr, &[], &[]).await;
    let tcp = TcpStream::connect(mesh.entry()).await.expect("connect");
    let (mut client, mut connection) = within(10, "h2 handshake", h2::client::handshake(tcp))
        .await
        .expect("handshake");
    let req = http::Request::get("http://app.test/one").body(()).unwrap();
    let (mut response, _) = client.send_request(req, true).expect("send");
    // Driving the connection until the answer reads the server's SETTINGS.
    let answer = within(10, "one request", async {
        std::future::poll_fn(|cx| {
            let _ = Pin::new(&mut connection).poll(cx);
            Pin::new(&mut response).poll(cx)
        })
        .await
    })
    .await
    .expect("response");
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(connection.max_concurrent_send_streams(), 100);
    drop((client, connection));
    mesh.shutdown().await;
}
