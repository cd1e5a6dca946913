//! Certificate makers for tests: rcgen with full control over every field,
//! so each test can break exactly one X.509-SVID rule.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use crate::bundle::TrustBundles;
use crate::ca::{CertificateAuthority, IssuedSvid, build_csr, generate_key};
use crate::spiffe_id::SpiffeId;

pub const HOUR: Duration = Duration::from_secs(3600);

/// A signing certificate and its key.
pub struct TestCa {
    pub issuer: Issuer<'static, KeyPair>,
    pub der: CertificateDer<'static>,
    pub pem: String,
}

impl TestCa {
    /// A self-signed root for `td` (CA:true, keyCertSign+cRLSign, `spiffe://td`).
    pub fn root(td: &str) -> Self {
        let key = generate_key();
        let params = ca_params(td, "test root");
        let cert = params.self_signed(&key).unwrap();
        Self {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// An intermediate signed by `self`; `tweak` may break its profile.
    pub fn intermediate(&self, td: &str, tweak: impl FnOnce(&mut CertificateParams)) -> Self {
        let key = generate_key();
        let mut params = ca_params(td, "test intermediate");
        tweak(&mut params);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Self {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf signed by `self`, valid SVID profile for `id` unless `tweak`ed.
    pub fn leaf(
        &self,
        id: &str,
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> (CertificateDer<'static>, KeyPair) {
        let key = generate_key();
        let mut params = leaf_params(id);
        tweak(&mut params);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.der().clone(), key)
    }

    pub fn bundles(&self, td: &str) -> TrustBundles {
        TrustBundles::new().with_root(td, &self.pem).unwrap()
    }
}

fn ca_params(td: &str, cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{cn} {td}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names = vec![uri(&format!("spiffe://{td}"))];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - HOUR;
    params.not_after = now + 24 * HOUR;
    params
}

/// The X.509-SVID leaf profile Ward issues.
pub fn leaf_params(id: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![uri(id)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::from_secs(60);
    params.not_after = now + HOUR;
    params
}

pub fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

pub fn key_der(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))
}

/// A fresh key and the SVID `ca` signs for it as `id`, valid `ttl`, from
/// the CSR a workload sends.
pub fn issue(ca: &CertificateAuthority, id: &SpiffeId, ttl: Duration) -> (KeyPair, IssuedSvid) {
    let key = generate_key();
    let svid = ca.sign_csr(&build_csr(&key, id).unwrap(), id, ttl).unwrap();
    (key, svid)
}

/// Runs openssl in `dir`; panics with its stderr on failure.
pub fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `openssl req` options for a new, unencrypted EC P-256 key.
const NEW_EC_KEY: &[&str] = &[
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
];

/// openssl as an independent CA in `dir`: a self-signed EC P-256 root
/// (CA:true, keyCertSign+cRLSign) for `subject`, valid `days`, written as
/// `root.pem` with its key `root.key`.
pub fn openssl_root(dir: &Path, subject: &str, days: &str) {
    let root = [
        "-keyout",
        "root.key",
        "-out",
        "root.pem",
        "-subj",
        subject,
        "-days",
        days,
        "-addext",
        "basicConstraints=critical,CA:true",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ];
    openssl(dir, &[&["req", "-x509"], NEW_EC_KEY, &root[..]].concat());
}

/// A fresh EC P-256 key `<stem>.key` and its CSR `<stem>.csr` for `subject`
/// in `dir` (`openssl req -new`).
pub fn openssl_csr(dir: &Path, stem: &str, subject: &str) {
    let (key, csr) = (format!("{stem}.key"), format!("{stem}.csr"));
    let request = ["-keyout", &key, "-out", &csr, "-subj", subject];
    openssl(dir, &[&["req", "-new"], NEW_EC_KEY, &request[..]].concat());
}

/// `<stem>.csr` in `dir` signed by the [`openssl_root`] there into
/// `<stem>.pem` (`openssl x509 -req`), with the extensions in `extfile`,
/// valid `days`; `serial` is how the serial number is chosen
/// (`-CAcreateserial`, or `-set_serial N`).
pub fn openssl_sign(dir: &Path, stem: &str, extfile: &str, days: &str, serial: &[&str]) {
    let (csr, cert) = (format!("{stem}.csr"), format!("{stem}.pem"));
    let mut args = vec![
        "x509", "-req", "-in", &csr, "-CA", "root.pem", "-CAkey", "root.key",
    ];
    args.extend_from_slice(serial);
    args.extend(["-out", &cert, "-days", days, "-extfile", extfile]);
    openssl(dir, &args);
}
