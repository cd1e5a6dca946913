//! A whole mesh on loopback, without root: a control plane (temporary data
//! and policy directories, random ports) and workloads, each an application
//! (`ward-testapp …`) behind one `ward-proxy run` in explicit mode (an
//! `--inbound` listener in front of the application and/or an `--outbound`
//! listener towards another workload's inbound), enrolled with a join token
//! and enforcing the policies the control plane pushes.
//!
//! Include with
//! ```ignore
//! #[path = "support/explicit.rs"]
//! mod explicit;
//! ```
//!
//! Ports: the proxies' listeners and admin ports are picked by binding
//! 127.0.0.1:0 and closing the socket (a tiny race with other processes,
//! accepted); applications listen on port 0 and print their address.
//!
//! Cleanup on drop, also when a test panics: a [`Workload`] kills its proxy
//! and application (and prints the tail of their logs when panicking); the
//! [`Cluster`] kills the control plane and removes its temporary directory.
//! Declare workloads after the cluster so they are dropped first.
#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const TRUST_DOMAIN: &str = "cluster.local";
/// Namespace of every workload of the fixture.
pub const NAMESPACE: &str = "obs";
/// Readiness waits give up after this long.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

#[path = "bins.rs"]
mod bins;
pub use bins::{assert_ok, bins, tail};

/// `ward ca init`: a new CA for `trust_domain` in `data_dir` (a function,
/// not a re-export: files that do not use it must not warn).
pub fn ca_init(data_dir: &Path, trust_domain: &str) {
    bins::ca_init(data_dir, trust_domain);
}

