//! Enforcement of AuthorizationPolicy and PeerAuthentication: the compiled
//! policies for this workload behind an ArcSwap (one atomic load per
//! decision), swapped whole when a new set arrives. Open TCP connections,
//! tunnels and plaintext connections are re-evaluated on every change and
//! closed when no longer allowed.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use ward_policy::{
    Action, Decision, EvalOptions, MtlsMode as PolicyMtlsMode, NoHeaders, PolicySet,
    Protocol as PolicyProtocol, RequestAttrs, WorkloadPolicy,
};

use crate::authz::{Authorizer, ConnInfo, Protocol, Verdict};
use crate::metrics::ProxyMetrics;

/// How inbound connections must be protected (Istio's PeerAuthentication
/// modes): `--mtls-mode`, or PeerAuthentication once policies arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum MtlsMode {
    /// mTLS required; plaintext is refused.
    #[default]
    Strict,
    /// mTLS and plaintext both accepted (plaintext peers have no identity).
    Permissive,
    /// No mTLS termination: everything is passed through as it arrives.
    Disable,
}

/// A policy set in force for this workload.
pub struct PolicyState {
    pub version: u64,
    pub set: PolicySet,
    pub workload: WorkloadPolicy,
}

/// Who this workload is, for selecting policies.
#[derive(Debug, Clone)]
pub struct WorkloadSelector {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub options: EvalOptions,
}

pub struct PolicyAuthorizer {
    state: ArcSwapOption<PolicyState>,
    selector: WorkloadSelector,
    /// With a control plane, nothing is allowed before the first set
    /// arrived (fail closed); with local files the set is there at start.
    default_mtls: MtlsMode,
    metrics: Arc<ProxyMetrics>,
    tracked: Mutex<HashMap<u64, Tracked>>,
    next_id: AtomicU64,
}

/// What an open connection is checked against again when the policy set
/// (and with it the mTLS mode) changes. A plaintext connection is also
/// closed when its port became STRICT.
pub enum Recheck {
    /// Opaque TCP, or a CONNECT tunnel: the connection's TCP decision.
    Tcp,
    /// An upgraded tunnel: the request that opened it.
    Request(Box<http::request::Parts>),
    /// An HTTP connection (decided per request): only the mTLS mode.
    Mode,
}

struct Tracked {
    conn: Arc<ConnInfo>,
    recheck: Recheck,
    close: CancellationToken,
}

/// Keeps a connection registered for re-evaluation while it lives;
/// `close` is cancelled when a change no longer allows it.
pub struct Registration {
    authorizer: Arc<PolicyAuthorizer>,
    id: u64,
    pub close: CancellationToken,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.authorizer
            .tracked
            .lock()
            .expect("not poisoned")
            .remove(&self.id);
    }
}

impl PolicyAuthorizer {
    pub fn new(
        selector: WorkloadSelector,
        default_mtls: MtlsMode,
        metrics: Arc<ProxyMetrics>,
    ) -> Self {
        PolicyAuthorizer {
            state: ArcSwapOption::empty(),
            selector,
            default_mtls,
            metrics,
            tracked: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        }
    }

    pub fn has_policy(&self) -> bool {
        self.state.load().is_some()
    }

    pub fn version(&self) -> Option<u64> {
        self.state.load().as_ref().map(|s| s.version)
    }

    /// The set in force now, whole (the admin's `/debug/authz/why`).
    pub fn current(&self) -> Option<Arc<PolicyState>> {
        self.state.load_full()
    }

    /// Who this workload is, as its policies are selected.
    pub fn selector(&self) -> &WorkloadSelector {
        &self.selector
    }

    /// Puts a new set in force and re-checks every tracked connection.
    pub fn update(&self, version: u64, set: PolicySet) {
        let s = &self.selector;
        let workload = set.for_workload(&s.namespace, &s.labels, &s.options);
        let count = workload.policies().count();
        self.state.store(Some(Arc::new(PolicyState {
            version,
            set,
            workload,
        })));
        self.metrics.policy_version.set(version as i64);
        info!(version, policies = count, "policy set in force");
        self.reevaluate();
    }

    /// The mTLS mode for an inbound port: PeerAuthentication when the set
    /// has any, else the configured default.
    pub fn mtls_mode(&self, port: u16) -> MtlsMode {
        let state = self.state.load();
        let Some(state) = state.as_ref() else {
            return self.default_mtls;
        };
        if state.set.peer_authentications().next().is_none() {
            return self.default_mtls;
        }
        let s = &self.selector;
        match state
            .set
            .mtls_mode(&s.namespace, &s.labels, port, &s.options)
        {
            PolicyMtlsMode::Disable => MtlsMode::Disable,
            PolicyMtlsMode::Permissive => MtlsMode::Permissive,
            PolicyMtlsMode::Strict | PolicyMtlsMode::Unset => MtlsMode::Strict,
        }
    }

