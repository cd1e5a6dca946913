use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;

/// An output that hands every write to the test.
struct Channel(mpsc::Sender<Vec<u8>>);

impl Write for Channel {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = self.0.send(buf.to_vec());
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An output whose writes wait until the test opens the gate, counting
/// what it was given.
struct Gated {
    gate: Arc<Mutex<()>>,
    delivered: Arc<AtomicUsize>,
}

impl Write for Gated {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _open = self.gate.lock().unwrap();
        self.delivered.fetch_add(buf.len(), Ordering::SeqCst);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_line_is_written_without_more_logging_and_in_one_piece() {
    let (tx, rx) = mpsc::channel();
    let (mut log, _flusher) = buffered(Channel(tx)).unwrap();
    log.write_all(b"first line\n").unwrap();
    // The writer's timer writes it: nothing else is logged.
    let written = rx.recv_timeout(Duration::from_secs(10)).expect("written");
    assert_eq!(written, b"first line\n");
}

#[test]
fn lines_from_many_threads_arrive_whole_in_each_threads_order() {
    let (tx, rx) = mpsc::channel();
    let (log, flusher) = buffered(Channel(tx)).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let mut log = log.clone();
            std::thread::spawn(move || {
                for n in 0..5_000 {
                    log.write_all(format!("thread {t} line {n}\n").as_bytes())
                        .unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    drop(flusher);
    let all: Vec<u8> = rx.try_iter().flatten().collect();
    let text = String::from_utf8(all).unwrap();
    let mut next = [0usize; 4];
    let mut lines = 0;
    for line in text.lines() {
        let words: Vec<&str> = line.split(' ').collect();
        assert_eq!(words.len(), 4, "a torn line: {line:?}");
        let (t, n): (usize, usize) = (words[1].parse().unwrap(), words[3].parse().unwrap());
        assert_eq!(n, next[t], "thread {t}'s lines out of order");
        next[t] += 1;
        lines += 1;
    }
    assert_eq!(lines, 20_000, "every line written once");
}

#[test]
fn dropping_the_flusher_writes_what_is_left_at_once() {
    let (tx, rx) = mpsc::channel();
    let (mut log, flusher) = buffered(Channel(tx)).unwrap();
    log.write_all(b"last words\n").unwrap();
    drop(flusher);
    let all: Vec<u8> = rx.try_iter().flatten().collect();
    assert_eq!(all, b"last words\n");
}

#[test]
fn a_stalled_output_makes_logging_wait_and_loses_nothing() {
    const LINE: usize = 1024;
    let gate = Arc::new(Mutex::new(()));
    let delivered = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicUsize::new(0));
    let (log, flusher) = buffered(Gated {
        gate: gate.clone(),
        delivered: delivered.clone(),
    })
    .unwrap();
    // Taken after `flusher`, so released first should the test fail: the
    // flusher's drop waits for the writer.
    let closed = gate.lock().unwrap();
    // Three times the bound, through an output stalled until logging had
    // to wait.
    let total = 3 * MAX_BUFFERED / LINE;
    let producer = {
        let (mut log, accepted) = (log.clone(), accepted.clone());
        std::thread::spawn(move || {
            let mut line = vec![b'x'; LINE - 1];
            line.push(b'\n');
            for _ in 0..total {
                log.write_all(&line).unwrap();
                accepted.fetch_add(LINE, Ordering::SeqCst);
            }
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while flusher.stalls() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "logging never waited for the stalled output"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // Held in memory meanwhile: the buffer and the batch being written,
    // each at most the bound plus the line that crossed it.
    let held = accepted.load(Ordering::SeqCst);
    assert!(
        held <= 2 * (MAX_BUFFERED + LINE),
        "{held} bytes taken in while stalled"
    );
    assert_eq!(
        delivered.load(Ordering::SeqCst),
        0,
        "the output was stalled"
    );
    drop(closed);
    producer.join().unwrap();
    drop(flusher);
    assert_eq!(
        delivered.load(Ordering::SeqCst),
        total * LINE,
        "every byte written"
    );
}
