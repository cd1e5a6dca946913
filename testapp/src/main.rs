//! `ward-testapp`: the application peers Ward's end-to-end tests run inside
//! pods, and the clients curl cannot replace.
//!
//! Servers print exactly one stdout line, `listening on <addr>`, once they
//! accept connections (logs go to stderr), and exit 0 after draining on
//! SIGTERM/SIGINT. Clients exit 0 when every check passed, 1 when a check
//! failed or an error occurred, 3 on `--timeout-ms` (2 is clap's usage
//! error). `load` is the exception: it prints a JSON summary and exits 0
//! whatever the requests' outcome (see `load.rs`).
#![forbid(unsafe_code)]

mod clients;
mod grpc;
mod http_server;
mod load;
mod tcp;
mod util;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ward-testapp", version, about = "Ward end-to-end test peers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct ServerOpts {
    /// Address to listen on (port 0 picks one; see the `listening on` line).
    #[arg(long)]
    listen: String,
    /// On SIGTERM, how long open connections may take to finish.
    #[arg(long, default_value_t = 5000)]
    drain_ms: u64,
}

#[derive(Args)]
struct ClientOpts {
    /// Address to connect to (host:port).
    #[arg(long)]
    connect: String,
    /// Give up (exit 3) after this long.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
}

#[derive(Subcommand)]
enum Command {
    /// HTTP/1.1 + h2c server: /echo, /sink, /source, /status/<code>, /slow, /ws, CONNECT.
    Http {
        #[command(flatten)]
        server: ServerOpts,
        /// Reported as "name" by /echo.
        #[arg(long, default_value = "ward-testapp")]
        name: String,
    },
    /// gRPC-shaped h2c server: /ward.test.Echo/Stream (bidi echo), /ward.test.Echo/Fail.
    Grpc {
        #[command(flatten)]
        server: ServerOpts,
    },
    /// Echoes bytes; on the client's half-close writes `bye <n>\n` and half-closes.
    TcpEcho {
        #[command(flatten)]
        server: ServerOpts,
    },
    /// Server-speaks-first: sends the banner, answers `250 <line>`, `221 bye` on QUIT.
    Banner {
        #[command(flatten)]
        server: ServerOpts,
        /// First line sent on accept (`\r\n` is appended).
        #[arg(long, default_value = "220 ward-test ESMTP ready")]
        banner: String,
    },
    /// h2c bidi-streaming client for `grpc`; prints a JSON summary.
    GrpcClient {
        #[command(flatten)]
        client: ClientOpts,
        /// :authority (default: the --connect address).
        #[arg(long)]
        authority: Option<String>,
        /// Number of messages to ping-pong.
        #[arg(long)]
        messages: u64,
        /// gRPC method path.
        #[arg(long, default_value = grpc::STREAM_METHOD)]
        method: String,
    },
    /// WebSocket upgrade handshake, then a raw byte echo; prints `echo: TEXT`.
    WsClient {
        #[command(flatten)]
        client: ClientOpts,
        /// Host header (default: the --connect address).
        #[arg(long)]
        authority: Option<String>,
        /// Request path of the upgrade.
        #[arg(long, default_value = "/ws")]
        path: String,
        /// Bytes to send and expect back.
        #[arg(long)]
        message: String,
    },
    /// CONNECT to --target (HTTP/1.1, or h2c with --http2), then a raw byte echo; prints `echo: TEXT`.
    ConnectClient {
        #[command(flatten)]
        client: ClientOpts,
        /// host:port put in the CONNECT request.
        #[arg(long)]
        target: String,
        /// Bytes to send through the tunnel and expect back.
        #[arg(long)]
        message: String,
        /// CONNECT as an HTTP/2 stream (h2c prior knowledge) instead of HTTP/1.1.
        #[arg(long)]
        http2: bool,
    },
    /// Writes TEXT (or N pattern bytes), half-closes, reads to EOF; expects echo + `bye <n>`.
    TcpClient {
        #[command(flatten)]
        client: ClientOpts,
        /// Text to send (printed back verbatim, followed by the `bye` line).
        #[arg(long, required_unless_present = "bytes", conflicts_with = "bytes")]
        send: Option<String>,
        /// Send N generated pattern bytes instead (echo checked on the fly).
        #[arg(long)]
        bytes: Option<u64>,
    },
    /// Reads the banner first, then HELO x / QUIT; prints the transcript.
    BannerClient {
        #[command(flatten)]
        client: ClientOpts,
        /// Also require the banner to be exactly this.
        #[arg(long)]
        expect_banner: Option<String>,
    },
    /// N idempotent GETs over C keep-alive connections (or h2c streams); prints a JSON summary, exits 0.
    Load {
        /// Address to connect to (host:port; names resolve through /etc/hosts, DNS).
        #[arg(long)]
        connect: String,
        /// Host header / :authority (default: the --connect address).
        #[arg(long)]
        authority: Option<String>,
        /// Total number of requests.
        #[arg(long)]
        requests: u64,
        /// Requests in flight at once: HTTP/1.1 connections, or HTTP/2 streams.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// With --http2: connections the streams are spread over.
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Open a new connection after this many requests on one (0: never).
        #[arg(long, default_value_t = 0)]
        requests_per_connection: u64,
        /// Request path.
        #[arg(long, default_value = "/echo")]
        path: String,
        /// h2c with prior knowledge instead of HTTP/1.1.
        #[arg(long)]
        http2: bool,
        /// Per request (connect included): past it the request is an error.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        /// Each worker starts a request at most every N ms (0: back to back).
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
    },
    /// Streams N generated pattern bytes as a POST body; prints the server's JSON.
    Upload {
        #[command(flatten)]
        client: ClientOpts,
        /// Host header / :authority (default: the --connect address).
        #[arg(long)]
        authority: Option<String>,
        /// Body size; generated on the fly, never buffered.
        #[arg(long)]
        bytes: u64,
        /// Request path (`verify=pattern` is appended to the query).
        #[arg(long, default_value = "/sink")]
        path: String,
        /// Use HTTP/2 prior knowledge (h2c) instead of HTTP/1.1.
        #[arg(long)]
        http2: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ward-testapp: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(cli.command));
    runtime.shutdown_timeout(Duration::from_millis(100));
    code
}

