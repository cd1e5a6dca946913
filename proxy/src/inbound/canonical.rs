//! The one form of an inbound request that is both authorized and
//! forwarded: a single authority, the normalized path, no hop-by-hop
//! headers, and the upgrade (if any) it really asks for. Whatever the
//! policy decides on, the application receives.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::Authority;
use http::{Method, Version};

use crate::http::FirstParsed;
use crate::outcome::BadRequest;
use crate::translate::{absolute_uri, strip_hop_by_hop};
use ward_policy::path::{self, PathNormalization};

/// What a request asks of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// An ordinary request.
    Plain,
    /// `Upgrade:` to a protocol other than `h2c` (WebSocket and the like):
    /// authorized as HTTP, with the `upgrade` header visible to the policy.
    Upgrade,
    /// `CONNECT host:port`: authorized as the TCP tunnel it opens.
    Connect,
}

/// Rewrites `parts` into its canonical form (see the module comment).
/// `hosts` keeps the connection's first parsed `Host`.
pub fn canonicalize(
    parts: &mut http::request::Parts,
    destination: SocketAddr,
    paths: PathNormalization,
    hosts: &FirstParsed<Authority>,
) -> Result<Shape, BadRequest> {
    let connect = parts.method == Method::CONNECT;
    // The target's form must fit the method (RFC 9112 §3.2).
    match parts.uri.path_and_query() {
        None if connect => {}
        Some(_) if connect => return Err(BadRequest::ConnectTarget),
        None => return Err(BadRequest::Target),
        Some(pq) if pq.path() == "*" && parts.method == Method::OPTIONS => {}
        Some(pq) => {
            if let Some(normal) = path::normalize_target(pq, paths)? {
                let mut uri = std::mem::take(&mut parts.uri).into_parts();
                uri.path_and_query = Some(normal);
                parts.uri = http::Uri::from_parts(uri).map_err(|_| BadRequest::Target)?;
            }
        }
    }
    let authority = authority(parts, destination, hosts)?;

    // What the request upgrades to, read before `Connection` and `Upgrade`
    // go with the other hop-by-hop headers. `h2c` is declined (RFC 9113
    // §3.1 lets a server ignore it): HTTP/2 reaches the app by prior
    // knowledge only, so requests on this connection stay HTTP/1.1 and
    // each one is authorized.
    let upgrade = if connect {
        None
    } else {
        offered_upgrade(&parts.headers)
    };
    // Before Ward adds anything, so `Connection:` cannot name Ward's headers.
    strip_hop_by_hop(&mut parts.headers);
    if let Some(protocols) = &upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, protocols.clone());
    }

    if parts.version == Version::HTTP_2 {
        // HTTP/2 carries the authority in `:authority`.
        parts.headers.remove(header::HOST);
    } else {
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| BadRequest::Authority)?;
        parts.headers.insert(header::HOST, host);
    }
    if !connect {
        parts.uri = absolute_uri(std::mem::take(&mut parts.uri), authority);
    }
    Ok(match (connect, upgrade) {
        (true, _) => Shape::Connect,
        (false, Some(_)) => Shape::Upgrade,
        (false, None) => Shape::Plain,
    })
}

/// The authority the request is for: an absolute-form or HTTP/2 URI's
/// (overriding `Host`, RFC 9112 §3.2.2), else `Host`, else the
/// destination. HTTP/2 `:authority` and `host` must agree.
fn authority(
    parts: &http::request::Parts,
    destination: SocketAddr,
    hosts: &FirstParsed<Authority>,
) -> Result<Authority, BadRequest> {
    let mut host_values = parts.headers.get_all(header::HOST).iter();
    let host = host_values.next();
    if host_values.next().is_some() {
        return Err(BadRequest::DuplicateHost);
    }
    match (parts.uri.authority(), host) {
        (Some(authority), Some(host))
            if parts.version == Version::HTTP_2
                && !host
                    .as_bytes()
                    .eq_ignore_ascii_case(authority.as_str().as_bytes()) =>
        {
            Err(BadRequest::AuthorityMismatch)
        }
        (Some(authority), _) => Ok(authority.clone()),
        (None, Some(host)) => hosts
            .get_or_parse(
                host.as_bytes(),
                |a| a.as_str().as_bytes(),
                |text| Authority::try_from(text),
            )
            .map_err(|_| BadRequest::Authority),
        (None, None) => {
            Authority::try_from(destination.to_string()).map_err(|_| BadRequest::Authority)
        }
    }
}

/// The `Upgrade` protocols offered, without `h2c`; `None` when none is left.
fn offered_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut kept: Vec<&str> = Vec::new();
    for value in headers.get_all(header::UPGRADE) {
        let text = value.to_str().ok()?;
        kept.extend(
            text.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty() && !p.eq_ignore_ascii_case("h2c")),
        );
    }
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_str(&kept.join(", ")).ok()
}

#[cfg(test)]
mod tests;
