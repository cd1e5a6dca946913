//! The workspace binaries integration tests run as real processes.
//!
//! Include with `#[path = "bins.rs"] mod bins;` from a support module.

use std::path::PathBuf;
use std::process::Command;
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
