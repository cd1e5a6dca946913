use std::fs;

use time::OffsetDateTime;

use super::*;

struct Fixture {
    data: tempfile::TempDir,
    source: DirQuarantine,
    rx: watch::Receiver<Arc<QuarantineState>>,
    issued: Arc<IssuedCertificates>,
}

fn fixture() -> Fixture {
    let data = tempfile::tempdir().unwrap();
    let issued = Arc::new(IssuedCertificates::open(data.path()).unwrap());
    let (tx, rx) = watch::channel(Arc::new(QuarantineState::default()));
    let source = DirQuarantine::new(
        QuarantineDir::open(data.path()).unwrap(),
        data.path(),
        Resolver {
            issued: issued.clone(),
            sidecars: Arc::new(Sidecars::default()),
            pods: None,
        },
        Arc::new(tx),
        Arc::new(Metrics::new()),
    );
    Fixture {
        data,
        source,
        rx,
        issued,
    }
}

fn entry(target: &str) -> Entry {
    Entry::new(
        target.parse().unwrap(),
        "incident 42",
        "alice",
        OffsetDateTime::now_utc(),
    )
    .unwrap()
}

fn bodies(state: &QuarantineState) -> Vec<QuarantineBody> {
    state
        .resources
        .iter()
        .map(|r| r.decode().unwrap())
        .collect()
}

#[test]
fn each_kind_of_target_revokes_what_it_names() {
    let mut f = fixture();
    let later = OffsetDateTime::now_utc().unix_timestamp() + 3600;
    for (serial, pod) in [("a1", "shop/web-1"), ("b2", "shop/web-2")] {
        f.issued.record(Issued {
            serial: serial.into(),
            spiffe_id: "spiffe://cluster.local/ns/shop/sa/web".into(),
            pod: Some(pod.into()),
            not_after: later,
        });
    }
    let dir = QuarantineDir::open(f.data.path()).unwrap();
    for target in [
        "spiffe://cluster.local/ns/shop/sa/api",
        "shop/web-1",
        "serial:c3",
    ] {
        dir.create(&entry(target)).unwrap();
    }
    f.source.poll();
    let state = f.rx.borrow().clone();
    assert!(state.version > 0);
    let mut found = bodies(&state);
    found.sort_by(|a, b| a.target.cmp(&b.target));
    assert_eq!(found[0].serials, vec!["c3"]);
    assert_eq!(found[1].target, "shop/web-1");
    assert_eq!(found[1].serials, vec!["a1"], "the pod's certificates only");
    assert_eq!(
        found[2].spiffe_ids,
        vec!["spiffe://cluster.local/ns/shop/sa/api"]
    );

    let check = |who: Subject<'_>| state.revoked.check(&who).map(|m| m.by);
    let api = "spiffe://cluster.local/ns/shop/sa/api";
    let web = "spiffe://cluster.local/ns/shop/sa/web";
    assert_eq!(
        check(Subject {
            spiffe_id: Some(api),
            ..Default::default()
        }),
        Some("spiffe_id")
    );
    // Another pod of the web identity, with another certificate: fine.
    let other = Subject {
        spiffe_id: Some(web),
        serial: Some("b2"),
        pod: Some("shop/web-2"),
        ..Default::default()
    };
    assert_eq!(check(other), None);
    let revoked_cert = Subject {
        serial: Some("a1"),
        ..other
    };
    assert_eq!(check(revoked_cert), Some("serial"));
    let named_pod = Subject {
        pod: Some("shop/web-1"),
        ..other
    };
    assert_eq!(check(named_pod), Some("pod"));
    assert_eq!(
        check(Subject {
            serial: Some("c3"),
            ..other
        }),
        Some("serial")
    );
}

#[test]
fn changes_are_published_once_and_audited() {
    let mut f = fixture();
    let dir = QuarantineDir::open(f.data.path()).unwrap();
    f.source.poll();
    let empty = f.rx.borrow().clone();
    assert!(empty.resources.is_empty() && empty.version > 0);

    let web = entry("shop/web");
    dir.create(&web).unwrap();
    f.source.poll();
    let first = f.rx.borrow().clone();
    assert_eq!(first.resources.len(), 1);
    assert!(first.version > empty.version);
    // Nothing changed: nothing published.
    f.source.poll();
    assert!(Arc::ptr_eq(&first, &f.rx.borrow()));

    dir.remove(&web.target).unwrap();
    f.source.poll();
    assert!(f.rx.borrow().resources.is_empty());

    let trail = audit::AuditLog::new(f.data.path()).read().unwrap();
    let actions: Vec<_> = trail.iter().map(|r| r.as_ref().unwrap().action).collect();
    assert_eq!(actions, [audit::Action::Enforced, audit::Action::Lifted]);
    let enforced = trail[0].as_ref().unwrap();
    assert_eq!(enforced.target, "shop/web");
    assert_eq!(enforced.by, audit::CONTROL_PLANE);
    assert_eq!(enforced.reason, "incident 42");
    assert!(enforced.revokes.is_some());
}

#[test]
fn a_damaged_entry_file_keeps_its_quarantine_and_a_new_bad_one_is_ignored() {
    let mut f = fixture();
    let dir = QuarantineDir::open(f.data.path()).unwrap();
    let path = dir
        .create(&entry("spiffe://cluster.local/ns/shop/sa/api"))
        .unwrap();
    f.source.poll();
    let before = f.rx.borrow().clone();
    assert_eq!(before.resources.len(), 1);

    fs::write(
        &path,
        "apiVersion: ward.io/v1alpha1\nkind: Quarantine\nspec: {",
    )
    .unwrap();
    fs::write(dir.path().join("new.yaml"), "kind: Something").unwrap();
    f.source.poll();
    let after = f.rx.borrow().clone();
    assert_eq!(
        after.resources, before.resources,
        "the damaged file lifted nothing"
    );
    assert_eq!(f.source.metrics.quarantine_invalid_files.get(), 2);
}

#[test]
fn a_pods_address_stays_revoked_after_its_stream_is_gone() {
    let mut f = fixture();
    let stream = f.source.resolver.sidecars.next_stream_id();
    f.source
        .resolver
        .sidecars
        .insert(crate::discovery::SidecarStatus {
            stream,
            spiffe_id: "spiffe://cluster.local/ns/shop/sa/web".into(),
            pod: Some("shop/web-1".into()),
            address: "198.18.0.9".into(),
            proxy_version: String::new(),
            connected_since: String::new(),
            policy: Default::default(),
            bundle: Default::default(),
            endpoint: Default::default(),
            service: Default::default(),
        });
    QuarantineDir::open(f.data.path())
        .unwrap()
        .create(&entry("shop/web-1"))
        .unwrap();
    f.source.poll();
    let first = f.rx.borrow().clone();
    assert_eq!(bodies(&first)[0].addresses, vec!["198.18.0.9"]);
    // The control plane closed the pod's stream: the address is no longer
    // known, and stays revoked.
    f.source.resolver.sidecars.remove(stream);
    f.source.poll();
    let after = f.rx.borrow().clone();
    assert_eq!(after.resources, first.resources);
    let who = Subject {
        address: Some("198.18.0.9".parse().unwrap()),
        ..Default::default()
    };
    assert_eq!(after.revoked.check(&who).map(|m| m.by), Some("address"));
}
