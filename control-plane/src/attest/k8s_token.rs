//! Kubernetes projected service-account tokens (JWTs signed by the API
//! server), validated against the cluster's JWKS.
//!
//! Accepted tokens look exactly like what the API server issues for a
//! projected volume with `audience: ward`:
//!
//! ```json
//! { "iss": "https://kubernetes.default.svc.cluster.local",
//!   "aud": ["ward"], "exp": 1700003600, "iat": 1700000000, "nbf": 1700000000,
//!   "sub": "system:serviceaccount:payments:api",
//!   "kubernetes.io": { "namespace": "payments",
//!                      "serviceaccount": { "name": "api", "uid": "..." },
//!                      "pod": { "name": "api-7d9f", "uid": "..." } } }
//! ```
//!
//! Legacy secret-based tokens (no `exp`, flat `kubernetes.io/...` claims)
//! never expire and are refused.

use std::collections::HashMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use ward_identity::SpiffeId;

use super::AttestError;

/// Also used by the `attest` glue tests to mint tokens.
#[cfg(test)]
pub(super) mod tests;

/// The audience Ward asks Kubernetes to put in projected tokens.
pub const DEFAULT_AUDIENCE: &str = "ward";

/// Tolerated clock difference between the API server and the control plane
/// for `nbf` and `iat` (a token minted by a server whose clock runs slightly
/// ahead is still fine). `exp` gets **no** leeway: the kubelet refreshes a
/// projected token well before it expires (at 80% of its lifetime), so a
/// healthy workload never presents an expired one, and accepting one would
/// only extend the life of a leaked token.
pub const MAX_CLOCK_SKEW_SECS: u64 = 30;

/// What the validator trusts.
#[derive(Debug, Clone)]
pub struct K8sTokenConfig {
    /// Expected `iss`, e.g. `https://kubernetes.default.svc.cluster.local`.
    pub issuer: String,
    /// Required member of `aud`; [`DEFAULT_AUDIENCE`] unless configured.
    pub audience: String,
    /// The API server's service-account signing keys.
    pub jwks: JwkSet,
    /// Trust domain of the SPIFFE IDs issued to attested workloads.
    pub trust_domain: String,
}

impl K8sTokenConfig {
    /// A config with the default audience and the JWKS read from `path`
    /// (e.g. the output of `kubectl get --raw /openid/v1/jwks`).
    pub fn from_jwks_file(
        issuer: impl Into<String>,
        trust_domain: impl Into<String>,
        path: &Path,
    ) -> Result<Self, AttestError> {
        let json = std::fs::read_to_string(path)
            .map_err(|e| AttestError::JwksInvalid(format!("read {}: {e}", path.display())))?;
        Self::from_jwks_json(issuer, trust_domain, &json)
    }

    /// A config with the default audience and the JWKS given as JSON.
    pub fn from_jwks_json(
        issuer: impl Into<String>,
        trust_domain: impl Into<String>,
        json: &str,
    ) -> Result<Self, AttestError> {
        let jwks = serde_json::from_str(json)
            .map_err(|e| AttestError::JwksInvalid(format!("parse JWKS: {e}")))?;
        Ok(Self {
            issuer: issuer.into(),
            audience: DEFAULT_AUDIENCE.to_owned(),
            jwks,
            trust_domain: trust_domain.into(),
        })
    }
}

/// Who a valid service-account token says the workload is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountIdentity {
    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
    pub spiffe_id: SpiffeId,
    pub namespace: String,
    pub service_account: String,
    /// The pod the token was bound to, when the API server said so.
    pub pod_name: Option<String>,
    /// That pod's UID: tells a pod from a later one of the same name.
    pub pod_uid: Option<String>,
}

/// A JWKS key Ward can verify with, and the one algorithm it may be used
/// with. Binding the algorithm to the key (not to the token's header) is
/// what defeats algorithm-confusion attacks.
#[derive(Debug)]
struct VerificationKey {
    key: DecodingKey,
    algorithm: Algorithm,
}

/// Validates Kubernetes projected service-account tokens.
#[derive(Debug)]
pub struct ServiceAccountTokenValidator {
    issuer: String,
    audience: String,
    trust_domain: String,
    keys: HashMap<String, VerificationKey>,
}

