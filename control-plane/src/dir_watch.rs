//! Waiting for a directory to change: inotify (through `notify`), a short
//! settle so a burst of writes is read once, and a periodic rescan for file
//! systems where inotify says nothing (network mounts) or when it cannot be
//! set up. Shared by the policy, trust-bundle and quarantine directories;
//! what counts as a change (a fingerprint of the files) stays with each
//! reader, which re-checks after every wake-up.

use std::path::Path;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::error;

/// After a change event, how long the directory must stay quiet before it
/// is read (an editor or `kubectl cp` writes in several steps).
pub const SETTLE: Duration = Duration::from_millis(15);
/// A full re-check even without events.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(10);

pub struct DirWatch {
    /// `None` once the watcher is gone (or never started): rescans only.
    events: Option<mpsc::Receiver<()>>,
    rescan: Duration,
    // Kept alive for the loop: dropping the watcher stops the events.
    _watcher: Option<notify::RecommendedWatcher>,
}

impl DirWatch {
    /// Watches `dir` (not recursively: ConfigMap volumes swap a `..data`
    /// symlink in the directory itself), rescanning every `rescan`. `what`
    /// names the directory in the log when inotify is unavailable.
    pub fn new(dir: &Path, what: &str, rescan: Duration) -> DirWatch {
        let (tx, rx) = mpsc::channel::<()>(1);
        match watcher(dir, tx) {
            Ok(w) => DirWatch {
                events: Some(rx),
                rescan,
                _watcher: Some(w),
            },
            Err(err) => {
                error!(dir = %dir.display(), error = %err, interval = ?rescan, "cannot watch the {what} with inotify; re-reading it periodically instead");
                DirWatch {
                    events: None,
                    rescan,
                    _watcher: None,
                }
            }
        }
    }

    /// Waits for a change event (then for the burst to settle) or for the
    /// rescan interval. `false` when `shutdown` is set.
    pub async fn next(&mut self, shutdown: &mut watch::Receiver<bool>) -> bool {
        let event = async {
            match self.events.as_mut() {
                Some(events) => events.recv().await,
                None => std::future::pending().await,
            }
        };
        let woke = tokio::select! {
            event = event => Some(event.is_some()),
            _ = tokio::time::sleep(self.rescan) => None,
            _ = shutdown.wait_for(|stop| *stop) => return false,
        };
        match woke {
            // The watcher is gone: rescans only (never a busy loop).
            Some(false) => self.events = None,
            Some(true) => {
                if let Some(events) = self.events.as_mut() {
                    while let Ok(Some(())) = tokio::time::timeout(SETTLE, events.recv()).await {}
                }
            }
            None => {}
        }
        true
    }
}

/// Signals `tx` on every change inside `dir`.
fn watcher(dir: &Path, tx: mpsc::Sender<()>) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_wakes_the_watch_well_before_the_rescan() {
        let dir = tempfile::tempdir().unwrap();
        let mut dir_watch = DirWatch::new(dir.path(), "test directory", Duration::from_secs(3600));
        let (_stop, mut shutdown) = watch::channel(false);
        // Registered at `new`: a write before `next` is not missed.
        std::fs::write(dir.path().join("a.yaml"), "x").unwrap();
        let woke =
            tokio::time::timeout(Duration::from_secs(30), dir_watch.next(&mut shutdown)).await;
        assert_eq!(woke.ok(), Some(true), "no wake-up for a write");
    }

    #[tokio::test]
    async fn a_missing_directory_falls_back_to_rescans() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let mut dir_watch = DirWatch::new(&missing, "test directory", Duration::from_millis(10));
        let (_stop, mut shutdown) = watch::channel(false);
        for _ in 0..3 {
            assert!(dir_watch.next(&mut shutdown).await);
        }
        let (stop, mut shutdown) = watch::channel(false);
        stop.send_replace(true);
        assert!(!dir_watch.next(&mut shutdown).await);
    }
}
