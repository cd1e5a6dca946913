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
//! Routes: every pod has `default dev eth0` (any address is on-link). When
//! the bridge has an address ([`Network::set_bridge_address`], as in a
//! `Mesh`), pods created afterwards also get [`SERVICE_CIDR`]` via <bridge
//! address>`: Service cluster IPs are no pod's address, so packets to them
//! must go to the node (the bridge namespace), where `kube_proxy.rs`
//! translates them.
//!
//! Names: `ip netns exec NS` bind-mounts every file of `/etc/netns/NS/` over
//! its namesake in `/etc` (in the command's own mount namespace), so a pod's
//! `/etc/hosts` is `/etc/netns/<pod netns>/hosts` when that file exists.
//! [`Network::set_hosts`] (every pod, current and future: the cluster's DNS)
//! and [`Pod::set_hosts`] (one pod) write it, kubelet style: localhost, the
//! pod's own address and name, then the entries. The file is written in
//! place (same inode), so processes already running in the pod see updates,
//! but only processes started after the file first existed have it mounted:
//! set names before starting the clients that resolve them. Pods without
//! entries keep the host's `/etc/hosts`. Pods with a hosts file also get a
//! `resolv.conf` naming only their own loopback, where nothing answers: a
//! name that is not in the file fails at once, as an unknown name does in
//! a cluster, instead of waiting for a nameserver the pod cannot reach.
//!
//! Names are unique per process and call (`<prefix>-<pid>-<n>`), so tests
//! run in parallel. Everything is removed on drop, also when a test panics:
//! [`ChildGuard`]s kill their process, [`Pod`] and [`Network`] delete their
//! namespace (which deletes the veths with it) and their `/etc/netns/` files.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Kubernetes Service cluster IPs (`--service-cluster-ip-range`), inside the
/// 198.18.0.0/15 the tests may use; pods route it to the bridge's address.
pub const SERVICE_CIDR: &str = "198.19.0.0/16";

/// Where `ip netns exec` looks for per-namespace `/etc` files.
const ETC_NETNS: &str = "/etc/netns";

/// The `/etc/resolv.conf` of pods with a hosts file.
const RESOLV_CONF: &str = "# Written by Ward's test harness (tests/support/netns.rs): names are\n\
     # in /etc/hosts; nothing answers here, so other names fail at once.\n\
     nameserver 127.0.0.1\n\
     options timeout:1 attempts:1\n";

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

/// The bridge's own Ethernet address (locally administered; each network
/// is a namespace of its own, so one address serves them all).
const BRIDGE_MAC: &str = "02:00:c6:12:00:01";

