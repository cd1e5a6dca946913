use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::*;

/// An admin-like server on 127.0.0.1:0: `/ready` answers `ready` (a status
/// code the test flips), `/live` 200, anything else 404. Counts requests.
struct FakeAdmin {
    addr: SocketAddr,
    ready: Arc<AtomicU16>,
    hits: Arc<AtomicUsize>,
}

async fn fake_admin(ready: u16) -> FakeAdmin {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ready = Arc::new(AtomicU16::new(ready));
    let hits = Arc::new(AtomicUsize::new(0));
    let (r, h) = (ready.clone(), hits.clone());
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (r, h) = (r.clone(), h.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    h.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = match req.uri().path() {
                        "/ready" => {
                            let s = StatusCode::from_u16(r.load(Ordering::SeqCst)).unwrap();
                            (
                                s,
                                if s == 200 {
                                    "ready\n"
                                } else {
                                    "no certificate yet\n"
                                },
                            )
                        }
                        "/live" => (StatusCode::OK, "live\n"),
                        _ => (StatusCode::NOT_FOUND, "not found\n"),
                    };
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from_static(body.as_bytes())))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    FakeAdmin { addr, ready, hits }
}

fn probe_args(check: Check, admin: SocketAddr) -> ProbeArgs {
    ProbeArgs {
        check,
        admin,
        timeout: Duration::from_secs(2),
    }
}

#[tokio::test]
async fn probe_passes_on_200_only() {
    let admin = fake_admin(503).await;
    probe(&probe_args(Check::Live, admin.addr)).await.unwrap();
    let err = probe(&probe_args(Check::Ready, admin.addr))
        .await
        .unwrap_err();
    assert!(err.contains("503"), "{err}");
    assert!(err.contains("no certificate yet"), "reason quoted: {err}");
    admin.ready.store(200, Ordering::SeqCst);
    probe(&probe_args(Check::Ready, admin.addr)).await.unwrap();
}

#[tokio::test]
async fn probe_fails_when_nothing_listens() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = probe(&probe_args(Check::Live, addr)).await.unwrap_err();
    assert!(err.contains("connect"), "{err}");
}

#[tokio::test]
async fn probe_times_out_on_a_silent_server() {
    // Accepts, never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut conns = Vec::new();
        loop {
            conns.push(listener.accept().await.unwrap());
        }
    });
    let mut args = probe_args(Check::Ready, addr);
    args.timeout = Duration::from_millis(200);
    let started = std::time::Instant::now();
    // The bound only turns a probe that ignores its timeout (and would
    // wait on the silent server forever) into a failure: generous.
    let err = tokio::time::timeout(Duration::from_secs(30), probe(&args))
        .await
        .expect("the probe's own timeout fired")
        .unwrap_err();
    // The configured timeout fired, not some other one: it is named, and
    // it was waited for.
    assert!(err.contains("no answer within 200ms"), "{err}");
    assert!(started.elapsed() >= args.timeout);
}

#[tokio::test]
async fn wait_ready_returns_once_ready() {
    let admin = fake_admin(503).await;
    let (ready, hits) = (admin.ready.clone(), admin.hits.clone());
    // Ready once a second poll came: `wait_ready` asks one request at a
    // time, so the first one was answered 503 by then.
    tokio::spawn(async move {
        while hits.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ready.store(200, Ordering::SeqCst);
    });
    let args = WaitReadyArgs {
        admin: admin.addr,
        timeout: Duration::from_secs(60),
    };
    wait_ready_every(&args, Duration::from_millis(50))
        .await
        .unwrap();
    assert!(admin.hits.load(Ordering::SeqCst) >= 2, "polled until ready");
}

#[tokio::test]
async fn wait_ready_times_out_with_the_last_answer() {
    let admin = fake_admin(503).await;
    let args = WaitReadyArgs {
        admin: admin.addr,
        timeout: Duration::from_millis(500),
    };
    let started = std::time::Instant::now();
    // The bound only turns a wait that ignores its timeout (polling a
    // proxy that never turns ready, forever) into a failure: generous.
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        wait_ready_every(&args, Duration::from_millis(100)),
    )
    .await
    .expect("wait-ready's own timeout fired")
    .unwrap_err();
    assert!(err.contains("not ready after 500ms"), "{err}");
    // The last answer is quoted: it asked, and was refused.
    assert!(err.contains("503"), "{err}");
    assert!(admin.hits.load(Ordering::SeqCst) >= 1);
    assert!(started.elapsed() >= args.timeout);
}

#[tokio::test]
async fn http_get_sends_the_original_headers() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let service = service_fn(|req: Request<Incoming>| async move {
            let ok = req.headers().get("x-probe").is_some_and(|v| v == "yes")
                && req.uri().path() == "/healthz";
            Ok::<_, Infallible>(
                Response::builder()
                    .status(if ok { 204 } else { 400 })
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tcp), service)
            .await;
    });
    let status = http_get(
        "127.0.0.1",
        port,
        "/healthz",
        &[("X-Probe".into(), "yes".into())],
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::NO_CONTENT);
}
