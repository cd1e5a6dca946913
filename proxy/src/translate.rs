//! HTTP/1 ↔ HTTP/2 between hops: what a message becomes when it crosses
//! from one connection to the next. Outbound, the application's request
//! (HTTP/1.1 or HTTP/2) becomes the request on the hop to the peer sidecar:
//! pooled HTTP/2, an HTTP/1.1 hop (`--upstream-protocol http1`), or a
//! dedicated HTTP/1.1 connection for an upgrade or `CONNECT`. Inbound, the
//! hop's request becomes what the application speaks. Responses cross back.
//!
//! The rules (RFC 9110 §7.6.1, RFC 9112 §3.2, RFC 9113 §8.2):
//! - Hop-by-hop fields never cross: `Connection` and the fields it names,
//!   `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`,
//!   `HTTP2-Settings`, `Proxy-Authenticate`, `Proxy-Authorization`. `TE`
//!   crosses only as `trailers` (gRPC needs it; it is the one value HTTP/2
//!   allows), also when `Connection` names it, as HTTP/1.1 senders must.
//! - The authority is read before those go, so `Connection: host` cannot
//!   change where a request is going: an absolute-form target's authority,
//!   else `Host`, else the destination address. HTTP/2 carries it in
//!   `:authority` (no `host`), HTTP/1.1 in `Host` with an origin-form target.
//! - `x-ward-proto` tells the far sidecar what the application spoke when
//!   the hop speaks something else; it is Ward's alone (an application's own
//!   is dropped) and never reaches the far application.
//! - An upgrade or `CONNECT` goes over HTTP/1.1 with only its own
//!   `Connection: upgrade` and `Upgrade` left; a response that hands the
//!   connection over (`101`) keeps them, since the client needs them to
//!   switch.
//! - Bodies are never re-framed here: hyper frames each side (an HTTP/2
//!   response without `content-length` reaches an HTTP/1.1 client chunked).

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::{Authority, InvalidUri, PathAndQuery, Scheme};
use http::{Method, Response, StatusCode, Uri, Version};

use crate::http::FirstParsed;

/// Between sidecars: the protocol the application spoke (`h1`, `h2`) when
/// the hop speaks the other one.
pub const PROTO_HEADER: HeaderName = HeaderName::from_static("x-ward-proto");

const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HTTP2_SETTINGS,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// Removes the fields that belong to one connection (see the module
/// comment) before a message crosses to another; `TE` is left as
/// `trailers` when it offered trailers, else removed.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let trailers = accepts_trailers_offer(headers);
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::TE);
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// `TE` lists `trailers` (any case, parameters ignored).
fn accepts_trailers_offer(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let name = coding.split(';').next().unwrap_or_default().trim();
            name.eq_ignore_ascii_case("trailers")
        })
}

/// True for requests that take over the connection: `Upgrade` (WebSocket)
/// and `CONNECT`.
pub fn is_tunnel(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::CONNECT || headers.contains_key(header::UPGRADE)
}

/// True when the response hands the connection over: `101 Switching
/// Protocols`, or a 2xx answer to `CONNECT`.
pub fn is_upgrade_response<B>(method: &Method, resp: &Response<B>) -> bool {
    resp.status() == StatusCode::SWITCHING_PROTOCOLS
        || (method == Method::CONNECT && resp.status().is_success())
}

// ------------------------------------------------------------ outbound: application → hop

/// The application's request as sent on the pooled HTTP/2 hop: absolute
/// URI with the requested authority (`destination` when it named none;
/// `hosts` keeps the connection's first parsed `Host`), no `host`, and
/// `x-ward-proto: h1` when the application spoke HTTP/1.
pub fn request_to_h2_hop(
    parts: &mut Parts,
    destination: SocketAddr,
    hosts: &FirstParsed<Authority>,
) -> Result<(), InvalidUri> {
    let spoke_http1 = parts.version != Version::HTTP_2;
    let authority = requested_authority(parts, destination, hosts)?;
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(&PROTO_HEADER);
    parts.headers.remove(header::HOST);
    parts.uri = absolute_uri(std::mem::take(&mut parts.uri), authority);
    parts.version = Version::HTTP_2;
    if spoke_http1 {
        parts
            .headers
            .insert(PROTO_HEADER, HeaderValue::from_static("h1"));
    }
    Ok(())
}

/// The application's request as sent on an HTTP/1.1 hop: origin-form
/// target, `Host` set to the requested authority, and `x-ward-proto: h2`
/// when the application spoke HTTP/2.
pub fn request_to_http1_hop(parts: &mut Parts, destination: SocketAddr) {
    let spoke_h2 = parts.version == Version::HTTP_2;
    let host = host_header(parts, destination);
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(&PROTO_HEADER);
    origin_form(parts);
    parts.version = Version::HTTP_11;
    if let Some(host) = host {
        parts.headers.insert(header::HOST, host);
    }
    if spoke_h2 {
        parts
            .headers
            .insert(PROTO_HEADER, HeaderValue::from_static("h2"));
    }
}

/// An upgrade or `CONNECT` as sent on its own HTTP/1.1 hop connection:
/// `CONNECT` keeps its authority-form target, an upgrade goes origin-form
/// with `Connection: upgrade` and the protocols it offered; `Host` is the
/// requested authority.
pub fn tunnel_request_to_hop(parts: &mut Parts, destination: SocketAddr) {
    let connect = parts.method == Method::CONNECT;
    let host = host_header(parts, destination);
    let upgrade = (!connect)
        .then(|| parts.headers.get(header::UPGRADE).cloned())
        .flatten();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(&PROTO_HEADER);
    if let Some(protocols) = upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, protocols);
    }
    if !connect {
        origin_form(parts);
    }
    parts.version = Version::HTTP_11;
    if let Some(host) = host {
        parts.headers.insert(header::HOST, host);
    }
}

