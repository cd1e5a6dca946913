//! Ward authorization: Istio-compatible `AuthorizationPolicy` and
//! `PeerAuthentication` — parsing with located errors, validation,
//! per-workload compilation and allocation-free evaluation.
//!
//! ```no_run
//! use std::collections::BTreeMap;
//! use ward_policy::{EvalOptions, PolicySet};
//! let set = PolicySet::load_paths(&["policies/".into()]).unwrap();
//! let labels = BTreeMap::from([("app".to_owned(), "api".to_owned())]);
//! let workload = set.for_workload("prod", &labels, &EvalOptions::default());
//! // per request: workload.evaluate(&attrs)
//! ```
#![forbid(unsafe_code)]

pub mod error;
pub mod eval;
pub mod lint;
pub mod matcher;
pub mod model;
mod parse;
pub mod path;
pub mod request;
mod set;
pub mod template;
mod trust_domain;

pub use error::{ConfigError, PolicyError};
pub use eval::{
    Decision, DecisionReason, EvalOptions, Explanation, HeaderLookup, NearMiss, NoHeaders,
    PolicyMatch, Protocol, RequestAttrs, WorkloadPolicy,
};
pub use model::{Action, MtlsMode, PolicyRef};
pub use set::{PolicyInfo, PolicySet};
pub use trust_domain::{InvalidAlias, TrustDomainAliases};
