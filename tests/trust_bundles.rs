//! Trust bundles as data (issue #16): a sidecar trusts the union of its
//! `--ca` anchor (re-read when the file changes) and the bundles the
//! control plane pushes (`--trust-bundle-dir`), so a root can be added to
//! and retired from a running mesh without restarting anything.
//!
//! The peer is curl holding a certificate from a second CA of the same
//! trust domain (the root a CA rotation introduces, `ward ca issue`), and
//! each request is a new mTLS handshake with the sidecar's inbound: whether
//! it completes says exactly whether the sidecar trusts that root now.

#[path = "support/explicit.rs"]
mod explicit;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use explicit::{Cluster, TRUST_DOMAIN, Workload, WorkloadSpec, assert_ok, bins, wait_until};

/// Long enough for a 1-second file poll and a discovery push on a loaded
/// machine; the waits end as soon as the condition holds.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(20);

/// A second CA of the mesh's trust domain and a workload certificate from it.
struct NewRoot {
    _dir: tempfile::TempDir,
    root_pem: String,
    cert: PathBuf,
    key: PathBuf,
}

impl NewRoot {
    fn make() -> NewRoot {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        explicit::ca_init(&data, TRUST_DOMAIN);
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let out = Command::new(&bins().ward)
            .args(["ca", "issue", "--data-dir"])
            .arg(&data)
            .args(["--spiffe-id", &explicit::spiffe_id("newcomer")])
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .output()
            .unwrap();
        assert_ok(out, "ward ca issue");
        let root_pem = std::fs::read_to_string(data.join("ca/ca.pem")).unwrap();
        NewRoot {
            _dir: dir,
            root_pem,
            cert,
            key,
        }
    }

    /// The outcome of one request to `workload`'s inbound with this
    /// certificate: the HTTP status, or curl's error when the handshake
    /// failed. The server's certificate is not checked here (it carries a
    /// SPIFFE ID, no DNS name): the sidecar's trust in the client is.
    fn request(&self, workload: &Workload) -> Result<u16, String> {
        let inbound = workload.inbound.expect("an inbound listener");
        let out = Command::new("curl")
            .args(["-s", "-k", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["--max-time", "10"])
            .arg("--cert")
            .arg(&self.cert)
            .arg("--key")
            .arg(&self.key)
            .arg(format!("https://{inbound}/echo"))
            .output()
            .unwrap();
        let code = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        match (out.status.code(), code.parse::<u16>()) {
            (Some(0), Ok(status)) => Ok(status),
            (exit, _) => Err(format!("curl exit {exit:?}, http_code {code:?}")),
        }
    }
}

fn prerequisites() -> bool {
    ward_testkit::require_tool("curl")
}

fn backend(cluster: &Cluster, ca: Option<&Path>) -> Workload {
    cluster.workload(WorkloadSpec {
        name: "backend",
        app: Some(&["http", "--name", "backend"]),
        ca,
        ..Default::default()
    })
}

#[test]
fn a_root_the_control_plane_pushes_is_trusted_until_it_is_retired() {
    if !prerequisites() {
        return;
    }
    let bundle_dir = tempfile::tempdir().unwrap();
    let dir_setting = bundle_dir.path().to_str().unwrap().to_owned();
    let cluster = Cluster::start_with_env(&[], &[("WARD_TRUST_BUNDLE_DIR", &dir_setting)]);
    let backend = backend(&cluster, None);
    let newcomer = NewRoot::make();

    // Before: a certificate from the new root is refused at the handshake.
    let refused = newcomer.request(&backend);
    assert!(refused.is_err(), "untrusted root accepted: {refused:?}");

    // Prepare: the operator adds the new root beside the CA's.
    let bundle_file = bundle_dir.path().join(format!("{TRUST_DOMAIN}.pem"));
    std::fs::write(&bundle_file, &newcomer.root_pem).unwrap();
    wait_until(CHANGE_TIMEOUT, "the pushed root to be trusted", || {
        newcomer.request(&backend) == Ok(200)
    });
    // The control plane pushed it (the sidecar's certificate, 24 h, was
    // not renewed meanwhile: the discovery stream carried it).
    let reloads = explicit::metric_sum(
        &cluster.metrics(),
        "ward_ca_trust_bundle_reloads_total",
        &[("result", "ok")],
    );
    assert!(reloads >= 1.0, "no bundle reload counted");

    // A file that does not load changes nothing: the root stays trusted.
    std::fs::write(bundle_dir.path().join("broken.example.pem"), "not PEM").unwrap();
    wait_until(CHANGE_TIMEOUT, "the refused reload to be counted", || {
        explicit::metric_sum(
            &cluster.metrics(),
            "ward_ca_trust_bundle_reloads_total",
            &[("result", "rejected")],
        ) >= 1.0
    });
    assert_eq!(newcomer.request(&backend), Ok(200));
    std::fs::remove_file(bundle_dir.path().join("broken.example.pem")).unwrap();

    // Retire: the root leaves the control plane's bundles, and so every
    // source of the sidecar's trust (its anchor never held it).
    std::fs::remove_file(&bundle_file).unwrap();
    wait_until(CHANGE_TIMEOUT, "the retired root to be refused", || {
        newcomer.request(&backend).is_err()
    });
}

#[test]
fn the_trust_anchor_file_is_re_read_when_it_changes() {
    if !prerequisites() {
        return;
    }
    let cluster = Cluster::start(&[]);
    let newcomer = NewRoot::make();
    // The sidecar's own anchor file (a mounted ConfigMap), a copy of the
    // CA's root to begin with.
    let anchor_dir = tempfile::tempdir().unwrap();
    let anchor = anchor_dir.path().join("ca.pem");
    let ca_root = std::fs::read_to_string(cluster.ca_bundle()).unwrap();
    std::fs::write(&anchor, &ca_root).unwrap();
    let backend = backend(&cluster, Some(&anchor));
    assert!(newcomer.request(&backend).is_err());

    write_replacing(&anchor, &format!("{ca_root}{}", newcomer.root_pem));
    wait_until(
        CHANGE_TIMEOUT,
        "the anchor's new root to be trusted",
        || newcomer.request(&backend) == Ok(200),
    );

    // An anchor file that does not load keeps the roots in use.
    write_replacing(&anchor, "-----BEGIN CERTIFICATE-----\ngarbage\n");
    wait_until(
        CHANGE_TIMEOUT,
        "the proxy to refuse the broken anchor",
        || {
            backend
                .proxy_log()
                .contains("trust anchor file changed but does not load")
        },
    );
    assert_eq!(newcomer.request(&backend), Ok(200));

    write_replacing(&anchor, &ca_root);
    wait_until(CHANGE_TIMEOUT, "the removed root to be refused", || {
        newcomer.request(&backend).is_err()
    });
}

/// Replaces `path`'s content atomically (as a ConfigMap update does).
fn write_replacing(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
