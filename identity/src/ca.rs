//! The Ward certificate authority: issues X.509-SVIDs to attested workloads.
//!
//! The CA is either a self-signed root made by [`CertificateAuthority::generate_root`]
//! or an existing root/intermediate loaded with [`CertificateAuthority::from_pem`].
//! Every leaf it issues has the same profile, whatever the CSR asks for:
//! CA:false, critical keyUsage digitalSignature, EKU serverAuth+clientAuth,
//! exactly one URI SAN (the attested SPIFFE ID), an authority key identifier,
//! a 128-bit random serial and `notBefore = now - 1 minute` (clock skew).
//!
//! Lifetime rules: a TTL of zero or above [`CertificateAuthority::max_ttl`]
//! (default [`DEFAULT_MAX_SVID_TTL`], 7 days) is refused; a leaf that would
//! outlive the CA certificate is **clamped** to the CA's `notAfter` (the
//! actual expiry is reported in [`IssuedSvid::not_after`]).

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SignatureAlgorithm,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;

use crate::spiffe_id::{SpiffeId, SpiffeIdError};

/// Lifetime of a workload SVID unless the caller asks otherwise.
pub const DEFAULT_SVID_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest SVID lifetime a CA issues unless configured with
/// [`CertificateAuthority::with_max_ttl`]. Short-lived certs are the
/// revocation story of the mesh, so keep this small.
pub const DEFAULT_MAX_SVID_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Backdating of `notBefore`, so peers with a slightly slow clock accept a fresh SVID.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Why the CA could not be built or refused to issue a certificate.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("invalid trust domain {0:?}: {1}")]
    InvalidTrustDomain(String, SpiffeIdError),
    #[error("CA validity must be greater than zero")]
    ZeroValidity,
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("no certificate found in the CA certificate PEM")]
    NoCertificate,
    #[error("malformed CA certificate: {0}")]
    MalformedCertificate(String),
    #[error("malformed CA private key (PKCS#8, SEC1 or PKCS#1 PEM expected): {0}")]
    MalformedKey(String),
    #[error("the private key does not match the CA certificate")]
    KeyMismatch,
    #[error("the CA certificate is not a CA (basicConstraints CA:true missing)")]
    NotCa,
    #[error("the CA certificate's keyUsage lacks keyCertSign")]
    NoKeyCertSign,
    #[error("certificate #{index} of the CA chain is not signed by the one after it")]
    BrokenChain { index: usize },
    #[error("the CA certificate expired at {0}")]
    CaExpired(OffsetDateTime),
    #[error("the CA certificate has no spiffe:// URI SAN: the trust domain must be supplied")]
    TrustDomainRequired,
    #[error("the CA certificate is for trust domain {cert:?} but {supplied:?} was supplied")]
    TrustDomainConflict { cert: String, supplied: String },
    #[error("malformed CSR: {0}")]
    MalformedCsr(String),
    #[error("the CSR's signature does not verify")]
    CsrBadSignature,
    #[error("unsupported CSR key algorithm (P-256, P-384 or Ed25519 expected)")]
    UnsupportedKeyAlgorithm,
    #[error("the CSR carries no subjectAltName; exactly one URI SAN is required")]
    CsrMissingSan,
    #[error("the CSR carries a SAN other than the SPIFFE ID: {0}")]
    CsrUnexpectedSan(String),
    #[error("the CSR carries {0} URI SANs; exactly one is required")]
    CsrMultipleUriSans(usize),
    #[error("the CSR's URI SAN is not a valid SPIFFE ID: {0}")]
    CsrInvalidSpiffeId(SpiffeIdError),
    #[error("the CSR asks for {requested} but the workload was attested as {attested}")]
    CsrIdMismatch { attested: String, requested: String },
    #[error("{id} is outside this CA's trust domain {ca_trust_domain:?}")]
    ForeignTrustDomain { id: String, ca_trust_domain: String },
    #[error("{0} has no path; workload SVIDs need one")]
    IdWithoutPath(String),
    #[error("invalid DNS name for a SAN: {0:?}")]
    InvalidDnsName(String),
    #[error("requested TTL is zero")]
    ZeroTtl,
    #[error("requested TTL {requested:?} exceeds the maximum {max:?}")]
    TtlTooLong { requested: Duration, max: Duration },
}

