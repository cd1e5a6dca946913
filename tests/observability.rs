//! Observability end to end, on loopback without root (`support/explicit.rs`):
//! a control plane and sidecars in explicit mode carry allowed and denied
//! traffic, and their `/metrics` are checked by `promtool`, by a real
//! Prometheus scraping them, against the exact traffic sent, for bounded
//! cardinality, and against the dashboard and alert rules shipped in
//! `deploy/observability/`.
//!
//! Needs `prometheus`, `promtool` and `curl` (Debian: `prometheus`, `curl`);
//! skips without them (fails under WARD_TEST_STRICT=1).

#[path = "support/explicit.rs"]
mod explicit;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use explicit::{
    BackendAndCallers, Cluster, NAMESPACE, Sample, Workload, assert_ok, metric_sum, parse_samples,
    wait_until,
};

/// `frontend` may call `backend`; `intruder` is denied by name.
const POLICIES: &[(&str, &str)] = &[
    (
        "allow-frontend.yaml",
        r#"apiVersion: security.ward.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-frontend
  namespace: obs
spec:
  selector:
    matchLabels:
      app: backend
  action: ALLOW
  rules:
    - from:
        - source:
            principals: ["cluster.local/ns/obs/sa/frontend"]
      to:
        - operation:
            paths: ["/echo", "/echo/*", "/status/*"]
"#,
    ),
    (
        "deny-intruder.yaml",
        r#"apiVersion: security.ward.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-intruder
  namespace: obs
spec:
  selector:
    matchLabels:
      app: backend
  action: DENY
  rules:
    - from:
        - source:
            principals: ["cluster.local/ns/obs/sa/intruder"]
"#,
    ),
];

const DENY_POLICY: &str = "deny-intruder";

fn prerequisites() -> bool {
    ward_testkit::require_tool("prometheus")
        && ward_testkit::require_tool("promtool")
        && ward_testkit::require_tool("openssl")
        && ward_testkit::require_tool("curl")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn observability_dir() -> PathBuf {
    repo().join("deploy/observability")
}

/// The control plane, `backend` (HTTP app behind an inbound listener) and
/// its two callers. Fields drop in order: workloads before the cluster.
struct Mesh {
    frontend: Workload,
    intruder: Workload,
    backend: Workload,
    cluster: Cluster,
}

impl Mesh {
    fn start() -> Mesh {
        let cluster = Cluster::start(POLICIES);
        let BackendAndCallers {
            frontend,
            intruder,
            backend,
        } = cluster.backend_and_callers();
        Mesh {
            frontend,
            intruder,
            backend,
            cluster,
        }
    }

    /// `allowed` 200s and one 500 from frontend, `denied` 403s for intruder.
    fn traffic(&self, allowed: usize, denied: usize) {
        let ok: Vec<String> = (0..allowed).map(|i| format!("/echo?n={i}")).collect();
        assert!(self.frontend.curl_many(&ok).iter().all(|&c| c == 200));
        assert_eq!(self.frontend.curl("/status/500"), 500);
        let no: Vec<String> = (0..denied).map(|i| format!("/echo?n={i}")).collect();
        assert!(self.intruder.curl_many(&no).iter().all(|&c| c == 403));
    }

    /// Traffic that exercises the failure metrics: a client without a mesh
    /// certificate (TLS handshake failure) and plaintext (refused in STRICT)
    /// straight at backend's inbound listener.
    fn failures(&self) {
        let inbound = self.backend.inbound.unwrap();
        let tls = Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "--max-time", "5"])
            .arg(format!("https://{inbound}/echo"))
            .status()
            .unwrap();
        assert!(!tls.success(), "a client without a certificate got through");
        let plain = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "--max-time", "5"])
            .arg(format!("http://{inbound}/echo"))
            .status()
            .unwrap();
        assert!(!plain.success(), "plaintext got through in STRICT mode");
        let backend = &self.backend;
        wait_until(Duration::from_secs(10), "failure metrics", || {
            let m = backend.metrics();
            metric_sum(&m, "ward_tls_handshake_failures_total", &[]) >= 1.0
                && metric_sum(&m, "ward_connections_refused_total", &[]) >= 1.0
        });
    }
}

