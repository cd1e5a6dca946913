use super::*;
use crate::testutil::{HOUR, issue, openssl, openssl_csr, openssl_root, openssl_sign, uri};

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn root(td: &str) -> CertificateAuthority {
    CertificateAuthority::generate_root(td, YEAR).unwrap()
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    X509Certificate::from_der(der).unwrap().1
}

fn csr_with_sans(key: &KeyPair, sans: Vec<SanType>) -> String {
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params.serialize_request(key).unwrap().pem().unwrap()
}

#[test]
fn root_has_signing_profile() {
    let ca = root("example.org");
    assert_eq!(ca.trust_domain(), "example.org");
    let cert = parse(ca.cert_der());
    assert!(cert.is_ca());
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.critical);
    assert!(ku.value.key_cert_sign() && ku.value.crl_sign());
    let sans = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        sans.value.general_names,
        vec![GeneralName::URI("spiffe://example.org")]
    );
    assert_eq!(
        cert.subject().to_string(),
        "O=Ward, CN=ward root example.org"
    );
    assert_eq!(ca.bundle_pem(), ca.cert_pem());
    assert!(ca.chain_pem().is_empty());
    assert!(ca.not_after() > OffsetDateTime::now_utc() + (YEAR - HOUR));
}

#[test]
fn root_refuses_bad_trust_domain_and_zero_validity() {
    assert!(matches!(
        CertificateAuthority::generate_root("Example.org", YEAR),
        Err(CaError::InvalidTrustDomain(..))
    ));
    assert!(matches!(
        CertificateAuthority::generate_root("example.org/ns", YEAR),
        Err(CaError::InvalidTrustDomain(..))
    ));
    assert!(matches!(
        CertificateAuthority::generate_root("example.org", Duration::ZERO),
        Err(CaError::ZeroValidity)
    ));
}

#[test]
fn pem_round_trip_keeps_identity() {
    let ca = root("example.org");
    let loaded = CertificateAuthority::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
    assert_eq!(loaded.trust_domain(), "example.org");
    assert_eq!(loaded.fingerprint_sha256(), ca.fingerprint_sha256());
    assert_eq!(loaded.bundle_pem(), ca.bundle_pem());
    assert!(loaded.chain_der().is_empty());
    // The loaded CA signs leafs that chain to the original root.
    let (_, svid) = issue(&loaded, &id("spiffe://example.org/ns/a/sa/b"), HOUR);
    let leaf = parse(&svid.chain_der[0]);
    leaf.verify_signature(Some(parse(ca.cert_der()).public_key()))
        .unwrap();
}

#[test]
fn from_pem_refusals() {
    let ca = root("example.org");
    let other = root("example.org");
    assert!(matches!(
        CertificateAuthority::from_pem(&ca.cert_pem(), &other.key_pem()),
        Err(CaError::KeyMismatch)
    ));
    assert!(matches!(
        CertificateAuthority::from_pem("", &ca.key_pem()),
        Err(CaError::NoCertificate)
    ));
    assert!(matches!(
        CertificateAuthority::from_pem(&ca.cert_pem(), "not a key"),
        Err(CaError::MalformedKey(_))
    ));
    assert!(matches!(
        CertificateAuthority::from_pem_with_trust_domain(
            &ca.cert_pem(),
            &ca.key_pem(),
            Some("other.org")
        ),
        Err(CaError::TrustDomainConflict { .. })
    ));

    // A leaf (CA:false) cannot be a CA, even with its own key.
    let (key, svid) = issue(&ca, &id("spiffe://example.org/ns/a/sa/b"), HOUR);
    assert!(matches!(
        CertificateAuthority::from_pem(&svid.chain_pem, &key.serialize_pem()),
        Err(CaError::NotCa)
    ));
}

