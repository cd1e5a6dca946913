//! Quarantine: cutting an identity, a pod or one certificate off the mesh
//! (`ward quarantine`). Entries ([`document::Entry`]) live in
//! `<data-dir>/quarantine/` ([`store`]) and, in Kubernetes, are
//! `Quarantine` objects ([`objects`]); the control plane watches both,
//! merges them, resolves each entry to what it revokes (SPIFFE IDs,
//! certificate serials, pod addresses: a pod's serials come from the
//! record of issued certificates, [`issued`]) and publishes the result,
//! which every discovery stream pushes to its sidecar as `quarantine`
//! resources. The control plane itself refuses certificates, discovery
//! streams and registrations to what is quarantined, and ends the streams
//! of what becomes so. Every change is written to the audit trail
//! ([`audit`]).
//!
//! An entry file or object that does not parse is logged and counted; it
//! keeps in force whatever it held when it last parsed (a damaged entry
//! never lifts a quarantine), and is otherwise ignored. Until the objects
//! are listed the state is unknown, and the control plane refuses what it
//! would check against it.

pub mod audit;
pub mod document;
pub mod issued;
pub mod objects;
pub mod store;
pub mod target;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::{error, info, warn};
use ward_api::discovery::{QuarantineBody, Resource};

use crate::attest::PodDirectory;
use crate::dir_watch::{DirWatch, RESCAN_INTERVAL};
use crate::discovery::Sidecars;
use crate::metrics::Metrics;
use crate::policy_store::next_version;

pub use document::Entry;
pub use issued::{Issued, IssuedCertificates};
pub use objects::{ObjectEntries, QuarantineObjects};
pub use store::QuarantineDir;
pub use target::{Target, TargetError};

/// What is quarantined now, as sent and as checked.
#[derive(Debug, Default)]
pub struct QuarantineState {
    /// Milliseconds since the epoch when it was put in force (0: nothing
    /// read yet), the updates' `system_version`.
    pub version: u64,
    /// One resource per entry, named by it ([`QuarantineBody`]).
    pub resources: Vec<Resource>,
    pub revoked: Revoked,
}

impl QuarantineState {
    /// Whether every source has been read: until then nothing can be
    /// checked against it, and the control plane refuses rather than
    /// guess that nothing is quarantined.
    pub fn is_known(&self) -> bool {
        self.version != 0
    }
}

/// The resolved revocations, for the control plane's own checks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// Key → the entry that revokes it.
    ids: HashMap<String, String>,
    serials: HashMap<String, String>,
    /// `namespace/pod`.
    pods: HashMap<String, String>,
    addresses: HashMap<IpAddr, String>,
}

/// Who is asking, as far as the control plane knows.
#[derive(Debug, Default, Clone, Copy)]
pub struct Subject<'a> {
    pub spiffe_id: Option<&'a str>,
    /// The serial of the certificate it presented.
    pub serial: Option<&'a str>,
    /// `namespace/pod`, when it names its pod.
    pub pod: Option<&'a str>,
    pub address: Option<IpAddr>,
}

/// Why a subject is refused: the entry, and what of the subject matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    pub entry: String,
    pub by: &'static str,
}

impl Revoked {
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
            && self.serials.is_empty()
            && self.pods.is_empty()
            && self.addresses.is_empty()
    }

    pub fn check(&self, who: &Subject<'_>) -> Option<Match> {
        let found = |by: &'static str, entry: Option<&String>| {
            entry.map(|entry| Match {
                entry: entry.clone(),
                by,
            })
        };
        if self.is_empty() {
            return None;
        }
        who.spiffe_id
            .and_then(|id| found("spiffe_id", self.ids.get(id)))
            .or_else(|| {
                who.serial
                    .and_then(|s| found("serial", self.serials.get(s)))
            })
            .or_else(|| who.pod.and_then(|p| found("pod", self.pods.get(p))))
            .or_else(|| {
                who.address
                    .and_then(|a| found("address", self.addresses.get(&a)))
            })
    }

    fn add(&mut self, entry: &Entry, body: &QuarantineBody) {
        let name = || entry.name.clone();
        for id in &body.spiffe_ids {
            self.ids.insert(id.clone(), name());
        }
        for serial in &body.serials {
            self.serials.insert(serial.clone(), name());
        }
        for address in body.addresses.iter().filter_map(|a| a.parse().ok()) {
            self.addresses.insert(address, name());
        }
        if let Some(pod) = entry.target.pod() {
            self.pods.insert(pod, name());
        }
    }
}

