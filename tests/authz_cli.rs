#![forbid(unsafe_code)]
//! `ward authz check|lint` as a user runs them: the real binary, exit codes,
//! output on stdout and errors on stderr.

#[path = "support/bins.rs"]
mod bins;

use std::path::Path;
use std::process::Output;

use bins::{stderr, ward, ward_with_stdin};

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

const ALLOW_GET: &str = r#"apiVersion: security.ward.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-get, namespace: prod}
spec:
  selector:
    matchLabels: {app: api}
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/web/sa/frontend"]}
    to:
    - operation: {methods: ["GET"], paths: ["/api/*"]}
"#;

const DENY_ADMIN: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: prod}
spec:
  action: DENY
  rules:
  - to:
    - operation: {paths: ["/admin*"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: dry
  namespace: prod
  annotations: {"ward.io/dry-run": "true"}
spec:
  action: DENY
  rules:
  - to:
    - operation: {paths: ["/api/v2*"]}
"#;

fn request(method: &str, path: &str, principal: Option<&str>) -> String {
    serde_json::json!({
        "protocol": "http",
        "source": {"spiffe_id": principal, "ip": "10.1.0.5"},
        "destination": {"ip": "10.1.0.9", "port": 8080},
        "method": method, "path": path, "host": "api.prod",
        "headers": {"x-a": "1", "x-b": ["1", "2"]},
    })
    .to_string()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn check(policies: &[&str], req: &str) -> Output {
    let mut args = vec![
        "authz",
        "check",
        "--namespace",
        "prod",
        "--label",
        "app=api",
    ];
    for p in policies {
        args.extend(["--policies", p]);
    }
    args.extend(["--request", "-"]);
    ward_with_stdin(&args, req.as_bytes())
}

const FRONTEND: Option<&str> = Some("spiffe://cluster.local/ns/web/sa/frontend");

#[test]
fn decisions_from_a_directory_with_multi_document_files() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", ALLOW_GET);
    write(dir.path(), "b.yml", DENY_ADMIN);
    write(dir.path(), "ignored.txt", "not yaml at all: [");
    let d = dir.path().to_str().unwrap();

    let o = check(&[d], &request("GET", "/api/v1/x", FRONTEND));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["decision"], "allow");
    assert_eq!(v["policy"], "prod/allow-get");
    assert_eq!(v["rule"], 0);
    assert_eq!(v["reason"], "allowed by ALLOW policy");
    assert_eq!(v["dry_run_matches"], serde_json::json!([]));

    let o = check(&[d], &request("GET", "/api/../admin", FRONTEND));
    assert_eq!(o.status.code(), Some(0));
    let v = json(&o);
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["policy"], "prod/deny-admin");
    assert_eq!(v["reason"], "denied by DENY policy");

    let o = check(&[d], &request("GET", "/api/v2/x", FRONTEND));
    let v = json(&o);
    assert_eq!(v["decision"], "allow");
    assert_eq!(v["dry_run_matches"], serde_json::json!(["prod/dry"]));

    let o = check(&[d], &request("POST", "/api/v1", FRONTEND));
    let v = json(&o);
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["policy"], serde_json::Value::Null);
    assert_eq!(v["rule"], serde_json::Value::Null);
    assert_eq!(v["reason"], "denied: no ALLOW policy matched");

    let o = check(&[d], &request("GET", "/api/v1", None));
    assert_eq!(json(&o)["decision"], "deny");
}

#[test]
fn requests_the_proxy_would_refuse_are_denied_with_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "p.yaml", ALLOW_GET);
    for (method, path, reason) in [
        ("get", "/api/v1", "denied: malformed method"),
        ("GET", "/api/%2F..", "denied: malformed path"),
        ("GET", "api", "denied: malformed path"),
    ] {
        let o = check(&[&f], &request(method, path, FRONTEND));
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let v = json(&o);
        assert_eq!(v["decision"], "deny");
        assert_eq!(v["reason"], reason);
    }
}

