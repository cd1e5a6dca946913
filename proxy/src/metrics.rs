//! Sidecar metrics on the admin port (`/metrics`). Labels are fixed enums,
//! identities (namespace and service account) and policy names, never
//! paths, IPs, client ports or header values, so the number of series is
//! bounded by the mesh, not by the traffic.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use ward_identity::SpiffeId;

/// Request duration buckets, in seconds: fine below a millisecond, where a
/// proxy's own overhead lives, up to 10 s for slow applications.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Label value for a peer without an identity (plaintext in PERMISSIVE).
pub const UNKNOWN: &str = "unknown";

pub struct ProxyMetrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_responses: IntCounterVec,
    pub http_duration: HistogramVec,
    pub tcp_opened: IntCounterVec,
    pub tcp_closed: IntCounterVec,
    pub tcp_open: IntGaugeVec,
    pub tcp_sent_bytes: IntCounterVec,
    pub tcp_received_bytes: IntCounterVec,
    pub tls_handshakes: IntCounterVec,
    pub tls_failures: IntCounterVec,
    pub refused: IntCounterVec,
    pub authz: IntCounterVec,
    pub authz_terminations: IntCounterVec,
    pub cert_expiry: Gauge,
    pub cert_renewals: IntCounter,
    pub cert_renewal_failures: IntCounter,
    pub policy_version: IntGauge,
    pub control_plane_connected: IntGauge,
    pub control_plane_last_update: Gauge,
    pub discovery_nacks: IntCounterVec,
    pub policy_file_rejections: IntCounter,
    pub retries: IntCounterVec,
    pub ejections: IntCounterVec,
    pub upstream_pool_connections: IntCounter,
    pub quarantined_identities: IntGauge,
    pub quarantine_closed: IntCounterVec,
    pub expired_closed: IntCounter,
    service_labels: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Peer labels: the peer's identity and, outbound to a Service, the
/// Service (`namespace/name`; empty otherwise).
const PEER: [&str; 3] = ["peer_namespace", "peer_service_account", "dst_service"];

/// Most distinct `dst_service` values one sidecar reports; later Services
/// are reported as `other`, so the series stay bounded.
pub const MAX_SERVICE_LABELS: usize = 500;

struct Builder<'r>(&'r Registry);

impl Builder<'_> {
    fn register<M: Collector + Clone + 'static>(&self, metric: prometheus::Result<M>) -> M {
        let metric = metric.expect("valid metric");
        self.0
            .register(Box::new(metric.clone()))
            .expect("registered once");
        metric
    }

    fn counter(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(IntCounterVec::new(Opts::new(name, help), labels))
    }

    fn plain_counter(&self, name: &str, help: &str) -> IntCounter {
        self.register(IntCounter::new(name, help))
    }

    fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels))
    }

    fn int_gauge(&self, name: &str, help: &str) -> IntGauge {
        self.register(IntGauge::new(name, help))
    }

    fn gauge(&self, name: &str, help: &str) -> Gauge {
        self.register(Gauge::new(name, help))
    }
}

fn with_peer<'a>(labels: &[&'a str]) -> Vec<&'a str> {
    labels.iter().copied().chain(PEER).collect()
}

