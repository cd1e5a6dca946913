use std::time::Duration;

use ward_testkit::require_tool;

use super::k8s_token::tests::{k8s_claims, keys, now, sign, validator};
use super::*;

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn join_token_attestor() -> (tempfile::TempDir, Attestor) {
    let dir = tempfile::tempdir().unwrap();
    let store = JoinTokenStore::open(&dir.path().join("join-tokens")).unwrap();
    let attestor = Attestor {
        join_tokens: Some(store),
        k8s: None,
        pods: None,
    };
    (dir, attestor)
}

#[test]
fn credential_wire_format() {
    let join = Credential::JoinToken("abc".into());
    let sa = Credential::ServiceAccountToken("x.y.z".into());
    assert_eq!(
        serde_json::to_string(&join).unwrap(),
        r#"{"join_token":"abc"}"#
    );
    assert_eq!(
        serde_json::to_string(&sa).unwrap(),
        r#"{"k8s_sa_token":"x.y.z"}"#
    );
    let parsed: Credential = serde_json::from_str(r#"{"k8s_sa_token":"x.y.z"}"#).unwrap();
    assert_eq!(parsed, sa);
    assert!(serde_json::from_str::<Credential>(r#"{"password":"x"}"#).is_err());
    assert_eq!(join.method(), "join_token");
    assert_eq!(sa.method(), "k8s_sa_token");
}

#[test]
fn credential_debug_does_not_leak_the_secret() {
    let cred = Credential::JoinToken("super-secret-token".into());
    let debug = format!("{cred:?}");
    assert!(!debug.contains("super-secret"), "{debug}");
    assert_eq!(debug, r#"JoinToken("[redacted]")"#);
}

#[tokio::test]
async fn join_token_through_the_attestor() {
    let (_dir, attestor) = join_token_attestor();
    let api = id("spiffe://example.org/ns/payments/sa/api");
    let token = attestor
        .join_tokens
        .as_ref()
        .unwrap()
        .create(&api, Duration::from_secs(600))
        .unwrap();
    let cred = Credential::JoinToken(token);
    let wrong = id("spiffe://example.org/ns/payments/sa/other");
    let err = attestor
        .attest(&cred, &wrong, SystemTime::now())
        .await
        .unwrap_err();
    assert!(
        matches!(err, AttestError::TokenIdMismatch { .. }),
        "{err:?}"
    );
    assert_eq!(
        attestor
            .attest(&cred, &api, SystemTime::now())
            .await
            .unwrap(),
        api
    );
    let err = attestor
        .attest(&cred, &api, SystemTime::now())
        .await
        .unwrap_err();
    assert!(matches!(err, AttestError::TokenAlreadyUsed), "{err:?}");
}

#[tokio::test]
async fn disabled_methods_are_refused() {
    let (_dir, join_only) = join_token_attestor();
    let api = id("spiffe://cluster.local/ns/payments/sa/api");
    let err = join_only
        .attest(
            &Credential::ServiceAccountToken("x.y.z".into()),
            &api,
            SystemTime::now(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, AttestError::MethodNotEnabled("k8s_sa_token")),
        "{err:?}"
    );
    assert_eq!(err.reason(), "method_not_enabled");
    assert_eq!(err.method(), "k8s_sa_token");

    let nothing = Attestor::default();
    let err = nothing
        .attest(&Credential::JoinToken("t".into()), &api, SystemTime::now())
        .await
        .unwrap_err();
    assert_eq!(err.method(), "join_token");
    assert_eq!(err.reason(), "method_not_enabled");
}

#[tokio::test]
async fn service_account_token_must_prove_the_requested_id() {
    require_tool!("openssl");
    let attestor = Attestor {
        join_tokens: None,
        k8s: Some(validator(keys()).into()),
        pods: None,
    };
    let cred = Credential::ServiceAccountToken(sign(&keys().rsa, &k8s_claims("payments", "api")));
    let api = id("spiffe://cluster.local/ns/payments/sa/api");
    assert_eq!(attestor.attest(&cred, &api, now()).await.unwrap(), api);

    let admin = id("spiffe://cluster.local/ns/payments/sa/admin");
    let err = attestor.attest(&cred, &admin, now()).await.unwrap_err();
    match &err {
        AttestError::JwtIdMismatch { derived, requested } => {
            assert_eq!(*derived, api);
            assert_eq!(*requested, admin);
        }
        other => panic!("expected JwtIdMismatch, got {other:?}"),
    }
    assert_eq!(err.reason(), "id_mismatch");
    assert_eq!(err.method(), "k8s_sa_token");
    // Nothing is consumed: the same token still works.
    assert_eq!(attestor.attest(&cred, &api, now()).await.unwrap(), api);
}

#[test]
fn every_error_has_a_fixed_label_and_method() {
    let api = id("spiffe://example.org/ns/a/sa/b");
    let errors = [
        AttestError::TokenUnknown,
        AttestError::TokenAlreadyUsed,
        AttestError::TokenExpired,
        AttestError::TokenIdMismatch {
            bound: api.clone(),
            requested: api.clone(),
        },
        AttestError::JwtMalformed("x".into()),
        AttestError::JwtBadSignature,
        AttestError::JwtUnknownKey("k".into()),
        AttestError::JwtExpired,
        AttestError::JwtWrongAudience,
        AttestError::JwtWrongIssuer,
        AttestError::JwtMissingClaim("exp"),
        AttestError::JwtAlgorithmNotAllowed("none".into()),
        AttestError::TokenReviewRejected("x".into()),
        AttestError::TokenReviewAudience {
            audience: "ward".into(),
            detail: "x".into(),
        },
        AttestError::NotAServiceAccount("kubernetes-admin".into()),
        AttestError::TokenReviewUnavailable("x".into()),
    ];
    let labels: Vec<_> = errors.iter().map(AttestError::reason).collect();
    assert_eq!(
        labels,
        [
            "token_unknown",
            "token_reused",
            "token_expired",
            "id_mismatch",
            "jwt_malformed",
            "jwt_invalid_signature",
            "jwt_unknown_key",
            "jwt_expired",
            "jwt_wrong_audience",
            "jwt_wrong_issuer",
            "jwt_missing_claim",
            "jwt_algorithm_not_allowed",
            "token_review_rejected",
            "token_review_wrong_audience",
            "not_a_service_account",
            "token_review_unavailable",
        ]
    );
    let methods: Vec<_> = errors.iter().map(AttestError::method).collect();
    assert_eq!(methods[..4], ["join_token"; 4]);
    assert!(methods[4..].iter().all(|m| *m == "k8s_sa_token"));
}

#[test]
fn join_token_lifetimes_are_capped_and_the_reserved_identity_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = JoinTokenStore::open(&dir.path().join("join-tokens")).unwrap();
    let web = id("spiffe://example.org/ns/shop/sa/web");
    store.create(&web, join_token::MAX_TTL).expect("at the cap");
    for ttl in [join_token::MAX_TTL + Duration::from_secs(1), Duration::ZERO] {
        assert!(matches!(
            store.create(&web, ttl),
            Err(AttestError::TokenTtl { .. })
        ));
    }
    let reserved = id("spiffe://example.org/ns/ward-system/sa/ward-control-plane");
    assert!(matches!(
        store.create(&reserved, Duration::from_secs(60)),
        Err(AttestError::ReservedIdentity(_))
    ));
}
