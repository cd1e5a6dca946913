//! `ward-proxy`: the Ward sidecar.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ward_proxy::capture::cli::{InitArgs, run_init};
use ward_proxy::config::RunArgs;
use ward_proxy::orig_dst;
use ward_proxy::probe::{self, ProbeArgs, WaitReadyArgs};

#[derive(Debug, Parser)]
#[command(name = "ward-proxy", about = "Ward sidecar proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install (or with --remove, remove) the iptables rules that redirect
    /// the pod's TCP traffic into the proxy. Needs CAP_NET_ADMIN.
    Init(InitArgs),
    /// Run the proxy: transparent (iptables capture) by default, explicit
    /// with --inbound/--outbound listeners.
    Run(Box<RunArgs>),
    /// Check the local proxy's /ready or /live (the sidecar's exec probes):
    /// exit 0 on 200, 1 with the reason otherwise.
    Probe(ProbeArgs),
    /// Poll /ready every 200 ms until it answers 200 (exit 0) or --timeout
    /// passed (exit 1): the classic sidecar's postStart hook.
    WaitReady(WaitReadyArgs),
    /// Test probe: answer each connection with its original destination.
    #[command(hide = true)]
    DebugOrigDst(DebugOrigDstArgs),
}

#[derive(Debug, clap::Args)]
struct DebugOrigDstArgs {
    /// Listen here (repeatable) and answer `<local> <original destination>`.
    #[arg(long, required_unless_present = "connect")]
    listen: Vec<SocketAddr>,
    /// Instead, connect here and print the answer.
    #[arg(long, conflicts_with = "listen")]
    connect: Option<SocketAddr>,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Init(args) => run_init(&args).map_err(|e| e.to_string()),
        Command::DebugOrigDst(args) => debug_orig_dst(args),
        Command::Run(args) => run(*args),
        Command::Probe(args) => probe::run_blocking(probe::probe(&args)),
        Command::WaitReady(args) => probe::run_blocking(probe::wait_ready(&args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("ward-proxy: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> Result<(), String> {
    // Written as each line is logged: tests and operators read the log
    // right after an event. ward_logging::init_buffered (off the request
    // path, benches/RESULTS.md) is not used yet for that reason.
    ward_logging::init(args.log_format, &args.log_level).map_err(|e| e.to_string())?;
    let runtime = match args.workers {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    }
    .map_err(|e| e.to_string())?;
    runtime
        .block_on(ward_proxy::proxy::run(args))
        .map_err(|e| format!("{e:#}"))
}

fn debug_orig_dst(args: DebugOrigDstArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        match args.connect {
            Some(addr) => {
                let reply =
                    tokio::time::timeout(Duration::from_secs(5), orig_dst::probe_connect(addr))
                        .await
                        .map_err(|_| format!("{addr}: timed out"))?
                        .map_err(|e| format!("{addr}: {e}"))?;
                print!("{reply}");
                Ok(())
            }
            None => orig_dst::serve_probe(&args.listen)
                .await
                .map_err(|e| e.to_string()),
        }
    })
}
