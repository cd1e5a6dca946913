//! The `ward.io/*` pod annotations and their validation. A value that does
//! not parse is an [`InjectError`]: the webhook denies the pod.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::{InjectConfig, InjectError, ProxyResources};

pub const ANNOTATION_INJECT: &str = "ward.io/inject";
pub const ANNOTATION_STATUS: &str = "ward.io/status";
pub const ANNOTATION_NATIVE_SIDECAR: &str = "ward.io/native-sidecar";
pub const ANNOTATION_EXCLUDE_INBOUND_PORTS: &str = "ward.io/exclude-inbound-ports";
pub const ANNOTATION_EXCLUDE_OUTBOUND_PORTS: &str = "ward.io/exclude-outbound-ports";
pub const ANNOTATION_EXCLUDE_OUTBOUND_CIDRS: &str = "ward.io/exclude-outbound-cidrs";
pub const ANNOTATION_OPAQUE_PORTS: &str = "ward.io/opaque-ports";
pub const ANNOTATION_PROXY_CPU: &str = "ward.io/proxy-cpu";
pub const ANNOTATION_PROXY_MEMORY: &str = "ward.io/proxy-memory";
pub const ANNOTATION_PROXY_CPU_LIMIT: &str = "ward.io/proxy-cpu-limit";
pub const ANNOTATION_PROXY_MEMORY_LIMIT: &str = "ward.io/proxy-memory-limit";
pub const ANNOTATION_LOG_LEVEL: &str = "ward.io/log-level";
pub const ANNOTATION_REWRITE_APP_PROBES: &str = "ward.io/rewrite-app-probes";
/// Opt-in: the sidecar forwards inbound traffic to 127.0.0.1 rather than
/// the pod address, exposing loopback-only services to mesh peers.
pub const ANNOTATION_INBOUND_TO_LOOPBACK: &str = "ward.io/inbound-to-loopback";

const LOG_LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

/// The per-pod settings, annotations over the injector's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodOptions {
    pub native_sidecar: bool,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    /// Normalised `addr/prefix` strings.
    pub exclude_outbound_cidrs: Vec<String>,
    pub opaque_ports: Vec<u16>,
    pub resources: ProxyResources,
    pub log_level: String,
    pub rewrite_app_probes: bool,
    pub inbound_to_loopback: bool,
}

impl PodOptions {
    pub fn parse(
        annotations: Option<&BTreeMap<String, String>>,
        config: &InjectConfig,
    ) -> Result<Self, InjectError> {
        let empty = BTreeMap::new();
        let a = annotations.unwrap_or(&empty);
        let get = |key: &str| a.get(key).map(|v| v.trim());
        let resources = ProxyResources {
            cpu_request: quantity(get(ANNOTATION_PROXY_CPU), ANNOTATION_PROXY_CPU)?
                .unwrap_or_else(|| config.resources.cpu_request.clone()),
            memory_request: quantity(get(ANNOTATION_PROXY_MEMORY), ANNOTATION_PROXY_MEMORY)?
                .unwrap_or_else(|| config.resources.memory_request.clone()),
            cpu_limit: quantity(get(ANNOTATION_PROXY_CPU_LIMIT), ANNOTATION_PROXY_CPU_LIMIT)?
                .unwrap_or_else(|| config.resources.cpu_limit.clone()),
            memory_limit: quantity(
                get(ANNOTATION_PROXY_MEMORY_LIMIT),
                ANNOTATION_PROXY_MEMORY_LIMIT,
            )?
            .unwrap_or_else(|| config.resources.memory_limit.clone()),
        };
        let log_level = match get(ANNOTATION_LOG_LEVEL) {
            None => config.log_level.clone(),
            Some(level) if LOG_LEVELS.contains(&level) => level.to_owned(),
            Some(level) => {
                return Err(bad(
                    ANNOTATION_LOG_LEVEL,
                    format!("{level:?} is not one of {}", LOG_LEVELS.join(", ")),
                ));
            }
        };
        Ok(PodOptions {
            native_sidecar: boolean(get(ANNOTATION_NATIVE_SIDECAR), ANNOTATION_NATIVE_SIDECAR)?
                .unwrap_or(config.native_sidecars),
            exclude_inbound_ports: ports(
                get(ANNOTATION_EXCLUDE_INBOUND_PORTS),
                ANNOTATION_EXCLUDE_INBOUND_PORTS,
            )?,
            exclude_outbound_ports: ports(
                get(ANNOTATION_EXCLUDE_OUTBOUND_PORTS),
                ANNOTATION_EXCLUDE_OUTBOUND_PORTS,
            )?,
            exclude_outbound_cidrs: cidrs(get(ANNOTATION_EXCLUDE_OUTBOUND_CIDRS))?,
            opaque_ports: ports(get(ANNOTATION_OPAQUE_PORTS), ANNOTATION_OPAQUE_PORTS)?,
            resources,
            log_level,
            rewrite_app_probes: boolean(
                get(ANNOTATION_REWRITE_APP_PROBES),
                ANNOTATION_REWRITE_APP_PROBES,
            )?
            .unwrap_or(true),
            inbound_to_loopback: boolean(
                get(ANNOTATION_INBOUND_TO_LOOPBACK),
                ANNOTATION_INBOUND_TO_LOOPBACK,
            )?
            .unwrap_or(false),
        })
    }
}

