use super::*;

fn err(yaml: &str) -> Vec<ConfigError> {
    match parse_file("f.yaml", yaml) {
        Ok(_) => panic!("expected an error for:\n{yaml}"),
        Err(e) => e,
    }
}

fn one(yaml: &str) -> ConfigError {
    let e = err(yaml);
    assert_eq!(e.len(), 1, "{e:#?}");
    e.into_iter().next().unwrap()
}

const HEAD: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: ns\n";

/// (yaml, field path, line, reason substring)
fn check(yaml: &str, field: &str, line: usize, reason: &str) {
    let e = one(yaml);
    assert_eq!(e.file, "f.yaml");
    assert_eq!(e.document, Some(0), "{e}");
    assert_eq!(e.field.as_deref(), Some(field), "{e}");
    assert_eq!(e.line, Some(line), "{e}");
    assert!(e.column.is_some(), "{e}");
    assert!(e.reason.contains(reason), "{e}");
}

#[test]
fn invalid_cidr_names_the_element() {
    check(
        &format!(
            "{HEAD}spec:\n  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/a/sa/b\"]\n    - source:\n        ipBlocks: [\"10.0.0.0/8\", \"1.2.3.4\", \"10.0.0.0/33\"]\n"
        ),
        "spec.rules[0].from[1].source.ipBlocks[2]",
        12,
        "invalid CIDR `10.0.0.0/33`",
    );
}

