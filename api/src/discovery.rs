//! The discovery stream, `POST /v2/discovery`: one long-lived HTTP/2 stream
//! per sidecar, over mTLS with the sidecar's SVID. Both directions carry
//! newline-delimited JSON: the request body [`ClientMessage`]s, the
//! response body [`ServerMessage`]s.
//!
//! Resources are typed ([`ResourceType`]), named, and versioned by content
//! ([`content_version`]), so versions agree across control-plane replicas
//! and restarts and a reconnecting sidecar resumes from what it holds.
//! Updates are deltas: changed resources whole, removed ones by name. Each
//! update is answered with an [`Ack`] (now enforced) or a [`Nack`] (kept
//! the previous state, and why). Policies and trust bundles are pushed,
//! scoped to the workload, quarantines to every sidecar; endpoints are
//! sent on demand, for the addresses the sidecar subscribed to. `docs/api.md` is the full specification.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub mod delta;

/// The protocol version a [`Hello`] names. A control plane refuses a hello
/// of another major version with `unsupported_api_version`.
pub const API_VERSION: &str = "ward.io/discovery/v2";

/// Largest single line a peer accepts (an update of many resources).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceType {
    /// [`PolicyBody`]: the AuthorizationPolicy and PeerAuthentication
    /// documents that apply to the workload. Pushed.
    Policy,
    /// [`EndpointBody`]: a workload address and the identity it must
    /// present. On demand, by address.
    Endpoint,
    /// [`ServiceBody`]: a Kubernetes Service address (ClusterIP) and the
    /// endpoints behind each of its ports. On demand, by address.
    Service,
    /// [`BundleBody`]: a trust domain's roots. Pushed.
    Bundle,
    /// [`QuarantineBody`]: what one quarantine entry revokes. Pushed.
    Quarantine,
    /// A type this build does not know (sent by a newer peer): ignored.
    #[serde(other)]
    Unknown,
}

impl ResourceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::Policy => "policy",
            ResourceType::Endpoint => "endpoint",
            ResourceType::Service => "service",
            ResourceType::Bundle => "bundle",
            ResourceType::Quarantine => "quarantine",
            ResourceType::Unknown => "unknown",
        }
    }

    /// Sent for the names a sidecar subscribes to, rather than pushed.
    pub fn is_on_demand(self) -> bool {
        matches!(self, ResourceType::Endpoint | ResourceType::Service)
    }
}

/// Sidecar → control plane, one per line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// The first message of every stream, and only the first.
    Hello(Hello),
    Subscribe(Names),
    Unsubscribe(Names),
    Ack(Ack),
    Nack(Nack),
    /// A message type this build does not know: ignored.
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// [`API_VERSION`].
    pub api_version: String,
    #[serde(default)]
    pub node: Node,
    /// The types the sidecar understands; nothing else is sent to it.
    #[serde(default)]
    pub resource_types: Vec<ResourceType>,
    /// Resume: the resources the sidecar holds (enforces), by type and
    /// name → version. The first updates are the difference from these.
    #[serde(default)]
    pub held: BTreeMap<ResourceType, BTreeMap<String, String>>,
    /// On-demand names the sidecar wants, by type (its subscriptions from
    /// a previous stream).
    #[serde(default)]
    pub subscribe: BTreeMap<ResourceType, Vec<String>>,
    /// Fields added by newer sidecars land here and are ignored.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// Who the sidecar says it is beyond its certificate. In Kubernetes the
/// control plane takes the labels from the pod, not from here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The pod name (Kubernetes), from the downward API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The workload's labels (outside Kubernetes).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The sidecar's build, for inventories.
    #[serde(default)]
    pub proxy_version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Names {
    pub resource_type: ResourceType,
    pub names: Vec<String>,
}

/// The update with this nonce is in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub nonce: u64,
}

/// The update with this nonce was not applied; the previous state of its
/// type stays in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nack {
    pub nonce: u64,
    pub error: String,
}

/// Control plane → sidecar, one per line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Update(Update),
    #[serde(other)]
    Unknown,
}

/// A delta of one resource type. After a hello the control plane sends one
/// update of each pushed type (possibly empty) before anything else, so a
/// sidecar knows when it has the whole initial state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Update {
    /// Unique within the stream; the ACK or NACK names it.
    pub nonce: u64,
    pub resource_type: ResourceType,
    /// The version of the control plane's whole state of this type (for
    /// policies: the policy set's version), for metrics and inventories.
    #[serde(default)]
    pub system_version: u64,
    /// Added or changed, whole.
    #[serde(default)]
    pub resources: Vec<Resource>,
    /// Names that stopped existing (or, for a subscribed name, that do not
    /// exist: the address is not meshed).
    #[serde(default)]
    pub removed: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    pub name: String,
    /// [`content_version`] of the body.
    pub version: String,
    /// The type's body ([`PolicyBody`], [`EndpointBody`], [`BundleBody`]).
    pub body: serde_json::Value,
}

impl Resource {
    /// A resource named `name` holding `body`, versioned by its content.
    pub fn new<T: Serialize>(name: impl Into<String>, body: &T) -> Self {
        let body = serde_json::to_value(body).expect("serializable");
        Resource {
            name: name.into(),
            version: content_version(&body),
            body,
        }
    }

    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_value(self.body.clone())
            .map_err(|e| format!("{} {:?}: {e}", std::any::type_name::<T>(), self.name))
    }
}

/// A resource's version: the first 16 hex digits of the SHA-256 of its
/// body's JSON (keys sorted, as `serde_json::Value` keeps them).
pub fn content_version(body: &serde_json::Value) -> String {
    let bytes = serde_json::to_vec(body).expect("serializable");
    hex::encode(&Sha256::digest(&bytes)[..8])
}

