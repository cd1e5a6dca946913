//! Talking to a running control plane from a test: its admin port, its
//! metrics, its refusals, and the RBAC it ships with.

use std::net::SocketAddr;

use http::StatusCode;
use serde_json::Value;
use ward_control_plane::client::ClientError;

/// `GET path` on the plaintext admin listener: (status code, whole response).
pub async fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, out)
}

/// The value of one series (`name{labels}` exactly as exposed); 0 when absent.
pub fn metric_value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// (status, error code, message) of a refused request.
pub fn refusal(err: ClientError) -> (StatusCode, String, String) {
    match err {
        ClientError::Refused {
            status,
            code,
            message,
        } => (status, code, message),
        other => panic!("expected a refusal, got {other}"),
    }
}

/// Whether the `ward-control-plane` ClusterRole in `deploy/base/rbac.yaml`
/// grants `verb` on `group`/`resource` (`resource/subresource`).
pub fn cluster_role_allows(group: &str, resource: &str, verb: &str) -> bool {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/base/rbac.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let role = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| <Value as serde::Deserialize>::deserialize(doc).unwrap())
        .find(|doc| doc["kind"] == "ClusterRole")
        .expect("a ClusterRole");
    let has = |rule: &Value, field: &str, value: &str| {
        rule[field]
            .as_array()
            .is_some_and(|values| values.iter().any(|v| v == value))
    };
    role["rules"].as_array().unwrap().iter().any(|rule| {
        has(rule, "apiGroups", group)
            && has(rule, "resources", resource)
            && has(rule, "verbs", verb)
    })
}
