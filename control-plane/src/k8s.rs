//! The control plane's view of a Kubernetes cluster. The code that talks to
//! the API server is thin ([`kube_sources`]: kube-runtime watchers and status
//! patches); what it feeds is pure and tested without an API server:
//!
//! - [`source::WatcherAdapter`]: watcher events → [`WatchEvent`]s, a relist
//!   applied atomically;
//! - [`endpoints::EndpointTable`]: pod IP → (SPIFFE ID, namespace, labels)
//!   for meshed pods, versioned, published on a `tokio::sync::watch`;
//! - [`catalog::PolicyCatalog`]: the policy custom resources, validated one
//!   by one, with the status each should report;
//! - [`leader`]: which replica writes those statuses (a Lease);
//! - [`quarantines`]: the `Quarantine` objects, watched by every replica
//!   ([`quarantine_api`]: `ward quarantine --kubernetes` writes them).

pub mod catalog;
pub mod endpoints;
pub mod kube_sources;
pub mod leader;
pub mod quarantine_api;
pub mod quarantines;
pub mod source;
#[cfg(test)]
mod tests;

/// What a watch delivers, after a watcher's initial list is assembled.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent<T> {
    /// Created or changed.
    Applied(T),
    Deleted(T),
    /// A full relist (first start, or after a dropped watch): everything
    /// that exists now; anything not in it is gone.
    Restarted(Vec<T>),
}

/// A Kubernetes API client (in-cluster service account, or a kubeconfig).
#[derive(Clone)]
pub struct ApiClient(pub kube::Client);

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiClient")
    }
}

impl ApiClient {
    /// The in-cluster configuration when running in a pod, else `KUBECONFIG`.
    pub async fn infer() -> anyhow::Result<Self> {
        let client = kube::Client::try_default().await.map_err(|e| {
            anyhow::anyhow!(
                "no Kubernetes API access (in-cluster service account or KUBECONFIG): {e}"
            )
        })?;
        Ok(ApiClient(client))
    }
}
