//! `ward-proxy run` settings: every flag has a `WARD_*` environment variable
//! as fallback; this file is the one place they are named and documented.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;
use ward_policy::path::PathNormalization;

use clap::Args;
use clap::builder::BoolishValueParser;
use ward_identity::SpiffeId;
use ward_logging::LogFormat;

use crate::admin::AppProbes;
use crate::capture::cli::List;
use crate::endpoints::EndpointKey;
use crate::identity::IdentityArgs;
use crate::outbound::{UnmeshedEgress, UpstreamProtocol};

// The settings' own types live with the code they configure; the mTLS
// mode is also named here, where the flags are.
pub use crate::policy::MtlsMode;

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Explicit inbound listener (mTLS in, plaintext to 127.0.0.1:APP_PORT);
    /// repeatable. With any explicit listener no capture listener is opened.
    #[arg(long = "inbound", value_name = "LISTEN=APP_PORT", value_parser = parse_inbound)]
    pub inbound: Vec<(SocketAddr, u16)>,
    /// Explicit outbound listener (plaintext from the app, to DEST); repeatable.
    #[arg(long = "outbound", value_name = "LISTEN=DEST", value_parser = parse_outbound)]
    pub outbound: Vec<(SocketAddr, SocketAddr)>,
    /// Where iptables sends inbound connections (transparent mode): one or
    /// more addresses, comma-separated. Both families by default; an IPv6
    /// address is bound IPv6-only, and `[::]` is skipped when the kernel
    /// has IPv6 off (capture/listen.rs).
    #[arg(
        long,
        env = "WARD_INBOUND_CAPTURE",
        value_delimiter = ',',
        default_value = "0.0.0.0:15006,[::]:15006"
    )]
    pub inbound_capture: Vec<SocketAddr>,
    /// Where iptables sends outbound connections (transparent mode), as
    /// `--inbound-capture`.
    #[arg(
        long,
        env = "WARD_OUTBOUND_CAPTURE",
        value_delimiter = ',',
        default_value = "0.0.0.0:15001,[::]:15001"
    )]
    pub outbound_capture: Vec<SocketAddr>,
    /// Forward inbound connections to the application on 127.0.0.1 instead
    /// of the pod's own address (the connection's original destination), so
    /// services bound only to loopback in the pod are reachable by mesh
    /// peers. A per-pod opt-in (`ward.io/inbound-to-loopback`); transparent
    /// mode only, explicit mode always uses loopback.
    #[arg(long, env = "WARD_INBOUND_TO_LOOPBACK", value_parser = BoolishValueParser::new())]
    pub inbound_to_loopback: bool,
    /// Admin listener: `/metrics` and the `--app-probes` paths from
    /// anywhere, `/ready` and `/live` from localhost only.
    #[arg(long, env = "WARD_ADMIN", default_value = "0.0.0.0:15020")]
    pub admin: SocketAddr,
    /// The app's original probes the admin port runs for the kubelet, as the
    /// injector writes them: a JSON object keyed by
    /// `/app-health/<container>/<livez|readyz|startupz>` (docs/kubernetes.md, "Probes").
    #[arg(long, env = "WARD_APP_PROBES", default_value = "", hide_env_values = true, hide_default_value = true, value_parser = AppProbes::parse)]
    pub app_probes: AppProbes,

    /// A meshed destination and the SPIFFE ID it must present:
    /// `IP:PORT=ID` or `IP=ID` (any port); repeatable.
    #[arg(long = "endpoint", value_name = "ADDR=SPIFFE_ID", value_parser = parse_endpoint)]
    pub endpoints: Vec<(EndpointKey, SpiffeId)>,
    /// JSON endpoint table: `{"endpoints": [{"address": "IP[:PORT]", "spiffe_id": "…"}]}`.
    #[arg(long, env = "WARD_ENDPOINTS_FILE")]
    pub endpoints_file: Option<PathBuf>,
    #[arg(long, env = "WARD_MTLS_MODE", value_enum, default_value_t = MtlsMode::Strict)]
    pub mtls_mode: MtlsMode,
    /// Ports carrying protocols that are never sniffed (server-speaks-first).
    #[arg(long, env = "WARD_OPAQUE_PORTS", default_value = "", value_parser = List::<u16>::parse)]
    pub opaque_ports: List<u16>,
    /// How long a connection to an address the sidecar has not seen waits
    /// for the control plane to say whether it is meshed; then it is
    /// refused (never sent in plaintext on a guess).
    #[arg(long, env = "WARD_DISCOVERY_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration)]
    pub discovery_timeout: std::time::Duration,
    /// Most destination addresses held from discovery at once; past it the
    /// least recently added are dropped (and asked again when used).
    #[arg(long, env = "WARD_MAX_DESTINATIONS", default_value_t = 10_000)]
    pub max_destinations: usize,
    #[arg(long, env = "WARD_UNMESHED_EGRESS", value_enum, default_value_t = UnmeshedEgress::Allow)]
    pub unmeshed_egress: UnmeshedEgress,
    /// This workload's labels, for policy selectors (repeatable `k=v`).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Labels file in the Kubernetes downward-API format (`key="value"` lines).
    #[arg(long, env = "WARD_POD_LABELS_FILE")]
    pub labels_file: Option<PathBuf>,
    /// Local AuthorizationPolicy / PeerAuthentication files or directories
    /// (repeatable), for running without a control plane; reloaded on change.
    #[arg(long = "policy", env = "WARD_POLICY_PATHS", value_delimiter = ',')]
    pub policy_paths: Vec<PathBuf>,
    /// Namespace whose policies apply mesh-wide.
    #[arg(long, env = "WARD_ROOT_NAMESPACE", default_value = "ward-system")]
    pub root_namespace: String,
    /// Admit only these peer identities inbound (repeatable). Without it every
    /// authenticated peer is admitted until authorization policies apply.
    #[arg(long = "allow-peer", value_name = "SPIFFE_ID", value_parser = parse_spiffe_id)]
    pub allow_peers: Vec<SpiffeId>,

    /// Workload certificate chain (PEM), for a static identity from files
    /// (cert-manager, SPIRE, benchmarks). Reloaded when the files change.
    #[arg(long, env = "WARD_CERT", requires_all = ["key", "ca"])]
    pub cert: Option<PathBuf>,
    /// Private key of `--cert` (PEM).
    #[arg(long, env = "WARD_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Trust bundle: the mesh CA root(s) (PEM).
    #[arg(long, env = "WARD_CA_BUNDLE")]
    pub ca: Option<PathBuf>,
    /// Control plane API (`host:port`) to obtain and renew the SVID from.
    #[arg(long, env = "WARD_CONTROL_PLANE", conflicts_with = "cert")]
    pub control_plane: Option<String>,
    /// This workload's SPIFFE ID; by default built from the trust domain,
    /// namespace and service account.
    #[arg(long, env = "WARD_SPIFFE_ID", value_parser = parse_spiffe_id)]
    pub spiffe_id: Option<SpiffeId>,
    #[arg(long, env = "WARD_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    #[arg(long, env = "WARD_POD_NAMESPACE")]
    pub pod_namespace: Option<String>,
    #[arg(long, env = "WARD_SERVICE_ACCOUNT")]
    pub service_account: Option<String>,
    /// This pod's name (Kubernetes): the control plane checks that the
    /// service-account token is bound to it.
    #[arg(long, env = "WARD_POD_NAME")]
    pub pod_name: Option<String>,
    /// One-time join token for the first enrolment.
    #[arg(
        long,
        env = "WARD_JOIN_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub join_token: Option<String>,
    /// Projected service-account token (audience `ward`), re-read at each use.
    #[arg(long, env = "WARD_SA_TOKEN_FILE")]
    pub sa_token_file: Option<PathBuf>,

    /// Runtime worker threads (1: a single-threaded runtime).
    #[arg(long, env = "WARD_WORKERS")]
    pub workers: Option<usize>,
    /// One upstream connection per application connection instead of a
    /// shared pool (what a benchmark's churn mode needs).
    #[arg(long, env = "WARD_NO_POOL", value_parser = BoolishValueParser::new())]
    pub no_pool: bool,
    #[arg(long, env = "WARD_UPSTREAM_PROTOCOL", value_enum, default_value_t = UpstreamProtocol::H2)]
    pub upstream_protocol: UpstreamProtocol,
    /// Concurrent connections per listener; more are refused at accept.
    #[arg(long, env = "WARD_MAX_CONNECTIONS", default_value_t = 16384)]
    pub max_connections: usize,
    #[arg(long, env = "WARD_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// How long to wait for a client's first bytes when sniffing the protocol.
    #[arg(long, env = "WARD_DETECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub detect_timeout: Duration,
    /// Time allowed for a client to send a request's headers (slowloris).
    #[arg(long, env = "WARD_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,
    /// Close connections on which no application data moved for this long
    /// (TCP and tunnel bytes, HTTP request and response frames, both
    /// directions; HTTP/2 PINGs do not count; a silent long-poll is cut too).
    #[arg(long, env = "WARD_IDLE_TIMEOUT", default_value = "300s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// How inbound request paths are normalized before they are authorized
    /// and forwarded (Istio's `meshConfig.pathNormalization`).
    #[arg(long, env = "WARD_PATH_NORMALIZATION", value_enum, default_value_t = PathNormalization::Base)]
    pub path_normalization: PathNormalization,
    /// Largest request or response header block accepted.
    #[arg(long, env = "WARD_MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,
    /// On SIGTERM, how long in-flight requests and connections may take.
    #[arg(long, env = "WARD_DRAIN_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    #[arg(long, env = "WARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[arg(long, env = "WARD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