/// A freshly issued X.509-SVID (the private key stays with the workload).
#[derive(Debug, Clone)]
pub struct IssuedSvid {
    /// Leaf then intermediates, PEM.
    pub chain_pem: String,
    /// Leaf then intermediates, DER.
    pub chain_der: Vec<CertificateDer<'static>>,
    pub spiffe_id: SpiffeId,
    pub not_after: OffsetDateTime,
    /// Serial number, lower-case hex.
    pub serial_hex: String,
}

/// A signing CA for one trust domain.
pub struct CertificateAuthority {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    /// The certificates above the CA certificate, as supplied (root last).
    issuers_der: Vec<CertificateDer<'static>>,
    not_after: OffsetDateTime,
    max_ttl: Duration,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("fingerprint", &self.fingerprint_sha256())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Generates a self-signed ECDSA P-256 root for `trust_domain`, valid
    /// from one minute ago for `validity`.
    pub fn generate_root(trust_domain: &str, validity: Duration) -> Result<Self, CaError> {
        let td_id = trust_domain_id(trust_domain)?;
        if validity.is_zero() {
            return Err(CaError::ZeroValidity);
        }
        let key = generate_key();
        let now = now_seconds();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Ward");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("ward root {trust_domain}"));
        params.subject_alt_names = vec![uri_san(&td_id)?];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial());
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + validity;
        let cert = params.self_signed(&key)?;
        let not_after = params.not_after;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            issuer: Issuer::new(params, key),
            cert_der: cert.der().clone(),
            issuers_der: Vec::new(),
            not_after,
            max_ttl: DEFAULT_MAX_SVID_TTL,
        })
    }

    /// Loads a CA whose certificate carries its trust domain as a
    /// `spiffe://<td>` URI SAN. See [`Self::from_pem_with_trust_domain`].
    pub fn from_pem(cert_chain_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        Self::from_pem_with_trust_domain(cert_chain_pem, key_pem, None)
    }

    /// Loads a root or intermediate CA.
    ///
    /// `cert_chain_pem`: the CA certificate first, then its issuers up to the
    /// root (which is what workloads trust, see [`Self::bundle_pem`]).
    /// `key_pem`: the CA's PKCS#8 private key; it must match the certificate.
    /// The CA certificate must be CA:true with keyCertSign and not expired.
    /// The trust domain comes from the certificate's `spiffe://<td>` URI SAN;
    /// `trust_domain` is required when there is none, and must agree with it
    /// when there is one.
    pub fn from_pem_with_trust_domain(
        cert_chain_pem: &str,
        key_pem: &str,
        trust_domain: Option<&str>,
    ) -> Result<Self, CaError> {
        let mut certs = CertificateDer::pem_slice_iter(cert_chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CaError::MalformedCertificate(e.to_string()))?;
        if certs.is_empty() {
            return Err(CaError::NoCertificate);
        }
        let cert_der = certs.remove(0);
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::MalformedKey(e.to_string()))?;
        let (_, cert) = X509Certificate::from_der(&cert_der)
            .map_err(|e| CaError::MalformedCertificate(e.to_string()))?;

        if cert.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            return Err(CaError::KeyMismatch);
        }
        check_signing_cert(&cert)?;
        let not_after = cert.validity().not_after.to_datetime();
        if not_after <= OffsetDateTime::now_utc() {
            return Err(CaError::CaExpired(not_after));
        }
        let trust_domain = resolve_trust_domain(&cert, trust_domain)?;
        check_chain_links(&cert_der, &certs)?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(Self {
            trust_domain,
            issuer,
            cert_der,
            issuers_der: certs,
            not_after,
            max_ttl: DEFAULT_MAX_SVID_TTL,
        })
    }

    /// Sets the longest TTL [`Self::sign_csr`] accepts.
    pub fn with_max_ttl(mut self, max_ttl: Duration) -> Self {
        self.set_max_ttl(max_ttl);
        self
    }

    pub fn set_max_ttl(&mut self, max_ttl: Duration) {
        self.max_ttl = max_ttl;
    }

    pub fn max_ttl(&self) -> Duration {
        self.max_ttl
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The CA certificate, PEM (for persisting next to [`Self::key_pem`]).
    pub fn cert_pem(&self) -> String {
        certs_to_pem(std::slice::from_ref(&self.cert_der))
    }

    /// The CA private key, PKCS#8 PEM. Secret: persist with mode 0600.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The root workloads must trust: the CA certificate itself for a root,
    /// otherwise the last certificate of the supplied chain.
    pub fn bundle_pem(&self) -> String {
        certs_to_pem(std::slice::from_ref(
            self.issuers_der.last().unwrap_or(&self.cert_der),
        ))
    }

    /// The root of [`Self::bundle_pem`], DER.
    pub fn root_der(&self) -> &CertificateDer<'static> {
        self.issuers_der.last().unwrap_or(&self.cert_der)
    }

    /// The CA certificate then its issuers up to the root (PEM), as
    /// imported: what [`Self::from_pem`] loads back.
    pub fn full_chain_pem(&self) -> String {
        let chain: Vec<CertificateDer<'static>> = std::iter::once(&self.cert_der)
            .chain(&self.issuers_der)
            .cloned()
            .collect();
        certs_to_pem(&chain)
    }

    /// The intermediates a workload sends after its leaf (PEM): empty for a
    /// root CA, otherwise the CA certificate and its issuers below the root.
    pub fn chain_pem(&self) -> String {
        certs_to_pem(&self.chain_der())
    }

    /// [`Self::chain_pem`] as DER.
    pub fn chain_der(&self) -> Vec<CertificateDer<'static>> {
        let Some((_root, between)) = self.issuers_der.split_last() else {
            return Vec::new();
        };
        std::iter::once(&self.cert_der)
            .chain(between)
            .cloned()
            .collect()
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// SHA-256 of the CA certificate DER, `AB:CD:…` like `openssl x509 -fingerprint`.
    pub fn fingerprint_sha256(&self) -> String {
        fingerprint_sha256(&self.cert_der)
    }

    /// Issues an SVID for `attested` to the key in `csr_pem`.
    ///
    /// The CSR must be self-signed correctly and carry exactly one SAN, a URI
    /// equal to `attested`. Only its public key is used; every other
    /// extension it requests is ignored.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        attested: &SpiffeId,
        ttl: Duration,
    ) -> Result<IssuedSvid, CaError> {
        self.check_issuable(attested, ttl)?;
        let public_key = checked_csr_key(csr_pem, attested)?;
        self.issue(attested, Vec::new(), &public_key, ttl)
    }

    /// Everything `sign_csr` checks about the CSR and the ID, without
    /// signing: lets the control plane refuse a bad request before it
    /// consumes a one-time credential.
    pub fn check_csr(&self, csr_pem: &str, requested: &SpiffeId) -> Result<(), CaError> {
        self.check_issuable(requested, self.max_ttl.min(DEFAULT_SVID_TTL))?;
        checked_csr_key(csr_pem, requested).map(drop)
    }

    /// Issues a leaf with the SVID profile for a key the caller holds (the
    /// control plane's own serving certificate), with extra DNS/IP SANs.
    pub fn issue_for_key(
        &self,
        id: &SpiffeId,
        dns_names: &[String],
        ip_addrs: &[IpAddr],
        key: &KeyPair,
        ttl: Duration,
    ) -> Result<IssuedSvid, CaError> {
        self.check_issuable(id, ttl)?;
        let mut extra = Vec::with_capacity(dns_names.len() + ip_addrs.len());
        for name in dns_names {
            let dns = name
                .clone()
                .try_into()
                .map_err(|_| CaError::InvalidDnsName(name.clone()))?;
            extra.push(SanType::DnsName(dns));
        }
        extra.extend(ip_addrs.iter().copied().map(SanType::IpAddress));
        self.issue(id, extra, key, ttl)
    }

    fn check_issuable(&self, id: &SpiffeId, ttl: Duration) -> Result<(), CaError> {
        if id.trust_domain() != self.trust_domain {
            return Err(CaError::ForeignTrustDomain {
                id: id.to_string(),
                ca_trust_domain: self.trust_domain.clone(),
            });
        }
        if id.path().is_empty() {
            return Err(CaError::IdWithoutPath(id.to_string()));
        }
        if ttl.is_zero() {
            return Err(CaError::ZeroTtl);
        }
        if ttl > self.max_ttl {
            return Err(CaError::TtlTooLong {
                requested: ttl,
                max: self.max_ttl,
            });
        }
        Ok(())
    }

    fn issue(
        &self,
        id: &SpiffeId,
        extra_sans: Vec<SanType>,
        public_key: &impl PublicKeyData,
        ttl: Duration,
    ) -> Result<IssuedSvid, CaError> {
        let now = now_seconds();
        if self.not_after <= now {
            return Err(CaError::CaExpired(self.not_after));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Ward");
        params.subject_alt_names = std::iter::once(uri_san(id)?).chain(extra_sans).collect();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let serial = random_serial();
        params.serial_number = Some(serial.clone());
        params.not_before = now - CLOCK_SKEW;
        // Clamped: a leaf must never outlive the certificate that signed it.
        params.not_after = (now + ttl).min(self.not_after);

        let leaf = params.signed_by(public_key, &self.issuer)?;
        let mut chain_der = vec![leaf.der().clone()];
        chain_der.extend(self.chain_der());
        Ok(IssuedSvid {
            chain_pem: certs_to_pem(&chain_der),
            chain_der,
            spiffe_id: id.clone(),
            not_after: params.not_after,
            serial_hex: hex::encode(serial.to_bytes()),
        })
    }
}

