//! Ward identity: SPIFFE IDs, the certificate authority, X.509-SVID
//! verification, mesh TLS configuration and workload certificate rotation.
#![forbid(unsafe_code)]

pub mod ca;
pub mod spiffe_id;

pub use ca::{
    CaError, CertificateAuthority, DEFAULT_MAX_SVID_TTL, DEFAULT_SVID_TTL, IssuedSvid, build_csr,
    generate_key,
};
pub use spiffe_id::{SpiffeId, SpiffeIdError};
