//! Where the proxy's own identity comes from: the control plane (enrol with
//! a join token or service-account token, then renew over mTLS), or static
//! files (cert-manager, SPIRE, benchmarks) reloaded when they change.
//!
//! What the workload trusts is a [`Trust`]: the `--ca` file (the bootstrap
//! anchor, re-read when it changes, e.g. a ConfigMap update), the bundles
//! the control plane pushes on the discovery stream, and the bundle
//! returned with each certificate, all at once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use ward_api::client::{ControlPlaneClient, ControlPlaneIssuer, CredentialSource};
use ward_api::control_plane_id;
use ward_identity::SpiffeId;
use ward_identity::bundle::TrustBundles;
use ward_identity::manager::{self, EarlyRenewal, RotationPolicy, RotationStats};
use ward_identity::svid;
use ward_identity::tls::{SharedBundles, SvidCell};
use ward_identity::trust::{Source, Trust};

/// How often static identity files are checked for changes.
const FILE_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The workload's certificate and the roots it trusts, both hot-swappable.
#[derive(Clone)]
pub struct WorkloadIdentity {
    pub svid: Arc<SvidCell>,
    /// The roots every handshake checks peers against: `trust`'s union.
    pub bundles: SharedBundles,
    pub trust: Arc<Trust>,
    /// Certificates obtained (or files loaded) and failed attempts.
    pub stats: Arc<RotationStats>,
}

impl WorkloadIdentity {
    /// A certificate is installed.
    pub fn is_ready(&self) -> bool {
        self.svid.is_ready()
    }

    /// The installed certificate's notAfter has passed: renewals failed
    /// until then (e.g. a long control-plane outage). Peers refuse it, so
    /// the workload must not be reported ready; renewal keeps trying.
    pub fn is_expired(&self) -> bool {
        self.svid
            .not_after()
            .is_some_and(|not_after| not_after <= time::OffsetDateTime::now_utc())
    }
}

/// The identity flags of `ward-proxy run` (`config::RunArgs::identity_args`).
pub struct IdentityArgs {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub control_plane: Option<String>,
    pub join_token: Option<String>,
    pub sa_token_file: Option<PathBuf>,
    pub pod_name: Option<String>,
    /// The workload's SPIFFE ID, or why the flags give none.
    pub workload_id: Result<SpiffeId, String>,
}

impl IdentityArgs {
    fn workload_id(&self) -> anyhow::Result<SpiffeId> {
        self.workload_id.clone().map_err(anyhow::Error::msg)
    }
}

/// Starts the configured identity source. Files are loaded before this
/// returns (a bad file is an error at start); the control plane is reached
/// in the background, and the proxy is not ready until it answered.
pub fn start(args: &IdentityArgs, shutdown: CancellationToken) -> anyhow::Result<WorkloadIdentity> {
    start_with_renewal(args, shutdown).map(|(identity, _)| identity)
}

/// [`start`], and with a control plane the handle that renews early when
/// a CA rotation asks (`None` for static files: nothing to renew from).
pub fn start_with_renewal(
    args: &IdentityArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<(WorkloadIdentity, Option<EarlyRenewal>)> {
    match (&args.cert, &args.key, &args.ca, &args.control_plane) {
        (Some(cert), Some(key), Some(ca), None) => {
            start_from_files(cert, key, ca, shutdown).map(|identity| (identity, None))
        }
        (None, None, Some(ca), Some(addr)) => start_from_control_plane(args, addr, ca, shutdown)
            .map(|(identity, early)| (identity, Some(early))),
        _ => anyhow::bail!(
            "no identity source: give --cert, --key and --ca (static files), or --control-plane and --ca"
        ),
    }
}

fn start_from_files(
    cert: &Path,
    key: &Path,
    ca: &Path,
    shutdown: CancellationToken,
) -> anyhow::Result<WorkloadIdentity> {
    let files = IdentityFiles {
        cert: cert.to_owned(),
        key: key.to_owned(),
        ca: ca.to_owned(),
    };
    let svid = Arc::new(SvidCell::new());
    let trust = Trust::new(TrustBundles::new());
    files.load_into(&svid, &trust)?;
    info!(spiffe_id = %svid.current_id().map(|id| id.to_string()).unwrap_or_default(), "identity loaded from files");
    let stats = Arc::new(RotationStats::default());
    stats.renewals.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(files.watch(svid.clone(), trust.clone(), stats.clone(), shutdown));
    Ok(WorkloadIdentity {
        svid,
        bundles: trust.shared().clone(),
        trust,
        stats,
    })
}

fn start_from_control_plane(
    args: &IdentityArgs,
    addr: &str,
    ca: &Path,
    shutdown: CancellationToken,
) -> anyhow::Result<(WorkloadIdentity, EarlyRenewal)> {
    let id = args.workload_id()?;
    let anchor = BootstrapAnchor {
        path: ca.to_owned(),
        trust_domain: id.trust_domain().to_owned(),
    };
    let trust = Trust::new(anchor.load()?);
    tokio::spawn(anchor.watch(trust.clone(), shutdown.clone()));
    // The client trusts the union too: a control plane whose serving
    // certificate comes from a root introduced by a rotation stays reachable.
    let client = ControlPlaneClient::new(
        addr,
        control_plane_id(id.trust_domain())?,
        trust.shared().clone(),
    )?;
    let credential = match (&args.join_token, &args.sa_token_file) {
        (Some(token), _) => CredentialSource::join_token(token.clone()),
        (None, Some(path)) => CredentialSource::ServiceAccountTokenFile(path.clone()),
        (None, None) => {
            anyhow::bail!("enrolling with the control plane needs --join-token or --sa-token-file")
        }
    };
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.cancelled().await;
        let _ = stop_tx.send(true);
    });
    let issuer = ControlPlaneIssuer {
        client,
        credential,
        pod: args.pod_name.clone(),
    };
    let handle = manager::spawn_with_trust(id, issuer, RotationPolicy::default(), trust, stop);
    let identity = WorkloadIdentity {
        svid: handle.svid().clone(),
        bundles: handle.bundles().clone(),
        trust: handle.trust().clone(),
        stats: handle.stats().clone(),
    };
    Ok((identity, handle.early_renewal().clone()))
}

