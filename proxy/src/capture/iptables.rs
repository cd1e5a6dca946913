//! Turning rules into iptables commands ([`Step`]s) and running them, plus
//! the one address capture needs (`::6` on `lo`, see [`crate::app`]).
//!
//! A plan is pure data, so `--dry-run` prints exactly what [`run`] would
//! execute, as a shell script.

use std::fmt;
use std::io::Write;
use std::process::{Command, Output, Stdio};

use super::{Family, Rule, WARD_CHAINS, hooks, rules};

/// Upper bound on duplicate jumps `remove` deletes (older tools may have
/// added a jump more than once).
const MAX_DUPLICATES: usize = 64;

/// One action on the `nat` table of one family, or on `lo`'s addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `iptables-restore --noflush` with this input: declares (and so
    /// flushes) Ward's chains and fills them, atomically.
    Restore { family: Family, input: String },
    /// Append the rule unless an identical one exists (`-C || -A`).
    EnsureRule(Rule),
    /// Delete every copy of the rule (`while -C; do -D; done`).
    DeleteRule(Rule),
    /// Flush the chain if it exists.
    FlushChain { family: Family, chain: &'static str },
    /// Delete the (empty, unreferenced) chain if it exists.
    DeleteChain { family: Family, chain: &'static str },
    /// Add the inbound's IPv6 source address to `lo` (`ip -6 addr replace
    /// ADDRESS dev lo nodad`: idempotent, usable at once), unless IPv6 is
    /// disabled on `lo`, where no IPv6 connection can reach the pod address.
    AddLoopbackAddress { address: String },
    /// Delete that address from `lo` if it is there.
    DeleteLoopbackAddress { address: String },
}

/// Where the kernel says whether IPv6 is off on `lo` (per network namespace:
/// the one `init` runs in).
const LO_DISABLE_IPV6: &str = "/proc/sys/net/ipv6/conf/lo/disable_ipv6";

/// Why capture could not be set up or removed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("could not run `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

/// The steps that install capture for `families`: one atomic restore of
/// Ward's chains per family, then the jumps into them if missing.
pub fn apply_plan(config: &super::CaptureConfig, families: &[Family]) -> Vec<Step> {
    let all = rules(config);
    let mut steps = Vec::new();
    // First, so that a failure changes no rule.
    if families.contains(&Family::V6) {
        steps.push(Step::AddLoopbackAddress {
            address: Family::V6.inbound_source(),
        });
    }
    for &family in families {
        let own: Vec<&Rule> = all.iter().filter(|r| r.family == family).collect();
        steps.push(Step::Restore {
            family,
            input: restore_input(&own),
        });
    }
    for &family in families {
        steps.extend(hooks(family).into_iter().map(Step::EnsureRule));
    }
    steps
}

/// The steps that remove capture: the jumps first (so the chains are no
/// longer referenced), then all of Ward's chains flushed (they reference each
/// other), then deleted, then `::6` taken off `lo` (IPv6). Nothing else is
/// touched.
pub fn remove_plan(families: &[Family]) -> Vec<Step> {
    let mut steps = Vec::new();
    for &family in families {
        steps.extend(hooks(family).into_iter().map(Step::DeleteRule));
        steps.extend(WARD_CHAINS.map(|chain| Step::FlushChain { family, chain }));
        steps.extend(WARD_CHAINS.map(|chain| Step::DeleteChain { family, chain }));
    }
    if families.contains(&Family::V6) {
        steps.push(Step::DeleteLoopbackAddress {
            address: Family::V6.inbound_source(),
        });
    }
    steps
}

/// iptables-restore input for the `nat` table: chain declarations, rules.
fn restore_input(rules: &[&Rule]) -> String {
    let mut input = String::from("*nat\n");
    for chain in WARD_CHAINS {
        input.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for rule in rules {
        input.push_str(&format!("{rule}\n"));
    }
    input.push_str("COMMIT\n");
    input
}

/// `iptables -w -t nat OP CHAIN ARGS…` for one family.
fn iptables_args(family: Family, op: &str, chain: &str, args: &[String]) -> Vec<String> {
    let mut argv: Vec<String> = [family.iptables(), "-w", "-t", "nat", op, chain]
        .map(String::from)
        .to_vec();
    argv.extend(args.iter().cloned());
    argv
}

fn rule_args(rule: &Rule, op: &str) -> Vec<String> {
    iptables_args(rule.family, op, rule.chain, &rule.args)
}

fn chain_exists_args(family: Family, chain: &str) -> Vec<String> {
    iptables_args(family, "-n", "-L", &[chain.to_string()])
}

fn restore_args(family: Family) -> Vec<String> {
    [family.iptables_restore(), "-w", "--noflush"]
        .map(String::from)
        .to_vec()
}

/// `ip -6 addr OP ADDRESS dev lo [EXTRA…]`.
fn address_args(op: &str, address: &str, extra: &[&str]) -> Vec<String> {
    let mut argv: Vec<String> = ["ip", "-6", "addr", op, address, "dev", "lo"]
        .map(String::from)
        .to_vec();
    argv.extend(extra.iter().map(|a| a.to_string()));
    argv
}

/// `ip -6 -o addr show dev lo to ADDRESS`: one line when it is there.
fn show_address_args(address: &str) -> Vec<String> {
    ["ip", "-6", "-o", "addr", "show", "dev", "lo", "to", address]
        .map(String::from)
        .to_vec()
}

fn ipv6_enabled_on_lo() -> bool {
    std::fs::read_to_string(LO_DISABLE_IPV6).is_ok_and(|value| value.trim() == "0")
}

/// The step as a shell command line (what `--dry-run` prints).
impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sh = |argv: Vec<String>| argv.join(" ");
        match self {
            Step::Restore { family, input } => {
                write!(f, "{} <<'EOF'\n{input}EOF", sh(restore_args(*family)))
            }
            Step::EnsureRule(rule) => write!(
                f,
                "{} 2>/dev/null || {}",
                sh(rule_args(rule, "-C")),
                sh(rule_args(rule, "-A"))
            ),
            Step::DeleteRule(rule) => write!(
                f,
                "while {} 2>/dev/null; do {}; done",
                sh(rule_args(rule, "-C")),
                sh(rule_args(rule, "-D"))
            ),
            Step::FlushChain { family, chain } => write!(
                f,
                "{} >/dev/null 2>&1 && {}",
                sh(chain_exists_args(*family, chain)),
                sh(iptables_args(*family, "-F", chain, &[]))
            ),
            Step::DeleteChain { family, chain } => write!(
                f,
                "{} >/dev/null 2>&1 && {}",
                sh(chain_exists_args(*family, chain)),
                sh(iptables_args(*family, "-X", chain, &[]))
            ),
            Step::AddLoopbackAddress { address } => write!(
                f,
                "[ \"$(cat {LO_DISABLE_IPV6} 2>/dev/null)\" = 0 ] && {}",
                sh(address_args("replace", address, &["nodad"]))
            ),
            Step::DeleteLoopbackAddress { address } => write!(
                f,
                "{} | grep -q . && {}",
                sh(show_address_args(address)),
                sh(address_args("del", address, &[]))
            ),
        }
    }
}

