//! `/ca/rotation` on the admin listener: `GET` answers the
//! [`RotationStatus`], `POST` takes a [`StepRequest`] (what `ward ca rotate`
//! sends) and answers the status after it.
//!
//! Access control: the admin listener is plaintext, and in `deploy/` it
//! listens on every address for Prometheus. A step is therefore accepted
//! only from the control plane's own host: a connection from a loopback
//! address or from the very address it reached (in Kubernetes,
//! `kubectl port-forward` and `kubectl exec` both arrive that way; another
//! pod never does). The status names sidecars, as `/debug/discovery`
//! does, and is served to whoever reaches the admin listener.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use ward_api::error::{ErrorBody, codes};

use super::{Rotation, RotationError, StepRequest};

pub const PATH: &str = "/ca/rotation";
/// A step request with an imported CA chain is a few KiB.
const MAX_BODY_BYTES: usize = 1024 * 1024;
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a connection from `peer` to `local` comes from the control
/// plane's own host.
pub fn same_host(peer: SocketAddr, local: SocketAddr) -> bool {
    peer.ip().is_loopback() || peer.ip() == local.ip()
}

/// Serves `PATH`; `same_host`: see [`same_host`].
pub async fn serve(
    rotation: &Rotation,
    req: Request<Incoming>,
    same_host: bool,
) -> Response<Full<Bytes>> {
    match *req.method() {
        Method::GET => json(StatusCode::OK, &rotation.status()),
        Method::POST if !same_host => error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "rotation steps are accepted from the control plane's own host only (run `ward ca rotate` there, or through `kubectl port-forward`)".into(),
        ),
        Method::POST => {
            let body = Limited::new(req.into_body(), MAX_BODY_BYTES).collect();
            let bytes = match tokio::time::timeout(BODY_TIMEOUT, body).await {
                Ok(Ok(body)) => body.to_bytes(),
                Ok(Err(err)) => {
                    return error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        codes::BODY_UNREADABLE,
                        format!("request body unreadable or over {MAX_BODY_BYTES} bytes: {err}"),
                    );
                }
                Err(_) => {
                    return error(
                        StatusCode::REQUEST_TIMEOUT,
                        codes::BODY_UNREADABLE,
                        format!("the request body took longer than {BODY_TIMEOUT:?}"),
                    );
                }
            };
            let request: StepRequest = match serde_json::from_slice(&bytes) {
                Ok(request) => request,
                Err(err) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        codes::MALFORMED_REQUEST,
                        format!("malformed step request: {err}"),
                    );
                }
            };
            match rotation.step(request) {
                Ok(status) => json(StatusCode::OK, &status),
                Err(err) => {
                    let (status, code) = match &err {
                        RotationError::Step(_) => (StatusCode::CONFLICT, "step_refused"),
                        RotationError::BadRequest(_) | RotationError::BadCa(_) => {
                            (StatusCode::BAD_REQUEST, codes::MALFORMED_REQUEST)
                        }
                        RotationError::Store(_) | RotationError::Audit { .. } => {
                            (StatusCode::INTERNAL_SERVER_ERROR, "not_saved")
                        }
                    };
                    error(status, code, err.to_string())
                }
            }
        }
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            codes::METHOD_NOT_ALLOWED,
            "GET for the status, POST for a step".into(),
        ),
    }
}

fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(body).expect("serializable"),
        )))
        .expect("valid response")
}

fn error(status: StatusCode, code: &str, message: String) -> Response<Full<Bytes>> {
    json(
        status,
        &ErrorBody {
            error: code.to_owned(),
            message,
        },
    )
}
