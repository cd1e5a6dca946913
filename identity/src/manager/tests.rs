use super::*;
use crate::ca::CertificateAuthority;
use std::sync::Mutex;

fn local_ca() -> Arc<CertificateAuthority> {
    Arc::new(
        CertificateAuthority::generate_root("test.example", Duration::from_secs(3600)).unwrap(),
    )
}

fn workload() -> SpiffeId {
    SpiffeId::for_service_account("test.example", "default", "web").unwrap()
}

#[tokio::test]
async fn first_svid_makes_the_handle_ready() {
    let (_stop_tx, stop) = watch::channel(false);
    let issuer = LocalIssuer {
        ca: local_ca(),
        ttl: Duration::from_secs(600),
    };
    let handle = spawn(workload(), issuer, RotationPolicy::default(), stop);
    let not_after = tokio::time::timeout(Duration::from_secs(30), handle.ready())
        .await
        .unwrap();
    assert!(handle.is_ready());
    assert_eq!(handle.svid().current_id(), Some(workload()));
    let lifetime = not_after - OffsetDateTime::now_utc();
    assert!(
        lifetime > time::Duration::seconds(590) && lifetime <= time::Duration::seconds(600),
        "{lifetime}"
    );
    assert!(handle.bundles().load().roots_for("test.example").is_some());
}

#[tokio::test]
async fn renews_at_half_life_with_a_new_key() {
    let (_stop_tx, stop) = watch::channel(false);
    let issuer = LocalIssuer {
        ca: local_ca(),
        ttl: Duration::from_secs(2),
    };
    let handle = spawn(workload(), issuer, RotationPolicy::default(), stop);
    let first = tokio::time::timeout(Duration::from_secs(30), handle.ready())
        .await
        .unwrap();
    let first_key = handle.svid().certified_key().unwrap();
    // The deadline only bounds a failing test.
    let second = tokio::time::timeout(Duration::from_secs(30), handle.renewed_after(first))
        .await
        .expect("renewed");
    assert!(second > first);
    let second_key = handle.svid().certified_key().unwrap();
    assert_ne!(first_key.cert[0], second_key.cert[0]);
    assert!(handle.stats().renewals.load(Ordering::Relaxed) >= 2);
}

/// Fails the calls listed in `fail`, issuing from a local CA otherwise.
struct FlakyIssuer {
    inner: LocalIssuer,
    calls: Mutex<u32>,
    fail: &'static [u32],
    /// The certificate the workload served when each failing call came
    /// (`None`: none yet).
    served_at_failures: Arc<Mutex<Vec<Option<CertificateDer<'static>>>>>,
}

impl SvidIssuer for FlakyIssuer {
    async fn issue(
        &self,
        id: &SpiffeId,
        csr: String,
        current: &Arc<SvidCell>,
    ) -> Result<IssuedChain, String> {
        let call = {
            let mut calls = self.calls.lock().unwrap();
            *calls += 1;
            *calls
        };
        if self.fail.contains(&call) {
            let served = current.certified_key().map(|key| key.cert[0].clone());
            self.served_at_failures.lock().unwrap().push(served);
            return Err(format!("control plane unreachable (call {call})"));
        }
        self.inner.issue(id, csr, current).await
    }
}

#[tokio::test]
async fn failures_back_off_and_keep_the_current_certificate() {
    let (_stop_tx, stop) = watch::channel(false);
    let served_at_failures = Arc::new(Mutex::new(Vec::new()));
    let issuer = FlakyIssuer {
        inner: LocalIssuer {
            ca: local_ca(),
            ttl: Duration::from_secs(4),
        },
        calls: Mutex::new(0),
        // First attempt fails (not ready yet), then succeeds; the first
        // renewal fails twice before succeeding.
        fail: &[1, 3, 4],
        served_at_failures: served_at_failures.clone(),
    };
    let policy = RotationPolicy {
        min_backoff: Duration::from_millis(100),
        ..RotationPolicy::default()
    };
    let handle = spawn(workload(), issuer, policy, stop);
    let first = tokio::time::timeout(Duration::from_secs(30), handle.ready())
        .await
        .unwrap();
    assert_eq!(handle.stats().failures.load(Ordering::Relaxed), 1);
    let first_cert = handle.svid().certified_key().unwrap().cert[0].clone();
    let renewed = tokio::time::timeout(Duration::from_secs(30), handle.renewed_after(first))
        .await
        .unwrap();
    assert!(renewed > first);
    assert_eq!(handle.stats().failures.load(Ordering::Relaxed), 3);
    let now = handle.svid().certified_key().unwrap().cert[0].clone();
    assert_ne!(now, first_cert);
    // What was served while the two renewals failed, as the issuer saw it
    // at each failing call: the first certificate, not nothing.
    assert_eq!(
        *served_at_failures.lock().unwrap(),
        vec![None, Some(first_cert.clone()), Some(first_cert)]
    );
}

#[tokio::test]
async fn a_certificate_for_another_identity_is_never_installed() {
    struct WrongIdIssuer(LocalIssuer);
    impl SvidIssuer for WrongIdIssuer {
        async fn issue(
            &self,
            _id: &SpiffeId,
            _csr: String,
            current: &Arc<SvidCell>,
        ) -> Result<IssuedChain, String> {
            let other = SpiffeId::for_service_account("test.example", "default", "admin").unwrap();
            let key = ca::generate_key();
            let csr = ca::build_csr(&key, &other).unwrap();
            self.0.issue(&other, csr, current).await
        }
    }
    let (_stop_tx, stop) = watch::channel(false);
    let issuer = WrongIdIssuer(LocalIssuer {
        ca: local_ca(),
        ttl: Duration::from_secs(60),
    });
    let handle = spawn(workload(), issuer, RotationPolicy::default(), stop);
    // Positive evidence the manager ran and refused: two attempts came back
    // with the other identity's certificate and were counted as failures
    // (the deadline only bounds a failing test) ...
    two_refused_attempts(&handle).await;
    // ... and nothing was installed.
    assert!(!handle.is_ready());
    assert!(handle.svid().certified_key().is_none());
    assert_eq!(handle.stats().renewals.load(Ordering::Relaxed), 0);
}