/// Parses `csr_pem`, verifies its self-signature and that its only SAN is
/// `id`, and returns its public key.
fn checked_csr_key(csr_pem: &str, id: &SpiffeId) -> Result<CsrPublicKey, CaError> {
    let csr_der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|e| CaError::MalformedCsr(e.to_string()))?;
    let (_, csr) = X509CertificationRequest::from_der(&csr_der)
        .map_err(|e| CaError::MalformedCsr(e.to_string()))?;
    csr.verify_signature()
        .map_err(|_| CaError::CsrBadSignature)?;
    check_csr_san(&csr, id)?;
    CsrPublicKey::from_csr(&csr)
}

/// A new ECDSA P-256 workload key.
pub fn generate_key() -> KeyPair {
    // Only fails if the system RNG does, in which case nothing can be issued anyway.
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key generation failed")
}

/// A PEM CSR for `id`: its only content besides the key is the one URI SAN.
pub fn build_csr(key: &KeyPair, id: &SpiffeId) -> Result<String, CaError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![uri_san(id)?];
    Ok(params.serialize_request(key)?.pem()?)
}

/// SHA-256 of `der`, colon-separated upper-case hex.
pub fn fingerprint_sha256(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The public key of a verified CSR, in the form rcgen signs.
struct CsrPublicKey {
    raw: Vec<u8>,
    alg: &'static SignatureAlgorithm,
}

impl CsrPublicKey {
    fn from_csr(csr: &X509CertificationRequest<'_>) -> Result<Self, CaError> {
        let spki = &csr.certification_request_info.subject_pki;
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        let alg = if spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
            match curve {
                Some(c) if c == OID_EC_P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
                Some(c) if c == OID_NIST_EC_P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
                _ => return Err(CaError::UnsupportedKeyAlgorithm),
            }
        } else if spki.algorithm.algorithm == OID_SIG_ED25519 {
            &rcgen::PKCS_ED25519
        } else {
            return Err(CaError::UnsupportedKeyAlgorithm);
        };
        Ok(Self {
            raw: spki.subject_public_key.data.to_vec(),
            alg,
        })
    }
}

