use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pa(ns: &str, name: &str, selector: Option<&str>, mode: &str, ports: &str) -> String {
    let sel = selector.map_or(String::new(), |app| {
        format!("  selector:\n    matchLabels: {{app: {app}}}\n")
    });
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{sel}  mtls: {{mode: {mode}}}\n{ports}"
    )
}

/// istio.io/latest/docs/reference/config/security/peer_authentication/ —
/// workload > namespace > mesh > default STRICT; port-level on workload
/// policies; UNSET inherits.
#[test]
fn mtls_mode_resolution() {
    let o = EvalOptions::default();
    let api = labels(&[("app", "api")]);
    let web = labels(&[("app", "web")]);
    assert_eq!(
        PolicySet::empty().mtls_mode("foo", &api, 80, &o),
        MtlsMode::Strict
    );

    let yaml = [
        pa("ward-system", "mesh", None, "PERMISSIVE", ""),
        pa("foo", "ns", None, "DISABLE", ""),
        pa(
            "foo",
            "api",
            Some("api"),
            "STRICT",
            "  portLevelMtls:\n    8080: {mode: PERMISSIVE}\n    9090: {mode: UNSET}\n",
        ),
        pa(
            "bar",
            "web",
            Some("web"),
            "UNSET",
            "  portLevelMtls:\n    \"8080\": {mode: DISABLE}\n",
        ),
    ]
    .concat();
    let set = PolicySet::parse_str("pa.yaml", &yaml).unwrap();
    // Workload-level wins, with port-level overrides.
    assert_eq!(set.mtls_mode("foo", &api, 80, &o), MtlsMode::Strict);
    assert_eq!(set.mtls_mode("foo", &api, 8080, &o), MtlsMode::Permissive);
    assert_eq!(set.mtls_mode("foo", &api, 9090, &o), MtlsMode::Strict);
    // Namespace-level for other workloads of foo.
    assert_eq!(set.mtls_mode("foo", &web, 8080, &o), MtlsMode::Disable);
    // bar: workload policy is UNSET → inherits mesh PERMISSIVE; its port
    // override still applies.
    assert_eq!(set.mtls_mode("bar", &web, 80, &o), MtlsMode::Permissive);
    assert_eq!(set.mtls_mode("bar", &web, 8080, &o), MtlsMode::Disable);
    // baz: mesh-level.
    assert_eq!(set.mtls_mode("baz", &api, 80, &o), MtlsMode::Permissive);
    // Another root namespace: the mesh policy is an ordinary namespace one.
    let other = EvalOptions {
        root_namespace: "istio-system".into(),
        ..EvalOptions::default()
    };
    assert_eq!(set.mtls_mode("baz", &api, 80, &other), MtlsMode::Strict);
    // A workload selector in another namespace does not apply.
    assert_eq!(set.mtls_mode("baz", &web, 8080, &o), MtlsMode::Permissive);
}

#[test]
fn duplicates_are_refused_and_load_paths_reads_directories() {
    let doc = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: n}\nspec: {}\n";
    let e = PolicySet::parse_str("x", &format!("{doc}---\n{doc}")).unwrap_err();
    assert!(
        e.to_string().contains("duplicate AuthorizationPolicy n/a"),
        "{e}"
    );

    let dir = tempfile::tempdir().unwrap();
    assert!(
        PolicySet::load_paths(&[dir.path().into()])
            .unwrap()
            .is_empty()
    );
    std::fs::write(dir.path().join("b.yml"), doc.replace("name: a", "name: b")).unwrap();
    std::fs::write(dir.path().join("a.yaml"), doc).unwrap();
    std::fs::write(dir.path().join("c.json"), "garbage").unwrap();
    std::fs::create_dir(dir.path().join("sub.yaml")).unwrap();
    let set = PolicySet::load_paths(&[dir.path().into()]).unwrap();
    let names: Vec<String> = set.policies().map(|p| p.id.to_string()).collect();
    assert_eq!(names, ["n/a", "n/b"]);
    let info = set.policies().next().unwrap();
    assert_eq!(
        (info.kind, info.action, info.version.len()),
        ("AuthorizationPolicy", "ALLOW", 16)
    );
    // One bad file rejects the whole set.
    std::fs::write(
        dir.path().join("d.yaml"),
        "kind: AuthorizationPolicy\napiVersion: v9\n",
    )
    .unwrap();
    let e = PolicySet::load_paths(&[dir.path().into()]).unwrap_err();
    assert_eq!(e.errors().len(), 1);
    assert!(e.errors()[0].file.ends_with("d.yaml"));
}

#[test]
fn merge_combines_separately_parsed_sets_and_refuses_duplicates() {
    let a = PolicySet::parse_str("a", &pa("shop", "default", None, "STRICT", "")).unwrap();
    let b = PolicySet::parse_str(
        "b",
        "apiVersion: security.ward.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny, namespace: shop}\nspec: {action: DENY, rules: [{}]}\n",
    )
    .unwrap();
    let merged = PolicySet::merge([&a, &b]).unwrap();
    assert_eq!(merged.authorization_policies().count(), 1);
    assert_eq!(merged.peer_authentications().count(), 1);
    // Same as parsing both texts together.
    let together = PolicySet::parse_texts(&[
        ("a".into(), pa("shop", "default", None, "STRICT", "")),
        (
            "b".into(),
            "apiVersion: security.ward.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny, namespace: shop}\nspec: {action: DENY, rules: [{}]}\n".into(),
        ),
    ])
    .unwrap();
    let ids = |s: &PolicySet| {
        s.policies()
            .map(|p| (p.kind, p.id.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&merged), ids(&together));
    let again = PolicySet::parse_str("c", &pa("shop", "default", None, "PERMISSIVE", "")).unwrap();
    let err = PolicySet::merge([&a, &b, &again]).unwrap_err().to_string();
    assert!(
        err.contains("duplicate PeerAuthentication shop/default"),
        "{err}"
    );
}
