//! Ward sidecar proxy: traffic capture (iptables), the inbound and outbound
//! stacks, identity, admin and metrics.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod authz;
pub mod balance;
pub mod capture;
pub mod config;
pub mod counting;
pub mod detect;
pub mod discovery;
pub mod endpoints;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod metrics;
pub mod orig_dst;
pub mod outbound;
pub mod policy;
pub mod probe;
pub mod proxy;
pub mod rewind;
pub mod tunnel;
pub mod upstream;
