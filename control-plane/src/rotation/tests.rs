//! The phase state machine and its gates, without I/O.

use super::progress::{Gate, SidecarView, gates};
use super::state::{CaInfo, Phase, RotationState, StepError};
use super::*;

const NOW: i64 = 1_800_000_000;

fn ca(name: &str, root: &str) -> CaInfo {
    CaInfo {
        fingerprint: format!("{name}-fp"),
        not_after: NOW + 86_400,
        root_fingerprint: format!("{root}-root"),
        root_pem: format!("<{root} root>"),
        root_not_after: NOW + 86_400,
    }
}

fn done() -> Gate {
    Gate {
        total: 2,
        confirmed: 2,
        pending: Vec::new(),
    }
}

fn waiting() -> Gate {
    Gate {
        total: 2,
        confirmed: 1,
        pending: vec![Pending {
            sidecar: "shop/web-1".into(),
            reason: "disconnected from the control plane".into(),
        }],
    }
}

fn prepared() -> RotationState {
    let mut state = RotationState::default();
    state
        .prepare(ca("old", "old"), ca("new", "new"), NOW)
        .unwrap();
    state
}

#[test]
fn a_full_rotation_goes_through_every_phase_and_swaps_roots_and_signer() {
    let mut state = RotationState::default();
    assert_eq!(state.signer(), Which::Old);
    assert!(state.roots().is_empty(), "idle: the CA's own root");

    state
        .prepare(ca("old", "old"), ca("new", "new"), NOW)
        .unwrap();
    assert_eq!(state.phase, Phase::Prepare);
    assert_eq!(state.roots(), ["<old root>", "<new root>"]);
    assert_eq!(state.signer(), Which::Old);
    assert_eq!(state.renew_onto(), None);

    state.activate(&done(), false, 60, NOW + 1).unwrap();
    assert_eq!(state.phase, Phase::Activate);
    assert_eq!(state.signer(), Which::New);
    assert_eq!(state.roots(), ["<old root>", "<new root>"], "both trusted");
    assert_eq!(state.renew_onto(), Some(Which::New));

    state.retire(&done(), false, NOW + 2).unwrap();
    assert_eq!(state.phase, Phase::Retire);
    assert_eq!(state.roots(), ["<new root>"]);
    assert_eq!(state.distrusted(NOW + 2), ["<old root>"]);
    assert_eq!(state.renew_onto(), None);

    state.finish(&done(), NOW + 3).unwrap();
    assert_eq!(state.phase, Phase::Idle);
    assert_eq!(state.since, NOW + 3);
    assert!(state.old.is_none() && state.new.is_none());
    assert_eq!(
        state.distrusted(NOW + 3),
        ["<old root>"],
        "the old root stays distrusted until it expires"
    );
    assert!(state.distrusted(NOW + 86_401).is_empty());
}

#[test]
fn each_step_waits_for_every_sidecar_unless_forced() {
    let mut state = prepared();
    let err = state.activate(&waiting(), false, 60, NOW).unwrap_err();
    assert!(
        matches!(&err, StepError::NotConfirmed { step: "activate", pending: 1, total: 2, names } if names.contains("shop/web-1")),
        "{err}"
    );
    assert_eq!(state.phase, Phase::Prepare, "nothing changed");
    state.activate(&waiting(), true, 60, NOW).unwrap();

    let before = state.clone();
    let err = state.retire(&waiting(), false, NOW).unwrap_err();
    assert!(matches!(
        err,
        StepError::NotConfirmed { step: "retire", .. }
    ));
    assert_eq!(state, before, "nothing changed");
    state.retire(&done(), false, NOW).unwrap();

    // The end is never forced: it waits for every ACK.
    assert!(state.finish(&waiting(), NOW).is_err());
    assert_eq!(state.phase, Phase::Retire);
}

