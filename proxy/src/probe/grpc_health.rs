//! The kubelet's `grpc` probe, run by the sidecar: one unary
//! `grpc.health.v1.Health/Check` over plaintext HTTP/2 (prior knowledge),
//! healthy when the answer is `SERVING`, as the kubelet decides.
//!
//! The two messages are one optional field each (`service`, a string;
//! `status`, an enum), so they are encoded and decoded here by hand rather
//! than with a protobuf code generator and its build step.

use std::net::IpAddr;
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

const PATH: &str = "/grpc.health.v1.Health/Check";
/// `HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: u64 = 1;
/// Largest answer read; a health response is a few bytes.
const MAX_RESPONSE_BYTES: usize = 16 * 1024;

/// Runs the check against `host:port` within `timeout`: `Ok` when the app
/// answers `SERVING`, else why not.
pub async fn check(
    host: &str,
    port: u16,
    service: Option<&str>,
    timeout: Duration,
) -> Result<(), String> {
    tokio::time::timeout(timeout, call(host, port, service.unwrap_or("")))
        .await
        .map_err(|_| format!("gRPC health check on port {port}: no answer within {timeout:?}"))?
        .map_err(|e| format!("gRPC health check on port {port}: {e}"))
}

async fn call(host: &str, port: u16, service: &str) -> Result<(), String> {
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let result = async {
        let authority = match host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
            _ => format!("{host}:{port}"),
        };
        let req = Request::post(format!("http://{authority}{PATH}"))
            .header(header::CONTENT_TYPE, "application/grpc")
            .header(header::TE, "trailers")
            .header(header::USER_AGENT, "kube-probe/ward-proxy")
            .body(Full::new(request_message(service)))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        if resp.status() != StatusCode::OK {
            return Err(format!("HTTP status {}", resp.status()));
        }
        let (parts, body) = resp.into_parts();
        let collected = Limited::new(body, MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        // A trailers-only answer carries its status in the headers.
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let status = trailers
            .get("grpc-status")
            .or_else(|| parts.headers.get("grpc-status"))
            .ok_or("no grpc-status")?;
        if status != "0" {
            let message = trailers
                .get("grpc-message")
                .or_else(|| parts.headers.get("grpc-message"))
                .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
                .unwrap_or_default();
            return Err(format!(
                "grpc-status {} {message}",
                String::from_utf8_lossy(status.as_bytes())
            ));
        }
        match serving_status(collected.to_bytes())? {
            SERVING => Ok(()),
            other => Err(format!("status {}", status_name(other))),
        }
    }
    .await;
    driver.abort();
    result
}

/// A length-prefixed `HealthCheckRequest { service = 1 }`.
pub(crate) fn request_message(service: &str) -> Bytes {
    let mut proto = Vec::with_capacity(service.len() + 8);
    if !service.is_empty() {
        proto.push(0x0a); // field 1, length-delimited
        put_varint(&mut proto, service.len() as u64);
        proto.extend_from_slice(service.as_bytes());
    }
    let mut framed = Vec::with_capacity(proto.len() + 5);
    framed.push(0); // not compressed
    framed.extend_from_slice(&(proto.len() as u32).to_be_bytes());
    framed.extend_from_slice(&proto);
    Bytes::from(framed)
}

/// The `status` (field 1) of one length-prefixed `HealthCheckResponse`;
/// absent means `UNKNOWN` (0). Unknown fields are skipped.
pub(crate) fn serving_status(mut body: Bytes) -> Result<u64, String> {
    if body.len() < 5 {
        return Err("no response message".into());
    }
    if body.get_u8() != 0 {
        return Err("compressed response message".into());
    }
    let len = body.get_u32() as usize;
    if body.len() != len {
        return Err("response message length mismatch".into());
    }
    let mut status = 0;
    while body.has_remaining() {
        let key = varint(&mut body)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = varint(&mut body)?,
            (_, 0) => {
                varint(&mut body)?;
            }
            (_, 2) => {
                let n = usize::try_from(varint(&mut body)?).map_err(|e| e.to_string())?;
                if body.len() < n {
                    return Err("truncated response message".into());
                }
                body.advance(n);
            }
            (_, 1) if body.len() >= 8 => body.advance(8),
            (_, 5) if body.len() >= 4 => body.advance(4),
            _ => return Err("malformed response message".into()),
        }
    }
    Ok(status)
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn varint(buf: &mut Bytes) -> Result<u64, String> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        if !buf.has_remaining() {
            return Err("truncated varint".into());
        }
        let byte = buf.get_u8();
        n |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(n);
        }
    }
    Err("varint too long".into())
}

fn status_name(status: u64) -> String {
    match status {
        0 => "UNKNOWN".into(),
        2 => "NOT_SERVING".into(),
        3 => "SERVICE_UNKNOWN".into(),
        n => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_messages() {
        assert_eq!(&request_message("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &request_message("a.B")[..],
            &[0, 0, 0, 0, 5, 0x0a, 3, b'a', b'.', b'B']
        );
    }

    #[test]
    fn response_messages() {
        let framed = |proto: &[u8]| {
            let mut v = vec![0];
            v.extend_from_slice(&(proto.len() as u32).to_be_bytes());
            v.extend_from_slice(proto);
            Bytes::from(v)
        };
        assert_eq!(serving_status(framed(&[0x08, 1])), Ok(SERVING));
        assert_eq!(serving_status(framed(&[0x08, 2])), Ok(2));
        assert_eq!(serving_status(framed(&[])), Ok(0), "absent is UNKNOWN");
        // An unknown string field before the status is skipped.
        assert_eq!(
            serving_status(framed(&[0x12, 2, b'x', b'y', 0x08, 1])),
            Ok(1)
        );
        assert!(serving_status(Bytes::new()).is_err());
        assert!(serving_status(framed(&[0x08])).is_err(), "truncated");
        assert!(
            serving_status(framed(&[0x12, 9, b'x'])).is_err(),
            "overlong"
        );
        let mut compressed = framed(&[0x08, 1]).to_vec();
        compressed[0] = 1;
        assert!(serving_status(Bytes::from(compressed)).is_err());
    }
}
