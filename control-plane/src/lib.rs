//! Ward control plane: the CA server that attests workloads and signs their
//! X.509-SVIDs, and (later) policy distribution and the injector webhook.
#![forbid(unsafe_code)]

pub mod attest;
pub mod data_dir;
mod dir_watch;
pub mod inject;
pub mod k8s;
pub mod listener;
pub use ward_logging as logging;
pub mod discovery;
pub mod metrics;
pub mod policy_store;
pub mod quarantine;
pub mod rotation;
pub mod server;
pub mod services;
mod serving;
pub mod trust_bundles;
pub mod webhook;
