//! `ward token create`: one-time join tokens bound to a SPIFFE ID.

use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use ward_control_plane::attest::JoinTokenStore;
use ward_control_plane::data_dir::DataDir;
use ward_identity::SpiffeId;

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Mint a single-use join token for one SPIFFE ID and print it.
    Create {
        #[arg(long, env = "WARD_DATA_DIR")]
        data_dir: PathBuf,
        /// The only identity the token can enrol.
        #[arg(long)]
        spiffe_id: String,
        /// How long the token stays usable (e.g. 10m, 1h).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

pub fn run(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCommand::Create {
            data_dir,
            spiffe_id,
            ttl,
        } => {
            let id = SpiffeId::parse(&spiffe_id)
                .map_err(|e| anyhow::anyhow!("--spiffe-id {spiffe_id:?}: {e}"))?;
            let dir = DataDir::open(&data_dir)?;
            // A token for an ID the CA cannot sign would only fail later.
            if dir.has_ca() {
                let ca = dir.load_ca(None)?;
                anyhow::ensure!(
                    id.trust_domain() == ca.trust_domain(),
                    "{id} is outside the CA's trust domain {:?}",
                    ca.trust_domain()
                );
            }
            let store = JoinTokenStore::open(&dir.join_tokens_dir())?;
            println!("{}", store.create(&id, ttl)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
