//! CA rotation (`ward ca rotate`, issue #16): a new root, or a new
//! intermediate, replaces the CA without a failed handshake, in steps an
//! operator asks for over the admin API, each gated on every sidecar's
//! confirmation:
//!
//! - **prepare**: the new CA's root joins the trust bundle of the CA's
//!   trust domain (the `bundle` discovery resource); confirmed by a sidecar
//!   once it ACKed that bundle.
//! - **activate** (needs prepare confirmed): the new CA signs every new
//!   certificate, the control plane's own too; the bundle asks sidecars to
//!   renew early, each at a random point of a window
//!   ([`ward_api::discovery::RenewRequest`]); confirmed by a sidecar once
//!   its newest certificate comes from the new CA (the record of issued
//!   certificates says which CA signed each).
//! - **retire** (needs activate confirmed): the old root leaves the
//!   bundles and is pushed as distrusted until it expires; once every
//!   sidecar ACKed that, the rotation is over and the new CA is the CA.
//! - **abort** rolls the current step back.
//!
//! A sidecar must confirm whether it is connected or not: one seen on the
//! discovery stream is known until its certificate expires, so a sidecar
//! cut off from the control plane holds a step back (and is named) instead
//! of being forgotten. `--force` proceeds without the ones that did not
//! confirm. The state and the new CA are kept in `<data-dir>/rotation/`
//! ([`store`]); every step is appended to the audit trail.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tracing::{error, info, warn};
use ward_api::discovery::RenewRequest;
use ward_identity::ca::{CertificateAuthority, fingerprint_sha256};

use crate::data_dir::{DEFAULT_ROOT_VALIDITY, DataDir};
use crate::discovery::Sidecars;
use crate::metrics::Metrics;
use crate::quarantine::IssuedCertificates;
use crate::quarantine::audit::{Action, AuditLog, Record};
use crate::quarantine::issued::holder_key;
use crate::trust_bundles::{BundleSet, OwnRoots};

pub mod admin;
pub mod progress;
pub mod state;
pub mod store;

pub use progress::{Gate, Pending, Progress, SidecarView};
pub use state::{CaInfo, Known, Phase, RotationState, Signer as Which, Step, StepError};
use store::{CaFile, RotationDir, StoreError};

/// The CA that signs now, swapped by a rotation's steps.
pub type Signer = Arc<ArcSwap<CertificateAuthority>>;

/// How often sidecars are looked at (known sidecars, the retire step's
/// end, metrics).
const TICK: Duration = Duration::from_millis(500);
/// The early-renewal window when `activate` names none.
pub const DEFAULT_RENEW_WITHIN: Duration = Duration::from_secs(300);
/// The longest window `activate` accepts.
pub const MAX_RENEW_WITHIN: Duration = Duration::from_secs(7 * 24 * 3600);

/// A step, as `ward ca rotate` asks for it (`POST /ca/rotation`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRequest {
    pub step: Step,
    /// Who asks, for the audit trail.
    pub by: String,
    /// Why, for the audit trail.
    pub reason: String,
    /// Proceed although sidecars did not confirm the previous step.
    #[serde(default)]
    pub force: bool,
    /// `prepare` only: the CA to rotate to (otherwise a new root is
    /// generated), e.g. an intermediate under an external root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<ImportedCa>,
    /// `activate` only: sidecars renew at a random point within this many
    /// seconds ([`DEFAULT_RENEW_WITHIN`] when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_within_seconds: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedCa {
    /// The CA certificate, then its issuers up to the root (PEM).
    pub chain_pem: String,
    /// Its private key (PEM).
    pub key_pem: String,
}

