//! Kubernetes service-account tokens checked by the API server itself,
//! through the `authentication.k8s.io/v1` TokenReview API.
//!
//! Unlike the JWKS path ([`super::ServiceAccountTokenValidator`]) this sees
//! what only the API server knows: a token whose pod, secret or service
//! account was deleted is refused at once, and no signing keys have to be
//! copied into the control plane (or re-copied when they rotate). The cost is
//! one API call per attestation, and a dependency on the API server: when it
//! cannot answer, attestation **fails closed** (nothing is issued), because
//! the only alternative would be issuing on an unchecked token.
//!
//! What is sent, and what an accepted answer looks like (`201 Created`):
//!
//! ```json
//! {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
//!  "spec": {"token": "<jwt>", "audiences": ["ward"]}}
//!
//! {"status": {"authenticated": true, "audiences": ["ward"],
//!   "user": {"username": "system:serviceaccount:shop:web", "uid": "…",
//!            "groups": ["system:serviceaccounts", "system:serviceaccounts:shop", "system:authenticated"],
//!            "extra": {"authentication.kubernetes.io/pod-name": ["web-7d4b9"],
//!                      "authentication.kubernetes.io/pod-uid": ["…"]}}}}
//! ```

use std::error::Error as _;
use std::fmt;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::{Api, PostParams};
use ward_identity::SpiffeId;

use super::{AttestError, ServiceAccountIdentity};

#[cfg(test)]
mod tests;

/// Longest an attestation waits for the API server. A sidecar retries with
/// back-off, so answering "unavailable" promptly beats holding its request
/// (and a connection slot) open behind a stuck API server.
pub const TOKEN_REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// `user.username` of every service account: `system:serviceaccount:<ns>:<name>`.
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";
/// `user.extra` keys the API server fills for pod-bound (projected) tokens.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// Substring of the service-account authenticator's error for a token minted
/// for other audiences: `token audiences ["x"] is invalid for the target
/// audiences ["ward"]`. Only used to pick the metric label; either way the
/// token is refused.
const WRONG_AUDIENCE_ERROR: &str = "is invalid for the target audiences";

/// Asks the Kubernetes API server whether a service-account token is valid
/// for Ward's audience, and whose it is.
#[derive(Clone)]
pub struct TokenReviewer {
    client: kube::Client,
    audience: String,
    trust_domain: String,
    timeout: Duration,
}

impl fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("audience", &self.audience)
            .field("trust_domain", &self.trust_domain)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl TokenReviewer {
    /// A reviewer that requires tokens for `audience` and derives IDs in
    /// `trust_domain`, with [`TOKEN_REVIEW_TIMEOUT`].
    pub fn new(
        client: kube::Client,
        audience: impl Into<String>,
        trust_domain: impl Into<String>,
    ) -> Result<Self, AttestError> {
        let trust_domain = trust_domain.into();
        if SpiffeId::parse(&format!("spiffe://{trust_domain}")).is_err() {
            return Err(AttestError::InvalidTrustDomain(trust_domain));
        }
        Ok(Self {
            client,
            audience: audience.into(),
            trust_domain,
            timeout: TOKEN_REVIEW_TIMEOUT,
        })
    }

    /// Bounds each review (the API call, retries included) by `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Reviews `token` and returns the service account (and pod) it
    /// authenticates. Any doubt is a refusal: an unreachable or refusing API
    /// server, a timeout, an unauthenticated token, a token for another
    /// audience, or a user that is not a service account.
    pub async fn review(&self, token: &str) -> Result<ServiceAccountIdentity, AttestError> {
        let request = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let api = Api::<TokenReview>::all(self.client.clone());
        let answer =
            match tokio::time::timeout(self.timeout, api.create(&PostParams::default(), &request))
                .await
            {
                Ok(Ok(answer)) => answer,
                Ok(Err(err)) => return Err(AttestError::TokenReviewUnavailable(describe(&err))),
                Err(_) => {
                    return Err(AttestError::TokenReviewUnavailable(format!(
                        "no answer from the Kubernetes API within {:?}",
                        self.timeout
                    )));
                }
            };
        let status = answer.status.ok_or_else(|| {
            AttestError::TokenReviewUnavailable(
                "the API server answered a TokenReview without a status".into(),
            )
        })?;
        identity_from_status(status, &self.audience, &self.trust_domain)
    }
}

