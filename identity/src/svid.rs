//! X.509-SVID verification, to the SPIFFE X.509-SVID specification.
//!
//! [`verify_chain`] reads the leaf's SPIFFE ID first, picks the trust bundle
//! of *that* trust domain (roots of other trust domains never count), checks
//! the SVID profile of the leaf and of every intermediate, then builds and
//! verifies the chain with webpki and the aws-lc-rs algorithms. Each broken
//! rule has its own [`SvidError`] variant; [`SvidError::reason`] folds them
//! into a few stable metric labels.

use std::fmt;
use std::sync::LazyLock;

use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use time::OffsetDateTime;
use webpki::{EndEntityCert, ExtendedKeyUsageValidator, KeyPurposeIdIter};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::bundle::TrustBundles;
use crate::spiffe_id::{SpiffeId, SpiffeIdError};

/// The side of a connection a certificate is checked for; selects the EKU
/// the leaf must carry when it has an EKU extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// serverAuth required (if EKU present).
    Server,
    /// clientAuth required (if EKU present).
    Client,
    /// Both serverAuth and clientAuth required (if EKU present): a workload
    /// SVID serves both sides of mesh connections.
    Any,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Server => "server",
            Role::Client => "client",
            Role::Any => "client and server",
        })
    }
}

/// A chain that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSvid {
    pub spiffe_id: SpiffeId,
    pub not_after: OffsetDateTime,
}

/// Why a chain is not an acceptable X.509-SVID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    #[error("no certificate presented")]
    NoCertificate,
    #[error("malformed certificate: {0}")]
    Malformed(String),
    #[error("the leaf has no URI SAN")]
    NoUriSan,
    #[error("the leaf has {0} URI SANs; an X.509-SVID has exactly one")]
    MultipleUriSans(usize),
    #[error("the leaf's URI SAN is not a valid SPIFFE ID: {0}")]
    InvalidSpiffeId(SpiffeIdError),
    #[error("the leaf's SPIFFE ID {0} has no path (trust-domain IDs are for signing certificates)")]
    NoPath(String),
    #[error("no trust bundle for trust domain {0:?}")]
    UnknownTrustDomain(String),
    #[error("the chain does not lead to a root of the leaf's trust domain")]
    UnknownIssuer,
    #[error("a certificate signature in the chain does not verify")]
    BadSignature,
    #[error("a certificate in the chain has expired")]
    Expired,
    #[error("a certificate in the chain is not valid yet")]
    NotYetValid,
    #[error("the leaf is a CA (basicConstraints CA:true)")]
    LeafIsCa,
    #[error("the leaf has no basicConstraints extension")]
    MissingBasicConstraints,
    #[error("the leaf has no keyUsage extension")]
    KeyUsageMissing,
    #[error("the leaf's keyUsage extension is not critical")]
    KeyUsageNotCritical,
    #[error("the leaf's keyUsage lacks digitalSignature")]
    MissingDigitalSignature,
    #[error("the leaf's keyUsage has keyCertSign")]
    LeafHasKeyCertSign,
    #[error("the leaf's keyUsage has cRLSign")]
    LeafHasCrlSign,
    #[error("the leaf's extended key usage does not allow {role} authentication")]
    WrongExtendedKeyUsage { role: Role },
    #[error("intermediate #{index} is not a CA (basicConstraints CA:true missing)")]
    IntermediateNotCa { index: usize },
    #[error("intermediate #{index} lacks keyUsage keyCertSign")]
    IntermediateWithoutKeyCertSign { index: usize },
    #[error("expected peer {expected}, found {found}")]
    IdentityMismatch { expected: String, found: String },
    #[error("the private key does not match the leaf certificate")]
    KeyMismatch,
    #[error("unusable private key: {0}")]
    InvalidKey(String),
    #[error("chain verification failed: {0}")]
    Chain(String),
}

impl SvidError {
    /// A short, fixed label for metrics and alerts.
    pub fn reason(&self) -> &'static str {
        use SvidError::*;
        match self {
            NoCertificate => "no_certificate",
            Malformed(_) => "malformed",
            UnknownTrustDomain(_) => "wrong_trust_domain",
            UnknownIssuer => "unknown_ca",
            BadSignature => "bad_signature",
            Expired => "expired",
            NotYetValid => "not_yet_valid",
            WrongExtendedKeyUsage { .. } => "wrong_eku",
            IdentityMismatch { .. } => "identity_mismatch",
            KeyMismatch | InvalidKey(_) => "key_mismatch",
            Chain(_) => "bad_chain",
            NoUriSan
            | MultipleUriSans(_)
            | InvalidSpiffeId(_)
            | NoPath(_)
            | LeafIsCa
            | MissingBasicConstraints
            | KeyUsageMissing
            | KeyUsageNotCritical
            | MissingDigitalSignature
            | LeafHasKeyCertSign
            | LeafHasCrlSign
            | IntermediateNotCa { .. }
            | IntermediateWithoutKeyCertSign { .. } => "bad_svid",
        }
    }
}

