//! Obtaining SVIDs from the control plane: with a credential the first
//! time, then by renewing over mTLS with the current SVID.

use std::sync::Arc;

use ward_identity::SpiffeId;
use ward_identity::tls::SvidCell;

use super::ControlPlaneClient;
use crate::svid::{Credential, SvidRequest};

/// How a workload proves its identity on first enrolment.
pub enum CredentialSource {
    /// A one-time join token (used once; renewals go over mTLS).
    JoinToken(std::sync::Mutex<Option<String>>),
    /// A projected service-account token file, re-read at every use because
    /// the kubelet rotates it.
    ServiceAccountTokenFile(std::path::PathBuf),
}

impl CredentialSource {
    pub fn join_token(token: impl Into<String>) -> Self {
        CredentialSource::JoinToken(std::sync::Mutex::new(Some(token.into())))
    }

    /// The credential to send. A join token stays here until an SVID was
    /// obtained with it, so a network failure does not lose it.
    fn get(&self) -> Result<Credential, String> {
        match self {
            CredentialSource::JoinToken(token) => token
                .lock()
                .expect("not poisoned")
                .clone()
                .map(Credential::JoinToken)
                .ok_or_else(|| {
                    "the join token was already used and no valid SVID is left to renew with".into()
                }),
            CredentialSource::ServiceAccountTokenFile(path) => std::fs::read_to_string(path)
                .map(|t| Credential::ServiceAccountToken(t.trim().to_owned()))
                .map_err(|e| format!("reading {}: {e}", path.display())),
        }
    }

    fn used(&self) {
        if let CredentialSource::JoinToken(token) = self {
            token.lock().expect("not poisoned").take();
        }
    }
}

/// Obtains SVIDs from the control plane: with the credential the first
/// time, then by renewing over mTLS with the current SVID.
pub struct ControlPlaneIssuer {
    pub client: ControlPlaneClient,
    pub credential: CredentialSource,
    /// The pod this workload is (Kubernetes), checked against the token.
    pub pod: Option<String>,
}

impl ward_identity::manager::SvidIssuer for ControlPlaneIssuer {
    async fn issue(
        &self,
        id: &SpiffeId,
        csr_pem: String,
        current: &Arc<SvidCell>,
    ) -> Result<ward_identity::manager::IssuedChain, String> {
        let renewing = current.is_ready()
            && current
                .not_after()
                .is_some_and(|t| t > time::OffsetDateTime::now_utc());
        // A service-account token is sent on renewal too, so the control
        // plane re-checks the pod behind it (a deleted pod's key renews
        // nothing); a join token only once. Unreadable on renewal: renew
        // over mTLS alone.
        let credential = match (&self.credential, renewing) {
            (CredentialSource::ServiceAccountTokenFile(_), true) => self.credential.get().ok(),
            (_, true) => None,
            (_, false) => Some(self.credential.get()?),
        };
        let request = SvidRequest {
            spiffe_id: id.to_string(),
            csr: csr_pem,
            credential,
            pod: self.pod.clone(),
        };
        let answer = self
            .client
            .request_svid(&request, renewing.then_some(current))
            .await
            .map_err(|e| e.to_string())?;
        if !renewing {
            self.credential.used();
        }
        Ok(ward_identity::manager::IssuedChain {
            chain_pem: answer.chain_pem,
            trust_domain: answer.trust_domain,
            bundle_pem: answer.bundle_pem,
        })
    }
}
