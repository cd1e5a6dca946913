//! Kubernetes Services in the network-namespace test cluster: the node
//! programs iptables the way kube-proxy's iptables mode does, and every pod
//! resolves Service names the way cluster DNS answers them.
//!
//! Include with
//! ```ignore
//! #[path = "support/netns.rs"]
//! mod netns;
//! #[path = "support/kube_proxy.rs"]
//! mod kube_proxy;
//! ```
//! (plus `support/mesh.rs` for a `Mesh`, whose network this works on).
//!
//! # Layout
//!
//! The "node" is the [`Network`]'s bridge namespace: it holds `br0` (at
//! 198.18.0.1/16 in a `Mesh`), every pod's veth peer, and now the Service
//! rules. Cluster IPs come from [`SERVICE_CIDR`] (198.19.0.0/16, inside the
//! 198.18.0.0/15 the tests may use) and belong to no interface, as in
//! Kubernetes: pods route the CIDR via the bridge's address (`netns.rs` adds
//! `198.19.0.0/16 via 198.18.0.1` to every pod once the bridge has an
//! address), so a connection to a cluster IP reaches the node, whose `nat`
//! `PREROUTING` picks an endpoint and DNATs the connection to it. The node
//! itself routes the CIDR to `kube-svc0`, one end of an otherwise unused veth
//! pair: like a real node's default route, it is where cluster-IP packets go
//! when no rule translated them, which lets the `filter` rules reject the
//! ports of Services without endpoints; other addresses of the CIDR go
//! nowhere (the client times out, as with an unknown cluster IP).
//!
//! # How it mirrors kube-proxy (iptables mode)
//!
//! * `nat`: `PREROUTING` and `OUTPUT` jump to `KUBE-SERVICES`, which has one
//!   rule per Service port (`-d CLUSTER_IP/32 -p tcp --dport PORT -j
//!   KUBE-SVC-…`). The `KUBE-SVC-…` chain of a port with n ready endpoints
//!   jumps to endpoint i's `KUBE-SEP-…` chain with `-m statistic --mode
//!   random --probability 1/(n-i)` (the last rule unconditionally), so each
//!   endpoint gets 1/n of the *connections*. `KUBE-SEP-…` marks hairpin
//!   traffic (the endpoint calling its own Service) for masquerade
//!   (`KUBE-MARK-MASQ`, 0x4000; `POSTROUTING` → `KUBE-POSTROUTING`
//!   masquerades marked packets) and DNATs to the endpoint.
//! * `filter`: `FORWARD` and `OUTPUT` (`--ctstate NEW`) jump to
//!   `KUBE-SERVICES`, which REJECTs the ports of Services without ready
//!   endpoints. One deviation: kube-proxy rejects with ICMP port
//!   unreachable, but Linux only takes an ICMP error that arrives while
//!   `connect()` still holds the socket as a soft error, and in namespaces
//!   it arrives within microseconds: the client would see `ECONNREFUSED`
//!   only on the SYN retransmission, a second later. A TCP reset is
//!   processed right away, so this harness rejects with `tcp-reset`: still
//!   "connection refused", immediately.
//! * Every change rewrites the whole chain set with one `iptables-restore
//!   --noflush` (nat and filter in one transaction): declaring a chain
//!   flushes it, chains of removed Services and endpoints are declared and
//!   deleted (`-X`) in the same input, the built-in chains are untouched.
//!   Established connections keep their endpoint (conntrack), new ones see
//!   the new rules.
//! * Endpoints are the *ready* ones: pass only those to
//!   [`KubeProxy::set_service`] (kube-proxy leaves not-ready endpoints out).
//!
//! The node's sysctls (set and read back in the node's namespace; they are
//! per namespace, [`KubeProxy::new`] checks the host's did not move):
//! `net.ipv4.ip_forward=1` (the node routes pod → endpoint), no ICMP
//! redirects, and `net.bridge.bridge-nf-call-iptables=1`. The last one is
//! what makes replies work: the endpoint answers the client directly over
//! the L2 bridge (same subnet), so only when bridged frames go through
//! netfilter does conntrack see the reply and rewrite its source back from
//! the endpoint to the cluster IP; without it the client gets a SYN-ACK from
//! an address it never called and the connection never opens
//! (`tests/services_netns.rs` shows both). Bridge ports get hairpin mode
//! (kubelet's `hairpin-veth`), so a pod can reach itself through a Service.
//!
//! # Names
//!
//! Every Service is published to every pod's `/etc/hosts` (see `netns.rs`)
//! as `NAME.NAMESPACE.svc.cluster.local NAME.NAMESPACE NAME` → cluster IP,
//! what cluster DNS answers (the short forms through the search path).
//! Services are named `NAMESPACE/NAME`, or `NAME` in namespace `default`.
//! Names are written before `set_service` returns; only processes started
//! after the first Service existed have the file mounted.
//!
//! # Meshed pods
//!
//! Nothing changes inside pods: a meshed client connecting to a cluster IP
//! is redirected by its own pod's `nat OUTPUT` (`ward-proxy init`) to the
//! sidecar before anything leaves the pod; the sidecar reads
//! `SO_ORIGINAL_DST` = cluster IP:port. Whatever the sidecar then connects
//! to (the cluster IP, or an endpoint it chose itself) leaves the pod
//! through the route above.
//!
//! Cleanup on drop (also when a test panics): the rules and hooks, the
//! uplink veth pair, the published names and the sysctls' previous values;
//! hairpin mode stays on. Deleting the namespace (the network's drop)
//! removes everything anyway.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

