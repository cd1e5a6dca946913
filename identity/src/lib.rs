//! Ward identity: SPIFFE IDs, the certificate authority, X.509-SVID
//! verification, mesh TLS configuration and workload certificate rotation.
#![forbid(unsafe_code)]

pub mod spiffe_id;

pub use spiffe_id::{SpiffeId, SpiffeIdError};

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
