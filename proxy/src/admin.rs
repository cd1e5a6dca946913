//! The admin listener (15020): `/metrics` for Prometheus and the listed
//! `/app-health/<container>/<kind>` app probes (see [`app_probes`]) from
//! anywhere; `/ready` and `/live` only from loopback, so the proxy's own
//! probes run inside the pod (`ward-proxy probe`, [`crate::probe`]).

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

    pub(crate) async fn route(
        &self,
        peer: SocketAddr,
        method: &Method,
        path: &str,
        query: Option<&str>,
    ) -> Response<Body> {
        let local = peer.ip().is_loopback() || peer.ip().to_canonical().is_loopback();
        match (method, path, local) {
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
