use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use ward_identity::bundle::TrustBundles;
use ward_identity::tls::SvidCell;

use super::{Admin, AppProbes};
use crate::identity::WorkloadIdentity;
use crate::metrics::ProxyMetrics;
use crate::probe::{self, Check, ProbeArgs};

const REMOTE: &str = "10.1.2.3:40000";
const LOCAL: &str = "127.0.0.1:40000";

fn admin(app_probes: AppProbes) -> Admin {
    Admin {
        metrics: Arc::new(ProxyMetrics::new()),
        identity: {
            let trust = ward_identity::Trust::new(TrustBundles::new());
            WorkloadIdentity {
                svid: Arc::new(SvidCell::new()),
                bundles: trust.shared().clone(),
                trust,
                stats: Default::default(),
            }
        },
        policy: None,
        draining: CancellationToken::new(),
        app_probes,
    }
}

/// The app: `/healthz` 200 when `X-Probe: yes` was sent (400 otherwise),
/// `/moved` 302, `/broken` 500, and a listener that never answers.
async fn app_http_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    let status = match req.uri().path() {
                        "/healthz" if req.headers().get("x-probe").is_some_and(|v| v == "yes") => {
                            200
                        }
                        "/healthz" => 400,
                        "/moved" => 302,
                        _ => 500,
                    };
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::new()))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    port
}

/// Accepts and holds connections without a word.
async fn silent_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            held.push(listener.accept().await.unwrap());
        }
    });
    port
}

async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

async fn probes() -> (AppProbes, TcpListener) {
    let http = app_http_server().await;
    let silent = silent_server().await;
    let closed = closed_port().await;
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp_port = tcp.local_addr().unwrap().port();
    let json = serde_json::json!({
        "/app-health/cart/readyz": {"httpGet": {"scheme": "HTTP", "port": http, "path": "/healthz",
            "httpHeaders": [{"name": "X-Probe", "value": "yes"}]}, "timeoutSeconds": 1},
        "/app-health/cart/livez": {"tcpSocket": {"port": tcp_port}, "timeoutSeconds": 1},
        "/app-health/cart/startupz": {"httpGet": {"scheme": "HTTP", "port": http, "path": "/broken"}, "timeoutSeconds": 1},
        "/app-health/moved/readyz": {"httpGet": {"scheme": "HTTP", "port": http, "path": "moved"}, "timeoutSeconds": 1},
        "/app-health/noheader/readyz": {"httpGet": {"scheme": "HTTP", "port": http, "path": "/healthz"}, "timeoutSeconds": 1},
        "/app-health/gone/livez": {"tcpSocket": {"port": closed}, "timeoutSeconds": 1},
        "/app-health/gone/readyz": {"httpGet": {"scheme": "HTTPS", "port": closed, "path": "/"}, "timeoutSeconds": 1},
        "/app-health/tls/readyz": {"httpGet": {"scheme": "HTTPS", "port": tcp_port, "path": "/"}, "timeoutSeconds": 1},
        "/app-health/slow/readyz": {"httpGet": {"scheme": "HTTP", "port": silent, "path": "/"}, "timeoutSeconds": 1},
    });
    (AppProbes::parse(&json.to_string()).unwrap(), tcp)
}

async fn status(admin: &Admin, peer: &str, path: &str) -> StatusCode {
    admin
        .route(peer.parse().unwrap(), &Method::GET, path, None)
        .await
        .status()
}

#[tokio::test]
async fn app_probes_run_the_originals_for_any_source() {
    let (probes, _tcp) = probes().await;
    let admin = admin(probes);
    for (path, expected) in [
        ("/app-health/cart/readyz", 200),
        ("/app-health/cart/livez", 200),
        ("/app-health/cart/startupz", 503),
        ("/app-health/moved/readyz", 200),
        ("/app-health/noheader/readyz", 503),
        ("/app-health/gone/livez", 503),
        ("/app-health/gone/readyz", 503),
        ("/app-health/tls/readyz", 200),
    ] {
        assert_eq!(status(&admin, REMOTE, path).await, expected, "{path}");
    }
    let started = Instant::now();
    assert_eq!(status(&admin, REMOTE, "/app-health/slow/readyz").await, 503);
    let took = started.elapsed();
    // The bound is the behaviour: the probe's 1 s timeoutSeconds fires (the
    // silent app would hold it forever). Not before it, and within a
    // margin generous for a loaded machine.
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "timeoutSeconds honoured: {took:?}"
    );
}

