use super::*;
use crate::PolicySet;
use crate::eval::{DecisionReason, EvalOptions, NoHeaders, Protocol};
use std::collections::BTreeMap;
use ward_identity::SpiffeId;

const POLICIES: &str = r#"apiVersion: security.ward.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-api, namespace: prod}
spec:
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/web/sa/frontend"]}
    to:
    - operation: {methods: ["GET"], paths: ["/api/*"]}
  - from:
    - source: {namespaces: ["batch"]}
    when:
    - {key: "request.headers[x-job]", values: ["nightly"]}
---
apiVersion: security.ward.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: prod}
spec:
  action: DENY
  rules:
  - to:
    - operation: {paths: ["/admin*"], ports: ["8080"]}
---
apiVersion: security.ward.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-metrics, namespace: prod}
spec:
  rules:
  - to:
    - operation: {ports: ["9090"]}
    - operation: {ports: ["9091"], notPaths: ["/private*"]}
    from:
    - source: {notNamespaces: ["untrusted"], ipBlocks: ["10.0.0.0/8"]}
"#;

fn workload() -> WorkloadPolicy {
    PolicySet::parse_str("p.yaml", POLICIES)
        .unwrap()
        .for_workload("prod", &BTreeMap::new(), &EvalOptions::default())
}

struct Req {
    protocol: Protocol,
    id: Option<SpiffeId>,
    ip: &'static str,
    port: u16,
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
}

fn http(id: Option<&str>, method: &'static str, path: &'static str) -> Req {
    Req {
        protocol: Protocol::Http,
        id: id.map(|id| SpiffeId::parse(id).unwrap()),
        ip: "10.1.2.3",
        port: 8080,
        method,
        path,
        headers: Vec::new(),
    }
}

fn explain<'w>(w: &'w WorkloadPolicy, r: &Req) -> Explanation<'w> {
    let tcp = r.protocol == Protocol::Tcp;
    let attrs = RequestAttrs {
        protocol: r.protocol,
        source_principal: r.id.as_ref(),
        source_ip: r.ip.parse().unwrap(),
        destination_ip: "10.9.9.9".parse().unwrap(),
        destination_port: r.port,
        method: (!tcp).then_some(r.method),
        path: (!tcp).then_some(r.path),
        host: (!tcp).then_some("api.prod"),
        headers: if tcp { &NoHeaders } else { &r.headers },
    };
    let e = w.explain(&attrs);
    assert_eq!(
        e.decision,
        w.evaluate(&attrs),
        "explain decides as evaluate"
    );
    e
}

/// The near misses of policy `name`: `rule N FIELD`.
fn misses(e: &Explanation<'_>, name: &str) -> Vec<String> {
    e.near_misses
        .iter()
        .filter(|m| &*m.policy.name == name)
        .map(|m| format!("rule {} {}", m.rule, m.field))
        .collect()
}

const FRONTEND: &str = "spiffe://cluster.local/ns/web/sa/frontend";
const OTHER: &str = "spiffe://cluster.local/ns/web/sa/other";

#[test]
fn a_rule_failing_one_field_names_it() {
    let w = workload();
    // Another identity, the right request: the principal is all that is off.
    let e = explain(&w, &http(Some(OTHER), "GET", "/api/orders"));
    assert!(!e.decision.allowed);
    assert_eq!(e.decision.reason, DecisionReason::DeniedNoAllowMatched);
    assert_eq!(
        misses(&e, "allow-api"),
        ["rule 0 from[0].source.principals"]
    );
    // The right identity, the wrong method.
    let e = explain(&w, &http(Some(FRONTEND), "POST", "/api/orders"));
    assert_eq!(misses(&e, "allow-api"), ["rule 0 to[0].operation.methods"]);
    // Two fields off is not close.
    let e = explain(&w, &http(Some(OTHER), "POST", "/api/orders"));
    assert!(misses(&e, "allow-api").is_empty());
    // DENY rules that failed on one field are near misses too: here the
    // path of deny-admin.
    assert_eq!(misses(&e, "deny-admin"), ["rule 0 to[0].operation.paths"]);
}

#[test]
fn a_condition_is_one_field() {
    let w = workload();
    let mut r = http(
        Some("spiffe://cluster.local/ns/batch/sa/job"),
        "GET",
        "/reports",
    );
    r.headers = vec![("x-job", "hourly")];
    let e = explain(&w, &r);
    assert!(!e.decision.allowed);
    assert_eq!(
        misses(&e, "allow-api"),
        ["rule 1 when[0] request.headers[x-job]"]
    );
    r.headers = vec![("x-job", "nightly")];
    let e = explain(&w, &r);
    assert!(e.decision.allowed);
    assert_eq!(e.decision.rule, Some(1));
    // The policy that decided is not a near miss of itself.
    assert!(misses(&e, "allow-api").is_empty());
}

