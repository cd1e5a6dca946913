//! `ward ca rotate <step>` and `ward ca status`: a CA rotation driven over
//! the control plane's admin API (`/ca/rotation`, port 15014), which
//! performs each step, gates it on every sidecar's confirmation and
//! records it in the audit trail. Steps are accepted from the control
//! plane's own host only (in Kubernetes: `kubectl port-forward`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, ValueEnum};
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use ward_api::error::ErrorBody;
use ward_control_plane::rotation::{
    ImportedCa, RotationStatus, Step, StepRequest, StepStatus, admin::PATH,
};

/// The control plane's admin API, as every `ward ca` command that talks to
/// a running control plane takes it.
#[derive(Args)]
pub struct AdminArgs {
    /// The control plane's admin listener (`host:port`).
    #[arg(
        long,
        env = "WARD_CONTROL_PLANE_ADMIN",
        default_value = "127.0.0.1:15014"
    )]
    control_plane_admin: String,
    /// Print the status as JSON instead of a table.
    #[arg(long, env = "WARD_CA_JSON")]
    json: bool,
}

#[derive(Args)]
pub struct RotateArgs {
    /// prepare (the new root joins every bundle), activate (the new CA
    /// signs; sidecars renew onto it), retire (the old root leaves), or
    /// abort (roll the current step back).
    #[arg(value_enum)]
    step: StepArg,
    /// Why, for the audit trail (required).
    #[arg(long, env = "WARD_CA_ROTATE_REASON")]
    reason: Option<String>,
    /// Who asks, for the audit trail (default: $USER, else `id -un`).
    #[arg(long, env = "WARD_CA_ROTATE_BY")]
    by: Option<String>,
    /// Proceed although sidecars did not confirm the previous step (they
    /// are named; a sidecar that does not trust the new root, or still
    /// holds a certificate from the old one, will fail handshakes).
    #[arg(long)]
    force: bool,
    /// prepare: rotate to this CA (its certificate, then its issuers up to
    /// the root, PEM) instead of a new self-signed root, e.g. a new
    /// intermediate under an external root.
    #[arg(long, requires = "import_key")]
    import_cert: Option<PathBuf>,
    /// prepare: the imported CA's private key (PEM).
    #[arg(long, requires = "import_cert")]
    import_key: Option<PathBuf>,
    /// activate: sidecars renew at a random point within this window
    /// (default 5m).
    #[arg(long, env = "WARD_CA_RENEW_WITHIN", value_parser = humantime::parse_duration)]
    renew_within: Option<Duration>,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum StepArg {
    Prepare,
    Activate,
    Retire,
    Abort,
}

impl From<StepArg> for Step {
    fn from(step: StepArg) -> Step {
        match step {
            StepArg::Prepare => Step::Prepare,
            StepArg::Activate => Step::Activate,
            StepArg::Retire => Step::Retire,
            StepArg::Abort => Step::Abort,
        }
    }
}

pub fn rotate(args: RotateArgs) -> anyhow::Result<ExitCode> {
    let step = Step::from(args.step);
    let reason = args
        .reason
        .filter(|r| !r.trim().is_empty())
        .context("--reason is required: it goes into the audit trail")?;
    anyhow::ensure!(
        args.import_cert.is_none() || step == Step::Prepare,
        "--import-cert and --import-key are for `prepare` only"
    );
    anyhow::ensure!(
        args.renew_within.is_none() || step == Step::Activate,
        "--renew-within is for `activate` only"
    );
    let import = match (args.import_cert, args.import_key) {
        (Some(cert), Some(key)) => Some(ImportedCa {
            chain_pem: std::fs::read_to_string(&cert)
                .with_context(|| format!("reading {}", cert.display()))?,
            key_pem: std::fs::read_to_string(&key)
                .with_context(|| format!("reading {}", key.display()))?,
        }),
        _ => None,
    };
    let request = StepRequest {
        step,
        by: args.by.unwrap_or_else(crate::cli::quarantine::operator),
        reason,
        force: args.force,
        import,
        renew_within_seconds: args.renew_within.map(|d| d.as_secs().max(1)),
    };
    let body = serde_json::to_vec(&request).expect("serializable");
    let status = call(&args.admin.control_plane_admin, Method::POST, Some(body))?;
    print_status(&status, args.admin.json);
    Ok(ExitCode::SUCCESS)
}

pub fn status(args: AdminArgs) -> anyhow::Result<ExitCode> {
    let status = call(&args.control_plane_admin, Method::GET, None)?;
    print_status(&status, args.json);
    Ok(ExitCode::SUCCESS)
}

/// One call to `/ca/rotation`; a refusal is an error carrying the control
/// plane's message.
fn call(addr: &str, method: Method, body: Option<Vec<u8>>) -> anyhow::Result<RotationStatus> {
    let addr = addr.trim_start_matches("http://").trim_end_matches('/');
    let (status, answer) = exchange(addr, method, body)?;
    if status != StatusCode::OK {
        let message = serde_json::from_slice::<ErrorBody>(&answer)
            .map(|e| e.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&answer).into_owned());
        anyhow::bail!("the control plane at {addr} refused ({status}): {message}");
    }
    serde_json::from_slice(&answer)
        .with_context(|| format!("the control plane at {addr} answered something else"))
}

