//! One plaintext HTTP/1.1 exchange with an admin port (the sidecar's 15020,
//! the control plane's 15014), bounded in time and size: the live-mesh
//! commands (`ward authz why`, `ward status`, `ward check`) ask these.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

/// Connecting and the whole exchange each end within this.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read (an inventory of thousands of sidecars fits).
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// `method path` on `addr` (`host:port`) with an optional JSON body: the
/// status and the body. An error says what could not be done, not why the
/// admin port refused (the caller reads the status).
pub fn exchange(
    addr: &str,
    method: Method,
    path: &str,
    json: Option<Vec<u8>>,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        tokio::time::timeout(TIMEOUT, send(addr, method, path, json))
            .await
            .map_err(|_| anyhow::anyhow!("no answer from {addr} within {TIMEOUT:?}"))?
    })
}

async fn send(
    addr: &str,
    method: Method,
    path: &str,
    json: Option<Vec<u8>>,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr);
    if json.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    let request = request.body(Full::new(Bytes::from(json.unwrap_or_default())))?;
    let response = sender
        .send_request(request)
        .await
        .with_context(|| format!("{path} on {addr}"))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the answer of {addr}: {e}"))?
        .to_bytes();
    Ok((status, body))
}
