//! A whole mesh in network namespaces: a control plane on the bridge, pods
//! with the real sidecar (`ward-proxy init` iptables + `ward-proxy run` as
//! UID 1337, enrolled with a join token) in front of a real application
//! (`ward-testapp …` as UID 1000), and plain pods without a sidecar.
//!
//! Include with
//! ```ignore
//! #[path = "support/netns.rs"]
//! mod netns;
//! #[path = "support/mesh.rs"]
//! mod mesh;
//! ```
//!
//! Layout: the bridge namespace holds `br0` at 198.18.0.1/16 and
//! `ward-control-plane` on 198.18.0.1:15012 (admin :15014); pods get
//! 198.18.0.2, .3, … in order, and route Service cluster IPs
//! (`netns::SERVICE_CIDR`, 198.19.0.0/16) via 198.18.0.1: with a
//! `kube_proxy::KubeProxy` on [`Mesh::network`], the bridge namespace is the
//! node that translates them (`support/kube_proxy.rs`). The route is in
//! place before `ward-proxy init`, which leaves routes alone: a meshed
//! client's connection to a cluster IP is redirected to its sidecar first.
//!
//! Each sidecar is started with an
//! `--endpoint IP=SPIFFE_ID` for every sidecar pod known when it starts,
//! because the proxy reads its endpoint table only at start: either declare
//! the pods up front ([`Mesh::planned`], which also fixes their addresses in
//! declaration order), or create server pods before their clients.
//!
//! Cleanup on drop, also when a test panics: a [`MeshPod`] kills its app and
//! proxy, then deletes its namespace; the [`Mesh`] kills the control plane,
//! deletes the bridge namespace and removes its temporary directory (data
//! dir, bundle, logs). When dropped during a panic, each pod prints the tail
//! of its proxy's and apps' logs to help diagnose the failure.
#![allow(dead_code)]

use std::fs::File;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::netns::{ChildGuard, Network, Pod};

pub const TRUST_DOMAIN: &str = "cluster.local";
pub const BRIDGE_CIDR: &str = "198.18.0.1/16";
pub const CONTROL_PLANE_ADDR: &str = "198.18.0.1:15012";
pub const CONTROL_PLANE_ADMIN: &str = "198.18.0.1:15014";
/// The sidecar's UID: its own connections are not captured.
pub const PROXY_UID: u32 = 1337;
/// Applications and clients inside pods.
pub const APP_UID: u32 = 1000;
/// Readiness waits (enrolment, listeners) give up after this long.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The tools a mesh needs besides root.
pub fn prerequisites() -> bool {
    ward_testkit::require_root()
        && ward_testkit::require_tool("ip")
        && ward_testkit::require_tool("iptables")
        && ward_testkit::require_tool("setpriv")
        && ward_testkit::require_tool("curl")
}

/// `spiffe://cluster.local/ns/default/sa/<sa>`, or for `<ns>/<sa>`
/// `spiffe://cluster.local/ns/<ns>/sa/<sa>`.
pub fn spiffe_id(sa: &str) -> String {
    match sa.split_once('/') {
        Some((ns, sa)) => format!("spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/{sa}"),
        None => format!("spiffe://{TRUST_DOMAIN}/ns/default/sa/{sa}"),
    }
}

#[path = "bins.rs"]
mod bins;
pub use bins::{assert_ok, bins, ca_init, tail};

/// How a pod's sidecar is configured.
#[derive(Debug, Clone, Default)]
pub struct PodOptions {
    /// `--mtls-mode` (strict when `None`, the proxy's default).
    pub mtls_mode: Option<&'static str>,
    /// `--opaque-ports`.
    pub opaque_ports: Vec<u16>,
    /// `--drain-timeout` (5s when `None`).
    pub drain_timeout: Option<&'static str>,
    /// Anything else for `ward-proxy run`.
    pub proxy_args: Vec<String>,
    /// Environment for `ward-proxy init` (e.g. what the injector set).
    pub init_env: Vec<(String, String)>,
}