impl RunArgs {
    /// Explicit mode: static listeners, no iptables, no root needed.
    pub fn is_explicit(&self) -> bool {
        !self.inbound.is_empty() || !self.outbound.is_empty()
    }

    /// What the identity source needs of the flags.
    pub fn identity_args(&self) -> IdentityArgs {
        IdentityArgs {
            cert: self.cert.clone(),
            key: self.key.clone(),
            ca: self.ca.clone(),
            control_plane: self.control_plane.clone(),
            join_token: self.join_token.clone(),
            sa_token_file: self.sa_token_file.clone(),
            pod_name: self.pod_name.clone(),
            workload_id: self.workload_id().map_err(|err| format!("{err:#}")),
        }
    }

    /// The workload's SPIFFE ID, given or derived from namespace and service account.
    pub fn workload_id(&self) -> anyhow::Result<SpiffeId> {
        if let Some(id) = &self.spiffe_id {
            return Ok(id.clone());
        }
        match (&self.pod_namespace, &self.service_account) {
            (Some(ns), Some(sa)) => Ok(SpiffeId::for_service_account(&self.trust_domain, ns, sa)?),
            _ => anyhow::bail!(
                "no workload identity: set --spiffe-id, or --pod-namespace and --service-account"
            ),
        }
    }
}

