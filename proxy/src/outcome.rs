//! Every way the proxy ends a request or connection itself, instead of
//! carrying it through, is one [`Failure`]: refused (policy, mTLS mode, a
//! bad request, a destination it cannot route) or failed (the application or
//! the peer sidecar unreachable, a timeout). This module alone says what each
//! means to the client (an HTTP status and `x-ward-error`, or the connection
//! closed), to the metrics (`ward_connections_refused_total{reason}`,
//! `ward_tls_handshake_failures_total{reason}`) and to the access log
//! (`outcome`, `reason`). The inbound and outbound stacks stop with a
//! `Failure` where they stop, and record it in one place per request or
//! connection.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use tracing::{debug, info};

use crate::http::{Body, ERROR_HEADER, full};
use crate::metrics::ProxyMetrics;
use crate::orig_dst::Unroutable;
use crate::upstream::UpstreamError;

/// Why the proxy ended a request or connection (see the module comment).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    // Connections refused before anything is proxied.
    #[error("the original destination is one of the proxy's own listeners")]
    Loop,
    #[error("the original destination is unknown")]
    NoOriginalDestination,
    #[error("the listener is at --max-connections")]
    ConnectionLimit,
    #[error("plaintext on a port whose mTLS mode is STRICT")]
    PlaintextInStrictMode,
    /// `reason` is the fixed label of `ward_tls_handshake_failures_total`.
    #[error("TLS handshake: {reason}{}", detail(.error))]
    TlsHandshake {
        reason: &'static str,
        error: Option<std::io::Error>,
    },
    #[error("discovery did not say in time what the destination is")]
    DestinationUnknown,
    #[error("a Service address, but not one of its ports")]
    ServicePortUnknown,
    #[error("the destination has no sidecar and egress to such is denied")]
    UnmeshedEgressDenied,
    /// The client left before saying anything worth routing.
    #[error("the client closed the connection first")]
    ClientClosed,

    // Refused by policy (the verdict, with its policy and rule, is logged
    // beside).
    #[error("denied by policy")]
    Denied,
    /// The peer (its identity, certificate or address) is quarantined
    /// (`ward quarantine`); the entry is logged beside.
    #[error("the peer is quarantined")]
    Quarantined,

    // The request itself.
    #[error("{0}")]
    BadRequest(#[from] BadRequest),
    #[error("the request body is malformed")]
    InvalidBody,

    // The other side.
    #[error("the application refused the connection")]
    AppUnavailable,
    #[error("the application's answer failed")]
    AppError,
    #[error("no usable endpoint")]
    NoEndpoints,
    #[error("request timeout")]
    Timeout,
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
}

fn detail(error: &Option<std::io::Error>) -> String {
    error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
}

/// Why a request is answered 400 without reaching the policy or the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    #[error("CONNECT needs an authority-form target (host:port)")]
    ConnectTarget,
    #[error("the request target must be a path (authority-form is for CONNECT only)")]
    Target,
    #[error("the request has more than one Host header")]
    DuplicateHost,
    #[error(":authority and host disagree")]
    AuthorityMismatch,
    #[error("the authority is not valid")]
    Authority,
    #[error("{0}")]
    Path(#[from] ward_policy::path::PathError),
}

impl BadRequest {
    /// A short fixed reason for `x-ward-error`.
    pub fn reason(self) -> &'static str {
        match self {
            BadRequest::ConnectTarget | BadRequest::Target => "invalid request target",
            BadRequest::DuplicateHost | BadRequest::AuthorityMismatch => "conflicting authority",
            BadRequest::Authority => "invalid authority",
            BadRequest::Path(_) => "invalid path",
        }
    }
}

impl From<Unroutable> for Failure {
    fn from(unroutable: Unroutable) -> Self {
        match unroutable {
            Unroutable::Loop => Failure::Loop,
            Unroutable::Unknown => Failure::NoOriginalDestination,
        }
    }
}

impl Failure {
    /// The status an HTTP request ending this way gets; `None` for what
    /// only ever ends a connection, before any request was read.
    pub fn http_status(&self) -> Option<StatusCode> {
        Some(match self {
            Failure::Loop
            | Failure::NoOriginalDestination
            | Failure::ConnectionLimit
            | Failure::PlaintextInStrictMode
            | Failure::TlsHandshake { .. }
            | Failure::DestinationUnknown
            | Failure::ServicePortUnknown
            | Failure::UnmeshedEgressDenied
            | Failure::ClientClosed => return None,
            Failure::Denied | Failure::Quarantined => StatusCode::FORBIDDEN,
            Failure::BadRequest(_) | Failure::InvalidBody => StatusCode::BAD_REQUEST,
            Failure::AppUnavailable | Failure::NoEndpoints => StatusCode::SERVICE_UNAVAILABLE,
            Failure::AppError => StatusCode::BAD_GATEWAY,
            Failure::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Failure::Upstream(err) => err.status(),
        })
    }