/// Waits until `name{labels}` summed over `workload`'s /metrics equals `want`.
fn wait_for_value(workload: &Workload, name: &str, labels: &[(&str, &str)], want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = workload.metrics();
        let got = metric_sum(&metrics, name, labels);
        if got == want {
            return metrics;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {name}{labels:?} = {got}, want {want}\n{}",
            workload.name,
            metrics
                .lines()
                .filter(|l| l.starts_with(name))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `promtool check metrics` on `text` (stdin); panics with its output.
fn promtool_check_metrics(text: &str, what: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics on {what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_the_metrics_under_traffic() {
    if !prerequisites() {
        return;
    }
    let mesh = Mesh::start();
    mesh.traffic(20, 5);
    mesh.failures();
    for workload in [&mesh.backend, &mesh.frontend, &mesh.intruder] {
        let metrics = workload.metrics();
        assert!(metrics.contains("ward_http_responses_total"), "{metrics}");
        promtool_check_metrics(&metrics, &format!("the {} sidecar", workload.name));
    }
    let cp = mesh.cluster.metrics();
    // One certificate per sidecar: backend, frontend and intruder.
    assert_eq!(
        metric_sum(&cp, "ward_ca_certificates_issued_total", &[]),
        3.0,
        "{cp}"
    );
    promtool_check_metrics(&cp, "the control plane");
}

#[test]
fn counters_match_the_traffic_sent() {
    if !prerequisites() {
        return;
    }
    let mesh = Mesh::start();
    const ALLOWED: usize = 37;
    const DENIED: usize = 11;
    mesh.traffic(ALLOWED, DENIED);
    let n = ALLOWED as f64;
    let m = DENIED as f64;
    let peer = |sa| [("peer_namespace", NAMESPACE), ("peer_service_account", sa)];

    // Backend (server side): per request, by the caller's identity.
    let frontend = peer("frontend");
    let ok = [
        ("direction", "inbound"),
        ("status_code", "200"),
        frontend[0],
        frontend[1],
    ];
    let backend = wait_for_value(&mesh.backend, "ward_http_responses_total", &ok, n);
    let e500 = [
        ("direction", "inbound"),
        ("status_code", "500"),
        ("status_class", "5xx"),
    ];
    assert_eq!(
        metric_sum(&backend, "ward_http_responses_total", &e500),
        1.0
    );
    let inbound_frontend = [("direction", "inbound"), frontend[0], frontend[1]];
    assert_eq!(
        metric_sum(&backend, "ward_http_requests_total", &inbound_frontend),
        n + 1.0
    );
    assert_eq!(
        metric_sum(
            &backend,
            "ward_http_request_duration_seconds_count",
            &inbound_frontend
        ),
        n + 1.0
    );
    // Denials: attributed to the DENY policy, one per request, each a 403.
    let denied = [
        ("action", "deny"),
        ("policy_namespace", NAMESPACE),
        ("policy_name", DENY_POLICY),
        ("protocol", "http"),
    ];
    assert_eq!(
        metric_sum(&backend, "ward_authorization_decisions_total", &denied),
        m
    );
    assert_eq!(
        metric_sum(
            &backend,
            "ward_authorization_decisions_total",
            &[("action", "deny")]
        ),
        m,
        "no other denial"
    );
    let intruder = peer("intruder");
    let forbidden = [
        ("direction", "inbound"),
        ("status_code", "403"),
        intruder[0],
        intruder[1],
    ];
    assert_eq!(
        metric_sum(&backend, "ward_http_responses_total", &forbidden),
        m
    );
    assert_eq!(
        metric_sum(
            &backend,
            "ward_http_responses_total",
            &[("status_code", "403")]
        ),
        m
    );
    assert_eq!(
        metric_sum(
            &backend,
            "ward_authorization_decisions_total",
            &[("action", "allow"), ("policy_name", "allow-frontend")]
        ),
        n + 1.0
    );

    // Client sides: outbound, by the destination's identity.
    let to_backend = peer("backend");
    let out_ok = [
        ("direction", "outbound"),
        ("status_code", "200"),
        to_backend[0],
        to_backend[1],
    ];
    wait_for_value(&mesh.frontend, "ward_http_responses_total", &out_ok, n);
    let out_403 = [
        ("direction", "outbound"),
        ("status_code", "403"),
        to_backend[0],
        to_backend[1],
    ];
    wait_for_value(&mesh.intruder, "ward_http_responses_total", &out_403, m);
    // Every curl request came on its own connection (Connection: close).
    let outbound = [("direction", "outbound"), to_backend[0], to_backend[1]];
    wait_for_value(
        &mesh.frontend,
        "ward_tcp_connections_closed_total",
        &outbound,
        n + 1.0,
    );
}

#[test]
fn tcp_bytes_are_counted_when_the_connection_closes() {
    if !prerequisites() {
        return;
    }
    let cluster = Cluster::start(&[]);
    let echo = cluster.serving("echo", &["tcp-echo"]);
    let client = cluster.calling("client", &echo);
    // Not HTTP, so carried as opaque TCP.
    let payload = "0123456789 opaque payload for the byte counters ~~~ 0123456789";
    let out = Command::new(&explicit::bins().testapp)
        .args(["tcp-client", "--connect"])
        .arg(client.outbound.unwrap().to_string())
        .args(["--send", payload])
        .output()
        .unwrap();
    let echoed = assert_ok(out, "ward-testapp tcp-client");
    let bye = format!("bye {}\n", payload.len());
    assert_eq!(echoed, format!("{payload}{bye}"));
    let (sent_by_app, received_by_app) = (payload.len() as f64, (payload.len() + bye.len()) as f64);

    // The client's sidecar, once the connection closed: exactly the
    // application's bytes (its downstream is the plaintext application).
    let outbound = [
        ("direction", "outbound"),
        ("peer_namespace", NAMESPACE),
        ("peer_service_account", "echo"),
    ];
    let m = wait_for_value(&client, "ward_tcp_connections_closed_total", &outbound, 1.0);
    assert_eq!(
        metric_sum(&m, "ward_tcp_received_bytes_total", &outbound),
        sent_by_app
    );
    assert_eq!(
        metric_sum(&m, "ward_tcp_sent_bytes_total", &outbound),
        received_by_app
    );
    assert_eq!(
        metric_sum(
            &m,
            "ward_tcp_connections_open",
            &[("direction", "outbound")]
        ),
        0.0
    );

    // The server's sidecar: its downstream is the client's sidecar, over
    // mTLS; it counts what crossed the wire (TLS handshake and records
    // included), so at least the payload each way.
    let inbound = [
        ("direction", "inbound"),
        ("peer_namespace", NAMESPACE),
        ("peer_service_account", "client"),
    ];
    let m = wait_for_value(&echo, "ward_tcp_connections_closed_total", &inbound, 1.0);
    let received = metric_sum(&m, "ward_tcp_received_bytes_total", &inbound);
    let sent = metric_sum(&m, "ward_tcp_sent_bytes_total", &inbound);
    eprintln!(
        "tcp bytes: payload {sent_by_app} → outbound received {sent_by_app}, inbound (wire) received {received}; echo {received_by_app} → inbound (wire) sent {sent}"
    );
    assert!(received >= sent_by_app, "{received}");
    assert!(sent >= received_by_app, "{sent}");
    assert_eq!(
        metric_sum(
            &m,
            "ward_authorization_decisions_total",
            &[("action", "allow"), ("protocol", "tcp")]
        ),
        1.0
    );
}

/// The `ward_` series of a text exposition (name and sorted labels).
fn ward_series(text: &str) -> BTreeSet<String> {
    parse_samples(text)
        .iter()
        .filter(|s| s.name.starts_with("ward_"))
        .map(Sample::series)
        .collect()
}

fn looks_like_ip(value: &str) -> bool {
    value.parse::<std::net::IpAddr>().is_ok()
        || value.parse::<SocketAddr>().is_ok()
        || value
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .any(|part| part.split('.').count() == 4 && part.parse::<std::net::Ipv4Addr>().is_ok())
}

#[test]
fn series_cardinality_does_not_follow_the_traffic() {
    if !prerequisites() {
        return;
    }
    let mesh = Mesh::start();
    // Warm-up: one request of each kind.
    mesh.traffic(1, 1);
    let workloads = [&mesh.backend, &mesh.frontend, &mesh.intruder];
    wait_for_value(
        &mesh.frontend,
        "ward_tcp_connections_closed_total",
        &[("direction", "outbound")],
        2.0,
    );
    let before: Vec<BTreeSet<String>> = workloads
        .iter()
        .map(|w| ward_series(&w.metrics()))
        .collect();

    // Thousands of distinct paths and queries, each on a new connection
    // (so a new client port each time).
    const REQUESTS: usize = 2000;
    let seed = std::process::id();
    let paths: Vec<String> = (0..REQUESTS)
        .map(|i| {
            format!(
                "/echo/zq{seed:x}-{:016x}?q={i}",
                (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            )
        })
        .collect();
    let started = Instant::now();
    let codes = mesh.frontend.curl_many(&paths);
    let elapsed = started.elapsed();
    assert!(codes.iter().all(|&c| c == 200), "{codes:?}");
    let denied: Vec<String> = paths[..200].to_vec();
    assert!(mesh.intruder.curl_many(&denied).iter().all(|&c| c == 403));
    mesh.traffic(1, 1);
    eprintln!(
        "cardinality: {REQUESTS} requests with distinct paths in {elapsed:?}; series before: {:?}",
        before.iter().map(BTreeSet::len).collect::<Vec<_>>()
    );
    wait_for_value(
        &mesh.backend,
        "ward_http_responses_total",
        &[
            ("direction", "inbound"),
            ("peer_service_account", "frontend"),
        ],
        (REQUESTS + 4) as f64,
    );

    for (workload, before) in workloads.iter().zip(&before) {
        let text = workload.metrics();
        let after = ward_series(&text);
        assert_eq!(
            &after,
            before,
            "{}: series appeared {:?} / disappeared {:?}",
            workload.name,
            after.difference(before).collect::<Vec<_>>(),
            before.difference(&after).collect::<Vec<_>>()
        );
        for sample in parse_samples(&text) {
            for (key, value) in &sample.labels {
                assert!(
                    !value.contains('/') && !value.contains('?') && !value.contains("zq"),
                    "{}: label {key}={value:?} of {} looks like a path",
                    workload.name,
                    sample.name
                );
                assert!(
                    !looks_like_ip(value),
                    "{}: label {key}={value:?} of {} looks like an address",
                    workload.name,
                    sample.name
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Dashboard and alert rules against the live metrics.

/// Metric families exposed live (name → type), from a mesh that carried
/// allowed, denied, failed and refused traffic and saw a policy change and
/// a rejected policy set: the union over the three sidecars and the
/// control plane. Computed once per test process.
fn live_families() -> &'static BTreeMap<String, String> {
    static FAMILIES: OnceLock<BTreeMap<String, String>> = OnceLock::new();
    FAMILIES.get_or_init(|| {
        let mesh = Mesh::start();
        mesh.traffic(3, 2);
        mesh.failures();
        let mut texts: Vec<String> = [&mesh.backend, &mesh.frontend, &mesh.intruder]
            .iter()
            .map(|w| w.metrics())
            .collect();
        // A rejected policy set (the previous one stays in force).
        mesh.cluster
            .write_policy("broken.yaml", "apiVersion: security.ward.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: broken}\nspec: {action: MAYBE}\n");
        let cluster = &mesh.cluster;
        wait_until(Duration::from_secs(15), "a rejected policy set", || {
            metric_sum(
                &cluster.metrics(),
                "ward_cp_policy_sets_total",
                &[("result", "rejected")],
            ) >= 1.0
        });
        texts.push(cluster.metrics());
        let mut families = BTreeMap::new();
        for text in &texts {
            for line in text.lines() {
                if let Some(rest) = line.strip_prefix("# TYPE ") {
                    let mut parts = rest.split_whitespace();
                    if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                        families.insert(name.to_owned(), kind.to_owned());
                    }
                }
            }
        }
        families
    })
}

/// Metric names an expression refers to: `ward_…` and `process_…`
/// identifiers (label names never start that way).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let rest = &expr[i..];
        if boundary && (rest.starts_with("ward_") || rest.starts_with("process_")) {
            let len = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(rest.len());
            names.insert(rest[..len].to_owned());
            i += len;
        } else {
            i += 1;
        }
    }
    names
}

/// Whether `name` is a series name of a live family: the family itself, or
/// `_bucket` of a histogram, `_sum`/`_count` of a histogram or summary.
fn is_exported(name: &str, families: &BTreeMap<String, String>) -> bool {
    if families.contains_key(name) {
        return true;
    }
    let suffixed = |suffix: &str, kinds: &[&str]| {
        name.strip_suffix(suffix)
            .and_then(|base| families.get(base))
            .is_some_and(|kind| kinds.contains(&kind.as_str()))
    };
    suffixed("_bucket", &["histogram"])
        || suffixed("_sum", &["histogram", "summary"])
        || suffixed("_count", &["histogram", "summary"])
}

/// Every PromQL expression of the dashboard (panel targets and query
/// variables), in panel order.
fn dashboard_exprs() -> Vec<(String, String)> {
    let path = observability_dir().join("grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("dashboard JSON");
    let mut exprs = Vec::new();
    fn walk(value: &serde_json::Value, title: &str, out: &mut Vec<(String, String)>) {
        match value {
            serde_json::Value::Object(map) => {
                let title = map
                    .get("title")
                    .and_then(|t| t.as_str())
                    .unwrap_or(title)
                    .to_owned();
                if let Some(expr) = map.get("expr").and_then(|e| e.as_str()) {
                    out.push((title.clone(), expr.to_owned()));
                }
                for v in map.values() {
                    walk(v, &title, out);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, title, out)),
            _ => {}
        }
    }
    walk(&dashboard["panels"], "", &mut exprs);
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = var["query"]["query"].as_str() {
            exprs.push((format!("variable {}", var["name"]), query.to_owned()));
        }
    }
    exprs
}

/// The alert rules of the plain rule file: (alert name, expression).
fn alert_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(observability_dir().join("alerts.yml")).unwrap();
    let rules: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let mut out = Vec::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            out.push((
                rule["alert"].as_str().unwrap().to_owned(),
                rule["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

/// Grafana's variables replaced so Prometheus can evaluate the query.
fn grafana_to_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__range", "1h")
        .replace("$namespace", ".*")
}

#[test]
fn dashboard_queries_name_only_exported_metrics() {
    if !prerequisites() {
        return;
    }
    let families = live_families();
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 20, "{exprs:?}");
    let mut panels_seen = BTreeSet::new();
    for (title, expr) in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{title}: no metric in {expr}");
        for name in &names {
            assert!(
                is_exported(name, families),
                "dashboard panel {title:?}: {name} is not exported (live families: {:?})",
                families.keys().collect::<Vec<_>>()
            );
        }
        panels_seen.insert(title.as_str());
    }
    // What the dashboard is for.
    for wanted in [
        "Inbound requests by peer identity",
        "Request latency (inbound)",
        "Denials by policy",
        "TLS handshake failures by reason",
        "Certificates expiring",
        "Policy version",
        "Control plane connection",
    ] {
        assert!(panels_seen.contains(wanted), "no panel {wanted:?}");
    }
    let latency: Vec<&String> = exprs
        .iter()
        .filter(|(t, _)| t == "Request latency (inbound)")
        .map(|(_, e)| e)
        .collect();
    for q in ["0.5", "0.9", "0.99"] {
        assert!(
            latency
                .iter()
                .any(|e| e.contains(&format!("histogram_quantile({q},"))
                    && e.contains("ward_http_request_duration_seconds_bucket")),
            "p{q} missing: {latency:?}"
        );
    }
    // The checker itself: suffixes only on the right kinds of family.
    assert!(is_exported(
        "ward_http_request_duration_seconds_bucket",
        families
    ));
    assert!(!is_exported("ward_http_requests_total_bucket", families));
    assert!(!is_exported("ward_http_requests_count", families));
}

#[test]
fn alert_rules_pass_promtool_and_name_only_exported_metrics() {
    if !prerequisites() {
        return;
    }
    let dir = observability_dir();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(dir.join("alerts.yml"))
        .output()
        .unwrap();
    let text = assert_ok(out, "promtool check rules");
    assert!(text.contains("SUCCESS"), "{text}");

    // The PrometheusRule carries exactly the same groups.
    let plain: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("alerts.yml")).unwrap()).unwrap();
    let operator: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(dir.join("prometheus-rule.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(operator["kind"].as_str(), Some("PrometheusRule"));
    assert_eq!(
        plain["groups"], operator["spec"]["groups"],
        "alerts.yml and prometheus-rule.yaml differ"
    );

    let alerts = alert_exprs();
    let names: BTreeSet<&str> = alerts.iter().map(|(a, _)| a.as_str()).collect();
    for wanted in [
        "WardCertificateExpiringSoon",
        "WardDenyRateSpike",
        "WardPolicySetRejected",
        "WardControlPlaneUnreachable",
        "WardTLSHandshakeFailures",
    ] {
        assert!(names.contains(wanted), "no alert {wanted}: {names:?}");
    }
    let families = live_families();
    for (alert, expr) in &alerts {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{alert}: no metric in {expr}");
        for name in names {
            assert!(
                is_exported(&name, families),
                "alert {alert}: {name} is not exported"
            );
        }
    }
}

#[test]
fn scrape_config_is_valid() {
    if !prerequisites() {
        return;
    }
    // Debian's Prometheus is built without Kubernetes service discovery, so
    // the kubernetes_sd_configs are swapped for a static target: everything
    // else (relabelling regexes and actions, rule_files) is checked as is.
    let dir = observability_dir();
    let text = std::fs::read_to_string(dir.join("prometheus-scrape.yml")).unwrap();
    let mut config: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let jobs = config["scrape_configs"].as_sequence_mut().unwrap();
    let mut job_names = Vec::new();
    for job in jobs.iter_mut() {
        let map = job.as_mapping_mut().unwrap();
        let sd = map
            .remove("kubernetes_sd_configs")
            .expect("kubernetes_sd_configs");
        let role = sd[0]["role"].as_str().unwrap().to_owned();
        map.insert(
            "static_configs".into(),
            serde_yaml_ng::from_str("[{targets: ['127.0.0.1:1']}]").unwrap(),
        );
        let relabel = serde_yaml_ng::to_string(&map["relabel_configs"]).unwrap();
        job_names.push((map["job_name"].as_str().unwrap().to_owned(), role, relabel));
    }
    let proxies = job_names
        .iter()
        .find(|(name, _, _)| name == "ward-proxies")
        .expect("ward-proxies job");
    assert_eq!(proxies.1, "pod");
    for needed in [
        "__meta_kubernetes_pod_annotation_prometheus_io_scrape",
        "__meta_kubernetes_pod_annotation_prometheus_io_port",
        "__meta_kubernetes_pod_annotation_prometheus_io_path",
    ] {
        assert!(proxies.2.contains(needed), "{needed}");
    }
    config["rule_files"] =
        serde_yaml_ng::from_str(&format!("[{:?}]", dir.join("alerts.yml").to_str().unwrap()))
            .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("prometheus.yml");
    std::fs::write(&file, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
    let out = Command::new("promtool")
        .args(["check", "config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_ok(out, "promtool check config");
}

// ---------------------------------------------------------------------------
// A real Prometheus.

/// A query result: one series' labels and value.
type Series = (BTreeMap<String, String>, f64);

/// `prometheus` on loopback scraping `targets` (job, workload, admin
/// address) every second; killed on drop.
struct Prometheus {
    child: std::process::Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Prometheus {
    fn start(targets: &[(&str, &str, SocketAddr)], rule_file: Option<&Path>) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], explicit::free_port()));
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n",
        );
        if let Some(rules) = rule_file {
            config.push_str(&format!("rule_files:\n  - {:?}\n", rules.to_str().unwrap()));
        }
        config.push_str("scrape_configs:\n");
        let mut jobs: BTreeMap<&str, Vec<(&str, SocketAddr)>> = BTreeMap::new();
        for (job, workload, addr) in targets {
            jobs.entry(*job).or_default().push((*workload, *addr));
        }
        for (job, targets) in jobs {
            config.push_str(&format!("  - job_name: {job}\n    static_configs:\n"));
            for (workload, addr) in targets {
                config.push_str(&format!(
                    "      - targets: ['{addr}']\n        labels: {{workload: {workload}, namespace: {NAMESPACE}, pod: {workload}}}\n"
                ));
            }
        }
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, &config).unwrap();
        let log = dir.path().join("prometheus.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::from(log_file.try_clone().unwrap()))
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("run prometheus");
        let mut prometheus = Prometheus {
            child,
            addr,
            _dir: dir,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(explicit::http_get(addr, "/-/ready"), Ok((200, _))) {
            assert!(
                Instant::now() < deadline && matches!(prometheus.child.try_wait(), Ok(None)),
                "prometheus did not start:\n{config}\n{}",
                explicit::tail(&prometheus.log, 30)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        prometheus
    }

    /// `/api/v1/query`: the result vector as (labels, value).
    fn query(&self, promql: &str) -> Result<Vec<Series>, String> {
        let (status, body) = explicit::http_get(
            self.addr,
            &format!("/api/v1/query?query={}", url_encode(promql)),
        )
        .map_err(|e| e.to_string())?;
        let json: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{status}: {e}: {body}"))?;
        if json["status"] != "success" {
            return Err(format!("{promql}: {body}"));
        }
        let result = &json["data"]["result"];
        let Some(vector) = result.as_array() else {
            // A scalar: [time, "value"].
            return Ok(vec![(
                BTreeMap::new(),
                result[1]
                    .as_str()
                    .unwrap_or("NaN")
                    .parse()
                    .unwrap_or(f64::NAN),
            )]);
        };
        Ok(vector
            .iter()
            .map(|series| {
                let labels = series["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect();
                let value = series["value"][1].as_str().unwrap().parse().unwrap();
                (labels, value)
            })
            .collect())
    }

    /// Waits (bounded) until `promql` returns exactly one series with
    /// value `want`; returns its labels.
    fn wait_for(&self, promql: &str, want: f64) -> BTreeMap<String, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.query(promql);
            if let Ok(series) = &got
                && series.len() == 1
                && series[0].1 == want
            {
                return series[0].0.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{promql}: want one series = {want}, got {got:?}\n{}",
                explicit::tail(&self.log, 20)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn prometheus_scrapes_requests_denials_and_tls() {
    if !prerequisites() {
        return;
    }
    let mesh = Mesh::start();
    const ALLOWED: usize = 25;
    const DENIED: usize = 7;
    mesh.traffic(ALLOWED, DENIED);
    mesh.failures();
    let prometheus = Prometheus::start(
        &[
            ("ward-control-plane", "control-plane", mesh.cluster.admin),
            ("ward-proxies", "backend", mesh.backend.admin),
            ("ward-proxies", "frontend", mesh.frontend.admin),
            ("ward-proxies", "intruder", mesh.intruder.admin),
        ],
        Some(&observability_dir().join("alerts.yml")),
    );
    let started = Instant::now();
    prometheus.wait_for("count(up == 1)", 4.0);

    // Requests by the caller's identity, on the server side.
    let labels = prometheus.wait_for(
        r#"ward_http_responses_total{workload="backend",direction="inbound",status_code="200",peer_service_account="frontend"}"#,
        ALLOWED as f64,
    );
    assert_eq!(labels["peer_namespace"], NAMESPACE);
    assert_eq!(labels["status_class"], "2xx");
    assert_eq!(labels["job"], "ward-proxies");
    prometheus.wait_for(
        r#"ward_http_responses_total{workload="backend",direction="inbound",status_code="500",peer_service_account="frontend"}"#,
        1.0,
    );
    // Denials by policy, and the 403s they produced.
    let labels = prometheus.wait_for(
        r#"ward_authorization_decisions_total{workload="backend",action="deny"}"#,
        DENIED as f64,
    );
    assert_eq!(labels["policy_namespace"], NAMESPACE);
    assert_eq!(labels["policy_name"], DENY_POLICY);
    assert_eq!(labels["protocol"], "http");
    prometheus.wait_for(
        r#"sum(ward_http_responses_total{workload="backend",status_code="403",peer_service_account="intruder"})"#,
        DENIED as f64,
    );
    prometheus.wait_for(
        r#"sum by (peer_service_account) (ward_http_responses_total{workload="intruder",direction="outbound",status_code="403"})"#,
        DENIED as f64,
    );
    // mTLS: handshakes on both sides, and the certificate-less client.
    for (workload, direction) in [("backend", "inbound"), ("frontend", "outbound")] {
        let series = prometheus
            .query(&format!(
                r#"ward_tls_handshakes_total{{workload="{workload}",direction="{direction}"}} >= 1"#
            ))
            .unwrap();
        assert_eq!(series.len(), 1, "{workload} {direction}: {series:?}");
    }
    let failures = prometheus
        .query(r#"ward_tls_handshake_failures_total{workload="backend",direction="inbound"}"#)
        .unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(!failures[0].0["reason"].is_empty());
    eprintln!("tls failure reason: {}", failures[0].0["reason"]);
    prometheus.wait_for(
        r#"sum(ward_connections_refused_total{workload="backend",reason="plaintext_in_strict_mode"})"#,
        1.0,
    );
    // Control plane and its connections.
    prometheus.wait_for("count(ward_control_plane_connected == 1)", 3.0);
    prometheus.wait_for(r#"ward_cp_watch_streams{job="ward-control-plane"}"#, 3.0);
    prometheus.wait_for(r#"ward_ca_certificates_issued_total"#, 3.0);
    let versions = prometheus.query("ward_policy_version").unwrap();
    assert_eq!(versions.len(), 3, "{versions:?}");
    let cp_version = prometheus.query("ward_cp_policy_version").unwrap();
    assert!(
        versions
            .iter()
            .all(|(_, v)| *v == cp_version[0].1 && *v >= 1.0)
    );
    eprintln!(
        "prometheus caught up with every expected series {:?} after start",
        started.elapsed()
    );

    // Every dashboard query and alert expression evaluates.
    for (title, expr) in dashboard_exprs() {
        if title.starts_with("variable") {
            continue;
        }
        let promql = grafana_to_promql(&expr);
        prometheus
            .query(&promql)
            .unwrap_or_else(|e| panic!("dashboard panel {title:?}: {e}"));
    }
    for (alert, expr) in alert_exprs() {
        prometheus
            .query(&expr)
            .unwrap_or_else(|e| panic!("alert {alert}: {e}"));
    }
    // The dashboard's latency quantiles have data once requests arrive
    // while Prometheus watches (a rate needs two samples apart).
    let latency: Vec<String> = dashboard_exprs()
        .into_iter()
        .filter(|(title, _)| title == "Request latency (inbound)")
        .map(|(_, expr)| grafana_to_promql(&expr))
        .collect();
    assert_eq!(latency.len(), 3);
    let deadline = Instant::now() + Duration::from_secs(30);
    let quantiles = loop {
        mesh.traffic(5, 0);
        let values: Vec<f64> = latency
            .iter()
            .filter_map(|q| prometheus.query(q).ok())
            .filter(|r| r.len() == 1)
            .map(|r| r[0].1)
            .filter(|v| v.is_finite())
            .collect();
        if values.len() == 3 {
            break values;
        }
        assert!(
            Instant::now() < deadline,
            "no latency quantiles: {latency:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("inbound latency p50/p90/p99 (s): {quantiles:?}");
    // Ordered and non-zero; how low they are is a speed figure (benches/),
    // not claimed on a shared machine.
    assert!(quantiles[0] > 0.0 && quantiles[0] <= quantiles[1] && quantiles[1] <= quantiles[2]);
    // Every rule loads and evaluates (health "ok", not merely "not err"),
    // and with these proxies healthy none is pending or firing.
    let rules = || -> Vec<serde_json::Value> {
        let (status, body) = explicit::http_get(prometheus.addr, "/api/v1/rules").unwrap();
        assert_eq!(status, 200, "{body}");
        let rules: serde_json::Value = serde_json::from_str(&body).unwrap();
        rules["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|group| group["rules"].as_array().unwrap().clone())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let evaluated = loop {
        let rules = rules();
        if rules.iter().all(|rule| rule["health"] == "ok") {
            break rules;
        }
        assert!(
            Instant::now() < deadline,
            "rules not all evaluated ok: {rules:#?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(evaluated.len(), alert_exprs().len());
    for rule in &evaluated {
        assert_eq!(rule["state"], "inactive", "{rule:#}");
    }
}

#[test]
fn certificate_metrics_track_the_svid() {
    if !prerequisites() {
        return;
    }
    let cluster = Cluster::start(&[]);
    let workload = cluster.serving("svid", &["http"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let metrics = workload.metrics();
    let expiry = metric_sum(&metrics, "ward_certificate_expiry_timestamp_seconds", &[]);
    assert!(
        expiry > now && expiry < now + 25.0 * 3600.0,
        "expiry {expiry}, now {now} (SVID TTL 24h)"
    );
    // The gauge is the notAfter of the certificate the inbound presents
    // (to the second: openssl's -checkend is relative to its own clock).
    let pem = explicit::served_certificate(workload.inbound.unwrap());
    let expires_within = |secs: f64| {
        let mut openssl = Command::new("openssl")
            .args([
                "x509",
                "-noout",
                "-checkend",
                &format!("{}", secs.max(0.0) as u64),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = openssl.stdin.take().unwrap();
        stdin
            .write_all(format!("{pem}-----END CERTIFICATE-----\n").as_bytes())
            .unwrap();
        drop(stdin);
        // -checkend exits 1 when the certificate expires within the time.
        !openssl.wait().unwrap().success()
    };
    let left = expiry - now;
    assert!(!expires_within(left - 5.0), "expires before the gauge says");
    assert!(expires_within(left + 5.0), "expires after the gauge says");
    // The first certificate only: no renewal yet.
    assert_eq!(
        metric_sum(&metrics, "ward_certificate_renewals_total", &[]),
        1.0
    );
}
