//! The control plane process: the HTTPS API on 15012 (HTTP/2 and HTTP/1.1
//! over TLS 1.3), optionally the injector webhook on 15017 (same serving
//! certificate), and a plaintext admin listener for `/metrics`, `/ready`
//! and `/live`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};
use ward_identity::SpiffeId;
use ward_identity::ca::{CertificateAuthority, DEFAULT_SVID_TTL};

use crate::api::{self, BundleResponse, ErrorBody, SvidRequest, SvidResponse};
use crate::attest::{
    Attestor, DEFAULT_AUDIENCE, JoinTokenStore, K8sTokenConfig, PodDirectory,
    ServiceAccountTokenValidator, ServiceAccountVerifier, TokenReviewer,
};
use crate::data_dir::DataDir;
use crate::inject::InjectConfig;
use crate::k8s::ApiClient;
use crate::k8s::kube_sources::KubernetesSource;
use crate::listener;
use crate::metrics::Metrics;
use crate::policy_store::{DirSource, PolicySource, PolicyStore};
use crate::serving::ServingIdentity;
use crate::watch::{EndpointEntry, Endpoints, WatchContext, WatchRequest};
use crate::webhook::{Webhook, WebhookConfig};

/// Response bodies: whole JSON documents, or the watch stream.
type ApiBody = BoxBody<Bytes, Infallible>;

/// Streams proxies keep open to the control plane.
pub const WATCH_PATH: &str = "/v1/watch";

/// How a control plane is set up. `ward-control-plane` fills it from flags.
#[derive(Debug, Clone)]
pub struct Config {
    pub trust_domain: String,
    pub data_dir: PathBuf,
    /// API listener (TLS). Port 15012 in a deployment.
    pub listen: SocketAddr,
    /// Plaintext `/metrics`, `/ready`, `/live`; none when `None`.
    pub admin_listen: Option<SocketAddr>,
    /// Lifetime of the SVIDs issued to workloads.
    pub svid_ttl: Duration,
    /// Kubernetes service-account token attestation, when configured.
    pub k8s: Option<K8sTokenConfig>,
    /// DNS names the serving certificate carries besides `localhost`.
    pub serving_dns_names: Vec<String>,
    /// Directory of AuthorizationPolicy / PeerAuthentication YAML files,
    /// watched for changes. `None`: no policies.
    pub policy_dir: Option<PathBuf>,
    /// Policies in this namespace apply mesh-wide.
    pub root_namespace: String,
    /// Endpoints known without registration (workloads outside the mesh's
    /// network, or with several addresses).
    pub static_endpoints: Vec<EndpointEntry>,
    /// The sidecar injector webhook (TLS with the serving certificate, so
    /// valid for [`Config::serving_dns_names`] under the CA bundle). `None`:
    /// not served. Port 15017 in a deployment.
    pub webhook_listen: Option<SocketAddr>,
    /// What the webhook injects. Its trust domain is replaced by the CA's.
    pub inject: InjectConfig,
    /// The Kubernetes API, when running against a cluster.
    pub kube: Option<ApiClient>,
    /// Policies from the `security.ward.io` custom resources and endpoints
    /// from meshed Pods, watched through [`Config::kube`] (instead of
    /// [`Config::policy_dir`]).
    pub kubernetes_sources: bool,
    /// Validate service-account tokens with the TokenReview API through
    /// [`Config::kube`] (instead of a JWKS in [`Config::k8s`]).
    pub token_review: bool,
    /// The audience TokenReview asks the API server to confirm
    /// ([`DEFAULT_AUDIENCE`] unless configured).
    pub token_review_audience: String,
}

impl Config {
    pub fn new(trust_domain: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        let trust_domain = trust_domain.into();
        Config {
            inject: InjectConfig::new(trust_domain.clone()),
            webhook_listen: None,
            trust_domain,
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 15012)),
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 15014))),
            svid_ttl: DEFAULT_SVID_TTL,
            k8s: None,
            serving_dns_names: vec![
                "ward-control-plane.ward-system.svc".into(),
                "ward-control-plane.ward-system.svc.cluster.local".into(),
            ],
            policy_dir: None,
            root_namespace: "ward-system".into(),
            static_endpoints: Vec::new(),
            kube: None,
            kubernetes_sources: false,
            token_review: false,
            token_review_audience: DEFAULT_AUDIENCE.to_owned(),
        }
    }
}

struct State {
    ca: Arc<CertificateAuthority>,
    attestor: Attestor,
    metrics: Arc<Metrics>,
    svid_ttl: Duration,
    policies: Arc<PolicyStore>,
    endpoints: Arc<Endpoints>,
    eval_options: ward_policy::EvalOptions,
    shutdown: watch::Receiver<bool>,
}