/// The decision on an API server's answer, apart from the call so it can be
/// tested on its own.
fn identity_from_status(
    status: TokenReviewStatus,
    audience: &str,
    trust_domain: &str,
) -> Result<ServiceAccountIdentity, AttestError> {
    let error = status.error.filter(|e| !e.is_empty());
    // `authenticated: false` is omitted on the wire: absent means no.
    if status.authenticated != Some(true) {
        let error = error.unwrap_or_else(|| "no reason given".to_owned());
        if error.contains(WRONG_AUDIENCE_ERROR) {
            return Err(AttestError::TokenReviewAudience {
                audience: audience.to_owned(),
                detail: error,
            });
        }
        return Err(AttestError::TokenReviewRejected(error));
    }
    if let Some(error) = error {
        // Authenticated yet with an error: contradictory, so not trusted.
        return Err(AttestError::TokenReviewRejected(error));
    }
    // The API docs: a client that sets spec.audiences must check that
    // status.audiences holds one, to know the server is audience-aware. An
    // empty list with `authenticated: true` means "valid for the API server",
    // which a token stolen from any pod's default mount also is.
    let audiences = status.audiences.unwrap_or_default();
    if !audiences.iter().any(|a| a == audience) {
        let detail = if audiences.is_empty() {
            "the answer names no audience, so the token is only known to be valid for the API server itself".to_owned()
        } else {
            format!("the answer names audiences {audiences:?}")
        };
        return Err(AttestError::TokenReviewAudience {
            audience: audience.to_owned(),
            detail,
        });
    }
    let user = status.user.unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let Some((namespace, service_account)) = parse_service_account(&username) else {
        return Err(AttestError::NotAServiceAccount(username));
    };
    let spiffe_id = SpiffeId::for_service_account(trust_domain, namespace, service_account)
        .map_err(AttestError::JwtInvalidIdentity)?;
    let extra = user.extra.unwrap_or_default();
    let single = |key: &str| match extra.get(key).map(Vec::as_slice) {
        // Several values would be ambiguous: treat as not bound, so a pod
        // claim cannot be satisfied by it.
        Some([one]) if !one.is_empty() => Some(one.clone()),
        _ => None,
    };
    Ok(ServiceAccountIdentity {
        spiffe_id,
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        pod_name: single(EXTRA_POD_NAME),
        pod_uid: single(EXTRA_POD_UID),
    })
}

/// `(namespace, name)` from `system:serviceaccount:<namespace>:<name>`;
/// `None` for anything else (a person, a node, `system:anonymous`, a
/// malformed name). Namespaces and service-account names are DNS names, so
/// neither part can hold a colon.
fn parse_service_account(username: &str) -> Option<(&str, &str)> {
    let rest = username.strip_prefix(SERVICE_ACCOUNT_PREFIX)?;
    let (namespace, name) = rest.split_once(':')?;
    if namespace.is_empty() || name.is_empty() || name.contains(':') {
        return None;
    }
    Some((namespace, name))
}

/// A kube error as an operator can act on it, with its causes.
fn describe(err: &kube::Error) -> String {
    let mut out = match err {
        kube::Error::Api(status) => {
            let mut out = format!(
                "the Kubernetes API answered {} {}: {}",
                status.code, status.reason, status.message
            );
            if status.is_forbidden() {
                out.push_str(
                    "; grant the control plane's service account `create` on `tokenreviews` \
                     in API group `authentication.k8s.io` (the `ward-control-plane` \
                     ClusterRole in deploy/base does)",
                );
            }
            return out;
        }
        kube::Error::Service(_) | kube::Error::HyperError(_) => {
            format!("the Kubernetes API is unreachable: {err}")
        }
        other => format!("the TokenReview call failed: {other}"),
    };
    let mut source = err.source();
    while let Some(cause) = source {
        // hyper and tower repeat their cause in their own message.
        let cause_text = cause.to_string();
        if !out.ends_with(&cause_text) {
            out.push_str(": ");
            out.push_str(&cause_text);
        }
        source = cause.source();
    }
    out
}