    /// The `x-ward-error` of the local response; a denial names nothing.
    pub fn error_header(&self) -> Option<&'static str> {
        Some(match self {
            Failure::Denied => return None,
            Failure::Quarantined => "quarantined",
            Failure::BadRequest(bad) => bad.reason(),
            Failure::InvalidBody => "invalid request body",
            Failure::AppUnavailable => "application unavailable",
            Failure::AppError => "application error",
            Failure::NoEndpoints => "no-endpoints",
            Failure::Timeout => "timeout",
            Failure::Upstream(err) => err.reason(),
            Failure::Loop
            | Failure::NoOriginalDestination
            | Failure::ConnectionLimit
            | Failure::PlaintextInStrictMode
            | Failure::TlsHandshake { .. }
            | Failure::DestinationUnknown
            | Failure::ServicePortUnknown
            | Failure::UnmeshedEgressDenied
            | Failure::ClientClosed => return None,
        })
    }

    /// The `ward_connections_refused_total` reason of a connection that
    /// ends this way before anything was proxied; `None` when another
    /// metric counts it (TLS handshakes, authorization decisions) or
    /// nothing does (a client that left).
    pub fn refused_reason(&self) -> Option<&'static str> {
        match self {
            Failure::Loop
            | Failure::NoOriginalDestination
            | Failure::ConnectionLimit
            | Failure::PlaintextInStrictMode
            | Failure::DestinationUnknown
            | Failure::ServicePortUnknown
            | Failure::UnmeshedEgressDenied
            | Failure::NoEndpoints
            | Failure::AppUnavailable
            | Failure::Quarantined
            | Failure::Upstream(UpstreamError::Quarantined) => Some(self.label()),
            Failure::Upstream(_) => Some("upstream_unavailable"),
            Failure::TlsHandshake { .. }
            | Failure::ClientClosed
            | Failure::Denied
            | Failure::BadRequest(_)
            | Failure::InvalidBody
            | Failure::AppError
            | Failure::Timeout => None,
        }
    }

    /// The access log's `outcome`: one fixed word per kind of failure
    /// (`served` is the other value). A refused connection's is its
    /// `ward_connections_refused_total` reason.
    pub fn label(&self) -> &'static str {
        match self {
            Failure::Loop => "loop",
            Failure::NoOriginalDestination => "no_original_destination",
            Failure::ConnectionLimit => "connection_limit",
            Failure::PlaintextInStrictMode => "plaintext_in_strict_mode",
            Failure::TlsHandshake { .. } => "tls_handshake_failed",
            Failure::DestinationUnknown => "destination_unknown",
            Failure::ServicePortUnknown => "service_port_unknown",
            Failure::UnmeshedEgressDenied => "unmeshed_egress_denied",
            Failure::ClientClosed => "client_closed",
            Failure::Denied => "denied",
            Failure::Quarantined => "quarantined",
            Failure::BadRequest(_) => "bad_request",
            Failure::InvalidBody => "invalid_body",
            Failure::AppUnavailable => "app_unavailable",
            Failure::AppError => "app_error",
            Failure::NoEndpoints => "no_endpoints",
            Failure::Timeout => "timeout",
            Failure::Upstream(err) => match err {
                UpstreamError::ConnectTimeout => "upstream_timeout",
                UpstreamError::Connect(_) => "upstream_unavailable",
                UpstreamError::Tls(_) => "upstream_tls_failed",
                UpstreamError::Http(_) => "upstream_protocol_error",
                UpstreamError::InvalidRequest => "invalid_authority",
                UpstreamError::AppUnavailable => "upstream_app_unavailable",
                UpstreamError::PoolExhausted => "upstream_pool_exhausted",
                // The same outcome as the inbound's: one label, one answer.
                UpstreamError::Quarantined => "quarantined",
            },
        }
    }

    /// The answer an HTTP client gets: `403 RBAC: access denied` for a
    /// denial (naming no policy internals), else the status with a short
    /// `x-ward-error`.
    pub fn response(&self) -> Response<Body> {
        let status = self.http_status().unwrap_or(StatusCode::BAD_GATEWAY);
        let resp = Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "text/plain");
        let (resp, body) = match (self, self.error_header()) {
            (Failure::Denied, _) => (resp, Bytes::from_static(b"RBAC: access denied")),
            (_, Some(reason)) => (
                resp.header(ERROR_HEADER, HeaderValue::from_static(reason)),
                Bytes::from(format!("{reason}\n")),
            ),
            // What only ever ends a connection never gets here.
            (_, None) => (resp, Bytes::from_static(b"proxy error\n")),
        };
        resp.body(full(body)).expect("valid response")
    }
}

/// The response a client gets for a request the proxy carried through or
/// not, and the failure to record when not.
pub fn answer(served: Result<Response<Body>, Failure>) -> (Response<Body>, Option<Failure>) {
    match served {
        Ok(response) => (response, None),
        Err(failure) => (failure.response(), Some(failure)),
    }
}

/// Records a connection the proxy ended before proxying anything: its
/// metric, and its one access-log line.
pub fn record_refused(
    metrics: &ProxyMetrics,
    direction: &'static str,
    source: SocketAddr,
    failure: &Failure,
) {
    let outcome = failure.label();
    match failure {
        Failure::ClientClosed => {
            debug!(direction, %source, "client closed before anything was proxied");
        }
        Failure::TlsHandshake { reason, .. } => {
            metrics
                .tls_failures
                .with_label_values(&[direction, reason])
                .inc();
            info!(target: "ward::access", direction, %source, decision = "refused", reason, outcome, error = %failure, "mTLS handshake failed");
        }
        _ => {
            let reason = failure.refused_reason().unwrap_or(outcome);
            if let Some(label) = failure.refused_reason() {
                metrics.refused.with_label_values(&[direction, label]).inc();
            }
            info!(target: "ward::access", direction, %source, decision = "refused", reason, outcome, error = %failure, "connection refused");
        }
    }
}

#[cfg(test)]
mod tests;
