//! `ward-control-plane`: the CA server, policy distribution and the sidecar
//! injector webhook.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ward_control_plane::attest::K8sTokenConfig;
use ward_control_plane::inject::{self, InjectConfig};
use ward_control_plane::k8s::ApiClient;
use ward_control_plane::k8s::leader::LeaseConfig;
use ward_control_plane::listener::Limits;
use ward_control_plane::logging::{self, LogFormat};
use ward_control_plane::server::{Config, ControlPlane};

/// Every flag falls back to the `WARD_*` environment variable named beside it.
#[derive(Parser)]
#[command(
    name = "ward-control-plane",
    version,
    about = "Ward control plane: CA, workload attestation, policies and the sidecar injector"
)]
struct Args {
    /// Trust domain of the mesh (SPIFFE IDs are spiffe://<this>/ns/<ns>/sa/<sa>).
    #[arg(long, env = "WARD_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Directory holding the CA key (0600), certificate and join tokens.
    #[arg(long, env = "WARD_DATA_DIR", default_value = "/var/lib/ward")]
    data_dir: PathBuf,
    /// API listener (TLS). Loopback by default; deployments set 0.0.0.0:15012.
    #[arg(long, env = "WARD_LISTEN", default_value = "127.0.0.1:15012")]
    listen: SocketAddr,
    /// Plaintext /metrics, /ready, /live listener.
    #[arg(long, env = "WARD_ADMIN_LISTEN", default_value = "127.0.0.1:15014")]
    admin_listen: SocketAddr,
    /// Lifetime of workload certificates (e.g. 24h, 90m).
    #[arg(long, env = "WARD_SVID_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    svid_ttl: Duration,
    /// Issuer (`iss`) of Kubernetes service-account tokens; enables that attestation.
    #[arg(long, env = "WARD_K8S_ISSUER", requires = "k8s_jwks_file")]
    k8s_issuer: Option<String>,
    /// JWKS file with the service-account token signing keys.
    #[arg(long, env = "WARD_K8S_JWKS_FILE", requires = "k8s_issuer")]
    k8s_jwks_file: Option<PathBuf>,
    /// Audience service-account tokens must carry (JWKS and TokenReview).
    #[arg(long, env = "WARD_K8S_AUDIENCE", default_value = "ward")]
    k8s_audience: String,
    /// Validate service-account tokens with the Kubernetes TokenReview API
    /// (in-cluster) instead of a JWKS file.
    #[arg(long, env = "WARD_K8S_TOKEN_REVIEW")]
    k8s_token_review: bool,
    /// Watch the Kubernetes API: policies from the security.ward.io custom
    /// resources, endpoints from meshed Pods (instead of --policy-dir).
    #[arg(long, env = "WARD_KUBERNETES")]
    kubernetes: bool,
    /// Directory of AuthorizationPolicy / PeerAuthentication YAML files (watched).
    #[arg(long, env = "WARD_POLICY_DIR")]
    policy_dir: Option<PathBuf>,
    /// Directory of `<trust domain>.pem` files (a mounted ConfigMap): roots
    /// distributed beside the CA's own, for a CA rotation or federation
    /// (watched).
    #[arg(long, env = "WARD_TRUST_BUNDLE_DIR")]
    trust_bundle_dir: Option<PathBuf>,
    /// Namespace whose policies apply mesh-wide.
    #[arg(long, env = "WARD_ROOT_NAMESPACE", default_value = "ward-system")]
    root_namespace: String,
    /// JSON endpoint table added to the registered proxies:
    /// `{"endpoints": [{"address": "IP[:PORT]", "spiffe_id": "…"}]}`.
    #[arg(long, env = "WARD_ENDPOINTS_FILE")]
    endpoints_file: Option<PathBuf>,
    /// Injector webhook listener (HTTPS with the serving certificate, valid
    /// for ward-control-plane.ward-system.svc). Disabled when unset;
    /// deployments set 0.0.0.0:15017.
    #[arg(long, env = "WARD_WEBHOOK_LISTEN")]
    webhook_listen: Option<SocketAddr>,
    /// Image of the injected `ward-init` and `ward-proxy` containers.
    #[arg(long, env = "WARD_PROXY_IMAGE", default_value_t = inject::default_image())]
    proxy_image: String,
    /// `imagePullPolicy` of the injected containers (the cluster's default when unset).
    #[arg(long, env = "WARD_PROXY_IMAGE_PULL_POLICY", value_parser = ["Always", "IfNotPresent", "Never"])]
    proxy_image_pull_policy: Option<String>,
    /// Control plane address (`host:port`) the injected sidecars dial.
    #[arg(long, env = "WARD_INJECT_CONTROL_PLANE", default_value = inject::CONTROL_PLANE_ADDRESS)]
    inject_control_plane: String,
    /// Inject native sidecars (Kubernetes ≥ 1.29); `false` for older
    /// clusters. Pods may override with `ward.io/native-sidecar`.
    #[arg(long, env = "WARD_NATIVE_SIDECARS", default_value = "true", action = clap::ArgAction::Set)]
    native_sidecars: bool,
    /// Default `WARD_LOG_LEVEL` of injected sidecars (`ward.io/log-level` overrides).
    #[arg(long, env = "WARD_PROXY_LOG_LEVEL", default_value = "info", value_parser = ["trace", "debug", "info", "warn", "error"])]
    proxy_log_level: String,
    /// Open connections per listener; more are closed at once (counted in
    /// ward_cp_connections_refused_total). The webhook takes at most 512.
    #[arg(long, env = "WARD_MAX_CONNECTIONS", default_value_t = Limits::default().max_connections, value_parser = positive_count)]
    max_connections: usize,
    /// Connections per source address without a verified client
    /// certificate (still handshaking, enrolling, webhook, admin).
    #[arg(long, env = "WARD_MAX_UNAUTHENTICATED_PER_SOURCE", default_value_t = Limits::default().max_unauthenticated_per_source, value_parser = positive_count)]
    max_unauthenticated_per_source: usize,
    /// Longest a client may take for the TLS handshake.
    #[arg(long, env = "WARD_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    handshake_timeout: Duration,
    /// Longest a client may take to send an HTTP/1 request's headers.
    #[arg(long, env = "WARD_HEADER_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    header_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    #[arg(long, env = "WARD_IDLE_TIMEOUT", default_value = "90s", value_parser = positive_duration)]
    idle_timeout: Duration,
    /// With --kubernetes: the coordination.k8s.io Lease that elects the one
    /// replica writing policy statuses (every replica serves sidecars).
    #[arg(long, env = "WARD_LEASE_NAME", default_value = LeaseConfig::DEFAULT_NAME)]
    lease_name: String,
    /// Namespace of that Lease (the control plane's own; the Deployment
    /// sets it from the pod's namespace).
    #[arg(long, env = "WARD_LEASE_NAMESPACE", default_value = LeaseConfig::DEFAULT_NAMESPACE)]
    lease_namespace: String,
    /// This replica's holderIdentity, unique among the replicas (the
    /// Deployment sets the pod name). Default: <hostname>-<random>.
    #[arg(long, env = "WARD_LEASE_IDENTITY")]
    lease_identity: Option<String>,
    /// How long the others wait for a silent holder before taking the
    /// Lease (whole seconds).
    #[arg(long, env = "WARD_LEASE_DURATION", default_value = "15s", value_parser = positive_duration)]
    lease_duration: Duration,
    /// The holder stops writing statuses this long after its last
    /// successful renewal began (shorter than --lease-duration).
    #[arg(long, env = "WARD_LEASE_RENEW_DEADLINE", default_value = "10s", value_parser = positive_duration)]
    lease_renew_deadline: Duration,
    /// How often the holder renews and the others look at the Lease
    /// (shorter than --lease-renew-deadline).
    #[arg(long, env = "WARD_LEASE_RENEW_PERIOD", default_value = "5s", value_parser = positive_duration)]
    lease_renew_period: Duration,
    #[arg(long, env = "WARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[arg(long, env = "WARD_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Checked here rather than by clap: clap counts `WARD_KUBERNETES=false`
    // as given, and would refuse it beside --policy-dir.
    if args.kubernetes && args.policy_dir.is_some() {
        anyhow::bail!("--kubernetes and --policy-dir are two policy sources: choose one");
    }
    if args.k8s_token_review && args.k8s_issuer.is_some() {
        anyhow::bail!(
            "--k8s-token-review and --k8s-issuer/--k8s-jwks-file are two token checks: choose one"
        );
    }
    // Checked before anything starts: a bad setting is a clear error, not
    // a replica that never writes (or two that do).
    let leader_election = match args.kubernetes {
        true => {
            let lease = LeaseConfig {
                name: args.lease_name,
                namespace: args.lease_namespace,
                identity: args
                    .lease_identity
                    .unwrap_or_else(LeaseConfig::generated_identity),
                lease_duration: args.lease_duration,
                renew_deadline: args.lease_renew_deadline,
                renew_period: args.lease_renew_period,
            };
            lease.validate()?;
            Some(lease)
        }
        false => None,
    };
    logging::init(args.log_format, &args.log_level)?;
    let mut config = Config::new(args.trust_domain.clone(), args.data_dir);
    config.listen = args.listen;
    config.admin_listen = Some(args.admin_listen);
    config.svid_ttl = args.svid_ttl;
    config.limits = Limits {
        max_connections: args.max_connections,
        max_unauthenticated_per_source: args.max_unauthenticated_per_source,
        handshake_timeout: args.handshake_timeout,
        header_timeout: args.header_timeout,
        idle_timeout: args.idle_timeout,
    };
    config.policy_dir = args.policy_dir;
    config.root_namespace = args.root_namespace;
    config.trust_bundle_dir = args.trust_bundle_dir;
    config.webhook_listen = args.webhook_listen;
    config.inject = InjectConfig {
        image: args.proxy_image,
        image_pull_policy: args.proxy_image_pull_policy,
        control_plane: args.inject_control_plane,
        native_sidecars: args.native_sidecars,
        log_level: args.proxy_log_level,
        ..InjectConfig::new(args.trust_domain.clone())
    };
    if let Some(path) = &args.endpoints_file {
        #[derive(serde::Deserialize)]
        struct File {
            endpoints: Vec<ward_control_plane::discovery::EndpointEntry>,
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let file: File =
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        config.static_endpoints = file.endpoints;
    }
    config.token_review_audience = args.k8s_audience.clone();
    if let (Some(issuer), Some(jwks)) = (args.k8s_issuer, args.k8s_jwks_file) {
        let mut k8s = K8sTokenConfig::from_jwks_file(issuer, args.trust_domain, &jwks)?;
        k8s.audience = args.k8s_audience;
        config.k8s = Some(k8s);
    }
    config.kubernetes_sources = args.kubernetes;
    config.leader_election = leader_election;
    config.token_review = args.k8s_token_review;
    if args.kubernetes || args.k8s_token_review {
        config.kube = Some(ApiClient::infer().await?);
    }
    let control_plane = ControlPlane::start(config).await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    control_plane.shutdown().await;
    Ok(())
}

/// A count above zero.
fn positive_count(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be more than zero".into()),
        Ok(n) => Ok(n),
        Err(err) => Err(err.to_string()),
    }
}

/// A duration above zero (a zero timeout would close every connection).
fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be more than zero".into()),
        Ok(d) => Ok(d),
        Err(err) => Err(err.to_string()),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