/// One AuthorizationPolicy or PeerAuthentication document as the operator
/// wrote it; the sidecar parses it with the same parser the control plane
/// validated it with. Named `<kind>/<namespace>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyBody {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub yaml: String,
}

impl PolicyBody {
    pub fn resource_name(&self) -> String {
        format!("{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// A meshed workload address. Named by the IP address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointBody {
    /// The identity every port of the address must present. `None` when
    /// only the ports in [`EndpointBody::ports`] are meshed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// Per-port identities; a port listed here overrides `spiffe_id`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<u16, String>,
    /// Ports the workload declares opaque (`ward.io/opaque-ports` on its
    /// pod, or its sidecar's `--opaque-ports`): clients skip detection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub opaque_ports: Vec<u16>,
    /// `namespace/pod`, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A Service address (a ClusterIP, IPv4 or IPv6). Named by the IP. Every
/// address of a dual-stack Service is its own resource with the same body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceBody {
    /// `namespace/name`.
    pub service: String,
    /// By Service port.
    #[serde(default)]
    pub ports: BTreeMap<u16, ServicePort>,
}

/// One port of a Service: how to speak to it and who is behind it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    /// The port's name in the Service, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What the client's sidecar speaks on this port without detecting it,
    /// from the port's `appProtocol` (or `ward.io/opaque-ports`). `None`:
    /// detect from the client's first bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<AppProtocol>,
    /// Requests that take longer are answered 504 (`ward.io/timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub endpoints: Vec<ServiceEndpoint>,
}

/// The protocol a Service port declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppProtocol {
    /// HTTP/1.1 (`http`).
    Http1,
    /// HTTP/2 prior knowledge (`kubernetes.io/h2c`, `grpc`).
    Http2,
    /// Bytes, never parsed (`tcp`, or a port in `ward.io/opaque-ports`):
    /// server-first protocols work without waiting for detection.
    Opaque,
}

impl AppProtocol {
    /// The protocol an `appProtocol` value names; `None` for values Ward
    /// does not know (detected instead).
    pub fn from_app_protocol(value: &str) -> Option<AppProtocol> {
        match value.to_ascii_lowercase().as_str() {
            "http" | "kubernetes.io/http" => Some(AppProtocol::Http1),
            "http2" | "h2c" | "kubernetes.io/h2c" | "grpc" | "grpc-web" => Some(AppProtocol::Http2),
            "tcp" | "opaque" | "mysql" | "postgresql" | "redis" | "mongo" | "smtp" => {
                Some(AppProtocol::Opaque)
            }
            _ => None,
        }
    }
}

/// One endpoint of a Service port, from the EndpointSlices.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEndpoint {
    /// `IP:PORT`, the target port resolved (named ports included).
    pub address: String,
    /// The identity the endpoint's sidecar must present: its pod's service
    /// account. `None`: no sidecar, so plaintext (and only then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// `namespace/pod`, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// The slice's conditions. New requests go to ready endpoints; when
    /// none is ready, to serving ones that are terminating.
    #[serde(default = "yes")]
    pub ready: bool,
    #[serde(default = "yes")]
    pub serving: bool,
    #[serde(default)]
    pub terminating: bool,
}

fn yes() -> bool {
    true
}

/// The roots that verify certificates of one trust domain (PEM, one or
/// more). Named by the trust domain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleBody {
    pub trust_domain: String,
    pub roots_pem: String,
    /// Roots a CA rotation retired (PEM): trusted from no source any more,
    /// not the sidecar's `--ca` anchor nor a certificate's bundle. Empty
    /// (and absent on the wire) outside a rotation's aftermath.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub distrusted_pem: String,
    /// A CA rotation asks sidecars to renew early: see [`RenewRequest`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew: Option<RenewRequest>,
}

/// Renew early: a sidecar whose certificate was not signed by `signer_pem`
/// renews at a random point within `within_seconds` of receiving this (a
/// fleet spreads its renewals over the window instead of renewing at
/// once). A sidecar whose certificate the signer signed does nothing.
/// Older sidecars ignore the field and renew at half-life as always.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewRequest {
    /// The CA certificate that signs new certificates now (PEM).
    pub signer_pem: String,
    pub within_seconds: u64,
}

/// One quarantine entry, resolved: every identity, certificate and address
/// it revokes. Named by the entry (`metadata.name` of its `Quarantine`
/// document). A sidecar refuses a peer that matches any entry it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineBody {
    /// The target as the operator wrote it (`spiffe://…`, `namespace/pod`,
    /// `serial:HEX`), for logs.
    pub target: String,
    /// SPIFFE IDs: every certificate of these identities is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spiffe_ids: Vec<String>,
    /// Certificate serial numbers, lowercase hex without leading zeros:
    /// only these certificates are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub serials: Vec<String>,
    /// Pod addresses: connections from or to them are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
}

/// `POST /v2/register` body: the caller's source address becomes an
/// endpoint of the caller's SPIFFE ID (from its client certificate) for as
/// long as the response stream stays open. For workloads outside
/// Kubernetes; in Kubernetes the control plane learns pods from the API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Ports the workload serves opaque (its sidecar's `--opaque-ports`):
    /// clients skip protocol detection for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub opaque_ports: Vec<u16>,
}

/// The first (and only) line of a registration's response stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    pub address: String,
    pub spiffe_id: String,
}

/// One message as a line of the stream.
pub fn encode_line<T: Serialize>(message: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(message).expect("serializable");
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests;
