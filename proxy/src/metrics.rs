//! Sidecar metrics on the admin port. Labels are fixed enums and
//! identities, never paths, IPs or header values (bounded cardinality).

use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

pub struct ProxyMetrics {
    registry: Registry,
    pub tcp_opened: IntCounterVec,
    pub tcp_closed: IntCounterVec,
    pub tcp_open: IntGaugeVec,
    pub requests: IntCounterVec,
    pub tls_failures: IntCounterVec,
    pub refused: IntCounterVec,
    pub authz: IntCounterVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("registered once");
    c
}

impl ProxyMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let tcp_open = IntGaugeVec::new(
            Opts::new(
                "ward_tcp_connections_open",
                "TCP connections currently open.",
            ),
            &["direction"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(tcp_open.clone()))
            .expect("registered once");
        ProxyMetrics {
            tcp_opened: counter(
                &registry,
                "ward_tcp_connections_opened_total",
                "TCP connections accepted.",
                &["direction"],
            ),
            tcp_closed: counter(
                &registry,
                "ward_tcp_connections_closed_total",
                "TCP connections closed.",
                &["direction"],
            ),
            tcp_open,
            requests: counter(
                &registry,
                "ward_requests_total",
                "HTTP requests proxied, by direction and response status code.",
                &["direction", "code"],
            ),
            tls_failures: counter(
                &registry,
                "ward_tls_handshake_failures_total",
                "TLS handshakes that failed, by direction and reason.",
                &["direction", "reason"],
            ),
            refused: counter(
                &registry,
                "ward_connections_refused_total",
                "Connections refused before proxying, by direction and reason.",
                &["direction", "reason"],
            ),
            authz: counter(
                &registry,
                "ward_authorization_decisions_total",
                "Authorization decisions, by action and protocol.",
                &["action", "protocol"],
            ),
            registry,
        }
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let mut families = self.registry.gather();
        families.extend(prometheus::gather());
        TextEncoder::new()
            .encode(&families, &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("exposition is UTF-8")
    }
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts a connection open for as long as it lives.
pub struct ConnectionGuard {
    metrics: std::sync::Arc<ProxyMetrics>,
    direction: &'static str,
}

impl ConnectionGuard {
    pub fn new(metrics: std::sync::Arc<ProxyMetrics>, direction: &'static str) -> Self {
        metrics.tcp_opened.with_label_values(&[direction]).inc();
        metrics.tcp_open.with_label_values(&[direction]).inc();
        ConnectionGuard { metrics, direction }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.metrics
            .tcp_closed
            .with_label_values(&[self.direction])
            .inc();
        self.metrics
            .tcp_open
            .with_label_values(&[self.direction])
            .dec();
    }
}
