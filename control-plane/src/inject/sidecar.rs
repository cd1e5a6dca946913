//! The containers and volumes injection adds.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, DownwardAPIVolumeFile,
    DownwardAPIVolumeSource, EnvVar, EnvVarSource, ExecAction, Lifecycle, LifecycleHandler,
    ObjectFieldSelector, Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile,
    SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::probes::AppProbe;
use super::{
    ADMIN_PORT, CA_BUNDLE_CONFIGMAP, INBOUND_PORT, INIT_CONTAINER, InjectConfig, OUTBOUND_PORT,
    PROXY_CONTAINER, PROXY_UID, PodOptions, TOKEN_AUDIENCE,
};

pub const TOKEN_VOLUME: &str = "ward-token";
pub const BUNDLE_VOLUME: &str = "ward-ca-bundle";
pub const PODINFO_VOLUME: &str = "ward-podinfo";
pub const VOLUME_NAMES: [&str; 3] = [TOKEN_VOLUME, BUNDLE_VOLUME, PODINFO_VOLUME];
pub const TOKEN_DIR: &str = "/var/run/secrets/ward";
pub const BUNDLE_DIR: &str = "/var/run/ward/bundle";
pub const PODINFO_DIR: &str = "/var/run/ward/podinfo";
const TOKEN_TTL_SECONDS: i64 = 3600;

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".into()),
                field_path: field_path.into(),
            }),
            ..Default::default()
        }),
    }
}

fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn capabilities(add: &[&str]) -> Capabilities {
    Capabilities {
        add: (!add.is_empty()).then(|| add.iter().map(|c| (*c).to_owned()).collect()),
        drop: Some(vec!["ALL".into()]),
    }
}

/// `ward-init`: installs the iptables capture rules (`ward-proxy init`) and
/// exits. Root with NET_ADMIN and NET_RAW only, for the pod's network
/// namespace; nothing else.
pub fn init_container(
    config: &InjectConfig,
    options: &PodOptions,
    exclude_inbound: &[u16],
) -> Container {
    Container {
        name: INIT_CONTAINER.into(),
        image: Some(config.image.clone()),
        image_pull_policy: config.image_pull_policy.clone(),
        command: Some(vec!["ward-proxy".into(), "init".into()]),
        env: Some(vec![
            env("WARD_INBOUND_PORT", INBOUND_PORT.to_string()),
            env("WARD_OUTBOUND_PORT", OUTBOUND_PORT.to_string()),
            env("WARD_PROXY_UID", PROXY_UID.to_string()),
            env("WARD_PROXY_GID", PROXY_UID.to_string()),
            env("WARD_ADMIN_PORT", ADMIN_PORT.to_string()),
            env("WARD_EXCLUDE_INBOUND_PORTS", join(exclude_inbound)),
            env(
                "WARD_EXCLUDE_OUTBOUND_PORTS",
                join(&options.exclude_outbound_ports),
            ),
            env(
                "WARD_EXCLUDE_OUTBOUND_CIDRS",
                join(&options.exclude_outbound_cidrs),
            ),
        ]),
        resources: Some(resources(
            [("cpu", "10m"), ("memory", "16Mi")],
            [("cpu", "100m"), ("memory", "64Mi")],
        )),
        security_context: Some(SecurityContext {
            capabilities: Some(capabilities(&["NET_ADMIN", "NET_RAW"])),
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            seccomp_profile: Some(runtime_default()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    }
}

fn resources<const N: usize>(
    requests: [(&str, &str); N],
    limits: [(&str, &str); N],
) -> ResourceRequirements {
    let map = |pairs: [(&str, &str); N]| -> BTreeMap<String, Quantity> {
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Quantity(v.to_owned())))
            .collect()
    };
    ResourceRequirements {
        requests: Some(map(requests)),
        limits: Some(map(limits)),
        claims: None,
    }
}

/// The proxy's own probes: `/ready` and `/live` answer loopback only (the
/// kubelet probes from the node), so they run inside the sidecar as
/// `ward-proxy probe ready|live`, a GET to 127.0.0.1:15020 that exits 0 on 200.
fn admin_probe(check: &str, period: i32, failure_threshold: i32) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(vec![
                "ward-proxy".into(),
                "probe".into(),
                check.into(),
                "--timeout".into(),
                "2s".into(),
            ]),
        }),
        period_seconds: Some(period),
        // Above the command's own --timeout, so it reports its reason.
        timeout_seconds: Some(3),
        failure_threshold: Some(failure_threshold),
        ..Default::default()
    }
}

