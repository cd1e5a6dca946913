//! The control plane process: the HTTPS API on 15012 (HTTP/2 and HTTP/1.1
//! over TLS 1.3), optionally the injector webhook on 15017 (same serving
//! certificate), and a plaintext admin listener for `/metrics`, `/ready`
//! and `/live`.

use std::collections::BTreeMap;
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
use ward_identity::ca::DEFAULT_SVID_TTL;

use crate::attest::{
    Attestor, DEFAULT_AUDIENCE, JoinTokenStore, K8sTokenConfig, PodDirectory,
    ServiceAccountTokenValidator, ServiceAccountVerifier, TokenReviewer,
};
use crate::data_dir::DataDir;
use crate::discovery::{EndpointEntry, Endpoints, LineReader, Sidecars, StreamContext};
use crate::inject::InjectConfig;
use crate::k8s::ApiClient;
use crate::k8s::kube_sources::{self, KubernetesSource};
use crate::k8s::leader::{Elector, Leadership, LeaseConfig};
use crate::listener::{self, Conn, Limits, Settings};
use crate::metrics::Metrics;
use crate::policy_store::{DirSource, PolicySource, PolicyStore};
use crate::quarantine::{
    Issued, IssuedCertificates, QuarantineDir, QuarantineSource, QuarantineState, Resolver, Subject,
};
use crate::serving::ServingIdentity;
use crate::trust_bundles::{self, BundleSet};
use crate::webhook::{Webhook, WebhookConfig};
use ward_api::discovery::{self as wire, ClientMessage, Registered, Registration};
use ward_api::error::{ErrorBody, codes};
use ward_api::svid::{BundleResponse, SvidRequest, SvidResponse};
use ward_api::{BUNDLE_PATH, DISCOVERY_PATH, MAX_BODY_BYTES, REGISTER_PATH, SVID_PATH};

/// Response bodies: whole JSON documents, or the watch stream.
type ApiBody = BoxBody<Bytes, Infallible>;

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
    /// Directory of AuthorizationPolicy / PeerAuthentication YAML files
    /// (and Kubernetes Service / EndpointSlice documents), watched for
    /// changes. `None`: no policies.
    pub policy_dir: Option<PathBuf>,
    /// Policies in this namespace apply mesh-wide.
    pub root_namespace: String,
    /// Directory of `<trust domain>.pem` files: roots distributed beside
    /// the CA's own (a root being introduced or retired, federated trust
    /// domains), watched for changes. `None`: the CA's root alone.
    pub trust_bundle_dir: Option<PathBuf>,
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
    /// With [`Config::kubernetes_sources`]: the Lease that elects the one
    /// replica writing policy statuses. `None`: this control plane writes
    /// them unconditionally (one control plane per cluster only;
    /// `ward-control-plane --kubernetes` always elects).
    pub leader_election: Option<LeaseConfig>,
    /// The audience TokenReview asks the API server to confirm
    /// ([`DEFAULT_AUDIENCE`] unless configured).
    pub token_review_audience: String,
    /// Connection caps and timeouts of every listener.
    pub limits: Limits,
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
            trust_bundle_dir: None,
            static_endpoints: Vec::new(),
            kube: None,
            kubernetes_sources: false,
            token_review: false,
            leader_election: None,
            token_review_audience: DEFAULT_AUDIENCE.to_owned(),
            limits: Limits::default(),
        }
    }
}

