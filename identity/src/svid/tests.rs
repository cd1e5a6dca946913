use rcgen::{BasicConstraints, CustomExtension, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose};

use super::*;
use crate::ca::{CertificateAuthority, generate_key};
use crate::testutil::{HOUR, TestCa, issue, key_der, openssl_csr, openssl_root, openssl_sign, uri};
use rustls_pki_types::pem::PemObject;

const ID: &str = "spiffe://example.org/ns/default/sa/web";

fn now() -> UnixTime {
    UnixTime::now()
}

fn verify(chain: &[CertificateDer<'_>], bundles: &TrustBundles) -> Result<VerifiedSvid, SvidError> {
    verify_chain(chain, bundles, Role::Any, now())
}

/// A leaf from the example.org test root, with `tweak` applied, verified for `Role::Any`.
fn verify_tweaked(
    tweak: impl FnOnce(&mut rcgen::CertificateParams),
) -> Result<VerifiedSvid, SvidError> {
    let root = TestCa::root("example.org");
    let (leaf, _) = root.leaf(ID, tweak);
    verify(&[leaf], &root.bundles("example.org"))
}

#[test]
fn valid_svid_is_accepted_for_every_role() {
    let root = TestCa::root("example.org");
    let (leaf, _) = root.leaf(ID, |_| {});
    let bundles = root.bundles("example.org");
    for role in [Role::Client, Role::Server, Role::Any] {
        let verified = verify_chain(std::slice::from_ref(&leaf), &bundles, role, now()).unwrap();
        assert_eq!(verified.spiffe_id.as_str(), ID);
    }
    let parsed = X509Certificate::from_der(&leaf).unwrap().1;
    assert_eq!(
        verify(std::slice::from_ref(&leaf), &bundles)
            .unwrap()
            .not_after,
        parsed.validity().not_after.to_datetime()
    );
}

#[test]
fn empty_and_garbage_chains() {
    let bundles = TestCa::root("example.org").bundles("example.org");
    assert_eq!(verify(&[], &bundles), Err(SvidError::NoCertificate));
    let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]);
    assert!(matches!(
        verify(&[garbage], &bundles),
        Err(SvidError::Malformed(_))
    ));
}

#[test]
fn uri_san_rules() {
    let dns_only = verify_tweaked(|p| {
        p.subject_alt_names = vec![rcgen::SanType::DnsName("web".try_into().unwrap())]
    });
    assert_eq!(dns_only, Err(SvidError::NoUriSan));

    let two = verify_tweaked(|p| p.subject_alt_names.push(uri("spiffe://example.org/other")));
    assert_eq!(two, Err(SvidError::MultipleUriSans(2)));

    let not_spiffe = verify_tweaked(|p| p.subject_alt_names = vec![uri("https://example.org/x")]);
    assert_eq!(
        not_spiffe,
        Err(SvidError::InvalidSpiffeId(SpiffeIdError::WrongScheme))
    );

    let no_path = verify_tweaked(|p| p.subject_alt_names = vec![uri("spiffe://example.org")]);
    assert_eq!(
        no_path,
        Err(SvidError::NoPath("spiffe://example.org".into()))
    );

    // Other SAN types next to the one URI are allowed.
    verify_tweaked(|p| {
        p.subject_alt_names.push(rcgen::SanType::DnsName(
            "web.default.svc".try_into().unwrap(),
        ))
    })
    .unwrap();
}

#[test]
fn basic_constraints_rules() {
    let ca_leaf = verify_tweaked(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained));
    assert_eq!(ca_leaf, Err(SvidError::LeafIsCa));
    let no_bc = verify_tweaked(|p| p.is_ca = IsCa::NoCa);
    assert_eq!(no_bc, Err(SvidError::MissingBasicConstraints));
}

