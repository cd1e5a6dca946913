//! HTTP plumbing shared by both directions: serving a downstream connection
//! and the body type. How a message changes from one connection to the next
//! is `translate.rs`; the proxy's own error responses, `outcome.rs`.

use std::sync::OnceLock;

use bytes::Bytes;
use http::header::HeaderName;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tracing::debug;

use crate::limits::{H2_CONNECTION_WINDOW, H2_MAX_STREAMS, H2_STREAM_WINDOW, Limits};

pub type Body = BoxBody<Bytes, hyper::Error>;

/// Set on error responses the proxy makes itself, with a short reason
/// (`outcome::Failure::response`).
pub const ERROR_HEADER: HeaderName = HeaderName::from_static("x-ward-error");
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
