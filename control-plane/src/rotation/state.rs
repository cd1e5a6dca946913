//! The phase state machine of a CA rotation, with no I/O: what each step
//! needs, what it changes, and what the bundles and the signer are in each
//! phase. [`super::Rotation`] persists it and applies it.
//!
//! ```text
//!        prepare            activate             retire         (every sidecar ACKed)
//! idle ──────────► prepare ──────────► activate ─────────► retire ───────────────► idle
//!   ▲                 │  ▲   abort        │  ▲    abort        │
//!   └──── abort ──────┘  └────────────────┘  └─────────────────┘
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::progress::Gate;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// No rotation: the CA signs, its root alone is distributed.
    #[default]
    Idle,
    /// The new root is distributed beside the old; the old CA signs.
    Prepare,
    /// The new CA signs; sidecars are asked to renew onto it.
    Activate,
    /// The old root left the bundles; waiting for every sidecar to ACK.
    Retire,
}

impl Phase {
    pub const ALL: [Phase; 4] = [Phase::Idle, Phase::Prepare, Phase::Activate, Phase::Retire];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Prepare => "prepare",
            Phase::Activate => "activate",
            Phase::Retire => "retire",
        }
    }
}

/// A step an operator asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Prepare,
    Activate,
    Retire,
    Abort,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Prepare => "prepare",
            Step::Activate => "activate",
            Step::Retire => "retire",
            Step::Abort => "abort",
        }
    }
}

/// One CA of a rotation, as the state file keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaInfo {
    /// SHA-256 of the CA certificate that signs (`AB:CD:…`).
    pub fingerprint: String,
    /// Unix seconds.
    pub not_after: i64,
    /// SHA-256 of its root.
    pub root_fingerprint: String,
    /// The root workloads trust (PEM).
    pub root_pem: String,
    /// Unix seconds.
    pub root_not_after: i64,
}

/// A sidecar seen on the discovery stream: it must confirm every step,
/// connected or not, until its certificate expires (after that it can
/// only come back by enrolling again, and then receives the whole state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Known {
    pub spiffe_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub address: String,
    /// Unix seconds: when its latest known certificate expires.
    pub not_after: i64,
}

/// A root an earlier rotation retired: distrusted everywhere until it
/// expires (after which no certificate under it verifies anyway).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retired {
    pub fingerprint: String,
    pub pem: String,
    pub not_after: i64,
}

/// What `<data-dir>/rotation/state.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationState {
    pub phase: Phase,
    /// Unix seconds: when the phase began.
    #[serde(default)]
    pub since: i64,
    /// The CA that signed before the rotation (outside `idle`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<CaInfo>,
    /// The CA the rotation moves to (outside `idle`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<CaInfo>,
    /// `activate` was aborted: back in `prepare`, sidecars that already
    /// renewed onto the new CA are asked to renew back.
    #[serde(default)]
    pub rolled_back: bool,
    /// The early-renewal window of `activate`, seconds.
    #[serde(default)]
    pub renew_within_seconds: u64,
    /// Sidecars that must confirm, by holder key.
    #[serde(default)]
    pub known: BTreeMap<String, Known>,
    #[serde(default)]
    pub retired: Vec<Retired>,
    /// The CA in force lives in `rotation/current*.pem`: the rotation
    /// finished but `ca/` could not be replaced (a read-only Secret
    /// volume), or the copy has not been made yet.
    #[serde(default)]
    pub ca_in_rotation_dir: bool,
}

/// Which CA signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    Old,
    New,
}

/// Why a step was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    #[error("no CA rotation is in progress")]
    NotRotating,
    #[error("`{step}` is not possible in phase `{phase}`: {hint}")]
    WrongPhase {
        step: &'static str,
        phase: &'static str,
        hint: &'static str,
    },
    #[error("the new CA is the CA in force ({0})")]
    SameCa(String),
    #[error("the new CA's root {0} was retired by an earlier rotation; use a new root")]
    RetiredRoot(String),
    #[error(
        "`{step}` waits for {pending} of {total} sidecars: {names} (see `ward ca status`; --force proceeds without them)"
    )]
    NotConfirmed {
        step: &'static str,
        pending: usize,
        total: usize,
        names: String,
    },
}

impl RotationState {
    /// Which CA signs in this phase.
    pub fn signer(&self) -> Signer {
        match self.phase {
            Phase::Activate | Phase::Retire => Signer::New,
            Phase::Idle | Phase::Prepare => Signer::Old,
        }
    }

    /// Which CA signs the control plane's own certificate: the new one
    /// only once the old root leaves the bundles.
    pub fn serving_signer(&self) -> Signer {
        match self.phase {
            Phase::Retire => Signer::New,
            _ => Signer::Old,
        }
    }

    /// The rotation's roots in the CA's trust domain's bundle (empty when
    /// idle: then the CA's own root is). Old first, never twice.
    pub fn roots(&self) -> Vec<&str> {
        let (Some(old), Some(new)) = (&self.old, &self.new) else {
            return Vec::new();
        };
        let mut roots = Vec::new();
        if self.phase != Phase::Retire {
            roots.push(old.root_pem.as_str());
        }
        if old.root_fingerprint != new.root_fingerprint || self.phase == Phase::Retire {
            roots.push(new.root_pem.as_str());
        }
        roots
    }

    /// Roots distrusted now: retired ones that have not expired.
    pub fn distrusted(&self, now: i64) -> Vec<&str> {
        self.retired
            .iter()
            .filter(|r| r.not_after > now)
            .map(|r| r.pem.as_str())
            .collect()
    }

