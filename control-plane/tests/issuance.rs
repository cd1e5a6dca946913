//! Certificate issuance over the real HTTPS API: a control plane on
//! loopback, workloads enrolling with join tokens and service-account JWTs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod support;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::StatusCode;
use support::control_plane::{
    api_client, attestation_failures, certificates_issued, certified_id, join_token,
    keyed_svid_request, loopback_config, metrics, refusal, svid_cell, svid_request,
};
use ward_api::client::{ClientError, ControlPlaneClient};
use ward_api::svid::SvidRequest;
use ward_control_plane::attest::{Credential, K8sTokenConfig};
use ward_control_plane::server::ControlPlane;
use ward_identity::SpiffeId;
use ward_identity::ca;

const TD: &str = "cluster.local";
const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

struct Harness {
    cp: ControlPlane,
    data: tempfile::TempDir,
    signing_key: rcgen::KeyPair,
}

impl Harness {
    async fn start() -> Harness {
        let data = tempfile::tempdir().unwrap();
        Self::start_in(data).await
    }

    async fn start_in(data: tempfile::TempDir) -> Harness {
        let signing_key = ca::generate_key();
        let mut config = loopback_config(TD, data.path());
        config.k8s = Some(
            K8sTokenConfig::from_jwks_json(ISSUER, TD, &jwks_for(&signing_key, "key-1")).unwrap(),
        );
        let cp = ControlPlane::start(config).await.unwrap();
        Harness {
            cp,
            data,
            signing_key,
        }
    }

    fn client(&self) -> ControlPlaneClient {
        api_client(&self.cp, TD)
    }

    fn token(&self, id: &SpiffeId, ttl: Duration) -> String {
        join_token(self.data.path(), id, ttl)
    }

    async fn metrics(&self) -> String {
        metrics(&self.cp).await
    }
}

fn id(sa: &str) -> SpiffeId {
    SpiffeId::for_service_account(TD, "default", sa).unwrap()
}

/// A request for `id` with `credential` and no pod claim.
fn request(id: &SpiffeId, credential: Option<Credential>) -> SvidRequest {
    svid_request(id, credential, None)
}

/// (status, error code) of a refused request, which must say why.
fn refusal_code(err: ClientError) -> (StatusCode, String) {
    let (status, code, message) = refusal(err);
    assert!(!message.is_empty());
    (status, code)
}

#[tokio::test]
async fn join_token_enrols_once_and_is_refused_on_replay() {
    let h = Harness::start().await;
    let web = id("web");
    let token = h.token(&web, Duration::from_secs(60));
    let answer = h
        .client()
        .request_svid(
            &request(&web, Some(Credential::JoinToken(token.clone()))),
            None,
        )
        .await
        .unwrap();
    assert_eq!(certified_id(&answer), web);
    assert_eq!(answer.spiffe_id, web.as_str());
    assert!(answer.not_after.ends_with('Z'));

    let replay = h
        .client()
        .request_svid(&request(&web, Some(Credential::JoinToken(token))), None)
        .await
        .unwrap_err();
    assert_eq!(
        refusal_code(replay),
        (StatusCode::FORBIDDEN, "attestation_failed".into())
    );

    let metrics = h.metrics().await;
    assert_eq!(certificates_issued(&metrics), 1.0);
    assert_eq!(
        attestation_failures(&metrics, "join_token", "token_reused"),
        1.0,
        "{metrics}"
    );
    h.cp.shutdown().await;
}

