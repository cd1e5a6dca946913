//! Workload attestation: how a workload proves who it is before the CA signs
//! its CSR.
//!
//! Two methods are supported:
//! - a one-time **join token** created by an operator (`ward token create`)
//!   and bound to exactly one SPIFFE ID ([`JoinTokenStore`]);
//! - a Kubernetes **projected service-account token**, a JWT signed by the
//!   API server, checked either offline against the issuer's keys
//!   ([`ServiceAccountTokenValidator`]) or by the API server itself through
//!   the TokenReview API ([`TokenReviewer`]).
//!
//! [`Attestor`] dispatches a [`Credential`] to the configured method and
//! checks that the requested SPIFFE ID is the one the credential proves (and,
//! for service-account tokens, that the token is bound to the claimed pod):
//! both service-account paths yield a [`ServiceAccountIdentity`], so these
//! checks are the same whichever one verified the token.
//! Every failure is an [`AttestError`] with a fixed metric label
//! ([`AttestError::reason`]) and the method it came from
//! ([`AttestError::method`]).

use std::path::PathBuf;
use std::time::SystemTime;

use ward_identity::{SpiffeId, SpiffeIdError};

mod join_token;
mod k8s_token;
pub mod limiter;
mod pods;
mod token_review;

pub use join_token::JoinTokenStore;
pub use k8s_token::{
    DEFAULT_AUDIENCE, K8sTokenConfig, MAX_CLOCK_SKEW_SECS, ServiceAccountIdentity,
    ServiceAccountTokenValidator,
};
pub use pods::PodDirectory;
pub use token_review::{EXTRA_POD_NAME, EXTRA_POD_UID, TOKEN_REVIEW_TIMEOUT, TokenReviewer};
pub use ward_api::svid::{Credential, METHOD_JOIN_TOKEN, METHOD_K8S_SA_TOKEN};

#[cfg(test)]
mod tests;

/// Why attestation failed. Each variant says what to fix; [`Self::reason`]
/// gives a stable, low-cardinality label for metrics.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    // --- join tokens ---
    #[error("join token is unknown (never created, or already pruned)")]
    TokenUnknown,
    #[error("join token was already used; create a new one with `ward token create`")]
    TokenAlreadyUsed,
    #[error("join token has expired; create a new one with `ward token create`")]
    TokenExpired,
    #[error("join token is bound to {bound}, but {requested} was requested")]
    TokenIdMismatch {
        bound: SpiffeId,
        requested: SpiffeId,
    },
    #[error("{0} is reserved for the control plane and is never issued to workloads")]
    ReservedIdentity(SpiffeId),
    #[error("a join token lives more than zero and at most {max:?}")]
    TokenTtl { max: std::time::Duration },
    #[error("join token record {path} is corrupt: {reason}")]
    TokenRecordCorrupt { path: PathBuf, reason: String },
    #[error("join token store: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    // --- Kubernetes service-account tokens ---
    #[error("service-account token is not a well-formed JWT: {0}")]
    JwtMalformed(String),
    #[error("service-account token signature does not verify")]
    JwtBadSignature,
    #[error("service-account token is signed with key id {0:?}, which is not in the JWKS")]
    JwtUnknownKey(String),
    #[error("service-account token has expired")]
    JwtExpired,
    #[error("service-account token is not valid yet (nbf/iat in the future)")]
    JwtNotYetValid,
    #[error("service-account token audience does not include the expected audience")]
    JwtWrongAudience,
    #[error("service-account token issuer is not the configured issuer")]
    JwtWrongIssuer,
    #[error("service-account token lacks the {0:?} claim")]
    JwtMissingClaim(&'static str),
    #[error("service-account token claims disagree: {0}")]
    JwtInconsistentClaims(String),
    #[error("JWT algorithm {0:?} is not allowed (only RS256 and ES256)")]
    JwtAlgorithmNotAllowed(String),
    /// The caller says it is one pod, its service-account token was issued
    /// to another (or to no pod at all).
    #[error(
        "the request claims pod {claimed:?} but the service-account token is bound to {bound:?}"
    )]
    PodMismatch {
        claimed: String,
        bound: Option<String>,
    },
    #[error(
        "the control plane has not listed the cluster's pods yet; retry (the sidecar does, with backoff)"
    )]
    PodsNotSynced,
    #[error("the service-account token is not bound to a pod (use a projected token)")]
    TokenNotBoundToPod,
    #[error(
        "pod {namespace}/{name} is not a meshed pod the control plane sees (deleted, replaced, or not injected)"
    )]
    PodUnknown { namespace: String, name: String },
    #[error(
        "pod {pod} runs as service account {pod_service_account:?}, the token names {token_service_account:?}"
    )]
    PodServiceAccountMismatch {
        pod: String,
        pod_service_account: String,
        token_service_account: String,
    },
    #[error("service-account token proves {derived}, but {requested} was requested")]
    JwtIdMismatch {
        derived: SpiffeId,
        requested: SpiffeId,
    },
    #[error("service-account token names an identity that is not a valid SPIFFE ID: {0}")]
    JwtInvalidIdentity(SpiffeIdError),
    #[error("JWKS is unusable: {0}")]
    JwksInvalid(String),
    #[error("configured trust domain {0:?} is invalid")]
    InvalidTrustDomain(String),

    // --- Kubernetes TokenReview ---
    /// The API server did not authenticate the token; its `status.error`.
    #[error(
        "the Kubernetes API server did not authenticate the service-account token ({0}): it is \
         expired, was revoked (its pod or service account deleted), or is not from this cluster"
    )]
    TokenReviewRejected(String),
    #[error(
        "the Kubernetes API server did not confirm the service-account token for audience \
         {audience:?} ({detail}); mount a projected token with `audience: {audience}`"
    )]
    TokenReviewAudience { audience: String, detail: String },
    /// A valid token, but of a person, a node, or anything else that is not
    /// `system:serviceaccount:<namespace>:<name>`.
    #[error(
        "the token authenticates {0:?}, which is not a service account \
         (system:serviceaccount:<namespace>:<name>); only workloads' service-account tokens are accepted"
    )]
    NotAServiceAccount(String),
    /// The review could not be done (API unreachable, RBAC, timeout):
    /// refused, never issued on an unchecked token.
    #[error("the token could not be checked, so nothing is issued: {0}")]
    TokenReviewUnavailable(String),

    // --- dispatch ---
    #[error("attestation method {0} is not enabled on this control plane")]
    MethodNotEnabled(&'static str),
}

