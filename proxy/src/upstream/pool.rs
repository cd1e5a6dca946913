//! The pooled HTTP/2 connections to one destination sidecar: as many as
//! its streams need, up to a bound. A connection carries at most
//! [`H2_MAX_STREAMS`] requests at once (what every Ward inbound advertises);
//! when all are full another is opened, so slow requests that hold their
//! streams (a trickled upload) cannot queue everyone else behind them.
//! Past [`POOL_MAX_CONNECTIONS`] full connections, a request waits for a
//! free stream up to the connect timeout and is then refused.
//!
//! A connection takes no new request once it is retired (its certificates
//! are about to expire, or it refused a request unprocessed: see
//! [`super::retire`]); the pool forgets it, and it closes when the
//! requests still on it are done.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http2;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::UpstreamError;
use super::retire::Retire;
use super::retry::{Reached, SendFailed};
use crate::http::Body;
use crate::limits::H2_MAX_STREAMS;

/// Upstream HTTP/2 connections per destination (and identity): with
/// [`H2_MAX_STREAMS`], the most requests in flight to one sidecar.
pub const POOL_MAX_CONNECTIONS: usize = 64;

/// The pooled connections to one destination.
pub struct Pool {
    conns: Mutex<Vec<Arc<Conn>>>,
    /// One connect at a time per destination.
    pub(super) connecting: tokio::sync::Mutex<()>,
    /// Streams in flight on all connections, bounded.
    capacity: Arc<Semaphore>,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            conns: Mutex::default(),
            connecting: tokio::sync::Mutex::default(),
            capacity: Arc::new(Semaphore::new(
                POOL_MAX_CONNECTIONS * H2_MAX_STREAMS as usize,
            )),
        }
    }
}

struct Conn {
    sender: http2::SendRequest<Leased<Body>>,
    streams: Arc<Semaphore>,
    /// When its certificates' expiry retires it.
    retire: Retire,
    /// Retired early: it refused a request unprocessed (a GOAWAY, or a
    /// connection closing).
    refused: AtomicBool,
}

impl Conn {
    fn takes_requests(&self) -> bool {
        !self.sender.is_closed() && !self.refused.load(Ordering::Relaxed) && !self.retire.is_due()
    }
}

/// A stream's share of the pool, held until both its request and its
/// response bodies are done (the HTTP/2 stream is open until then).
struct Lease {
    _stream: OwnedSemaphorePermit,
    _capacity: OwnedSemaphorePermit,
}

impl Pool {
    /// Waits for room in the pool (any connection's free stream, or room
    /// for one more connection).
    pub(super) async fn reserve(&self) -> OwnedSemaphorePermit {
        self.capacity
            .clone()
            .acquire_owned()
            .await
            .expect("the pool's semaphore is never closed")
    }

    /// A free stream on a connection taking requests, if any; closed and
    /// retired connections are forgotten on the way.
    pub(super) fn free_stream(
        &self,
        capacity: OwnedSemaphorePermit,
    ) -> Result<Stream, OwnedSemaphorePermit> {
        let mut conns = self.conns.lock().expect("not poisoned");
        conns.retain(|c| c.takes_requests());
        for conn in conns.iter() {
            if let Ok(stream) = conn.streams.clone().try_acquire_owned() {
                return Ok(Stream::new(conn, stream, capacity));
            }
        }
        Err(capacity)
    }

    /// Adds a freshly opened connection and takes its first stream.
    pub(super) fn add(
        &self,
        sender: http2::SendRequest<Leased<Body>>,
        retire: Retire,
        capacity: OwnedSemaphorePermit,
    ) -> Stream {
        let conn = Arc::new(Conn {
            sender,
            streams: Arc::new(Semaphore::new(H2_MAX_STREAMS as usize)),
            retire,
            refused: AtomicBool::new(false),
        });
        let stream = conn
            .streams
            .clone()
            .try_acquire_owned()
            .expect("a new connection has free streams");
        self.conns.lock().expect("not poisoned").push(conn.clone());
        Stream::new(&conn, stream, capacity)
    }

    /// Connections taking requests (for tests and metrics).
    pub fn connections(&self) -> usize {
        let mut conns = self.conns.lock().expect("not poisoned");
        conns.retain(|c| c.takes_requests());
        conns.len()
    }
}

/// One request's stream on a pooled connection.
pub struct Stream {
    sender: http2::SendRequest<Leased<Body>>,
    conn: Arc<Conn>,
    lease: Arc<Lease>,
}

impl Stream {
    fn new(conn: &Arc<Conn>, stream: OwnedSemaphorePermit, capacity: OwnedSemaphorePermit) -> Self {
        Stream {
            sender: conn.sender.clone(),
            conn: conn.clone(),
            lease: Arc::new(Lease {
                _stream: stream,
                _capacity: capacity,
            }),
        }
    }

    /// Sends `req`; the stream stays leased while its bodies are in use.
    /// A failure hands the request back when it never left (see
    /// [`super::retry`] for what may go again).
    pub async fn send(mut self, req: Request<Body>) -> Result<Response<Body>, SendFailed> {
        let lease = self.lease.clone();
        let req = req.map(|body| Leased::new(body, lease));
        match self.sender.try_send_request(req).await {
            Ok(resp) => {
                let lease = self.lease;
                Ok(resp
                    .map(|body: Incoming| http_body_util::BodyExt::boxed(Leased::new(body, lease))))
            }
            Err(mut err) => {
                let unsent = err.take_message().map(|req| req.map(|b| b.inner));
                let error = UpstreamError::Http(err.into_error());
                // Its resend must not meet the same closing connection.
                if Reached::of(&error, unsent.is_some()) != Reached::Unknown {
                    self.conn.refused.store(true, Ordering::Relaxed);
                }
                Err(SendFailed { error, unsent })
            }
        }
    }
}

/// A body that keeps its stream's lease until it is dropped.
pub struct Leased<B> {
    inner: B,
    _lease: Arc<Lease>,
}

impl<B> Leased<B> {
    fn new(inner: B, lease: Arc<Lease>) -> Self {
        Leased {
            inner,
            _lease: lease,
        }
    }
}

impl<B> HttpBody for Leased<B>
where
    B: HttpBody<Data = Bytes, Error = hyper::Error> + Unpin,
{
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
