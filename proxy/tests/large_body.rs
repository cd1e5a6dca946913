//! A 256 MiB upload streams through both proxies without being buffered.
//!
//! Its own test binary (so its own process): the memory check reads this
//! process's peak RSS, which other tests running in parallel would disturb.

mod support;

use http::{Request, StatusCode, header};
use http_body_util::BodyExt;

use support::*;

const BODY_LEN: u64 = 256 * 1024 * 1024;

/// The proxies, the app and the client all run in this process, so its peak
/// resident set (VmHWM) bounds what the proxies held at any moment. A proxy
/// that buffered the body would raise it by at least 256 MiB; streaming
/// needs only the HTTP/2 flow-control windows (1 MiB per stream, 4 MiB per
/// connection, per hop), hyper's read buffers and TLS records: a few MiB.
/// 64 MiB leaves room for allocator slack and runtime growth while staying
/// far below a quarter of the body.
const MAX_PEAK_GROWTH_KIB: u64 = 64 * 1024;

/// Runs `phase` and checks the peak RSS did not grow by more than the bound.
async fn bounded<F: std::future::Future<Output = ()>>(what: &str, phase: F) {
    let before = vm_hwm_kib();
    within(300, what, phase).await;
    let after = vm_hwm_kib();
    let growth = after.saturating_sub(before);
    eprintln!("{what}: VmHWM before {before} KiB, after {after} KiB, growth {growth} KiB");
    assert!(
        growth < MAX_PEAK_GROWTH_KIB,
        "{what}: peak RSS grew by {growth} KiB while streaming {BODY_LEN} bytes"
    );
}

/// One test (not three): the phases must not overlap, or each would see
/// the others' memory. Peak RSS only grows, so each phase is held to the
/// highest peak so far plus the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_in_bounded_memory() {
    let app = echo_app(Flavor::Auto).await;
    let mesh = Mesh::new(app.addr, &[], &[]).await;
    // Warm up connections, pools and TLS before the baseline.
    let reply = within(10, "warm-up", http1(mesh.entry(), get("/warm")))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);

    bounded("HTTP/1.1 upload", async {
        let req = Request::post("/upload")
            .header(header::HOST, "app.test")
            .body(RepeatBody::new(BODY_LEN))
            .unwrap();
        let reply = http1(mesh.entry(), req).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let seen = reply.json();
        assert_eq!(seen["body_len"], BODY_LEN);
        assert_eq!(seen["version"], "HTTP/1.1");
    })
    .await;

    bounded("h2c upload", async {
        let mut sender = h2c_sender::<RepeatBody>(mesh.entry()).await.unwrap();
        let req = Request::post("http://app.test/upload")
            .body(RepeatBody::new(BODY_LEN))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let seen = json_body(resp).await;
        assert_eq!(seen["body_len"], BODY_LEN);
        assert_eq!(seen["version"], "HTTP/2");
    })
    .await;

    bounded("HTTP/1.1 download", async {
        let req = get(&format!("/download?n={BODY_LEN}"));
        let mut sender = http1_sender(mesh.entry()).await.unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        // Counted frame by frame, never collected.
        let mut body = resp.into_body();
        let mut received = 0u64;
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame.unwrap().data_ref() {
                received += data.len() as u64;
            }
        }
        assert_eq!(received, BODY_LEN);
    })
    .await;

    within(10, "shutdown", mesh.shutdown()).await;
}
