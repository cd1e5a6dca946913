//! `ward`: the operator CLI (identities, CA, join tokens, quarantine and
//! its audit trail, the live mesh's inventory and decisions) and the demo.
#![forbid(unsafe_code)]

mod cli;
mod demo;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ward",
    version,
    about = "Ward service mesh: operator CLI and demo"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a control plane and meshed workloads on this machine and show mTLS at work.
    Demo(demo::DemoArgs),
    /// Parse and verify SPIFFE IDs and X.509-SVIDs.
    #[command(subcommand)]
    Identity(cli::identity::IdentityCommand),
    /// Create or inspect the control plane's certificate authority.
    #[command(subcommand)]
    Ca(cli::ca::CaCommand),
    /// Mint join tokens that let a workload enrol once.
    #[command(subcommand)]
    Token(cli::token::TokenCommand),
    /// Add the ward sidecar to Kubernetes manifests, as the injector webhook would.
    Inject(cli::inject::InjectArgs),
    /// Check requests against authorization policies, and lint policies.
    #[command(subcommand)]
    Authz(cli::authz::AuthzCommand),
    /// Cut an identity, a pod or one certificate off the mesh (or --lift it).
    Quarantine(cli::quarantine::QuarantineArgs),
    /// List the audit trail: every quarantine and lift, who, when, why, what.
    Audit(cli::quarantine::AuditArgs),
    /// The live inventory: every connected sidecar, its identity,
    /// certificate, build, and whether it enforces the current policies.
    Status(cli::status::StatusArgs),
    /// Check the installed mesh: control plane ready, sidecars connected
    /// and in sync, certificates, rejected policies, plaintext ports.
    /// ✓ or ✗ with the fix; exit 1 when a check fails.
    Check(cli::check::CheckArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Identity(cmd) => cli::identity::run(cmd),
        Command::Ca(cmd) => cli::ca::run(cmd),
        Command::Token(cmd) => cli::token::run(cmd),
        Command::Inject(args) => cli::inject::run(args),
        Command::Authz(cmd) => cli::authz::run(cmd),
        Command::Quarantine(args) => cli::quarantine::run(args),
        Command::Audit(args) => cli::quarantine::run_audit(args),
        Command::Status(args) => cli::status::run(args),
        Command::Check(args) => cli::check::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("ward: {err:#}");
            ExitCode::FAILURE
        }
    }
}
