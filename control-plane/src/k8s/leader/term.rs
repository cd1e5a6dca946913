//! Whether this replica may write policy statuses, as the status writer
//! asks it before every write.
//!
//! The elector publishes a *term*: the instant until which this replica
//! is sure to hold the Lease (its last successful renewal's start plus the
//! renew deadline), or none. A write needs a [`Permit`], granted only
//! inside the term, and is bounded by what is left of it; so once the
//! deadline passes nothing is written, even if the elector is stuck. The
//! elector takes every permit back (a write lock) before it releases the
//! Lease, so no write of this replica lands after its successor's first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock, watch};

/// The status writer's view of the election. Cloned freely.
#[derive(Debug, Clone)]
pub struct Leadership(Inner);

#[derive(Debug, Clone)]
enum Inner {
    /// No election: this control plane is the only writer (embedders and
    /// tests that run one control plane against an API server).
    Sole,
    Elected {
        term: watch::Receiver<Option<Instant>>,
        writes: Arc<RwLock<()>>,
    },
}

/// Leave to write one status, for at most [`Permit::remaining`].
#[derive(Debug)]
pub struct Permit {
    _write: Option<OwnedRwLockReadGuard<()>>,
    until: Option<Instant>,
}

impl Permit {
    /// What is left of the term (unbounded for a sole writer).
    pub fn remaining(&self) -> Duration {
        self.until.map_or(Duration::MAX, |until| {
            until.saturating_duration_since(Instant::now())
        })
    }
}

impl Leadership {
    /// Always the writer.
    pub fn sole() -> Self {
        Leadership(Inner::Sole)
    }

    /// The writer while the elector behind `term` holds the Lease.
    fn elected(term: watch::Receiver<Option<Instant>>, writes: Arc<RwLock<()>>) -> Self {
        Leadership(Inner::Elected { term, writes })
    }

    /// Leave to write now, or `None` when this replica is not the writer.
    pub fn permit(&self) -> Option<Permit> {
        match &self.0 {
            Inner::Sole => Some(Permit {
                _write: None,
                until: None,
            }),
            Inner::Elected { term, writes } => {
                // The guard first: once the elector holds the write lock
                // (releasing), no permit is granted whatever the term says.
                let guard = writes.clone().try_read_owned().ok()?;
                let until = (*term.borrow())?;
                (Instant::now() < until).then_some(Permit {
                    _write: Some(guard),
                    until: Some(until),
                })
            }
        }
    }

    /// Whether a permit would be granted now.
    pub fn is_writer(&self) -> bool {
        self.permit().is_some()
    }

    /// Resolves when this replica became or stopped being the writer
    /// (never for a sole writer, nor once the elector is gone).
    pub async fn changed(&mut self) {
        match &mut self.0 {
            Inner::Elected { term, .. } => {
                if term.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            Inner::Sole => std::future::pending().await,
        }
    }
}

/// The elector's side: sets the term, takes the permits back.
#[derive(Debug)]
pub(super) struct TermSender {
    term: watch::Sender<Option<Instant>>,
    writes: Arc<RwLock<()>>,
}

impl TermSender {
    pub(super) fn new() -> (TermSender, Leadership) {
        let (term, rx) = watch::channel(None);
        let writes = Arc::new(RwLock::new(()));
        let leadership = Leadership::elected(rx, writes.clone());
        (TermSender { term, writes }, leadership)
    }

    /// Held until `until`. Returns whether this starts a term (the
    /// previous one ended, or there was none): only then are the status
    /// writers woken, not on every renewal.
    pub(super) fn extend(&self, until: Instant) -> bool {
        let now = Instant::now();
        self.term.send_if_modified(|term| {
            let started = term.is_none_or(|t| t <= now);
            *term = Some(until);
            started
        })
    }

    /// Not held. Returns whether a term was running.
    pub(super) fn end(&self) -> bool {
        let now = Instant::now();
        self.term
            .send_if_modified(|term| term.take().is_some_and(|t| t > now))
    }

    /// Whether a term is running now.
    pub(super) fn holds(&self) -> bool {
        self.remaining().is_some()
    }

    /// What is left of the running term, if one runs.
    pub(super) fn remaining(&self) -> Option<Duration> {
        let now = Instant::now();
        (*self.term.borrow())
            .filter(|until| *until > now)
            .map(|until| until - now)
    }

    /// Waits (at most `timeout`) for the writes in flight to finish and
    /// refuses new ones while the guard lives. `None` on timeout.
    pub(super) async fn drain(&self, timeout: Duration) -> Option<OwnedRwLockWriteGuard<()>> {
        tokio::time::timeout(timeout, self.writes.clone().write_owned())
            .await
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sole_writer_always_writes() {
        let l = Leadership::sole();
        assert!(l.is_writer());
        assert_eq!(l.permit().unwrap().remaining(), Duration::MAX);
    }

    #[test]
    fn permits_only_inside_the_term_and_bounded_by_it() {
        let (tx, l) = TermSender::new();
        assert!(!l.is_writer(), "no term yet");
        assert!(tx.extend(Instant::now() + Duration::from_secs(10)));
        let permit = l.permit().expect("inside the term");
        assert!(permit.remaining() <= Duration::from_secs(10));
        assert!(permit.remaining() > Duration::from_secs(9));
        drop(permit);
        // A renewal is not a new term.
        assert!(!tx.extend(Instant::now() + Duration::from_secs(10)));
        // A term that ran out refuses permits with no word from the elector.
        tx.extend(Instant::now());
        assert!(!l.is_writer());
        // Extending a term that ran out starts a new one.
        assert!(tx.extend(Instant::now() + Duration::from_secs(10)));
        assert!(tx.end());
        assert!(!l.is_writer());
        assert!(!tx.end(), "already ended");
    }

    #[tokio::test]
    async fn draining_waits_for_writes_in_flight_and_refuses_new_ones() {
        let (tx, l) = TermSender::new();
        tx.extend(Instant::now() + Duration::from_secs(10));
        let in_flight = l.permit().unwrap();
        assert!(
            tx.drain(Duration::from_millis(50)).await.is_none(),
            "a write is in flight"
        );
        drop(in_flight);
        let guard = tx.drain(Duration::from_secs(5)).await.expect("drained");
        assert!(
            l.permit().is_none(),
            "the term runs, but the lease is being released"
        );
        drop(guard);
        assert!(l.is_writer());
    }

    #[tokio::test]
    async fn writers_are_woken_when_a_term_starts_or_ends() {
        let (tx, mut l) = TermSender::new();
        let waiter = tokio::spawn(async move {
            l.changed().await;
            l.is_writer()
        });
        tx.extend(Instant::now() + Duration::from_secs(10));
        assert!(waiter.await.unwrap());
    }
}