/// The aws-lc-rs algorithms, built once.
pub(crate) static ALGORITHMS: LazyLock<WebPkiSupportedAlgorithms> = LazyLock::new(|| {
    rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms
});

/// Verifies `chain` (leaf first, then intermediates) as an X.509-SVID for
/// `role`, against the bundle of the leaf's own trust domain.
pub fn verify_chain(
    chain: &[CertificateDer<'_>],
    bundles: &TrustBundles,
    role: Role,
    now: UnixTime,
) -> Result<VerifiedSvid, SvidError> {
    let (leaf_der, intermediates) = chain.split_first().ok_or(SvidError::NoCertificate)?;
    let leaf = parse(leaf_der)?;
    let spiffe_id = leaf_spiffe_id(&leaf)?;
    let anchors = bundles
        .anchors_for(spiffe_id.trust_domain())
        .ok_or_else(|| SvidError::UnknownTrustDomain(spiffe_id.trust_domain().to_owned()))?;
    check_leaf_profile(&leaf, role)?;
    for (index, der) in intermediates.iter().enumerate() {
        check_intermediate(&parse(der)?, index)?;
    }

    let end_entity =
        EndEntityCert::try_from(leaf_der).map_err(|e| SvidError::Malformed(format!("{e:?}")))?;
    end_entity
        .verify_for_usage(
            ALGORITHMS.all,
            anchors,
            intermediates,
            now,
            // EKU was checked above, per role, by `check_leaf_profile`.
            EkuCheckedElsewhere,
            None,
            None,
        )
        .map_err(map_webpki_error)?;
    Ok(VerifiedSvid {
        spiffe_id,
        not_after: leaf.validity().not_after.to_datetime(),
    })
}

/// The SPIFFE ID of a leaf: its single URI SAN, with a non-empty path.
/// Does not verify anything else; use on already-verified certificates.
pub fn spiffe_id_of(leaf: &CertificateDer<'_>) -> Result<SpiffeId, SvidError> {
    leaf_spiffe_id(&parse(leaf)?)
}

/// When a leaf expires. Does not verify anything; use on already-verified
/// certificates.
pub fn not_after_of(leaf: &CertificateDer<'_>) -> Result<OffsetDateTime, SvidError> {
    Ok(parse(leaf)?.validity().not_after.to_datetime())
}

/// What a connection needs of an already-verified peer leaf, read in one
/// parse: its SPIFFE ID, expiry and serial number ([`serial_of`]'s form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafFacts {
    pub spiffe_id: SpiffeId,
    pub not_after: OffsetDateTime,
    pub serial: String,
}

/// The [`LeafFacts`] of a leaf. Does not verify anything; use on
/// already-verified certificates.
pub fn leaf_facts(leaf: &CertificateDer<'_>) -> Result<LeafFacts, SvidError> {
    let cert = parse(leaf)?;
    Ok(LeafFacts {
        spiffe_id: leaf_spiffe_id(&cert)?,
        not_after: cert.validity().not_after.to_datetime(),
        serial: serial_hex(cert.raw_serial()),
    })
}

/// A leaf's serial number as lowercase hex without leading zeros: the one
/// form serials are compared in (revocation, issuance records).
pub fn serial_of(leaf: &CertificateDer<'_>) -> Result<String, SvidError> {
    Ok(serial_hex(parse(leaf)?.raw_serial()))
}

/// `text` (hex digits, optionally `:`-separated, any case) in the form
/// [`serial_of`] gives; `None` when it is not a serial number.
pub fn canonical_serial(text: &str) -> Option<String> {
    let digits: String = text.chars().filter(|c| *c != ':').collect();
    if digits.is_empty() || digits.len() > 40 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let trimmed = digits.trim_start_matches('0').to_ascii_lowercase();
    Some(if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed
    })
}

fn serial_hex(raw: &[u8]) -> String {
    canonical_serial(&hex::encode(raw)).unwrap_or_else(|| "0".to_owned())
}

