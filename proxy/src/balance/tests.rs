use std::collections::HashMap;

use ward_api::discovery::{ServiceEndpoint, ServicePort};

use super::*;

const ID: &str = "spiffe://cluster.local/ns/default/sa/server";

fn endpoint(addr: &str, ready: bool) -> ServiceEndpoint {
    ServiceEndpoint {
        address: addr.to_owned(),
        spiffe_id: Some(ID.to_owned()),
        workload: None,
        ready,
        serving: ready,
        terminating: false,
    }
}

fn balancer(endpoints: Vec<ServiceEndpoint>, previous: Option<&PortBalancer>) -> PortBalancer {
    let port = ServicePort {
        endpoints,
        ..Default::default()
    };
    PortBalancer::from_resource("default/server".into(), 80, &port, previous).unwrap()
}

fn spread(b: &PortBalancer, picks: usize) -> HashMap<SocketAddr, usize> {
    let mut counts = HashMap::new();
    for _ in 0..picks {
        let e = b.pick(&[], true).expect("an endpoint");
        *counts.entry(e.addr).or_default() += 1;
    }
    counts
}

#[test]
fn idle_endpoints_share_the_picks() {
    let b = balancer(
        vec![
            endpoint("198.18.0.2:8080", true),
            endpoint("198.18.0.3:8080", true),
            endpoint("198.18.0.4:8080", true),
        ],
        None,
    );
    let counts = spread(&b, 3000);
    assert_eq!(counts.len(), 3);
    for (addr, n) in counts {
        assert!((700..=1300).contains(&n), "{addr} got {n} of 3000");
    }
}

#[test]
fn a_busy_endpoint_gets_fewer_requests() {
    let b = balancer(
        vec![
            endpoint("198.18.0.2:8080", true),
            endpoint("198.18.0.3:8080", true),
        ],
        None,
    );
    let busy = b.endpoints()[0].clone();
    let _held: Vec<InFlight> = (0..20).map(|_| busy.start()).collect();
    let counts = spread(&b, 200);
    assert_eq!(counts.get(&busy.addr), None, "{counts:?}");
}

#[test]
fn not_ready_endpoints_get_nothing_and_terminating_ones_only_as_a_last_resort() {
    let mut draining = endpoint("198.18.0.3:8080", false);
    draining.serving = true;
    draining.terminating = true;
    let b = balancer(
        vec![
            endpoint("198.18.0.2:8080", true),
            draining.clone(),
            endpoint("198.18.0.4:8080", false),
        ],
        None,
    );
    assert_eq!(
        spread(&b, 100).keys().collect::<Vec<_>>(),
        vec![&"198.18.0.2:8080".parse().unwrap()]
    );
    let b = balancer(vec![draining, endpoint("198.18.0.4:8080", false)], Some(&b));
    assert_eq!(
        spread(&b, 100).keys().collect::<Vec<_>>(),
        vec![&"198.18.0.3:8080".parse().unwrap()]
    );
    let b = balancer(vec![endpoint("198.18.0.4:8080", false)], Some(&b));
    assert!(b.pick(&[], true).is_none());
}

#[test]
fn repeated_failures_eject_until_a_probe_succeeds() {
    let b = balancer(
        vec![
            endpoint("198.18.0.2:8080", true),
            endpoint("198.18.0.3:8080", true),
        ],
        None,
    );
    let bad = b.endpoints()[0].clone();
    assert!(!bad.failed());
    assert!(!bad.failed());
    assert!(bad.failed(), "the third consecutive failure ejects");
    assert!(!bad.failed(), "ejected once");
    assert!(bad.is_ejected());
    assert!(!spread(&b, 100).contains_key(&bad.addr));
    assert!(bad.probe_delay() <= FIRST_EJECTION);
    bad.probed(false);
    assert!(bad.probe_delay() > FIRST_EJECTION, "backoff doubles");
    bad.probed(true);
    assert!(!bad.is_ejected());
    assert!(spread(&b, 300).contains_key(&bad.addr));
}

#[test]
fn all_ejected_still_picks_rather_than_failing() {
    let b = balancer(vec![endpoint("198.18.0.2:8080", true)], None);
    let only = b.endpoints()[0].clone();
    for _ in 0..EJECT_AFTER {
        only.failed();
    }
    assert!(only.is_ejected());
    assert_eq!(b.pick(&[], true).unwrap().addr, only.addr);
}

#[test]
fn an_update_keeps_the_state_of_endpoints_that_stay() {
    let b = balancer(
        vec![
            endpoint("198.18.0.2:8080", true),
            endpoint("198.18.0.3:8080", true),
        ],
        None,
    );
    let kept = b.endpoints()[0].clone();
    let next = balancer(
        vec![
            endpoint("198.18.0.2:8080", false),
            endpoint("198.18.0.5:8080", true),
        ],
        Some(&b),
    );
    assert!(Arc::ptr_eq(&next.endpoints()[0], &kept));
    assert!(!kept.is_ready(), "the conditions follow the update");
    assert_eq!(next.endpoints().len(), 2);
}

#[test]
fn tried_and_unmeshed_endpoints_are_skipped_for_http() {
    let mut plain = endpoint("198.18.0.9:8080", true);
    plain.spiffe_id = None;
    let b = balancer(vec![endpoint("198.18.0.2:8080", true), plain], None);
    let first: SocketAddr = "198.18.0.2:8080".parse().unwrap();
    assert!(b.pick(&[first], true).is_none());
    assert_eq!(b.pick(&[first], false).unwrap().addr.port(), 8080);
    assert!(b.has_meshed());
}

#[test]
fn an_invalid_endpoint_refuses_the_whole_port() {
    let port = ServicePort {
        endpoints: vec![endpoint("not-an-address", true)],
        ..Default::default()
    };
    let err = PortBalancer::from_resource("default/server".into(), 80, &port, None)
        .err()
        .unwrap();
    assert!(err.contains("not IP:PORT"), "{err}");
}
