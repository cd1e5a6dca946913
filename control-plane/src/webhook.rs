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
//!
//! Memory stays bounded however many clients send however large bodies:
//! at most [`MAX_STREAMS`] requests per connection, [`MAX_CONNECTIONS`]
//! connections, small HTTP/2 windows, every body counted against a shared
//! [`BODY_BUDGET`] *while* it streams in, and at most [`MAX_REVIEWS`]
//! bodies parsed at once. A body that finds the budget spent is answered
//! 503 at once rather than waiting (waiting bodies would hold what they
//! have and starve the rest); its first [`SMALL_BODY`] bytes may use a
//! [`RESERVE`] the rest may not, so ordinary pods (a few KiB) are admitted
//! while large bodies crowd the budget. A body not received within
//! [`BODY_TIMEOUT`] is answered 503 too.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::inject::{
    self, ANNOTATION_INJECT, InjectConfig, InjectOutcome, NAMESPACE_ENABLED, NAMESPACE_LABEL,
    SkipReason,
};
use crate::listener::{self, Limits, ListenerMetrics, Settings};

pub const INJECT_PATH: &str = "/inject";
pub const INJECT_NAMESPACE_ENABLED_PATH: &str = "/inject/namespace-enabled";
/// The API server caps objects at 3 MiB; leave room for the envelope.
const MAX_BODY_BYTES: usize = 8 << 20;
/// Body bytes held by all requests at once (counted in KiB permits).
pub const BODY_BUDGET: usize = 64 << 20;
/// Part of the budget only the first [`SMALL_BODY`] bytes of a body may use.
pub const RESERVE: usize = 4 << 20;
pub const SMALL_BODY: usize = 256 << 10;
/// The API server gives a webhook 10 s by default: a body slower than that
/// is answered for nobody.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Concurrent HTTP/2 streams per connection (bodies are large).
pub const MAX_STREAMS: u32 = 4;
/// Connections at most (API servers are few; fewer if `WARD_MAX_CONNECTIONS` says so).
pub const MAX_CONNECTIONS: usize = 512;
/// AdmissionReviews parsed at once (a parsed pod is several times its JSON).
pub const MAX_REVIEWS: usize = 2;

pub struct WebhookConfig {
    /// 0.0.0.0:15017 in a deployment.
    pub listen: SocketAddr,
    pub inject: InjectConfig,
    /// The serving certificate: it must be valid for the Service's DNS name
    /// (`ward-control-plane.ward-system.svc`) under the `caBundle` of the
    /// MutatingWebhookConfiguration.
    pub tls: Arc<rustls::ServerConfig>,
    pub limits: Limits,
    pub metrics: Arc<ListenerMetrics>,
}

/// What every request shares: the injection settings and the memory bounds.
struct Shared {
    inject: InjectConfig,
    budget: Arc<Semaphore>,
    reviews: Semaphore,
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
        let shared = Arc::new(Shared {
            inject: config.inject,
            budget: Arc::new(Semaphore::new(BODY_BUDGET / 1024)),
            reviews: Semaphore::new(MAX_REVIEWS),
        });
        let mut limits = config.limits;
        limits.max_connections = limits.max_connections.min(MAX_CONNECTIONS);
        let settings = Settings {
            what: "webhook",
            limits,
            max_streams: MAX_STREAMS,
            stream_window: 64 * 1024,
            connection_window: 128 * 1024,
            metrics: config.metrics,
        };
        tasks.spawn(listener::accept_loop(
            listener,
            settings,
            shutdown_rx,
            move |tcp, conn| {
                let (acceptor, shared) = (acceptor.clone(), shared.clone());
                async move {
                    let Some(tls) = conn.handshake(&acceptor, tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(route(&shared, req).await) }
                    });
                    conn.serve_http(tls, service).await;
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

async fn route(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let namespace_enabled = match (req.method(), req.uri().path()) {
        (&Method::POST, INJECT_PATH) => false,
        (&Method::POST, INJECT_NAMESPACE_ENABLED_PATH) => true,
        (_, INJECT_PATH | INJECT_NAMESPACE_ENABLED_PATH) => {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "use POST\n".into());
        }
        _ => return reply(StatusCode::NOT_FOUND, "not found\n".into()),
    };
    let read = read_body(req.into_body(), &shared.budget);
    let (body, _held) = match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(read)) => read,
        Ok(Err(BodyError::TooLarge)) => {
            return reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body over {MAX_BODY_BYTES} bytes\n"),
            );
        }
        Ok(Err(BodyError::Busy)) => {
            warn!("answering 503: AdmissionReview bodies hold the whole memory budget");
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many large AdmissionReviews in flight; retry\n".into(),
            );
        }
        Ok(Err(BodyError::Read(err))) => {
            return reply(StatusCode::BAD_REQUEST, format!("body unreadable: {err}\n"));
        }
        Err(_) => {
            warn!("an AdmissionReview body was not received within {BODY_TIMEOUT:?}");
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("body not received within {BODY_TIMEOUT:?}\n"),
            );
        }
    };
    let _parsing = shared.reviews.acquire().await.expect("never closed");
    match review(&body, namespace_enabled, &shared.inject) {
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

enum BodyError {
    TooLarge,
    Busy,
    Read(hyper::Error),
}

/// Reads a body up to [`MAX_BODY_BYTES`], taking budget for each frame as
/// it arrives (`Busy` when there is none left for it): the budget is held
/// until the returned permit is dropped.
async fn read_body(
    mut body: Incoming,
    budget: &Arc<Semaphore>,
) -> Result<(Bytes, Option<tokio::sync::OwnedSemaphorePermit>), BodyError> {
    let mut held: Option<tokio::sync::OwnedSemaphorePermit> = None;
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(BodyError::Read)?.into_data() else {
            continue;
        };
        if buf.len() + data.len() > MAX_BODY_BYTES {
            return Err(BodyError::TooLarge);
        }
        // KiB permits for what the buffer will hold after this frame.
        let need = (buf.len() + data.len()).div_ceil(1024);
        let have = held.as_ref().map_or(0, |p| p.num_permits());
        if need > have {
            let more = need - have;
            let reserve = match buf.len() + data.len() > SMALL_BODY {
                true => RESERVE / 1024,
                false => 0,
            };
            if budget.available_permits() < more + reserve {
                return Err(BodyError::Busy);
            }
            let more = budget
                .clone()
                .try_acquire_many_owned(more as u32)
                .map_err(|_| BodyError::Busy)?;
            match held.as_mut() {
                Some(permit) => permit.merge(more),
                None => held = Some(more),
            }
        }
        buf.extend_from_slice(&data);
    }
    Ok((buf.freeze(), held))
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