/// A running control plane. Dropping it does not stop it: call `shutdown`.
pub struct ControlPlane {
    api_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    webhook: Option<Webhook>,
    trust_domain: String,
    bundle_pem: String,
    serving_id: SpiffeId,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl ControlPlane {
    /// Opens the data directory (creating the CA on first start), binds the
    /// listeners and starts serving.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        anyhow::ensure!(
            config.kube.is_some() || !(config.kubernetes_sources || config.token_review),
            "the Kubernetes sources and TokenReview need a Kubernetes API client"
        );
        let data = DataDir::open(&config.data_dir)?;
        let ca = data.load_or_init_ca(&config.trust_domain)?;
        let join_tokens = JoinTokenStore::open(&data.join_tokens_dir())?;
        let k8s = service_account_verifier(&config, ca.trust_domain())?;
        // The meshed pods, as the Kubernetes source's reflector sees them:
        // read by attestation, written by the pod watcher.
        let (pods, pod_writer) = match config.kubernetes_sources {
            true => {
                let (reader, writer) = kube::runtime::reflector::store();
                (Some(PodDirectory(reader)), Some(writer))
            }
            false => (None, None),
        };
        let attestor = Attestor {
            join_tokens: Some(join_tokens),
            k8s,
            pods,
        };
        let metrics = Arc::new(Metrics::new());
        metrics
            .ca_expiry
            .set(ca.not_after().unix_timestamp() as f64);
        let policies = Arc::new(PolicyStore::new(
            metrics.clone(),
            !config.kubernetes_sources,
        ));
        let dir_source = config
            .policy_dir
            .clone()
            .map(|dir| DirSource::open(dir, &policies))
            .transpose()?;
        let eval_options = ward_policy::EvalOptions {
            root_namespace: config.root_namespace.clone(),
            trust_domain: ca.trust_domain().to_owned(),
        };

        let serving = ServingIdentity::new(&ca, &config.serving_dns_names)?;
        let serving_id = serving.spiffe_id().clone();
        let acceptor = TlsAcceptor::from(serving.server_config());
        let trust_domain = ca.trust_domain().to_owned();
        let bundle_pem = ca.bundle_pem();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let state = Arc::new(State {
            ca: Arc::new(ca),
            attestor,
            metrics: metrics.clone(),
            svid_ttl: config.svid_ttl,
            policies: policies.clone(),
            endpoints: Arc::new(Endpoints::new(config.static_endpoints.clone())),
            eval_options,
            shutdown: shutdown_rx.clone(),
        });

        let mut tasks = JoinSet::new();
        if let Some(source) = dir_source {
            tasks.spawn(source.run(policies.clone(), shutdown_rx.clone()));
        }
        if let (Some(pods), Some(ApiClient(client))) = (pod_writer, config.kube.clone()) {
            let source = KubernetesSource {
                client,
                pods,
                trust_domain: trust_domain.clone(),
                endpoints: state.endpoints.clone(),
                metrics: metrics.clone(),
            };
            tasks.spawn(source.run(policies.clone(), shutdown_rx.clone()));
        }
        let api = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding the API listener on {}", config.listen))?;
        let api_addr = api.local_addr()?;
        let api_state = state.clone();
        tasks.spawn(listener::accept_loop(
            api,
            "api",
            shutdown_rx.clone(),
            move |tcp, peer, shutdown| {
                serve_api_connection(tcp, peer, acceptor.clone(), api_state.clone(), shutdown)
            },
        ));
        let webhook = match config.webhook_listen {
            Some(listen) => {
                let mut inject = config.inject.clone();
                inject.trust_domain = trust_domain.clone();
                Some(
                    Webhook::start(WebhookConfig {
                        listen,
                        inject,
                        // Shares the certificate cell: renewals apply to both.
                        tls: serving.server_config(),
                    })
                    .await?,
                )
            }
            None => None,
        };
        let webhook_addr = webhook.as_ref().map(Webhook::addr);
        tasks.spawn(serving.renew_forever(state.ca.clone(), shutdown_rx.clone()));

        let admin_addr = match config.admin_listen {
            Some(addr) => {
                let admin = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the admin listener on {addr}"))?;
                let local = admin.local_addr()?;
                let state = state.clone();
                tasks.spawn(listener::accept_loop(
                    admin,
                    "admin",
                    shutdown_rx,
                    move |tcp, peer, shutdown| {
                        let state = state.clone();
                        let service = service_fn(move |req: Request<Incoming>| {
                            let state = state.clone();
                            async move { Ok::<_, Infallible>(admin_route(&state, &req)) }
                        });
                        listener::serve_http(tcp, service, shutdown, peer, "admin")
                    },
                ));
                Some(local)
            }
            None => None,
        };
        info!(%api_addr, ?admin_addr, ?webhook_addr, trust_domain, "control plane serving");
        Ok(ControlPlane {
            api_addr,
            admin_addr,
            webhook,
            trust_domain,
            bundle_pem,
            serving_id,
            shutdown,
            tasks,
        })
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Where the injector webhook listens, when enabled.
    pub fn webhook_addr(&self) -> Option<SocketAddr> {
        self.webhook.as_ref().map(Webhook::addr)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The roots workloads must trust (PEM).
    pub fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// The SPIFFE ID in the control plane's serving certificate.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.serving_id
    }

