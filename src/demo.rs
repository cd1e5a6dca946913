//! `ward demo`: a control plane and three meshed workloads on this machine
//! (explicit mode: loopback listeners, no root, no iptables). Each workload
//! enrols with a join token and gets its X.509-SVID; the control plane
//! pushes an AuthorizationPolicy that lets only `frontend` call backend's
//! `/api/*`; requests flow over mTLS and the table shows what the backend's
//! sidecar decided and which policy decided it. Then the policy changes
//! live, and the sidecars' own metrics are printed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Parser};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use ward_control_plane::attest::JoinTokenStore;
use ward_control_plane::data_dir::DataDir;
use ward_control_plane::server::{Config, ControlPlane};
use ward_identity::SpiffeId;
use ward_proxy::config::RunArgs;
use ward_proxy::proxy::Running;

const NAMESPACE: &str = "demo";

#[derive(Args)]
pub struct DemoArgs {
    /// Trust domain of the demo mesh.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Keep everything running after the tour so Prometheus or curl can
    /// scrape the printed /metrics URLs; stop with Ctrl-C.
    #[arg(long)]
    keep_running: bool,
}

pub fn run(args: DemoArgs) -> anyhow::Result<std::process::ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(demo(args))?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// The policy in force at the start: frontend may use the backend's API.
const POLICY_V1: &str = r#"apiVersion: security.ward.io/v1
kind: AuthorizationPolicy
metadata:
  name: backend-api
  namespace: demo
spec:
  selector:
    matchLabels:
      app: backend
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/demo/sa/frontend"]
    to:
    - operation:
        methods: ["GET", "POST"]
        paths: ["/api/*"]
"#;

