//! The status writer's leader election against a fake API server (recorded
//! API shapes over real HTTPS, `support/apiserver.rs`) whose Lease calls the
//! test can make fail or hang: a follower writes nothing, the Lease is taken
//! only once another holder stops renewing it, and a failed or hung renewal
//! stops the status writes at once (at the renew deadline at the latest),
//! while the control plane keeps serving. What is missed meanwhile is
//! written when the Lease is back. The two-replica, real API server
//! version is `tests/k8s_leader.rs`.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::{Value, json};
use support::apiserver::{
    ApiServer, Recorded, Reply, list, not_found, status_failure, watch_event,
};
use support::control_plane::{admin_get, loopback_config, metric_value};
use tokio::sync::mpsc;
use ward_control_plane::k8s::ApiClient;
use ward_control_plane::k8s::leader::LeaseConfig;
use ward_control_plane::server::ControlPlane;

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/ward-system/leases";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/ward-system/leases/ward-control-plane";
const POLICIES: &str = "/apis/security.ward.io/v1/authorizationpolicies";
const SHOP_POLICIES: &str = "/apis/security.ward.io/v1/namespaces/shop/authorizationpolicies/";

/// How the fake answers Lease calls.
#[derive(Clone, Copy, PartialEq)]
enum LeaseCalls {
    Answer,
    /// 500, as an API server whose etcd times out.
    Fail,
    /// Headers, then nothing.
    Hang,
}

struct Fake {
    resource_version: u64,
    lease: Option<Value>,
    lease_calls: LeaseCalls,
    policies: Vec<Value>,
    policy_watches: Vec<mpsc::Sender<Value>>,
    /// Watches with nothing to say, and hung answers: kept open.
    open: Vec<mpsc::Sender<Value>>,
}

type Shared = Arc<Mutex<Fake>>;

impl Fake {
    fn next_version(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    /// Another replica holds the Lease and has just renewed it (`None`:
    /// released).
    fn held_by(&mut self, holder: Option<&str>) {
        let version = self.next_version();
        self.lease = Some(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "ward-control-plane", "namespace": "ward-system", "resourceVersion": version},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 2, "leaseTransitions": 0,
                "acquireTime": "2026-01-01T00:00:00.000000Z", "renewTime": "2026-01-01T00:00:00.000000Z"}
        }));
    }

    fn add_policy(&mut self, name: &str) {
        let mut policy = json!({
            "apiVersion": "security.ward.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"), "generation": 1},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "action": "ALLOW",
                "rules": [{"from": [{"source": {"namespaces": ["shop"]}}]}]}
        });
        policy["metadata"]["resourceVersion"] = json!(self.next_version());
        self.policies.push(policy.clone());
        self.notify(watch_event("ADDED", policy));
    }

    fn notify(&mut self, event: Value) {
        self.policy_watches
            .retain(|tx| tx.try_send(event.clone()).is_ok());
    }

    fn keep_open(&mut self) -> Reply {
        let (tx, rx) = mpsc::channel(1);
        self.open.push(tx);
        Reply::Stream(rx)
    }

    fn answer(&mut self, req: &Recorded) -> Reply {
        let path = req.path_and_query.split('?').next().unwrap_or_default();
        let watch = req.path_and_query.contains("watch=true");
        if path.starts_with(LEASES) {
            return match self.lease_calls {
                LeaseCalls::Answer => self.lease_call(req, path),
                LeaseCalls::Fail => Reply::Json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    status_failure(500, "InternalError", "etcdserver: request timed out"),
                ),
                LeaseCalls::Hang => self.keep_open(),
            };
        }
        if req.method == Method::PATCH && path.starts_with(SHOP_POLICIES) {
            let name = path.split('/').nth(7).unwrap_or_default();
            let version = self.next_version();
            let Some(policy) = self
                .policies
                .iter_mut()
                .find(|p| p["metadata"]["name"] == name)
            else {
                return not_found();
            };
            policy["status"] = req.body["status"].clone();
            policy["metadata"]["resourceVersion"] = json!(version);
            let policy = policy.clone();
            self.notify(watch_event("MODIFIED", policy.clone()));
            return Reply::Json(StatusCode::OK, policy);
        }
        let (api_version, kind) = match path {
            POLICIES => ("security.ward.io/v1", "AuthorizationPolicyList"),
            "/apis/security.ward.io/v1/peerauthentications" => {
                ("security.ward.io/v1", "PeerAuthenticationList")
            }
            "/api/v1/pods" => ("v1", "PodList"),
            "/api/v1/services" => ("v1", "ServiceList"),
            "/apis/discovery.k8s.io/v1/endpointslices" => {
                ("discovery.k8s.io/v1", "EndpointSliceList")
            }
            "/apis/ward.io/v1alpha1/quarantines" => ("ward.io/v1alpha1", "QuarantineList"),
            _ => return not_found(),
        };
        match (watch, path) {
            (true, POLICIES) => {
                let (tx, rx) = mpsc::channel(64);
                self.policy_watches.push(tx);
                Reply::Stream(rx)
            }
            (true, _) => self.keep_open(),
            (false, POLICIES) => {
                let version = self.resource_version.to_string();
                Reply::Json(
                    StatusCode::OK,
                    list(api_version, kind, &version, self.policies.clone()),
                )
            }
            (false, _) => {
                let version = self.resource_version.to_string();
                Reply::Json(StatusCode::OK, list(api_version, kind, &version, vec![]))
            }
        }
    }

    /// GET, POST (create) and PUT (replace, with the resourceVersion read)
    /// of the Lease, as the API server answers them.
    fn lease_call(&mut self, req: &Recorded, path: &str) -> Reply {
        let conflict = |what: &str| {
            Reply::Json(
                StatusCode::CONFLICT,
                status_failure(
                    409,
                    "Conflict",
                    &format!(
                        "Operation cannot be fulfilled on leases.coordination.k8s.io \"ward-control-plane\": {what}"
                    ),
                ),
            )
        };
        match (&req.method, path) {
            (&Method::GET, LEASE) => match &self.lease {
                Some(lease) => Reply::Json(StatusCode::OK, lease.clone()),
                None => Reply::Json(
                    StatusCode::NOT_FOUND,
                    status_failure(
                        404,
                        "NotFound",
                        "leases.coordination.k8s.io \"ward-control-plane\" not found",
                    ),
                ),
            },
            (&Method::POST, LEASES) if self.lease.is_some() => Reply::Json(
                StatusCode::CONFLICT,
                status_failure(
                    409,
                    "AlreadyExists",
                    "leases.coordination.k8s.io \"ward-control-plane\" already exists",
                ),
            ),
            (&Method::POST, LEASES) | (&Method::PUT, LEASE) => {
                let current = self
                    .lease
                    .as_ref()
                    .map(|l| l["metadata"]["resourceVersion"].clone());
                if req.method == Method::PUT
                    && Some(&req.body["metadata"]["resourceVersion"]) != current.as_ref()
                {
                    return conflict(
                        "the object has been modified; please apply your changes to the latest version and try again",
                    );
                }
                let mut lease = req.body.clone();
                lease["metadata"]["resourceVersion"] = json!(self.next_version());
                self.lease = Some(lease.clone());
                Reply::Json(StatusCode::OK, lease)
            }
            _ => not_found(),
        }
    }
}

