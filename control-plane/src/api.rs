//! The control plane's HTTPS API, as seen on the wire (JSON bodies). Shared
//! by the server and by the client that proxies and the CLI use.

use serde::{Deserialize, Serialize};

use crate::attest::Credential;

/// Certificate signing: a CSR plus proof of identity in, an X.509-SVID out.
pub const SVID_PATH: &str = "/v1/svid";
/// The trust bundle (roots) of the mesh's trust domain.
pub const BUNDLE_PATH: &str = "/v1/bundle";
/// Largest request body the API reads (a CSR plus a token fit easily).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// `POST /v1/svid`. Without a credential the caller must present its current,
/// still valid SVID for the same ID as its TLS client certificate (renewal).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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

/// Every refusal: a fixed machine-readable code and a sentence for people.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
}