/// Whether `issuer`'s key signed `cert` (no other check: a CA rotation asks
/// which CA a certificate in use came from). False when either does not
/// parse.
pub fn signed_by(cert: &CertificateDer<'_>, issuer: &CertificateDer<'_>) -> bool {
    let (Ok(cert), Ok(issuer)) = (parse(cert), parse(issuer)) else {
        return false;
    };
    cert.verify_signature(Some(issuer.public_key())).is_ok()
}

/// Checks that `key` is the private key of `leaf` (same public key).
pub fn check_key_matches(
    leaf: &CertificateDer<'_>,
    key: &PrivateKeyDer<'_>,
) -> Result<(), SvidError> {
    let signing_key = rustls::crypto::aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| SvidError::InvalidKey(e.to_string()))?;
    let spki = signing_key
        .public_key()
        .ok_or_else(|| SvidError::InvalidKey("public key unavailable".into()))?;
    if spki.as_ref() != parse(leaf)?.public_key().raw {
        return Err(SvidError::KeyMismatch);
    }
    Ok(())
}

fn parse<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, SvidError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(SvidError::Malformed(
            "trailing data after certificate".into(),
        )),
        Err(e) => Err(SvidError::Malformed(e.to_string())),
    }
}

fn malformed(e: x509_parser::error::X509Error) -> SvidError {
    SvidError::Malformed(e.to_string())
}

fn leaf_spiffe_id(leaf: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    let uris: Vec<&str> = leaf
        .subject_alternative_name()
        .map_err(malformed)?
        .into_iter()
        .flat_map(|san| san.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    let uri = match uris.as_slice() {
        [] => return Err(SvidError::NoUriSan),
        [uri] => *uri,
        _ => return Err(SvidError::MultipleUriSans(uris.len())),
    };
    let id = SpiffeId::parse(uri).map_err(SvidError::InvalidSpiffeId)?;
    if id.path().is_empty() {
        return Err(SvidError::NoPath(id.to_string()));
    }
    Ok(id)
}

fn check_leaf_profile(leaf: &X509Certificate<'_>, role: Role) -> Result<(), SvidError> {
    let bc = leaf
        .basic_constraints()
        .map_err(malformed)?
        .ok_or(SvidError::MissingBasicConstraints)?;
    if bc.value.ca {
        return Err(SvidError::LeafIsCa);
    }
    let ku = leaf
        .key_usage()
        .map_err(malformed)?
        .ok_or(SvidError::KeyUsageMissing)?;
    if !ku.critical {
        return Err(SvidError::KeyUsageNotCritical);
    }
    if !ku.value.digital_signature() {
        return Err(SvidError::MissingDigitalSignature);
    }
    if ku.value.key_cert_sign() {
        return Err(SvidError::LeafHasKeyCertSign);
    }
    if ku.value.crl_sign() {
        return Err(SvidError::LeafHasCrlSign);
    }
    // EKU is optional, but when present it must allow the role.
    if let Some(eku) = leaf.extended_key_usage().map_err(malformed)? {
        let (server, client) = (eku.value.server_auth, eku.value.client_auth);
        let allowed = match role {
            Role::Server => server,
            Role::Client => client,
            Role::Any => server && client,
        };
        if !allowed {
            return Err(SvidError::WrongExtendedKeyUsage { role });
        }
    }
    Ok(())
}

fn check_intermediate(cert: &X509Certificate<'_>, index: usize) -> Result<(), SvidError> {
    if !cert
        .basic_constraints()
        .map_err(malformed)?
        .is_some_and(|bc| bc.value.ca)
    {
        return Err(SvidError::IntermediateNotCa { index });
    }
    if !cert
        .key_usage()
        .map_err(malformed)?
        .is_some_and(|ku| ku.value.key_cert_sign())
    {
        return Err(SvidError::IntermediateWithoutKeyCertSign { index });
    }
    Ok(())
}

fn map_webpki_error(err: webpki::Error) -> SvidError {
    use webpki::Error as E;
    match err {
        E::CertExpired { .. } => SvidError::Expired,
        E::CertNotValidYet { .. } => SvidError::NotYetValid,
        E::UnknownIssuer => SvidError::UnknownIssuer,
        E::InvalidSignatureForPublicKey
        | E::UnsupportedSignatureAlgorithmContext(_)
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => SvidError::BadSignature,
        E::CaUsedAsEndEntity => SvidError::LeafIsCa,
        other => SvidError::Chain(format!("{other:?}")),
    }
}

/// The leaf's EKU is checked per [`Role`] before path building; webpki
/// still parses it, so a malformed EKU extension is still rejected.
struct EkuCheckedElsewhere;

impl ExtendedKeyUsageValidator for EkuCheckedElsewhere {
    fn validate(&self, iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        for id in iter {
            id?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
