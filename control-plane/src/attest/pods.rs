//! The pod a service-account token is bound to must be a meshed pod the
//! control plane sees in the cluster now, with the same UID and service
//! account. TokenReview checks that the pod exists; a token checked
//! offline against the JWKS would stay valid after its pod is deleted, so
//! this check closes that gap for both.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{ObjectRef, Store};

use super::{AttestError, ServiceAccountIdentity};

/// How long an attestation waits for the first pod list after start-up.
const SYNC_WAIT: Duration = Duration::from_secs(5);

/// The meshed pods, from the Kubernetes source's reflector.
#[derive(Debug, Clone)]
pub struct PodDirectory(pub Store<Pod>);

impl PodDirectory {
    pub async fn check(&self, identity: &ServiceAccountIdentity) -> Result<(), AttestError> {
        if tokio::time::timeout(SYNC_WAIT, self.0.wait_until_ready())
            .await
            .map_or(true, |ready| ready.is_err())
        {
            return Err(AttestError::PodsNotSynced);
        }
        let name = identity
            .pod_name
            .as_deref()
            .ok_or(AttestError::TokenNotBoundToPod)?;
        let unknown = || AttestError::PodUnknown {
            namespace: identity.namespace.clone(),
            name: name.to_owned(),
        };
        let pod = self
            .0
            .get(&ObjectRef::new(name).within(&identity.namespace))
            .ok_or_else(unknown)?;
        let uid = pod.metadata.uid.as_deref();
        if identity.pod_uid.is_some() && identity.pod_uid.as_deref() != uid {
            // Same name, another pod: the token's pod is gone.
            return Err(unknown());
        }
        let service_account = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.as_deref())
            .unwrap_or("default");
        if service_account != identity.service_account {
            return Err(AttestError::PodServiceAccountMismatch {
                pod: format!("{}/{name}", identity.namespace),
                pod_service_account: service_account.to_owned(),
                token_service_account: identity.service_account.clone(),
            });
        }
        Ok(())
    }
}

impl PodDirectory {
    /// The labels and addresses of pod `namespace/name`, which must run as
    /// `service_account`: what selects policies for a sidecar in
    /// Kubernetes, taken from the cluster rather than from the sidecar.
    pub fn labels_of(
        &self,
        namespace: &str,
        name: &str,
        service_account: &str,
    ) -> Result<
        (
            std::collections::BTreeMap<String, String>,
            Vec<std::net::IpAddr>,
        ),
        String,
    > {
        let pod = self
            .0
            .get(&ObjectRef::new(name).within(namespace))
            .ok_or_else(|| format!("no meshed pod {namespace}/{name} in the cluster"))?;
        let pod_sa = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.as_deref())
            .unwrap_or("default");
        if pod_sa != service_account {
            return Err(format!(
                "pod {namespace}/{name} runs as service account {pod_sa:?}, not {service_account:?}"
            ));
        }
        let ips = pod
            .status
            .iter()
            .flat_map(|s| s.pod_ips.iter().flatten())
            .filter_map(|ip| ip.ip.parse().ok())
            .collect();
        Ok((pod.metadata.labels.clone().unwrap_or_default(), ips))
    }
}
