//! `ward-control-plane` serving the injector: the whole `ControlPlane` with
//! `webhook_listen` set, one AdmissionReview over HTTPS. The client trusts
//! the control plane's CA bundle only and checks the certificate for the
//! Service name `ward-control-plane.ward-system.svc`, as the API server does
//! with the MutatingWebhookConfiguration's `caBundle`.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use ward_control_plane::server::{Config, ControlPlane};

const SERVICE_NAME: &str = "ward-control-plane.ward-system.svc";

fn review(uid: &str) -> Value {
    let gvk = json!({"group": "", "version": "v1", "kind": "Pod"});
    json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": uid,
            "kind": gvk,
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": gvk,
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"generateName": "cart-", "namespace": "shop"},
                "spec": {
                    "serviceAccountName": "cart",
                    "containers": [{
                        "name": "cart",
                        "image": "registry.example/cart:1",
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}}
                    }]
                }
            },
            "oldObject": null,
            "dryRun": false
        }
    })
}

#[tokio::test]
async fn control_plane_serves_the_injector_with_its_ca() {
    let data = tempfile::tempdir().unwrap();
    let mut config = Config::new("example.org", data.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.admin_listen = None;
    config.webhook_listen = Some("127.0.0.1:0".parse().unwrap());
    config.inject.image = "registry.example/ward:test".into();
    // Replaced by the CA's trust domain.
    config.inject.trust_domain = "wrong.example".into();
    let cp = ControlPlane::start(config).await.unwrap();
    let addr = cp.webhook_addr().expect("webhook enabled");

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(cp.bundle_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut client = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from(SERVICE_NAME).unwrap(), tcp)
        .await
        .expect("the serving certificate chains to the bundle for the Service name");

    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method("POST")
        .uri("/inject/namespace-enabled?timeout=5s")
        .header("host", format!("{SERVICE_NAME}:15017"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(review("uid-cp").to_string())))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let answer: Value = serde_json::from_slice(&body).unwrap();
    let response = &answer["response"];
    assert_eq!(response["uid"], "uid-cp");
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut pod = review("uid-cp")["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();

    let inits = pod["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(inits[0]["name"], "ward-init");
    let proxy = &inits[1];
    assert_eq!(proxy["name"], "ward-proxy");
    assert_eq!(proxy["image"], "registry.example/ward:test");
    let env = |name: &str| {
        proxy["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].clone())
    };
    assert_eq!(env("WARD_TRUST_DOMAIN"), Some(json!("example.org")));
    assert_eq!(
        proxy["startupProbe"]["exec"]["command"],
        json!(["ward-proxy", "probe", "ready", "--timeout", "2s"])
    );
    assert_eq!(
        pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"],
        "/app-health/cart/readyz"
    );

    cp.shutdown().await;
}