    /// The early renewal asked of sidecars: onto the new CA in `activate`,
    /// back onto the old one after `activate` was aborted.
    pub fn renew_onto(&self) -> Option<Signer> {
        match self.phase {
            Phase::Activate => Some(Signer::New),
            Phase::Prepare if self.rolled_back => Some(Signer::Old),
            _ => None,
        }
    }

    /// `prepare`: `new`'s root joins the bundles; the old CA still signs.
    pub fn prepare(&mut self, old: CaInfo, new: CaInfo, now: i64) -> Result<(), StepError> {
        if self.phase != Phase::Idle {
            return Err(self.wrong_phase(
                Step::Prepare,
                "a rotation is in progress: finish it or abort it first",
            ));
        }
        if old.fingerprint == new.fingerprint {
            return Err(StepError::SameCa(new.fingerprint));
        }
        if self
            .retired
            .iter()
            .any(|r| r.fingerprint == new.root_fingerprint && r.not_after > now)
        {
            return Err(StepError::RetiredRoot(new.root_fingerprint));
        }
        self.old = Some(old);
        self.new = Some(new);
        self.rolled_back = false;
        self.enter(Phase::Prepare, now);
        Ok(())
    }

    /// `activate`: the new CA signs. Needs every sidecar to trust its root
    /// (`prepare` confirmed), unless forced.
    pub fn activate(
        &mut self,
        prepared: &Gate,
        force: bool,
        renew_within_seconds: u64,
        now: i64,
    ) -> Result<(), StepError> {
        if self.phase != Phase::Prepare {
            return Err(self.wrong_phase(Step::Activate, "activate follows prepare"));
        }
        check(Step::Activate, prepared, force)?;
        self.rolled_back = false;
        self.renew_within_seconds = renew_within_seconds;
        self.enter(Phase::Activate, now);
        Ok(())
    }

    /// `retire`: the old root leaves the bundles (and is distrusted until
    /// it expires). Needs no sidecar to hold a certificate from the old CA
    /// (`activate` confirmed), unless forced.
    pub fn retire(&mut self, activated: &Gate, force: bool, now: i64) -> Result<(), StepError> {
        if self.phase != Phase::Activate {
            return Err(self.wrong_phase(Step::Retire, "retire follows activate"));
        }
        check(Step::Retire, activated, force)?;
        let (old, new) = self.cas();
        if old.root_fingerprint != new.root_fingerprint {
            let retired = Retired {
                fingerprint: old.root_fingerprint.clone(),
                pem: old.root_pem.clone(),
                not_after: old.root_not_after,
            };
            self.retired
                .retain(|r| r.fingerprint != retired.fingerprint);
            self.retired.push(retired);
        }
        self.enter(Phase::Retire, now);
        Ok(())
    }

    /// The rotation is over once every sidecar ACKed the bundle without
    /// the old root: back to `idle`, the new CA being the CA.
    pub fn finish(&mut self, retired: &Gate, now: i64) -> Result<(), StepError> {
        if self.phase != Phase::Retire {
            return Err(self.wrong_phase(Step::Retire, "the rotation finishes after retire"));
        }
        check(Step::Retire, retired, false)?;
        self.old = None;
        self.new = None;
        self.known.clear();
        self.rolled_back = false;
        self.enter(Phase::Idle, now);
        self.retired.retain(|r| r.not_after > now);
        Ok(())
    }

    /// Rolls the current step back; returns the phase left.
    /// - `prepare` → `idle`: the new root leaves the bundles. Refused while
    ///   a sidecar holds a certificate from the new CA (`new_holders`, after
    ///   an aborted `activate`), unless forced.
    /// - `activate` → `prepare`: the old CA signs again, both roots stay.
    /// - `retire` → `activate`: the old root is back in the bundles.
    pub fn abort(&mut self, new_holders: &Gate, force: bool, now: i64) -> Result<Phase, StepError> {
        let left = self.phase;
        match self.phase {
            Phase::Idle => return Err(StepError::NotRotating),
            Phase::Prepare => {
                check(Step::Abort, new_holders, force)?;
                self.old = None;
                self.new = None;
                self.known.clear();
                self.rolled_back = false;
                self.enter(Phase::Idle, now);
            }
            Phase::Activate => {
                self.rolled_back = true;
                self.enter(Phase::Prepare, now);
            }
            Phase::Retire => {
                let old_root = self.cas().0.root_fingerprint.clone();
                self.retired.retain(|r| r.fingerprint != old_root);
                self.enter(Phase::Activate, now);
            }
        }
        Ok(left)
    }

    /// The old and new CA (outside `idle`).
    fn cas(&self) -> (&CaInfo, &CaInfo) {
        match (&self.old, &self.new) {
            (Some(old), Some(new)) => (old, new),
            _ => unreachable!("a rotation in progress has both CAs"),
        }
    }

    fn enter(&mut self, phase: Phase, now: i64) {
        self.phase = phase;
        self.since = now;
    }

    fn wrong_phase(&self, step: Step, hint: &'static str) -> StepError {
        StepError::WrongPhase {
            step: step.as_str(),
            phase: self.phase.as_str(),
            hint,
        }
    }
}

/// A gate holds unless forced past.
fn check(step: Step, gate: &Gate, force: bool) -> Result<(), StepError> {
    if force || gate.complete() {
        return Ok(());
    }
    Err(StepError::NotConfirmed {
        step: step.as_str(),
        pending: gate.pending.len(),
        total: gate.total,
        names: gate.names(5),
    })
}
