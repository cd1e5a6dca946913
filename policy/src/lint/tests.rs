use super::*;

fn warnings(yaml: &str) -> Vec<String> {
    let set = PolicySet::parse_str("l.yaml", yaml).unwrap();
    lint(
        &set,
        None,
        &EvalOptions::default(),
        &TrustDomainAliases::default(),
    )
    .iter()
    .map(|w| w.to_string())
    .collect()
}

#[test]
fn shadowed_rules() {
    let w = warnings(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: n}\nspec:\n  rules:\n  - to:\n    - operation: {paths: [\"/api/*\"]}\n  - to:\n    - operation: {paths: [\"/api/v1\"], methods: [\"GET\"]}\n  - to:\n    - operation: {paths: [\"/other\"]}\n",
    );
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(
        w[0].contains("spec.rules[1]: rule is shadowed by spec.rules[0]"),
        "{w:#?}"
    );
}

#[test]
fn paths_that_never_match() {
    let w = warnings(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: n}\nspec:\n  rules:\n  - to:\n    - operation: {paths: [\"admin\", \"/a/../b\"]}\n",
    );
    assert_eq!(w.len(), 2, "{w:#?}");
    assert!(w[0].contains("path `admin` can never match"));
    assert!(w[1].contains("path `/a/../b` can never match"));
}

#[test]
fn not_service_accounts_alone_let_plaintext_in() {
    let w = warnings(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: n}\nspec:\n  rules:\n  - from:\n    - source: {notServiceAccounts: [\"bad\"]}\n  - from:\n    - source: {serviceAccounts: [\"good\"]}\n",
    );
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(w[0].contains("spec.rules[0]: notPrincipals/notNamespaces/notServiceAccounts without a positive identity field"), "{w:#?}");
}

#[test]
fn templates_that_never_match() {
    let w = warnings(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: n}\nspec:\n  rules:\n  - to:\n    - operation: {paths: [\"/api/{*}/items\", \"/a/../{*}\", \"/a/%7e/{**}\", \"/x/%2f/{*}\", \"/ok/%2A/{*}\"]}\n",
    );
    assert_eq!(w.len(), 3, "{w:#?}");
    for (warning, path) in w.iter().zip(["/a/../{*}", "/a/%7e/{**}", "/x/%2f/{*}"]) {
        assert!(
            warning.contains(&format!("path template `{path}` can never match")),
            "{w:#?}"
        );
    }
}

#[test]
fn trust_domains_the_mesh_aliases_and_cluster_local_are_not_foreign() {
    let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: n}\nspec:\n  rules:\n  - from:\n    - source: {principals: [\"new.td/ns/a/sa/b\", \"old.td/ns/a/sa/b\", \"cluster.local/ns/a/sa/b\", \"other.td/ns/a/sa/b\"]}\n";
    let set = PolicySet::parse_str("l.yaml", yaml).unwrap();
    let options = EvalOptions {
        trust_domain: "new.td".into(),
        ..EvalOptions::default()
    };
    let aliases = TrustDomainAliases::new(["old.td"]).unwrap();
    let w: Vec<String> = lint(&set, None, &options, &aliases)
        .iter()
        .map(|w| w.to_string())
        .collect();
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(
        w[0].contains("principal `other.td/ns/a/sa/b` is outside the mesh trust domain `new.td` and its aliases `old.td`"),
        "{w:#?}"
    );
    // Without the alias, old.td is foreign; cluster.local never is.
    let w = lint(&set, None, &options, &TrustDomainAliases::default());
    assert_eq!(w.len(), 2, "{w:#?}");
}
