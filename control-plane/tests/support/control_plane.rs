//! Talking to a running control plane from a test: its configuration on
//! loopback, certificate requests and answers, its admin port, its metrics,
//! its refusals, and the RBAC it ships with.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use serde_json::Value;
use ward_api::client::{ClientError, ControlPlaneClient};
use ward_api::svid::{SvidRequest, SvidResponse};
use ward_control_plane::attest::{Credential, JoinTokenStore};
use ward_control_plane::data_dir::DataDir;
use ward_control_plane::server::{Config, ControlPlane};
use ward_identity::SpiffeId;
use ward_identity::bundle::TrustBundles;
use ward_identity::ca;
use ward_identity::svid::{self, Role};
use ward_identity::tls::SvidCell;

/// The configuration of a control plane for `td` with its data in `data`
/// and both listeners (API, admin) on 127.0.0.1:0.
pub fn loopback_config(td: &str, data: &Path) -> Config {
    let mut config = Config::new(td, data);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    config
}

/// A client of `cp`'s API, trusting `cp`'s CA for `td`.
pub fn api_client(cp: &ControlPlane, td: &str) -> ControlPlaneClient {
    ControlPlaneClient::from_bundle_pem(cp.api_addr().to_string(), td, cp.bundle_pem()).unwrap()
}

/// `cp`'s Prometheus metrics, from its admin listener.
pub async fn metrics(cp: &ControlPlane) -> String {
    admin_get(cp.admin_addr().unwrap(), "/metrics").await.1
}

/// A join token for `id`, valid for `ttl`, in the control plane's data
/// directory `data` (as `ward token create` makes them).
pub fn join_token(data: &Path, id: &SpiffeId, ttl: Duration) -> String {
    let dir = DataDir::open(data).unwrap();
    JoinTokenStore::open(&dir.join_tokens_dir())
        .unwrap()
        .create(id, ttl)
        .unwrap()
}

/// A certificate request as a sidecar sends it: the CSR of a fresh key for
/// `id`, `credential` (none for a renewal over mTLS) and the `pod` claim.
/// Returns the key with it.
pub fn keyed_svid_request(
    id: &SpiffeId,
    credential: Option<Credential>,
    pod: Option<&str>,
) -> (rcgen::KeyPair, SvidRequest) {
    let key = ca::generate_key();
    let request = SvidRequest {
        spiffe_id: id.to_string(),
        csr: ca::build_csr(&key, id).unwrap(),
        credential,
        pod: pod.map(str::to_owned),
    };
    (key, request)
}

/// [`keyed_svid_request`] without the key.
pub fn svid_request(
    id: &SpiffeId,
    credential: Option<Credential>,
    pod: Option<&str>,
) -> SvidRequest {
    keyed_svid_request(id, credential, pod).1
}

/// The SPIFFE ID `answer` certifies, its chain verified (now) against the
/// bundle that came with it.
pub fn certified_id(answer: &SvidResponse) -> SpiffeId {
    let mut bundles = TrustBundles::new();
    bundles
        .add_pem(&answer.trust_domain, &answer.bundle_pem)
        .unwrap();
    let chain: Vec<CertificateDer> = CertificateDer::pem_slice_iter(answer.chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    svid::verify_chain(&chain, &bundles, Role::Any, UnixTime::now())
        .unwrap()
        .spiffe_id
}

/// A cell holding the SVID of `answer` with its `key`, trusting the bundle
/// of `answer` for `td`: a sidecar's client certificate.
pub fn svid_cell(answer: &SvidResponse, key: &rcgen::KeyPair, td: &str) -> Arc<SvidCell> {
    let mut bundles = TrustBundles::new();
    bundles.add_pem(td, &answer.bundle_pem).unwrap();
    let chain = CertificateDer::pem_slice_iter(answer.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let cell = Arc::new(SvidCell::new());
    cell.install(
        chain,
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        &bundles,
    )
    .unwrap();
    cell
}

/// `GET path` on the plaintext admin listener: (status code, whole response).
pub async fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, out)
}

/// The value of one series (`name{labels}` exactly as exposed); 0 when absent.
pub fn metric_value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// `ward_ca_certificates_issued_total`.
pub fn certificates_issued(metrics: &str) -> f64 {
    metric_value(metrics, "ward_ca_certificates_issued_total")
}

/// `ward_ca_attestation_failures_total` for one method and reason.
pub fn attestation_failures(metrics: &str, method: &str, reason: &str) -> f64 {
    let series =
        format!(r#"ward_ca_attestation_failures_total{{method="{method}",reason="{reason}"}}"#);
    metric_value(metrics, &series)
}

/// (status, error code, message) of a refused request.
pub fn refusal(err: ClientError) -> (StatusCode, String, String) {
    match err {
        ClientError::Refused {
            status,
            code,
            message,
        } => (status, code, message),
        other => panic!("expected a refusal, got {other}"),
    }
}

/// Whether the `ward-control-plane` ClusterRole in `deploy/base/rbac.yaml`
/// grants `verb` on `group`/`resource` (`resource/subresource`).
pub fn cluster_role_allows(group: &str, resource: &str, verb: &str) -> bool {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/base/rbac.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let role = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| <Value as serde::Deserialize>::deserialize(doc).unwrap())
        .find(|doc| doc["kind"] == "ClusterRole")
        .expect("a ClusterRole");
    let has = |rule: &Value, field: &str, value: &str| {
        rule[field]
            .as_array()
            .is_some_and(|values| values.iter().any(|v| v == value))
    };
    role["rules"].as_array().unwrap().iter().any(|rule| {
        has(rule, "apiGroups", group)
            && has(rule, "resources", resource)
            && has(rule, "verbs", verb)
    })
}