/// What `GET /ca/rotation` answers (and every step).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationStatus {
    pub trust_domain: String,
    pub phase: Phase,
    /// RFC 3339, when the phase began (absent when idle and never rotated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// `activate` was aborted: sidecars are asked to renew back.
    #[serde(default)]
    pub rolled_back: bool,
    /// The CA signing now.
    pub signer: CaSummary,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<CaSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<CaSummary>,
    /// Sidecars that must confirm (connected or known).
    pub sidecars: usize,
    /// The steps' confirmations (none when idle).
    #[serde(default)]
    pub steps: Vec<StepStatus>,
    /// What the operator can do next.
    pub next: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaSummary {
    pub fingerprint: String,
    pub not_after: String,
    pub root_fingerprint: String,
    pub root_not_after: String,
    /// The root (PEM): what the sidecars' anchor files (the
    /// `ward-ca-bundle` ConfigMap) should hold.
    pub root_pem: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepStatus {
    pub step: String,
    pub confirmed: usize,
    pub total: usize,
    pub complete: bool,
    #[serde(default)]
    pub pending: Vec<PendingSidecar>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingSidecar {
    pub sidecar: String,
    pub reason: String,
}

/// Why a step did not happen. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error(transparent)]
    Step(#[from] StepError),
    #[error("{0}")]
    BadRequest(String),
    #[error("the CA to rotate to: {0}")]
    BadCa(String),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("appending to the audit trail {path}: {source} (the step was not taken)")]
    Audit {
        path: String,
        source: std::io::Error,
    },
}

/// The CAs and state found in the data directory at start.
pub struct Loaded {
    dir: RotationDir,
    state: RotationState,
    /// The CA in force before the rotation (after it: the CA).
    current: Arc<CertificateAuthority>,
    /// The CA the rotation moves to.
    next: Option<Arc<CertificateAuthority>>,
}

/// Loads the CA (creating one on first start, as before rotations
/// existed) and any rotation in progress.
pub fn load(data: &DataDir, trust_domain: &str) -> anyhow::Result<Loaded> {
    let dir = RotationDir::open(data.path())?;
    let mut state = dir.load_state()?;
    let current = if state.ca_in_rotation_dir {
        let ca = dir.load_ca(CaFile::Current, trust_domain)?;
        // Finish the copy into ca/ an earlier run could not make.
        if data.replace_ca(&ca.full_chain_pem(), &ca.key_pem()).is_ok() {
            state.ca_in_rotation_dir = false;
            dir.save_state(&state)?;
            dir.remove_ca(CaFile::Current)?;
            info!("the CA of the finished rotation is now the CA in ca/");
        }
        ca
    } else {
        data.load_or_init_ca(trust_domain)?
    };
    let next = match state.phase {
        Phase::Idle => None,
        _ => Some(Arc::new(dir.load_ca(CaFile::Next, trust_domain)?)),
    };
    if let Some(old) = &state.old
        && old.fingerprint != current.fingerprint_sha256()
    {
        anyhow::bail!(
            "a CA rotation is in progress from CA {}, but the CA in the data directory is {}: restore it, or remove {} to forget the rotation",
            old.fingerprint,
            current.fingerprint_sha256(),
            data.path().join("rotation").display()
        );
    }
    Ok(Loaded {
        dir,
        state,
        current: Arc::new(current),
        next,
    })
}

impl Loaded {
    /// The CA that signs in the loaded phase.
    pub fn signer(&self) -> Arc<CertificateAuthority> {
        pick(self.state.signer(), &self.current, &self.next)
    }

    /// The CA that signs the control plane's own certificate.
    pub fn serving_signer(&self) -> Arc<CertificateAuthority> {
        pick(self.state.serving_signer(), &self.current, &self.next)
    }

    /// The CA's trust domain's roots and rotation fields, as distributed.
    pub fn own_roots(&self) -> OwnRoots {
        own_roots(&self.state, &self.current, self.next.as_deref(), now())
    }
}

/// What a [`Rotation`] works with besides what [`load`] found.
pub struct Wiring {
    pub trust_domain: String,
    pub data: DataDir,
    pub signer: Signer,
    /// Where the CA's roots and rotation fields are published (to
    /// [`crate::trust_bundles::run`]).
    pub own_roots: watch::Sender<Arc<OwnRoots>>,
    pub bundles: watch::Receiver<Arc<BundleSet>>,
    pub sidecars: Arc<Sidecars>,
    pub issued: Arc<IssuedCertificates>,
    pub metrics: Arc<Metrics>,
    /// The CA of the control plane's own certificate: the old one until
    /// `retire`, so a sidecar started from the old root alone (a
    /// ConfigMap not updated yet) can still reach the control plane and
    /// enrol during `activate`.
    pub serving_signer: Signer,
    /// Told when the serving signer changes: the serving certificate is
    /// re-issued at once.
    pub reissue: Arc<Notify>,
    /// Running with `--kubernetes`: replicas keep their own state and the
    /// CA is a read-only Secret, so a rotation is refused (not built yet).
    pub kubernetes: bool,
}

pub struct Rotation {
    wiring: Wiring,
    dir: RotationDir,
    audit: AuditLog,
    inner: Mutex<Inner>,
    /// Sidecars seen on the discovery stream (while idle too), by holder
    /// key: a prepare starts with all of them.
    seen: Mutex<BTreeMap<String, Known>>,
}

struct Inner {
    state: RotationState,
    current: Arc<CertificateAuthority>,
    next: Option<Arc<CertificateAuthority>>,
}

impl Rotation {
    pub fn new(loaded: Loaded, wiring: Wiring) -> Arc<Rotation> {
        let rotation = Rotation {
            audit: AuditLog::new(wiring.data.path()),
            seen: Mutex::new(loaded.state.known.clone()),
            dir: loaded.dir,
            inner: Mutex::new(Inner {
                state: loaded.state,
                current: loaded.current,
                next: loaded.next,
            }),
            wiring,
        };
        rotation.apply(&rotation.lock());
        Arc::new(rotation)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("not poisoned")
    }

    /// Where the rotation stands.
    pub fn status(&self) -> RotationStatus {
        let inner = self.lock();
        let progress = self.progress(&inner);
        self.status_of(&inner, &progress)
    }

    /// Takes one step (see the module comment); nothing changes when it is
    /// refused.
    pub fn step(&self, request: StepRequest) -> Result<RotationStatus, RotationError> {
        validate(&request)?;
        let now = now();
        let mut inner = self.lock();
        let progress = self.progress(&inner);
        let mut state = inner.state.clone();
        let mut next = inner.next.clone();
        let forced = |gate: &Gate| request.force && !gate.complete();
        let was_forced;
        match request.step {
            Step::Prepare => {
                if self.wiring.kubernetes {
                    return Err(RotationError::BadRequest(
                        "CA rotation is not available with --kubernetes yet: each replica would keep its own rotation state and CA (see docs/kubernetes.md, Rotating the CA)".into(),
                    ));
                }
                let ca = self.new_ca(&request, &inner.current)?;
                state.prepare(ca_info(&inner.current), ca_info(&ca), now)?;
                state.known = self.known_now(now);
                self.dir.save_ca(CaFile::Next, &ca)?;
                next = Some(Arc::new(ca));
                was_forced = false;
            }
            Step::Activate => {
                let within = request
                    .renew_within_seconds
                    .unwrap_or(DEFAULT_RENEW_WITHIN.as_secs());
                state.activate(&progress.prepare, request.force, within, now)?;
                was_forced = forced(&progress.prepare);
            }
            Step::Retire => {
                state.retire(&progress.activate, request.force, now)?;
                was_forced = forced(&progress.activate);
            }
            Step::Abort => {
                state.abort(&progress.new_holders, request.force, now)?;
                was_forced = forced(&progress.new_holders) && state.phase == Phase::Idle;
                if state.phase == Phase::Idle {
                    next = None;
                }
            }
        }
        self.dir.save_state(&state)?;
        let record = self.record(&request, &inner.state, &state, &progress, was_forced);
        if let Err(source) = self.audit.append(&record) {
            // No step without its audit record: the state on disk goes back.
            if let Err(err) = self.dir.save_state(&inner.state) {
                error!(error = %err, "restoring the rotation state after a failed audit write");
            }
            return Err(RotationError::Audit {
                path: self.audit.path().display().to_string(),
                source,
            });
        }
        if next.is_none()
            && let Err(err) = self.dir.remove_ca(CaFile::Next)
        {
            warn!(error = %err, "removing the aborted rotation's CA files");
        }
        info!(step = request.step.as_str(), by = %request.by, reason = %request.reason, from = inner.state.phase.as_str(), to = state.phase.as_str(), forced = was_forced, "CA rotation step");
        inner.state = state;
        inner.next = next;
        self.apply(&inner);
        let progress = self.progress(&inner);
        Ok(self.status_of(&inner, &progress))
    }

    /// Follows sidecars and ends the rotation once every one confirmed the
    /// retire step, until shutdown.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            self.tick();
        }
    }

    fn tick(&self) {
        let now = now();
        self.observe_sidecars(now);
        let mut inner = self.lock();
        if inner.state.phase == Phase::Idle {
            self.apply_metrics(&inner);
            return;
        }
        // Sidecars that came during the rotation must confirm too.
        let mut known = inner.state.known.clone();
        for (key, seen) in self.seen.lock().expect("not poisoned").iter() {
            known.insert(key.clone(), seen.clone());
        }
        known.retain(|_, k| k.not_after > now);
        if known != inner.state.known {
            let mut state = inner.state.clone();
            state.known = known;
            match self.dir.save_state(&state) {
                Ok(()) => inner.state = state,
                Err(err) => warn!(error = %err, "saving the sidecars a rotation waits for"),
            }
        }
        if inner.state.phase == Phase::Retire {
            let progress = self.progress(&inner);
            if progress.retire.complete() {
                self.finish(&mut inner, &progress, now);
            }
        }
        // The distrusted roots expire; the renewal window stays.
        self.apply(&inner);
    }

    /// Every sidecar ACKed the bundle without the old root: the new CA
    /// becomes the CA (copied into `ca/` when it can be).
    fn finish(&self, inner: &mut Inner, progress: &Progress, now: i64) {
        let Some(new_ca) = inner.next.clone() else {
            return;
        };
        let mut state = inner.state.clone();
        if state.finish(&progress.retire, now).is_err() {
            return;
        }
        state.ca_in_rotation_dir = true;
        let saved = self
            .dir
            .save_ca(CaFile::Current, &new_ca)
            .and_then(|()| self.dir.save_state(&state));
        if let Err(err) = saved {
            error!(error = %err, "finishing the CA rotation failed; retrying");
            return;
        }
        let mut record = Record::now(Action::CaRotated, &rotation_target(&inner.state), AUDIT_BY);
        record.reason = "every sidecar confirmed the retire step".into();
        record.rotation = Some(self.audit_detail(&inner.state, &state, progress, false));
        if let Err(err) = self.audit.append(&record) {
            error!(error = %err, "appending the end of the CA rotation to the audit trail");
        }
        if let Err(err) = self.dir.remove_ca(CaFile::Next) {
            warn!(error = %err, "removing the rotation's CA files");
        }
        inner.state = state;
        inner.current = new_ca.clone();
        inner.next = None;
        match self
            .wiring
            .data
            .replace_ca(&new_ca.full_chain_pem(), &new_ca.key_pem())
        {
            Ok(()) => {
                inner.state.ca_in_rotation_dir = false;
                let _ = self.dir.save_state(&inner.state);
                let _ = self.dir.remove_ca(CaFile::Current);
            }
            Err(err) => {
                warn!(error = %err, "the new CA stays in the rotation directory (ca/ cannot be replaced)")
            }
        }
        info!(ca = %new_ca.fingerprint_sha256(), "CA rotation finished: the new CA is the CA");
    }

    /// Remembers every connected sidecar until its certificate expires.
    fn observe_sidecars(&self, now: i64) {
        let mut seen = self.seen.lock().expect("not poisoned");
        for s in self.wiring.sidecars.all() {
            let key = holder_key(&s.spiffe_id, s.pod.as_deref(), Some(&s.address));
            let latest = self.wiring.issued.latest_for(&key).map(|i| i.not_after);
            let not_after = s.certificate_not_after.max(latest).unwrap_or(now + 3600);
            seen.insert(
                key,
                Known {
                    spiffe_id: s.spiffe_id.clone(),
                    pod: s.pod.clone(),
                    address: s.address.clone(),
                    not_after,
                },
            );
        }
        seen.retain(|_, k| k.not_after > now);
    }

    fn known_now(&self, now: i64) -> BTreeMap<String, Known> {
        self.observe_sidecars(now);
        self.seen.lock().expect("not poisoned").clone()
    }

    /// The CA `prepare` rotates to: imported, or a new root.
    fn new_ca(
        &self,
        request: &StepRequest,
        current: &CertificateAuthority,
    ) -> Result<CertificateAuthority, RotationError> {
        let td = &self.wiring.trust_domain;
        let ca = match &request.import {
            Some(import) => CertificateAuthority::from_pem_with_trust_domain(
                &import.chain_pem,
                &import.key_pem,
                Some(td),
            ),
            None => CertificateAuthority::generate_root(td, DEFAULT_ROOT_VALIDITY),
        }
        .map_err(|e| RotationError::BadCa(e.to_string()))?;
        Ok(ca.with_max_ttl(current.max_ttl()))
    }

    /// Every sidecar that must confirm: the connected ones, and the known
    /// ones whose certificate has not expired.
    fn views(&self, state: &RotationState, current: &CertificateAuthority) -> Vec<SidecarView> {
        let now = now();
        let td = &self.wiring.trust_domain;
        // Records from before rotations existed name no issuer: the CA in
        // force then signed them.
        let old_fp = state
            .old
            .as_ref()
            .map(|o| o.fingerprint.clone())
            .unwrap_or_else(|| current.fingerprint_sha256());
        let signer_of = |key: &str, serial: Option<&str>| {
            let from_stream = serial.and_then(|s| self.wiring.issued.get(s));
            let latest = self.wiring.issued.latest_for(key);
            [from_stream, latest]
                .into_iter()
                .flatten()
                .max_by_key(|i| i.not_after)
                .map(|i| i.issuer.unwrap_or_else(|| old_fp.clone()))
        };
        let mut views: BTreeMap<String, SidecarView> = BTreeMap::new();
        for s in self.wiring.sidecars.all() {
            let key = holder_key(&s.spiffe_id, s.pod.as_deref(), Some(&s.address));
            let view = SidecarView {
                signer: signer_of(&key, s.certificate_serial.as_deref()),
                bundle_acked: s.bundle.acked.get(td).cloned(),
                connected: true,
                key: key.clone(),
            };
            views.insert(key, view);
        }
        for (key, known) in &state.known {
            if known.not_after <= now || views.contains_key(key) {
                continue;
            }
            views.insert(
                key.clone(),
                SidecarView {
                    key: key.clone(),
                    connected: false,
                    bundle_acked: None,
                    signer: signer_of(key, None),
                },
            );
        }
        views.into_values().collect()
    }

    fn progress(&self, inner: &Inner) -> Progress {
        let state = &inner.state;
        if state.phase == Phase::Idle {
            return Progress::default();
        }
        let bundles = self.wiring.bundles.borrow().clone();
        // Only a bundle made of this phase's roots counts: right after a
        // step the new one may still be on its way, and the sidecars'
        // ACKs of the previous one confirm nothing.
        let expected = own_roots(state, &inner.current, inner.next.as_deref(), now());
        let desired = bundles
            .resources
            .iter()
            .find(|r| r.name == self.wiring.trust_domain)
            .filter(|_| bundles.own == expected)
            .map(|r| r.version.clone());
        progress::gates(
            state,
            desired.as_deref(),
            &self.views(state, &inner.current),
        )
    }

    /// Makes the state's signer, roots and metrics the ones in force.
    fn apply(&self, inner: &Inner) {
        let signer = pick(inner.state.signer(), &inner.current, &inner.next);
        if !Arc::ptr_eq(&self.wiring.signer.load(), &signer) {
            info!(ca = %signer.fingerprint_sha256(), "the CA that signs changed");
            self.wiring.signer.store(signer);
        }
        let serving = pick(inner.state.serving_signer(), &inner.current, &inner.next);
        if !Arc::ptr_eq(&self.wiring.serving_signer.load(), &serving) {
            info!(ca = %serving.fingerprint_sha256(), "the CA of the control plane's own certificate changed");
            self.wiring.serving_signer.store(serving);
            self.wiring.reissue.notify_one();
        }
        let own = own_roots(&inner.state, &inner.current, inner.next.as_deref(), now());
        self.wiring.own_roots.send_if_modified(|current| {
            if **current == own {
                return false;
            }
            *current = Arc::new(own);
            true
        });
        self.apply_metrics(inner);
    }

    fn apply_metrics(&self, inner: &Inner) {
        let m = &self.wiring.metrics;
        for phase in Phase::ALL {
            m.ca_rotation_phase
                .with_label_values(&[phase.as_str()])
                .set(i64::from(phase == inner.state.phase));
        }
        m.ca_expiry
            .set(self.wiring.signer.load().not_after().unix_timestamp() as f64);
        m.ca_chain_expiry.reset();
        let mut cas = vec![("current", &inner.current)];
        if let Some(next) = &inner.next {
            cas.push(("new", next));
        }
        for (which, ca) in cas {
            let mut chain = ca.chain_der();
            chain.push(ca.root_der().clone());
            let last = chain.len() - 1;
            for (index, der) in chain.iter().enumerate() {
                let Ok(not_after) = ward_identity::svid::not_after_of(der) else {
                    continue;
                };
                let role = if index == last {
                    "root"
                } else {
                    "intermediate"
                };
                let fingerprint = fingerprint_sha256(der);
                m.ca_chain_expiry
                    .with_label_values(&[which, role, &fingerprint])
                    .set(not_after.unix_timestamp() as f64);
            }
        }
    }

    fn status_of(&self, inner: &Inner, progress: &Progress) -> RotationStatus {
        let state = &inner.state;
        let signer = self.wiring.signer.load();
        let steps = match state.phase {
            Phase::Idle => Vec::new(),
            _ => vec![
                step_status("prepare", &progress.prepare),
                step_status("activate", &progress.activate),
                step_status("retire", &progress.retire),
            ],
        };
        let next = match (state.phase, state.rolled_back) {
            (Phase::Idle, _) => "ward ca rotate prepare".to_owned(),
            (Phase::Prepare, _) if progress.prepare.complete() => {
                "ward ca rotate activate (or abort)".to_owned()
            }
            (Phase::Prepare, _) => {
                "wait for every sidecar to acknowledge the new root (or abort)".to_owned()
            }
            (Phase::Activate, _) if progress.activate.complete() => {
                "ward ca rotate retire (or abort)".to_owned()
            }
            (Phase::Activate, _) => {
                "wait for every sidecar to renew onto the new CA (or abort)".to_owned()
            }
            (Phase::Retire, _) => {
                "wait for every sidecar to acknowledge the bundle without the old root (or abort)"
                    .to_owned()
            }
        };
        RotationStatus {
            trust_domain: self.wiring.trust_domain.clone(),
            phase: state.phase,
            since: (state.since > 0).then(|| rfc3339(state.since)),
            rolled_back: state.rolled_back,
            signer: summary(&ca_info(&signer)),
            old: state.old.as_ref().map(summary),
            new: state.new.as_ref().map(summary),
            sidecars: progress.prepare.total.max(progress.activate.total),
            steps,
            next,
        }
    }

    fn record(
        &self,
        request: &StepRequest,
        before: &RotationState,
        after: &RotationState,
        progress: &Progress,
        forced: bool,
    ) -> Record {
        let action = match request.step {
            Step::Prepare => Action::CaPrepare,
            Step::Activate => Action::CaActivate,
            Step::Retire => Action::CaRetire,
            Step::Abort => Action::CaAbort,
        };
        let target = match request.step {
            Step::Prepare => rotation_target(after),
            _ => rotation_target(before),
        };
        let mut record = Record::now(action, &target, &request.by);
        record.reason = request.reason.clone();
        record.rotation = Some(self.audit_detail(before, after, progress, forced));
        record
    }

    fn audit_detail(
        &self,
        before: &RotationState,
        after: &RotationState,
        progress: &Progress,
        forced: bool,
    ) -> serde_json::Value {
        let count = |g: &Gate| format!("{}/{}", g.confirmed, g.total);
        serde_json::json!({
            "from": before.phase.as_str(),
            "to": after.phase.as_str(),
            "old_ca": before.old.as_ref().or(after.old.as_ref()).map(|c| &c.fingerprint),
            "new_ca": before.new.as_ref().or(after.new.as_ref()).map(|c| &c.fingerprint),
            "forced": forced,
            "confirmed": {
                "prepare": count(&progress.prepare),
                "activate": count(&progress.activate),
                "retire": count(&progress.retire),
            },
            "not_confirmed": progress.prepare.pending.iter()
                .chain(&progress.activate.pending)
                .map(|p| &p.sidecar)
                .collect::<std::collections::BTreeSet<_>>(),
        })
    }
}

