//! A node agent that plays the kubelet for one node of the test cluster
//! (`cluster.rs`), running pods in network namespaces (`netns.rs`).
//!
//! Include with `#[path = "support/node_agent.rs"] mod node_agent;` after
//! `cluster` and `netns`.
//!
//! [`NodeAgent::start`] registers a Node (Ready, addresses, capacity) and
//! renews its Lease, then polls the pods bound to it (`kubectl get pods
//! --field-selector spec.nodeName=<node>`, every 250 ms) — kube-scheduler
//! binds them. Each pod runs in a thread of its own:
//!
//! * a network namespace on the network's bridge, address 198.18.1.N/16;
//! * volumes in the agent's directory: projected service-account tokens
//!   from the TokenRequest API with the spec's audience and expiry, bound
//!   to the pod (`kubectl create token --bound-object-kind Pod
//!   --bound-object-name --bound-object-uid`), ConfigMaps, downward API
//!   (labels/annotations in the `key="value"` format, name, namespace,
//!   uid), emptyDir; each container sees them at its `mountPath` through
//!   its own mount namespace (`ip netns exec` makes one): a tmpfs over
//!   `/run` (`/var/run`), then bind mounts. Mount paths elsewhere are
//!   refused (the pod fails), so nothing is ever created on the host;
//! * init containers in order, each to completion, except native sidecars
//!   (`restartPolicy: Always`), which start and must pass their
//!   `startupProbe` before the next one; then the containers;
//! * a container is `command`/`args` (`$(VAR)` expanded) or the image's
//!   entrypoint from the [`Images`] map, with its `env` (values, downward
//!   API `fieldRef`s, ConfigMap keys), as `runAsUser`/`runAsGroup` (pod or
//!   container security context; `setpriv`), with `PATH` starting with the
//!   image's directory of symlinks to the project's binaries (so
//!   `ward-proxy` is target/debug/ward-proxy, exec probes included);
//! * readiness, liveness and startup probes (exec in the container's
//!   context; httpGet and tcpSocket from the node's namespace, as the
//!   kubelet does) at their periods; a failed liveness probe or an exit
//!   restarts the container (`restartCount`);
//! * the pod's status (podIP, phase, conditions, init and container
//!   states, readiness) patched whenever it changes.
//!
//! A pod with a `deletionTimestamp` (or gone) is stopped: TERM, then KILL
//! after 5 s, its namespace removed, and the API object deleted with grace
//! period 0 as the kubelet does. Dropping the agent stops every pod the same
//! way and deletes the Node; also on a panic.
//!
//! Not a kubelet: no images, cgroups, resource limits, capabilities (root
//! stays root), seccomp, read-only root filesystems, projected-token
//! refresh, Secrets, service links or restart back-off; the agent writes
//! status with the admin credentials instead of the Node authorizer's
//! `system:node:<name>` identity.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use crate::cluster::{Cluster, text};
use crate::netns::{Network, Pod};

/// The node's address: the bridge's, where kube-proxy and the control
/// plane run.
pub const NODE_IP: &str = "198.18.0.1";

/// What an image is on this node: a directory of executables put first on
/// `PATH`, and the entrypoint used when the container has no `command`.
#[derive(Clone, Default)]
pub struct Images(Vec<(String, PathBuf, Vec<String>)>);

impl Images {
    /// Images whose reference starts with `prefix` get `executables`
    /// (name → path, symlinked into their directory) and `entrypoint`.
    pub fn add(
        mut self,
        dir: &Path,
        prefix: &str,
        executables: &[(&str, &str)],
        entrypoint: &[&str],
    ) -> Self {
        let bin = dir.join(format!("image-{}", self.0.len()));
        std::fs::create_dir_all(&bin).unwrap();
        for (name, path) in executables {
            std::os::unix::fs::symlink(path, bin.join(name)).unwrap();
        }
        self.0.push((
            prefix.to_owned(),
            bin,
            entrypoint.iter().map(|s| s.to_string()).collect(),
        ));
        self
    }

    fn find(&self, image: &str) -> Option<&(String, PathBuf, Vec<String>)> {
        self.0
            .iter()
            .find(|(prefix, _, _)| image.starts_with(prefix))
    }
}

/// `kubectl` with the cluster's admin credentials, usable from threads.
#[derive(Clone)]
struct Kubectl {
    exe: PathBuf,
    kubeconfig: PathBuf,
    netns: Option<String>,
}

impl Kubectl {
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.exe);
                c
            }
            None => Command::new(&self.exe),
        };
        let mut child = cmd
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .env_remove("KUBECONFIG")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("kubectl: {e}"))?;
        if let Some(input) = stdin {
            use std::io::Write;
            let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        match text(&out) {
            (true, out, _) => Ok(out),
            (false, out, err) => Err(format!("kubectl {}: {err}{out}", args.join(" "))),
        }
    }

    fn json(&self, args: &[&str]) -> Result<Value, String> {
        let out = self.run(args, None)?;
        serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))
    }
}

fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn now_micro() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.%6NZ"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

struct Shared {
    kubectl: Kubectl,
    network: Arc<Network>,
    images: Images,
    node: String,
    dir: PathBuf,
    next_ip: AtomicUsize,
    stop: AtomicBool,
    /// Lines the agent logged (also printed to stderr).
    events: Mutex<Vec<String>>,
    /// Running pods: "namespace/name" → (network namespace, address).
    running: Mutex<HashMap<String, (String, String)>>,
}

impl Shared {
    fn log(&self, line: String) {
        eprintln!("node-agent: {line}");
        self.events.lock().unwrap().push(line);
    }
}

/// The running agent; dropping it stops its pods and deletes the Node.
pub struct NodeAgent {
    shared: Arc<Shared>,
    main: Option<JoinHandle<()>>,
}

impl NodeAgent {
    /// Registers node `node` and starts running the pods bound to it.
    /// `dir` must be traversable by every pod's user (mode 0755).
    pub fn start(
        c: &Cluster,
        network: Arc<Network>,
        images: Images,
        node: &str,
        dir: &Path,
    ) -> NodeAgent {
        let kubectl = Kubectl {
            exe: c.bin.join("kubectl"),
            kubeconfig: c.kubeconfig.clone(),
            netns: c.netns.clone(),
        };
        let node_yaml = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": node, "labels": {
                "kubernetes.io/hostname": node, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64"}},
        });
        kubectl
            .run(&["apply", "-f", "-"], Some(&node_yaml.to_string()))
            .unwrap_or_else(|e| c.fail(&e));
        let shared = Arc::new(Shared {
            kubectl,
            network,
            images,
            node: node.to_owned(),
            dir: dir.to_owned(),
            next_ip: AtomicUsize::new(10),
            stop: AtomicBool::new(false),
            events: Mutex::new(Vec::new()),
            running: Mutex::new(HashMap::new()),
        });
        shared.heartbeat().unwrap_or_else(|e| c.fail(&e));
        let s = shared.clone();
        let main = std::thread::spawn(move || s.run());
        NodeAgent {
            shared,
            main: Some(main),
        }
    }

    /// The network namespace and address of running pod `ns/name`.
    pub fn pod(&self, ns: &str, name: &str) -> Option<(String, String)> {
        self.shared
            .running
            .lock()
            .unwrap()
            .get(&format!("{ns}/{name}"))
            .cloned()
    }

    /// What the agent logged so far.
    pub fn events(&self) -> Vec<String> {
        self.shared.events.lock().unwrap().clone()
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(main) = self.main.take() {
            let _ = main.join();
        }
        let _ = self
            .shared
            .kubectl
            .run(&["delete", "node", &self.shared.node, "--wait=false"], None);
    }
}

