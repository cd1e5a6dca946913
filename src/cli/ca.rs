//! `ward ca init|issue|inspect`: the control plane's certificate authority,
//! on disk; `ward ca rotate|status`: rotating it, through a running control
//! plane ([`rotate`]).

use anyhow::Context;
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;
use ward_control_plane::data_dir::DataDir;
use ward_identity::ca::CertificateAuthority;

mod rotate;

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
    /// Issue a workload certificate and key to files, for a static identity
    /// (`ward-proxy run --cert --key --ca`). The key is written mode 0600.
    Issue {
        #[arg(long, env = "WARD_DATA_DIR")]
        data_dir: PathBuf,
        #[arg(long)]
        spiffe_id: String,
        /// Certificate chain output (PEM, leaf first).
        #[arg(long)]
        cert: PathBuf,
        /// Private key output (PEM, PKCS#8).
        #[arg(long)]
        key: PathBuf,
        /// Trust bundle output (PEM): the roots peers are verified against.
        #[arg(long)]
        bundle: Option<PathBuf>,
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
    /// Show the CA's trust domain, fingerprint and expiry as JSON.
    Inspect {
        #[arg(long, env = "WARD_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Take one step of a CA rotation on a running control plane:
    /// prepare, activate, retire (each waits for every sidecar to confirm
    /// the previous one) or abort.
    Rotate(rotate::RotateArgs),
    /// The CA rotation's phase, how many sidecars confirmed each step, and
    /// the ones holding it back.
    Status(rotate::AdminArgs),
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
        CaCommand::Issue {
            data_dir,
            spiffe_id,
            cert,
            key,
            bundle,
            ttl,
        } => {
            let id = ward_identity::SpiffeId::parse(&spiffe_id)
                .map_err(|e| anyhow::anyhow!("--spiffe-id {spiffe_id:?}: {e}"))?;
            let ca = DataDir::open(&data_dir)?.load_ca(None)?;
            let workload_key = ward_identity::ca::generate_key();
            let csr = ward_identity::ca::build_csr(&workload_key, &id)?;
            let svid = ca.sign_csr(&csr, &id, ttl)?;
            std::fs::write(&cert, &svid.chain_pem)
                .with_context(|| format!("writing {}", cert.display()))?;
            write_private(&key, &workload_key.serialize_pem())?;
            if let Some(bundle) = bundle {
                std::fs::write(&bundle, ca.bundle_pem())
                    .with_context(|| format!("writing {}", bundle.display()))?;
            }
            let out = serde_json::json!({
                "spiffe_id": id.as_str(),
                "not_after": ward_identity::rfc3339(svid.not_after),
                "serial": svid.serial_hex,
            });
            println!("{out}");
        }
        CaCommand::Inspect { data_dir } => {
            let ca = DataDir::open(&data_dir)?.load_ca(None)?;
            print_summary(&ca);
        }
        CaCommand::Rotate(args) => return rotate::rotate(args),
        CaCommand::Status(args) => return rotate::status(args),
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

fn write_private(path: &std::path::Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