/// Added by the live change: the intruder may read the public catalog (a
/// second rule of `backend-api`), and nobody may reach the admin path.
const POLICY_V2_ADDITIONS: &str = r#"  - from:
    - source:
        principals: ["cluster.local/ns/demo/sa/intruder"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/api/catalog"]
---
apiVersion: security.ward.io/v1
kind: AuthorizationPolicy
metadata:
  name: no-admin
  namespace: demo
spec:
  selector:
    matchLabels:
      app: backend
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/api/admin*"]
"#;

/// A workload: its identity, its sidecar, and where the app reaches it.
struct Workload {
    name: &'static str,
    id: SpiffeId,
    proxy: Running,
}

impl Workload {
    fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.proxy.admin_addr)
    }
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let data = tempfile::tempdir().context("creating a temporary directory")?;
    let policies = data.path().join("policies");
    std::fs::create_dir_all(&policies)?;
    write_atomically(&policies.join("backend.yaml"), POLICY_V1)?;

    let mut config = Config::new(&args.trust_domain, data.path().join("cp"));
    config.listen = "127.0.0.1:0".parse()?;
    config.admin_listen = Some("127.0.0.1:0".parse()?);
    config.policy_dir = Some(policies.clone());
    let cp = ControlPlane::start(config).await?;
    let ca_file = data.path().join("bundle.pem");
    std::fs::write(&ca_file, cp.bundle_pem())?;
    println!("Ward demo: a control plane and three workloads with sidecars, on 127.0.0.1\n");
    println!(
        "control plane  https://{}  (CA for {:?}; policies from {})",
        cp.api_addr(),
        cp.trust_domain(),
        policies.display()
    );

    // The backend application, and its sidecar's inbound listener.
    let backend_app = start_backend_app().await?;
    let tokens = JoinTokenStore::open(&DataDir::open(data.path().join("cp"))?.join_tokens_dir())?;
    let enrol = |name: &'static str, listeners: Vec<String>| {
        let id = SpiffeId::for_service_account(&args.trust_domain, NAMESPACE, name);
        let tokens = &tokens;
        let cp = &cp;
        let ca_file = &ca_file;
        async move {
            let id = id?;
            let token = tokens.create(&id, Duration::from_secs(300))?;
            let mut argv: Vec<String> = vec![
                "ward-proxy".into(),
                "--admin".into(),
                "127.0.0.1:0".into(),
                "--control-plane".into(),
                cp.api_addr().to_string(),
                "--ca".into(),
                ca_file.display().to_string(),
                "--spiffe-id".into(),
                id.to_string(),
                "--join-token".into(),
                token,
                "--label".into(),
                format!("app={name}"),
            ];
            argv.extend(listeners);
            let run = ProxyCli::try_parse_from(argv)?.run;
            let proxy = ward_proxy::proxy::start(&run).await?;
            wait_ready(proxy.admin_addr)
                .await
                .with_context(|| format!("{name}'s sidecar never became ready"))?;
            anyhow::Ok(Workload { name, id, proxy })
        }
    };
    let backend = enrol(
        "backend",
        vec![
            "--inbound".into(),
            format!("127.0.0.1:0={}", backend_app.port()),
        ],
    )
    .await?;
    let backend_in = backend.proxy.inbound_addrs[0];
    let client_listeners = || {
        vec![
            "--outbound".into(),
            format!("127.0.0.1:0={backend_in}"),
            "--endpoint".into(),
            format!(
                "{backend_in}=spiffe://{}/ns/{NAMESPACE}/sa/backend",
                args.trust_domain
            ),
        ]
    };
    let frontend = enrol("frontend", client_listeners()).await?;
    let intruder = enrol("intruder", client_listeners()).await?;
    for w in [&frontend, &backend, &intruder] {
        let not_after = w
            .proxy
            .identity
            .svid
            .not_after()
            .map(ward_identity::rfc3339)
            .unwrap_or_default();
        println!("{:<14} {}  (certificate until {not_after})", w.name, w.id);
    }

    println!("\nPolicy demo/backend-api: ALLOW frontend to GET/POST backend's /api/*\n");
    let requests: &[(&Workload, &str)] = &[
        (&frontend, "/api/orders"),
        (&frontend, "/api/admin/users"),
        (&frontend, "/internal/debug"),
        (&intruder, "/api/orders"),
        (&intruder, "/api/catalog"),
    ];
    print_header();
    for (caller, path) in requests {
        show_request(caller, &backend, path).await?;
    }

    println!("\nChanging the policy file live: intruder may now GET /api/catalog, and a DENY");
    println!("policy closes /api/admin* to everyone. No restart.");
    let changed_at = Instant::now();
    write_atomically(
        &policies.join("backend.yaml"),
        &format!("{POLICY_V1}{POLICY_V2_ADDITIONS}"),
    )?;
    let flipped = wait_for_status(&intruder, "/api/catalog", 200, Duration::from_secs(5)).await?;
    println!(
        "(the backend's sidecar enforced the new policy {} ms after the file changed)\n",
        flipped.duration_since(changed_at).as_millis()
    );
    print_header();
    for (caller, path) in requests {
        show_request(caller, &backend, path).await?;
    }

    println!("\nWhat the sidecars exported (read from their own /metrics):");
    print_metric_summary(&backend).await?;
    println!("\nScrape them with Prometheus:");
    for w in [&frontend, &backend, &intruder] {
        println!("  {:<9} {}", w.name, w.metrics_url());
    }
    if let Some(admin) = cp.admin_addr() {
        println!("  control   http://{admin}/metrics");
    }
    if args.keep_running {
        println!("\nRunning until Ctrl-C (--keep-running).");
        tokio::signal::ctrl_c().await?;
    } else {
        println!("\n(run `cargo run --release -- demo --keep-running` to keep these endpoints up)");
    }
    for w in [frontend, intruder, backend] {
        w.proxy.drain(Duration::from_secs(2)).await;
    }
    cp.shutdown().await;
    Ok(())
}

#[derive(Parser)]
struct ProxyCli {
    #[command(flatten)]
    run: RunArgs,
}

