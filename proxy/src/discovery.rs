//! The sidecar's use of the discovery stream (the stream itself is
//! `ward_api::client::discovery`): policies go to the policy engine,
//! endpoints to the destination table, trust bundles to the workload's
//! trust (beside its `--ca` anchor), each applied on its own, so an
//! endpoint change never re-parses policies or re-checks connections;
//! quarantines go to the quarantine set, which cuts the connections of the
//! peers it names. An
//! update that cannot be applied is NACKed and the previous state stays in
//! force. Outside Kubernetes the sidecar also registers its address.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use ward_api::REGISTER_PATH;
use ward_api::client::discovery::DiscoveryHandler;
use ward_api::client::{ControlPlaneClient, channel_body};
use ward_api::discovery::{Registration, Resource, ResourceType, Update, encode_line};
use ward_identity::TrustBundles;
use ward_identity::manager::EarlyRenewal;
use ward_identity::tls::SvidCell;
use ward_identity::trust::{Source, Trust};
use ward_policy::PolicySet;

use crate::endpoints::Destinations;
use crate::metrics::ProxyMetrics;
use crate::policy::PolicyAuthorizer;
use crate::quarantine::{Quarantine, QuarantineSet};

/// The resource types this sidecar understands.
pub const RESOURCE_TYPES: [ResourceType; 5] = [
    ResourceType::Policy,
    ResourceType::Endpoint,
    ResourceType::Service,
    ResourceType::Bundle,
    ResourceType::Quarantine,
];

pub struct ProxyHandler {
    pub authorizer: Arc<PolicyAuthorizer>,
    pub destinations: Arc<Destinations>,
    pub trust: Arc<Trust>,
    pub quarantine: Arc<Quarantine>,
    pub metrics: Arc<ProxyMetrics>,
    /// Renews the workload's certificate early when a bundle asks (a CA
    /// rotation's activate step); `None` when nothing renews it.
    pub early_renewal: Option<EarlyRenewal>,
}

impl DiscoveryHandler for ProxyHandler {
    fn apply(&self, update: &Update, state: &BTreeMap<String, Resource>) -> Result<(), String> {
        let result = match update.resource_type {
            ResourceType::Policy => self.apply_policies(update.system_version, state),
            ResourceType::Endpoint => self.destinations.apply(update),
            ResourceType::Service => self.destinations.apply_services(update),
            ResourceType::Bundle => self.apply_bundles(state),
            ResourceType::Quarantine => QuarantineSet::from_resources(update.system_version, state)
                .map(|set| self.quarantine.apply(set)),
            // Not asked for; nothing to apply.
            _ => Ok(()),
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.metrics
            .control_plane_last_update
            .set(now.as_secs_f64());
        if result.is_err() {
            self.metrics
                .discovery_nacks
                .with_label_values(&[update.resource_type.as_str()])
                .inc();
        }
        result
    }

    fn forget(&self, resource_type: ResourceType, names: &[String]) {
        match resource_type {
            ResourceType::Endpoint => self.destinations.forget(names),
            ResourceType::Service => self.destinations.forget_services(names),
            _ => {}
        }
    }

    fn connected(&self, up: bool) {
        self.metrics.control_plane_connected.set(i64::from(up));
    }
}

impl ProxyHandler {
    /// Parses every policy document the workload holds after the update, as
    /// one set; a set that does not load here (a version skew: the control
    /// plane validated it) is refused whole.
    fn apply_policies(
        &self,
        version: u64,
        state: &BTreeMap<String, Resource>,
    ) -> Result<(), String> {
        let mut texts = Vec::with_capacity(state.len());
        for resource in state.values() {
            let body: ward_api::discovery::PolicyBody = resource.decode()?;
            texts.push((resource.name.clone(), body.yaml));
        }
        let set = PolicySet::parse_texts(&texts).map_err(|e| e.to_string())?;
        self.authorizer.update(version, set);
        Ok(())
    }

    /// Every bundle the workload holds after the update becomes the
    /// pushed part of its trust (so a root removed from the control plane's
    /// bundles leaves, unless the `--ca` anchor still holds it), and the
    /// roots a rotation retired leave every source. One bundle that does
    /// not load refuses the whole update. A rotation's request to renew
    /// early is honoured once the update is in force.
    fn apply_bundles(&self, state: &BTreeMap<String, Resource>) -> Result<(), String> {
        let mut bundles = TrustBundles::new();
        let mut distrusted = TrustBundles::new();
        let mut renew = Vec::new();
        for resource in state.values() {
            let body: ward_api::discovery::BundleBody = resource.decode()?;
            if body.trust_domain != resource.name {
                return Err(format!(
                    "bundle {:?} holds the roots of {:?}",
                    resource.name, body.trust_domain
                ));
            }
            bundles
                .add_pem(&body.trust_domain, &body.roots_pem)
                .map_err(|e| format!("bundle {:?}: {e}", resource.name))?;
            if !body.distrusted_pem.is_empty() {
                distrusted
                    .add_pem(&body.trust_domain, &body.distrusted_pem)
                    .map_err(|e| format!("bundle {:?} (distrusted): {e}", resource.name))?;
            }
            if let Some(request) = body.renew {
                let signer = CertificateDer::from_pem_slice(request.signer_pem.as_bytes())
                    .map_err(|e| format!("bundle {:?} (renew signer): {e}", resource.name))?;
                renew.push((signer, Duration::from_secs(request.within_seconds)));
            }
        }
        self.trust.set_distrusted(distrusted);
        self.trust.replace(Source::Pushed, bundles);
        if let Some(early) = &self.early_renewal {
            for (signer, within) in renew {
                early.renew_unless_signed_by(&signer, within);
            }
        }
        Ok(())
    }
}

/// Keeps this workload's address registered with the control plane while
/// the sidecar runs (workloads outside Kubernetes), re-registering after
/// a lost connection.
pub async fn keep_registered(
    client: ControlPlaneClient,
    svid: Arc<SvidCell>,
    registration: Registration,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = tokio::select! {
            r = register_once(&client, &svid, &registration) => r,
            _ = shutdown.cancelled() => return,
        };
        if let Err(err) = result {
            warn!(error = %err, retry_in = ?backoff, "address registration with the control plane lost");
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return,
        }
        backoff = if svid.is_ready() {
            (backoff * 2).min(Duration::from_secs(10))
        } else {
            Duration::from_millis(100)
        };
    }
}

async fn register_once(
    client: &ControlPlaneClient,
    svid: &Arc<SvidCell>,
    registration: &Registration,
) -> anyhow::Result<()> {
    anyhow::ensure!(svid.is_ready(), "no certificate yet");
    let mut sender = client.connect(Some(svid)).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let line = encode_line(registration);
    tx.try_send(Bytes::from(line)).expect("room for one line");
    let request = client.request(Method::POST, REGISTER_PATH, channel_body(rx));
    let response = client.send(&mut sender, request).await?;
    info!("address registered with the control plane");
    let mut body = response.into_body();
    // Held open (keeping `tx`) until the control plane or the connection
    // goes away.
    while let Some(frame) = body.frame().await {
        frame?;
    }
    drop(tx);
    anyhow::bail!("the control plane ended the registration")
}
