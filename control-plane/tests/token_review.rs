//! Service-account token attestation through the Kubernetes TokenReview
//! API, against a fake API server (`support/apiserver.rs`) that answers the
//! way kube-apiserver does: `201 Created` with the review echoed back and a
//! `status`, or a `meta/v1 Status` failure.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http::{Method, StatusCode};
use serde_json::{Value, json};
use support::apiserver::{ApiServer, Recorded, Reply, not_found, status_failure};
use support::control_plane::{
    api_client, attestation_failures, certificates_issued, certified_id, cluster_role_allows,
    loopback_config, metrics, refusal, svid_request,
};
use tokio::sync::mpsc;
use ward_api::client::ControlPlaneClient;
use ward_api::svid::SvidRequest;
use ward_control_plane::attest::{
    AttestError, Attestor, Credential, K8sTokenConfig, ServiceAccountIdentity, TokenReviewer,
};
use ward_control_plane::k8s::ApiClient;
use ward_control_plane::server::ControlPlane;
use ward_identity::SpiffeId;

const TD: &str = "cluster.local";
const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
/// The pod `WEB_TOKEN` was issued to.
const WEB_POD: &str = "web-7d4b9-xk2pq";
const WEB_POD_UID: &str = "8c6f3b2a-41d7-4e0c-9a5b-2f1e7d3c6b90";

// The tokens the fake cluster knows. Opaque to Ward: only the API server
// can tell what they are, which is the point of TokenReview.
const WEB_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.web.sig";
const EXPIRED_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.expired.sig";
const INVALIDATED_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.invalidated.sig";
const API_AUDIENCE_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.api-audience.sig";
const OIDC_USER_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.alice.sig";
const UNAWARE_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.unaware.sig";

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::for_service_account(TD, ns, sa).unwrap()
}

/// The API server's answer to a TokenReview create: the object echoed with
/// a `status` (`201 Created`).
fn reviewed(request: &Recorded, status: Value) -> Reply {
    Reply::Json(
        StatusCode::CREATED,
        json!({
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": request.body["spec"].clone(),
            "status": status,
        }),
    )
}

/// `status` for a pod-bound projected token of `shop/web`, as 1.32 fills it.
fn web_status() -> Value {
    json!({
        "authenticated": true,
        "user": {
            "username": "system:serviceaccount:shop:web",
            "uid": "1d2c3b4a-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
            "groups": ["system:serviceaccounts", "system:serviceaccounts:shop", "system:authenticated"],
            "extra": {
                "authentication.kubernetes.io/credential-id": ["JTI=7f9b0a52-3c1e-4d6f-8a2b-9c0d1e2f3a4b"],
                "authentication.kubernetes.io/node-name": ["kind-worker"],
                "authentication.kubernetes.io/node-uid": ["0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"],
                "authentication.kubernetes.io/pod-name": [WEB_POD],
                "authentication.kubernetes.io/pod-uid": [WEB_POD_UID],
            },
        },
        "audiences": ["ward"],
    })
}

/// Failed reviews: `authenticated: false` is omitted, `user` is `{}`.
fn unauthenticated(error: &str) -> Value {
    json!({"user": {}, "error": error})
}

/// A cluster that knows the tokens above, and 404s anything but TokenReview.
fn cluster(request: &Recorded) -> Reply {
    if request.method != Method::POST || !request.path_and_query.starts_with(TOKEN_REVIEWS) {
        return not_found();
    }
    let status = match request.body["spec"]["token"].as_str().unwrap_or_default() {
        WEB_TOKEN => web_status(),
        EXPIRED_TOKEN => {
            unauthenticated("[invalid bearer token, service account token has expired]")
        }
        INVALIDATED_TOKEN => unauthenticated("[invalid bearer token, token has been invalidated]"),
        API_AUDIENCE_TOKEN => unauthenticated(
            "[invalid bearer token, token audiences [\"https://kubernetes.default.svc.cluster.local\"] is invalid for the target audiences [\"ward\"]]",
        ),
        // A person, authenticated by an OIDC issuer configured for `ward`.
        OIDC_USER_TOKEN => json!({
            "authenticated": true,
            "user": {"username": "oidc:alice@example.com", "groups": ["oidc:developers", "system:authenticated"]},
            "audiences": ["ward"],
        }),
        // An authenticator that ignores audiences: no `status.audiences`.
        UNAWARE_TOKEN => {
            let mut status = web_status();
            status.as_object_mut().unwrap().remove("audiences");
            status
        }
        _ => unauthenticated(
            "[invalid bearer token, square/go-jose: compact JWS format must have three parts]",
        ),
    };
    reviewed(request, status)
}

fn attestor(server: &ApiServer) -> Attestor {
    Attestor {
        join_tokens: None,
        pods: None,
        k8s: Some(
            TokenReviewer::new(server.client(), "ward", TD)
                .unwrap()
                .into(),
        ),
    }
}

