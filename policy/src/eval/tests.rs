use super::*;
use crate::PolicySet;
use std::collections::BTreeMap;

#[test]
fn needs_http_fields_and_no_allocation_decisions() {
    let set = PolicySet::parse_str(
        "x",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: n}\nspec:\n  rules:\n  - to:\n    - operation: {ports: [\"80\"]}\n",
    )
    .unwrap();
    let w = set.for_workload("n", &BTreeMap::new(), &EvalOptions::default());
    assert!(!w.needs_http_fields());
    assert!(!w.is_empty());
    let attrs = RequestAttrs {
        protocol: Protocol::Tcp,
        source_principal: None,
        source_ip: "10.0.0.1".parse().unwrap(),
        destination_ip: "10.0.0.2".parse().unwrap(),
        destination_port: 80,
        method: None,
        path: None,
        host: None,
        headers: &NoHeaders,
    };
    let d = w.evaluate(&attrs);
    assert!(d.allowed);
    assert_eq!(d.dry_run_matches.capacity(), 0);
    assert_eq!(d.audit_matches.capacity(), 0);
    let mut h = http::HeaderMap::new();
    h.append("x-a", "1".parse().unwrap());
    h.append("x-a", "2".parse().unwrap());
    assert!(h.any_value("x-a", &mut |v| v == "2"));
    assert!(!h.any_value("x-b", &mut |_| true));
}