impl PodOptions {
    pub fn mtls_mode(mut self, mode: &'static str) -> Self {
        self.mtls_mode = Some(mode);
        self
    }

    pub fn opaque_ports(mut self, ports: &[u16]) -> Self {
        self.opaque_ports = ports.to_vec();
        self
    }

    pub fn proxy_arg(mut self, arg: &str) -> Self {
        self.proxy_args.push(arg.to_owned());
        self
    }

    /// A workload label (`--label KEY=VALUE`), for policy selectors.
    pub fn label(self, key: &str, value: &str) -> Self {
        self.proxy_arg("--label")
            .proxy_arg(&format!("{key}={value}"))
    }
}

/// Where the mesh's CA comes from.
pub enum MeshCa<'a> {
    /// `ward ca init`: a new root.
    Generate,
    /// `ward ca init --import-cert CERT --import-key KEY` (a CA and its
    /// issuers up to the root); sidecars start from the root `bundle`.
    Import {
        cert: &'a Path,
        key: &'a Path,
        bundle: &'a Path,
    },
}

/// The network, its control plane and the mesh's CA.
pub struct Mesh {
    // Drop order matters: the control plane dies before its namespace goes,
    // the temporary directory last.
    control_plane: ChildGuard,
    /// How the control plane was started ([`Mesh::restart_control_plane`]).
    control_plane_argv: Vec<String>,
    network: Network,
    /// `IP=SPIFFE_ID` of every sidecar pod so far (or planned).
    endpoints: Mutex<Vec<String>>,
    /// Addresses reserved by [`Mesh::planned`], by pod name.
    planned: Mutex<Vec<(String, String)>>,
    next_host: AtomicUsize,
    dir: tempfile::TempDir,
}

impl Mesh {
    /// Creates the network, the CA (`ward ca init`) and starts the control
    /// plane in the bridge namespace; returns once it answers.
    pub fn new(name_prefix: &str) -> Mesh {
        Mesh::start(name_prefix, false, &[])
    }

    /// Like [`Mesh::planned`], with a control plane watching
    /// [`Mesh::policy_dir`] (`--policy-dir`, empty at start): write policies
    /// with [`Mesh::write_policy`] / [`Mesh::apply_policy`].
    pub fn with_policy_dir(name_prefix: &str, pods: &[(&str, &str)]) -> Mesh {
        let mesh = Mesh::start(name_prefix, true, &[]);
        mesh.plan(pods);
        mesh
    }

    /// Like [`Mesh::planned`], with more `ward-control-plane` flags (e.g.
    /// `--svid-ttl 30s`).
    pub fn planned_with_control_plane_args(
        name_prefix: &str,
        pods: &[(&str, &str)],
        args: &[&str],
    ) -> Mesh {
        let mesh = Mesh::start(name_prefix, false, args);
        mesh.plan(pods);
        mesh
    }

    /// Like [`Mesh::planned_with_control_plane_args`], with the CA from `ca`.
    pub fn planned_with_ca(
        name_prefix: &str,
        pods: &[(&str, &str)],
        args: &[&str],
        ca: MeshCa<'_>,
    ) -> Mesh {
        let mesh = Mesh::start_with_ca(name_prefix, false, args, ca);
        mesh.plan(pods);
        mesh
    }

    fn start(name_prefix: &str, policy_dir: bool, extra_args: &[&str]) -> Mesh {
        Mesh::start_with_ca(name_prefix, policy_dir, extra_args, MeshCa::Generate)
    }