/// Where a pod's addresses are known from: connected sidecars that named
/// their pod, and in Kubernetes the pod itself.
pub struct Resolver {
    pub issued: Arc<IssuedCertificates>,
    pub sidecars: Arc<Sidecars>,
    pub pods: Option<PodDirectory>,
}

impl Resolver {
    /// What `entry` revokes now.
    pub fn resolve(&self, entry: &Entry) -> QuarantineBody {
        let mut body = QuarantineBody {
            target: entry.target.to_string(),
            ..Default::default()
        };
        match &entry.target {
            Target::Identity(id) => body.spiffe_ids.push(id.to_string()),
            Target::Serial(serial) => body.serials.push(serial.clone()),
            Target::Pod { namespace, pod } => {
                let workload = format!("{namespace}/{pod}");
                body.serials = self.issued.serials_of_pod(&workload);
                let mut addresses: Vec<String> = self
                    .sidecars
                    .all()
                    .into_iter()
                    .filter(|s| s.pod.as_deref() == Some(workload.as_str()))
                    .map(|s| s.address)
                    .collect();
                if let Some(pods) = &self.pods {
                    addresses.extend(pod_addresses(pods, namespace, pod));
                }
                addresses.sort();
                addresses.dedup();
                body.addresses = addresses;
            }
        }
        body
    }
}

/// The addresses Kubernetes reports for a pod.
fn pod_addresses(pods: &PodDirectory, namespace: &str, pod: &str) -> Vec<String> {
    use kube::runtime::reflector::ObjectRef;
    let Some(pod) = pods.0.get(&ObjectRef::new(pod).within(namespace)) else {
        return Vec::new();
    };
    pod.status
        .iter()
        .flat_map(|s| s.pod_ips.iter().flatten())
        .filter_map(|ip| ip.ip.parse::<IpAddr>().ok())
        .map(|ip| ip.to_string())
        .collect()
}

/// Builds the state of `entries` (entry name → entry). What an entry
/// revoked before (`previous`, by entry name) stays revoked while the
/// entry lasts: a quarantined pod's stream closes, and with it the only
/// record of its address.
pub fn state_of(
    entries: &BTreeMap<String, Entry>,
    resolver: &Resolver,
    previous: &BTreeMap<String, QuarantineBody>,
) -> QuarantineState {
    let mut state = QuarantineState::default();
    for (name, entry) in entries {
        let mut body = resolver.resolve(entry);
        if let Some(before) = previous.get(name).filter(|b| b.target == body.target) {
            merge(&mut body.serials, &before.serials);
            merge(&mut body.addresses, &before.addresses);
        }
        state.revoked.add(entry, &body);
        state.resources.push(Resource::new(name.clone(), &body));
    }
    state
}

/// `into` ∪ `from`, sorted.
fn merge(into: &mut Vec<String>, from: &[String]) {
    into.extend(from.iter().cloned());
    into.sort();
    into.dedup();
}

/// Where the entries come from: `<data-dir>/quarantine/`, read when it
/// changes (inotify) and every [`RESCAN_INTERVAL`] (a pod's addresses and
/// certificates are resolved again), and with `--kubernetes` the
/// `Quarantine` objects ([`objects`]). Both are merged, resolved and
/// published as one state.
pub struct QuarantineSource {
    dir: QuarantineDir,
    audit: audit::AuditLog,
    resolver: Resolver,
    tx: Arc<watch::Sender<Arc<QuarantineState>>>,
    metrics: Arc<Metrics>,
    /// Entries in force, by file: a file that stops parsing keeps its
    /// last good entry.
    by_file: BTreeMap<PathBuf, Entry>,
    /// Files that do not parse now.
    invalid_files: usize,
    seen: Option<u64>,
    /// The Quarantine objects' entries (`None` until they are listed),
    /// when the control plane watches the Kubernetes API.
    objects: Option<watch::Receiver<Option<ObjectEntries>>>,
}

