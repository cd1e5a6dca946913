//! Sidecar injection: pure functions over k8s-openapi types, shared by the
//! mutating admission webhook (`POST /inject` on 15017) and `ward inject`.
//!
//! [`inject_pod`] decides whether a pod is meshed and answers a JSON patch
//! (RFC 6902) that adds the `ward-init` init container, the `ward-proxy`
//! sidecar, its volumes and annotations; [`inject_pod_spec`] applies the same
//! change to a workload's pod template in place. A pod whose `ward.io/*`
//! annotations do not parse is an error ([`InjectError`]), never silently
//! injected with defaults nor silently left unmeshed: the webhook denies it
//! (fail closed), `ward inject` exits non-zero.
//!
//! Contracts with `ward-proxy` (documented in `docs/kubernetes.md`):
//! - the proxy answers `/ready` and `/live` on 15020 to loopback only, so its
//!   own probes are `exec: ward-proxy probe ready|live` (run inside the
//!   sidecar); `/metrics` and the listed `/app-health/...` paths answer any
//!   source, everything else on 15020 is loopback only;
//! - app `httpGet`/`tcpSocket`/`grpc` probes are rewritten to
//!   `GET /app-health/<container>/<livez|readyz|startupz>` on 15020 and the
//!   original probes handed to the proxy as JSON in `WARD_APP_PROBES`;
//! - without native sidecars the proxy is the first container and a
//!   `postStart` hook runs `ward-proxy wait-ready` so the app starts after it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

pub(crate) mod annotations;
mod probes;
mod sidecar;
#[cfg(test)]
mod tests;

pub use annotations::{
    ANNOTATION_EXCLUDE_INBOUND_PORTS, ANNOTATION_EXCLUDE_OUTBOUND_CIDRS,
    ANNOTATION_EXCLUDE_OUTBOUND_PORTS, ANNOTATION_INBOUND_TO_LOOPBACK, ANNOTATION_INJECT,
    ANNOTATION_LOG_LEVEL, ANNOTATION_NATIVE_SIDECAR, ANNOTATION_OPAQUE_PORTS, ANNOTATION_PROXY_CPU,
    ANNOTATION_PROXY_CPU_LIMIT, ANNOTATION_PROXY_MEMORY, ANNOTATION_PROXY_MEMORY_LIMIT,
    ANNOTATION_REWRITE_APP_PROBES, ANNOTATION_STATUS, PodOptions,
};
pub use probes::{AppGrpc, AppHeader, AppHttpGet, AppProbe, AppTcpSocket};

/// Namespace label that turns injection on for every pod in it.
pub const NAMESPACE_LABEL: &str = "ward.io/inject";
/// The value of [`NAMESPACE_LABEL`] that enables injection.
pub const NAMESPACE_ENABLED: &str = "enabled";
/// Pods here (the control plane's own) are never injected.
pub const SYSTEM_NAMESPACE: &str = "ward-system";
pub const PROXY_CONTAINER: &str = "ward-proxy";
pub const INIT_CONTAINER: &str = "ward-init";
pub const PROXY_UID: i64 = 1337;
pub const INBOUND_PORT: u16 = 15006;
pub const OUTBOUND_PORT: u16 = 15001;
pub const ADMIN_PORT: u16 = 15020;
pub const CONTROL_PLANE_ADDRESS: &str = "ward-control-plane.ward-system.svc:15012";
pub const CA_BUNDLE_CONFIGMAP: &str = "ward-ca-bundle";
/// Audience of the projected service-account token the proxy attests with.
pub const TOKEN_AUDIENCE: &str = "ward";
/// Label on every injected pod (as Istio's `security.istio.io/tlsMode`), so
/// the control plane watches only meshed pods (a label selector) rather
/// than every pod in the cluster.
pub const MESH_LABEL: &str = "security.ward.io/tlsMode";
pub const MESH_LABEL_VALUE: &str = "ward";

/// Resource requests and limits of the sidecar (Kubernetes quantities).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyResources {
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: String,
    pub memory_limit: String,
}

impl Default for ProxyResources {
    fn default() -> Self {
        ProxyResources {
            cpu_request: "50m".into(),
            memory_request: "64Mi".into(),
            cpu_limit: "1".into(),
            memory_limit: "256Mi".into(),
        }
    }
}

/// Cluster-wide injector settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectConfig {
    /// One image holds both `ward-proxy` (sidecar and init) and the control plane.
    pub image: String,
    pub image_pull_policy: Option<String>,
    pub trust_domain: String,
    /// `host:port` of the control plane API.
    pub control_plane: String,
    pub resources: ProxyResources,
    /// Whether the cluster runs native sidecars (init containers with
    /// `restartPolicy: Always`; Kubernetes ≥ 1.29). Pods may override it
    /// with `ward.io/native-sidecar`.
    pub native_sidecars: bool,
    /// Default `WARD_LOG_LEVEL`.
    pub log_level: String,
}

