//! Refusals: every non-2xx answer of the API carries an [`ErrorBody`].

use serde::{Deserialize, Serialize};

/// Every refusal: a fixed machine-readable code and a sentence for people.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
}

/// The codes a client may act on. Others may appear; treat them as final.
pub mod codes {
    pub const NO_CLIENT_CERTIFICATE: &str = "no_client_certificate";
    pub const NO_NAMESPACE: &str = "no_namespace";
    pub const MALFORMED_REQUEST: &str = "malformed_request";
    pub const BODY_UNREADABLE: &str = "body_unreadable";
    pub const UNSUPPORTED_API_VERSION: &str = "unsupported_api_version";
    pub const POD_UNKNOWN: &str = "pod_unknown";
    pub const NOT_SYNCED: &str = "not_synced";
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    pub const NOT_FOUND: &str = "not_found";
    /// Refused for a reason the caller is not told (a quarantine): the
    /// control plane's log says why.
    pub const REFUSED: &str = "refused";
}