/// `spiffe://cluster.local/ns/obs/sa/<sa>`.
pub fn spiffe_id(sa: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{sa}")
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc {
    child: Child,
    pub log: PathBuf,
    name: String,
}

impl Proc {
    /// Spawns `command` with stderr (and stdout unless piped by the caller)
    /// to `log`.
    fn spawn(mut command: Command, log: PathBuf, name: &str, pipe_stdout: bool) -> Proc {
        let file = File::create(&log).expect("create log file");
        command.stderr(Stdio::from(file.try_clone().unwrap()));
        if pipe_stdout {
            command.stdout(Stdio::piped());
        } else {
            command.stdout(Stdio::from(file));
        }
        command.stdin(Stdio::null());
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc {
            child,
            log,
            name: name.to_owned(),
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Reads stdout until a line starts with `prefix`; returns the rest.
    fn wait_for_stdout_line(&mut self, prefix: &str) -> String {
        let stdout = self.child.stdout.take().expect("stdout piped");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line).expect("read stdout");
            assert!(
                n > 0,
                "{} exited before printing {prefix:?}:\n{}",
                self.name,
                tail(&self.log, 20)
            );
            if let Some(rest) = line.trim_end().strip_prefix(prefix) {
                // Keep draining stdout so the child never blocks on it.
                std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
                return rest.to_owned();
            }
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} (tail) ---\n{}", self.name, tail(&self.log, 25));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET on loopback (`Connection: close`): (status, body).
pub fn http_get(addr: SocketAddr, path_and_query: &str) -> std::io::Result<(u16, String)> {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        tcp,
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header end"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no HTTP status"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `ready` every 50 ms until true; panics with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The control plane and the directory everything lives in.
pub struct Cluster {
    // Drop order: the control plane dies before its directory goes.
    control_plane: Option<Proc>,
    pub api: SocketAddr,
    pub admin: SocketAddr,
    /// Extra environment of the control plane (`WARD_*` settings), kept
    /// for restarts.
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// `ward ca init`, then the control plane with a (possibly empty) policy
    /// directory holding `policies` (file name, YAML); returns once `/ready`.
    pub fn start(policies: &[(&str, &str)]) -> Cluster {
        Cluster::start_with_env(policies, &[])
    }

    /// [`Cluster::start`] with `env` (e.g. `("WARD_SVID_TTL", "20s")`) in
    /// the control plane's environment, now and after restarts.
    pub fn start_with_env(policies: &[(&str, &str)], env: &[(&str, &str)]) -> Cluster {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let dir = tempfile::Builder::new()
            .prefix("ward-obs-")
            .tempdir()
            .expect("temporary directory");
        bins::ca_init(&dir.path().join("data"), TRUST_DOMAIN);
        let policy_dir = dir.path().join("policies");
        std::fs::create_dir(&policy_dir).unwrap();
        for (name, yaml) in policies {
            std::fs::write(policy_dir.join(name), yaml).unwrap();
        }
        let (api, admin) = (free_addr(), free_addr());
        let control_plane = spawn_control_plane(dir.path(), api, admin, &env);
        Cluster {
            control_plane: Some(control_plane),
            api,
            admin,
            env,
            dir,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the control plane (an outage); the proxies keep running.
    pub fn stop_control_plane(&mut self) {
        self.control_plane.take();
    }

    /// The control plane's process ID, while it runs.
    pub fn control_plane_pid(&self) -> Option<u32> {
        self.control_plane.as_ref().map(Proc::id)
    }

    /// Starts it again on the same ports and data directory (same CA).
    pub fn start_control_plane(&mut self) {
        if self.control_plane.is_none() {
            self.control_plane = Some(spawn_control_plane(
                self.dir.path(),
                self.api,
                self.admin,
                &self.env,
            ));
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn policy_dir(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    pub fn ca_bundle(&self) -> PathBuf {
        self.data_dir().join("ca/ca.pem")
    }

    /// Writes (or replaces) a file in the watched policy directory.
    pub fn write_policy(&self, file: &str, yaml: &str) {
        std::fs::write(self.policy_dir().join(file), yaml).unwrap();
    }

    /// The control plane's `/metrics`.
    pub fn metrics(&self) -> String {
        scrape(self.admin)
    }

    pub fn control_plane_log(&self) -> String {
        self.control_plane
            .as_ref()
            .map(Proc::log_text)
            .unwrap_or_default()
    }

    /// A single-use join token for `spiffe_id` (`ward token create`).
    pub fn join_token(&self, spiffe_id: &str) -> String {
        bins::join_token(&self.data_dir(), spiffe_id)
    }

    /// A workload serving `ward-testapp APP` behind an inbound listener.
    pub fn serving(&self, name: &str, app: &[&str]) -> Workload {
        self.workload(WorkloadSpec {
            name,
            app: Some(app),
            ..Default::default()
        })
    }

    /// A workload without an application whose outbound listener leads to
    /// `target`'s inbound.
    pub fn calling(&self, name: &str, target: &Workload) -> Workload {
        self.workload(WorkloadSpec {
            name,
            calls: Some(target),
            ..Default::default()
        })
    }

    /// `backend` (`ward-testapp http --name backend`) and its two callers,
    /// `frontend` and `intruder`.
    pub fn backend_and_callers(&self) -> BackendAndCallers {
        let backend = self.serving("backend", &["http", "--name", "backend"]);
        let frontend = self.calling("frontend", &backend);
        let intruder = self.calling("intruder", &backend);
        BackendAndCallers {
            frontend,
            intruder,
            backend,
        }
    }

    /// Starts a workload: `spec.app` (if any) behind an inbound listener,
    /// and an outbound listener to `spec.calls`' inbound (if any), in one
    /// proxy for service account `spec.name` labelled `app=<name>`.
    /// Returns once the proxy is `/ready` (certificate and first policy set).
    pub fn workload(&self, spec: WorkloadSpec<'_>) -> Workload {
        let bins = bins();
        let name = spec.name;
        let id = spiffe_id(name);
        let app = spec.app.map(|args| {
            let mut command = Command::new(&bins.testapp);
            command.args(args).args(["--listen", "127.0.0.1:0"]);
            let mut proc = Proc::spawn(
                command,
                self.dir().join(format!("{name}-app.log")),
                &format!("{name} app"),
                true,
            );
            let addr: SocketAddr = proc
                .wait_for_stdout_line("listening on ")
                .parse()
                .expect("app address");
            (proc, addr)
        });
        let admin = free_addr();
        let mut command = Command::new(&bins.proxy);
        command
            .arg("run")
            .args(["--admin", &admin.to_string()])
            .args(["--control-plane", &self.api.to_string()])
            .arg("--ca")
            .arg(spec.ca.map_or_else(|| self.ca_bundle(), Path::to_path_buf))
            .args(["--spiffe-id", &id])
            .args(["--label", &format!("app={name}")])
            .args(["--log-format", "json", "--log-level", "info"])
            .args(["--drain-timeout", "1s"])
            .env("WARD_JOIN_TOKEN", self.join_token(&id));
        let inbound = app.as_ref().map(|(_, app_addr)| {
            let inbound = free_addr();
            command.args(["--inbound", &format!("{inbound}={}", app_addr.port())]);
            inbound
        });
        let outbound = spec.calls.map(|target| {
            let dest = target.inbound.expect("the called workload has an inbound");
            let outbound = free_addr();
            command
                .args(["--outbound", &format!("{outbound}={dest}")])
                .args(["--endpoint", &format!("{dest}={}", target.spiffe_id)]);
            outbound
        });
        command.args(spec.proxy_args);
        let proxy = Proc::spawn(
            command,
            self.dir().join(format!("{name}-proxy.log")),
            &format!("{name} proxy"),
            false,
        );
        let mut workload = Workload {
            proxy,
            app: app.as_ref().map(|(_, addr)| *addr),
            app_proc: app.map(|(proc, _)| proc),
            name: name.to_owned(),
            spiffe_id: id,
            admin,
            inbound,
            outbound,
        };
        if spec.unready {
            wait_until(READY_TIMEOUT, "the proxy's admin listener", || {
                http_get(admin, "/live").is_ok()
            });
            return workload;
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        while !matches!(http_get(admin, "/ready"), Ok((200, _))) {
            assert!(
                workload.proxy.is_running() && Instant::now() < deadline,
                "the proxy of {name} did not become ready:\n{}",
                tail(&workload.proxy.log, 40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        workload
    }
}

/// See [`Cluster::backend_and_callers`]. Fields drop in order: the callers
/// before the workload they call.
pub struct BackendAndCallers {
    pub frontend: Workload,
    pub intruder: Workload,
    pub backend: Workload,
}

/// What a workload runs.
#[derive(Default, Clone, Copy)]
pub struct WorkloadSpec<'a> {
    /// Service account, `app` label and log file names.
    pub name: &'a str,
    /// `ward-testapp` arguments (without `--listen`), e.g. `["http"]`.
    pub app: Option<&'a [&'a str]>,
    /// The workload its outbound listener leads to.
    pub calls: Option<&'a Workload>,
    /// More `ward-proxy run` arguments.
    pub proxy_args: &'a [&'a str],
    /// The proxy's `--ca` (its trust anchor file); the CA's root when unset.
    pub ca: Option<&'a Path>,
    /// Return once the proxy runs, without waiting for `/ready` (e.g. while
    /// the control plane is down).
    pub unready: bool,
}

/// One proxy (and its application).
pub struct Workload {
    // Drop order: the proxy, then the application.
    proxy: Proc,
    app_proc: Option<Proc>,
    pub name: String,
    pub spiffe_id: String,
    pub admin: SocketAddr,
    /// The application's own address.
    pub app: Option<SocketAddr>,
    /// mTLS in, to the application.
    pub inbound: Option<SocketAddr>,
    /// Plaintext in from the application, mTLS to the called workload.
    pub outbound: Option<SocketAddr>,
}

impl Workload {
    /// The proxy's `/metrics`.
    pub fn metrics(&self) -> String {
        scrape(self.admin)
    }

    pub fn proxy_log(&self) -> String {
        self.proxy.log_text()
    }

    pub fn proxy_pid(&self) -> u32 {
        self.proxy.id()
    }

    fn outbound_url(&self, path: &str) -> String {
        let outbound = self
            .outbound
            .expect("the workload has an outbound listener");
        format!("http://{outbound}{path}")
    }

    /// `curl` through the outbound listener (as the application would);
    /// returns the status code.
    pub fn curl(&self, path: &str) -> u16 {
        let out = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["--max-time", "10"])
            .arg(self.outbound_url(path))
            .output()
            .expect("run curl");
        assert_ok(out, "curl").trim().parse().expect("status code")
    }

    /// One `curl` process fetching every path through the outbound listener,
    /// each on a new connection (`Connection: close`, so the client port
    /// differs every time); returns the status codes in order.
    pub fn curl_many(&self, paths: &[String]) -> Vec<u16> {
        if paths.is_empty() {
            return Vec::new();
        }
        let mut config = String::new();
        for (i, path) in paths.iter().enumerate() {
            if i > 0 {
                config.push_str("next\n");
            }
            config.push_str(&format!(
                "url = \"{}\"\noutput = \"/dev/null\"\nheader = \"Connection: close\"\nwrite-out = \"%{{http_code}}\\n\"\nmax-time = 10\nsilent\nshow-error\n",
                self.outbound_url(path)
            ));
        }
        let mut child = Command::new("curl")
            .args(["-K", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run curl");
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(config.as_bytes()));
        let out = child.wait_with_output().expect("curl output");
        writer.join().unwrap().expect("write curl config");
        let codes: Vec<u16> = assert_ok(out, "curl -K")
            .lines()
            .map(|l| l.trim().parse().expect("status code"))
            .collect();
        assert_eq!(codes.len(), paths.len(), "one status per request");
        codes
    }
}

/// The leaf certificate `addr` presents (PEM), as `openssl s_client` saw
/// it. The inbound then refuses the handshake (no client certificate), but
/// the server's certificate has been sent by then.
pub fn served_certificate(addr: SocketAddr) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout);
    let begin = text.find("-----BEGIN CERTIFICATE-----");
    let end = text.find("-----END CERTIFICATE-----");
    match (begin, end) {
        (Some(b), Some(e)) => text[b..e].to_owned(),
        _ => panic!(
            "no server certificate from {addr}:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// `/metrics` of an admin listener (panics unless 200).
pub fn scrape(admin: SocketAddr) -> String {
    match http_get(admin, "/metrics") {
        Ok((200, body)) => body,
        other => panic!("scraping http://{admin}/metrics: {other:?}"),
    }
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `name{k="v",…}` with the labels sorted: the series' identity.
    pub fn series(&self) -> String {
        let mut labels = self.labels.clone();
        labels.sort();
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        format!("{}{{{}}}", self.name, labels.join(","))
    }
}

/// Parses the samples of a text exposition (label values unescaped for
/// `\"`, `\\` and `\n`).
pub fn parse_samples(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => continue,
        };
        let mut labels = Vec::new();
        let mut rest = rest;
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            let mut end = body.len();
            loop {
                // key
                let mut key = String::new();
                while let Some(&(_, c)) = chars.peek() {
                    if c == '=' || c == '}' {
                        break;
                    }
                    if c != ',' && c != ' ' {
                        key.push(c);
                    }
                    chars.next();
                }
                match chars.next() {
                    Some((i, '}')) => {
                        end = i;
                        break;
                    }
                    Some((_, '=')) => {}
                    _ => break,
                }
                assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                let mut value = String::new();
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => match chars.next().map(|(_, c)| c) {
                            Some('n') => value.push('\n'),
                            Some(other) => value.push(other),
                            None => break,
                        },
                        '"' => break,
                        c => value.push(c),
                    }
                }
                labels.push((key, value));
            }
            rest = &body[end + 1..];
        }
        let value = rest
            .split_whitespace()
            .next()
            .and_then(|v| match v {
                "+Inf" => Some(f64::INFINITY),
                "-Inf" => Some(f64::NEG_INFINITY),
                v => v.parse().ok(),
            })
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    samples
}

/// The sum of the samples of `name` whose labels include all of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    parse_samples(text)
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

/// Starts `ward-control-plane` on `api`/`admin` with the data and policy
/// directories under `dir`, and waits until it is ready.
fn spawn_control_plane(
    dir: &Path,
    api: SocketAddr,
    admin: SocketAddr,
    env: &[(String, String)],
) -> Proc {
    let bins = bins();
    let mut command = Command::new(&bins.control_plane);
    command
        .envs(env.iter().map(|(k, v)| (k, v)))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--trust-domain", TRUST_DOMAIN])
        .args(["--listen", &api.to_string()])
        .args(["--admin-listen", &admin.to_string()])
        .arg("--policy-dir")
        .arg(dir.join("policies"))
        .args(["--log-format", "json"]);
    let mut control_plane = Proc::spawn(
        command,
        dir.join("control-plane.log"),
        "control-plane",
        false,
    );
    let deadline = Instant::now() + READY_TIMEOUT;
    while !matches!(http_get(admin, "/ready"), Ok((200, _))) {
        assert!(
            control_plane.is_running() && Instant::now() < deadline,
            "the control plane did not become ready:\n{}",
            tail(&control_plane.log, 40)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    control_plane
}
