//! `ward authz why`: the decision the destination's sidecar takes for one
//! request on the policies it enforces right now, the deciding policy and
//! rule, and the rules that came close. The sidecar explains it itself
//! (`POST /debug/authz/why` on its admin port, loopback only): see
//! docs/operations.md, "Why was this request denied?".

use std::net::IpAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use http::{Method, StatusCode};
use ward_identity::SpiffeId;
use ward_proxy::admin::why::{PATH, WhyReport};

use super::admin_http;

#[derive(Args)]
pub struct WhyArgs {
    /// The destination sidecar's admin address. It answers on loopback
    /// only: run `ward` in the destination pod, or forward the port first
    /// (`kubectl port-forward pod/NAME 15020`).
    #[arg(long, env = "WARD_SIDECAR_ADMIN", default_value = "127.0.0.1:15020")]
    sidecar_admin: String,
    /// The caller's SPIFFE ID (or Istio form `cluster.local/ns/X/sa/Y`).
    /// Without it: a plaintext caller (PERMISSIVE ports), no identity.
    #[arg(long, env = "WARD_WHY_SOURCE", value_parser = parse_source)]
    source: Option<SpiffeId>,
    /// The caller's address (for `ipBlocks` and `source.ip`).
    #[arg(long, env = "WARD_WHY_SOURCE_IP", default_value = "0.0.0.0")]
    source_ip: IpAddr,
    /// The address the caller connected to (for `destination.ip`).
    #[arg(long, env = "WARD_WHY_DESTINATION_IP", default_value = "0.0.0.0")]
    destination_ip: IpAddr,
    /// The destination port (the application's, as the caller dialled it).
    #[arg(long, env = "WARD_WHY_PORT")]
    port: u16,
    /// An opaque TCP connection instead of an HTTP request.
    #[arg(long, env = "WARD_WHY_TCP", conflicts_with_all = ["method", "path", "host", "headers"])]
    tcp: bool,
    /// The HTTP method.
    #[arg(long, env = "WARD_WHY_METHOD", default_value = "GET")]
    method: String,
    /// The HTTP path, with its query if any.
    #[arg(long, env = "WARD_WHY_PATH", default_value = "/")]
    path: String,
    /// The Host (HTTP/1) or :authority (HTTP/2).
    #[arg(long, env = "WARD_WHY_HOST")]
    host: Option<String>,
    /// A request header, `NAME: VALUE`; repeatable (the variable holds one).
    #[arg(long = "header", value_name = "NAME: VALUE", env = "WARD_WHY_HEADER", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// The sidecar's answer as JSON instead of text.
    #[arg(long, env = "WARD_WHY_JSON")]
    json: bool,
}

/// A workload's identity: a SPIFFE ID with a path (a bare trust domain,
/// or a typo without `/`, names no workload).
fn parse_source(arg: &str) -> Result<SpiffeId, String> {
    let id = SpiffeId::from_istio_principal(arg).map_err(|e| format!("not a SPIFFE ID: {e}"))?;
    if id.path().is_empty() {
        return Err(format!(
            "not a SPIFFE ID of a workload: {arg:?} has no path (spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>)"
        ));
    }
    Ok(id)
}

fn parse_header(arg: &str) -> Result<(String, String), String> {
    let Some((name, value)) = arg.split_once(':') else {
        return Err(format!("expected `NAME: VALUE`, got {arg:?}"));
    };
    let name = name.trim();
    http::header::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name:?} is not a valid header name"))?;
    Ok((name.to_ascii_lowercase(), value.trim().to_owned()))
}

/// The request in `ward authz check`'s JSON form.
fn describe(args: &WhyArgs) -> serde_json::Value {
    let mut source = serde_json::json!({"ip": args.source_ip});
    if let Some(id) = &args.source {
        source["spiffe_id"] = id.as_str().into();
    }
    let mut request = serde_json::json!({
        "protocol": if args.tcp { "tcp" } else { "http" },
        "source": source,
        "destination": {"ip": args.destination_ip, "port": args.port},
    });
    if !args.tcp {
        request["method"] = args.method.clone().into();
        request["path"] = args.path.clone().into();
        if let Some(host) = &args.host {
            request["host"] = host.clone().into();
        }
        let mut headers = serde_json::Map::new();
        for (name, value) in &args.headers {
            let entry = headers
                .entry(name.clone())
                .or_insert_with(|| serde_json::Value::Array(Vec::new()));
            entry
                .as_array_mut()
                .expect("an array")
                .push(value.clone().into());
        }
        request["headers"] = headers.into();
    }
    request
}