struct State {
    /// The CA that signs (a CA rotation swaps it).
    ca: crate::rotation::Signer,
    rotation: Arc<crate::rotation::Rotation>,
    attestor: Attestor,
    attest_failures: crate::attest::limiter::FailureLimiter,
    metrics: Arc<Metrics>,
    svid_ttl: Duration,
    policies: Arc<PolicyStore>,
    endpoints: Arc<Endpoints>,
    sidecars: Arc<Sidecars>,
    /// The trust bundles distributed (the CA's root and `--trust-bundle-dir`).
    bundles: watch::Receiver<Arc<BundleSet>>,
    /// Keeps `bundles` open for the control plane's life (the directory
    /// watcher, when there is one, publishes through it).
    _bundles_tx: Arc<watch::Sender<Arc<BundleSet>>>,
    /// What is quarantined (`<data-dir>/quarantine/`): refused here, and
    /// pushed to every sidecar.
    quarantine: watch::Receiver<Arc<QuarantineState>>,
    /// Certificates issued, so a pod's quarantine finds its certificates.
    issued: Arc<IssuedCertificates>,
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
    policies: Arc<PolicyStore>,
    endpoints: Arc<Endpoints>,
    sidecars: Arc<Sidecars>,
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
        if let Some(lease) = &config.leader_election {
            anyhow::ensure!(
                config.kubernetes_sources,
                "leader election elects the writer of the Kubernetes policy statuses: it needs the Kubernetes sources"
            );
            lease.validate()?;
        }
        let data = DataDir::open(&config.data_dir)?;
        // The CA, and a CA rotation in progress (resumed where it was).
        let loaded = crate::rotation::load(&data, &config.trust_domain)?;
        let ca = loaded.signer();
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
        let endpoints = Arc::new(Endpoints::new(&config.static_endpoints)?);
        let dir_source = config
            .policy_dir
            .clone()
            .map(|dir| DirSource::open(dir, &policies, endpoints.clone()))
            .transpose()?;
        let eval_options = ward_policy::EvalOptions {
            root_namespace: config.root_namespace.clone(),
            trust_domain: ca.trust_domain().to_owned(),
        };

