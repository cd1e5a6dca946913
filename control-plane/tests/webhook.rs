//! The injector webhook over real HTTPS, with AdmissionReviews shaped as the
//! API server sends them (the envelope follows a recorded `admission.k8s.io/v1`
//! request; the pods are k8s-openapi objects). The returned base64 JSON patch
//! is applied to the original pod with `json-patch`, as the API server does.
//! Every pod a patch produces is checked against the Kubernetes Pod schema
//! (`kubernetes-validate`, strict) in `Harness::review`, so a case added here
//! is schema-checked without a list to keep up to date.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, ExecAction, GRPCAction, HTTPGetAction, HTTPHeader, Pod, PodSpec,
    Probe, TCPSocketAction, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::{Value, json};
use ward_control_plane::inject::InjectConfig;
use ward_control_plane::webhook::{Webhook, WebhookConfig};
use ward_identity::SpiffeId;
use ward_identity::ca::{self, CertificateAuthority};

struct Harness {
    webhook: Webhook,
    client: tokio_rustls::TlsConnector,
}

/// A webhook on 127.0.0.1:0 with a serving certificate from a Ward CA; the
/// client trusts that CA only, as the API server trusts `caBundle`.
async fn start() -> Harness {
    let ca = CertificateAuthority::generate_root("example.org", Duration::from_secs(3600)).unwrap();
    let id =
        SpiffeId::for_service_account("example.org", "ward-system", "ward-control-plane").unwrap();
    let key = ca::generate_key();
    let issued = ca
        .issue_for_key(
            &id,
            &["ward-control-plane.ward-system.svc".into()],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            &key,
            Duration::from_secs(600),
        )
        .unwrap();
    let mut server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            issued.chain_der,
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let webhook = Webhook::start(WebhookConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        inject: InjectConfig::new("example.org"),
        tls: Arc::new(server),
        limits: Default::default(),
        metrics: Default::default(),
    })
    .await
    .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    let mut client = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    Harness {
        webhook,
        client: tokio_rustls::TlsConnector::from(Arc::new(client)),
    }
}

impl Harness {
    /// POSTs `body` to `path` as the API server would; returns status and body.
    async fn post(&self, method: &str, path: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
        let tcp = tokio::net::TcpStream::connect(self.webhook.addr())
            .await
            .unwrap();
        // The API server verifies the Service DNS name against caBundle.
        let name = ServerName::try_from("ward-control-plane.ward-system.svc").unwrap();
        let tls = self.client.connect(name, tcp).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = http::Request::builder()
            .method(method)
            .uri(format!(
                "https://ward-control-plane.ward-system.svc:15017{path}?timeout=5s"
            ))
            .header("content-type", "application/json")
            .header("host", "ward-control-plane.ward-system.svc:15017")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        (
            status,
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
    }

    /// Sends a pod CREATE review; returns the response and the pod with the
    /// patch applied (the original pod when there is none).
    async fn review(&self, path: &str, uid: &str, namespace: &str, pod: &Pod) -> (Value, Pod) {
        let (status, body) = self
            .post(
                "POST",
                path,
                admission_review(uid, namespace, pod)
                    .to_string()
                    .into_bytes(),
            )
            .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let review: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(review["kind"], "AdmissionReview");
        let response = review["response"].clone();
        assert_eq!(response["uid"], uid, "uid echoed");
        let mut doc = serde_json::to_value(pod).unwrap();
        if let Some(patch) = response.get("patch") {
            assert_eq!(response["patchType"], "JSONPatch");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(patch.as_str().expect("patch is a base64 string"))
                .unwrap();
            let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
            json_patch::patch(&mut doc, &patch).unwrap();
            ward_testkit::kubernetes::assert_valid(
                &format!("the pod patched for {uid}"),
                &[pod_object(uid, &doc)],
            );
        } else {
            assert!(response.get("patchType").is_none());
        }
        (response, serde_json::from_value(doc).unwrap())
    }
}

/// `pod` (a patched pod as JSON) as the object the API server stores:
/// `apiVersion`, `kind` and a name (from `generateName`, as the API server
/// names it), for the schema check.
fn pod_object(uid: &str, pod: &Value) -> String {
    let mut pod = pod.clone();
    pod["apiVersion"] = "v1".into();
    pod["kind"] = "Pod".into();
    if pod["metadata"].get("name").is_none() {
        let prefix = pod["metadata"]["generateName"].as_str().unwrap_or("pod-");
        pod["metadata"]["name"] = format!("{prefix}{uid}").into();
    }
    serde_json::to_string_pretty(&pod).unwrap()
}

/// The envelope the API server sends for a pod CREATE (fields as recorded
/// from a v1 cluster: kind/resource/requestKind/requestResource, userInfo,
/// oldObject null, dryRun, options CreateOptions).
fn admission_review(uid: &str, namespace: &str, pod: &Pod) -> Value {
    let gvk = json!({"group": "", "version": "v1", "kind": "Pod"});
    let gvr = json!({"group": "", "version": "v1", "resource": "pods"});
    json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": uid,
            "kind": gvk,
            "resource": gvr,
            "requestKind": gvk,
            "requestResource": gvr,
            "name": pod.metadata.name.clone().unwrap_or_default(),
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "4d9b2c7e-8f0a-4c1e-9d2b-6a3f5e7c8b1d",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]
            },
            "object": serde_json::to_value(pod).unwrap(),
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    })
}

