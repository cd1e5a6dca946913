//! SVID issuance: `POST /v1/svid` and `GET /v1/bundle`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// `POST /v1/svid`. Without a credential the caller must present its current,
/// still valid SVID for the same ID as its TLS client certificate (renewal).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SvidRequest {
    pub spiffe_id: String,
    /// PKCS#10 CSR, PEM.
    pub csr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<Credential>,
    /// The pod the caller says it is (Kubernetes); a service-account token
    /// must be bound to this pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SvidResponse {
    pub spiffe_id: String,
    /// Leaf first, then any intermediates.
    pub chain_pem: String,
    pub trust_domain: String,
    /// The roots that verify peers of this trust domain.
    pub bundle_pem: String,
    /// RFC 3339, UTC.
    pub not_after: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BundleResponse {
    pub trust_domain: String,
    pub bundle_pem: String,
}

/// Attestation method names, as in metrics labels.
pub const METHOD_JOIN_TOKEN: &str = "join_token";
pub const METHOD_K8S_SA_TOKEN: &str = "k8s_sa_token";

/// What a workload presents to prove its identity. On the wire:
/// `{"join_token": "..."}` or `{"k8s_sa_token": "..."}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Credential {
    JoinToken(String),
    #[serde(rename = "k8s_sa_token")]
    ServiceAccountToken(String),
}

impl Credential {
    /// The method label ([`METHOD_JOIN_TOKEN`] or [`METHOD_K8S_SA_TOKEN`]).
    pub fn method(&self) -> &'static str {
        match self {
            Self::JoinToken(_) => METHOD_JOIN_TOKEN,
            Self::ServiceAccountToken(_) => METHOD_K8S_SA_TOKEN,
        }
    }
}

/// Credentials are secrets: never let them reach a log through `{:?}`.
impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let variant = match self {
            Self::JoinToken(_) => "JoinToken",
            Self::ServiceAccountToken(_) => "ServiceAccountToken",
        };
        f.debug_tuple(variant).field(&"[redacted]").finish()
    }
}