#[test]
fn tcp_request_and_request_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "p.yaml", ALLOW_GET);
    let req = write(
        dir.path(),
        "req.json",
        r#"{"protocol": "tcp", "source": {"spiffe_id": "spiffe://cluster.local/ns/web/sa/frontend", "ip": "10.0.0.1"}, "destination": {"ip": "10.0.0.2", "port": 5432}}"#,
    );
    let check_file = |labels: &[&str]| {
        let policies = ["authz", "check", "--policies", &f, "--namespace", "prod"];
        ward(&[&policies[..], labels, &["--request", &req]].concat())
    };
    let o = check_file(&["--label", "app=api"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // The only ALLOW rule has HTTP fields: it never matches a TCP connection.
    assert_eq!(json(&o)["decision"], "deny");
    // Without the label the policy does not apply.
    let o = check_file(&[]);
    assert_eq!(json(&o)["decision"], "allow");
    assert_eq!(json(&o)["reason"], "allowed: no ALLOW policy applies");
}

#[test]
fn empty_directory_allows() {
    let dir = tempfile::tempdir().unwrap();
    let o = check(
        &[dir.path().to_str().unwrap()],
        &request("DELETE", "/x", None),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(json(&o)["decision"], "allow");
}

#[test]
fn invalid_policy_file_is_rejected_whole_with_location() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", ALLOW_GET);
    let bad = format!(
        "{DENY_ADMIN}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: bad, namespace: prod}}\nspec:\n  rules:\n  - from:\n    - source:\n        ipBlocks: [\"10.0.0.0/33\"]\n"
    );
    let f = write(dir.path(), "b.yaml", &bad);
    let o = check(
        &[dir.path().to_str().unwrap()],
        &request("GET", "/admin", FRONTEND),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{f}:29:20:"))
            && err.contains("document 2")
            && err.contains("spec.rules[0].from[0].source.ipBlocks[0]")
            && err.contains("invalid CIDR `10.0.0.0/33`"),
        "{err}"
    );
}

#[test]
fn malformed_request_and_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "p.yaml", ALLOW_GET);
    let o = check(&[&f], r#"{"protocol": "http", "source": {"ip": "nope"}}"#);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("invalid request"), "{}", stderr(&o));
    let o = check(&[&f], "not json");
    assert_eq!(o.status.code(), Some(1));
    let o = check(
        &[&f],
        r#"{"protocol": "http", "source": {"spiffe_id": "bad id", "ip": "10.0.0.1"}, "destination": {"ip": "10.0.0.2", "port": 80}}"#,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("source.spiffe_id"), "{}", stderr(&o));
    // Missing --namespace: clap usage error.
    let o = ward_with_stdin(
        &["authz", "check", "--policies", &f, "--request", "-"],
        "{}".as_bytes(),
    );
    assert_eq!(o.status.code(), Some(2));
    let o = ward_with_stdin(
        &[
            "authz",
            "check",
            "--policies",
            &f,
            "--namespace",
            "x",
            "--label",
            "novalue",
            "--request",
            "-",
        ],
        "{}".as_bytes(),
    );
    assert_eq!(o.status.code(), Some(2));
    let o = ward_with_stdin(
        &[
            "authz",
            "check",
            "--policies",
            "/nonexistent/dir",
            "--namespace",
            "x",
            "--request",
            "-",
        ],
        "{}".as_bytes(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("/nonexistent/dir"), "{}", stderr(&o));
}

#[test]
fn lint_reports_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "p.yaml",
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: sloppy, namespace: prod}
spec:
  selector:
    matchLabels: {app: ghost}
  rules:
  - to:
    - operation: {methods: ["get"]}
  - from:
    - source: {notNamespaces: ["evil"]}
  - from:
    - source: {notNamespaces: ["evil"]}
  - from:
    - source: {principals: ["other.td/ns/a/sa/b"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: prod}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: oops, namespace: prod}
spec:
  rules: []
"#,
    );
    let workloads = write(
        dir.path(),
        "workloads.json",
        r#"[{"namespace": "prod", "labels": {"app": "api"}}]"#,
    );
    let p = dir.path().join("p.yaml");
    let p = p.to_str().unwrap();
    let o = ward(&["authz", "lint", p, "--workloads", &workloads]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    for needle in [
        "prod/sloppy: selector {app=ghost} matches no listed workload",
        "prod/sloppy: spec.rules[0]: method `get` can never match",
        "prod/sloppy: spec.rules[1]: notPrincipals/notNamespaces/notServiceAccounts without a positive identity field also allow plaintext peers",
        "prod/sloppy: spec.rules[2]: rule is a duplicate of spec.rules[1]",
        "prod/sloppy: spec.rules[3]: principal `other.td/ns/a/sa/b` is outside the mesh trust domain `cluster.local`",
        "note: ",
        "prod/deny-all: ALLOW policy without rules (`spec: {}`)",
        "prod/oops: `rules: []` allows nothing",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    assert!(out.lines().all(|l| l.contains(p)), "{out}");
    let o = ward(&["authz", "lint", p, "--strict"]);
    assert_eq!(o.status.code(), Some(1));
    // A set that does not load: exit 1, error on stderr.
    let bad = write(
        dir.path(),
        "bad.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: y}\nspec:\n  action: DENY\n",
    );
    let o = ward(&["authz", "lint", &bad]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("DENY policy needs at least one rule"),
        "{}",
        stderr(&o)
    );
    // A clean set: no output, exit 0 even with --strict.
    let clean = tempfile::tempdir().unwrap();
    write(clean.path(), "a.yaml", ALLOW_GET);
    let o = ward(&["authz", "lint", clean.path().to_str().unwrap(), "--strict"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

const OLD_TD_POLICY: &str = r#"apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: service-httpbin.default.svc.cluster.local
  namespace: default
spec:
  rules:
  - from:
    - source:
        principals:
        - old-td/ns/sleep-allow/sa/sleep
    to:
    - operation:
        methods:
        - GET
  selector:
    matchLabels:
      app: httpbin
"#;

/// `ward ARGS` with `request` on standard input and exactly the `WARD_*`
/// variables given.
fn ward_env(args: &[&str], env: &[(&str, &str)], request: &str) -> Output {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ward"));
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("WARD_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().unwrap();
    let _ = child.stdin.take().unwrap().write_all(request.as_bytes());
    child.wait_with_output().unwrap()
}

/// The trust-domain migration of
/// istio.io/latest/docs/tasks/security/authorization/authz-td-migration/:
/// a policy written for `old-td` keeps allowing `sleep` once the mesh is
/// `new-td`, with `old-td` as an alias (flag or `WARD_TRUST_DOMAIN_ALIASES`).
#[test]
fn trust_domain_aliases_from_the_flag_and_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "p.yaml", OLD_TD_POLICY);
    let base = [
        "authz",
        "check",
        "--policies",
        &f,
        "--namespace",
        "default",
        "--label",
        "app=httpbin",
        "--request",
        "-",
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let run = |args: Vec<String>, env: &[(&str, &str)], peer: &str| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ward_env(&args, env, &request("GET", "/ip", Some(peer)))
    };
    let new_sleep = "spiffe://new-td/ns/sleep-allow/sa/sleep";
    let decision = |o: &Output| {
        assert_eq!(o.status.code(), Some(0), "{}", stderr(o));
        json(o)["decision"].as_str().unwrap().to_owned()
    };
    // Without the alias the new identity is denied.
    let o = run(with(&["--trust-domain", "new-td"]), &[], new_sleep);
    assert_eq!(decision(&o), "deny");
    let o = run(
        with(&["--trust-domain", "new-td", "--trust-domain-alias", "old-td"]),
        &[],
        new_sleep,
    );
    assert_eq!(decision(&o), "allow");
    assert_eq!(
        json(&o)["policy"],
        "default/service-httpbin.default.svc.cluster.local"
    );
    // The same settings from the environment (a comma-separated list).
    let o = run(
        with(&[]),
        &[
            ("WARD_TRUST_DOMAIN", "new-td"),
            ("WARD_TRUST_DOMAIN_ALIASES", "other.td,old-td"),
        ],
        new_sleep,
    );
    assert_eq!(decision(&o), "allow");
    // Other namespaces stay denied.
    let o = run(
        with(&["--trust-domain", "new-td", "--trust-domain-alias", "old-td"]),
        &[],
        "spiffe://new-td/ns/default/sa/sleep",
    );
    assert_eq!(decision(&o), "deny");
    // An alias that is not a trust domain is a usage error naming it.
    let o = run(with(&["--trust-domain-alias", "Old-TD"]), &[], new_sleep);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("invalid trust-domain alias `Old-TD`"),
        "{}",
        stderr(&o)
    );
    // Lint: a principal in an alias is not outside the mesh.
    let lint = |extra: &[&str]| {
        let mut args = vec!["authz", "lint", f.as_str(), "--trust-domain", "new-td"];
        args.extend(extra);
        let o = ward_env(&args, &[], "");
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert!(lint(&[]).contains(
        "principal `old-td/ns/sleep-allow/sa/sleep` is outside the mesh trust domain `new-td`"
    ));
    assert!(!lint(&["--trust-domain-alias", "old-td"]).contains("outside the mesh trust domain"));
}
