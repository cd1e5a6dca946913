//! Ward identity: SPIFFE IDs, the certificate authority, X.509-SVID
//! verification, mesh TLS configuration and workload certificate rotation.
#![forbid(unsafe_code)]

pub mod spiffe_id;

pub use spiffe_id::{SpiffeId, SpiffeIdError};
