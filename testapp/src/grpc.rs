//! `ward-testapp grpc`: a gRPC-shaped echo server over h2c (prior knowledge)
//! and the gRPC message framing shared with `grpc-client`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use bytes::{Buf as _, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::util::{self, ChannelBody};

pub const STREAM_METHOD: &str = "/ward.test.Echo/Stream";
pub const FAIL_METHOD: &str = "/ward.test.Echo/Fail";

/// Largest message accepted (either side).
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

type ResBody = BoxBody<Bytes, Infallible>;

/// A length-prefixed gRPC message: flag byte, u32 BE length, payload.
pub fn encode_message(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + payload.len());
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.freeze()
}

/// Splits one whole message (header included) off the front of `buf`, if one
/// has fully arrived.
pub fn take_message(buf: &mut BytesMut) -> Result<Option<Bytes>, String> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > MAX_MESSAGE {
        return Err(format!("message of {len} bytes exceeds {MAX_MESSAGE}"));
    }
    if buf.len() < 5 + len {
        return Ok(None);
    }
    Ok(Some(buf.split_to(5 + len).freeze()))
}

pub async fn run(listen: &str, drain: Duration) -> Result<()> {
    let listener = util::bind(listen).await?;
    util::serve(listener, drain, connection).await
}

async fn connection(stream: TcpStream, peer: SocketAddr, mut shutdown: watch::Receiver<bool>) {
    let service = service_fn(|req| async move { Ok::<_, Infallible>(handle(req)) });
    let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = util::stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        eprintln!("ward-testapp grpc: connection from {peer}: {e}");
    }
}

fn grpc_status(code: u32, message: &str) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert("grpc-status", HeaderValue::from(code));
    if let Ok(message) = HeaderValue::from_str(message) {
        map.insert("grpc-message", message);
    }
    map
}

fn grpc_response(body: ResBody) -> Response<ResBody> {
    let mut res = Response::new(body);
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    res
}

/// A "Trailers-Only" response: one HEADERS frame with END_STREAM carrying
/// the status.
fn trailers_only(code: u32, message: &str) -> Response<ResBody> {
    let mut res = grpc_response(Empty::new().boxed());
    res.headers_mut().extend(grpc_status(code, message));
    res
}

fn handle(req: Request<Incoming>) -> Response<ResBody> {
    let is_grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if !is_grpc {
        let mut res = Response::new(Empty::new().boxed());
        *res.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        return res;
    }
    if req.method() != Method::POST {
        return trailers_only(12, "gRPC needs POST");
    }
    match req.uri().path() {
        STREAM_METHOD => stream(req),
        FAIL_METHOD => {
            // Response headers, then a trailers frame with the failure and no
            // message in between.
            let (tx, rx) = mpsc::channel(1);
            let _ = tx.try_send(Frame::trailers(grpc_status(
                7,
                "permission denied by ward-testapp Fail",
            )));
            grpc_response(ChannelBody(rx).boxed())
        }
        other => trailers_only(12, &format!("unknown method {other}")),
    }
}

/// Bidirectional echo: each message is sent back as soon as it has arrived
/// whole; the trailers carry `grpc-status`, `grpc-message` and
/// `x-echo-count`.
fn stream(req: Request<Incoming>) -> Response<ResBody> {
    let (tx, rx) = mpsc::channel::<Frame<Bytes>>(16);
    let mut body = req.into_body();
    tokio::spawn(async move {
        let mut buf = BytesMut::new();
        let mut count = 0u64;
        let (code, message) = 'read: loop {
            match body.frame().await {
                None if buf.is_empty() => break (0, "OK".to_owned()),
                None => break (13, format!("truncated message ({} bytes)", buf.len())),
                // The client went away (reset): nobody to answer.
                Some(Err(_)) => return,
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    buf.extend_from_slice(data.chunk());
                    loop {
                        match take_message(&mut buf) {
                            Ok(Some(msg)) => {
                                count += 1;
                                if tx.send(Frame::data(msg)).await.is_err() {
                                    return;
                                }
                            }
                            Ok(None) => break,
                            Err(e) => break 'read (8, e),
                        }
                    }
                }
            }
        };
        let mut trailers = grpc_status(code, &message);
        trailers.insert("x-echo-count", HeaderValue::from(count));
        let _ = tx.send(Frame::trailers(trailers)).await;
    });
    grpc_response(ChannelBody(rx).boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_round_trip() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&encode_message(b"hello"));
        buf.extend_from_slice(&encode_message(b"")[..3]);
        let msg = take_message(&mut buf).unwrap().unwrap();
        assert_eq!(&msg[..], b"\0\0\0\0\x05hello");
        assert_eq!(take_message(&mut buf).unwrap(), None);
        buf.extend_from_slice(&[0, 0]);
        assert_eq!(&take_message(&mut buf).unwrap().unwrap()[..], b"\0\0\0\0\0");
        assert!(buf.is_empty());
        buf.extend_from_slice(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert!(take_message(&mut buf).is_err());
    }
}