    pub fn track(self: &Arc<Self>, conn: Arc<ConnInfo>, recheck: Recheck) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let close = CancellationToken::new();
        self.tracked.lock().expect("not poisoned").insert(
            id,
            Tracked {
                conn,
                recheck,
                close: close.clone(),
            },
        );
        Registration {
            authorizer: self.clone(),
            id,
            close,
        }
    }

    fn reevaluate(&self) {
        let tracked = self.tracked.lock().expect("not poisoned");
        for t in tracked.values() {
            if t.close.is_cancelled() {
                continue;
            }
            let verdict = self.recheck(t);
            if !verdict.allowed {
                let (ns, name) = verdict.policy_labels();
                self.metrics
                    .authz_terminations
                    .with_label_values(&[ns, name])
                    .inc();
                let kind = match t.recheck {
                    Recheck::Tcp => "tcp",
                    Recheck::Request(_) => "tunnel",
                    Recheck::Mode => "http",
                };
                info!(target: "ward::access", direction = "inbound", protocol = kind, peer = ?t.conn.peer_id.as_ref().map(|p| p.as_str()), source = %t.conn.source, decision = "deny", policy = %verdict.policy_display(), reason = verdict.reason, "open connection closed by a policy change");
                t.close.cancel();
            }
        }
    }

    fn recheck(&self, t: &Tracked) -> Verdict {
        if t.conn.peer_id.is_none() && self.mtls_mode(t.conn.destination.port()) == MtlsMode::Strict
        {
            return Verdict::deny("plaintext in strict mode");
        }
        match &t.recheck {
            Recheck::Tcp => self.decide_tcp(&t.conn),
            Recheck::Request(parts) => Authorizer::request(self, &t.conn, parts),
            Recheck::Mode => Verdict::allow("mode allows plaintext"),
        }
    }

    fn decide_tcp(&self, conn: &ConnInfo) -> Verdict {
        let attrs = RequestAttrs {
            protocol: PolicyProtocol::Tcp,
            source_principal: conn.peer_id.as_ref(),
            source_ip: conn.source.ip(),
            destination_ip: conn.destination.ip(),
            destination_port: conn.destination.port(),
            method: None,
            path: None,
            host: None,
            headers: &NoHeaders,
        };
        self.decide(&attrs, "tcp", conn.source)
    }

    fn decide(
        &self,
        attrs: &RequestAttrs<'_>,
        protocol: &'static str,
        source: SocketAddr,
    ) -> Verdict {
        let state = self.state.load();
        let Some(state) = state.as_ref() else {
            return Verdict::deny("no policy received from the control plane yet");
        };
        let decision = state.workload.evaluate(attrs);
        self.record_shadow_matches(&decision, protocol, attrs, source);
        Verdict {
            allowed: decision.allowed,
            policy: decision.policy.cloned(),
            rule: decision.rule,
            reason: decision.reason.as_str(),
        }
    }

    /// Dry-run and AUDIT matches never decide; they are counted and logged.
    fn record_shadow_matches(
        &self,
        decision: &Decision<'_>,
        protocol: &'static str,
        attrs: &RequestAttrs<'_>,
        source: SocketAddr,
    ) {
        for m in &decision.dry_run_matches {
            let action = match m.action {
                Action::Deny => "dry_run_deny",
                Action::Allow => "dry_run_allow",
                Action::Audit => "audit",
            };
            self.metrics
                .authz
                .with_label_values(&[action, &m.policy.namespace, &m.policy.name, protocol])
                .inc();
            info!(target: "ward::access", dry_run = true, policy = %m.policy, rule = m.rule, would = action, peer = ?attrs.source_principal.map(|p| p.as_str()), %source, path = ?attrs.path, enforced_decision = if decision.allowed { "allow" } else { "deny" }, "dry-run policy matched");
        }
        for m in &decision.audit_matches {
            self.metrics
                .authz
                .with_label_values(&["audit", &m.policy.namespace, &m.policy.name, protocol])
                .inc();
            info!(target: "ward::access", audit = true, policy = %m.policy, rule = m.rule, peer = ?attrs.source_principal.map(|p| p.as_str()), path = ?attrs.path, "AUDIT policy matched");
        }
    }
}

