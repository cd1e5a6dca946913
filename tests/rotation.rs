//! Certificate rotation end to end: workloads enrol with the control plane
//! over HTTPS, renew over mTLS at half-life, and a live mTLS connection keeps
//! working across the renewal while new handshakes see the new certificate.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::{TlsAcceptor, TlsConnector, client::TlsStream};
use ward_api::client::{ControlPlaneClient, ControlPlaneIssuer, CredentialSource};
use ward_control_plane::attest::JoinTokenStore;
use ward_control_plane::data_dir::DataDir;
use ward_control_plane::server::{Config, ControlPlane};
use ward_identity::SpiffeId;
use ward_identity::manager::{self, IdentityHandle, RotationPolicy};
use ward_identity::tls;

const TD: &str = "cluster.local";
const SVID_TTL: Duration = Duration::from_secs(4);

async fn enrol(
    cp: &ControlPlane,
    data: &std::path::Path,
    sa: &str,
    stop: watch::Receiver<bool>,
) -> IdentityHandle {
    let id = SpiffeId::for_service_account(TD, "default", sa).unwrap();
    let tokens = JoinTokenStore::open(&DataDir::open(data).unwrap().join_tokens_dir()).unwrap();
    let token = tokens.create(&id, Duration::from_secs(60)).unwrap();
    let client =
        ControlPlaneClient::from_bundle_pem(cp.api_addr().to_string(), TD, cp.bundle_pem())
            .unwrap();
    let issuer = ControlPlaneIssuer {
        client,
        credential: CredentialSource::join_token(token),
        pod: None,
    };
    let handle = manager::spawn(id, issuer, RotationPolicy::default(), stop);
    tokio::time::timeout(Duration::from_secs(10), handle.ready())
        .await
        .unwrap();
    handle
}

/// An mTLS echo server for `backend`, serving every connection it accepts.
async fn echo_server(backend: &IdentityHandle) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(tls::server_config(
        backend.svid().clone(),
        backend.bundles().clone(),
    ));
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 64];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

async fn connect(
    frontend: &IdentityHandle,
    backend: &IdentityHandle,
    addr: std::net::SocketAddr,
) -> TlsStream<TcpStream> {
    let connector = TlsConnector::from(tls::client_config(
        frontend.svid().clone(),
        frontend.bundles().clone(),
        backend.spiffe_id().clone(),
    ));
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector
        .connect("backend".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

async fn echo(conn: &mut TlsStream<TcpStream>, msg: &[u8]) {
    conn.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    conn.read_exact(&mut back).await.unwrap();
    assert_eq!(back, msg);
}

fn server_cert(conn: &TlsStream<TcpStream>) -> Vec<u8> {
    conn.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn live_connection_survives_renewal_and_new_handshakes_see_the_new_certificate() {
    let data = tempfile::tempdir().unwrap();
    let mut config = Config::new(TD, data.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.admin_listen = None;
    config.svid_ttl = SVID_TTL;
    let cp = ControlPlane::start(config).await.unwrap();
    let (stop_tx, stop) = watch::channel(false);
    let frontend = enrol(&cp, data.path(), "frontend", stop.clone()).await;
    let backend = enrol(&cp, data.path(), "backend", stop).await;
    let first_expiry = backend.not_after().unwrap();

    let addr = echo_server(&backend).await;
    let mut live = connect(&frontend, &backend, addr).await;
    echo(&mut live, b"before renewal").await;
    let first_cert = server_cert(&live);

    // The join tokens were single-use, so this renewal went over mTLS.
    let second_expiry = tokio::time::timeout(SVID_TTL * 2, backend.renewed_after(first_expiry))
        .await
        .expect("backend renewed its certificate");
    assert!(second_expiry > first_expiry);

    let fresh = connect(&frontend, &backend, addr).await;
    let new_cert = server_cert(&fresh);
    assert_ne!(
        new_cert, first_cert,
        "a new handshake presents the renewed certificate"
    );
    assert_eq!(
        new_cert,
        backend.svid().certified_key().unwrap().cert[0].to_vec()
    );
    echo(&mut live, b"after renewal").await;

    // Even past the first certificate's expiry the established connection
    // carries on: certificates are checked at the handshake only.
    let past_expiry =
        first_expiry - time::OffsetDateTime::now_utc() + time::Duration::milliseconds(500);
    if let Ok(wait) = Duration::try_from(past_expiry) {
        tokio::time::sleep(wait).await;
    }
    echo(&mut live, b"after the old certificate expired").await;
    assert!(
        frontend
            .stats()
            .renewals
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );

    let _ = stop_tx.send(true);
    cp.shutdown().await;
}