#[tokio::test]
async fn only_listed_paths_are_reachable() {
    let (probes, _tcp) = probes().await;
    let admin = admin(probes);
    for path in [
        "/app-health/cart/healthz",
        "/app-health/other/readyz",
        "/app-health/",
        "/app-health/cart/readyz/",
        "/app-health/cart/readyz/../livez",
    ] {
        assert_eq!(status(&admin, REMOTE, path).await, 404, "{path}");
        assert_eq!(status(&admin, LOCAL, path).await, 404, "{path}");
    }
    // Non-GET is refused too.
    let resp = admin
        .route(
            REMOTE.parse().unwrap(),
            &Method::POST,
            "/app-health/cart/readyz",
            None,
        )
        .await;
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn ready_and_live_stay_on_loopback() {
    let admin = admin(AppProbes::default());
    assert_eq!(status(&admin, REMOTE, "/ready").await, 404);
    assert_eq!(status(&admin, REMOTE, "/live").await, 404);
    assert_eq!(status(&admin, REMOTE, "/metrics").await, 200);
    assert_eq!(status(&admin, LOCAL, "/live").await, 200);
    assert_eq!(status(&admin, "[::1]:1", "/live").await, 200);
    assert_eq!(
        status(&admin, LOCAL, "/ready").await,
        503,
        "no certificate yet"
    );
}

/// The whole path over real sockets: the admin server, `ward-proxy probe`'s
/// client and an app probe.
#[tokio::test]
async fn served_over_http() {
    let (probes, _tcp) = probes().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(Arc::new(admin(probes)).serve(listener, CancellationToken::new()));
    let args = |check| ProbeArgs {
        check,
        admin: addr,
        timeout: Duration::from_secs(2),
    };
    probe::probe(&args(Check::Live)).await.unwrap();
    let err = probe::probe(&args(Check::Ready)).await.unwrap_err();
    assert!(err.contains("no certificate yet"), "{err}");
    let get = |path: &'static str| {
        probe::http_get("127.0.0.1", addr.port(), path, &[], Duration::from_secs(3))
    };
    assert_eq!(get("/app-health/cart/readyz").await.unwrap(), 200);
    assert_eq!(get("/app-health/cart/startupz").await.unwrap(), 503);
    assert_eq!(get("/app-health/nope/readyz").await.unwrap(), 404);
}

#[test]
fn parse_checks_every_entry() {
    assert!(AppProbes::parse("").unwrap().is_empty());
    assert!(AppProbes::parse("  ").unwrap().is_empty());
    // The format the injector writes (docs/kubernetes.md).
    let doc = r#"{"/app-health/cart/readyz": {"httpGet": {"scheme": "HTTP", "port": 8080, "path": "/healthz",
                  "httpHeaders": [{"name": "X", "value": "y"}]}, "timeoutSeconds": 1},
                  "/app-health/cart/livez":  {"tcpSocket": {"port": 8080}, "timeoutSeconds": 1}}"#;
    let probes = AppProbes::parse(doc).unwrap();
    assert_eq!(probes.len(), 2);
    let get = probes
        .get("/app-health/cart/readyz")
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!((get.port, get.path.as_str()), (8080, "/healthz"));
    assert_eq!(get.http_headers[0].name, "X");

    for bad in [
        r#"not json"#,
        r#"{"/healthz": {"tcpSocket": {"port": 1}, "timeoutSeconds": 1}}"#,
        r#"{"/app-health/cart/ready": {"tcpSocket": {"port": 1}, "timeoutSeconds": 1}}"#,
        r#"{"/app-health//readyz": {"tcpSocket": {"port": 1}, "timeoutSeconds": 1}}"#,
        r#"{"/app-health/a/b/readyz": {"tcpSocket": {"port": 1}, "timeoutSeconds": 1}}"#,
        r#"{"/app-health/c/readyz": {"timeoutSeconds": 1}}"#,
        r#"{"/app-health/c/readyz": {"tcpSocket": {"port": 0}, "timeoutSeconds": 1}}"#,
        r#"{"/app-health/c/readyz": {"tcpSocket": {"port": 1}, "httpGet": {"scheme": "HTTP", "port": 1, "path": "/"}, "timeoutSeconds": 1}}"#,
        r#"{"/app-health/c/readyz": {"httpGet": {"scheme": "FTP", "port": 1, "path": "/"}, "timeoutSeconds": 1}}"#,
    ] {
        assert!(AppProbes::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn run_args_read_ward_app_probes() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: crate::config::RunArgs,
    }
    let cli = Cli::try_parse_from([
        "ward-proxy",
        "--app-probes",
        r#"{"/app-health/c/livez": {"tcpSocket": {"port": 9}, "timeoutSeconds": 2}}"#,
    ])
    .unwrap();
    assert_eq!(cli.run.app_probes.len(), 1);
    assert!(Cli::try_parse_from(["ward-proxy", "--app-probes", "{"]).is_err());
    // None by default (WARD_APP_PROBES unset in the test environment).
    if std::env::var_os("WARD_APP_PROBES").is_none() {
        let cli = Cli::try_parse_from(["ward-proxy"]).unwrap();
        assert!(cli.run.app_probes.is_empty());
    }
}

