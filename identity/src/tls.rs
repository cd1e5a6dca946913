//! Mesh mTLS with rustls: TLS 1.3 only, aws-lc-rs provider (always passed
//! explicitly, never the process default), SPIFFE verification on both sides.
//!
//! * [`SvidCell`] holds the workload's current SVID and key; installing a new
//!   one swaps it atomically. Each *new* handshake picks up the latest
//!   certificate; established connections are untouched.
//! * [`SharedBundles`] holds the trust bundles, hot-swappable the same way.
//! * Session resumption is disabled on both sides, so every connection is
//!   authenticated against the current bundles and shows the current SVID.
//! * ALPN: set `alpn_protocols` on `Arc::unwrap_or_clone(config)`.
//!
//! Verification failures surface as
//! `rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc<SvidError>)))`;
//! [`svid_error`] recovers the [`SvidError`] and [`tls_failure_reason`] a metric label.

use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, CommonState, DigitallySignedStruct, DistinguishedName,
    OtherError, ServerConfig, SignatureScheme,
};
use time::OffsetDateTime;

use crate::bundle::TrustBundles;
use crate::spiffe_id::SpiffeId;
use crate::svid::{self, ALGORITHMS, Role, SvidError, VerifiedSvid};

/// Trust bundles shared by verifiers and swapped whole on update.
pub type SharedBundles = Arc<ArcSwap<TrustBundles>>;

/// A new [`SharedBundles`].
pub fn shared_bundles(bundles: TrustBundles) -> SharedBundles {
    Arc::new(ArcSwap::from_pointee(bundles))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The workload's current SVID, swapped atomically on rotation.
#[derive(Debug, Default)]
pub struct SvidCell {
    current: ArcSwapOption<Installed>,
}

#[derive(Debug)]
struct Installed {
    key: Arc<CertifiedKey>,
    svid: VerifiedSvid,
}

impl SvidCell {
    /// An empty cell: no certificate until [`Self::install`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Verifies `chain` (leaf first) as an SVID usable as client and server
    /// and that `key` belongs to it, then makes it the certificate of every
    /// new handshake. On error the current certificate stays.
    pub fn install(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        bundles: &TrustBundles,
    ) -> Result<VerifiedSvid, SvidError> {
        let verified = svid::verify_chain(&chain, bundles, Role::Any, UnixTime::now())?;
        svid::check_key_matches(&chain[0], &key)?;
        let key = CertifiedKey::from_der(chain, key, &provider())
            .map_err(|e| SvidError::InvalidKey(e.to_string()))?;
        self.current.store(Some(Arc::new(Installed {
            key: Arc::new(key),
            svid: verified.clone(),
        })));
        Ok(verified)
    }

    pub fn is_ready(&self) -> bool {
        self.current.load().is_some()
    }

    pub fn current_id(&self) -> Option<SpiffeId> {
        self.current
            .load()
            .as_ref()
            .map(|c| c.svid.spiffe_id.clone())
    }

    pub fn not_after(&self) -> Option<OffsetDateTime> {
        self.current.load().as_ref().map(|c| c.svid.not_after)
    }

    /// The certificate chain and key new handshakes use.
    pub fn certified_key(&self) -> Option<Arc<CertifiedKey>> {
        self.current.load().as_ref().map(|c| c.key.clone())
    }
}

#[derive(Debug)]
struct ServerResolver(Arc<SvidCell>);

impl ResolvesServerCert for ServerResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.certified_key()
    }
}

#[derive(Debug)]
struct ClientResolver(Arc<SvidCell>);

impl ResolvesClientCert for ClientResolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.certified_key()
    }

    fn has_certs(&self) -> bool {
        self.0.is_ready()
    }
}

/// Server side of mesh mTLS: a client SVID is required.
pub fn server_config(svid: Arc<SvidCell>, bundles: SharedBundles) -> Arc<ServerConfig> {
    build_server_config(svid, bundles, true)
}

/// Like [`server_config`], but clients without a certificate are let in
/// (the control plane's bootstrap API); a certificate that is presented
/// must still verify. Use [`peer_spiffe_id`] to tell the two apart.
pub fn server_config_optional_client_auth(
    svid: Arc<SvidCell>,
    bundles: SharedBundles,
) -> Arc<ServerConfig> {
    build_server_config(svid, bundles, false)
}