/// A CA-shaped cert made by rcgen with the given tweaks, PEM with its key.
fn custom_ca(td_san: Option<&str>, key_usages: Vec<KeyUsagePurpose>) -> (String, String) {
    let key = generate_key();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = key_usages;
    params.subject_alt_names = td_san.into_iter().map(uri).collect();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[test]
fn from_pem_checks_key_usage_and_trust_domain() {
    let (cert, key) = custom_ca(Some("spiffe://example.org"), vec![KeyUsagePurpose::CrlSign]);
    assert!(matches!(
        CertificateAuthority::from_pem(&cert, &key),
        Err(CaError::NoKeyCertSign)
    ));

    let (cert, key) = custom_ca(None, vec![KeyUsagePurpose::KeyCertSign]);
    assert!(matches!(
        CertificateAuthority::from_pem(&cert, &key),
        Err(CaError::TrustDomainRequired)
    ));
    let ca = CertificateAuthority::from_pem_with_trust_domain(&cert, &key, Some("corp.example"))
        .unwrap();
    assert_eq!(ca.trust_domain(), "corp.example");
}

#[test]
fn intermediate_from_pem_sends_chain_and_bundles_root() {
    let (root_pem, inter_pem, inter_key) = rcgen_root_and_intermediate("example.org");
    let chain = format!("{inter_pem}{root_pem}");
    let ca = CertificateAuthority::from_pem(&chain, &inter_key).unwrap();
    assert_eq!(ca.trust_domain(), "example.org");
    assert_eq!(ca.bundle_pem(), root_pem);
    assert_eq!(ca.chain_pem(), inter_pem);

    let (_, svid) = issue(&ca, &id("spiffe://example.org/ns/a/sa/b"), HOUR);
    assert_eq!(svid.chain_der.len(), 2);
    assert_eq!(
        svid.chain_pem,
        format!("{}{inter_pem}", certs_to_pem(&svid.chain_der[..1]))
    );
    let inter_der = CertificateDer::from_pem_slice(inter_pem.as_bytes()).unwrap();
    parse(&svid.chain_der[0])
        .verify_signature(Some(parse(&inter_der).public_key()))
        .unwrap();
}

#[test]
fn from_pem_refuses_a_chain_that_does_not_link() {
    let (_root_pem, inter_pem, inter_key) = rcgen_root_and_intermediate("example.org");
    let (other_root, _, _) = rcgen_root_and_intermediate("example.org");
    let chain = format!("{inter_pem}{other_root}");
    assert!(matches!(
        CertificateAuthority::from_pem(&chain, &inter_key),
        Err(CaError::BrokenChain { index: 0 })
    ));
}

/// Root (CA) and intermediate (CA, `spiffe://td` SAN) made with rcgen directly.
pub(crate) fn rcgen_root_and_intermediate(td: &str) -> (String, String, String) {
    let root_key = generate_key();
    let mut root_params = CertificateParams::default();
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let root_cert = root_params.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root_params, root_key);

    let inter_key = generate_key();
    let mut inter_params = CertificateParams::default();
    inter_params.distinguished_name = DistinguishedName::new();
    inter_params
        .distinguished_name
        .push(DnType::CommonName, "ward intermediate");
    inter_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    inter_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    inter_params.subject_alt_names = vec![uri(&format!("spiffe://{td}"))];
    inter_params.use_authority_key_identifier_extension = true;
    let inter_cert = inter_params.signed_by(&inter_key, &root_issuer).unwrap();
    (root_cert.pem(), inter_cert.pem(), inter_key.serialize_pem())
}

