//! The control plane's listeners under a flood of silent connections
//! (#15): the connection cap refuses instead of queueing, one source cannot
//! take the cap, the handshake and idle timeouts close what stays silent,
//! and renewals and discovery watches that start during the flood and
//! after it succeed.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::control_plane::{
    api_client, join_token, keyed_svid_request, loopback_config, metric_value, metrics, svid_cell,
};
use support::flood::{self, Flood};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use ward_api::client::discovery::{DiscoveryClient, DiscoveryConfig, DiscoveryHandler};
use ward_api::client::{ControlPlaneIssuer, CredentialSource};
use ward_api::discovery::{Node, Resource, ResourceType, Update};
use ward_control_plane::attest::Credential;
use ward_control_plane::listener::Limits;
use ward_control_plane::server::ControlPlane;
use ward_identity::SpiffeId;
use ward_identity::manager::{self, IssuedChain, RotationPolicy, SvidIssuer};
use ward_identity::tls::SvidCell;

const TD: &str = "cluster.local";
/// The production cap.
const CAP: usize = 4096;
/// Generous: how long the server may take to close everything once the
/// timeouts have passed (4,096 connections on a shared 2-core machine).
const MARGIN: Duration = Duration::from_secs(60);

/// One flood at a time per test binary: each holds 8,192 descriptors.
static FLOODS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn limits() -> Limits {
    Limits {
        max_connections: CAP,
        max_unauthenticated_per_source: 64,
        // Long enough for the whole flood to be open before the first
        // connections time out, also on a loaded machine (opening 4,096
        // took over 10 s there, so the count never reached the cap).
        handshake_timeout: Duration::from_secs(20),
        header_timeout: Duration::from_secs(20),
        idle_timeout: Duration::from_secs(20),
    }
}

async fn start(webhook: bool) -> (ControlPlane, tempfile::TempDir) {
    flood::raise_fd_limit(3 * CAP as u64 + 1024);
    let data = tempfile::tempdir().unwrap();
    let mut config = loopback_config(TD, data.path());
    config.limits = limits();
    // The sidecar renews 5 % into its certificate's life: 3 s.
    config.svid_ttl = Duration::from_secs(60);
    if webhook {
        config.webhook_listen = Some("127.0.0.1:0".parse().unwrap());
    }
    (ControlPlane::start(config).await.unwrap(), data)
}

async fn series(cp: &ControlPlane, name: &str) -> f64 {
    metric_value(&metrics(cp).await, name)
}

