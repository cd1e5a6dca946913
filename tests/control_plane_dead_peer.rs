//! A control plane that stops answering without closing anything (a
//! frozen process, a partitioned node: no FIN, no RST) is detected by the
//! sidecar's discovery stream through its HTTP/2 keepalive PINGs, within
//! seconds rather than at the kernel's TCP timeouts (minutes to hours),
//! and the stream comes back once it answers again (issue #15). The sidecar
//! keeps serving with what it has meanwhile.

#[path = "support/explicit.rs"]
mod explicit;

use std::process::Command;
use std::time::{Duration, Instant};

use explicit::{BackendAndCallers, Cluster, Workload, metric_sum, wait_until};

/// The client's keepalive is 10 s between PINGs and 10 s to answer one;
/// the rest is margin for a loaded machine.
const DETECTION_TIMEOUT: Duration = Duration::from_secs(60);

fn connected(w: &Workload) -> f64 {
    metric_sum(&w.metrics(), "ward_control_plane_connected", &[])
}

fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

/// Resumes a stopped process even when the test fails half way.
struct Frozen(u32);

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

#[test]
fn a_frozen_control_plane_is_detected_by_keepalives_and_the_stream_resumes() {
    if !ward_testkit::require_tool("curl") || !ward_testkit::require_tool("kill") {
        return;
    }
    let cluster = Cluster::start(&[]);
    let BackendAndCallers {
        frontend, backend, ..
    } = cluster.backend_and_callers();
    wait_until(DETECTION_TIMEOUT, "both streams up", || {
        connected(&frontend) == 1.0 && connected(&backend) == 1.0
    });

    let pid = cluster.control_plane_pid().expect("the control plane runs");
    signal(pid, "-STOP");
    let frozen = Frozen(pid);
    let stopped = Instant::now();
    // Nothing was closed: only an unanswered PING tells.
    wait_until(DETECTION_TIMEOUT, "the dead peer detected", || {
        connected(&frontend) == 0.0 && connected(&backend) == 0.0
    });
    eprintln!("dead control plane detected after {:?}", stopped.elapsed());
    // Serving goes on with the certificates and policies in hand.
    assert_eq!(frontend.curl("/echo"), 200);

    drop(frozen);
    wait_until(DETECTION_TIMEOUT, "the streams back", || {
        connected(&frontend) == 1.0 && connected(&backend) == 1.0
    });
    assert_eq!(frontend.curl("/echo"), 200);
}