struct Harness {
    cp: ControlPlane,
    api: ApiServer,
    fake: Shared,
    _data: tempfile::TempDir,
}

impl Harness {
    fn fake(&self) -> std::sync::MutexGuard<'_, Fake> {
        self.fake.lock().unwrap()
    }

    async fn metric(&self, series: &str) -> f64 {
        let (code, body) = admin_get(self.cp.admin_addr().unwrap(), "/metrics").await;
        assert_eq!(code, 200, "{body}");
        metric_value(&body, series)
    }

    async fn leader(&self) -> f64 {
        self.metric("ward_cp_leader ").await
    }

    async fn judged(&self) -> f64 {
        self.metric("ward_cp_policy_resources{kind=\"AuthorizationPolicy\",state=\"accepted\"}")
            .await
    }

    /// The policies whose status was written, in order, with the field
    /// manager named in each write.
    fn status_writes(&self) -> Vec<(String, String)> {
        self.api
            .requests()
            .into_iter()
            .filter(|r| r.method == Method::PATCH)
            .map(|r| {
                let (path, query) = r
                    .path_and_query
                    .split_once('?')
                    .unwrap_or((&r.path_and_query, ""));
                let name = path.split('/').nth(7).unwrap_or_default().to_owned();
                let manager = query
                    .split('&')
                    .find_map(|p| p.strip_prefix("fieldManager="))
                    .unwrap_or_default()
                    .replace("%2F", "/");
                (name, manager)
            })
            .collect()
    }

    fn written(&self, name: &str) -> bool {
        self.status_writes().iter().any(|(n, _)| n == name)
    }

    fn lease_requests(&self, method: Method) -> usize {
        self.api
            .requests()
            .iter()
            .filter(|r| r.method == method && r.path_and_query.starts_with(LEASES))
            .count()
    }

    async fn ready(&self) -> bool {
        admin_get(self.cp.admin_addr().unwrap(), "/ready").await.0 == 200
    }
}

