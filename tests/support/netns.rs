//! Throwaway network namespaces for integration tests (needs root and `ip`).
//!
//! Include with `#[path = "support/netns.rs"] mod netns;`.
//!
//! A [`Network`] is a namespace holding a Linux bridge; each [`Pod`] is a
//! namespace whose `eth0` is one end of a veth pair, the other end enslaved
//! to the bridge. veths are created directly inside the pod and bridge
//! namespaces, so the host's namespace is never touched. Tests must only use
//! the 198.18.0.0/15 (benchmarking) addresses they give their pods, and
//! loopback; nothing is routed to the outside.
//!
//! Names are unique per process and call (`<prefix>-<pid>-<n>`), so tests
//! run in parallel. Everything is removed on drop, also when a test panics:
//! [`ChildGuard`]s kill their process, [`Pod`] and [`Network`] delete their
//! namespace (which deletes the veths with it).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Runs `ip ARGS`, panicking with its stderr on failure.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deletes a namespace; errors are ignored (we may be unwinding).
fn delete_netns(name: &str) {
    let _ = Command::new("ip").args(["netns", "del", name]).output();
}

/// A namespace with a bridge `br0` that pods attach to.
pub struct Network {
    name: String,
    pods: AtomicUsize,
}

impl Network {
    pub fn new(name_prefix: &str) -> Network {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{name_prefix}-{}-{n}", std::process::id());
        ip(&["netns", "add", &name]);
        // From here on Drop cleans up, even if a later step panics.
        let network = Network {
            name,
            pods: AtomicUsize::new(0),
        };
        let ns = network.name.as_str();
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        ip(&["-n", ns, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", ns, "link", "set", "br0", "up"]);
        network
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Gives the bridge `br0` an address (e.g. "198.18.0.1/16"), so that
    /// processes in the network's own namespace (a control plane, tcpdump)
    /// are reachable from the pods.
    pub fn set_bridge_address(&self, cidr: &str) {
        ip(&["-n", &self.name, "addr", "add", cidr, "dev", "br0"]);
    }

    /// `cmd` to run in the bridge namespace, as root.
    pub fn command(&self, cmd: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).args(cmd);
        command
    }

    pub fn exec(&self, cmd: &[&str]) -> Output {
        self.command(cmd)
            .output()
            .expect("run command in the bridge namespace")
    }

    /// Starts `cmd` in the bridge namespace (stdout piped); killed on drop.
    pub fn spawn(&self, cmd: &[&str]) -> ChildGuard {
        ChildGuard::spawn(self.command(cmd))
    }

    /// A pod `name` with `eth0` at `cidr` (e.g. "198.18.0.2/16"), attached to
    /// the bridge, with `lo` up and a default route out of `eth0`.
    pub fn add_pod(&self, name: &str, cidr: &str) -> Pod {
        let index = self.pods.fetch_add(1, Ordering::Relaxed);
        let ip_addr = cidr
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .expect("pod address must be ADDRESS/PREFIX");
        let pod = Pod {
            netns: format!("{}-{name}", self.name),
            ip: ip_addr,
        };
        ip(&["netns", "add", &pod.netns]);
        let (ns, peer) = (pod.netns.as_str(), format!("veth{index}"));
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", &peer, "netns",
            &self.name,
        ]);
        ip(&["-n", &self.name, "link", "set", &peer, "master", "br0"]);
        ip(&["-n", &self.name, "link", "set", &peer, "up"]);
        ip(&["-n", ns, "addr", "add", cidr, "dev", "eth0"]);
        ip(&["-n", ns, "link", "set", "eth0", "up"]);
        ip(&["-n", ns, "route", "add", "default", "dev", "eth0"]);
        pod
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        delete_netns(&self.name);
    }
}

/// A namespace with one interface, `eth0`, on the network's bridge.
pub struct Pod {
    netns: String,
    ip: IpAddr,
}

impl Pod {
    pub fn netns(&self) -> &str {
        &self.netns
    }

    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// `cmd` to run inside the pod, as root.
    pub fn command(&self, cmd: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.netns]).args(cmd);
        command
    }

    /// `cmd` to run inside the pod as `uid`/gid `uid`, without supplementary
    /// groups (`setpriv` from util-linux).
    pub fn command_as(&self, uid: u32, cmd: &[&str]) -> Command {
        let reuid = format!("--reuid={uid}");
        let regid = format!("--regid={uid}");
        let mut argv = vec!["setpriv", &reuid, &regid, "--clear-groups", "--"];
        argv.extend_from_slice(cmd);
        self.command(&argv)
    }

    pub fn exec(&self, cmd: &[&str]) -> Output {
        self.command(cmd).output().expect("run command in pod")
    }

    pub fn exec_as(&self, uid: u32, cmd: &[&str]) -> Output {
        self.command_as(uid, cmd)
            .output()
            .expect("run command in pod")
    }

    /// Starts `cmd` in the pod (stdout piped); killed when the guard drops.
    pub fn spawn(&self, cmd: &[&str]) -> ChildGuard {
        ChildGuard::spawn(self.command(cmd))
    }

    pub fn spawn_as(&self, uid: u32, cmd: &[&str]) -> ChildGuard {
        ChildGuard::spawn(self.command_as(uid, cmd))
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        delete_netns(&self.netns);
    }
}

/// A child process killed (and reaped) on drop. `ip netns exec` and
/// `setpriv` exec the command, so the child is the command itself.
pub struct ChildGuard {
    child: Child,
    stdout: Option<BufReader<ChildStdout>>,
}

impl ChildGuard {
    pub fn spawn(mut command: Command) -> ChildGuard {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().map(BufReader::new);
        ChildGuard { child, stdout }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (through `kill`: the tests forbid unsafe code).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.child.id());
    }

    /// The exit status, if the process exited within `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Reads stdout lines until `line` (e.g. a readiness marker); panics if
    /// the process exits first.
    pub fn wait_for_line(&mut self, line: &str) {
        self.wait_for(line, |l| l == line);
    }

    /// Like [`ChildGuard::wait_for_line`] for a line starting with `prefix`;
    /// returns that line.
    pub fn wait_for_line_starting(&mut self, prefix: &str) -> String {
        self.wait_for(prefix, |l| l.starts_with(prefix))
    }

    fn wait_for(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let stdout = self.stdout.as_mut().expect("stdout is piped");
        let mut buf = String::new();
        loop {
            buf.clear();
            let n = stdout.read_line(&mut buf).expect("read child stdout");
            assert!(n > 0, "child exited before printing {what:?}");
            if matches(buf.trim_end()) {
                return buf.trim_end().to_owned();
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