/// A namespace with a bridge `br0` that pods attach to.
pub struct Network {
    name: String,
    pods: AtomicUsize,
    /// The bridge's address, without prefix, once set.
    bridge_address: Mutex<Option<String>>,
    /// Whether new bridge ports get hairpin mode ([`Network::set_hairpin`]).
    hairpin: AtomicBool,
    hosts: Hosts,
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
            bridge_address: Mutex::new(None),
            hairpin: AtomicBool::new(false),
            hosts: Hosts::default(),
        };
        let ns = network.name.as_str();
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        ip(&["-n", ns, "link", "add", "br0", "type", "bridge"]);
        // A bridge whose address was never set takes the lowest of its
        // ports' addresses, so a pod joining later can change it: the
        // pods' neighbour entries for the bridge's IP (the control plane's)
        // then point at the old one and their packets are lost until
        // re-resolution, seconds later. A fixed address keeps it.
        ip(&["-n", ns, "link", "set", "br0", "address", BRIDGE_MAC]);
        ip(&["-n", ns, "link", "set", "br0", "up"]);
        network
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Gives the bridge `br0` an address (e.g. "198.18.0.1/16"), so that
    /// processes in the network's own namespace (a control plane, tcpdump)
    /// are reachable from the pods. Pods created from now on route
    /// [`SERVICE_CIDR`] via this address.
    pub fn set_bridge_address(&self, cidr: &str) {
        ip(&["-n", &self.name, "addr", "add", cidr, "dev", "br0"]);
        let address = cidr.split('/').next().unwrap_or(cidr).to_owned();
        *self.bridge_address.lock().unwrap() = Some(address);
    }

    /// The bridge's address (without prefix), if it has one.
    pub fn bridge_address(&self) -> Option<String> {
        self.bridge_address.lock().unwrap().clone()
    }

    /// The bridge's ports (the pods' veth peers), as named in the bridge
    /// namespace.
    pub fn bridge_ports(&self) -> Vec<String> {
        let out = self.exec(&["ip", "-o", "link", "show", "master", "br0"]);
        assert!(out.status.success(), "ip link show master br0");
        // "7: veth0@if2: <BROADCAST,…> …"
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| line.split(": ").nth(1))
            .map(|name| name.split('@').next().unwrap_or(name).to_owned())
            .collect()
    }

    /// Turns hairpin mode on (or off) for every bridge port, current and
    /// future: the bridge may then send a frame back out of the port it
    /// came in, which a pod reaching itself through a Service needs (the
    /// node translates the connection but bridges it back to the same pod;
    /// kubelet's `--hairpin-mode=hairpin-veth`).
    pub fn set_hairpin(&self, on: bool) {
        self.hairpin.store(on, Ordering::Relaxed);
        for port in self.bridge_ports() {
            self.set_port_hairpin(&port, on);
        }
    }

    fn set_port_hairpin(&self, port: &str, on: bool) {
        let mode = if on { "on" } else { "off" };
        ip(&[
            "-n",
            &self.name,
            "link",
            "set",
            port,
            "type",
            "bridge_slave",
            "hairpin",
            mode,
        ]);
    }

    /// Sets the `/etc/hosts` entries of `group` (e.g. "services") for every
    /// pod of the network, current and future, replacing that group's
    /// previous entries (none: the group is removed). Groups appear in name
    /// order, before each pod's own entries ([`Pod::set_hosts`]).
    pub fn set_hosts(&self, group: &str, entries: &[HostsEntry]) {
        self.hosts.set_group(group, entries);
    }

    /// The network's hosts table, for harness code that outlives a borrow
    /// of the network (`kube_proxy.rs`).
    pub fn hosts(&self) -> Hosts {
        self.hosts.clone()
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
    /// the bridge, with `lo` up, a default route out of `eth0` and, when the
    /// bridge has an address, [`SERVICE_CIDR`] via that address.
    pub fn add_pod(&self, name: &str, cidr: &str) -> Pod {
        let index = self.pods.fetch_add(1, Ordering::Relaxed);
        let ip_addr = cidr
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .expect("pod address must be ADDRESS/PREFIX");
        let peer = format!("veth{index}");
        let netns = format!("{}-{name}", self.name);
        // Removes the pod's /etc/netns files if a later step panics.
        let hosts = self.hosts.register(&netns, name, ip_addr);
        ip(&["netns", "add", &netns]);
        // From here on Drop cleans up (namespace and hosts file).
        let pod = Pod {
            hosts,
            netns,
            ip: ip_addr,
            name: name.to_owned(),
            bridge_port: peer.clone(),
        };
        let ns = pod.netns.as_str();
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
        if let Some(gateway) = self.bridge_address() {
            ip(&[
                "-n",
                ns,
                "route",
                "add",
                SERVICE_CIDR,
                "via",
                &gateway,
                "dev",
                "eth0",
                "onlink",
            ]);
        }
        if self.hairpin.load(Ordering::Relaxed) {
            self.set_port_hairpin(&peer, true);
        }
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
    name: String,
    /// The veth peer of `eth0`, in the bridge namespace.
    bridge_port: String,
    /// Unregisters the pod and removes its `/etc/netns/` files on drop.
    hosts: PodHosts,
}

impl Pod {
    pub fn netns(&self) -> &str {
        &self.netns
    }

    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The name given to [`Network::add_pod`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The other end of `eth0`, a port of the bridge (in the bridge
    /// namespace).
    pub fn bridge_port(&self) -> &str {
        &self.bridge_port
    }

    /// Sets this pod's own `/etc/hosts` entries (replacing the previous
    /// ones), after the network's ([`Network::set_hosts`]).
    pub fn set_hosts(&self, entries: &[HostsEntry]) {
        self.hosts.set_own(entries);
    }

    /// Where this pod's `/etc/hosts` lives on the host (it exists once the
    /// pod has entries).
    pub fn hosts_file(&self) -> PathBuf {
        hosts_file(&self.netns)
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
        // `hosts` drops next: the /etc/netns files go after the namespace.
    }
}

/// One `/etc/hosts` line: an address and its names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsEntry {
    pub ip: IpAddr,
    pub names: Vec<String>,
}

impl HostsEntry {
    /// `HostsEntry::new("198.19.0.10", &["cart.shop.svc.cluster.local", "cart"])`.
    pub fn new(ip: &str, names: &[&str]) -> HostsEntry {
        HostsEntry {
            ip: ip.parse().expect("a hosts entry needs an IP address"),
            names: names.iter().map(|n| n.to_string()).collect(),
        }
    }
}

fn hosts_file(netns: &str) -> PathBuf {
    PathBuf::from(ETC_NETNS).join(netns).join("hosts")
}

/// A network's `/etc/hosts` state: entry groups for every pod, and each
/// pod's own entries. Cloning shares it.
#[derive(Clone, Default)]
pub struct Hosts(Arc<Mutex<HostsState>>);

#[derive(Default)]
struct HostsState {
    groups: BTreeMap<String, Vec<HostsEntry>>,
    /// By pod namespace.
    pods: BTreeMap<String, PodHostsState>,
}

struct PodHostsState {
    name: String,
    ip: IpAddr,
    own: Vec<HostsEntry>,
    /// Whether `/etc/netns/<netns>/hosts` exists (we created it).
    written: bool,
}

impl Hosts {
    /// See [`Network::set_hosts`].
    pub fn set_group(&self, group: &str, entries: &[HostsEntry]) {
        let mut state = self.0.lock().unwrap();
        if entries.is_empty() {
            state.groups.remove(group);
        } else {
            state.groups.insert(group.to_owned(), entries.to_vec());
        }
        let netns: Vec<String> = state.pods.keys().cloned().collect();
        for netns in netns {
            state.write(&netns);
        }
    }

    fn register(&self, netns: &str, name: &str, ip: IpAddr) -> PodHosts {
        let mut state = self.0.lock().unwrap();
        state.pods.insert(
            netns.to_owned(),
            PodHostsState {
                name: name.to_owned(),
                ip,
                own: Vec::new(),
                written: false,
            },
        );
        state.write(netns);
        PodHosts {
            hosts: self.clone(),
            netns: netns.to_owned(),
        }
    }
}

impl HostsState {
    /// Writes (in place) or leaves alone the pod's hosts file.
    fn write(&mut self, netns: &str) {
        let groups: Vec<&HostsEntry> = self.groups.values().flatten().collect();
        let Some(pod) = self.pods.get_mut(netns) else {
            return;
        };
        if !pod.written && groups.is_empty() && pod.own.is_empty() {
            return; // the host's /etc/hosts is fine
        }
        let mut text = format!(
            "# Written by Ward's test harness (tests/support/netns.rs) for pod {}\n\
             127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{}\n",
            pod.name, pod.ip, pod.name
        );
        for entry in groups.into_iter().chain(&pod.own) {
            text.push_str(&format!("{}\t{}\n", entry.ip, entry.names.join(" ")));
        }
        let file = hosts_file(netns);
        let dir = file.parent().unwrap();
        // Another test may remove an empty /etc/netns between the two steps.
        for attempt in 0.. {
            match std::fs::create_dir_all(dir) {
                Ok(()) => break,
                Err(e) if attempt < 3 && e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => panic!("creating {}: {e}", dir.display()),
            }
        }
        // Truncate and write: the same inode, which running processes of
        // the pod have bind-mounted over /etc/hosts.
        std::fs::write(&file, text).unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
        if !pod.written {
            // Names missing from the file fail at once (nothing answers on
            // the pod's own loopback) instead of waiting for the host's
            // nameserver, which the pod cannot reach.
            let resolv = dir.join("resolv.conf");
            std::fs::write(&resolv, RESOLV_CONF)
                .unwrap_or_else(|e| panic!("writing {}: {e}", resolv.display()));
        }
        pod.written = true;
    }
}

/// A pod's registration in its network's [`Hosts`].
struct PodHosts {
    hosts: Hosts,
    netns: String,
}

impl PodHosts {
    fn set_own(&self, entries: &[HostsEntry]) {
        let mut state = self.hosts.0.lock().unwrap();
        if let Some(pod) = state.pods.get_mut(&self.netns) {
            pod.own = entries.to_vec();
        }
        state.write(&self.netns);
    }
}

impl Drop for PodHosts {
    fn drop(&mut self) {
        let Ok(mut state) = self.hosts.0.lock() else {
            return;
        };
        if state
            .pods
            .remove(&self.netns)
            .is_some_and(|pod| pod.written)
        {
            let _ = std::fs::remove_dir_all(PathBuf::from(ETC_NETNS).join(&self.netns));
            // Only when empty; never fails a test.
            let _ = std::fs::remove_dir(ETC_NETNS);
        }
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
