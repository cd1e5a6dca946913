//! The control plane is away while a sidecar's certificate approaches
//! expiry (#15): the identity manager keeps retrying with backoff, an
//! attempt that meets a peer which never answers is abandoned by the
//! client's timeouts, and the renewal succeeds within seconds of the
//! control plane coming back, before the certificate expires, without
//! restarting the sidecar.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::control_plane::{api_client, join_token, loopback_config};
use tokio::sync::watch;
use ward_api::client::{ControlPlaneIssuer, CredentialSource, Timeouts};
use ward_control_plane::server::ControlPlane;
use ward_identity::SpiffeId;
use ward_identity::manager::{self, RotationPolicy};

const TD: &str = "cluster.local";
/// Certificates live 30 s: renewal at ~15 s, the outage past it.
const TTL: Duration = Duration::from_secs(30);

async fn start(data: &std::path::Path, listen: std::net::SocketAddr) -> ControlPlane {
    let mut config = loopback_config(TD, data);
    config.listen = listen;
    config.svid_ttl = TTL;
    ControlPlane::start(config).await.unwrap()
}

async fn failures_reach(stats: &manager::RotationStats, n: u64) {
    tokio::time::timeout(Duration::from_secs(60), async {
        while stats.failures.load(Ordering::SeqCst) < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("fewer than {n} failed attempts"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_succeeds_within_seconds_of_the_control_plane_coming_back() {
    let data = tempfile::tempdir().unwrap();
    let cp = start(data.path(), "127.0.0.1:0".parse().unwrap()).await;
    let addr = cp.api_addr();
    let id = SpiffeId::for_service_account(TD, "shop", "cart").unwrap();
    let token = join_token(data.path(), &id, Duration::from_secs(600));
    let client = api_client(&cp, TD).with_timeouts(Timeouts {
        handshake: Duration::from_secs(1),
        ..Timeouts::default()
    });
    let (_stop_tx, stop) = watch::channel(false);
    let policy = RotationPolicy::default();
    let sidecar = manager::spawn(
        id,
        ControlPlaneIssuer {
            client,
            credential: CredentialSource::join_token(token),
            pod: None,
        },
        policy,
        stop,
    );
    let first = sidecar.ready().await;
    cp.shutdown().await;

    // Down: the renewal fails (connection refused) ...
    failures_reach(sidecar.stats(), 1).await;
    // ... then a peer that accepts and never answers holds the next
    // attempts until the client's handshake timeout abandons them.
    let black_hole = tokio::net::TcpListener::bind(addr).await.unwrap();
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = black_hole.accept().await {
            held.push(tcp);
        }
    });
    let before = sidecar.stats().failures.load(Ordering::SeqCst);
    failures_reach(sidecar.stats(), before + 2).await;
    held.abort();
    let _ = held.await;

    // Back, same data directory (same CA), same address.
    let cp = start(data.path(), addr).await;
    let back = Instant::now();
    let renewed = tokio::time::timeout(TTL, sidecar.renewed_after(first))
        .await
        .expect("renewed while the control plane is back");
    let took = back.elapsed();
    assert!(
        renewed > first,
        "a new certificate: {renewed} after {first}"
    );
    // Before the first certificate expired: the renewal used it (mTLS),
    // not the join token, which is spent.
    assert!(time::OffsetDateTime::now_utc() < first);
    // Within the longest backoff (plus a generous margin for a loaded
    // machine): no restart, no waiting for some long timer.
    assert!(
        took < policy.max_backoff + Duration::from_secs(5),
        "renewed {took:?} after the control plane came back"
    );
    cp.shutdown().await;
}
