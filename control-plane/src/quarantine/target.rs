//! What a quarantine names: one identity (`spiffe://…`), one pod
//! (`namespace/pod`) or one certificate (`serial:HEX`), parsed strictly so
//! a typo is refused before anything is written.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use ward_identity::{SpiffeId, SpiffeIdError};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// Every certificate of this identity, on every workload.
    Identity(SpiffeId),
    /// The certificates issued to this pod, and its addresses.
    Pod { namespace: String, pod: String },
    /// One certificate, by serial number (lowercase hex, no leading zeros).
    Serial(String),
}

/// Why a target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error(
        "empty target: give a SPIFFE ID (spiffe://…), a pod (namespace/pod) or a certificate (serial:HEX)"
    )]
    Empty,
    #[error("{text:?} is not a valid SPIFFE ID: {source}")]
    SpiffeId { text: String, source: SpiffeIdError },
    #[error(
        "{0:?} names a trust domain, not a workload: give a workload's ID (spiffe://<td>/ns/<ns>/sa/<sa>)"
    )]
    TrustDomain(String),
    #[error("{text:?} is not a pod: {why} (a pod target is namespace/pod)")]
    Pod { text: String, why: &'static str },
    #[error(
        "{0:?} is not a certificate serial: serial:HEX takes 1 to 40 hex digits, optionally colon-separated"
    )]
    Serial(String),
    #[error(
        "{0:?} is neither a SPIFFE ID (spiffe://…), a pod (namespace/pod) nor a certificate (serial:HEX)"
    )]
    Unknown(String),
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(text: &str) -> Result<Self, TargetError> {
        if text.trim().is_empty() {
            return Err(TargetError::Empty);
        }
        if text.starts_with("spiffe:") {
            let id = SpiffeId::parse(text).map_err(|source| TargetError::SpiffeId {
                text: text.to_owned(),
                source,
            })?;
            if id.path().is_empty() {
                return Err(TargetError::TrustDomain(text.to_owned()));
            }
            return Ok(Target::Identity(id));
        }
        if let Some(hex) = text.strip_prefix("serial:") {
            return ward_identity::svid::canonical_serial(hex)
                .map(Target::Serial)
                .ok_or_else(|| TargetError::Serial(text.to_owned()));
        }
        if text.contains(':') {
            return Err(TargetError::Unknown(text.to_owned()));
        }
        let pod_error = |why| TargetError::Pod {
            text: text.to_owned(),
            why,
        };
        let Some((namespace, pod)) = text.split_once('/') else {
            return Err(TargetError::Unknown(text.to_owned()));
        };
        if pod.contains('/') {
            return Err(pod_error("more than one '/'"));
        }
        if !is_dns_label(namespace) {
            return Err(pod_error(
                "the namespace must be a DNS-1123 label (lowercase letters, digits, '-', at most 63)",
            ));
        }
        if !is_dns_subdomain(pod) {
            return Err(pod_error(
                "the pod name must be a DNS-1123 subdomain (lowercase letters, digits, '-', '.', at most 253)",
            ));
        }
        Ok(Target::Pod {
            namespace: namespace.to_owned(),
            pod: pod.to_owned(),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Identity(id) => f.write_str(id.as_str()),
            Target::Pod { namespace, pod } => write!(f, "{namespace}/{pod}"),
            Target::Serial(serial) => write!(f, "serial:{serial}"),
        }
    }
}

impl Target {
    /// The entry name the CLI gives this target: the same target always
    /// gets the same name, so quarantining it twice finds the first entry.
    pub fn entry_name(&self) -> String {
        let kind = match self {
            Target::Identity(_) => "identity",
            Target::Pod { .. } => "pod",
            Target::Serial(_) => "serial",
        };
        let digest = Sha256::digest(self.to_string().as_bytes());
        format!("{kind}-{}", &hex::encode(digest)[..16])
    }

    /// `namespace/pod` for a pod target.
    pub fn pod(&self) -> Option<String> {
        match self {
            Target::Pod { namespace, pod } => Some(format!("{namespace}/{pod}")),
            _ => None,
        }
    }
}

/// A DNS-1123 label: what a namespace name is.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain: what a pod name (and a quarantine entry's name) is.
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_kinds_parse_and_print_back() {
        for (text, printed) in [
            (
                "spiffe://cluster.local/ns/shop/sa/web",
                "spiffe://cluster.local/ns/shop/sa/web",
            ),
            ("shop/web-7d9f-x2", "shop/web-7d9f-x2"),
            ("serial:01:AB:cd", "serial:1abcd"),
        ] {
            let target: Target = text.parse().unwrap();
            assert_eq!(target.to_string(), printed);
            assert_eq!(printed.parse::<Target>().unwrap(), target);
        }
        assert_eq!(
            "shop/web".parse::<Target>().unwrap().pod().as_deref(),
            Some("shop/web")
        );
    }

    #[test]
    fn bad_targets_are_refused_with_the_rule_they_break() {
        let err = |text: &str| text.parse::<Target>().unwrap_err();
        assert_eq!(err(""), TargetError::Empty);
        assert_eq!(err("  "), TargetError::Empty);
        assert!(matches!(
            err("spiffe://Cluster.Local/ns/a/sa/b"),
            TargetError::SpiffeId { .. }
        ));
        assert_eq!(
            err("spiffe://cluster.local"),
            TargetError::TrustDomain("spiffe://cluster.local".into())
        );
        assert!(matches!(
            err("spiffe://cluster.local/ns/a/../b"),
            TargetError::SpiffeId { .. }
        ));
        assert_eq!(err("serial:"), TargetError::Serial("serial:".into()));
        assert_eq!(err("serial:xyz"), TargetError::Serial("serial:xyz".into()));
        assert!(matches!(err("Shop/web"), TargetError::Pod { .. }));
        assert!(matches!(err("shop/web/x"), TargetError::Pod { .. }));
        assert!(matches!(err("shop/"), TargetError::Pod { .. }));
        assert!(matches!(err("/web"), TargetError::Pod { .. }));
        assert_eq!(err("web"), TargetError::Unknown("web".into()));
        assert_eq!(
            err("https://example.org/x"),
            TargetError::Unknown("https://example.org/x".into())
        );
    }

    #[test]
    fn entry_names_are_stable_per_target_and_valid_names() {
        let a: Target = "shop/web".parse().unwrap();
        let b: Target = "shop/web".parse().unwrap();
        let c: Target = "shop/api".parse().unwrap();
        assert_eq!(a.entry_name(), b.entry_name());
        assert_ne!(a.entry_name(), c.entry_name());
        assert!(a.entry_name().starts_with("pod-"));
        assert!(is_dns_subdomain(&a.entry_name()));
        // One serial written two ways is one target.
        let s1: Target = "serial:00ab".parse().unwrap();
        let s2: Target = "serial:AB".parse().unwrap();
        assert_eq!(s1.entry_name(), s2.entry_name());
    }
}
