//! Ward identity: SPIFFE IDs, the certificate authority, X.509-SVID
//! verification, mesh TLS configuration and workload certificate rotation.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod ca;
pub mod manager;
pub mod spiffe_id;
pub mod svid;
pub mod tls;
pub mod trust;

#[cfg(test)]
mod testutil;

pub use bundle::{BundleError, TrustBundles};
pub use ca::{
    CaError, CertificateAuthority, DEFAULT_MAX_SVID_TTL, DEFAULT_SVID_TTL, IssuedSvid, build_csr,
    generate_key,
};
pub use spiffe_id::{SpiffeId, SpiffeIdError};
pub use svid::{Role, SvidError, VerifiedSvid, verify_chain};
pub use tls::{SharedBundles, SvidCell};
pub use trust::{Source, Trust};

/// Formats a time as RFC 3339 in UTC with whole seconds, e.g. `2026-11-23T23:22:47Z`.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}
