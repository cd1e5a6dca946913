//! The app's own probes, run by the proxy for the kubelet. Under STRICT
//! mTLS the kubelet's plaintext probe to an app port would be refused by the
//! inbound proxy, so the injector rewrites every `httpGet`, `tcpSocket` and
//! `grpc` probe of an app container to `GET /app-health/<container>/<livez|readyz|startupz>`
//! on the admin port and hands the originals to the proxy as JSON in
//! `WARD_APP_PROBES` (the format of [`ward_api::probes::AppProbe`],
//! keyed by that path). The admin port answers exactly those paths, from
//! any source: it runs the listed probe against the app and answers 200 or
//! 503. Nothing else is reachable that way (an unlisted path is 404), and
//! the app's own ports stay captured.
//!
//! The probe runs as the proxy's UID, which the capture rules exempt: it
//! reaches the app on loopback in plaintext, bypassing mTLS and
//! authorization policy by design, exactly like the kubelet's probe would
//! without the mesh. Limitations: the target is `127.0.0.1` unless the pod
//! spec named a `host` (an app bound only to the pod IP fails its probes);
//! an `HTTPS` probe is checked with a TCP connect only (no TLS handshake,
//! no HTTP status). A `grpc` probe is `grpc.health.v1.Health/Check` over
//! plaintext HTTP/2, healthy on `SERVING` (the kubelet's rule).

use std::collections::BTreeMap;
use std::time::Duration;

use ward_api::probes::AppProbe;

use crate::probe::{grpc_health, http_get, tcp_connect};

/// Every rewritten probe path starts with this.
pub const PATH_PREFIX: &str = "/app-health/";
const KINDS: [&str; 3] = ["livez", "readyz", "startupz"];

/// The probes the admin port may run, keyed by their `/app-health/...` path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppProbes(BTreeMap<String, AppProbe>);

impl AppProbes {
    /// Parses `WARD_APP_PROBES`; empty means none. Every entry is checked
    /// here, so a malformed one stops the proxy at start.
    pub fn parse(json: &str) -> Result<Self, String> {
        if json.trim().is_empty() {
            return Ok(AppProbes::default());
        }
        let probes: BTreeMap<String, AppProbe> =
            serde_json::from_str(json).map_err(|e| format!("app probes: {e}"))?;
        for (path, probe) in &probes {
            let bad = |why: &str| format!("app probe {path:?}: {why}");
            let rest = path
                .strip_prefix(PATH_PREFIX)
                .ok_or_else(|| bad("the path must start with /app-health/"))?;
            match rest.split_once('/') {
                Some((container, kind))
                    if !container.is_empty()
                        && !container.contains('/')
                        && KINDS.contains(&kind) => {}
                _ => {
                    return Err(bad(
                        "expected /app-health/<container>/<livez|readyz|startupz>",
                    ));
                }
            }
            match (&probe.http_get, &probe.tcp_socket, &probe.grpc) {
                (Some(get), None, None) => {
                    if !["HTTP", "HTTPS"]
                        .iter()
                        .any(|s| get.scheme.eq_ignore_ascii_case(s))
                    {
                        return Err(bad(&format!(
                            "scheme {:?} is not HTTP or HTTPS",
                            get.scheme
                        )));
                    }
                    if get.port == 0 {
                        return Err(bad("port 0"));
                    }
                }
                (None, Some(tcp), None) if tcp.port != 0 => {}
                (None, None, Some(grpc)) if grpc.port != 0 => {}
                (None, Some(_), None) | (None, None, Some(_)) => return Err(bad("port 0")),
                _ => {
                    return Err(bad("expected exactly one of httpGet, tcpSocket and grpc"));
                }
            }
        }
        Ok(AppProbes(probes))
    }

    pub fn get(&self, path: &str) -> Option<&AppProbe> {
        self.0.get(path)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Runs one original probe against the app, within its `timeoutSeconds`
/// (at least 1 s, the kubelet's default): `Ok` on a 2xx/3xx answer or a
/// completed TCP connect (the kubelet's rules), else why not.
pub async fn run(probe: &AppProbe) -> Result<(), String> {
    let timeout = Duration::from_secs(u64::try_from(probe.timeout_seconds).unwrap_or(1).max(1));
    if let Some(get) = &probe.http_get {
        let host = get.host.as_deref().unwrap_or("127.0.0.1");
        if get.scheme.eq_ignore_ascii_case("HTTPS") {
            // Documented limitation: no TLS handshake, connect only.
            return tcp_connect(host, get.port, timeout).await;
        }
        let path = if get.path.starts_with('/') {
            get.path.clone()
        } else {
            format!("/{}", get.path)
        };
        let headers: Vec<(String, String)> = get
            .http_headers
            .iter()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        let status = http_get(host, get.port, &path, &headers, timeout)
            .await
            .map_err(|e| format!("GET {path} on port {}: {e}", get.port))?;
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(format!("GET {path} on port {}: {status}", get.port))
        }
    } else if let Some(tcp) = &probe.tcp_socket {
        tcp_connect(
            tcp.host.as_deref().unwrap_or("127.0.0.1"),
            tcp.port,
            timeout,
        )
        .await
    } else if let Some(grpc) = &probe.grpc {
        grpc_health::check("127.0.0.1", grpc.port, grpc.service.as_deref(), timeout).await
    } else {
        Err("none of httpGet, tcpSocket and grpc".into())
    }
}
