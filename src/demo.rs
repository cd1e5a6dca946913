//! `ward demo`: a control plane and two workloads on this machine. Each
//! workload enrols with a join token, gets its X.509-SVID, and the two talk
//! over mutual TLS, each side checking the other's SPIFFE ID.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use ward_control_plane::attest::JoinTokenStore;
use ward_control_plane::client::{ControlPlaneClient, ControlPlaneIssuer, CredentialSource};
use ward_control_plane::data_dir::DataDir;
use ward_control_plane::server::{Config, ControlPlane};
use ward_identity::SpiffeId;
use ward_identity::manager::{self, IdentityHandle, RotationPolicy};
use ward_identity::tls;

#[derive(Args)]
pub struct DemoArgs {
    /// Trust domain of the demo mesh.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
}

pub fn run(args: DemoArgs) -> anyhow::Result<std::process::ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(demo(args))?;
    Ok(std::process::ExitCode::SUCCESS)
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let data = tempfile::tempdir().context("creating a temporary data directory")?;
    let mut config = Config::new(&args.trust_domain, data.path());
    config.listen = "127.0.0.1:0".parse()?;
    config.admin_listen = Some("127.0.0.1:0".parse()?);
    let cp = ControlPlane::start(config).await?;
    println!(
        "control plane   https://{} (CA for trust domain {:?}, data in a temporary directory)",
        cp.api_addr(),
        cp.trust_domain()
    );

    let (stop_tx, stop) = watch::channel(false);
    let tokens = JoinTokenStore::open(&DataDir::open(data.path())?.join_tokens_dir())?;
    let mut workloads = Vec::new();
    for name in ["frontend", "backend"] {
        let id = SpiffeId::for_service_account(&args.trust_domain, "demo", name)?;
        let token = tokens.create(&id, Duration::from_secs(300))?;
        let client = ControlPlaneClient::from_bundle_pem(
            cp.api_addr().to_string(),
            cp.trust_domain(),
            cp.bundle_pem(),
        )?;
        let issuer = ControlPlaneIssuer {
            client,
            credential: CredentialSource::join_token(token),
        };
        let handle = manager::spawn(id, issuer, RotationPolicy::default(), stop.clone());
        let not_after = tokio::time::timeout(Duration::from_secs(10), handle.ready())
            .await
            .with_context(|| format!("{name} did not get its certificate"))?;
        println!(
            "{name:<15} enrolled with a join token: {}  (certificate valid until {})",
            handle.spiffe_id(),
            ward_identity::rfc3339(not_after)
        );
        workloads.push(handle);
    }
    let (frontend, backend) = (&workloads[0], &workloads[1]);
    mtls_exchange(frontend, backend).await?;

    let _ = stop_tx.send(true);
    cp.shutdown().await;
    Ok(())
}

/// Backend serves one mTLS connection; frontend connects expecting the
/// backend's SPIFFE ID. Each prints the identity it verified on the other.
async fn mtls_exchange(frontend: &IdentityHandle, backend: &IdentityHandle) -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(tls::server_config(
        backend.svid().clone(),
        backend.bundles().clone(),
    ));
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let peer = tls::peer_spiffe_id(tls.get_ref().1).context("client presented no SPIFFE ID")?;
        let mut request = [0u8; 5];
        tls.read_exact(&mut request).await?;
        tls.write_all(format!("hello {peer}").as_bytes()).await?;
        tls.shutdown().await?;
        anyhow::Ok(peer)
    });

    let connector = TlsConnector::from(tls::client_config(
        frontend.svid().clone(),
        frontend.bundles().clone(),
        backend.spiffe_id().clone(),
    ));
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = connector.connect("backend.demo".try_into()?, tcp).await?;
    let server_id =
        tls::peer_spiffe_id(tls.get_ref().1).context("server presented no SPIFFE ID")?;
    let (version, suite) = {
        let conn = tls.get_ref().1;
        let version = conn
            .protocol_version()
            .context("no TLS version negotiated")?;
        let suite = conn
            .negotiated_cipher_suite()
            .context("no cipher suite negotiated")?;
        (version, suite.suite())
    };
    tls.write_all(b"hello").await?;
    let mut reply = String::new();
    tls.read_to_string(&mut reply).await?;
    let client_id = server.await??;
    if &client_id != frontend.spiffe_id() || &server_id != backend.spiffe_id() {
        bail!("identities do not match: server saw {client_id}, client saw {server_id}");
    }
    println!();
    println!("mTLS handshake  frontend -> backend: {version:?}, {suite:?}");
    println!("  backend verified the client as  {client_id}");
    println!("  frontend verified the server as {server_id}");
    println!("  backend answered: {reply:?}");
    Ok(())
}