#[test]
fn issued_leaf_profile() {
    let ca = root("example.org");
    let key = generate_key();
    let leaf_id = id("spiffe://example.org/ns/default/sa/web");
    let before = now_seconds();
    let svid = ca
        .sign_csr(
            &build_csr(&key, &leaf_id).unwrap(),
            &leaf_id,
            DEFAULT_SVID_TTL,
        )
        .unwrap();
    assert_eq!(svid.spiffe_id, leaf_id);
    assert_eq!(svid.chain_der.len(), 1);
    let cert = parse(&svid.chain_der[0]);

    assert_eq!(cert.raw_serial().len(), 16);
    assert_eq!(hex::encode(cert.raw_serial()), svid.serial_hex);
    assert_eq!(cert.validity().not_after.to_datetime(), svid.not_after);
    assert_eq!(svid.not_after, before + DEFAULT_SVID_TTL);
    assert!(cert.validity().not_before.to_datetime() <= before - CLOCK_SKEW);
    assert_eq!(cert.subject().to_string(), "O=Ward");

    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(!bc.value.ca);
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.critical);
    assert!(ku.value.digital_signature());
    assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign() && !ku.value.key_encipherment());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth && !eku.any);
    let sans = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        sans.value.general_names,
        vec![GeneralName::URI(leaf_id.as_str())]
    );
    assert!(cert.iter_extensions().any(|e| matches!(
        e.parsed_extension(),
        ParsedExtension::AuthorityKeyIdentifier(_)
    )));
    // The leaf's public key is the CSR's.
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        key.der_bytes()
    );
}

#[test]
fn serials_are_unique() {
    let ca = root("example.org");
    let key = generate_key();
    let leaf_id = id("spiffe://example.org/ns/a/sa/b");
    let csr = build_csr(&key, &leaf_id).unwrap();
    let a = ca.sign_csr(&csr, &leaf_id, HOUR).unwrap();
    let b = ca.sign_csr(&csr, &leaf_id, HOUR).unwrap();
    assert_ne!(a.serial_hex, b.serial_hex);
}

#[test]
fn csr_extensions_other_than_the_key_are_ignored() {
    let ca = root("example.org");
    let key = generate_key();
    let leaf_id = id("spiffe://example.org/ns/a/sa/b");
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![uri(leaf_id.as_str())];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let svid = ca.sign_csr(&csr, &leaf_id, HOUR).unwrap();
    let cert = parse(&svid.chain_der[0]);
    assert!(!cert.is_ca());
    assert!(!cert.key_usage().unwrap().unwrap().value.key_cert_sign());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth && !eku.code_signing);
    assert_eq!(cert.subject().to_string(), "O=Ward");
}

#[test]
fn csr_refusals() {
    let ca = root("example.org");
    let key = generate_key();
    let attested = id("spiffe://example.org/ns/a/sa/b");

    let other = id("spiffe://example.org/ns/a/sa/other");
    let csr = build_csr(&key, &other).unwrap();
    assert!(matches!(
        ca.sign_csr(&csr, &attested, HOUR),
        Err(CaError::CsrIdMismatch { .. })
    ));

    let csr = csr_with_sans(
        &key,
        vec![
            uri(attested.as_str()),
            SanType::DnsName("web.default.svc".try_into().unwrap()),
        ],
    );
    assert!(matches!(
        ca.sign_csr(&csr, &attested, HOUR),
        Err(CaError::CsrUnexpectedSan(_))
    ));

    let csr = csr_with_sans(&key, vec![]);
    assert!(matches!(
        ca.sign_csr(&csr, &attested, HOUR),
        Err(CaError::CsrMissingSan)
    ));

    let csr = csr_with_sans(&key, vec![uri(attested.as_str()), uri(other.as_str())]);
    assert!(matches!(
        ca.sign_csr(&csr, &attested, HOUR),
        Err(CaError::CsrMultipleUriSans(2))
    ));

    let csr = csr_with_sans(&key, vec![uri("https://example.org/x")]);
    assert!(matches!(
        ca.sign_csr(&csr, &attested, HOUR),
        Err(CaError::CsrInvalidSpiffeId(_))
    ));

    assert!(matches!(
        ca.sign_csr("garbage", &attested, HOUR),
        Err(CaError::MalformedCsr(_))
    ));
}

