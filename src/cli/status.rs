//! `ward status`: the live inventory, from the control plane's admin port
//! (`/debug/discovery` and `/metrics`): every connected sidecar with its
//! identity, pod, certificate expiry, build, and the policy and trust
//! bundle versions it acknowledged against those it should enforce.
//! A sidecar that stopped is listed as disconnected for ten minutes
//! (unless it comes back).

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::admin_http;

#[derive(Args)]
pub struct StatusArgs {
    /// The control plane's admin address (`--admin-listen`; in a cluster
    /// `kubectl -n ward-system port-forward deploy/ward-control-plane
    /// 15014` first).
    #[arg(
        long,
        env = "WARD_CONTROL_PLANE_ADMIN",
        default_value = "127.0.0.1:15014"
    )]
    pub control_plane_admin: String,
    /// JSON instead of a table.
    #[arg(long, env = "WARD_STATUS_JSON")]
    pub json: bool,
}

/// What `/debug/discovery` says, as far as the inventory reads it
/// (unknown fields are ignored: a newer control plane adds some).
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub sidecars: Vec<Sidecar>,
    /// Absent from control planes older than this CLI.
    #[serde(default)]
    pub disconnected: Option<Vec<Departed>>,
    #[serde(default)]
    pub policy_version: Option<u64>,
    #[serde(default)]
    pub policy_rejection: Option<serde_json::Value>,
    /// By stream: the newest certificate's expiry (Unix seconds).
    #[serde(default)]
    pub newest_certificates: BTreeMap<u64, i64>,
    #[serde(default)]
    pub plaintext_allowed: Option<Vec<serde_json::Value>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Departed {
    pub spiffe_id: String,
    #[serde(default)]
    pub pod: Option<String>,
    pub address: String,
    #[serde(default)]
    pub proxy_version: String,
    pub left_at: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Sidecar {
    #[serde(default)]
    pub stream: u64,
    pub spiffe_id: String,
    #[serde(default)]
    pub pod: Option<String>,
    pub address: String,
    #[serde(default)]
    pub proxy_version: String,
    #[serde(default)]
    pub connected_since: String,
    /// Unix seconds: when the certificate the sidecar authenticated its
    /// stream with expires; replaced by the newest one issued to it.
    #[serde(default)]
    pub certificate_not_after: Option<i64>,
    #[serde(default)]
    pub policy: TypeStatus,
    #[serde(default)]
    pub bundle: TypeStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct TypeStatus {
    #[serde(default)]
    pub acked_system_version: Option<u64>,
    #[serde(default)]
    pub acked: BTreeMap<String, String>,
    #[serde(default)]
    pub desired: BTreeMap<String, String>,
    #[serde(default)]
    pub pending_nonce: Option<u64>,
    #[serde(default)]
    pub rejected: Option<Rejected>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Rejected {
    pub nonce: u64,
    pub error: String,
}

impl TypeStatus {
    /// `in_sync`, `pending` or `rejected`, as the control plane counts
    /// them (`ward_discovery_sidecars`).
    pub fn state(&self) -> &'static str {
        if self.rejected.is_some() {
            "rejected"
        } else if self.pending_nonce.is_some() || self.acked != self.desired {
            "pending"
        } else {
            "in_sync"
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "state": self.state(),
            "acked_version": self.acked_system_version,
            "acked": self.acked,
            "desired": self.desired,
            "rejected": self.rejected,
        })
    }
}

/// The inventory, read once.
pub struct Inventory {
    pub control_plane: String,
    /// `ward_cp_policy_version`: the set the control plane holds now.
    pub policy_version: Option<u64>,
    pub sidecars: Vec<Sidecar>,
    /// `None`: the control plane does not say.
    pub disconnected: Option<Vec<Departed>>,
    pub policy_rejection: Option<serde_json::Value>,
    pub plaintext_allowed: Option<Vec<serde_json::Value>>,
    /// `ward_cp_policy_resources{state="rejected"}` (Kubernetes source).
    pub rejected_resources: f64,
}

impl Inventory {
    /// Reads the inventory from the control plane's admin port.
    pub fn fetch(addr: &str) -> anyhow::Result<Inventory> {
        let reach = || {
            format!(
                "reading the control plane's admin port at {addr} (give --control-plane-admin; in a cluster `kubectl -n ward-system port-forward deploy/ward-control-plane 15014` first)"
            )
        };
        let (status, body) = admin_http::exchange(addr, Method::GET, "/debug/discovery", None)
            .with_context(reach)?;
        anyhow::ensure!(
            status == StatusCode::OK,
            "{addr}/debug/discovery answered {status}: is it a Ward control plane's admin port?"
        );
        let discovery: Discovery = serde_json::from_slice(&body)
            .with_context(|| format!("{addr}/debug/discovery is not a discovery report"))?;
        let (status, metrics) =
            admin_http::exchange(addr, Method::GET, "/metrics", None).with_context(reach)?;
        let metrics = String::from_utf8_lossy(&metrics).into_owned();
        let ok = status == StatusCode::OK;
        let policy_version = discovery.policy_version.or_else(|| {
            ok.then(|| gauge(&metrics, "ward_cp_policy_version"))
                .flatten()
                .map(|v| v as u64)
        });
        let rejected_resources = metrics
            .lines()
            .filter(|l| {
                l.starts_with("ward_cp_policy_resources{") && l.contains("state=\"rejected\"")
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
            .sum();
        let mut sidecars = discovery.sidecars;
        for s in &mut sidecars {
            if let Some(newest) = discovery.newest_certificates.get(&s.stream) {
                s.certificate_not_after = s.certificate_not_after.max(Some(*newest));
            }
        }
        sidecars.sort_by(|a, b| {
            (&a.spiffe_id, &a.pod, &a.address).cmp(&(&b.spiffe_id, &b.pod, &b.address))
        });
        Ok(Inventory {
            control_plane: addr.to_owned(),
            policy_version,
            sidecars,
            disconnected: discovery.disconnected,
            policy_rejection: discovery.policy_rejection,
            plaintext_allowed: discovery.plaintext_allowed,
            rejected_resources,
        })
    }
}

/// The value of an unlabelled gauge in Prometheus' text format.
fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (series, value) = line.split_once(' ')?;
        (series == name)
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// RFC 3339 of Unix seconds.
pub fn rfc3339(unix: i64) -> Option<String> {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .map(ward_identity::rfc3339)
}

/// `3d4h`, `5h12m`, `42m`, `expired`: how long until `unix`.
pub fn remaining(unix: i64, now: i64) -> String {
    let left = unix - now;
    if left <= 0 {
        return "expired".into();
    }
    let (d, h, m) = (left / 86_400, left % 86_400 / 3600, left % 3600 / 60);
    match (d, h) {
        (0, 0) => format!("{m}m"),
        (0, _) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h}h"),
    }
}

pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let inventory = Inventory::fetch(&args.control_plane_admin)?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    if args.json {
        let sidecars: Vec<serde_json::Value> = inventory
            .sidecars
            .iter()
            .map(|s| {
                serde_json::json!({
                    "spiffe_id": s.spiffe_id,
                    "pod": s.pod,
                    "address": s.address,
                    "proxy_version": s.proxy_version,
                    "connected_since": s.connected_since,
                    "certificate_not_after": s.certificate_not_after.and_then(rfc3339),
                    "certificate_expires_in_seconds": s.certificate_not_after.map(|t| t - now),
                    "policy": s.policy.json(),
                    "bundle": s.bundle.json(),
                })
            })
            .collect();
        let out = serde_json::json!({
            "control_plane": {
                "admin": inventory.control_plane,
                "policy_version": inventory.policy_version,
            },
            "sidecars": sidecars,
            "disconnected": inventory.disconnected,
        });
        println!("{out}");
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", table(&inventory, now));
    Ok(ExitCode::SUCCESS)
}

/// The inventory for a person: one line per sidecar.
fn table(inventory: &Inventory, now: i64) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let version = inventory
        .policy_version
        .map_or("unknown".to_owned(), |v| v.to_string());
    let _ = writeln!(
        out,
        "control plane {}: policy set version {version}, {} sidecars connected",
        inventory.control_plane,
        inventory.sidecars.len()
    );
    let rows: Vec<[String; 7]> = inventory
        .sidecars
        .iter()
        .map(|s| {
            [
                s.spiffe_id.clone(),
                s.pod.clone().unwrap_or_else(|| "-".into()),
                s.address.clone(),
                if s.proxy_version.is_empty() {
                    "-".into()
                } else {
                    s.proxy_version.clone()
                },
                s.certificate_not_after
                    .map_or("-".into(), |t| remaining(t, now)),
                sync(&s.policy, true),
                sync(&s.bundle, false),
            ]
        })
        .collect();
    let header = [
        "SPIFFE ID",
        "POD",
        "ADDRESS",
        "VERSION",
        "CERT EXPIRES IN",
        "POLICIES",
        "BUNDLES",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ");
            }
        }
        l
    };
    let _ = writeln!(out, "{}", line(header.to_vec()));
    for row in &rows {
        let _ = writeln!(out, "{}", line(row.iter().map(String::as_str).collect()));
    }
    for d in inventory.disconnected.iter().flatten() {
        let pod = d.pod.as_deref().unwrap_or("-");
        let _ = writeln!(
            out,
            "DISCONNECTED {} (pod {pod}, {}) since {}",
            d.spiffe_id, d.address, d.left_at
        );
    }
    out
}

/// One type's cell: its state and how many of its resources are acked.
fn sync(t: &TypeStatus, with_version: bool) -> String {
    let acked = t
        .desired
        .iter()
        .filter(|(name, v)| t.acked.get(*name) == Some(*v))
        .count();
    let mut cell = format!("{} {acked}/{}", t.state(), t.desired.len());
    if with_version && let Some(v) = t.acked_system_version {
        cell.push_str(&format!(" (v{v})"));
    }
    if let Some(r) = &t.rejected {
        cell.push_str(&format!(": {}", r.error.replace('\n', " ")));
    }
    cell
}
