//! `ward-testapp load`: a bounded HTTP load client for Service tests.
//!
//! `--requests N` idempotent `GET`s of `--path`, at most `--concurrency C`
//! in flight: HTTP/1.1 keep-alive on C connections (one worker each), or
//! with `--http2` C concurrent streams over `--connections K` h2c
//! (prior-knowledge) connections. `--requests-per-connection M` closes a
//! connection after M requests and opens a new one (a Service balances
//! connections, not requests, so this spreads a run over endpoints).
//! `--interval-ms` paces each worker (steady load while replicas come and
//! go).
//!
//! Nothing is retried: a request that fails (connect error, reset, protocol
//! error, or no complete answer within `--timeout-ms`) counts as an error,
//! its connection is dropped, and the worker's next request opens a new one.
//! A keep-alive connection the server closed *between* requests is replaced
//! without counting an error (no request was sent on it).
//!
//! Prints one JSON line, and exits 0 whatever the outcome (the test
//! asserts):
//! `{"requests": N, "ok": <2xx>, "statuses": {"200": n, …}, "errors": n,
//! "error_samples": [<at most 5>], "names": {"<name from the JSON body>": n},
//! "connections": <opened>, "elapsed_ms": …, "max_latency_ms": …}`.
//! `names` counts the `"name"` field of JSON answers (what `/echo` of
//! `ward-testapp http --name X` reports), 2xx or not.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Error samples kept in the summary.
const MAX_SAMPLES: usize = 5;

pub struct LoadOpts {
    pub connect: String,
    pub authority: Option<String>,
    pub requests: u64,
    pub concurrency: usize,
    pub connections: usize,
    pub requests_per_connection: u64,
    pub path: String,
    pub http2: bool,
    pub timeout: Duration,
    pub interval: Option<Duration>,
}

#[derive(Default)]
struct Summary {
    ok: u64,
    statuses: BTreeMap<String, u64>,
    errors: u64,
    error_samples: Vec<String>,
    names: BTreeMap<String, u64>,
    connections: u64,
    max_latency: Duration,
}

struct Shared {
    opts: LoadOpts,
    authority: String,
    next: AtomicU64,
    summary: Mutex<Summary>,
}

impl Shared {
    /// Claims the next request number, if any is left.
    fn claim(&self) -> Option<u64> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < self.opts.requests).then_some(i)
    }

    fn summary(&self) -> std::sync::MutexGuard<'_, Summary> {
        self.summary.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn connected(&self) {
        self.summary().connections += 1;
    }

    fn record(&self, request: u64, latency: Duration, outcome: Result<(u16, Option<String>)>) {
        let mut summary = self.summary();
        summary.max_latency = summary.max_latency.max(latency);
        match outcome {
            Ok((status, name)) => {
                if (200..300).contains(&status) {
                    summary.ok += 1;
                }
                *summary.statuses.entry(status.to_string()).or_default() += 1;
                if let Some(name) = name {
                    *summary.names.entry(name).or_default() += 1;
                }
            }
            Err(e) => {
                summary.errors += 1;
                if summary.error_samples.len() < MAX_SAMPLES {
                    summary
                        .error_samples
                        .push(format!("request {request}: {e:#}"));
                }
            }
        }
    }
}

