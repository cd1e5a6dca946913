//! `ward-testapp http`: HTTP/1.1 and h2c (prior knowledge) on one port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Map, Value, json};
use sha2::Digest as _;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::util::{self, PatternBody};

/// Upper bound of `/slow?ms=`.
const MAX_SLOW_MS: u64 = 60_000;

type ResBody = BoxBody<Bytes, Infallible>;

struct App {
    name: String,
}

pub async fn run(listen: &str, name: String, drain: Duration) -> Result<()> {
    let listener = util::bind(listen).await?;
    let app = Arc::new(App { name });
    util::serve(listener, drain, move |stream, peer, shutdown| {
        connection(stream, peer, shutdown, app.clone())
    })
    .await
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
    app: Arc<App>,
) {
    let service = service_fn(move |req| {
        let app = app.clone();
        async move { Ok::<_, Infallible>(handle(req, peer, &app).await) }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = util::stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        eprintln!("ward-testapp http: connection from {peer}: {e}");
    }
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<ResBody> {
    let mut res = Response::new(Full::new(body.into()).boxed());
    *res.status_mut() = status;
    res
}

fn json_response(status: StatusCode, value: &Value) -> Response<ResBody> {
    let mut body = value.to_string();
    body.push('\n');
    let mut res = full(status, body);
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

fn text(status: StatusCode, body: &str) -> Response<ResBody> {
    let mut res = full(status, format!("{body}\n"));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

async fn handle(req: Request<Incoming>, peer: SocketAddr, app: &App) -> Response<ResBody> {
    let path = req.uri().path().to_owned();
    if req.method() == Method::CONNECT {
        return connect(req);
    }
    if path == "/echo" || path.starts_with("/echo/") || path.starts_with("/echo?") {
        return echo(req, peer, app).await;
    }
    match (req.method(), path.as_str()) {
        (&Method::POST, "/sink") => sink(req).await,
        (_, "/sink") => text(StatusCode::METHOD_NOT_ALLOWED, "POST /sink"),
        (&Method::GET, "/source") => source(&req),
        (&Method::GET, "/slow") => slow(&req).await,
        (&Method::GET, "/together") => together(&req).await,
        (&Method::GET, "/ws") => websocket(req),
        (&Method::GET, p) if p.starts_with("/status/") => status(&p["/status/".len()..]),
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

/// `/echo…`: what the app saw, as JSON. The request body (any method) is
/// drained and counted.
async fn echo(req: Request<Incoming>, peer: SocketAddr, app: &App) -> Response<ResBody> {
    let (parts, mut body) = req.into_parts();
    let mut headers = Map::new();
    for name in parts.headers.keys() {
        let values: Vec<Value> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let value = if values.len() == 1 {
            values.into_iter().next().unwrap_or(Value::Null)
        } else {
            Value::Array(values)
        };
        headers.insert(name.as_str().to_owned(), value);
    }
    let mut body_bytes = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => body_bytes += frame.data_ref().map_or(0, |d| d.len() as u64),
            Err(e) => return text(StatusCode::BAD_REQUEST, &format!("reading body: {e}")),
        }
    }
    let authority = parts.uri.authority().map(|a| a.to_string()).or_else(|| {
        parts
            .headers
            .get(header::HOST)
            .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
    });
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    json_response(
        StatusCode::OK,
        &json!({
            "name": app.name,
            "method": parts.method.as_str(),
            "path": path,
            "authority": authority,
            "version": format!("{:?}", parts.version),
            "headers": headers,
            "peer": peer.to_string(),
            "body_bytes": body_bytes,
        }),
    )
}

/// `POST /sink`: counts the body as it streams in. `?sha256=1` adds its
/// SHA-256, `?verify=pattern` checks it is the generated pattern.
async fn sink(req: Request<Incoming>) -> Response<ResBody> {
    let want_sha = util::query_param(req.uri(), "sha256").is_some_and(|v| v != "0");
    let verify = util::query_param(req.uri(), "verify") == Some("pattern");
    let mut sha = want_sha.then(sha2::Sha256::new);
    let mut pattern_ok = true;
    let mut bytes = 0u64;
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!("body failed after {bytes} bytes: {e}"),
                );
            }
        };
        if let Some(data) = frame.data_ref() {
            if let Some(sha) = sha.as_mut() {
                sha.update(data);
            }
            if verify && pattern_ok {
                pattern_ok = util::pattern_matches(bytes, data);
            }
            bytes += data.len() as u64;
        }
    }
    let mut out = json!({ "bytes": bytes });
    if let Some(sha) = sha {
        out["sha256"] = Value::String(hex::encode(sha.finalize()));
    }
    if verify {
        out["pattern_ok"] = Value::Bool(pattern_ok);
    }
    json_response(StatusCode::OK, &out)
}