impl ServiceAccountTokenValidator {
    /// Checks the configuration and prepares the keys. Keys Ward cannot use
    /// (not RSA or P-256, no `kid`, `use` other than `sig`, or an `alg`
    /// other than RS256/ES256) are skipped: a token signed with one is then
    /// refused as signed by an unknown key. At least one usable key is
    /// required.
    pub fn new(config: K8sTokenConfig) -> Result<Self, AttestError> {
        if SpiffeId::parse(&format!("spiffe://{}", config.trust_domain)).is_err() {
            return Err(AttestError::InvalidTrustDomain(config.trust_domain));
        }
        let mut keys = HashMap::new();
        for jwk in &config.jwks.keys {
            let Some((kid, key)) = usable_key(jwk)? else {
                continue;
            };
            if keys.insert(kid.clone(), key).is_some() {
                return Err(AttestError::JwksInvalid(format!("duplicate kid {kid:?}")));
            }
        }
        if keys.is_empty() {
            return Err(AttestError::JwksInvalid(
                "no RS256 or ES256 signing key with a kid".to_owned(),
            ));
        }
        Ok(Self {
            issuer: config.issuer,
            audience: config.audience,
            trust_domain: config.trust_domain,
            keys,
        })
    }

    /// Validates `token` as of `now` and returns the identity it proves.
    pub fn validate(
        &self,
        token: &str,
        now: SystemTime,
    ) -> Result<ServiceAccountIdentity, AttestError> {
        let header = peek_header(token)?;
        let key = self.key_for(&header)?;
        let claims = verify_signature(token, key)?;
        self.check_registered_claims(&claims, unix_secs(now))?;
        self.identity_from(claims)
    }

    /// The key named by `kid`, provided the header's `alg` is the one that
    /// key is bound to.
    fn key_for(&self, header: &PeekedHeader) -> Result<&VerificationKey, AttestError> {
        if !matches!(header.alg.as_str(), "RS256" | "ES256") {
            return Err(AttestError::JwtAlgorithmNotAllowed(header.alg.clone()));
        }
        let kid = header
            .kid
            .as_deref()
            .ok_or(AttestError::JwtMissingClaim("kid"))?;
        let key = self
            .keys
            .get(kid)
            .ok_or_else(|| AttestError::JwtUnknownKey(kid.to_owned()))?;
        if alg_name(key.algorithm) != header.alg {
            // An RS256 key presented as ES256 (or vice versa).
            return Err(AttestError::JwtAlgorithmNotAllowed(header.alg.clone()));
        }
        Ok(key)
    }

    /// `iss`, `aud`, `exp`, `nbf` and `iat`, against the caller's clock.
    fn check_registered_claims(&self, claims: &Claims, now: u64) -> Result<(), AttestError> {
        let iss = claims
            .iss
            .as_deref()
            .ok_or(AttestError::JwtMissingClaim("iss"))?;
        if iss != self.issuer {
            return Err(AttestError::JwtWrongIssuer);
        }
        let aud = claims
            .aud
            .as_ref()
            .ok_or(AttestError::JwtMissingClaim("aud"))?;
        if !aud.contains(&self.audience) {
            return Err(AttestError::JwtWrongAudience);
        }
        let exp = claims.exp.ok_or(AttestError::JwtMissingClaim("exp"))?;
        if now >= exp {
            return Err(AttestError::JwtExpired);
        }
        let latest_start = now.saturating_add(MAX_CLOCK_SKEW_SECS);
        for start in [claims.nbf, claims.iat].into_iter().flatten() {
            if start > latest_start {
                return Err(AttestError::JwtNotYetValid);
            }
            if start >= exp {
                return Err(AttestError::JwtInconsistentClaims(
                    "nbf/iat is not before exp".to_owned(),
                ));
            }
        }
        Ok(())
    }

