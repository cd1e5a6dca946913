//! Traffic capture: the iptables rules that redirect a pod's TCP traffic into
//! the sidecar, in the spirit of `istio-init`.
//!
//! All rules live in Ward's own chains of the `nat` table, so that `remove`
//! can take out exactly what Ward added:
//!
//! * `PREROUTING -p tcp -j WARD_INBOUND`: traffic arriving at the pod.
//!   `WARD_INBOUND` returns for the admin port and excluded ports and sends
//!   the rest (or only the included ports) to `WARD_IN_REDIRECT`, which
//!   redirects to the inbound port (15006).
//! * `OUTPUT -p tcp -j WARD_OUTPUT`: traffic the pod sends. `WARD_OUTPUT`
//!   lets the proxy's own traffic (its UID/GID), loopback and excluded
//!   ports/CIDRs through and sends the rest to `WARD_REDIRECT`, which
//!   redirects to the outbound port (15001).
//!
//! Loopback, the one subtle case (see [`rules`]): a connection the proxy
//! makes to the pod's own non-loopback address leaves through `lo`. It is
//! the second leg of "the application calls itself through its own service":
//! the proxy handled it as outbound and must now see it as inbound, so it goes
//! through `WARD_INBOUND` (same exclusions as traffic from the network). Every
//! other connection through `lo` is left alone: the application talking to
//! itself needs no mTLS. The proxy's inbound leg to the application also
//! goes to the pod address (so loopback-only services stay private), from
//! the source address 127.0.0.6 ([`crate::app::INBOUND_SOURCE_V4`]) or `::6`
//! ([`crate::app::INBOUND_SOURCE_V6`]): the first rule of each family
//! returns it, or it would be redirected back into the proxy. IPv6 has no
//! spare loopback address, so `init` adds `::6/128` to `lo` (as
//! `istio-iptables` does), with `nodad` so it is usable at once.
//!
//! How rules are applied ([`apply`]): Ward's chains are declared and filled
//! by one `iptables-restore --noflush` per family, which is atomic and, since
//! declaring an existing chain flushes it, idempotent. The two jumps from the
//! built-in chains are then added with `iptables -C … || iptables -A …`, so
//! they exist exactly once and no other rule of those chains is touched.
//! IPv6 rules go to `ip6tables` only when it is installed, and only then is
//! `::6` added to `lo` (`ip -6 addr replace`, idempotent; skipped when IPv6
//! is disabled on `lo`); `remove` deletes it again.

mod cidr;
pub mod cli;
mod iptables;
pub mod listen;

#[cfg(test)]
mod tests;

use std::fmt;

pub use cidr::{Cidr, CidrParseError};
pub use iptables::{CaptureError, Step, apply_plan, remove_plan, run};

/// Ward's chains in the `nat` table, in the order they are declared.
pub const WARD_CHAINS: [&str; 4] = [WARD_INBOUND, WARD_IN_REDIRECT, WARD_OUTPUT, WARD_REDIRECT];
pub const WARD_INBOUND: &str = "WARD_INBOUND";
pub const WARD_IN_REDIRECT: &str = "WARD_IN_REDIRECT";
pub const WARD_OUTPUT: &str = "WARD_OUTPUT";
pub const WARD_REDIRECT: &str = "WARD_REDIRECT";

/// Which inbound ports are captured.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum InboundPorts {
    /// Every port except the admin port and the excluded ones.
    #[default]
    All,
    /// Only these ports (still minus the admin port and the excluded ones).
    Only(Vec<u16>),
}

/// What to capture and where to send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Where inbound connections are redirected (15006).
    pub inbound_port: u16,
    /// Where outbound connections are redirected (15001).
    pub outbound_port: u16,
    /// The proxy's UID: its own connections are not captured (1337).
    pub proxy_uid: u32,
    /// The proxy's GID, if its connections should be recognised by group too.
    pub proxy_gid: Option<u32>,
    /// The admin port, never captured (15020).
    pub admin_port: u16,
    pub include_inbound_ports: InboundPorts,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_outbound_cidrs: Vec<Cidr>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            inbound_port: 15006,
            outbound_port: 15001,
            proxy_uid: 1337,
            proxy_gid: None,
            admin_port: 15020,
            include_inbound_ports: InboundPorts::All,
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
        }
    }
}

/// IPv4 (`iptables`) or IPv6 (`ip6tables`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The command line tool for this family.
    pub fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    pub fn iptables_restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    /// The loopback host route, never captured.
    pub fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
    }

    /// The source of the inbound's connections to the application on the
    /// pod address, as a host route ([`crate::app`]).
    pub fn inbound_source(self) -> String {
        match self {
            Family::V4 => format!("{}/32", crate::app::INBOUND_SOURCE_V4),
            Family::V6 => format!("{}/128", crate::app::INBOUND_SOURCE_V6),
        }
    }
}

/// One rule of the `nat` table: `-A <chain> <args…>` in iptables syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub family: Family,
    pub chain: &'static str,
    pub args: Vec<String>,
}

impl Rule {
    fn new(family: Family, chain: &'static str, args: &[&str]) -> Self {
        let args = args.iter().map(|a| a.to_string()).collect();
        Self {
            family,
            chain,
            args,
        }
    }
}

