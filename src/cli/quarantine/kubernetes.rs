//! `ward quarantine --kubernetes`: the quarantine as a `Quarantine` object,
//! created (or, to lift, deleted) through the API server with the
//! operator's own credentials, which is also the access control and the
//! authenticated audit (the API server's audit log). The target, reason
//! and requester are checked as in the embedded mode before anything is
//! sent; the object is named by its target (`<kind>-<hash>`), so a second
//! quarantine of the same target is refused, by our check or by the API
//! server's `AlreadyExists`.

use std::process::ExitCode;

use anyhow::Context;
use time::OffsetDateTime;
use ward_control_plane::k8s::ApiClient;
use ward_control_plane::k8s::quarantine_api::QuarantineApi;
use ward_control_plane::quarantine::{Entry, Target};

pub fn quarantine(target: Target, by: &str, reason: &str) -> anyhow::Result<ExitCode> {
    let entry = Entry::new(target, reason, by, OffsetDateTime::now_utc())?;
    block_on(async {
        api().await?.create(&entry).await?;
        println!(
            "quarantined {} (Quarantine {}): every control plane replica puts it in force as soon as its watch sees the object",
            entry.target, entry.name
        );
        Ok(ExitCode::SUCCESS)
    })
}

pub fn lift(target: &Target, reason: Option<&str>) -> anyhow::Result<ExitCode> {
    block_on(async {
        for entry in api().await?.remove(target).await? {
            println!("lifted {target} (Quarantine {} deleted)", entry.name);
        }
        if reason.is_some_and(|r| !r.trim().is_empty()) {
            eprintln!(
                "ward: note: a deleted object keeps no --reason; the API server's audit log records who deleted it"
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

async fn api() -> anyhow::Result<QuarantineApi> {
    let ApiClient(client) = ApiClient::infer().await?;
    Ok(QuarantineApi::new(client))
}

fn block_on<T>(work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(work)
}