fn parse_inbound(arg: &str) -> Result<(SocketAddr, u16), String> {
    parse_pair(arg, "LISTEN=APP_PORT")
}

fn parse_outbound(arg: &str) -> Result<(SocketAddr, SocketAddr), String> {
    parse_pair(arg, "LISTEN=DEST")
}

/// `A=B`, each side parsed; `form` names them in the error.
fn parse_pair<A, B>(arg: &str, form: &str) -> Result<(A, B), String>
where
    A: FromStr<Err: fmt::Display>,
    B: FromStr<Err: fmt::Display>,
{
    let (a, b) = arg
        .split_once('=')
        .ok_or_else(|| format!("expected {form}, got {arg:?}"))?;
    let a = a.parse().map_err(|e| format!("{a:?}: {e}"))?;
    let b = b.parse().map_err(|e| format!("{b:?}: {e}"))?;
    Ok((a, b))
}

fn parse_endpoint(arg: &str) -> Result<(EndpointKey, SpiffeId), String> {
    let (addr, id) = arg
        .split_once('=')
        .ok_or_else(|| format!("expected ADDR=SPIFFE_ID, got {arg:?}"))?;
    Ok((addr.parse()?, parse_spiffe_id(id)?))
}

fn parse_label(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {arg:?}")),
    }
}

fn parse_spiffe_id(arg: &str) -> Result<SpiffeId, String> {
    SpiffeId::parse(arg).map_err(|e| format!("{arg:?}: {e}"))
}

/// Reads labels in the Kubernetes downward-API file format: one
/// `key="value"` per line.
pub fn read_labels_file(
    path: &std::path::Path,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut labels = std::collections::BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (key, value) = line.split_once('=').ok_or_else(|| {
            anyhow::anyhow!("{}:{}: expected key=\"value\"", path.display(), n + 1)
        })?;
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        labels.insert(key.trim().to_owned(), value.replace("\\\"", "\""));
    }
    Ok(labels)
}