/// A certificate for the workload's own key but another identity (an
/// issuer that is wrong or compromised) is refused before it is served:
/// the key matches, so only the identity check stands in the way.
#[tokio::test]
async fn a_certificate_for_the_workloads_key_but_another_identity_is_never_served() {
    struct OtherIdSameKey(crate::testutil::TestCa);
    impl SvidIssuer for OtherIdSameKey {
        async fn issue(
            &self,
            _id: &SpiffeId,
            csr: String,
            _current: &Arc<SvidCell>,
        ) -> Result<IssuedChain, String> {
            let request = rcgen::CertificateSigningRequestParams::from_pem(&csr)
                .map_err(|e| e.to_string())?;
            let cert = crate::testutil::leaf_params("spiffe://test.example/ns/default/sa/admin")
                .signed_by(&request.public_key, &self.0.issuer)
                .map_err(|e| e.to_string())?;
            Ok(IssuedChain {
                chain_pem: cert.pem(),
                trust_domain: "test.example".into(),
                bundle_pem: self.0.pem.clone(),
            })
        }
    }
    let (_stop_tx, stop) = watch::channel(false);
    let issuer = OtherIdSameKey(crate::testutil::TestCa::root("test.example"));
    let handle = spawn(workload(), issuer, RotationPolicy::default(), stop);
    two_refused_attempts(&handle).await;
    // Not even briefly: handshakes never got the other identity's chain.
    assert!(handle.svid().certified_key().is_none());
    assert!(!handle.is_ready());
    assert_eq!(handle.stats().renewals.load(Ordering::Relaxed), 0);
}

/// Waits until the manager counted two failed attempts (the deadline only
/// bounds a failing test).
async fn two_refused_attempts(handle: &IdentityHandle) {
    tokio::time::timeout(Duration::from_secs(60), async {
        while handle.stats().failures.load(Ordering::Relaxed) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("two refused attempts");
}

/// An issuer whose second call (the first renewal) never answers.
struct HangsOnce {
    inner: LocalIssuer,
    calls: Mutex<u32>,
}

impl SvidIssuer for HangsOnce {
    async fn issue(
        &self,
        id: &SpiffeId,
        csr: String,
        current: &Arc<SvidCell>,
    ) -> Result<IssuedChain, String> {
        let call = {
            let mut calls = self.calls.lock().unwrap();
            *calls += 1;
            *calls
        };
        if call == 2 {
            std::future::pending::<()>().await;
        }
        self.inner.issue(id, csr, current).await
    }
}

#[tokio::test]
async fn a_renewal_that_never_answers_is_abandoned_and_retried() {
    let (_stop_tx, stop) = watch::channel(false);
    let issuer = HangsOnce {
        inner: LocalIssuer {
            ca: local_ca(),
            ttl: Duration::from_secs(20),
        },
        calls: Mutex::new(0),
    };
    let policy = RotationPolicy {
        // 10 % into the certificate's life, without jitter.
        renew_at: 0.1,
        jitter: 0.0,
        attempt_timeout: Duration::from_millis(500),
        min_backoff: Duration::from_millis(100),
        ..RotationPolicy::default()
    };
    let handle = spawn(workload(), issuer, policy, stop);
    let first = handle.ready().await;
    // Renewal at ~2 s, abandoned 0.5 s later, retried 0.05-0.1 s after:
    // before the first certificate expires (20 s: the rest of its life is
    // the margin). Without the attempt timeout the manager would wait
    // forever.
    let left = Duration::try_from(first - OffsetDateTime::now_utc())
        .expect("the first certificate is still valid");
    let renewed = tokio::time::timeout(left, handle.renewed_after(first))
        .await
        .expect("the hung renewal is abandoned and the next attempt succeeds");
    assert!(renewed > first);
    assert_eq!(handle.stats().failures.load(Ordering::Relaxed), 1);
}

/// A CA rotation's early renewal: nothing happens while the certificate in
/// use comes from the signer named; another signer makes the manager
/// renew within the window, long before half-life.
#[tokio::test]
async fn an_early_renewal_is_honoured_only_for_another_signer() {
    let (_stop_tx, stop) = watch::channel(false);
    let ca = local_ca();
    let issuer = LocalIssuer {
        ca: ca.clone(),
        ttl: Duration::from_secs(3600),
    };
    let handle = spawn(workload(), issuer, RotationPolicy::default(), stop);
    tokio::time::timeout(Duration::from_secs(30), handle.ready())
        .await
        .unwrap();
    let first_leaf = handle.svid().certified_key().unwrap().cert[0].clone();
    let early = handle.early_renewal();
    assert!(
        !early.renew_unless_signed_by(ca.cert_der(), Duration::from_millis(10)),
        "the certificate in use is the signer's"
    );
    let other = local_ca();
    assert!(early.renew_unless_signed_by(other.cert_der(), Duration::from_millis(200)));
    // Within the window, not at half-life (30 min). The expiry may not
    // change (whole seconds), the certificate does.
    let renewed = async {
        while handle.svid().certified_key().unwrap().cert[0] == first_leaf {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), renewed)
        .await
        .expect("renewed early");
    assert_eq!(handle.stats().renewals.load(Ordering::Relaxed), 2);
}
