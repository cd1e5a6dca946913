//! The control plane's own serving certificate: issued by its CA at start
//! for `spiffe://<td>/ns/ward-system/sa/ward-control-plane` (plus DNS names
//! so curl and Kubernetes clients can verify it too), held in memory only,
//! and re-issued at half-life without restarting the listener.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::watch;
use tracing::{info, warn};
use ward_identity::SpiffeId;
use ward_identity::bundle::TrustBundles;
use ward_identity::ca::{self, CertificateAuthority};
use ward_identity::tls::{self, SharedBundles, SvidCell};

use ward_api::control_plane_id;

use crate::trust_bundles::BundleSet;

const SERVING_TTL: Duration = Duration::from_secs(24 * 3600);
/// The wait before another attempt after a failed issuance.
const RETRY: Duration = Duration::from_secs(2);

pub struct ServingIdentity {
    id: SpiffeId,
    dns_names: Vec<String>,
    svid: Arc<SvidCell>,
    bundles: SharedBundles,
}

impl ServingIdentity {
    /// Issued by `ca`; client certificates are verified against `roots_pem`
    /// (the CA's trust domain's distributed roots: both CAs' during a
    /// rotation).
    pub fn new(
        ca: &CertificateAuthority,
        roots_pem: &str,
        extra_dns_names: &[String],
    ) -> anyhow::Result<Self> {
        let id = control_plane_id(ca.trust_domain())?;
        let mut dns_names = vec!["localhost".to_owned()];
        dns_names.extend(extra_dns_names.iter().cloned());
        let bundles =
            tls::shared_bundles(TrustBundles::new().with_root(ca.trust_domain(), roots_pem)?);
        let serving = ServingIdentity {
            id,
            dns_names,
            svid: Arc::new(SvidCell::new()),
            bundles,
        };
        serving.issue(ca)?;
        Ok(serving)
    }

    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.id
    }

    /// TLS 1.3, ALPN h2 then http/1.1; client certificates optional (first
    /// enrolment has none) but verified when presented (renewal).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let mut config = Arc::unwrap_or_clone(tls::server_config_optional_client_auth(
            self.svid.clone(),
            self.bundles.clone(),
        ));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    fn issue(&self, ca: &CertificateAuthority) -> anyhow::Result<()> {
        let key = ca::generate_key();
        let ips = [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ];
        let issued = ca.issue_for_key(
            &self.id,
            &self.dns_names,
            &ips,
            &key,
            SERVING_TTL.min(ca.max_ttl()),
        )?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        self.svid
            .install(issued.chain_der, key, &self.bundles.load())?;
        Ok(())
    }

    /// Re-issues the serving certificate at half its lifetime, and at once
    /// when `reissue` is told (a CA rotation changed the signer), until
    /// shutdown; follows the CA's trust domain's roots in `bundles` for the
    /// client certificates it accepts.
    pub async fn renew_forever(
        self,
        signer: crate::rotation::Signer,
        mut bundles: watch::Receiver<Arc<BundleSet>>,
        reissue: Arc<tokio::sync::Notify>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        // After a failed issuance (a rotation step whose roots had not
        // reached this task yet), retry soon rather than at half-life.
        let mut failed = false;
        loop {
            let wait = self
                .svid
                .not_after()
                .map(|t| (t - time::OffsetDateTime::now_utc()) / 2)
                .and_then(|d| Duration::try_from(d).ok())
                .unwrap_or(Duration::from_secs(60));
            let wait = if failed { wait.min(RETRY) } else { wait };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = reissue.notified() => {}
                changed = bundles.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let roots = bundles.borrow_and_update().own_pem.clone();
                    let trust_domain = signer.load().trust_domain().to_owned();
                    match TrustBundles::new().with_root(&trust_domain, &roots) {
                        Ok(trusted) => self.bundles.store(Arc::new(trusted)),
                        Err(err) => warn!(%err, "the trust bundle does not load; client certificates are checked against the previous roots"),
                    }
                    continue;
                }
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            let ca = signer.load_full();
            failed = match self.issue(&ca) {
                Ok(()) => {
                    info!(spiffe_id = %self.id, ca = %ca.fingerprint_sha256(), "issued the control plane's serving certificate");
                    false
                }
                Err(err) => {
                    warn!(%err, retry_in = ?RETRY, "issuing the serving certificate failed; retrying");
                    true
                }
            };
        }
    }
}
