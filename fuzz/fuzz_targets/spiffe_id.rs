//! SPIFFE ID parsing (`ward_identity::SpiffeId`): a parsed ID re-serializes
//! to the same string, its parts add up to it, and the Istio principal form
//! converts both ways.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ward_identity::SpiffeId;
use ward_identity::spiffe_id::{MAX_ID_LEN, MAX_TRUST_DOMAIN_LEN, validate_path};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match SpiffeId::parse(s) {
        Ok(id) => check(s, &id),
        Err(_) => assert!(s.parse::<SpiffeId>().is_err()),
    }
    // The principal form as policies write it (no scheme).
    if let Ok(id) = SpiffeId::from_istio_principal(s) {
        let full = if s.starts_with("spiffe://") {
            s.to_owned()
        } else {
            format!("spiffe://{s}")
        };
        assert_eq!(id.as_str(), full);
        check(&full, &id);
    }
});

fn check(s: &str, id: &SpiffeId) {
    assert_eq!(id.as_str(), s);
    assert_eq!(id.to_string(), s);
    assert_eq!(SpiffeId::parse(id.as_str()).as_ref(), Ok(id));
    assert!(s.len() <= MAX_ID_LEN);
    assert!(!s.contains(['?', '#', '%']));
    let td = id.trust_domain();
    assert!(!td.is_empty() && td.len() <= MAX_TRUST_DOMAIN_LEN);
    assert!(
        td.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b".-_".contains(&c))
    );
    assert_eq!(format!("spiffe://{td}{}", id.path()), s);
    assert_eq!(validate_path(id.path()), Ok(()));
    for segment in id.path().split('/').skip(1) {
        assert!(!segment.is_empty() && segment != "." && segment != "..");
    }
    assert_eq!(
        SpiffeId::from_istio_principal(id.istio_principal()).as_ref(),
        Ok(id)
    );
    match (id.namespace(), id.service_account()) {
        (Some(ns), Some(sa)) => {
            assert_eq!(id.path(), format!("/ns/{ns}/sa/{sa}"));
            assert_eq!(SpiffeId::for_service_account(td, ns, sa).as_ref(), Ok(id));
        }
        (None, None) => {}
        other => panic!("{s:?}: {other:?}"),
    }
}