#[test]
fn deny_near_misses_are_reported_and_a_match_decides() {
    let w = workload();
    // On another port the DENY rule fails by its port alone.
    let mut r = http(Some(FRONTEND), "GET", "/admin/users");
    r.port = 8081;
    let e = explain(&w, &r);
    assert_eq!(misses(&e, "deny-admin"), ["rule 0 to[0].operation.ports"]);
    r.port = 8080;
    let e = explain(&w, &r);
    assert_eq!(e.decision.reason, DecisionReason::DeniedByDenyPolicy);
    assert_eq!(
        e.decision.policy.map(|p| p.to_string()).as_deref(),
        Some("prod/deny-admin")
    );
    assert_eq!(e.decision.rule, Some(0));
    assert!(misses(&e, "deny-admin").is_empty());
}

#[test]
fn of_several_operations_the_closest_is_named() {
    let w = workload();
    // Port 9091 with a private path: operation 1 fails notPaths only,
    // operation 0 fails its port.
    let mut r = http(None, "GET", "/private/x");
    r.port = 9091;
    let e = explain(&w, &r);
    assert_eq!(
        misses(&e, "allow-metrics"),
        ["rule 0 to[0].operation.ports"],
        "both fail one field: the first is named"
    );
    // From outside 10/8 on port 9090: the source's ipBlocks.
    let mut r = http(None, "GET", "/metrics");
    r.port = 9090;
    r.ip = "192.168.1.1";
    let e = explain(&w, &r);
    assert!(!e.decision.allowed);
    assert_eq!(
        misses(&e, "allow-metrics"),
        ["rule 0 from[0].source.ipBlocks"]
    );
}

#[test]
fn on_tcp_an_allow_rule_with_http_fields_fails_on_them() {
    let w = workload();
    let r = Req {
        protocol: Protocol::Tcp,
        ..http(Some(FRONTEND), "", "")
    };
    let e = explain(&w, &r);
    assert!(!e.decision.allowed);
    // Rule 0 needs methods and paths (two fields): not close. Rule 1's
    // namespace and header both fail. The DENY rule ignores its HTTP
    // fields on TCP and matches port 8080: it decides.
    assert_eq!(e.decision.reason, DecisionReason::DeniedByDenyPolicy);
    let policy = "apiVersion: security.ward.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: get-only, namespace: prod}\nspec:\n  rules:\n  - to:\n    - operation: {methods: [GET]}\n";
    let w = PolicySet::parse_str("x", policy).unwrap().for_workload(
        "prod",
        &BTreeMap::new(),
        &EvalOptions::default(),
    );
    let e = explain(&w, &r);
    assert!(!e.decision.allowed);
    assert_eq!(misses(&e, "get-only"), ["rule 0 to[0].operation.methods"]);
}

#[test]
fn a_malformed_request_has_no_near_misses() {
    let w = workload();
    let e = explain(&w, &http(Some(FRONTEND), "get", "/api/x"));
    assert_eq!(e.decision.reason, DecisionReason::DeniedMalformedMethod);
    assert!(e.near_misses.is_empty());
}

/// "No field fails" is "the rule matches", for every rule of every policy
/// over a grid of requests (`rule_failures` also asserts it in debug
/// builds; this runs the grid).
#[test]
fn field_failures_agree_with_the_evaluator_on_a_grid() {
    let w = workload();
    let ids = [
        None,
        Some(FRONTEND),
        Some(OTHER),
        Some("spiffe://cluster.local/ns/batch/sa/job"),
        Some("spiffe://cluster.local/ns/untrusted/sa/x"),
    ];
    let mut checked = 0;
    for id in ids {
        for protocol in [Protocol::Http, Protocol::Tcp] {
            for port in [8080, 8081, 9090, 9091] {
                for ip in ["10.1.2.3", "192.168.1.1"] {
                    for (method, path) in
                        [("GET", "/api/a"), ("POST", "/admin"), ("GET", "/private/p")]
                    {
                        for headers in [vec![], vec![("x-job", "nightly")]] {
                            let r = Req {
                                protocol,
                                id: id.map(|i| SpiffeId::parse(i).unwrap()),
                                ip,
                                port,
                                method,
                                path,
                                headers,
                            };
                            let tcp = protocol == Protocol::Tcp;
                            let attrs = RequestAttrs {
                                protocol,
                                source_principal: r.id.as_ref(),
                                source_ip: ip.parse().unwrap(),
                                destination_ip: "10.9.9.9".parse().unwrap(),
                                destination_port: port,
                                method: (!tcp).then_some(method),
                                path: (!tcp).then_some(path),
                                host: None,
                                headers: if tcp { &NoHeaders } else { &r.headers },
                            };
                            let (p, bit) = prepare(&attrs).unwrap();
                            let c = Ctx::new(&attrs, &p, bit);
                            for policy in w.policies() {
                                for rule in &policy.rules {
                                    assert_eq!(
                                        rule_failures(policy.action, rule, &c).is_empty(),
                                        rule_matches(policy.action, rule, &c),
                                        "{} {rule:?}",
                                        policy.id
                                    );
                                    checked += 1;
                                }
                            }
                            assert_eq!(w.explain(&attrs).decision, w.evaluate(&attrs));
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 1000, "{checked}");
}