fn write_atomically(path: &Path, contents: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The backend application: says what it got and who the sidecar said
/// the caller is.
async fn start_backend_app() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: hyper::Request<Incoming>| async move {
                    let caller = req
                        .headers()
                        .get("x-forwarded-client-cert")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("nobody")
                        .to_owned();
                    let body = format!(
                        "backend: {} {} for {caller}\n",
                        req.method(),
                        req.uri().path()
                    );
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn wait_ready(admin: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok((200, _)) = get(admin, "/ready").await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("not ready after 10 s")
}

/// A plain HTTP/1.1 GET, as the application would send it to its sidecar.
async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header(http::header::HOST, "backend.demo")
        .body(Full::new(Bytes::new()))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).trim().to_owned()))
}

fn print_header() {
    println!(
        "{:<9} {:<20} {:<6} {:<8} {:<22} answer",
        "caller", "request", "status", "decision", "deciding policy"
    );
}

/// Sends one request through the caller's sidecar and reads, from the
/// backend sidecar's metrics, which decision it took and which policy
/// took it.
async fn show_request(caller: &Workload, backend: &Workload, path: &str) -> anyhow::Result<()> {
    let before = decisions(backend).await?;
    let (status, body) = get(caller.proxy.outbound_addrs[0], path).await?;
    let after = decisions(backend).await?;
    let (decision, policy) = after
        .iter()
        .find(|(key, value)| before.get(*key).copied().unwrap_or(0.0) < **value)
        .map(|((action, policy), _)| (action.clone(), policy.clone()))
        .unwrap_or_else(|| ("?".into(), "?".into()));
    let answer = if status == 200 {
        body
    } else {
        body.chars().take(40).collect()
    };
    println!(
        "{:<9} {:<20} {:<6} {:<8} {:<22} {}",
        caller.name,
        format!("GET {path}"),
        status,
        decision,
        policy,
        answer
    );
    Ok(())
}

type DecisionCounts = std::collections::BTreeMap<(String, String), f64>;

/// `(action, policy)` → count, from `ward_authorization_decisions_total`.
async fn decisions(w: &Workload) -> anyhow::Result<DecisionCounts> {
    let (_, text) = get(w.proxy.admin_addr, "/metrics").await?;
    let mut out = DecisionCounts::new();
    for (labels, value) in series(&text, "ward_authorization_decisions_total") {
        let policy = match (
            label(labels, "policy_namespace"),
            label(labels, "policy_name"),
        ) {
            (Some("default"), _) | (None, _) => "default (no match)".to_owned(),
            (Some(ns), Some(name)) => format!("{ns}/{name}"),
            (Some(ns), None) => ns.to_owned(),
        };
        let action = label(labels, "action").unwrap_or("?").to_owned();
        *out.entry((action, policy)).or_default() += value;
    }
    Ok(out)
}

/// `(labels, value)` of every sample of `metric` in a text exposition.
fn series<'a>(text: &'a str, metric: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(metric)?.strip_prefix('{')?;
            let (labels, value) = rest.split_once("} ")?;
            Some((labels, value.trim().parse().ok()?))
        })
        .collect()
}

fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    labels.split("\",").find_map(|pair| {
        let (k, v) = pair.split_once("=\"")?;
        (k.trim() == name).then(|| v.trim_end_matches('"'))
    })
}

async fn print_metric_summary(backend: &Workload) -> anyhow::Result<()> {
    let (_, text) = get(backend.proxy.admin_addr, "/metrics").await?;
    println!("  backend sidecar, inbound responses by caller and status:");
    for (labels, value) in series(&text, "ward_http_responses_total") {
        if label(labels, "direction") == Some("inbound") {
            println!(
                "    {:<10} {}  {value}",
                label(labels, "peer_service_account").unwrap_or("?"),
                label(labels, "status_code").unwrap_or("?"),
            );
        }
    }
    println!("  backend sidecar, authorization decisions by policy:");
    for ((action, policy), value) in decisions(backend).await? {
        println!("    {action:<6} {policy:<24} {value}");
    }
    Ok(())
}

async fn wait_for_status(
    caller: &Workload,
    path: &str,
    want: u16,
    limit: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok((status, _)) = get(caller.proxy.outbound_addrs[0], path).await
            && status == want
        {
            return Ok(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("the policy change did not take effect within {limit:?}")
}