// ------------------------------------------------------------ inbound: hop → application

/// Whether the client application spoke HTTP/2: what `x-ward-proto` says,
/// else the hop's own version. The field is removed: it is for this
/// sidecar, not the application.
pub fn client_spoke_h2(parts: &mut Parts) -> bool {
    match parts
        .headers
        .remove(&PROTO_HEADER)
        .as_ref()
        .map(|v| v.as_bytes())
    {
        Some(b"h1") => false,
        Some(b"h2") => true,
        _ => parts.version == Version::HTTP_2,
    }
}

/// The request for an application spoken to in HTTP/1.1: `cookie` fields
/// joined (HTTP/2 may split them, many HTTP/1.1 servers read one), `Host`
/// from the authority when the hop's request had none (HTTP/2). `hosts`
/// keeps the connection's first converted authority.
pub fn request_to_http1_app(parts: &mut Parts, hosts: &FirstParsed<HeaderValue>) {
    parts.version = Version::HTTP_11;
    join_cookies(&mut parts.headers);
    if !parts.headers.contains_key(header::HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(host) = hosts.get_or_parse(
            authority.as_str().as_bytes(),
            HeaderValue::as_bytes,
            HeaderValue::from_bytes,
        )
    {
        parts.headers.insert(header::HOST, host);
    }
}

/// A `CONNECT` for the application's HTTP client, which wants an absolute
/// URI (its connector ignores it and dials the application). `false` when
/// the request has no authority to put in it.
pub fn connect_request_to_app(parts: &mut Parts) -> bool {
    match parts.uri.authority().cloned() {
        Some(authority) => {
            parts.uri = absolute_uri(Uri::default(), authority);
            true
        }
        None => false,
    }
}

// ------------------------------------------------------------ responses

/// A response as it crosses back to the client's connection: hop-by-hop
/// fields removed, except that a `101` keeps `Connection: upgrade` and its
/// `Upgrade`, which the client needs to switch.
pub fn response_to_client<B>(resp: &mut Response<B>) {
    let upgrade = (resp.status() == StatusCode::SWITCHING_PROTOCOLS)
        .then(|| resp.headers().get(header::UPGRADE).cloned())
        .flatten();
    let headers = resp.headers_mut();
    strip_hop_by_hop(headers);
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
}

/// Whether a request's client takes trailers (`TE: trailers`, as left by
/// [`strip_hop_by_hop`]).
pub fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers
        .get(header::TE)
        .is_some_and(|te| te.as_bytes() == b"trailers")
}

/// HTTP/1.1 sends only the trailers a response declares in `Trailer`, and
/// HTTP/2 applications never declare them. For gRPC to a client over
/// HTTP/1.1 that takes trailers, declare gRPC's own status trailers; other
/// trailers pass only if the application declared them.
pub fn declare_grpc_trailers(headers: &mut HeaderMap) {
    let grpc = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
    if grpc && !headers.contains_key(header::TRAILER) {
        headers.insert(
            header::TRAILER,
            HeaderValue::from_static("grpc-status, grpc-message, grpc-status-details-bin"),
        );
    }
}

// ------------------------------------------------------------ authority and target

/// The authority a request asked for: its URI's, else its `Host` (when it is
/// text), else the destination address. An authority from `Host` is parsed
/// once per connection while it stays the same (`hosts`).
pub fn requested_authority(
    parts: &Parts,
    destination: SocketAddr,
    hosts: &FirstParsed<Authority>,
) -> Result<Authority, InvalidUri> {
    if let Some(authority) = parts.uri.authority() {
        return Ok(authority.clone());
    }
    match parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    {
        Some(host) => hosts.get_or_parse(
            host.as_bytes(),
            |a| a.as_str().as_bytes(),
            |text| Authority::try_from(text),
        ),
        None => Authority::try_from(destination.to_string()),
    }
}

/// `Host` for an HTTP/1.1 hop: the URI's authority, else the request's own
/// `Host` (when it is text), else the destination address.
fn host_header(parts: &Parts, destination: SocketAddr) -> Option<HeaderValue> {
    match parts.uri.authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => match parts.headers.get(header::HOST) {
            Some(host) if host.to_str().is_ok() => Some(host.clone()),
            _ => HeaderValue::try_from(destination.to_string()).ok(),
        },
    }
}

/// `uri` in absolute form: scheme `http`, `authority`, and the path and query
/// it had ("/" when it had none). Nothing is copied or parsed again.
pub fn absolute_uri(uri: Uri, authority: Authority) -> Uri {
    let mut parts = uri.into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    parts
        .path_and_query
        .get_or_insert_with(|| PathAndQuery::from_static("/"));
    Uri::from_parts(parts).expect("a scheme, an authority and a path make a URI")
}

/// The target in origin form (path and query only), when it has a path.
fn origin_form(parts: &mut Parts) {
    if let Some(pq) = parts.uri.path_and_query() {
        parts.uri = Uri::from(pq.clone());
    }
}

/// Joins several `cookie` fields into one, separated by "; " (RFC 9113
/// §8.2.3), before a request goes on over HTTP/1.1.
fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for value in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(value.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

#[cfg(test)]
mod tests;
