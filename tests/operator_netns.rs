//! The operator's view of a live mesh (#19), in real network namespaces
//! with real sidecars (see `support/mesh.rs`): the `x-ward-denied-by`
//! header a 403 carries to an authenticated mesh peer and never to a
//! plaintext client, `ward authz why` agreeing with what the sidecar
//! actually did for the same request, and `ward status`'s inventory.
//!
//! Needs root, `ip`, `iptables`, `setpriv` and `curl`; skips without them
//! (fails under WARD_TEST_STRICT=1).

#[path = "support/mesh.rs"]
mod mesh;
#[path = "support/netns.rs"]
mod netns;

use std::time::{Duration, Instant};

use mesh::{CONTROL_PLANE_ADMIN, Mesh, MeshPod, PodOptions, bins, metric_sum};
use netns::Pod;

/// Planned pods: A (client, allowed), B (the server), C (another client).
const PODS: &[(&str, &str)] = &[("a", "client-a"), ("b", "server"), ("c", "client-c")];
const B: &str = "198.18.0.3";
const HTTP_APP: &[&str] = &["ward-testapp", "http", "--listen", "0.0.0.0:8080"];

/// On B (`app: b`): DELETE is denied by rule 0 of `deny-admin`, `/admin*`
/// by its rule 1; only client-a is allowed the rest.
const POLICIES: &str = r#"apiVersion: security.ward.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  selector: {matchLabels: {app: b}}
  action: DENY
  rules:
  - to:
    - operation: {methods: ["DELETE"]}
  - to:
    - operation: {paths: ["/admin*"]}
---
apiVersion: security.ward.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-a, namespace: default}
spec:
  selector: {matchLabels: {app: b}}
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/default/sa/client-a"]}
"#;

/// Fields drop in order: the pods before the mesh.
struct Pods {
    a: MeshPod,
    b: MeshPod,
    c: MeshPod,
    /// No sidecar: a plaintext client (B is PERMISSIVE).
    plain: Pod,
    mesh: Mesh,
}

fn pods(name: &str) -> Pods {
    let mesh = Mesh::with_policy_dir(name, PODS);
    let b = mesh.add_pod(
        "b",
        "server",
        HTTP_APP,
        PodOptions::default()
            .label("app", "b")
            .mtls_mode("permissive"),
    );
    assert_eq!(b.ip().to_string(), B);
    let a = mesh.add_pod("a", "client-a", &[], PodOptions::default());
    let c = mesh.add_pod("c", "client-c", &[], PodOptions::default());
    let plain = mesh.add_plain_pod("plain");
    mesh.apply_policy("policies.yaml", POLICIES, &[&b]);
    Pods {
        a,
        b,
        c,
        plain,
        mesh,
    }
}

/// What a client got: the status and `x-ward-denied-by`, if any.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    denied_by: Option<String>,
}

/// `curl -i` to B from `pod` as the application user (through the pod's
/// sidecar when it has one).
fn call(pod: &Pod, method: &str, path: &str) -> Answer {
    let url = format!("http://{B}:8080{path}");
    let out = pod.exec_as(
        mesh::APP_UID,
        &["curl", "-sS", "-i", "--max-time", "10", "-X", method, &url],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no response to {method} {url}: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let denied_by = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("x-ward-denied-by")
            .then(|| value.trim().to_owned())
    });
    Answer { status, denied_by }
}

fn prerequisites() -> bool {
    mesh::prerequisites()
}

#[test]
fn a_403_names_policy_and_rule_to_mesh_peers_and_nothing_to_plaintext_clients() {
    if !prerequisites() {
        return;
    }
    let p = pods("ward-op-hdr");
    let answer = |status, denied_by: Option<&str>| Answer {
        status,
        denied_by: denied_by.map(str::to_owned),
    };
    // A mesh peer (mTLS through both sidecars): the header reaches the
    // calling application through its own sidecar's outbound side.
    assert_eq!(call(p.a.pod(), "GET", "/echo/x"), answer(200, None));
    assert_eq!(
        call(p.a.pod(), "GET", "/admin/users"),
        answer(403, Some("default/deny-admin rule 1"))
    );
    assert_eq!(
        call(p.a.pod(), "DELETE", "/echo/x"),
        answer(403, Some("default/deny-admin rule 0"))
    );
    assert_eq!(
        call(p.c.pod(), "GET", "/echo/x"),
        answer(403, Some("default-deny: no ALLOW policy matched"))
    );
    // A plaintext client (PERMISSIVE) is denied the same, and told nothing.
    assert_eq!(call(&p.plain, "GET", "/echo/x"), answer(403, None));
    assert_eq!(call(&p.plain, "GET", "/admin/users"), answer(403, None));
    // The denials were the policies' (not, say, a refused connection).
    let metrics = p.mesh.metrics(&p.b);
    let denied = |name| {
        metric_sum(
            &metrics,
            "ward_authorization_decisions_total",
            &[("action", "deny"), ("policy_name", name)],
        )
    };
    assert_eq!(denied("deny-admin"), 3.0, "{metrics}");
    assert_eq!(denied("default"), 2.0, "{metrics}");
}

