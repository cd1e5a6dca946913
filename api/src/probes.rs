//! The probes the injector moves from the kubelet to the sidecar: the
//! format of `WARD_APP_PROBES`, a JSON object keyed by the sidecar's
//! `/app-health/<container>/<livez|readyz|startupz>` path. The injector
//! writes it; the sidecar reads it and runs each probe against the app.

use serde::{Deserialize, Serialize};

/// One original probe, as the proxy must run it against `127.0.0.1`
/// (or `host` when the pod spec named one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppProbe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<AppHttpGet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<AppTcpSocket>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<AppGrpc>,
    /// The original probe's `timeoutSeconds` (the kubelet's default is 1).
    pub timeout_seconds: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppHttpGet {
    /// `HTTP` or `HTTPS` (certificate not verified, as the kubelet does).
    pub scheme: String,
    pub port: u16,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_headers: Vec<AppHeader>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppHeader {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppTcpSocket {
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// A `grpc` probe: `grpc.health.v1.Health/Check` over plaintext HTTP/2,
/// healthy when the answer is `SERVING`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppGrpc {
    pub port: u16,
    /// The `service` field of the health check request (empty: the server
    /// as a whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}