/// Polls `check` every 20 ms; panics after `timeout` naming `what`.
async fn until<F: std::future::Future<Output = bool>>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn only_the_holder_writes_statuses_and_a_failing_renewal_stops_it_at_once() {
    let secs = Duration::from_secs;
    let mut fake = Fake {
        resource_version: 10,
        lease: None,
        lease_calls: LeaseCalls::Answer,
        policies: Vec::new(),
        policy_watches: Vec::new(),
        open: Vec::new(),
    };
    fake.held_by(Some("other"));
    fake.add_policy("first");
    let fake: Shared = Arc::new(Mutex::new(fake));
    let shared = fake.clone();
    let api = ApiServer::start(move |req| shared.lock().unwrap().answer(req)).await;
    let data = tempfile::tempdir().unwrap();
    let mut config = loopback_config("cluster.local", data.path());
    config.kube = Some(ApiClient(api.client()));
    config.kubernetes_sources = true;
    let mut lease = LeaseConfig::new("me");
    lease.lease_duration = secs(2);
    lease.renew_deadline = secs(1);
    lease.renew_period = Duration::from_millis(300);
    config.leader_election = Some(lease);
    let cp = ControlPlane::start(config).await.unwrap();
    let h = Harness {
        cp,
        api,
        fake,
        _data: data,
    };

    // ---- "other" renews every 300 ms: for two lease durations this
    // replica judges the policy, reads the Lease, and writes nothing.
    let renewing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let renewer = {
        let (fake, renewing) = (h.fake.clone(), renewing.clone());
        tokio::spawn(async move {
            while renewing.load(std::sync::atomic::Ordering::SeqCst) {
                fake.lock().unwrap().held_by(Some("other"));
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    until("ready", secs(10), || h.ready()).await;
    until("the policy judged", secs(10), || async {
        h.judged().await == 1.0
    })
    .await;
    let started = Instant::now();
    until("two lease durations of following", secs(20), || async {
        started.elapsed() >= secs(4) && h.lease_requests(Method::GET) >= 8
    })
    .await;
    assert_eq!(h.leader().await, 0.0);
    assert!(h.status_writes().is_empty(), "{:?}", h.status_writes());
    assert_eq!(
        h.lease_requests(Method::PUT) + h.lease_requests(Method::POST),
        0
    );

    // ---- "other" dies: the Lease is taken once it has stayed unchanged
    // for its duration, and the waiting status is written.
    renewing.store(false, std::sync::atomic::Ordering::SeqCst);
    renewer.await.unwrap();
    let died = Instant::now();
    until("leader after the holder died", secs(10), || async {
        h.leader().await == 1.0
    })
    .await;
    assert!(
        died.elapsed() >= Duration::from_millis(1600),
        "took a Lease renewed {:?} ago (duration 2 s, renewed every 300 ms)",
        died.elapsed()
    );
    {
        let fake = h.fake();
        let spec = &fake.lease.as_ref().unwrap()["spec"];
        assert_eq!(spec["holderIdentity"], "me");
        assert_eq!(spec["leaseTransitions"], 1);
        assert_eq!(spec["leaseDurationSeconds"], 2);
    }
    until("first's status", secs(10), || async { h.written("first") }).await;
    assert_eq!(
        h.status_writes(),
        [("first".to_owned(), "ward-control-plane/me".to_owned())]
    );

    // ---- the Lease calls fail: writes stop at once; the control plane
    // keeps serving; a new policy is judged but not reported.
    h.fake().lease_calls = LeaseCalls::Fail;
    let failing = Instant::now();
    until(
        "no longer leader after a failed renewal",
        secs(5),
        || async { h.leader().await == 0.0 },
    )
    .await;
    // The next renewal, within the 300 ms period.
    assert!(failing.elapsed() < secs(1), "{:?}", failing.elapsed());
    h.fake().add_policy("second");
    until("second judged", secs(10), || async {
        h.judged().await == 2.0
    })
    .await;
    assert!(h.ready().await, "a replica without the Lease still serves");
    assert!(!h.written("second"), "written without the Lease");

    // ---- the API answers again: the Lease is still ours, renewed, and
    // what was missed is written.
    h.fake().lease_calls = LeaseCalls::Answer;
    until(
        "second's status after the Lease is back",
        secs(10),
        || async { h.written("second") },
    )
    .await;
    assert_eq!(h.leader().await, 1.0);

    // ---- the Lease calls hang: writes stop by the renew deadline.
    h.fake().lease_calls = LeaseCalls::Hang;
    let hanging = Instant::now();
    until("no longer leader with a hung renewal", secs(5), || async {
        h.leader().await == 0.0
    })
    .await;
    // The last renewal began at most 300 ms before; the deadline is 1 s.
    assert!(
        hanging.elapsed() <= Duration::from_millis(1500),
        "{:?}",
        hanging.elapsed()
    );
    h.fake().add_policy("third");
    until("third judged", secs(10), || async {
        h.judged().await == 3.0
    })
    .await;
    assert!(!h.written("third"), "written past the renew deadline");
    assert!(h.ready().await);

    // ---- back, then a graceful shutdown releases the Lease
    {
        let mut fake = h.fake();
        fake.lease_calls = LeaseCalls::Answer;
        fake.open.clear();
    }
    until("third's status", secs(10), || async { h.written("third") }).await;
    let writers: Vec<String> = h.status_writes().into_iter().map(|(_, m)| m).collect();
    assert!(
        writers.iter().all(|m| m == "ward-control-plane/me"),
        "{writers:?}"
    );
    let Harness { cp, fake, api, .. } = h;
    cp.shutdown().await;
    let lease = fake.lock().unwrap().lease.clone().unwrap();
    assert!(
        lease["spec"]["holderIdentity"].is_null(),
        "not released: {lease}"
    );
    drop(api);
}
