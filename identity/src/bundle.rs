//! Trust bundles: the root certificates of each trust domain.
//!
//! An X.509-SVID is verified against the bundle of *its own* trust domain
//! only (never a pool of all roots), so roots are kept per trust domain. A
//! bundle may hold several roots while a CA is being rotated. Roots are
//! turned into webpki trust anchors once, when added, so handshakes do not
//! re-parse them.

use std::collections::BTreeMap;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::spiffe_id::{SpiffeId, SpiffeIdError};

/// Why roots could not be added to a bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("invalid trust domain {0:?}: {1}")]
    InvalidTrustDomain(String, SpiffeIdError),
    #[error("no certificate found in the bundle PEM")]
    NoCertificate,
    #[error("malformed bundle certificate: {0}")]
    Malformed(String),
    #[error("bundle certificate #{index} is not a CA (basicConstraints CA:true missing)")]
    NotCa { index: usize },
    #[error("bundle certificate #{index} has a keyUsage without keyCertSign")]
    NoKeyCertSign { index: usize },
}

/// Trust domain → roots. Cheap to clone (roots are small); swap whole
/// values through [`crate::tls::SharedBundles`] to update them live.
#[derive(Debug, Clone, Default)]
pub struct TrustBundles {
    domains: BTreeMap<String, Bundle>,
}

#[derive(Debug, Clone, Default)]
struct Bundle {
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl TrustBundles {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the roots in `pem` to `trust_domain`'s bundle, keeping the roots
    /// already there (CA rotation); roots already present are not duplicated.
    /// Every certificate must be a CA (CA:true; keyCertSign when it has a
    /// keyUsage). Nothing is added if any certificate is refused.
    pub fn add_pem(&mut self, trust_domain: &str, pem: &str) -> Result<(), BundleError> {
        validate_trust_domain(trust_domain)?;
        let certs = parse_roots(pem)?;
        let bundle = self.domains.entry(trust_domain.to_owned()).or_default();
        for (cert, anchor) in certs {
            if !bundle.roots.contains(&cert) {
                bundle.roots.push(cert);
                bundle.anchors.push(anchor);
            }
        }
        Ok(())
    }

    /// Replaces `trust_domain`'s bundle with the roots in `pem` (drops retired roots).
    pub fn set_pem(&mut self, trust_domain: &str, pem: &str) -> Result<(), BundleError> {
        validate_trust_domain(trust_domain)?;
        let (roots, anchors) = parse_roots(pem)?.into_iter().unzip();
        self.domains
            .insert(trust_domain.to_owned(), Bundle { roots, anchors });
        Ok(())
    }

    /// Builder form of [`Self::add_pem`].
    pub fn with_root(mut self, trust_domain: &str, pem: &str) -> Result<Self, BundleError> {
        self.add_pem(trust_domain, pem)?;
        Ok(self)
    }

    /// Adds every root of `other` (already checked when it was added there),
    /// keeping the roots already here.
    pub fn extend(&mut self, other: &TrustBundles) {
        for (trust_domain, theirs) in &other.domains {
            let ours = self.domains.entry(trust_domain.clone()).or_default();
            for (root, anchor) in theirs.roots.iter().zip(&theirs.anchors) {
                if !ours.roots.contains(root) {
                    ours.roots.push(root.clone());
                    ours.anchors.push(anchor.clone());
                }
            }
        }
    }

    /// Forgets a trust domain; returns whether it was known.
    pub fn remove(&mut self, trust_domain: &str) -> bool {
        self.domains.remove(trust_domain).is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    pub fn trust_domains(&self) -> impl Iterator<Item = &str> {
        self.domains.keys().map(String::as_str)
    }

    /// The roots of `trust_domain`, DER.
    pub fn roots_for(&self, trust_domain: &str) -> Option<&[CertificateDer<'static>]> {
        self.domains.get(trust_domain).map(|b| b.roots.as_slice())
    }

    /// The roots of `trust_domain` as webpki trust anchors.
    pub fn anchors_for(&self, trust_domain: &str) -> Option<&[TrustAnchor<'static>]> {
        self.domains.get(trust_domain).map(|b| b.anchors.as_slice())
    }

    /// The roots of `trust_domain`, PEM.
    pub fn pem_for(&self, trust_domain: &str) -> Option<String> {
        self.roots_for(trust_domain).map(crate::ca::certs_to_pem)
    }

    /// These bundles without the roots `other` holds for the same trust
    /// domain (the roots a CA rotation retired). A trust domain left with
    /// no root is dropped.
    pub fn without(&self, other: &TrustBundles) -> TrustBundles {
        let mut kept = self.clone();
        for (trust_domain, removed) in &other.domains {
            let Some(bundle) = kept.domains.get_mut(trust_domain) else {
                continue;
            };
            let (roots, anchors) = bundle
                .roots
                .drain(..)
                .zip(bundle.anchors.drain(..))
                .filter(|(root, _)| !removed.roots.contains(root))
                .unzip();
            bundle.roots = roots;
            bundle.anchors = anchors;
            if bundle.roots.is_empty() {
                kept.domains.remove(trust_domain);
            }
        }
        kept
    }
}

fn validate_trust_domain(trust_domain: &str) -> Result<(), BundleError> {
    let id = SpiffeId::parse(&format!("spiffe://{trust_domain}"))
        .map_err(|e| BundleError::InvalidTrustDomain(trust_domain.to_owned(), e))?;
    if id.trust_domain() != trust_domain {
        return Err(BundleError::InvalidTrustDomain(
            trust_domain.to_owned(),
            SpiffeIdError::BadTrustDomainChar('/'),
        ));
    }
    Ok(())
}

type Root = (CertificateDer<'static>, TrustAnchor<'static>);

fn parse_roots(pem: &str) -> Result<Vec<Root>, BundleError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BundleError::Malformed(e.to_string()))?;
    if certs.is_empty() {
        return Err(BundleError::NoCertificate);
    }
    certs
        .into_iter()
        .enumerate()
        .map(|(index, cert)| {
            check_root(&cert, index)?;
            let anchor = webpki::anchor_from_trusted_cert(&cert)
                .map_err(|e| BundleError::Malformed(format!("{e:?}")))?
                .to_owned();
            Ok((cert, anchor))
        })
        .collect()
}

/// Roots must be CAs; a keyUsage, when present, must allow keyCertSign.
fn check_root(der: &CertificateDer<'_>, index: usize) -> Result<(), BundleError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| BundleError::Malformed(e.to_string()))?;
    let malformed = |e: x509_parser::error::X509Error| BundleError::Malformed(e.to_string());
    if !cert
        .basic_constraints()
        .map_err(malformed)?
        .is_some_and(|bc| bc.value.ca)
    {
        return Err(BundleError::NotCa { index });
    }
    if let Some(ku) = cert.key_usage().map_err(malformed)?
        && !ku.value.key_cert_sign()
    {
        return Err(BundleError::NoKeyCertSign { index });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
