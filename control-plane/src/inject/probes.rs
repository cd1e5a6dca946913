//! App probe rewriting. Under STRICT mTLS the kubelet's plaintext probes
//! from the node would be refused by the inbound proxy, so `httpGet` and
//! `tcpSocket` probes of app containers are sent to the proxy's admin port
//! instead: `GET http://<pod>:15020/app-health/<container>/<livez|readyz|startupz>`.
//! The proxy finds the original probe in `WARD_APP_PROBES` (a JSON object
//! keyed by that path, see [`AppProbe`]), runs it against the app on
//! loopback and answers 200 on success, 503 otherwise. `grpc` probes are
//! rewritten the same way (the proxy runs `grpc.health.v1.Health/Check`),
//! so no port is ever left out of capture for a probe. `exec` probes run
//! inside the container and need nothing.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{ADMIN_PORT, InjectError};

pub use ward_api::probes::{AppGrpc, AppHeader, AppHttpGet, AppProbe, AppTcpSocket};

#[derive(Debug, Default, Clone)]
pub(super) struct Rewrites {
    /// (container index, probe field, new probe)
    pub rewritten: Vec<(usize, &'static str, Probe)>,
    /// `/app-health/<container>/<kind>` → original probe.
    pub app_probes: BTreeMap<String, AppProbe>,
}

pub(super) fn rewrite(containers: &[Container]) -> Result<Rewrites, InjectError> {
    let mut out = Rewrites::default();
    for (index, container) in containers.iter().enumerate() {
        for (field, kind, probe) in [
            ("livenessProbe", "livez", &container.liveness_probe),
            ("readinessProbe", "readyz", &container.readiness_probe),
            ("startupProbe", "startupz", &container.startup_probe),
        ] {
            let Some(probe) = probe else { continue };
            // What the sidecar accepts in WARD_APP_PROBES (it refuses to
            // start otherwise): checked here, before the API server's own
            // validation, which runs after this webhook.
            let err = |message: String| InjectError::Probe {
                container: container.name.clone(),
                message,
            };
            if container.name.is_empty() || container.name.contains('/') {
                return Err(err(format!(
                    "container name {:?} cannot name a probe path",
                    container.name
                )));
            }
            let path = format!("/app-health/{}/{kind}", container.name);
            let original = if let Some(get) = &probe.http_get {
                let scheme = get.scheme.clone().unwrap_or_else(|| "HTTP".into());
                if !["HTTP", "HTTPS"]
                    .iter()
                    .any(|s| scheme.eq_ignore_ascii_case(s))
                {
                    return Err(err(format!("probe scheme {scheme:?} is not HTTP or HTTPS")));
                }
                AppProbe {
                    http_get: Some(AppHttpGet {
                        scheme,
                        port: resolve_port(container, &get.port)?,
                        path: get.path.clone().unwrap_or_else(|| "/".into()),
                        host: get.host.clone(),
                        http_headers: get
                            .http_headers
                            .iter()
                            .flatten()
                            .map(|h| AppHeader {
                                name: h.name.clone(),
                                value: h.value.clone(),
                            })
                            .collect(),
                    }),
                    tcp_socket: None,
                    grpc: None,
                    timeout_seconds: probe.timeout_seconds.unwrap_or(1),
                }
            } else if let Some(tcp) = &probe.tcp_socket {
                AppProbe {
                    http_get: None,
                    tcp_socket: Some(AppTcpSocket {
                        port: resolve_port(container, &tcp.port)?,
                        host: tcp.host.clone(),
                    }),
                    grpc: None,
                    timeout_seconds: probe.timeout_seconds.unwrap_or(1),
                }
            } else if let Some(grpc) = &probe.grpc {
                let port = u16::try_from(grpc.port)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| InjectError::Probe {
                        container: container.name.clone(),
                        message: format!("gRPC probe port {} is out of range", grpc.port),
                    })?;
                AppProbe {
                    http_get: None,
                    tcp_socket: None,
                    grpc: Some(AppGrpc {
                        port,
                        service: grpc.service.clone().filter(|s| !s.is_empty()),
                    }),
                    timeout_seconds: probe.timeout_seconds.unwrap_or(1),
                }
            } else {
                continue;
            };
            let rewritten = Probe {
                http_get: Some(HTTPGetAction {
                    path: Some(path.clone()),
                    port: IntOrString::Int(ADMIN_PORT.into()),
                    scheme: Some("HTTP".into()),
                    ..Default::default()
                }),
                tcp_socket: None,
                grpc: None,
                ..probe.clone()
            };
            out.rewritten.push((index, field, rewritten));
            out.app_probes.insert(path, original);
        }
    }
    Ok(out)
}

/// A probe port: a number, or the name of one of the container's ports.
fn resolve_port(container: &Container, port: &IntOrString) -> Result<u16, InjectError> {
    let err = |message: String| InjectError::Probe {
        container: container.name.clone(),
        message,
    };
    match port {
        IntOrString::Int(n) => u16::try_from(*n)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| err(format!("probe port {n} is out of range"))),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .ok_or_else(|| err(format!("probe port {name:?} names no container port")))
            .and_then(|p| {
                // The sidecar refuses a probe on port 0 (WARD_APP_PROBES):
                // refuse it here, as for a numbered port.
                u16::try_from(p.container_port)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| {
                        err(format!(
                            "probe port {name:?} names container port {}, out of range",
                            p.container_port
                        ))
                    })
            }),
    }
}
