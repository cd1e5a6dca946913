use super::*;

fn n(p: &str) -> Result<String, PathError> {
    policy_view(p).map(|c| c.into_owned())
}

#[test]
fn normal_paths_are_borrowed() {
    for p in ["/", "/a", "/a/b/", "/a.b/c~d", "/ünï"] {
        assert!(matches!(policy_view(p), Ok(Cow::Borrowed(_))), "{p}");
    }
    assert!(matches!(policy_view("/a?x=1"), Ok(Cow::Borrowed("/a"))));
}

#[test]
fn normalizes() {
    let cases = [
        ("/public/../admin", "/admin"),
        ("/public/%2e%2e/admin", "/admin"),
        ("/public/%2E%2E/admin", "/admin"),
        ("//admin", "/admin"),
        ("/a//b///c", "/a/b/c"),
        ("\\admin", "/admin"),
        ("/a\\b", "/a/b"),
        ("/admin?x=/../y", "/admin"),
        ("/admin#frag", "/admin"),
        ("/../../admin", "/admin"),
        ("/a/./b", "/a/b"),
        ("/a/b/..", "/a/"),
        ("/a/.", "/a/"),
        ("/..", "/"),
        ("/%61dmin", "/admin"),
        ("/a%3ab", "/a%3Ab"),
        ("/a%20b", "/a%20b"),
        ("/a/", "/a/"),
    ];
    for (input, want) in cases {
        assert_eq!(n(input).as_deref(), Ok(want), "{input}");
    }
}

#[test]
fn refuses() {
    assert_eq!(n("admin"), Err(PathError::NotAbsolute));
    assert_eq!(n(""), Err(PathError::NotAbsolute));
    assert_eq!(n("?x"), Err(PathError::NotAbsolute));
    assert_eq!(n("/a%2Fb"), Err(PathError::EncodedSlash));
    assert_eq!(n("/a%2fb"), Err(PathError::EncodedSlash));
    assert_eq!(n("/a%5Cb"), Err(PathError::EncodedSlash));
    assert_eq!(n("/a%zz"), Err(PathError::InvalidPercentEncoding));
    assert_eq!(n("/a%2"), Err(PathError::InvalidPercentEncoding));
    assert_eq!(n("/a%00b"), Err(PathError::EncodedNul));
    assert_eq!(n("/a/..;/b"), Err(PathError::DotSegmentWithParameters));
}
