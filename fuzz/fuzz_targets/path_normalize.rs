//! Request path normalization (`ward_policy::path`): the path the inbound
//! forwards and the policy's view of it. The first byte picks the mode.
#![no_main]
use std::borrow::Cow;

use http::uri::PathAndQuery;
use libfuzzer_sys::fuzz_target;
use ward_policy::path::{PathError, PathNormalization, normalize, normalize_target, policy_view};

const MODES: [PathNormalization; 3] = [
    PathNormalization::Base,
    PathNormalization::MergeSlashes,
    PathNormalization::DecodeAndMergeSlashes,
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(raw) = std::str::from_utf8(rest) else {
        return;
    };
    let mode = MODES[usize::from(selector) % MODES.len()];
    check_path(raw, mode);
    // The request target as hyper hands it over: path and query.
    if let Ok(target) = PathAndQuery::try_from(raw) {
        check_target(&target, mode);
    }
});

fn check_path(raw: &str, mode: PathNormalization) {
    let Ok(once) = normalize(raw, mode) else {
        return;
    };
    assert!(once.starts_with('/'), "{raw:?} -> {once:?}");
    assert!(
        !once.contains('\\'),
        "{raw:?} -> {once:?} keeps a backslash"
    );
    for segment in once.split('/') {
        assert!(
            segment != "." && segment != "..",
            "{raw:?} -> {once:?} keeps a dot segment"
        );
    }
    if mode != PathNormalization::Base {
        assert!(!once.contains("//"), "{raw:?} -> {once:?} keeps `//`");
    }
    // Every escape left is upper-case and not of an unreserved character.
    let b = once.as_bytes();
    for (i, _) in once.match_indices('%') {
        let hex = &b[i + 1..i + 3];
        assert!(
            hex.iter()
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
        );
        let v = u8::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).unwrap();
        assert!(
            !(v.is_ascii_alphanumeric() || b"-._~".contains(&v)),
            "{raw:?} -> {once:?} keeps %{v:02X} escaped"
        );
    }
    // Idempotent, and a normal path costs nothing.
    match normalize(&once, mode) {
        Ok(Cow::Borrowed(twice)) => assert_eq!(twice, once, "{raw:?}"),
        other => panic!("{raw:?} -> {once:?} -> {other:?}"),
    }
    // The policy's view of the forwarded path (slashes merged, escaped
    // ones refused) is what merge-slashes would forward, so a decision is
    // about the path the app gets.
    if once.contains(['?', '#']) {
        // Not a path hyper hands over (the query is split off before).
        return;
    }
    match policy_view(&once) {
        Ok(seen) => {
            if mode == PathNormalization::Base {
                let merged = normalize(&once, PathNormalization::MergeSlashes).unwrap();
                assert_eq!(seen, merged, "{raw:?} -> {once:?}");
            } else {
                assert_eq!(seen, once, "{raw:?} -> {once:?}");
            }
        }
        Err(e) => assert!(
            e == PathError::EncodedSlash && (once.contains("%2F") || once.contains("%5C")),
            "{raw:?} -> {once:?} refused by the policy: {e}"
        ),
    }
}

fn check_target(target: &PathAndQuery, mode: PathNormalization) {
    match normalize_target(target, mode) {
        Ok(None) => {
            assert!(matches!(
                normalize(target.path(), mode),
                Ok(Cow::Borrowed(_))
            ));
        }
        Ok(Some(new)) => {
            assert_eq!(new.query(), target.query(), "{target:?} -> {new:?}");
            assert_eq!(
                Ok(new.path()),
                normalize(target.path(), mode).as_deref(),
                "{target:?}"
            );
            assert_eq!(
                normalize_target(&new, mode),
                Ok(None),
                "{target:?} -> {new:?}"
            );
        }
        Err(e) => assert_eq!(
            Err(e),
            normalize(target.path(), mode).map(drop),
            "{target:?}"
        ),
    }
}
