use std::fmt;

use bytes::Bytes;
use http::Response;
use http_body_util::BodyExt;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::*;

fn request(method: Method, body: Option<&'static str>) -> (Parts, Body) {
    let (parts, ()) = Request::builder()
        .method(method)
        .uri("http://api.test/x")
        .header("x-id", "7")
        .body(())
        .unwrap()
        .into_parts();
    let body = match body {
        Some(text) => h::full(text),
        None => h::empty(),
    };
    (parts, body)
}

fn resend_of(method: Method, body: Option<&'static str>) -> Resend {
    let (parts, body) = request(method, body);
    Resend::new(&parts, &body)
}

#[test]
fn what_may_go_again() {
    use Reached::*;
    // (method, body, reached, allowed)
    let table = [
        (Method::POST, Some("x"), Nowhere, true),
        (Method::POST, Some("x"), Unprocessed, false),
        (Method::POST, Some("x"), Unknown, false),
        (Method::POST, None, Nowhere, true),
        (Method::POST, None, Unprocessed, true),
        (Method::POST, None, Unknown, false),
        (Method::GET, Some("x"), Nowhere, true),
        (Method::GET, Some("x"), Unprocessed, false),
        (Method::GET, Some("x"), Unknown, false),
        (Method::GET, None, Nowhere, true),
        (Method::GET, None, Unprocessed, true),
        (Method::GET, None, Unknown, true),
        (Method::PATCH, None, Unknown, false),
    ];
    for (method, body, reached, allowed) in table {
        assert_eq!(
            resend_of(method.clone(), body).allows(reached),
            allowed,
            "{method} body={body:?} {reached:?}"
        );
    }
    for method in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
        assert!(is_idempotent(&method.parse().unwrap()), "{method}");
    }
    for method in ["POST", "PATCH", "CONNECT"] {
        assert!(!is_idempotent(&method.parse().unwrap()), "{method}");
    }
}

#[tokio::test]
async fn an_unsent_request_comes_back_whole() {
    let (parts, body) = request(Method::POST, Some("payload"));
    let resend = Resend::new(&parts, &body);
    let unsent = Some(Request::from_parts(parts, body));
    let again = resend
        .again(&UpstreamError::PoolExhausted, unsent)
        .expect("sent again");
    let body = again.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, Bytes::from_static(b"payload"));
}

#[tokio::test]
async fn an_unprocessed_bodyless_request_is_rebuilt() {
    let resend = resend_of(Method::POST, None);
    let again = resend
        .again(&UpstreamError::AppUnavailable, None)
        .expect("sent again");
    assert_eq!(again.method(), Method::POST);
    assert_eq!(again.uri(), "http://api.test/x");
    assert_eq!(again.headers()["x-id"], "7");
    assert!(again.body().is_end_stream());

    let with_body = resend_of(Method::POST, Some("x"));
    assert!(
        with_body
            .again(&UpstreamError::AppUnavailable, None)
            .is_none(),
        "a body cannot be rebuilt"
    );
}

#[test]
fn no_connection_means_not_processed() {
    assert!(not_processed(&UpstreamError::ConnectTimeout));
    assert!(not_processed(&UpstreamError::PoolExhausted));
    assert!(not_processed(&UpstreamError::AppUnavailable));
    assert!(not_processed(&UpstreamError::Connect(
        std::io::Error::from(std::io::ErrorKind::ConnectionRefused)
    )));
    assert!(!not_processed(&UpstreamError::InvalidRequest));
}

/// An error whose source is `inner`, as hyper wraps h2's.
#[derive(Debug)]
struct Wrapped(h2::Error);

impl fmt::Display for Wrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("wrapped")
    }
}

impl std::error::Error for Wrapped {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[test]
fn refused_stream_is_found_down_the_source_chain() {
    let refused = Wrapped(h2::Error::from(h2::Reason::REFUSED_STREAM));
    assert!(refused_stream(&refused));
    let cancelled = Wrapped(h2::Error::from(h2::Reason::CANCEL));
    assert!(!refused_stream(&cancelled));
    assert!(!refused_stream(&std::io::Error::other("reset")));
}

/// A real HTTP/2 exchange whose stream the server refuses.
async fn refused_by_an_h2_server() -> hyper::Error {
    let (client, server) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let mut conn = h2::server::handshake(server).await.unwrap();
        while let Some(Ok((_req, mut respond))) = conn.accept().await {
            respond.send_reset(h2::Reason::REFUSED_STREAM);
        }
    });
    let (mut sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(client))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("http://a.test/").body(h::empty()).unwrap();
    sender.send_request(req).await.expect_err("refused")
}

/// A real HTTP/1.1 exchange whose connection breaks after the request
/// was read.
async fn broken_mid_request() -> hyper::Error {
    use tokio::io::AsyncReadExt;
    let (client, mut server) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let mut buf = [0u8; 1024];
        let _ = server.read(&mut buf).await;
        drop(server);
    });
    let (mut sender, conn) = http1::handshake::<_, Body>(TokioIo::new(client))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/").body(h::empty()).unwrap();
    let result: Result<Response<_>, _> = sender.send_request(req).await;
    result.expect_err("broken")
}

#[tokio::test]
async fn a_refused_stream_goes_again_even_when_not_idempotent() {
    let error = UpstreamError::Http(refused_by_an_h2_server().await);
    assert_eq!(
        Reached::of(&error, false),
        Reached::Unprocessed,
        "{error:?}"
    );
    assert!(resend_of(Method::POST, None).again(&error, None).is_some());
}

#[tokio::test]
async fn a_broken_connection_is_retried_for_idempotent_requests_only() {
    let error = UpstreamError::Http(broken_mid_request().await);
    assert_eq!(Reached::of(&error, false), Reached::Unknown, "{error:?}");
    assert!(resend_of(Method::GET, None).again(&error, None).is_some());
    assert!(resend_of(Method::PUT, None).again(&error, None).is_some());
    assert!(resend_of(Method::POST, None).again(&error, None).is_none());
    assert!(
        resend_of(Method::GET, Some("x"))
            .again(&error, None)
            .is_none()
    );
}