        let trust_domain = ca.trust_domain().to_owned();
        let bundle_pem = ca.bundle_pem();
        let dir_roots = config
            .trust_bundle_dir
            .as_deref()
            .map(trust_bundles::read_dir)
            .transpose()
            .context("loading the trust bundles")?;
        let (own_roots_tx, own_roots) = watch::channel(Arc::new(loaded.own_roots()));
        let bundle_set = trust_bundles::compose(
            &trust_domain,
            &own_roots.borrow(),
            &dir_roots.clone().unwrap_or_default(),
        )
        .context("loading the trust bundles")?;
        let serving_ca = loaded.serving_signer();
        let serving =
            ServingIdentity::new(&serving_ca, &bundle_set.own_pem, &config.serving_dns_names)?;
        let serving_id = serving.spiffe_id().clone();
        let acceptor = TlsAcceptor::from(serving.server_config());
        // Held by the state, so every stream's receiver lives as long as
        // the control plane (with no directory nothing ever sends).
        let (bundles_tx, bundles) = watch::channel(Arc::new(bundle_set));
        let bundles_tx = Arc::new(bundles_tx);
        let sidecars = Arc::new(Sidecars::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let issued = Arc::new(
            IssuedCertificates::open(data.path()).context("the record of issued certificates")?,
        );
        // Read before anything is served: no certificate, stream or
        // connection ever starts without the quarantines in force.
        let (quarantine_tx, quarantine) = watch::channel(Arc::new(QuarantineState::default()));
        let mut quarantine_source = QuarantineSource::new(
            QuarantineDir::open(data.path())?,
            data.path(),
            Resolver {
                issued: issued.clone(),
                sidecars: sidecars.clone(),
                pods: attestor.pods.clone(),
            },
            Arc::new(quarantine_tx),
            metrics.clone(),
        );
        // In Kubernetes the Quarantine objects too: until they are listed
        // the quarantines are unknown, and what is checked against them
        // is refused (503, retried by the sidecars).
        let quarantine_watch = match (config.kubernetes_sources, &config.kube) {
            (true, Some(ApiClient(client))) => {
                let (objects_tx, objects) = watch::channel(None);
                quarantine_source = quarantine_source.with_objects(objects);
                Some(crate::k8s::quarantines::watch_quarantines(
                    client.clone(),
                    objects_tx,
                    metrics.clone(),
                    shutdown_rx.clone(),
                ))
            }
            _ => None,
        };
        quarantine_source.poll();
        let signer: crate::rotation::Signer = Arc::new(arc_swap::ArcSwap::new(ca));
        let serving_signer: crate::rotation::Signer = Arc::new(arc_swap::ArcSwap::new(serving_ca));
        let reissue = Arc::new(tokio::sync::Notify::new());
        let rotation = crate::rotation::Rotation::new(
            loaded,
            crate::rotation::Wiring {
                trust_domain: trust_domain.clone(),
                data,
                signer: signer.clone(),
                own_roots: own_roots_tx,
                bundles: bundles.clone(),
                sidecars: sidecars.clone(),
                issued: issued.clone(),
                metrics: metrics.clone(),
                serving_signer: serving_signer.clone(),
                reissue: reissue.clone(),
                kubernetes: config.kubernetes_sources,
            },
        );
        let state = Arc::new(State {
            ca: signer.clone(),
            rotation: rotation.clone(),
            attestor,
            attest_failures: Default::default(),
            metrics: metrics.clone(),
            svid_ttl: config.svid_ttl,
            policies: policies.clone(),
            endpoints: endpoints.clone(),
            sidecars: sidecars.clone(),
            bundles,
            _bundles_tx: bundles_tx.clone(),
            quarantine,
            issued,
            eval_options,
            shutdown: shutdown_rx.clone(),
        });

        let mut tasks = JoinSet::new();
        tasks.spawn(quarantine_source.run(shutdown_rx.clone()));
        if let Some(watch) = quarantine_watch {
            tasks.spawn(watch);
        }
        // The bundles follow the directory and the CA rotation's roots.
        tasks.spawn(trust_bundles::run(
            trust_domain.clone(),
            own_roots,
            config.trust_bundle_dir.clone().zip(dir_roots),
            bundles_tx,
            metrics.clone(),
            shutdown_rx.clone(),
        ));
        tasks.spawn(rotation.run(shutdown_rx.clone()));
        if let Some(source) = dir_source {
            tasks.spawn(source.run(policies.clone(), shutdown_rx.clone()));
        }
        if let (Some(pods), Some(ApiClient(client))) = (pod_writer, config.kube.clone()) {
            let (leadership, field_manager) = match config.leader_election.clone() {
                Some(lease) => {
                    let field_manager = lease.field_manager();
                    let (elector, leadership) =
                        Elector::new(lease, client.clone(), metrics.clone());
                    tasks.spawn(elector.run(shutdown_rx.clone()));
                    (leadership, field_manager)
                }
                None => {
                    metrics.leader.set(1);
                    (Leadership::sole(), kube_sources::FIELD_MANAGER.to_owned())
                }
            };
            let source = KubernetesSource {
                client,
                pods,
                trust_domain: trust_domain.clone(),
                endpoints: state.endpoints.clone(),
                metrics: metrics.clone(),
                leadership,
                field_manager,
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
            Settings {
                what: "api",
                limits: config.limits,
                max_streams: API_MAX_STREAMS,
                stream_window: 256 * 1024,
                connection_window: 1024 * 1024,
                metrics: metrics.listeners.clone(),
            },
            shutdown_rx.clone(),
            move |tcp, conn| serve_api_connection(tcp, conn, acceptor.clone(), api_state.clone()),
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
                        limits: config.limits,
                        metrics: metrics.listeners.clone(),
                    })
                    .await?,
                )
            }
            None => None,
        };
        let webhook_addr = webhook.as_ref().map(Webhook::addr);
        tasks.spawn(serving.renew_forever(
            serving_signer,
            state.bundles.clone(),
            reissue,
            shutdown_rx.clone(),
        ));

        let admin_addr = match config.admin_listen {
            Some(addr) => {
                let admin = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the admin listener on {addr}"))?;
                let local = admin.local_addr()?;
                let state = state.clone();
                tasks.spawn(listener::accept_loop(
                    admin,
                    Settings {
                        what: "admin",
                        limits: config.limits,
                        max_streams: 8,
                        stream_window: 64 * 1024,
                        connection_window: 64 * 1024,
                        metrics: metrics.listeners.clone(),
                    },
                    shutdown_rx,
                    move |tcp, conn| {
                        let state = state.clone();
                        // Rotation steps come from this host only.
                        let same_host = matches!(
                            (tcp.peer_addr(), tcp.local_addr()),
                            (Ok(peer), Ok(local)) if crate::rotation::admin::same_host(peer, local)
                        );
                        let service = service_fn(move |req: Request<Incoming>| {
                            let state = state.clone();
                            async move {
                                if req.uri().path() == crate::rotation::admin::PATH {
                                    let response = crate::rotation::admin::serve(
                                        &state.rotation,
                                        req,
                                        same_host,
                                    )
                                    .await;
                                    return Ok::<_, Infallible>(response.map(|b| b.boxed()));
                                }
                                Ok::<_, Infallible>(admin_route(&state, &req))
                            }
                        });
                        conn.serve_http(tcp, service)
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
            policies,
            endpoints,
            sidecars,
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

    /// The policy store: what the sources offered and the streams send.
    /// Embedders and tests may publish into it directly.
    pub fn policy_store(&self) -> &Arc<PolicyStore> {
        &self.policies
    }

    /// The endpoint registry (static entries, pods, registrations).
    pub fn endpoints(&self) -> &Arc<Endpoints> {
        &self.endpoints
    }

    /// Every connected sidecar and what it acknowledged.
    pub fn sidecars(&self) -> &Arc<Sidecars> {
        &self.sidecars
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

/// Concurrent HTTP/2 streams per API connection: a sidecar needs two (its
/// discovery stream and a renewal).
const API_MAX_STREAMS: u32 = 16;
/// Longest a client may take to send a unary request's whole body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// One API connection: TLS (the client's SVID, when it presents one, is
/// its identity for renewals and the watch stream), then HTTP.
async fn serve_api_connection(
    tcp: TcpStream,
    mut conn: Conn,
    acceptor: TlsAcceptor,
    state: Arc<State>,
) {
    let Some(tls) = conn.handshake(&acceptor, tcp).await else {
        return;
    };
    let peer_addr = conn.peer;
    let session = tls.get_ref().1;
    let peer_id = ward_identity::tls::peer_spiffe_id(session);
    if peer_id.is_some() {
        conn.authenticated();
    }
    // Streams opened with this certificate end when it does.
    let peer_expiry = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| ward_identity::svid::not_after_of(leaf).ok());
    // What a quarantine of one certificate matches.
    let peer_serial = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| ward_identity::svid::serial_of(leaf).ok());
    let service = service_fn(move |req| {
        let state = state.clone();
        let peer_id = peer_id.clone();
        let caller = Caller {
            id: peer_id.clone(),
            addr: peer_addr,
            expiry: peer_expiry,
            serial: peer_serial.clone(),
        };
        async move { Ok::<_, Infallible>(route(&state, caller, req).await) }
    });
    conn.serve_http(tls, service).await;
}

/// Who is calling: the client certificate's identity and expiry (none
/// without one) and the source address.
struct Caller {
    id: Option<SpiffeId>,
    addr: SocketAddr,
    expiry: Option<time::OffsetDateTime>,
    /// The client certificate's serial ([`ward_identity::svid::serial_of`]).
    serial: Option<String>,
}

impl Caller {
    /// The caller as a quarantine sees it (`pod`: `namespace/pod`).
    fn subject<'a>(&'a self, pod: Option<&'a str>) -> Subject<'a> {
        Subject {
            spiffe_id: self.id.as_ref().map(SpiffeId::as_str),
            serial: self.serial.as_deref(),
            pod,
            address: Some(self.addr.ip()),
        }
    }
}

async fn route(state: &Arc<State>, caller: Caller, req: Request<Incoming>) -> Response<ApiBody> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, SVID_PATH) => issue_svid(state, &caller, req).await,
        (&Method::POST, DISCOVERY_PATH) => discovery_stream(state, &caller, req).await,
        (&Method::POST, REGISTER_PATH) => register(state, &caller, req).await,
        (&Method::GET, BUNDLE_PATH) => json(
            StatusCode::OK,
            &BundleResponse {
                trust_domain: state.ca.load().trust_domain().to_owned(),
                bundle_pem: state.bundles.borrow().own_pem.clone(),
            },
        ),
        (_, SVID_PATH | BUNDLE_PATH | DISCOVERY_PATH | REGISTER_PATH) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            codes::METHOD_NOT_ALLOWED,
            "this path does not accept that method".into(),
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            codes::NOT_FOUND,
            "no such API path".into(),
        ),
    }
}

