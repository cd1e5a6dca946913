//! The Kubernetes source's cost per watch event, in a cluster with N
//! resources: what one change costs the control plane before it is pushed.
//! - `policy_change`: one AuthorizationPolicy edited among N: the catalog
//!   parses that resource, the parsed resources are merged, the store
//!   publishes the set and the statuses to write are found (what the
//!   Kubernetes source does per batch);
//! - `pod_event`: one meshed pod's labels changed among N pods (the
//!   endpoint table fold, per event);
//! - `pod_publish`: the table's snapshot handed to the watch streams' endpoint
//!   list (once per batch of events).
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use ward_control_plane::discovery::{Endpoints, Inbox};
use ward_control_plane::k8s::WatchEvent;
use ward_control_plane::k8s::catalog::PolicyCatalog;
use ward_control_plane::k8s::endpoints::EndpointTable;
use ward_control_plane::metrics::Metrics;
use ward_control_plane::policy_store::PolicyStore;
use ward_policy::PolicySet;

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
                let methods: &[&str] = if generation % 2 == 0 {
                    &["GET", "HEAD"]
                } else {
                    &["GET"]
                };
                assert!(catalog.apply(WatchEvent::Applied(policy(n / 2, generation, methods))));
                let parts: Vec<_> = catalog.in_force().collect();
                let set = PolicySet::merge(parts.iter().map(|(_, set)| *set)).unwrap();
                let docs = parts.iter().map(|(doc, _)| (*doc).clone()).collect();
                black_box(store.publish("bench", set, docs));
                // The status check runs over every resource per batch.
                black_box(catalog.unreported());
            })
        });
    }
    group.finish();
}

fn pod_event(c: &mut Criterion) {
    let mut group = c.benchmark_group("pod_event");
    for n in [1000usize, 10000] {
        let mut table = EndpointTable::new("cluster.local");
        table.apply(WatchEvent::Restarted(
            (0..n).map(|i| pod(i, "v1")).collect(),
        ));
        let (v1, v2) = (pod(n / 2, "v1"), pod(n / 2, "v2"));
        let mut flip = false;
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                flip = !flip;
                let changed = if flip { v2.clone() } else { v1.clone() };
                assert!(!table.apply(WatchEvent::Applied(changed)).is_empty());
            })
        });
    }
    group.finish();
}

/// Publishing one pod change into the discovery registry of a mesh of n
/// pods, with 1,000 streams subscribed (each to other addresses, one to
/// this one): only that one stream is told.
fn pod_publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("pod_publish");
    for n in [1000usize, 10000] {
        let mut table = EndpointTable::new("cluster.local");
        table.apply(WatchEvent::Restarted(
            (0..n).map(|i| pod(i, "v1")).collect(),
        ));
        let endpoints = Endpoints::new(&[]).unwrap();
        let all: Vec<_> = table.snapshot().endpoints.into_iter().collect();
        endpoints.apply_kubernetes(all.iter().map(|(ip, e)| (*ip, Some(e.clone()))));
        let inboxes: Vec<Arc<Inbox>> = (0..1000).map(|_| Arc::new(Inbox::default())).collect();
        for (stream, inbox) in inboxes.iter().enumerate() {
            let (ip, _) = &all[stream % all.len()];
            endpoints.subscribe(
                ward_api::discovery::ResourceType::Endpoint,
                *ip,
                stream as u64,
                inbox,
            );
        }
        let (ip, endpoint) = all[0].clone();
        let mut changed = endpoint.clone();
        changed.labels.insert("version".into(), "v2".into());
        let mut flip = false;
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                flip = !flip;
                let e = if flip {
                    changed.clone()
                } else {
                    endpoint.clone()
                };
                endpoints.apply_kubernetes([(ip, Some(e))]);
                inboxes[0].take(ward_api::discovery::ResourceType::Endpoint)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, policy_change, pod_event, pod_publish);
criterion_main!(benches);
