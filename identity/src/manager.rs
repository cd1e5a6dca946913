//! The workload side of identity: generate a key in memory, send a CSR to
//! the control plane, install the SVID, and renew it at half its lifetime
//! (with jitter, so a fleet started together does not renew together).
//! Failed attempts back off exponentially (jittered, and never longer than
//! an eighth of what is left of the current certificate) while it keeps
//! serving; an attempt that does not finish within
//! [`RotationPolicy::attempt_timeout`] is abandoned and retried, so a
//! renewal that started during an outage cannot hang past it. The private
//! key never leaves this process. The bundle returned with a certificate is
//! one source of the workload's [`Trust`]: it widens what is trusted, and
//! never narrows it on its own.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use time::OffsetDateTime;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::SpiffeId;
use crate::bundle::TrustBundles;
use crate::ca;
use crate::svid::Role;
use crate::tls::{SharedBundles, SvidCell};
use crate::trust::{Source, Trust};

/// What the control plane answers to a CSR.
#[derive(Debug, Clone)]
pub struct IssuedChain {
    /// Leaf first, then intermediates (PEM).
    pub chain_pem: String,
    pub trust_domain: String,
    /// Roots for `trust_domain` (PEM).
    pub bundle_pem: String,
}

/// Something that turns a CSR into a certificate chain: the control plane
/// client in production, a local CA in tests and in standalone mode.
pub trait SvidIssuer: Send + Sync + 'static {
    fn issue(
        &self,
        id: &SpiffeId,
        csr_pem: String,
        current: &Arc<SvidCell>,
    ) -> impl Future<Output = Result<IssuedChain, String>> + Send;
}

/// Issues from a CA held in this process: standalone mode and tests.
pub struct LocalIssuer {
    pub ca: Arc<ca::CertificateAuthority>,
    pub ttl: Duration,
}

impl SvidIssuer for LocalIssuer {
    async fn issue(
        &self,
        id: &SpiffeId,
        csr_pem: String,
        _current: &Arc<SvidCell>,
    ) -> Result<IssuedChain, String> {
        let issued = self
            .ca
            .sign_csr(&csr_pem, id, self.ttl)
            .map_err(|e| e.to_string())?;
        Ok(IssuedChain {
            chain_pem: issued.chain_pem,
            trust_domain: self.ca.trust_domain().to_owned(),
            bundle_pem: self.ca.bundle_pem(),
        })
    }
}

/// When to renew and how to retry.
#[derive(Debug, Clone, Copy)]
pub struct RotationPolicy {
    /// Fraction of the lifetime after which to renew (0.5: at half-life).
    pub renew_at: f64,
    /// Random spread around `renew_at`, as a fraction of the lifetime.
    pub jitter: f64,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Longest one issuance may take before it is abandoned and retried.
    pub attempt_timeout: Duration,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        RotationPolicy {
            renew_at: 0.5,
            jitter: 0.05,
            min_backoff: Duration::from_millis(500),
            // Back within seconds of the control plane's return.
            max_backoff: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(60),
        }
    }
}

/// Counters a caller can export as metrics.
#[derive(Debug, Default)]
pub struct RotationStats {
    pub renewals: AtomicU64,
    pub failures: AtomicU64,
}

/// A handle on a running identity manager.
#[derive(Clone)]
pub struct IdentityHandle {
    id: SpiffeId,
    svid: Arc<SvidCell>,
    trust: Arc<Trust>,
    installed: watch::Receiver<Option<OffsetDateTime>>,
    stats: Arc<RotationStats>,
    early: EarlyRenewal,
}

/// Asks a running manager to renew before its schedule (a CA rotation's
/// request, see [`EarlyRenewal::renew_unless_signed_by`]). Cheap to clone.
#[derive(Clone)]
pub struct EarlyRenewal {
    svid: Arc<SvidCell>,
    /// The latest time the next renewal may start, when one was asked for.
    by: Arc<watch::Sender<Option<tokio::time::Instant>>>,
}

