//! Kubernetes API watchers feeding the endpoint table and the policy store.
