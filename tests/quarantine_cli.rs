//! `ward quarantine` and `ward audit` as an operator runs them (the
//! embedded mode: entries in the control plane's data directory). The
//! control plane's side is in `tests/quarantine_netns.rs` and
//! `control-plane/tests/quarantine.rs`.

#[path = "support/bins.rs"]
mod bins;

use std::path::{Path, PathBuf};

use bins::{ca_init, stderr, stdout, ward};

struct DataDir {
    _tmp: tempfile::TempDir,
    path: PathBuf,
}

fn data_dir() -> DataDir {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("data");
    ca_init(&path, "cluster.local");
    DataDir { _tmp: tmp, path }
}

fn run(data: &Path, args: &[&str]) -> std::process::Output {
    let mut argv: Vec<&str> = args.to_vec();
    argv.extend(["--data-dir", data.to_str().unwrap()]);
    ward(&argv)
}

/// Entry files in the quarantine directory (none when it does not exist).
fn entries(data: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data.join("quarantine"))
        .map(|dir| {
            dir.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn bad_targets_are_refused_with_the_rule_they_break_and_nothing_is_written() {
    let data = data_dir();
    let cases = [
        ("spiffe://Cluster.Local/ns/a/sa/b", "not a valid SPIFFE ID"),
        (
            "spiffe://cluster.local",
            "names a trust domain, not a workload",
        ),
        ("serial:xyz", "not a certificate serial"),
        ("Shop/web", "the namespace must be a DNS-1123 label"),
        ("shop/web/extra", "more than one '/'"),
        ("web", "neither a SPIFFE ID"),
        ("", "empty target"),
    ];
    for (target, expected) in cases {
        let out = run(&data.path, &["quarantine", target, "--reason", "test"]);
        assert_eq!(out.status.code(), Some(1), "{target:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(expected),
            "{target:?}: expected {expected:?} in {}",
            stderr(&out)
        );
    }
    assert!(entries(&data.path).is_empty(), "{:?}", entries(&data.path));
    assert!(!data.path.join("audit.jsonl").exists());

    // A reason is required; and a directory that is not a control plane's
    // is refused rather than written to.
    let out = run(
        &data.path,
        &["quarantine", "spiffe://cluster.local/ns/a/sa/b"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--reason"), "{}", stderr(&out));
    let elsewhere = tempfile::tempdir().unwrap();
    let out = run(
        elsewhere.path(),
        &["quarantine", "shop/web", "--reason", "typo'd data dir"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a control plane's data directory"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
}

#[test]
fn quarantine_lift_and_the_audit_trail() {
    let data = data_dir();
    let id = "spiffe://cluster.local/ns/shop/sa/web";
    let out = run(
        &data.path,
        &[
            "quarantine",
            id,
            "--reason",
            "key in build logs",
            "--by",
            "alice",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("quarantined {id}")));
    let files = entries(&data.path);
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(data.path.join("quarantine").join(&files[0])).unwrap();
    assert!(
        text.contains("kind: Quarantine") && text.contains(id),
        "{text}"
    );
    assert!(text.contains("requestedBy: alice"), "{text}");

    // Twice is refused, naming the entry in force.
    let out = run(&data.path, &["quarantine", id, "--reason", "again"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("already quarantined"),
        "{}",
        stderr(&out)
    );

    // Who defaults to the user; the environment variable is --by's.
    let pod = ward_with_env(
        &data.path,
        &["quarantine", "shop/web-1", "--reason", "pod compromised"],
        &[("WARD_QUARANTINE_BY", "bob")],
    );
    assert_eq!(pod.status.code(), Some(0), "{}", stderr(&pod));

    let out = run(&data.path, &["quarantine", "--lift", id, "--by", "carol"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("lifted {id}")));
    assert_eq!(entries(&data.path).len(), 1, "the pod's entry stays");
    let out = run(&data.path, &["quarantine", "--lift", id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not quarantined"),
        "{}",
        stderr(&out)
    );

    let out = run(&data.path, &["audit", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let records: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary: Vec<(&str, &str, &str)> = records
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap(),
                r["target"].as_str().unwrap(),
                r["by"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("quarantine", id, "alice"),
            ("quarantine", "shop/web-1", "bob"),
            ("lift", id, "carol"),
        ]
    );
    assert_eq!(records[0]["reason"], "key in build logs");
    for record in &records {
        let time = record["time"].as_str().unwrap();
        assert!(
            time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
                .is_ok(),
            "{time}"
        );
    }

    let table = run(&data.path, &["audit"]);
    assert_eq!(table.status.code(), Some(0));
    let table = stdout(&table);
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(
        table.lines().nth(1).unwrap().contains("key in build logs"),
        "{table}"
    );
}

/// `ward ARGS --data-dir DATA` with extra environment variables.
fn ward_with_env(data: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// `ward quarantine --kubernetes` without a reachable API server: the
/// target and the reason are checked first (the rule, exit 1, nothing
/// sent), then the missing API access is said as such; and
/// `WARD_KUBERNETES=false` is the embedded mode. The API server side is
/// `tests/k8s_quarantine.rs`.
#[test]
fn kubernetes_mode_checks_everything_before_calling_the_api_server() {
    let data = data_dir();
    let nowhere = data.path.join("no-such-kubeconfig");
    let kube = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ward"))
            .args(args)
            .env("KUBECONFIG", &nowhere)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .env("HOME", data.path.as_os_str())
            .output()
            .unwrap()
    };
    let out = kube(&["quarantine", "--kubernetes", "Shop/web", "--reason", "x"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the namespace must be a DNS-1123 label"),
        "{}",
        stderr(&out)
    );
    let out = kube(&["quarantine", "--kubernetes", "shop/web", "--reason", "  "]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("spec.reason"), "{}", stderr(&out));
    let out = kube(&["quarantine", "--kubernetes", "shop/web", "--reason", "x"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no Kubernetes API access"),
        "{}",
        stderr(&out)
    );
    assert!(entries(&data.path).is_empty());

    let out = ward_with_env(
        &data.path,
        &["quarantine", "shop/web", "--reason", "x"],
        &[("WARD_KUBERNETES", "false")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(entries(&data.path).len(), 1);
}
