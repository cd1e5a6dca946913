//! Property test: the indexed evaluator (`evaluate_indexed`, and
//! `evaluate`, which uses it when it pays) and the linear reference
//! evaluator take the same decision (allowed, policy, rule, reason, dry-run
//! and AUDIT matches) for random policy sets and random requests. Seeded, so
//! a failure reproduces; `WARD_POLICY_PROPTEST_CASES` runs more sets.

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::IpAddr;
use ward_identity::SpiffeId;
use ward_policy::{EvalOptions, PolicySet, Protocol, RequestAttrs, TrustDomainAliases};

const NAMESPACES: &[&str] = &["foo", "bar", "team1", "team2"];
const ACCOUNTS: &[&str] = &["x", "y", "sleep"];
const TRUST_DOMAINS: &[&str] = &["cluster.local", "old.td", "other.td"];
const PATHS: &[&str] = &[
    "/",
    "/api",
    "/api/v1",
    "/api/v1/items",
    "/api/v1/items/7",
    "/admin",
    "/admin/users",
    "/static/app.js",
    "/a//b",
    "/api/v1/../v2",
    "/x%2Fy",
];
const POLICY_PATHS: &[&str] = &[
    "/",
    "/api",
    "/api*",
    "/api/*",
    "/api/v1/*",
    "/admin*",
    "*.js",
    "*/items",
    "*",
    "/api/v1/items",
    "/api/{*}/items",
    "/api/{**}",
    "/{*}",
    "/{**}/7",
    "/static/app.js",
];
const METHODS: &[&str] = &["GET", "POST", "DELETE", "PURGE", "get"];
const PORTS: &[u16] = &[80, 8080, 9090];
const HOSTS: &[&str] = &["api", "api.prod", "Example.com:8080"];
const IPS: &[&str] = &["10.0.0.1", "10.1.2.3", "192.168.0.7", "::ffff:10.0.0.1"];
const CIDRS: &[&str] = &["10.0.0.0/8", "10.0.0.1", "192.168.0.0/16", "fd00::/8"];

fn pick<'a>(rng: &mut StdRng, pool: &[&'a str]) -> &'a str {
    pool.choose(rng).unwrap()
}

fn list(rng: &mut StdRng, generate: impl Fn(&mut StdRng) -> String) -> String {
    let n = rng.random_range(1..=3);
    let items: Vec<String> = (0..n).map(|_| format!("{:?}", generate(rng))).collect();
    format!("[{}]", items.join(", "))
}

fn principal(rng: &mut StdRng) -> String {
    let td = pick(rng, TRUST_DOMAINS);
    let ns = pick(rng, NAMESPACES);
    let sa = pick(rng, ACCOUNTS);
    match rng.random_range(0..10) {
        0 => format!("{td}/ns/{ns}/*"),
        1 => format!("*/sa/{sa}"),
        2 => "*".into(),
        3 => format!("spiffe://{td}/ns/{ns}/sa/{sa}"),
        4 => format!("{td}/ns/{ns}/sa/*"),
        _ => format!("{td}/ns/{ns}/sa/{sa}"),
    }
}

fn namespace(rng: &mut StdRng) -> String {
    match rng.random_range(0..6) {
        0 => "team*".into(),
        1 => "*".into(),
        _ => pick(rng, NAMESPACES).into(),
    }
}

fn account(rng: &mut StdRng) -> String {
    if rng.random_bool(0.3) {
        pick(rng, ACCOUNTS).into()
    } else {
        format!("{}/{}", pick(rng, NAMESPACES), pick(rng, ACCOUNTS))
    }
}

fn maybe(
    rng: &mut StdRng,
    p: f64,
    y: &mut String,
    field: &str,
    value: impl FnOnce(&mut StdRng) -> String,
) {
    if rng.random_bool(p) {
        let v = value(rng);
        writeln!(y, "          {field}: {v}").unwrap();
    }
}

fn source(rng: &mut StdRng, y: &mut String) {
    y.push_str("      - source:\n");
    let before = y.len();
    if rng.random_bool(0.3) {
        maybe(rng, 0.8, y, "serviceAccounts", |r| list(r, account));
        maybe(rng, 0.3, y, "notServiceAccounts", |r| list(r, account));
    } else {
        maybe(rng, 0.5, y, "principals", |r| list(r, principal));
        maybe(rng, 0.15, y, "notPrincipals", |r| list(r, principal));
        maybe(rng, 0.35, y, "namespaces", |r| list(r, namespace));
        maybe(rng, 0.15, y, "notNamespaces", |r| list(r, namespace));
    }
    maybe(rng, 0.15, y, "ipBlocks", |r| {
        list(r, |r| pick(r, CIDRS).into())
    });
    maybe(rng, 0.1, y, "notIpBlocks", |r| {
        list(r, |r| pick(r, CIDRS).into())
    });
    maybe(rng, 0.1, y, "remoteIpBlocks", |r| {
        list(r, |r| pick(r, CIDRS).into())
    });
    if y.len() == before {
        writeln!(y, "          namespaces: [{:?}]", pick(rng, NAMESPACES)).unwrap();
    }
}

