//! The policy parser (`ward_policy::PolicySet::parse_str`): YAML documents
//! as operators, CRDs and the discovery stream hand them over. A set that
//! loads is compiled for every workload its selectors name and evaluated;
//! an optional `#request` line ends the YAML and is followed by a request
//! in `ward authz check`'s JSON form, evaluated as well.
#![no_main]
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use ward_identity::SpiffeId;
use ward_policy::request::OwnedRequest;
use ward_policy::{
    DecisionReason, EvalOptions, NoHeaders, PolicySet, Protocol, RequestAttrs, WorkloadPolicy,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (yaml, request) = match text.split_once("\n#request\n") {
        Some((yaml, request)) => (yaml, Some(request)),
        None => (text, None),
    };
    let request = request.and_then(|r| OwnedRequest::from_json(r).ok());
    let Ok(set) = PolicySet::parse_str("fuzz.yaml", yaml) else {
        return;
    };
    // Deterministic: the same text loads to the same policies and versions.
    let again = PolicySet::parse_str("fuzz.yaml", yaml).expect("loads twice");
    assert!(set.policies().eq(again.policies()));
    let texts = [("fuzz.yaml".to_owned(), yaml.to_owned())];
    let parsed_texts = PolicySet::parse_texts(&texts).expect("loads as a set of one");
    assert!(set.policies().eq(parsed_texts.policies()));
    // Merging a set with nothing changes nothing.
    let merged = PolicySet::merge([&set]).expect("merges alone");
    assert!(set.policies().eq(merged.policies()));

    let options = EvalOptions::default();
    let mut workloads: Vec<(String, BTreeMap<String, String>)> = vec![
        ("default".into(), BTreeMap::new()),
        (options.root_namespace.clone(), BTreeMap::new()),
    ];
    for p in set.authorization_policies() {
        workloads.push((
            p.id.namespace.to_string(),
            p.selector.clone().unwrap_or_default(),
        ));
    }
    for p in set.peer_authentications() {
        workloads.push((
            p.id.namespace.to_string(),
            p.selector.clone().unwrap_or_default(),
        ));
    }
    workloads.truncate(16);
    for (namespace, labels) in &workloads {
        let workload = set.for_workload(namespace, labels, &options);
        for p in workload.policies() {
            assert!(PolicySet::applies(p, namespace, labels, &options));
        }
        check_requests(&workload, namespace, request.as_ref());
        for port in [0, 80, 8080, 65535] {
            let mode = set.mtls_mode(namespace, labels, port, &options);
            assert_ne!(mode, ward_policy::MtlsMode::Unset);
        }
    }
});

fn check_requests(workload: &WorkloadPolicy, namespace: &str, extra: Option<&OwnedRequest>) {
    let peer = SpiffeId::for_service_account("cluster.local", namespace, "client").ok();
    let other = SpiffeId::parse("spiffe://other.domain/ns/x/sa/y").ok();
    let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let mut requests = Vec::new();
    for principal in [None, peer.as_ref(), other.as_ref()] {
        for (method, path) in [("GET", "/"), ("POST", "/admin/x"), ("GET", "/a/../b%2e")] {
            requests.push(RequestAttrs {
                protocol: Protocol::Http,
                source_principal: principal,
                source_ip: ip,
                destination_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
                destination_port: 8080,
                method: Some(method),
                path: Some(path),
                host: Some("api.default.svc.cluster.local"),
                headers: &NoHeaders,
            });
        }
        requests.push(RequestAttrs {
            protocol: Protocol::Tcp,
            method: None,
            path: None,
            host: None,
            ..requests[requests.len() - 1]
        });
    }
    if let Some(r) = extra {
        requests.push(r.attrs());
    }
    for req in &requests {
        let decision = workload.evaluate(req);
        // Evaluation is a pure function of the request.
        assert_eq!(decision, workload.evaluate(req));
        match decision.reason {
            DecisionReason::AllowedNoAllowPolicy => {
                assert!(decision.allowed && decision.policy.is_none())
            }
            DecisionReason::AllowedByAllowPolicy | DecisionReason::DeniedByDenyPolicy => {
                let id = decision.policy.expect("a deciding policy");
                let rule = decision.rule.expect("a deciding rule");
                let p = workload
                    .policies()
                    .find(|p| &p.id == id && !p.dry_run)
                    .expect("the deciding policy applies and is enforced");
                assert!(rule < p.rules.len());
                // Fail closed: on TCP an ALLOW rule needing HTTP fields never matches.
                if req.protocol == Protocol::Tcp
                    && decision.reason == DecisionReason::AllowedByAllowPolicy
                {
                    assert!(!p.rules[rule].has_http_fields(), "{id} rule {rule}");
                }
            }
            _ => assert!(!decision.allowed),
        }
        // A workload none of whose policies looks at HTTP fields may be
        // decided per connection: the TCP decision is the HTTP one.
        if req.protocol == Protocol::Http
            && !workload.needs_http_fields()
            && decision.reason != DecisionReason::DeniedMalformedPath
            && decision.reason != DecisionReason::DeniedMalformedMethod
        {
            let tcp = workload.evaluate(&RequestAttrs {
                protocol: Protocol::Tcp,
                method: None,
                path: None,
                host: None,
                ..*req
            });
            assert_eq!(
                (tcp.allowed, tcp.policy, tcp.rule),
                (decision.allowed, decision.policy, decision.rule)
            );
        }
    }
}
