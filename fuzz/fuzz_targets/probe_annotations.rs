//! The probe annotations and the probes handed from the injector to the
//! sidecar. The first byte picks the input:
//! 0 a Pod (JSON): injected as the webhook does (a JSON patch) and as
//!   `ward inject` does (in place); both must give the same pod, and the
//!   sidecar must accept the `WARD_APP_PROBES` the injector wrote, with an
//!   entry for every probe it rewrote;
//! 1 `ward.io/*` annotations (a JSON object): parsed, rendered back and
//!   parsed again to the same options;
//! 2 a `WARD_APP_PROBES` value, as the sidecar parses it at start;
//! 3 an AdmissionReview body, as the webhook answers it.
#![no_main]
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use libfuzzer_sys::fuzz_target;
use ward_api::probes::AppProbe;
use ward_control_plane::inject::{
    ANNOTATION_EXCLUDE_INBOUND_PORTS, ANNOTATION_EXCLUDE_OUTBOUND_CIDRS,
    ANNOTATION_EXCLUDE_OUTBOUND_PORTS, ANNOTATION_INJECT, ANNOTATION_LOG_LEVEL,
    ANNOTATION_NATIVE_SIDECAR, ANNOTATION_OPAQUE_PORTS, ANNOTATION_PROXY_CPU,
    ANNOTATION_PROXY_CPU_LIMIT, ANNOTATION_PROXY_MEMORY, ANNOTATION_PROXY_MEMORY_LIMIT,
    ANNOTATION_REWRITE_APP_PROBES, InjectConfig, InjectOutcome, PROXY_CONTAINER, PodOptions,
    inject_pod, inject_pod_spec,
};
use ward_proxy::admin::AppProbes;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let config = InjectConfig::new("cluster.local");
    match selector % 4 {
        0 => pod(rest, &config),
        1 => annotations(rest, &config),
        2 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                let _ = AppProbes::parse(text);
            }
        }
        _ => {
            let _ = ward_control_plane::webhook::review(rest, true, &config);
        }
    }
});

fn pod(json: &[u8], config: &InjectConfig) {
    let Ok(mut pod) = serde_json::from_slice::<Pod>(json) else {
        return;
    };
    pod.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .entry(ANNOTATION_INJECT.into())
        .or_insert_with(|| "true".into());
    let labels = BTreeMap::new();
    let outcome = inject_pod(&pod, "default", &labels, config);

    let mut meta = pod.metadata.clone();
    let mut spec = pod.spec.clone();
    let in_place = match spec.as_mut() {
        Some(spec) => inject_pod_spec(&mut meta, spec, "default", &labels, config),
        None => return,
    };
    let patch = match (outcome, in_place) {
        (Ok(InjectOutcome::Patch(patch)), Ok(None)) => patch,
        (Ok(InjectOutcome::Skipped(a)), Ok(Some(b))) => {
            assert_eq!(a, b);
            return;
        }
        (Err(a), Err(b)) => {
            assert_eq!(a, b);
            return;
        }
        (a, b) => panic!("the webhook says {a:?}, ward inject says {b:?}"),
    };
    // The webhook's patch applies to the pod as sent, and gives the pod
    // `ward inject` writes.
    let mut doc = serde_json::to_value(&pod).unwrap();
    json_patch::patch(&mut doc, &patch).unwrap_or_else(|e| panic!("{e}: {patch:?}"));
    let expected = serde_json::to_value(Pod {
        metadata: meta,
        spec,
        status: pod.status.clone(),
    })
    .unwrap();
    assert_eq!(doc, expected);
    let patched: Pod = serde_json::from_value(doc).expect("the patched pod is a Pod");
    let spec = patched.spec.expect("a spec");

    // The sidecar starts with the probes the injector handed it.
    let proxy = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == PROXY_CONTAINER)
        .expect("a ward-proxy container");
    let value = env(proxy, "WARD_APP_PROBES").unwrap_or_default();
    let probes = AppProbes::parse(&value)
        .unwrap_or_else(|e| panic!("the sidecar refuses WARD_APP_PROBES {value:?}: {e}"));
    let written: BTreeMap<String, AppProbe> = if value.is_empty() {
        BTreeMap::new()
    } else {
        serde_json::from_str(&value).unwrap()
    };
    assert_eq!(probes.len(), written.len());
    // Every probe pointed at the admin port has its original there.
    for c in spec.containers.iter().filter(|c| c.name != PROXY_CONTAINER) {
        for probe in [&c.liveness_probe, &c.readiness_probe, &c.startup_probe]
            .into_iter()
            .flatten()
        {
            let Some(get) = &probe.http_get else { continue };
            let Some(path) = &get.path else { continue };
            if path.starts_with("/app-health/") && path.ends_with('z') {
                let original = probes.get(path);
                assert!(original.is_some(), "{path} has no original probe");
            }
        }
    }
}

fn env(container: &Container, name: &str) -> Option<String> {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

fn annotations(json: &[u8], config: &InjectConfig) {
    let Ok(annotations) = serde_json::from_slice::<BTreeMap<String, String>>(json) else {
        return;
    };
    let Ok(options) = PodOptions::parse(Some(&annotations), config) else {
        return;
    };
    for ports in [
        &options.exclude_inbound_ports,
        &options.exclude_outbound_ports,
        &options.opaque_ports,
    ] {
        assert!(!ports.contains(&0));
        for (i, p) in ports.iter().enumerate() {
            assert!(!ports[i + 1..].contains(p), "{p} twice");
        }
    }
    // The options, written back as annotations, parse to themselves.
    let join = |ports: &[u16]| {
        ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let r = &options.resources;
    let rendered = BTreeMap::from([
        (
            ANNOTATION_NATIVE_SIDECAR,
            options.native_sidecar.to_string(),
        ),
        (
            ANNOTATION_EXCLUDE_INBOUND_PORTS,
            join(&options.exclude_inbound_ports),
        ),
        (
            ANNOTATION_EXCLUDE_OUTBOUND_PORTS,
            join(&options.exclude_outbound_ports),
        ),
        (
            ANNOTATION_EXCLUDE_OUTBOUND_CIDRS,
            options.exclude_outbound_cidrs.join(","),
        ),
        (ANNOTATION_OPAQUE_PORTS, join(&options.opaque_ports)),
        (ANNOTATION_PROXY_CPU, r.cpu_request.clone()),
        (ANNOTATION_PROXY_MEMORY, r.memory_request.clone()),
        (ANNOTATION_PROXY_CPU_LIMIT, r.cpu_limit.clone()),
        (ANNOTATION_PROXY_MEMORY_LIMIT, r.memory_limit.clone()),
        (ANNOTATION_LOG_LEVEL, options.log_level.clone()),
        (
            ANNOTATION_REWRITE_APP_PROBES,
            options.rewrite_app_probes.to_string(),
        ),
    ]);
    let rendered: BTreeMap<String, String> = rendered
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let again = PodOptions::parse(Some(&rendered), config)
        .unwrap_or_else(|e| panic!("{rendered:?} does not parse: {e}"));
    assert_eq!(again, options);
}