impl ProxyMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let b = Builder(&registry);
        let build_info = b.gauge_vec(
            "ward_build_info",
            "Ward build information (always 1).",
            &["version", "component"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), "proxy"])
            .set(1);
        let http_duration = b.register(HistogramVec::new(
            HistogramOpts::new(
                "ward_http_request_duration_seconds",
                "Time from receiving a request to sending its response headers, in seconds.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &with_peer(&["direction"]),
        ));
        ProxyMetrics {
            http_requests: b.counter("ward_http_requests_total", "HTTP requests received, by direction and peer.", &with_peer(&["direction"])),
            http_responses: b.counter(
                "ward_http_responses_total",
                "HTTP responses sent, by direction, status class and code, and peer.",
                &with_peer(&["direction", "status_class", "status_code"]),
            ),
            http_duration,
            tcp_opened: b.counter("ward_tcp_connections_opened_total", "TCP connections opened, by direction and peer.", &with_peer(&["direction"])),
            tcp_closed: b.counter("ward_tcp_connections_closed_total", "TCP connections closed, by direction and peer.", &with_peer(&["direction"])),
            tcp_open: b.gauge_vec("ward_tcp_connections_open", "TCP connections currently open, by direction.", &["direction"]),
            tcp_sent_bytes: b.counter(
                "ward_tcp_sent_bytes_total",
                "Bytes sent to the downstream client, counted when its connection closes.",
                &with_peer(&["direction"]),
            ),
            tcp_received_bytes: b.counter(
                "ward_tcp_received_bytes_total",
                "Bytes received from the downstream client, counted when its connection closes.",
                &with_peer(&["direction"]),
            ),
            tls_handshakes: b.counter("ward_tls_handshakes_total", "mTLS handshakes completed, by direction.", &["direction"]),
            tls_failures: b.counter(
                "ward_tls_handshake_failures_total",
                "mTLS handshakes that failed, by direction and reason.",
                &["direction", "reason"],
            ),
            refused: b.counter(
                "ward_connections_refused_total",
                "Connections refused before any proxying, by direction and reason.",
                &["direction", "reason"],
            ),
            authz: b.counter(
                "ward_authorization_decisions_total",
                "Authorization decisions, by action (allow, deny, dry_run_allow, dry_run_deny, audit), deciding policy and protocol.",
                &["action", "policy_namespace", "policy_name", "protocol"],
            ),
            authz_terminations: b.counter(
                "ward_authorization_tcp_terminations_total",
                "Open TCP connections closed because a policy change denied them.",
                &["policy_namespace", "policy_name"],
            ),
            cert_expiry: b.gauge("ward_certificate_expiry_timestamp_seconds", "When the workload certificate in use expires (Unix time)."),
            cert_renewals: b.plain_counter("ward_certificate_renewals_total", "Workload certificates obtained (first one included)."),
            cert_renewal_failures: b.plain_counter("ward_certificate_renewal_failures_total", "Failed attempts to obtain a workload certificate."),
            policy_version: b.int_gauge("ward_policy_version", "Version of the policy set in force (0: none received)."),
            control_plane_connected: b.int_gauge("ward_control_plane_connected", "1 while the discovery stream to the control plane is up."),
            control_plane_last_update: b.gauge(
                "ward_control_plane_last_update_timestamp_seconds",
                "When the last update from the control plane arrived (Unix time; 0: never).",
            ),
            discovery_nacks: b.counter(
                "ward_discovery_nacks_total",
                "Discovery updates this sidecar refused (the previous state stayed in force), by resource type.",
                &["resource_type"],
            ),
            policy_file_rejections: b.plain_counter(
                "ward_policy_file_rejections_total",
                "Changes to local policy files (--policy) that did not load; the policies in force stayed.",
            ),
            retries: b.counter(
                "ward_outbound_retries_total",
                "Requests and connections to a Service retried on another endpoint, by Service and reason.",
                &["dst_service", "reason"],
            ),
            ejections: b.counter(
                "ward_outbound_endpoint_ejections_total",
                "Service endpoints ejected from balancing after repeated failures, by Service.",
                &["dst_service"],
            ),
            upstream_pool_connections: b.plain_counter(
                "ward_outbound_pool_connections_opened_total",
                "HTTP/2 connections opened to peer sidecars for the shared pool (another is opened when every one is at its stream limit).",
            ),
            quarantined_identities: b.int_gauge(
                "ward_quarantined_identities",
                "Quarantine entries this sidecar enforces (identities, pods and certificates it refuses).",
            ),
            quarantine_closed: b.counter(
                "ward_quarantine_closed_connections_total",
                "Open meshed connections closed because a quarantine update named their peer, by direction.",
                &["direction"],
            ),
            expired_closed: b.plain_counter(
                "ward_inbound_expired_connections_total",
                "Inbound mTLS connections closed because a certificate they were authenticated with expired (Ward clients retire theirs before, so this grows only when a peer used one to the end).",
            ),
            service_labels: Default::default(),
            registry,
        }
    }

    /// Copies the identity's state into the certificate metrics (done at
    /// each scrape: the values change rarely and are cheap to read).
    pub fn sync_identity(
        &self,
        not_after: Option<time::OffsetDateTime>,
        renewals: u64,
        failures: u64,
    ) {
        if let Some(t) = not_after {
            self.cert_expiry.set(t.unix_timestamp() as f64);
        }
        // Counters only move forward: add what happened since the last sync.
        let add = |counter: &IntCounter, total: u64| {
            let seen = counter.get();
            if total > seen {
                counter.inc_by(total - seen);
            }
        };
        add(&self.cert_renewals, renewals);
        add(&self.cert_renewal_failures, failures);
    }

    /// The Prometheus text exposition: Ward's metrics plus process metrics
    /// (CPU, resident memory, open file descriptors).
    pub fn render(&self) -> String {
        let mut families = self.registry.gather();
        families.extend(prometheus::gather());
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("exposition is UTF-8")
    }

    /// Metric handles for one connection's peer, resolved once (response
    /// counters at their first use) so the per-request cost is atomic adds.
    pub fn peer(self: &Arc<Self>, direction: &'static str, peer: Option<&SpiffeId>) -> PeerMetrics {
        self.service_peer(direction, peer, None)
    }

    /// [`Self::peer`] for traffic to a Service.
    pub fn service_peer(
        self: &Arc<Self>,
        direction: &'static str,
        peer: Option<&SpiffeId>,
        service: Option<&str>,
    ) -> PeerMetrics {
        let (ns, sa) = peer_labels(peer);
        let service = service.map(|s| self.service_label(s)).unwrap_or_default();
        PeerMetrics {
            requests: self
                .http_requests
                .with_label_values(&[direction, ns, sa, &service]),
            duration: self
                .http_duration
                .with_label_values(&[direction, ns, sa, &service]),
            metrics: self.clone(),
            direction,
            namespace: ns.to_owned(),
            service_account: sa.to_owned(),
            service,
            responses: Default::default(),
        }
    }

    /// The `dst_service` value for `service`: itself, or `other` once
    /// [`MAX_SERVICE_LABELS`] distinct ones were reported.
    pub fn service_label(&self, service: &str) -> String {
        let mut seen = self.service_labels.lock().expect("not poisoned");
        if seen.contains(service) {
            return service.to_owned();
        }
        if seen.len() < MAX_SERVICE_LABELS {
            seen.insert(service.to_owned());
            return service.to_owned();
        }
        "other".to_owned()
    }
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `(namespace, service account)` label values for a peer identity.
pub fn peer_labels(peer: Option<&SpiffeId>) -> (&str, &str) {
    match peer {
        Some(id) => (
            id.namespace().unwrap_or(UNKNOWN),
            id.service_account().unwrap_or(UNKNOWN),
        ),
        None => (UNKNOWN, UNKNOWN),
    }
}

