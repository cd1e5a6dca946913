//! The decision on a TokenReview answer, without an API server. The HTTP
//! side (and the whole attestation) is covered by `tests/token_review.rs`.

use k8s_openapi::api::authentication::v1::TokenReviewStatus;
use serde_json::json;

use super::*;

/// A `status` as the API server writes it, parsed through the same types.
fn status(value: serde_json::Value) -> TokenReviewStatus {
    serde_json::from_value(value).unwrap()
}

fn authenticated(username: &str, extra: serde_json::Value) -> TokenReviewStatus {
    status(json!({
        "authenticated": true,
        "audiences": ["ward"],
        "user": {"username": username, "uid": "u-1", "groups": ["system:authenticated"], "extra": extra},
    }))
}

fn decide(status: TokenReviewStatus) -> Result<ServiceAccountIdentity, AttestError> {
    identity_from_status(status, "ward", "cluster.local")
}

#[test]
fn service_account_usernames_are_parsed_strictly() {
    assert_eq!(
        parse_service_account("system:serviceaccount:shop:web"),
        Some(("shop", "web"))
    );
    for other in [
        "kubernetes-admin",
        "system:node:kind-worker",
        "system:anonymous",
        "system:serviceaccount:shop",
        "system:serviceaccount::web",
        "system:serviceaccount:shop:",
        "system:serviceaccount:shop:web:extra",
        "system:serviceaccounts:shop:web",
        "",
    ] {
        assert_eq!(parse_service_account(other), None, "{other:?}");
    }
}

#[test]
fn pod_binding_comes_from_exactly_one_extra_value() {
    let id = decide(authenticated(
        "system:serviceaccount:shop:web",
        json!({EXTRA_POD_NAME: ["web-7d4b9"], EXTRA_POD_UID: ["3b1f"]}),
    ))
    .unwrap();
    assert_eq!(
        id.spiffe_id.as_str(),
        "spiffe://cluster.local/ns/shop/sa/web"
    );
    assert_eq!(id.pod_name.as_deref(), Some("web-7d4b9"));
    assert_eq!(id.pod_uid.as_deref(), Some("3b1f"));

    // Unbound (a TokenRequest without a bound object), ambiguous and empty
    // values: no pod, so a request that claims one is refused later.
    for extra in [
        json!({}),
        json!({EXTRA_POD_NAME: ["a", "b"]}),
        json!({EXTRA_POD_NAME: [""]}),
        json!({EXTRA_POD_NAME: []}),
    ] {
        let id = decide(authenticated(
            "system:serviceaccount:shop:web",
            extra.clone(),
        ))
        .unwrap();
        assert_eq!(id.pod_name, None, "{extra}");
    }
}

#[test]
fn unauthenticated_answers_are_refused_with_the_servers_reason() {
    // `authenticated: false` is omitted on the wire, `user` is `{}`.
    let err = decide(status(
        json!({"user": {}, "error": "[invalid bearer token, token has been invalidated]"}),
    ))
    .unwrap_err();
    match &err {
        AttestError::TokenReviewRejected(why) => assert!(why.contains("invalidated"), "{why}"),
        other => panic!("expected TokenReviewRejected, got {other:?}"),
    }
    assert_eq!(err.reason(), "token_review_rejected");
    assert_eq!(err.method(), "k8s_sa_token");

    let err = decide(status(json!({"authenticated": false}))).unwrap_err();
    assert!(
        matches!(err, AttestError::TokenReviewRejected(ref why) if why == "no reason given"),
        "{err:?}"
    );

    // Authenticated but with an error is contradictory: refused.
    let mut contradictory = authenticated("system:serviceaccount:shop:web", json!({}));
    contradictory.error = Some("webhook authenticator timed out".into());
    assert!(matches!(
        decide(contradictory).unwrap_err(),
        AttestError::TokenReviewRejected(_)
    ));
}

#[test]
fn the_audience_must_be_confirmed() {
    let err = decide(status(json!({
        "user": {},
        "error": "[invalid bearer token, token audiences [\"https://kubernetes.default.svc.cluster.local\"] is invalid for the target audiences [\"ward\"]]"
    })))
    .unwrap_err();
    assert!(
        matches!(err, AttestError::TokenReviewAudience { .. }),
        "{err:?}"
    );
    assert_eq!(err.reason(), "token_review_wrong_audience");

    // An API server that is not audience-aware answers no audiences: the
    // token is then only known to be good for the API server.
    let mut unaware = authenticated("system:serviceaccount:shop:web", json!({}));
    unaware.audiences = None;
    let err = decide(unaware).unwrap_err();
    assert!(err.to_string().contains("names no audience"), "{err}");

    let mut other = authenticated("system:serviceaccount:shop:web", json!({}));
    other.audiences = Some(vec!["vault".into()]);
    assert!(matches!(
        decide(other).unwrap_err(),
        AttestError::TokenReviewAudience { .. }
    ));
}

#[test]
fn people_and_nodes_are_not_workloads() {
    for username in ["kubernetes-admin", "system:node:kind-worker"] {
        let err = decide(authenticated(username, json!({}))).unwrap_err();
        match &err {
            AttestError::NotAServiceAccount(who) => assert_eq!(who, username),
            other => panic!("expected NotAServiceAccount, got {other:?}"),
        }
        assert_eq!(err.reason(), "not_a_service_account");
    }
}
