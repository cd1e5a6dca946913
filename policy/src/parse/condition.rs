//! `when[]` keys and values. Every key on Istio's conditions page
//! (istio.io/latest/docs/reference/config/security/conditions/) and every
//! other key Istio's validation knows (`ValidateAttribute`,
//! pkg/config/security/security.go) is either implemented or refused here
//! by name, with the reason; anything else is an unknown key.

use super::{
    MAX_SERVICE_ACCOUNTS, parse_cidr, parse_port, parse_principal, parse_service_account, sub_err,
};
use crate::matcher::StrMatch;
use crate::model::{CondValues, ConditionKey};

/// The keys Ward evaluates.
pub(crate) const SUPPORTED: &str = "source.ip, remote.ip, source.namespace, source.principal, source.serviceAccount, destination.ip, destination.port, request.headers[<name>]";

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// Parses a condition key, or says why Ward refuses it.
pub(super) fn key(key: &str) -> Result<ConditionKey, String> {
    let refuse = |why: &str| Err(format!("condition key `{key}` {why}"));
    Ok(match key {
        "source.ip" => ConditionKey::SourceIp,
        "remote.ip" => ConditionKey::RemoteIp,
        "source.namespace" => ConditionKey::SourceNamespace,
        "source.principal" => ConditionKey::SourcePrincipal,
        "source.serviceAccount" => ConditionKey::SourceServiceAccount,
        "destination.ip" => ConditionKey::DestinationIp,
        "destination.port" => ConditionKey::DestinationPort,
        k if k.starts_with("request.auth.") => {
            return refuse(
                "is not supported yet: the request.auth.* conditions need request authentication (JWT, RequestAuthentication), which Ward does not implement yet",
            );
        }
        "connection.sni" => {
            return refuse(
                "is not supported: Ward's sidecar does not give policies the TLS server name (SNI) of the connection",
            );
        }
        k if k.starts_with("experimental.envoy.filters.") => {
            return refuse(
                "is not supported: it matches Envoy filter metadata, which Ward's sidecar has no equivalent of",
            );
        }
        k if k.starts_with("request.experimental.") => {
            return refuse(
                "is not supported: an experimental Istio key; use `request.headers[<name>]`",
            );
        }
        "destination.namespace" => {
            return refuse(
                "is not supported: replaced by the policy's metadata.namespace (Istio refuses it too)",
            );
        }
        k if k.starts_with("destination.labels") => {
            return refuse(
                "is not supported: replaced by the workload selector, selector.matchLabels (Istio refuses it too)",
            );
        }
        "destination.name" | "destination.user" => {
            return refuse(
                "is not supported: deprecated, only Istio's v1alpha1 RBAC had it (Istio refuses it too)",
            );
        }
        k if k.starts_with("request.headers") => {
            let name = k
                .strip_prefix("request.headers[")
                .and_then(|r| r.strip_suffix(']'))
                .ok_or_else(|| format!("invalid key `{k}`: expected `request.headers[<name>]`"))?;
            if name.starts_with(':') {
                return Err(format!(
                    "invalid key `{k}`: the pseudo-header `{name}` is not supported: use the operation's `hosts`, `methods` or `paths`"
                ));
            }
            if name.is_empty() || !name.chars().all(is_token_char) {
                return Err(format!("invalid header name in `{k}`"));
            }
            ConditionKey::RequestHeader(name.to_ascii_lowercase().into())
        }
        k => {
            return Err(format!(
                "unknown condition key `{k}`; supported: {SUPPORTED}"
            ));
        }
    })
}

/// Parses `values` or `notValues` (named `field`) for `key`; an invalid
/// element is named by its index.
pub(super) fn values(
    key: &ConditionKey,
    field: &str,
    v: Option<Vec<String>>,
) -> Result<CondValues, String> {
    let v = v.unwrap_or_default();
    fn all<T>(
        field: &str,
        v: &[String],
        f: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Vec<T>, String> {
        v.iter()
            .enumerate()
            .map(|(i, s)| f(s).map_err(|e| sub_err(&format!("{field}[{i}]"), e)))
            .collect()
    }
    Ok(match key {
        ConditionKey::SourceIp | ConditionKey::RemoteIp | ConditionKey::DestinationIp => {
            CondValues::Ip(all(field, &v, parse_cidr)?)
        }
        ConditionKey::DestinationPort => CondValues::Port(all(field, &v, parse_port)?),
        ConditionKey::SourcePrincipal => CondValues::Str(all(field, &v, parse_principal)?),
        ConditionKey::SourceServiceAccount => {
            if v.len() > MAX_SERVICE_ACCOUNTS {
                return Err(sub_err(
                    field,
                    format!(
                        "at most {MAX_SERVICE_ACCOUNTS} service accounts per list (Istio's limit)"
                    ),
                ));
            }
            CondValues::ServiceAccount(all(field, &v, parse_service_account)?)
        }
        ConditionKey::SourceNamespace | ConditionKey::RequestHeader(_) => {
            CondValues::Str(all(field, &v, |s| {
                StrMatch::parse(s).map_err(|e| format!("invalid value `{s}`: {e}"))
            })?)
        }
    })
}
