//! Failed attestations per source address: past a budget in a window, a
//! source's requests are refused before attestation, so bad tokens cannot
//! turn into an unbounded stream of TokenReview calls.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures a source may have in one window.
pub const MAX_FAILURES: u32 = 20;
pub const WINDOW: Duration = Duration::from_secs(60);
/// Sources tracked at once; beyond, new ones are not tracked (an attacker
/// with many addresses must not lock everyone else out).
const MAX_SOURCES: usize = 16_384;

#[derive(Default)]
pub struct FailureLimiter {
    sources: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailureLimiter {
    /// Whether `source` has spent its failures for the current window.
    pub fn is_limited(&self, source: IpAddr) -> bool {
        let sources = self.sources.lock().expect("not poisoned");
        sources
            .get(&source)
            .is_some_and(|(since, n)| since.elapsed() < WINDOW && *n >= MAX_FAILURES)
    }

    /// Counts a failed attestation from `source`.
    pub fn failed(&self, source: IpAddr) {
        let mut sources = self.sources.lock().expect("not poisoned");
        if sources.len() >= MAX_SOURCES && !sources.contains_key(&source) {
            sources.retain(|_, (since, _)| since.elapsed() < WINDOW);
            if sources.len() >= MAX_SOURCES {
                return;
            }
        }
        let entry = sources.entry(source).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
    }
}
