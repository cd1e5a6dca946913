//! Traffic capture end to end: the real `ward-proxy init` programs iptables
//! inside throwaway network namespaces (see `support/netns.rs`), and the
//! hidden `ward-proxy debug-orig-dst` probe shows where connections land and
//! what SO_ORIGINAL_DST reports. Nothing outside those namespaces is touched;
//! only their 198.18.0.0/15 addresses and loopback carry traffic.
//!
//! Needs root, `ip`, `iptables` and `setpriv`; skips without them (fails
//! under WARD_TEST_STRICT=1).

#[path = "support/bins.rs"]
mod bins;
#[path = "support/netns.rs"]
mod netns;

use std::net::SocketAddr;

use bins::assert_ok;
use netns::{ChildGuard, Network, Pod};

const PROXY_UID: u32 = 1337;
/// Any application UID other than the proxy's.
const APP_UID: u32 = 1000;
const POD_A: &str = "198.18.0.2/16";
const POD_B: &str = "198.18.0.3/16";

fn prerequisites() -> bool {
    ward_testkit::require_root()
        && ward_testkit::require_tool("ip")
        && ward_testkit::require_tool("iptables")
        && ward_testkit::require_tool("setpriv")
}

/// The `ward-proxy` binary (see `support/bins.rs`: built once per run).
fn ward_proxy() -> &'static str {
    &bins::bins().proxy
}

/// `ward-proxy init ARGS` inside the pod.
fn init(pod: &Pod, args: &[&str]) -> String {
    let mut cmd = vec![ward_proxy(), "init"];
    cmd.extend_from_slice(args);
    assert_ok(pod.exec(&cmd), &format!("ward-proxy init {args:?}"))
}

/// A probe answering `<local> <original destination>` on each port.
fn probe(pod: &Pod, ports: &[u16]) -> ChildGuard {
    let listens: Vec<String> = ports.iter().map(|p| format!("0.0.0.0:{p}")).collect();
    let mut cmd = vec![ward_proxy(), "debug-orig-dst"];
    for listen in &listens {
        cmd.extend(["--listen", listen]);
    }
    let mut child = pod.spawn(&cmd);
    child.wait_for_line("ready");
    child
}

/// Where a connection from `pod` (as `uid`) to `target` landed.
enum Landed {
    /// A probe accepted it on `local`; SO_ORIGINAL_DST said `orig`.
    Probe { local: SocketAddr, orig: SocketAddr },
    /// The connect (or read) failed with this message.
    Failed(String),
}

