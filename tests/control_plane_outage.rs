//! The control plane goes away: sidecars keep enforcing the last policy set
//! they received (no fail-open, no fail-closed-on-everything), report the
//! outage in their metrics, and resynchronise when it comes back, picking
//! up a change made while it was down.

#[path = "support/explicit.rs"]
mod explicit;

use std::time::Duration;

use explicit::{BackendAndCallers, Cluster, Workload, metric_sum, wait_until};

/// `backend-callers`: backend admits the callers with these service
/// accounts (of namespace `obs`), and no one else.
fn allow_callers(service_accounts: &[&str]) -> String {
    let principals: Vec<String> = service_accounts
        .iter()
        .map(|sa| format!("\"cluster.local/ns/obs/sa/{sa}\""))
        .collect();
    format!(
        r#"apiVersion: security.ward.io/v1
kind: AuthorizationPolicy
metadata:
  name: backend-callers
  namespace: obs
spec:
  selector:
    matchLabels:
      app: backend
  action: ALLOW
  rules:
    - from:
        - source:
            principals: [{}]
"#,
        principals.join(", ")
    )
}

fn connected(w: &Workload) -> f64 {
    metric_sum(&w.metrics(), "ward_control_plane_connected", &[])
}

#[test]
fn sidecars_keep_enforcing_through_an_outage_and_resync_after() {
    if !ward_testkit::require_tool("curl") {
        return;
    }
    let mut cluster = Cluster::start(&[("callers.yaml", &allow_callers(&["frontend"]))]);
    let BackendAndCallers {
        frontend,
        intruder,
        backend,
    } = cluster.backend_and_callers();
    assert_eq!(frontend.curl("/echo"), 200);
    assert_eq!(intruder.curl("/echo"), 403);
    let version = metric_sum(&backend.metrics(), "ward_policy_version", &[]);
    assert!(version > 0.0);

    cluster.stop_control_plane();
    wait_until(
        Duration::from_secs(10),
        "backend notices the outage",
        || connected(&backend) == 0.0,
    );
    // The last policy set stays in force: allowed stays allowed, denied
    // stays denied.
    assert_eq!(frontend.curl("/echo"), 200);
    assert_eq!(intruder.curl("/echo"), 403);
    assert_eq!(
        metric_sum(&backend.metrics(), "ward_policy_version", &[]),
        version
    );

    // A change made while the control plane is down arrives on reconnect.
    cluster.write_policy("callers.yaml", &allow_callers(&["frontend", "intruder"]));
    cluster.start_control_plane();
    wait_until(Duration::from_secs(20), "backend reconnects", || {
        connected(&backend) == 1.0
    });
    wait_until(
        Duration::from_secs(10),
        "the new policy is in force",
        || metric_sum(&backend.metrics(), "ward_policy_version", &[]) > version,
    );
    assert_eq!(intruder.curl("/echo"), 200);
    assert_eq!(frontend.curl("/echo"), 200);
}
