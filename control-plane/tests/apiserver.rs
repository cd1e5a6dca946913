//! The fake API server in `support/apiserver.rs` behaves as kube-rs needs:
//! lists, watches streamed line by line, TLS verified against its own CA.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use http::{Method, StatusCode};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use serde_json::{Value, json};
use support::apiserver::{ApiServer, Reply, list, not_found, watch_event};
use tokio::sync::mpsc;

fn pod(name: &str, resource_version: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "resourceVersion": resource_version, "uid": format!("uid-{name}")},
        "spec": {"containers": [{"name": "app", "image": "shop/web:1"}]},
    })
}

#[tokio::test]
async fn lists_and_watches_pods_through_kube() {
    // The test holds the sending half of the one watch it expects.
    let (events, watch_rx) = mpsc::channel(8);
    let watch_rx = Arc::new(Mutex::new(Some(watch_rx)));
    let server = ApiServer::start(move |req| {
        if req
            .path_and_query
            .starts_with("/api/v1/namespaces/shop/pods?")
        {
            if req.path_and_query.contains("watch=true") {
                if let Some(rx) = watch_rx.lock().unwrap().take() {
                    return Reply::Stream(rx);
                }
            } else {
                return Reply::Json(
                    StatusCode::OK,
                    list("v1", "PodList", "10", vec![pod("web-1", "9")]),
                );
            }
        }
        not_found()
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(server.client(), "shop");

    let listed = pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.metadata.resource_version.as_deref(), Some("10"));
    let names: Vec<_> = listed
        .items
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["web-1"]);

    let mut stream = pods
        .watch(&WatchParams::default(), "10")
        .await
        .unwrap()
        .boxed();
    // Each event arrives while the response is still open: it was flushed
    // as its own line, not buffered until the end.
    events
        .send(watch_event("ADDED", pod("web-2", "11")))
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the first event arrives before the watch ends")
        .unwrap()
        .unwrap();
    match first {
        WatchEvent::Added(p) => assert_eq!(p.metadata.name.as_deref(), Some("web-2")),
        other => panic!("expected ADDED, got {other:?}"),
    }
    events
        .send(watch_event("DELETED", pod("web-1", "12")))
        .await
        .unwrap();
    match stream.next().await.unwrap().unwrap() {
        WatchEvent::Deleted(p) => assert_eq!(p.metadata.name.as_deref(), Some("web-1")),
        other => panic!("expected DELETED, got {other:?}"),
    }
    drop(events);
    assert!(
        tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("the watch ends when the sender is dropped")
            .is_none()
    );

    // A 404 Status reaches kube as an API error with its code and reason.
    let err = Api::<Pod>::namespaced(server.client(), "elsewhere")
        .get("nope")
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 404);
            assert_eq!(status.reason, "NotFound");
        }
        other => panic!("expected an API error, got {other}"),
    }

    let requests = server.requests();
    assert_eq!(requests.len(), 3, "{requests:#?}");
    assert!(
        requests
            .iter()
            .all(|r| r.method == Method::GET && r.body.is_null())
    );
    assert!(
        requests[1].path_and_query.contains("resourceVersion=10"),
        "{:?}",
        requests[1]
    );
    assert_eq!(
        requests[2].path_and_query,
        "/api/v1/namespaces/elsewhere/pods/nope"
    );
}

#[tokio::test]
async fn the_client_verifies_the_servers_certificate() {
    let server =
        ApiServer::start(|_| Reply::Json(StatusCode::OK, list("v1", "PodList", "1", vec![]))).await;
    // The right CA: fine.
    Api::<Pod>::all(server.client())
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(server.requests().len(), 1);

    // Another CA: the handshake fails and the request never arrives.
    let other_ca = rcgen::CertificateParams::new(Vec::<String>::new())
        .map(|mut params| {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
        })
        .unwrap()
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let mut config = kube::Config::new(server.url().parse().unwrap());
    config.root_cert = Some(vec![other_ca.der().to_vec()]);
    let untrusting = kube::Client::try_from(config).unwrap();
    let err = Api::<Pod>::all(untrusting)
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(!matches!(err, kube::Error::Api(_)), "{err}");
    assert_eq!(server.requests().len(), 1);
}
