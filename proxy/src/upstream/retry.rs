//! When a request that failed on its way to a peer sidecar may be sent
//! again: one rule for the pod path (once more, on a fresh connection) and
//! the Service path (to another endpoint).
//!
//! - Never sent (its connection closed or could not be opened first): the
//!   request is handed back whole, body included, and goes again.
//! - Sent, but processed by nobody (HTTP/2 `REFUSED_STREAM`, a GOAWAY that
//!   did not include it, the peer sidecar's `503 application unavailable`):
//!   again when it has no body, so it can be rebuilt.
//! - Sent and perhaps processed (the connection broke mid-request): again
//!   only when it has no body and its method is idempotent (RFC 9110
//!   §9.2.2).

use http::request::Parts;
use http::{Method, Request};
use hyper::body::Body as _;

use super::UpstreamError;
use crate::http::{self as h, Body};

/// A request that did not get its response.
#[derive(Debug)]
pub struct SendFailed {
    pub error: UpstreamError,
    /// The request back, when it never left.
    pub unsent: Option<Request<Body>>,
}

/// How far a failed request got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reached {
    /// It never left the proxy.
    Nowhere,
    /// The peer had it but processed none of it.
    Unprocessed,
    /// It may have been processed.
    Unknown,
}

impl Reached {
    /// How far a request got that failed with `error`, `unsent` when it
    /// was handed back.
    pub fn of(error: &UpstreamError, unsent: bool) -> Self {
        if unsent {
            Reached::Nowhere
        } else if not_processed(error) {
            Reached::Unprocessed
        } else {
            Reached::Unknown
        }
    }
}

/// What it takes to send one request again: its head when it has no body
/// (rebuilt with an empty one), and whether its method is idempotent.
pub struct Resend {
    head: Option<Parts>,
    idempotent: bool,
}

impl Resend {
    /// Taken before `parts` and `body` are sent.
    pub fn new(parts: &Parts, body: &Body) -> Self {
        Resend {
            head: body.is_end_stream().then(|| parts.clone()),
            idempotent: is_idempotent(&parts.method),
        }
    }

    /// Whether a request that got as far as `reached` may go again.
    pub fn allows(&self, reached: Reached) -> bool {
        match reached {
            Reached::Nowhere => true,
            Reached::Unprocessed => self.head.is_some(),
            Reached::Unknown => self.head.is_some() && self.idempotent,
        }
    }

    /// The request to send again after an attempt failed with `error`
    /// (`unsent`: the request handed back, when it never left), or `None`
    /// when sending it again is not safe.
    pub fn again(
        &self,
        error: &UpstreamError,
        unsent: Option<Request<Body>>,
    ) -> Option<Request<Body>> {
        if !self.allows(Reached::of(error, unsent.is_some())) {
            return None;
        }
        match (unsent, &self.head) {
            (Some(unsent), _) => Some(unsent),
            (None, Some(head)) => Some(Request::from_parts(head.clone(), h::empty())),
            (None, None) => None,
        }
    }
}

/// Methods whose repetition has the effect of one request (RFC 9110 §9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Whether `error` says the peer processed nothing of the request: no
/// connection was made, the peer sidecar found its application gone, or
/// HTTP/2 refused the stream.
pub fn not_processed(error: &UpstreamError) -> bool {
    match error {
        UpstreamError::ConnectTimeout
        | UpstreamError::Connect(_)
        | UpstreamError::Tls(_)
        | UpstreamError::PoolExhausted
        | UpstreamError::AppUnavailable
        | UpstreamError::Quarantined => true,
        UpstreamError::Http(err) => refused_stream(err),
        UpstreamError::InvalidRequest => false,
    }
}

/// HTTP/2 told us the stream was never processed: `REFUSED_STREAM`, or a
/// GOAWAY that did not include it (RFC 9113 §8.7).
fn refused_stream(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM) || h2.is_go_away();
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests;