use crate::netns::{Hosts, HostsEntry, Network, SERVICE_CIDR};

/// The cluster domain of Service names.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// Where the node routes the service CIDR (one end of a veth pair).
const UPLINK: &str = "kube-svc0";
const UPLINK_PEER: &str = "kube-svc1";
/// The group of the published names in the network's hosts table.
const HOSTS_GROUP: &str = "kube-dns";
/// kube-proxy's masquerade mark.
const MASQ_MARK: &str = "0x4000";

/// Root, the tools, and `br_netfilter` (its sysctls exist in every
/// namespace once the module is loaded; the tests cannot load it).
pub fn prerequisites() -> bool {
    ward_testkit::require_root()
        && ward_testkit::require_tool("ip")
        && ward_testkit::require_tool("iptables")
        && ward_testkit::require_tool("iptables-restore")
        && ward_testkit::require_tool("iptables-save")
        && ward_testkit::require_tool("sysctl")
        && ward_testkit::prerequisite(
            std::path::Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists(),
            "the br_netfilter kernel module is not loaded",
        )
}

/// The names cluster DNS gives Service `name` (`NAMESPACE/NAME` or `NAME`):
/// `NAME.NAMESPACE.svc.cluster.local`, `NAME.NAMESPACE`, `NAME`.
pub fn service_names(name: &str) -> Vec<String> {
    let (namespace, name) = split_name(name);
    vec![
        format!("{name}.{namespace}.svc.{CLUSTER_DOMAIN}"),
        format!("{name}.{namespace}"),
        name.to_owned(),
    ]
}

fn split_name(name: &str) -> (&str, &str) {
    name.split_once('/').unwrap_or(("default", name))
}

/// A Service port as the node knows it.
#[derive(Debug, Clone)]
struct ServicePort {
    cluster_ip: Ipv4Addr,
    endpoints: Vec<SocketAddrV4>,
}