#[test]
fn steps_out_of_order_are_refused_with_the_phase() {
    let mut idle = RotationState::default();
    assert!(matches!(
        idle.activate(&done(), true, 60, NOW),
        Err(StepError::WrongPhase {
            step: "activate",
            phase: "idle",
            ..
        })
    ));
    assert!(matches!(
        idle.retire(&done(), true, NOW),
        Err(StepError::WrongPhase { .. })
    ));
    assert_eq!(idle.abort(&done(), false, NOW), Err(StepError::NotRotating));
    let mut state = prepared();
    assert!(matches!(
        state.prepare(ca("x", "x"), ca("y", "y"), NOW),
        Err(StepError::WrongPhase {
            step: "prepare",
            phase: "prepare",
            ..
        })
    ));
    assert!(matches!(
        state.retire(&done(), true, NOW),
        Err(StepError::WrongPhase { .. })
    ));
    assert_eq!(
        RotationState::default().prepare(ca("a", "r"), ca("a", "r"), NOW),
        Err(StepError::SameCa("a-fp".into()))
    );
}

#[test]
fn abort_rolls_back_each_step() {
    // activate → prepare: the old CA signs again, both roots stay, and
    // sidecars on the new CA are asked back.
    let mut state = prepared();
    state.activate(&done(), false, 30, NOW).unwrap();
    assert_eq!(state.abort(&waiting(), false, NOW), Ok(Phase::Activate));
    assert_eq!(state.phase, Phase::Prepare);
    assert_eq!(state.signer(), Which::Old);
    assert_eq!(state.roots(), ["<old root>", "<new root>"]);
    assert_eq!(state.renew_onto(), Some(Which::Old));

    // prepare → idle refuses while a sidecar holds a new-CA certificate.
    let err = state.abort(&waiting(), false, NOW).unwrap_err();
    assert!(matches!(err, StepError::NotConfirmed { step: "abort", .. }));
    assert_eq!(state.abort(&done(), false, NOW), Ok(Phase::Prepare));
    assert_eq!(state.phase, Phase::Idle);
    assert!(state.roots().is_empty() && state.new.is_none());

    // retire → activate: the old root is back and no longer distrusted.
    let mut state = prepared();
    state.activate(&done(), false, 30, NOW).unwrap();
    state.retire(&done(), false, NOW).unwrap();
    assert_eq!(state.abort(&done(), false, NOW), Ok(Phase::Retire));
    assert_eq!(state.phase, Phase::Activate);
    assert_eq!(state.roots(), ["<old root>", "<new root>"]);
    assert!(state.distrusted(NOW).is_empty());
}

#[test]
fn an_intermediate_under_the_same_root_keeps_that_root() {
    let mut state = RotationState::default();
    state
        .prepare(ca("int-1", "corp"), ca("int-2", "corp"), NOW)
        .unwrap();
    assert_eq!(state.roots(), ["<corp root>"]);
    state.activate(&done(), false, 30, NOW).unwrap();
    state.retire(&done(), false, NOW).unwrap();
    assert_eq!(state.roots(), ["<corp root>"]);
    assert!(state.distrusted(NOW).is_empty(), "the root is not retired");
}

#[test]
fn a_retired_root_cannot_come_back_while_distrusted() {
    let mut state = prepared();
    state.activate(&done(), false, 30, NOW).unwrap();
    state.retire(&done(), false, NOW).unwrap();
    state.finish(&done(), NOW).unwrap();
    assert_eq!(
        state.prepare(ca("new", "new"), ca("again", "old"), NOW),
        Err(StepError::RetiredRoot("old-root".into()))
    );
}

#[test]
fn the_state_survives_a_round_trip_through_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = store::RotationDir::open(dir.path()).unwrap();
    assert_eq!(store.load_state().unwrap(), RotationState::default());
    let mut state = prepared();
    state.known.insert(
        "shop/web-1".into(),
        Known {
            spiffe_id: "spiffe://cluster.local/ns/shop/sa/web".into(),
            pod: Some("shop/web-1".into()),
            address: "198.18.0.5".into(),
            not_after: NOW,
        },
    );
    store.save_state(&state).unwrap();
    assert_eq!(store.load_state().unwrap(), state);
    std::fs::write(dir.path().join("rotation/state.json"), "{").unwrap();
    assert!(store.load_state().is_err(), "a damaged state is an error");
}

fn view(key: &str, connected: bool, acked: Option<&str>, signer: Option<&str>) -> SidecarView {
    SidecarView {
        key: key.into(),
        connected,
        bundle_acked: acked.map(str::to_owned),
        signer: signer.map(str::to_owned),
    }
}

