//! The Kubernetes source's cost per watch event, in a cluster with N
//! resources: what one change costs the control plane before it is pushed.
//! - `policy_change`: one AuthorizationPolicy edited among N (catalog
//!   validation of that resource, then the whole set offered to the store,
//!   which validates and publishes it);
//! - `pod_change`: one meshed pod's labels changed among N pods (endpoint
//!   table fold and snapshot).
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use ward_control_plane::k8s::WatchEvent;
use ward_control_plane::k8s::catalog::PolicyCatalog;
use ward_control_plane::k8s::endpoints::EndpointTable;
use ward_control_plane::metrics::Metrics;
use ward_control_plane::policy_store::PolicyStore;

fn policy(i: usize, generation: i64, methods: &[&str]) -> Value {
    json!({
        "apiVersion": "security.ward.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": format!("allow-{i:05}"), "namespace": format!("team{}", i % 50),
            "generation": generation, "resourceVersion": format!("{i}{generation}")},
        "spec": {"selector": {"matchLabels": {"app": format!("svc{i}")}},
            "rules": [{"from": [{"source": {"principals": [format!("cluster.local/ns/team{i}/sa/client")]}}],
                       "to": [{"operation": {"methods": methods, "paths": [format!("/svc{i}/*")]}}]}]}
    })
}

fn pod(i: usize, version: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": format!("web-{i}"), "namespace": format!("team{}", i % 50),
            "labels": {"app": "web", "version": version, "security.ward.io/tlsMode": "ward"}},
        "spec": {"serviceAccountName": "web", "containers": [{"name": "ward-proxy"}, {"name": "app"}]},
        "status": {"phase": "Running", "podIP": format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256)}
    }))
    .unwrap()
}

fn policy_change(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy_change");
    group.sample_size(20);
    for n in [100usize, 1000] {
        let store = PolicyStore::new(Arc::new(Metrics::new()), true);
        let mut catalog = PolicyCatalog::default();
        catalog.apply(WatchEvent::Restarted(
            (0..n).map(|i| policy(i, 1, &["GET"])).collect(),
        ));
        store.offer("bench", &catalog.texts()).unwrap();
        let mut generation = 1;
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                generation += 1;
                let methods: &[&str] = if generation % 2 == 0 { &["GET", "HEAD"] } else { &["GET"] };
                assert!(catalog.apply(WatchEvent::Applied(policy(n / 2, generation, methods))));
                black_box(store.offer("bench", &catalog.texts()).unwrap());
            })
        });
    }
    group.finish();
}

fn pod_change(c: &mut Criterion) {
    let mut group = c.benchmark_group("pod_change");
    for n in [1000usize, 10000] {
        let mut table = EndpointTable::new("cluster.local");
        table.apply(WatchEvent::Restarted((0..n).map(|i| pod(i, "v1")).collect()));
        let mut flip = false;
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                flip = !flip;
                let changed = pod(n / 2, if flip { "v2" } else { "v1" });
                black_box(table.apply(WatchEvent::Applied(changed)));
                black_box(table.snapshot());
            })
        });
    }
    group.finish();
}

criterion_group!(benches, policy_change, pod_change);
criterion_main!(benches);