pub fn run(args: WhyArgs) -> anyhow::Result<ExitCode> {
    let body = serde_json::to_vec(&describe(&args)).expect("serializable");
    let addr = &args.sidecar_admin;
    let (status, answer) = admin_http::exchange(addr, Method::POST, PATH, Some(body))
        .with_context(|| {
            format!(
                "asking the sidecar admin at {addr} (it answers on loopback only: run in the destination pod, or `kubectl port-forward pod/NAME 15020` and keep --sidecar-admin 127.0.0.1:15020)"
            )
        })?;
    let text = String::from_utf8_lossy(&answer);
    match status {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => anyhow::bail!(
            "{addr} does not explain decisions to this caller (a sidecar answers on loopback only, or it is older than this ward)"
        ),
        _ => anyhow::bail!("the sidecar at {addr} answered {status}: {}", text.trim()),
    }
    if args.json {
        println!("{}", text.trim());
        return Ok(ExitCode::SUCCESS);
    }
    let report: WhyReport = serde_json::from_slice(&answer)
        .with_context(|| format!("the sidecar at {addr} answered something else than a report"))?;
    print!("{}", render(&report, args.source.as_ref()));
    Ok(ExitCode::SUCCESS)
}

/// The report for a person.
fn render(r: &WhyReport, source: Option<&SpiffeId>) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let w = &r.workload;
    let labels: Vec<String> = w.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(
        out,
        "workload:   namespace {} labels {{{}}}, policy set version {}",
        w.namespace,
        labels.join(","),
        r.policy_version
    );
    let caller = source.map_or("a plaintext caller (no identity)".to_owned(), |s| {
        s.to_string()
    });
    let _ = writeln!(out, "caller:     {caller}");
    let _ = writeln!(out, "decision:   {}", r.decision.to_uppercase());
    let deciding = match (&r.policy, r.rule) {
        (Some(p), Some(rule)) => format!("{p} rule {rule} ({})", r.reason),
        (Some(p), None) => format!("{p} ({})", r.reason),
        (None, _) => format!("no policy: {}", r.reason),
    };
    let _ = writeln!(out, "deciding:   {deciding}");
    if let Some(header) = &r.denied_by {
        let _ = writeln!(out, "x-ward-denied-by: {header}");
    }
    let _ = writeln!(out, "mTLS mode:  {} on this port", r.mtls_mode);
    if r.plaintext_refused {
        let _ = writeln!(
            out,
            "note:       the port is STRICT: a plaintext caller is refused before any policy is asked"
        );
    }
    for (kind, list) in [("dry-run", &r.dry_run_matches), ("AUDIT", &r.audit_matches)] {
        for m in list {
            let _ = writeln!(
                out,
                "{kind} match: {} rule {} ({})",
                m.policy, m.rule, m.action
            );
        }
    }
    if r.near_misses.is_empty() {
        let _ = writeln!(out, "near misses: none (no rule failed on one field only)");
    } else {
        let _ = writeln!(out, "near misses (matched all but one field):");
        for m in &r.near_misses {
            let dry = if m.dry_run { ", dry-run" } else { "" };
            let _ = writeln!(
                out,
                "  {} rule {} ({}{dry}): failed on {}",
                m.policy, m.rule, m.action, m.field
            );
        }
    }
    let _ = writeln!(
        out,
        "policies in force for this workload: {}",
        r.policies.len()
    );
    for p in &r.policies {
        let dry = if p.dry_run { " dry-run" } else { "" };
        let _ = writeln!(out, "  {} {}{dry}", p.name, p.action);
    }
    out
}