impl PublicKeyData for CsrPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

/// Exactly one SAN, a URI equal to the attested ID.
fn check_csr_san(csr: &X509CertificationRequest<'_>, attested: &SpiffeId) -> Result<(), CaError> {
    let names: Vec<&GeneralName<'_>> = csr
        .requested_extensions()
        .into_iter()
        .flatten()
        .filter_map(|ext| match ext {
            ParsedExtension::SubjectAlternativeName(san) => Some(san.general_names.iter()),
            _ => None,
        })
        .flatten()
        .collect();
    if names.is_empty() {
        return Err(CaError::CsrMissingSan);
    }
    let uris: Vec<&str> = names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    if let Some(other) = names.iter().find(|n| !matches!(n, GeneralName::URI(_))) {
        return Err(CaError::CsrUnexpectedSan(other.to_string()));
    }
    if uris.len() > 1 {
        return Err(CaError::CsrMultipleUriSans(uris.len()));
    }
    let requested = SpiffeId::parse(uris[0]).map_err(CaError::CsrInvalidSpiffeId)?;
    if &requested != attested {
        return Err(CaError::CsrIdMismatch {
            attested: attested.to_string(),
            requested: requested.to_string(),
        });
    }
    Ok(())
}

/// A signing certificate must be CA:true with keyCertSign.
fn check_signing_cert(cert: &X509Certificate<'_>) -> Result<(), CaError> {
    let bc = cert
        .basic_constraints()
        .map_err(|e| CaError::MalformedCertificate(e.to_string()))?;
    if !bc.is_some_and(|bc| bc.value.ca) {
        return Err(CaError::NotCa);
    }
    let ku = cert
        .key_usage()
        .map_err(|e| CaError::MalformedCertificate(e.to_string()))?;
    if !ku.is_some_and(|ku| ku.value.key_cert_sign()) {
        return Err(CaError::NoKeyCertSign);
    }
    Ok(())
}