/// Status codes whose `ward_http_responses_total` series a connection keeps
/// once it has used them; other codes are looked up by label each time.
const COMMON_STATUS_CODES: [u16; 14] = [
    200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 500, 502, 503, 504,
];

/// One connection's view of the metrics: counts the connection open while
/// it lives, and requests, responses and bytes for its peer.
pub struct PeerMetrics {
    metrics: Arc<ProxyMetrics>,
    direction: &'static str,
    namespace: String,
    service_account: String,
    service: String,
    requests: IntCounter,
    duration: Histogram,
    /// The response counter of `COMMON_STATUS_CODES[i]`, resolved on first
    /// use (so no series appears before a response had that code).
    responses: [OnceLock<IntCounter>; COMMON_STATUS_CODES.len()],
}

impl PeerMetrics {
    fn labels(&self) -> [&str; 4] {
        [
            self.direction,
            &self.namespace,
            &self.service_account,
            &self.service,
        ]
    }

    fn response_counter(&self, status: http::StatusCode) -> IntCounter {
        let class = match status.as_u16() {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.metrics.http_responses.with_label_values(&[
            self.direction,
            class,
            status.as_str(),
            &self.namespace,
            &self.service_account,
            &self.service,
        ])
    }

    pub fn connection_opened(&self) {
        self.metrics
            .tcp_opened
            .with_label_values(&self.labels())
            .inc();
    }

    pub fn connection_closed(&self, received: u64, sent: u64) {
        let labels = self.labels();
        self.metrics.tcp_closed.with_label_values(&labels).inc();
        self.metrics
            .tcp_received_bytes
            .with_label_values(&labels)
            .inc_by(received);
        self.metrics
            .tcp_sent_bytes
            .with_label_values(&labels)
            .inc_by(sent);
    }

    /// Counts a request; returns when it started, for [`Self::response`].
    pub fn request(&self) -> Instant {
        self.requests.inc();
        Instant::now()
    }

    /// Counts a request and its response at once, for requests whose peer
    /// is known only once answered (balanced over a Service).
    pub fn exchange(&self, status: http::StatusCode, started: Instant) -> Duration {
        self.requests.inc();
        self.response(status, started)
    }

    /// Counts the response to a request that started at `started`; returns
    /// the request's duration, for the access log.
    pub fn response(&self, status: http::StatusCode, started: Instant) -> Duration {
        let elapsed = started.elapsed();
        match COMMON_STATUS_CODES
            .iter()
            .position(|&code| code == status.as_u16())
        {
            Some(i) => self.responses[i]
                .get_or_init(|| self.response_counter(status))
                .inc(),
            None => self.response_counter(status).inc(),
        }
        self.duration.observe(elapsed.as_secs_f64());
        elapsed
    }
}

/// Counts a connection in `ward_tcp_connections_open` while it lives.
pub struct OpenGuard {
    gauge: IntGauge,
}

impl OpenGuard {
    pub fn new(metrics: &ProxyMetrics, direction: &'static str) -> Self {
        let gauge = metrics.tcp_open.with_label_values(&[direction]);
        gauge.inc();
        OpenGuard { gauge }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}