/// The node's Service rules (see the module docs).
pub struct KubeProxy {
    node: String,
    hosts: Hosts,
    state: Mutex<State>,
    /// `(key, value)` of the node sysctls before we set them.
    saved_sysctls: Vec<(&'static str, String)>,
}

#[derive(Default)]
struct State {
    /// By (`NAMESPACE/NAME`, port).
    services: BTreeMap<(String, u16), ServicePort>,
    /// The `KUBE-SVC-…`/`KUBE-SEP-…` chains the last sync left in `nat`.
    chains: BTreeSet<String>,
}

impl KubeProxy {
    /// Turns `network`'s bridge namespace into a node: sysctls, the uplink
    /// route for [`SERVICE_CIDR`], the `KUBE-*` chains and their hooks,
    /// hairpin mode. Panics when the bridge has no address (pods route
    /// cluster IPs to it) or a sysctl does not take effect.
    pub fn new(network: &Network) -> KubeProxy {
        assert!(
            network.bridge_address().is_some(),
            "the bridge needs an address (Network::set_bridge_address) before a KubeProxy"
        );
        let node = network.name().to_owned();
        let mut proxy = KubeProxy {
            node,
            hosts: network.hosts(),
            state: Mutex::new(State::default()),
            saved_sysctls: Vec::new(),
        };
        // From here on Drop cleans up.
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.bridge.bridge-nf-call-iptables", "1"),
            ("net.ipv4.conf.all.send_redirects", "0"),
            ("net.ipv4.conf.br0.send_redirects", "0"),
        ] {
            let before = proxy.sysctl(key);
            proxy.saved_sysctls.push((key, before));
            let host_before = host_sysctl(key);
            proxy.set_sysctl(key, value);
            assert_eq!(
                host_sysctl(key),
                host_before,
                "setting {key} in the node changed the host's: not per namespace"
            );
        }
        let ns = proxy.node.clone();
        run(Command::new("ip").args([
            "-n",
            &ns,
            "link",
            "add",
            UPLINK,
            "type",
            "veth",
            "peer",
            "name",
            UPLINK_PEER,
        ]));
        for link in [UPLINK, UPLINK_PEER] {
            run(Command::new("ip").args(["-n", &ns, "link", "set", link, "up"]));
        }
        run(Command::new("ip").args(["-n", &ns, "route", "add", SERVICE_CIDR, "dev", UPLINK]));
        network.set_hairpin(true);
        let hooks = "*nat\n\
             :KUBE-SERVICES - [0:0]\n\
             :KUBE-POSTROUTING - [0:0]\n\
             -I PREROUTING 1 -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -I OUTPUT 1 -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -I POSTROUTING 1 -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
             COMMIT\n\
             *filter\n\
             :KUBE-SERVICES - [0:0]\n\
             -I FORWARD 1 -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -I OUTPUT 1 -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             COMMIT\n";
        proxy.restore(hooks);
        let mut state = proxy.state.lock().unwrap();
        proxy.sync(&mut state);
        drop(state);
        proxy
    }

    /// The node's namespace (the network's bridge namespace).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Creates or replaces Service `name` (`NAMESPACE/NAME` or `NAME`) port
    /// `port` at `cluster_ip` (in [`SERVICE_CIDR`]) with its ready
    /// `endpoints` (`"IP:PORT"`; none: the port is rejected). Other ports of
    /// the Service are kept. Returns once the rules and names are in force.
    pub fn set_service(&self, name: &str, cluster_ip: &str, port: u16, endpoints: &[&str]) {
        let (namespace, short) = split_name(name);
        assert!(
            valid_label(namespace) && valid_label(short),
            "invalid Service name {name:?} (DNS labels: a-z, 0-9, '-')"
        );
        let cluster_ip: Ipv4Addr = cluster_ip
            .parse()
            .unwrap_or_else(|e| panic!("cluster IP {cluster_ip:?}: {e}"));
        assert!(
            cluster_ip.octets()[..2] == [198, 19],
            "cluster IP {cluster_ip} is outside {SERVICE_CIDR}"
        );
        let endpoints: Vec<SocketAddrV4> = endpoints
            .iter()
            .map(|e| {
                e.parse()
                    .unwrap_or_else(|err| panic!("endpoint {e:?} is not IPv4:PORT: {err}"))
            })
            .collect();
        let mut state = self.state.lock().unwrap();
        let key = (format!("{namespace}/{short}"), port);
        if let Some(((other, other_port), _)) = state
            .services
            .iter()
            .find(|(k, s)| **k != key && k.1 == port && s.cluster_ip == cluster_ip)
        {
            panic!("{cluster_ip}:{port} is already Service {other} port {other_port}");
        }
        state.services.insert(
            key,
            ServicePort {
                cluster_ip,
                endpoints,
            },
        );
        self.sync(&mut state);
    }