/// Who the control plane's own audit records name.
const AUDIT_BY: &str = crate::quarantine::audit::CONTROL_PLANE;

/// The audit trail's target of a rotation: `ca OLD -> NEW`.
fn rotation_target(state: &RotationState) -> String {
    let short = |c: &Option<CaInfo>| {
        c.as_ref()
            .map(|c| c.fingerprint.chars().take(23).collect::<String>())
            .unwrap_or_default()
    };
    format!("ca {} -> {}", short(&state.old), short(&state.new))
}

fn validate(request: &StepRequest) -> Result<(), RotationError> {
    let bad = |m: &str| Err(RotationError::BadRequest(m.to_owned()));
    if request.by.trim().is_empty() {
        return bad("`by` (who asks) is required for the audit trail");
    }
    if request.reason.trim().is_empty() {
        return bad("`reason` (why) is required for the audit trail");
    }
    if request.import.is_some() && request.step != Step::Prepare {
        return bad("a CA is imported by `prepare` only");
    }
    match request.renew_within_seconds {
        Some(_) if request.step != Step::Activate => {
            bad("the renewal window is set by `activate` only")
        }
        Some(0) => bad("the renewal window must be more than zero"),
        Some(s) if s > MAX_RENEW_WITHIN.as_secs() => bad("the renewal window is at most 7 days"),
        _ => Ok(()),
    }
}

