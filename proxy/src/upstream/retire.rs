//! When an upstream connection to a peer sidecar stops taking new requests.
//!
//! The peer's inbound closes an mTLS connection when either certificate it
//! was authenticated with expires (TLS checks validity only at the
//! handshake). It closes gracefully, but at a moment this side does not
//! see coming: a request sent as the GOAWAY crosses it is refused, and its
//! one resend can meet the same closing connection. So the client retires
//! a connection a little before: new requests go over a new connection
//! (certificates are renewed at half their life, so a new one has time
//! left), and the requests already on it finish before the peer closes it.
//! A connection that refused a request unprocessed is retired at once, for
//! the same reason.

use std::time::{Duration, Instant};

use time::OffsetDateTime;

/// The most a connection is retired ahead of its certificates' expiry:
/// more than clock skew between nodes and an ordinary request take.
const MAX_LEAD: Duration = Duration::from_secs(60);

/// When a connection stops taking new requests.
#[derive(Debug, Clone, Copy)]
pub struct Retire {
    at: Option<Instant>,
}

impl Retire {
    /// For a connection authenticated with certificates the earlier of
    /// which expires at `expires` (never when unknown): a tenth of the
    /// time it has left before that, and at most [`MAX_LEAD`].
    pub fn before(expires: Option<OffsetDateTime>) -> Self {
        Self::before_from(expires, OffsetDateTime::now_utc(), Instant::now())
    }

    fn before_from(expires: Option<OffsetDateTime>, wall: OffsetDateTime, now: Instant) -> Self {
        let at = expires.map(|expires| {
            // An expiry already past leaves nothing: retired at once.
            let left = Duration::try_from(expires - wall).unwrap_or(Duration::ZERO);
            now + left - (left / 10).min(MAX_LEAD)
        });
        Retire { at }
    }

    /// The connection must take no new request.
    pub fn is_due(&self) -> bool {
        self.at.is_some_and(|at| Instant::now() >= at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lead(left: time::Duration) -> Option<Duration> {
        let (wall, now) = (OffsetDateTime::now_utc(), Instant::now());
        let retire = Retire::before_from(Some(wall + left), wall, now);
        retire
            .at
            .map(|at| (now + Duration::try_from(left).unwrap()) - at)
    }

    #[test]
    fn a_short_lived_connection_is_retired_a_tenth_of_its_life_early() {
        assert_eq!(
            lead(time::Duration::seconds(20)),
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn a_long_lived_connection_is_retired_at_most_a_minute_early() {
        assert_eq!(lead(time::Duration::hours(12)), Some(MAX_LEAD));
    }

    #[test]
    fn an_expired_certificate_retires_the_connection_at_once() {
        let wall = OffsetDateTime::now_utc();
        let retire = Retire::before_from(
            Some(wall - time::Duration::seconds(5)),
            wall,
            Instant::now(),
        );
        assert!(retire.is_due());
    }

    #[test]
    fn a_connection_with_no_known_expiry_is_never_retired_for_it() {
        let retire = Retire::before(None);
        assert!(!retire.is_due());
        assert!(
            !Retire::before(Some(OffsetDateTime::now_utc() + time::Duration::hours(1))).is_due()
        );
    }
}
