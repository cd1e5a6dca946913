//! `ward ca rotate` end to end (#16), in real network namespaces: real
//! sidecars (`ward-proxy`) enrolled with a real control plane, the
//! operator CLI talking to its admin API, and curl / openssl as the
//! independent judges of which root each sidecar presents and trusts.
//!
//! - a mesh under continuous HTTP/1.1 and HTTP/2 load (a new connection,
//!   so a new mTLS handshake, every 5 requests) and with a long-lived TCP
//!   connection goes through prepare → activate → retire with zero failed
//!   requests and zero TLS handshake failures, pods started during prepare
//!   and activate included; every
//!   sidecar ends presenting a certificate from the new root and refusing
//!   the old one;
//! - a sidecar cut off from the control plane holds `prepare` back and
//!   `ward ca status` names it; once it is back the rotation completes;
//! - the control plane killed in the middle of `activate` resumes it;
//! - an intermediate under an external root made with the `openssl` CLI
//!   is rotated to another intermediate under that root.
//!
//! Needs root, `ip`, `iptables`, `setpriv`, `curl` and `openssl`; skips
//! without them (fails under WARD_TEST_STRICT=1). `WARD_ROTATION_PODS`
//! sets the size of the loaded mesh (default 20).

#[path = "support/mesh.rs"]
mod mesh;
#[path = "support/netns.rs"]
mod netns;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mesh::{CONTROL_PLANE_ADMIN, Mesh, MeshCa, MeshPod, PodOptions, assert_ok};
use serde_json::Value;

const HTTP_APP: &[&str] = &["ward-testapp", "http", "--listen", "0.0.0.0:8080"];
const TCP_APP: &[&str] = &["ward-testapp", "tcp-echo", "--listen", "0.0.0.0:9000"];
/// Bounds every wait for a step; they end as soon as the step is confirmed.
const STEP_WITHIN: Duration = Duration::from_secs(60);
/// The early-renewal window of `activate`.
const RENEW_WITHIN: &str = "8s";

fn prerequisites() -> bool {
    mesh::prerequisites()
        && ward_testkit::require_tool("openssl")
        && ward_testkit::require_tool("bash")
}

/// `ward ARGS --control-plane-admin <the mesh's>`, run in the bridge
/// namespace: the control plane's own host.
fn ward(mesh: &Mesh, args: &[&str]) -> Output {
    let mut argv = vec![mesh::bins().ward.as_str()];
    argv.extend_from_slice(args);
    argv.extend(["--control-plane-admin", CONTROL_PLANE_ADMIN]);
    mesh.network()
        .command(&argv)
        .env("WARD_CA_ROTATE_BY", "ca-rotation-test")
        .output()
        .expect("run ward")
}

fn rotate(mesh: &Mesh, step: &str, extra: &[&str]) -> Value {
    let mut args = vec!["ca", "rotate", step, "--reason", "test rotation", "--json"];
    args.extend_from_slice(extra);
    let out = assert_ok(ward(mesh, &args), &format!("ward ca rotate {step}"));
    serde_json::from_str(&out).expect("ward ca rotate --json prints the status")
}

fn status(mesh: &Mesh) -> Value {
    let out = assert_ok(ward(mesh, &["ca", "status", "--json"]), "ward ca status");
    serde_json::from_str(&out).expect("ward ca status --json prints JSON")
}

fn step_of<'a>(status: &'a Value, step: &str) -> &'a Value {
    status["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["step"] == step))
        .unwrap_or_else(|| panic!("no step {step} in {status}"))
}