#[test]
fn tampered_csr_signature_is_refused() {
    let ca = root("example.org");
    let key = generate_key();
    let attested = id("spiffe://example.org/ns/a/sa/b");
    let csr = build_csr(&key, &attested).unwrap();
    let mut der = CertificateSigningRequestDer::from_pem_slice(csr.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec();
    // Flip a bit of the signed SAN URI, leaving the signature as it was.
    let pos = der
        .windows(attested.as_str().len())
        .position(|w| w == attested.as_str().as_bytes())
        .unwrap();
    der[pos + attested.as_str().len() - 1] ^= 0x01; // ".../sa/b" -> ".../sa/c"
    let tampered = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        BASE64.encode(&der)
    );
    assert!(matches!(
        ca.sign_csr(&tampered, &id("spiffe://example.org/ns/a/sa/c"), HOUR),
        Err(CaError::CsrBadSignature)
    ));
}

#[test]
fn identity_refusals() {
    let ca = root("example.org");
    let key = generate_key();
    let foreign = id("spiffe://other.org/ns/a/sa/b");
    let csr = build_csr(&key, &foreign).unwrap();
    assert!(matches!(
        ca.sign_csr(&csr, &foreign, HOUR),
        Err(CaError::ForeignTrustDomain { .. })
    ));
    let td_only = id("spiffe://example.org");
    let csr = build_csr(&key, &td_only).unwrap();
    assert!(matches!(
        ca.sign_csr(&csr, &td_only, HOUR),
        Err(CaError::IdWithoutPath(_))
    ));
}

#[test]
fn ttl_limits() {
    let ca = root("example.org").with_max_ttl(2 * HOUR);
    assert_eq!(ca.max_ttl(), 2 * HOUR);
    let key = generate_key();
    let attested = id("spiffe://example.org/ns/a/sa/b");
    let csr = build_csr(&key, &attested).unwrap();
    assert!(matches!(
        ca.sign_csr(&csr, &attested, Duration::ZERO),
        Err(CaError::ZeroTtl)
    ));
    assert!(matches!(
        ca.sign_csr(&csr, &attested, 2 * HOUR + Duration::from_secs(1)),
        Err(CaError::TtlTooLong { .. })
    ));
    ca.sign_csr(&csr, &attested, 2 * HOUR).unwrap();
    assert_eq!(root("example.org").max_ttl(), DEFAULT_MAX_SVID_TTL);
}

#[test]
fn leaf_is_clamped_to_ca_expiry() {
    let ca = CertificateAuthority::generate_root("example.org", HOUR).unwrap();
    let (_, svid) = issue(&ca, &id("spiffe://example.org/ns/a/sa/b"), DEFAULT_SVID_TTL);
    assert_eq!(svid.not_after, ca.not_after());
    assert_eq!(
        parse(&svid.chain_der[0]).validity().not_after.to_datetime(),
        ca.not_after()
    );
}

#[test]
fn issue_for_key_adds_dns_and_ip_sans() {
    let ca = root("example.org");
    let key = generate_key();
    let cp = id("spiffe://example.org/ns/ward-system/sa/ward-control-plane");
    let dns = vec![
        "localhost".to_owned(),
        "ward-control-plane.ward-system.svc".to_owned(),
    ];
    let ips = ["127.0.0.1".parse().unwrap()];
    let svid = ca.issue_for_key(&cp, &dns, &ips, &key, HOUR).unwrap();
    let cert = parse(&svid.chain_der[0]);
    let names = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .clone();
    assert_eq!(
        names,
        vec![
            GeneralName::URI(cp.as_str()),
            GeneralName::DNSName("localhost"),
            GeneralName::DNSName("ward-control-plane.ward-system.svc"),
            GeneralName::IPAddress(&[127, 0, 0, 1]),
        ]
    );
    assert!(matches!(
        ca.issue_for_key(&cp, &["bad name ü".to_owned()], &[], &key, HOUR),
        Err(CaError::InvalidDnsName(_))
    ));
    assert!(matches!(
        ca.issue_for_key(&id("spiffe://x.org/a"), &[], &[], &key, HOUR),
        Err(CaError::ForeignTrustDomain { .. })
    ));
}

