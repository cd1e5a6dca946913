//! Control plane metrics, in a registry of its own (several control planes
//! can run in one test process).

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub certificates_issued: IntCounter,
    pub certificate_refusals: IntCounterVec,
    pub attestation_failures: IntCounterVec,
    pub ca_expiry: Gauge,
    /// 1 for the CA rotation's phase, 0 for the others.
    pub ca_rotation_phase: IntGaugeVec,
    /// Expiry of every root and intermediate of the CA in force and of
    /// the one a rotation moves to.
    pub ca_chain_expiry: GaugeVec,
    pub trust_bundle_reloads: IntCounterVec,
    pub watch_streams: IntGauge,
    pub push_latency: Histogram,
    pub policy_sets: IntCounterVec,
    pub policy_version: IntGauge,
    pub policy_resources: IntGaugeVec,
    pub policies_fail_closed: IntGaugeVec,
    pub kubernetes_watch_errors: IntCounterVec,
    pub status_updates: IntCounterVec,
    /// 1 while this replica writes policy statuses (the Lease's holder).
    pub leader: IntGauge,
    pub discovery_updates: IntCounterVec,
    pub discovery_resources_sent: IntCounterVec,
    pub discovery_bytes_sent: IntCounterVec,
    pub discovery_nacks: IntCounterVec,
    pub discovery_sidecars: IntGaugeVec,
    /// Quarantine entries in force (identities, pods, certificates).
    pub quarantined_identities: IntGauge,
    /// Files of the quarantine directory and Quarantine objects that do
    /// not parse.
    pub quarantine_invalid_files: IntGauge,
    /// Connections refused, timed out and open, per listener.
    pub listeners: std::sync::Arc<crate::listener::ListenerMetrics>,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let certificates_issued = IntCounter::new(
            "ward_ca_certificates_issued_total",
            "X.509-SVIDs issued to workloads.",
        )
        .expect("valid metric");
        let certificate_refusals = IntCounterVec::new(
            Opts::new(
                "ward_ca_certificate_refusals_total",
                "Certificate requests refused, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let attestation_failures = IntCounterVec::new(
            Opts::new(
                "ward_ca_attestation_failures_total",
                "Workload attestations that failed, by method and reason.",
            ),
            &["method", "reason"],
        )
        .expect("valid metric");
        let trust_bundle_reloads = IntCounterVec::new(
            Opts::new(
                "ward_ca_trust_bundle_reloads_total",
                "Re-reads of --trust-bundle-dir, by result (ok, rejected: the last good bundles stay).",
            ),
            &["result"],
        )
        .expect("valid metric");
        for result in ["ok", "rejected"] {
            trust_bundle_reloads.with_label_values(&[result]).reset();
        }
        let ca_expiry = Gauge::new(
            "ward_ca_certificate_expiry_timestamp_seconds",
            "When the CA certificate expires (Unix time).",
        )
        .expect("valid metric");
        let ca_rotation_phase = IntGaugeVec::new(
            Opts::new(
                "ward_ca_rotation_phase",
                "The CA rotation's phase (1 for the current one: idle, prepare, activate, retire).",
            ),
            &["phase"],
        )
        .expect("valid metric");
        ca_rotation_phase.with_label_values(&["idle"]).set(1);
        let ca_chain_expiry = GaugeVec::new(
            Opts::new(
                "ward_ca_chain_certificate_expiry_timestamp_seconds",
                "When each root and intermediate of the CA expires (Unix time), by CA (current, new: a rotation's), role (root, intermediate) and SHA-256 fingerprint.",
            ),
            &["ca", "role", "fingerprint"],
        )
        .expect("valid metric");
        let watch_streams = IntGauge::new(
            "ward_cp_watch_streams",
            "Sidecars currently connected to the discovery stream.",
        )
        .expect("valid metric");
        let push_latency = Histogram::with_opts(
            HistogramOpts::new(
                "ward_cp_push_latency_seconds",
                "Time from accepting a policy set to a sidecar acknowledging it (enforcing it).",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )
        .expect("valid metric");
        let policy_sets = IntCounterVec::new(
            Opts::new(
                "ward_cp_policy_sets_total",
                "Policy sets loaded, by result (accepted, rejected).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let policy_version = IntGauge::new(
            "ward_cp_policy_version",
            "Version of the policy set in force.",
        )
        .expect("valid metric");
        let policy_resources = IntGaugeVec::new(
            Opts::new(
                "ward_cp_policy_resources",
                "Policy custom resources seen in the cluster, by kind and state (accepted, rejected).",
            ),
            &["kind", "state"],
        )
        .expect("valid metric");
        let policies_fail_closed = IntGaugeVec::new(
            Opts::new(
                "ward_cp_policies_fail_closed",
                "Invalid policy custom resources enforced as a fail-closed stand-in, by kind and effect (allow_nothing, deny_all, strict).",
            ),
            &["kind", "effect"],
        )
        .expect("valid metric");
        let kubernetes_watch_errors = IntCounterVec::new(
            Opts::new(
                "ward_cp_kubernetes_watch_errors_total",
                "Failed Kubernetes list/watch calls, by resource (retried with backoff).",
            ),
            &["resource"],
        )
        .expect("valid metric");
        let status_updates = IntCounterVec::new(
            Opts::new(
                "ward_cp_policy_status_updates_total",
                "Status writes to policy custom resources, by result (ok, failed).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let leader = IntGauge::new(
            "ward_cp_leader",
            "1 while this replica writes the policy statuses (holds the leader-election Lease, or is the only writer), else 0.",
        )
        .expect("valid metric");
        let by_type = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help), &["resource_type"]).expect("valid metric")
        };
        let discovery_updates = by_type(
            "ward_discovery_updates_total",
            "Discovery updates sent to sidecars, by resource type.",
        );
        let discovery_resources_sent = by_type(
            "ward_discovery_resources_sent_total",
            "Resources sent in discovery updates (added or changed), by resource type.",
        );
        let discovery_bytes_sent = by_type(
            "ward_discovery_sent_bytes_total",
            "Bytes of discovery updates sent to sidecars, by resource type.",
        );
        let discovery_nacks = by_type(
            "ward_discovery_nacks_total",
            "Discovery updates sidecars refused (NACK), by resource type.",
        );
        let discovery_sidecars = IntGaugeVec::new(
            Opts::new(
                "ward_discovery_sidecars",
                "Connected sidecars by resource type and state (in_sync, pending, rejected).",
            ),
            &["resource_type", "state"],
        )
        .expect("valid metric");
        for t in ["policy", "bundle", "endpoint"] {
            for m in [
                &discovery_updates,
                &discovery_resources_sent,
                &discovery_bytes_sent,
                &discovery_nacks,
            ] {
                m.with_label_values(&[t]).reset();
            }
            for state in ["in_sync", "pending", "rejected"] {
                discovery_sidecars.with_label_values(&[t, state]).set(0);
            }
        }
        // Every series exists from the start (at 0), so alerts and
        // dashboards see "none" rather than "absent".
        for (kind, _) in crate::k8s::source::POLICY_KINDS {
            for state in ["accepted", "rejected"] {
                policy_resources.with_label_values(&[kind, state]).set(0);
            }
            for effect in crate::k8s::catalog::FailClosed::ALL {
                policies_fail_closed
                    .with_label_values(&[kind, effect.as_str()])
                    .set(0);
            }
            kubernetes_watch_errors.with_label_values(&[kind]).reset();
        }
        kubernetes_watch_errors.with_label_values(&["pods"]).reset();
        kubernetes_watch_errors
            .with_label_values(&[crate::k8s::source::QUARANTINE_KIND])
            .reset();
        for result in ["ok", "failed"] {
            status_updates.with_label_values(&[result]).reset();
        }
        let quarantined_identities = IntGauge::new(
            "ward_quarantined_identities",
            "Quarantine entries in force (identities, pods and certificates cut off the mesh).",
        )
        .expect("valid metric");
        let quarantine_invalid_files = IntGauge::new(
            "ward_cp_quarantine_invalid_files",
            "Files of the quarantine directory and Quarantine objects that do not parse (each keeps what it held when it last parsed).",
        )
        .expect("valid metric");
        let build_info = IntGaugeVec::new(
            Opts::new("ward_build_info", "Ward build information (always 1)."),
            &["version", "component"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), "control-plane"])
            .set(1);
        for collector in [
            Box::new(watch_streams.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(push_latency.clone()),
            Box::new(policy_sets.clone()),
            Box::new(policy_version.clone()),
            Box::new(policy_resources.clone()),
            Box::new(policies_fail_closed.clone()),
            Box::new(kubernetes_watch_errors.clone()),
            Box::new(status_updates.clone()),
            Box::new(leader.clone()),
            Box::new(discovery_updates.clone()),
            Box::new(discovery_resources_sent.clone()),
            Box::new(discovery_bytes_sent.clone()),
            Box::new(discovery_nacks.clone()),
            Box::new(discovery_sidecars.clone()),
            Box::new(quarantined_identities.clone()),
            Box::new(quarantine_invalid_files.clone()),
            Box::new(build_info),
        ] {
            registry
                .register(collector)
                .expect("metric registered once");
        }
        for collector in [
            Box::new(certificates_issued.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(certificate_refusals.clone()),
            Box::new(attestation_failures.clone()),
            Box::new(ca_expiry.clone()),
            Box::new(ca_rotation_phase.clone()),
            Box::new(ca_chain_expiry.clone()),
            Box::new(trust_bundle_reloads.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric registered once");
        }
        let listeners = std::sync::Arc::new(crate::listener::ListenerMetrics::new());
        listeners.register(&registry);
        Metrics {
            listeners,
            registry,
            certificates_issued,
            certificate_refusals,
            attestation_failures,
            ca_expiry,
            ca_rotation_phase,
            ca_chain_expiry,
            trust_bundle_reloads,
            watch_streams,
            push_latency,
            policy_sets,
            policy_version,
            policy_resources,
            policies_fail_closed,
            kubernetes_watch_errors,
            status_updates,
            leader,
            discovery_updates,
            discovery_resources_sent,
            discovery_bytes_sent,
            discovery_nacks,
            discovery_sidecars,
            quarantined_identities,
            quarantine_invalid_files,
        }
    }

    /// Sets `ward_discovery_sidecars` from the connected streams' states.
    pub fn set_discovery_sidecars(
        &self,
        counts: &std::collections::BTreeMap<(ward_api::discovery::ResourceType, &'static str), i64>,
    ) {
        for t in ["policy", "bundle", "endpoint"] {
            for state in ["in_sync", "pending", "rejected"] {
                self.discovery_sidecars
                    .with_label_values(&[t, state])
                    .set(0);
            }
        }
        for ((t, state), n) in counts {
            self.discovery_sidecars
                .with_label_values(&[t.as_str(), state])
                .set(*n);
        }
    }

    /// The Prometheus text exposition of every metric.
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

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
