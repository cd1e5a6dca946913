//! Ward sidecar proxy: traffic capture (iptables), the inbound and outbound
//! stacks, identity, admin and metrics.
//!
//! Layers: a module uses only the modules of the layers below its own, so
//! no import goes round in a circle.
//! 1. `proxy` wires it all together, from `config` (the flags, which name
//!    the setting types of the modules below).
//! 2. `inbound` and `outbound`: the two request paths, each read top to
//!    bottom from the accepted connection to the application or the peer
//!    sidecar, stopping with an `outcome::Failure` where they stop.
//! 3. `outcome`: every refusal and failure, and what each means to the
//!    client, the metrics and the access log.
//! 4. What both paths are built from: `translate` (HTTP/1 ↔ HTTP/2 between
//!    hops), `upstream` (connections to peer sidecars), `app` (to the local
//!    application), `endpoints` and `balance` (where a destination is),
//!    `policy` and `authz` (what is allowed), `denial` (what a 403 tells an
//!    authenticated caller), `tunnel`, `rewind`, `detect`,
//!    `orig_dst`.
//! 5. Beneath those: `http` (serving a connection, bodies, local answers),
//!    `hop` (the mTLS hop between sidecars), `quarantine` (peers cut off
//!    the mesh, and the live connections to cut), `limits`, `metrics`,
//!    `counting`, `identity` (the workload's certificate).
//!
//! Beside the request path, on its lower layers: `admin`, `discovery`,
//! `capture`, `probe`. `tests.rs` checks that no import goes in a circle.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod authz;
pub mod balance;
pub mod capture;
pub mod config;
pub mod counting;
pub mod denial;
pub mod detect;
pub mod discovery;
pub mod endpoints;
pub mod hop;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod limits;
pub mod metrics;
pub mod orig_dst;
pub mod outbound;
pub mod outcome;
pub mod policy;
pub mod probe;
pub mod proxy;
pub mod quarantine;
pub mod rewind;
pub mod translate;
pub mod tunnel;
pub mod upstream;

#[cfg(test)]
mod tests;
