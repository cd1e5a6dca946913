//! `POST /debug/authz/why`, localhost only: the decision the policies this
//! sidecar enforces right now take for one request, described in the JSON
//! of `ward authz check --request`; the deciding policy and rule, the
//! `x-ward-denied-by` value a mesh peer would get, and the rules that came
//! close. `ward authz why` asks it (through `kubectl port-forward` in a
//! cluster). Answered from the very compiled set requests are decided with,
//! so it cannot disagree with the sidecar, whatever the `ward` CLI's
//! version; it reveals policy, hence loopback only, like `/logging`.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use serde::{Deserialize, Serialize};
use ward_policy::request::OwnedRequest;

use crate::authz::Verdict;
use crate::denial;
use crate::http::{Body, full};
use crate::policy::{MtlsMode, PolicyAuthorizer};

pub const PATH: &str = "/debug/authz/why";
/// Largest request description read.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The answer (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhyReport {
    /// The version of the policy set in force (`ward_policy_version`).
    pub policy_version: u64,
    pub workload: Workload,
    /// The destination port's mTLS mode.
    pub mtls_mode: String,
    /// The request has no source identity and the port is STRICT: a
    /// plaintext caller is refused before any policy is asked.
    pub plaintext_refused: bool,
    /// `allow` or `deny`, by the policies alone.
    pub decision: String,
    /// `namespace/name` of the deciding policy; none for a default.
    pub policy: Option<String>,
    pub rule: Option<usize>,
    pub reason: String,
    /// What `x-ward-denied-by` says to this caller: set for a denial of an
    /// authenticated caller only, as on the wire.
    pub denied_by: Option<String>,
    pub dry_run_matches: Vec<Matched>,
    pub audit_matches: Vec<Matched>,
    pub near_misses: Vec<NearMiss>,
    /// Every policy that applies to this workload.
    pub policies: Vec<InForce>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub root_namespace: String,
    pub trust_domain: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Matched {
    pub policy: String,
    pub action: String,
    pub rule: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NearMiss {
    pub policy: String,
    pub action: String,
    pub dry_run: bool,
    pub rule: usize,
    /// The one field that did not match (`from[0].source.principals`).
    pub field: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InForce {
    pub name: String,
    pub action: String,
    pub dry_run: bool,
    /// Content hash of the document.
    pub version: String,
}

/// Why there is no report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WhyError {
    #[error(
        "this sidecar enforces no authorization policies (no control plane and no --policy; --allow-peer or nothing decides)"
    )]
    NoPolicyEngine,
    #[error("no policy set in force yet: the first has not arrived from the control plane")]
    NoPolicyYet,
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

/// The report for `request` on the set in force now.
pub fn explain(
    policy: Option<&PolicyAuthorizer>,
    request: &OwnedRequest,
) -> Result<WhyReport, WhyError> {
    let policy = policy.ok_or(WhyError::NoPolicyEngine)?;
    let state = policy.current().ok_or(WhyError::NoPolicyYet)?;
    let attrs = request.attrs();
    let explained = state.workload.explain(&attrs);
    let d = &explained.decision;
    let verdict = Verdict {
        allowed: d.allowed,
        policy: d.policy.cloned(),
        rule: d.rule,
        reason: d.reason.as_str(),
    };
    let mtls_mode = policy.mtls_mode(request.destination_port);
    let authenticated = request.source_principal.is_some();
    let selector = policy.selector();
    let matched = |list: &[ward_policy::PolicyMatch<'_>]| -> Vec<Matched> {
        list.iter()
            .map(|m| Matched {
                policy: m.policy.to_string(),
                action: m.action.as_str().to_owned(),
                rule: m.rule,
            })
            .collect()
    };
    Ok(WhyReport {
        policy_version: state.version,
        workload: Workload {
            namespace: selector.namespace.clone(),
            labels: selector.labels.clone(),
            root_namespace: selector.options.root_namespace.clone(),
            trust_domain: selector.options.trust_domain.clone(),
        },
        mtls_mode: match mtls_mode {
            MtlsMode::Strict => "STRICT",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Disable => "DISABLE",
        }
        .to_owned(),
        plaintext_refused: !authenticated && mtls_mode == MtlsMode::Strict,
        decision: verdict.action().to_owned(),
        policy: d.policy.map(|p| p.to_string()),
        rule: d.rule,
        reason: d.reason.as_str().to_owned(),
        denied_by: authenticated.then(|| denial::value(&verdict)).flatten(),
        dry_run_matches: matched(d.dry_run_matches.as_slice()),
        audit_matches: matched(d.audit_matches.as_slice()),
        near_misses: explained
            .near_misses
            .iter()
            .map(|m| NearMiss {
                policy: m.policy.to_string(),
                action: m.action.as_str().to_owned(),
                dry_run: m.dry_run,
                rule: m.rule,
                field: m.field.clone(),
            })
            .collect(),
        policies: state
            .workload
            .policies()
            .map(|p| InForce {
                name: p.id.to_string(),
                action: p.action.as_str().to_owned(),
                dry_run: p.dry_run,
                version: p.version.clone(),
            })
            .collect(),
    })
}

/// The HTTP answer to a request description `body`.
pub fn answer(policy: Option<&PolicyAuthorizer>, body: &[u8]) -> Response<Body> {
    let report = std::str::from_utf8(body)
        .map_err(|_| WhyError::InvalidRequest("the body is not UTF-8".into()))
        .and_then(|text| OwnedRequest::from_json(text).map_err(WhyError::InvalidRequest))
        .and_then(|request| explain(policy, &request));
    match report {
        Ok(report) => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(full(Bytes::from(
                serde_json::to_vec(&report).expect("serializable"),
            )))
            .expect("valid response"),
        Err(err) => {
            let status = match err {
                WhyError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
                WhyError::NoPolicyEngine => StatusCode::NOT_IMPLEMENTED,
                WhyError::NoPolicyYet => StatusCode::SERVICE_UNAVAILABLE,
            };
            Response::builder()
                .status(status)
                .header(header::CONTENT_TYPE, "text/plain")
                .body(full(Bytes::from(format!("{err}\n"))))
                .expect("valid response")
        }
    }
}
