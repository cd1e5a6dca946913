use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

fn parts(builder: http::request::Builder) -> Parts {
    builder.body(()).unwrap().into_parts().0
}

fn destination() -> SocketAddr {
    "10.0.0.7:8080".parse().unwrap()
}

fn to_h2(p: &mut Parts) -> Result<(), InvalidUri> {
    request_to_h2_hop(p, destination(), &FirstParsed::default())
}

// ------------------------------------------------------------ hop-by-hop

#[test]
fn hop_by_hop_fields_and_those_connection_names_are_removed() {
    let mut p = parts(
        Request::get("/")
            .header("connection", "keep-alive, X-Secret ,x-other")
            .header("connection", "x-third")
            .header("keep-alive", "timeout=5")
            .header("proxy-connection", "keep-alive")
            .header("transfer-encoding", "chunked")
            .header("upgrade", "websocket")
            .header("http2-settings", "AAMAAABkAAQAAP__")
            .header("proxy-authorization", "Basic Zm9vOmJhcg==")
            .header("proxy-authenticate", "Basic")
            .header("x-secret", "1")
            .header("x-other", "2")
            .header("x-third", "3")
            .header("x-kept", "4"),
    );
    strip_hop_by_hop(&mut p.headers);
    let left: Vec<&str> = p.headers.keys().map(|k| k.as_str()).collect();
    assert_eq!(left, ["x-kept"]);
}

#[test]
fn te_crosses_only_as_trailers() {
    let te = |values: &[&str], connection: Option<&str>| {
        let mut b = Request::get("/");
        for v in values {
            b = b.header("te", *v);
        }
        if let Some(c) = connection {
            b = b.header("connection", c);
        }
        let mut p = parts(b);
        strip_hop_by_hop(&mut p.headers);
        let all: Vec<_> = p.headers.get_all("te").iter().cloned().collect();
        all
    };
    assert_eq!(te(&["trailers"], None), ["trailers"]);
    assert_eq!(te(&["gzip, Trailers;q=0.5"], None), ["trailers"]);
    assert_eq!(te(&["gzip", "trailers"], None), ["trailers"]);
    assert!(te(&["gzip, deflate"], None).is_empty());
    assert!(te(&["trailersx"], None).is_empty());
    // HTTP/1.1 clients must name TE in Connection; that does not cost gRPC
    // its trailers.
    assert_eq!(te(&["trailers"], Some("TE")), ["trailers"]);
}

#[test]
fn tunnels_are_upgrades_and_connect() {
    let p = parts(Request::get("/chat").header("upgrade", "websocket"));
    assert!(is_tunnel(&p.method, &p.headers));
    let p = parts(Request::connect("db.test:5432"));
    assert!(is_tunnel(&p.method, &p.headers));
    let p = parts(Request::get("/chat").header("connection", "upgrade"));
    assert!(!is_tunnel(&p.method, &p.headers));

    let answer = |status: u16| Response::builder().status(status).body(()).unwrap();
    assert!(is_upgrade_response(&Method::GET, &answer(101)));
    assert!(!is_upgrade_response(&Method::GET, &answer(200)));
    assert!(is_upgrade_response(&Method::CONNECT, &answer(200)));
    assert!(!is_upgrade_response(&Method::CONNECT, &answer(407)));
}

// ------------------------------------------------------------ outbound: to the HTTP/2 hop

#[test]
fn h2_hop_absolute_form_overrides_host() {
    let mut p = parts(Request::get("http://api.test:81/x?q=1").header("host", "other.test"));
    to_h2(&mut p).unwrap();
    assert_eq!(p.uri, "http://api.test:81/x?q=1");
    assert_eq!(p.version, Version::HTTP_2);
    assert!(p.headers.get("host").is_none());
}