/// Polls the control plane's metrics until `done` holds for `series`.
async fn wait_metric(cp: &ControlPlane, name: &str, done: impl Fn(f64) -> bool) {
    let waited = tokio::time::timeout(MARGIN, async {
        loop {
            let value = series(cp, name).await;
            if done(value) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if waited.is_err() {
        panic!("{name} stayed at {}", series(cp, name).await);
    }
}

/// An issuer that lets its first call through (enrolment) and holds every
/// later one (renewals) until the test opens the gate.
struct Gated {
    inner: ControlPlaneIssuer,
    gate: watch::Receiver<bool>,
    first: AtomicBool,
}

impl SvidIssuer for Gated {
    async fn issue(
        &self,
        id: &SpiffeId,
        csr_pem: String,
        current: &Arc<SvidCell>,
    ) -> Result<IssuedChain, String> {
        if !self.first.swap(false, Ordering::SeqCst) {
            let _ = self.gate.clone().wait_for(|open| *open).await;
        }
        self.inner.issue(id, csr_pem, current).await
    }
}

#[derive(Default)]
struct Watch {
    up: AtomicBool,
}

impl DiscoveryHandler for Watch {
    fn apply(&self, _: &Update, _: &BTreeMap<String, Resource>) -> Result<(), String> {
        Ok(())
    }
    fn connected(&self, up: bool) {
        if up {
            self.up.store(true, Ordering::SeqCst);
        }
    }
}

fn watch(cp: &ControlPlane, svid: &Arc<SvidCell>) -> (Arc<Watch>, CancellationToken) {
    let discovery = DiscoveryClient::new(DiscoveryConfig {
        client: api_client(cp, TD),
        svid: svid.clone(),
        node: Node {
            pod: None,
            labels: BTreeMap::new(),
            proxy_version: "test".into(),
        },
        resource_types: vec![ResourceType::Policy],
        max_subscriptions: 10,
        extra_hello: BTreeMap::new(),
    });
    let handler = Arc::new(Watch::default());
    let stop = CancellationToken::new();
    tokio::spawn(discovery.run(handler.clone(), stop.clone()));
    (handler, stop)
}

async fn until(what: &str, done: impl Fn() -> bool) {
    tokio::time::timeout(MARGIN, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

/// 4,096 silent connections (half plain TCP, half idle TLS) from 64
/// addresses fill the API listener's cap: one more is closed at once, a
/// renewal and a watch started then succeed once the timeouts have closed
/// the silent ones, and so do a renewal and a watch started after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_fill_the_api_cap_then_time_out_and_renewals_and_watches_succeed() {
    let _one = FLOODS.lock().await;
    let (cp, data) = start(false).await;
    let id = SpiffeId::for_service_account(TD, "shop", "cart").unwrap();
    let token = join_token(data.path(), &id, Duration::from_secs(600));
    let (gate_tx, gate) = watch::channel(false);
    let (_stop_tx, stop) = watch::channel(false);
    let sidecar = manager::spawn(
        id.clone(),
        Gated {
            inner: ControlPlaneIssuer {
                client: api_client(&cp, TD),
                credential: CredentialSource::join_token(token),
                pod: None,
            },
            gate,
            first: AtomicBool::new(true),
        },
        // Renews as soon as it can, so the renewal waits at the gate.
        RotationPolicy {
            renew_at: 0.0,
            jitter: 0.0,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            ..RotationPolicy::default()
        },
        stop,
    );
    let first = sidecar.ready().await;

    let tls = flood::tls_client(cp.bundle_pem(), &[b"h2"]);
    let tcp_flood = Flood::open(cp.api_addr(), 32, 64, None).await;
    let tls_flood = Flood::open_from(cp.api_addr(), 32, 32, 64, Some(tls)).await;
    let open = r#"ward_cp_connections{listener="api"}"#;
    wait_metric(&cp, open, |n| n >= CAP as f64).await;

    // At the cap: one more connection, from a fresh address, is closed at
    // once instead of waiting in the kernel's queue.
    let mut extra = flood::connect_from(flood::source(100), cp.api_addr()).await;
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(4), extra.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "a connection over the cap is closed at once: {read:?}"
    );
    let refused = r#"ward_cp_connections_refused_total{listener="api",reason="max_connections"}"#;
    assert!(series(&cp, refused).await >= 1.0);

    // A renewal and a watch start now, during the flood.
    let failures_before = sidecar.stats().failures.load(Ordering::SeqCst);
    gate_tx.send(true).unwrap();
    let (during, _stop_during) = watch(&cp, sidecar.svid());
    let renewed = tokio::time::timeout(MARGIN, sidecar.renewed_after(first))
        .await
        .expect("the renewal started during the flood succeeds");
    assert!(
        sidecar.stats().failures.load(Ordering::SeqCst) > failures_before,
        "the renewal was first refused by the full listener"
    );
    until("the watch started during the flood", || {
        during.up.load(Ordering::SeqCst)
    })
    .await;

    // The server closed every silent connection: plain TCP at the
    // handshake timeout, TLS at the idle timeout.
    let (refused_tcp, closed_tcp) = tcp_flood.ended(MARGIN).await;
    let (refused_tls, closed_tls) = tls_flood.ended(MARGIN).await;
    assert_eq!(refused_tcp + closed_tcp, 2048);
    assert_eq!(refused_tls + closed_tls, 2048);
    let timed_out = |reason: &str| {
        format!(r#"ward_cp_connections_timed_out_total{{listener="api",reason="{reason}"}}"#)
    };
    let metrics = metrics(&cp).await;
    assert!(metric_value(&metrics, &timed_out("handshake")) >= 2048.0);
    assert!(metric_value(&metrics, &timed_out("idle")) >= 2048.0);

    // After the flood: a renewal over mTLS and a new watch.
    let (key, request) = keyed_svid_request(&id, None, None);
    let answer = api_client(&cp, TD)
        .request_svid(&request, Some(sidecar.svid()))
        .await
        .expect("a renewal after the flood");
    let renewed_cell = svid_cell(&answer, &key, TD);
    assert!(renewed > first);
    let (after, _stop_after) = watch(&cp, &renewed_cell);
    until("the watch started after the flood", || {
        after.up.load(Ordering::SeqCst)
    })
    .await;
    cp.shutdown().await;
}

/// One source address holds at most 64 unauthenticated connections: its
/// 4,096 silent connections never reach the cap, and a renewal from
/// another address during that flood succeeds at the first attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_cannot_take_the_api_listener() {
    let _one = FLOODS.lock().await;
    let (cp, data) = start(false).await;
    let id = SpiffeId::for_service_account(TD, "shop", "cart").unwrap();
    let token = join_token(data.path(), &id, Duration::from_secs(600));
    let (key, request) = keyed_svid_request(&id, Some(Credential::JoinToken(token)), None);
    let enrolled = api_client(&cp, TD)
        .request_svid(&request, None)
        .await
        .unwrap();
    let svid = svid_cell(&enrolled, &key, TD);

    let flood = Flood::open(cp.api_addr(), 1, CAP, None).await;
    let per_source = r#"ward_cp_connections_refused_total{listener="api",reason="per_source"}"#;
    wait_metric(&cp, per_source, |n| n >= (CAP - 64) as f64).await;
    let open = r#"ward_cp_connections{listener="api"}"#;
    assert_eq!(series(&cp, open).await, 64.0);

    let (_, renewal) = keyed_svid_request(&id, None, None);
    api_client(&cp, TD)
        .request_svid(&renewal, Some(&svid))
        .await
        .expect("a renewal from another address is served during the flood");
    let (during, _stop) = watch(&cp, &svid);
    until("a watch during the flood", || {
        during.up.load(Ordering::SeqCst)
    })
    .await;

    let (refused, closed) = flood.ended(MARGIN).await;
    assert_eq!((refused, closed), (0, CAP), "plain TCP: all end by a close");
    cp.shutdown().await;
}

/// The webhook: 4,096 silent connections (plain and TLS) from 64
/// addresses meet its cap (512), are closed by the timeouts, and
/// admissions are answered after; one source's flood leaves admissions
/// from elsewhere answered while it lasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_to_the_webhook_are_refused_over_the_cap_and_time_out() {
    let _one = FLOODS.lock().await;
    let (cp, _data) = start(true).await;
    let addr = cp.webhook_addr().unwrap();
    let tls = flood::tls_client(cp.bundle_pem(), &[b"h2"]);
    let tcp_flood = Flood::open(addr, 32, 64, None).await;
    let tls_flood = Flood::open_from(addr, 32, 32, 64, Some(tls)).await;
    let refused =
        r#"ward_cp_connections_refused_total{listener="webhook",reason="max_connections"}"#;
    wait_metric(&cp, refused, |n| n >= 1.0).await;
    let (refused_tcp, closed_tcp) = tcp_flood.ended(MARGIN).await;
    let (refused_tls, closed_tls) = tls_flood.ended(MARGIN).await;
    assert_eq!(refused_tcp + closed_tcp + refused_tls + closed_tls, CAP);
    assert!(refused_tls > 0, "over the cap, TLS connections are refused");
    let closed = |reason: &str| {
        format!(r#"ward_cp_connections_timed_out_total{{listener="webhook",reason="{reason}"}}"#)
    };
    let metrics = metrics(&cp).await;
    let timed_out =
        metric_value(&metrics, &closed("handshake")) + metric_value(&metrics, &closed("idle"));
    assert_eq!(
        timed_out,
        ward_control_plane::webhook::MAX_CONNECTIONS as f64,
        "every connection held was closed by a timeout"
    );
    assert_eq!(
        flood::admit(addr, cp.bundle_pem(), "after").await,
        Ok("after".to_owned())
    );

    // One source: held at 64, admissions from 127.0.0.1 answered meanwhile.
    let flood = Flood::open(addr, 1, CAP, None).await;
    let per_source = r#"ward_cp_connections_refused_total{listener="webhook",reason="per_source"}"#;
    wait_metric(&cp, per_source, |n| n >= (CAP - 64) as f64).await;
    assert_eq!(
        flood::admit(addr, cp.bundle_pem(), "during").await,
        Ok("during".to_owned())
    );
    flood.ended(MARGIN).await;
    cp.shutdown().await;
}