#[test]
fn pem_output_parses_back() {
    let ca = root("example.org");
    let certs: Vec<_> = CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(certs, vec![ca.cert_der().clone()]);
}

#[test]
fn openssl_accepts_issued_leafs() {
    ward_testkit::require_tool!("openssl");
    let dir = tempfile::tempdir().unwrap();
    let ca = root("example.org");
    let key = generate_key();
    let attested = id("spiffe://example.org/ns/default/sa/web");
    let csr = build_csr(&key, &attested).unwrap();
    let a = ca.sign_csr(&csr, &attested, HOUR).unwrap();
    let b = ca.sign_csr(&csr, &attested, HOUR).unwrap();
    std::fs::write(dir.path().join("root.pem"), ca.bundle_pem()).unwrap();
    std::fs::write(dir.path().join("leaf.pem"), &a.chain_pem).unwrap();
    std::fs::write(dir.path().join("leaf2.pem"), &b.chain_pem).unwrap();

    let out = openssl(dir.path(), &["verify", "-CAfile", "root.pem", "leaf.pem"]);
    assert!(out.contains("leaf.pem: OK"), "{out}");

    let text = openssl(dir.path(), &["x509", "-in", "leaf.pem", "-text", "-noout"]);
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(text.contains("X509v3 Key Usage: critical"), "{text}");
    assert!(text.contains("Digital Signature"), "{text}");
    assert!(!text.contains("Certificate Sign"), "{text}");
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{text}"
    );
    assert!(text.contains(&format!("URI:{attested}")), "{text}");

    let serial = |file: &str| openssl(dir.path(), &["x509", "-in", file, "-noout", "-serial"]);
    assert_ne!(serial("leaf.pem"), serial("leaf2.pem"));
    assert_eq!(
        serial("leaf.pem").trim(),
        format!("serial={}", a.serial_hex.to_uppercase())
    );

    std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
    let fp = openssl(
        dir.path(),
        &["x509", "-in", "ca.pem", "-noout", "-fingerprint", "-sha256"],
    );
    assert!(fp.trim().ends_with(&ca.fingerprint_sha256()), "{fp}");
}

#[test]
fn openssl_made_intermediate_issues_verifiable_leafs() {
    ward_testkit::require_tool!("openssl");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("ca.ext"),
        "basicConstraints=critical,CA:true\n\
         keyUsage=critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier=hash\n\
         subjectAltName=URI:spiffe://corp.example\n",
    )
    .unwrap();
    openssl_root(d, "/O=Offline/CN=offline root", "30");
    openssl_csr(d, "inter", "/O=Ward/CN=ward intermediate");
    openssl_sign(d, "inter", "ca.ext", "10", &["-CAcreateserial"]);
    // Offline CAs often keep SEC1 ("EC PRIVATE KEY") keys.
    openssl(d, &["ec", "-in", "inter.key", "-out", "inter.sec1.key"]);
    let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    assert!(read("inter.sec1.key").starts_with("-----BEGIN EC PRIVATE KEY-----"));
    let chain = format!("{}{}", read("inter.pem"), read("root.pem"));
    let ca = CertificateAuthority::from_pem(&chain, &read("inter.sec1.key")).unwrap();
    assert_eq!(ca.trust_domain(), "corp.example");

    let (_, svid) = issue(&ca, &id("spiffe://corp.example/ns/a/sa/b"), HOUR);
    std::fs::write(d.join("bundle.pem"), ca.bundle_pem()).unwrap();
    std::fs::write(d.join("chain.pem"), ca.chain_pem()).unwrap();
    std::fs::write(d.join("leaf.pem"), &svid.chain_pem).unwrap();
    let out = openssl(
        d,
        &[
            "verify",
            "-CAfile",
            "bundle.pem",
            "-untrusted",
            "chain.pem",
            "leaf.pem",
        ],
    );
    assert!(out.contains("leaf.pem: OK"), "{out}");
}