#[test]
fn every_kind_of_invalid_input() {
    let r = |body: &str| format!("{HEAD}spec:\n  rules:\n  - {body}\n");
    let cases: Vec<(String, &str, usize, &str)> = vec![
        (format!("{HEAD}spec:\n  bogus: 1\n"), "spec.bogus", 7, "unknown field `bogus`"),
        (format!("{HEAD}spec:\n  action: DENY\n"), "spec.rules", 7, "DENY policy needs at least one rule"),
        (format!("{HEAD}spec:\n  action: DENY\n  rules: []\n"), "spec.rules", 7, "DENY policy needs at least one rule"),
        (format!("{HEAD}spec:\n  action: CUSTOM\n  rules: [{{}}]\n"), "spec.action", 7, "CUSTOM action"),
        (format!("{HEAD}spec:\n  action: allow\n"), "spec.action", 7, "unknown action `allow`"),
        (format!("{HEAD}spec:\n  provider:\n    name: x\n"), "spec.provider", 8, "CUSTOM"),
        (format!("{HEAD}spec:\n  targetRef:\n    kind: Gateway\n"), "spec.targetRef", 8, "targetRef"),
        (format!("{HEAD}spec:\n  targetRefs: []\n"), "spec.targetRefs", 7, "targetRef"),
        (format!("{HEAD}spec:\n  rules: 5\n"), "spec.rules", 7, "invalid type"),
        (r("from:\n    - source:\n        requestPrincipals: [\"*\"]"), "spec.rules[0].from[0].source.requestPrincipals", 10, "JWT"),
        (r("from:\n    - source:\n        notRequestPrincipals: [\"*\"]"), "spec.rules[0].from[0].source.notRequestPrincipals", 10, "JWT"),
        (r("from:\n    - source:\n        principals: [\"cluster.local/ns/a/sa/b\", \"not a principal\"]"), "spec.rules[0].from[0].source.principals[1]", 10, "invalid principal `not a principal`"),
        (r("from:\n    - source:\n        principals: [\"spiffe://Bad/ns\"]"), "spec.rules[0].from[0].source.principals[0]", 10, "invalid principal"),
        (r("from:\n    - source:\n        principals: [\"a*b\"]"), "spec.rules[0].from[0].source.principals[0]", 10, "only allowed as the first or last"),
        (r("from:\n    - source:\n        principals: [\"cluster.local/ns/a/sa/b\"]\n        serviceAccounts: [\"a/b\"]"), "spec.rules[0].from[0].source.serviceAccounts", 10, "cannot be used together with principals, notPrincipals, namespaces or notNamespaces"),
        (r("from:\n    - source:\n        namespaces: [\"a\"]\n        notServiceAccounts: [\"a/b\"]"), "spec.rules[0].from[0].source.serviceAccounts", 10, "cannot be used together"),
        (r("from:\n    - source:\n        serviceAccounts: [\"a/b/c\"]"), "spec.rules[0].from[0].source.serviceAccounts[0]", 10, "invalid service account `a/b/c`: more than one `/`"),
        (r("from:\n    - source:\n        serviceAccounts: [\"a/*\"]"), "spec.rules[0].from[0].source.serviceAccounts[0]", 10, "wildcards are not allowed"),
        (r("from:\n    - source:\n        notServiceAccounts: [\"/b\"]"), "spec.rules[0].from[0].source.notServiceAccounts[0]", 10, "empty namespace"),
        (r("from:\n    - source:\n        serviceAccounts: [\"a/\"]"), "spec.rules[0].from[0].source.serviceAccounts[0]", 10, "empty service account"),
        (r("from:\n    - source:\n        serviceAccounts: [\"\"]"), "spec.rules[0].from[0].source.serviceAccounts[0]", 10, "invalid service account ``: empty"),
        (r(&format!("from:\n    - source:\n        serviceAccounts: [{}]", vec!["\"a\""; 17].join(", "))), "spec.rules[0].from[0].source.serviceAccounts", 10, "at most 16 service accounts"),
        (r(&format!("from:\n    - source:\n        serviceAccounts: [\"{}\"]", "a".repeat(321))), "spec.rules[0].from[0].source.serviceAccounts[0]", 10, "longer than 320"),
        (r("from:\n    - source:\n        remoteIpBlocks: [\"fe80::/129\"]"), "spec.rules[0].from[0].source.remoteIpBlocks[0]", 10, "invalid CIDR"),
        (r("from:\n    - source:\n        ipBlocks: [\"10.0.0.300\"]"), "spec.rules[0].from[0].source.ipBlocks[0]", 10, "invalid IP address"),
        (r("from:\n    - source:\n        user: x"), "spec.rules[0].from[0].source.user", 10, "unknown field `user`"),
        (r("to:\n    - operation:\n        ports: [\"0\"]"), "spec.rules[0].to[0].operation.ports[0]", 10, "invalid port `0`"),
        (r("to:\n    - operation:\n        ports: [\"65536\"]"), "spec.rules[0].to[0].operation.ports[0]", 10, "invalid port `65536`"),
        (r("to:\n    - operation:\n        notPorts: [\"http\"]"), "spec.rules[0].to[0].operation.notPorts[0]", 10, "not a number"),
        (r("to:\n    - operation:\n        paths: [\"/a/{id}\"]"), "spec.rules[0].to[0].operation.paths[0]", 10, "named variables such as `{id}` are not supported"),
        (r("to:\n    - operation:\n        paths: [\"/a/{*}.txt\"]"), "spec.rules[0].to[0].operation.paths[0]", 10, "invalid path template `/a/{*}.txt`: segment `{*}.txt`"),
        (r("to:\n    - operation:\n        notPaths: [\"/a/{**}/{*}\"]"), "spec.rules[0].to[0].operation.notPaths[0]", 10, "`{**}` must be the last operator"),
        (r("to:\n    - operation:\n        paths: [\"/a/{*}/b*\"]"), "spec.rules[0].to[0].operation.paths[0]", 10, "`*` is not allowed in a path template"),
        (r("to:\n    - operation:\n        paths: [\"*/{*}\"]"), "spec.rules[0].to[0].operation.paths[0]", 10, "must start with `/`"),
        (r("to:\n    - operation:\n        paths: [\"/a//{*}\"]"), "spec.rules[0].to[0].operation.paths[0]", 10, "empty segment"),
        (r("to:\n    - operation:\n        methods: GET"), "spec.rules[0].to[0].operation.methods", 10, "invalid type"),
        (r("when:\n    - key: request.auth.claims[iss]\n      values: [\"x\"]"), "spec.rules[0].when[0].key", 9, "condition key `request.auth.claims[iss]` is not supported yet: the request.auth.* conditions need request authentication (JWT"),
        (r("when:\n    - key: request.auth.principal\n      values: [\"x\"]"), "spec.rules[0].when[0].key", 9, "`request.auth.principal` is not supported yet"),
        (r("when:\n    - key: request.auth.audiences\n      values: [\"x\"]"), "spec.rules[0].when[0].key", 9, "`request.auth.audiences` is not supported yet"),
        (r("when:\n    - key: request.auth.presenter\n      values: [\"x\"]"), "spec.rules[0].when[0].key", 9, "`request.auth.presenter` is not supported yet"),
        (r("when:\n    - key: connection.sni\n      values: [\"x\"]"), "spec.rules[0].when[0].key", 9, "condition key `connection.sni` is not supported: Ward's sidecar does not give policies the TLS server name"),
        (r("when:\n    - key: experimental.envoy.filters.network.mysql_proxy[db.table]\n      values: [\"[update]\"]"), "spec.rules[0].when[0].key", 9, "`experimental.envoy.filters.network.mysql_proxy[db.table]` is not supported: it matches Envoy filter metadata"),
        (r("when:\n    - key: request.experimental.inline.headers[x]\n      values: [\"x\"]"), "spec.rules[0].when[0].key", 9, "is not supported: an experimental Istio key"),
        (r("when:\n    - key: destination.namespace\n      values: [\"x\"]"), "spec.rules[0].when[0].key", 9, "replaced by the policy's metadata.namespace"),
        (r("when:\n    - key: destination.labels[app]\n      values: [\"x\"]"), "spec.rules[0].when[0].key", 9, "replaced by the workload selector"),
        (r("when:\n    - key: destination.user\n      values: [\"x\"]"), "spec.rules[0].when[0].key", 9, "deprecated"),
        (r("when:\n    - key: source.user\n      values: [\"x\"]"), "spec.rules[0].when[0].key", 9, "unknown condition key `source.user`; supported: source.ip, remote.ip"),
        (r("when:\n    - key: request.headers\n      values: [\"x\"]"), "spec.rules[0].when[0].key", 9, "expected `request.headers[<name>]`"),
        (r("when:\n    - key: \"request.headers[:authority]\"\n      values: [\"x\"]"), "spec.rules[0].when[0].key", 9, "pseudo-header `:authority` is not supported: use the operation's `hosts`, `methods` or `paths`"),
        (r("when:\n    - key: remote.ip\n      values: [\"10.0.0.0/40\"]"), "spec.rules[0].when[0].values[0]", 9, "invalid CIDR"),
        (r("when:\n    - key: source.serviceAccount\n      notValues: [\"too/many/slashes\"]"), "spec.rules[0].when[0].notValues[0]", 9, "more than one `/`"),
        (r("when:\n    - key: source.serviceAccount\n      values: [\"emptysa/\"]"), "spec.rules[0].when[0].values[0]", 9, "empty service account"),
        (r("when:\n    - key: destination.port\n      values: [\"80\", \"x\"]"), "spec.rules[0].when[0].values[1]", 9, "invalid port `x`"),
        (r("when:\n    - key: source.ip\n      notValues: [\"10.0.0.0/40\"]"), "spec.rules[0].when[0].notValues[0]", 9, "invalid CIDR"),
        (r("when:\n    - key: source.principal\n      values: [\"nope\"]"), "spec.rules[0].when[0].values[0]", 9, "invalid principal"),
        (r("when:\n    - key: source.ip"), "spec.rules[0].when[0]", 9, "needs `values` or `notValues`"),
        (r("when:\n    - key: request.headers[]\n      values: [\"x\"]"), "spec.rules[0].when[0].key", 9, "invalid header name"),
        ("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\nspec: {}\n".into(), "metadata.namespace", 4, "metadata.namespace is required"),
        ("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  namespace: n\n".into(), "metadata.name", 4, "metadata.name is required"),
        ("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: n\n  annotations:\n    istio.io/dry-run: \"yes\"\n".into(), "metadata.annotations.istio.io/dry-run", 4, "invalid dry-run annotation"),
        ("apiVersion: security.istio.io/v2\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: n\n".into(), "apiVersion", 1, "unsupported apiVersion"),
        ("apiVersion: security.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: p\n  namespace: n\n".into(), "kind", 2, "unsupported kind `Sidecar`"),
        ("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: p\n  namespace: n\nspec:\n  mtls:\n    mode: strict\n".into(), "spec.mtls.mode", 8, "unknown mTLS mode"),
        ("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: p\n  namespace: n\nspec:\n  portLevelMtls:\n    8080:\n      mode: DISABLE\n".into(), "spec.portLevelMtls", 7, "needs a workload selector"),
        ("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: p\n  namespace: n\nspec:\n  selector:\n    matchLabels: {app: a}\n  portLevelMtls:\n    \"99999\":\n      mode: DISABLE\n".into(), "spec.portLevelMtls.99999", 10, "invalid port `99999`"),
    ];
    for (yaml, field, line, reason) in &cases {
        check(yaml, field, *line, reason);
    }
}