/// The roots and rotation fields of the CA's trust domain in `state`.
fn own_roots(
    state: &RotationState,
    current: &CertificateAuthority,
    next: Option<&CertificateAuthority>,
    now: i64,
) -> OwnRoots {
    let roots = state.roots();
    let roots_pem = match roots.is_empty() {
        true => current.bundle_pem(),
        false => roots.concat(),
    };
    let renew = state.renew_onto().and_then(|which| {
        let signer = match which {
            Which::Old => Some(current),
            Which::New => next,
        }?;
        Some(RenewRequest {
            signer_pem: signer.cert_pem(),
            within_seconds: state.renew_within_seconds.max(1),
        })
    });
    OwnRoots {
        roots_pem,
        distrusted_pem: state.distrusted(now).concat(),
        renew,
    }
}

fn pick(
    which: Which,
    current: &Arc<CertificateAuthority>,
    next: &Option<Arc<CertificateAuthority>>,
) -> Arc<CertificateAuthority> {
    match (which, next) {
        (Which::New, Some(next)) => next.clone(),
        _ => current.clone(),
    }
}

fn ca_info(ca: &CertificateAuthority) -> CaInfo {
    let root = ca.root_der();
    CaInfo {
        fingerprint: ca.fingerprint_sha256(),
        not_after: ca.not_after().unix_timestamp(),
        root_fingerprint: fingerprint_sha256(root),
        root_pem: ca.bundle_pem(),
        root_not_after: ward_identity::svid::not_after_of(root)
            .map(|t| t.unix_timestamp())
            .unwrap_or_default(),
    }
}

fn summary(info: &CaInfo) -> CaSummary {
    CaSummary {
        fingerprint: info.fingerprint.clone(),
        not_after: rfc3339(info.not_after),
        root_fingerprint: info.root_fingerprint.clone(),
        root_not_after: rfc3339(info.root_not_after),
        root_pem: info.root_pem.clone(),
    }
}

fn step_status(step: &str, gate: &Gate) -> StepStatus {
    StepStatus {
        step: step.to_owned(),
        confirmed: gate.confirmed,
        total: gate.total,
        complete: gate.complete(),
        pending: gate
            .pending
            .iter()
            .map(|p| PendingSidecar {
                sidecar: p.sidecar.clone(),
                reason: p.reason.clone(),
            })
            .collect(),
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .map(ward_identity::rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