fn bad(annotation: &'static str, message: impl Into<String>) -> InjectError {
    InjectError::Annotation {
        annotation,
        message: message.into(),
    }
}

fn boolean(value: Option<&str>, annotation: &'static str) -> Result<Option<bool>, InjectError> {
    match value {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(other) => Err(bad(
            annotation,
            format!("{other:?} is neither \"true\" nor \"false\""),
        )),
    }
}

/// Comma separated ports, 1..=65535; empty means none.
pub fn ports(value: Option<&str>, annotation: &'static str) -> Result<Vec<u16>, InjectError> {
    let mut out = Vec::new();
    for item in value.unwrap_or("").split(',').map(str::trim) {
        if item.is_empty() {
            continue;
        }
        match item.parse::<u16>() {
            Ok(port) if port != 0 => {
                if !out.contains(&port) {
                    out.push(port)
                }
            }
            _ => {
                return Err(bad(
                    annotation,
                    format!("{item:?} is not a port (1-65535); expected a list like 8080,9090"),
                ));
            }
        }
    }
    Ok(out)
}

fn cidrs(value: Option<&str>) -> Result<Vec<String>, InjectError> {
    let mut out = Vec::new();
    for item in value.unwrap_or("").split(',').map(str::trim) {
        if item.is_empty() {
            continue;
        }
        let invalid = || {
            bad(
                ANNOTATION_EXCLUDE_OUTBOUND_CIDRS,
                format!("{item:?} is not a CIDR; expected a list like 10.96.0.0/12,fd00::/8"),
            )
        };
        let (addr, prefix) = item.split_once('/').ok_or_else(invalid)?;
        let addr: IpAddr = addr.parse().map_err(|_| invalid())?;
        let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(invalid());
        }
        out.push(format!("{addr}/{prefix}"));
    }
    Ok(out)
}

/// A Kubernetes resource quantity: a non-negative decimal number with an
/// optional binary (Ki..Ei), decimal (m, k, M..E) or exponent suffix.
pub fn is_quantity(value: &str) -> bool {
    let digits_end = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(digits_end);
    let number_ok = !number.is_empty()
        && number != "."
        && number.matches('.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    let suffix_ok = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .map(|exp| exp.strip_prefix(['+', '-']).unwrap_or(exp))
        .is_some_and(|exp| !exp.is_empty() && exp.chars().all(|c| c.is_ascii_digit()));
    number_ok && suffix_ok
}

fn quantity(value: Option<&str>, annotation: &'static str) -> Result<Option<String>, InjectError> {
    match value {
        None => Ok(None),
        Some(q) if is_quantity(q) => Ok(Some(q.to_owned())),
        Some(q) => Err(bad(
            annotation,
            format!("{q:?} is not a Kubernetes quantity (e.g. 100m, 0.5, 128Mi)"),
        )),
    }
}