impl InjectConfig {
    pub fn new(trust_domain: impl Into<String>) -> Self {
        InjectConfig {
            image: default_image(),
            image_pull_policy: None,
            trust_domain: trust_domain.into(),
            control_plane: CONTROL_PLANE_ADDRESS.into(),
            resources: ProxyResources::default(),
            native_sidecars: true,
            log_level: "info".into(),
        }
    }
}

/// `ghcr.io/ward-mesh/ward:<this crate's version>`.
pub fn default_image() -> String {
    format!("ghcr.io/ward-mesh/ward:{}", env!("CARGO_PKG_VERSION"))
}

/// Why a pod was left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    NotSelected,
    OptedOut,
    HostNetwork,
    SystemNamespace,
    AlreadyInjected,
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SkipReason::NotSelected => {
                "neither the pod annotation ward.io/inject=\"true\" nor the namespace label ward.io/inject=enabled"
            }
            SkipReason::OptedOut => "the pod says ward.io/inject: \"false\"",
            SkipReason::HostNetwork => "host-network pods are never injected",
            SkipReason::SystemNamespace => "pods in ward-system are never injected",
            SkipReason::AlreadyInjected => "already injected",
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum InjectOutcome {
    Skipped(SkipReason),
    Patch(json_patch::Patch),
}

/// A pod that asked to be meshed but cannot be, as the API server's user sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    #[error("annotation {annotation}: {message}")]
    Annotation {
        annotation: &'static str,
        message: String,
    },
    #[error("container {container}: {message}")]
    Probe { container: String, message: String },
    #[error("the pod already has a container named {0}")]
    NameClash(String),
}

/// Decides whether a pod created in `namespace` (with `namespace_labels`)
/// gets the sidecar; `namespace` wins over the pod's own (empty on CREATE).
pub fn select(
    meta: &ObjectMeta,
    spec: &PodSpec,
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
) -> Result<(), SkipReason> {
    if namespace == SYSTEM_NAMESPACE {
        return Err(SkipReason::SystemNamespace);
    }
    if spec.host_network == Some(true) {
        return Err(SkipReason::HostNetwork);
    }
    if is_injected(meta, spec) {
        return Err(SkipReason::AlreadyInjected);
    }
    let pod_says = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_INJECT))
        .map(|v| v.trim().to_ascii_lowercase());
    match pod_says.as_deref() {
        Some("false") => Err(SkipReason::OptedOut),
        Some("true") => Ok(()),
        _ if namespace_labels.get(NAMESPACE_LABEL).map(String::as_str)
            == Some(NAMESPACE_ENABLED) =>
        {
            Ok(())
        }
        _ => Err(SkipReason::NotSelected),
    }
}

/// True when the pod carries `ward.io/status` or a `ward-proxy` container.
pub fn is_injected(meta: &ObjectMeta, spec: &PodSpec) -> bool {
    meta.annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(ANNOTATION_STATUS))
        || spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|c| c.name == PROXY_CONTAINER)
}

/// What injection adds to a pod; computed once, rendered either as a JSON
/// patch (webhook) or applied to typed objects (`ward inject`).
#[derive(Debug, Clone)]
struct Plan {
    init: Container,
    proxy: Container,
    native: bool,
    volumes: Vec<k8s_openapi::api::core::v1::Volume>,
    annotations: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    /// (container index, probe field, rewritten probe)
    probe_rewrites: Vec<(usize, &'static str, k8s_openapi::api::core::v1::Probe)>,
}

fn plan(meta: &ObjectMeta, spec: &PodSpec, config: &InjectConfig) -> Result<Plan, InjectError> {
    let options = PodOptions::parse(meta.annotations.as_ref(), config)?;
    for name in [PROXY_CONTAINER, INIT_CONTAINER] {
        if spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|c| c.name == name)
        {
            return Err(InjectError::NameClash(name.into()));
        }
    }
    if let Some(volume) = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| sidecar::VOLUME_NAMES.contains(&v.name.as_str()))
    {
        return Err(InjectError::NameClash(format!("volume {}", volume.name)));
    }
    let rewrites = if options.rewrite_app_probes {
        probes::rewrite(&spec.containers)?
    } else {
        probes::Rewrites::default()
    };
    // Only the operator's own exclusions: a probe never opens a port.
    let init = sidecar::init_container(config, &options, &options.exclude_inbound_ports);
    let proxy = sidecar::proxy_container(config, &options, &rewrites.app_probes);
    let volumes = sidecar::volumes();
    let existing = meta.annotations.clone().unwrap_or_default();
    let mut annotations = BTreeMap::new();
    if ![
        "prometheus.io/scrape",
        "prometheus.io/port",
        "prometheus.io/path",
    ]
    .iter()
    .any(|k| existing.contains_key(*k))
    {
        annotations.insert("prometheus.io/scrape".into(), "true".into());
        annotations.insert("prometheus.io/port".into(), ADMIN_PORT.to_string());
        annotations.insert("prometheus.io/path".into(), "/metrics".into());
    }
    let status = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "image": config.image,
        "initContainers": if options.native_sidecar { vec![INIT_CONTAINER, PROXY_CONTAINER] } else { vec![INIT_CONTAINER] },
        "containers": if options.native_sidecar { Vec::<&str>::new() } else { vec![PROXY_CONTAINER] },
        "volumes": sidecar::VOLUME_NAMES,
        "nativeSidecar": options.native_sidecar,
        "rewrittenProbes": rewrites.app_probes.keys().collect::<Vec<_>>(),
    });
    annotations.insert(ANNOTATION_STATUS.into(), status.to_string());
    Ok(Plan {
        init,
        proxy,
        native: options.native_sidecar,
        volumes,
        annotations,
        labels: BTreeMap::from([(MESH_LABEL.into(), MESH_LABEL_VALUE.into())]),
        probe_rewrites: rewrites.rewritten,
    })
}