impl Authorizer for PolicyAuthorizer {
    fn connection(&self, conn: &ConnInfo, protocol: Protocol) -> Verdict {
        match protocol {
            // HTTP is decided per request.
            Protocol::Http => Verdict::allow("decided per request"),
            Protocol::Tcp => self.decide_tcp(conn),
        }
    }

    fn request(&self, conn: &ConnInfo, request: &http::request::Parts) -> Verdict {
        let host = request.uri.authority().map(|a| a.as_str()).or_else(|| {
            request
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        let path = request
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let attrs = RequestAttrs {
            protocol: PolicyProtocol::Http,
            source_principal: conn.peer_id.as_ref(),
            source_ip: conn.source.ip(),
            destination_ip: conn.destination.ip(),
            destination_port: conn.destination.port(),
            method: Some(request.method.as_str()),
            path: Some(path),
            host,
            headers: &request.headers,
        };
        self.decide(&attrs, "http", conn.source)
    }
}

/// Local policy files (no control plane): loaded at start, reloaded when
/// they change. An invalid change is logged and ignored.
pub fn watch_files(
    paths: Vec<std::path::PathBuf>,
    authorizer: Arc<PolicyAuthorizer>,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> {
    // What each file holds (hashed): a rewrite within one mtime tick, or
    // of the same length, still counts as a change.
    let fingerprint = |paths: &[std::path::PathBuf]| -> Vec<(std::path::PathBuf, Option<u64>)> {
        use std::hash::{Hash, Hasher};
        let mut out = Vec::new();
        for p in paths {
            let entries: Vec<std::path::PathBuf> = if p.is_dir() {
                std::fs::read_dir(p)
                    .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
                    .unwrap_or_default()
            } else {
                vec![p.clone()]
            };
            for e in entries {
                let hash = std::fs::read(&e).ok().map(|bytes| {
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    bytes.hash(&mut h);
                    h.finish()
                });
                out.push((e, hash));
            }
        }
        out.sort();
        out
    };
    // Taken now, not when the task first runs: a change written right after
    // this call is never mistaken for the starting state.
    let mut seen = fingerprint(&paths);
    async move {
        let mut version = authorizer.version().unwrap_or(0);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
                _ = shutdown.cancelled() => return,
            }
            let now = fingerprint(&paths);
            if now == seen {
                continue;
            }
            seen = now;
            match PolicySet::load_paths(&paths) {
                Ok(set) => {
                    version += 1;
                    authorizer.update(version, set);
                }
                Err(err) => {
                    authorizer.metrics.policy_file_rejections.inc();
                    warn!(error = %err, "policy files changed but do not load; keeping the policies in force")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(methods: &str) -> String {
        format!(
            "apiVersion: security.ward.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: web, namespace: shop}}\nspec:\n  rules:\n  - to:\n    - operation: {{methods: [{methods}]}}\n"
        )
    }

    async fn wait_for_version(authorizer: &PolicyAuthorizer, version: u64) -> bool {
        for _ in 0..100 {
            if authorizer.version() == Some(version) {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        false
    }

    #[tokio::test]
    async fn local_policy_files_are_reloaded_and_invalid_changes_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("web.yaml");
        std::fs::write(&file, policy("GET")).unwrap();
        let authorizer = Arc::new(PolicyAuthorizer::new(
            WorkloadSelector {
                namespace: "shop".into(),
                labels: BTreeMap::new(),
                options: EvalOptions::default(),
            },
            MtlsMode::Strict,
            Arc::new(ProxyMetrics::new()),
        ));
        authorizer.update(
            1,
            PolicySet::load_paths(std::slice::from_ref(&file)).unwrap(),
        );
        let shutdown = CancellationToken::new();
        tokio::spawn(watch_files(
            vec![file.clone()],
            authorizer.clone(),
            shutdown.clone(),
        ));

        // Same length, new contents, possibly within the same mtime tick.
        std::fs::write(&file, policy("PUT")).unwrap();
        assert!(
            wait_for_version(&authorizer, 2).await,
            "the change was not loaded"
        );
        // An invalid change is seen, refused and counted; the set stays.
        std::fs::write(&file, "kind: AuthorizationPolicy\nspec: {action: MAYBE}\n").unwrap();
        let rejections = &authorizer.metrics.policy_file_rejections;
        for _ in 0..600 {
            if rejections.get() > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(
            rejections.get(),
            1,
            "the watcher never saw the invalid change"
        );
        assert_eq!(authorizer.version(), Some(2));
        shutdown.cancel();
    }
}
