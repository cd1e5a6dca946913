//! Control plane metrics, in a registry of its own (several control planes
//! can run in one test process).

use prometheus::{Encoder, Gauge, IntCounter, IntCounterVec, Opts, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    pub certificates_issued: IntCounter,
    pub certificate_refusals: IntCounterVec,
    pub attestation_failures: IntCounterVec,
    pub ca_expiry: Gauge,
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
        let ca_expiry = Gauge::new(
            "ward_ca_certificate_expiry_timestamp_seconds",
            "When the CA certificate expires (Unix time).",
        )
        .expect("valid metric");
        for collector in [
            Box::new(certificates_issued.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(certificate_refusals.clone()),
            Box::new(attestation_failures.clone()),
            Box::new(ca_expiry.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric registered once");
        }
        Metrics {
            registry,
            certificates_issued,
            certificate_refusals,
            attestation_failures,
            ca_expiry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("exposition is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
