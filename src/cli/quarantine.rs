//! `ward quarantine` and `ward audit`: cut an identity, a pod or one
//! certificate off the mesh, lift it again, and list the audit trail. In
//! the embedded mode the entries are files in the control plane's data
//! directory, which the control plane watches; with `--kubernetes` they are
//! `Quarantine` objects, which every replica watches ([`kubernetes`];
//! `docs/identity.md`, "Quarantine").

mod kubernetes;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use time::OffsetDateTime;
use ward_control_plane::quarantine::audit::{Action, AuditLog, Record};
use ward_control_plane::quarantine::{Entry, QuarantineDir, Target};

#[derive(Args)]
pub struct QuarantineArgs {
    /// What to cut off: an identity (spiffe://<td>/ns/<ns>/sa/<sa>), a pod
    /// (<namespace>/<pod>), or one certificate (serial:<HEX>).
    target: String,
    /// Lift the quarantine of TARGET instead. An action, so it has no
    /// environment variable.
    #[arg(long)]
    lift: bool,
    /// Why: kept in the entry and in the audit trail. Required to
    /// quarantine, optional to lift.
    #[arg(long, env = "WARD_QUARANTINE_REASON", required_unless_present = "lift")]
    reason: Option<String>,
    /// Who asks, for the audit trail (default: $USER, else `id -un`).
    #[arg(long, env = "WARD_QUARANTINE_BY")]
    by: Option<String>,
    /// The control plane's data directory (not used with --kubernetes).
    #[arg(long, env = "WARD_DATA_DIR", default_value = "/var/lib/ward")]
    data_dir: PathBuf,
    /// Create (with --lift, delete) a Quarantine object through the
    /// Kubernetes API instead (in-cluster service account, else
    /// KUBECONFIG): every control plane replica watches them.
    #[arg(long, env = "WARD_KUBERNETES")]
    kubernetes: bool,
}

#[derive(Args)]
pub struct AuditArgs {
    /// One JSON object per line, as stored, instead of a table.
    #[arg(long, env = "WARD_AUDIT_JSON")]
    json: bool,
    /// The control plane's data directory.
    #[arg(long, env = "WARD_DATA_DIR", default_value = "/var/lib/ward")]
    data_dir: PathBuf,
}

pub fn run(args: QuarantineArgs) -> anyhow::Result<ExitCode> {
    // Everything is checked before anything is written.
    let target: Target = args
        .target
        .parse()
        .with_context(|| format!("target {:?}", args.target))?;
    let by = args.by.unwrap_or_else(operator);
    if args.kubernetes {
        return match args.lift {
            true => kubernetes::lift(&target, args.reason.as_deref()),
            false => kubernetes::quarantine(target, &by, &args.reason.unwrap_or_default()),
        };
    }
    check_data_dir(&args.data_dir)?;
    let dir = QuarantineDir::open(&args.data_dir)?;
    let audit = AuditLog::new(&args.data_dir);
    if args.lift {
        lift(&dir, &audit, &target, &by, args.reason.unwrap_or_default())
    } else {
        let reason = args.reason.unwrap_or_default();
        quarantine(&dir, &audit, target, &by, &reason)
    }
}

fn quarantine(
    dir: &QuarantineDir,
    audit: &AuditLog,
    target: Target,
    by: &str,
    reason: &str,
) -> anyhow::Result<ExitCode> {
    let entry = Entry::new(target, reason, by, OffsetDateTime::now_utc())?;
    let path = dir.create(&entry)?;
    let mut record = Record::now(Action::Quarantine, &entry.target.to_string(), by);
    record.entry = Some(entry.name.clone());
    record.reason = entry.reason.clone();
    // No quarantine without its audit record.
    if let Err(err) = audit.append(&record) {
        let _ = std::fs::remove_file(&path);
        return Err(err).with_context(|| {
            format!(
                "recording the quarantine in {} (nothing was quarantined)",
                audit.path().display()
            )
        });
    }
    println!(
        "quarantined {} (entry {}, {}): the control plane puts it in force as soon as it reads the file",
        entry.target,
        entry.name,
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn lift(
    dir: &QuarantineDir,
    audit: &AuditLog,
    target: &Target,
    by: &str,
    reason: String,
) -> anyhow::Result<ExitCode> {
    let removed = dir.remove(target)?;
    for entry in &removed {
        let mut record = Record::now(Action::Lift, &target.to_string(), by);
        record.entry = Some(entry.name.clone());
        record.reason = reason.clone();
        if let Err(err) = audit.append(&record) {
            // No lift without its audit record: put the entries back.
            for entry in &removed {
                let _ = dir.create(entry);
            }
            return Err(err).with_context(|| {
                format!(
                    "recording the lift in {} (the quarantine stays)",
                    audit.path().display()
                )
            });
        }
        println!("lifted {target} (entry {})", entry.name);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run_audit(args: AuditArgs) -> anyhow::Result<ExitCode> {
    check_data_dir(&args.data_dir)?;
    let audit = AuditLog::new(&args.data_dir);
    let records = audit
        .read()
        .with_context(|| format!("reading {}", audit.path().display()))?;
    let mut damaged = false;
    if !args.json {
        println!(
            "{:<30}  {:<10}  {:<20}  {:<50}  REASON / WHAT",
            "TIME", "ACTION", "BY", "TARGET"
        );
    }
    for record in records {
        let record = match record {
            Ok(record) => record,
            Err((line, error)) => {
                eprintln!("ward: {} line {line}: {error}", audit.path().display());
                damaged = true;
                continue;
            }
        };
        if args.json {
            println!("{}", serde_json::to_string(&record).expect("serializable"));
        } else {
            println!(
                "{:<30}  {:<10}  {:<20}  {:<50}  {}",
                record.time,
                record.action.as_str(),
                record.by,
                record.target,
                detail(&record)
            );
        }
    }
    Ok(if damaged {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The last column of `ward audit`: the reason, and what an enforced entry
/// revoked.
fn detail(record: &Record) -> String {
    let mut parts = Vec::new();
    if !record.reason.is_empty() {
        parts.push(record.reason.replace('\n', " "));
    }
    if let Some(revokes) = &record.revokes {
        parts.push(format!(
            "revokes {} identities, {} certificates, {} addresses",
            revokes.spiffe_ids.len(),
            revokes.serials.len(),
            revokes.addresses.len()
        ));
    }
    parts.join("; ")
}

/// A control plane's data directory holds its CA: anything else is a
/// typo, and an entry written there would be read by no one.
fn check_data_dir(data_dir: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        data_dir.join("ca").is_dir(),
        "{} is not a control plane's data directory (no ca/ in it); give --data-dir",
        data_dir.display()
    );
    Ok(())
}

/// Who runs the command: $USER, else `id -un`, else "unknown" (the
/// default `--by` of `ward quarantine` and `ward ca rotate`).
pub(crate) fn operator() -> String {
    if let Ok(user) = std::env::var("USER")
        && !user.trim().is_empty()
    {
        return user;
    }
    std::process::Command::new("id")
        .arg("-un")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|user| !user.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}
