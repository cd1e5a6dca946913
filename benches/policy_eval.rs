//! Authorization evaluation time per HTTP request with 1, 100 and 1,000
//! policies applying to the workload (one in ten DENY, the rest ALLOW; each
//! with principals, namespaces, methods, paths and a header condition).
//! `allow_last` matches only the last ALLOW policy (every policy is
//! scanned); `deny_none` matches nothing (every policy scanned, then deny);
//! `allow_normalize` is `allow_last` with a path that must be normalized.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt::Write;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ward_identity::SpiffeId;
use ward_policy::{EvalOptions, PolicySet, Protocol, RequestAttrs};

fn policies(n: usize) -> String {
    let mut y = String::new();
    for i in 0..n {
        if i % 10 == 9 {
            write!(
                y,
                "---\napiVersion: security.ward.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: deny-{i:04}, namespace: prod}}\nspec:\n  selector:\n    matchLabels: {{app: api}}\n  action: DENY\n  rules:\n  - from:\n    - source: {{namespaces: [\"quarantine-{i}\"]}}\n  - to:\n    - operation: {{paths: [\"/internal{i}/*\"], methods: [\"DELETE\"]}}\n"
            )
            .unwrap();
        } else {
            write!(
                y,
                "---\napiVersion: security.ward.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: allow-{i:04}, namespace: prod}}\nspec:\n  selector:\n    matchLabels: {{app: api}}\n  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/team{i}/sa/client\", \"cluster.local/ns/team{i}/sa/batch\"]\n    - source:\n        namespaces: [\"team{i}-canary\"]\n    to:\n    - operation:\n        methods: [\"GET\", \"HEAD\"]\n        paths: [\"/svc{i}/*\", \"/health\"]\n    - operation:\n        methods: [\"POST\"]\n        paths: [\"/svc{i}/orders\"]\n    when:\n    - key: request.headers[x-tenant]\n      notValues: [\"blocked\"]\n"
            )
            .unwrap();
        }
    }
    y
}

fn last_allow(n: usize) -> usize {
    (0..n).rev().find(|i| i % 10 != 9).unwrap()
}

fn policy_eval(c: &mut Criterion) {
    let labels = BTreeMap::from([("app".to_owned(), "api".to_owned())]);
    let options = EvalOptions::default();
    let headers: &'static Vec<(String, String)> =
        Box::leak(Box::new(vec![("x-tenant".to_owned(), "acme".to_owned())]));
    let mut group = c.benchmark_group("policy_eval");
    for n in [1usize, 100, 1000] {
        let set = PolicySet::parse_str("bench", &policies(n)).expect("policies load");
        let workload = set.for_workload("prod", &labels, &options);
        let last = last_allow(n);
        let matching =
            SpiffeId::parse(&format!("spiffe://cluster.local/ns/team{last}/sa/client")).unwrap();
        let stranger = SpiffeId::parse("spiffe://cluster.local/ns/elsewhere/sa/x").unwrap();
        let path_ok = format!("/svc{last}/items/42");
        let path_norm = format!("/svc{last}/static/..//items/%34%32?page=2");
        let attrs = |id: &'static SpiffeId, path: &'static str| RequestAttrs {
            protocol: Protocol::Http,
            source_principal: Some(id),
            source_ip: "10.1.0.5".parse().unwrap(),
            destination_ip: "10.1.0.9".parse().unwrap(),
            destination_port: 8080,
            method: Some("GET"),
            path: Some(path),
            host: Some("api.prod.svc.cluster.local"),
            headers,
        };
        let matching: &'static SpiffeId = Box::leak(Box::new(matching));
        let stranger: &'static SpiffeId = Box::leak(Box::new(stranger));
        let path_ok: &'static str = Box::leak(path_ok.into_boxed_str());
        let path_norm: &'static str = Box::leak(path_norm.into_boxed_str());
        let cases = [
            ("allow_last", attrs(matching, path_ok), true),
            ("deny_none", attrs(stranger, path_ok), false),
            ("allow_normalize", attrs(matching, path_norm), true),
        ];
        for (name, req, want) in cases {
            assert_eq!(workload.evaluate(&req).allowed, want, "{name} n={n}");
            group.bench_with_input(BenchmarkId::new(name, n), &req, |b, req| {
                b.iter(|| black_box(workload.evaluate(black_box(req)).allowed))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, policy_eval);
criterion_main!(benches);
