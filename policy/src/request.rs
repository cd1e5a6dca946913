//! An owned request read from JSON, as `ward authz check` takes it:
//!
//! ```json
//! {"protocol": "http", "source": {"spiffe_id": "spiffe://td/ns/a/sa/b", "ip": "10.0.0.1"},
//!  "destination": {"ip": "10.0.0.2", "port": 8080},
//!  "method": "GET", "path": "/", "host": "api", "headers": {"x-a": "1", "x-b": ["1", "2"]}}
//! ```

use crate::eval::{Protocol, RequestAttrs};
use std::collections::BTreeMap;
use std::net::IpAddr;
use ward_identity::SpiffeId;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
enum ProtocolSpec {
    Http,
    Tcp,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceSpec {
    #[serde(default)]
    spiffe_id: Option<String>,
    ip: IpAddr,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DestinationSpec {
    ip: IpAddr,
    port: u16,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestSpec {
    protocol: ProtocolSpec,
    source: SourceSpec,
    destination: DestinationSpec,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, OneOrMany>,
}

/// A request owned in memory; [`OwnedRequest::attrs`] borrows it for
/// evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRequest {
    pub protocol: Protocol,
    pub source_principal: Option<SpiffeId>,
    pub source_ip: IpAddr,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
    pub method: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    /// One entry per value; a repeated header appears several times.
    pub headers: Vec<(String, String)>,
}

impl OwnedRequest {
    /// Parses the JSON form; the error says what is wrong and where.
    pub fn from_json(text: &str) -> Result<OwnedRequest, String> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let spec: RequestSpec = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            if path == "." {
                e.inner().to_string()
            } else {
                format!("{path}: {}", e.inner())
            }
        })?;
        let source_principal = match spec.source.spiffe_id {
            None => None,
            Some(id) => Some(
                SpiffeId::from_istio_principal(&id)
                    .map_err(|e| format!("source.spiffe_id: invalid SPIFFE ID `{id}`: {e}"))?,
            ),
        };
        let mut headers = Vec::new();
        for (name, v) in spec.headers {
            match v {
                OneOrMany::One(v) => headers.push((name, v)),
                OneOrMany::Many(vs) => headers.extend(vs.into_iter().map(|v| (name.clone(), v))),
            }
        }
        Ok(OwnedRequest {
            protocol: match spec.protocol {
                ProtocolSpec::Http => Protocol::Http,
                ProtocolSpec::Tcp => Protocol::Tcp,
            },
            source_principal,
            source_ip: spec.source.ip,
            destination_ip: spec.destination.ip,
            destination_port: spec.destination.port,
            method: spec.method,
            path: spec.path,
            host: spec.host,
            headers,
        })
    }

    /// The borrowed view the engine evaluates.
    pub fn attrs(&self) -> RequestAttrs<'_> {
        RequestAttrs {
            protocol: self.protocol,
            source_principal: self.source_principal.as_ref(),
            source_ip: self.source_ip,
            destination_ip: self.destination_ip,
            destination_port: self.destination_port,
            method: self.method.as_deref(),
            path: self.path.as_deref(),
            host: self.host.as_deref(),
            headers: &self.headers,
        }
    }
}
