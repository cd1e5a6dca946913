//! A real sidecar (`ward_proxy`, in process) on a real control plane's
//! discovery stream: an update it cannot apply is NACKed, the previous
//! policy set stays in force, and the control plane reports who refused
//! what and why.

use std::time::Duration;

use clap::Parser;
use ward_control_plane::attest::JoinTokenStore;
use ward_control_plane::data_dir::DataDir;
use ward_control_plane::policy_store::PolicyDoc;
use ward_control_plane::server::{Config, ControlPlane};
use ward_identity::SpiffeId;
use ward_proxy::config::RunArgs;

const TD: &str = "cluster.local";

const ALLOW_GET: &str = "apiVersion: security.ward.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-get, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  rules: [{to: [{operation: {methods: [GET]}}]}]
";

/// What a newer control plane could accept and this sidecar cannot load.
const FUTURE_MODE: &str = "apiVersion: security.ward.io/v1
kind: PeerAuthentication
metadata: {name: future, namespace: shop}
spec: {mtls: {mode: STRICTEST}}
";

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
}

async fn admin(cp: &ControlPlane, path: &str) -> String {
    let addr = cp.admin_addr().unwrap();
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        use std::io::{Read, Write};
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).unwrap();
        out.split_once("\r\n\r\n").unwrap().1.to_owned()
    })
    .await
    .unwrap()
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while !done().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_the_sidecar_cannot_load_is_nacked_the_previous_stays_and_the_control_plane_reports_it()
 {
    let data = tempfile::tempdir().unwrap();
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(policies.path().join("allow.yaml"), ALLOW_GET).unwrap();
    let mut config = Config::new(TD, data.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    config.policy_dir = Some(policies.path().to_owned());
    let cp = ControlPlane::start(config).await.unwrap();
    let ca = data.path().join("bundle.pem");
    std::fs::write(&ca, cp.bundle_pem()).unwrap();
    let id = SpiffeId::for_service_account(TD, "shop", "web").unwrap();
    let token = JoinTokenStore::open(&DataDir::open(data.path()).unwrap().join_tokens_dir())
        .unwrap()
        .create(&id, Duration::from_secs(60))
        .unwrap();
    let args = Cli::try_parse_from([
        "ward-proxy",
        "--inbound",
        "127.0.0.1:0=8080",
        "--admin",
        "127.0.0.1:0",
        "--control-plane",
        &cp.api_addr().to_string(),
        "--ca",
        ca.to_str().unwrap(),
        "--join-token",
        &token,
        "--spiffe-id",
        id.as_str(),
        "--label",
        "app=web",
    ])
    .unwrap()
    .run;
    let sidecar = ward_proxy::proxy::start(&args).await.unwrap();
    let engine = sidecar.policy.clone().unwrap();
    let store = cp.policy_store().clone();
    let good = store.current();
    eventually("the first policy set in force", async || {
        engine.version() == Some(good.version)
    })
    .await;

    // The control plane publishes a document this sidecar cannot load.
    let mut docs = good.docs.clone();
    docs.push(PolicyDoc {
        kind: "PeerAuthentication",
        namespace: "shop".into(),
        name: "future".into(),
        text: FUTURE_MODE.into(),
    });
    let refused = store.publish("test", good.set.clone(), docs);
    eventually("the NACK recorded by the control plane", async || {
        cp.sidecars().all()[0].policy.rejected.is_some()
    })
    .await;
    assert_eq!(
        engine.version(),
        Some(good.version),
        "the previous set stays in force"
    );
    let status = &cp.sidecars().all()[0];
    let rejected = status.policy.rejected.as_ref().unwrap();
    assert!(rejected.error.contains("STRICTEST"), "{}", rejected.error);
    assert_eq!(status.policy.acked_system_version, Some(good.version));
    assert_ne!(status.policy.acked_system_version, Some(refused));

    // Reported: the admin inventory, per policy and per sidecar, and metrics.
    let report: serde_json::Value =
        serde_json::from_str(&admin(&cp, "/debug/discovery").await).unwrap();
    let future = &report["policies"]["PeerAuthentication/shop/future"];
    assert_eq!(future["applies_to"], 1);
    assert_eq!(future["enforced_by"], 0);
    let reason = future["not_enforced"][0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("rejected update") && reason.contains("STRICTEST"),
        "{reason}"
    );
    assert_eq!(
        report["policies"]["AuthorizationPolicy/shop/allow-get"]["enforced_by"],
        1
    );
    let metrics = admin(&cp, "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "ward_discovery_nacks_total{resource_type=\"policy\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "ward_discovery_sidecars{resource_type=\"policy\",state=\"rejected\"}"
        ),
        1.0
    );
    let proxy_metrics = sidecar.metrics.render();
    assert_eq!(
        metric(
            &proxy_metrics,
            "ward_discovery_nacks_total{resource_type=\"policy\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&proxy_metrics, "ward_policy_version"),
        good.version as f64
    );

    // The operator fixes it (through the directory): enforced, in sync.
    std::fs::write(
        policies.path().join("allow.yaml"),
        ALLOW_GET.replace("[GET]", "[GET, HEAD]"),
    )
    .unwrap();
    eventually("the fixed set in force", async || {
        engine.version().is_some_and(|v| v > refused)
    })
    .await;
    eventually("the sidecar in sync", async || {
        cp.sidecars().all()[0].policy.state() == "in_sync"
    })
    .await;
    sidecar.drain(Duration::from_secs(1)).await;
    cp.shutdown().await;
}
