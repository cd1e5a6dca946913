//! `ward-proxy init`: command line flags (each with a `WARD_*` environment
//! fallback) and what the subcommand does.

use std::fmt::Display;
use std::str::FromStr;

use clap::Args;
use clap::builder::BoolishValueParser;

use super::{CaptureConfig, CaptureError, Cidr, InboundPorts};

#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// Print the commands that would run, run nothing.
    #[arg(long, env = "WARD_DRY_RUN", value_parser = BoolishValueParser::new())]
    pub dry_run: bool,
    /// Remove Ward's rules and chains instead of installing them.
    #[arg(long, env = "WARD_REMOVE", value_parser = BoolishValueParser::new())]
    pub remove: bool,
    #[arg(long, env = "WARD_INBOUND_PORT", default_value_t = 15006)]
    pub inbound_port: u16,
    #[arg(long, env = "WARD_OUTBOUND_PORT", default_value_t = 15001)]
    pub outbound_port: u16,
    /// The proxy's UID: its own connections are not captured.
    #[arg(long, env = "WARD_PROXY_UID", default_value_t = 1337)]
    pub proxy_uid: u32,
    /// The proxy's GID, to recognise its connections by group as well.
    #[arg(long, env = "WARD_PROXY_GID")]
    pub proxy_gid: Option<u32>,
    /// Never captured.
    #[arg(long, env = "WARD_ADMIN_PORT", default_value_t = 15020)]
    pub admin_port: u16,
    /// Inbound ports to capture: `*` (all) or a list such as `8080,9090`.
    #[arg(long, env = "WARD_INCLUDE_INBOUND_PORTS", default_value = "*")]
    pub include_inbound_ports: String,
    #[arg(long, env = "WARD_EXCLUDE_INBOUND_PORTS", default_value = "", value_parser = List::<u16>::parse)]
    pub exclude_inbound_ports: List<u16>,
    #[arg(long, env = "WARD_EXCLUDE_OUTBOUND_PORTS", default_value = "", value_parser = List::<u16>::parse)]
    pub exclude_outbound_ports: List<u16>,
    /// Destinations not captured, e.g. `10.96.0.0/12,fd00::/8`.
    #[arg(long, env = "WARD_EXCLUDE_OUTBOUND_CIDRS", default_value = "", value_parser = List::<Cidr>::parse)]
    pub exclude_outbound_cidrs: List<Cidr>,
}

impl InitArgs {
    pub fn config(&self) -> Result<CaptureConfig, String> {
        Ok(CaptureConfig {
            inbound_port: self.inbound_port,
            outbound_port: self.outbound_port,
            proxy_uid: self.proxy_uid,
            proxy_gid: self.proxy_gid,
            admin_port: self.admin_port,
            include_inbound_ports: parse_inbound_ports(&self.include_inbound_ports)?,
            exclude_inbound_ports: self.exclude_inbound_ports.0.clone(),
            exclude_outbound_ports: self.exclude_outbound_ports.0.clone(),
            exclude_outbound_cidrs: self.exclude_outbound_cidrs.0.clone(),
        })
    }
}

/// A comma separated list (`8080,9090`); empty means none, so that an empty
/// `WARD_*` variable is accepted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct List<T>(pub Vec<T>);

impl<T: FromStr<Err: Display>> List<T> {
    pub fn parse(value: &str) -> Result<Self, String> {
        value
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| item.parse().map_err(|e| format!("{item:?}: {e}")))
            .collect::<Result<_, _>>()
            .map(List)
    }
}

/// `*` or a comma separated list of ports.
pub fn parse_inbound_ports(value: &str) -> Result<InboundPorts, String> {
    if value.trim() == "*" {
        return Ok(InboundPorts::All);
    }
    value
        .split(',')
        .map(|port| {
            port.trim()
                .parse()
                .map_err(|_| format!("invalid inbound port {port:?}: expected `*` or 1,2,3"))
        })
        .collect::<Result<_, _>>()
        .map(InboundPorts::Only)
}

/// Runs `init`: prints the plan on `--dry-run`, otherwise applies or removes.
pub fn run_init(args: &InitArgs) -> Result<(), InitError> {
    let config = args.config().map_err(InitError::Config)?;
    let families = super::available_families();
    let plan = if args.remove {
        super::remove_plan(&families)
    } else {
        super::apply_plan(&config, &families)
    };
    if args.dry_run {
        plan.iter().for_each(|step| println!("{step}"));
        return Ok(());
    }
    plan.iter().try_for_each(super::run)?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Capture(#[from] CaptureError),
}