/// `GET /source?bytes=N`: N pattern bytes, streamed in 64 KiB chunks.
fn source(req: &Request<Incoming>) -> Response<ResBody> {
    let Some(len) = util::query_param(req.uri(), "bytes").and_then(|v| v.parse::<u64>().ok())
    else {
        return text(StatusCode::BAD_REQUEST, "usage: GET /source?bytes=N");
    };
    let mut res = Response::new(PatternBody::new(len).boxed());
    res.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    res
}

/// `GET /status/<code>`: answers with that status (200..=599).
fn status(code: &str) -> Response<ResBody> {
    match code
        .parse::<u16>()
        .ok()
        .and_then(|c| StatusCode::from_u16(c).ok())
    {
        Some(status) if status.as_u16() >= 200 => {
            text(status, &format!("status {}", status.as_u16()))
        }
        _ => text(StatusCode::BAD_REQUEST, "usage: GET /status/<200..=599>"),
    }
}

/// `GET /slow?ms=N`: waits N ms (at most 60 s), then `slow done`.
async fn slow(req: &Request<Incoming>) -> Response<ResBody> {
    let ms = util::query_param(req.uri(), "ms")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1000)
        .min(MAX_SLOW_MS);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    text(StatusCode::OK, "slow done")
}

/// How long `/together` waits for the others before giving up.
const TOGETHER_TIMEOUT: Duration = Duration::from_secs(60);

/// `/together` requests that arrived since the app started.
fn together_arrivals() -> &'static watch::Sender<u64> {
    static ARRIVALS: std::sync::OnceLock<watch::Sender<u64>> = std::sync::OnceLock::new();
    ARRIVALS.get_or_init(|| watch::channel(0).0)
}

/// `GET /together?n=N`: answers only once N `/together` requests are in
/// the app at the same time (counted since it started), 200 `together N`;
/// 504 if they are not within a minute. Proves concurrency without a clock.
async fn together(req: &Request<Incoming>) -> Response<ResBody> {
    let Some(n) = util::query_param(req.uri(), "n").and_then(|v| v.parse::<u64>().ok()) else {
        return text(StatusCode::BAD_REQUEST, "expected /together?n=N");
    };
    let arrivals = together_arrivals();
    let mut seen = arrivals.subscribe();
    arrivals.send_modify(|count| *count += 1);
    match tokio::time::timeout(TOGETHER_TIMEOUT, seen.wait_for(|count| *count >= n)).await {
        Ok(Ok(_)) => text(StatusCode::OK, &format!("together {n}")),
        _ => text(
            StatusCode::GATEWAY_TIMEOUT,
            &format!("only {} of {n} together", *arrivals.borrow()),
        ),
    }
}

fn header_has_token(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// `GET /ws` with `Upgrade: websocket`: 101, then raw byte echo.
fn websocket(mut req: Request<Incoming>) -> Response<ResBody> {
    if !header_has_token(&req, header::UPGRADE, "websocket") {
        return text(StatusCode::UPGRADE_REQUIRED, "expected Upgrade: websocket");
    }
    let Some(key) = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|k| k.to_str().ok())
    else {
        return text(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    let Ok(accept) = HeaderValue::from_str(&util::websocket_accept(key)) else {
        return text(StatusCode::BAD_REQUEST, "bad Sec-WebSocket-Key");
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                if let Err(e) = util::echo_stream(TokioIo::new(upgraded)).await {
                    eprintln!("ward-testapp http: websocket echo: {e}");
                }
            }
            Err(e) => eprintln!("ward-testapp http: websocket upgrade: {e}"),
        }
    });
    let mut res = Response::new(Empty::new().boxed());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = res.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    res
}

/// `CONNECT host:port`: 200, then raw byte echo (the app is the "tunnel").
fn connect(mut req: Request<Incoming>) -> Response<ResBody> {
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                if let Err(e) = util::echo_stream(TokioIo::new(upgraded)).await {
                    eprintln!("ward-testapp http: CONNECT echo: {e}");
                }
            }
            Err(e) => eprintln!("ward-testapp http: CONNECT upgrade: {e}"),
        }
    });
    Response::new(Empty::new().boxed())
}
