//! Helpers shared by Ward's test suites.
//!
//! A test that needs something the machine may lack (root, iptables, an
//! external tool) asks here first. When it is missing the test prints
//! `skipped: <reason>` and returns, unless `WARD_TEST_STRICT` is true (`1`, as in
//! CI), where a missing prerequisite fails the test instead.
#![forbid(unsafe_code)]

pub mod kubernetes;

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
    report_skip(reason);
    false
}

/// Makes a skip visible in a plain `cargo test`, which captures what tests
/// print and reports a skipped test as `ok`: one line written straight to
/// the terminal's stderr (not captured), and a line in this run's skip list,
/// `target/ward-test-skips/<cargo pid>.txt`, whose count the line repeats.
fn report_skip(reason: &str) {
    use std::io::Write as _;
    let test = std::thread::current()
        .name()
        .unwrap_or("<unnamed>")
        .to_owned();
    let binary = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let entry = format!("{binary} {test}: {reason}\n");
    let summary = match skip_list() {
        Some(list) => {
            let appended = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&list)
                .and_then(|mut f| f.write_all(entry.as_bytes()));
            let count = std::fs::read_to_string(&list)
                .map(|text| text.lines().count())
                .unwrap_or(0);
            match appended {
                Ok(()) => format!(
                    " ({count} skipped so far in this run, listed in {})",
                    list.display()
                ),
                Err(_) => String::new(),
            }
        }
        None => String::new(),
    };
    let line = format!("skipped: {test}: {reason}{summary}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `target/ward-test-skips/<pid of the cargo that runs the tests>.txt`,
/// from the test binary's place (`target/<profile>/deps/<binary>`).
fn skip_list() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let target = exe.parent()?.parent()?.parent()?;
    let dir = target.join("ward-test-skips");
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir.join(format!("{}.txt", std::os::unix::process::parent_id())))
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
