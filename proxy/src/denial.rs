//! `x-ward-denied-by`: what decided a 403, told to the caller when the
//! caller is an authenticated mesh peer, so the calling team can debug a
//! denial without the server's logs (docs/proxy.md, "Inbound"). A plaintext
//! caller learns nothing: the header is never set without a verified peer
//! identity. The application cannot forge it: the inbound removes the
//! application's own before answering.
//!
//! The value is one of:
//! - `<namespace>/<name> rule <index>`: a rule of that DENY policy matched;
//! - `default-deny: <reason>`: no policy decided, with a fixed reason (`no
//!   ALLOW policy matched`, `malformed path`, …; see
//!   [`ward_policy::DecisionReason`] and the sidecar's own defaults).

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};

use crate::authz::{ConnInfo, Verdict};

pub const DENIED_BY: HeaderName = HeaderName::from_static("x-ward-denied-by");

/// The header's value for a denial; `None` when `verdict` allows.
pub fn value(verdict: &Verdict) -> Option<String> {
    if verdict.allowed {
        return None;
    }
    Some(match (&verdict.policy, verdict.rule) {
        (Some(policy), Some(rule)) => format!("{policy} rule {rule}"),
        (Some(policy), None) => policy.to_string(),
        (None, _) => {
            let reason = verdict
                .reason
                .strip_prefix("denied: ")
                .unwrap_or(verdict.reason);
            format!("default-deny: {reason}")
        }
    })
}

/// Sets the header on the response to a request `verdict` denied, when the
/// caller on `conn` is authenticated; removes any other (the
/// application's) in every case.
pub fn mark(headers: &mut HeaderMap, conn: &ConnInfo, verdict: Option<&Verdict>, denied: bool) {
    headers.remove(DENIED_BY);
    if !denied || conn.peer_id.is_none() {
        return;
    }
    // A policy name with bytes a header cannot carry: nothing rather than
    // a mangled name.
    if let Some(value) = verdict
        .and_then(value)
        .and_then(|v| HeaderValue::try_from(v).ok())
    {
        headers.insert(DENIED_BY, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_policy::{DecisionReason, PolicyRef};

    fn conn(peer: Option<&str>) -> ConnInfo {
        ConnInfo::new(
            peer.map(|p| ward_identity::SpiffeId::parse(p).unwrap()),
            "10.0.0.1:1234".parse().unwrap(),
            "10.0.0.2:8080".parse().unwrap(),
        )
    }

    fn by_policy() -> Verdict {
        Verdict {
            allowed: false,
            policy: Some(PolicyRef {
                namespace: "shop".into(),
                name: "deny-admin".into(),
            }),
            rule: Some(2),
            reason: DecisionReason::DeniedByDenyPolicy.as_str(),
        }
    }

    #[test]
    fn the_value_names_the_policy_and_rule_or_the_default() {
        assert_eq!(value(&by_policy()).unwrap(), "shop/deny-admin rule 2");
        let default = Verdict::deny(DecisionReason::DeniedNoAllowMatched.as_str());
        assert_eq!(
            value(&default).unwrap(),
            "default-deny: no ALLOW policy matched"
        );
        let malformed = Verdict::deny(DecisionReason::DeniedMalformedPath.as_str());
        assert_eq!(value(&malformed).unwrap(), "default-deny: malformed path");
        assert_eq!(value(&Verdict::allow("allowed by ALLOW policy")), None);
    }

    #[test]
    fn only_an_authenticated_caller_is_told_and_the_app_cannot_forge_it() {
        let peer = conn(Some("spiffe://cluster.local/ns/web/sa/frontend"));
        let mut headers = HeaderMap::new();
        mark(&mut headers, &peer, Some(&by_policy()), true);
        assert_eq!(headers[DENIED_BY], "shop/deny-admin rule 2");

        // Plaintext (PERMISSIVE): nothing.
        let mut headers = HeaderMap::new();
        mark(&mut headers, &conn(None), Some(&by_policy()), true);
        assert!(headers.get(DENIED_BY).is_none());

        // An application's own header on a served response is removed.
        let mut headers = HeaderMap::new();
        headers.insert(DENIED_BY, HeaderValue::from_static("forged"));
        mark(&mut headers, &peer, Some(&Verdict::allow("ok")), false);
        assert!(headers.get(DENIED_BY).is_none());
    }
}
