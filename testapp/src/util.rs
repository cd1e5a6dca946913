//! Pieces shared by the servers and clients: the byte pattern, streaming
//! bodies, the accept loop with SIGTERM draining, a bounded echo loop and a
//! stage tracker for clear timeout messages.

use std::convert::Infallible;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context as _, Result};
use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// The 64-byte pattern every generated stream repeats: byte `i` of a stream
/// is `PATTERN[i % 64]`.
pub const PATTERN: &[u8; 64] = b"ward-testapp-pattern:0123456789abcdefghijklmnopqrstuvwxyzABCDEF\n";

/// Size of the chunks generated streams are cut into.
pub const CHUNK_LEN: usize = 64 * 1024;

/// An idle raw/upgraded connection (no bytes either way) is closed after this.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// One chunk of the pattern, shared (cloning a `Bytes` is a refcount bump).
pub static CHUNK: LazyLock<Bytes> = LazyLock::new(|| {
    Bytes::from(
        (0..CHUNK_LEN)
            .map(|i| PATTERN[i % PATTERN.len()])
            .collect::<Vec<u8>>(),
    )
});

/// True when `data` is what the pattern holds at stream offset `offset`.
pub fn pattern_matches(mut offset: u64, mut data: &[u8]) -> bool {
    while !data.is_empty() {
        let start = (offset % CHUNK_LEN as u64) as usize;
        let n = data.len().min(CHUNK_LEN - start);
        if data[..n] != CHUNK[start..start + n] {
            return false;
        }
        data = &data[n..];
        offset += n as u64;
    }
    true
}

/// A body of `remaining` pattern bytes, generated chunk by chunk.
pub struct PatternBody {
    remaining: u64,
}

impl PatternBody {
    pub fn new(len: u64) -> Self {
        Self { remaining: len }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        // Every chunk starts at a multiple of CHUNK_LEN, so it is a prefix of
        // CHUNK.
        let n = self.remaining.min(CHUNK_LEN as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(CHUNK.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// A body fed frame by frame (data, then optionally trailers) through a
/// channel; it ends when every sender is dropped.
pub struct ChannelBody(pub mpsc::Receiver<Frame<Bytes>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}

/// Value of `name` in the query string of `uri` (no percent-decoding: the
/// test parameters are plain numbers and flags).
pub fn query_param<'a>(uri: &'a http::Uri, name: &str) -> Option<&'a str> {
    uri.query()?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

/// A bound listener whose SIGTERM/SIGINT handlers are already installed.
pub struct Bound {
    listener: TcpListener,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

/// Installs the signal handlers, binds `addr` and announces it with the one
/// stdout line tests wait for: a SIGTERM sent as soon as that line appears
/// is a graceful shutdown, never the default kill.
pub async fn bind(addr: &str) -> Result<Bound> {
    let term = signal(SignalKind::terminate())?;
    let int = signal(SignalKind::interrupt())?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {local}")?;
    out.flush()?;
    Ok(Bound {
        listener,
        term,
        int,
    })
}

/// Accepts connections until SIGTERM or SIGINT, running `handle` for each on
/// its own task. On the signal it stops accepting, flips the shutdown watch
/// (HTTP connections turn to a graceful shutdown), waits at most `drain` for
/// the connections to finish, aborts the rest and returns.
pub async fn serve<F, Fut>(bound: Bound, drain: Duration, handle: F) -> Result<()>
where
    F: Fn(TcpStream, SocketAddr, watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Bound {
        listener,
        mut term,
        mut int,
    } = bound;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let signal_name = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tasks.spawn(handle(stream, peer, shutdown_rx.clone()));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    eprintln!("ward-testapp: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    };
    drop(listener);
    eprintln!(
        "ward-testapp: {signal_name}: draining {} connection(s) for at most {} ms",
        tasks.len(),
        drain.as_millis()
    );
    let _ = shutdown_tx.send(true);
    let drained =
        tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        eprintln!(
            "ward-testapp: aborting {} connection(s) still open",
            tasks.len()
        );
        tasks.abort_all();
    }
    Ok(())
}

/// Resolves once the shutdown watch says stop (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Copies everything read from `reader` back to `writer` until EOF (or no
/// traffic for `IDLE_TIMEOUT`), without shutting `writer` down. Returns the
/// number of bytes echoed.
pub async fn echo_until_eof<R, W>(reader: &mut R, writer: &mut W) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut total = 0u64;
    loop {
        buf.clear();
        let n = match tokio::time::timeout(IDLE_TIMEOUT, reader.read_buf(&mut buf)).await {
            Ok(n) => n?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "idle connection",
                ));
            }
        };
        if n == 0 {
            return Ok(total);
        }
        writer.write_all(&buf[..n]).await?;
        total += n as u64;
    }
}

/// Echoes an upgraded connection (WebSocket, CONNECT) until EOF, then closes
/// the write side.
pub async fn echo_stream<T>(io: T) -> std::io::Result<u64>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (mut reader, mut writer) = tokio::io::split(io);
    let total = echo_until_eof(&mut reader, &mut writer).await?;
    writer.shutdown().await?;
    Ok(total)
}

/// What a client is currently waiting for, quoted in its timeout message.
#[derive(Clone, Default)]
pub struct Stage(Arc<Mutex<String>>);

impl Stage {
    pub fn set(&self, what: impl Into<String>) {
        if let Ok(mut stage) = self.0.lock() {
            *stage = what.into();
        }
    }

    pub fn get(&self) -> String {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 section 4.2.2).
pub fn websocket_accept(key: &str) -> String {
    use base64::Engine as _;
    const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut sha1 = sha1_smol::Sha1::new();
    sha1.update(key.trim().as_bytes());
    sha1.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha1.digest().bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_accept_matches_rfc_6455_example() {
        assert_eq!(
            websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn pattern_is_consistent_across_chunk_boundaries() {
        assert_eq!(PATTERN.len(), 64);
        let stream: Vec<u8> = (0..3 * CHUNK_LEN + 17).map(|i| PATTERN[i % 64]).collect();
        assert!(pattern_matches(0, &stream));
        assert!(pattern_matches(100, &stream[100..CHUNK_LEN + 300]));
        assert!(!pattern_matches(1, &stream[..10]));
        let mut bad = stream.clone();
        bad[CHUNK_LEN + 5] ^= 1;
        assert!(!pattern_matches(0, &bad));
    }

    #[test]
    fn query_params() {
        let uri: http::Uri = "/source?bytes=12&sha256=1&flag".parse().unwrap();
        assert_eq!(query_param(&uri, "bytes"), Some("12"));
        assert_eq!(query_param(&uri, "sha256"), Some("1"));
        assert_eq!(query_param(&uri, "flag"), Some(""));
        assert_eq!(query_param(&uri, "nope"), None);
    }
}