#[tokio::test]
async fn join_token_refusals_are_specific_and_issue_nothing() {
    let h = Harness::start().await;
    let web = id("web");
    let client = h.client();

    // Bound to another ID: refused, and the token still works for its own ID.
    let token = h.token(&web, Duration::from_secs(60));
    let err = client
        .request_svid(
            &request(&id("db"), Some(Credential::JoinToken(token.clone()))),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(refusal_code(err).0, StatusCode::FORBIDDEN);

    // A CSR whose SAN differs from the requested ID never burns the token.
    let mut mismatched = request(&web, Some(Credential::JoinToken(token.clone())));
    mismatched.csr = request(&id("other"), None).csr;
    let err = client.request_svid(&mismatched, None).await.unwrap_err();
    assert_eq!(
        refusal_code(err),
        (StatusCode::BAD_REQUEST, "bad_csr".into())
    );

    assert!(
        client
            .request_svid(&request(&web, Some(Credential::JoinToken(token))), None)
            .await
            .is_ok()
    );

    // Unknown and expired tokens.
    let err = client
        .request_svid(
            &request(&web, Some(Credential::JoinToken("nope".into()))),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(refusal_code(err).0, StatusCode::FORBIDDEN);
    let short = h.token(&web, Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let err = client
        .request_svid(&request(&web, Some(Credential::JoinToken(short))), None)
        .await
        .unwrap_err();
    assert_eq!(refusal_code(err).0, StatusCode::FORBIDDEN);

    // An ID outside the trust domain, and no credential at all.
    let foreign = SpiffeId::parse("spiffe://other.example/ns/default/sa/web").unwrap();
    let err = client
        .request_svid(&request(&foreign, None), None)
        .await
        .unwrap_err();
    assert_eq!(refusal_code(err).0, StatusCode::BAD_REQUEST);
    let err = client
        .request_svid(&request(&web, None), None)
        .await
        .unwrap_err();
    assert_eq!(
        refusal_code(err),
        (StatusCode::UNAUTHORIZED, "no_credential".into())
    );

    let metrics = h.metrics().await;
    assert_eq!(certificates_issued(&metrics), 1.0, "{metrics}");
    for reason in ["id_mismatch", "token_unknown", "token_expired"] {
        assert_eq!(
            attestation_failures(&metrics, "join_token", reason),
            1.0,
            "{reason}\n{metrics}"
        );
    }
    h.cp.shutdown().await;
}

// ---- Kubernetes service-account tokens --------------------------------

/// A JWKS holding the EC P-256 public key of `key`, as the API server
/// publishes at /openid/v1/jwks.
fn jwks_for(key: &rcgen::KeyPair, kid: &str) -> String {
    let raw = key.public_key_raw(); // 0x04 || X || Y
    assert_eq!(raw.len(), 65);
    serde_json::json!({
        "keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&raw[33..]),
        }]
    })
    .to_string()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A projected service-account token shaped exactly as the kubelet gets it.
fn sa_token(
    key: &rcgen::KeyPair,
    kid: &str,
    iss: &str,
    aud: &str,
    exp: u64,
    ns: &str,
    sa: &str,
) -> String {
    let now = now_secs();
    let claims = serde_json::json!({
        "aud": [aud],
        "exp": exp,
        "iat": now - 10,
        "nbf": now - 10,
        "iss": iss,
        "sub": format!("system:serviceaccount:{ns}:{sa}"),
        "kubernetes.io": {
            "namespace": ns,
            "pod": {"name": format!("{sa}-7d9c8b-x2x4z"), "uid": "5f2b1a6e-0000-4000-8000-000000000001"},
            "serviceaccount": {"name": sa, "uid": "9a1c1d34-0000-4000-8000-000000000002"}
        }
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.into());
    let encoding = jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    jsonwebtoken::encode(&header, &claims, &encoding).unwrap()
}

#[tokio::test]
async fn service_account_token_enrols_and_bad_tokens_are_refused() {
    let h = Harness::start().await;
    let client = h.client();
    let api = SpiffeId::for_service_account(TD, "prod", "api").unwrap();
    // prod/api's token as the cluster signs it, valid until `exp`.
    let signed = |exp: u64| sa_token(&h.signing_key, "key-1", ISSUER, "ward", exp, "prod", "api");
    let exp = now_secs() + 600;
    let good = signed(exp);
    let answer = client
        .request_svid(
            &request(&api, Some(Credential::ServiceAccountToken(good.clone()))),
            None,
        )
        .await
        .unwrap();
    assert_eq!(certified_id(&answer), api);

    // The token names prod/api: asking for another identity is refused.
    let err = client
        .request_svid(
            &request(&id("api"), Some(Credential::ServiceAccountToken(good))),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(refusal_code(err).0, StatusCode::FORBIDDEN);

    // A token is bound to its pod: claiming another pod is refused, the
    // right pod is accepted.
    let wrong_pod = svid_request(
        &api,
        Some(Credential::ServiceAccountToken(signed(exp))),
        Some("someone-else-5f6d7-abcde"),
    );
    let err = client.request_svid(&wrong_pod, None).await.unwrap_err();
    assert_eq!(
        refusal_code(err),
        (StatusCode::FORBIDDEN, "attestation_failed".into())
    );
    let right_pod = svid_request(
        &api,
        Some(Credential::ServiceAccountToken(signed(exp))),
        Some("api-7d9c8b-x2x4z"),
    );
    assert_eq!(
        certified_id(&client.request_svid(&right_pod, None).await.unwrap()),
        api
    );

    let other_key = ca::generate_key();
    let bad = [
        ("expired", signed(now_secs() - 120)),
        (
            "wrong audience",
            sa_token(
                &h.signing_key,
                "key-1",
                ISSUER,
                "istio-ca",
                exp,
                "prod",
                "api",
            ),
        ),
        (
            "wrong issuer",
            sa_token(
                &h.signing_key,
                "key-1",
                "https://evil.example",
                "ward",
                exp,
                "prod",
                "api",
            ),
        ),
        (
            "unknown key id",
            sa_token(&h.signing_key, "key-9", ISSUER, "ward", exp, "prod", "api"),
        ),
        (
            "signed by another key",
            sa_token(&other_key, "key-1", ISSUER, "ward", exp, "prod", "api"),
        ),
    ];
    for (what, token) in bad {
        let err = client
            .request_svid(
                &request(&api, Some(Credential::ServiceAccountToken(token))),
                None,
            )
            .await
            .unwrap_err();
        assert_eq!(
            refusal_code(err),
            (StatusCode::FORBIDDEN, "attestation_failed".into()),
            "{what}"
        );
    }
    let metrics = h.metrics().await;
    // The first token and the right-pod request.
    assert_eq!(certificates_issued(&metrics), 2.0, "{metrics}");
    assert_eq!(
        attestation_failures(&metrics, "k8s_sa_token", "pod_mismatch"),
        1.0,
        "{metrics}"
    );
    h.cp.shutdown().await;
}

#[tokio::test]
async fn renewal_over_mtls_needs_the_same_identity() {
    let h = Harness::start().await;
    let client = h.client();
    let web = id("web");
    let token = h.token(&web, Duration::from_secs(60));
    let (key, enrolment) = keyed_svid_request(&web, Some(Credential::JoinToken(token)), None);
    let first = client.request_svid(&enrolment, None).await.unwrap();
    let cell = svid_cell(&first, &key, TD);

    // With its current SVID as client certificate: renewed without a credential.
    let renewed = client
        .request_svid(&request(&web, None), Some(&cell))
        .await
        .unwrap();
    assert_eq!(certified_id(&renewed), web);
    // The same certificate cannot get another identity.
    let err = client
        .request_svid(&request(&id("admin"), None), Some(&cell))
        .await
        .unwrap_err();
    assert_eq!(
        refusal_code(err),
        (StatusCode::FORBIDDEN, "renewal_id_mismatch".into())
    );
    h.cp.shutdown().await;
}

#[tokio::test]
async fn restart_keeps_the_ca_and_the_key_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let h = Harness::start().await;
    let bundle = h.cp.bundle_pem().to_owned();
    let data = h.data;
    h.cp.shutdown().await;
    let mode = std::fs::metadata(data.path().join("ca/ca-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let again = Harness::start_in(data).await;
    assert_eq!(again.cp.bundle_pem(), bundle);
    again.cp.shutdown().await;
}

/// curl as an independent HTTP/2 + TLS client: the API negotiates h2 and
/// its serving certificate verifies against the bundle for `localhost`.
#[tokio::test]
async fn curl_reaches_the_api_over_http2() {
    ward_testkit::require_tool!("curl");
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, h.cp.bundle_pem()).unwrap();
    let port = h.cp.api_addr().port();
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--http2", "--cacert"])
        .arg(&bundle)
        .args(["-w", "\n%{http_version} %{http_code}"])
        .arg(format!("https://localhost:{port}/v1/bundle"))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.ends_with("\n2 200"), "{stdout}");
    assert!(stdout.contains("BEGIN CERTIFICATE"), "{stdout}");

    // A malformed request gets a 4xx, not a crash.
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--http2", "--cacert"])
        .arg(&bundle)
        .args(["-w", "%{http_code}", "-o", "/dev/null", "-d", "{not json"])
        .arg(format!("https://localhost:{port}/v1/svid"))
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "400");
    h.cp.shutdown().await;
}