impl Shared {
    /// Node status (Ready) and Lease renewal.
    fn heartbeat(&self) -> Result<(), String> {
        let now = now_rfc3339();
        let cond = |t: &str, s: &str, reason: &str| {
            json!({"type": t, "status": s, "reason": reason, "message": "ward test node agent",
                   "lastHeartbeatTime": now, "lastTransitionTime": now})
        };
        let status = json!({"status": {
            "conditions": [
                cond("Ready", "True", "KubeletReady"),
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID"),
            ],
            "addresses": [{"type": "InternalIP", "address": NODE_IP},
                          {"type": "Hostname", "address": self.node}],
            "capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"},
            "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"},
            "nodeInfo": {"kubeletVersion": "v1.34.4-ward-node-agent", "kubeProxyVersion": "v1.34.4",
                         "operatingSystem": "linux", "architecture": "amd64",
                         "containerRuntimeVersion": "ward-node-agent://0", "osImage": "netns",
                         "kernelVersion": "", "machineID": "", "systemUUID": "", "bootID": ""},
        }});
        self.kubectl.run(
            &[
                "patch",
                "node",
                &self.node,
                "--subresource=status",
                "--type=merge",
                "-p",
                &status.to_string(),
            ],
            None,
        )?;
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": self.node, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": self.node, "leaseDurationSeconds": 40,
                     "renewTime": now_micro()},
        });
        self.kubectl
            .run(&["apply", "-f", "-"], Some(&lease.to_string()))?;
        Ok(())
    }

    fn run(self: Arc<Self>) {
        let mut pods: HashMap<String, (Arc<AtomicBool>, JoinHandle<()>)> = HashMap::new();
        let mut last_heartbeat = Instant::now();
        while !self.stop.load(Ordering::SeqCst) {
            if last_heartbeat.elapsed() > Duration::from_secs(10) {
                if let Err(e) = self.heartbeat() {
                    self.log(format!("heartbeat: {e}"));
                }
                last_heartbeat = Instant::now();
            }
            let list = self.kubectl.json(&[
                "get",
                "pods",
                "-A",
                "-o",
                "json",
                "--field-selector",
                &format!("spec.nodeName={}", self.node),
            ]);
            let items = match list {
                Ok(list) => list["items"].as_array().cloned().unwrap_or_default(),
                Err(e) => {
                    self.log(format!("list pods: {e}"));
                    std::thread::sleep(Duration::from_millis(250));
                    continue;
                }
            };
            let mut seen = Vec::new();
            for pod in items {
                let uid = pod["metadata"]["uid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                seen.push(uid.clone());
                let deleting = !pod["metadata"]["deletionTimestamp"].is_null();
                match pods.get(&uid) {
                    None if !deleting => {
                        let stop = Arc::new(AtomicBool::new(false));
                        let s = self.clone();
                        let st = stop.clone();
                        let handle = std::thread::spawn(move || s.run_pod(pod, st));
                        pods.insert(uid, (stop, handle));
                    }
                    None => {
                        // Never ran here: finalize the deletion.
                        self.finalize(&pod);
                    }
                    Some((stop, _)) if deleting => stop.store(true, Ordering::SeqCst),
                    Some(_) => {}
                }
            }
            for (uid, (stop, _)) in &pods {
                if !seen.contains(uid) {
                    stop.store(true, Ordering::SeqCst);
                }
            }
            // Reap finished pod threads.
            let done: Vec<String> = pods
                .iter()
                .filter(|(_, (_, h))| h.is_finished())
                .map(|(u, _)| u.clone())
                .collect();
            for uid in done {
                if let Some((_, h)) = pods.remove(&uid) {
                    let _ = h.join();
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        for (stop, _) in pods.values() {
            stop.store(true, Ordering::SeqCst);
        }
        for (_, (_, handle)) in pods {
            let _ = handle.join();
        }
    }

    fn finalize(&self, pod: &Value) {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let _ = self.kubectl.run(
            &[
                "-n",
                ns,
                "delete",
                "pod",
                name,
                "--grace-period=0",
                "--force",
                "--wait=false",
            ],
            None,
        );
    }

    fn run_pod(self: Arc<Self>, pod: Value, stop: Arc<AtomicBool>) {
        let ns = pod["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let name = pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let mut run = match PodRun::new(&self, &pod) {
            Ok(run) => run,
            Err(e) => {
                self.log(format!("{ns}/{name}: cannot start: {e}"));
                let _ = self.kubectl.run(
                    &[
                        "-n",
                        &ns,
                        "patch",
                        "pod",
                        &name,
                        "--subresource=status",
                        "--type=merge",
                        "-p",
                        &json!({"status": {"phase": "Failed", "reason": "NodeAgentError", "message": e}})
                            .to_string(),
                    ],
                    None,
                );
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(100));
                }
                return;
            }
        };
        self.log(format!(
            "{ns}/{name}: sandbox {} at {}",
            run.netpod.netns(),
            run.ip
        ));
        self.running.lock().unwrap().insert(
            format!("{ns}/{name}"),
            (run.netpod.netns().to_owned(), run.ip.clone()),
        );
        let outcome = run.start_and_supervise(&self, &stop);
        if let Err(e) = outcome {
            self.log(format!("{ns}/{name}: {e}"));
            while !stop.load(Ordering::SeqCst) {
                run.patch_status(&self);
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        self.running.lock().unwrap().remove(&format!("{ns}/{name}"));
        run.stop_all();
        drop(run);
        self.log(format!("{ns}/{name}: stopped"));
        // The kubelet's last word: delete with grace period 0 (if the pod
        // was being deleted; at agent shutdown the pod stays).
        if !self.stop.load(Ordering::SeqCst) {
            self.finalize(&pod);
        }
    }
}

/// A probe from the spec.
#[derive(Clone)]
struct Probe {
    spec: Value,
    period: Duration,
    timeout: Duration,
    failure_threshold: u32,
    next: Instant,
    successes: u32,
    failures: u32,
}

impl Probe {
    fn new(spec: &Value) -> Option<Probe> {
        if !spec.is_object() {
            return None;
        }
        let n = |k: &str, d: u64| spec[k].as_u64().unwrap_or(d);
        Some(Probe {
            spec: spec.clone(),
            period: Duration::from_secs(n("periodSeconds", 10)),
            timeout: Duration::from_secs(n("timeoutSeconds", 1)),
            failure_threshold: n("failureThreshold", 3) as u32,
            next: Instant::now() + Duration::from_secs(n("initialDelaySeconds", 0)),
            successes: 0,
            failures: 0,
        })
    }
}

struct ContainerRun {
    name: String,
    spec: Value,
    init: bool,
    sidecar: bool,
    child: Option<Child>,
    started_at: String,
    restarts: u32,
    exit: Option<(i32, String)>,
    ready: bool,
    started: bool,
    readiness: Option<Probe>,
    liveness: Option<Probe>,
    startup: Option<Probe>,
    log: PathBuf,
}

struct PodRun {
    ns: String,
    name: String,
    uid: String,
    pod: Value,
    ip: String,
    netpod: Pod,
    dir: PathBuf,
    volumes: HashMap<String, PathBuf>,
    containers: Vec<ContainerRun>,
    start_time: String,
    last_status: String,
    phase: &'static str,
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
}

impl PodRun {
    fn new(shared: &Shared, pod: &Value) -> Result<PodRun, String> {
        let ns = pod["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let name = pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let n = shared.next_ip.fetch_add(1, Ordering::SeqCst);
        assert!(n < 250, "the node agent ran out of addresses");
        let ip = format!("198.18.1.{n}");
        let netpod = shared
            .network
            .add_pod(&format!("p{n}"), &format!("{ip}/16"));
        let dir = shared.dir.join(format!("pod-{n}"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        chmod(&dir, 0o755);
        let mut run = PodRun {
            ns,
            name,
            uid,
            pod: pod.clone(),
            ip,
            netpod,
            dir,
            volumes: HashMap::new(),
            containers: Vec::new(),
            start_time: now_rfc3339(),
            last_status: String::new(),
            phase: "Pending",
        };
        run.patch_status(shared);
        run.make_volumes(shared)?;
        for (key, init) in [("initContainers", true), ("containers", false)] {
            for spec in run.pod["spec"][key].as_array().cloned().unwrap_or_default() {
                let cname = spec["name"].as_str().unwrap_or_default().to_owned();
                let sidecar = init && spec["restartPolicy"] == "Always";
                let log = run.dir.join(format!("{cname}.log"));
                run.containers.push(ContainerRun {
                    name: cname,
                    readiness: Probe::new(&spec["readinessProbe"]),
                    liveness: Probe::new(&spec["livenessProbe"]),
                    startup: Probe::new(&spec["startupProbe"]),
                    spec,
                    init,
                    sidecar,
                    child: None,
                    started_at: String::new(),
                    restarts: 0,
                    exit: None,
                    ready: false,
                    started: false,
                    log,
                });
            }
        }
        Ok(run)
    }

    fn field(&self, path: &str) -> String {
        let m = &self.pod["metadata"];
        let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        match path {
            "metadata.name" => self.name.clone(),
            "metadata.namespace" => self.ns.clone(),
            "metadata.uid" => self.uid.clone(),
            "spec.serviceAccountName" => s(&self.pod["spec"]["serviceAccountName"]),
            "spec.nodeName" => s(&self.pod["spec"]["nodeName"]),
            "status.podIP" => self.ip.clone(),
            "status.hostIP" => NODE_IP.to_owned(),
            "metadata.labels" | "metadata.annotations" => {
                let key = path.trim_start_matches("metadata.");
                let map = m[key].as_object().cloned().unwrap_or_default();
                map.iter()
                    .map(|(k, v)| {
                        format!(
                            "{k}={}\n",
                            serde_json::to_string(v.as_str().unwrap_or("")).unwrap()
                        )
                    })
                    .collect()
            }
            p if p.starts_with("metadata.labels['") || p.starts_with("metadata.annotations['") => {
                let (kind, rest) = p.trim_start_matches("metadata.").split_once("['").unwrap();
                s(&m[kind][rest.trim_end_matches("']")])
            }
            _ => String::new(),
        }
    }

    fn make_volumes(&mut self, shared: &Shared) -> Result<(), String> {
        let sa = self.pod["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or("default")
            .to_owned();
        for volume in self.pod["spec"]["volumes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let vname = volume["name"].as_str().unwrap_or_default().to_owned();
            let vdir = self.dir.join(format!("volume-{vname}"));
            std::fs::create_dir_all(&vdir).map_err(|e| e.to_string())?;
            chmod(&vdir, 0o755);
            let write = |path: &str, contents: &str| -> Result<(), String> {
                let file = vdir.join(path);
                if let Some(parent) = file.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
                    chmod(parent, 0o755);
                }
                std::fs::write(&file, contents).map_err(|e| e.to_string())?;
                chmod(&file, 0o644);
                Ok(())
            };
            let config_map =
                |cm_name: &str, items: &Value| -> Result<Vec<(String, String)>, String> {
                    let cm = shared.kubectl.json(&[
                        "-n",
                        &self.ns,
                        "get",
                        "configmap",
                        cm_name,
                        "-o",
                        "json",
                    ])?;
                    let data = cm["data"].as_object().cloned().unwrap_or_default();
                    Ok(match items.as_array() {
                        Some(items) => items
                            .iter()
                            .map(|i| {
                                let key = i["key"].as_str().unwrap_or_default();
                                (
                                    i["path"].as_str().unwrap_or(key).to_owned(),
                                    data.get(key)
                                        .and_then(Value::as_str)
                                        .unwrap_or_default()
                                        .to_owned(),
                                )
                            })
                            .collect(),
                        None => data
                            .iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect(),
                    })
                };
            let downward = |items: &Value| -> Vec<(String, String)> {
                items
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|i| {
                        (
                            i["path"].as_str().unwrap_or_default().to_owned(),
                            self.field(i["fieldRef"]["fieldPath"].as_str().unwrap_or_default()),
                        )
                    })
                    .collect()
            };
            if volume["emptyDir"].is_object() {
                chmod(&vdir, 0o777);
            } else if let Some(sources) = volume["projected"]["sources"].as_array() {
                for source in sources {
                    if let Some(t) = source.get("serviceAccountToken") {
                        let mut args = vec![
                            "-n".to_owned(),
                            self.ns.clone(),
                            "create".to_owned(),
                            "token".to_owned(),
                            sa.clone(),
                            format!(
                                "--duration={}s",
                                t["expirationSeconds"].as_u64().unwrap_or(3600)
                            ),
                            "--bound-object-kind=Pod".to_owned(),
                            format!("--bound-object-name={}", self.name),
                            format!("--bound-object-uid={}", self.uid),
                        ];
                        if let Some(aud) = t["audience"].as_str() {
                            args.push(format!("--audience={aud}"));
                        }
                        let args: Vec<&str> = args.iter().map(String::as_str).collect();
                        let token = shared.kubectl.run(&args, None)?;
                        write(t["path"].as_str().unwrap_or("token"), token.trim())?;
                    } else if let Some(cm) = source.get("configMap") {
                        for (path, value) in
                            config_map(cm["name"].as_str().unwrap_or_default(), &cm["items"])?
                        {
                            write(&path, &value)?;
                        }
                    } else if let Some(d) = source.get("downwardAPI") {
                        for (path, value) in downward(&d["items"]) {
                            write(&path, &value)?;
                        }
                    } else {
                        return Err(format!(
                            "volume {vname}: projected source {source} not supported"
                        ));
                    }
                }
            } else if volume["configMap"].is_object() {
                let cm = &volume["configMap"];
                for (path, value) in
                    config_map(cm["name"].as_str().unwrap_or_default(), &cm["items"])?
                {
                    write(&path, &value)?;
                }
            } else if volume["downwardAPI"].is_object() {
                for (path, value) in downward(&volume["downwardAPI"]["items"]) {
                    write(&path, &value)?;
                }
            } else {
                return Err(format!("volume {vname}: kind not supported: {volume}"));
            }
            self.volumes.insert(vname, vdir);
        }
        Ok(())
    }

    fn env(
        &self,
        shared: &Shared,
        spec: &Value,
        path_dir: Option<&Path>,
    ) -> Result<Vec<(String, String)>, String> {
        let mut env = vec![
            (
                "PATH".to_owned(),
                format!(
                    "{}/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    path_dir
                        .map(|d| format!("{}:", d.display()))
                        .unwrap_or_default()
                ),
            ),
            ("HOSTNAME".to_owned(), self.name.clone()),
        ];
        for e in spec["env"].as_array().cloned().unwrap_or_default() {
            let name = e["name"].as_str().unwrap_or_default().to_owned();
            let value = if let Some(v) = e["value"].as_str() {
                expand(v, &env)
            } else if let Some(f) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                self.field(f)
            } else if let Some(r) = e["valueFrom"]["configMapKeyRef"].as_object() {
                let cm = shared.kubectl.json(&[
                    "-n",
                    &self.ns,
                    "get",
                    "configmap",
                    r["name"].as_str().unwrap_or_default(),
                    "-o",
                    "json",
                ])?;
                cm["data"][r["key"].as_str().unwrap_or_default()]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            } else if e["valueFrom"].is_object() {
                return Err(format!("env {name}: {} not supported", e["valueFrom"]));
            } else {
                String::new()
            };
            env.push((name, value));
        }
        Ok(env)
    }

    /// The command running `argv` in container `spec`'s context: the
    /// pod's network namespace, its mounts, its user.
    fn container_command(
        &self,
        shared: &Shared,
        spec: &Value,
        argv: Option<Vec<String>>,
    ) -> Result<Command, String> {
        let image = spec["image"].as_str().unwrap_or_default();
        let found = shared.images.find(image);
        let env = self.env(shared, spec, found.map(|(_, d, _)| d.as_path()))?;
        let argv = match argv {
            Some(argv) => argv,
            None => {
                let strs = |v: &Value| -> Option<Vec<String>> {
                    v.as_array().map(|a| {
                        a.iter()
                            .map(|s| expand(s.as_str().unwrap_or_default(), &env))
                            .collect()
                    })
                };
                let entry = found.map(|(_, _, e)| e.clone()).unwrap_or_default();
                match (strs(&spec["command"]), strs(&spec["args"])) {
                    (Some(c), Some(a)) => c.into_iter().chain(a).collect(),
                    (Some(c), None) => c,
                    (None, Some(a)) => entry.into_iter().take(1).chain(a).collect(),
                    (None, None) => entry,
                }
            }
        };
        if argv.is_empty() {
            return Err(format!(
                "image {image}: no command and no entrypoint in the node agent's image map"
            ));
        }
        let ctx = |k: &str| {
            spec["securityContext"][k]
                .as_u64()
                .or_else(|| self.pod["spec"]["securityContext"][k].as_u64())
        };
        let uid = ctx("runAsUser").unwrap_or(0);
        let gid = ctx("runAsGroup").unwrap_or(0);
        let mut script = String::from("set -e\n");
        let mounts = spec["volumeMounts"].as_array().cloned().unwrap_or_default();
        if !mounts.is_empty() {
            script += "mount -t tmpfs -o mode=0755 ward-pod /run\n";
        }
        for m in &mounts {
            let path = m["mountPath"].as_str().unwrap_or_default();
            let rel = path
                .strip_prefix("/var/run/")
                .or_else(|| path.strip_prefix("/run/"))
                .ok_or_else(|| format!("mountPath {path}: only /run and /var/run are supported"))?;
            let src = self
                .volumes
                .get(m["name"].as_str().unwrap_or_default())
                .ok_or_else(|| format!("volumeMount {m}: no such volume"))?;
            let target = format!("/run/{rel}");
            script += &format!(
                "mkdir -p '{target}'\nmount --bind '{}' '{target}'\n",
                src.display()
            );
            if m["readOnly"] == true {
                script += &format!("mount -o remount,bind,ro '{target}'\n");
            }
        }
        script += &format!("exec setpriv --reuid={uid} --regid={gid} --clear-groups -- \"$@\"\n");
        let mut cmd = self.netpod.command(&["sh", "-c", &script, "sh"]);
        cmd.args(&argv);
        cmd.env_clear();
        for (k, v) in env {
            cmd.env(k, v);
        }
        // setpriv and sh need a PATH before the container's own is set.
        Ok(cmd)
    }

    fn start_container(&mut self, shared: &Shared, i: usize) -> Result<(), String> {
        let spec = self.containers[i].spec.clone();
        let mut cmd = self.container_command(shared, &spec, None)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.containers[i].log)
            .map_err(|e| e.to_string())?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start {}: {e}", self.containers[i].name))?;
        let c = &mut self.containers[i];
        c.child = Some(child);
        c.started_at = now_rfc3339();
        c.exit = None;
        c.ready = false;
        c.started = c.startup.is_none();
        for p in [&mut c.readiness, &mut c.liveness, &mut c.startup]
            .into_iter()
            .flatten()
        {
            let delay = Duration::from_secs(p.spec["initialDelaySeconds"].as_u64().unwrap_or(0));
            p.next = Instant::now() + delay;
            p.successes = 0;
            p.failures = 0;
        }
        shared.log(format!("{}/{}: started {}", self.ns, self.name, c.name));
        Ok(())
    }

    /// Runs a probe once: Ok(true) on success.
    fn probe(&self, shared: &Shared, spec: &Value, probe: &Probe) -> bool {
        let p = &probe.spec;
        let port_of = |port: &Value| -> Option<u64> {
            port.as_u64().or_else(|| {
                let name = port.as_str()?;
                spec["ports"]
                    .as_array()?
                    .iter()
                    .find(|p| p["name"] == name)?["containerPort"]
                    .as_u64()
            })
        };
        let timeout = probe.timeout.as_secs().max(1).to_string();
        let mut cmd = if let Some(exec) = p["exec"]["command"].as_array() {
            let argv = exec
                .iter()
                .map(|s| s.as_str().unwrap_or_default().to_owned())
                .collect();
            match self.container_command(shared, spec, Some(argv)) {
                Ok(mut c) => {
                    c.stdout(Stdio::null()).stderr(Stdio::null());
                    let mut t = Command::new("timeout");
                    t.arg(&timeout).arg(c.get_program()).args(c.get_args());
                    t.env_clear()
                        .envs(c.get_envs().filter_map(|(k, v)| Some((k, v?))));
                    t
                }
                Err(_) => return false,
            }
        } else if p["httpGet"].is_object() {
            let h = &p["httpGet"];
            let Some(port) = port_of(&h["port"]) else {
                return false;
            };
            let url = format!(
                "{}://{}:{port}{}",
                h["scheme"].as_str().unwrap_or("HTTP").to_lowercase(),
                h["host"].as_str().unwrap_or(&self.ip),
                h["path"].as_str().unwrap_or("/")
            );
            let mut c = shared.network.command(&[
                "curl",
                "-s",
                "-k",
                "-o",
                "/dev/null",
                "--max-time",
                &timeout,
                "-w",
                "%{http_code}",
                &url,
            ]);
            c.stderr(Stdio::null());
            return c
                .output()
                .ok()
                .and_then(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .trim()
                        .parse::<u16>()
                        .ok()
                })
                .is_some_and(|code| (200..400).contains(&code));
        } else if p["tcpSocket"].is_object() {
            let Some(port) = port_of(&p["tcpSocket"]["port"]) else {
                return false;
            };
            shared.network.command(&[
                "timeout",
                &timeout,
                "bash",
                "-c",
                &format!("exec 3<>/dev/tcp/{}/{port}", self.ip),
            ])
        } else {
            return false;
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd.status().is_ok_and(|s| s.success())
    }

    /// Runs the probes that are due; Ok(false) when a liveness probe
    /// failed past its threshold (restart).
    fn run_probes(&mut self, shared: &Shared, i: usize) -> bool {
        let now = Instant::now();
        let spec = self.containers[i].spec.clone();
        let mut alive = true;
        // startup first; readiness and liveness only once started.
        for kind in 0..3 {
            let probe = {
                let c = &self.containers[i];
                match kind {
                    0 if !c.started => c.startup.clone(),
                    1 if c.started => c.readiness.clone(),
                    2 if c.started => c.liveness.clone(),
                    _ => None,
                }
            };
            let Some(mut probe) = probe else { continue };
            if probe.next > now {
                continue;
            }
            let ok = self.probe(shared, &spec, &probe);
            probe.next = Instant::now() + probe.period;
            if ok {
                probe.successes += 1;
                probe.failures = 0;
            } else {
                probe.failures += 1;
                probe.successes = 0;
            }
            let c = &mut self.containers[i];
            match kind {
                0 => {
                    if ok {
                        c.started = true;
                    }
                    c.startup = Some(probe);
                }
                1 => {
                    if ok {
                        c.ready = true;
                    } else if probe.failures >= probe.failure_threshold || !c.ready {
                        c.ready = false;
                    }
                    c.readiness = Some(probe);
                }
                _ => {
                    if !ok && probe.failures >= probe.failure_threshold {
                        shared.log(format!(
                            "{}/{}: {} failed its liveness probe",
                            self.ns, self.name, c.name
                        ));
                        alive = false;
                    }
                    c.liveness = Some(probe);
                }
            }
        }
        let c = &mut self.containers[i];
        if c.readiness.is_none() && c.started && c.child.is_some() {
            c.ready = true;
        }
        alive
    }

    fn start_and_supervise(&mut self, shared: &Shared, stop: &AtomicBool) -> Result<(), String> {
        // Init containers in order.
        for i in 0..self.containers.len() {
            if !self.containers[i].init {
                continue;
            }
            self.start_container(shared, i)?;
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                if stop.load(Ordering::SeqCst) {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "init container {} did not finish",
                        self.containers[i].name
                    ));
                }
                if self.containers[i].sidecar {
                    if self.reap(i).is_some() {
                        return Err(format!(
                            "sidecar {} exited during start",
                            self.containers[i].name
                        ));
                    }
                    self.run_probes(shared, i);
                    if self.containers[i].started {
                        break;
                    }
                } else if let Some(code) = self.reap(i) {
                    if code != 0 {
                        return Err(format!(
                            "init container {} exited {code}: {}",
                            self.containers[i].name,
                            std::fs::read_to_string(&self.containers[i].log).unwrap_or_default()
                        ));
                    }
                    break;
                }
                self.patch_status(shared);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        for i in 0..self.containers.len() {
            if !self.containers[i].init {
                self.start_container(shared, i)?;
            }
        }
        self.phase = "Running";
        while !stop.load(Ordering::SeqCst) {
            for i in 0..self.containers.len() {
                let c = &self.containers[i];
                if c.init && !c.sidecar {
                    continue;
                }
                let exited = self.reap(i).is_some();
                let alive = !exited && self.run_probes(shared, i);
                if !alive {
                    if let Some(mut child) = self.containers[i].child.take() {
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                    self.containers[i].restarts += 1;
                    shared.log(format!(
                        "{}/{}: restarting {} ({})",
                        self.ns,
                        self.name,
                        self.containers[i].name,
                        if exited { "exited" } else { "liveness" }
                    ));
                    self.start_container(shared, i)?;
                }
            }
            self.patch_status(shared);
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// The exit code when container `i` exited (recorded in its status).
    fn reap(&mut self, i: usize) -> Option<i32> {
        let c = &mut self.containers[i];
        if let Some((code, _)) = &c.exit {
            return Some(*code);
        }
        let status = c.child.as_mut()?.try_wait().ok()??;
        let code = status.code().unwrap_or(128);
        c.exit = Some((code, now_rfc3339()));
        c.child = None;
        c.ready = false;
        Some(code)
    }

    fn container_status(&self, c: &ContainerRun) -> Value {
        let state = match (&c.child, &c.exit) {
            (Some(_), _) => json!({"running": {"startedAt": c.started_at}}),
            (None, Some((code, at))) => json!({"terminated": {
                "exitCode": code, "reason": if *code == 0 { "Completed" } else { "Error" },
                "startedAt": c.started_at, "finishedAt": at}}),
            (None, None) => json!({"waiting": {"reason": "PodInitializing"}}),
        };
        json!({
            "name": c.name, "image": c.spec["image"], "imageID": "",
            "containerID": format!("ward-node-agent://{}/{}", self.uid, c.name),
            "ready": c.ready, "started": c.child.is_some() && c.started,
            "restartCount": c.restarts, "state": state,
        })
    }

    fn patch_status(&mut self, shared: &Shared) {
        let ready_of = |init: bool| -> Vec<Value> {
            self.containers
                .iter()
                .filter(|c| c.init == init)
                .map(|c| self.container_status(c))
                .collect()
        };
        let initialized = self.containers.iter().filter(|c| c.init).all(|c| {
            if c.sidecar {
                c.started && c.child.is_some()
            } else {
                c.exit.as_ref().is_some_and(|(code, _)| *code == 0)
            }
        });
        let ready = self.phase == "Running"
            && self
                .containers
                .iter()
                .filter(|c| !c.init || c.sidecar)
                .all(|c| c.ready);
        let b = |v: bool| if v { "True" } else { "False" };
        let status = json!({"status": {
            "phase": self.phase,
            "podIP": self.ip, "podIPs": [{"ip": self.ip}],
            "hostIP": NODE_IP, "hostIPs": [{"ip": NODE_IP}],
            "startTime": self.start_time,
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": b(initialized)},
                {"type": "ContainersReady", "status": b(ready)},
                {"type": "Ready", "status": b(ready)},
            ],
            "initContainerStatuses": ready_of(true),
            "containerStatuses": ready_of(false),
        }});
        // Only changes (the running state's time is fixed per start).
        let text = status.to_string();
        if text == self.last_status {
            return;
        }
        match shared.kubectl.run(
            &[
                "-n",
                &self.ns,
                "patch",
                "pod",
                &self.name,
                "--subresource=status",
                "--type=merge",
                "-p",
                &text,
            ],
            None,
        ) {
            Ok(_) => self.last_status = text,
            Err(e) => shared.log(format!("{}/{}: status: {e}", self.ns, self.name)),
        }
    }

    /// TERM to every container, KILL after 5 s.
    fn stop_all(&mut self) {
        for c in &self.containers {
            if let Some(child) = &c.child {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for c in &mut self.containers {
            if let Some(child) = c.child.as_mut() {
                while Instant::now() < deadline {
                    if child.try_wait().ok().flatten().is_some() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            c.child = None;
        }
    }

    /// A container's log so far.
    pub fn log_of(&self, container: &str) -> String {
        self.containers
            .iter()
            .find(|c| c.name == container)
            .and_then(|c| std::fs::read_to_string(&c.log).ok())
            .unwrap_or_default()
    }
}

impl Drop for PodRun {
    fn drop(&mut self) {
        self.stop_all();
        // self.netpod removes the namespace.
    }
}

/// Kubernetes `$(VAR)` expansion against the variables defined so far
/// (`$$` escapes; unknown references stay as written).
fn expand(s: &str, env: &[(String, String)]) -> String {
    let vars: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out += &rest[..i];
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) if vars.contains_key(&inner[..end]) => {
                    out += vars[&inner[..end]];
                    rest = &inner[end + 1..];
                }
                _ => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out + rest
}

/// The container logs of every pod the agent ran (for failure messages).
pub fn logs(dir: &Path) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut pods: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    pods.sort();
    for pod in pods {
        let Ok(files) = std::fs::read_dir(&pod) else {
            continue;
        };
        for f in files.flatten() {
            let p = f.path();
            if p.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                out += &format!(
                    "---- {}:\n{}\n",
                    p.display(),
                    lines[lines.len().saturating_sub(15)..].join("\n")
                );
            }
        }
    }
    out
}