/// Each certificate of a loaded chain must be signed by the next one, or
/// the leafs issued would not verify against the bundle.
fn check_chain_links(
    ca_cert: &CertificateDer<'_>,
    issuers: &[CertificateDer<'_>],
) -> Result<(), CaError> {
    let parsed = std::iter::once(ca_cert)
        .chain(issuers)
        .map(|der| X509Certificate::from_der(der).map(|(_, cert)| cert))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaError::MalformedCertificate(e.to_string()))?;
    for (index, pair) in parsed.windows(2).enumerate() {
        pair[0]
            .verify_signature(Some(pair[1].public_key()))
            .map_err(|_| CaError::BrokenChain { index })?;
    }
    Ok(())
}

/// The trust domain from the cert's `spiffe://` URI SAN, reconciled with the supplied one.
fn resolve_trust_domain(
    cert: &X509Certificate<'_>,
    supplied: Option<&str>,
) -> Result<String, CaError> {
    let from_cert = cert
        .subject_alternative_name()
        .map_err(|e| CaError::MalformedCertificate(e.to_string()))?
        .into_iter()
        .flat_map(|san| san.value.general_names.iter())
        .find_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => SpiffeId::parse(uri).ok(),
            _ => None,
        })
        .map(|id| id.trust_domain().to_owned());
    match (from_cert, supplied) {
        (Some(cert_td), Some(supplied)) if cert_td != supplied => {
            Err(CaError::TrustDomainConflict {
                cert: cert_td,
                supplied: supplied.to_owned(),
            })
        }
        (Some(td), _) => Ok(td),
        (None, Some(supplied)) => {
            trust_domain_id(supplied)?;
            Ok(supplied.to_owned())
        }
        (None, None) => Err(CaError::TrustDomainRequired),
    }
}

fn trust_domain_id(trust_domain: &str) -> Result<SpiffeId, CaError> {
    let id = SpiffeId::parse(&format!("spiffe://{trust_domain}"))
        .map_err(|e| CaError::InvalidTrustDomain(trust_domain.to_owned(), e))?;
    if !id.path().is_empty() {
        // "example.org/x" parses as an ID with a path; it is not a trust domain.
        return Err(CaError::InvalidTrustDomain(
            trust_domain.to_owned(),
            SpiffeIdError::BadTrustDomainChar('/'),
        ));
    }
    Ok(id)
}

fn uri_san(id: &SpiffeId) -> Result<SanType, CaError> {
    Ok(SanType::URI(id.as_str().try_into()?))
}

/// 16 bytes from the CSPRNG, high bit cleared so the DER INTEGER stays positive.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes[0] &= 0x7f;
    // A zero first byte would be dropped by the encoder; keep the length fixed.
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

/// Now, truncated to whole seconds as X.509 times are.
fn now_seconds() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

/// Certificates as concatenated PEM blocks.
pub(crate) fn certs_to_pem(certs: &[CertificateDer<'_>]) -> String {
    certs
        .iter()
        .map(|der| {
            let b64 = BASE64.encode(der);
            let lines: Vec<&str> = b64
                .as_bytes()
                .chunks(64)
                .map(|c| std::str::from_utf8(c).unwrap_or_default())
                .collect();
            format!(
                "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                lines.join("\n")
            )
        })
        .collect()
}

#[cfg(test)]
mod tests;
