//! Splicing two upgraded HTTP connections (WebSocket, CONNECT) together.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::debug;

pub async fn splice(downstream: OnUpgrade, upstream: OnUpgrade) {
    let (down, up) = match tokio::try_join!(downstream, upstream) {
        Ok(pair) => pair,
        Err(err) => {
            debug!(%err, "upgrade failed");
            return;
        }
    };
    let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
    if let Err(err) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
        debug!(%err, "tunnel ended with an error");
    }
}
