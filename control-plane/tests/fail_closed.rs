//! Reserved identities (#15): the control plane's own SPIFFE ID, which
//! every sidecar trusts as its control plane, is never issued to a
//! workload, whatever credential asks for it.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::StatusCode;
use support::control_plane::{
    api_client, certificates_issued, loopback_config, metric_value, metrics, refusal, svid_request,
};
use ward_control_plane::attest::{AttestError, Credential, JoinTokenStore, K8sTokenConfig};
use ward_control_plane::data_dir::DataDir;
use ward_control_plane::server::ControlPlane;
use ward_identity::SpiffeId;
use ward_identity::ca;

const TD: &str = "cluster.local";
const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

fn jwks_for(key: &rcgen::KeyPair) -> String {
    let raw = key.public_key_raw();
    serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "k1",
        "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&raw[33..]),
    }]})
    .to_string()
}

/// A valid projected token for `ns/sa`, as the kubelet would mount it.
fn sa_token(key: &rcgen::KeyPair, ns: &str, sa: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "aud": ["ward"], "exp": now + 600, "iat": now - 10, "nbf": now - 10,
        "iss": ISSUER, "sub": format!("system:serviceaccount:{ns}:{sa}"),
        "kubernetes.io": {"namespace": ns,
            "pod": {"name": format!("{sa}-0"), "uid": "5f2b1a6e-0000-4000-8000-000000000001"},
            "serviceaccount": {"name": sa, "uid": "9a1c1d34-0000-4000-8000-000000000002"}}
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("k1".into());
    let encoding = jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    jsonwebtoken::encode(&header, &claims, &encoding).unwrap()
}

#[tokio::test]
async fn the_control_planes_identity_is_never_issued_to_a_workload() {
    let data = tempfile::tempdir().unwrap();
    let signing = ca::generate_key();
    let mut config = loopback_config(TD, data.path());
    config.k8s = Some(K8sTokenConfig::from_jwks_json(ISSUER, TD, &jwks_for(&signing)).unwrap());
    let cp = ControlPlane::start(config).await.unwrap();
    let reserved = cp.spiffe_id().clone();
    assert_eq!(
        reserved.as_str(),
        "spiffe://cluster.local/ns/ward-system/sa/ward-control-plane"
    );

    // No join token can be made for it...
    let store =
        JoinTokenStore::open(&DataDir::open(data.path()).unwrap().join_tokens_dir()).unwrap();
    assert!(matches!(
        store.create(&reserved, Duration::from_secs(60)),
        Err(AttestError::ReservedIdentity(_))
    ));
    // ...and a genuine service-account token of that very account (the
    // control plane's own pod's, say) does not get it either.
    let token = sa_token(&signing, "ward-system", "ward-control-plane");
    let request = svid_request(
        &reserved,
        Some(Credential::ServiceAccountToken(token)),
        None,
    );
    let err = api_client(&cp, TD)
        .request_svid(&request, None)
        .await
        .unwrap_err();
    let (status, code, message) = refusal(err);
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "reserved_identity")
    );
    assert!(message.contains("never issued"), "{message}");
    // The same credential path works for an ordinary account: the refusal
    // is about the identity, not the token.
    let web = SpiffeId::for_service_account(TD, "shop", "web").unwrap();
    let token = sa_token(&signing, "shop", "web");
    let request = svid_request(&web, Some(Credential::ServiceAccountToken(token)), None);
    api_client(&cp, TD)
        .request_svid(&request, None)
        .await
        .expect("issued");

    let metrics = metrics(&cp).await;
    assert_eq!(certificates_issued(&metrics), 1.0);
    assert_eq!(
        metric_value(
            &metrics,
            r#"ward_ca_certificate_refusals_total{reason="reserved_identity"}"#
        ),
        1.0
    );
    cp.shutdown().await;
}

/// Failed attestations are rate limited per source: past the budget, a
/// request with a credential is refused before attestation (no token check,
/// no TokenReview call), while renewals over mTLS are not affected.
#[tokio::test]
async fn failed_attestations_are_rate_limited_per_source() {
    use ward_control_plane::attest::limiter::MAX_FAILURES;
    let data = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(loopback_config(TD, data.path()))
        .await
        .unwrap();
    let client = api_client(&cp, TD);
    let web = SpiffeId::for_service_account(TD, "shop", "web").unwrap();
    let bogus = || svid_request(&web, Some(Credential::JoinToken("wjt_bogus".into())), None);
    for _ in 0..MAX_FAILURES {
        let (status, code, _) = refusal(client.request_svid(&bogus(), None).await.unwrap_err());
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::FORBIDDEN, "attestation_failed")
        );
    }
    let (status, code, _) = refusal(client.request_svid(&bogus(), None).await.unwrap_err());
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "attestation_rate_limited")
    );
    // Even a valid token waits for the window: the source is limited.
    let token = support::control_plane::join_token(data.path(), &web, Duration::from_secs(60));
    let valid = svid_request(&web, Some(Credential::JoinToken(token)), None);
    let (status, _, _) = refusal(client.request_svid(&valid, None).await.unwrap_err());
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let metrics = metrics(&cp).await;
    assert_eq!(
        support::control_plane::attestation_failures(&metrics, "join_token", "token_unknown"),
        f64::from(MAX_FAILURES),
        "nothing attested once limited"
    );
    cp.shutdown().await;
}
