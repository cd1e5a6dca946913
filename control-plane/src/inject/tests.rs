use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, GRPCAction, HTTPGetAction, Pod, PodSpec, Probe, TCPSocketAction,
    Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::annotations::is_quantity;
use super::*;

fn config() -> InjectConfig {
    InjectConfig::new("example.org")
}

fn pod(annotations: &[(&str, &str)]) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("web".into()),
            annotations: (!annotations.is_empty()).then(|| {
                annotations
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect()
            }),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                image: Some("nginx".into()),
                ports: Some(vec![ContainerPort {
                    name: Some("http".into()),
                    container_port: 8080,
                    ..Default::default()
                }]),
                readiness_probe: Some(Probe {
                    http_get: Some(HTTPGetAction {
                        path: Some("/healthz".into()),
                        port: IntOrString::String("http".into()),
                        ..Default::default()
                    }),
                    period_seconds: Some(7),
                    ..Default::default()
                }),
                liveness_probe: Some(Probe {
                    tcp_socket: Some(TCPSocketAction {
                        port: IntOrString::Int(8080),
                        host: None,
                    }),
                    ..Default::default()
                }),
                startup_probe: Some(Probe {
                    grpc: Some(GRPCAction {
                        port: 9090,
                        service: None,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            volumes: Some(vec![Volume {
                name: "data".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

fn no_labels() -> BTreeMap<String, String> {
    BTreeMap::new()
}

/// The value of `c`'s environment variable `name`.
fn env(c: &Container, name: &str) -> Option<String> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

fn enabled() -> BTreeMap<String, String> {
    BTreeMap::from([(NAMESPACE_LABEL.into(), NAMESPACE_ENABLED.into())])
}

/// Injects `pod(annotations)` in an enabled namespace with the default
/// config: applies the webhook's JSON patch to the pod as JSON and checks it
/// equals the typed injection, so both renderings agree.
fn injected(annotations: &[(&str, &str)]) -> Pod {
    injected_pod(&pod(annotations))
}

/// `injected` for a pod built by the test. Every pod injected here is also
/// checked against the Kubernetes Pod schema (strict), so each shape a test
/// produces is schema-checked without a list to keep up to date.
fn injected_pod(pod: &Pod) -> Pod {
    let (labels, config) = (&enabled(), &config());
    let InjectOutcome::Patch(patch) = inject_pod(pod, "shop", labels, config).unwrap() else {
        panic!("expected a patch")
    };
    let mut doc = serde_json::to_value(pod).unwrap();
    json_patch::patch(&mut doc, &patch).unwrap();
    let from_patch: Pod = serde_json::from_value(doc).unwrap();
    let mut typed = pod.clone();
    let skipped = inject_pod_spec(
        &mut typed.metadata,
        typed.spec.as_mut().unwrap(),
        "shop",
        labels,
        config,
    )
    .unwrap();
    assert_eq!(skipped, None);
    assert_eq!(from_patch, typed);
    let mut object = serde_json::to_value(&from_patch).unwrap();
    object["apiVersion"] = "v1".into();
    object["kind"] = "Pod".into();
    ward_testkit::kubernetes::assert_valid(
        "the injected pod",
        &[serde_json::to_string_pretty(&object).unwrap()],
    );
    from_patch
}

#[test]
fn selection_rules() {
    let c = config();
    let skip =
        |p: &Pod, ns: &str, labels: &BTreeMap<String, String>| match inject_pod(p, ns, labels, &c)
            .unwrap()
        {
            InjectOutcome::Skipped(r) => Some(r),
            InjectOutcome::Patch(_) => None,
        };
    assert_eq!(
        skip(&pod(&[]), "shop", &no_labels()),
        Some(SkipReason::NotSelected)
    );
    assert_eq!(
        skip(&pod(&[("ward.io/inject", "true")]), "shop", &no_labels()),
        None
    );
    assert_eq!(skip(&pod(&[]), "shop", &enabled()), None);
    assert_eq!(
        skip(&pod(&[("ward.io/inject", "false")]), "shop", &enabled()),
        Some(SkipReason::OptedOut)
    );
    assert_eq!(
        skip(
            &pod(&[("ward.io/inject", "true")]),
            "ward-system",
            &enabled()
        ),
        Some(SkipReason::SystemNamespace)
    );
    let mut host = pod(&[("ward.io/inject", "true")]);
    host.spec.as_mut().unwrap().host_network = Some(true);
    assert_eq!(
        skip(&host, "shop", &no_labels()),
        Some(SkipReason::HostNetwork)
    );
    assert_eq!(
        skip(&pod(&[("ward.io/status", "{}")]), "shop", &enabled()),
        Some(SkipReason::AlreadyInjected)
    );
}

#[test]
fn native_sidecar_layout() {
    let p = injected(&[]);
    let spec = p.spec.unwrap();
    let inits = spec.init_containers.unwrap();
    assert_eq!(inits[0].name, "ward-init");
    assert_eq!(inits[1].name, "ward-proxy");
    assert_eq!(inits[1].restart_policy.as_deref(), Some("Always"));
    // The proxy's /ready and /live answer loopback only: exec probes.
    let exec = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
        let probe = probe.as_ref().expect("probe set");
        assert!(probe.http_get.is_none() && probe.tcp_socket.is_none());
        probe.exec.as_ref().unwrap().command.clone().unwrap()
    };
    let cmd = |check: &str| -> Vec<String> {
        ["ward-proxy", "probe", check, "--timeout", "2s"]
            .map(String::from)
            .to_vec()
    };
    assert_eq!(exec(&inits[1].startup_probe), cmd("ready"));
    assert_eq!(exec(&inits[1].readiness_probe), cmd("ready"));
    assert_eq!(exec(&inits[1].liveness_probe), cmd("live"));
    let startup = inits[1].startup_probe.as_ref().unwrap();
    assert_eq!(
        (startup.period_seconds, startup.failure_threshold),
        (Some(1), Some(120))
    );
    assert!(
        inits[1].lifecycle.is_none(),
        "no postStart with native sidecars"
    );
    assert_eq!(spec.containers.len(), 1);
    let status: serde_json::Value =
        serde_json::from_str(&p.metadata.annotations.unwrap()[ANNOTATION_STATUS]).unwrap();
    assert_eq!(status["nativeSidecar"], true);
}

#[test]
fn classic_sidecar_layout() {
    let p = injected(&[("ward.io/native-sidecar", "false")]);
    let spec = p.spec.unwrap();
    assert_eq!(spec.init_containers.unwrap().len(), 1);
    assert_eq!(spec.containers[0].name, "ward-proxy");
    let post_start = spec.containers[0]
        .lifecycle
        .as_ref()
        .unwrap()
        .post_start
        .as_ref()
        .unwrap();
    assert_eq!(
        post_start
            .exec
            .as_ref()
            .unwrap()
            .command
            .as_deref()
            .unwrap(),
        ["ward-proxy", "wait-ready", "--timeout", "120s"]
    );
    assert!(spec.containers[0].startup_probe.is_none());
    let ready = spec.containers[0].readiness_probe.as_ref().unwrap();
    assert!(ready.http_get.is_none());
    assert_eq!(
        ready.exec.as_ref().unwrap().command.as_deref().unwrap()[..3],
        ["ward-proxy", "probe", "ready"]
    );
    assert_eq!(spec.containers[1].name, "app");
}

#[test]
fn probes_are_rewritten_and_grpc_ports_stay_captured() {
    let p = injected(&[]);
    let spec = p.spec.unwrap();
    let app = &spec.containers[0];
    let ready = app.readiness_probe.as_ref().unwrap();
    let get = ready.http_get.as_ref().unwrap();
    assert_eq!(get.path.as_deref(), Some("/app-health/app/readyz"));
    assert_eq!(get.port, IntOrString::Int(15020));
    assert_eq!(ready.period_seconds, Some(7), "timings kept");
    let live = app.liveness_probe.as_ref().unwrap();
    assert!(live.tcp_socket.is_none());
    assert_eq!(
        live.http_get.as_ref().unwrap().path.as_deref(),
        Some("/app-health/app/livez")
    );
    // The gRPC probe goes to the sidecar like the others.
    let startup = app.startup_probe.as_ref().unwrap();
    assert!(startup.grpc.is_none(), "{startup:?}");
    let get = startup.http_get.as_ref().unwrap();
    assert_eq!(get.path.as_deref(), Some("/app-health/app/startupz"));
    assert_eq!(get.port, IntOrString::Int(15020));
    let inits = spec.init_containers.unwrap();
    // No port leaves capture for a probe.
    assert_eq!(env(&inits[0], "WARD_EXCLUDE_INBOUND_PORTS").unwrap(), "");
    let probes: BTreeMap<String, AppProbe> =
        serde_json::from_str(&env(&inits[1], "WARD_APP_PROBES").unwrap()).unwrap();
    let original = &probes["/app-health/app/readyz"];
    let get = original.http_get.as_ref().unwrap();
    assert_eq!((get.port, get.path.as_str()), (8080, "/healthz"));
    assert_eq!(
        probes["/app-health/app/livez"]
            .tcp_socket
            .as_ref()
            .unwrap()
            .port,
        8080
    );
    assert_eq!(
        probes["/app-health/app/startupz"].grpc,
        Some(AppGrpc {
            port: 9090,
            service: None
        })
    );
}

#[test]
fn a_grpc_probe_on_the_serving_port_keeps_it_captured() {
    for (annotations, excluded) in [
        (&[][..], ""),
        // The operator's own exclusions still apply, and only those.
        (&[("ward.io/exclude-inbound-ports", "9100")][..], "9100"),
    ] {
        let mut pod = pod(annotations);
        pod.spec.as_mut().unwrap().containers[0].readiness_probe = Some(Probe {
            grpc: Some(GRPCAction {
                port: 8080,
                service: Some("shop.Cart".into()),
            }),
            timeout_seconds: Some(3),
            ..Default::default()
        });
        let spec = injected_pod(&pod).spec.unwrap();
        let ready = spec.containers[0].readiness_probe.as_ref().unwrap();
        assert_eq!(
            ready.http_get.as_ref().unwrap().path.as_deref(),
            Some("/app-health/app/readyz")
        );
        assert!(ready.grpc.is_none());
        let inits = spec.init_containers.unwrap();
        assert_eq!(
            env(&inits[0], "WARD_EXCLUDE_INBOUND_PORTS").unwrap(),
            excluded
        );
        let probes: BTreeMap<String, AppProbe> =
            serde_json::from_str(&env(&inits[1], "WARD_APP_PROBES").unwrap()).unwrap();
        let original = &probes["/app-health/app/readyz"];
        assert_eq!(
            original.grpc,
            Some(AppGrpc {
                port: 8080,
                service: Some("shop.Cart".into())
            })
        );
        assert_eq!(original.timeout_seconds, 3);
    }
}

#[test]
fn annotations_are_validated() {
    let c = config();
    for (key, value) in [
        ("ward.io/exclude-inbound-ports", "80,http"),
        ("ward.io/exclude-outbound-ports", "70000"),
        ("ward.io/exclude-outbound-cidrs", "10.0.0.0/33"),
        ("ward.io/exclude-outbound-cidrs", "10.0.0.0"),
        ("ward.io/opaque-ports", "0"),
        ("ward.io/proxy-cpu", "lots"),
        ("ward.io/proxy-memory-limit", "1.2.3Gi"),
        ("ward.io/log-level", "chatty"),
        ("ward.io/native-sidecar", "yes"),
    ] {
        let err = inject_pod(&pod(&[(key, value)]), "shop", &enabled(), &c).unwrap_err();
        assert!(err.to_string().contains(key), "{err}");
    }
    let p = injected(&[
        ("ward.io/exclude-outbound-cidrs", " 10.96.0.0/12, fd00::/8 "),
        ("ward.io/proxy-cpu", "200m"),
        ("ward.io/proxy-memory-limit", "1Gi"),
        ("ward.io/opaque-ports", "5432,6379"),
        ("ward.io/log-level", "debug"),
    ]);
    let inits = p.spec.unwrap().init_containers.unwrap();
    let proxy = &inits[1];
    let r = proxy.resources.as_ref().unwrap();
    assert_eq!(r.requests.as_ref().unwrap()["cpu"].0, "200m");
    assert_eq!(r.requests.as_ref().unwrap()["memory"].0, "64Mi");
    assert_eq!(r.limits.as_ref().unwrap()["memory"].0, "1Gi");
    assert_eq!(
        env(&inits[0], "WARD_EXCLUDE_OUTBOUND_CIDRS").as_deref(),
        Some("10.96.0.0/12,fd00::/8")
    );
    assert_eq!(
        env(proxy, "WARD_OPAQUE_PORTS").as_deref(),
        Some("5432,6379")
    );
    assert_eq!(env(proxy, "WARD_LOG_LEVEL").as_deref(), Some("debug"));
}

#[test]
fn quantities() {
    for ok in ["1", "0.5", "100m", "128Mi", "1Gi", "1e3", "2E-2", ".5"] {
        assert!(is_quantity(ok), "{ok}");
    }
    for bad in ["", "m", "1.2.3", "-1", "1 Gi", "1gb", "1e", "."] {
        assert!(!is_quantity(bad), "{bad}");
    }
}

#[test]
fn prometheus_annotations_are_not_clobbered() {
    let p = injected(&[("prometheus.io/port", "9100")]);
    let a = p.metadata.annotations.unwrap();
    assert_eq!(a["prometheus.io/port"], "9100");
    assert!(!a.contains_key("prometheus.io/scrape"));
    let p = injected(&[]);
    let a = p.metadata.annotations.unwrap();
    assert_eq!(a["prometheus.io/port"], "15020");
}

#[test]
fn name_clashes_are_errors() {
    let mut p = pod(&[]);
    p.spec
        .as_mut()
        .unwrap()
        .volumes
        .as_mut()
        .unwrap()
        .push(Volume {
            name: "ward-token".into(),
            ..Default::default()
        });
    assert!(matches!(
        inject_pod(&p, "shop", &enabled(), &config()),
        Err(InjectError::NameClash(_))
    ));
}

/// Found by fuzzing (fuzz/fuzz_targets/probe_annotations.rs): a named probe
/// port whose container port is 0 was written to `WARD_APP_PROBES`, which the
/// sidecar refuses at start.
#[test]
fn probe_naming_a_port_out_of_range_is_an_error() {
    for bad in [0, 70000] {
        let mut p = pod(&[]);
        p.spec.as_mut().unwrap().containers[0].ports = Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: bad,
            ..Default::default()
        }]);
        let err = inject_pod(&p, "shop", &enabled(), &config()).unwrap_err();
        assert!(
            matches!(err, InjectError::Probe { .. }) && err.to_string().contains("out of range"),
            "{err}"
        );
    }
}

/// Found by fuzzing (fuzz/fuzz_targets/probe_annotations.rs): a probe of a
/// container with an empty name, or with a scheme other than HTTP/HTTPS,
/// was written to `WARD_APP_PROBES`, which the sidecar refuses at start.
#[test]
fn probes_the_sidecar_would_refuse_are_errors() {
    let mut unnamed = pod(&[]);
    unnamed.spec.as_mut().unwrap().containers[0].name = String::new();
    let mut slashed = pod(&[]);
    slashed.spec.as_mut().unwrap().containers[0].name = "a/b".into();
    let mut scheme = pod(&[]);
    let c = &mut scheme.spec.as_mut().unwrap().containers[0];
    c.readiness_probe
        .as_mut()
        .unwrap()
        .http_get
        .as_mut()
        .unwrap()
        .scheme = Some("FTP".into());
    for p in [unnamed, slashed, scheme] {
        assert!(matches!(
            inject_pod(&p, "shop", &enabled(), &config()),
            Err(InjectError::Probe { .. })
        ));
    }
    let mut lower = pod(&[]);
    let c = &mut lower.spec.as_mut().unwrap().containers[0];
    c.readiness_probe
        .as_mut()
        .unwrap()
        .http_get
        .as_mut()
        .unwrap()
        .scheme = Some("https".into());
    let spec = injected_pod(&lower).spec.unwrap();
    let probes: BTreeMap<String, AppProbe> =
        serde_json::from_str(&env(&spec.init_containers.unwrap()[1], "WARD_APP_PROBES").unwrap())
            .unwrap();
    let get = probes["/app-health/app/readyz"].http_get.as_ref().unwrap();
    assert!(get.scheme.eq_ignore_ascii_case("https"), "{get:?}");
}

#[test]
fn probe_naming_a_missing_port_is_an_error() {
    let mut p = pod(&[]);
    p.spec.as_mut().unwrap().containers[0].ports = None;
    let err = inject_pod(&p, "shop", &enabled(), &config()).unwrap_err();
    assert!(err.to_string().contains("\"http\""), "{err}");
    // Opting out of the rewrite injects anyway.
    let mut p = pod(&[("ward.io/rewrite-app-probes", "false")]);
    p.spec.as_mut().unwrap().containers[0].ports = None;
    let injected = injected_pod(&p);
    let app = &injected.spec.unwrap().containers[0];
    assert_eq!(
        app.readiness_probe,
        p.spec.unwrap().containers[0].readiness_probe,
        "probes left as they were"
    );
}

#[test]
fn inbound_to_loopback_is_an_explicit_opt_in() {
    let proxy_env = |annotations: &[(&str, &str)]| {
        let spec = injected(annotations).spec.unwrap();
        env(
            &spec.init_containers.unwrap()[1],
            "WARD_INBOUND_TO_LOOPBACK",
        )
    };
    assert_eq!(proxy_env(&[]), None, "the pod address by default");
    assert_eq!(proxy_env(&[("ward.io/inbound-to-loopback", "false")]), None);
    assert_eq!(
        proxy_env(&[("ward.io/inbound-to-loopback", "true")]).as_deref(),
        Some("true")
    );
    let mut bad = pod(&[("ward.io/inbound-to-loopback", "yes")]);
    bad.metadata.name = Some("p".into());
    assert!(matches!(
        inject_pod(&bad, "shop", &enabled(), &config()),
        Err(InjectError::Annotation { .. })
    ));
}
