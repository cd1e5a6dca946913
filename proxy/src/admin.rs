//! The admin listener (15020): `/metrics` for Prometheus and the listed
//! `/app-health/<container>/<kind>` app probes (see [`app_probes`]) from
//! anywhere; `/ready` and `/live` only from loopback, so the proxy's own
//! probes run inside the pod (`ward-proxy probe`, [`crate::probe`]);
//! `/logging` and `/debug/authz/why` ([`why`]) only from loopback too.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::http::{Body, full};
use crate::identity::WorkloadIdentity;
use crate::metrics::ProxyMetrics;

pub mod app_probes;
#[cfg(test)]
mod tests;
pub mod why;

pub use app_probes::AppProbes;

pub struct Admin {
    pub metrics: Arc<ProxyMetrics>,
    pub identity: WorkloadIdentity,
    /// Ready needs a policy set too when policies are enforced.
    pub policy: Option<Arc<crate::policy::PolicyAuthorizer>>,
    pub draining: CancellationToken,
    /// The app's original probes, served on `/app-health/...`.
    pub app_probes: AppProbes,
}

impl Admin {
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(_) => continue,
                },
                _ = shutdown.cancelled() => return,
            };
            let this = self.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let this = this.clone();
                    async move {
                        if req.uri().path() == why::PATH {
                            return Ok::<_, Infallible>(this.why_request(peer, req).await);
                        }
                        Ok::<_, Infallible>(
                            this.route(peer, req.method(), req.uri().path(), req.uri().query())
                                .await,
                        )
                    }
                });
                let _ = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(5))
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    }

    /// `POST /debug/authz/why`: its body read (bounded in size and time),
    /// then [`Self::why`].
    async fn why_request(
        &self,
        peer: SocketAddr,
        req: http::Request<hyper::body::Incoming>,
    ) -> Response<Body> {
        use http_body_util::BodyExt;
        let method = req.method().clone();
        if !is_local(peer) {
            return text(StatusCode::NOT_FOUND, "not found\n");
        }
        let body = http_body_util::Limited::new(req.into_body(), why::MAX_BODY_BYTES).collect();
        match tokio::time::timeout(std::time::Duration::from_secs(5), body).await {
            Ok(Ok(body)) => self.why(peer, &method, &body.to_bytes()),
            Ok(Err(_)) => text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request description is unreadable or over 64 KiB\n",
            ),
            Err(_) => text(
                StatusCode::REQUEST_TIMEOUT,
                "the request body took over 5s\n",
            ),
        }
    }

    /// The answer of `/debug/authz/why` to `peer` for a request described
    /// by `body`: it reveals policy, so only a local caller gets one.
    pub(crate) fn why(&self, peer: SocketAddr, method: &Method, body: &[u8]) -> Response<Body> {
        match (method, is_local(peer)) {
            (_, false) => text(StatusCode::NOT_FOUND, "not found\n"),
            (&Method::POST, true) => why::answer(self.policy.as_deref(), body),
            (_, true) => text(
                StatusCode::METHOD_NOT_ALLOWED,
                "POST a request description (JSON, as `ward authz check --request`)\n",
            ),
        }
    }

    pub(crate) async fn route(
        &self,
        peer: SocketAddr,
        method: &Method,
        path: &str,
        query: Option<&str>,
    ) -> Response<Body> {
        match (method, path, is_local(peer)) {
            (&Method::GET, "/metrics", _) => {
                let stats = &self.identity.stats;
                self.metrics.sync_identity(
                    self.identity.svid.not_after(),
                    stats.renewals.load(std::sync::atomic::Ordering::Relaxed),
                    stats.failures.load(std::sync::atomic::Ordering::Relaxed),
                );
                Response::builder()
                    .header(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )
                    .body(full(Bytes::from(self.metrics.render())))
                    .expect("valid response")
            }
            (&Method::GET, "/live", true) => text(StatusCode::OK, "live\n"),
            // Runtime log level: `GET /logging` shows it, `PUT /logging?level=debug` sets it.
            (&Method::GET, "/logging", true) => {
                let level = ward_logging::current_level().unwrap_or_default();
                Response::new(full(Bytes::from(format!("{level}\n"))))
            }
            (&Method::PUT | &Method::POST, "/logging", true) => set_log_level(query),
            (&Method::GET, "/ready", true) => {
                if self.draining.is_cancelled() {
                    text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                } else if !self.identity.is_ready() {
                    text(StatusCode::SERVICE_UNAVAILABLE, "no certificate yet\n")
                } else if self.identity.is_expired() {
                    text(StatusCode::SERVICE_UNAVAILABLE, "certificate expired\n")
                } else if self.policy.as_ref().is_some_and(|p| !p.has_policy()) {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no policy from the control plane yet\n",
                    )
                } else {
                    text(StatusCode::OK, "ready\n")
                }
            }
            (&Method::GET, path, _) if path.starts_with(app_probes::PATH_PREFIX) => {
                let Some(probe) = self.app_probes.get(path) else {
                    return text(StatusCode::NOT_FOUND, "not found\n");
                };
                match app_probes::run(probe).await {
                    Ok(()) => text(StatusCode::OK, "ok\n"),
                    Err(reason) => {
                        debug!(path, %reason, "app probe failed");
                        Response::builder()
                            .status(StatusCode::SERVICE_UNAVAILABLE)
                            .header(header::CONTENT_TYPE, "text/plain")
                            .body(full(Bytes::from(format!("{reason}\n"))))
                            .expect("valid response")
                    }
                }
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

/// A caller inside the pod (what `kubectl port-forward` also connects from).
fn is_local(peer: SocketAddr) -> bool {
    peer.ip().is_loopback() || peer.ip().to_canonical().is_loopback()
}

fn set_log_level(query: Option<&str>) -> Response<Body> {
    let level = query
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("level="));
    let Some(level) = level else {
        return text(
            StatusCode::BAD_REQUEST,
            "expected ?level=<filter>, e.g. ?level=debug\n",
        );
    };
    match ward_logging::set_level(level) {
        Ok(()) => {
            tracing::info!(level, "log level changed through the admin endpoint");
            Response::new(full(Bytes::from(format!("log level set to {level}\n"))))
        }
        Err(err) => Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body(full(Bytes::from(format!(
                "invalid level {level:?}: {err}\n"
            ))))
            .expect("valid response"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(full(Bytes::from_static(body.as_bytes())))
        .expect("valid response")
}
