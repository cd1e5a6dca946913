use crate::eval::matching::Ctx;
use crate::eval::{Protocol, RequestAttrs, WorkloadPolicy};
use crate::{EvalOptions, PolicySet};
use std::collections::BTreeMap;
use ward_identity::SpiffeId;

fn workload(rules: &[&str]) -> WorkloadPolicy {
    let mut yaml = String::new();
    for (i, rule) in rules.iter().enumerate() {
        yaml.push_str(&format!(
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p{i:02}, namespace: n}}\nspec:\n  rules:\n  - {rule}\n"
        ));
    }
    let set = PolicySet::parse_str("x", &yaml).unwrap();
    set.for_workload("n", &BTreeMap::new(), &EvalOptions::default())
}

/// The policies (by position) whose rules the index offers for a request.
fn offered(w: &WorkloadPolicy, tcp: bool, id: Option<&str>, method: &str, path: &str) -> Vec<u32> {
    let id = id.map(|i| SpiffeId::parse(i).unwrap());
    let req = RequestAttrs {
        protocol: if tcp { Protocol::Tcp } else { Protocol::Http },
        source_principal: id.as_ref(),
        source_ip: "10.0.0.1".parse().unwrap(),
        destination_ip: "10.0.0.2".parse().unwrap(),
        destination_port: 8080,
        method: Some(method),
        path: Some(path),
        host: Some("h"),
        headers: &crate::eval::NoHeaders,
    };
    let bit = crate::model::method_bit(method);
    let c = Ctx::new(&req, if tcp { "" } else { path }, bit);
    w.index
        .candidates(&c)
        .map(|id| w.index.entry(id).policy)
        .collect()
}

#[test]
fn rules_are_filed_by_their_most_selective_field() {
    let w = workload(&[
        "from: [{source: {principals: [cluster.local/ns/a/sa/x]}}]",
        "from: [{source: {namespaces: [b]}}, {source: {principals: [cluster.local/ns/c/sa/y]}}]",
        "from: [{source: {serviceAccounts: [d/z]}}]",
        "to: [{operation: {paths: [/exact]}}]",
        "to: [{operation: {paths: [\"/pre/*\"]}}, {operation: {paths: [\"*.js\"]}}]",
        "to: [{operation: {paths: [\"/t/{*}/x\"]}}]",
        "to: [{operation: {ports: [\"8080\"]}}]",
        "to: [{operation: {ports: [\"9090\"]}}]",
        "to: [{operation: {methods: [DELETE]}}]",
        "from: [{source: {namespaces: [\"pre*\"]}}]",
        "when: [{key: source.namespace, values: [e]}]",
    ]);
    let always = [6, 9];
    let with = |extra: &[u32]| {
        let mut v: Vec<u32> = always.iter().chain(extra).copied().collect();
        v.sort();
        v
    };
    assert_eq!(offered(&w, false, None, "GET", "/"), with(&[]));
    assert_eq!(
        offered(
            &w,
            false,
            Some("spiffe://cluster.local/ns/a/sa/x"),
            "GET",
            "/"
        ),
        with(&[0])
    );
    assert_eq!(
        offered(&w, false, Some("spiffe://other/ns/b/sa/q"), "GET", "/"),
        with(&[1])
    );
    assert_eq!(
        offered(
            &w,
            false,
            Some("spiffe://cluster.local/ns/c/sa/y"),
            "GET",
            "/"
        ),
        with(&[1])
    );
    // Service accounts in any trust domain, and in IDs of other forms.
    assert_eq!(
        offered(&w, false, Some("spiffe://td/ns/d/sa/z"), "GET", "/"),
        with(&[2])
    );
    assert_eq!(
        offered(&w, false, Some("spiffe://td/k/v/ns/d/x/sa/z/w"), "GET", "/"),
        with(&[2])
    );
    assert_eq!(offered(&w, false, None, "GET", "/exact"), with(&[3]));
    assert_eq!(offered(&w, false, None, "GET", "/pre/a"), with(&[4]));
    assert_eq!(offered(&w, false, None, "GET", "/a/b.js"), with(&[4]));
    assert_eq!(offered(&w, false, None, "GET", "/t/a/x"), with(&[5]));
    assert_eq!(offered(&w, false, None, "DELETE", "/"), with(&[8]));
    assert_eq!(
        offered(&w, false, Some("spiffe://td/ns/e/sa/q"), "GET", "/"),
        with(&[10])
    );
    // TCP: paths and methods are HTTP fields (these ALLOW rules never match
    // a connection), identity and port still file.
    assert_eq!(
        offered(
            &w,
            true,
            Some("spiffe://cluster.local/ns/a/sa/x"),
            "GET",
            "/exact"
        ),
        [0, 6, 9]
    );
}

#[test]
fn deny_rules_on_tcp_ignore_http_fields() {
    let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: d, namespace: n}\nspec:\n  action: DENY\n  rules:\n  - to: [{operation: {methods: [DELETE], paths: [/admin]}}]\n  - to: [{operation: {methods: [DELETE], ports: [\"9090\"]}}]\n";
    let set = PolicySet::parse_str("x", yaml).unwrap();
    let w = set.for_workload("n", &BTreeMap::new(), &EvalOptions::default());
    // HTTP GET /: filed under the path and the port, neither matches.
    assert!(offered(&w, false, None, "GET", "/").is_empty());
    // TCP to 8080: the first rule (only HTTP fields) always applies.
    assert_eq!(offered(&w, true, None, "GET", "/"), [0]);
}

#[test]
fn many_lists_spill_and_stay_ordered() {
    // Twenty prefixes of one path: twenty lists for one request.
    let path = "/abcdefghijklmnopqrstuvwxyz";
    let rules: Vec<String> = (2..22)
        .map(|n| format!("to: [{{operation: {{paths: [\"{}*\"]}}}}]", &path[..n]))
        .collect();
    let rules: Vec<&str> = rules.iter().map(String::as_str).collect();
    let w = workload(&rules);
    assert_eq!(
        offered(&w, false, None, "GET", path),
        (0..20).collect::<Vec<u32>>()
    );
    assert_eq!(offered(&w, false, None, "GET", "/abc"), [0, 1, 2]);
}

#[test]
fn duplicate_keys_offer_a_rule_once() {
    let w = workload(&[
        "from: [{source: {principals: [cluster.local/ns/a/sa/x, cluster.local/ns/a/sa/x]}}, {source: {namespaces: [a]}}]",
    ]);
    assert_eq!(
        offered(
            &w,
            false,
            Some("spiffe://cluster.local/ns/a/sa/x"),
            "GET",
            "/"
        ),
        [0]
    );
}
