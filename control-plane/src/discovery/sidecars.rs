//! Which sidecar enforces what: every connected stream's acknowledged
//! state, for the admin endpoint `/debug/discovery` and the
//! `ward_discovery_sidecars` gauge. "Policy X: enforced by 48 of 50
//! sidecars, not by pod Y because ..." is read from here. A sidecar whose
//! stream ended stays in the report as disconnected for [`DEPARTED_FOR`]
//! (`ward status`, `ward check`), unless it comes back.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;
use ward_api::discovery::ResourceType;
use ward_api::discovery::delta::{TypeState, Versions};

/// One connected sidecar, as the admin endpoint shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SidecarStatus {
    pub stream: u64,
    pub spiffe_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub address: String,
    pub proxy_version: String,
    /// RFC 3339.
    pub connected_since: String,
    /// The serial of the certificate the stream was opened with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_serial: Option<String>,
    /// When that certificate expires (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_not_after: Option<i64>,
    pub policy: TypeStatus,
    pub bundle: TypeStatus,
    pub endpoint: TypeStatus,
    pub service: TypeStatus,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TypeStatus {
    /// The control plane's version of this type the sidecar last ACKed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acked_system_version: Option<u64>,
    /// Resources the sidecar enforces (for policies and bundles, by name
    /// with their versions; for endpoints only their count).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub acked: Versions,
    pub acked_count: usize,
    /// What it should enforce (pushed types).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub desired: Versions,
    /// Subscribed names (on-demand types).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribed: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_nonce: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Rejected>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    pub nonce: u64,
    pub error: String,
}

impl TypeStatus {
    /// The sidecar's record of one type. Per-name versions are kept for
    /// pushed types only (a sidecar's endpoints are counted, not listed).
    pub fn of(state: &TypeState, system_version: Option<u64>, desired: Option<&Versions>) -> Self {
        let keep_names = desired.is_some();
        TypeStatus {
            acked_system_version: system_version,
            acked: if keep_names {
                state.acked().clone()
            } else {
                Versions::new()
            },
            acked_count: state.acked().len(),
            desired: desired.cloned().unwrap_or_default(),
            subscribed: None,
            pending_nonce: state.in_flight(),
            rejected: state.rejected().map(|(nonce, error)| Rejected {
                nonce: *nonce,
                error: error.clone(),
            }),
        }
    }

    /// `in_sync`, `pending` (an update awaits its answer, or a pushed
    /// type's acknowledged state differs from the desired one) or
    /// `rejected` (the last update was NACKed).
    pub fn state(&self) -> &'static str {
        if self.rejected.is_some() {
            "rejected"
        } else if self.pending_nonce.is_some() || self.acked != self.desired {
            "pending"
        } else {
            "in_sync"
        }
    }
}

/// How long a sidecar that left is reported as disconnected.
pub const DEPARTED_FOR: Duration = Duration::from_secs(600);
/// Most departed sidecars remembered (after a mass restart, the newest).
const MAX_DEPARTED: usize = 1024;

/// A sidecar whose stream ended within [`DEPARTED_FOR`] and that has not
/// come back.
#[derive(Debug, Clone, Serialize)]
pub struct Departed {
    pub spiffe_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub address: String,
    pub proxy_version: String,
    /// RFC 3339.
    pub left_at: String,
    #[serde(skip)]
    left: OffsetDateTime,
}

impl Departed {
    /// The same workload: the same pod, else the same identity at the
    /// same address.
    fn is(&self, s: &SidecarStatus) -> bool {
        match (&self.pod, &s.pod) {
            (Some(a), Some(b)) => a == b,
            _ => self.spiffe_id == s.spiffe_id && self.address == s.address,
        }
    }
}

/// Every connected stream's status.
#[derive(Default)]
pub struct Sidecars {
    streams: Mutex<BTreeMap<u64, Arc<Mutex<SidecarStatus>>>>,
    /// Oldest first.
    departed: Mutex<VecDeque<Departed>>,
    next: AtomicU64,
}