/// `/debug/authz/why` reveals policy: a caller off the pod gets what an
/// unknown path gets; a local one the decision of the set in force.
#[tokio::test]
async fn why_explains_on_the_set_in_force_to_local_callers_only() {
    use crate::policy::{MtlsMode, PolicyAuthorizer, WorkloadSelector};
    use std::collections::BTreeMap;
    use ward_policy::{EvalOptions, PolicySet};

    let request = br#"{"protocol": "http", "source": {"spiffe_id": "spiffe://cluster.local/ns/web/sa/other", "ip": "10.0.0.1"}, "destination": {"ip": "10.0.0.2", "port": 8080}, "method": "GET", "path": "/api/x"}"#;
    let mut admin = admin(AppProbes::default());
    let remote: SocketAddr = REMOTE.parse().unwrap();
    let local: SocketAddr = LOCAL.parse().unwrap();
    let status = |r: &Response<crate::http::Body>| r.status();
    assert_eq!(
        status(&admin.why(remote, &Method::POST, request)),
        StatusCode::NOT_FOUND
    );
    // No policy engine (no control plane, no --policy).
    assert_eq!(
        status(&admin.why(local, &Method::POST, request)),
        StatusCode::NOT_IMPLEMENTED
    );

    let engine = Arc::new(PolicyAuthorizer::new(
        WorkloadSelector {
            namespace: "shop".into(),
            labels: BTreeMap::from([("app".to_owned(), "api".to_owned())]),
            options: EvalOptions::default(),
        },
        MtlsMode::Strict,
        admin.metrics.clone(),
    ));
    admin.policy = Some(engine.clone());
    assert_eq!(
        status(&admin.why(local, &Method::POST, request)),
        StatusCode::SERVICE_UNAVAILABLE,
        "no set yet"
    );
    let set = PolicySet::parse_str(
        "p.yaml",
        "apiVersion: security.ward.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-frontend, namespace: shop}\nspec:\n  rules:\n  - from:\n    - source: {principals: [cluster.local/ns/web/sa/frontend]}\n",
    )
    .unwrap();
    engine.update(7, set);
    let response = admin.why(local, &Method::POST, request);
    assert_eq!(status(&response), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let report: super::why::WhyReport = serde_json::from_slice(&body).unwrap();
    assert_eq!(report.policy_version, 7);
    assert_eq!(report.decision, "deny");
    assert_eq!(
        report.denied_by.as_deref(),
        Some("default-deny: no ALLOW policy matched")
    );
    assert_eq!(report.near_misses.len(), 1);
    assert_eq!(report.near_misses[0].policy, "shop/allow-frontend");
    assert_eq!(report.near_misses[0].field, "from[0].source.principals");
    assert_eq!(report.workload.labels["app"], "api");
    assert_eq!(report.mtls_mode, "STRICT");

    let bad = admin.why(local, &Method::POST, b"{\"protocol\": \"ftp\"}");
    assert_eq!(status(&bad), StatusCode::BAD_REQUEST);
    assert_eq!(
        status(&admin.why(local, &Method::GET, request)),
        StatusCode::METHOD_NOT_ALLOWED
    );
}