#[test]
fn gates_count_acknowledgements_and_certificates_and_name_who_holds_back() {
    let mut state = prepared();
    let sidecars = [
        view("a", true, Some("v2"), Some("old-fp")),
        view("b", true, Some("v1"), Some("old-fp")),
        view("c", false, None, Some("old-fp")),
    ];
    let progress = gates(&state, Some("v2"), &sidecars);
    assert_eq!((progress.prepare.confirmed, progress.prepare.total), (1, 3));
    let names: Vec<&str> = progress
        .prepare
        .pending
        .iter()
        .map(|p| p.sidecar.as_str())
        .collect();
    assert_eq!(names, ["b", "c"]);
    assert!(progress.prepare.pending[1].reason.contains("disconnected"));
    // No bundle of this phase is in force yet: nobody confirmed.
    assert_eq!(gates(&state, None, &sidecars).prepare.confirmed, 0);

    state.activate(&done(), true, 30, NOW).unwrap();
    let sidecars = [
        view("a", true, Some("v3"), Some("new-fp")),
        view("b", true, Some("v3"), Some("old-fp")),
        view("c", false, None, Some("new-fp")),
        view("d", true, Some("v3"), None),
    ];
    let progress = gates(&state, Some("v3"), &sidecars);
    assert_eq!(progress.activate.confirmed, 2);
    let reasons: Vec<(&str, &str)> = progress
        .activate
        .pending
        .iter()
        .map(|p| (p.sidecar.as_str(), p.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        [
            ("b", "holds a certificate from the old CA"),
            ("d", "no record of its certificate")
        ]
    );
    assert_eq!(progress.new_holders.pending.len(), 2, "a and c");
}

#[test]
fn steps_are_taken_from_the_control_planes_own_host_only() {
    let addr = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
    let local = addr("198.18.0.1:15014");
    assert!(admin::same_host(addr("127.0.0.1:40000"), local));
    assert!(admin::same_host(addr("198.18.0.1:40000"), local));
    assert!(admin::same_host(addr("[::1]:40000"), addr("[::1]:15014")));
    assert!(!admin::same_host(addr("198.18.0.7:40000"), local));
}

#[test]
fn the_control_plane_keeps_its_own_certificate_from_the_old_ca_until_retire() {
    let mut state = prepared();
    assert_eq!(state.serving_signer(), Which::Old);
    state.activate(&done(), false, 30, NOW).unwrap();
    assert_eq!(state.serving_signer(), Which::Old);
    state.retire(&done(), false, NOW).unwrap();
    assert_eq!(state.serving_signer(), Which::New);
}

#[test]
fn a_step_request_needs_who_and_why_and_its_own_options() {
    let request = |step| StepRequest {
        step,
        by: "alice".into(),
        reason: "yearly".into(),
        force: false,
        import: None,
        renew_within_seconds: None,
    };
    assert!(validate(&request(Step::Prepare)).is_ok());
    let mut no_reason = request(Step::Prepare);
    no_reason.reason = " ".into();
    assert!(
        matches!(validate(&no_reason), Err(RotationError::BadRequest(m)) if m.contains("reason"))
    );
    let mut window = request(Step::Retire);
    window.renew_within_seconds = Some(60);
    assert!(validate(&window).is_err(), "a window is for activate");
    let mut zero = request(Step::Activate);
    zero.renew_within_seconds = Some(0);
    assert!(validate(&zero).is_err());
    let mut import = request(Step::Activate);
    import.import = Some(ImportedCa {
        chain_pem: String::new(),
        key_pem: String::new(),
    });
    assert!(validate(&import).is_err(), "a CA is imported by prepare");
}

/// A control plane's rotation with no sidecar, through its data
/// directory: each step switches the signer and the published roots, a
/// "restart" (loading the directory again) resumes in the same phase,
/// and the end makes the new CA the one in `ca/`, recorded in the audit
/// trail.
struct Plane {
    rotation: Arc<Rotation>,
    signer: Signer,
    own: watch::Receiver<Arc<OwnRoots>>,
}

fn start(data: &std::path::Path) -> Plane {
    let dir = DataDir::open(data).unwrap();
    let loaded = load(&dir, "cluster.local").unwrap();
    let signer: Signer = Arc::new(ArcSwap::new(loaded.signer()));
    let serving: Signer = Arc::new(ArcSwap::new(loaded.serving_signer()));
    let (own_tx, own) = watch::channel(Arc::new(loaded.own_roots()));
    let (_bundles_tx, bundles) = watch::channel(Arc::new(
        crate::trust_bundles::load("cluster.local", &loaded.own_roots().roots_pem, None).unwrap(),
    ));
    let rotation = Rotation::new(
        loaded,
        Wiring {
            trust_domain: "cluster.local".into(),
            data: dir,
            signer: signer.clone(),
            own_roots: own_tx,
            bundles,
            sidecars: Arc::new(Sidecars::default()),
            issued: Arc::new(IssuedCertificates::open(data).unwrap()),
            metrics: Arc::new(Metrics::new()),
            serving_signer: serving,
            reissue: Arc::new(Notify::new()),
            kubernetes: false,
        },
    );
    Plane {
        rotation,
        signer,
        own,
    }
}

fn ask(plane: &Plane, step: Step) -> Result<RotationStatus, RotationError> {
    plane.rotation.step(StepRequest {
        step,
        by: "alice".into(),
        reason: "unit test".into(),
        force: false,
        import: None,
        renew_within_seconds: (step == Step::Activate).then_some(30),
    })
}

#[test]
fn a_rotation_resumes_after_a_restart_and_ends_with_the_new_ca_in_ca_dir() {
    let data = tempfile::tempdir().unwrap();
    let plane = start(data.path());
    let old = plane.signer.load().fingerprint_sha256();
    let old_root = plane.signer.load().bundle_pem();
    assert_eq!(plane.rotation.status().phase, Phase::Idle);

    let prepared = ask(&plane, Step::Prepare).unwrap();
    let new = prepared.new.clone().unwrap();
    assert_eq!(
        plane.signer.load().fingerprint_sha256(),
        old,
        "the old CA signs"
    );
    let roots = plane.own.borrow().roots_pem.clone();
    assert!(roots.starts_with(&old_root) && roots.contains(&new.root_pem));
    assert!(matches!(
        ask(&plane, Step::Retire),
        Err(RotationError::Step(StepError::WrongPhase { .. }))
    ));

    ask(&plane, Step::Activate).unwrap();
    assert_eq!(plane.signer.load().fingerprint_sha256(), new.fingerprint);
    let renew = plane.own.borrow().renew.clone().expect("a renewal request");
    assert_eq!(renew.within_seconds, 30);
    drop(plane);

    // Restart: the same phase, CAs and signer.
    let plane = start(data.path());
    let resumed = plane.rotation.status();
    assert_eq!(resumed.phase, Phase::Activate);
    assert_eq!(resumed.new, Some(new.clone()));
    assert_eq!(plane.signer.load().fingerprint_sha256(), new.fingerprint);

    ask(&plane, Step::Retire).unwrap();
    assert_eq!(plane.own.borrow().roots_pem, new.root_pem);
    assert_eq!(plane.own.borrow().distrusted_pem, old_root);
    // No sidecar to wait for: the next look finishes it.
    plane.rotation.tick();
    assert_eq!(plane.rotation.status().phase, Phase::Idle);
    let in_ca_dir = DataDir::open(data.path())
        .unwrap()
        .load_ca(Some("cluster.local"))
        .unwrap();
    assert_eq!(in_ca_dir.fingerprint_sha256(), new.fingerprint);
    assert_eq!(
        plane.own.borrow().distrusted_pem,
        old_root,
        "still distrusted"
    );
    assert!(!data.path().join("rotation/next-key.pem").exists());

    let actions: Vec<Action> = AuditLog::new(data.path())
        .read()
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap().action)
        .collect();
    assert_eq!(
        actions,
        [
            Action::CaPrepare,
            Action::CaActivate,
            Action::CaRetire,
            Action::CaRotated
        ]
    );
    // And after one more restart, the new CA is simply the CA.
    drop(plane);
    let plane = start(data.path());
    assert_eq!(plane.signer.load().fingerprint_sha256(), new.fingerprint);
    assert_eq!(plane.rotation.status().phase, Phase::Idle);
}