impl Sidecars {
    pub fn next_stream_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn insert(&self, status: SidecarStatus) -> Arc<Mutex<SidecarStatus>> {
        self.departed
            .lock()
            .expect("not poisoned")
            .retain(|d| !d.is(&status));
        let cell = Arc::new(Mutex::new(status));
        let stream = cell.lock().expect("not poisoned").stream;
        self.streams
            .lock()
            .expect("not poisoned")
            .insert(stream, cell.clone());
        cell
    }

    /// The stream ended: reported as disconnected for [`DEPARTED_FOR`],
    /// unless another stream of the same workload is open (a reconnect
    /// that overtook the old stream's end).
    pub fn remove(&self, stream: u64) {
        let Some(cell) = self.streams.lock().expect("not poisoned").remove(&stream) else {
            return;
        };
        let status = cell.lock().expect("not poisoned").clone();
        let now = OffsetDateTime::now_utc();
        let gone = Departed {
            spiffe_id: status.spiffe_id.clone(),
            pod: status.pod.clone(),
            address: status.address.clone(),
            proxy_version: status.proxy_version.clone(),
            left_at: ward_identity::rfc3339(now),
            left: now,
        };
        if self.all().iter().any(|s| gone.is(s)) {
            return;
        }
        let mut departed = self.departed.lock().expect("not poisoned");
        departed.retain(|d| {
            !(d.pod == gone.pod && d.spiffe_id == gone.spiffe_id && d.address == gone.address)
        });
        departed.push_back(gone);
        while departed.len() > MAX_DEPARTED {
            departed.pop_front();
        }
    }

    /// Sidecars that left within [`DEPARTED_FOR`] and did not come back,
    /// oldest first.
    pub fn departed(&self) -> Vec<Departed> {
        let horizon = OffsetDateTime::now_utc() - DEPARTED_FOR;
        let mut departed = self.departed.lock().expect("not poisoned");
        departed.retain(|d| d.left > horizon);
        departed.iter().cloned().collect()
    }

    pub fn all(&self) -> Vec<SidecarStatus> {
        let streams = self.streams.lock().expect("not poisoned");
        streams
            .values()
            .map(|s| s.lock().expect("not poisoned").clone())
            .collect()
    }

    /// How many sidecars are in each state, by resource type.
    pub fn counts(&self) -> BTreeMap<(ResourceType, &'static str), i64> {
        let mut counts = BTreeMap::new();
        for s in self.all() {
            for (t, status) in [
                (ResourceType::Policy, &s.policy),
                (ResourceType::Bundle, &s.bundle),
                (ResourceType::Endpoint, &s.endpoint),
            ] {
                *counts.entry((t, status.state())).or_insert(0) += 1;
            }
        }
        counts
    }

    /// The admin report: every sidecar, and per policy who enforces it.
    pub fn report(&self) -> Report {
        let sidecars = self.all();
        let mut policies: BTreeMap<String, PolicyReport> = BTreeMap::new();
        for s in &sidecars {
            let who = s.pod.clone().unwrap_or_else(|| s.spiffe_id.clone());
            for (name, version) in &s.policy.desired {
                let report = policies.entry(name.clone()).or_default();
                report.version = version.clone();
                report.applies_to += 1;
                if s.policy.acked.get(name) == Some(version) {
                    report.enforced_by += 1;
                } else {
                    let reason = match &s.policy.rejected {
                        Some(r) => format!("rejected update {}: {}", r.nonce, r.error),
                        None => "update not yet acknowledged".to_owned(),
                    };
                    report.not_enforced.push(NotEnforced {
                        sidecar: who.clone(),
                        reason,
                    });
                }
            }
        }
        Report {
            sidecars,
            disconnected: self.departed(),
            policies,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub sidecars: Vec<SidecarStatus>,
    /// Sidecars whose stream ended within [`DEPARTED_FOR`] and that have
    /// not reconnected.
    pub disconnected: Vec<Departed>,
    pub policies: BTreeMap<String, PolicyReport>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PolicyReport {
    pub version: String,
    /// Connected sidecars the policy applies to.
    pub applies_to: usize,
    /// Of those, the ones that acknowledged this version.
    pub enforced_by: usize,
    pub not_enforced: Vec<NotEnforced>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NotEnforced {
    pub sidecar: String,
    pub reason: String,
}