#[test]
fn h2_hop_authority_comes_from_host_else_the_destination() {
    let mut p = parts(Request::get("/x").header("host", "api.test"));
    to_h2(&mut p).unwrap();
    assert_eq!(p.uri, "http://api.test/x");
    assert!(p.headers.get("host").is_none());

    let mut p = parts(Request::get("/x").version(Version::HTTP_10));
    to_h2(&mut p).unwrap();
    assert_eq!(p.uri, "http://10.0.0.7:8080/x");

    let mut p = parts(Request::get("/x").header("host", "bad host"));
    assert!(to_h2(&mut p).is_err());
}

#[test]
fn h2_hop_authority_is_read_before_connection_names_host() {
    let mut p = parts(
        Request::get("/x")
            .header("host", "api.test")
            .header("connection", "host"),
    );
    to_h2(&mut p).unwrap();
    assert_eq!(p.uri, "http://api.test/x");
}

#[test]
fn h2_hop_marks_http1_clients_and_only_ward_marks() {
    let mut p = parts(Request::get("/x").header("host", "a.test"));
    to_h2(&mut p).unwrap();
    assert_eq!(p.headers[&PROTO_HEADER], "h1");

    // An HTTP/2 client needs no mark, and cannot forge one.
    let mut p = parts(
        Request::get("http://a.test/x")
            .version(Version::HTTP_2)
            .header("x-ward-proto", "h1"),
    );
    to_h2(&mut p).unwrap();
    assert!(p.headers.get(&PROTO_HEADER).is_none());

    let mut p = parts(
        Request::get("/x")
            .header("host", "a.test")
            .header("x-ward-proto", "h2"),
    );
    to_h2(&mut p).unwrap();
    assert_eq!(p.headers.get_all(&PROTO_HEADER).iter().count(), 1);
    assert_eq!(p.headers[&PROTO_HEADER], "h1");
}

#[test]
fn h2_hop_drops_hop_by_hop_but_keeps_te_trailers() {
    let mut p = parts(
        Request::post("/svc/Method")
            .header("host", "grpc.test")
            .header("te", "trailers")
            .header("connection", "te, keep-alive")
            .header("keep-alive", "timeout=5")
            .header("transfer-encoding", "chunked"),
    );
    to_h2(&mut p).unwrap();
    assert_eq!(p.headers["te"], "trailers");
    for gone in ["connection", "keep-alive", "transfer-encoding"] {
        assert!(p.headers.get(gone).is_none(), "{gone}");
    }
}

// ------------------------------------------------------------ outbound: to an HTTP/1.1 hop

#[test]
fn http1_hop_goes_origin_form_with_host() {
    let mut p = parts(Request::get("http://api.test:81/x?q=1").header("host", "other.test"));
    request_to_http1_hop(&mut p, destination());
    assert_eq!(p.uri, "/x?q=1");
    assert_eq!(p.headers["host"], "api.test:81");
    assert_eq!(p.version, Version::HTTP_11);
    assert!(p.headers.get(&PROTO_HEADER).is_none());

    let mut p = parts(Request::get("/x").header("host", "api.test"));
    request_to_http1_hop(&mut p, destination());
    assert_eq!(p.headers["host"], "api.test");

    let mut p = parts(Request::get("/x").header("host", &[0xffu8][..]));
    request_to_http1_hop(&mut p, destination());
    assert_eq!(p.headers["host"], "10.0.0.7:8080");
}

#[test]
fn http1_hop_marks_http2_clients() {
    let mut p = parts(Request::get("http://a.test/x").version(Version::HTTP_2));
    request_to_http1_hop(&mut p, destination());
    assert_eq!(p.headers[&PROTO_HEADER], "h2");
    assert_eq!(p.headers["host"], "a.test");
    assert_eq!(p.uri, "/x");
}

// ------------------------------------------------------------ outbound: upgrades and CONNECT