impl AttestError {
    /// A fixed label for the `reason` dimension of attestation-failure metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TokenUnknown => "token_unknown",
            Self::TokenAlreadyUsed => "token_reused",
            Self::TokenExpired => "token_expired",
            Self::TokenIdMismatch { .. } | Self::JwtIdMismatch { .. } => "id_mismatch",
            Self::PodMismatch { .. } => "pod_mismatch",
            Self::PodsNotSynced => "pods_not_synced",
            Self::TokenNotBoundToPod => "token_not_bound_to_pod",
            Self::PodUnknown { .. } => "pod_unknown",
            Self::PodServiceAccountMismatch { .. } => "pod_service_account_mismatch",
            Self::TokenRecordCorrupt { .. } => "token_store_corrupt",
            Self::ReservedIdentity(_) => "reserved_identity",
            Self::TokenTtl { .. } => "token_ttl",
            Self::Io { .. } => "io_error",
            Self::JwtMalformed(_) => "jwt_malformed",
            Self::JwtBadSignature => "jwt_invalid_signature",
            Self::JwtUnknownKey(_) => "jwt_unknown_key",
            Self::JwtExpired => "jwt_expired",
            Self::JwtNotYetValid => "jwt_not_yet_valid",
            Self::JwtWrongAudience => "jwt_wrong_audience",
            Self::JwtWrongIssuer => "jwt_wrong_issuer",
            Self::JwtMissingClaim(_) => "jwt_missing_claim",
            Self::JwtInconsistentClaims(_) => "jwt_inconsistent_claims",
            Self::JwtAlgorithmNotAllowed(_) => "jwt_algorithm_not_allowed",
            Self::JwtInvalidIdentity(_) => "jwt_invalid_identity",
            Self::JwksInvalid(_) => "jwks_invalid",
            Self::InvalidTrustDomain(_) => "invalid_trust_domain",
            Self::TokenReviewRejected(_) => "token_review_rejected",
            Self::TokenReviewAudience { .. } => "token_review_wrong_audience",
            Self::NotAServiceAccount(_) => "not_a_service_account",
            Self::TokenReviewUnavailable(_) => "token_review_unavailable",
            Self::MethodNotEnabled(_) => "method_not_enabled",
        }
    }

    /// The attestation method the error belongs to: `join_token` or
    /// `k8s_sa_token`.
    pub fn method(&self) -> &'static str {
        match self {
            Self::TokenUnknown
            | Self::TokenAlreadyUsed
            | Self::TokenExpired
            | Self::TokenIdMismatch { .. }
            | Self::TokenRecordCorrupt { .. }
            | Self::ReservedIdentity(_)
            | Self::TokenTtl { .. }
            | Self::Io { .. } => METHOD_JOIN_TOKEN,
            Self::JwtMalformed(_)
            | Self::JwtBadSignature
            | Self::JwtUnknownKey(_)
            | Self::JwtExpired
            | Self::JwtNotYetValid
            | Self::JwtWrongAudience
            | Self::JwtWrongIssuer
            | Self::JwtMissingClaim(_)
            | Self::JwtInconsistentClaims(_)
            | Self::JwtAlgorithmNotAllowed(_)
            | Self::JwtIdMismatch { .. }
            | Self::PodMismatch { .. }
            | Self::PodsNotSynced
            | Self::TokenNotBoundToPod
            | Self::PodUnknown { .. }
            | Self::PodServiceAccountMismatch { .. }
            | Self::JwtInvalidIdentity(_)
            | Self::JwksInvalid(_)
            | Self::InvalidTrustDomain(_)
            | Self::TokenReviewRejected(_)
            | Self::TokenReviewAudience { .. }
            | Self::NotAServiceAccount(_)
            | Self::TokenReviewUnavailable(_) => METHOD_K8S_SA_TOKEN,
            Self::MethodNotEnabled(method) => method,
        }
    }
}