fn container(name: &str, port: i32) -> Container {
    Container {
        name: name.into(),
        image: Some(format!("registry.example/{name}:1")),
        ports: Some(vec![ContainerPort {
            container_port: port,
            name: Some("http".into()),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/ready".into()),
                port: IntOrString::String("http".into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod(annotations: &[(&str, &str)], labels: &[(&str, &str)]) -> Pod {
    let map = |pairs: &[(&str, &str)]| {
        (!pairs.is_empty()).then(|| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        })
    };
    Pod {
        metadata: ObjectMeta {
            generate_name: Some("cart-7d9f8-".into()),
            annotations: map(annotations),
            labels: map(labels),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![container("cart", 8080)],
            service_account_name: Some("cart".into()),
            ..Default::default()
        }),
        status: None,
    }
}

fn names(containers: &Option<Vec<Container>>) -> Vec<String> {
    containers
        .iter()
        .flatten()
        .map(|c| c.name.clone())
        .collect()
}

fn annotation(pod: &Pod, key: &str) -> Option<String> {
    pod.metadata.annotations.as_ref()?.get(key).cloned()
}

#[tokio::test]
async fn pod_shapes_through_the_webhook() {
    let h = start().await;

    // Namespace-label path, several containers, existing init containers and volumes.
    let mut p = pod(&[], &[("app", "cart")]);
    let spec = p.spec.as_mut().unwrap();
    spec.containers.push(container("cache", 6379));
    spec.init_containers = Some(vec![Container {
        name: "migrate".into(),
        image: Some("registry.example/migrate:1".into()),
        ..Default::default()
    }]);
    spec.volumes = Some(vec![Volume {
        name: "data".into(),
        empty_dir: Some(Default::default()),
        ..Default::default()
    }]);
    let (resp, out) = h
        .review("/inject/namespace-enabled", "uid-1", "shop", &p)
        .await;
    assert_eq!(resp["allowed"], true);
    let spec = out.spec.as_ref().unwrap();
    assert_eq!(
        names(&spec.init_containers),
        ["ward-init", "ward-proxy", "migrate"]
    );
    assert_eq!(names(&Some(spec.containers.clone())), ["cart", "cache"]);
    let volumes: Vec<_> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(
        volumes,
        ["data", "ward-token", "ward-ca-bundle", "ward-podinfo"]
    );
    let proxy = &spec.init_containers.as_ref().unwrap()[1];
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
    let sc = proxy.security_context.as_ref().unwrap();
    assert_eq!(
        (sc.run_as_user, sc.run_as_non_root),
        (Some(1337), Some(true))
    );
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_owned()][..])
    );
    let init = &spec.init_containers.as_ref().unwrap()[0];
    let caps = init
        .security_context
        .as_ref()
        .unwrap()
        .capabilities
        .as_ref()
        .unwrap();
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_ADMIN".to_owned(), "NET_RAW".to_owned()][..])
    );
    assert_eq!(
        init.command.as_deref(),
        Some(&["ward-proxy".to_owned(), "init".to_owned()][..])
    );
    let env: Vec<_> = proxy
        .env
        .iter()
        .flatten()
        .map(|e| e.name.as_str())
        .collect();
    for required in [
        "WARD_CONTROL_PLANE",
        "WARD_CA_BUNDLE",
        "WARD_SA_TOKEN_FILE",
        "WARD_TRUST_DOMAIN",
        "WARD_POD_NAME",
        "WARD_POD_NAMESPACE",
        "WARD_SERVICE_ACCOUNT",
        "WARD_POD_IP",
        "WARD_POD_LABELS_FILE",
        "WARD_LOG_LEVEL",
        "WARD_OPAQUE_PORTS",
        "WARD_APP_PROBES",
    ] {
        assert!(env.contains(&required), "{required} missing from {env:?}");
    }
    // Both app containers' probes go through the proxy.
    for (c, name) in spec.containers.iter().zip(["cart", "cache"]) {
        let get = c
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(
            get.path.as_deref(),
            Some(&*format!("/app-health/{name}/readyz"))
        );
        assert_eq!(get.port, IntOrString::Int(15020));
    }
    assert_eq!(
        annotation(&out, "prometheus.io/port").as_deref(),
        Some("15020")
    );
    let status: Value = serde_json::from_str(&annotation(&out, "ward.io/status").unwrap()).unwrap();
    assert_eq!(status["nativeSidecar"], true);
    // The pod's labels are kept; the mesh label is added (the control
    // plane watches meshed pods by it).
    let mut labels = p.metadata.labels.clone().unwrap();
    labels.insert("security.ward.io/tlsMode".into(), "ward".into());
    assert_eq!(out.metadata.labels, Some(labels));

    // Annotation opt-in on the plain path, no labels, no annotations but ours;
    // classic sidecar forced by annotation.
    let p = pod(
        &[
            ("ward.io/inject", "true"),
            ("ward.io/native-sidecar", "false"),
        ],
        &[],
    );
    let (resp, out) = h.review("/inject", "uid-2", "shop", &p).await;
    assert_eq!(resp["allowed"], true);
    let spec = out.spec.as_ref().unwrap();
    assert_eq!(names(&spec.init_containers), ["ward-init"]);
    assert_eq!(
        names(&Some(spec.containers.clone())),
        ["ward-proxy", "cart"]
    );
    assert!(
        spec.containers[0]
            .lifecycle
            .as_ref()
            .unwrap()
            .post_start
            .is_some()
    );
    // No labels before: the patch creates the map with the mesh label.
    assert_eq!(
        out.metadata.labels,
        Some([("security.ward.io/tlsMode".into(), "ward".into())].into())
    );

    // The richest shape: every knob annotated, and every probe kind (an
    // HTTPS GET with a header, TCP, gRPC, and an exec probe left alone).
    let mut p = pod(
        &[
            ("ward.io/inject", "true"),
            ("ward.io/exclude-inbound-ports", "9100"),
            ("ward.io/exclude-outbound-ports", "5432,6379"),
            ("ward.io/exclude-outbound-cidrs", "10.96.0.0/12, fd00::/8"),
            ("ward.io/opaque-ports", "5432"),
            ("ward.io/inbound-to-loopback", "true"),
            ("ward.io/proxy-cpu", "200m"),
            ("ward.io/proxy-memory", "128Mi"),
            ("ward.io/proxy-cpu-limit", "1"),
            ("ward.io/proxy-memory-limit", "1Gi"),
            ("ward.io/log-level", "debug"),
        ],
        &[("app", "cart")],
    );
    let spec = p.spec.as_mut().unwrap();
    let cart = &mut spec.containers[0];
    cart.ports.as_mut().unwrap().push(ContainerPort {
        container_port: 9090,
        name: Some("grpc".into()),
        protocol: Some("TCP".into()),
        ..Default::default()
    });
    let get = cart
        .readiness_probe
        .as_mut()
        .unwrap()
        .http_get
        .as_mut()
        .unwrap();
    get.scheme = Some("HTTPS".into());
    get.http_headers = Some(vec![HTTPHeader {
        name: "x-probe".into(),
        value: "kubelet".into(),
    }]);
    cart.liveness_probe = Some(Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(8080),
            host: None,
        }),
        period_seconds: Some(5),
        ..Default::default()
    });
    cart.startup_probe = Some(Probe {
        grpc: Some(GRPCAction {
            port: 9090,
            service: Some("shop.Cart".into()),
        }),
        failure_threshold: Some(30),
        ..Default::default()
    });
    let mut worker = container("worker", 7070);
    worker.readiness_probe = Some(Probe {
        exec: Some(ExecAction {
            command: Some(vec!["/bin/check".into()]),
        }),
        ..Default::default()
    });
    spec.containers.push(worker);
    let (resp, out) = h.review("/inject", "uid-rich", "shop", &p).await;
    assert_eq!(resp["allowed"], true, "{resp}");
    let spec = out.spec.as_ref().unwrap();
    for (probe, path) in [
        (
            &spec.containers[0].readiness_probe,
            "/app-health/cart/readyz",
        ),
        (&spec.containers[0].liveness_probe, "/app-health/cart/livez"),
        (
            &spec.containers[0].startup_probe,
            "/app-health/cart/startupz",
        ),
    ] {
        let probe = probe.as_ref().unwrap();
        assert!(
            probe.tcp_socket.is_none() && probe.grpc.is_none(),
            "{probe:?}"
        );
        let get = probe.http_get.as_ref().unwrap();
        assert_eq!(
            (get.path.as_deref(), &get.port, get.scheme.as_deref()),
            (Some(path), &IntOrString::Int(15020), Some("HTTP"))
        );
        assert!(get.http_headers.is_none(), "{get:?}");
    }
    assert_eq!(
        spec.containers[0]
            .startup_probe
            .as_ref()
            .unwrap()
            .failure_threshold,
        Some(30),
        "timings kept"
    );
    assert_eq!(
        spec.containers[1].readiness_probe,
        p.spec.as_ref().unwrap().containers[1].readiness_probe,
        "exec probes run in the app's container, untouched"
    );
    let inits = spec.init_containers.as_ref().unwrap();
    let env = |c: &Container, name: &str| {
        c.env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(
        env(&inits[0], "WARD_EXCLUDE_INBOUND_PORTS").as_deref(),
        Some("9100")
    );
    assert_eq!(
        env(&inits[0], "WARD_EXCLUDE_OUTBOUND_CIDRS").as_deref(),
        Some("10.96.0.0/12,fd00::/8")
    );
    assert_eq!(env(&inits[1], "WARD_OPAQUE_PORTS").as_deref(), Some("5432"));
    assert_eq!(
        env(&inits[1], "WARD_INBOUND_TO_LOOPBACK").as_deref(),
        Some("true")
    );
    assert_eq!(env(&inits[1], "WARD_LOG_LEVEL").as_deref(), Some("debug"));
    let resources = inits[1].resources.as_ref().unwrap();
    let requests = resources.requests.as_ref().unwrap();
    let limits = resources.limits.as_ref().unwrap();
    assert_eq!(
        (
            requests["cpu"].0.as_str(),
            requests["memory"].0.as_str(),
            limits["cpu"].0.as_str(),
            limits["memory"].0.as_str()
        ),
        ("200m", "128Mi", "1", "1Gi")
    );

    // Not selected on the plain path: allowed, no patch.
    let p = pod(&[], &[]);
    let (resp, out) = h.review("/inject", "uid-3", "shop", &p).await;
    assert_eq!(resp["allowed"], true);
    assert_eq!(out, p);

    // Opt-out in an enabled namespace.
    let p = pod(&[("ward.io/inject", "false")], &[]);
    let (resp, out) = h
        .review("/inject/namespace-enabled", "uid-4", "shop", &p)
        .await;
    assert_eq!(resp["allowed"], true);
    assert_eq!(out, p);

    // Host network: never injected; the user who asked is warned.
    let mut p = pod(&[("ward.io/inject", "true")], &[]);
    p.spec.as_mut().unwrap().host_network = Some(true);
    let (resp, out) = h.review("/inject", "uid-5", "shop", &p).await;
    assert_eq!(resp["allowed"], true);
    assert_eq!(out, p);
    assert!(
        resp["warnings"][0]
            .as_str()
            .unwrap()
            .contains("host-network")
    );

    // Already injected: unchanged (re-invocation or a copied manifest).
    let (_, injected) = h
        .review("/inject/namespace-enabled", "uid-6", "shop", &pod(&[], &[]))
        .await;
    let (resp, out) = h
        .review("/inject/namespace-enabled", "uid-7", "shop", &injected)
        .await;
    assert_eq!(resp["allowed"], true);
    assert!(resp.get("patch").is_none());
    assert_eq!(out, injected);

    // ward-system: never.
    let p = pod(&[("ward.io/inject", "true")], &[]);
    let (resp, out) = h
        .review("/inject/namespace-enabled", "uid-8", "ward-system", &p)
        .await;
    assert_eq!(resp["allowed"], true);
    assert_eq!(out, p);

    // A bad annotation is denied with the reason: fail closed.
    let p = pod(
        &[("ward.io/inject", "true"), ("ward.io/proxy-memory", "lots")],
        &[],
    );
    let (resp, out) = h.review("/inject", "uid-9", "shop", &p).await;
    assert_eq!(resp["allowed"], false);
    assert_eq!(resp["status"]["code"], 403);
    let message = resp["status"]["message"].as_str().unwrap();
    assert!(message.contains("ward.io/proxy-memory"), "{message}");
    assert_eq!(out, p);

    // Not a pod CREATE (e.g. an UPDATE): allowed untouched.
    let mut review = admission_review("uid-10", "shop", &pod(&[("ward.io/inject", "true")], &[]));
    review["request"]["operation"] = "UPDATE".into();
    let (status, body) = h
        .post("POST", "/inject", review.to_string().into_bytes())
        .await;
    assert_eq!(status, 200);
    let review: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(review["response"]["uid"], "uid-10");
    assert!(review["response"].get("patch").is_none());

    h.webhook.shutdown().await;
}