    fn start_with_ca(
        name_prefix: &str,
        policy_dir: bool,
        extra_args: &[&str],
        ca: MeshCa<'_>,
    ) -> Mesh {
        let bins = bins();
        let dir = tempfile::Builder::new()
            .prefix("ward-mesh-")
            .tempdir()
            .expect("temporary directory");
        // The sidecars (UID 1337) read the bundle from here; the CA key stays
        // in the data dir, which `ward` keeps private.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = dir.path().join("data");
        let bundle = dir.path().join("bundle.pem");
        match ca {
            MeshCa::Generate => {
                ca_init(&data, TRUST_DOMAIN);
                std::fs::copy(data.join("ca/ca.pem"), &bundle).expect("copy the CA bundle");
            }
            MeshCa::Import {
                cert,
                key,
                bundle: root,
            } => {
                let out = Command::new(&bins.ward)
                    .args(["ca", "init", "--data-dir"])
                    .arg(&data)
                    .arg("--import-cert")
                    .arg(cert)
                    .arg("--import-key")
                    .arg(key)
                    .output()
                    .expect("run ward ca init");
                assert_ok(out, "ward ca init --import-cert");
                std::fs::copy(root, &bundle).expect("copy the CA bundle");
            }
        }
        std::fs::set_permissions(&bundle, std::fs::Permissions::from_mode(0o644)).unwrap();

        let policies = dir.path().join("policies");
        let network = Network::new(name_prefix);
        network.set_bridge_address(BRIDGE_CIDR);
        let mut argv = vec![
            bins.control_plane.as_str(),
            "--data-dir",
            data.to_str().unwrap(),
            "--trust-domain",
            TRUST_DOMAIN,
            "--listen",
            CONTROL_PLANE_ADDR,
            "--admin-listen",
            CONTROL_PLANE_ADMIN,
            // Each update sent and each subscription, for the failure dump.
            "--log-level",
            "info,ward_control_plane::discovery=debug",
        ];
        if policy_dir {
            std::fs::create_dir(&policies).expect("create the policy directory");
            argv.extend(["--policy-dir", policies.to_str().unwrap()]);
        }
        argv.extend_from_slice(extra_args);
        let mut command = network.command(&argv);
        command.stderr(log_file(&dir.path().join("control-plane.log")));
        let control_plane = ChildGuard::spawn(command);
        let mesh = Mesh {
            control_plane,
            control_plane_argv: argv.iter().map(|a| a.to_string()).collect(),
            network,
            endpoints: Mutex::new(Vec::new()),
            planned: Mutex::new(Vec::new()),
            next_host: AtomicUsize::new(2),
            dir,
        };
        mesh.wait_control_plane_ready();
        mesh
    }

