//! `ward-proxy probe <ready|live>` and `ward-proxy wait-ready`: the sidecar's
//! own health checks, run *inside* the sidecar container. The admin port
//! answers `/ready` and `/live` on loopback only while the kubelet probes
//! from the node, so the injected probes are `exec` ones that GET the local
//! admin port; `wait-ready` is the classic (non-native) sidecar's `postStart`
//! hook, which holds the app containers back until the proxy is ready.
//!
//! Also the small HTTP/1.1 GET, TCP connect and gRPC health checks the
//! admin port's `/app-health/...` paths run against the app (see
//! [`crate::admin`]).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, ValueEnum};
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The admin listener as seen from inside the pod.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:15020";
/// How often `wait-ready` asks.
pub const WAIT_INTERVAL: Duration = Duration::from_millis(200);
/// The part of an error body quoted in a failure reason.
const MAX_REASON_BYTES: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Check {
    /// `/ready`: certificate (and policy, when enforced) in place, not draining.
    Ready,
    /// `/live`: the admin server answers.
    Live,
}

impl Check {
    pub fn path(self) -> &'static str {
        match self {
            Check::Ready => "/ready",
            Check::Live => "/live",
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    #[arg(value_enum)]
    pub check: Check,
    /// The proxy's admin listener.
    #[arg(long, default_value = DEFAULT_ADMIN)]
    pub admin: SocketAddr,
    /// Give up (and fail) after this long.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct WaitReadyArgs {
    /// The proxy's admin listener.
    #[arg(long, default_value = DEFAULT_ADMIN)]
    pub admin: SocketAddr,
    /// Fail when the proxy is not ready within this long.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// One check: `Ok` on a 200 from the admin port, else why not.
pub async fn probe(args: &ProbeArgs) -> Result<(), String> {
    let path = args.check.path();
    match get_with_reason(args.admin, path, args.timeout).await? {
        (StatusCode::OK, _) => Ok(()),
        (status, reason) => Err(format!("GET {path} on {}: {status}{reason}", args.admin)),
    }
}

/// Polls `/ready` every [`WAIT_INTERVAL`] until it answers 200 (`Ok`) or
/// `timeout` passed (`Err` with the last answer).
pub async fn wait_ready(args: &WaitReadyArgs) -> Result<(), String> {
    wait_ready_every(args, WAIT_INTERVAL).await
}

pub(crate) async fn wait_ready_every(
    args: &WaitReadyArgs,
    interval: Duration,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + args.timeout;
    let mut last = String::from("no answer yet");
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(format!(
                "not ready after {}: {last}",
                humantime::format_duration(args.timeout)
            ));
        }
        match get_with_reason(args.admin, "/ready", left.min(Duration::from_secs(2))).await {
            Ok((StatusCode::OK, _)) => return Ok(()),
            Ok((status, reason)) => last = format!("GET /ready: {status}{reason}"),
            Err(err) => last = err,
        }
        tokio::time::sleep(
            interval.min(deadline.saturating_duration_since(tokio::time::Instant::now())),
        )
        .await;
    }
}

/// `probe` and `wait-ready` for `main`: a small runtime of their own.
pub fn run_blocking(fut: impl Future<Output = Result<(), String>>) -> Result<(), String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(fut)
}

/// GET `path` on `addr`; the status and, unless 200, `": <start of body>"`.
async fn get_with_reason(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(StatusCode, String), String> {
    let host = addr.ip().to_string();
    let run = async {
        let response = send_get(&host, addr.port(), path, &[]).await?;
        let status = response.status();
        if status == StatusCode::OK {
            return Ok::<_, String>((status, String::new()));
        }
        let body = Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body[..body.len().min(MAX_REASON_BYTES)])
            .trim()
            .to_owned();
        Ok((
            status,
            if text.is_empty() {
                String::new()
            } else {
                format!(": {text}")
            },
        ))
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| format!("GET {path} on {addr}: no answer within {timeout:?}"))?
}

/// An HTTP/1.1 GET of `path` on `host:port`, the way the kubelet sends a
/// probe (`User-Agent: kube-probe/...`, `Accept: */*`, `Connection: close`;
/// `headers` override those). Returns the status; the body is not read.
pub async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<StatusCode, String> {
    tokio::time::timeout(timeout, async {
        send_get(host, port, path, headers)
            .await
            .map(|r| r.status())
    })
    .await
    .map_err(|_| format!("no answer within {timeout:?}"))?
}

/// A TCP connect to `host:port` within `timeout`.
pub async fn tcp_connect(host: &str, port: u16, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, TcpStream::connect((host, port))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(format!("connect {host}:{port}: {err}")),
        Err(_) => Err(format!(
            "connect {host}:{port}: timed out after {timeout:?}"
        )),
    }
}

async fn send_get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Result<http::Response<hyper::body::Incoming>, String> {
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("{host}:{port}: {e}"))?;
    tokio::spawn(conn);
    let authority = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        _ => format!("{host}:{port}"),
    };
    let mut req = Request::get(path)
        .header(header::HOST, &authority)
        .header(header::USER_AGENT, "kube-probe/ward-proxy")
        .header(header::ACCEPT, "*/*")
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("GET {path}: {e}"))?;
    for (name, value) in headers {
        let name = header::HeaderName::try_from(name.as_str())
            .map_err(|e| format!("header {name:?}: {e}"))?;
        let value = header::HeaderValue::try_from(value.as_str())
            .map_err(|e| format!("header {name}: {e}"))?;
        req.headers_mut().insert(name, value);
    }
    sender
        .send_request(req)
        .await
        .map_err(|e| format!("GET {path} on {authority}: {e}"))
}

pub mod grpc_health;

#[cfg(test)]
mod tests;
