//! An I/O wrapper that counts the bytes read and written through it, so
//! byte metrics cost an integer add per read or write.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Totals shared with whoever reports them when the connection ends, and
/// the time of the last byte either way (for the idle timeout).
#[derive(Debug, Default)]
pub struct ByteCounts {
    received: AtomicU64,
    sent: AtomicU64,
    /// Milliseconds since [`epoch`] when a byte last moved.
    last_activity_ms: AtomicU64,
}

/// A process-wide reference instant for cheap, comparable timestamps.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

impl ByteCounts {
    pub fn totals(&self) -> (u64, u64) {
        (
            self.received.load(Ordering::Relaxed),
            self.sent.load(Ordering::Relaxed),
        )
    }

    /// Marks activity now (also for application data that is not counted
    /// as bytes here, such as HTTP message frames).
    pub fn touch(&self) {
        self.last_activity_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Resolves once no byte has moved for `idle` (checked at a quarter of
    /// `idle` granularity, so a connection may live up to 25% longer).
    pub async fn idle_for(&self, idle: Duration) {
        self.touch();
        let idle_ms = idle.as_millis() as u64;
        loop {
            let last = self.last_activity_ms.load(Ordering::Relaxed);
            let quiet = now_ms().saturating_sub(last);
            if quiet >= idle_ms {
                return;
            }
            let wait = (idle_ms - quiet).max(idle_ms / 4).max(1);
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    }
}

pub struct Counting<S> {
    inner: S,
    counts: Arc<ByteCounts>,
}

impl<S> Counting<S> {
    pub fn new(inner: S, counts: Arc<ByteCounts>) -> Self {
        Counting { inner, counts }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counting<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.counts.received.fetch_add(n, Ordering::Relaxed);
            self.counts.touch();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counting<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            self.counts.sent.fetch_add(n as u64, Ordering::Relaxed);
            self.counts.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = result {
            self.counts.sent.fetch_add(n as u64, Ordering::Relaxed);
            self.counts.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
