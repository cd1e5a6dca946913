//! `ward authz check|lint` (offline) and `ward authz why` (the live mesh,
//! [`super::why`]).

use anyhow::Context;
use clap::Subcommand;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use ward_policy::lint::{self, Severity};
use ward_policy::request::OwnedRequest;
use ward_policy::{EvalOptions, PolicySet, TrustDomainAliases};

#[derive(Subcommand)]
pub enum AuthzCommand {
    /// Decide one request against a policy set, as the proxy would.
    /// Prints the decision as JSON; exits 0 whatever the decision, 1 when
    /// the policies or the request are invalid.
    Check {
        /// Policy files or directories (every *.yaml/*.yml directly inside).
        #[arg(long = "policies", required = true, num_args = 1..)]
        policies: Vec<PathBuf>,
        /// The workload's namespace.
        #[arg(long)]
        namespace: String,
        /// A workload label, `key=value`; repeat for several.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Policies in this namespace apply mesh-wide.
        #[arg(long, env = "WARD_ROOT_NAMESPACE", default_value = "ward-system")]
        root_namespace: String,
        /// The mesh's trust domain.
        #[arg(long, env = "WARD_TRUST_DOMAIN", default_value = "cluster.local")]
        trust_domain: String,
        /// A trust-domain alias of the mesh (Istio's `trustDomainAliases`):
        /// principals written for the trust domain, an alias or
        /// `cluster.local` match peers of all of them. Repeatable; the
        /// variable holds a comma-separated list.
        #[arg(
            long = "trust-domain-alias",
            value_name = "TRUST_DOMAIN",
            env = "WARD_TRUST_DOMAIN_ALIASES",
            value_delimiter = ',',
            value_parser = parse_alias
        )]
        trust_domain_aliases: Vec<String>,
        /// The request as JSON, or `-` for standard input.
        #[arg(long)]
        request: String,
    },
    /// Ask the destination's sidecar why it allows or denies one request:
    /// its decision on the policies it enforces now, the deciding policy
    /// and rule, and the rules that matched all but one field. Exits 0
    /// whatever the decision, 1 when the sidecar cannot be asked.
    Why(super::why::WhyArgs),
    /// Report policies that load but probably do not do what was meant.
    Lint {
        /// A policy directory or file.
        path: PathBuf,
        /// YAML/JSON list of `{namespace, labels}`: also report selectors
        /// that match none of these workloads.
        #[arg(long)]
        workloads: Option<PathBuf>,
        /// Policies in this namespace apply mesh-wide.
        #[arg(long, env = "WARD_ROOT_NAMESPACE", default_value = "ward-system")]
        root_namespace: String,
        /// The mesh's trust domain: principals outside it, its aliases and
        /// `cluster.local` are reported.
        #[arg(long, env = "WARD_TRUST_DOMAIN", default_value = "cluster.local")]
        trust_domain: String,
        /// A trust-domain alias of the mesh (see `ward authz check`).
        #[arg(
            long = "trust-domain-alias",
            value_name = "TRUST_DOMAIN",
            env = "WARD_TRUST_DOMAIN_ALIASES",
            value_delimiter = ',',
            value_parser = parse_alias
        )]
        trust_domain_aliases: Vec<String>,
        /// Exit 1 when there are warnings (notes do not count).
        #[arg(long)]
        strict: bool,
    },
}

/// A trust domain, as the engine will take it (a usage error otherwise).
fn parse_alias(arg: &str) -> Result<String, String> {
    TrustDomainAliases::new([arg])
        .map(|_| arg.to_owned())
        .map_err(|e| e.to_string())
}

fn aliases(list: &[String]) -> TrustDomainAliases {
    // Each was validated by `parse_alias`.
    TrustDomainAliases::new(list).unwrap_or_default()
}

fn parse_label(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected key=value, got {arg:?}")),
    }
}

pub fn run(cmd: AuthzCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuthzCommand::Why(args) => super::why::run(args),
        AuthzCommand::Check {
            policies,
            namespace,
            labels,
            root_namespace,
            trust_domain,
            trust_domain_aliases,
            request,
        } => check(
            &policies,
            &namespace,
            labels.into_iter().collect(),
            EvalOptions {
                root_namespace,
                trust_domain,
            },
            &aliases(&trust_domain_aliases),
            &request,
        ),
        AuthzCommand::Lint {
            path,
            workloads,
            root_namespace,
            trust_domain,
            trust_domain_aliases,
            strict,
        } => lint_cmd(
            &path,
            workloads.as_ref(),
            &EvalOptions {
                root_namespace,
                trust_domain,
            },
            &aliases(&trust_domain_aliases),
            strict,
        ),
    }
}

fn load(paths: &[PathBuf]) -> Option<PolicySet> {
    match PolicySet::load_paths(paths) {
        Ok(set) => Some(set),
        Err(e) => {
            eprintln!("invalid policies:\n{e}");
            None
        }
    }
}

fn check(
    policies: &[PathBuf],
    namespace: &str,
    labels: BTreeMap<String, String>,
    options: EvalOptions,
    trust_domain_aliases: &TrustDomainAliases,
    request: &str,
) -> anyhow::Result<ExitCode> {
    let Some(set) = load(policies) else {
        return Ok(ExitCode::FAILURE);
    };
    let text = if request == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the request from standard input")?;
        s
    } else {
        std::fs::read_to_string(request).with_context(|| format!("reading {request}"))?
    };
    let req = match OwnedRequest::from_json(&text) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("invalid request {request}: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let workload =
        set.for_workload_with_aliases(namespace, &labels, &options, trust_domain_aliases);
    let d = workload.evaluate(&req.attrs());
    let out = serde_json::json!({
        "decision": if d.allowed { "allow" } else { "deny" },
        "policy": d.policy.map(|p| p.to_string()),
        "rule": d.rule,
        "dry_run_matches": d.dry_run_matches.iter().map(|m| m.policy.to_string()).collect::<Vec<_>>(),
        "audit_matches": d.audit_matches.iter().map(|m| m.policy.to_string()).collect::<Vec<_>>(),
        "reason": d.reason.as_str(),
    });
    println!("{out}");
    Ok(ExitCode::SUCCESS)
}

fn lint_cmd(
    path: &PathBuf,
    workloads: Option<&PathBuf>,
    options: &EvalOptions,
    trust_domain_aliases: &TrustDomainAliases,
    strict: bool,
) -> anyhow::Result<ExitCode> {
    let Some(set) = load(std::slice::from_ref(path)) else {
        return Ok(ExitCode::FAILURE);
    };
    let workloads = match workloads {
        None => None,
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            match lint::parse_workloads(&p.display().to_string(), &text) {
                Ok(w) => Some(w),
                Err(e) => {
                    eprintln!("invalid workload list: {e}");
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
    };
    let warnings = lint::lint(&set, workloads.as_deref(), options, trust_domain_aliases);
    for w in &warnings {
        println!("{w}");
    }
    let failing = warnings.iter().any(|w| w.severity == Severity::Warning);
    Ok(if strict && failing {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
