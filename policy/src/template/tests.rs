use super::*;

fn t(s: &str) -> PathTemplate {
    PathTemplate::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// The examples of the `Operation.paths` reference
/// (istio.io/latest/docs/reference/config/security/authorization-policy/#Operation).
#[test]
fn istio_reference_examples() {
    assert!(t("/foo/{*}").matches("/foo/bar"));
    assert!(!t("/foo/{*}").matches("/foo/bar/baz"));
    for p in ["/foo/bar/", "/foo/bar/baz.txt", "/foo//"] {
        // `/foo/{**}/` "matches /foo/bar/, /foo/bar/baz.txt, and /foo//"
        // (`/foo/bar/baz.txt` is in the reference, but the template ends
        // with a literal `/`, so neither Envoy's regex nor this matcher
        // accepts it: the reference example is wrong there).
        let want = p != "/foo/bar/baz.txt";
        assert_eq!(t("/foo/{**}/").matches(p), want, "{p}");
    }
    assert!(!t("/foo/{**}/").matches("/foo/bar"));
    assert!(t("/foo/{*}/bar/{**}").matches("/foo/buzz/bar/"));
    assert!(t("/foo/{*}/bar/{**}").matches("/foo/buzz/bar/baz"));
    for bad in ["/*/baz/{*}", "/**/baz/{*}", "/{**}/foo/{*}", "/foo/{*}.txt"] {
        assert!(PathTemplate::parse(bad).is_err(), "{bad}");
    }
}

/// Istio's `TestCheckValidPathTemplate` (pkg/config/security/security_test.go).
#[test]
fn istio_validation_cases() {
    for ok in ["/{*}/foo", "/{*}/foo/", "/foo/{**}/bar", "/foo/bar/{**}"] {
        assert!(PathTemplate::parse(ok).is_ok(), "{ok}");
    }
    for bad in [
        "/foo/{**}buzz/bar",
        "/{*}/foo/{}/bar",
        "/foo/{*}/bar/*",
        "/foo/{*}/bar/**/buzz",
        "/foo/{buzz}/bar/{**}",
        "/foo/{buzz=*}/bar/{**}",
        "/{*}/foo/{buzz=**}/bar",
        "/{*}/foo/{**}bar",
        "/{*}/foo/{*}.txt",
        "/{*}/foo/{temp",
        "/{*}/foo/temp}/bar",
        "/{*}/foo/temp}/*",
        "/{**}/foo/temp/{*}/bar",
        "/{**}/{**}",
        "/{**}/foo/temp/{**}/bar",
        "/{*}/foo/?abc",
    ] {
        assert!(PathTemplate::parse(bad).is_err(), "{bad}");
    }
}

/// Envoy refuses what Istio's check lets through: no leading `/`, `//`.
#[test]
fn envoy_pattern_rules() {
    let e = PathTemplate::parse("{*}/foo").unwrap_err();
    assert!(e.contains("must start with `/`"), "{e}");
    let e = PathTemplate::parse("/foo//{*}").unwrap_err();
    assert!(e.contains("empty segment"), "{e}");
    let e = PathTemplate::parse("//{*}").unwrap_err();
    assert!(e.contains("empty segment"), "{e}");
    let e = PathTemplate::parse("/a b/{*}").unwrap_err();
    assert!(e.contains("`a b`") && e.contains("byte 0x20"), "{e}");
    let e = PathTemplate::parse("/{**}/{*}").unwrap_err();
    assert!(e.contains("last operator"), "{e}");
    let e = PathTemplate::parse("/x*/{*}").unwrap_err();
    assert!(e.contains("`*` is not allowed"), "{e}");
}

/// Envoy: `*` is `[pchar]+` (one non-empty segment), `**` is
/// `[pchar/]*` (uri_template_internal.cc, `toRegexPattern`).
#[test]
fn operator_semantics() {
    let one = t("/api/{*}/items");
    assert!(one.matches("/api/v1/items"));
    assert!(!one.matches("/api//items"));
    assert!(!one.matches("/api/v1/v2/items"));
    assert!(!one.matches("/api/v1/items/"));
    assert!(!one.matches("/api/v*1/items"), "`*` is not a pchar");
    assert!(!one.matches("/api/ü/items"), "non-ASCII is not a pchar");
    assert!(one.matches("/api/a%20b/items"));

    let any = t("/api/{**}");
    assert!(any.matches("/api/"));
    assert!(any.matches("/api/a/b/c"));
    assert!(!any.matches("/api"));
    assert!(!any.matches("/apix/a"));

    let any_then_literal = t("/{**}/edit");
    assert!(any_then_literal.matches("/x/y/edit"));
    assert!(any_then_literal.matches("/a/edit"));
    assert!(!any_then_literal.matches("/edit"));
    assert!(!any_then_literal.matches("/a/edit/"));
    assert!(!any_then_literal.matches("/a/b\"/edit"));

    let root = t("/{**}");
    assert!(root.matches("/"));
    assert!(root.matches("/a/b"));

    let trailing = t("/{*}/");
    assert!(trailing.matches("/a/"));
    assert!(!trailing.matches("/a"));

    let mixed = t("/v1/{*}/users/{*}/{**}/x.json");
    assert!(mixed.matches("/v1/org/users/7/a/b/x.json"));
    assert!(mixed.matches("/v1/org/users/7//x.json"));
    assert!(!mixed.matches("/v1/org/users/7/x.json"));
}

#[test]
fn accessors() {
    let x = t("/a/b/{*}/c/{**}");
    assert_eq!(x.literal_prefix(), "/a/b/");
    assert_eq!(x.as_str(), "/a/b/{*}/c/{**}");
    assert_eq!(x.to_string(), "/a/b/{*}/c/{**}");
    assert_eq!(x.sample(), "/a/b/x/c/x");
    assert_eq!(t("/{*}").literal_prefix(), "/");
    assert!(is_template("/a/{*}"));
    assert!(is_template("/a/{**}"));
    assert!(!is_template("/a/{x}"));
    assert!(!is_template("/a/*"));
}