/// `ward-proxy`: the sidecar, as UID/GID 1337 (not captured), no capabilities.
pub fn proxy_container(
    config: &InjectConfig,
    options: &PodOptions,
    app_probes: &BTreeMap<String, AppProbe>,
) -> Container {
    let mut env_vars = vec![
        env("WARD_CONTROL_PLANE", config.control_plane.clone()),
        env("WARD_CA_BUNDLE", format!("{BUNDLE_DIR}/bundle.pem")),
        env("WARD_SA_TOKEN_FILE", format!("{TOKEN_DIR}/token")),
        env("WARD_TRUST_DOMAIN", config.trust_domain.clone()),
        field_env("WARD_POD_NAME", "metadata.name"),
        field_env("WARD_POD_NAMESPACE", "metadata.namespace"),
        field_env("WARD_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        field_env("WARD_POD_IP", "status.podIP"),
        env("WARD_POD_LABELS_FILE", format!("{PODINFO_DIR}/labels")),
        env("WARD_LOG_LEVEL", options.log_level.clone()),
        env("WARD_OPAQUE_PORTS", join(&options.opaque_ports)),
    ];
    if options.inbound_to_loopback {
        env_vars.push(env("WARD_INBOUND_TO_LOOPBACK", "true".to_owned()));
    }
    if !app_probes.is_empty() {
        env_vars.push(env(
            "WARD_APP_PROBES",
            serde_json::to_string(app_probes).expect("probes serialize"),
        ));
    }
    let r = &options.resources;
    let mut container = Container {
        name: PROXY_CONTAINER.into(),
        image: Some(config.image.clone()),
        image_pull_policy: config.image_pull_policy.clone(),
        command: Some(vec!["ward-proxy".into(), "run".into()]),
        env: Some(env_vars),
        ports: Some(vec![ContainerPort {
            name: Some("ward-metrics".into()),
            container_port: ADMIN_PORT.into(),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        resources: Some(resources(
            [
                ("cpu", r.cpu_request.as_str()),
                ("memory", r.memory_request.as_str()),
            ],
            [
                ("cpu", r.cpu_limit.as_str()),
                ("memory", r.memory_limit.as_str()),
            ],
        )),
        readiness_probe: Some(admin_probe("ready", 5, 3)),
        liveness_probe: Some(admin_probe("live", 10, 3)),
        security_context: Some(SecurityContext {
            capabilities: Some(capabilities(&[])),
            run_as_user: Some(PROXY_UID),
            run_as_group: Some(PROXY_UID),
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            seccomp_profile: Some(runtime_default()),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            mount(TOKEN_VOLUME, TOKEN_DIR),
            mount(BUNDLE_VOLUME, BUNDLE_DIR),
            mount(PODINFO_VOLUME, PODINFO_DIR),
        ]),
        ..Default::default()
    };
    if options.native_sidecar {
        // The kubelet starts the next init container (and then the app) only
        // once this startup probe passed: the app never runs unproxied.
        container.restart_policy = Some("Always".into());
        container.startup_probe = Some(admin_probe("ready", 1, 120));
    } else {
        // A regular container started first: the kubelet runs postStart to
        // completion before it starts the next container.
        container.lifecycle = Some(Lifecycle {
            post_start: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec![
                        "ward-proxy".into(),
                        "wait-ready".into(),
                        "--timeout".into(),
                        "120s".into(),
                    ]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    container
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..Default::default()
    }
}

pub fn volumes() -> Vec<Volume> {
    vec![
        Volume {
            name: TOKEN_VOLUME.into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(TOKEN_AUDIENCE.into()),
                        expiration_seconds: Some(TOKEN_TTL_SECONDS),
                        path: "token".into(),
                    }),
                    ..Default::default()
                }]),
                default_mode: None,
            }),
            ..Default::default()
        },
        Volume {
            name: BUNDLE_VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: CA_BUNDLE_CONFIGMAP.into(),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: PODINFO_VOLUME.into(),
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![DownwardAPIVolumeFile {
                    path: "labels".into(),
                    field_ref: Some(ObjectFieldSelector {
                        api_version: Some("v1".into()),
                        field_path: "metadata.labels".into(),
                    }),
                    ..Default::default()
                }]),
                default_mode: None,
            }),
            ..Default::default()
        },
    ]
}