#[test]
fn missing_kind_and_syntax_errors() {
    let e = one("apiVersion: security.istio.io/v1\nmetadata: {}\n");
    assert_eq!(e.field.as_deref(), Some("kind"));
    let e = one("a: [\n");
    assert_eq!(
        (e.document, e.field.as_deref(), e.line),
        (Some(0), None, Some(2))
    );
    assert!(e.reason.contains("did not find expected node"), "{e}");
}

#[test]
fn one_bad_document_rejects_the_file() {
    let good = format!("{HEAD}spec: {{}}\n");
    let bad = format!("{HEAD}spec:\n  rules:\n  - to:\n    - operation:\n        ports: [\"0\"]\n");
    let yaml = format!("{good}---\n{bad}---\n{good}");
    let e = one(&yaml);
    assert_eq!(e.document, Some(1));
    assert_eq!(e.line, Some(17));
    assert_eq!(
        e.field.as_deref(),
        Some("spec.rules[0].to[0].operation.ports[0]")
    );
}

#[test]
fn valid_documents_parse() {
    let yaml = format!(
        "---\n{HEAD}spec:\n  selector:\n    matchLabels: {{app: a}}\n  action: AUDIT\n  rules:\n  - from:\n    - source:\n        principals: [\"spiffe://cluster.local/ns/a/sa/b\", \"*suffix\", \"spiffe://cluster.local/ns/x/*\"]\n        serviceAccounts: []\n---\n---\napiVersion: security.ward.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: p\n  namespace: n\nspec:\n  selector:\n    matchLabels: {{app: a}}\n  mtls: {{mode: PERMISSIVE}}\n  portLevelMtls:\n    8080: {{mode: DISABLE}}\n    \"9090\": {{mode: UNSET}}\n"
    );
    let p = parse_file("f.yaml", &yaml).unwrap();
    assert_eq!(p.authz.len(), 1);
    let a = &p.authz[0];
    assert_eq!(a.action, Action::Audit);
    assert_eq!(
        a.rules[0].from[0].principals,
        vec![
            StrMatch::Exact("cluster.local/ns/a/sa/b".into()),
            StrMatch::Suffix("suffix".into()),
            StrMatch::Prefix("cluster.local/ns/x/".into())
        ]
    );
    assert_eq!(p.peer.len(), 1);
    assert_eq!(p.peer[0].origin.document, 2);
    assert_eq!(p.peer[0].mode, MtlsMode::Permissive);
    assert_eq!(p.peer[0].port_level.get(&8080), Some(&MtlsMode::Disable));
    assert_eq!(p.peer[0].port_level.get(&9090), Some(&MtlsMode::Unset));
}

