//! HTTP plumbing shared by both directions: serving a downstream connection,
//! the body type, local error responses, and hop-by-hop header handling.

use std::net::SocketAddr;
use std::sync::OnceLock;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, InvalidUri, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tracing::debug;

use crate::limits::{H2_CONNECTION_WINDOW, H2_MAX_STREAMS, H2_STREAM_WINDOW, Limits};

pub type Body = BoxBody<Bytes, hyper::Error>;

/// Set on error responses the proxy makes itself, with a short reason.
pub const ERROR_HEADER: HeaderName = HeaderName::from_static("x-ward-error");
/// Between sidecars: the protocol the application spoke, so the inbound
/// side can talk to its application the same way.
pub const PROTO_HEADER: HeaderName = HeaderName::from_static("x-ward-proto");
/// Identity of the peer, for the application (Envoy/Istio's format).
pub const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// A response the proxy generated itself (never the application's).
pub fn local_response(
    status: StatusCode,
    reason: &'static str,
    body: &'static str,
) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .header(ERROR_HEADER, HeaderValue::from_static(reason))
        .body(full(Bytes::from_static(body.as_bytes())))
        .expect("valid response")
}

/// The 403 a denied request gets: it names no policy internals.
pub fn forbidden() -> Response<Body> {
    Response::builder()
        .status(StatusCode::FORBIDDEN)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(full(Bytes::from_static(b"RBAC: access denied")))
        .expect("valid response")
}

const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// Removes connection-specific headers (and those `Connection` names) before
/// a message crosses to another connection. `TE: trailers` is kept (gRPC).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
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
    if let Some(te) = headers.get(header::TE)
        && te.as_bytes() != b"trailers"
    {
        headers.remove(header::TE);
    }
}

/// Joins several `cookie` fields into one, separated by "; ": HTTP/2 may
/// split them (RFC 9113 §8.2.3) and they must be joined before the request
/// goes on over HTTP/1.1, where many servers read only one Cookie header.
pub fn join_cookies(headers: &mut HeaderMap) {
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

/// True for requests that take over the connection: `Upgrade` (WebSocket)
/// and `CONNECT`.
pub fn is_tunnel(method: &http::Method, headers: &HeaderMap) -> bool {
    method == http::Method::CONNECT || headers.contains_key(header::UPGRADE)
}

/// True when the response hands the connection over: `101 Switching
/// Protocols`, or a 2xx answer to `CONNECT`.
pub fn is_upgrade_response<B>(method: &http::Method, resp: &http::Response<B>) -> bool {
    resp.status() == http::StatusCode::SWITCHING_PROTOCOLS
        || (method == http::Method::CONNECT && resp.status().is_success())
}

/// HTTP/1.1 sends only the trailers a response declares in `Trailer`, and
/// HTTP/2 applications never declare them. For gRPC over an HTTP/1.1 hop
/// between sidecars, declare gRPC's own status trailers; other trailers
/// pass only if the application declared them.
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

/// The authority a request asked for: its URI's, else its `Host` (when it is
/// text), else the destination address. An authority from `Host` is parsed
/// once per connection while it stays the same (`hosts`).
pub fn requested_authority(
    parts: &http::request::Parts,
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

/// The first value a connection parsed from some request text (a host),
/// kept so that later requests with the same text reuse it, a reference
/// count instead of a copy and a parse: most connections ask for one host.
pub struct FirstParsed<T>(OnceLock<T>);

impl<T> Default for FirstParsed<T> {
    fn default() -> Self {
        FirstParsed(OnceLock::new())
    }
}

impl<T: Clone> FirstParsed<T> {
    /// The value parsed from `text`: the kept one when its text (`text_of`)
    /// is `text`, else `parse(text)`, kept when it is the first.
    pub fn get_or_parse<E>(
        &self,
        text: &[u8],
        text_of: fn(&T) -> &[u8],
        parse: impl FnOnce(&[u8]) -> Result<T, E>,
    ) -> Result<T, E> {
        if let Some(first) = self.0.get()
            && text_of(first) == text
        {
            return Ok(first.clone());
        }
        let value = parse(text)?;
        let _ = self.0.set(value.clone());
        Ok(value)
    }
}

/// Serves one downstream HTTP connection (HTTP/1.1 with upgrades, or HTTP/2)
/// with the proxy's limits, answering each request with `handle`, until it
/// ends or `shutdown` asks it to finish its in-flight requests and close.
pub async fn serve_connection<I, F, Fut>(
    io: I,
    http2: bool,
    limits: &Limits,
    shutdown: tokio_util::sync::CancellationToken,
    direction: &'static str,
    handle: F,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    use hyper::server::conn::{http1, http2};
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let service = hyper::service::service_fn(move |req| {
        let response = handle(req);
        async move { Ok::<_, std::convert::Infallible>(response.await) }
    });
    let io = TokioIo::new(io);
    let result = if http2 {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(limits.max_header_bytes as u32)
            // One client connection holds at most one pooled upstream
            // connection's worth of streams.
            .max_concurrent_streams(H2_MAX_STREAMS)
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            .keep_alive_interval(std::time::Duration::from_secs(30));
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            _ = shutdown.cancelled() => { conn.as_mut().graceful_shutdown(); conn.await }
        }
    } else {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(limits.max_header_bytes.max(8192));
        let conn = builder.serve_connection(io, service).with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            _ = shutdown.cancelled() => { conn.as_mut().graceful_shutdown(); conn.await }
        }
    };
    if let Err(err) = result {
        debug!(%err, "{direction} HTTP connection ended with an error");
    }
}
