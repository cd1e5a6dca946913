use super::*;
use SpiffeIdError::*;

#[test]
fn valid_ids_parse_into_parts() {
    let cases = [
        ("spiffe://example.org", "example.org", ""),
        ("spiffe://example.org/workload", "example.org", "/workload"),
        (
            "spiffe://cluster.local/ns/default/sa/web",
            "cluster.local",
            "/ns/default/sa/web",
        ),
        ("spiffe://a_b-c.1/A.b-C_9/x", "a_b-c.1", "/A.b-C_9/x"),
        ("spiffe://td/.../a..b/.x", "td", "/.../a..b/.x"),
        ("spiffe://1.2.3.4/x", "1.2.3.4", "/x"),
    ];
    for (input, td, path) in cases {
        let id = SpiffeId::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(id.trust_domain(), td, "{input}");
        assert_eq!(id.path(), path, "{input}");
        assert_eq!(id.as_str(), input);
        assert_eq!(id.to_string(), input);
    }
}

#[test]
fn each_rule_has_its_own_error() {
    let cases: &[(&str, SpiffeIdError)] = &[
        ("", Empty),
        ("http://example.org/x", WrongScheme),
        ("SPIFFE://example.org/x", WrongScheme),
        ("spiffe:/example.org/x", WrongScheme),
        ("spiffe//example.org", WrongScheme),
        ("example.org/x", WrongScheme),
        ("spiffe://", MissingTrustDomain),
        ("spiffe:///path", MissingTrustDomain),
        ("spiffe://Example.org/x", BadTrustDomainChar('E')),
        ("spiffe://exa mple.org", BadTrustDomainChar(' ')),
        ("spiffe://exämple.org", BadTrustDomainChar('ä')),
        ("spiffe://example.org:8080/x", Port),
        ("spiffe://user@example.org/x", Userinfo),
        ("spiffe://user:pw@example.org/x", Userinfo),
        ("spiffe://example.org/x?a=b", Query),
        ("spiffe://example.org?a", Query),
        ("spiffe://example.org/x#frag", Fragment),
        ("spiffe://example.org/a%20b", PercentEncoding),
        ("spiffe://ex%41mple.org/a", PercentEncoding),
        ("spiffe://example.org/", TrailingSlash),
        ("spiffe://example.org/a/", TrailingSlash),
        ("spiffe://example.org//a", EmptySegment),
        ("spiffe://example.org/a//b", EmptySegment),
        ("spiffe://example.org/.", DotSegment),
        ("spiffe://example.org/..", DotSegment),
        ("spiffe://example.org/a/./b", DotSegment),
        ("spiffe://example.org/a/../b", DotSegment),
        ("spiffe://example.org/a b", BadPathSegmentChar(' ')),
        ("spiffe://example.org/a~b", BadPathSegmentChar('~')),
        ("spiffe://example.org/a:b", BadPathSegmentChar(':')),
        ("spiffe://example.org/a@b", BadPathSegmentChar('@')),
        ("spiffe://example.org/a\nb", BadPathSegmentChar('\n')),
        ("spiffe://example.org/x\n", BadPathSegmentChar('\n')),
        ("spiffe://example.org/ü", BadPathSegmentChar('ü')),
    ];
    for (input, want) in cases {
        assert_eq!(SpiffeId::parse(input).as_ref(), Err(want), "{input:?}");
    }
}

#[test]
fn every_allowed_character_is_accepted_and_every_other_ascii_refused() {
    for b in 0u8..=127 {
        let c = b as char;
        let td = format!("spiffe://a{c}b/x");
        let path = format!("spiffe://td/a{c}b");
        // '/' ends the trust domain, so "a/b" is a valid ID with td "a".
        let td_ok = c == '/' || c.is_ascii_lowercase() || c.is_ascii_digit() || "-._".contains(c);
        let path_ok = c.is_ascii_alphanumeric() || "-._".contains(c) || c == '/';
        assert_eq!(
            SpiffeId::parse(&td).is_ok(),
            td_ok,
            "trust domain char {c:?}"
        );
        assert_eq!(SpiffeId::parse(&path).is_ok(), path_ok, "path char {c:?}");
    }
}

#[test]
fn length_limits_are_enforced_at_the_exact_boundary() {
    let prefix = "spiffe://example.org/";
    let max = format!("{prefix}{}", "a".repeat(MAX_ID_LEN - prefix.len()));
    assert_eq!(max.len(), 2048);
    assert!(SpiffeId::parse(&max).is_ok());
    let over = format!("{max}a");
    assert_eq!(SpiffeId::parse(&over), Err(TooLong(2049)));

    let td255 = "a".repeat(255);
    assert!(SpiffeId::parse(&format!("spiffe://{td255}/x")).is_ok());
    let td256 = "a".repeat(256);
    assert_eq!(
        SpiffeId::parse(&format!("spiffe://{td256}/x")),
        Err(TrustDomainTooLong(256))
    );
}

#[test]
fn istio_principal_round_trips() {
    let id = SpiffeId::from_istio_principal("cluster.local/ns/prod/sa/api").unwrap();
    assert_eq!(id.as_str(), "spiffe://cluster.local/ns/prod/sa/api");
    assert_eq!(id.istio_principal(), "cluster.local/ns/prod/sa/api");
    let full = SpiffeId::from_istio_principal("spiffe://cluster.local/ns/a/sa/b").unwrap();
    assert_eq!(full.namespace(), Some("a"));
    assert!(SpiffeId::from_istio_principal("cluster.local/ns/a/sa/").is_err());
    assert!(SpiffeId::from_istio_principal("").is_err());
}

#[test]
fn namespace_and_service_account_only_for_that_shape() {
    let id = SpiffeId::for_service_account("cluster.local", "prod", "api").unwrap();
    assert_eq!(id.as_str(), "spiffe://cluster.local/ns/prod/sa/api");
    assert_eq!(id.namespace(), Some("prod"));
    assert_eq!(id.service_account(), Some("api"));
    for other in [
        "spiffe://td",
        "spiffe://td/ns/prod",
        "spiffe://td/ns/prod/sa/api/extra",
        "spiffe://td/sa/api/ns/prod",
        "spiffe://td/x/prod/sa/api",
    ] {
        let id = SpiffeId::parse(other).unwrap();
        assert_eq!(id.namespace(), None, "{other}");
        assert_eq!(id.service_account(), None, "{other}");
    }
    assert!(SpiffeId::for_service_account("cluster.local", "bad ns", "x").is_err());
}

/// Found by fuzzing (fuzz/fuzz_targets/attest_token.rs): a service-account
/// token whose namespace claim held a `/` was turned into an ID with more
/// segments (`/ns/prod/sa/x/sa/y`), which prefix principals such as
/// `cluster.local/ns/prod/*` match. Each part is one segment.
#[test]
fn service_account_parts_are_single_segments() {
    for (td, ns, sa) in [
        ("cluster.local", "prod/sa/x", "y"),
        ("cluster.local", "prod", "x/sa/y"),
        ("cluster.local/ns", "prod", "x"),
    ] {
        assert_eq!(
            SpiffeId::for_service_account(td, ns, sa),
            Err(SpiffeIdError::BadPathSegmentChar('/')),
            "{td} {ns} {sa}"
        );
    }
    assert!(SpiffeId::for_service_account("cluster.local", "prod", "x.y-z").is_ok());
}
