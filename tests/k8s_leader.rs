//! Two control-plane replicas against a real Kubernetes API server (etcd,
//! kube-apiserver and kube-controller-manager; harness in
//! `tests/support/cluster.rs`): one writes the policy statuses at a time,
//! elected with a `coordination.k8s.io/v1` Lease; killing it moves the
//! Lease to the other, which then writes what was left unwritten; a
//! graceful shutdown hands the Lease over without waiting for it to
//! expire. Who wrote each status is read from the API server's
//! `managedFields` (each replica's field manager names it). Skips when the
//! Kubernetes binaries are unavailable, fails instead under
//! `WARD_TEST_STRICT=1`.

#[path = "support/bins.rs"]
mod bins;
#[path = "support/cluster.rs"]
mod cluster;

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use cluster::{Cluster, text};
use serde_json::Value;

const NAMESPACE: &str = "ward-system";
const SERVICE_ACCOUNT: &str = "ward-control-plane";
const LEASE: &str = "ward-control-plane";
/// The election's timings here, in seconds, through the flags: shorter
/// than the defaults (15/10/5) so a takeover takes seconds.
const LEASE_DURATION: u64 = 8;
const RENEW_DEADLINE: u64 = 5;
const RENEW_PERIOD: u64 = 2;

/// A `ward-control-plane --kubernetes` process, killed on drop.
struct Replica {
    identity: String,
    child: Child,
    log: PathBuf,
    admin: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    /// A replica with its own ServiceAccount's credentials (`kubeconfig`),
    /// the CA in `data`, and the Lease identity `identity`; its `run`-th
    /// process (each logs to its own file).
    fn start(c: &Cluster, identity: &str, run: u32, data: &Path, kubeconfig: &Path) -> Replica {
        let log = c.dir().join(format!("{identity}-{run}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let admin = format!("127.0.0.1:{}", cluster::free_port());
        let listen = format!("127.0.0.1:{}", cluster::free_port());
        let (duration, deadline, period) = (
            format!("{LEASE_DURATION}s"),
            format!("{RENEW_DEADLINE}s"),
            format!("{RENEW_PERIOD}s"),
        );
        let child = c
            .command(&bins::bins().control_plane)
            .args(["--kubernetes", "--k8s-token-review", "--data-dir"])
            .arg(data)
            .args(["--listen", &listen, "--admin-listen", &admin])
            .args(["--lease-identity", identity])
            .args(["--lease-duration", &duration])
            .args(["--lease-renew-deadline", &deadline])
            .args(["--lease-renew-period", &period])
            .args(["--log-level", "info"])
            .env("KUBECONFIG", kubeconfig)
            // kube-rs prefers the in-cluster configuration when these are set.
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start ward-control-plane");
        Replica {
            identity: identity.to_owned(),
            child,
            log,
            admin,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn tail(&self) -> String {
        format!(
            "\n---- {} log:\n{}",
            self.identity,
            bins::tail(&self.log, 25)
        )
    }

    /// `/ready` answers 200 (every replica serves, whatever its role).
    fn ready(&mut self) -> Result<(), String> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(format!("{} exited ({status})", self.identity));
        }
        match cluster::http_get(&self.admin, "/ready")? {
            (200, _) => Ok(()),
            (code, body) => Err(format!("{code} {}", body.trim())),
        }
    }

    /// The value of one series of its `/metrics`.
    fn metric(&self, series: &str) -> Result<f64, String> {
        let (code, body) = cluster::http_get(&self.admin, "/metrics")?;
        if code != 200 {
            return Err(format!("/metrics: {code}"));
        }
        body.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .ok_or_else(|| format!("{} has no series {series}", self.identity))
    }

    /// `ward_cp_leader`: whether it says it writes the statuses.
    fn leader(&self) -> Result<f64, String> {
        self.metric("ward_cp_leader")
    }

    /// Status writes it made (ok and failed).
    fn status_writes(&self) -> f64 {
        ["ok", "failed"]
            .iter()
            .map(|r| {
                self.metric(&format!(
                    "ward_cp_policy_status_updates_total{{result=\"{r}\"}}"
                ))
                .unwrap()
            })
            .sum()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM: a graceful shutdown.
    fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {}", self.child.id());
    }
}

/// The Lease as the API server has it.
struct LeaseState {
    holder: String,
    transitions: i64,
    duration: i64,
    acquired: time::OffsetDateTime,
    renewed: time::OffsetDateTime,
}

fn lease(c: &Cluster) -> Option<LeaseState> {
    let (ok, out, err) = text(&c.kubectl(&["-n", NAMESPACE, "get", "lease", LEASE, "-o", "json"]));
    if !ok {
        assert!(err.contains("NotFound"), "kubectl get lease: {err}");
        return None;
    }
    let lease: Value = serde_json::from_str(&out).unwrap();
    let spec = &lease["spec"];
    let at = |field: &str| {
        time::OffsetDateTime::parse(
            spec[field]
                .as_str()
                .unwrap_or_else(|| panic!("{field}: {spec}")),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    Some(LeaseState {
        holder: spec["holderIdentity"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        transitions: spec["leaseTransitions"].as_i64().unwrap_or(0),
        duration: spec["leaseDurationSeconds"].as_i64().unwrap_or(0),
        acquired: at("acquireTime"),
        renewed: at("renewTime"),
    })
}

fn holder(c: &Cluster) -> String {
    lease(c).map(|l| l.holder).unwrap_or_default()
}

/// Seconds from `a` to `b`.
fn seconds(a: time::OffsetDateTime, b: time::OffsetDateTime) -> f64 {
    (b - a).as_seconds_f64()
}

fn policy(name: &str) -> String {
    format!(
        "apiVersion: security.ward.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec:\n  selector: {{matchLabels: {{app: cart}}}}\n  action: ALLOW\n  rules: [{{from: [{{source: {{namespaces: [shop]}}}}]}}]\n"
    )
}

/// The policy's `Accepted` condition status ("" while it has none).
fn accepted(c: &Cluster, name: &str) -> String {
    c.kubectl_ok(&[
        "-n",
        "shop",
        "get",
        "authorizationpolicy.security.ward.io",
        name,
        "-o",
        r#"jsonpath={.status.conditions[?(@.type=="Accepted")].status}"#,
    ])
}

/// The field managers that wrote the policy's `status` (the API server's
/// record, not the replicas' word).
fn status_writers(c: &Cluster, name: &str) -> Vec<String> {
    let object: Value = serde_json::from_str(&c.kubectl_ok(&[
        "-n",
        "shop",
        "get",
        "authorizationpolicy.security.ward.io",
        name,
        "-o",
        "json",
        "--show-managed-fields",
    ]))
    .unwrap();
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entry| entry["subresource"] == "status")
        .map(|entry| entry["manager"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn writer(identity: &str) -> Vec<String> {
    vec![format!("ward-control-plane/{identity}")]
}

/// `kubectl auth can-i ARGS` as `kubeconfig`: "yes" or "no".
fn can_i(c: &Cluster, kubeconfig: &Path, args: &[&str]) -> String {
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    let (_, out, err) = text(&c.kubectl_as(kubeconfig, &all, None));
    if out.trim().is_empty() {
        c.fail(&format!("kubectl {}: {err}", all.join(" ")));
    }
    out.trim().to_owned()
}

/// A data directory holding the CA in `ca` (both replicas share one CA, as
/// the Deployment's replicas share the Secret).
fn data_dir(c: &Cluster, name: &str, ca: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let data = c.dir().join(name);
    std::fs::create_dir_all(data.join("ca")).unwrap();
    for file in ["ca.pem", "ca-key.pem"] {
        std::fs::copy(ca.join("ca").join(file), data.join("ca").join(file)).unwrap();
    }
    std::fs::set_permissions(data.join("ca"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(
        data.join("ca/ca-key.pem"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    data
}

#[test]
fn one_replica_writes_statuses_and_the_lease_moves_when_it_dies_or_leaves() {
    let began = Instant::now();
    let Some(c) = Cluster::start() else { return };
    let secs = Duration::from_secs;

    // ---- deploy/base as an operator applies it (its replicas are the
    // processes below: the Deployment is scaled to 0).
    c.kubectl_ok(&["apply", "-k", "deploy/base"]);
    c.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "crd/authorizationpolicies.security.ward.io",
        "crd/peerauthentications.security.ward.io",
        "crd/quarantines.ward.io",
    ]);
    c.kubectl_ok(&[
        "-n",
        NAMESPACE,
        "scale",
        "deployment/ward-control-plane",
        "--replicas=0",
    ]);
    // The NetworkPolicies are stored (not enforced: this cluster has no
    // network plugin that enforces them).
    let mut network_policies: Vec<String> = c
        .kubectl_ok(&["-n", NAMESPACE, "get", "networkpolicies", "-o", "name"])
        .lines()
        .map(str::to_owned)
        .collect();
    network_policies.sort();
    assert_eq!(
        network_policies,
        [
            "networkpolicy.networking.k8s.io/ward-control-plane-api",
            "networkpolicy.networking.k8s.io/ward-control-plane-metrics",
            "networkpolicy.networking.k8s.io/ward-control-plane-webhook",
        ]
    );

    // ---- the Role: that one Lease, in ward-system, and nothing more
    let token = c.kubectl_ok(&[
        "-n",
        NAMESPACE,
        "create",
        "token",
        SERVICE_ACCOUNT,
        "--duration=1h",
    ]);
    let kubeconfig = c.token_kubeconfig("ward-control-plane.kubeconfig", token.trim());
    let this_lease = format!("leases.coordination.k8s.io/{LEASE}");
    let this_lease = this_lease.as_str();
    for (args, want) in [
        (&["get", this_lease, "-n", NAMESPACE][..], "yes"),
        (&["update", this_lease, "-n", NAMESPACE], "yes"),
        (
            &["create", "leases.coordination.k8s.io", "-n", NAMESPACE],
            "yes",
        ),
        (
            &[
                "update",
                "leases.coordination.k8s.io/other",
                "-n",
                NAMESPACE,
            ],
            "no",
        ),
        (&["delete", this_lease, "-n", NAMESPACE], "no"),
        (
            &["list", "leases.coordination.k8s.io", "-n", NAMESPACE],
            "no",
        ),
        (&["get", this_lease, "-n", "kube-system"], "no"),
        (
            &["create", "leases.coordination.k8s.io", "-n", "default"],
            "no",
        ),
    ] {
        assert_eq!(
            can_i(&c, &kubeconfig, args),
            want,
            "kubectl auth can-i {} as {SERVICE_ACCOUNT}",
            args.join(" ")
        );
    }

    // ---- replica A starts first: it creates the Lease and holds it
    let ca = c.dir().join("ca-src");
    bins::ca_init(&ca, "cluster.local");
    let (data_a, data_b) = (data_dir(&c, "data-a", &ca), data_dir(&c, "data-b", &ca));
    let mut a = Replica::start(&c, "replica-a", 1, &data_a, &kubeconfig);
    c.wait_until("replica-a /ready", secs(60), || {
        a.ready().map_err(|e| e + &a.tail())
    });
    c.wait_until(
        "replica-a holds the Lease and says so",
        secs(30),
        || match (holder(&c), a.leader()) {
            (h, Ok(1.0)) if h == "replica-a" => Ok(()),
            (h, leader) => Err(format!(
                "holder {h:?}, ward_cp_leader {leader:?}{}",
                a.tail()
            )),
        },
    );
    let first = lease(&c).unwrap();
    assert_eq!(first.duration, LEASE_DURATION as i64, "--lease-duration");
    assert_eq!(first.transitions, 0);

    // ---- replica B: ready (it serves), following
    let mut b = Replica::start(&c, "replica-b", 1, &data_b, &kubeconfig);
    c.wait_until("replica-b /ready and following", secs(60), || {
        b.ready().map_err(|e| e + &b.tail())?;
        match b.log().contains("following") {
            true => Ok(()),
            false => Err(format!("no 'following' line yet{}", b.tail())),
        }
    });
    assert_eq!(b.leader(), Ok(0.0));
    assert_eq!(holder(&c), "replica-a");

    // ---- a policy: both replicas judge it, only A writes its status
    c.kubectl_ok(&["create", "namespace", "shop"]);
    c.apply(&policy("first"));
    c.wait_until("policy first Accepted=True", secs(30), || {
        match accepted(&c, "first").as_str() {
            "True" => Ok(()),
            other => Err(format!("Accepted={other:?}{}{}", a.tail(), b.tail())),
        }
    });
    let judged = "ward_cp_policy_resources{kind=\"AuthorizationPolicy\",state=\"accepted\"}";
    c.wait_until(
        "replica-b has judged the policy too",
        secs(30),
        || match b.metric(judged) {
            Ok(1.0) => Ok(()),
            other => Err(format!("{judged} = {other:?}")),
        },
    );
    assert_eq!(status_writers(&c, "first"), writer("replica-a"));
    assert_eq!(b.status_writes(), 0.0, "the follower wrote{}", b.tail());
    assert!(a.status_writes() >= 1.0);
    assert_eq!((a.leader(), b.leader()), (Ok(1.0), Ok(0.0)));

    // ---- kill A (no release): B takes the Lease once it expires
    let before_kill = lease(&c).unwrap();
    let _ = a.child.kill();
    let _ = a.child.wait();
    let killed = Instant::now();
    let last_renewal = lease(&c).unwrap();
    assert_eq!(last_renewal.holder, "replica-a", "taken while A was alive");
    assert!(last_renewal.renewed >= before_kill.renewed);
    // A policy while nobody writes: B, still following, leaves it alone.
    c.apply(&policy("during-handover"));
    let unwritten = status_writers(&c, "during-handover");
    let still_following = b.leader();
    // B cannot take a Lease it saw renewed within LEASE_DURATION; the
    // holder renews every RENEW_PERIOD, so for LEASE_DURATION -
    // RENEW_PERIOD after the kill B must still follow.
    if killed.elapsed() < secs(LEASE_DURATION - RENEW_PERIOD) {
        assert_eq!(still_following, Ok(0.0), "B took the Lease too soon");
        assert!(
            unwritten.is_empty(),
            "written during the handover: {unwritten:?}"
        );
    } else {
        eprintln!(
            "the handover gap was not observed: the checks took {:?}",
            killed.elapsed()
        );
    }
    c.wait_until(
        "replica-b holds the Lease and says so",
        secs(30),
        || match (holder(&c), b.leader()) {
            (h, Ok(1.0)) if h == "replica-b" => Ok(()),
            (h, leader) => Err(format!(
                "holder {h:?}, ward_cp_leader {leader:?}{}",
                b.tail()
            )),
        },
    );
    let takeover = killed.elapsed();
    let taken = lease(&c).unwrap();
    assert_eq!(taken.transitions, 1);
    // Waited a whole lease duration after A's last renewal (it cannot have
    // seen that renewal before it was written), and not much more. The
    // times are one host's clock, in microseconds.
    let waited = seconds(last_renewal.renewed, taken.acquired);
    assert!(
        waited >= LEASE_DURATION as f64 - 1e-6,
        "B took the Lease {waited:.3} s after A's last renewal, under the lease duration"
    );
    assert!(
        waited <= (LEASE_DURATION + RENEW_PERIOD + 3) as f64,
        "B took the Lease {waited:.3} s after A's last renewal"
    );
    // The new writer writes what was left unwritten during the handover.
    c.wait_until(
        "policy during-handover Accepted=True",
        secs(30),
        || match accepted(&c, "during-handover").as_str() {
            "True" => Ok(()),
            other => Err(format!("Accepted={other:?}{}", b.tail())),
        },
    );
    assert_eq!(status_writers(&c, "during-handover"), writer("replica-b"));
    eprintln!(
        "A killed: B took the Lease {waited:.2} s after A's last renewal ({:.2} s after the kill)",
        takeover.as_secs_f64()
    );

    // ---- A comes back (following); B shuts down gracefully and hands
    // the Lease over at once
    let mut a2 = Replica::start(&c, "replica-a", 2, &data_a, &kubeconfig);
    c.wait_until("replica-a (again) /ready and following", secs(60), || {
        a2.ready().map_err(|e| e + &a2.tail())?;
        match a2.log().contains("following") {
            true => Ok(()),
            false => Err(format!("no 'following' line yet{}", a2.tail())),
        }
    });
    assert_eq!(a2.leader(), Ok(0.0));
    let b_renewed = lease(&c).unwrap();
    assert_eq!(b_renewed.holder, "replica-b");
    b.terminate();
    c.wait_until("replica-b exits after SIGTERM", secs(15), || {
        match b.exited() {
            Some(status) if status.success() => Ok(()),
            Some(status) => Err(format!("exited {status}{}", b.tail())),
            None => Err(format!("still running{}", b.tail())),
        }
    });
    assert!(b.log().contains("released the Lease"), "{}", b.tail());
    let after_release = holder(&c);
    assert!(
        after_release.is_empty() || after_release == "replica-a",
        "B exited, the Lease says {after_release:?}"
    );
    c.wait_until("replica-a holds the Lease again", secs(30), || {
        match (holder(&c), a2.leader()) {
            (h, Ok(1.0)) if h == "replica-a" => Ok(()),
            (h, leader) => Err(format!(
                "holder {h:?}, ward_cp_leader {leader:?}{}",
                a2.tail()
            )),
        }
    });
    let handed = lease(&c).unwrap();
    assert_eq!(handed.transitions, 2);
    // Sooner than an expiry allows: at least LEASE_DURATION after B's
    // last renewal.
    let waited = seconds(b_renewed.renewed, handed.acquired);
    assert!(
        waited < LEASE_DURATION as f64,
        "A took the Lease {waited:.3} s after B's last renewal: it waited for expiry, not for the release"
    );
    c.apply(&policy("after-release"));
    c.wait_until(
        "policy after-release Accepted=True",
        secs(30),
        || match accepted(&c, "after-release").as_str() {
            "True" => Ok(()),
            other => Err(format!("Accepted={other:?}{}", a2.tail())),
        },
    );
    assert_eq!(status_writers(&c, "after-release"), writer("replica-a"));
    eprintln!("B released: A took the Lease {waited:.2} s after B's last renewal");

    // ---- RBAC sufficed throughout
    for log in [a.log(), b.log(), a2.log()] {
        assert!(
            !log.to_lowercase().contains("forbidden"),
            "a replica met an RBAC denial:\n{log}"
        );
    }
    eprintln!(
        "test: cluster startup {:.1} s, total {:.1} s",
        c.startup.as_secs_f64(),
        began.elapsed().as_secs_f64()
    );
}
