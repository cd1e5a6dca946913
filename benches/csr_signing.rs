//! CA throughput: `sign_csr` (one ECDSA P-256 signature plus CSR checks;
//! signatures per second per core = 1 / time per iteration) and the
//! workload side, key generation plus CSR building.
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use ward_identity::{CertificateAuthority, DEFAULT_SVID_TTL, SpiffeId, build_csr, generate_key};

fn csr_signing(c: &mut Criterion) {
    let ca = CertificateAuthority::generate_root("example.org", Duration::from_secs(30 * 86400))
        .expect("root CA");
    let id = SpiffeId::parse("spiffe://example.org/ns/default/sa/web").expect("valid ID");
    let csr = build_csr(&generate_key(), &id).expect("CSR");

    c.bench_function("sign_csr", |b| {
        b.iter(|| {
            ca.sign_csr(black_box(&csr), &id, DEFAULT_SVID_TTL)
                .expect("issued")
        })
    });
    c.bench_function("generate_key_and_build_csr", |b| {
        b.iter(|| build_csr(&generate_key(), black_box(&id)).expect("CSR"))
    });
}

criterion_group!(benches, csr_signing);
criterion_main!(benches);
