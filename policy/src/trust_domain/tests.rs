use super::*;

fn expand(td: &str, aliases: &[&str], principals: &[&str]) -> Vec<String> {
    let aliases = TrustDomainAliases::new(aliases).unwrap();
    let bundle = Bundle::new(td, &aliases);
    principals
        .iter()
        .flat_map(|p| bundle.expand(&StrMatch::parse(p).unwrap()))
        .map(|m| m.to_string())
        .collect()
}

/// Istio's `TestReplaceTrustDomainAliases`
/// (pilot/pkg/security/trustdomain/bundle_test.go), case by case.
/// Name, trust domain, aliases, principals written, principals meant.
type Case<'a> = (
    &'a str,
    &'a str,
    &'a [&'a str],
    &'a [&'a str],
    &'a [&'a str],
);

#[test]
fn istio_replace_trust_domain_aliases_cases() {
    let cases: &[Case] = &[
        (
            "no trust domain aliases (no change in trust domain)",
            "cluster.local",
            &[],
            &["cluster.local/ns/foo/sa/bar"],
            &["cluster.local/ns/foo/sa/bar"],
        ),
        ("principal with *", "cluster.local", &[], &["*"], &["*"]),
        (
            "principal with * prefix",
            "cluster.local",
            &[],
            &["*/ns/foo/sa/bar"],
            &["*/ns/foo/sa/bar"],
        ),
        (
            "one trust domain alias, one principal",
            "td2",
            &["td1"],
            &["td1/ns/foo/sa/bar"],
            &["td2/ns/foo/sa/bar", "td1/ns/foo/sa/bar"],
        ),
        (
            "one trust domain alias, two principals",
            "td1",
            &["cluster.local"],
            &["cluster.local/ns/foo/sa/bar", "cluster.local/ns/yyy/sa/zzz"],
            &[
                "td1/ns/foo/sa/bar",
                "cluster.local/ns/foo/sa/bar",
                "td1/ns/yyy/sa/zzz",
                "cluster.local/ns/yyy/sa/zzz",
            ],
        ),
        (
            "one trust domain alias, principals with * as-is",
            "td1",
            &["cluster.local"],
            &["*/ns/foo/sa/bar", "*sa/zzz", "*"],
            &["*/ns/foo/sa/bar", "*sa/zzz", "*"],
        ),
        (
            "two trust domain aliases, two principals",
            "td2",
            &["td1", "cluster.local"],
            &["cluster.local/ns/foo/sa/bar", "td1/ns/yyy/sa/zzz"],
            &[
                "td2/ns/foo/sa/bar",
                "td1/ns/foo/sa/bar",
                "cluster.local/ns/foo/sa/bar",
                "td2/ns/yyy/sa/zzz",
                "td1/ns/yyy/sa/zzz",
                "cluster.local/ns/yyy/sa/zzz",
            ],
        ),
        (
            "two trust domain aliases with * prefix in trust domain",
            "td2",
            &["foo-td1", "cluster.local"],
            &["*-td1/ns/foo/sa/bar"],
            &[
                "td2/ns/foo/sa/bar",
                "*-td1/ns/foo/sa/bar",
                "cluster.local/ns/foo/sa/bar",
            ],
        ),
        (
            "principals not match any trust domains",
            "td1",
            &["td2"],
            &["some-td/ns/foo/sa/bar"],
            &["some-td/ns/foo/sa/bar"],
        ),
        (
            "principals match one alias",
            "td1",
            &["td2", "some-td"],
            &["some-td/ns/foo/sa/bar"],
            &[
                "td1/ns/foo/sa/bar",
                "td2/ns/foo/sa/bar",
                "some-td/ns/foo/sa/bar",
            ],
        ),
        (
            "one principal match one alias",
            "new-td",
            &["td2", "td3"],
            &["td1/ns/some-ns/sa/some-sa", "td2/ns/foo/sa/bar"],
            &[
                "td1/ns/some-ns/sa/some-sa",
                "new-td/ns/foo/sa/bar",
                "td2/ns/foo/sa/bar",
                "td3/ns/foo/sa/bar",
            ],
        ),
        (
            "trust domain is empty string",
            "new-td",
            &["td2", "td3"],
            &["/ns/some-ns/sa/some-sa"],
            &["/ns/some-ns/sa/some-sa"],
        ),
        (
            "no duplicated principals for prefix",
            "new-td",
            &["old-td"],
            &["*-td/ns/some-ns/sa/some-sa"],
            &["*-td/ns/some-ns/sa/some-sa"],
        ),
    ];
    for (name, td, aliases, principals, want) in cases {
        assert_eq!(&expand(td, aliases, principals), want, "{name}");
    }
}

/// `cluster.local` points at the mesh's trust domain even without aliases
/// (istio.io/latest/docs/tasks/security/authorization/authz-td-migration/,
/// "Best practices"): it is replaced, not kept.
#[test]
fn cluster_local_points_at_the_mesh_trust_domain() {
    assert_eq!(
        expand("example.org", &[], &["cluster.local/ns/a/sa/b"]),
        ["example.org/ns/a/sa/b"]
    );
    // A prefix written with five parts is rewritten the same way.
    assert_eq!(
        expand("example.org", &["old.org"], &["cluster.local/ns/a/sa/*"]),
        ["example.org/ns/a/sa/*", "old.org/ns/a/sa/*"]
    );
    // Fewer parts: no trust domain is enforced, nothing to rewrite.
    assert_eq!(
        expand("example.org", &["old.org"], &["cluster.local/ns/a/*"]),
        ["cluster.local/ns/a/*"]
    );
}

#[test]
fn aliases_are_validated_trust_domains() {
    assert!(TrustDomainAliases::new(["old.example", "x_y-z.1"]).is_ok());
    let e = TrustDomainAliases::new(["Old.Example"]).unwrap_err();
    assert_eq!(e.alias, "Old.Example");
    assert!(
        e.to_string()
            .contains("invalid trust-domain alias `Old.Example`")
    );
    assert!(TrustDomainAliases::new(["a/ns/b"]).is_err());
    assert!(TrustDomainAliases::new(["spiffe://a"]).is_err());
    assert!(TrustDomainAliases::new([""]).is_err());
    assert!(TrustDomainAliases::new(["a:80"]).is_err());
    let dup = TrustDomainAliases::new(["a", "a", "b"]).unwrap();
    assert_eq!(dup.iter().collect::<Vec<_>>(), ["a", "b"]);
}