/// The `--ca` file of a sidecar enrolled with the control plane: the roots
/// it starts from, re-read when the file changes (a ConfigMap update during
/// a CA rotation). A change that does not load is logged and the roots in
/// use are kept.
struct BootstrapAnchor {
    path: PathBuf,
    trust_domain: String,
}

impl BootstrapAnchor {
    fn load(&self) -> anyhow::Result<TrustBundles> {
        let pem = std::fs::read_to_string(&self.path)
            .with_context(|| format!("reading {}", self.path.display()))?;
        TrustBundles::new()
            .with_root(&self.trust_domain, &pem)
            .with_context(|| format!("{}", self.path.display()))
    }

    fn stamp(&self) -> Option<(SystemTime, u64)> {
        let meta = std::fs::metadata(&self.path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    }

    async fn watch(self, trust: Arc<Trust>, shutdown: CancellationToken) {
        on_change(|| self.stamp(), shutdown, || match self.load() {
            Ok(roots) => {
                trust.replace(Source::Bootstrap, roots);
                info!(file = %self.path.display(), "trust anchor file changed: reloaded");
            }
            Err(err) => {
                warn!(error = %format!("{err:#}"), "trust anchor file changed but does not load; keeping the roots in use")
            }
        })
        .await;
    }
}

struct IdentityFiles {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

impl IdentityFiles {
    /// Loads all three files and installs them only if they verify together.
    fn load_into(&self, svid: &SvidCell, trust: &Trust) -> anyhow::Result<()> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .with_context(|| format!("{}", self.cert.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("{}: not a PEM certificate chain", self.cert.display()))?;
        let leaf = chain
            .first()
            .with_context(|| format!("{}: no certificate", self.cert.display()))?;
        let id = svid::spiffe_id_of(leaf).with_context(|| format!("{}", self.cert.display()))?;
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .with_context(|| format!("{}: not a PEM private key", self.key.display()))?;
        let ca_pem = std::fs::read_to_string(&self.ca)
            .with_context(|| format!("reading {}", self.ca.display()))?;
        let new_bundles = TrustBundles::new()
            .with_root(id.trust_domain(), &ca_pem)
            .with_context(|| format!("{}", self.ca.display()))?;
        svid.install(chain, key, &new_bundles).with_context(|| {
            format!(
                "{} does not verify against {}",
                self.cert.display(),
                self.ca.display()
            )
        })?;
        trust.replace(Source::Bootstrap, new_bundles);
        Ok(())
    }

    fn stamp(&self) -> Vec<Option<SystemTime>> {
        [&self.cert, &self.key, &self.ca]
            .iter()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }

    /// Polls modification times; a change that does not verify is logged
    /// and the identity in use is kept.
    async fn watch(
        self,
        svid: Arc<SvidCell>,
        trust: Arc<Trust>,
        stats: Arc<RotationStats>,
        shutdown: CancellationToken,
    ) {
        on_change(|| self.stamp(), shutdown, || match self.load_into(&svid, &trust) {
            Ok(()) => {
                stats.renewals.fetch_add(1, Ordering::Relaxed);
                info!(spiffe_id = %svid.current_id().map(|id| id.to_string()).unwrap_or_default(), "identity files changed: reloaded")
            }
            Err(err) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                warn!(error = %format!("{err:#}"), "identity files changed but do not load; keeping the current identity")
            }
        })
        .await;
    }
}

/// Polls `stamp` every [`FILE_POLL_INTERVAL`] and calls `changed` each time
/// it differs from the previous poll, until `shutdown`.
async fn on_change<S: PartialEq>(
    stamp: impl Fn() -> S,
    shutdown: CancellationToken,
    mut changed: impl FnMut(),
) {
    let mut last = stamp();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FILE_POLL_INTERVAL) => {}
            _ = shutdown.cancelled() => return,
        }
        let now = stamp();
        if now != last {
            last = now;
            changed();
        }
    }
}
