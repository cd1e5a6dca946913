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
    assert_eq!(h.joined("x-a").as_deref(), Some("1,2"));
    assert_eq!(h.joined("x-b"), None);
    h.append("x-c", "only".parse().unwrap());
    assert!(matches!(h.joined("x-c"), Some(Cow::Borrowed("only"))));
}

fn header_decision(policy: &str, headers: &[(&str, &str)]) -> bool {
    let set = PolicySet::parse_str("x", policy).unwrap();
    let w = set.for_workload("n", &BTreeMap::new(), &EvalOptions::default());
    let headers: Vec<(&str, &str)> = headers.to_vec();
    let attrs = RequestAttrs {
        protocol: Protocol::Http,
        source_principal: None,
        source_ip: "198.18.0.9".parse().unwrap(),
        destination_ip: "198.18.0.2".parse().unwrap(),
        destination_port: 80,
        method: Some("GET"),
        path: Some("/"),
        host: Some("app"),
        headers: &headers,
    };
    w.evaluate(&attrs).allowed
}

/// Istio (Envoy) matches a repeated header as its lines joined with `,`.
#[test]
fn a_repeated_header_is_matched_as_one_joined_value() {
    let deny_admin = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: n}\nspec:\n  action: DENY\n  rules:\n  - when:\n    - {key: 'request.headers[x-user]', values: ['admin*']}\n";
    assert!(!header_decision(deny_admin, &[("x-user", "admin")]));
    assert!(!header_decision(
        deny_admin,
        &[("x-user", "admin"), ("x-user", "guest")]
    ));
    assert!(!header_decision(
        deny_admin,
        &[("X-User", "admin"), ("x-user", "x")]
    ));
    // As in Istio: "guest,admin" does not start with "admin" (docs/policy.md
    // says to put an exact ALLOW on the expected values instead).
    assert!(header_decision(
        deny_admin,
        &[("x-user", "guest"), ("x-user", "admin")]
    ));
    assert!(header_decision(deny_admin, &[]));

    let allow_joined = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: n}\nspec:\n  rules:\n  - when:\n    - {key: 'request.headers[x-tags]', values: ['a,b']}\n";
    assert!(header_decision(
        allow_joined,
        &[("x-tags", "a"), ("x-tags", "b")]
    ));
    assert!(!header_decision(allow_joined, &[("x-tags", "a")]));
    // An exact ALLOW on one value no longer matches once another line is
    // added (line by line, `acme` + `evil` was allowed and the app may read
    // `evil`): the joined value is what is compared.
    let allow_exact = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: n}\nspec:\n  rules:\n  - when:\n    - {key: 'request.headers[x-tenant]', values: ['acme']}\n";
    assert!(header_decision(allow_exact, &[("x-tenant", "acme")]));
    assert!(!header_decision(
        allow_exact,
        &[("x-tenant", "acme"), ("x-tenant", "evil")]
    ));
    // notValues: absent never equals, so the condition holds.
    let allow_not = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: n}\nspec:\n  rules:\n  - when:\n    - {key: 'request.headers[x-tenant]', notValues: ['evil']}\n";
    assert!(header_decision(allow_not, &[]));
    assert!(!header_decision(allow_not, &[("x-tenant", "evil")]));
    assert!(header_decision(
        allow_not,
        &[("x-tenant", "evil"), ("x-tenant", "acme")]
    ));
}