/// Runs the load and returns the summary (the line to print).
pub async fn run(opts: LoadOpts) -> Result<Value> {
    anyhow::ensure!(opts.concurrency >= 1, "--concurrency must be at least 1");
    anyhow::ensure!(opts.connections >= 1, "--connections must be at least 1");
    anyhow::ensure!(opts.path.starts_with('/'), "--path must start with '/'");
    let authority = opts
        .authority
        .clone()
        .unwrap_or_else(|| opts.connect.clone());
    // Fail on a bad authority now rather than once per request.
    format!("http://{authority}{}", opts.path)
        .parse::<http::Uri>()
        .with_context(|| format!("bad authority {authority:?} or path"))?;
    let workers = opts.concurrency;
    let h2_slots = if opts.http2 { opts.connections } else { 0 };
    let shared = Arc::new(Shared {
        opts,
        authority,
        next: AtomicU64::new(0),
        summary: Mutex::new(Summary::default()),
    });
    let slots: Arc<Vec<H2Slot>> = Arc::new((0..h2_slots).map(|_| H2Slot::default()).collect());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..workers {
        let shared = shared.clone();
        if shared.opts.http2 {
            let slots = slots.clone();
            tasks.spawn(async move { h2_worker(&shared, &slots[worker % slots.len()]).await });
        } else {
            tasks.spawn(async move { h1_worker(&shared).await });
        }
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("a load worker panicked")?;
    }
    for slot in slots.iter() {
        if let Some(conn) = slot.lock().await.take() {
            conn.task.abort();
        }
    }
    let elapsed = started.elapsed();
    let summary = shared.summary();
    Ok(json!({
        "requests": shared.opts.requests,
        "ok": summary.ok,
        "statuses": summary.statuses,
        "errors": summary.errors,
        "error_samples": summary.error_samples,
        "names": summary.names,
        "connections": summary.connections,
        "elapsed_ms": elapsed.as_millis() as u64,
        "max_latency_ms": summary.max_latency.as_millis() as u64,
    }))
}

fn pacer(shared: &Shared) -> Option<tokio::time::Interval> {
    shared.opts.interval.map(|period| {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    })
}

async fn tcp_connect(addr: &str) -> Result<TcpStream> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Reads an answer: its status and, for a JSON body, its `"name"`.
async fn answer(res: Response<Incoming>) -> Result<(u16, Option<String>)> {
    let status = res.status().as_u16();
    let body = res
        .into_body()
        .collect()
        .await
        .context("reading the response body")?
        .to_bytes();
    let name = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("name").and_then(Value::as_str).map(str::to_owned));
    Ok((status, name))
}

fn timed_out(timeout: Duration) -> anyhow::Error {
    anyhow!("no complete answer within {} ms", timeout.as_millis())
}

/// An HTTP/1.1 connection and how many requests it carried.
struct H1Conn {
    sender: http1::SendRequest<Empty<Bytes>>,
    task: JoinHandle<()>,
    used: u64,
}

impl Drop for H1Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn h1_connect(shared: &Shared) -> Result<H1Conn> {
    let stream = tcp_connect(&shared.opts.connect).await?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake")?;
    shared.connected();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(H1Conn {
        sender,
        task,
        used: 0,
    })
}

async fn h1_worker(shared: &Shared) {
    let mut pacer = pacer(shared);
    let mut conn: Option<H1Conn> = None;
    while let Some(request) = shared.claim() {
        if let Some(pacer) = pacer.as_mut() {
            pacer.tick().await;
        }
        let per_conn = shared.opts.requests_per_connection;
        if conn
            .as_ref()
            .is_some_and(|c| per_conn > 0 && c.used >= per_conn)
        {
            conn = None;
        }
        let started = Instant::now();
        let outcome = tokio::time::timeout(shared.opts.timeout, h1_request(shared, &mut conn))
            .await
            .unwrap_or_else(|_| Err(timed_out(shared.opts.timeout)));
        if outcome.is_err() {
            conn = None;
        }
        shared.record(request, started.elapsed(), outcome);
    }
}

async fn h1_request(shared: &Shared, slot: &mut Option<H1Conn>) -> Result<(u16, Option<String>)> {
    // A kept-alive connection the server closed since: replace it (nothing
    // was sent on it, so this is no retry).
    if let Some(conn) = slot.as_mut()
        && conn.sender.ready().await.is_err()
    {
        *slot = None;
    }
    if slot.is_none() {
        *slot = Some(h1_connect(shared).await?);
    }
    let conn = slot.as_mut().expect("connected above");
    conn.sender
        .ready()
        .await
        .context("connection closed before the request")?;
    conn.used += 1;
    let req = Request::get(shared.opts.path.as_str())
        .header(header::HOST, shared.authority.as_str())
        .header(header::USER_AGENT, "ward-testapp-load")
        .body(Empty::new())?;
    let res = conn.sender.send_request(req).await.context("HTTP/1.1")?;
    answer(res).await
}

