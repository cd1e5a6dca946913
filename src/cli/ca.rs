//! `ward ca init|inspect`: the control plane's certificate authority, on disk.

use anyhow::Context;
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;
use ward_control_plane::data_dir::DataDir;
use ward_identity::ca::CertificateAuthority;

#[derive(Subcommand)]
pub enum CaCommand {
    /// Create the CA in a data directory: a new self-signed root, or an
    /// existing root or intermediate imported from PEM files.
    Init {
        #[arg(long, env = "WARD_DATA_DIR")]
        data_dir: PathBuf,
        #[arg(long, env = "WARD_TRUST_DOMAIN", default_value = "cluster.local")]
        trust_domain: String,
        /// CA certificate, then its issuers up to the root (PEM), to import.
        #[arg(long, requires = "import_key")]
        import_cert: Option<PathBuf>,
        /// The imported CA's private key (PEM).
        #[arg(long, requires = "import_cert")]
        import_key: Option<PathBuf>,
    },
    /// Show the CA's trust domain, fingerprint and expiry as JSON.
    Inspect {
        #[arg(long, env = "WARD_DATA_DIR")]
        data_dir: PathBuf,
    },
}

pub fn run(cmd: CaCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CaCommand::Init {
            data_dir,
            trust_domain,
            import_cert,
            import_key,
        } => {
            let dir = DataDir::open(&data_dir)?;
            let ca = match (import_cert, import_key) {
                (Some(cert), Some(key)) => {
                    let cert = std::fs::read_to_string(&cert)
                        .with_context(|| format!("reading {}", cert.display()))?;
                    let key = std::fs::read_to_string(&key)
                        .with_context(|| format!("reading {}", key.display()))?;
                    dir.import_ca(&cert, &key)?
                }
                _ => dir.init_ca(&trust_domain)?,
            };
            print_summary(&ca);
        }
        CaCommand::Inspect { data_dir } => {
            let ca = DataDir::open(&data_dir)?.load_ca(None)?;
            print_summary(&ca);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_summary(ca: &CertificateAuthority) {
    let summary = serde_json::json!({
        "trust_domain": ca.trust_domain(),
        "fingerprint_sha256": ca.fingerprint_sha256(),
        "not_after": ward_identity::rfc3339(ca.not_after()),
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&summary).expect("serializable")
    );
}
