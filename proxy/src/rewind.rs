//! A stream with bytes already read put back in front, so a protocol
//! sniffed after TLS termination can be handed to the right server intact.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Rewind { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Reads until `classify` decides or `max` bytes or EOF; returns the bytes read.
pub async fn sniff<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: std::time::Duration,
) -> io::Result<(Bytes, Option<crate::detect::Protocol>)> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::with_capacity(crate::detect::MAX_DETECT_BYTES);
    let deadline = tokio::time::Instant::now() + timeout;
    while buf.len() < crate::detect::MAX_DETECT_BYTES {
        if let Some(p) = crate::detect::classify(&buf) {
            return Ok((Bytes::from(buf), Some(p)));
        }
        let mut chunk = [0u8; crate::detect::MAX_DETECT_BYTES];
        let want = crate::detect::MAX_DETECT_BYTES - buf.len();
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk[..want])).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e),
        }
    }
    let decided = crate::detect::classify(&buf).or(if buf.is_empty() {
        None
    } else {
        Some(crate::detect::Protocol::Opaque)
    });
    Ok((Bytes::from(buf), decided))
}