/// `ward authz why` run in B's pod (its sidecar's admin port answers on
/// loopback only), as JSON.
fn why(
    b: &MeshPod,
    source: Option<&str>,
    source_ip: &str,
    method: &str,
    path: &str,
) -> serde_json::Value {
    let ward = &bins().ward;
    let mut argv = vec![
        ward.as_str(),
        "authz",
        "why",
        "--json",
        "--port",
        "8080",
        "--destination-ip",
        B,
        "--source-ip",
        source_ip,
        "--method",
        method,
        "--path",
        path,
    ];
    if let Some(source) = source {
        argv.extend(["--source", source]);
    }
    let out = b.pod().exec(&argv);
    let stdout = mesh::assert_ok(out, "ward authz why");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn ward_authz_why_agrees_with_what_the_sidecar_did() {
    if !prerequisites() {
        return;
    }
    let p = pods("ward-op-why");
    let a_ip = p.a.ip().to_string();
    let c_ip = p.c.ip().to_string();
    let plain_ip = p.plain.ip().to_string();
    let cases: [(&Pod, Option<&str>, &str, &str, &str); 6] = [
        (p.a.pod(), Some(p.a.spiffe_id()), &a_ip, "GET", "/echo/x"),
        (
            p.a.pod(),
            Some(p.a.spiffe_id()),
            &a_ip,
            "GET",
            "/admin/users",
        ),
        (p.a.pod(), Some(p.a.spiffe_id()), &a_ip, "DELETE", "/echo/x"),
        (p.c.pod(), Some(p.c.spiffe_id()), &c_ip, "GET", "/echo/x"),
        (&p.plain, None, &plain_ip, "GET", "/echo/x"),
        (&p.plain, None, &plain_ip, "GET", "/admin/users"),
    ];
    let version = metric_sum(&p.mesh.metrics(&p.b), "ward_policy_version", &[]);
    for (client, source, ip, method, path) in cases {
        let real = call(client, method, path);
        let report = why(&p.b, source, ip, method, path);
        let expected = if real.status == 200 { "allow" } else { "deny" };
        assert_eq!(
            report["decision"], expected,
            "{method} {path} from {source:?}: {report}"
        );
        assert_eq!(
            report["denied_by"].as_str(),
            real.denied_by.as_deref(),
            "{method} {path} from {source:?}: {report}"
        );
        assert_eq!(report["policy_version"].as_f64(), Some(version), "{report}");
        assert_eq!(report["mtls_mode"], "PERMISSIVE");
    }

    // C came close: allow-a failed on the principal alone.
    let report = why(&p.b, Some(p.c.spiffe_id()), &c_ip, "GET", "/echo/x");
    let near: Vec<(&str, &str)> = report["near_misses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["policy"].as_str().unwrap(), m["field"].as_str().unwrap()))
        .collect();
    assert!(
        near.contains(&("default/allow-a", "from[0].source.principals")),
        "{report}"
    );
    // The text form says the same to a person.
    let text = mesh::assert_ok(
        p.b.pod().exec(&[
            &bins().ward,
            "authz",
            "why",
            "--port",
            "8080",
            "--source",
            p.c.spiffe_id(),
        ]),
        "ward authz why",
    );
    assert!(text.contains("decision:   DENY"), "{text}");
    assert!(
        text.contains("default/allow-a rule 0 (ALLOW): failed on from[0].source.principals"),
        "{text}"
    );

    // Off the pod the endpoint is not there: it reveals policy.
    let admin = format!("{B}:15020");
    let out = p.mesh.network().exec(&[
        &bins().ward,
        "authz",
        "why",
        "--sidecar-admin",
        &admin,
        "--port",
        "8080",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not explain decisions to this caller"),
        "{stderr}"
    );
    // Bad input is refused before anything is asked.
    let out = p.b.pod().exec(&[
        &bins().ward,
        "authz",
        "why",
        "--port",
        "8080",
        "--source",
        "not-an-id",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a SPIFFE ID of a workload"), "{stderr}");
}

/// `ward status --json` from the bridge namespace (where the control
/// plane's admin port is).
fn status(mesh: &Mesh) -> serde_json::Value {
    let out = mesh.network().exec(&[
        &bins().ward,
        "status",
        "--json",
        "--control-plane-admin",
        CONTROL_PLANE_ADMIN,
    ]);
    let stdout = mesh::assert_ok(out, "ward status");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn sidecar<'s>(status: &'s serde_json::Value, spiffe_id: &str) -> Option<&'s serde_json::Value> {
    status["sidecars"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["spiffe_id"] == spiffe_id)
}

#[test]
fn ward_status_lists_every_sidecar_and_a_stopped_one_as_disconnected() {
    if !prerequisites() {
        return;
    }
    let p = pods("ward-op-status");
    let now = status(&p.mesh);
    let cp_version = metric_sum(
        &p.mesh.control_plane_metrics(),
        "ward_cp_policy_version",
        &[],
    );
    assert_eq!(
        now["control_plane"]["policy_version"].as_f64(),
        Some(cp_version)
    );
    for pod in [&p.a, &p.b, &p.c] {
        let s = sidecar(&now, pod.spiffe_id())
            .unwrap_or_else(|| panic!("{} missing: {now}", pod.spiffe_id()));
        assert_eq!(s["address"], pod.ip().to_string(), "{s}");
        assert_eq!(s["proxy_version"], env!("CARGO_PKG_VERSION"), "{s}");
        assert_eq!(s["policy"]["state"], "in_sync", "{s}");
        assert_eq!(s["bundle"]["state"], "in_sync", "{s}");
        // A fresh 24 h certificate.
        let left = s["certificate_expires_in_seconds"]
            .as_i64()
            .unwrap_or_else(|| panic!("no expiry: {s}"));
        assert!((23 * 3600..=24 * 3600).contains(&left), "{s}");
    }
    // B enforces both policies, at the control plane's current version.
    let b = sidecar(&now, p.b.spiffe_id()).unwrap();
    assert_eq!(b["policy"]["desired"].as_object().unwrap().len(), 2, "{b}");
    assert_eq!(b["policy"]["acked"], b["policy"]["desired"], "{b}");
    assert_eq!(
        b["policy"]["acked_version"].as_f64(),
        Some(cp_version),
        "{b}"
    );

    // The table, for a person.
    let out = p.mesh.network().exec(&[
        &bins().ward,
        "status",
        "--control-plane-admin",
        CONTROL_PLANE_ADMIN,
    ]);
    let table = mesh::assert_ok(out, "ward status");
    assert!(table.contains("3 sidecars connected"), "{table}");
    let b_row = table
        .lines()
        .find(|l| l.starts_with(p.b.spiffe_id()))
        .expect(&table);
    assert!(b_row.contains("in_sync 2/2"), "{table}");

    // C's sidecar stops: it leaves the connected ones and is listed as
    // disconnected; the others stay.
    let c_id = p.c.spiffe_id().to_owned();
    let Pods {
        a,
        b,
        c,
        plain,
        mesh,
    } = p;
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = status(&mesh);
        if sidecar(&now, &c_id).is_none() {
            assert!(sidecar(&now, a.spiffe_id()).is_some(), "{now}");
            assert!(sidecar(&now, b.spiffe_id()).is_some(), "{now}");
            let gone = now["disconnected"].as_array().expect("a disconnected list");
            assert_eq!(gone.len(), 1, "{now}");
            assert_eq!(gone[0]["spiffe_id"], c_id.as_str(), "{now}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stopped sidecar is still listed: {now}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // No control plane there: a clear error, exit 1.
    let out = mesh.network().exec(&[
        &bins().ward,
        "status",
        "--control-plane-admin",
        "198.18.0.1:1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("reading the control plane's admin port at 198.18.0.1:1"),
        "{stderr}"
    );
    drop((a, b, plain));
}

/// `ward check --json ARGS` from the bridge namespace: exit code and JSON.
fn check(mesh: &Mesh, args: &[&str]) -> (i32, serde_json::Value) {
    let ward = &bins().ward;
    let mut argv = vec![
        ward.as_str(),
        "check",
        "--json",
        "--control-plane-admin",
        CONTROL_PLANE_ADMIN,
    ];
    argv.extend_from_slice(args);
    let out = mesh.network().exec(&argv);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), json)
}

/// The failed checks: name → details joined.
fn failed(report: &serde_json::Value) -> Vec<(String, String)> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| {
            assert!(
                c["fix"].as_str().is_some_and(|f| !f.is_empty()),
                "a failed check without its fix: {c}"
            );
            let details: Vec<&str> = c["details"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_str().unwrap())
                .collect();
            (c["check"].as_str().unwrap().to_owned(), details.join("; "))
        })
        .collect()
}

/// Waits until every check passes again (a fixed policy directory is read
/// within moments).
fn wait_healthy(mesh: &Mesh) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, report) = check(mesh, &[]);
        if code == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "not healthy again: {report}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ward_check_passes_on_a_healthy_mesh_and_fails_each_broken_item_with_its_fix() {
    if !prerequisites() {
        return;
    }
    let p = pods("ward-op-check");
    let (code, report) = check(&p.mesh, &[]);
    assert_eq!((code, failed(&report)), (0, vec![]), "{report}");
    assert_eq!(report["checks"].as_array().unwrap().len(), 6, "{report}");

    // Certificates: a threshold beyond the 24 h lifetime makes every
    // certificate too close to its expiry.
    let (code, report) = check(&p.mesh, &["--min-certificate-validity", "25h"]);
    let f = failed(&report);
    assert_eq!(code, 1);
    assert_eq!(f.len(), 1, "{report}");
    assert_eq!(f[0].0, "certificates far from expiry");
    for pod in [&p.a, &p.b, &p.c] {
        assert!(f[0].1.contains(pod.spiffe_id()), "{report}");
    }

    // A PERMISSIVE port.
    let permissive = "apiVersion: security.ward.io/v1\nkind: PeerAuthentication\nmetadata: {name: b-legacy, namespace: default}\nspec:\n  selector: {matchLabels: {app: b}}\n  mtls: {mode: STRICT}\n  portLevelMtls:\n    8080: {mode: PERMISSIVE}\n";
    p.mesh.apply_policy("peer.yaml", permissive, &[&p.b]);
    let (code, report) = check(&p.mesh, &[]);
    let f = failed(&report);
    assert_eq!(code, 1);
    assert_eq!(f.len(), 1, "{report}");
    assert_eq!(f[0].0, "no port open to plaintext");
    assert!(
        f[0].1
            .contains("default/b-legacy (app=b): STRICT, ports 8080 PERMISSIVE"),
        "{report}"
    );
    p.mesh.remove_policy("peer.yaml");
    wait_healthy(&p.mesh);

    // A rejected policy file: the previous set stays, the check says why.
    p.mesh
        .write_policy("broken.yaml", "apiVersion: security.ward.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: broken, namespace: default}\nspec: {action: MAYBE}\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    let f = loop {
        let (code, report) = check(&p.mesh, &[]);
        let f = failed(&report);
        if f.iter().any(|(name, _)| name == "no rejected policies") {
            assert_eq!(code, 1);
            break f;
        }
        assert!(
            Instant::now() < deadline,
            "the rejection was not reported: {report}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0].1.contains("broken.yaml"), "{f:?}");
    assert!(f[0].1.contains("MAYBE"), "{f:?}");
    p.mesh.remove_policy("broken.yaml");
    wait_healthy(&p.mesh);

    // A stopped sidecar.
    let c_id = p.c.spiffe_id().to_owned();
    let Pods {
        a,
        b,
        c,
        plain,
        mesh,
    } = p;
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(10);
    let f = loop {
        let (_, report) = check(&mesh, &[]);
        let f = failed(&report);
        if f.iter().any(|(name, _)| name == "every sidecar connected") {
            break f;
        }
        assert!(
            Instant::now() < deadline,
            "the stopped sidecar was not reported: {report}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0].1.contains(&c_id), "{f:?}");
    assert!(f[0].1.contains("disconnected at"), "{f:?}");

    // The text form: ✓/✗ lines with the fix.
    let out = mesh.network().exec(&[
        &bins().ward,
        "check",
        "--control-plane-admin",
        CONTROL_PLANE_ADMIN,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("✓ control plane ready"), "{text}");
    assert!(text.contains("✗ every sidecar connected"), "{text}");
    assert!(text.contains("    fix: "), "{text}");
    drop((a, b, plain));
}