/// The whole exchange ends within this.
const TIMEOUT: Duration = Duration::from_secs(30);
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

fn exchange(
    addr: &str,
    method: Method,
    body: Option<Vec<u8>>,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        tokio::time::timeout(TIMEOUT, send(addr, method, body))
            .await
            .map_err(|_| anyhow::anyhow!("no answer from {addr} within {TIMEOUT:?}"))?
    })
}

async fn send(
    addr: &str,
    method: Method,
    body: Option<Vec<u8>>,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the control plane's admin API at {addr}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let request = Request::builder()
        .method(method)
        .uri(PATH)
        .header(header::HOST, addr)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let answer = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the answer of {addr}: {e}"))?
        .to_bytes();
    Ok((status, answer))
}

fn print_status(status: &RotationStatus, json: bool) {
    if json {
        println!("{}", serde_json::to_string(status).expect("serializable"));
        return;
    }
    println!("trust domain  {}", status.trust_domain);
    let since = status
        .since
        .as_deref()
        .map(|s| format!(" since {s}"))
        .unwrap_or_default();
    let rolled_back = if status.rolled_back {
        " (activate rolled back)"
    } else {
        ""
    };
    println!(
        "phase         {}{since}{rolled_back}",
        status.phase.as_str()
    );
    let ca = |c: &ward_control_plane::rotation::CaSummary| {
        format!(
            "{} (until {}), root {} (until {})",
            c.fingerprint, c.not_after, c.root_fingerprint, c.root_not_after
        )
    };
    println!("signer        {}", ca(&status.signer));
    if let Some(old) = &status.old {
        println!("old CA        {}", ca(old));
    }
    if let Some(new) = &status.new {
        println!("new CA        {}", ca(new));
    }
    if !status.steps.is_empty() {
        println!("sidecars      {}", status.sidecars);
        println!("{:<9}  {:>9}  HELD BACK BY", "STEP", "CONFIRMED");
        for step in &status.steps {
            println!(
                "{:<9}  {:>9}  {}",
                step.step,
                format!("{}/{}", step.confirmed, step.total),
                held_back(step)
            );
        }
    }
    println!("next          {}", status.next);
}

/// Who holds a step back, one per line after the first.
fn held_back(step: &StepStatus) -> String {
    if step.complete {
        return "-".to_owned();
    }
    step.pending
        .iter()
        .map(|p| format!("{}: {}", p.sidecar, p.reason))
        .collect::<Vec<_>>()
        .join(&format!("\n{:<9}  {:>9}  ", "", ""))
}
