//! `ward check`: is the installed mesh healthy? Each check prints ✓, or ✗
//! with what is wrong and the fix; the exit status is 1 when any fails.
//! Read from the control plane's admin port (`/ready`, `/debug/discovery`,
//! `/metrics`). A check that cannot be answered fails: nothing is
//! reported healthy that was not seen to be.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use http::{Method, StatusCode};
use serde::Serialize;
use time::OffsetDateTime;

use super::admin_http;
use super::status::{Inventory, Sidecar, TypeStatus, remaining};

#[derive(Args)]
pub struct CheckArgs {
    /// The control plane's admin address (see `ward status`).
    #[arg(
        long,
        env = "WARD_CONTROL_PLANE_ADMIN",
        default_value = "127.0.0.1:15014"
    )]
    control_plane_admin: String,
    /// A sidecar certificate closer to its expiry than this fails (a
    /// sidecar renews at half the lifetime: 12 h of the default 24 h).
    #[arg(long, env = "WARD_CHECK_MIN_CERT_VALIDITY", default_value = "2h", value_parser = humantime::parse_duration)]
    min_certificate_validity: Duration,
    /// JSON instead of ✓/✗ lines.
    #[arg(long, env = "WARD_CHECK_JSON")]
    json: bool,
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub check: &'static str,
    pub ok: bool,
    /// What was found: one line per problem (or what was seen, when ok).
    pub details: Vec<String>,
    /// What to do, when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<&'static str>,
}

impl Outcome {
    fn pass(check: &'static str, detail: String) -> Outcome {
        Outcome {
            check,
            ok: true,
            details: vec![detail],
            fix: None,
        }
    }