async fn run(command: Command) -> ExitCode {
    let server = |name: &str, result: anyhow::Result<()>| match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ward-testapp {name}: {e:#}");
            ExitCode::FAILURE
        }
    };
    let drain = |opts: &ServerOpts| Duration::from_millis(opts.drain_ms);
    let stage = util::Stage::default();
    let (name, client, work): (&str, ClientOpts, _) = match command {
        Command::Http { server: s, name } => {
            return server("http", http_server::run(&s.listen, name, drain(&s)).await);
        }
        Command::Grpc { server: s } => {
            return server("grpc", grpc::run(&s.listen, drain(&s)).await);
        }
        Command::TcpEcho { server: s } => {
            return server("tcp-echo", tcp::run_echo(&s.listen, drain(&s)).await);
        }
        Command::Banner { server: s, banner } => {
            return server(
                "banner",
                tcp::run_banner(&s.listen, banner, drain(&s)).await,
            );
        }
        Command::Load {
            connect,
            authority,
            requests,
            concurrency,
            connections,
            requests_per_connection,
            path,
            http2,
            timeout_ms,
            interval_ms,
        } => {
            let opts = load::LoadOpts {
                connect,
                authority,
                requests,
                concurrency,
                connections,
                requests_per_connection,
                path,
                http2,
                timeout: Duration::from_millis(timeout_ms),
                interval: (interval_ms > 0).then(|| Duration::from_millis(interval_ms)),
            };
            return match load::run(opts).await {
                Ok(summary) => {
                    println!("{summary}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ward-testapp load: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::GrpcClient {
            client,
            authority,
            messages,
            method,
        } => {
            let (addr, stage) = (client.connect.clone(), stage.clone());
            let work: ClientFuture = Box::pin(async move {
                clients::grpc(&addr, authority.as_deref(), &method, messages, &stage).await
            });
            ("grpc-client", client, work)
        }
        Command::WsClient {
            client,
            authority,
            path,
            message,
        } => {
            let (addr, stage) = (client.connect.clone(), stage.clone());
            let work: ClientFuture = Box::pin(async move {
                clients::websocket(&addr, authority.as_deref(), &path, &message, &stage).await
            });
            ("ws-client", client, work)
        }
        Command::ConnectClient {
            client,
            target,
            message,
            http2,
        } => {
            let (addr, stage) = (client.connect.clone(), stage.clone());
            let work: ClientFuture =
                Box::pin(
                    async move { clients::tunnel(&addr, &target, &message, http2, &stage).await },
                );
            ("connect-client", client, work)
        }
        Command::TcpClient {
            client,
            send,
            bytes,
        } => {
            let (addr, stage) = (client.connect.clone(), stage.clone());
            let work: ClientFuture =
                Box::pin(async move { clients::tcp(&addr, send.as_deref(), bytes, &stage).await });
            ("tcp-client", client, work)
        }
        Command::BannerClient {
            client,
            expect_banner,
        } => {
            let (addr, stage) = (client.connect.clone(), stage.clone());
            let work: ClientFuture =
                Box::pin(
                    async move { clients::banner(&addr, expect_banner.as_deref(), &stage).await },
                );
            ("banner-client", client, work)
        }
        Command::Upload {
            client,
            authority,
            bytes,
            path,
            http2,
        } => {
            let (addr, stage) = (client.connect.clone(), stage.clone());
            let work: ClientFuture = Box::pin(async move {
                clients::upload(&addr, authority.as_deref(), &path, bytes, http2, &stage).await
            });
            ("upload", client, work)
        }
    };
    match tokio::time::timeout(Duration::from_millis(client.timeout_ms), work).await {
        Ok(Ok(true)) => ExitCode::SUCCESS,
        Ok(Ok(false)) => {
            eprintln!("ward-testapp {name}: check failed");
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            eprintln!("ward-testapp {name}: error: {e:#}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!(
                "ward-testapp {name}: timed out after {} ms (waiting for: {})",
                client.timeout_ms,
                stage.get()
            );
            ExitCode::from(3)
        }
    }
}

type ClientFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<bool>> + Send>>;
