use super::*;
use ward_policy::path::PathError;

fn parts(raw: http::request::Builder) -> http::request::Parts {
    raw.body(()).unwrap().into_parts().0
}

fn run(p: &mut http::request::Parts) -> Result<Shape, BadRequest> {
    let dest: SocketAddr = "10.0.0.1:8080".parse().unwrap();
    canonicalize(p, dest, PathNormalization::Base, &FirstParsed::default())
}

#[test]
fn absolute_form_overrides_host() {
    let mut p =
        parts(http::Request::get("http://allowed.test/public/x").header("host", "evil.test"));
    assert_eq!(run(&mut p), Ok(Shape::Plain));
    assert_eq!(p.headers["host"], "allowed.test");
    assert_eq!(p.uri.authority().unwrap().as_str(), "allowed.test");
}

#[test]
fn http2_authority_and_host_must_agree() {
    let mut p = parts(
        http::Request::get("http://a.test/x")
            .version(Version::HTTP_2)
            .header("host", "b.test"),
    );
    assert_eq!(run(&mut p), Err(BadRequest::AuthorityMismatch));
    let mut p = parts(
        http::Request::get("http://a.test/x")
            .version(Version::HTTP_2)
            .header("host", "A.test"),
    );
    assert_eq!(run(&mut p), Ok(Shape::Plain));
    assert!(p.headers.get("host").is_none());
}

#[test]
fn two_host_headers_are_refused() {
    let mut p = parts(
        http::Request::get("/x")
            .header("host", "a.test")
            .header("host", "b.test"),
    );
    assert_eq!(run(&mut p), Err(BadRequest::DuplicateHost));
}

#[test]
fn target_form_must_fit_the_method() {
    let mut p = parts(http::Request::get("app.test:80"));
    assert_eq!(run(&mut p), Err(BadRequest::Target));
    let mut p = parts(http::Request::connect("/health"));
    assert_eq!(run(&mut p), Err(BadRequest::ConnectTarget));
    let mut p = parts(http::Request::connect("app.test:80").header("host", "app.test:80"));
    assert_eq!(run(&mut p), Ok(Shape::Connect));
    let mut p = parts(http::Request::get("*"));
    assert_eq!(run(&mut p), Err(BadRequest::Path(PathError::NotAbsolute)));
}

#[test]
fn path_is_normalized_and_query_kept() {
    let mut p = parts(http::Request::get("/admin/%2e%2e/public/x?a=..").header("host", "h"));
    run(&mut p).unwrap();
    assert_eq!(p.uri.path_and_query().unwrap().as_str(), "/public/x?a=..");
    let mut p = parts(http::Request::get("/public/..;/admin").header("host", "h"));
    assert_eq!(
        run(&mut p),
        Err(BadRequest::Path(PathError::DotSegmentWithParameters))
    );
}

#[test]
fn connection_cannot_remove_what_ward_sets() {
    let mut p = parts(
        http::Request::get("/x")
            .header("host", "app.test")
            .header("connection", "host, x-forwarded-client-cert, x-other")
            .header("x-other", "1"),
    );
    run(&mut p).unwrap();
    assert_eq!(p.headers["host"], "app.test");
    assert!(p.headers.get("x-other").is_none());
    assert!(p.headers.get("connection").is_none());
}

#[test]
fn h2c_is_declined_and_other_upgrades_kept() {
    let mut p = parts(
        http::Request::get("/x")
            .header("host", "h")
            .header("connection", "Upgrade, HTTP2-Settings")
            .header("upgrade", "h2c")
            .header("http2-settings", "AAMAAABkAAQAAP__"),
    );
    assert_eq!(run(&mut p), Ok(Shape::Plain));
    for name in ["upgrade", "connection", "http2-settings"] {
        assert!(p.headers.get(name).is_none(), "{name} kept");
    }
    let mut p = parts(
        http::Request::get("/ws")
            .header("host", "h")
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "H2C, websocket"),
    );
    assert_eq!(run(&mut p), Ok(Shape::Upgrade));
    assert_eq!(p.headers["upgrade"], "websocket");
    assert_eq!(p.headers["connection"], "upgrade");
}