fn connect(pod: &Pod, uid: u32, target: &str) -> Landed {
    let out = pod.exec_as(uid, &[ward_proxy(), "debug-orig-dst", "--connect", target]);
    if !out.status.success() {
        return Landed::Failed(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let reply = String::from_utf8(out.stdout).unwrap();
    let (local, orig) = reply.trim().split_once(' ').expect("probe reply");
    Landed::Probe {
        local: local.parse().unwrap(),
        orig: orig
            .parse()
            .unwrap_or_else(|_| panic!("probe said {reply:?}")),
    }
}

/// Asserts the connection reached a probe listening on `port` with
/// original destination `orig`.
fn assert_lands(landed: Landed, port: u16, orig: &str) {
    match landed {
        Landed::Probe { local, orig: got } => {
            assert_eq!(local.port(), port, "landed on {local}");
            assert_eq!(got, orig.parse().unwrap());
        }
        Landed::Failed(err) => panic!("expected to land on :{port}, got: {err}"),
    }
}

#[test]
fn inbound_is_redirected_except_admin_and_excluded_ports() {
    if !prerequisites() {
        return;
    }
    let network = Network::new("ward-cap-in");
    let (a, b) = (network.add_pod("a", POD_A), network.add_pod("b", POD_B));
    init(&b, &["--exclude-inbound-ports", "7070"]);
    let _probe = probe(&b, &[15006, 15020, 7070]);

    assert_lands(
        connect(&a, APP_UID, "198.18.0.3:8080"),
        15006,
        "198.18.0.3:8080",
    );
    // Not captured: they reach the listeners on their own ports.
    assert_lands(
        connect(&a, APP_UID, "198.18.0.3:15020"),
        15020,
        "198.18.0.3:15020",
    );
    assert_lands(
        connect(&a, APP_UID, "198.18.0.3:7070"),
        7070,
        "198.18.0.3:7070",
    );
}

#[test]
fn proxy_calling_its_own_pod_address_is_inbound_but_app_is_not_captured() {
    if !prerequisites() {
        return;
    }
    let network = Network::new("ward-cap-lo");
    let b = network.add_pod("b", POD_B);
    init(&b, &[]);
    let _probe = probe(&b, &[15001, 15006]);

    // The proxy's second leg of "app calls itself via its service".
    assert_lands(
        connect(&b, PROXY_UID, "198.18.0.3:8080"),
        15006,
        "198.18.0.3:8080",
    );
    // The application talking to itself is left alone: nothing listens.
    match connect(&b, APP_UID, "198.18.0.3:8080") {
        Landed::Failed(err) => assert!(err.contains("refused"), "{err}"),
        Landed::Probe { local, .. } => panic!("app-to-self was captured to {local}"),
    }
}

#[test]
fn outbound_is_redirected_except_for_the_proxy_uid() {
    if !prerequisites() {
        return;
    }
    let network = Network::new("ward-cap-out");
    let (a, b) = (network.add_pod("a", POD_A), network.add_pod("b", POD_B));
    init(&a, &[]);
    init(&b, &[]);
    let _probe_a = probe(&a, &[15001]);
    let _probe_b = probe(&b, &[15006]);

    // The application's connection goes to its own sidecar first.
    assert_lands(
        connect(&a, APP_UID, "198.18.0.3:9090"),
        15001,
        "198.18.0.3:9090",
    );
    // The proxy's own connection is not re-captured in A: it reaches B,
    // whose inbound capture hands it to B's 15006.
    match connect(&a, PROXY_UID, "198.18.0.3:9090") {
        Landed::Probe { local, orig } => {
            assert_eq!(local, "198.18.0.3:15006".parse().unwrap());
            assert_eq!(orig, "198.18.0.3:9090".parse().unwrap());
        }
        Landed::Failed(err) => panic!("proxy UID connection failed: {err}"),
    }
}

/// `iptables-save -t nat` (and ip6tables when present) without the comment
/// lines and with chain counters zeroed, which traffic may change.
fn nat_tables(pod: &Pod) -> String {
    let mut tools = vec!["iptables-save"];
    if ward_testkit::which("ip6tables-save").is_some() {
        tools.push("ip6tables-save");
    }
    let mut saved = String::new();
    for tool in tools {
        let out = assert_ok(pod.exec(&[tool, "-t", "nat"]), tool);
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            let line = match line.split_once(" [") {
                Some((chain, _)) if line.starts_with(':') => chain,
                _ => line,
            };
            saved.push_str(line);
            saved.push('\n');
        }
    }
    saved
}

/// Whether `lo` has `::6`, the inbound's IPv6 source address.
fn inbound_source_v6_on_lo(pod: &Pod) -> bool {
    let out = assert_ok(
        pod.exec(&["ip", "-6", "-o", "addr", "show", "dev", "lo"]),
        "ip -6 addr show dev lo",
    );
    let count = out.matches(" ::6/128 ").count();
    assert!(count <= 1, "{out}");
    count == 1
}

#[test]
fn dry_run_changes_nothing_init_is_idempotent_remove_restores_exactly() {
    if !prerequisites() {
        return;
    }
    let network = Network::new("ward-cap-rules");
    let pod = network.add_pod("a", POD_A);
    // Someone else's rules, which Ward must leave alone.
    for chain in ["OUTPUT", "PREROUTING"] {
        let rule = [
            "iptables", "-t", "nat", "-A", chain, "-p", "tcp", "--dport", "5555",
        ];
        assert_ok(
            pod.exec(&[&rule[..], &["-j", "RETURN"]].concat()),
            "foreign rule",
        );
    }
    let original = nat_tables(&pod);
    let ipv6 = ward_testkit::which("ip6tables-save").is_some();
    assert!(!inbound_source_v6_on_lo(&pod));

    let printed = init(&pod, &["--dry-run"]);
    assert!(
        printed.contains("iptables-restore -w --noflush"),
        "{printed}"
    );
    assert!(
        printed.contains("-A WARD_OUTPUT -j WARD_REDIRECT"),
        "{printed}"
    );
    assert_eq!(nat_tables(&pod), original, "--dry-run changed the rules");
    assert!(!inbound_source_v6_on_lo(&pod), "--dry-run added ::6");

    init(&pod, &[]);
    let installed = nat_tables(&pod);
    // With IPv6 capture, the inbound's IPv6 source is on lo (once).
    assert_eq!(inbound_source_v6_on_lo(&pod), ipv6);
    init(&pod, &[]);
    assert_eq!(nat_tables(&pod), installed, "second init changed the rules");
    assert_eq!(inbound_source_v6_on_lo(&pod), ipv6);
    let jumps = installed
        .lines()
        .filter(|l| *l == "-A OUTPUT -p tcp -j WARD_OUTPUT")
        .count();
    let families = if ward_testkit::which("ip6tables-save").is_some() {
        2
    } else {
        1
    };
    assert_eq!(jumps, families, "{installed}");

    init(&pod, &["--remove"]);
    assert_eq!(nat_tables(&pod), original, "--remove left a difference");
    assert!(!inbound_source_v6_on_lo(&pod), "--remove left ::6 on lo");
    assert!(original.contains("-A OUTPUT -p tcp -m tcp --dport 5555 -j RETURN"));
    // Removing again is a no-op.
    init(&pod, &["--remove"]);
    assert_eq!(nat_tables(&pod), original);
}
