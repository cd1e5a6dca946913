//! The evaluation table: every case in `istio_cases.yaml` comes from Istio's
//! documentation or from Istio's own code and tests (its `source` names the
//! istio.io page and example, or the github.com/istio/istio file and test)
//! and runs against the engine directly, through the indexed evaluator and
//! the linear reference alike.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use ward_identity::SpiffeId;
use ward_policy::{Action, EvalOptions, PolicySet, Protocol, RequestAttrs, TrustDomainAliases};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    suites: Vec<Suite>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Workload {
    namespace: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Suite {
    name: String,
    source: String,
    policies: String,
    workload: Option<Workload>,
    root_namespace: Option<String>,
    /// The mesh's trust domain (default `cluster.local`) and its aliases.
    trust_domain: Option<String>,
    #[serde(default)]
    trust_domain_aliases: Vec<String>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Req {
    protocol: Option<String>,
    principal: Option<String>,
    ip: Option<IpAddr>,
    dst_ip: Option<IpAddr>,
    port: Option<u16>,
    method: Option<String>,
    path: Option<String>,
    host: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, OneOrMany>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    source: Option<String>,
    workload: Option<Workload>,
    #[serde(default)]
    req: Req,
    expect: String,
    /// `ns/name`, or `null` for "no deciding policy"; absent: not checked.
    #[serde(default, deserialize_with = "some")]
    policy: Option<Option<String>>,
    rule: Option<usize>,
    reason: Option<String>,
    dry_run: Option<Vec<String>>,
    audit: Option<Vec<String>>,
}

fn some<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[test]
fn istio_documentation_table() {
    let text = include_str!("istio_cases.yaml");
    let table: Table = serde_yaml_ng::from_str(text).expect("fixture parses");
    let mut count = 0;
    let mut failures = Vec::new();
    for suite in &table.suites {
        let set = PolicySet::parse_str(&suite.name, &suite.policies)
            .unwrap_or_else(|e| panic!("suite {}: policies do not load:\n{e}", suite.name));
        let options = EvalOptions {
            root_namespace: suite
                .root_namespace
                .clone()
                .unwrap_or_else(|| "istio-system".into()),
            trust_domain: suite
                .trust_domain
                .clone()
                .unwrap_or_else(|| "cluster.local".into()),
        };
        let aliases = TrustDomainAliases::new(&suite.trust_domain_aliases)
            .unwrap_or_else(|e| panic!("suite {}: {e}", suite.name));
        for case in &suite.cases {
            count += 1;
            let source = case.source.as_deref().unwrap_or(&suite.source);
            assert!(
                source.starts_with("istio.io/")
                    || source.starts_with("github.com/istio/")
                    || source.starts_with("github.com/envoyproxy/"),
                "{}: cites no source",
                case.name
            );
            let w = case
                .workload
                .clone()
                .or_else(|| suite.workload.clone())
                .unwrap_or(Workload {
                    namespace: "foo".into(),
                    labels: BTreeMap::from([("app".into(), "httpbin".into())]),
                });
            let compiled =
                set.for_workload_with_aliases(&w.namespace, &w.labels, &options, &aliases);
            let r = &case.req;
            let tcp = r.protocol.as_deref() == Some("tcp");
            let principal = r
                .principal
                .as_deref()
                .map(|p| SpiffeId::from_istio_principal(p).expect("case principal"));
            let headers: Vec<(String, String)> = r
                .headers
                .iter()
                .flat_map(|(k, v)| match v {
                    OneOrMany::One(v) => vec![(k.clone(), v.clone())],
                    OneOrMany::Many(vs) => vs.iter().map(|v| (k.clone(), v.clone())).collect(),
                })
                .collect();
            let http_default = |v: &Option<String>, d: &'static str| -> Option<String> {
                match v {
                    Some(v) => Some(v.clone()),
                    None if tcp => None,
                    None => Some(d.to_owned()),
                }
            };
            let method = http_default(&r.method, "GET");
            let path = http_default(&r.path, "/");
            let host = http_default(&r.host, "httpbin.foo.svc.cluster.local");
            let attrs = RequestAttrs {
                protocol: if tcp { Protocol::Tcp } else { Protocol::Http },
                source_principal: principal.as_ref(),
                source_ip: r.ip.unwrap_or("10.0.0.1".parse().unwrap()),
                destination_ip: r.dst_ip.unwrap_or("10.0.0.2".parse().unwrap()),
                destination_port: r.port.unwrap_or(8080),
                method: method.as_deref(),
                path: path.as_deref(),
                host: host.as_deref(),
                headers: &headers,
            };
            let d = compiled.evaluate(&attrs);
            for (how, other) in [
                ("linear", compiled.evaluate_linear(&attrs)),
                ("indexed", compiled.evaluate_indexed(&attrs)),
            ] {
                assert_eq!(
                    d, other,
                    "{} / {}: evaluate and the {how} evaluator disagree",
                    suite.name, case.name
                );
            }
            let got = if d.allowed { "allow" } else { "deny" };
            let mut problems = Vec::new();
            assert!(
                case.expect == "allow" || case.expect == "deny",
                "{}",
                case.name
            );
            if got != case.expect {
                problems.push(format!("decision {got}, want {}", case.expect));
            }
            if let Some(want) = &case.policy {
                let got = d.policy.map(|p| p.to_string());
                if &got != want {
                    problems.push(format!("policy {got:?}, want {want:?}"));
                }
            }
            if case.rule.is_some() && d.rule != case.rule {
                problems.push(format!("rule {:?}, want {:?}", d.rule, case.rule));
            }
            if let Some(want) = &case.reason
                && d.reason.as_str() != want
            {
                problems.push(format!("reason {:?}, want {want:?}", d.reason.as_str()));
            }
            let names = |v: &[ward_policy::PolicyMatch]| -> Vec<String> {
                v.iter().map(|m| m.policy.to_string()).collect()
            };
            if let Some(want) = &case.dry_run
                && &names(&d.dry_run_matches) != want
            {
                problems.push(format!(
                    "dry_run {:?}, want {want:?}",
                    names(&d.dry_run_matches)
                ));
            }
            if let Some(want) = &case.audit {
                if &names(&d.audit_matches) != want {
                    problems.push(format!(
                        "audit {:?}, want {want:?}",
                        names(&d.audit_matches)
                    ));
                }
                assert!(d.audit_matches.iter().all(|m| m.action == Action::Audit));
            }
            if !problems.is_empty() {
                failures.push(format!(
                    "{} / {} ({source}): {}",
                    suite.name,
                    case.name,
                    problems.join("; ")
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(count >= 150, "only {count} cases");
    eprintln!("{count} cases passed");
}
