use std::collections::BTreeSet;

use http_body_util::BodyExt;
use ward_policy::path::PathError;

use super::*;

/// One of every kind of failure. The match below stops compiling when a
/// variant is added, so it cannot be forgotten here.
fn every_failure() -> Vec<Failure> {
    let all = vec![
        Failure::Loop,
        Failure::NoOriginalDestination,
        Failure::ConnectionLimit,
        Failure::PlaintextInStrictMode,
        Failure::TlsHandshake {
            reason: "expired",
            error: Some(std::io::Error::other("certificate expired")),
        },
        Failure::DestinationUnknown,
        Failure::ServicePortUnknown,
        Failure::UnmeshedEgressDenied,
        Failure::ClientClosed,
        Failure::Denied,
        Failure::Quarantined,
        Failure::BadRequest(BadRequest::ConnectTarget),
        Failure::BadRequest(BadRequest::Target),
        Failure::BadRequest(BadRequest::DuplicateHost),
        Failure::BadRequest(BadRequest::AuthorityMismatch),
        Failure::BadRequest(BadRequest::Authority),
        Failure::BadRequest(BadRequest::Path(PathError::NotAbsolute)),
        Failure::InvalidBody,
        Failure::AppUnavailable,
        Failure::AppError,
        Failure::NoEndpoints,
        Failure::Timeout,
        Failure::Upstream(UpstreamError::ConnectTimeout),
        Failure::Upstream(UpstreamError::Connect(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        ))),
        Failure::Upstream(UpstreamError::Tls(std::io::Error::other("bad certificate"))),
        Failure::Upstream(UpstreamError::InvalidRequest),
        Failure::Upstream(UpstreamError::AppUnavailable),
        Failure::Upstream(UpstreamError::PoolExhausted),
        Failure::Upstream(UpstreamError::Quarantined),
    ];
    for failure in &all {
        match failure {
            Failure::Loop
            | Failure::NoOriginalDestination
            | Failure::ConnectionLimit
            | Failure::PlaintextInStrictMode
            | Failure::TlsHandshake { .. }
            | Failure::DestinationUnknown
            | Failure::ServicePortUnknown
            | Failure::UnmeshedEgressDenied
            | Failure::ClientClosed
            | Failure::Denied
            | Failure::Quarantined
            | Failure::BadRequest(_)
            | Failure::InvalidBody
            | Failure::AppUnavailable
            | Failure::AppError
            | Failure::NoEndpoints
            | Failure::Timeout
            | Failure::Upstream(_) => {}
        }
    }
    all
}

#[test]
fn every_failure_has_an_answer_a_label_and_a_reason() {
    for failure in every_failure() {
        let label = failure.label();
        assert!(
            !label.is_empty() && label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{failure:?}: label {label:?}"
        );
        assert_ne!(label, "served", "{failure:?}");
        assert!(!failure.to_string().is_empty(), "{failure:?}: no reason");
        // Either an HTTP client gets a status, or it only ever ends a
        // connection, and then some metric or the debug log has it.
        match failure.http_status() {
            Some(status) => assert!(
                status.is_client_error() || status.is_server_error(),
                "{failure:?}: {status}"
            ),
            None => assert!(
                failure.refused_reason().is_some()
                    || matches!(
                        failure,
                        Failure::TlsHandshake { .. } | Failure::ClientClosed
                    ),
                "{failure:?} ends a connection uncounted"
            ),
        }
    }
}

#[test]
fn http_answers_are_the_documented_ones() {
    let answer = |f: Failure| (f.http_status().map(|s| s.as_u16()), f.error_header());
    assert_eq!(answer(Failure::Denied), (Some(403), None));
    assert_eq!(
        answer(Failure::BadRequest(BadRequest::Target)),
        (Some(400), Some("invalid request target"))
    );
    assert_eq!(
        answer(Failure::BadRequest(BadRequest::AuthorityMismatch)),
        (Some(400), Some("conflicting authority"))
    );
    assert_eq!(
        answer(Failure::BadRequest(BadRequest::Path(
            PathError::DotSegmentWithParameters
        ))),
        (Some(400), Some("invalid path"))
    );
    assert_eq!(
        answer(Failure::InvalidBody),
        (Some(400), Some("invalid request body"))
    );
    assert_eq!(
        answer(Failure::AppUnavailable),
        (Some(503), Some("application unavailable"))
    );
    assert_eq!(
        answer(Failure::AppError),
        (Some(502), Some("application error"))
    );
    assert_eq!(
        answer(Failure::NoEndpoints),
        (Some(503), Some("no-endpoints"))
    );
    assert_eq!(answer(Failure::Timeout), (Some(504), Some("timeout")));
    // Both ends of a quarantine answer alike.
    for quarantined in [
        Failure::Quarantined,
        Failure::Upstream(UpstreamError::Quarantined),
    ] {
        assert_eq!(quarantined.label(), "quarantined");
        assert_eq!(quarantined.refused_reason(), Some("quarantined"));
        assert_eq!(answer(quarantined), (Some(403), Some("quarantined")));
    }
    assert_eq!(
        answer(Failure::Upstream(UpstreamError::ConnectTimeout)),
        (Some(504), Some("upstream connect timeout"))
    );
    assert_eq!(
        answer(Failure::Upstream(UpstreamError::Connect(
            std::io::ErrorKind::ConnectionRefused.into()
        ))),
        (Some(503), Some("upstream connect failed"))
    );
    assert_eq!(
        answer(Failure::Upstream(UpstreamError::Tls(
            std::io::Error::other("x")
        ))),
        (Some(502), Some("upstream mTLS failed"))
    );
    assert_eq!(
        answer(Failure::Upstream(UpstreamError::PoolExhausted)),
        (Some(503), Some("upstream pool exhausted"))
    );
    assert_eq!(
        answer(Failure::Upstream(UpstreamError::InvalidRequest)),
        (Some(400), Some("invalid request authority"))
    );
    for connection_only in [
        Failure::Loop,
        Failure::PlaintextInStrictMode,
        Failure::DestinationUnknown,
        Failure::ClientClosed,
    ] {
        assert_eq!(answer(connection_only), (None, None));
    }
}