    fn fail(check: &'static str, details: Vec<String>, fix: &'static str) -> Outcome {
        Outcome {
            check,
            ok: false,
            details,
            fix: Some(fix),
        }
    }
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let addr = &args.control_plane_admin;
    let mut outcomes = vec![control_plane_ready(addr)];
    match Inventory::fetch(addr) {
        Ok(inventory) => {
            let now = OffsetDateTime::now_utc().unix_timestamp();
            outcomes.push(sidecars_connected(&inventory));
            outcomes.push(sidecars_in_sync(&inventory));
            outcomes.push(certificates(&inventory, now, args.min_certificate_validity));
            outcomes.push(policies_accepted(&inventory));
            outcomes.push(plaintext_ports(&inventory));
        }
        Err(err) => outcomes.push(Outcome::fail(
            "inventory",
            vec![format!("{err:#}")],
            "reach the control plane's admin port (--control-plane-admin)",
        )),
    }
    let failed = outcomes.iter().any(|o| !o.ok);
    if args.json {
        println!("{}", serde_json::json!({"ok": !failed, "checks": outcomes}));
    } else {
        print!("{}", render(&outcomes));
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn render(outcomes: &[Outcome]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for o in outcomes {
        let mark = if o.ok { '✓' } else { '✗' };
        let first = o.details.first().map(String::as_str).unwrap_or_default();
        let _ = writeln!(out, "{mark} {}: {first}", o.check);
        for detail in o.details.iter().skip(1) {
            let _ = writeln!(out, "    {detail}");
        }
        if let Some(fix) = o.fix {
            let _ = writeln!(out, "    fix: {fix}");
        }
    }
    out
}

fn control_plane_ready(addr: &str) -> Outcome {
    const CHECK: &str = "control plane ready";
    match admin_http::exchange(addr, Method::GET, "/ready", None) {
        Ok((StatusCode::OK, _)) => Outcome::pass(CHECK, format!("{addr} answers /ready")),
        Ok((status, body)) => Outcome::fail(
            CHECK,
            vec![format!(
                "{addr}/ready answered {status}: {}",
                String::from_utf8_lossy(&body).trim()
            )],
            "read the control plane's log (`kubectl -n ward-system logs deploy/ward-control-plane`): it says what it waits for",
        ),
        Err(err) => Outcome::fail(
            CHECK,
            vec![format!("{err:#}")],
            "start the control plane, or give its admin address with --control-plane-admin (in a cluster: `kubectl -n ward-system port-forward deploy/ward-control-plane 15014`)",
        ),
    }
}

fn who(s: &Sidecar) -> String {
    match &s.pod {
        Some(pod) => format!("{} (pod {pod}, {})", s.spiffe_id, s.address),
        None => format!("{} ({})", s.spiffe_id, s.address),
    }
}

fn sidecars_connected(inventory: &Inventory) -> Outcome {
    const CHECK: &str = "every sidecar connected";
    match &inventory.disconnected {
        None => Outcome::fail(
            CHECK,
            vec!["this control plane does not report disconnected sidecars".into()],
            "upgrade the control plane",
        ),
        Some(gone) if gone.is_empty() => Outcome::pass(
            CHECK,
            format!(
                "{} connected, none left in the last 10 minutes",
                inventory.sidecars.len()
            ),
        ),
        Some(gone) => Outcome::fail(
            CHECK,
            gone.iter()
                .map(|d| {
                    let pod = d
                        .pod
                        .as_deref()
                        .map(|p| format!("pod {p}, "))
                        .unwrap_or_default();
                    format!(
                        "{} ({pod}{}) disconnected at {}",
                        d.spiffe_id, d.address, d.left_at
                    )
                })
                .collect(),
            "a sidecar without the control plane keeps its last policies but gets no updates: check that its pod runs and reaches the control plane on 15012 (`kubectl logs POD -c ward-proxy`); a pod deleted on purpose leaves this list 10 minutes after it left",
        ),
    }
}

/// One sidecar's problem with one resource type, if any.
fn out_of_sync(kind: &str, t: &TypeStatus) -> Option<String> {
    match (t.state(), &t.rejected) {
        ("in_sync", _) => None,
        (_, Some(r)) => Some(format!(
            "{kind}: rejected update {}: {}",
            r.nonce,
            r.error.replace('\n', " ")
        )),
        _ => Some(format!(
            "{kind}: {} of {} acknowledged, an update pending",
            t.desired
                .iter()
                .filter(|(n, v)| t.acked.get(*n) == Some(*v))
                .count(),
            t.desired.len()
        )),
    }
}

fn sidecars_in_sync(inventory: &Inventory) -> Outcome {
    const CHECK: &str = "every sidecar on the current policies and bundles";
    let problems: Vec<String> = inventory
        .sidecars
        .iter()
        .flat_map(|s| {
            [
                out_of_sync("policies", &s.policy),
                out_of_sync("bundles", &s.bundle),
            ]
            .into_iter()
            .flatten()
            .map(move |p| format!("{}: {p}", who(s)))
        })
        .collect();
    if problems.is_empty() {
        let version = inventory
            .policy_version
            .map_or("?".to_owned(), |v| v.to_string());
        return Outcome::pass(
            CHECK,
            format!(
                "{} sidecars in sync (policy set version {version})",
                inventory.sidecars.len()
            ),
        );
    }
    Outcome::fail(
        CHECK,
        problems,
        "a rejected update means the sidecar cannot load what the control plane sends (a version skew): upgrade or restart that pod; an update that stays pending means the sidecar does not answer: read its log",
    )
}

fn certificates(inventory: &Inventory, now: i64, min: Duration) -> Outcome {
    const CHECK: &str = "certificates far from expiry";
    let min = min.as_secs() as i64;
    let mut problems = Vec::new();
    for s in &inventory.sidecars {
        match s.certificate_not_after {
            None => problems.push(format!("{}: expiry unknown", who(s))),
            Some(t) if t - now < min => {
                problems.push(format!("{}: expires in {}", who(s), remaining(t, now)))
            }
            Some(_) => {}
        }
    }
    if problems.is_empty() {
        return Outcome::pass(
            CHECK,
            format!(
                "every sidecar's certificate is valid for more than {}",
                remaining(now + min, now)
            ),
        );
    }
    Outcome::fail(
        CHECK,
        problems,
        "a sidecar renews at half its certificate's lifetime, so one this close to expiry is failing to renew: read its log (`renewal failed`), check that it reaches the control plane and that its credential (service-account token) is valid; restarting the pod enrols it again",
    )
}

fn policies_accepted(inventory: &Inventory) -> Outcome {
    const CHECK: &str = "no rejected policies";
    let mut problems = Vec::new();
    if let Some(r) = &inventory.policy_rejection {
        problems.push(format!(
            "the policy source's last change was rejected at {}; version {} stays in force: {}",
            r["at"].as_str().unwrap_or("?"),
            r["version_in_force"],
            r["error"].as_str().unwrap_or("?").replace('\n', " ")
        ));
    }
    if inventory.rejected_resources > 0.0 {
        problems.push(format!(
            "{} policy resources rejected (not enforced)",
            inventory.rejected_resources
        ));
    }
    if problems.is_empty() {
        return Outcome::pass(CHECK, "every policy the source offered is in force".into());
    }
    Outcome::fail(
        CHECK,
        problems,
        "fix the document the error names (file, document, field, line) and save it again: the control plane re-reads it; in Kubernetes read the Accepted condition of the resources (`kubectl get authorizationpolicies,peerauthentications -A -o yaml`)",
    )
}

fn plaintext_ports(inventory: &Inventory) -> Outcome {
    const CHECK: &str = "no port open to plaintext";
    let Some(list) = &inventory.plaintext_allowed else {
        return Outcome::fail(
            CHECK,
            vec!["this control plane does not report PeerAuthentication modes".into()],
            "upgrade the control plane",
        );
    };
    if list.is_empty() {
        return Outcome::pass(
            CHECK,
            "no PeerAuthentication is PERMISSIVE or DISABLE (mTLS STRICT)".into(),
        );
    }
    let details = list
        .iter()
        .map(|p| {
            let selector = match p["selector"].as_object() {
                Some(s) => s
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join(","),
                None => "every workload of its namespace".into(),
            };
            let ports = match p["ports"].as_object() {
                Some(ports) if !ports.is_empty() => format!(
                    ", ports {}",
                    ports
                        .iter()
                        .map(|(port, m)| format!("{port} {}", m.as_str().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                _ => String::new(),
            };
            format!(
                "{} ({selector}): {}{ports}",
                p["peer_authentication"].as_str().unwrap_or("?"),
                p["mode"].as_str().unwrap_or("?")
            )
        })
        .collect();
    Outcome::fail(
        CHECK,
        details,
        "plaintext clients reach these workloads without an identity: once every client is meshed, set the mode to STRICT (a sidecar's own --mtls-mode is not visible here: check WARD_MTLS_MODE in injected pods too)",
    )
}