/// Found by fuzzing (fuzz/fuzz_targets/policy_parse.rs): after a document
/// with an unknown alias, serde_yaml_ng's document iterator resumed inside
/// it and the next "document" panicked the parser ("unexpected end of
/// mapping"). Now the broken document is reported and nothing after it is
/// read.
#[test]
fn an_unknown_alias_is_an_error_not_a_panic() {
    let good = format!("{HEAD}spec: {{}}\n");
    for yaml in [
        "apiVd; /Euene: *p\n".to_owned(),
        "kind: *p\n".to_owned(),
        "a: [*p, 1]\nb: 2\n".to_owned(),
        // A data error before the alias.
        "kind: Foo\nx: *p\ny: 1\n---\nkind: AuthorizationPolicy\n".to_owned(),
        format!("{good}---\n{HEAD}spec:\n  rules: [*r]\n---\n{good}"),
    ] {
        let e = err(&yaml);
        assert!(!e.is_empty(), "{yaml}");
    }
    // An alias to an anchor of the same document is fine.
    let anchored = format!(
        "{HEAD}spec:\n  rules:\n  - from:\n    - source: &s {{namespaces: [a]}}\n    - source: *s\n"
    );
    assert!(parse_file("f.yaml", &anchored).is_ok());
}

/// A service account without namespace is in the policy's (Istio:
/// `serviceAccountRegex(policyNamespace, "my-sa")`); one with a namespace
/// keeps it.
#[test]
fn bare_service_accounts_take_the_policy_namespace() {
    let yaml = format!(
        "{HEAD}spec:\n  rules:\n  - from:\n    - source:\n        serviceAccounts: [\"sleep\", \"other/client\"]\n        notServiceAccounts: [\"bad\"]\n    when:\n    - key: source.serviceAccount\n      values: [\"x\"]\n      notValues: [\"y/z\"]\n"
    );
    let p = parse_file("f.yaml", &yaml).unwrap();
    let rule = &p.authz[0].rules[0];
    let sa = |ns: &str, name: &str| ServiceAccount {
        namespace: ns.into(),
        name: name.into(),
    };
    assert_eq!(
        rule.from[0].service_accounts,
        [sa("ns", "sleep"), sa("other", "client")]
    );
    assert_eq!(rule.from[0].not_service_accounts, [sa("ns", "bad")]);
    assert_eq!(
        rule.when[0].values,
        CondValues::ServiceAccount(vec![sa("ns", "x")])
    );
    assert_eq!(
        rule.when[0].not_values,
        CondValues::ServiceAccount(vec![sa("y", "z")])
    );
}

/// Istio's `TestValidateCondition` keys that are valid and that Ward
/// evaluates (pkg/config/security/security_test.go).
#[test]
fn supported_condition_keys_load() {
    for (key, value) in [
        ("request.headers[User-Agent]", "Mozilla/*"),
        ("source.ip", "5.6.7.0/24"),
        ("remote.ip", "1.2.3.4"),
        ("source.namespace", "value"),
        ("source.principal", "cluster.local/ns/a/sa/b"),
        ("source.serviceAccount", "ns/sa"),
        ("source.serviceAccount", "sa"),
        ("destination.ip", "1.2.3.4"),
        ("destination.port", "80"),
    ] {
        let yaml = format!(
            "{HEAD}spec:\n  rules:\n  - when:\n    - key: \"{key}\"\n      values: [\"{value}\"]\n"
        );
        parse_file("f.yaml", &yaml).unwrap_or_else(|e| panic!("{key}: {e:?}"));
    }
}