#[tokio::test]
async fn local_responses_carry_status_reason_and_no_policy_internals() {
    let denied = Failure::Denied.response();
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    assert!(denied.headers().get(ERROR_HEADER).is_none());
    let body = denied.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "RBAC: access denied");

    for failure in every_failure() {
        let (Some(status), Some(reason)) = (failure.http_status(), failure.error_header()) else {
            continue;
        };
        let resp = failure.response();
        assert_eq!(resp.status(), status, "{failure:?}");
        assert_eq!(resp.headers()[ERROR_HEADER], reason, "{failure:?}");
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/plain");
    }
}

/// The `reason` values docs/observability.md lists for
/// `ward_connections_refused_total`.
fn documented_refused_reasons() -> BTreeSet<String> {
    let doc = include_str!("../../../docs/observability.md");
    let row = doc
        .lines()
        .find(|l| l.starts_with("| `ward_connections_refused_total`"))
        .expect("the metric's row");
    let listed = row
        .split_once("Connections refused before proxying:")
        .expect("the reasons")
        .1;
    listed
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|word| !word.starts_with('-'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn refused_connections_are_counted_under_the_documented_reasons() {
    let produced: BTreeSet<String> = every_failure()
        .iter()
        .filter_map(Failure::refused_reason)
        .map(str::to_owned)
        .collect();
    assert_eq!(produced, documented_refused_reasons());
}

#[test]
fn orig_dst_refusals_are_loop_and_unknown_destination() {
    assert_eq!(
        Failure::from(Unroutable::Loop).refused_reason(),
        Some("loop")
    );
    assert_eq!(
        Failure::from(Unroutable::Unknown).refused_reason(),
        Some("no_original_destination")
    );
}

#[test]
fn a_refusal_is_counted_once_under_its_own_metric() {
    let metrics = ProxyMetrics::new();
    let refused = |reason: &str| {
        metrics
            .refused
            .with_label_values(&["inbound", reason])
            .get()
    };
    record_refused(
        &metrics,
        "inbound",
        "198.18.0.2:40000".parse().unwrap(),
        &Failure::PlaintextInStrictMode,
    );
    assert_eq!(refused("plaintext_in_strict_mode"), 1);

    let tls = Failure::TlsHandshake {
        reason: "unknown_ca",
        error: None,
    };
    record_refused(
        &metrics,
        "inbound",
        "198.18.0.2:40001".parse().unwrap(),
        &tls,
    );
    assert_eq!(
        metrics
            .tls_failures
            .with_label_values(&["inbound", "unknown_ca"])
            .get(),
        1
    );

    // A client that left, and a denial, are no refused connections.
    for failure in [Failure::ClientClosed, Failure::Denied] {
        record_refused(
            &metrics,
            "inbound",
            "198.18.0.2:40002".parse().unwrap(),
            &failure,
        );
    }
    let text = metrics.render();
    let refused_series = text
        .lines()
        .filter(|l| l.starts_with("ward_connections_refused_total{"))
        .count();
    assert_eq!(refused_series, 1, "{text}");
}

/// docs/observability.md's outcome table: `(labels, HTTP answer, x-ward-error)`
/// per row.
fn documented_outcomes() -> Vec<(Vec<String>, String, String)> {
    let doc = include_str!("../../../docs/observability.md");
    let table = doc
        .split("| `outcome` | HTTP answer |")
        .nth(1)
        .expect("the outcome table");
    table
        .lines()
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let labels = cells[1]
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect();
            (labels, cells[2].to_owned(), cells[3].to_owned())
        })
        .collect()
}

/// A real `hyper::Error`: an HTTP/1.1 exchange whose connection closes
/// before the response.
async fn protocol_error() -> hyper::Error {
    let (client, server) = tokio::io::duplex(1024);
    drop(server);
    let io = hyper_util::rt::TokioIo::new(client);
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Body>(io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/").body(crate::http::empty()).unwrap();
    sender.send_request(req).await.expect_err("no server")
}

#[tokio::test]
async fn the_outcome_table_in_the_docs_is_the_mapping() {
    let rows = documented_outcomes();
    let mut produced = BTreeSet::new();
    let mut failures = every_failure();
    failures.push(Failure::Upstream(UpstreamError::Http(
        protocol_error().await,
    )));
    for failure in failures {
        let label = failure.label();
        produced.insert(label.to_owned());
        let (_, answer, header) = rows
            .iter()
            .find(|(labels, _, _)| labels.iter().any(|l| l == label))
            .unwrap_or_else(|| panic!("{label} is not documented"));
        match failure.http_status() {
            Some(status) => assert!(
                answer.starts_with(status.as_str()),
                "{label}: documented {answer}, is {status}"
            ),
            None => assert!(answer.starts_with('–'), "{label}: {answer}"),
        }
        match failure.error_header() {
            Some(reason) => assert!(
                header.contains(&format!("`{reason}`")),
                "{label}: documented {header}, is {reason}"
            ),
            None => assert_eq!(header, "–", "{label}"),
        }
    }
    let documented: BTreeSet<String> = rows.into_iter().flat_map(|(labels, _, _)| labels).collect();
    assert_eq!(documented, produced);
}