#[test]
fn websocket_keeps_only_its_own_upgrade_fields() {
    let mut p = parts(
        Request::get("http://ws.test/chat")
            .header("connection", "Upgrade, x-secret")
            .header("upgrade", "websocket")
            .header("x-secret", "1")
            .header("keep-alive", "timeout=5")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    );
    tunnel_request_to_hop(&mut p, destination());
    assert_eq!(p.uri, "/chat");
    assert_eq!(p.version, Version::HTTP_11);
    assert_eq!(p.headers["connection"], "upgrade");
    assert_eq!(p.headers["upgrade"], "websocket");
    assert_eq!(p.headers["host"], "ws.test");
    assert!(p.headers.get("x-secret").is_none());
    assert!(p.headers.get("keep-alive").is_none());
    assert!(p.headers.get("sec-websocket-key").is_some());
}

#[test]
fn connect_keeps_its_authority_form_target() {
    let mut p = parts(Request::connect("db.test:5432").header("proxy-authorization", "x"));
    tunnel_request_to_hop(&mut p, destination());
    assert_eq!(p.uri, "db.test:5432");
    assert_eq!(p.headers["host"], "db.test:5432");
    assert!(p.headers.get("connection").is_none());
    assert!(p.headers.get("upgrade").is_none());
    assert!(p.headers.get("proxy-authorization").is_none());
}

// ------------------------------------------------------------ inbound: to the application

#[test]
fn the_client_protocol_comes_from_ward_proto_else_the_hop() {
    let spoke = |version: Version, mark: Option<&str>| {
        let mut b = Request::get("http://a.test/").version(version);
        if let Some(mark) = mark {
            b = b.header("x-ward-proto", mark);
        }
        let mut p = parts(b);
        let h2 = client_spoke_h2(&mut p);
        assert!(
            p.headers.get(&PROTO_HEADER).is_none(),
            "the mark is removed"
        );
        h2
    };
    assert!(!spoke(Version::HTTP_2, Some("h1")));
    assert!(spoke(Version::HTTP_11, Some("h2")));
    assert!(spoke(Version::HTTP_2, None));
    assert!(!spoke(Version::HTTP_11, None));
    assert!(spoke(Version::HTTP_2, Some("h3")));
}

#[test]
fn http1_app_gets_host_from_the_authority_and_one_cookie_field() {
    let mut p = parts(
        Request::get("http://shop.test:8080/cart")
            .version(Version::HTTP_2)
            .header("cookie", "a=1")
            .header("cookie", "b=2"),
    );
    request_to_http1_app(&mut p, &FirstParsed::default());
    assert_eq!(p.version, Version::HTTP_11);
    assert_eq!(p.headers["host"], "shop.test:8080");
    let cookies: Vec<_> = p.headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["a=1; b=2"]);

    // A request that has its Host keeps it.
    let mut p = parts(Request::get("http://shop.test/x").header("host", "shop.test"));
    request_to_http1_app(&mut p, &FirstParsed::default());
    assert_eq!(p.headers.get_all("host").iter().count(), 1);
}

#[test]
fn connect_to_the_app_gets_an_absolute_uri() {
    let mut p = parts(Request::connect("db.test:5432"));
    assert!(connect_request_to_app(&mut p));
    assert_eq!(p.uri, "http://db.test:5432/");
    let mut p = parts(Request::connect("/"));
    assert!(!connect_request_to_app(&mut p));
}

// ------------------------------------------------------------ responses

#[test]
fn responses_lose_hop_by_hop_fields() {
    let mut resp = Response::builder()
        .header("connection", "keep-alive, x-internal")
        .header("keep-alive", "timeout=5")
        .header("transfer-encoding", "chunked")
        .header("x-internal", "1")
        .header("content-length", "5")
        .body(())
        .unwrap();
    response_to_client(&mut resp);
    let left: Vec<&str> = resp.headers().keys().map(|k| k.as_str()).collect();
    assert_eq!(left, ["content-length"]);
}

