//! Ward sidecar proxy library: traffic capture (iptables) and the original
//! destination of redirected connections.
#![forbid(unsafe_code)]

pub mod capture;
pub mod orig_dst;