impl EarlyRenewal {
    /// Renews at a random point within `within` unless the certificate in
    /// use was signed by `signer` (DER). A request already pending and due
    /// sooner stands. Returns whether a renewal was scheduled.
    pub fn renew_unless_signed_by(&self, signer: &CertificateDer<'_>, within: Duration) -> bool {
        let Some(current) = self.svid.certified_key() else {
            return false;
        };
        if current
            .cert
            .first()
            .is_some_and(|leaf| crate::svid::signed_by(leaf, signer))
        {
            return false;
        }
        let delay = within.mul_f64(rand::rng().random_range(0.0..1.0));
        let at = tokio::time::Instant::now() + delay;
        self.by.send_if_modified(|by| {
            if by.is_some_and(|sooner| sooner <= at) {
                return false;
            }
            *by = Some(at);
            true
        });
        info!(renew_in = ?delay, "renewal requested by the control plane (CA rotation)");
        true
    }
}

impl IdentityHandle {
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.id
    }

    pub fn svid(&self) -> &Arc<SvidCell> {
        &self.svid
    }

    /// The trusted roots (the union of every [`Trust`] source).
    pub fn bundles(&self) -> &SharedBundles {
        self.trust.shared()
    }

    pub fn trust(&self) -> &Arc<Trust> {
        &self.trust
    }

    /// True once the first SVID has been installed.
    pub fn is_ready(&self) -> bool {
        self.installed.borrow().is_some()
    }

    /// Expiry of the certificate in use, once there is one.
    pub fn not_after(&self) -> Option<OffsetDateTime> {
        *self.installed.borrow()
    }

    pub fn stats(&self) -> &Arc<RotationStats> {
        &self.stats
    }

    /// Renewing before the schedule, when the control plane asks.
    pub fn early_renewal(&self) -> &EarlyRenewal {
        &self.early
    }

    /// Waits for the first SVID; returns its expiry.
    pub async fn ready(&self) -> OffsetDateTime {
        let mut rx = self.installed.clone();
        let value = rx
            .wait_for(Option::is_some)
            .await
            .expect("manager alive while handle exists");
        value.expect("waited for Some")
    }

    /// Waits until a certificate other than the one expiring at `after` is installed.
    pub async fn renewed_after(&self, after: OffsetDateTime) -> OffsetDateTime {
        let mut rx = self.installed.clone();
        let value = rx
            .wait_for(|v| v.is_some_and(|t| t != after))
            .await
            .expect("manager alive while handle exists");
        value.expect("waited for Some")
    }
}

/// Starts the manager task with no trust but what issuance returns. It runs
/// until `shutdown` turns true.
pub fn spawn<I: SvidIssuer>(
    id: SpiffeId,
    issuer: I,
    policy: RotationPolicy,
    shutdown: watch::Receiver<bool>,
) -> IdentityHandle {
    spawn_with_trust(
        id,
        issuer,
        policy,
        Trust::new(TrustBundles::new()),
        shutdown,
    )
}