    /// Removes every port of Service `name` (rules and names); a no-op for
    /// an unknown Service.
    pub fn remove_service(&self, name: &str) {
        let (namespace, short) = split_name(name);
        let full = format!("{namespace}/{short}");
        let mut state = self.state.lock().unwrap();
        state.services.retain(|(service, _), _| *service != full);
        self.sync(&mut state);
    }

    /// `iptables-save` of the node's `nat` and `filter` tables.
    pub fn rules(&self) -> String {
        let mut text = String::new();
        for table in ["nat", "filter"] {
            let out = self.node_exec(&["iptables-save", "-t", table]);
            text.push_str(&stdout_ok(out, "iptables-save"));
        }
        text
    }

    /// A sysctl of the node's namespace (`sysctl -n KEY`).
    pub fn sysctl(&self, key: &str) -> String {
        let out = self.node_exec(&["sysctl", "-n", key]);
        stdout_ok(out, &format!("sysctl -n {key}"))
            .trim()
            .to_owned()
    }

    /// Sets a sysctl in the node's namespace and checks it reads back.
    pub fn set_sysctl(&self, key: &str, value: &str) {
        let out = self.node_exec(&["sysctl", "-w", &format!("{key}={value}")]);
        stdout_ok(out, &format!("sysctl -w {key}={value}"));
        assert_eq!(self.sysctl(key), value, "{key} did not take effect");
    }

    fn node_exec(&self, argv: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.node])
            .args(argv)
            .output()
            .expect("run a command in the node namespace")
    }

    /// Feeds `rules` to `iptables-restore --noflush` in the node.
    fn restore(&self, rules: &str) {
        if let Err(e) = self.try_restore(rules) {
            panic!("iptables-restore failed: {e}\n--- input ---\n{rules}");
        }
    }

    fn try_restore(&self, rules: &str) -> Result<(), String> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.node])
            .args(["iptables-restore", "-w", "--noflush"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let write = child.stdin.take().unwrap().write_all(rules.as_bytes());
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        write.map_err(|e| e.to_string())
    }

    /// Rewrites the whole chain set from `state` and republishes the names.
    fn sync(&self, state: &mut State) {
        let (rules, chains) = ruleset(&state.services, &state.chains);
        self.restore(&rules);
        state.chains = chains;
        let entries: Vec<HostsEntry> = state
            .services
            .iter()
            .map(|((name, _), service)| (name, service.cluster_ip))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|(name, ip)| HostsEntry {
                ip: ip.into(),
                names: service_names(name),
            })
            .collect();
        self.hosts.set_group(HOSTS_GROUP, &entries);
    }
}

impl Drop for KubeProxy {
    fn drop(&mut self) {
        self.hosts.set_group(HOSTS_GROUP, &[]);
        let chains = self
            .state
            .lock()
            .map(|s| s.chains.clone())
            .unwrap_or_default();
        let mut nat = String::from("*nat\n");
        let own = ["KUBE-SERVICES", "KUBE-MARK-MASQ", "KUBE-POSTROUTING"];
        for chain in own.iter().copied().chain(chains.iter().map(String::as_str)) {
            nat.push_str(&format!(":{chain} - [0:0]\n"));
        }
        nat.push_str(
            "-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -D OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -D POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n",
        );
        for chain in own.iter().copied().chain(chains.iter().map(String::as_str)) {
            nat.push_str(&format!("-X {chain}\n"));
        }
        nat.push_str(
            "COMMIT\n*filter\n:KUBE-SERVICES - [0:0]\n\
             -D FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -D OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -X KUBE-SERVICES\nCOMMIT\n",
        );
        // Best effort: the namespace may already be gone, or half set up.
        let _ = self.try_restore(&nat);
        let _ = Command::new("ip")
            .args(["-n", &self.node, "link", "del", UPLINK])
            .output();
        for (key, value) in self.saved_sysctls.iter().rev() {
            let _ = self.node_exec(&["sysctl", "-w", &format!("{key}={value}")]);
        }
    }
}