#[test]
fn key_usage_rules() {
    assert_eq!(
        verify_tweaked(|p| p.key_usages.clear()),
        Err(SvidError::KeyUsageMissing)
    );
    assert_eq!(
        verify_tweaked(|p| {
            p.key_usages.clear();
            // keyUsage = digitalSignature, marked non-critical.
            let mut ku = CustomExtension::from_oid_content(&[2, 5, 29, 15], vec![3, 2, 7, 0x80]);
            ku.set_criticality(false);
            p.custom_extensions.push(ku);
        }),
        Err(SvidError::KeyUsageNotCritical)
    );
    assert_eq!(
        verify_tweaked(|p| p.key_usages = vec![KeyUsagePurpose::KeyEncipherment]),
        Err(SvidError::MissingDigitalSignature)
    );
    assert_eq!(
        verify_tweaked(|p| p.key_usages.push(KeyUsagePurpose::KeyCertSign)),
        Err(SvidError::LeafHasKeyCertSign)
    );
    assert_eq!(
        verify_tweaked(|p| p.key_usages.push(KeyUsagePurpose::CrlSign)),
        Err(SvidError::LeafHasCrlSign)
    );
}

#[test]
fn extended_key_usage_per_role() {
    let root = TestCa::root("example.org");
    let bundles = root.bundles("example.org");
    let check = |ekus: Vec<ExtendedKeyUsagePurpose>, role| {
        let (leaf, _) = root.leaf(ID, |p| p.extended_key_usages = ekus);
        verify_chain(&[leaf], &bundles, role, now()).map(|_| ())
    };
    use ExtendedKeyUsagePurpose::{ClientAuth, CodeSigning, ServerAuth};
    assert_eq!(check(vec![ClientAuth], Role::Client), Ok(()));
    assert_eq!(
        check(vec![ClientAuth], Role::Server),
        Err(SvidError::WrongExtendedKeyUsage { role: Role::Server })
    );
    assert_eq!(
        check(vec![ClientAuth], Role::Any),
        Err(SvidError::WrongExtendedKeyUsage { role: Role::Any })
    );
    assert_eq!(check(vec![ServerAuth], Role::Server), Ok(()));
    assert_eq!(
        check(vec![ServerAuth], Role::Client),
        Err(SvidError::WrongExtendedKeyUsage { role: Role::Client })
    );
    assert_eq!(
        check(vec![CodeSigning], Role::Client),
        Err(SvidError::WrongExtendedKeyUsage { role: Role::Client })
    );
    // EKU is optional in the spec.
    for role in [Role::Client, Role::Server, Role::Any] {
        assert_eq!(check(vec![], role), Ok(()));
    }
}

#[test]
fn validity_period() {
    let past = OffsetDateTime::now_utc() - 2 * HOUR;
    assert_eq!(
        verify_tweaked(|p| {
            p.not_before = past;
            p.not_after = past + HOUR;
        }),
        Err(SvidError::Expired)
    );
    let future = OffsetDateTime::now_utc() + HOUR;
    assert_eq!(
        verify_tweaked(|p| {
            p.not_before = future;
            p.not_after = future + HOUR;
        }),
        Err(SvidError::NotYetValid)
    );
}

#[test]
fn chain_through_an_intermediate() {
    let root = TestCa::root("example.org");
    let inter = root.intermediate("example.org", |_| {});
    let (leaf, _) = inter.leaf(ID, |_| {});
    let bundles = root.bundles("example.org");
    verify(&[leaf.clone(), inter.der.clone()], &bundles).unwrap();
    // Without the intermediate the chain cannot be built.
    assert_eq!(verify(&[leaf], &bundles), Err(SvidError::UnknownIssuer));
}

#[test]
fn intermediate_rules() {
    let root = TestCa::root("example.org");
    let bundles = root.bundles("example.org");
    let check = |tweak: fn(&mut rcgen::CertificateParams)| {
        let inter = root.intermediate("example.org", tweak);
        let (leaf, _) = inter.leaf(ID, |_| {});
        verify(&[leaf, inter.der.clone()], &bundles)
    };
    assert_eq!(
        check(|p| p.is_ca = IsCa::ExplicitNoCa),
        Err(SvidError::IntermediateNotCa { index: 0 })
    );
    assert_eq!(
        check(|p| p.key_usages = vec![KeyUsagePurpose::CrlSign]),
        Err(SvidError::IntermediateWithoutKeyCertSign { index: 0 })
    );
    assert_eq!(
        check(|p| p.key_usages.clear()),
        Err(SvidError::IntermediateWithoutKeyCertSign { index: 0 })
    );
}

