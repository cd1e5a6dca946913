//! A 256 MiB upload streams through both proxies without being buffered.
//!
//! Its own test binary (so its own process): the memory check reads this
//! process's peak RSS, which other tests running in parallel would disturb.

mod support;

use http::{Request, StatusCode, header};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_streams_in_bounded_memory() {
    let app = echo_app(Flavor::Http1Only).await;
    let mesh = Mesh::new(app.addr, &[], &[]).await;
    // Warm up connections, pools and TLS before the baseline.
    let reply = within(10, "warm-up", http1(mesh.entry(), get("/warm")))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);

    let before = vm_hwm_kib();
    let req = Request::post("/upload")
        .header(header::HOST, "app.test")
        .body(RepeatBody::new(BODY_LEN))
        .unwrap();
    let reply = within(300, "256 MiB upload", http1(mesh.entry(), req))
        .await
        .unwrap();
    let after = vm_hwm_kib();

    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["body_len"], BODY_LEN);
    let growth = after.saturating_sub(before);
    eprintln!("VmHWM before {before} KiB, after {after} KiB, growth {growth} KiB");
    assert!(
        growth < MAX_PEAK_GROWTH_KIB,
        "peak RSS grew by {growth} KiB while streaming {BODY_LEN} bytes"
    );
    within(10, "shutdown", mesh.shutdown()).await;
}
