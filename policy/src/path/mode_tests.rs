use super::*;
use rand::Rng;
use rand::seq::IndexedRandom;

use PathNormalization::*;

fn norm(path: &str, mode: PathNormalization) -> Result<String, PathError> {
    normalize(path, mode).map(Cow::into_owned)
}

#[test]
fn normal_paths_are_borrowed() {
    for path in ["/", "/a/b", "/a/b/", "/a.b/c..d", "/x;y=1/z"] {
        assert!(
            matches!(normalize(path, Base), Ok(Cow::Borrowed(_))),
            "{path}"
        );
    }
}

#[test]
fn base_resolves_dot_segments_and_backslashes() {
    for (raw, want) in [
        ("/public/../admin", "/admin"),
        ("/public/%2e%2e/admin", "/admin"),
        ("/public/%2E%2e/admin", "/admin"),
        ("/public/.%2e/admin", "/admin"),
        ("/admin/%2e%2e/public/x", "/public/x"),
        ("/a/./b/.", "/a/b/"),
        ("/a/b/..", "/a/"),
        ("/../../x", "/x"),
        ("/..", "/"),
        ("\\admin", "/admin"),
        ("/public\\..\\admin", "/admin"),
        ("/%41%7e%2d", "/A~-"),
        ("/a%3fb", "/a%3Fb"),
        // BASE keeps empty segments: `..` removes one.
        ("/a//b", "/a//b"),
        ("/a//../b", "/a/b"),
        // Escaped slashes stay escaped in BASE.
        ("/a%2fb", "/a%2Fb"),
        ("/a%5cb/x/../c", "/a%5Cb/c"),
    ] {
        assert_eq!(norm(raw, Base).as_deref(), Ok(want), "{raw}");
    }
}

#[test]
fn merge_slashes_merges_after_decoding() {
    for (raw, want) in [
        ("//a///b//", "/a/b/"),
        ("/a//../b", "/b"),
        ("//", "/"),
        ("/a%2fb", "/a%2Fb"),
    ] {
        assert_eq!(norm(raw, MergeSlashes).as_deref(), Ok(want), "{raw}");
    }
}

#[test]
fn decode_and_merge_slashes_turns_escaped_slashes_into_separators() {
    for (raw, want) in [
        ("/a%2fb", "/a/b"),
        ("/public%2F..%2Fadmin", "/admin"),
        ("/a%5C%5Cb", "/a/b"),
    ] {
        assert_eq!(
            norm(raw, DecodeAndMergeSlashes).as_deref(),
            Ok(want),
            "{raw}"
        );
    }
}

#[test]
fn ambiguous_and_invalid_paths_are_refused() {
    for mode in [Base, MergeSlashes, DecodeAndMergeSlashes] {
        for (raw, err) in [
            ("/public/..;/admin", PathError::DotSegmentWithParameters),
            (
                "/public/%2e%2e;x=1/admin",
                PathError::DotSegmentWithParameters,
            ),
            ("/public/.;/admin", PathError::DotSegmentWithParameters),
            ("/a/%zz", PathError::InvalidPercentEncoding),
            ("/a/%4", PathError::InvalidPercentEncoding),
            ("admin", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("/a%00", PathError::EncodedNul),
        ] {
            assert_eq!(norm(raw, mode), Err(err), "{raw} in {mode:?}");
        }
    }
}

#[test]
fn the_query_is_kept_as_sent() {
    let target = PathAndQuery::from_static("/public/%2e%2e/admin?next=/../x&a=%2e");
    let got = normalize_target(&target, Base).unwrap().unwrap();
    assert_eq!(got.as_str(), "/admin?next=/../x&a=%2e");
    let target = PathAndQuery::from_static("/ok?x=..");
    assert_eq!(normalize_target(&target, Base), Ok(None));
}

/// Random paths over the characters that make normalization interesting.
fn random_path(rng: &mut impl Rng) -> String {
    const PIECES: &[&str] = &[
        "/", "/", "/", "a", "b", ".", "..", "%2e", "%2E", "%2f", "%5c", "\\", ";", "%41", "%7e",
        "%3f", "%", "%zz", "~", "-", "x y",
    ];
    let len = rng.random_range(0..12);
    let mut path = String::from("/");
    for _ in 0..len {
        path.push_str(PIECES.choose(rng).unwrap());
    }
    path
}

#[test]
fn property_normalization_is_idempotent() {
    let mut rng = rand::rng();
    for _ in 0..20_000 {
        let raw = random_path(&mut rng);
        for mode in [Base, MergeSlashes, DecodeAndMergeSlashes] {
            let Ok(once) = norm(&raw, mode) else {
                continue;
            };
            assert_eq!(
                norm(&once, mode).as_deref(),
                Ok(once.as_str()),
                "{raw:?} in {mode:?}"
            );
            assert!(once.starts_with('/'), "{raw:?} -> {once:?}");
            assert!(
                !once.split('/').any(|s| s == "." || s == ".."),
                "{raw:?} -> {once:?} keeps a dot segment"
            );
        }
    }
}

/// The policy matches the forwarded path with its slashes merged: for the
/// stricter modes that is the forwarded path itself, so a decision is
/// always about the path the application gets.
#[test]
fn property_policy_sees_the_forwarded_path() {
    let mut rng = rand::rng();
    for _ in 0..20_000 {
        let raw = random_path(&mut rng);
        for mode in [Base, MergeSlashes, DecodeAndMergeSlashes] {
            let Ok(forwarded) = norm(&raw, mode) else {
                continue;
            };
            match policy_view(&forwarded) {
                Ok(seen) if mode == Base => {
                    assert_eq!(
                        Ok(&*seen),
                        norm(&forwarded, MergeSlashes).as_deref(),
                        "{raw:?}"
                    )
                }
                Ok(seen) => assert_eq!(seen, forwarded, "{raw:?} in {mode:?}"),
                // The policy refuses escaped slashes; so does its decision.
                Err(e) => assert_eq!(e, PathError::EncodedSlash, "{raw:?} in {mode:?}"),
            }
        }
    }
}
