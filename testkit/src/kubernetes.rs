//! Schema checks of Kubernetes objects with `kubernetes-validate` (the
//! Kubernetes OpenAPI schemas as JSON Schema, strict: an unknown field is an
//! error; `.ci/run` installs it). One runner for every suite that hands
//! Kubernetes something: `tests/k8s_schema.rs` (manifest files), the
//! injector's unit tests, the webhook test and `ward inject`'s tests
//! (the pods they produce).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The tool, looked up on `PATH`.
pub const TOOL: &str = "kubernetes-validate";

/// The Kubernetes version whose schemas objects are checked against.
pub const VERSION: &str = "1.32.0";

/// What `kubernetes-validate --strict -k VERSION` said: its exit status and
/// every line it printed (stdout, then stderr).
#[derive(Debug)]
pub struct Report {
    pub success: bool,
    pub lines: Vec<String>,
}

impl Report {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// The `INFO … passed` lines: one per document that validated.
    pub fn passed(&self) -> usize {
        self.lines
            .iter()
            .filter(|l| l.starts_with("INFO ") && l.contains(" passed for resource "))
            .count()
    }
}

fn run(files: &[PathBuf], stdin: Option<&str>) -> Report {
    let mut child = Command::new(TOOL)
        .args(["--strict", "-k", VERSION])
        .args(files)
        .args(stdin.map(|_| "-"))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {TOOL}: {e}"));
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin piped");
        pipe.write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("write to {TOOL}: {e}"));
    }
    let output = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait for {TOOL}: {e}"));
    let lines = String::from_utf8_lossy(&output.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&output.stderr).lines())
        .map(str::to_owned)
        .collect();
    Report {
        success: output.status.success(),
        lines,
    }
}

/// Validates manifest files. `Ok` when the tool succeeded and printed
/// nothing but `INFO` lines and `WARN`ings about resources of the API groups
/// in `custom` (custom resources, which it has no schema for); otherwise
/// `Err` with its output.
pub fn validate_files(files: &[PathBuf], custom: &[&str]) -> Result<Report, String> {
    let report = run(files, None);
    let expected = |line: &str| {
        line.starts_with("INFO ")
            || (line.starts_with("WARN ") && custom.iter().any(|g| line.contains(g)))
    };
    if report.success && report.lines.iter().all(|l| expected(l)) {
        Ok(report)
    } else {
        Err(report.text())
    }
}

/// Validates `objects`, each one Kubernetes object as JSON (or YAML) with
/// `apiVersion`, `kind` and `metadata.name`, fed on stdin. `Ok` only when
/// every one of them passed (a document the tool has no schema for, a
/// warning or an error is an `Err` with its output).
pub fn validate_objects(objects: &[String]) -> Result<(), String> {
    if objects.is_empty() {
        return Ok(());
    }
    let report = run(&[], Some(&objects.join("\n---\n")));
    let only_passes = report.lines.iter().all(|l| l.starts_with("INFO "));
    if report.success && only_passes && report.passed() == objects.len() {
        Ok(())
    } else {
        Err(format!(
            "{} of {} object(s) passed:\n{}",
            report.passed(),
            objects.len(),
            report.text()
        ))
    }
}

/// For tests: [`validate_objects`], panicking with the tool's output and
/// `what` when an object does not validate. When the tool is missing the
/// check is skipped (`skipped: <reason>`, or a failure under
/// `WARD_TEST_STRICT`) and the caller carries on with its other assertions.
pub fn assert_valid(what: &str, objects: &[String]) {
    if !crate::prerequisite(
        crate::which(TOOL).is_some(),
        &format!("{TOOL} is not installed: the schema check of {what} did not run"),
    ) {
        return;
    }
    if let Err(output) = validate_objects(objects) {
        panic!("{what}: not a valid Kubernetes {VERSION} object:\n{output}");
    }
}
