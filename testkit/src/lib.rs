//! Helpers shared by Ward's test suites.
//!
//! A test that needs something the machine may lack (root, iptables, an
//! external tool) asks here first. When it is missing the test prints
//! `skipped: <reason>` and returns, unless `WARD_TEST_STRICT` is true (`1`, as in
//! CI), where a missing prerequisite fails the test instead.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::Command;

/// True when `WARD_TEST_STRICT` is set to a true value (`1`, `true`, `yes`,
/// `on`, any case): no test may skip. Unset, empty, `0`, `false`, `no` or
/// `off` is lenient; any other value panics rather than guess.
pub fn strict() -> bool {
    match std::env::var("WARD_TEST_STRICT") {
        Ok(value) => parse_strict(&value).unwrap_or_else(|e| panic!("{e}")),
        Err(_) => false,
    }
}

fn parse_strict(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "" | "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!(
            "WARD_TEST_STRICT={value:?}: expected 1/true/yes/on (strict) or 0/false/no/off (lenient)"
        )),
    }
}

/// Returns true when `available`; otherwise reports the skip (or panics in
/// strict mode) and returns false, so the caller can `return`.
pub fn prerequisite(available: bool, reason: &str) -> bool {
    if available {
        return true;
    }
    if strict() {
        panic!("WARD_TEST_STRICT is set and a prerequisite is missing: {reason}");
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

#[cfg(test)]
mod tests {
    use super::parse_strict;

    #[test]
    fn strict_accepts_the_usual_true_and_false_values_and_nothing_else() {
        for on in ["1", "true", "TRUE", "Yes", "on", " 1 "] {
            assert_eq!(parse_strict(on), Ok(true), "{on:?}");
        }
        for off in ["", "0", "false", "No", "OFF"] {
            assert_eq!(parse_strict(off), Ok(false), "{off:?}");
        }
        for bad in ["2", "ture", "strict", "y"] {
            let err = parse_strict(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }
}