async fn attest(
    attestor: &Attestor,
    token: &str,
    requested: &SpiffeId,
    pod: Option<&str>,
) -> Result<SpiffeId, AttestError> {
    attestor
        .attest_pod(
            &Credential::ServiceAccountToken(token.into()),
            requested,
            pod,
            SystemTime::now(),
        )
        .await
}

/// How an Attestor asking the fake cluster refuses `token` for `requested`
/// (claiming `pod`).
async fn refused(token: &str, requested: &SpiffeId, pod: Option<&str>) -> AttestError {
    let server = ApiServer::start(cluster).await;
    attest(&attestor(&server), token, requested, pod)
        .await
        .unwrap_err()
}

#[tokio::test]
async fn accepted_token_proves_its_service_account_and_pod() {
    let server = ApiServer::start(cluster).await;
    let reviewer = TokenReviewer::new(server.client(), "ward", TD).unwrap();
    let identity = reviewer.review(WEB_TOKEN).await.unwrap();
    assert_eq!(
        identity,
        ServiceAccountIdentity {
            spiffe_id: id("shop", "web"),
            namespace: "shop".into(),
            service_account: "web".into(),
            pod_name: Some(WEB_POD.into()),
            pod_uid: Some(WEB_POD_UID.into()),
        }
    );

    // What the API server was asked.
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    let asked = &requests[0];
    assert_eq!(asked.method, Method::POST);
    assert_eq!(
        asked.path_and_query.split('?').next(),
        Some(TOKEN_REVIEWS),
        "{asked:?}"
    );
    assert!(!asked.path_and_query.contains("dryRun"), "{asked:?}");
    assert_eq!(asked.body["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(asked.body["kind"], "TokenReview");
    assert_eq!(asked.body["spec"]["token"], WEB_TOKEN);
    assert_eq!(asked.body["spec"]["audiences"], json!(["ward"]));

    // Through the Attestor, with and without a pod claim.
    let attestor = attestor(&server);
    let web = id("shop", "web");
    assert_eq!(
        attest(&attestor, WEB_TOKEN, &web, Some(WEB_POD))
            .await
            .unwrap(),
        web
    );
    assert_eq!(attest(&attestor, WEB_TOKEN, &web, None).await.unwrap(), web);
    assert_eq!(server.requests().len(), 3);
}

#[tokio::test]
async fn expired_invalidated_and_garbage_tokens_are_refused() {
    let server = ApiServer::start(cluster).await;
    let attestor = attestor(&server);
    let web = id("shop", "web");
    for (token, says) in [
        (EXPIRED_TOKEN, "service account token has expired"),
        (INVALIDATED_TOKEN, "token has been invalidated"),
        ("not-a-jwt", "compact JWS format"),
    ] {
        let err = attest(&attestor, token, &web, Some(WEB_POD))
            .await
            .unwrap_err();
        match &err {
            // The API server's reason reaches the operator.
            AttestError::TokenReviewRejected(why) => assert!(why.contains(says), "{why}"),
            other => panic!("{token}: expected TokenReviewRejected, got {other:?}"),
        }
        assert_eq!(err.reason(), "token_review_rejected");
        assert_eq!(err.method(), "k8s_sa_token");
        assert!(err.to_string().contains(says), "{err}");
    }
    assert_eq!(server.requests().len(), 3);
}

#[tokio::test]
async fn token_for_another_audience_is_refused() {
    let err = refused(API_AUDIENCE_TOKEN, &id("shop", "web"), None).await;
    assert!(
        matches!(&err, AttestError::TokenReviewAudience { audience, detail }
            if audience == "ward" && detail.contains("is invalid for the target audiences")),
        "{err:?}"
    );
    assert_eq!(err.reason(), "token_review_wrong_audience");
    assert!(err.to_string().contains("audience: ward"), "{err}");
}

#[tokio::test]
async fn an_answer_without_audiences_is_not_trusted() {
    // Per the TokenReview API, no `status.audiences` means the token is only
    // known to be valid for the API server itself, not for Ward.
    let err = refused(UNAWARE_TOKEN, &id("shop", "web"), Some(WEB_POD)).await;
    assert!(
        matches!(err, AttestError::TokenReviewAudience { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_user_that_is_not_a_service_account_is_refused() {
    let err = refused(OIDC_USER_TOKEN, &id("shop", "web"), None).await;
    match &err {
        AttestError::NotAServiceAccount(who) => assert_eq!(who, "oidc:alice@example.com"),
        other => panic!("expected NotAServiceAccount, got {other:?}"),
    }
    assert_eq!(err.reason(), "not_a_service_account");
}

#[tokio::test]
async fn token_bound_to_another_pod_is_refused() {
    let err = refused(WEB_TOKEN, &id("shop", "web"), Some("web-7d4b9-evil1")).await;
    match &err {
        AttestError::PodMismatch { claimed, bound } => {
            assert_eq!(claimed, "web-7d4b9-evil1");
            assert_eq!(bound.as_deref(), Some(WEB_POD));
        }
        other => panic!("expected PodMismatch, got {other:?}"),
    }
    assert_eq!(err.reason(), "pod_mismatch");
}

#[tokio::test]
async fn token_of_another_service_account_is_refused() {
    let admin = id("shop", "admin");
    let err = refused(WEB_TOKEN, &admin, Some(WEB_POD)).await;
    match &err {
        AttestError::JwtIdMismatch { derived, requested } => {
            assert_eq!(*derived, id("shop", "web"));
            assert_eq!(*requested, admin);
        }
        other => panic!("expected JwtIdMismatch, got {other:?}"),
    }
    assert_eq!(err.reason(), "id_mismatch");
}

#[tokio::test]
async fn rbac_forbidden_fails_closed() {
    let forbidden = "tokenreviews.authentication.k8s.io is forbidden: User \"system:serviceaccount:ward-system:ward-control-plane\" cannot create resource \"tokenreviews\" in API group \"authentication.k8s.io\" at the cluster scope";
    let server = ApiServer::start(move |_| {
        let mut status = status_failure(403, "Forbidden", forbidden);
        status["details"] = json!({"group": "authentication.k8s.io", "kind": "tokenreviews"});
        Reply::Json(StatusCode::FORBIDDEN, status)
    })
    .await;
    let err = attest(
        &attestor(&server),
        WEB_TOKEN,
        &id("shop", "web"),
        Some(WEB_POD),
    )
    .await
    .unwrap_err();
    match &err {
        AttestError::TokenReviewUnavailable(why) => {
            assert!(why.contains("403"), "{why}");
            assert!(why.contains("cannot create resource"), "{why}");
            // The fix is named.
            assert!(why.contains("`create` on `tokenreviews`"), "{why}");
        }
        other => panic!("expected TokenReviewUnavailable, got {other:?}"),
    }
    assert_eq!(err.reason(), "token_review_unavailable");
    assert_eq!(err.method(), "k8s_sa_token");
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn stopped_api_server_fails_closed() {
    let server = ApiServer::start(cluster).await;
    let addr: SocketAddr = server.url().trim_start_matches("https://").parse().unwrap();
    let attestor = attestor(&server);
    let web = id("shop", "web");
    // Works while it runs, leaving a pooled keep-alive connection behind.
    attest(&attestor, WEB_TOKEN, &web, Some(WEB_POD))
        .await
        .unwrap();

    drop(server);
    // Stopping is asynchronous (a task abort): wait until the port refuses.
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the fake API server did not stop"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let err = attest(&attestor, WEB_TOKEN, &web, Some(WEB_POD))
        .await
        .unwrap_err();
    assert!(
        matches!(err, AttestError::TokenReviewUnavailable(_)),
        "{err:?}"
    );
    assert_eq!(err.reason(), "token_review_unavailable");
    // Failed on the refused connection, not at the review's timeout.
    let message = err.to_string();
    assert!(message.contains("unreachable"), "{message}");
    assert!(
        !message.contains("no answer from the Kubernetes API within"),
        "{message}"
    );
}

#[tokio::test]
async fn hung_api_server_fails_closed_at_the_timeout() {
    // Answers 200 and then never finishes the body: the senders are kept.
    let held: Arc<Mutex<Vec<mpsc::Sender<Value>>>> = Arc::default();
    let keep = held.clone();
    let server = ApiServer::start(move |_| {
        let (tx, rx) = mpsc::channel(1);
        keep.lock().unwrap().push(tx);
        Reply::Stream(rx)
    })
    .await;
    let timeout = Duration::from_millis(400);
    let attestor = Attestor {
        join_tokens: None,
        pods: None,
        k8s: Some(
            TokenReviewer::new(server.client(), "ward", TD)
                .unwrap()
                .with_timeout(timeout)
                .into(),
        ),
    };
    let started = Instant::now();
    let err = attest(&attestor, WEB_TOKEN, &id("shop", "web"), None)
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(err, AttestError::TokenReviewUnavailable(_)),
        "{err:?}"
    );
    assert!(err.to_string().contains("within 400ms"), "{err}");
    assert!(took >= timeout, "gave up early: {took:?}");
    // The bound is the behaviour: the configured 400 ms fired, not the
    // 5 s default (a margin of more than 4 s for a loaded machine).
    assert!(
        took < ward_control_plane::attest::TOKEN_REVIEW_TIMEOUT,
        "not bounded by the configured timeout: {took:?}"
    );
    assert_eq!(
        held.lock().unwrap().len(),
        1,
        "the request reached the server"
    );
}

// ---- the whole control plane ------------------------------------------

struct Harness {
    cp: ControlPlane,
    _data: tempfile::TempDir,
}

impl Harness {
    async fn start(server: &ApiServer) -> Harness {
        let data = tempfile::tempdir().unwrap();
        let mut config = loopback_config(TD, data.path());
        config.kube = Some(ApiClient(server.client()));
        config.token_review = true;
        let cp = ControlPlane::start(config).await.unwrap();
        Harness { cp, _data: data }
    }

    fn client(&self) -> ControlPlaneClient {
        api_client(&self.cp, TD)
    }

    async fn metrics(&self) -> String {
        metrics(&self.cp).await
    }
}

/// A request as the sidecar sends it: a fresh key's CSR for `id`, the
/// projected token, and the pod from `WARD_POD_NAME`.
fn token_request(id: &SpiffeId, token: &str, pod: &str) -> SvidRequest {
    let credential = Credential::ServiceAccountToken(token.into());
    svid_request(id, Some(credential), Some(pod))
}

#[tokio::test]
async fn control_plane_issues_on_a_reviewed_token_and_refuses_the_wrong_pod() {
    let server = ApiServer::start(cluster).await;
    let h = Harness::start(&server).await;
    let client = h.client();
    let web = id("shop", "web");

    let answer = client
        .request_svid(&token_request(&web, WEB_TOKEN, WEB_POD), None)
        .await
        .unwrap();
    assert_eq!(certified_id(&answer), web);

    let (status, code, message) = refusal(
        client
            .request_svid(&token_request(&web, WEB_TOKEN, "web-7d4b9-evil1"), None)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "attestation_failed")
    );
    // Generic: the caller is not authenticated, so the answer names no pod
    // and repeats nothing the API server said (the metric has the reason).
    assert!(!message.contains("web-7d4b9"), "{message}");
    assert!(
        message.contains("k8s_sa_token credential was refused"),
        "{message}"
    );

    let (status, _, message) = refusal(
        client
            .request_svid(&token_request(&web, INVALIDATED_TOKEN, WEB_POD), None)
            .await
            .unwrap_err(),
    );
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(!message.contains("invalidated"), "{message}");

    // Every attestation asked the API server, with Ward's audience, and
    // nothing else: the one call the deployed ClusterRole must allow.
    let reviews = server.requests();
    assert_eq!(reviews.len(), 3, "{reviews:#?}");
    for review in &reviews {
        assert_eq!(review.method, Method::POST);
        assert_eq!(review.path_and_query.split('?').next(), Some(TOKEN_REVIEWS));
        assert_eq!(review.body["spec"]["audiences"], json!(["ward"]));
    }
    assert!(
        cluster_role_allows("authentication.k8s.io", "tokenreviews", "create"),
        "deploy/base/rbac.yaml must let the control plane create TokenReviews"
    );

    let metrics = h.metrics().await;
    assert_eq!(certificates_issued(&metrics), 1.0, "{metrics}");
    for reason in ["pod_mismatch", "token_review_rejected"] {
        assert_eq!(
            attestation_failures(&metrics, "k8s_sa_token", reason),
            1.0,
            "{metrics}"
        );
    }
    h.cp.shutdown().await;
}

#[tokio::test]
async fn control_plane_refuses_when_the_api_server_is_gone() {
    let server = ApiServer::start(cluster).await;
    let h = Harness::start(&server).await;
    drop(server);
    let web = id("shop", "web");
    let (status, code, message) = refusal(
        h.client()
            .request_svid(&token_request(&web, WEB_TOKEN, WEB_POD), None)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "attestation_failed")
    );
    assert!(!message.contains("unreachable"), "{message}");
    assert!(message.contains("credential was refused"), "{message}");
    let metrics = h.metrics().await;
    assert_eq!(certificates_issued(&metrics), 0.0);
    assert_eq!(
        attestation_failures(&metrics, "k8s_sa_token", "token_review_unavailable"),
        1.0,
        "{metrics}"
    );
    h.cp.shutdown().await;
}

#[tokio::test]
async fn jwks_and_token_review_together_are_refused_at_start() {
    let server = ApiServer::start(cluster).await;
    let data = tempfile::tempdir().unwrap();
    let mut config = loopback_config(TD, data.path());
    config.admin_listen = None;
    config.kube = Some(ApiClient(server.client()));
    config.token_review = true;
    config.k8s = Some(
        K8sTokenConfig::from_jwks_json(
            "https://kubernetes.default.svc.cluster.local",
            TD,
            r#"{"keys": []}"#,
        )
        .unwrap(),
    );
    let err = ControlPlane::start(config).await.err().expect("refused");
    assert!(err.to_string().contains("not both"), "{err}");
}
