//! `ward identity parse|verify`.

use anyhow::Context;
use clap::Subcommand;
use std::io::Read;
use std::process::ExitCode;
use ward_identity::SpiffeId;

#[derive(Subcommand)]
pub enum IdentityCommand {
    /// Parse a SPIFFE ID and print its trust domain and path as JSON.
    Parse {
        /// The ID, or `-` to read it from standard input exactly as given
        /// (no newline is trimmed).
        id: String,
    },
}

pub fn run(cmd: IdentityCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        IdentityCommand::Parse { id } => parse(&id),
    }
}

fn parse(arg: &str) -> anyhow::Result<ExitCode> {
    let input = if arg == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("reading the SPIFFE ID from standard input")?;
        match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(_) => {
                eprintln!("invalid SPIFFE ID: input is not valid UTF-8");
                return Ok(ExitCode::FAILURE);
            }
        }
    } else {
        arg.to_owned()
    };
    match SpiffeId::parse(&input) {
        Ok(id) => {
            let out = serde_json::json!({ "trust_domain": id.trust_domain(), "path": id.path() });
            println!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            eprintln!("invalid SPIFFE ID: {err}");
            Ok(ExitCode::FAILURE)
        }
    }
}