fn operation(rng: &mut StdRng, y: &mut String) {
    y.push_str("      - operation:\n");
    let before = y.len();
    let port = |r: &mut StdRng| PORTS.choose(r).unwrap().to_string();
    maybe(rng, 0.3, y, "ports", |r| list(r, port));
    maybe(rng, 0.1, y, "notPorts", |r| list(r, port));
    maybe(rng, 0.4, y, "methods", |r| {
        list(r, |r| pick(r, &METHODS[..4]).into())
    });
    maybe(rng, 0.1, y, "notMethods", |r| {
        list(r, |r| pick(r, &METHODS[..4]).into())
    });
    maybe(rng, 0.5, y, "paths", |r| {
        list(r, |r| pick(r, POLICY_PATHS).into())
    });
    maybe(rng, 0.15, y, "notPaths", |r| {
        list(r, |r| pick(r, POLICY_PATHS).into())
    });
    maybe(rng, 0.15, y, "hosts", |r| {
        list(r, |r| {
            pick(r, &["api*", "*.prod", "example.com:8080"]).into()
        })
    });
    maybe(rng, 0.05, y, "notHosts", |r| {
        list(r, |r| pick(r, &["api"]).into())
    });
    if y.len() == before {
        writeln!(y, "          ports: [\"{}\"]", port(rng)).unwrap();
    }
}

fn condition(rng: &mut StdRng, y: &mut String) {
    let (key, values): (&str, fn(&mut StdRng) -> String) = match rng.random_range(0..8) {
        0 => ("source.principal", principal),
        1 => ("source.namespace", namespace),
        2 => ("source.serviceAccount", account),
        3 => ("source.ip", |r| pick(r, CIDRS).into()),
        4 => ("remote.ip", |r| pick(r, CIDRS).into()),
        5 => ("destination.ip", |r| pick(r, CIDRS).into()),
        6 => ("destination.port", |r| PORTS.choose(r).unwrap().to_string()),
        _ => ("request.headers[x-tenant]", |r| {
            pick(r, &["acme", "evil", "a*", "*"]).into()
        }),
    };
    writeln!(y, "    - key: {key}").unwrap();
    let both = rng.random_range(0..3);
    if both != 1 {
        writeln!(y, "      values: {}", list(rng, values)).unwrap();
    }
    if both != 0 {
        writeln!(y, "      notValues: {}", list(rng, values)).unwrap();
    }
}

fn policy(rng: &mut StdRng, i: usize, y: &mut String) {
    let action = *["ALLOW", "ALLOW", "DENY", "AUDIT"].choose(rng).unwrap();
    let namespace = if rng.random_bool(0.2) {
        "ward-system"
    } else {
        "foo"
    };
    writeln!(
        y,
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p{i}\n  namespace: {namespace}"
    )
    .unwrap();
    if rng.random_bool(0.15) {
        y.push_str("  annotations: {\"istio.io/dry-run\": \"true\"}\n");
    }
    writeln!(y, "spec:\n  action: {action}").unwrap();
    if rng.random_bool(0.2) {
        let app = *["api", "web"].choose(rng).unwrap();
        writeln!(y, "  selector:\n    matchLabels: {{app: {app}}}").unwrap();
    }
    let rules = match rng.random_range(0..12) {
        0 if action != "DENY" => return, // `spec: {}`-like: no rules at all
        1 if action != "DENY" => {
            y.push_str("  rules: []\n");
            return;
        }
        n => 1 + n % 3,
    };
    y.push_str("  rules:\n");
    for _ in 0..rules {
        let mut body = String::new();
        if rng.random_bool(0.6) {
            body.push_str("    from:\n");
            for _ in 0..rng.random_range(1..=2) {
                source(rng, &mut body);
            }
        }
        if rng.random_bool(0.6) {
            body.push_str("    to:\n");
            for _ in 0..rng.random_range(1..=2) {
                operation(rng, &mut body);
            }
        }
        if rng.random_bool(0.3) {
            body.push_str("    when:\n");
            for _ in 0..rng.random_range(1..=2) {
                condition(rng, &mut body);
            }
        }
        if body.is_empty() {
            y.push_str("  - {}\n");
        } else {
            // A sequence entry whose mapping starts on the next line.
            y.push_str("  -\n");
            y.push_str(&body);
        }
    }
}

/// One random policy set in YAML.
fn policies(rng: &mut StdRng) -> String {
    let mut y = String::new();
    for i in 0..rng.random_range(1..=40) {
        policy(rng, i, &mut y);
    }
    y
}

