//! Which sidecars confirmed which step of a rotation, computed from what
//! each one acknowledged and which CA signed the certificate it holds. No
//! I/O: [`super::Rotation`] gathers the [`SidecarView`]s.

use serde::Serialize;

use super::state::{Phase, RotationState};

/// One sidecar that must confirm, as the rotation sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarView {
    /// Its holder key (`namespace/pod`, or `spiffe-id@address`).
    pub key: String,
    pub connected: bool,
    /// The version of the CA's trust domain's bundle it ACKed (connected
    /// sidecars only).
    pub bundle_acked: Option<String>,
    /// The fingerprint of the CA that signed its newest known certificate.
    pub signer: Option<String>,
}

/// One step's confirmations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Gate {
    pub total: usize,
    pub confirmed: usize,
    /// Who holds it back, and why.
    pub pending: Vec<Pending>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pending {
    pub sidecar: String,
    pub reason: String,
}

impl Gate {
    pub fn complete(&self) -> bool {
        self.pending.is_empty()
    }

    /// The first `at_most` sidecars holding it back, and how many more.
    pub fn names(&self, at_most: usize) -> String {
        let mut names: Vec<String> = self
            .pending
            .iter()
            .take(at_most)
            .map(|p| format!("{} ({})", p.sidecar, p.reason))
            .collect();
        if self.pending.len() > at_most {
            names.push(format!("and {} more", self.pending.len() - at_most));
        }
        names.join(", ")
    }

    fn add(&mut self, sidecar: &str, confirmed: Result<(), String>) {
        self.total += 1;
        match confirmed {
            Ok(()) => self.confirmed += 1,
            Err(reason) => self.pending.push(Pending {
                sidecar: sidecar.to_owned(),
                reason,
            }),
        }
    }
}

/// Every step's gate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// Every sidecar ACKed a bundle holding the new root.
    pub prepare: Gate,
    /// Every sidecar holds a certificate from the new CA.
    pub activate: Gate,
    /// Every sidecar ACKed the bundle without the old root.
    pub retire: Gate,
    /// Sidecars holding a certificate from the new CA (what aborting
    /// `prepare` must wait for).
    pub new_holders: Gate,
}

/// The gates of `state` given the bundle version sidecars should hold now
/// (`desired`) and every sidecar that must confirm.
pub fn gates(state: &RotationState, desired: Option<&str>, sidecars: &[SidecarView]) -> Progress {
    let mut progress = Progress::default();
    let (Some(old), Some(new)) = (&state.old, &state.new) else {
        return progress;
    };
    for s in sidecars {
        let acked = acknowledged(s, desired);
        match state.phase {
            Phase::Prepare | Phase::Activate => progress.prepare.add(&s.key, acked.clone()),
            Phase::Retire => {
                progress.prepare.add(&s.key, Ok(()));
                progress.retire.add(&s.key, acked);
            }
            Phase::Idle => {}
        }
        let on_new = match s.signer.as_deref() {
            Some(fp) if fp == new.fingerprint => Ok(()),
            Some(fp) if fp == old.fingerprint => Err(holds("the old CA", s.connected)),
            Some(_) => Err(holds("another CA", s.connected)),
            None => Err("no record of its certificate".to_owned()),
        };
        if on_new.is_ok() {
            progress
                .new_holders
                .add(&s.key, Err(holds("the new CA", s.connected)));
        } else {
            progress.new_holders.add(&s.key, Ok(()));
        }
        progress.activate.add(&s.key, on_new);
    }
    progress
}

fn acknowledged(s: &SidecarView, desired: Option<&str>) -> Result<(), String> {
    if !s.connected {
        return Err("disconnected from the control plane".to_owned());
    }
    match (s.bundle_acked.as_deref(), desired) {
        (Some(acked), Some(desired)) if acked == desired => Ok(()),
        (None, _) => Err("has not acknowledged any trust bundle".to_owned()),
        _ => Err("has not acknowledged the current trust bundle".to_owned()),
    }
}

fn holds(ca: &str, connected: bool) -> String {
    match connected {
        true => format!("holds a certificate from {ca}"),
        false => format!("disconnected; its last certificate is from {ca}"),
    }
}
