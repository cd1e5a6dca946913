//! Helpers shared by Ward's test suites.
//!
//! A test that needs something the machine may lack (root, iptables, an
//! external tool) asks here first. When it is missing the test prints
//! `skipped: <reason>` and returns, unless `WARD_TEST_STRICT=1` is set (as in
//! CI), where a missing prerequisite fails the test instead.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::Command;

/// True when `WARD_TEST_STRICT=1`: no test may skip.
pub fn strict() -> bool {
    std::env::var("WARD_TEST_STRICT").is_ok_and(|v| v == "1")
}

/// Returns true when `available`; otherwise reports the skip (or panics in
/// strict mode) and returns false, so the caller can `return`.
pub fn prerequisite(available: bool, reason: &str) -> bool {
    if available {
        return true;
    }
    if strict() {
        panic!("WARD_TEST_STRICT=1 and a prerequisite is missing: {reason}");
    }
    eprintln!("skipped: {reason}");
    false
}

/// Where an executable lives on `PATH`, if anywhere.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

/// `prerequisite` for an external tool on `PATH`.
pub fn require_tool(tool: &str) -> bool {
    prerequisite(which(tool).is_some(), &format!("{tool} is not installed"))
}

/// `prerequisite` for running as root (network namespaces, iptables).
pub fn require_root() -> bool {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok());
    prerequisite(
        uid.as_deref().map(str::trim) == Some("0"),
        "needs root (network namespaces and iptables)",
    )
}

/// Skips (or fails in strict mode) the calling test unless `$tool` is on PATH.
#[macro_export]
macro_rules! require_tool {
    ($tool:expr) => {
        if !$crate::require_tool($tool) {
            return;
        }
    };
}