#[test]
fn switching_protocols_keeps_connection_and_upgrade() {
    let mut resp = Response::builder()
        .status(101)
        .header("connection", "Upgrade, keep-alive")
        .header("upgrade", "websocket")
        .header("keep-alive", "timeout=5")
        .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        .body(())
        .unwrap();
    response_to_client(&mut resp);
    assert_eq!(resp.headers()["connection"], "upgrade");
    assert_eq!(resp.headers()["upgrade"], "websocket");
    assert!(resp.headers().get("keep-alive").is_none());
    assert!(resp.headers().get("sec-websocket-accept").is_some());
}

#[test]
fn grpc_trailers_are_declared_for_http1_clients() {
    let mut grpc = HeaderMap::new();
    grpc.insert(
        "content-type",
        HeaderValue::from_static("application/grpc+proto"),
    );
    declare_grpc_trailers(&mut grpc);
    assert_eq!(
        grpc["trailer"],
        "grpc-status, grpc-message, grpc-status-details-bin"
    );

    let mut declared = HeaderMap::new();
    declared.insert("content-type", HeaderValue::from_static("application/grpc"));
    declared.insert("trailer", HeaderValue::from_static("x-own"));
    declare_grpc_trailers(&mut declared);
    assert_eq!(declared["trailer"], "x-own");

    let mut json = HeaderMap::new();
    json.insert("content-type", HeaderValue::from_static("application/json"));
    declare_grpc_trailers(&mut json);
    assert!(json.get("trailer").is_none());

    let mut te = HeaderMap::new();
    te.insert("te", HeaderValue::from_static("trailers"));
    assert!(accepts_trailers(&te));
    assert!(!accepts_trailers(&HeaderMap::new()));
}

// ------------------------------------------------------------ framing

/// A body of unknown length, as an HTTP/2 response without
/// `content-length` arrives.
struct Unsized(Option<Bytes>);

impl hyper::body::Body for Unsized {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        std::task::Poll::Ready(self.0.take().map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// What a raw HTTP/1 client reads when the proxy answers `request` with
/// an unsized body that went through [`response_to_client`].
async fn raw_answer(request: &'static [u8]) -> String {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let limits = crate::limits::Limits {
        detect_timeout: Duration::from_secs(5),
        header_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        max_header_bytes: 64 * 1024,
        idle_timeout: Duration::from_secs(5),
    };
    let serve = crate::http::serve_connection(
        server,
        false,
        &limits,
        Default::default(),
        "test",
        |_req| async {
            let mut resp = Response::new(Unsized(Some(Bytes::from_static(b"hello"))).boxed());
            // What an HTTP/1.1 application's chunked answer brings along.
            resp.headers_mut()
                .insert("connection", HeaderValue::from_static("keep-alive"));
            response_to_client(&mut resp);
            resp
        },
    );
    let client = async move {
        let mut client = client;
        client.write_all(request).await.unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let n = client.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            if out.ends_with(b"0\r\n\r\n") {
                break;
            }
        }
        String::from_utf8(out).unwrap()
    };
    let (_, answer) = tokio::time::timeout(Duration::from_secs(5), async {
        tokio::join!(serve, client)
    })
    .await
    .expect("the exchange finished");
    answer
}

#[tokio::test]
async fn an_unsized_response_reaches_http11_clients_chunked() {
    let answer = raw_answer(b"GET / HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n").await;
    let lower = answer.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 200"), "{answer}");
    assert!(lower.contains("transfer-encoding: chunked"), "{answer}");
    assert!(!lower.contains("content-length"), "{answer}");
    assert!(answer.ends_with("5\r\nhello\r\n0\r\n\r\n"), "{answer}");
}

#[tokio::test]
async fn an_unsized_response_reaches_http10_clients_until_close() {
    let answer = raw_answer(b"GET / HTTP/1.0\r\nhost: a.test\r\n\r\n").await;
    let lower = answer.to_ascii_lowercase();
    assert!(!lower.contains("transfer-encoding"), "{answer}");
    assert!(!lower.contains("content-length"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nhello"), "{answer}");
}
