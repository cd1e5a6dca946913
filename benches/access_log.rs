//! The cost, on the thread that logs, of one access-log line as the
//! sidecar writes it at its default level (`info`): formatting plus
//! handing it to stderr, here a pipe drained by another thread (as a
//! container runtime reads a container's stderr).
//! `direct` writes each line to the pipe as it is logged (what `ward-proxy`
//! did before, and `ward_logging::init` still does); `buffered` goes
//! through `ward_logging::buffered` (what `ward-proxy` does now: a writer
//! thread writes batches). `formatting_only` writes into `io::sink()`: the
//! formatting alone, the floor.
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use tracing_subscriber::fmt::MakeWriter;

/// One access line, with the fields the outbound logs.
fn log_one(n: u64) {
    tracing::info!(target: "ward::access", direction = "outbound", peer = "spiffe://cluster.local/ns/shop/sa/cart", method = "GET", path = "/items/42", status = 200u16, outcome = "served", duration_us = n, "request");
}

/// A pipe whose reading end another thread drains.
fn drained_pipe() -> io::PipeWriter {
    let (mut reader, writer) = io::pipe().expect("a pipe");
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
    });
    writer
}

#[derive(Clone)]
struct Direct(Arc<io::PipeWriter>);

impl<'a> MakeWriter<'a> for Direct {
    type Writer = &'a io::PipeWriter;
    fn make_writer(&'a self) -> Self::Writer {
        &self.0
    }
}

fn bench_with<W>(c: &mut Criterion, name: &str, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(writer)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let mut n = 0u64;
        c.bench_function(name, |b| {
            b.iter(|| {
                n += 1;
                log_one(n)
            })
        });
    });
}

fn access_log(c: &mut Criterion) {
    bench_with(c, "formatting_only", io::sink);
    bench_with(c, "direct", Direct(Arc::new(drained_pipe())));
    let (buffered, flusher) = ward_logging::buffered::buffered(drained_pipe()).expect("writer");
    bench_with(c, "buffered", buffered);
    drop(flusher);
    let _ = io::stderr().flush();
}

criterion_group!(benches, access_log);
criterion_main!(benches);