impl QuarantineSource {
    pub fn new(
        dir: QuarantineDir,
        data_dir: &std::path::Path,
        resolver: Resolver,
        tx: Arc<watch::Sender<Arc<QuarantineState>>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        QuarantineSource {
            dir,
            audit: audit::AuditLog::new(data_dir),
            resolver,
            tx,
            metrics,
            by_file: BTreeMap::new(),
            invalid_files: 0,
            seen: None,
            objects: None,
        }
    }

    /// Merges the Quarantine objects the watcher publishes on `objects`.
    /// Until they are listed nothing is published: the state stays
    /// unknown ([`QuarantineState::is_known`]), and what would be checked
    /// against it is refused.
    pub fn with_objects(mut self, objects: watch::Receiver<Option<ObjectEntries>>) -> Self {
        self.objects = Some(objects);
        self
    }

    /// Reads the directory if it changed, resolves, and publishes what
    /// changed. Called once before the control plane serves, so no stream
    /// ever starts without the quarantines in force.
    pub fn poll(&mut self) {
        let fingerprint = self.dir.fingerprint();
        if self.seen != Some(fingerprint) {
            self.seen = Some(fingerprint);
            self.reread();
        }
        let objects = match &self.objects {
            None => None,
            Some(rx) => match rx.borrow().clone() {
                Some(listed) => Some(listed),
                // Not listed yet: what is quarantined is not known.
                None => return,
            },
        };
        let invalid = self.invalid_files + objects.as_ref().map_or(0, |o| o.invalid);
        self.metrics.quarantine_invalid_files.set(invalid as i64);
        self.publish(&self.entries_in_force(objects.as_ref()));
    }

    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut changes = DirWatch::new(self.dir.path(), "quarantine directory", RESCAN_INTERVAL);
        let mut objects = self.objects.clone();
        loop {
            let go_on = tokio::select! {
                go_on = changes.next(&mut shutdown) => go_on,
                () = objects_changed(&mut objects) => true,
            };
            if !go_on {
                return;
            }
            self.poll();
        }
    }

    /// Reads the directory again: every file's entry, a damaged file
    /// keeping what it held.
    fn reread(&mut self) {
        let stored = match self.dir.read() {
            Ok(stored) => stored,
            Err(err) => {
                error!(error = %err, "reading the quarantine directory failed; the quarantines in force stay");
                return;
            }
        };
        let mut next = BTreeMap::new();
        let mut invalid = 0;
        for item in stored {
            match item.entry {
                Ok(entry) => {
                    next.insert(item.path, entry);
                }
                Err(err) => {
                    invalid += 1;
                    let kept = self.by_file.get(&item.path).cloned();
                    error!(file = %item.path.display(), error = %err, kept_in_force = ?kept.as_ref().map(|e| e.target.to_string()), "quarantine entry refused");
                    if let Some(entry) = kept {
                        next.insert(item.path, entry);
                    }
                }
            }
        }
        self.invalid_files = invalid;
        self.by_file = next;
    }

    /// The entries of the files, then of the objects, by name. One name
    /// given to two different targets keeps both in force (the later
    /// renamed): an entry is never dropped for its name.
    fn entries_in_force(&self, objects: Option<&ObjectEntries>) -> BTreeMap<String, Entry> {
        let mut entries = BTreeMap::new();
        let from_objects = objects.into_iter().flat_map(|o| o.entries.values());
        for entry in self.by_file.values().chain(from_objects) {
            insert_entry(&mut entries, entry);
        }
        entries
    }

    /// Resolves the entries and publishes them if anything changed,
    /// recording what came into and went out of force.
    fn publish(&self, entries: &BTreeMap<String, Entry>) {
        let current = self.tx.borrow().clone();
        let previous: BTreeMap<String, QuarantineBody> = current
            .resources
            .iter()
            .filter_map(|r| Some((r.name.clone(), r.decode().ok()?)))
            .collect();
        let state = state_of(entries, &self.resolver, &previous);
        if current.version != 0 && state.resources == current.resources {
            return;
        }
        let version = next_version(current.version);
        let state = Arc::new(QuarantineState { version, ..state });
        // Published first: the audit trail's fsync is not on the way to
        // the sidecars.
        self.metrics
            .quarantined_identities
            .set(state.resources.len() as i64);
        self.tx.send_replace(state.clone());
        let before: BTreeMap<&str, &Resource> = current
            .resources
            .iter()
            .map(|r| (r.name.as_str(), r))
            .collect();
        let after: BTreeMap<&str, &Resource> = state
            .resources
            .iter()
            .map(|r| (r.name.as_str(), r))
            .collect();
        for (name, resource) in &after {
            if before.get(name).map(|r| &r.version) == Some(&resource.version) {
                continue;
            }
            let entry = &entries[*name];
            let body: QuarantineBody = resource.decode().unwrap_or_default();
            if body.spiffe_ids.is_empty() && body.serials.is_empty() && body.addresses.is_empty() {
                warn!(entry = %name, target = %entry.target, "the quarantined pod has no known certificate or address yet: new certificates for it are refused, nothing else is");
            }
            info!(entry = %name, target = %entry.target, reason = %entry.reason, requested_by = %entry.requested_by, spiffe_ids = ?body.spiffe_ids, serials = ?body.serials, addresses = ?body.addresses, version, "quarantine in force");
            let mut record = audit::Record::now(
                audit::Action::Enforced,
                &entry.target.to_string(),
                audit::CONTROL_PLANE,
            );
            record.entry = Some(entry.name.clone());
            record.reason = entry.reason.clone();
            record.revokes = Some(body);
            self.record(&record);
        }
        for (name, resource) in &before {
            if after.contains_key(name) {
                continue;
            }
            let target = resource
                .decode::<QuarantineBody>()
                .map(|b| b.target)
                .unwrap_or_default();
            info!(entry = %name, %target, version, "quarantine lifted");
            let mut record =
                audit::Record::now(audit::Action::Lifted, &target, audit::CONTROL_PLANE);
            record.entry = Some((*name).to_owned());
            self.record(&record);
        }
    }

    fn record(&self, record: &audit::Record) {
        if let Err(err) = self.audit.append(record) {
            error!(file = %self.audit.path().display(), error = %err, action = record.action.as_str(), target = %record.target, "appending to the audit trail failed");
        }
    }
}

/// Adds `entry` under its name. The same target under a name already
/// taken is one quarantine (a file and an object for it, say); another
/// target under it is kept as `<name>.<n>`.
fn insert_entry(entries: &mut BTreeMap<String, Entry>, entry: &Entry) {
    let Some(held) = entries.get(&entry.name) else {
        entries.insert(entry.name.clone(), entry.clone());
        return;
    };
    if held.target == entry.target {
        return;
    }
    let other = held.target.to_string();
    let name = (2..)
        .map(|n| format!("{}.{n}", entry.name))
        .find(|name| !entries.contains_key(name))
        .expect("a free name");
    warn!(entry = %entry.name, target = %entry.target, other_target = %other, in_force_as = %name, "two quarantine entries use the same name for different targets; both are in force");
    let mut renamed = entry.clone();
    renamed.name = name.clone();
    entries.insert(name, renamed);
}

/// Resolves when the watcher publishes new Quarantine objects; never
/// without a watcher (or once it is gone).
async fn objects_changed(objects: &mut Option<watch::Receiver<Option<ObjectEntries>>>) {
    if let Some(rx) = objects
        && rx.changed().await.is_ok()
    {
        return;
    }
    *objects = None;
    std::future::pending().await
}

#[cfg(test)]
mod tests;
