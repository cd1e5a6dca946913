//! `ward-control-plane` flag and environment handling, as a process.

use std::process::{Command, Output};

fn control_plane(args: &[&str], env: &[(&str, &str)]) -> Output {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ward-control-plane"));
    cmd.args(["--data-dir", data.path().to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .env_remove("KUBECONFIG");
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn two_policy_sources_are_refused() {
    let out = control_plane(&["--kubernetes", "--policy-dir", "/nonexistent"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("two policy sources"),
        "{}",
        stderr(&out)
    );
    let out = control_plane(
        &["--policy-dir", "/nonexistent"],
        &[("WARD_KUBERNETES", "true")],
    );
    assert!(
        stderr(&out).contains("two policy sources"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_false_environment_switch_is_off() {
    // WARD_KUBERNETES=false beside --policy-dir: the directory is the
    // source (and this one does not exist, so that is the error).
    let out = control_plane(
        &["--policy-dir", "/nonexistent"],
        &[
            ("WARD_KUBERNETES", "false"),
            ("WARD_K8S_TOKEN_REVIEW", "false"),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("policies in /nonexistent"), "{err}");
    assert!(!err.contains("two"), "{err}");
}

#[test]
fn two_token_checks_are_refused() {
    let out = control_plane(
        &[
            "--k8s-issuer",
            "https://kubernetes.default.svc",
            "--k8s-jwks-file",
            "/dev/null",
        ],
        &[("WARD_K8S_TOKEN_REVIEW", "true")],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("two token checks"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn lease_settings_that_could_elect_two_writers_are_refused_at_start() {
    let out = control_plane(&["--kubernetes", "--lease-renew-deadline", "15s"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("--lease-renew-deadline (15s) must be shorter than --lease-duration (15s)"),
        "{err}"
    );
    let out = control_plane(
        &["--kubernetes"],
        &[
            ("WARD_LEASE_RENEW_PERIOD", "10s"),
            ("WARD_LEASE_RENEW_DEADLINE", "10s"),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("--lease-renew-period (10s)"), "{err}");
    let out = control_plane(&["--kubernetes", "--lease-duration", "1500ms"], &[]);
    assert!(stderr(&out).contains("whole seconds"), "{}", stderr(&out));
    let out = control_plane(&["--kubernetes"], &[("WARD_LEASE_IDENTITY", "two words")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--lease-identity \"two words\""),
        "{}",
        stderr(&out)
    );
    // Refused by the parser: a zero period would renew in a busy loop.
    let out = control_plane(&["--kubernetes", "--lease-renew-period", "0s"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("must be more than zero"),
        "{}",
        stderr(&out)
    );
}
