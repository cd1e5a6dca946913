//! `ward-testapp grpc` with `grpc-client`.

mod common;

use common::{Server, client_of, json};

fn run(server: &Server, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
    let out = client_of(server, "grpc-client", extra);
    (out.status.code(), json(&out.stdout))
}

/// The client sends message i+1 only after the echo of message i arrived,
/// so this only finishes if the server streams each echo back while the
/// request body is still open (true bidi streaming, no buffering).
#[test]
fn bidi_streaming_echo_with_trailers() {
    let server = Server::start(&["grpc"]);
    let (code, summary) = run(
        &server,
        &["--messages", "200", "--authority", "echo.ward.test"],
    );
    assert_eq!(code, Some(0));
    assert_eq!(summary["received"], 200);
    assert_eq!(summary["mismatched"], 0);
    assert_eq!(summary["grpc_status"], "0");
    assert_eq!(summary["trailers_only"], false);
    assert_eq!(summary["trailers"]["grpc-status"], "0");
    assert_eq!(summary["trailers"]["grpc-message"], "OK");
    assert_eq!(summary["trailers"]["x-echo-count"], "200");
}

#[test]
fn zero_messages_still_end_with_status_0() {
    let server = Server::start(&["grpc"]);
    let (code, summary) = run(&server, &["--messages", "0"]);
    assert_eq!(code, Some(0));
    assert_eq!(summary["trailers"]["x-echo-count"], "0");
}

#[test]
fn fail_method_sends_headers_then_status_7_trailers() {
    let server = Server::start(&["grpc"]);
    let (code, summary) = run(
        &server,
        &["--messages", "3", "--method", "/ward.test.Echo/Fail"],
    );
    assert_eq!(code, Some(1));
    assert_eq!(summary["http_status"], 200);
    assert_eq!(summary["received"], 0);
    assert_eq!(summary["grpc_status"], "7");
    assert_eq!(summary["trailers_only"], false);
    assert_eq!(summary["trailers"]["grpc-status"], "7");
}

#[test]
fn unknown_method_is_trailers_only_status_12() {
    let server = Server::start(&["grpc"]);
    let (code, summary) = run(
        &server,
        &["--messages", "1", "--method", "/ward.test.Echo/Nope"],
    );
    assert_eq!(code, Some(1));
    assert_eq!(summary["grpc_status"], "12");
    assert_eq!(summary["trailers_only"], true);
}

#[test]
fn grpc_server_exits_0_on_sigterm() {
    let mut server = Server::start(&["grpc"]);
    let status = server.terminate(std::time::Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
}

#[test]
fn h2c_with_curl_gets_415_without_grpc_content_type() {
    ward_testkit::require_tool!("curl");
    let server = Server::start(&["grpc"]);
    let out = common::curl(&[
        "--http2-prior-knowledge",
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{http_code}",
        &format!("http://{}/ward.test.Echo/Stream", server.addr),
    ]);
    assert_eq!(common::stdout(&out), "2 415");
}