    /// Namespace and service account from the nested `kubernetes.io` claim,
    /// cross-checked with `sub` when present.
    fn identity_from(&self, claims: Claims) -> Result<ServiceAccountIdentity, AttestError> {
        let k8s = claims
            .kubernetes
            .ok_or(AttestError::JwtMissingClaim("kubernetes.io"))?;
        let namespace = non_empty(k8s.namespace)
            .ok_or(AttestError::JwtMissingClaim("kubernetes.io.namespace"))?;
        let service_account = non_empty(k8s.serviceaccount.and_then(|sa| sa.name)).ok_or(
            AttestError::JwtMissingClaim("kubernetes.io.serviceaccount.name"),
        )?;
        if let Some(sub) = claims.sub {
            let expected = format!("system:serviceaccount:{namespace}:{service_account}");
            if sub != expected {
                return Err(AttestError::JwtInconsistentClaims(format!(
                    "sub is {sub:?} but kubernetes.io names {expected:?}"
                )));
            }
        }
        let spiffe_id =
            SpiffeId::for_service_account(&self.trust_domain, &namespace, &service_account)
                .map_err(AttestError::JwtInvalidIdentity)?;
        let (pod_name, pod_uid) = match k8s.pod {
            Some(pod) => (non_empty(pod.name), non_empty(pod.uid)),
            None => (None, None),
        };
        Ok(ServiceAccountIdentity {
            spiffe_id,
            namespace,
            service_account,
            pod_name,
            pod_uid,
        })
    }
}

/// The claims Ward reads. Everything is optional here so that a missing
/// claim is reported by name rather than as a parse error.
#[derive(Debug, Deserialize)]
struct Claims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<Audience>,
    exp: Option<u64>,
    nbf: Option<u64>,
    iat: Option<u64>,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<KubernetesClaims>,
}

/// `aud` is a string or an array of strings (RFC 7519 §4.1.3).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, wanted: &str) -> bool {
        match self {
            Self::One(aud) => aud == wanted,
            Self::Many(auds) => auds.iter().any(|aud| aud == wanted),
        }
    }
}

#[derive(Debug, Deserialize)]
struct KubernetesClaims {
    namespace: Option<String>,
    serviceaccount: Option<ObjectRef>,
    pod: Option<ObjectRef>,
}

#[derive(Debug, Deserialize)]
struct ObjectRef {
    name: Option<String>,
    uid: Option<String>,
}

/// The header fields needed to pick a key, read before any verification.
/// Parsed by hand so that `alg: none` (which the JWT library cannot even
/// represent) is reported as a refused algorithm, not as garbage.
#[derive(Debug, Deserialize)]
struct PeekedHeader {
    alg: String,
    kid: Option<String>,
    /// Critical extensions Ward does not implement (RFC 7515 §4.1.11).
    crit: Option<serde_json::Value>,
}

fn peek_header(token: &str) -> Result<PeekedHeader, AttestError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AttestError::JwtMalformed(
            "expected three dot-separated parts".into(),
        ));
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|e| AttestError::JwtMalformed(format!("header: {e}")))?;
    let header: PeekedHeader = serde_json::from_slice(&bytes)
        .map_err(|e| AttestError::JwtMalformed(format!("header: {e}")))?;
    if header.crit.is_some() {
        return Err(AttestError::JwtMalformed("unsupported crit header".into()));
    }
    Ok(header)
}

/// Verifies the signature with `key` (and only its algorithm), returning the
/// claims. Claim checks are done by Ward against the caller's clock, so the
/// library's own (wall-clock) checks are turned off.
fn verify_signature(token: &str, key: &VerificationKey) -> Result<Claims, AttestError> {
    let mut validation = Validation::new(key.algorithm);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
        .map(|data| data.claims)
        .map_err(|e| match e.into_kind() {
            ErrorKind::InvalidSignature => AttestError::JwtBadSignature,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                AttestError::JwtAlgorithmNotAllowed(alg_name(key.algorithm).to_owned())
            }
            other => AttestError::JwtMalformed(format!("{other:?}")),
        })
}

/// `Some((kid, key))` when Ward can verify with `jwk`; `None` to skip it.
fn usable_key(jwk: &Jwk) -> Result<Option<(String, VerificationKey)>, AttestError> {
    let Some(kid) = jwk.common.key_id.clone() else {
        return Ok(None);
    };
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return Ok(None);
    }
    let (algorithm, declared) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (Algorithm::RS256, KeyAlgorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            (Algorithm::ES256, KeyAlgorithm::ES256)
        }
        _ => return Ok(None),
    };
    if jwk.common.key_algorithm.is_some_and(|alg| alg != declared) {
        return Ok(None);
    }
    let key = DecodingKey::from_jwk(jwk)
        .map_err(|e| AttestError::JwksInvalid(format!("key {kid:?}: {e}")))?;
    Ok(Some((kid, VerificationKey { key, algorithm })))
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        _ => "other",
    }
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
