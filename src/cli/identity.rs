//! `ward identity parse|verify`.

use anyhow::Context;
use clap::Subcommand;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use ward_identity::SpiffeId;
use ward_identity::bundle::TrustBundles;
use ward_identity::svid::{self, Role};

#[derive(Subcommand)]
pub enum IdentityCommand {
    /// Parse a SPIFFE ID and print its trust domain and path as JSON.
    Parse {
        /// The ID, or `-` to read it from standard input exactly as given
        /// (no newline is trimmed).
        id: String,
    },
    /// Verify an X.509-SVID chain exactly as the proxy would, choosing the
    /// trust bundle by the trust domain in the leaf's SPIFFE ID.
    Verify {
        /// `<trust-domain>=<bundle.pem>`; the file holds one or more PEM roots.
        #[arg(long = "bundle", value_name = "TRUST_DOMAIN=FILE", value_parser = parse_bundle_arg, required = true)]
        bundles: Vec<(String, PathBuf)>,
        /// Check the certificate for this role only.
        #[arg(long, value_enum)]
        role: Option<RoleArg>,
        /// Also check that this private key (PEM) matches the leaf.
        #[arg(long)]
        key: Option<PathBuf>,
        /// The chain (PEM): leaf first, then intermediates.
        chain: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum RoleArg {
    Client,
    Server,
}

fn parse_bundle_arg(arg: &str) -> Result<(String, PathBuf), String> {
    match arg.split_once('=') {
        Some((td, path)) if !td.is_empty() && !path.is_empty() => {
            Ok((td.to_owned(), PathBuf::from(path)))
        }
        _ => Err(format!("expected <trust-domain>=<bundle.pem>, got {arg:?}")),
    }
}

pub fn run(cmd: IdentityCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        IdentityCommand::Parse { id } => parse(&id),
        IdentityCommand::Verify {
            bundles,
            role,
            key,
            chain,
        } => verify(&bundles, role, key.as_deref(), &chain),
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

fn verify(
    bundle_args: &[(String, PathBuf)],
    role: Option<RoleArg>,
    key: Option<&Path>,
    chain: &Path,
) -> anyhow::Result<ExitCode> {
    let mut bundles = TrustBundles::new();
    for (trust_domain, path) in bundle_args {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("reading bundle {}", path.display()))?;
        bundles.add_pem(trust_domain, &pem).with_context(|| {
            format!(
                "bundle {} for trust domain {trust_domain:?}",
                path.display()
            )
        })?;
    }
    let chain_bytes =
        std::fs::read(chain).with_context(|| format!("reading {}", chain.display()))?;
    let certs: Vec<CertificateDer> = CertificateDer::pem_slice_iter(&chain_bytes)
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: not a PEM certificate chain", chain.display()))?;
    let role = match role {
        None => Role::Any,
        Some(RoleArg::Client) => Role::Client,
        Some(RoleArg::Server) => Role::Server,
    };
    let verified = match svid::verify_chain(&certs, &bundles, role, UnixTime::now()) {
        Ok(verified) => verified,
        Err(err) => {
            eprintln!("verification failed: {err}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if let Some(key_path) = key {
        let key = PrivateKeyDer::from_pem_file(key_path)
            .with_context(|| format!("{}: not a PEM private key", key_path.display()))?;
        if let Err(err) = svid::check_key_matches(&certs[0], &key) {
            eprintln!("verification failed: {err}");
            return Ok(ExitCode::FAILURE);
        }
    }
    let out = serde_json::json!({
        "spiffe_id": verified.spiffe_id.as_str(),
        "not_after": ward_identity::rfc3339(verified.not_after),
    });
    println!("{out}");
    Ok(ExitCode::SUCCESS)
}
