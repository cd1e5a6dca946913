//! A real Kubernetes control plane for tests: etcd, kube-apiserver and
//! kube-controller-manager on 127.0.0.1, built by `tests/cluster/build-k8s.sh`
//! from the Go module proxy (`tests/cluster/README.md`).
//!
//! [`Cluster::start`] finds the binaries (`WARD_K8S_BIN`, else the last line
//! `build-k8s.sh` prints), makes a temporary directory with a CA, serving and
//! client certificates and a service-account signing key pair (rcgen, EC
//! P-256), starts the three processes on free loopback ports, waits for the
//! API server's `/readyz` and for the controller manager's service-account
//! controller, and writes an admin kubeconfig (`system:masters`). Dropping
//! the [`Cluster`] kills the processes and removes the directory, on a
//! panic too. The processes are started under `setpriv --pdeathsig KILL`
//! when it exists, so they die with the test thread that started them even
//! if the test binary is killed.
//!
//! Include with `#[path = "support/cluster.rs"] mod cluster;`.
#![allow(dead_code)] // each test binary uses a different subset

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// The Service range: inside 198.18.0.0/15 (RFC 2544), never routed.
pub const SERVICE_CIDR: &str = "198.19.0.0/16";
/// Its first address, the `kubernetes.default` Service.
pub const SERVICE_IP: &str = "198.19.0.1";
/// The `iss` of service-account tokens.
pub const ISSUER: &str = "https://kubernetes.default.svc";

const HOST: &str = "127.0.0.1";
const BINARIES: [&str; 4] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kubectl",
];

/// The directory holding the Kubernetes binaries, or `None` (after a skip
/// message, or a panic under `WARD_TEST_STRICT=1`) when there is none.
pub fn k8s_bin() -> Option<PathBuf> {
    let dir = match std::env::var_os("WARD_K8S_BIN") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/build-k8s.sh");
            // Fast when cached (0.05 s); a build on a new machine (about 20
            // minutes) shows its progress on stderr.
            let out = Command::new(&script)
                .stdin(Stdio::null())
                .stderr(Stdio::inherit())
                .output();
            let out = match out {
                Ok(out) if out.status.success() => out,
                Ok(out) => {
                    ward_testkit::prerequisite(
                        false,
                        &format!(
                            "the Kubernetes binaries: {} failed ({})",
                            script.display(),
                            out.status
                        ),
                    );
                    return None;
                }
                Err(e) => {
                    ward_testkit::prerequisite(
                        false,
                        &format!(
                            "the Kubernetes binaries: cannot run {}: {e}",
                            script.display()
                        ),
                    );
                    return None;
                }
            };
            let stdout = String::from_utf8_lossy(&out.stdout);
            PathBuf::from(stdout.lines().last().unwrap_or_default().trim())
        }
    };
    let missing: Vec<&str> = BINARIES
        .into_iter()
        .filter(|b| !dir.join(b).is_file())
        .collect();
    if !ward_testkit::prerequisite(
        missing.is_empty(),
        &format!(
            "the Kubernetes binaries: {} missing in {}",
            missing.join(", "),
            dir.display()
        ),
    ) {
        return None;
    }
    Some(dir)
}

struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

/// A running etcd + kube-apiserver + kube-controller-manager. Dropping it
/// stops them and removes its directory.
pub struct Cluster {
    /// The Kubernetes binaries.
    pub bin: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub api: String,
    /// The CA the API server's certificate chains to (and client
    /// certificates are checked against).
    pub ca_file: PathBuf,
    /// An admin (`system:masters`) kubeconfig.
    pub kubeconfig: PathBuf,
    /// How long `start` took, binaries found to ready.
    pub startup: Duration,
    /// The network namespace everything runs in (`ip netns exec`), or the
    /// host's ([`Cluster::start_in`]).
    pub netns: Option<String>,
    processes: Vec<Process>,
    // Last: removed after the processes are stopped.
    dir: tempfile::TempDir,
}