/// The caller's workload identity and namespace, from its client
/// certificate: the discovery stream and registration need both.
fn workload_caller(
    peer_id: Option<&SpiffeId>,
) -> Result<(&SpiffeId, &str), Box<Response<ApiBody>>> {
    let Some(id) = peer_id else {
        return Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            codes::NO_CLIENT_CERTIFICATE,
            "this call needs the workload's SVID as client certificate".into(),
        )));
    };
    match id.namespace() {
        Some(namespace) => Ok((id, namespace)),
        None => Err(Box::new(error(
            StatusCode::FORBIDDEN,
            codes::NO_NAMESPACE,
            format!("{id} is not of the form spiffe://<td>/ns/<ns>/sa/<sa>"),
        ))),
    }
}

/// `POST /v2/discovery`: reads the hello, then streams updates while the
/// sidecar streams its answers and subscriptions. Only for callers with a
/// valid SVID; in Kubernetes the workload's labels come from its pod.
async fn discovery_stream(
    state: &Arc<State>,
    caller: &Caller,
    req: Request<Incoming>,
) -> Response<ApiBody> {
    let (id, namespace) = match workload_caller(caller.id.as_ref()) {
        Ok(caller) => caller,
        Err(refusal) => return *refusal,
    };
    let mut requests = LineReader::new(req.into_body(), MAX_BODY_BYTES);
    let hello = match requests.first_line(crate::discovery::HELLO_TIMEOUT).await {
        Ok(Some(line)) => serde_json::from_slice::<ClientMessage>(&line).map_err(|e| e.to_string()),
        Ok(None) => Err("the stream ended before a hello".to_owned()),
        Err(err) => Err(err),
    };
    let hello = match hello {
        Ok(ClientMessage::Hello(hello)) => hello,
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                codes::MALFORMED_REQUEST,
                "the first message of a discovery stream must be a hello".into(),
            );
        }
        Err(err) => {
            return error(
                StatusCode::BAD_REQUEST,
                codes::MALFORMED_REQUEST,
                format!("malformed hello: {err}"),
            );
        }
    };
    if hello.api_version != wire::API_VERSION {
        return error(
            StatusCode::BAD_REQUEST,
            codes::UNSUPPORTED_API_VERSION,
            format!(
                "api_version {:?} is not served; this control plane speaks {:?}",
                hello.api_version,
                wire::API_VERSION
            ),
        );
    }
    let (labels, pod_ips) = match (&state.attestor.pods, &hello.node.pod) {
        // Kubernetes: the pod's labels, never what the sidecar claims.
        (Some(pods), Some(pod)) => {
            let sa = id.service_account().unwrap_or_default();
            match pods.labels_of(namespace, pod, sa) {
                Ok(found) => found,
                Err(message) => {
                    return error(StatusCode::FORBIDDEN, codes::POD_UNKNOWN, message);
                }
            }
        }
        (Some(_), None) => {
            return error(
                StatusCode::FORBIDDEN,
                codes::POD_UNKNOWN,
                "in Kubernetes the hello must name the sidecar's pod (node.pod)".into(),
            );
        }
        (None, _) => (hello.node.labels.clone(), Vec::new()),
    };
    let pod = hello.node.pod.as_ref().map(|p| format!("{namespace}/{p}"));
    if let Some(refusal) = refuse_quarantined(state, caller, pod.as_deref(), "discovery stream") {
        return refusal;
    }
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let ctx = StreamContext {
        stream: state.sidecars.next_stream_id(),
        id: id.clone(),
        namespace: namespace.to_owned(),
        labels,
        pod_ips,
        hello,
        peer: caller.addr.ip(),
        expiry: caller.expiry,
        options: state.eval_options.clone(),
        policies: state.policies.subscribe(),
        synced: state.policies.subscribe_synced(),
        bundles: state.bundles.clone(),
        quarantine: state.quarantine.clone(),
        serial: caller.serial.clone(),
        endpoints: state.endpoints.clone(),
        sidecars: state.sidecars.clone(),
        metrics: state.metrics.clone(),
        shutdown: state.shutdown.clone(),
    };
    tokio::spawn(crate::discovery::run_stream(ctx, requests, tx));
    line_stream(rx)
}

