//! The sidecar's dependency graph: it talks to the control plane through
//! `ward-api` only, so nothing of the control plane's Kubernetes and token
//! machinery is compiled into it.

use std::process::Command;

#[test]
fn the_sidecar_depends_on_no_kubernetes_or_jwt_crate() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "ward-proxy",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8(out.stdout).unwrap();
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(crates.contains(&"ward-api"), "{tree}");
    assert!(crates.contains(&"tokio"), "the tree was read: {tree}");
    for banned in [
        "ward-control-plane",
        "kube",
        "kube-client",
        "kube-runtime",
        "k8s-openapi",
        "jsonwebtoken",
        "json-patch",
    ] {
        assert!(!crates.contains(&banned), "ward-proxy depends on {banned}");
    }
}