/// An HTTP/2 connection shared by several workers.
struct H2Conn {
    sender: http2::SendRequest<Empty<Bytes>>,
    task: JoinHandle<()>,
    generation: u64,
    used: u64,
}

type H2Slot = tokio::sync::Mutex<Option<H2Conn>>;

static H2_GENERATION: AtomicU64 = AtomicU64::new(0);

async fn h2_worker(shared: &Shared, slot: &H2Slot) {
    let mut pacer = pacer(shared);
    while let Some(request) = shared.claim() {
        if let Some(pacer) = pacer.as_mut() {
            pacer.tick().await;
        }
        let started = Instant::now();
        let mut generation = None;
        let outcome = tokio::time::timeout(
            shared.opts.timeout,
            h2_request(shared, slot, &mut generation),
        )
        .await
        .unwrap_or_else(|_| Err(timed_out(shared.opts.timeout)));
        if outcome.is_err() {
            // Drop the connection that failed, unless another worker has
            // already replaced it.
            let mut slot = slot.lock().await;
            if generation.is_some()
                && slot.as_ref().map(|c| c.generation) == generation
                && let Some(conn) = slot.take()
            {
                conn.task.abort();
            }
        }
        shared.record(request, started.elapsed(), outcome);
    }
}

async fn h2_request(
    shared: &Shared,
    slot: &H2Slot,
    generation: &mut Option<u64>,
) -> Result<(u16, Option<String>)> {
    let mut sender = {
        let mut slot = slot.lock().await;
        let per_conn = shared.opts.requests_per_connection;
        let stale = slot
            .as_ref()
            .is_some_and(|c| c.sender.is_closed() || (per_conn > 0 && c.used >= per_conn));
        if stale {
            // In-flight streams keep the old connection until they finish.
            slot.take();
        }
        if slot.is_none() {
            let stream = tcp_connect(&shared.opts.connect).await?;
            let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .context("HTTP/2 handshake")?;
            shared.connected();
            let task = tokio::spawn(async move {
                let _ = conn.await;
            });
            *slot = Some(H2Conn {
                sender,
                task,
                generation: H2_GENERATION.fetch_add(1, Ordering::Relaxed),
                used: 0,
            });
        }
        let conn = slot.as_mut().expect("connected above");
        conn.used += 1;
        *generation = Some(conn.generation);
        conn.sender.clone()
    };
    sender
        .ready()
        .await
        .context("HTTP/2 connection not ready")?;
    let req = Request::get(format!("http://{}{}", shared.authority, shared.opts.path))
        .header(header::USER_AGENT, "ward-testapp-load")
        .body(Empty::new())?;
    let res = sender.send_request(req).await.context("HTTP/2")?;
    answer(res).await
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;

    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::server::conn::auto;
    use tokio::net::TcpListener;

    use super::*;

    /// A server on 127.0.0.1: `/echo` answers `{"name": NAME}`, `/status/N`
    /// answers N, `/close` answers 200 with `Connection: close`, `/hang`
    /// never answers.
    async fn server(name: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let service = service_fn(move |req: Request<Incoming>| async move {
                    let path = req.uri().path().to_owned();
                    let mut res = Response::new(Full::new(Bytes::new()));
                    if path == "/echo" {
                        *res.body_mut() =
                            Full::new(Bytes::from(json!({ "name": name }).to_string()));
                    } else if let Some(code) = path.strip_prefix("/status/") {
                        *res.status_mut() =
                            http::StatusCode::from_u16(code.parse().unwrap()).unwrap();
                    } else if path == "/close" {
                        res.headers_mut()
                            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
                    } else if path == "/hang" {
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, Infallible>(res)
                });
                tokio::spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    fn opts(addr: SocketAddr, requests: u64, concurrency: usize, path: &str) -> LoadOpts {
        LoadOpts {
            connect: addr.to_string(),
            authority: None,
            requests,
            concurrency,
            connections: 1,
            requests_per_connection: 0,
            path: path.to_owned(),
            http2: false,
            timeout: Duration::from_secs(5),
            interval: None,
        }
    }

    #[tokio::test]
    async fn http1_keep_alive_counts_statuses_names_and_connections() {
        let addr = server("alpha").await;
        let summary = run(opts(addr, 40, 4, "/echo")).await.unwrap();
        assert_eq!(summary["ok"], 40, "{summary}");
        assert_eq!(summary["statuses"]["200"], 40, "{summary}");
        assert_eq!(summary["names"]["alpha"], 40, "{summary}");
        assert_eq!(summary["errors"], 0, "{summary}");
        assert_eq!(summary["connections"], 4, "{summary}");

        let mut o = opts(addr, 40, 4, "/echo");
        o.requests_per_connection = 5;
        let summary = run(o).await.unwrap();
        assert_eq!(summary["ok"], 40, "{summary}");
        assert_eq!(summary["connections"], 8, "{summary}");

        let summary = run(opts(addr, 10, 2, "/status/503")).await.unwrap();
        assert_eq!(summary["ok"], 0, "{summary}");
        assert_eq!(summary["statuses"]["503"], 10, "{summary}");
        assert_eq!(summary["errors"], 0, "{summary}");
    }

    #[tokio::test]
    async fn http2_spreads_streams_over_the_connections() {
        let addr = server("beta").await;
        let mut o = opts(addr, 60, 8, "/echo");
        o.http2 = true;
        o.connections = 2;
        let summary = run(o).await.unwrap();
        assert_eq!(summary["ok"], 60, "{summary}");
        assert_eq!(summary["names"]["beta"], 60, "{summary}");
        assert_eq!(summary["connections"], 2, "{summary}");
    }

    #[tokio::test]
    async fn a_connection_closed_between_requests_is_replaced_without_an_error() {
        let addr = server("gamma").await;
        let summary = run(opts(addr, 10, 1, "/close")).await.unwrap();
        assert_eq!(summary["ok"], 10, "{summary}");
        assert_eq!(summary["errors"], 0, "{summary}");
        assert_eq!(summary["connections"], 10, "{summary}");
    }

    #[tokio::test]
    async fn failures_are_counted_not_retried_with_at_most_five_samples() {
        let closed = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap()
        };
        let summary = run(opts(closed, 7, 2, "/echo")).await.unwrap();
        assert_eq!(summary["errors"], 7, "{summary}");
        assert_eq!(summary["ok"], 0, "{summary}");
        let samples = summary["error_samples"].as_array().unwrap();
        assert_eq!(samples.len(), 5, "{summary}");
        assert!(
            samples[0].as_str().unwrap().contains("refused"),
            "{summary}"
        );

        let addr = server("delta").await;
        let mut o = opts(addr, 3, 3, "/hang");
        o.timeout = Duration::from_millis(200);
        let started = Instant::now();
        // The per-request timeout firing is the behaviour (`/hang` never
        // answers): not before it, and within a bound that only turns a
        // timeout that never fires into a failure (generous).
        let summary = tokio::time::timeout(Duration::from_secs(30), run(o))
            .await
            .expect("the 200 ms request timeout fired")
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(summary["errors"], 3, "{summary}");
        assert!(
            summary["error_samples"][0]
                .as_str()
                .unwrap()
                .contains("no complete answer within 200 ms"),
            "{summary}"
        );
    }
}