/// The rule without the command: `-A CHAIN args…`, as iptables-save prints it.
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "-A {} {}", self.chain, self.args.join(" "))
    }
}

/// The jumps from the built-in chains into Ward's chains, for one family.
pub fn hooks(family: Family) -> Vec<Rule> {
    vec![
        Rule::new(family, "PREROUTING", &["-p", "tcp", "-j", WARD_INBOUND]),
        Rule::new(family, "OUTPUT", &["-p", "tcp", "-j", WARD_OUTPUT]),
    ]
}

/// The rules of Ward's own chains, IPv4 first, then IPv6. Pure: nothing is
/// run. Order within a chain matters (first match wins); see the module docs
/// for the loopback case.
pub fn rules(config: &CaptureConfig) -> Vec<Rule> {
    [Family::V4, Family::V6]
        .into_iter()
        .flat_map(|family| {
            let mut rules = redirect_rules(config, family);
            rules.extend(inbound_rules(config, family));
            rules.extend(output_rules(config, family));
            rules
        })
        .collect()
}

fn redirect_rules(config: &CaptureConfig, family: Family) -> Vec<Rule> {
    let redirect = |chain, port: u16| {
        let port = port.to_string();
        Rule::new(
            family,
            chain,
            &["-p", "tcp", "-j", "REDIRECT", "--to-ports", &port],
        )
    };
    vec![
        redirect(WARD_IN_REDIRECT, config.inbound_port),
        redirect(WARD_REDIRECT, config.outbound_port),
    ]
}

fn inbound_rules(config: &CaptureConfig, family: Family) -> Vec<Rule> {
    let port_rule = |port: u16, target| {
        let port = port.to_string();
        Rule::new(
            family,
            WARD_INBOUND,
            &["-p", "tcp", "--dport", &port, "-j", target],
        )
    };
    let mut rules = vec![port_rule(config.admin_port, "RETURN")];
    rules.extend(
        config
            .exclude_inbound_ports
            .iter()
            .map(|&port| port_rule(port, "RETURN")),
    );
    match &config.include_inbound_ports {
        InboundPorts::All => rules.push(Rule::new(
            family,
            WARD_INBOUND,
            &["-p", "tcp", "-j", WARD_IN_REDIRECT],
        )),
        InboundPorts::Only(ports) => {
            rules.extend(ports.iter().map(|&port| port_rule(port, WARD_IN_REDIRECT)))
        }
    }
    rules
}

fn output_rules(config: &CaptureConfig, family: Family) -> Vec<Rule> {
    let rule = |args: &[&str]| Rule::new(family, WARD_OUTPUT, args);
    let loopback = family.loopback();
    let owners = proxy_owners(config);
    let mut rules = Vec::new();
    // The inbound's own connection to the app on the pod address.
    let source = family.inbound_source();
    rules.push(rule(&["-s", &source, "-o", "lo", "-j", "RETURN"]));
    // The proxy calling the pod's own address: treat it as inbound.
    for (flag, id) in &owners {
        rules.push(rule(&[
            "-o",
            "lo",
            "!",
            "-d",
            loopback,
            "-m",
            "owner",
            flag,
            id,
            "-j",
            WARD_INBOUND,
        ]));
    }
    // Anything else on lo is the pod talking to itself: leave it alone.
    rules.push(rule(&["-o", "lo", "-j", "RETURN"]));
    // The proxy's own connections to the network.
    for (flag, id) in &owners {
        rules.push(rule(&["-m", "owner", flag, id, "-j", "RETURN"]));
    }
    // Loopback by address too (e.g. a policy route not via lo).
    rules.push(rule(&["-d", loopback, "-j", "RETURN"]));
    for port in &config.exclude_outbound_ports {
        rules.push(rule(&[
            "-p",
            "tcp",
            "--dport",
            &port.to_string(),
            "-j",
            "RETURN",
        ]));
    }
    let same_family = |cidr: &&Cidr| cidr.is_ipv4() == (family == Family::V4);
    for cidr in config.exclude_outbound_cidrs.iter().filter(same_family) {
        rules.push(rule(&["-d", &cidr.to_string(), "-j", "RETURN"]));
    }
    rules.push(rule(&["-j", WARD_REDIRECT]));
    rules
}

/// `--uid-owner UID` and, if set, `--gid-owner GID`.
fn proxy_owners(config: &CaptureConfig) -> Vec<(&'static str, String)> {
    let mut owners = vec![("--uid-owner", config.proxy_uid.to_string())];
    if let Some(gid) = config.proxy_gid {
        owners.push(("--gid-owner", gid.to_string()));
    }
    owners
}

/// The families this machine can program: IPv4 always, IPv6 when
/// `ip6tables` and `ip6tables-restore` are installed.
pub fn available_families() -> Vec<Family> {
    let mut families = vec![Family::V4];
    if on_path(Family::V6.iptables()) && on_path(Family::V6.iptables_restore()) {
        families.push(Family::V6);
    }
    families
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// Installs (or refreshes) the capture rules for `families`.
pub fn apply(config: &CaptureConfig, families: &[Family]) -> Result<(), CaptureError> {
    apply_plan(config, families).iter().try_for_each(run)
}

/// Removes exactly the jumps and chains Ward added; a no-op when absent.
pub fn remove(families: &[Family]) -> Result<(), CaptureError> {
    remove_plan(families).iter().try_for_each(run)
}
