use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector, client::TlsStream};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::*;
use crate::ca::{CertificateAuthority, IssuedSvid, generate_key};
use crate::testutil::{HOUR, issue, key_der};

const SERVER: &str = "spiffe://example.org/ns/default/sa/backend";
const CLIENT: &str = "spiffe://example.org/ns/default/sa/frontend";

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn ca(td: &str) -> CertificateAuthority {
    CertificateAuthority::generate_root(td, 24 * HOUR).unwrap()
}

fn bundles_for(cas: &[&CertificateAuthority]) -> SharedBundles {
    let mut bundles = TrustBundles::new();
    for ca in cas {
        bundles
            .add_pem(ca.trust_domain(), &ca.bundle_pem())
            .unwrap();
    }
    shared_bundles(bundles)
}

/// Issues an SVID for `spiffe_id` and installs it into `cell`.
fn install(
    cell: &SvidCell,
    ca: &CertificateAuthority,
    spiffe_id: &str,
    bundles: &SharedBundles,
) -> IssuedSvid {
    let (key, svid) = issue(ca, &id(spiffe_id), HOUR);
    cell.install(svid.chain_der.clone(), key_der(&key), &bundles.load())
        .unwrap();
    svid
}

fn cell_with(ca: &CertificateAuthority, spiffe_id: &str, bundles: &SharedBundles) -> Arc<SvidCell> {
    let cell = Arc::new(SvidCell::new());
    install(&cell, ca, spiffe_id, bundles);
    cell
}

/// What the server saw for one connection: the client's ID, or the handshake error.
type Accepted = Result<Option<SpiffeId>, rustls::Error>;

/// An echo server; reports each handshake's outcome on the channel.
async fn echo_server(config: Arc<rustls::ServerConfig>) -> (SocketAddr, mpsc::Receiver<Accepted>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(16);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let mut tls = match acceptor.accept(tcp).await {
                    Ok(tls) => tls,
                    Err(err) => {
                        let _ = tx.send(Err(rustls_error(&err))).await;
                        return;
                    }
                };
                let _ = tx.send(Ok(peer_spiffe_id(tls.get_ref().1))).await;
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = tls.read(&mut buf).await {
                    if tls.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    let _ = tls.flush().await;
                }
            });
        }
    });
    (addr, rx)
}

fn rustls_error(err: &std::io::Error) -> rustls::Error {
    err.get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .cloned()
        .unwrap_or_else(|| rustls::Error::General(err.to_string()))
}

async fn connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<TlsStream<TcpStream>, rustls::Error> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    // The DNS name is ignored by the SPIFFE verifier; any valid name will do.
    let name = ServerName::try_from("ward.mesh").unwrap();
    TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| rustls_error(&e))
}

async fn echo(tls: &mut TlsStream<TcpStream>, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    tls.write_all(msg).await?;
    tls.flush().await?;
    let mut buf = vec![0u8; msg.len()];
    tls.read_exact(&mut buf).await?;
    Ok(buf)
}

fn peer_serial(tls: &TlsStream<TcpStream>) -> String {
    let leaf = &tls.get_ref().1.peer_certificates().unwrap()[0];
    hex::encode(X509Certificate::from_der(leaf).unwrap().1.raw_serial())
}