    /// Stops accepting, lets in-flight requests finish, and returns.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(webhook) = self.webhook.take() {
            webhook.shutdown().await;
        }
        while self.tasks.join_next().await.is_some() {}
    }
}

/// How service-account tokens are checked: a JWKS, TokenReview, or not at
/// all. Both at once would be ambiguous (which one's answer counts?), so it
/// is a configuration error.
fn service_account_verifier(
    config: &Config,
    trust_domain: &str,
) -> anyhow::Result<Option<ServiceAccountVerifier>> {
    match (&config.k8s, config.token_review, &config.kube) {
        (Some(_), true, _) => anyhow::bail!(
            "service-account tokens are checked either with a JWKS or with TokenReview, not both"
        ),
        (Some(jwks), false, _) => Ok(Some(
            ServiceAccountTokenValidator::new(jwks.clone())?.into(),
        )),
        (None, true, Some(kube)) => Ok(Some(
            TokenReviewer::new(
                kube.0.clone(),
                config.token_review_audience.clone(),
                trust_domain,
            )?
            .into(),
        )),
        (None, true, None) => anyhow::bail!("TokenReview needs a Kubernetes API client"),
        (None, false, _) => Ok(None),
    }
}

/// One API connection: TLS (the client's SVID, when it presents one, is
/// its identity for renewals and the watch stream), then HTTP.
async fn serve_api_connection(
    tcp: TcpStream,
    peer_addr: SocketAddr,
    acceptor: TlsAcceptor,
    state: Arc<State>,
    shutdown: watch::Receiver<bool>,
) {
    let Some(tls) = listener::handshake(&acceptor, tcp, peer_addr, "api").await else {
        return;
    };
    let peer_id = ward_identity::tls::peer_spiffe_id(tls.get_ref().1);
    let service = service_fn(move |req| {
        let state = state.clone();
        let peer_id = peer_id.clone();
        async move { Ok::<_, Infallible>(route(&state, peer_id.as_ref(), peer_addr, req).await) }
    });
    listener::serve_http(tls, service, shutdown, peer_addr, "api").await;
}

async fn route(
    state: &Arc<State>,
    peer_id: Option<&SpiffeId>,
    peer_addr: SocketAddr,
    req: Request<Incoming>,
) -> Response<ApiBody> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, api::SVID_PATH) => issue_svid(state, peer_id, req).await,
        (&Method::POST, WATCH_PATH) => watch_stream(state, peer_id, peer_addr, req).await,
        (&Method::GET, api::BUNDLE_PATH) => json(
            StatusCode::OK,
            &BundleResponse {
                trust_domain: state.ca.trust_domain().to_owned(),
                bundle_pem: state.ca.bundle_pem(),
            },
        ),
        (_, api::SVID_PATH | api::BUNDLE_PATH | WATCH_PATH) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this path does not accept that method".into(),
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such API path".into(),
        ),
    }
}

/// `POST /v1/watch`: the caller's policies and the endpoint table, now and
/// on every change. Only for callers with a valid SVID.
async fn watch_stream(
    state: &Arc<State>,
    peer_id: Option<&SpiffeId>,
    peer_addr: SocketAddr,
    req: Request<Incoming>,
) -> Response<ApiBody> {
    let Some(id) = peer_id else {
        return error(
            StatusCode::UNAUTHORIZED,
            "no_client_certificate",
            "the watch stream needs the workload's SVID as client certificate".into(),
        );
    };
    let Some(namespace) = id.namespace() else {
        return error(
            StatusCode::FORBIDDEN,
            "no_namespace",
            format!("{id} is not of the form spiffe://<td>/ns/<ns>/sa/<sa>"),
        );
    };
    let body = match Limited::new(req.into_body(), api::MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(err) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_unreadable",
                err.to_string(),
            );
        }
    };
    let request: WatchRequest = if body.is_empty() {
        WatchRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(err) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "malformed_request",
                    format!("malformed request: {err}"),
                );
            }
        }
    };
    let registration = request
        .register
        .then(|| state.endpoints.register(peer_addr.ip(), id.clone()));
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let ctx = WatchContext {
        id: id.clone(),
        namespace: namespace.to_owned(),
        labels: request.labels,
        options: state.eval_options.clone(),
        policies: state.policies.subscribe(),
        synced: state.policies.subscribe_synced(),
        endpoints: state.endpoints.clone(),
        registration,
        metrics: state.metrics.clone(),
        shutdown: state.shutdown.clone(),
    };
    tokio::spawn(crate::watch::run_stream(ctx, tx));
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        // Each line the stream task sends is one data frame, sent as it comes.
        .body(
            StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
                let line = rx.recv().await?;
                Some((Ok(Frame::data(line)), rx))
            }))
            .boxed(),
        )
        .expect("valid response")
}