/// `POST /v2/register`: the caller's source address is an endpoint of its
/// SPIFFE ID while the response stream stays open (workloads outside
/// Kubernetes; the discovery stream itself has no side effect).
async fn register(
    state: &Arc<State>,
    caller: &Caller,
    req: Request<Incoming>,
) -> Response<ApiBody> {
    let peer_addr = caller.addr;
    let (id, _) = match workload_caller(caller.id.as_ref()) {
        Ok(caller) => caller,
        Err(refusal) => return *refusal,
    };
    if let Some(refusal) = refuse_quarantined(state, caller, None, "address registration") {
        return refusal;
    }
    let mut requests = LineReader::new(req.into_body(), MAX_BODY_BYTES);
    let first = match requests.first_line(crate::discovery::HELLO_TIMEOUT).await {
        Ok(Some(line)) => serde_json::from_slice::<Registration>(&line).map_err(|e| e.to_string()),
        Ok(None) => Ok(Registration::default()),
        Err(err) => Err(err),
    };
    let registration = match first {
        Ok(r) => r,
        Err(err) => {
            return error(
                StatusCode::BAD_REQUEST,
                codes::MALFORMED_REQUEST,
                format!("malformed registration: {err}"),
            );
        }
    };
    let guard = state.endpoints.register(peer_addr.ip(), id, registration);
    info!(spiffe_id = %id, address = %peer_addr.ip(), "workload address registered");
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let answer = wire::encode_line(&Registered {
        address: peer_addr.ip().to_string(),
        spiffe_id: id.to_string(),
    });
    let _ = tx.try_send(Bytes::from(answer));
    let mut shutdown = state.shutdown.clone();
    let id = id.clone();
    tokio::spawn(async move {
        // Held until the caller ends its request (or goes away).
        loop {
            tokio::select! {
                line = requests.next_line() => if !matches!(line, Ok(Some(_))) { break },
                _ = tx.closed() => break,
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
        drop(guard);
        info!(spiffe_id = %id, "workload address registration ended");
    });
    line_stream(rx)
}

/// A response body of lines sent as they come, one data frame each.
fn line_stream(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Response<ApiBody> {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
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
async fn issue_svid(state: &State, caller: &Caller, req: Request<Incoming>) -> Response<ApiBody> {
    let (peer_id, peer_addr) = (caller.id.as_ref(), caller.addr);
    let refuse = |status, reason: &'static str, message: String| {
        state
            .metrics
            .certificate_refusals
            .with_label_values(&[reason])
            .inc();
        warn!(reason, %message, "certificate request refused");
        error(status, reason, message)
    };
    let body = Limited::new(req.into_body(), MAX_BODY_BYTES).collect();
    let body = match tokio::time::timeout(BODY_TIMEOUT, body).await {
        Ok(Ok(body)) => body.to_bytes(),
        Err(_) => {
            return refuse(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!("the request body took longer than {BODY_TIMEOUT:?}"),
            );
        }
        Ok(Err(err)) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_unreadable",
                format!(
                    "request body unreadable or over {} bytes: {err}",
                    MAX_BODY_BYTES
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
    // Before attesting: whatever the credential says, this one is never
    // issued (nor a join token burnt on it).
    if crate::attest::is_reserved(&requested) {
        return refuse(
            StatusCode::FORBIDDEN,
            "reserved_identity",
            format!(
                "{requested} is the control plane's own identity; it is never issued to workloads"
            ),
        );
    }
    // Neither a quarantined identity or pod nor the holder of a revoked
    // certificate gets one, whatever its credential.
    let pod = request
        .pod
        .as_ref()
        .zip(requested.namespace())
        .map(|(pod, namespace)| format!("{namespace}/{pod}"));
    let mut subject = caller.subject(pod.as_deref());
    subject.spiffe_id = Some(requested.as_str());
    if let Some((refusal, reason)) =
        refuse_quarantined_with(state, subject, caller, "certificate request")
    {
        state
            .metrics
            .certificate_refusals
            .with_label_values(&[reason])
            .inc();
        return refusal;
    }
    // Validate the CSR before attesting, so a bad CSR never burns a join token.
    let ca = state.ca.load_full();
    if let Err(err) = ca.check_csr(&request.csr, &requested) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "bad_csr",
            format!("CSR refused: {err}"),
        );
    }
    if request.credential.is_some() && state.attest_failures.is_limited(peer_addr.ip()) {
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "attestation_rate_limited",
            format!(
                "more than {} failed attestations from this address in {:?}; retry later",
                crate::attest::limiter::MAX_FAILURES,
                crate::attest::limiter::WINDOW
            ),
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
                state.attest_failures.failed(peer_addr.ip());
                state
                    .metrics
                    .attestation_failures
                    .with_label_values(&[err.method(), err.reason()])
                    .inc();
                // The reason in full goes to the log only: the caller is not
                // authenticated yet, and the answer must not tell it about
                // pods, tokens or the API server.
                warn!(method = err.method(), reason = err.reason(), error = %err, peer = %peer_addr, "attestation failed");
                return refuse(
                    StatusCode::FORBIDDEN,
                    "attestation_failed",
                    format!(
                        "attestation failed: the {} credential was refused (the control plane's log says why)",
                        err.method()
                    ),
                );
            }
        },
        // Renewal: the caller proves its identity with its current SVID
        // and, in Kubernetes, the pod it runs in must still be there.
        None => match peer_id {
            Some(current) if *current == requested => {
                if let Err(message) = renewal_subject(state, &requested, request.pod.as_deref()) {
                    return refuse(StatusCode::FORBIDDEN, "renewal_pod_unknown", message);
                }
                requested
            }
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
    match ca.sign_csr(&request.csr, &attested, state.svid_ttl) {
        Ok(svid) => {
            state.metrics.certificates_issued.inc();
            if let Some(serial) = ward_identity::svid::canonical_serial(&svid.serial_hex) {
                state.issued.record(Issued {
                    serial,
                    spiffe_id: attested.to_string(),
                    pod: pod.clone(),
                    not_after: svid.not_after.unix_timestamp(),
                    issuer: Some(ca.fingerprint_sha256()),
                    address: Some(peer_addr.ip().to_string()),
                });
            }
            let not_after = ward_identity::rfc3339(svid.not_after);
            info!(spiffe_id = %attested, serial = %svid.serial_hex, %not_after, pod = ?pod, peer = %peer_addr, "issued X.509-SVID");
            json(
                StatusCode::OK,
                &SvidResponse {
                    spiffe_id: attested.to_string(),
                    chain_pem: svid.chain_pem,
                    trust_domain: ca.trust_domain().to_owned(),
                    bundle_pem: state.bundles.borrow().own_pem.clone(),
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

/// The refusal of a quarantined caller (`pod`: the `namespace/pod` it
/// names), if it is one.
fn refuse_quarantined(
    state: &State,
    caller: &Caller,
    pod: Option<&str>,
    what: &'static str,
) -> Option<Response<ApiBody>> {
    refuse_quarantined_with(state, caller.subject(pod), caller, what).map(|(refusal, _)| refusal)
}

/// Refuses `subject` when a quarantine matches it: the log says which
/// entry and why, the caller hears only that it was refused (a
/// compromised workload is not told it was found out). While the
/// quarantines are not known yet (the Quarantine objects not listed),
/// everyone is refused for now (503: sidecars retry). With the refusal,
/// its reason for `ward_ca_certificate_refusals_total`.
fn refuse_quarantined_with(
    state: &State,
    subject: Subject<'_>,
    caller: &Caller,
    what: &'static str,
) -> Option<(Response<ApiBody>, &'static str)> {
    let quarantine = state.quarantine.borrow();
    if !quarantine.is_known() {
        // Debug: every sidecar retries until then; the watch's errors and
        // /ready say why.
        tracing::debug!(what, spiffe_id = ?subject.spiffe_id, peer = %caller.addr, "refused for now: the quarantines are not known yet (the Quarantine objects are not listed)");
        return Some((
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                codes::NOT_SYNCED,
                format!("the {what} cannot be served yet: the control plane is starting; retry"),
            ),
            "quarantine_not_synced",
        ));
    }
    let found = quarantine.revoked.check(&subject)?;
    warn!(what, spiffe_id = ?subject.spiffe_id, serial = ?subject.serial, pod = ?subject.pod, peer = %caller.addr, entry = %found.entry, matched = found.by, "refused: quarantined");
    Some((
        error(
            StatusCode::FORBIDDEN,
            codes::REFUSED,
            format!("the {what} was refused (the control plane's log says why)"),
        ),
        "quarantined",
    ))
}

/// In Kubernetes, what a renewal over mTLS must still prove: the pod it
/// names exists (meshed, in the reflector's view) in the SVID's namespace
/// and runs as its service account, so a deleted pod's key renews nothing.
/// Sidecars with a service-account token send it on renewal too, which
/// checks the pod's UID as well (the credential path).
fn renewal_subject(state: &State, id: &SpiffeId, pod: Option<&str>) -> Result<(), String> {
    let Some(pods) = &state.attestor.pods else {
        return Ok(());
    };
    let (Some(namespace), Some(sa)) = (id.namespace(), id.service_account()) else {
        return Err(format!(
            "{id} is not of the form spiffe://<td>/ns/<ns>/sa/<sa>"
        ));
    };
    let pod = pod.ok_or("in Kubernetes a renewal must name the sidecar's pod (\"pod\")")?;
    pods.labels_of(namespace, pod, sa).map(|_| ())
}

fn admin_route(state: &State, req: &Request<Incoming>) -> Response<ApiBody> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => Response::builder()
            .header(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )
            .body({
                state
                    .metrics
                    .set_discovery_sidecars(&state.sidecars.counts());
                Full::new(Bytes::from(state.metrics.render())).boxed()
            })
            .expect("valid response"),
        (&Method::GET, "/live") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/debug/discovery") => json(StatusCode::OK, &discovery_report(state)),
        // Not ready (no traffic from the Service) until the policy and
        // endpoint sources have synced.
        (&Method::GET, "/ready") if !state.policies.is_synced() => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the Kubernetes sources have not synced yet\n",
        ),
        (&Method::GET, "/ready") if !state.quarantine.borrow().is_known() => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the Quarantine objects have not been listed yet\n",
        ),
        (&Method::GET, "/ready") => text(StatusCode::OK, "ok\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `/debug/discovery`: the sidecars' report, and what `ward status` and
/// `ward check` need beside it.
#[derive(serde::Serialize)]
struct DiscoveryReport {
    #[serde(flatten)]
    report: crate::discovery::sidecars::Report,
    /// The policy set in force (`ward_cp_policy_version`).
    policy_version: u64,
    /// The policy source's last offer, when it was rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    policy_rejection: Option<crate::policy_store::Rejection>,
    /// By stream: when the newest certificate issued to that sidecar
    /// expires (Unix seconds). A stream keeps the certificate it was
    /// opened with until that one expires; the sidecar renews long before.
    newest_certificates: BTreeMap<u64, i64>,
    /// PeerAuthentications that let plaintext in (PERMISSIVE or DISABLE,
    /// for the workload or one of its ports).
    plaintext_allowed: Vec<PlaintextAllowed>,
}

#[derive(serde::Serialize)]
struct PlaintextAllowed {
    peer_authentication: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    selector: Option<BTreeMap<String, String>>,
    mode: &'static str,
    /// Ports whose own mode lets plaintext in.
    ports: BTreeMap<u16, &'static str>,
}

fn discovery_report(state: &State) -> DiscoveryReport {
    use crate::quarantine::issued::holder_key;
    use ward_policy::MtlsMode;
    let report = state.sidecars.report();
    let newest_certificates = report
        .sidecars
        .iter()
        .filter_map(|s| {
            let key = holder_key(&s.spiffe_id, s.pod.as_deref(), Some(&s.address));
            let newest = state.issued.latest_for(&key).map(|i| i.not_after);
            s.certificate_not_after
                .max(newest)
                .map(|not_after| (s.stream, not_after))
        })
        .collect();
    let snapshot = state.policies.current();
    let lets_plaintext_in = |m: MtlsMode| matches!(m, MtlsMode::Permissive | MtlsMode::Disable);
    let plaintext_allowed = snapshot
        .set
        .peer_authentications()
        .filter_map(|p| {
            let ports: BTreeMap<u16, &'static str> = p
                .port_level
                .iter()
                .filter(|(_, m)| lets_plaintext_in(**m))
                .map(|(port, m)| (*port, m.as_str()))
                .collect();
            (lets_plaintext_in(p.mode) || !ports.is_empty()).then(|| PlaintextAllowed {
                peer_authentication: p.id.to_string(),
                selector: p.selector.clone(),
                mode: p.mode.as_str(),
                ports,
            })
        })
        .collect();
    DiscoveryReport {
        report,
        policy_version: snapshot.version,
        policy_rejection: state.policies.rejection(),
        newest_certificates,
        plaintext_allowed,
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