    fn wait_control_plane_ready(&self) {
        let ready = format!("http://{CONTROL_PLANE_ADMIN}/ready");
        let deadline = Instant::now() + READY_TIMEOUT;
        while !self
            .network
            .exec(&["curl", "-sf", "-o", "/dev/null", "--max-time", "1", &ready])
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "the control plane did not become ready:\n{}",
                tail(&self.dir.path().join("control-plane.log"), 40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the control plane (SIGKILL: no shutdown of its own) and starts
    /// it again with the same flags and data directory; returns once it is
    /// ready. Its log continues in the same file.
    pub fn restart_control_plane(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.control_plane.id().to_string()])
            .status();
        let _ = self.control_plane.wait_timeout(Duration::from_secs(10));
        let argv: Vec<&str> = self.control_plane_argv.iter().map(String::as_str).collect();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("control-plane.log"))
            .expect("open the control plane's log");
        let mut command = self.network.command(&argv);
        command.stderr(Stdio::from(log));
        self.control_plane = ChildGuard::spawn(command);
        self.wait_control_plane_ready();
    }

    /// A mesh whose sidecar pods `(name, service account)` are known up
    /// front: they get 198.18.0.2, .3, … in this order, whatever the order
    /// they are created in, and every sidecar knows all of them.
    pub fn planned(name_prefix: &str, pods: &[(&str, &str)]) -> Mesh {
        let mesh = Mesh::new(name_prefix);
        mesh.plan(pods);
        mesh
    }

    fn plan(&self, pods: &[(&str, &str)]) {
        for (name, sa) in pods {
            let (cidr, ip) = self.next_cidr();
            self.endpoints
                .lock()
                .unwrap()
                .push(format!("{ip}={}", spiffe_id(sa)));
            self.planned.lock().unwrap().push((name.to_string(), cidr));
        }
    }

    /// The directory the control plane watches for policies (see
    /// [`Mesh::with_policy_dir`]).
    pub fn policy_dir(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    /// Writes (or replaces) `file` in the policy directory atomically: a
    /// hidden temporary file (not `*.yaml`, so never read half-written),
    /// then a rename. Returns right after the rename.
    pub fn write_policy(&self, file: &str, yaml: &str) {
        let dir = self.policy_dir();
        assert!(dir.is_dir(), "the mesh has no policy directory");
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).expect("write the policy file");
        std::fs::rename(&tmp, dir.join(file)).expect("rename the policy file into place");
    }

    /// Removes `file` from the policy directory.
    pub fn remove_policy(&self, file: &str) {
        std::fs::remove_file(self.policy_dir().join(file)).expect("remove the policy file");
    }

    /// Writes `file` (see [`Mesh::write_policy`]), waits for the control
    /// plane to accept the new set and for the sidecars of `pods` (which the
    /// change must concern: others are not sent it) to put it in force.
    /// Returns the set's version. Panics if the control plane rejects it.
    pub fn apply_policy(&self, file: &str, yaml: &str, pods: &[&MeshPod]) -> u64 {
        let before = self.control_plane_metrics();
        let version = metric_sum(&before, "ward_cp_policy_version", &[]);
        let rejected = metric_sum(
            &before,
            "ward_cp_policy_sets_total",
            &[("result", "rejected")],
        );
        self.write_policy(file, yaml);
        let deadline = Instant::now() + READY_TIMEOUT;
        let new_version = loop {
            let metrics = self.control_plane_metrics();
            let now = metric_sum(&metrics, "ward_cp_policy_version", &[]);
            if now > version {
                break now;
            }
            assert!(
                metric_sum(
                    &metrics,
                    "ward_cp_policy_sets_total",
                    &[("result", "rejected")]
                ) == rejected,
                "the control plane rejected {file}:\n{}",
                tail(&self.dir.path().join("control-plane.log"), 10)
            );
            assert!(
                Instant::now() < deadline,
                "the control plane did not pick up {file}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        for pod in pods {
            self.wait_policy_version(pod, new_version);
        }
        new_version as u64
    }

    /// Waits until `pod`'s sidecar enforces policy version `version` or newer.
    pub fn wait_policy_version(&self, pod: &MeshPod, version: f64) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while metric_sum(&self.metrics(pod), "ward_policy_version", &[]) < version {
            assert!(
                Instant::now() < deadline,
                "{} did not receive policy version {version}",
                pod.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The control plane's Prometheus metrics (admin listener).
    pub fn control_plane_metrics(&self) -> String {
        let url = format!("http://{CONTROL_PLANE_ADMIN}/metrics");
        let out = self
            .network
            .exec(&["curl", "-sS", "--fail", "--max-time", "5", &url]);
        assert_ok(out, &format!("scraping {url}"))
    }

    /// The control plane's log so far.
    pub fn control_plane_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("control-plane.log")).unwrap_or_default()
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    /// The mesh's temporary directory (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The control plane's data directory (CA, join tokens).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The mesh CA's bundle (PEM), readable by everyone.
    pub fn bundle(&self) -> PathBuf {
        self.dir.path().join("bundle.pem")
    }

    fn next_cidr(&self) -> (String, String) {
        let host = self.next_host.fetch_add(1, Ordering::Relaxed);
        assert!(host < 255, "too many pods");
        let ip = format!("198.18.0.{host}");
        (format!("{ip}/16"), ip)
    }

    /// A pod without a sidecar (no iptables, no proxy): an outsider.
    pub fn add_plain_pod(&self, name: &str) -> Pod {
        let (cidr, _) = self.next_cidr();
        self.network.add_pod(name, &cidr)
    }

    /// The sidecar's Prometheus metrics, scraped from the bridge namespace
    /// as a Prometheus server outside the pod would (admin port 15020 is
    /// never captured).
    pub fn metrics(&self, pod: &MeshPod) -> String {
        let url = format!("http://{}:15020/metrics", pod.ip());
        let out = self
            .network
            .exec(&["curl", "-sS", "--fail", "--max-time", "5", &url]);
        assert_ok(out, &format!("scraping {url}"))
    }

    /// A single-use join token for `spiffe_id` (`ward token create`).
    pub fn join_token(&self, spiffe_id: &str) -> String {
        bins::join_token(&self.data_dir(), spiffe_id)
    }

    /// Issues a certificate from the mesh CA (`ward ca issue`) into the
    /// mesh's directory; returns (cert chain, key) paths.
    pub fn issue(&self, spiffe_id: &str, file_stem: &str) -> (PathBuf, PathBuf) {
        issue(&self.data_dir(), self.dir(), spiffe_id, file_stem)
    }

    /// A pod with a sidecar for service account `sa` in front of `app`
    /// (run as [`APP_UID`]; empty for none). Returns once the proxy says
    /// `/ready` and the app printed `listening on ADDR` (for `--listen ADDR`).
    pub fn add_pod(&self, name: &str, sa: &str, app: &[&str], opts: PodOptions) -> MeshPod {
        let bins = bins();
        let id = spiffe_id(sa);
        let planned = self
            .planned
            .lock()
            .unwrap()
            .iter()
            .find(|(planned, _)| planned == name)
            .map(|(_, cidr)| cidr.clone());
        let (cidr, ip) = match planned {
            Some(cidr) => {
                let ip = cidr.split('/').next().unwrap().to_owned();
                (cidr, ip)
            }
            None => {
                let (cidr, ip) = self.next_cidr();
                self.endpoints.lock().unwrap().push(format!("{ip}={id}"));
                (cidr, ip)
            }
        };
        let endpoints = self.endpoints.lock().unwrap().clone();
        let pod = self.network.add_pod(name, &cidr);
        let init = pod
            .command(&[&bins.proxy, "init"])
            .envs(opts.init_env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run ward-proxy init");
        assert_ok(init, "ward-proxy init");

        let token = self.join_token(&id);
        let bundle = self.bundle();
        let mut args: Vec<String> = [
            bins.proxy.as_str(),
            "run",
            "--control-plane",
            CONTROL_PLANE_ADDR,
            "--ca",
            bundle.to_str().unwrap(),
            "--spiffe-id",
            &id,
            "--drain-timeout",
            opts.drain_timeout.unwrap_or("5s"),
            "--log-level",
            "info,ward_api::client::discovery=debug",
        ]
        .map(String::from)
        .to_vec();
        for endpoint in &endpoints {
            args.extend(["--endpoint".to_owned(), endpoint.clone()]);
        }
        if let Some(mode) = opts.mtls_mode {
            args.extend(["--mtls-mode".to_owned(), mode.to_owned()]);
        }
        if !opts.opaque_ports.is_empty() {
            let ports: Vec<String> = opts.opaque_ports.iter().map(u16::to_string).collect();
            args.extend(["--opaque-ports".to_owned(), ports.join(",")]);
        }
        args.extend(opts.proxy_args.iter().cloned());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let proxy_log = self.dir.path().join(format!("{name}-proxy.log"));
        let mut command = pod.command_as(PROXY_UID, &argv);
        command
            .env("WARD_JOIN_TOKEN", &token)
            .stderr(log_file(&proxy_log));
        let proxy = ChildGuard::spawn(command);

        let mut pod = MeshPod {
            apps: Vec::new(),
            proxy,
            pod,
            spiffe_id: id,
            ip: ip.parse().unwrap(),
            dir: self.dir.path().to_owned(),
            name: name.to_owned(),
            proxy_log,
        };
        pod.wait_ready();
        if !app.is_empty() {
            pod.start_app(app);
        }
        pod
    }
}

/// `ward ca issue` from the CA in `data_dir` into `out_dir`.
pub fn issue(data_dir: &Path, out_dir: &Path, spiffe_id: &str, stem: &str) -> (PathBuf, PathBuf) {
    let cert = out_dir.join(format!("{stem}.crt"));
    let key = out_dir.join(format!("{stem}.key"));
    let out = Command::new(&bins().ward)
        .args(["ca", "issue", "--data-dir"])
        .arg(data_dir)
        .args(["--spiffe-id", spiffe_id, "--ttl", "1h", "--cert"])
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .output()
        .expect("run ward ca issue");
    assert_ok(out, "ward ca issue");
    (cert, key)
}

/// A pod with its sidecar and applications.
pub struct MeshPod {
    // Drop order: apps, then the proxy, then the namespace.
    apps: Vec<(ChildGuard, PathBuf)>,
    proxy: ChildGuard,
    pod: Pod,
    spiffe_id: String,
    ip: IpAddr,
    dir: PathBuf,
    name: String,
    proxy_log: PathBuf,
}

impl MeshPod {
    pub fn pod(&self) -> &Pod {
        &self.pod
    }

    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    pub fn spiffe_id(&self) -> &str {
        &self.spiffe_id
    }

    /// The sidecar process (to signal it, read its /proc status).
    pub fn proxy(&mut self) -> &mut ChildGuard {
        &mut self.proxy
    }

    pub fn proxy_pid(&self) -> u32 {
        self.proxy.id()
    }

    pub fn proxy_log(&self) -> String {
        std::fs::read_to_string(&self.proxy_log).unwrap_or_default()
    }

    /// `cmd` in the pod as the application user, like a client would run.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        self.pod.exec_as(APP_UID, cmd)
    }

    /// `ward-testapp ARGS` in the pod as the application user (a client).
    pub fn testapp(&self, args: &[&str]) -> Output {
        let mut argv = vec![bins().testapp.as_str()];
        argv.extend_from_slice(args);
        self.exec(&argv)
    }

    /// Waits for the sidecar's `/ready` (certificate obtained, listening).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let out = self.pod.exec(&[
                "curl",
                "-sf",
                "-o",
                "/dev/null",
                "--max-time",
                "1",
                "http://127.0.0.1:15020/ready",
            ]);
            if out.status.success() {
                return;
            }
            assert!(
                self.proxy.is_running(),
                "the proxy in {} exited:\n{}",
                self.name,
                tail(&self.proxy_log, 40)
            );
            assert!(
                Instant::now() < deadline,
                "the proxy in {} did not become ready:\n{}",
                self.name,
                tail(&self.proxy_log, 40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts another application (as [`APP_UID`]) and, when it has a
    /// `--listen ADDR`, waits for its `listening on ADDR`.
    pub fn start_app(&mut self, cmd: &[&str]) {
        let program = cmd[0];
        let testapp;
        let mut argv = cmd.to_vec();
        if program == "ward-testapp" {
            testapp = bins().testapp.clone();
            argv[0] = &testapp;
        }
        let index = self.apps.len();
        let log = self.dir.join(format!("{}-app{index}.log", self.name));
        let mut command = self.pod.command_as(APP_UID, &argv);
        command.stderr(log_file(&log));
        let mut child = ChildGuard::spawn(command);
        if let Some(pos) = argv.iter().position(|a| *a == "--listen") {
            child.wait_for_line(&format!("listening on {}", argv[pos + 1]));
        }
        self.apps.push((child, log));
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- control plane log (tail) ---\n{}",
                tail(&self.dir.path().join("control-plane.log"), 40)
            );
        }
    }
}

impl Drop for MeshPod {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- {} proxy log (tail) ---\n{}",
                self.name,
                tail(&self.proxy_log, 30)
            );
            for (_, log) in &self.apps {
                eprintln!("--- {} (tail) ---\n{}", log.display(), tail(log, 10));
            }
        }
    }
}

fn log_file(path: &Path) -> Stdio {
    Stdio::from(File::create(path).expect("create log file"))
}

/// Peak resident set size (VmHWM) of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// The sum of the samples of metric `name` whose labels include all of
/// `labels` (Prometheus text format; 0 when there is none).
pub fn metric_sum(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, series_labels) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let wanted = metric == name
                && labels.iter().all(|(k, v)| {
                    series_labels
                        .split(',')
                        .any(|pair| pair == format!("{k}=\"{v}\""))
                });
            wanted.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}