fn build_server_config(
    svid: Arc<SvidCell>,
    bundles: SharedBundles,
    mandatory: bool,
) -> Arc<ServerConfig> {
    let verifier = SvidClientVerifier { bundles, mandatory };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("aws-lc-rs supports TLS 1.3")
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(ServerResolver(svid)));
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Arc::new(config)
}

/// Client side of mesh mTLS: presents the workload SVID and accepts only a
/// server whose SPIFFE ID is `expected_server` (the DNS name is ignored).
pub fn client_config(
    svid: Arc<SvidCell>,
    bundles: SharedBundles,
    expected_server: SpiffeId,
) -> Arc<ClientConfig> {
    build_client_config(bundles, expected_server, Some(svid))
}

/// Like [`client_config`] without a client certificate: for bootstrap calls
/// to the control plane before the workload has an SVID.
pub fn client_config_no_client_auth(
    bundles: SharedBundles,
    expected_server: SpiffeId,
) -> Arc<ClientConfig> {
    build_client_config(bundles, expected_server, None)
}

fn build_client_config(
    bundles: SharedBundles,
    expected: SpiffeId,
    svid: Option<Arc<SvidCell>>,
) -> Arc<ClientConfig> {
    let verifier = Arc::new(SvidServerVerifier { bundles, expected });
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("aws-lc-rs supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match svid {
        Some(cell) => builder.with_client_cert_resolver(Arc::new(ClientResolver(cell))),
        None => builder.with_no_client_auth(),
    };
    config.resumption = Resumption::disabled();
    Arc::new(config)
}

/// The SPIFFE ID of the peer's (verified) certificate, if it presented one.
pub fn peer_spiffe_id(conn: &CommonState) -> Option<SpiffeId> {
    let leaf = conn.peer_certificates()?.first()?;
    svid::spiffe_id_of(leaf).ok()
}

/// The [`SvidError`] behind a handshake failure, when our verifier refused
/// the peer's certificate.
pub fn svid_error(err: &rustls::Error) -> Option<&SvidError> {
    match err {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            inner.downcast_ref::<SvidError>()
        }
        _ => None,
    }
}

/// A fixed label for a handshake failure: the [`SvidError::reason`] when our
/// verifier refused the peer, otherwise a coarse class of the rustls error.
pub fn tls_failure_reason(err: &rustls::Error) -> &'static str {
    use rustls::Error as E;
    if let Some(svid_err) = svid_error(err) {
        return svid_err.reason();
    }
    match err {
        E::NoCertificatesPresented => "no_certificate",
        E::InvalidCertificate(CertificateError::Expired) => "expired",
        E::InvalidCertificate(CertificateError::UnknownIssuer) => "unknown_ca",
        E::InvalidCertificate(_) => "bad_svid",
        // The peer refused us (our certificate, or we sent none).
        E::AlertReceived(_) => "rejected_by_peer",
        E::PeerIncompatible(_) => "incompatible",
        _ => "tls_error",
    }
}

fn to_tls_error(err: SvidError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(err))))
}

/// Leaf and intermediates as one borrowed slice for [`svid::verify_chain`].
fn join_chain<'a>(
    end_entity: &'a CertificateDer<'_>,
    intermediates: &'a [CertificateDer<'_>],
) -> Vec<CertificateDer<'a>> {
    std::iter::once(end_entity)
        .chain(intermediates)
        .map(|c| CertificateDer::from(c.as_ref()))
        .collect()
}

#[derive(Debug)]
struct SvidClientVerifier {
    bundles: SharedBundles,
    mandatory: bool,
}

impl ClientCertVerifier for SvidClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: a workload has exactly one SVID to offer.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let chain = join_chain(end_entity, intermediates);
        svid::verify_chain(&chain, &self.bundles.load(), Role::Client, now)
            .map_err(to_tls_error)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &ALGORITHMS)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &ALGORITHMS)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ALGORITHMS.supported_schemes()
    }
}

#[derive(Debug)]
struct SvidServerVerifier {
    bundles: SharedBundles,
    expected: SpiffeId,
}

impl ServerCertVerifier for SvidServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = join_chain(end_entity, intermediates);
        let verified = svid::verify_chain(&chain, &self.bundles.load(), Role::Server, now)
            .map_err(to_tls_error)?;
        if verified.spiffe_id != self.expected {
            return Err(to_tls_error(SvidError::IdentityMismatch {
                expected: self.expected.to_string(),
                found: verified.spiffe_id.to_string(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &ALGORITHMS)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &ALGORITHMS)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ALGORITHMS.supported_schemes()
    }
}

#[cfg(test)]
mod tests;