/// The admission decision for a pod: `Skipped` or the JSON patch to apply
/// to the object exactly as the API server sent it.
pub fn inject_pod(
    pod: &Pod,
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
    config: &InjectConfig,
) -> Result<InjectOutcome, InjectError> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(InjectOutcome::Skipped(SkipReason::NotSelected));
    };
    if let Err(reason) = select(&pod.metadata, spec, namespace, namespace_labels) {
        return Ok(InjectOutcome::Skipped(reason));
    }
    let plan = plan(&pod.metadata, spec, config)?;
    Ok(InjectOutcome::Patch(to_patch(&pod.metadata, spec, &plan)))
}

/// Injects a pod template (Deployment, Job, ... or a bare Pod) in place.
/// Returns the skip reason when it is left alone.
pub fn inject_pod_spec(
    meta: &mut ObjectMeta,
    spec: &mut PodSpec,
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
    config: &InjectConfig,
) -> Result<Option<SkipReason>, InjectError> {
    if let Err(reason) = select(meta, spec, namespace, namespace_labels) {
        return Ok(Some(reason));
    }
    let plan = plan(meta, spec, config)?;
    for (index, field, probe) in plan.probe_rewrites {
        let container = &mut spec.containers[index];
        let slot = match field {
            "livenessProbe" => &mut container.liveness_probe,
            "readinessProbe" => &mut container.readiness_probe,
            _ => &mut container.startup_probe,
        };
        *slot = Some(probe);
    }
    let inits = spec.init_containers.get_or_insert_with(Vec::new);
    inits.insert(0, plan.init);
    if plan.native {
        inits.insert(1, plan.proxy);
    } else {
        spec.containers.insert(0, plan.proxy);
    }
    spec.volumes
        .get_or_insert_with(Vec::new)
        .extend(plan.volumes);
    meta.annotations
        .get_or_insert_with(BTreeMap::new)
        .extend(plan.annotations);
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .extend(plan.labels);
    Ok(None)
}

/// RFC 6901 escaping of one path segment.
fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

fn to_patch(meta: &ObjectMeta, spec: &PodSpec, plan: &Plan) -> json_patch::Patch {
    let mut ops: Vec<Value> = Vec::new();
    let mut add =
        |path: String, value: Value| ops.push(json!({"op": "add", "path": path, "value": value}));
    // Probe rewrites first: their indices are those of the original list.
    for (index, field, probe) in &plan.probe_rewrites {
        add(format!("/spec/containers/{index}/{field}"), to_value(probe));
    }
    let mut new_inits = vec![to_value(&plan.init)];
    if plan.native {
        new_inits.push(to_value(&plan.proxy));
    }
    if spec.init_containers.as_ref().is_none_or(Vec::is_empty) {
        add("/spec/initContainers".into(), Value::Array(new_inits));
    } else {
        for (i, container) in new_inits.into_iter().enumerate() {
            add(format!("/spec/initContainers/{i}"), container);
        }
    }
    if !plan.native {
        add("/spec/containers/0".into(), to_value(&plan.proxy));
    }
    let volumes: Vec<Value> = plan.volumes.iter().map(to_value).collect();
    if spec.volumes.as_ref().is_none_or(Vec::is_empty) {
        add("/spec/volumes".into(), Value::Array(volumes));
    } else {
        for volume in volumes {
            add("/spec/volumes/-".into(), volume);
        }
    }
    for (field, existing, added) in [
        ("annotations", &meta.annotations, &plan.annotations),
        ("labels", &meta.labels, &plan.labels),
    ] {
        if existing.as_ref().is_none_or(BTreeMap::is_empty) {
            add(format!("/metadata/{field}"), to_value(added));
        } else {
            for (key, value) in added {
                add(
                    format!("/metadata/{field}/{}", escape(key)),
                    Value::String(value.clone()),
                );
            }
        }
    }
    serde_json::from_value(Value::Array(ops)).expect("well-formed JSON patch operations")
}

fn to_value<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("k8s-openapi types serialize")
}
