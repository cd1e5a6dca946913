use std::fs;

use time::OffsetDateTime;

use super::*;

struct Fixture {
    data: tempfile::TempDir,
    source: QuarantineSource,
    rx: watch::Receiver<Arc<QuarantineState>>,
    issued: Arc<IssuedCertificates>,
}

fn fixture() -> Fixture {
    let data = tempfile::tempdir().unwrap();
    let issued = Arc::new(IssuedCertificates::open(data.path()).unwrap());
    let (tx, rx) = watch::channel(Arc::new(QuarantineState::default()));
    let source = QuarantineSource::new(
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
            ..Default::default()
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
            ..Default::default()
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

/// The fixture's source with Quarantine objects from a watcher (the
/// sender, initially "not listed yet").
fn with_objects(f: Fixture) -> (Fixture, watch::Sender<Option<ObjectEntries>>) {
    let (tx, rx) = watch::channel(None);
    let Fixture {
        data,
        source,
        rx: state,
        issued,
    } = f;
    let source = source.with_objects(rx);
    (
        Fixture {
            data,
            source,
            rx: state,
            issued,
        },
        tx,
    )
}

fn objects(entries: &[Entry], invalid: usize) -> Option<ObjectEntries> {
    Some(ObjectEntries {
        entries: entries
            .iter()
            .map(|e| (e.name.clone(), e.clone()))
            .collect(),
        invalid,
    })
}

#[test]
fn nothing_is_known_until_the_objects_are_listed_then_both_sources_are_in_force() {
    let (mut f, tx) = with_objects(fixture());
    let dir = QuarantineDir::open(f.data.path()).unwrap();
    dir.create(&entry("shop/web-1")).unwrap();
    f.source.poll();
    assert!(
        !f.rx.borrow().is_known(),
        "published before the objects were listed"
    );

    tx.send_replace(objects(
        &[entry("spiffe://cluster.local/ns/shop/sa/api")],
        0,
    ));
    f.source.poll();
    let state = f.rx.borrow().clone();
    assert!(state.is_known());
    let mut targets: Vec<String> = bodies(&state).into_iter().map(|b| b.target).collect();
    targets.sort();
    assert_eq!(
        targets,
        ["shop/web-1", "spiffe://cluster.local/ns/shop/sa/api"]
    );

    // The object is deleted: lifted, and audited as a directory entry is.
    tx.send_replace(objects(&[], 0));
    f.source.poll();
    assert_eq!(bodies(&f.rx.borrow()).len(), 1);
    let trail = audit::AuditLog::new(f.data.path()).read().unwrap();
    let actions: Vec<_> = trail
        .iter()
        .map(|r| {
            let r = r.as_ref().unwrap();
            (r.action, r.target.clone())
        })
        .collect();
    assert!(actions.contains(&(
        audit::Action::Enforced,
        "spiffe://cluster.local/ns/shop/sa/api".into()
    )));
    assert!(actions.contains(&(
        audit::Action::Lifted,
        "spiffe://cluster.local/ns/shop/sa/api".into()
    )));
}

#[test]
fn one_name_for_two_targets_keeps_both_and_a_target_in_both_sources_is_one_entry() {
    let (mut f, tx) = with_objects(fixture());
    let dir = QuarantineDir::open(f.data.path()).unwrap();
    let web = entry("shop/web-1");
    dir.create(&web).unwrap();
    // The same target as an object (same name): one quarantine. Another
    // target under the name of the file's entry: both.
    let mut other = entry("serial:ab");
    other.name = web.name.clone();
    let mut same_elsewhere = entry("shop/web-1");
    same_elsewhere.name = "incident-42".into();
    let same = entry("shop/web-1");
    let mut entries = BTreeMap::new();
    for (key, e) in [("a", &same), ("b", &other), ("c", &same_elsewhere)] {
        entries.insert(key.to_owned(), e.clone());
    }
    tx.send_replace(Some(ObjectEntries {
        entries,
        invalid: 2,
    }));
    f.source.poll();
    let state = f.rx.borrow().clone();
    let names: Vec<&str> = state.resources.iter().map(|r| r.name.as_str()).collect();
    let renamed = format!("{}.2", web.name);
    let mut expected = vec![web.name.as_str(), renamed.as_str(), "incident-42"];
    expected.sort();
    assert_eq!(names, expected);
    let serial = Subject {
        serial: Some("ab"),
        ..Default::default()
    };
    assert!(
        state.revoked.check(&serial).is_some(),
        "the renamed entry is enforced"
    );
    // Damaged files and refused objects are counted together.
    fs::write(dir.path().join("broken.yaml"), "kind: Nonsense").unwrap();
    f.source.poll();
    assert_eq!(f.source.metrics.quarantine_invalid_files.get(), 3);
}
