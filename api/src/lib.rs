//! The control plane's API as seen on the wire, in one place: every path,
//! request and response type and error code of SVID issuance and of the
//! discovery stream. The control plane serves it; sidecars and the CLI call
//! it through the `client` feature's one transport. `docs/api.md` is the
//! specification; these types are its Rust form.
//!
//! Every type here tolerates fields it does not know (a newer peer may send
//! more), so a sidecar and a control plane of different versions talk.
#![forbid(unsafe_code)]

pub mod discovery;
pub mod error;
pub mod probes;
pub mod svid;

#[cfg(feature = "client")]
pub mod client;

use ward_identity::{SpiffeId, SpiffeIdError};

/// Certificate signing: a CSR plus proof of identity in, an X.509-SVID out.
pub const SVID_PATH: &str = "/v1/svid";
/// The trust bundle (roots) of the mesh's trust domain.
pub const BUNDLE_PATH: &str = "/v1/bundle";
/// The discovery stream (see [`discovery`]).
pub const DISCOVERY_PATH: &str = "/v2/discovery";
/// Registration of a workload address outside Kubernetes (see [`discovery::Registration`]).
pub const REGISTER_PATH: &str = "/v2/register";
/// Largest request body of a unary call (a CSR plus a token fit easily),
/// and largest single message on the discovery stream's request side.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The SPIFFE ID the control plane serves under in trust domain `td`.
/// Sidecars accept no other identity as their control plane, and the CA
/// never issues it to a workload.
pub fn control_plane_id(trust_domain: &str) -> Result<SpiffeId, SpiffeIdError> {
    SpiffeId::for_service_account(trust_domain, "ward-system", "ward-control-plane")
}
