//! A log writer that keeps `write(2)` off the thread that logs.
//!
//! The sidecar logs one access line per request at its default level; a
//! write to stderr (a pipe to the container runtime) per line cost about
//! 10 µs per request (`benches/RESULTS.md`). Here a logging thread only
//! appends the formatted line to a shared buffer; a writer thread writes
//! the buffer out in one call when it is [`FLUSH_AFTER`] old or holds
//! [`WRITE_AT`] bytes. Nothing is dropped: a thread that finds
//! [`MAX_BUFFERED`] bytes waiting blocks until the writer catches up, as
//! it would have on a full pipe. The writer thread sleeps while there is
//! nothing to write, and [`Flusher`] writes what is left when the process
//! ends.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a line may wait before it is written.
pub const FLUSH_AFTER: Duration = Duration::from_millis(10);
/// Written at once when this much is waiting.
pub const WRITE_AT: usize = 64 * 1024;
/// Logging threads wait beyond this much unwritten (never dropped).
pub const MAX_BUFFERED: usize = 4 * 1024 * 1024;

#[derive(Default)]
struct State {
    buf: Vec<u8>,
    closing: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the writer: the first line after an empty buffer, a full
    /// batch, or closing.
    work: Condvar,
    /// Wakes logging threads waiting for room.
    room: Condvar,
    /// Times a logging thread waited for room.
    stalls: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding it cannot leave the buffer inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where a logging thread puts its lines (a `tracing_subscriber`
/// `MakeWriter`, cheap to clone).
#[derive(Clone)]
pub struct Buffered {
    shared: Arc<Shared>,
}

/// Writes what is still buffered and stops the writer thread when dropped.
pub struct Flusher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// A buffered writer in front of `out`, and the guard that flushes it.
pub fn buffered<W: Write + Send + 'static>(out: W) -> io::Result<(Buffered, Flusher)> {
    let shared = Arc::new(Shared::default());
    let writer = shared.clone();
    let thread = std::thread::Builder::new()
        .name("ward-log-writer".into())
        .spawn(move || write_loop(&writer, out))?;
    Ok((
        Buffered {
            shared: shared.clone(),
        },
        Flusher {
            shared,
            thread: Some(thread),
        },
    ))
}

fn write_loop<W: Write>(shared: &Shared, mut out: W) {
    let mut batch = Vec::new();
    loop {
        let mut state = shared.lock();
        while state.buf.is_empty() && !state.closing {
            state = shared.work.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        // Let a batch gather (unless it is already big, or closing).
        if !state.closing && state.buf.len() < WRITE_AT {
            state = shared
                .work
                .wait_timeout_while(state, FLUSH_AFTER, |s| !s.closing && s.buf.len() < WRITE_AT)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        std::mem::swap(&mut batch, &mut state.buf);
        let closing = state.closing;
        drop(state);
        shared.room.notify_all();
        // A log that cannot be written has nowhere to report it.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        if closing && shared.lock().buf.is_empty() {
            return;
        }
    }
}

impl Write for Buffered {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut state = self.shared.lock();
        while state.buf.len() >= MAX_BUFFERED && !state.closing {
            self.shared.stalls.fetch_add(1, Ordering::Relaxed);
            state = self
                .shared
                .room
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        let was_empty = state.buf.is_empty();
        state.buf.extend_from_slice(line);
        let batch_full = state.buf.len() >= WRITE_AT;
        drop(state);
        // The writer sleeps only on an empty buffer or a gathering batch:
        // one wake-up per batch, not per line.
        if was_empty || batch_full {
            self.shared.work.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buffered {
    type Writer = Buffered;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Flusher {
    /// How many times a logging thread waited for the output to catch up.
    pub fn stalls(&self) -> u64 {
        self.shared.stalls.load(Ordering::Relaxed)
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.work.notify_one();
        self.shared.room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests;