/// A free TCP port on 127.0.0.1 for each name, distinct; the listeners are
/// held until all are chosen.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind((HOST, 0)).expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// One free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
            .distinguished_name
            .push(DnType::CommonName, "ward-test-kubernetes-ca");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Pki { ca }
    }

    /// A leaf signed by the CA: (certificate PEM, key PEM).
    fn leaf(
        &self,
        cn: &str,
        org: Option<&str>,
        sans: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Some(org) = org {
            params
                .distinguished_name
                .push(DnType::OrganizationName, org);
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn write(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// The last `lines` lines of a file.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A plain-HTTP GET on loopback: (status code, body), or an error text.
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write to {addr}: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP status from {addr}: {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A plain-HTTP GET from network namespace `netns` (curl), or from the
/// host ([`http_get`]) when `None`.
pub fn http_get_in(netns: Option<&str>, addr: &str, path: &str) -> Result<(u16, String), String> {
    let Some(ns) = netns else {
        return http_get(addr, path);
    };
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sS", "--max-time", "5"])
        .args(["-w", "\n%{http_code}"])
        .arg(format!("http://{addr}{path}"))
        .output()
        .map_err(|e| format!("curl: {e}"))?;
    let (ok, out, err) = text(&out);
    if !ok {
        return Err(format!("curl http://{addr}{path}: {}", err.trim()));
    }
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
    let code = code.trim().parse().map_err(|_| format!("curl: {out}"))?;
    Ok((code, body.to_owned()))
}

/// Output as text: (success, stdout, stderr).
pub fn text(out: &Output) -> (bool, String, String) {
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Cluster {
    /// Starts a cluster, or returns `None` after a skip (a panic under
    /// `WARD_TEST_STRICT=1`) when the binaries are unavailable.
    pub fn start() -> Option<Cluster> {
        Self::start_in(None, false)
    }

    /// [`Cluster::start`] with every process (and every `kubectl`) in the
    /// network namespace `netns` (a node: its loopback, not the host's),
    /// and with kube-scheduler when `scheduler`.
    pub fn start_in(netns: Option<&str>, scheduler: bool) -> Option<Cluster> {
        let bin = k8s_bin()?;
        if scheduler && !bin.join("kube-scheduler").is_file() {
            ward_testkit::prerequisite(false, "kube-scheduler missing in the Kubernetes binaries");
            return None;
        }
        let began = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("ward-k8s-")
            .tempdir()
            .expect("temporary directory");
        // Free on the host; a fresh namespace's loopback has nothing bound.
        let [etcd_port, peer_port, api_port, kcm_port, sched_port] = free_ports(5)[..] else {
            unreachable!()
        };
        let api = format!("https://{HOST}:{api_port}");
        let mut cluster = Cluster {
            bin,
            api,
            ca_file: dir.path().join("ca.crt"),
            kubeconfig: dir.path().join("admin.kubeconfig"),
            startup: Duration::ZERO,
            netns: netns.map(str::to_owned),
            processes: Vec::new(),
            dir,
        };
        cluster.write_pki();
        let d = cluster.dir.path().to_owned();
        let p = |name: &str| d.join(name).to_str().expect("UTF-8 path").to_owned();

        let etcd_url = format!("http://{HOST}:{etcd_port}");
        let peer_url = format!("http://{HOST}:{peer_port}");
        cluster.spawn(
            "etcd",
            &[
                "--name=test",
                &format!("--data-dir={}", p("etcd")),
                &format!("--listen-client-urls={etcd_url}"),
                &format!("--advertise-client-urls={etcd_url}"),
                &format!("--listen-peer-urls={peer_url}"),
                &format!("--initial-advertise-peer-urls={peer_url}"),
                &format!("--initial-cluster=test={peer_url}"),
                "--initial-cluster-state=new",
                "--unsafe-no-fsync",
            ],
        );
        let etcd_addr = format!("{HOST}:{etcd_port}");
        cluster.wait_until("etcd /health", Duration::from_secs(30), || {
            match cluster.http_get(&etcd_addr, "/health")? {
                (200, body) if body.contains("\"health\":\"true\"") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });

        cluster.spawn(
            "kube-apiserver",
            &[
                &format!("--bind-address={HOST}"),
                &format!("--advertise-address={HOST}"),
                &format!("--secure-port={api_port}"),
                &format!("--etcd-servers={etcd_url}"),
                &format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                &format!("--service-account-issuer={ISSUER}"),
                &format!("--service-account-key-file={}", p("sa.pub")),
                &format!("--service-account-signing-key-file={}", p("sa.key")),
                "--authorization-mode=Node,RBAC",
                &format!("--client-ca-file={}", p("ca.crt")),
                &format!("--tls-cert-file={}", p("apiserver.crt")),
                &format!("--tls-private-key-file={}", p("apiserver.key")),
                // The advertise address is loopback, which the kubernetes
                // Endpoints may not hold (tests/cluster/README.md).
                "--endpoint-reconciler-type=none",
                &format!("--cert-dir={}", p("apiserver-certs")),
            ],
        );
        cluster.write_kubeconfig(
            "admin.kubeconfig",
            &format!(
                "client-certificate: {}\n    client-key: {}",
                p("admin.crt"),
                p("admin.key")
            ),
        );
        cluster.write_kubeconfig(
            "controller-manager.kubeconfig",
            &format!(
                "client-certificate: {}\n    client-key: {}",
                p("controller-manager.crt"),
                p("controller-manager.key")
            ),
        );
        let etcd_ready = began.elapsed();
        cluster.wait_until(
            "kube-apiserver /readyz",
            Duration::from_secs(90),
            || match text(&cluster.kubectl(&["get", "--raw", "/readyz"])) {
                (true, out, _) if out.trim() == "ok" => Ok(()),
                (_, out, err) => Err(format!("{}{}", out.trim(), err.trim())),
            },
        );
        let api_ready = began.elapsed();
        // Only now: started before the bootstrap RBAC roles exist, it exits
        // ("cannot get configmaps ... extension-apiserver-authentication").
        let kcm_kubeconfig = p("controller-manager.kubeconfig");
        cluster.spawn(
            "kube-controller-manager",
            &[
                &format!("--kubeconfig={kcm_kubeconfig}"),
                &format!("--authentication-kubeconfig={kcm_kubeconfig}"),
                &format!("--authorization-kubeconfig={kcm_kubeconfig}"),
                &format!("--bind-address={HOST}"),
                &format!("--secure-port={kcm_port}"),
                &format!("--cert-dir={}", p("kcm-certs")),
                &format!("--service-account-private-key-file={}", p("sa.key")),
                &format!("--root-ca-file={}", p("ca.crt")),
                "--use-service-account-credentials=true",
                "--controllers=*",
                "--leader-elect=false",
                &format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                &format!("--cluster-signing-cert-file={}", p("ca.crt")),
                &format!("--cluster-signing-key-file={}", p("ca.key")),
            ],
        );

        if scheduler {
            let kubeconfig = p("scheduler.kubeconfig");
            cluster.write_kubeconfig(
                "scheduler.kubeconfig",
                &format!(
                    "client-certificate: {}\n    client-key: {}",
                    p("scheduler.crt"),
                    p("scheduler.key")
                ),
            );
            cluster.spawn(
                "kube-scheduler",
                &[
                    &format!("--kubeconfig={kubeconfig}"),
                    &format!("--authentication-kubeconfig={kubeconfig}"),
                    &format!("--authorization-kubeconfig={kubeconfig}"),
                    &format!("--bind-address={HOST}"),
                    &format!("--secure-port={sched_port}"),
                    &format!("--cert-dir={}", p("scheduler-certs")),
                    "--leader-elect=false",
                ],
            );
        }

        // The service-account controller runs: the controllers started.
        cluster.wait_until(
            "kube-controller-manager: serviceaccount default/default",
            Duration::from_secs(60),
            || match text(&cluster.kubectl(&["-n", "default", "get", "serviceaccount", "default"]))
            {
                (true, _, _) => Ok(()),
                (false, _, err) => Err(err.trim().to_owned()),
            },
        );
        cluster.startup = began.elapsed();
        eprintln!(
            "cluster: {} ready in {:.1} s (etcd healthy at {:.1} s, kube-apiserver /readyz at {:.1} s, \
             kube-controller-manager's first ServiceAccount at {:.1} s; dir {})",
            cluster.api,
            cluster.startup.as_secs_f64(),
            etcd_ready.as_secs_f64(),
            api_ready.as_secs_f64(),
            cluster.startup.as_secs_f64(),
            cluster.dir.path().display()
        );
        Some(cluster)
    }

    /// The process ids of etcd, kube-apiserver and kube-controller-manager.
    pub fn pids(&self) -> Vec<u32> {
        self.processes.iter().map(|p| p.child.id()).collect()
    }

    /// The cluster's own directory (certificates, logs, kubeconfigs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn write_pki(&self) {
        let d = self.dir.path();
        let pki = Pki::new();
        write(&d.join("ca.crt"), &pki.ca.pem());
        write(&d.join("ca.key"), &pki.ca.key().serialize_pem());
        let serving = [
            HOST,
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            SERVICE_IP,
        ];
        let leaves = [
            (
                "apiserver",
                "kube-apiserver",
                None,
                &serving[..],
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
            (
                "admin",
                "ward-test-admin",
                Some("system:masters"),
                &[][..],
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
            (
                "controller-manager",
                "system:kube-controller-manager",
                None,
                &[][..],
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
            (
                "scheduler",
                "system:kube-scheduler",
                None,
                &[][..],
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
            // Bound to system:node-proxier by the bootstrap RBAC.
            (
                "kube-proxy",
                "system:kube-proxy",
                None,
                &[][..],
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
        ];
        for (file, cn, org, sans, usage) in leaves {
            let (cert, key) = pki.leaf(cn, org, sans, usage);
            write(&d.join(format!("{file}.crt")), &cert);
            write(&d.join(format!("{file}.key")), &key);
        }
        // The service-account token signing key pair (ES256 tokens).
        let sa = KeyPair::generate().unwrap();
        write(&d.join("sa.key"), &sa.serialize_pem());
        write(&d.join("sa.pub"), &sa.public_key_pem());
    }

    /// Writes `dir/name`: a kubeconfig for this API server (CA file
    /// referenced by path) whose user has the given YAML fields (indented by
    /// four spaces after the first line); returns its path.
    pub fn write_kubeconfig(&self, name: &str, user_fields: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        write(
            &path,
            &format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: user\n  user:\n    {user_fields}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: user\ncurrent-context: test\n",
                self.api,
                self.ca_file.display()
            ),
        );
        path
    }

    /// A kubeconfig whose credentials are a bearer token.
    pub fn token_kubeconfig(&self, name: &str, token: &str) -> PathBuf {
        self.write_kubeconfig(name, &format!("token: {token}"))
    }

    /// Starts `exe` (in the cluster's namespace) as one of the cluster's
    /// processes: logged to `dir/<name>.log`, killed on drop.
    pub fn spawn_process(&mut self, name: &str, exe: &Path, args: &[&str]) {
        let log = self.dir.path().join(format!("{name}.log"));
        let out = File::create(&log).expect("log file");
        let exe = exe.to_owned();
        // setpriv: the process is killed when the thread that started it
        // ends, even if this test binary is killed before Drop runs.
        let mut cmd = if ward_testkit::which("setpriv").is_some() {
            let mut cmd = Command::new("setpriv");
            cmd.args(["--pdeathsig", "KILL", "--"]);
            cmd
        } else {
            Command::new("env")
        };
        // `ip netns exec` execs the command: the pid is still the process.
        if let Some(ns) = &self.netns {
            cmd.args(["ip", "netns", "exec", ns]);
        }
        let child = cmd
            .arg(&exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", exe.display()));
        self.processes.push(Process {
            name: name.to_owned(),
            child,
            log,
        });
    }

    fn spawn(&mut self, name: &str, args: &[&str]) {
        let exe = self.bin.join(name);
        self.spawn_process(name, &exe, args);
    }

    /// `program` as a command in the cluster's namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(program);
                cmd
            }
            None => Command::new(program),
        }
    }

    /// A plain-HTTP GET from the cluster's namespace (curl inside a
    /// namespace; [`http_get`] on the host).
    pub fn http_get(&self, addr: &str, path: &str) -> Result<(u16, String), String> {
        http_get_in(self.netns.as_deref(), addr, path)
    }

    /// Panics with `what`, the reason and every process's log tail.
    pub fn fail(&self, what: &str) -> ! {
        let mut msg = format!("{what}\n");
        for p in &self.processes {
            msg += &format!(
                "---- last lines of {} ({}):\n{}\n",
                p.name,
                p.log.display(),
                tail(&p.log, 25)
            );
        }
        panic!("{msg}");
    }

    /// Every process still running, else a panic naming the one that exited.
    pub fn check_alive(&mut self) {
        let mut exited = None;
        for p in &mut self.processes {
            if let Ok(Some(status)) = p.child.try_wait() {
                exited = Some(format!("{} exited ({status})", p.name));
                break;
            }
        }
        if let Some(exited) = exited {
            self.fail(&exited);
        }
    }

    /// Retries `check` every 200 ms until it succeeds; panics after
    /// `timeout` (or when a cluster process exits) with the last error and
    /// the log tails.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Result<(), String>,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match check() {
                Ok(()) => return,
                Err(e) => e,
            };
            let exited = self.processes.iter().find_map(|p| {
                // try_wait needs &mut; /proc tells whether the pid lives.
                let stat = std::fs::read_to_string(format!("/proc/{}/stat", p.child.id()))
                    .unwrap_or_default();
                let state = stat.rsplit_once(") ").map(|(_, s)| s.chars().next());
                (stat.is_empty() || state == Some(Some('Z'))).then(|| p.name.clone())
            });
            if let Some(name) = exited {
                self.fail(&format!("{what}: {name} exited; last check: {last}"));
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "{what}: not within {} s; last check: {last}",
                    timeout.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `kubectl ARGS` with the admin kubeconfig.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_as(&self.kubeconfig, args, None)
    }

    /// `kubectl ARGS` with `kubeconfig`, `stdin` written to its input.
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = self
            .command(self.bin.join("kubectl"))
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("KUBECONFIG")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            let _ = pipe.write_all(input.as_bytes());
        }
        child.wait_with_output().expect("kubectl output")
    }

    /// `kubectl ARGS` (admin) that must succeed; its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        match text(&self.kubectl(args)) {
            (true, out, _) => out,
            (false, out, err) => self.fail(&format!("kubectl {}: {err}{out}", args.join(" "))),
        }
    }

    /// `kubectl apply -f -` (admin) of `yaml`, which must succeed.
    pub fn apply(&self, yaml: &str) -> String {
        match text(&self.kubectl_as(&self.kubeconfig, &["apply", "-f", "-"], Some(yaml))) {
            (true, out, _) => out,
            (false, out, err) => self.fail(&format!("kubectl apply: {err}{out}\n{yaml}")),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Reverse order: the controller manager, the API server, etcd.
        for p in self.processes.iter_mut().rev() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        // self.dir (TempDir) removes the directory when dropped after this.
    }
}