#[test]
fn unknown_trust_domain_and_unknown_issuer() {
    let root = TestCa::root("example.org");
    let (leaf, _) = root.leaf(ID, |_| {});
    let other_bundles = TestCa::root("other.org").bundles("other.org");
    assert_eq!(
        verify(std::slice::from_ref(&leaf), &other_bundles),
        Err(SvidError::UnknownTrustDomain("example.org".into()))
    );
    // Same trust domain, a different root with the same name: webpki finds
    // the namesake and its key does not verify the leaf's signature.
    let impostor = TestCa::root("example.org").bundles("example.org");
    assert_eq!(verify(&[leaf], &impostor), Err(SvidError::BadSignature));
}

#[test]
fn cross_trust_domain_signature_is_rejected_even_with_both_bundles() {
    let a = TestCa::root("a.example");
    let b = TestCa::root("b.example");
    let bundles = TrustBundles::new()
        .with_root("a.example", &a.pem)
        .unwrap()
        .with_root("b.example", &b.pem)
        .unwrap();
    // A's root signs a leaf claiming B's trust domain.
    let (forged, _) = a.leaf("spiffe://b.example/ns/x/sa/y", |_| {});
    assert_eq!(verify(&[forged], &bundles), Err(SvidError::UnknownIssuer));
    // Each root still vouches for its own trust domain.
    let (ok_a, _) = a.leaf("spiffe://a.example/ns/x/sa/y", |_| {});
    let (ok_b, _) = b.leaf("spiffe://b.example/ns/x/sa/y", |_| {});
    verify(&[ok_a], &bundles).unwrap();
    verify(&[ok_b], &bundles).unwrap();
}

#[test]
fn bundle_with_two_roots_accepts_both() {
    let old = TestCa::root("example.org");
    let new = TestCa::root("example.org");
    let bundles = TrustBundles::new()
        .with_root("example.org", &format!("{}{}", old.pem, new.pem))
        .unwrap();
    for root in [&old, &new] {
        let (leaf, _) = root.leaf(ID, |_| {});
        verify(&[leaf], &bundles).unwrap();
    }
}

#[test]
fn tampered_signature_is_rejected() {
    let root = TestCa::root("example.org");
    let (leaf, _) = root.leaf(ID, |_| {});
    let mut der = leaf.as_ref().to_vec();
    let last = der.len() - 1;
    der[last] ^= 0x01; // inside the ECDSA signature's S value
    assert_eq!(
        verify(&[CertificateDer::from(der)], &root.bundles("example.org")),
        Err(SvidError::BadSignature)
    );
}

#[test]
fn ca_issued_svids_verify() {
    let ca = CertificateAuthority::generate_root("example.org", 24 * HOUR).unwrap();
    let bundles = TrustBundles::new()
        .with_root("example.org", &ca.bundle_pem())
        .unwrap();
    let id = SpiffeId::parse(ID).unwrap();
    let (key, svid) = issue(&ca, &id, HOUR);
    let verified = verify(&svid.chain_der, &bundles).unwrap();
    assert_eq!(verified.spiffe_id, id);
    assert_eq!(verified.not_after, svid.not_after);
    check_key_matches(&svid.chain_der[0], &key_der(&key)).unwrap();
    assert_eq!(
        check_key_matches(&svid.chain_der[0], &key_der(&generate_key())),
        Err(SvidError::KeyMismatch)
    );
}

#[test]
fn intermediate_ca_from_pem_issues_svids_that_verify_against_the_root() {
    let root = TestCa::root("example.org");
    let inter = root.intermediate("example.org", |_| {});
    let chain_pem = format!("{}{}", inter.pem, root.pem);
    let ca =
        CertificateAuthority::from_pem(&chain_pem, &inter.issuer.key().serialize_pem()).unwrap();
    let bundles = TrustBundles::new()
        .with_root("example.org", &ca.bundle_pem())
        .unwrap();
    let id = SpiffeId::parse(ID).unwrap();
    let (_, svid) = issue(&ca, &id, HOUR);
    assert_eq!(svid.chain_der.len(), 2);
    assert_eq!(verify(&svid.chain_der, &bundles).unwrap().spiffe_id, id);
}