#[tokio::test]
async fn malformed_requests_are_400() {
    let h = start().await;
    for body in [
        b"not json".to_vec(),
        b"{}".to_vec(),
        json!({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1beta1", "request": {}})
            .to_string()
            .into_bytes(),
        json!({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1"})
            .to_string()
            .into_bytes(),
    ] {
        let (status, _) = h.post("POST", "/inject", body).await;
        assert_eq!(status, 400);
    }
    // A pod object that is not a pod.
    let mut review = admission_review("uid", "shop", &pod(&[], &[]));
    review["request"]["object"]["spec"] = json!({"containers": "nope"});
    let (status, body) = h
        .post("POST", "/inject", review.to_string().into_bytes())
        .await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert_eq!(h.post("GET", "/inject", vec![]).await.0, 405);
    assert_eq!(h.post("POST", "/elsewhere", vec![]).await.0, 404);
    h.webhook.shutdown().await;
}

/// The schema check `Harness::review` runs on every patched pod can fail:
/// a patched pod with one field broken as a faulty patch could break it (a
/// wrong type, a misspelt field) is refused, naming the field, while the
/// same pod unbroken passes.
#[tokio::test]
async fn the_schema_check_refuses_a_broken_patched_pod() {
    ward_testkit::require_tool!(ward_testkit::kubernetes::TOOL);
    let h = start().await;
    let (_, out) = h
        .review(
            "/inject/namespace-enabled",
            "uid-b1",
            "shop",
            &pod(&[], &[("app", "cart")]),
        )
        .await;
    h.webhook.shutdown().await;
    let patched = serde_json::to_value(&out).unwrap();
    let check = |doc: &Value| ward_testkit::kubernetes::validate_objects(&[pod_object("b1", doc)]);
    assert_eq!(check(&patched), Ok(()));

    let mut wrong_type = patched.clone();
    let proxy = &mut wrong_type["spec"]["initContainers"][1];
    assert_eq!(proxy["name"], "ward-proxy");
    proxy["securityContext"]["runAsUser"] = "1337".into();
    let err = check(&wrong_type).unwrap_err();
    assert!(
        err.contains("ERROR") && err.contains("initContainers.1.securityContext.runAsUser"),
        "{err}"
    );

    let mut misspelt = patched.clone();
    let proxy = misspelt["spec"]["initContainers"][1]
        .as_object_mut()
        .unwrap();
    let policy = proxy.remove("restartPolicy").expect("a native sidecar");
    proxy.insert("restartpolicy".into(), policy);
    let err = check(&misspelt).unwrap_err();
    assert!(
        err.contains("ERROR") && err.contains("restartpolicy"),
        "{err}"
    );
}
