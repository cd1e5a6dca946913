//! The sidecar injector: a mutating admission webhook served over TLS on
//! 15017.
//!
//! - `POST /inject`: pods in namespaces *without* `ward.io/inject=enabled`;
//!   injected only when annotated `ward.io/inject: "true"`.
//! - `POST /inject/namespace-enabled`: pods in namespaces labelled
//!   `ward.io/inject=enabled` (the MutatingWebhookConfiguration's
//!   `namespaceSelector` routes them here, since an AdmissionReview does not
//!   carry namespace labels); injected unless annotated `"false"`.
//!
//! Both take an `admission.k8s.io/v1` `AdmissionReview` and answer one with
//! the request's `uid`, `allowed: true` and a base64 `JSONPatch` (none when
//! the pod is skipped). A pod whose `ward.io/*` annotations are invalid is
//! denied (`allowed: false`, code 403, the reason in `status.message`): the
//! mesh fails closed rather than start a pod with settings it did not ask
//! for. A body that is not an AdmissionReview is answered 400.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::inject::{
    self, ANNOTATION_INJECT, InjectConfig, InjectOutcome, NAMESPACE_ENABLED, NAMESPACE_LABEL,
    SkipReason,
};
use crate::listener;

pub const INJECT_PATH: &str = "/inject";
pub const INJECT_NAMESPACE_ENABLED_PATH: &str = "/inject/namespace-enabled";
/// The API server caps objects at 3 MiB; leave room for the envelope.
const MAX_BODY_BYTES: usize = 8 << 20;

pub struct WebhookConfig {
    /// 0.0.0.0:15017 in a deployment.
    pub listen: SocketAddr,
    pub inject: InjectConfig,
    /// The serving certificate: it must be valid for the Service's DNS name
    /// (`ward-control-plane.ward-system.svc`) under the `caBundle` of the
    /// MutatingWebhookConfiguration.
    pub tls: Arc<rustls::ServerConfig>,
}

/// A running injector. Call `shutdown` to stop it.
pub struct Webhook {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Webhook {
    pub async fn start(config: WebhookConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding the injector webhook on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let acceptor = TlsAcceptor::from(config.tls);
        let inject = Arc::new(config.inject);
        tasks.spawn(listener::accept_loop(
            listener,
            "webhook",
            shutdown_rx,
            move |tcp, peer, shutdown| {
                let (acceptor, inject) = (acceptor.clone(), inject.clone());
                async move {
                    let Some(tls) = listener::handshake(&acceptor, tcp, peer, "webhook").await
                    else {
                        return;
                    };
                    let service = service_fn(move |req| {
                        let inject = inject.clone();
                        async move { Ok::<_, Infallible>(route(&inject, req).await) }
                    });
                    listener::serve_http(tls, service, shutdown, peer, "webhook").await;
                }
            },
        ));
        info!(%addr, "injector webhook serving");
        Ok(Webhook {
            addr,
            shutdown,
            tasks,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Starts the webhook and serves until `shutdown` turns true.
pub async fn serve_webhook(
    config: WebhookConfig,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let webhook = Webhook::start(config).await?;
    let _ = shutdown.wait_for(|stop| *stop).await;
    webhook.shutdown().await;
    Ok(())
}

async fn route(config: &InjectConfig, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let namespace_enabled = match (req.method(), req.uri().path()) {
        (&Method::POST, INJECT_PATH) => false,
        (&Method::POST, INJECT_NAMESPACE_ENABLED_PATH) => true,
        (_, INJECT_PATH | INJECT_NAMESPACE_ENABLED_PATH) => {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "use POST\n".into());
        }
        _ => return reply(StatusCode::NOT_FOUND, "not found\n".into()),
    };
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(err) => {
            return reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body unreadable or over {MAX_BODY_BYTES} bytes: {err}\n"),
            );
        }
    };
    match review(&body, namespace_enabled, config) {
        Ok(answer) => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(answer.to_string())))
            .expect("valid response"),
        Err(message) => {
            warn!(%message, "malformed AdmissionReview");
            reply(StatusCode::BAD_REQUEST, format!("{message}\n"))
        }
    }
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewIn {
    api_version: String,
    kind: String,
    request: Option<RequestIn>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestIn {
    uid: String,
    kind: GroupVersionKind,
    #[serde(default)]
    namespace: Option<String>,
    operation: String,
    #[serde(default)]
    object: Option<Value>,
}

#[derive(Deserialize)]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    kind: String,
}

/// Answers one AdmissionReview (JSON); `Err` when the body is not one.
pub fn review(
    body: &[u8],
    namespace_enabled: bool,
    config: &InjectConfig,
) -> Result<Value, String> {
    let review: ReviewIn =
        serde_json::from_slice(body).map_err(|e| format!("not an AdmissionReview: {e}"))?;
    if review.kind != "AdmissionReview" || review.api_version != "admission.k8s.io/v1" {
        return Err(format!(
            "expected an admission.k8s.io/v1 AdmissionReview, got {} {}",
            review.api_version, review.kind
        ));
    }
    let request = review.request.ok_or("the AdmissionReview has no request")?;
    let allow = |extra: Value| {
        let mut response = json!({"uid": request.uid, "allowed": true});
        if let (Some(r), Value::Object(extra)) = (response.as_object_mut(), extra) {
            r.extend(extra);
        }
        envelope(response)
    };
    if !request.kind.group.is_empty() || request.kind.kind != "Pod" || request.operation != "CREATE"
    {
        return Ok(allow(json!({})));
    }
    let object = request
        .object
        .clone()
        .ok_or("a pod CREATE without an object")?;
    let pod: Pod =
        serde_json::from_value(object).map_err(|e| format!("the object is not a Pod: {e}"))?;
    let namespace = request
        .namespace
        .clone()
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_default();
    let labels = if namespace_enabled {
        BTreeMap::from([(NAMESPACE_LABEL.to_owned(), NAMESPACE_ENABLED.to_owned())])
    } else {
        BTreeMap::new()
    };
    let pod_name = pod
        .metadata
        .name
        .clone()
        .or_else(|| pod.metadata.generate_name.clone())
        .unwrap_or_default();
    match inject::inject_pod(&pod, &namespace, &labels, config) {
        Ok(InjectOutcome::Patch(patch)) => {
            info!(namespace, pod = pod_name, "injecting the ward sidecar");
            let patch = serde_json::to_vec(&patch).expect("patch serializes");
            Ok(allow(json!({
                "patchType": "JSONPatch",
                "patch": base64::engine::general_purpose::STANDARD.encode(patch),
            })))
        }
        Ok(InjectOutcome::Skipped(reason)) => {
            let asked = pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_INJECT))
                .is_some_and(|v| v == "true");
            let warn_user = asked
                && matches!(
                    reason,
                    SkipReason::HostNetwork | SkipReason::SystemNamespace
                );
            Ok(allow(if warn_user {
                json!({"warnings": [format!("ward: sidecar not injected: {reason}")]})
            } else {
                json!({})
            }))
        }
        Err(err) => {
            warn!(namespace, pod = pod_name, %err, "denying a pod ward cannot mesh");
            Ok(envelope(json!({
                "uid": request.uid,
                "allowed": false,
                "status": {
                    "status": "Failure",
                    "code": 403,
                    "reason": "Forbidden",
                    "message": format!("ward sidecar injection: {err}"),
                },
            })))
        }
    }
}

fn envelope(response: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    })
}
