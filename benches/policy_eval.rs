//! Authorization evaluation time per HTTP request with 1, 100 and 1,000
//! policies applying to the workload (one in ten DENY, the rest ALLOW; each
//! with principals, namespaces, methods, paths and a header condition).
//! `allow_last` matches only the last ALLOW policy; `deny_none` matches
//! nothing (then deny); `allow_normalize` is `allow_last` with a path that
//! must be normalized. Each runs through `WorkloadPolicy::evaluate` (the
//! index, or every rule when there are few or most are candidates) and, as
//! `linear_*`, through the linear reference (`evaluate_linear`, every rule
//! of every policy: what `evaluate` did before the index).
//! `worst_unindexed` is the index's worst case: rules that name principals
//! only by prefix and restrict nothing else but the method, so every rule
//! is filed under the method the request uses; `evaluate` then tries every
//! rule in order, and `indexed_worst_unindexed` shows what going through
//! the index anyway (`evaluate_indexed`) costs.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt::Write;
use std::hint::black_box;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, criterion_group, criterion_main};
use ward_identity::SpiffeId;
use ward_policy::{EvalOptions, PolicySet, Protocol, RequestAttrs, WorkloadPolicy};

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

/// Rules the index cannot narrow beyond the method: prefix principals.
fn unindexed_policies(n: usize) -> String {
    let mut y = String::new();
    for i in 0..n {
        write!(
            y,
            "---\napiVersion: security.ward.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: allow-{i:04}, namespace: prod}}\nspec:\n  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/team{i}/*\"]\n    to:\n    - operation:\n        methods: [\"GET\", \"HEAD\"]\n"
        )
        .unwrap();
    }
    y
}

fn last_allow(n: usize) -> usize {
    (0..n).rev().find(|i| i % 10 != 9).unwrap()
}

fn leak<T>(v: T) -> &'static T {
    Box::leak(Box::new(v))
}

/// One case, indexed and linear (checking first that both decide alike).
fn bench(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    n: usize,
    w: &WorkloadPolicy,
    req: &RequestAttrs<'_>,
    want: bool,
) {
    assert_eq!(w.evaluate(req).allowed, want, "{name} n={n}");
    assert_eq!(w.evaluate(req), w.evaluate_linear(req), "{name} n={n}");
    group.bench_with_input(BenchmarkId::new(name, n), req, |b, req| {
        b.iter(|| black_box(w.evaluate(black_box(req)).allowed))
    });
    group.bench_with_input(
        BenchmarkId::new(format!("linear_{name}"), n),
        req,
        |b, req| b.iter(|| black_box(w.evaluate_linear(black_box(req)).allowed)),
    );
}

fn policy_eval(c: &mut Criterion) {
    let labels = BTreeMap::from([("app".to_owned(), "api".to_owned())]);
    let options = EvalOptions::default();
    let headers: &'static Vec<(String, String)> =
        leak(vec![("x-tenant".to_owned(), "acme".to_owned())]);
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
    let stranger: &'static SpiffeId =
        leak(SpiffeId::parse("spiffe://cluster.local/ns/elsewhere/sa/x").unwrap());
    let mut group = c.benchmark_group("policy_eval");
    for n in [1usize, 100, 1000] {
        let set = PolicySet::parse_str("bench", &policies(n)).expect("policies load");
        let workload = set.for_workload("prod", &labels, &options);
        let last = last_allow(n);
        let matching: &'static SpiffeId = leak(
            SpiffeId::parse(&format!("spiffe://cluster.local/ns/team{last}/sa/client")).unwrap(),
        );
        let path_ok: &'static str = Box::leak(format!("/svc{last}/items/42").into_boxed_str());
        let path_norm: &'static str =
            Box::leak(format!("/svc{last}/static/..//items/%34%32?page=2").into_boxed_str());
        bench(
            &mut group,
            "allow_last",
            n,
            &workload,
            &attrs(matching, path_ok),
            true,
        );
        bench(
            &mut group,
            "deny_none",
            n,
            &workload,
            &attrs(stranger, path_ok),
            false,
        );
        bench(
            &mut group,
            "allow_normalize",
            n,
            &workload,
            &attrs(matching, path_norm),
            true,
        );

        let set = PolicySet::parse_str("bench", &unindexed_policies(n)).expect("policies load");
        let workload = set.for_workload("prod", &labels, &options);
        let member: &'static SpiffeId = leak(
            SpiffeId::parse(&format!("spiffe://cluster.local/ns/team{}/sa/a", n - 1)).unwrap(),
        );
        bench(
            &mut group,
            "worst_unindexed",
            n,
            &workload,
            &attrs(member, "/x"),
            true,
        );
        let req = attrs(member, "/x");
        assert_eq!(
            workload.evaluate_indexed(&req),
            workload.evaluate_linear(&req)
        );
        group.bench_with_input(
            BenchmarkId::new("indexed_worst_unindexed", n),
            &req,
            |b, req| b.iter(|| black_box(workload.evaluate_indexed(black_box(req)).allowed)),
        );
    }
    group.finish();
}

criterion_group!(benches, policy_eval);
criterion_main!(benches);