struct Req {
    tcp: bool,
    id: Option<SpiffeId>,
    ip: IpAddr,
    dst: IpAddr,
    port: u16,
    method: String,
    path: String,
    host: String,
    headers: Vec<(String, String)>,
}

fn request(rng: &mut StdRng) -> Req {
    let id = match rng.random_range(0..8) {
        0 => None,
        1 => Some(format!(
            "spiffe://{}/k/v/ns/{}/env/prod/sa/{}",
            pick(rng, TRUST_DOMAINS),
            pick(rng, NAMESPACES),
            pick(rng, ACCOUNTS)
        )),
        2 => Some(format!("spiffe://{}/vm/web", pick(rng, TRUST_DOMAINS))),
        _ => Some(format!(
            "spiffe://{}/ns/{}/sa/{}",
            pick(rng, TRUST_DOMAINS),
            pick(rng, NAMESPACES),
            pick(rng, ACCOUNTS)
        )),
    };
    let mut headers = Vec::new();
    for _ in 0..rng.random_range(0..3) {
        headers.push((
            "x-tenant".to_owned(),
            pick(rng, &["acme", "evil", "a"]).to_owned(),
        ));
    }
    Req {
        tcp: rng.random_bool(0.25),
        id: id.map(|s| SpiffeId::parse(&s).unwrap()),
        ip: pick(rng, IPS).parse().unwrap(),
        dst: pick(rng, IPS).parse().unwrap(),
        port: *PORTS.choose(rng).unwrap(),
        method: pick(rng, METHODS).to_owned(),
        path: pick(rng, PATHS).to_owned(),
        host: pick(rng, HOSTS).to_owned(),
        headers,
    }
}

#[test]
fn indexed_and_linear_evaluators_agree() {
    let sets: u64 = std::env::var("WARD_POLICY_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut decisions = BTreeMap::<&'static str, usize>::new();
    for seed in 0..sets {
        let mut rng = StdRng::seed_from_u64(seed);
        let yaml = policies(&mut rng);
        let set = PolicySet::parse_str("random", &yaml).unwrap_or_else(|e| {
            panic!("seed {seed}: generated policies do not load:\n{e}\n{yaml}")
        });
        let aliases = if rng.random_bool(0.5) {
            TrustDomainAliases::new(["old.td"]).unwrap()
        } else {
            TrustDomainAliases::default()
        };
        let options = EvalOptions {
            root_namespace: "ward-system".into(),
            trust_domain: pick(&mut rng, &["cluster.local", "new.td"]).into(),
        };
        for app in ["api", "web"] {
            let labels = BTreeMap::from([("app".to_owned(), app.to_owned())]);
            let w = set.for_workload_with_aliases("foo", &labels, &options, &aliases);
            for _ in 0..60 {
                let r = request(&mut rng);
                let attrs = RequestAttrs {
                    protocol: if r.tcp { Protocol::Tcp } else { Protocol::Http },
                    source_principal: r.id.as_ref(),
                    source_ip: r.ip,
                    destination_ip: r.dst,
                    destination_port: r.port,
                    method: (!r.tcp).then_some(r.method.as_str()),
                    path: (!r.tcp).then_some(r.path.as_str()),
                    host: (!r.tcp).then_some(r.host.as_str()),
                    headers: &r.headers,
                };
                // Always through the index, and as `evaluate` chooses (the
                // index, or every rule when there are few or most are
                // candidates).
                let indexed = w.evaluate_indexed(&attrs);
                let linear = w.evaluate_linear(&attrs);
                assert_eq!(w.evaluate(&attrs), linear, "seed {seed}");
                assert_eq!(
                    indexed, linear,
                    "seed {seed}, workload app={app}, request {:?} {} {} {:?} port {} from {:?}\npolicies:\n{yaml}",
                    attrs.protocol, r.method, r.path, r.host, r.port, r.id
                );
                *decisions.entry(indexed.reason.as_str()).or_default() += 1;
                if !indexed.dry_run_matches.is_empty() {
                    *decisions.entry("dry-run match").or_default() += 1;
                }
                if !indexed.audit_matches.is_empty() {
                    *decisions.entry("audit match").or_default() += 1;
                }
            }
        }
    }
    eprintln!("{decisions:#?}");
    // The generator reaches every outcome.
    for outcome in [
        "denied by DENY policy",
        "allowed: no ALLOW policy applies",
        "allowed by ALLOW policy",
        "denied: no ALLOW policy matched",
        "denied: malformed method",
        "denied: malformed path",
        "dry-run match",
        "audit match",
    ] {
        assert!(
            decisions.get(outcome).copied().unwrap_or(0) > 10,
            "{outcome} reached too rarely: {decisions:?}"
        );
    }
}