/// Executes one step.
pub fn run(step: &Step) -> Result<(), CaptureError> {
    match step {
        Step::Restore { family, input } => {
            execute(&restore_args(*family), Some(input))?;
        }
        Step::EnsureRule(rule) => {
            if !succeeds(&rule_args(rule, "-C"))? {
                execute(&rule_args(rule, "-A"), None)?;
            }
        }
        Step::DeleteRule(rule) => {
            for _ in 0..MAX_DUPLICATES {
                if !succeeds(&rule_args(rule, "-C"))? {
                    break;
                }
                execute(&rule_args(rule, "-D"), None)?;
            }
        }
        Step::FlushChain { family, chain } => {
            if succeeds(&chain_exists_args(*family, chain))? {
                execute(&iptables_args(*family, "-F", chain, &[]), None)?;
            }
        }
        Step::DeleteChain { family, chain } => {
            if succeeds(&chain_exists_args(*family, chain))? {
                execute(&iptables_args(*family, "-X", chain, &[]), None)?;
            }
        }
        Step::AddLoopbackAddress { address } => {
            if ipv6_enabled_on_lo() {
                execute(&address_args("replace", address, &["nodad"]), None)?;
            }
        }
        Step::DeleteLoopbackAddress { address } => {
            let shown = output(&show_address_args(address), None)?;
            if shown.status.success() && !shown.stdout.trim_ascii().is_empty() {
                execute(&address_args("del", address, &[]), None)?;
            }
        }
    }
    Ok(())
}

/// Runs a check (`-C`, `-L`): Ok(false) when the command says no.
fn succeeds(argv: &[String]) -> Result<bool, CaptureError> {
    Ok(output(argv, None)?.status.success())
}

/// Runs a command that must succeed.
fn execute(argv: &[String], stdin: Option<&str>) -> Result<(), CaptureError> {
    let out = output(argv, stdin)?;
    if out.status.success() {
        return Ok(());
    }
    Err(CaptureError::Failed {
        command: argv.join(" "),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

fn output(argv: &[String], stdin: Option<&str>) -> Result<Output, CaptureError> {
    let spawn_err = |source| CaptureError::Spawn {
        command: argv.join(" "),
        source,
    };
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // Dropping the pipe at the end of this block closes it: EOF.
        pipe.write_all(input.as_bytes()).map_err(spawn_err)?;
    }
    child.wait_with_output().map_err(spawn_err)
}
