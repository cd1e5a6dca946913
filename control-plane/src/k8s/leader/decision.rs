//! The election's decision, pure: from the Lease as read and this
//! replica's monotonic clock, what to do next.
//!
//! Expiry is judged as client-go judges it: by how long the record has
//! stayed unchanged *as this replica saw it*, never by comparing the
//! holder's `renewTime` with the local wall clock, so a skewed clock on
//! either side cannot make a live holder look expired. A replica that has
//! just started therefore waits a whole lease duration before taking a
//! lease it finds held (it cannot know how old the record is).

use std::time::{Duration, Instant};

/// The parts of a Lease the election decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `metadata.resourceVersion`: changes on every write, so a holder
    /// that renews always looks changed.
    pub version: String,
    /// `spec.holderIdentity`; `None` or empty once released.
    pub holder: Option<String>,
    /// `spec.leaseDurationSeconds` as the holder wrote it.
    pub duration: Option<Duration>,
}

/// What to do with the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// There is no Lease: create it, held by this replica.
    Create,
    /// This replica holds it: renew it.
    Renew,
    /// Released, or its holder stopped renewing it for a whole lease
    /// duration: take it.
    Take,
    /// Someone else holds it; it cannot expire for `expires_in` yet.
    Follow {
        holder: String,
        expires_in: Duration,
    },
}

/// Remembers which record this replica saw last and since when.
#[derive(Debug, Default)]
pub struct Observer {
    seen: Option<(String, Instant)>,
}

impl Observer {
    /// The next step for the replica `me`, having read `record` at `now`.
    /// `default_duration` applies when the record names none.
    pub fn step(
        &mut self,
        me: &str,
        record: Option<&Record>,
        default_duration: Duration,
        now: Instant,
    ) -> Step {
        let Some(record) = record else {
            self.seen = None;
            return Step::Create;
        };
        let holder = match record.holder.as_deref() {
            None | Some("") => return Step::Take,
            Some(holder) if holder == me => return Step::Renew,
            Some(holder) => holder,
        };
        let since = match &self.seen {
            Some((version, at)) if *version == record.version => *at,
            _ => {
                self.seen = Some((record.version.clone(), now));
                now
            }
        };
        let duration = record
            .duration
            .filter(|d| !d.is_zero())
            .unwrap_or(default_duration);
        let unchanged_for = now.saturating_duration_since(since);
        if unchanged_for >= duration {
            Step::Take
        } else {
            Step::Follow {
                holder: holder.to_owned(),
                expires_in: duration - unchanged_for,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);
    const DEFAULT: Duration = Duration::from_secs(15);

    fn held(version: &str, holder: &str, seconds: u64) -> Record {
        Record {
            version: version.to_owned(),
            holder: Some(holder.to_owned()),
            duration: Some(Duration::from_secs(seconds)),
        }
    }

    fn follow(holder: &str, expires_in: Duration) -> Step {
        Step::Follow {
            holder: holder.to_owned(),
            expires_in,
        }
    }

    #[test]
    fn no_lease_is_created_and_an_own_lease_is_renewed() {
        let mut o = Observer::default();
        let t0 = Instant::now();
        assert_eq!(o.step("a", None, DEFAULT, t0), Step::Create);
        assert_eq!(
            o.step("a", Some(&held("1", "a", 15)), DEFAULT, t0),
            Step::Renew
        );
        // Even long after the last renewal: nobody else took it (a write
        // by someone else would carry another holder).
        assert_eq!(
            o.step("a", Some(&held("1", "a", 15)), DEFAULT, t0 + 60 * SECOND),
            Step::Renew
        );
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let mut o = Observer::default();
        let t0 = Instant::now();
        for holder in [None, Some(String::new())] {
            let record = Record {
                version: "7".into(),
                holder,
                duration: Some(15 * SECOND),
            };
            assert_eq!(o.step("b", Some(&record), DEFAULT, t0), Step::Take);
        }
    }

    #[test]
    fn a_held_lease_is_taken_only_after_a_whole_duration_unchanged_as_seen_here() {
        let mut o = Observer::default();
        let t0 = Instant::now();
        let record = held("5", "a", 15);
        // First sight: its age is unknown, so a whole duration from now.
        assert_eq!(
            o.step("b", Some(&record), DEFAULT, t0),
            follow("a", 15 * SECOND)
        );
        assert_eq!(
            o.step("b", Some(&record), DEFAULT, t0 + 14 * SECOND),
            follow("a", SECOND)
        );
        assert_eq!(
            o.step("b", Some(&record), DEFAULT, t0 + 15 * SECOND),
            Step::Take
        );
    }

    #[test]
    fn a_renewal_restarts_the_count() {
        let mut o = Observer::default();
        let t0 = Instant::now();
        o.step("b", Some(&held("5", "a", 15)), DEFAULT, t0);
        // Renewed (new resourceVersion) at 10 s: 15 s from there.
        assert_eq!(
            o.step("b", Some(&held("6", "a", 15)), DEFAULT, t0 + 10 * SECOND),
            follow("a", 15 * SECOND)
        );
        assert_eq!(
            o.step("b", Some(&held("6", "a", 15)), DEFAULT, t0 + 20 * SECOND),
            follow("a", 5 * SECOND)
        );
        assert_eq!(
            o.step("b", Some(&held("6", "a", 15)), DEFAULT, t0 + 25 * SECOND),
            Step::Take
        );
    }

    #[test]
    fn the_holders_duration_counts_and_a_missing_one_falls_back() {
        let t0 = Instant::now();
        let mut o = Observer::default();
        assert_eq!(
            o.step("b", Some(&held("1", "a", 40)), DEFAULT, t0 + 20 * SECOND),
            follow("a", 40 * SECOND)
        );
        for duration in [None, Some(Duration::ZERO)] {
            let mut o = Observer::default();
            let record = Record {
                version: "1".into(),
                holder: Some("a".into()),
                duration,
            };
            assert_eq!(
                o.step("b", Some(&record), DEFAULT, t0),
                follow("a", DEFAULT)
            );
        }
    }

    #[test]
    fn a_deleted_and_recreated_lease_is_seen_afresh() {
        let mut o = Observer::default();
        let t0 = Instant::now();
        o.step("b", Some(&held("5", "a", 15)), DEFAULT, t0);
        assert_eq!(o.step("b", None, DEFAULT, t0 + 10 * SECOND), Step::Create);
        // Someone else created it first (same resourceVersion string by
        // chance): counted from now, not from the old sighting.
        assert_eq!(
            o.step("b", Some(&held("5", "c", 15)), DEFAULT, t0 + 11 * SECOND),
            follow("c", 15 * SECOND)
        );
    }
}
