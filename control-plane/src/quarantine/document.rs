//! A quarantine entry as stored: a Kubernetes-shaped document, so the same
//! text is a file in `<data-dir>/quarantine/` and a `Quarantine` custom
//! resource.
//!
//! ```yaml
//! apiVersion: ward.io/v1alpha1
//! kind: Quarantine
//! metadata: {name: identity-3f2a9c0d1e2b4a5f}
//! spec:
//!   target: spiffe://cluster.local/ns/shop/sa/web
//!   reason: key leaked in build logs
//!   requestedBy: alice
//!   requestedAt: 2026-12-03T12:00:00.123Z
//! ```

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::target::{Target, TargetError, is_dns_subdomain};

pub const API_VERSION: &str = "ward.io/v1alpha1";
pub const KIND: &str = "Quarantine";
/// Longest `spec.reason` accepted (it goes to logs and the audit trail).
pub const MAX_REASON_BYTES: usize = 1024;

/// One quarantine entry, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub target: Target,
    pub reason: String,
    pub requested_by: String,
    /// RFC 3339.
    pub requested_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocError {
    #[error("not a Quarantine document: {0}")]
    Yaml(String),
    #[error("apiVersion {0:?}: expected {API_VERSION:?}")]
    ApiVersion(String),
    #[error("kind {0:?}: expected {KIND:?}")]
    Kind(String),
    #[error("metadata.name {0:?}: must be a DNS-1123 subdomain")]
    Name(String),
    #[error("spec.target: {0}")]
    Target(#[from] TargetError),
    #[error(
        "spec.reason: say why (it is what the audit trail keeps), at most {MAX_REASON_BYTES} bytes"
    )]
    Reason,
    #[error("spec.requestedBy: must not be empty")]
    RequestedBy,
    #[error("spec.requestedAt {0:?}: must be an RFC 3339 time")]
    RequestedAt(String),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: Spec,
}

#[derive(Debug, Serialize, Deserialize)]
struct Metadata {
    name: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    target: String,
    reason: String,
    requested_by: String,
    requested_at: String,
}

impl Entry {
    /// A new entry for `target`, named by it ([`Target::entry_name`]).
    pub fn new(
        target: Target,
        reason: &str,
        requested_by: &str,
        at: OffsetDateTime,
    ) -> Result<Entry, DocError> {
        let entry = Entry {
            name: target.entry_name(),
            target,
            reason: reason.trim().to_owned(),
            requested_by: requested_by.trim().to_owned(),
            requested_at: at
                .format(&Rfc3339)
                .map_err(|e| DocError::RequestedAt(e.to_string()))?,
        };
        entry.validate()?;
        Ok(entry)
    }

    fn validate(&self) -> Result<(), DocError> {
        if !is_dns_subdomain(&self.name) {
            return Err(DocError::Name(self.name.clone()));
        }
        if self.reason.is_empty() || self.reason.len() > MAX_REASON_BYTES {
            return Err(DocError::Reason);
        }
        if self.requested_by.is_empty() {
            return Err(DocError::RequestedBy);
        }
        if OffsetDateTime::parse(&self.requested_at, &Rfc3339).is_err() {
            return Err(DocError::RequestedAt(self.requested_at.clone()));
        }
        Ok(())
    }

    /// Reads and validates one document.
    pub fn parse(text: &str) -> Result<Entry, DocError> {
        let doc: Document =
            serde_yaml_ng::from_str(text).map_err(|e| DocError::Yaml(e.to_string()))?;
        Self::from_document(doc)
    }

    /// Validates one document already decoded, as the Kubernetes API hands
    /// out a `Quarantine` object (its other metadata and any `status` are
    /// ignored).
    pub fn from_value(value: serde_json::Value) -> Result<Entry, DocError> {
        let doc: Document =
            serde_json::from_value(value).map_err(|e| DocError::Yaml(e.to_string()))?;
        Self::from_document(doc)
    }

    fn from_document(doc: Document) -> Result<Entry, DocError> {
        if doc.api_version != API_VERSION {
            return Err(DocError::ApiVersion(doc.api_version));
        }
        if doc.kind != KIND {
            return Err(DocError::Kind(doc.kind));
        }
        let entry = Entry {
            name: doc.metadata.name,
            target: doc.spec.target.parse()?,
            reason: doc.spec.reason,
            requested_by: doc.spec.requested_by,
            requested_at: doc.spec.requested_at,
        };
        entry.validate()?;
        Ok(entry)
    }

    /// The document's YAML text.
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(&self.document()).expect("serializable")
    }

    /// The document as JSON: the body of a `Quarantine` object.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self.document()).expect("serializable")
    }

    fn document(&self) -> Document {
        Document {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            metadata: Metadata {
                name: self.name.clone(),
            },
            spec: Spec {
                target: self.target.to_string(),
                reason: self.reason.clone(),
                requested_by: self.requested_by.clone(),
                requested_at: self.requested_at.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(reason: &str) -> Result<Entry, DocError> {
        Entry::new(
            "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap(),
            reason,
            "alice",
            OffsetDateTime::UNIX_EPOCH,
        )
    }

    #[test]
    fn an_entry_survives_its_yaml() {
        let entry = entry("key leaked: \"quoted\"\nsecond line").unwrap();
        let yaml = entry.to_yaml();
        assert!(
            yaml.starts_with("apiVersion: ward.io/v1alpha1\nkind: Quarantine\n"),
            "{yaml}"
        );
        assert_eq!(Entry::parse(&yaml).unwrap(), entry);
    }

    #[test]
    fn a_reason_and_a_requester_are_required() {
        assert_eq!(entry("  "), Err(DocError::Reason));
        assert_eq!(
            entry(&"x".repeat(MAX_REASON_BYTES + 1)),
            Err(DocError::Reason)
        );
        let no_one = Entry::new(
            "shop/web".parse().unwrap(),
            "why",
            "",
            OffsetDateTime::UNIX_EPOCH,
        );
        assert_eq!(no_one, Err(DocError::RequestedBy));
    }

    #[test]
    fn documents_that_are_not_valid_quarantines_are_refused() {
        let good = entry("why").unwrap().to_yaml();
        let cases = [
            (good.replace("ward.io/v1alpha1", "ward.io/v2"), "apiVersion"),
            (good.replace("kind: Quarantine", "kind: Policy"), "kind"),
            (
                good.replace("spiffe://cluster.local/ns/shop/sa/web", "shop"),
                "spec.target",
            ),
            (
                good.replace("1970-01-01T00:00:00Z", "yesterday"),
                "spec.requestedAt",
            ),
            ("just text".to_owned(), "not a Quarantine document"),
        ];
        for (text, expected) in cases {
            let err = Entry::parse(&text).unwrap_err().to_string();
            assert!(err.contains(expected), "{expected}: {err}\n{text}");
        }
    }
}
