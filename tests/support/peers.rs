//! Independent peers: `tests/peers/*.py`, written with libraries that share
//! no code with Ward or `ward-testapp` (grpcio, `websockets`), run with the
//! system's `/usr/bin/python3` (the pods' application user cannot read
//! root's home) and the libraries `.ci/run` installs into
//! `/opt/ward-test-peers/python` (`WARD_TEST_PEERS_PYTHONPATH` to use
//! another directory).
//!
//! Include with `#[path = "support/peers.rs"] mod peers;`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

pub const PYTHON: &str = "/usr/bin/python3";

/// Where the peers' Python libraries are.
pub fn pythonpath() -> String {
    std::env::var("WARD_TEST_PEERS_PYTHONPATH")
        .unwrap_or_else(|_| "/opt/ward-test-peers/python".to_owned())
}

/// The path of `tests/peers/<name>`.
pub fn script(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers")
        .join(name);
    path.to_str().unwrap().to_owned()
}

/// Whether [`PYTHON`] imports `modules` (e.g. `"grpc, websockets"`) from
/// [`pythonpath`]; otherwise reports the skip (a failure under
/// `WARD_TEST_STRICT=1`) and returns false.
pub fn available(modules: &str) -> bool {
    let imports = Command::new(PYTHON)
        .args(["-c", &format!("import {modules}")])
        .env("PYTHONPATH", pythonpath())
        .output()
        .is_ok_and(|out| out.status.success());
    ward_testkit::prerequisite(
        imports,
        &format!(
            "{PYTHON} cannot import {modules} from {} (.ci/run installs them)",
            pythonpath()
        ),
    )
}

/// `python3 SCRIPT ARGS…` with the peers' libraries, as argv (through
/// `env`, so it runs as is in a pod, under `setpriv`).
pub fn argv(script_name: &str, args: &[&str]) -> Vec<String> {
    let mut argv = vec![
        "env".to_owned(),
        format!("PYTHONPATH={}", pythonpath()),
        PYTHON.to_owned(),
        script(script_name),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    argv
}
