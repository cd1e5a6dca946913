//! Silent connections, as a pod that wants to stall the control plane
//! opens them: plain TCP that never says anything, or TLS that completes
//! the handshake (no client certificate) and then says nothing. Each is
//! held until the *server* closes it, which is what the tests observe.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

/// How a flood connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Closed by the server before or during the TLS handshake.
    Refused,
    /// Held, then closed by the server.
    ClosedByServer,
}

/// The `n`th flood source address: 127.0.0.2 and up (the test's own
/// clients use 127.0.0.1).
pub fn source(n: usize) -> IpAddr {
    let n = n + 2;
    IpAddr::V4(Ipv4Addr::new(127, 0, (n / 250) as u8, (n % 250) as u8 + 1))
}

/// Raises the soft open-file limit to at least `need` (within the hard
/// limit): a flood holds both ends of every connection in this process.
pub fn raise_fd_limit(need: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        hard >= need,
        "this test needs {need} open files; the hard limit is {hard}"
    );
    if soft < need {
        setrlimit(Resource::RLIMIT_NOFILE, need, hard).unwrap();
    }
}

/// A TLS client that trusts `bundle_pem` and presents no certificate.
pub fn tls_client(bundle_pem: &str, alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(bundle_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

pub struct Flood {
    pub tasks: JoinSet<Ended>,
}

impl Flood {
    /// Opens `per_source` connections from each of `sources` addresses to
    /// `addr`, silent; with `tls`, each completes a handshake first.
    pub async fn open(
        addr: SocketAddr,
        sources: usize,
        per_source: usize,
        tls: Option<TlsConnector>,
    ) -> Flood {
        Self::open_from(addr, 0, sources, per_source, tls).await
    }

    /// [`Flood::open`] from the source addresses numbered `first` and up.
    pub async fn open_from(
        addr: SocketAddr,
        first: usize,
        sources: usize,
        per_source: usize,
        tls: Option<TlsConnector>,
    ) -> Flood {
        let mut tasks = JoinSet::new();
        for n in first..first + sources {
            for _ in 0..per_source {
                let tcp = connect_from(source(n), addr).await;
                let tls = tls.clone();
                tasks.spawn(async move { hold(tcp, tls).await });
            }
        }
        Flood { tasks }
    }

    /// Waits until the server closed every connection; how many it refused
    /// at once and how many it held and then closed.
    pub async fn ended(mut self, within: Duration) -> (usize, usize) {
        let mut counts = (0, 0);
        tokio::time::timeout(within, async {
            while let Some(ended) = self.tasks.join_next().await {
                match ended.unwrap() {
                    Ended::Refused => counts.0 += 1,
                    Ended::ClosedByServer => counts.1 += 1,
                }
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{} flood connections still open after {within:?}",
                self.tasks.len()
            )
        });
        counts
    }
}

pub async fn connect_from(source: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

async fn hold(tcp: TcpStream, tls: Option<TlsConnector>) -> Ended {
    let mut buf = [0u8; 64];
    match tls {
        None => {
            // Whatever comes (nothing should), until EOF or reset.
            let mut tcp = tcp;
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return Ended::ClosedByServer,
                    Ok(_) => {}
                }
            }
        }
        Some(connector) => {
            let name = ServerName::try_from("localhost").unwrap();
            let Ok(mut tls) = connector.connect(name, tcp).await else {
                return Ended::Refused;
            };
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => return Ended::ClosedByServer,
                    Ok(_) => {}
                }
            }
        }
    }
}

/// An AdmissionReview for a pod CREATE in namespace `shop`.
pub fn review(uid: &str) -> Value {
    let gvk = json!({"group": "", "version": "v1", "kind": "Pod"});
    json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": uid,
            "kind": gvk,
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"generateName": "cart-", "namespace": "shop"},
                "spec": {"containers": [{"name": "cart", "image": "registry.example/cart:1"}]}
            }
        }
    })
}

/// One admission over its own HTTPS connection from 127.0.0.1, as the
/// API server sends it: the `uid` of the answer, or why there was none.
pub async fn admit(addr: SocketAddr, bundle_pem: &str, uid: &str) -> Result<String, String> {
    let connector = tls_client(bundle_pem, &[b"http/1.1"]);
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method("POST")
        .uri("/inject")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(review(uid).to_string())))
        .unwrap();
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    if status != 200 {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    let answer: Value = serde_json::from_slice(&body).unwrap();
    Ok(answer["response"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}
