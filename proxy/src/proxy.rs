//! Wiring: identity, listeners, the inbound and outbound stacks, the admin
//! server, and graceful shutdown (stop accepting, drain, exit).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use ward_api::client::ControlPlaneClient;
use ward_api::client::discovery::{DiscoveryClient, DiscoveryConfig};
use ward_api::discovery::Node;
use ward_identity::tls;

use crate::admin::Admin;
use crate::app::AppClients;
use crate::authz::{AllowAll, AllowPeers, Authorizer};
use crate::config::RunArgs;
use crate::discovery::{ProxyHandler, RESOURCE_TYPES};
use crate::endpoints::{Destinations, EndpointTable};
use crate::hop::Alpn;
use crate::identity::{self, WorkloadIdentity};
use crate::inbound::{self, Inbound};
use crate::limits::Limits;
use crate::metrics::ProxyMetrics;
use crate::outbound::{self, Outbound};
use crate::outcome::{self, Failure};
use crate::policy::{PolicyAuthorizer, WorkloadSelector};
use crate::quarantine::Quarantine;
use crate::upstream::Upstream;
use ward_identity::manager::EarlyRenewal;

/// A started proxy. `shutdown` stops it; `drain` waits for connections.
pub struct Running {
    pub inbound_addrs: Vec<SocketAddr>,
    pub outbound_addrs: Vec<SocketAddr>,
    pub admin_addr: SocketAddr,
    pub identity: WorkloadIdentity,
    pub metrics: Arc<ProxyMetrics>,
    /// The policy engine, when policies are enforced.
    pub policy: Option<Arc<PolicyAuthorizer>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Running {
    /// Stops accepting, asks HTTP connections to finish their in-flight
    /// requests, and waits up to `grace` for every connection to end.
    /// Returns false when the grace period ran out first.
    pub async fn drain(self, grace: Duration) -> bool {
        self.shutdown.cancel();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }
}

/// Starts everything `args` describes and returns once listening.
pub async fn start(args: &RunArgs) -> anyhow::Result<Running> {
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let metrics = Arc::new(ProxyMetrics::new());
    let (identity, early_renewal) =
        identity::start_with_renewal(&args.identity_args(), shutdown.clone())?;
    // Filled by the control plane's `quarantine` resources (empty without one).
    let quarantine = Quarantine::new(metrics.clone());

    let max_header_bytes = u32::try_from(args.max_header_bytes).unwrap_or(u32::MAX);
    let limits = Limits {
        detect_timeout: args.detect_timeout,
        header_timeout: args.header_timeout,
        connect_timeout: args.connect_timeout,
        max_header_bytes: args.max_header_bytes,
        idle_timeout: args.idle_timeout,
    };
    let mut endpoints = match &args.endpoints_file {
        Some(path) => EndpointTable::from_file(path).map_err(anyhow::Error::msg)?,
        None => EndpointTable::default(),
    };
    for (key, id) in &args.endpoints {
        endpoints.insert(*key, id.clone());
    }

    // Bind first: the loop check needs every listener's address.
    let (inbound_listeners, outbound_listeners) = bind_listeners(args).await?;
    let self_addrs: Vec<SocketAddr> = inbound_listeners
        .iter()
        .map(|(l, _)| l.local_addr())
        .chain(outbound_listeners.iter().map(|(l, _)| l.local_addr()))
        .collect::<Result<_, _>>()?;
    refuse_loops(&outbound_listeners, &self_addrs)?;
    refuse_admin_as_app(&args.inbound, args.admin)?;

    let policy = policy_engine(args, &identity, &metrics)?;
    let authz: Arc<dyn Authorizer> = match (&policy, args.allow_peers.is_empty()) {
        (Some(policy), _) => policy.clone(),
        (None, true) => Arc::new(AllowAll),
        (None, false) => Arc::new(AllowPeers(args.allow_peers.clone())),
    };
    let destinations = match (&policy, &args.control_plane) {
        (Some(policy), Some(addr)) => start_discovery(
            args,
            addr,
            &identity,
            early_renewal,
            policy,
            endpoints,
            &quarantine,
            &metrics,
            &shutdown,
        )?,
        _ => Arc::new(Destinations::fixed(endpoints)),
    };
    if let (Some(policy), None) = (&policy, &args.control_plane) {
        // Local policy files (no control plane): reloaded when they change.
        tokio::spawn(crate::policy::watch_files(
            args.policy_paths.clone(),
            policy.clone(),
            shutdown.clone(),
        ));
    }
    let mut server_config = Arc::unwrap_or_clone(tls::server_config(
        identity.svid.clone(),
        identity.bundles.clone(),
    ));
    server_config.alpn_protocols = [Alpn::H2, Alpn::Http1, Alpn::Tcp]
        .iter()
        .map(|a| a.id().to_vec())
        .collect();
    let inbound = Arc::new(Inbound {
        tls: TlsAcceptor::from(Arc::new(server_config)),
        mode: args.mtls_mode,
        opaque_ports: args.opaque_ports.0.clone(),
        authz,
        policy: policy.clone(),
        // Explicit mode's `--inbound LISTEN=APP_PORT` names a loopback port.
        apps: AppClients::new(
            args.connect_timeout,
            max_header_bytes,
            args.inbound_to_loopback || args.is_explicit(),
        ),
        metrics: metrics.clone(),
        limits,
        self_addrs: self_addrs.clone(),
        path_normalization: args.path_normalization,
        svid: identity.svid.clone(),
        quarantine: quarantine.clone(),
    });
    let outbound = Arc::new(Outbound {
        destinations,
        discovery_timeout: args.discovery_timeout,
        upstream: Arc::new(Upstream::new(
            identity.clone(),
            args.connect_timeout,
            max_header_bytes,
            metrics.clone(),
            quarantine.clone(),
        )),
        unmeshed: args.unmeshed_egress,
        opaque_ports: args.opaque_ports.0.clone(),
        pooled: !args.no_pool,
        protocol: args.upstream_protocol,
        metrics: metrics.clone(),
        limits,
        self_addrs,
        tracker: tracker.clone(),
    });

    let mut inbound_addrs = Vec::new();
    for (listener, target) in inbound_listeners {
        inbound_addrs.push(listener.local_addr()?);
        let inbound = inbound.clone();
        let sd = shutdown.clone();
        let handler =
            move |tcp, source| inbound.clone().connection(tcp, source, target, sd.clone());
        tokio::spawn(accept_loop(
            listener,
            args.max_connections,
            "inbound",
            metrics.clone(),
            shutdown.clone(),
            tracker.clone(),
            handler,
        ));
    }
    let mut outbound_addrs = Vec::new();
    for (listener, target) in outbound_listeners {
        outbound_addrs.push(listener.local_addr()?);
        let outbound = outbound.clone();
        let sd = shutdown.clone();
        let handler =
            move |tcp, source| outbound.clone().connection(tcp, source, target, sd.clone());
        tokio::spawn(accept_loop(
            listener,
            args.max_connections,
            "outbound",
            metrics.clone(),
            shutdown.clone(),
            tracker.clone(),
            handler,
        ));
    }

    let admin_listener = TcpListener::bind(args.admin)
        .await
        .with_context(|| format!("binding the admin listener on {}", args.admin))?;
    let admin_addr = admin_listener.local_addr()?;
    let admin = Arc::new(Admin {
        metrics: metrics.clone(),
        identity: identity.clone(),
        policy: policy.clone(),
        draining: shutdown.clone(),
        app_probes: args.app_probes.clone(),
    });
    // The admin server outlives draining so /ready can say "draining".
    tokio::spawn(admin.serve(admin_listener, CancellationToken::new()));

    info!(?inbound_addrs, ?outbound_addrs, %admin_addr, mtls_mode = ?args.mtls_mode, "ward-proxy listening");
    Ok(Running {
        inbound_addrs,
        outbound_addrs,
        admin_addr,
        identity,
        metrics,
        policy,
        shutdown,
        tracker,
    })
}

/// Starts the discovery stream (policies into `policy`, endpoints on
/// demand into the returned destinations) and, outside Kubernetes, the
/// registration of this workload's address.
#[allow(clippy::too_many_arguments)]
fn start_discovery(
    args: &RunArgs,
    addr: &str,
    identity: &WorkloadIdentity,
    early_renewal: Option<EarlyRenewal>,
    policy: &Arc<PolicyAuthorizer>,
    static_table: EndpointTable,
    quarantine: &Arc<Quarantine>,
    metrics: &Arc<ProxyMetrics>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Arc<Destinations>> {
    let id = match identity.svid.current_id() {
        Some(id) => id,
        None => args.workload_id()?,
    };
    let client =
        || ControlPlaneClient::for_trust_domain(addr, id.trust_domain(), identity.bundles.clone());
    let labels = workload_labels(args)?;
    let discovery = DiscoveryClient::new(DiscoveryConfig {
        client: client()?,
        svid: identity.svid.clone(),
        node: Node {
            pod: args.pod_name.clone(),
            labels: labels.clone(),
            proxy_version: env!("CARGO_PKG_VERSION").to_owned(),
        },
        resource_types: RESOURCE_TYPES.to_vec(),
        max_subscriptions: args.max_destinations,
        extra_hello: Default::default(),
    });
    let destinations = Arc::new(Destinations::discovered(static_table, discovery.clone()));
    let handler = Arc::new(ProxyHandler {
        authorizer: policy.clone(),
        destinations: destinations.clone(),
        trust: identity.trust.clone(),
        quarantine: quarantine.clone(),
        metrics: metrics.clone(),
        early_renewal,
    });
    tokio::spawn(discovery.run(handler, shutdown.clone()));
    // In Kubernetes the control plane knows pods from the API; elsewhere a
    // sidecar in transparent mode says where it is.
    if !args.is_explicit() && args.pod_name.is_none() {
        tokio::spawn(crate::discovery::keep_registered(
            client()?,
            identity.svid.clone(),
            ward_api::discovery::Registration {
                labels,
                opaque_ports: args.opaque_ports.0.clone(),
            },
            shutdown.clone(),
        ));
    }
    Ok(destinations)
}

/// An explicit outbound whose destination is one of the proxy's own
/// listeners would forward to itself forever: refused at start.
fn refuse_loops(outbound: &OutboundListeners, self_addrs: &[SocketAddr]) -> anyhow::Result<()> {
    for (listener, target) in outbound {
        if let outbound::Target::Fixed(dest) = target
            && crate::orig_dst::is_self_destination(*dest, self_addrs)
        {
            anyhow::bail!(
                "--outbound {}={dest}: the destination is this proxy's own listener (a loop)",
                listener.local_addr()?
            );
        }
    }
    Ok(())
}

/// An explicit inbound may not forward to the admin port: the inbound
/// reaches its application from loopback, so every mesh peer would get the
/// admin endpoints kept for callers inside the pod (`/logging`,
/// `/debug/authz/why`, `/ready`). (Transparent mode's `init` leaves the
/// admin port out of the capture.)
fn refuse_admin_as_app(inbound: &[(SocketAddr, u16)], admin: SocketAddr) -> anyhow::Result<()> {
    for (listen, app_port) in inbound {
        anyhow::ensure!(
            admin.port() == 0 || *app_port != admin.port(),
            "--inbound {listen}={app_port}: that is this proxy's admin port (--admin {admin}); mesh peers would reach its local-only endpoints"
        );
    }
    Ok(())
}

/// The policy engine, when there are policies to enforce: from the control
/// plane (nothing allowed until the first set arrives), or from local files
/// (loaded now; an invalid set is an error at start).
fn policy_engine(
    args: &RunArgs,
    identity: &WorkloadIdentity,
    metrics: &Arc<ProxyMetrics>,
) -> anyhow::Result<Option<Arc<PolicyAuthorizer>>> {
    if args.control_plane.is_none() && args.policy_paths.is_empty() {
        return Ok(None);
    }
    anyhow::ensure!(
        args.allow_peers.is_empty(),
        "--allow-peer cannot be combined with policies: write an AuthorizationPolicy instead"
    );
    let id = match identity.svid.current_id() {
        Some(id) => id,
        None => args.workload_id()?,
    };
    let namespace = id
        .namespace()
        .with_context(|| format!("{id} has no namespace: policies select workloads by namespace"))?
        .to_owned();
    let selector = WorkloadSelector {
        namespace,
        labels: workload_labels(args)?,
        options: ward_policy::EvalOptions {
            root_namespace: args.root_namespace.clone(),
            trust_domain: id.trust_domain().to_owned(),
        },
    };
    let engine = Arc::new(PolicyAuthorizer::new(
        selector,
        args.mtls_mode,
        metrics.clone(),
    ));
    if !args.policy_paths.is_empty() {
        let set = ward_policy::PolicySet::load_paths(&args.policy_paths)?;
        engine.update(1, set);
    }
    Ok(Some(engine))
}

fn workload_labels(args: &RunArgs) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let mut labels = match &args.labels_file {
        Some(path) => crate::config::read_labels_file(path)?,
        None => Default::default(),
    };
    labels.extend(args.labels.iter().cloned());
    Ok(labels)
}

type InboundListeners = Vec<(TcpListener, inbound::Target)>;
type OutboundListeners = Vec<(TcpListener, outbound::Target)>;

async fn bind_listeners(args: &RunArgs) -> anyhow::Result<(InboundListeners, OutboundListeners)> {
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))
    };
    let mut inbound = Vec::new();
    let mut outbound = Vec::new();
    if args.is_explicit() {
        for (listen, app_port) in &args.inbound {
            inbound.push((bind(*listen).await?, inbound::Target::AppPort(*app_port)));
        }
        for (listen, dest) in &args.outbound {
            outbound.push((bind(*listen).await?, outbound::Target::Fixed(*dest)));
        }
    } else {
        let capture = crate::capture::listen::bind_all;
        for listener in capture(&args.inbound_capture, "inbound capture").await? {
            inbound.push((listener, inbound::Target::Original));
        }
        for listener in capture(&args.outbound_capture, "outbound capture").await? {
            outbound.push((listener, outbound::Target::Original));
        }
    }
    Ok((inbound, outbound))
}

/// Accepts until shutdown; each connection runs as a tracked task holding
/// one of `max` permits, and connections over the cap are closed at once.
async fn accept_loop<F, Fut>(
    listener: TcpListener,
    max: usize,
    direction: &'static str,
    metrics: Arc<ProxyMetrics>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    handler: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max));
    loop {
        let (tcp, source) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(%err, direction, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            outcome::record_refused(&metrics, direction, source, &Failure::ConnectionLimit);
            continue;
        };
        let connection = handler(tcp, source);
        tracker.spawn(async move {
            connection.await;
            drop(permit);
        });
    }
}

/// `ward-proxy run`: start, serve until SIGTERM or Ctrl-C, drain, return.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let running = start(&args).await?;
    shutdown_signal().await;
    info!(grace = ?args.drain_timeout, "shutting down: no new connections, draining");
    if running.drain(args.drain_timeout).await {
        info!("drained");
    } else {
        warn!("grace period over with connections still open; closing them");
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests;