/// How service-account tokens are verified. Either way the result is a
/// [`ServiceAccountIdentity`], checked the same by [`Attestor`].
#[derive(Debug)]
pub enum ServiceAccountVerifier {
    /// Offline, against the issuer's signing keys (JWKS). No API access
    /// needed; a deleted pod's token stays valid until it expires.
    Jwks(ServiceAccountTokenValidator),
    /// Online, by the API server (TokenReview). Sees revocations; fails
    /// closed when the API server cannot answer.
    TokenReview(TokenReviewer),
}

impl ServiceAccountVerifier {
    async fn verify(
        &self,
        token: &str,
        now: SystemTime,
    ) -> Result<ServiceAccountIdentity, AttestError> {
        match self {
            Self::Jwks(validator) => validator.validate(token, now),
            // The API server judges expiry by its own clock.
            Self::TokenReview(reviewer) => reviewer.review(token).await,
        }
    }
}

impl From<ServiceAccountTokenValidator> for ServiceAccountVerifier {
    fn from(validator: ServiceAccountTokenValidator) -> Self {
        Self::Jwks(validator)
    }
}

impl From<TokenReviewer> for ServiceAccountVerifier {
    fn from(reviewer: TokenReviewer) -> Self {
        Self::TokenReview(reviewer)
    }
}

/// Dispatches credentials to the attestation methods this control plane has
/// enabled. A method left `None` refuses with [`AttestError::MethodNotEnabled`].
#[derive(Debug, Default)]
pub struct Attestor {
    pub join_tokens: Option<JoinTokenStore>,
    pub k8s: Option<ServiceAccountVerifier>,
    /// With the Kubernetes source: a token's pod must be a meshed pod the
    /// control plane sees, with the same UID and service account.
    pub pods: Option<PodDirectory>,
}

impl Attestor {
    /// Proves that the presenter of `cred` may obtain a certificate for
    /// `requested`, and returns that ID.
    ///
    /// Nothing is consumed on failure, except an expired join token (which
    /// is retired so it can never succeed later). A successful join-token
    /// attestation consumes the token.
    pub async fn attest(
        &self,
        cred: &Credential,
        requested: &SpiffeId,
        now: SystemTime,
    ) -> Result<SpiffeId, AttestError> {
        self.attest_pod(cred, requested, None, now).await
    }

    /// As [`Self::attest`], and when the caller names its pod, a
    /// service-account token must be bound to exactly that pod (projected
    /// tokens carry `kubernetes.io.pod.name`). Join tokens are not bound to
    /// pods, so the claim is not checked for them.
    ///
    /// Async because TokenReview asks the API server.
    pub async fn attest_pod(
        &self,
        cred: &Credential,
        requested: &SpiffeId,
        claimed_pod: Option<&str>,
        now: SystemTime,
    ) -> Result<SpiffeId, AttestError> {
        match cred {
            Credential::JoinToken(token) => self
                .join_tokens
                .as_ref()
                .ok_or(AttestError::MethodNotEnabled(METHOD_JOIN_TOKEN))?
                .consume(token, requested, now),
            Credential::ServiceAccountToken(jwt) => {
                let verifier = self
                    .k8s
                    .as_ref()
                    .ok_or(AttestError::MethodNotEnabled(METHOD_K8S_SA_TOKEN))?;
                let identity = verifier.verify(jwt, now).await?;
                if identity.spiffe_id != *requested {
                    return Err(AttestError::JwtIdMismatch {
                        derived: identity.spiffe_id,
                        requested: requested.clone(),
                    });
                }
                if let Some(claimed) = claimed_pod
                    && identity.pod_name.as_deref() != Some(claimed)
                {
                    return Err(AttestError::PodMismatch {
                        claimed: claimed.to_owned(),
                        bound: identity.pod_name,
                    });
                }
                if let Some(pods) = &self.pods {
                    pods.check(&identity).await?;
                }
                Ok(identity.spiffe_id)
            }
        }
    }
}

/// The control plane's own identity (`ns/ward-system/sa/ward-control-plane`,
/// in any trust domain): every sidecar trusts its holder as the control
/// plane, so it is never issued to a workload, whatever credential asks.
pub fn is_reserved(id: &SpiffeId) -> bool {
    ward_api::control_plane_id(id.trust_domain()).is_ok_and(|reserved| reserved == *id)
}
