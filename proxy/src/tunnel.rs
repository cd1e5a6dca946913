//! Splicing two upgraded HTTP connections (WebSocket, CONNECT) together.

use std::sync::Arc;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::debug;

use crate::counting::{ByteCounts, Counting};

pub async fn splice(downstream: OnUpgrade, upstream: OnUpgrade) {
    splice_counted(downstream, upstream, None).await
}

/// `splice`, with the downstream side's bytes counted in `counts` (the
/// connection's idle clock) when given.
pub async fn splice_counted(
    downstream: OnUpgrade,
    upstream: OnUpgrade,
    counts: Option<Arc<ByteCounts>>,
) {
    let (down, up) = match tokio::try_join!(downstream, upstream) {
        Ok(pair) => pair,
        Err(err) => {
            debug!(%err, "upgrade failed");
            return;
        }
    };
    let mut up = TokioIo::new(up);
    let result = match counts {
        Some(counts) => {
            let mut down = Counting::new(TokioIo::new(down), counts);
            tokio::io::copy_bidirectional(&mut down, &mut up).await
        }
        None => tokio::io::copy_bidirectional(&mut TokioIo::new(down), &mut up).await,
    };
    if let Err(err) = result {
        debug!(%err, "tunnel ended with an error");
    }
}