/// Starts the manager task; each issued certificate's bundle goes to
/// `trust` as its [`Source::Issued`].
pub fn spawn_with_trust<I: SvidIssuer>(
    id: SpiffeId,
    issuer: I,
    policy: RotationPolicy,
    trust: Arc<Trust>,
    mut shutdown: watch::Receiver<bool>,
) -> IdentityHandle {
    let svid = Arc::new(SvidCell::new());
    let (installed_tx, installed) = watch::channel(None);
    let stats = Arc::new(RotationStats::default());
    let (early_tx, mut early_rx) = watch::channel(None);
    let early_tx = Arc::new(early_tx);
    let handle = IdentityHandle {
        id: id.clone(),
        svid: svid.clone(),
        trust: trust.clone(),
        installed,
        stats: stats.clone(),
        early: EarlyRenewal {
            svid: svid.clone(),
            by: early_tx.clone(),
        },
    };
    tokio::spawn(async move {
        let mut backoff = policy.min_backoff;
        loop {
            let attempt =
                tokio::time::timeout(policy.attempt_timeout, obtain(&id, &issuer, &svid, &trust));
            let result = attempt.await.unwrap_or_else(|_| {
                Err(format!(
                    "no answer within {:?}; abandoned",
                    policy.attempt_timeout
                ))
            });
            let wait = match result {
                Ok(not_after) => {
                    stats.renewals.fetch_add(1, Ordering::Relaxed);
                    backoff = policy.min_backoff;
                    // Whatever was asked, this certificate is the signer's.
                    early_tx.send_replace(None);
                    let _ = installed_tx.send(Some(not_after));
                    let wait = renewal_delay(&policy, not_after);
                    info!(spiffe_id = %id, not_after = %crate::rfc3339(not_after), renew_in = ?wait, "installed X.509-SVID");
                    wait
                }
                Err(err) => {
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    let wait = retry_delay(backoff, svid.not_after());
                    backoff = (backoff * 2).min(policy.max_backoff);
                    warn!(spiffe_id = %id, %err, retry_in = ?wait, "obtaining an X.509-SVID failed; keeping the current one");
                    wait
                }
            };
            let scheduled = tokio::time::Instant::now() + wait;
            loop {
                // An early renewal asked for while waiting moves the wake-up
                // forward (never back).
                let due = early_rx
                    .borrow_and_update()
                    .map_or(scheduled, |by| by.min(scheduled));
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => break,
                    changed = early_rx.changed() => if changed.is_err() { break },
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
            }
        }
    });
    handle
}

/// One round: fresh key, CSR, issuance, verification, atomic install.
async fn obtain<I: SvidIssuer>(
    id: &SpiffeId,
    issuer: &I,
    svid: &Arc<SvidCell>,
    trust: &Trust,
) -> Result<OffsetDateTime, String> {
    let key = ca::generate_key();
    let csr = ca::build_csr(&key, id).map_err(|e| format!("building the CSR: {e}"))?;
    let issued = issuer.issue(id, csr, svid).await?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("certificate chain from the control plane: {e}"))?;
    let bundle_error = |e| format!("trust bundle from the control plane: {e}");
    let next_bundles = trust
        .preview_domain(Source::Issued, &issued.trust_domain, &issued.bundle_pem)
        .map_err(bundle_error)?;
    // The identity is checked before the chain is installed: installing
    // starts serving it, and a certificate for this key but another
    // identity must never be presented, not even until the next check.
    let verified = crate::svid::verify_chain(&chain, &next_bundles, Role::Any, UnixTime::now())
        .map_err(|e| format!("the issued certificate does not verify: {e}"))?;
    if verified.spiffe_id != *id {
        return Err(format!(
            "issued certificate is for {}, not {id}",
            verified.spiffe_id
        ));
    }
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let verified = svid
        .install(chain, key, &next_bundles)
        .map_err(|e| format!("the issued certificate does not verify: {e}"))?;
    trust
        .replace_domain(Source::Issued, &issued.trust_domain, &issued.bundle_pem)
        .map_err(bundle_error)?;
    Ok(verified.not_after)
}

/// The wait before retrying: `backoff` with jitter (50 to 100 %, so a fleet
/// does not come back at once), and at most an eighth of what is left of
/// the current certificate, so there are several attempts before it
/// expires.
fn retry_delay(backoff: Duration, not_after: Option<OffsetDateTime>) -> Duration {
    let jittered = backoff.mul_f64(rand::rng().random_range(0.5..=1.0));
    let left = not_after
        .map(|t| (t - OffsetDateTime::now_utc()).max(time::Duration::ZERO))
        .and_then(|d| Duration::try_from(d).ok());
    match left {
        Some(left) => jittered.min(left / 8),
        None => jittered,
    }
}

/// Time until renewal: `renew_at` of the remaining lifetime, ± jitter.
fn renewal_delay(policy: &RotationPolicy, not_after: OffsetDateTime) -> Duration {
    let remaining = (not_after - OffsetDateTime::now_utc()).max(time::Duration::ZERO);
    let remaining = Duration::try_from(remaining).unwrap_or_default();
    let spread = rand::rng().random_range(-policy.jitter..=policy.jitter);
    remaining.mul_f64((policy.renew_at + spread).clamp(0.05, 0.95))
}

#[cfg(test)]
mod tests;
