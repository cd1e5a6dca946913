//! The admin listener (15020): `/metrics` for Prometheus from anywhere;
//! `/ready` and `/live` only from loopback, so probes stay inside the pod.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::http::{Body, full};
use crate::identity::WorkloadIdentity;
use crate::metrics::ProxyMetrics;

pub struct Admin {
    pub metrics: Arc<ProxyMetrics>,
    pub identity: WorkloadIdentity,
    pub draining: CancellationToken,
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
                let service = service_fn(move |req| {
                    let this = this.clone();
                    async move { Ok::<_, Infallible>(this.route(peer, &req)) }
                });
                let _ = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(5))
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    }

    fn route(&self, peer: SocketAddr, req: &Request<Incoming>) -> Response<Body> {
        let local = peer.ip().is_loopback() || peer.ip().to_canonical().is_loopback();
        match (req.method(), req.uri().path(), local) {
            (&Method::GET, "/metrics", _) => Response::builder()
                .header(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )
                .body(full(Bytes::from(self.metrics.render())))
                .expect("valid response"),
            (&Method::GET, "/live", true) => text(StatusCode::OK, "live\n"),
            (&Method::GET, "/ready", true) => {
                if self.draining.is_cancelled() {
                    text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                } else if self.identity.is_ready() {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "no certificate yet\n")
                }
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(full(Bytes::from_static(body.as_bytes())))
        .expect("valid response")
}