/// Polls the status until `done` holds for it; returns it.
fn wait_status(mesh: &Mesh, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + STEP_WITHIN;
    loop {
        let now = status(mesh);
        if done(&now) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; status: {now:#}\n--- control plane log ---\n{}",
            tail_text(&mesh.control_plane_log(), 30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_step(mesh: &Mesh, step: &str) -> Value {
    wait_status(mesh, &format!("every sidecar to confirm {step}"), |s| {
        step_of(s, step)["complete"] == true
    })
}

fn wait_idle(mesh: &Mesh) -> Value {
    wait_status(mesh, "the rotation to finish", |s| s["phase"] == "idle")
}

fn tail_text(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Requests counted by the load loops.
#[derive(Debug, Default)]
struct Totals {
    requests: u64,
    ok: u64,
    errors: u64,
    samples: Vec<String>,
}

/// Runs `ward-testapp load` rounds from `client` to `server:8080` until
/// `stop`: each round 40 requests on 2 workers every 100 ms, a new
/// connection (so a new mTLS handshake through both sidecars) every 5
/// requests, HTTP/1.1 and HTTP/2 in turn.
fn load_loop(client: &MeshPod, server: &MeshPod, stop: &AtomicBool) -> Totals {
    let target = format!("{}:8080", server.ip());
    let mut totals = Totals::default();
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut args = vec![
            "load",
            "--connect",
            &target,
            "--requests",
            "40",
            "--concurrency",
            "2",
            "--interval-ms",
            "100",
            "--requests-per-connection",
            "5",
            "--timeout-ms",
            "5000",
        ];
        if round % 2 == 1 {
            args.push("--http2");
        }
        round += 1;
        let out = client.testapp(&args);
        let summary: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "load from {} printed no summary ({e}): {}",
                client.ip(),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        totals.requests += summary["requests"].as_u64().unwrap_or(0);
        totals.ok += summary["ok"].as_u64().unwrap_or(0);
        totals.errors += summary["errors"].as_u64().unwrap_or(0);
        if let Some(samples) = summary["error_samples"].as_array() {
            for sample in samples.iter().take(3) {
                totals
                    .samples
                    .push(format!("{} -> {target}: {sample}", client.ip()));
            }
        }
    }
    totals
}

/// One TCP connection from `client` to `server:9000` (an echo), held open
/// through the rotation: a line every 200 ms must come back, until the
/// file `stop` exists. Prints `tcp ok <lines>` at the end, or
/// `tcp failed …` as soon as a line does not come back.
fn hold_tcp(client: &MeshPod, server: &MeshPod, stop: &Path) -> netns::ChildGuard {
    let script = format!(
        r#"exec 4<>/dev/tcp/{ip}/9000 || {{ echo "tcp failed to connect"; exit 1; }}
n=0
while [ ! -e {stop} ]; do
  echo "line $n" >&4 || {{ echo "tcp failed writing line $n"; exit 1; }}
  IFS= read -r -t 10 got <&4 || {{ echo "tcp failed reading line $n"; exit 1; }}
  [ "$got" = "line $n" ] || {{ echo "tcp failed: line $n came back as $got"; exit 1; }}
  n=$((n+1))
  sleep 0.2
done
echo "tcp ok $n""#,
        ip = server.ip(),
        stop = stop.display()
    );
    client
        .pod()
        .spawn_as(mesh::APP_UID, &["bash", "-c", &script])
}

fn assert_no_failed_request(totals: &[Totals]) {
    let requests: u64 = totals.iter().map(|t| t.requests).sum();
    let ok: u64 = totals.iter().map(|t| t.ok).sum();
    let errors: u64 = totals.iter().map(|t| t.errors).sum();
    let samples: Vec<&String> = totals.iter().flat_map(|t| &t.samples).collect();
    assert!(requests > 0, "no load ran");
    assert_eq!(
        (errors, ok),
        (0, requests),
        "failed requests during the rotation: {samples:#?}"
    );
    eprintln!("load during the rotation: {requests} requests, all 2xx");
}

/// A certificate from a CA (`ward ca issue --data-dir`), for curl.
struct ClientCert {
    cert: PathBuf,
    key: PathBuf,
}

fn issue(mesh: &Mesh, stem: &str) -> ClientCert {
    let (cert, key) = mesh.issue(&mesh::spiffe_id("curl"), stem);
    ClientCert { cert, key }
}

/// Whether `pod`'s inbound completes an mTLS handshake (and answers) with
/// `client` as the client certificate: whether the sidecar trusts its root.
fn accepts(mesh: &Mesh, pod: &MeshPod, client: &ClientCert) -> bool {
    let url = format!("https://{}:8080/echo", pod.ip());
    let out = mesh.network().exec(&[
        "curl",
        "-s",
        "-k",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "10",
        "--cert",
        client.cert.to_str().unwrap(),
        "--key",
        client.key.to_str().unwrap(),
        &url,
    ]);
    out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "200"
}

/// The leaf certificate `pod`'s inbound presents (PEM), and the rest of
/// the chain it sends, read by `openssl s_client`.
fn presented_chain(mesh: &Mesh, pod: &MeshPod) -> (String, String) {
    let connect = format!("{}:8080", pod.ip());
    let out = mesh
        .network()
        .command(&["openssl", "s_client", "-connect", &connect, "-showcerts"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut certs = Vec::new();
    let mut rest = text.as_ref();
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let end = rest[start..]
            .find("-----END CERTIFICATE-----")
            .expect("a whole certificate")
            + start
            + "-----END CERTIFICATE-----".len();
        certs.push(format!("{}\n", &rest[start..end]));
        rest = &rest[end..];
    }
    assert!(
        !certs.is_empty(),
        "{} presented no certificate: {text}",
        pod.ip()
    );
    let leaf = certs.remove(0);
    (leaf, certs.concat())
}

/// Whether `leaf` (with `intermediates`) verifies against `root_pem` alone.
fn verifies(dir: &Path, leaf: &str, intermediates: &str, root_pem: &str) -> bool {
    let (leaf_file, root_file, chain_file) = (
        dir.join("check-leaf.pem"),
        dir.join("check-root.pem"),
        dir.join("check-chain.pem"),
    );
    std::fs::write(&leaf_file, leaf).unwrap();
    std::fs::write(&root_file, root_pem).unwrap();
    let mut command = Command::new("openssl");
    command.arg("verify").arg("-CAfile").arg(&root_file);
    if !intermediates.is_empty() {
        std::fs::write(&chain_file, intermediates).unwrap();
        command.arg("-untrusted").arg(&chain_file);
    }
    command
        .arg(&leaf_file)
        .output()
        .expect("run openssl verify")
        .status
        .success()
}

/// Every pod presents a certificate under `new_root` (and none under
/// `old_root`), accepts `new_client` and refuses `old_client`.
fn assert_on_new_root_only(
    mesh: &Mesh,
    pods: &[&MeshPod],
    (old_root, new_root): (&str, &str),
    (old_client, new_client): (&ClientCert, &ClientCert),
) {
    let scratch = tempfile::tempdir().unwrap();
    for pod in pods {
        let (leaf, intermediates) = presented_chain(mesh, pod);
        assert!(
            verifies(scratch.path(), &leaf, &intermediates, new_root),
            "{} does not present a certificate from the new root",
            pod.ip()
        );
        assert!(
            !verifies(scratch.path(), &leaf, &intermediates, old_root),
            "{} still presents a certificate from the old root",
            pod.ip()
        );
        assert!(
            accepts(mesh, pod, new_client),
            "{} refuses a certificate from the new root",
            pod.ip()
        );
        assert!(
            !accepts(mesh, pod, old_client),
            "{} still trusts the retired root",
            pod.ip()
        );
    }
}

fn planned(prefix: &str, count: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|n| (format!("{prefix}{n}"), format!("{prefix}-sa-{n}")))
        .collect()
}

fn as_plan(pods: &[(String, String)]) -> Vec<(&str, &str)> {
    pods.iter().map(|(n, s)| (n.as_str(), s.as_str())).collect()
}

fn pod_count() -> usize {
    std::env::var("WARD_ROTATION_PODS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|n| *n >= 2)
        .unwrap_or(20)
}

#[test]
fn a_loaded_mesh_rotates_its_root_with_zero_failed_requests() {
    if !prerequisites() {
        return;
    }
    let count = pod_count();
    // Two more pods join mid-rotation (planned, so every sidecar knows them).
    let plan = planned("r", count + 2);
    let mesh = Mesh::planned("ward-rot", &as_plan(&plan));
    let mut pods: Vec<MeshPod> = plan[..count]
        .iter()
        .map(|(name, sa)| mesh.add_pod(name, sa, HTTP_APP, PodOptions::default()))
        .collect();
    let old_root = std::fs::read_to_string(mesh.bundle()).unwrap();
    let old_client = issue(&mesh, "old-client");
    assert!(
        accepts(&mesh, &pods[0], &old_client),
        "sanity: the old root"
    );
    // A long-lived TCP connection through the whole rotation.
    pods[1].start_app(TCP_APP);
    let stop_tcp = mesh.dir().join("stop-tcp");
    let mut tcp = hold_tcp(&pods[0], &pods[1], &stop_tcp);

    let stop = Arc::new(AtomicBool::new(false));
    let (late, totals) = std::thread::scope(|scope| {
        let loads: Vec<_> = (0..count)
            .map(|i| {
                let (client, server) = (&pods[i], &pods[(i + 1) % count]);
                let stop = stop.clone();
                scope.spawn(move || load_loop(client, server, &stop))
            })
            .collect();
        std::thread::sleep(Duration::from_secs(2));

        let prepared = rotate(&mesh, "prepare", &[]);
        assert_eq!(prepared["phase"], "prepare");
        let during_prepare = mesh.add_pod(
            &plan[count].0,
            &plan[count].1,
            HTTP_APP,
            PodOptions::default(),
        );
        wait_step(&mesh, "prepare");

        let activated = rotate(&mesh, "activate", &["--renew-within", RENEW_WITHIN]);
        assert_eq!(activated["phase"], "activate");
        let during_activate = mesh.add_pod(
            &plan[count + 1].0,
            &plan[count + 1].1,
            HTTP_APP,
            PodOptions::default(),
        );
        let activated = wait_step(&mesh, "activate");
        assert_eq!(
            step_of(&activated, "activate")["confirmed"].as_u64(),
            Some(count as u64 + 2),
            "every sidecar, the late ones too: {activated:#}"
        );

        rotate(&mesh, "retire", &[]);
        let done = wait_idle(&mesh);
        // Load keeps running a little after the old root left.
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        std::fs::write(&stop_tcp, "").unwrap();
        let totals: Vec<Totals> = loads.into_iter().map(|h| h.join().unwrap()).collect();
        eprintln!("rotation finished at {}", done["since"]);
        ((during_prepare, during_activate), totals)
    });
    assert_no_failed_request(&totals);
    let held = tcp.wait_for_line_starting("tcp ");
    assert!(
        held.starts_with("tcp ok "),
        "the long-lived TCP connection: {held}"
    );
    // Not one handshake failed in any sidecar (before the checks below,
    // which fail some on purpose).
    let mut all: Vec<&MeshPod> = pods.iter().collect();
    all.extend([&late.0, &late.1]);
    for pod in &all {
        let failures =
            mesh::metric_sum(&mesh.metrics(pod), "ward_tls_handshake_failures_total", &[]);
        assert_eq!(failures, 0.0, "TLS handshake failures in {}", pod.ip());
    }

    // The data directory's CA is the new one now: certificates from it.
    let new_root = std::fs::read_to_string(mesh.data_dir().join("ca/ca.pem")).unwrap();
    assert_ne!(new_root, old_root);
    let new_client = issue(&mesh, "new-client");
    assert_on_new_root_only(
        &mesh,
        &all,
        (&old_root, &new_root),
        (&old_client, &new_client),
    );

    // Every step is in the audit trail, with who and why.
    let audit = Command::new(&mesh::bins().ward)
        .args(["audit", "--json", "--data-dir"])
        .arg(mesh.data_dir())
        .output()
        .unwrap();
    let audit = assert_ok(audit, "ward audit");
    for action in ["ca-prepare", "ca-activate", "ca-retire", "ca-rotated"] {
        let line = audit
            .lines()
            .find(|l| l.contains(&format!("\"action\":\"{}\"", action.replace('-', "_"))))
            .unwrap_or_else(|| panic!("no {action} in the audit trail:\n{audit}"));
        if action != "ca-rotated" {
            assert!(
                line.contains("ca-rotation-test") && line.contains("test rotation"),
                "{line}"
            );
        }
    }
    let metrics = mesh.control_plane_metrics();
    assert_eq!(
        mesh::metric_sum(&metrics, "ward_ca_rotation_phase", &[("phase", "idle")]),
        1.0
    );
}

#[test]
fn a_sidecar_cut_off_from_the_control_plane_holds_prepare_back_until_it_returns() {
    if !prerequisites() {
        return;
    }
    let plan = planned("c", 3);
    let mesh = Mesh::planned("ward-rotcut", &as_plan(&plan));
    let pods: Vec<MeshPod> = plan
        .iter()
        .map(|(name, sa)| mesh.add_pod(name, sa, HTTP_APP, PodOptions::default()))
        .collect();
    let cut = &pods[2];
    // Its packets to the control plane are dropped: its stream goes silent.
    let rule = [
        "OUTPUT",
        "-d",
        "198.18.0.1",
        "-p",
        "tcp",
        "--dport",
        "15012",
        "-j",
        "DROP",
    ];
    // -w: the xtables lock is one for every namespace, and the other tests'
    // `ward-proxy init` may hold it.
    let mut insert = vec!["iptables", "-w", "-I"];
    insert.extend_from_slice(&rule);
    assert_ok(cut.pod().exec(&insert), "iptables -I");

    rotate(&mesh, "prepare", &[]);
    // The others confirm; the cut-off one is named, in the table too.
    let held = wait_status(&mesh, "the two connected sidecars to confirm", |s| {
        step_of(s, "prepare")["confirmed"] == 2
    });
    let prepare = step_of(&held, "prepare");
    assert_eq!(prepare["complete"], false, "{held:#}");
    let named = prepare["pending"][0]["sidecar"]
        .as_str()
        .unwrap_or_default();
    assert!(named.contains(&cut.ip().to_string()), "{held:#}");
    let table = assert_ok(ward(&mesh, &["ca", "status"]), "ward ca status");
    assert!(table.contains(&cut.ip().to_string()), "{table}");
    // A step past it is refused, naming it.
    let refused = ward(
        &mesh,
        &["ca", "rotate", "activate", "--reason", "too early"],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains(&cut.ip().to_string()),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(step_of(&status(&mesh), "prepare")["complete"], false);
    // Steps come from the control plane's own host only: another pod may
    // read the status but not take a step.
    let outsider = mesh.add_plain_pod("outsider");
    let from_elsewhere = |args: &[&str]| {
        let mut argv = vec![mesh::bins().ward.as_str()];
        argv.extend_from_slice(args);
        argv.extend(["--control-plane-admin", CONTROL_PLANE_ADMIN]);
        outsider.exec(&argv)
    };
    assert_ok(
        from_elsewhere(&["ca", "status"]),
        "ward ca status from a pod",
    );
    let refused = from_elsewhere(&["ca", "rotate", "abort", "--reason", "not mine", "--force"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("403"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(status(&mesh)["phase"], "prepare", "nothing changed");

    let mut delete = vec!["iptables", "-w", "-D"];
    delete.extend_from_slice(&rule);
    assert_ok(cut.pod().exec(&delete), "iptables -D");
    wait_step(&mesh, "prepare");
    rotate(&mesh, "activate", &["--renew-within", "2s"]);
    wait_step(&mesh, "activate");
    rotate(&mesh, "retire", &[]);
    wait_idle(&mesh);
}

#[test]
fn a_control_plane_restarted_during_activate_resumes_the_rotation() {
    if !prerequisites() {
        return;
    }
    let plan = planned("k", 4);
    let mut mesh = Mesh::planned("ward-rotrst", &as_plan(&plan));
    let pods: Vec<MeshPod> = plan
        .iter()
        .map(|(name, sa)| mesh.add_pod(name, sa, HTTP_APP, PodOptions::default()))
        .collect();
    let old_root = std::fs::read_to_string(mesh.bundle()).unwrap();
    let old_client = issue(&mesh, "old-client");

    let stop = Arc::new(AtomicBool::new(false));
    let totals = std::thread::scope(|scope| {
        let loads: Vec<_> = (0..pods.len())
            .map(|i| {
                let (client, server) = (&pods[i], &pods[(i + 1) % pods.len()]);
                let stop = stop.clone();
                scope.spawn(move || load_loop(client, server, &stop))
            })
            .collect();
        rotate(&mesh, "prepare", &[]);
        wait_step(&mesh, "prepare");
        // A long window: most sidecars have not renewed at the restart.
        rotate(&mesh, "activate", &["--renew-within", "15s"]);
        std::thread::sleep(Duration::from_secs(2));
        let before = status(&mesh);
        mesh.restart_control_plane();
        let after = status(&mesh);
        assert_eq!(after["phase"], "activate", "{after:#}");
        assert_eq!(after["new"], before["new"], "the same new CA");
        assert_eq!(after["signer"]["fingerprint"], before["new"]["fingerprint"]);
        wait_step(&mesh, "activate");
        rotate(&mesh, "retire", &[]);
        wait_idle(&mesh);
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Relaxed);
        loads
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert_no_failed_request(&totals);
    let new_root = std::fs::read_to_string(mesh.data_dir().join("ca/ca.pem")).unwrap();
    let new_client = issue(&mesh, "new-client");
    let all: Vec<&MeshPod> = pods.iter().collect();
    assert_on_new_root_only(
        &mesh,
        &all,
        (&old_root, &new_root),
        (&old_client, &new_client),
    );
}

/// `openssl` in `dir`; panics with its stderr on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An external root (`root.pem`, `root.key`) and two intermediates under
/// it (`int1`, `int2`: `<name>-chain.pem` = the intermediate then the root,
/// `<name>.key`), all made by the `openssl` CLI with P-256 keys.
fn external_pki(dir: &Path) {
    let ext = dir.join("ca.ext");
    std::fs::write(
        &ext,
        "basicConstraints=critical,CA:true\n\
         keyUsage=critical,keyCertSign,cRLSign\n\
         subjectAltName=URI:spiffe://cluster.local\n\
         subjectKeyIdentifier=hash\n\
         authorityKeyIdentifier=keyid\n",
    )
    .unwrap();
    let key = |name: &str| {
        openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &format!("{name}.key"),
            ],
        )
    };
    key("root");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "root.key",
            "-sha256",
            "-days",
            "30",
            "-subj",
            "/O=Example Corp/CN=Example External Root",
            "-addext",
            "basicConstraints=critical,CA:true",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            "root.pem",
        ],
    );
    for (name, cn) in [
        ("int1", "Ward Intermediate One"),
        ("int2", "Ward Intermediate Two"),
    ] {
        key(name);
        let subject = format!("/O=Example Corp/CN={cn}");
        let (csr, cert) = (format!("{name}.csr"), format!("{name}.pem"));
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-key",
                &format!("{name}.key"),
                "-subj",
                &subject,
                "-out",
                &csr,
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "root.pem",
                "-CAkey",
                "root.key",
                "-CAcreateserial",
                "-days",
                "20",
                "-sha256",
                "-extfile",
                "ca.ext",
                "-out",
                &cert,
            ],
        );
        let chain = format!(
            "{}{}",
            std::fs::read_to_string(dir.join(&cert)).unwrap(),
            std::fs::read_to_string(dir.join("root.pem")).unwrap()
        );
        std::fs::write(dir.join(format!("{name}-chain.pem")), chain).unwrap();
    }
}

#[test]
fn an_intermediate_under_an_external_root_is_rotated() {
    if !prerequisites() {
        return;
    }
    let pki = tempfile::tempdir().unwrap();
    external_pki(pki.path());
    let plan = planned("i", 3);
    let mesh = Mesh::planned_with_ca(
        "ward-rotint",
        &as_plan(&plan),
        &[],
        MeshCa::Import {
            cert: &pki.path().join("int1-chain.pem"),
            key: &pki.path().join("int1.key"),
            bundle: &pki.path().join("root.pem"),
        },
    );
    let pods: Vec<MeshPod> = plan
        .iter()
        .map(|(name, sa)| mesh.add_pod(name, sa, HTTP_APP, PodOptions::default()))
        .collect();
    let root = std::fs::read_to_string(pki.path().join("root.pem")).unwrap();
    let int1 = std::fs::read_to_string(pki.path().join("int1.pem")).unwrap();
    let int2 = std::fs::read_to_string(pki.path().join("int2.pem")).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    for pod in &pods {
        let (leaf, _) = presented_chain(&mesh, pod);
        assert!(
            verifies(scratch.path(), &leaf, &int1, &root),
            "{} on int1",
            pod.ip()
        );
    }

    let cert = pki.path().join("int2-chain.pem");
    let key = pki.path().join("int2.key");
    let prepared = rotate(
        &mesh,
        "prepare",
        &[
            "--import-cert",
            cert.to_str().unwrap(),
            "--import-key",
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(
        prepared["new"]["root_fingerprint"], prepared["old"]["root_fingerprint"],
        "the same external root"
    );
    wait_step(&mesh, "prepare");
    rotate(&mesh, "activate", &["--renew-within", "3s"]);
    wait_step(&mesh, "activate");
    rotate(&mesh, "retire", &[]);
    wait_idle(&mesh);
    for pod in &pods {
        let (leaf, sent) = presented_chain(&mesh, pod);
        assert!(
            verifies(scratch.path(), &leaf, &int2, &root),
            "{} is not on the new intermediate",
            pod.ip()
        );
        assert!(
            !verifies(scratch.path(), &leaf, &int1, &root),
            "{} still on the old intermediate",
            pod.ip()
        );
        assert!(
            sent.contains(int2.trim()),
            "{} does not send the new intermediate",
            pod.ip()
        );
    }
    // Traffic between the sidecars on the new intermediate.
    let target = format!("{}:8080", pods[1].ip());
    let out = pods[0].testapp(&["load", "--connect", &target, "--requests", "5"]);
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["ok"], 5, "{summary}");
}