#[tokio::test]
async fn mutual_tls_both_sides_see_spiffe_ids() {
    let ca = ca("example.org");
    let bundles = bundles_for(&[&ca]);
    let server = cell_with(&ca, SERVER, &bundles);
    let client = cell_with(&ca, CLIENT, &bundles);
    assert_eq!(server.current_id(), Some(id(SERVER)));
    assert!(client.is_ready() && client.not_after().is_some());

    let (addr, mut accepted) = echo_server(server_config(server, bundles.clone())).await;
    let mut tls = connect(addr, client_config(client, bundles, id(SERVER)))
        .await
        .unwrap();
    assert_eq!(echo(&mut tls, b"ping").await.unwrap(), b"ping");
    assert_eq!(peer_spiffe_id(tls.get_ref().1), Some(id(SERVER)));
    assert_eq!(accepted.recv().await.unwrap(), Ok(Some(id(CLIENT))));
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

#[tokio::test]
async fn client_refuses_unexpected_server_identity() {
    let ca = ca("example.org");
    let bundles = bundles_for(&[&ca]);
    let server = cell_with(&ca, SERVER, &bundles);
    let client = cell_with(&ca, CLIENT, &bundles);
    let (addr, _accepted) = echo_server(server_config(server, bundles.clone())).await;

    let expected = id("spiffe://example.org/ns/default/sa/payments");
    let err = connect(addr, client_config(client, bundles, expected))
        .await
        .unwrap_err();
    assert_eq!(
        svid_error(&err),
        Some(&SvidError::IdentityMismatch {
            expected: "spiffe://example.org/ns/default/sa/payments".into(),
            found: SERVER.into(),
        })
    );
    assert_eq!(tls_failure_reason(&err), "identity_mismatch");
}

#[tokio::test]
async fn server_requires_a_client_certificate() {
    let ca = ca("example.org");
    let bundles = bundles_for(&[&ca]);
    let server = cell_with(&ca, SERVER, &bundles);
    let (addr, mut accepted) = echo_server(server_config(server, bundles.clone())).await;

    // In TLS 1.3 the client finishes first; the refusal shows on the server
    // and on the client's next read.
    let client = client_config_no_client_auth(bundles, id(SERVER));
    if let Ok(mut tls) = connect(addr, client).await {
        assert!(echo(&mut tls, b"ping").await.is_err());
    }
    let err = accepted.recv().await.unwrap().unwrap_err();
    assert_eq!(err, rustls::Error::NoCertificatesPresented);
    assert_eq!(tls_failure_reason(&err), "no_certificate");
}

#[tokio::test]
async fn server_refuses_a_client_from_another_trust_domain() {
    let ours = ca("example.org");
    let theirs = ca("other.org");
    let server_bundles = bundles_for(&[&ours]);
    let server = cell_with(&ours, SERVER, &server_bundles);
    let (addr, mut accepted) = echo_server(server_config(server, server_bundles)).await;

    // The client trusts both domains and holds a valid other.org SVID.
    let client_bundles = bundles_for(&[&ours, &theirs]);
    let client = cell_with(&theirs, "spiffe://other.org/ns/x/sa/y", &client_bundles);
    if let Ok(mut tls) = connect(addr, client_config(client, client_bundles, id(SERVER))).await {
        assert!(echo(&mut tls, b"ping").await.is_err());
    }
    let err = accepted.recv().await.unwrap().unwrap_err();
    assert_eq!(
        svid_error(&err),
        Some(&SvidError::UnknownTrustDomain("other.org".into()))
    );
    assert_eq!(tls_failure_reason(&err), "wrong_trust_domain");
}

#[tokio::test]
async fn optional_client_auth_admits_bootstrap_clients() {
    let ca = ca("example.org");
    let bundles = bundles_for(&[&ca]);
    let server = cell_with(&ca, SERVER, &bundles);
    let config = server_config_optional_client_auth(server, bundles.clone());
    let (addr, mut accepted) = echo_server(config).await;

    let mut anonymous = connect(
        addr,
        client_config_no_client_auth(bundles.clone(), id(SERVER)),
    )
    .await
    .unwrap();
    assert_eq!(echo(&mut anonymous, b"hi").await.unwrap(), b"hi");
    assert_eq!(accepted.recv().await.unwrap(), Ok(None));

    let client = cell_with(&ca, CLIENT, &bundles);
    let mut authed = connect(addr, client_config(client, bundles, id(SERVER)))
        .await
        .unwrap();
    assert_eq!(echo(&mut authed, b"hi").await.unwrap(), b"hi");
    assert_eq!(accepted.recv().await.unwrap(), Ok(Some(id(CLIENT))));
}

#[tokio::test]
async fn hot_swap_keeps_live_connections_and_serves_the_new_cert() {
    let ca = ca("example.org");
    let bundles = bundles_for(&[&ca]);
    let server = Arc::new(SvidCell::new());
    let first = install(&server, &ca, SERVER, &bundles);
    let client = cell_with(&ca, CLIENT, &bundles);
    let (addr, _accepted) = echo_server(server_config(server.clone(), bundles.clone())).await;
    let config = client_config(client, bundles.clone(), id(SERVER));

    let mut old = connect(addr, config.clone()).await.unwrap();
    assert_eq!(echo(&mut old, b"before").await.unwrap(), b"before");
    assert_eq!(peer_serial(&old), first.serial_hex);

    let second = install(&server, &ca, SERVER, &bundles);
    assert_ne!(first.serial_hex, second.serial_hex);

    assert_eq!(echo(&mut old, b"after").await.unwrap(), b"after");
    let new = connect(addr, config).await.unwrap();
    assert_eq!(peer_serial(&new), second.serial_hex);
}

#[test]
fn install_refuses_a_bad_svid_and_keeps_the_current_one() {
    let ca = ca("example.org");
    let bundles = bundles_for(&[&ca]);
    let cell = SvidCell::new();
    assert!(!cell.is_ready() && cell.certified_key().is_none());
    let current = install(&cell, &ca, SERVER, &bundles);

    let (key, svid) = issue(&ca, &id(CLIENT), HOUR);
    let wrong_key = key_der(&generate_key());
    assert_eq!(
        cell.install(svid.chain_der.clone(), wrong_key, &bundles.load()),
        Err(SvidError::KeyMismatch)
    );
    assert_eq!(
        cell.install(svid.chain_der, key_der(&key), &TrustBundles::new()),
        Err(SvidError::UnknownTrustDomain("example.org".into()))
    );
    assert_eq!(cell.current_id(), Some(id(SERVER)));
    assert_eq!(cell.not_after(), Some(current.not_after));
}

#[test]
fn failure_reasons_for_plain_rustls_errors() {
    assert_eq!(
        tls_failure_reason(&rustls::Error::AlertReceived(
            rustls::AlertDescription::BadCertificate
        )),
        "rejected_by_peer"
    );
    assert_eq!(
        tls_failure_reason(&rustls::Error::General("x".into())),
        "tls_error"
    );
}
