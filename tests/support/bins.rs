//! The workspace binaries integration tests run as real processes: where
//! they are, `ward` (the operator CLI) run as a user runs it, and checks on
//! what a process printed.
//!
//! Include with `#[path = "support/bins.rs"] mod bins;` from a test, or
//! `#[path = "bins.rs"] mod bins;` from a support module.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// Paths of the workspace binaries.
pub struct Bins {
    pub ward: String,
    pub proxy: String,
    pub control_plane: String,
    pub testapp: String,
}

/// The binaries, built once per test run.
///
/// These tests belong to the root package `ward`, and Cargo only builds a
/// package's binaries for its *own* integration tests (`CARGO_BIN_EXE_*`):
/// so we ask Cargo for the others (a no-op when up to date, and never
/// stale), in the profile directory this test binary runs from
/// (`target/<profile>/deps/..`).
pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet"]);
        for (package, bin) in [
            ("ward-proxy", "ward-proxy"),
            ("ward-control-plane", "ward-control-plane"),
            ("ward-testapp", "ward-testapp"),
        ] {
            build.args(["-p", package, "--bin", bin]);
        }
        build.arg("--manifest-path");
        build.arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "cargo build of the mesh binaries failed");
        let bin = |name: &str| {
            let path = profile_dir.join(name);
            assert!(path.is_file(), "{} was not built", path.display());
            path.to_str().expect("UTF-8 path").to_owned()
        };
        Bins {
            ward: env!("CARGO_BIN_EXE_ward").to_owned(),
            proxy: bin("ward-proxy"),
            control_plane: bin("ward-control-plane"),
            testapp: bin("ward-testapp"),
        }
    })
}

/// `ward ARGS` (this package's binary), without input; its output.
pub fn ward(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(args)
        .output()
        .unwrap()
}

/// `ward ARGS` with `stdin` written to its standard input, which is then
/// closed; its output. A failed write (the binary exited before reading
/// it all, as it may on an invalid input) is left to the checks on the
/// output.
pub fn ward_with_stdin(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let _ = input.write_all(stdin);
    drop(input);
    child.wait_with_output().unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Panics with stdout and stderr unless `out` succeeded; returns stdout.
pub fn assert_ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// `ward ca init`: a new CA for `trust_domain` in `data_dir`.
pub fn ca_init(data_dir: &Path, trust_domain: &str) {
    let data_dir = data_dir.to_str().expect("UTF-8 path");
    assert_ok(
        ward(&[
            "ca",
            "init",
            "--data-dir",
            data_dir,
            "--trust-domain",
            trust_domain,
        ]),
        "ward ca init",
    );
}

/// A single-use join token for `spiffe_id` (`ward token create`, valid 10
/// minutes) from the CA in `data_dir`.
pub fn join_token(data_dir: &Path, spiffe_id: &str) -> String {
    let data_dir = data_dir.to_str().expect("UTF-8 path");
    let out = ward(&[
        "token",
        "create",
        "--data-dir",
        data_dir,
        "--spiffe-id",
        spiffe_id,
        "--ttl",
        "10m",
    ]);
    assert_ok(out, "ward token create").trim().to_owned()
}

/// The last `lines` lines of a (log) file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
