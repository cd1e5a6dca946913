//! SPIFFE IDs, parsed and validated to the SPIFFE-ID specification.
//!
//! `spiffe://<trust-domain>/<path>`: the trust domain is lowercase letters,
//! digits, `.`, `-` and `_` (at most 255 bytes); every path segment is
//! non-empty, not `.` or `..`, and made of letters, digits, `.`, `-` and `_`.
//! No port, userinfo, query, fragment or percent-encoding; IDs up to 2048
//! bytes are supported.

use std::fmt;
use std::str::FromStr;

const SCHEME: &str = "spiffe://";
/// Longest SPIFFE ID accepted, in bytes (the spec's interoperability limit).
pub const MAX_ID_LEN: usize = 2048;
/// Longest trust domain name accepted, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why a string is not a valid SPIFFE ID: one variant per rule of the spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("SPIFFE ID is empty")]
    Empty,
    #[error("SPIFFE ID is {0} bytes long; at most {MAX_ID_LEN} are allowed")]
    TooLong(usize),
    #[error("scheme is missing or invalid: a SPIFFE ID starts with \"spiffe://\"")]
    WrongScheme,
    #[error("trust domain is missing")]
    MissingTrustDomain,
    #[error("trust domain is {0} bytes long; at most {MAX_TRUST_DOMAIN_LEN} are allowed")]
    TrustDomainTooLong(usize),
    #[error("trust domain must not contain a port")]
    Port,
    #[error("trust domain must not contain userinfo")]
    Userinfo,
    #[error("SPIFFE ID must not contain a query")]
    Query,
    #[error("SPIFFE ID must not contain a fragment")]
    Fragment,
    #[error("SPIFFE ID must not contain percent-encoded characters")]
    PercentEncoding,
    #[error(
        "trust domain characters are limited to lowercase letters, numbers, dots, dashes and underscores (found {0:?})"
    )]
    BadTrustDomainChar(char),
    #[error(
        "path segment characters are limited to letters, numbers, dots, dashes and underscores (found {0:?})"
    )]
    BadPathSegmentChar(char),
    #[error("path must not contain empty segments")]
    EmptySegment,
    #[error("path must not contain dot segments (\".\" or \"..\")")]
    DotSegment,
    #[error("path must not have a trailing slash")]
    TrailingSlash,
}

/// A validated SPIFFE ID. Cheap accessors, no allocation after parsing.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: Box<str>,
    /// Byte offset where the path starts (== uri.len() when there is none).
    path_start: usize,
}

impl SpiffeId {
    /// Parses and validates `s` as a SPIFFE ID.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if s.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong(s.len()));
        }
        let rest = s.strip_prefix(SCHEME).ok_or(SpiffeIdError::WrongScheme)?;
        // Reject URI features the spec forbids before looking at characters,
        // so the error names the rule rather than the character.
        if s.contains('?') {
            return Err(SpiffeIdError::Query);
        }
        if s.contains('#') {
            return Err(SpiffeIdError::Fragment);
        }
        if s.contains('%') {
            return Err(SpiffeIdError::PercentEncoding);
        }
        let td_len = rest.find('/').unwrap_or(rest.len());
        let (trust_domain, path) = rest.split_at(td_len);
        validate_trust_domain(trust_domain)?;
        validate_path(path)?;
        Ok(SpiffeId {
            uri: s.into(),
            path_start: SCHEME.len() + td_len,
        })
    }

    /// Builds `spiffe://<td>/ns/<namespace>/sa/<service_account>`. Each
    /// part is one segment: a `/` in any of them is refused, so a namespace
    /// such as `prod/sa/x` cannot build an ID under `/ns/prod/...`.
    pub fn for_service_account(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        if [trust_domain, namespace, service_account]
            .iter()
            .any(|part| part.contains('/'))
        {
            return Err(SpiffeIdError::BadPathSegmentChar('/'));
        }
        Self::parse(&format!(
            "{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}"
        ))
    }

    /// Parses an Istio principal (`cluster.local/ns/X/sa/Y`), which is a
    /// SPIFFE ID without its scheme. A full `spiffe://` ID is accepted too.
    pub fn from_istio_principal(principal: &str) -> Result<Self, SpiffeIdError> {
        if principal.starts_with(SCHEME) {
            Self::parse(principal)
        } else {
            Self::parse(&format!("{SCHEME}{principal}"))
        }
    }

    /// The Istio principal form: the ID without `spiffe://`.
    pub fn istio_principal(&self) -> &str {
        &self.uri[SCHEME.len()..]
    }

    pub fn as_str(&self) -> &str {
        &self.uri
    }

    pub fn trust_domain(&self) -> &str {
        &self.uri[SCHEME.len()..self.path_start]
    }

    /// The path, with its leading slash; `""` when the ID has none.
    pub fn path(&self) -> &str {
        &self.uri[self.path_start..]
    }

    /// `X` when the path is exactly `/ns/X/sa/Y`.
    pub fn namespace(&self) -> Option<&str> {
        self.ns_sa().map(|(ns, _)| ns)
    }

    /// `Y` when the path is exactly `/ns/X/sa/Y`.
    pub fn service_account(&self) -> Option<&str> {
        self.ns_sa().map(|(_, sa)| sa)
    }

    fn ns_sa(&self) -> Option<(&str, &str)> {
        let mut segments = self.path().strip_prefix('/')?.split('/');
        match (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }
}

fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if td.contains('@') {
        return Err(SpiffeIdError::Userinfo);
    }
    if td.contains(':') {
        return Err(SpiffeIdError::Port);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong(td.len()));
    }
    match td.chars().find(|&c| !is_trust_domain_char(c)) {
        Some(c) => Err(SpiffeIdError::BadTrustDomainChar(c)),
        None => Ok(()),
    }
}

/// Validates a path as the spec defines it: empty, or `/segment` repeated.
pub fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    let Some(segments) = path.strip_prefix('/') else {
        // Unreachable from `parse` (the path starts at a '/'), kept for callers.
        return Err(SpiffeIdError::BadPathSegmentChar(
            path.chars().next().unwrap_or('/'),
        ));
    };
    let mut segments = segments.split('/').peekable();
    while let Some(segment) = segments.next() {
        if segment.is_empty() {
            return Err(if segments.peek().is_none() {
                SpiffeIdError::TrailingSlash
            } else {
                SpiffeIdError::EmptySegment
            });
        }
        if segment == "." || segment == ".." {
            return Err(SpiffeIdError::DotSegment);
        }
        if let Some(c) = segment.chars().find(|&c| !is_path_char(c)) {
            return Err(SpiffeIdError::BadPathSegmentChar(c));
        }
    }
    Ok(())
}

fn is_trust_domain_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.uri)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests;
