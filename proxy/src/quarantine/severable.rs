//! A meshed connection's I/O that a quarantine update can cut from
//! outside: once cut, reads and writes fail (`ConnectionAborted`), so
//! whatever drives it (hyper, a copy loop, an upgraded tunnel) ends and
//! drops the socket.
//!
//! The hot path stays cheap: a poll that the inner stream answers costs an
//! atomic load; only a poll about to return `Pending` (the task is going
//! to sleep anyway) registers its waker under a mutex.

use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Tracked;

const READ: usize = 0;
const WRITE: usize = 1;

/// The switch a registry entry and its I/O share.
#[derive(Default)]
pub struct Cut {
    cut: AtomicBool,
    /// The tasks waiting to read and to write.
    wakers: Mutex<[Option<Waker>; 2]>,
}

impl Cut {
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    /// Cuts the connection: its pending and future reads and writes fail.
    pub fn sever(&self) {
        self.cut.store(true, Ordering::SeqCst);
        let wakers = std::mem::take(&mut *self.wakers.lock().expect("not poisoned"));
        for waker in wakers.into_iter().flatten() {
            waker.wake();
        }
    }

    /// Called when the inner stream said `Pending`: registers the task
    /// and says whether the cut happened meanwhile (checked again after
    /// registering, so a cut in between is never missed).
    fn park(&self, cx: &Context<'_>, direction: usize) -> bool {
        {
            let mut wakers = self.wakers.lock().expect("not poisoned");
            match &wakers[direction] {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                _ => wakers[direction] = Some(cx.waker().clone()),
            }
        }
        self.is_cut()
    }
}

fn severed() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "the peer is quarantined")
}

/// `inner`, cut when its registration's connection is quarantined. Holds
/// the registration: the connection leaves the registry when this drops.
pub struct Severable<S> {
    inner: S,
    tracked: Tracked,
}

impl<S> Severable<S> {
    pub fn new(inner: S, tracked: Tracked) -> Self {
        Severable { inner, tracked }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Fails with `poll`'s answer unless the connection is cut.
    fn guard<T>(
        &self,
        cx: &Context<'_>,
        direction: usize,
        answer: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let cut = &self.tracked.cut;
        match answer {
            _ if cut.is_cut() => Poll::Ready(Err(severed())),
            Poll::Pending if cut.park(cx, direction) => Poll::Ready(Err(severed())),
            answer => answer,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Severable<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.tracked.cut.is_cut() {
            return Poll::Ready(Err(severed()));
        }
        let answer = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.guard(cx, READ, answer)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Severable<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.tracked.cut.is_cut() {
            return Poll::Ready(Err(severed()));
        }
        let answer = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.guard(cx, WRITE, answer)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.tracked.cut.is_cut() {
            return Poll::Ready(Err(severed()));
        }
        let answer = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.guard(cx, WRITE, answer)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.tracked.cut.is_cut() {
            return Poll::Ready(Err(severed()));
        }
        let answer = Pin::new(&mut this.inner).poll_flush(cx);
        this.guard(cx, WRITE, answer)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Shutting down is always let through: it only ends sooner.
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