#[test]
fn reasons_are_stable_labels() {
    assert_eq!(SvidError::UnknownIssuer.reason(), "unknown_ca");
    assert_eq!(
        SvidError::UnknownTrustDomain("x".into()).reason(),
        "wrong_trust_domain"
    );
    assert_eq!(SvidError::Expired.reason(), "expired");
    assert_eq!(SvidError::LeafIsCa.reason(), "bad_svid");
    assert_eq!(
        SvidError::IdentityMismatch {
            expected: "a".into(),
            found: "b".into()
        }
        .reason(),
        "identity_mismatch"
    );
}

/// openssl as an independent certificate maker: a root, then leafs made
/// from `ext` (an `openssl x509 -extfile` section).
struct OpensslCa {
    dir: tempfile::TempDir,
    bundles: TrustBundles,
}

impl OpensslCa {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        openssl_root(dir.path(), "/CN=openssl root", "1");
        let pem = std::fs::read_to_string(dir.path().join("root.pem")).unwrap();
        let bundles = TrustBundles::new().with_root("example.org", &pem).unwrap();
        Self { dir, bundles }
    }

    fn leaf(&self, ext: &str) -> CertificateDer<'static> {
        let d = self.dir.path();
        std::fs::write(d.join("leaf.ext"), ext).unwrap();
        openssl_csr(d, "leaf", "/O=openssl");
        openssl_sign(d, "leaf", "leaf.ext", "1", &["-set_serial", "0x1234"]);
        let pem = std::fs::read(d.join("leaf.pem")).unwrap();
        CertificateDer::from_pem_slice(&pem).unwrap()
    }

    fn verify(&self, ext: &str) -> Result<VerifiedSvid, SvidError> {
        verify(&[self.leaf(ext)], &self.bundles)
    }
}

const GOOD_EXT: &str = "basicConstraints=critical,CA:FALSE\n\
    keyUsage=critical,digitalSignature\n\
    extendedKeyUsage=serverAuth,clientAuth\n\
    subjectAltName=URI:spiffe://example.org/ns/default/sa/web\n";

#[test]
fn openssl_made_svids() {
    ward_testkit::require_tool!("openssl");
    let ca = OpensslCa::new();
    let ok = ca.verify(GOOD_EXT).unwrap();
    assert_eq!(ok.spiffe_id.as_str(), ID);

    let ca_true = GOOD_EXT.replace("CA:FALSE", "CA:TRUE");
    assert_eq!(ca.verify(&ca_true), Err(SvidError::LeafIsCa));

    let two_uris = GOOD_EXT.replace(
        "subjectAltName=URI:spiffe://example.org/ns/default/sa/web",
        "subjectAltName=URI:spiffe://example.org/ns/default/sa/web,URI:spiffe://example.org/ns/x/sa/y",
    );
    assert_eq!(ca.verify(&two_uris), Err(SvidError::MultipleUriSans(2)));

    let ku_not_critical = GOOD_EXT.replace("keyUsage=critical,", "keyUsage=");
    assert_eq!(
        ca.verify(&ku_not_critical),
        Err(SvidError::KeyUsageNotCritical)
    );

    let client_only = GOOD_EXT.replace("serverAuth,clientAuth", "clientAuth");
    assert_eq!(
        ca.verify(&client_only),
        Err(SvidError::WrongExtendedKeyUsage { role: Role::Any })
    );
}

#[test]
fn a_leaf_serial_reads_as_the_ca_recorded_it() {
    let ca = CertificateAuthority::generate_root("example.org", HOUR).unwrap();
    let id = SpiffeId::parse(ID).unwrap();
    let (_, svid) = issue(&ca, &id, HOUR);
    let leaf = svid.chain_der[0].clone();
    let serial = serial_of(&leaf).unwrap();
    assert_eq!(Some(serial.clone()), canonical_serial(&svid.serial_hex));
    let facts = leaf_facts(&leaf).unwrap();
    assert_eq!(facts.serial, serial);
    assert_eq!(facts.spiffe_id, id);
    assert_eq!(facts.not_after, svid.not_after);
}

#[test]
fn serials_compare_in_one_form() {
    assert_eq!(canonical_serial("00:1A:bc"), Some("1abc".into()));
    assert_eq!(canonical_serial("01abc"), Some("1abc".into()));
    assert_eq!(canonical_serial("000"), Some("0".into()));
    for bad in ["", ":", "xyz", "12 34", &"a".repeat(41)] {
        assert_eq!(canonical_serial(bad), None, "{bad:?}");
    }
}