/// `POST /v1/svid`: check the request, attest the caller, then sign. Nothing
/// is signed unless every step succeeded.
async fn issue_svid(
    state: &State,
    peer_id: Option<&SpiffeId>,
    req: Request<Incoming>,
) -> Response<ApiBody> {
    let refuse = |status, reason: &'static str, message: String| {
        state
            .metrics
            .certificate_refusals
            .with_label_values(&[reason])
            .inc();
        warn!(reason, %message, "certificate request refused");
        error(status, reason, message)
    };
    let body = match Limited::new(req.into_body(), api::MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(err) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_unreadable",
                format!(
                    "request body unreadable or over {} bytes: {err}",
                    api::MAX_BODY_BYTES
                ),
            );
        }
    };
    let request: SvidRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(err) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "malformed_request",
                format!("malformed request: {err}"),
            );
        }
    };
    let requested = match SpiffeId::parse(&request.spiffe_id) {
        Ok(id) => id,
        Err(err) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_spiffe_id",
                format!("spiffe_id {:?}: {err}", request.spiffe_id),
            );
        }
    };
    // Validate the CSR before attesting, so a bad CSR never burns a join token.
    if let Err(err) = state.ca.check_csr(&request.csr, &requested) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "bad_csr",
            format!("CSR refused: {err}"),
        );
    }
    let attested = match &request.credential {
        Some(credential) => match state
            .attestor
            .attest_pod(
                credential,
                &requested,
                request.pod.as_deref(),
                SystemTime::now(),
            )
            .await
        {
            Ok(id) => id,
            Err(err) => {
                state
                    .metrics
                    .attestation_failures
                    .with_label_values(&[err.method(), err.reason()])
                    .inc();
                return refuse(
                    StatusCode::FORBIDDEN,
                    "attestation_failed",
                    format!("attestation failed: {err}"),
                );
            }
        },
        // Renewal: the caller proves its identity with its current SVID.
        None => match peer_id {
            Some(current) if *current == requested => requested,
            Some(current) => {
                return refuse(
                    StatusCode::FORBIDDEN,
                    "renewal_id_mismatch",
                    format!("client certificate is for {current}, not {requested}"),
                );
            }
            None => {
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    "no_credential",
                    "no credential and no client certificate: send a join token, a service-account token, or renew over mTLS".into(),
                );
            }
        },
    };
    match state.ca.sign_csr(&request.csr, &attested, state.svid_ttl) {
        Ok(svid) => {
            state.metrics.certificates_issued.inc();
            let not_after = ward_identity::rfc3339(svid.not_after);
            info!(spiffe_id = %attested, serial = %svid.serial_hex, %not_after, "issued X.509-SVID");
            json(
                StatusCode::OK,
                &SvidResponse {
                    spiffe_id: attested.to_string(),
                    chain_pem: svid.chain_pem,
                    trust_domain: state.ca.trust_domain().to_owned(),
                    bundle_pem: state.ca.bundle_pem(),
                    not_after,
                },
            )
        }
        Err(err) => refuse(
            StatusCode::BAD_REQUEST,
            "signing_refused",
            format!("signing refused: {err}"),
        ),
    }
}

fn admin_route(state: &State, req: &Request<Incoming>) -> Response<ApiBody> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => Response::builder()
            .header(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )
            .body(Full::new(Bytes::from(state.metrics.render())).boxed())
            .expect("valid response"),
        (&Method::GET, "/live") => text(StatusCode::OK, "ok\n"),
        // Not ready (no traffic from the Service) until the policy and
        // endpoint sources have synced.
        (&Method::GET, "/ready") if !state.policies.is_synced() => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the Kubernetes sources have not synced yet\n",
        ),
        (&Method::GET, "/ready") => text(StatusCode::OK, "ok\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Response<ApiBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body).expect("serializable"))).boxed())
        .expect("valid response")
}

fn error(status: StatusCode, code: &str, message: String) -> Response<ApiBody> {
    json(
        status,
        &ErrorBody {
            error: code.to_owned(),
            message,
        },
    )
}

fn text(status: StatusCode, body: &'static str) -> Response<ApiBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from_static(body.as_bytes())).boxed())
        .expect("valid response")
}