/// The `iptables-restore` input for `services`, and the per-Service chains
/// it leaves; `previous` chains no longer needed are deleted.
fn ruleset(
    services: &BTreeMap<(String, u16), ServicePort>,
    previous: &BTreeSet<String>,
) -> (String, BTreeSet<String>) {
    let mut chains = BTreeSet::new();
    let mut nat_rules = vec![
        format!("-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}"),
        format!("-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"),
        // Clear the mark: a packet re-traversing the chains is not re-masqueraded.
        format!("-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}"),
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" \
         -j MASQUERADE --random-fully"
            .to_owned(),
    ];
    let mut filter_rules = Vec::new();
    for ((name, port), service) in services {
        let port_name = format!("{name}:{port}");
        let dest = format!("-d {}/32 -p tcp", service.cluster_ip);
        if service.endpoints.is_empty() {
            filter_rules.push(format!(
                "-A KUBE-SERVICES {dest} -m comment --comment \"{port_name} has no endpoints\" \
                 -m tcp --dport {port} -j REJECT --reject-with tcp-reset"
            ));
            continue;
        }
        let svc = chain_name("KUBE-SVC-", &format!("{port_name}/tcp"));
        chains.insert(svc.clone());
        nat_rules.push(format!(
            "-A KUBE-SERVICES {dest} -m comment --comment \"{port_name} cluster IP\" \
             -m tcp --dport {port} -j {svc}"
        ));
        let n = service.endpoints.len();
        for (i, endpoint) in service.endpoints.iter().enumerate() {
            let sep = chain_name("KUBE-SEP-", &format!("{port_name}/tcp/{endpoint}"));
            chains.insert(sep.clone());
            let comment = format!("-m comment --comment \"{port_name} -> {endpoint}\"");
            let pick = if i + 1 < n {
                format!(
                    " -m statistic --mode random --probability {:.10}",
                    1.0 / (n - i) as f64
                )
            } else {
                String::new()
            };
            nat_rules.push(format!("-A {svc} {comment}{pick} -j {sep}"));
            nat_rules.push(format!(
                "-A {sep} {comment} -s {}/32 -j KUBE-MARK-MASQ",
                endpoint.ip()
            ));
            nat_rules.push(format!(
                "-A {sep} {comment} -p tcp -m tcp -j DNAT --to-destination {endpoint}"
            ));
        }
    }
    let stale: Vec<&String> = previous.difference(&chains).collect();
    let mut text = String::from("*nat\n");
    for chain in ["KUBE-SERVICES", "KUBE-MARK-MASQ", "KUBE-POSTROUTING"]
        .iter()
        .copied()
        .chain(chains.iter().map(String::as_str))
        .chain(stale.iter().map(|s| s.as_str()))
    {
        text.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for rule in &nat_rules {
        text.push_str(rule);
        text.push('\n');
    }
    for chain in &stale {
        text.push_str(&format!("-X {chain}\n"));
    }
    text.push_str("COMMIT\n*filter\n:KUBE-SERVICES - [0:0]\n");
    for rule in &filter_rules {
        text.push_str(rule);
        text.push('\n');
    }
    text.push_str("COMMIT\n");
    (text, chains)
}

/// `PREFIX` + 16 hex digits of a hash of `key` (kube-proxy uses 16 base32
/// characters of a SHA-256; chain names stay under iptables' 28).
fn chain_name(prefix: &str, key: &str) -> String {
    // FNV-1a, 64 bits: stable across runs and platforms.
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{prefix}{hash:016X}")
}

/// A sysctl of the test process's own (the host's) namespace, if it has it.
fn host_sysctl(key: &str) -> Option<String> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::read_to_string(path)
        .ok()
        .map(|v| v.trim().to_owned())
}

fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn run(command: &mut Command) {
    let out = command.output().expect("run command");
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn stdout_ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
