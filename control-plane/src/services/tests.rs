use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};
use ward_api::discovery::{AppProtocol, ServiceBody, ServiceEndpoint};

use super::ServiceCatalog;
use crate::k8s::WatchEvent::{Applied, Deleted, Restarted};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A Service in namespace `shop` from its `spec`, with `annotations`.
fn service_with(name: &str, spec: Value, annotations: Value) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "shop", "annotations": annotations},
        "spec": spec,
    }))
    .unwrap()
}

fn service(name: &str, spec: Value) -> Service {
    service_with(name, spec, json!({}))
}

/// `web`: ClusterIP 10.96.0.10, port 80 `http` → named target port `http`,
/// port 9090 `grpc` → 9000.
fn web() -> Service {
    service(
        "web",
        json!({
            "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
            "ports": [
                {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
                {"name": "grpc", "port": 9090, "targetPort": 9000, "protocol": "TCP"},
            ],
        }),
    )
}

/// An EndpointSlice of `service` in `shop`; endpoints are
/// (address, conditions, pod).
fn slice(
    name: &str,
    service: &str,
    address_type: &str,
    ports: Value,
    endpoints: &[(&str, Value, Option<&str>)],
) -> EndpointSlice {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(address, conditions, pod)| {
            let mut e = json!({"addresses": [address], "conditions": conditions});
            if let Some(pod) = pod {
                e["targetRef"] = json!({"kind": "Pod", "namespace": "shop", "name": pod, "uid": format!("uid-{pod}")});
            }
            e
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "shop",
            "labels": {"kubernetes.io/service-name": service, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": address_type,
        "ports": ports,
        "endpoints": endpoints,
    }))
    .unwrap()
}

fn ready() -> Value {
    json!({"ready": true, "serving": true, "terminating": false})
}

fn web_ports() -> Value {
    json!([{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "grpc", "port": 9000, "protocol": "TCP"}])
}

fn endpoint(address: &str, pod: Option<&str>) -> ServiceEndpoint {
    ServiceEndpoint {
        address: address.into(),
        spiffe_id: None,
        workload: pod.map(|p| format!("shop/{p}")),
        ready: true,
        serving: true,
        terminating: false,
    }
}

fn addresses(body: &ServiceBody, port: u16) -> Vec<String> {
    body.ports[&port]
        .endpoints
        .iter()
        .map(|e| e.address.clone())
        .collect()
}

fn one(changes: BTreeMap<IpAddr, Option<ServiceBody>>, address: &str) -> Option<ServiceBody> {
    assert_eq!(changes.len(), 1, "{changes:?}");
    changes.get(&ip(address)).cloned().expect("changed")
}

#[test]
fn named_target_ports_resolve_from_the_slice() {
    let mut catalog = ServiceCatalog::default();
    let body = one(catalog.apply_service(Applied(web())), "10.96.0.10").unwrap();
    assert_eq!(body.service, "shop/web");
    assert_eq!(
        body.ports.keys().copied().collect::<Vec<_>>(),
        vec![80, 9090]
    );
    assert_eq!(body.ports[&80].name.as_deref(), Some("http"));
    assert!(body.ports[&80].endpoints.is_empty());

    let changes = catalog.apply_slice(Applied(slice(
        "web-abc",
        "web",
        "IPv4",
        web_ports(),
        &[
            ("198.18.0.11", ready(), Some("web-2")),
            ("198.18.0.10", ready(), Some("web-1")),
        ],
    )));
    let body = one(changes, "10.96.0.10").unwrap();
    // Sorted by address, target ports from the slice.
    assert_eq!(
        body.ports[&80].endpoints,
        vec![
            endpoint("198.18.0.10:8080", Some("web-1")),
            endpoint("198.18.0.11:8080", Some("web-2"))
        ]
    );
    assert_eq!(
        addresses(&body, 9090),
        vec!["198.18.0.10:9000", "198.18.0.11:9000"]
    );
    assert_eq!(
        catalog.snapshot(),
        BTreeMap::from([(ip("10.96.0.10"), body)])
    );

    // The same slice again changes nothing.
    let again = slice(
        "web-abc",
        "web",
        "IPv4",
        web_ports(),
        &[
            ("198.18.0.11", ready(), Some("web-2")),
            ("198.18.0.10", ready(), Some("web-1")),
        ],
    );
    assert!(catalog.apply_slice(Applied(again)).is_empty());
}

#[test]
fn a_single_unnamed_port_matches_the_unnamed_slice_port() {
    let mut catalog = ServiceCatalog::default();
    catalog.apply_service(Applied(service(
        "db",
        json!({"clusterIP": "10.96.0.20", "ports": [{"port": 5432, "targetPort": 15432}]}),
    )));
    let changes = catalog.apply_slice(Applied(slice(
        "db-1",
        "db",
        "IPv4",
        json!([{"name": "", "port": 15432, "protocol": "TCP"}]),
        &[("198.18.0.20", json!({}), None)],
    )));
    let body = one(changes, "10.96.0.20").unwrap();
    assert_eq!(body.ports[&5432].name, None);
    assert_eq!(
        body.ports[&5432].endpoints,
        vec![endpoint("198.18.0.20:15432", None)]
    );
}

#[test]
fn only_tcp_ports() {
    let mut catalog = ServiceCatalog::default();
    let body = one(
        catalog.apply_service(Applied(service(
            "dns",
            json!({"clusterIP": "10.96.0.53", "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                {"name": "sctp", "port": 9999, "protocol": "SCTP"},
            ]}),
        ))),
        "10.96.0.53",
    )
    .unwrap();
    assert_eq!(body.ports.len(), 1);
    assert_eq!(body.ports[&53].name.as_deref(), Some("dns-tcp"));
}

#[test]
fn ipv6_and_dual_stack_addresses_take_the_slices_of_their_family() {
    let mut catalog = ServiceCatalog::default();
    let dual = service(
        "web",
        json!({
            "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:10:96::a"],
            "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "PreferDualStack",
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        }),
    );
    let changes = catalog.apply_service(Applied(dual));
    assert_eq!(
        changes.keys().copied().collect::<Vec<_>>(),
        vec![ip("10.96.0.10"), ip("fd00:10:96::a")]
    );
    let ports = json!([{"name": "http", "port": 8080}]);
    catalog.apply_slice(Applied(slice(
        "web-v4",
        "web",
        "IPv4",
        ports.clone(),
        &[("198.18.0.10", ready(), Some("web-1"))],
    )));
    let changes = catalog.apply_slice(Applied(slice(
        "web-v6",
        "web",
        "IPv6",
        ports.clone(),
        &[("fd00::10", ready(), Some("web-1"))],
    )));
    let v6 = one(changes, "fd00:10:96::a").unwrap();
    assert_eq!(v6.service, "shop/web");
    assert_eq!(addresses(&v6, 80), vec!["[fd00::10]:8080"]);
    let snapshot = catalog.snapshot();
    assert_eq!(
        addresses(&snapshot[&ip("10.96.0.10")], 80),
        vec!["198.18.0.10:8080"]
    );
    assert_eq!(snapshot[&ip("fd00:10:96::a")], v6);

    // An IPv6-only Service; an FQDN slice is ignored.
    let only_v6 = service(
        "api",
        json!({"clusterIP": "fd00:10:96::b", "clusterIPs": ["fd00:10:96::b"], "ipFamilies": ["IPv6"],
               "ports": [{"name": "http", "port": 80}]}),
    );
    catalog.apply_service(Applied(only_v6));
    assert!(
        catalog
            .apply_slice(Applied(slice(
                "api-fqdn",
                "api",
                "FQDN",
                ports.clone(),
                &[("api.example.com", ready(), None)],
            )))
            .is_empty()
    );
    let changes = catalog.apply_slice(Applied(slice(
        "api-v6",
        "api",
        "IPv6",
        ports,
        &[("fd00::20", ready(), None)],
    )));
    let body = one(changes, "fd00:10:96::b").unwrap();
    assert_eq!(addresses(&body, 80), vec!["[fd00::20]:8080"]);
}

#[test]
fn headless_and_external_name_services_publish_nothing() {
    let mut catalog = ServiceCatalog::default();
    let headless = service(
        "db",
        json!({"clusterIP": "None", "clusterIPs": ["None"], "ports": [{"port": 5432}]}),
    );
    assert!(catalog.apply_service(Applied(headless)).is_empty());
    let external = service(
        "mail",
        json!({"type": "ExternalName", "externalName": "mail.example.com", "ports": [{"port": 25}]}),
    );
    assert!(catalog.apply_service(Applied(external)).is_empty());
    assert!(
        catalog
            .apply_slice(Applied(slice(
                "db-1",
                "db",
                "IPv4",
                json!([{"port": 5432}]),
                &[("198.18.0.30", ready(), None)],
            )))
            .is_empty()
    );
    assert!(catalog.snapshot().is_empty());

    // A Service that becomes headless is gone from its address.
    catalog.apply_service(Applied(web()));
    let mut now_headless = web();
    now_headless.spec.as_mut().unwrap().cluster_ip = Some("None".into());
    now_headless.spec.as_mut().unwrap().cluster_ips = Some(vec!["None".into()]);
    assert_eq!(
        catalog.apply_service(Applied(now_headless)),
        BTreeMap::from([(ip("10.96.0.10"), None)])
    );
}

#[test]
fn conditions_follow_kubernetes_defaults() {
    let mut catalog = ServiceCatalog::default();
    catalog.apply_service(Applied(web()));
    let changes = catalog.apply_slice(Applied(slice(
        "web-abc",
        "web",
        "IPv4",
        web_ports(),
        &[
            // No conditions: ready, serving, not terminating.
            ("198.18.0.1", json!({}), None),
            // Not ready: serving defaults to not ready.
            ("198.18.0.2", json!({"ready": false}), None),
            // Terminating but still serving.
            (
                "198.18.0.3",
                json!({"ready": false, "serving": true, "terminating": true}),
                None,
            ),
        ],
    )));
    let body = one(changes, "10.96.0.10").unwrap();
    let flags: Vec<(bool, bool, bool)> = body.ports[&80]
        .endpoints
        .iter()
        .map(|e| (e.ready, e.serving, e.terminating))
        .collect();
    assert_eq!(
        flags,
        vec![
            (true, true, false),
            (false, false, false),
            (false, true, true)
        ]
    );
}

#[test]
fn an_address_in_two_slices_counts_once_and_slices_come_and_go() {
    let mut catalog = ServiceCatalog::default();
    catalog.apply_service(Applied(web()));
    catalog.apply_slice(Applied(slice(
        "web-a",
        "web",
        "IPv4",
        web_ports(),
        &[("198.18.0.10", ready(), Some("web-1"))],
    )));
    let changes = catalog.apply_slice(Applied(slice(
        "web-b",
        "web",
        "IPv4",
        web_ports(),
        &[
            ("198.18.0.10", json!({"ready": false}), Some("web-1")),
            ("198.18.0.11", ready(), Some("web-2")),
        ],
    )));
    let body = one(changes, "10.96.0.10").unwrap();
    // 198.18.0.10 once, as the first slice by name says.
    assert_eq!(
        body.ports[&80].endpoints,
        vec![
            endpoint("198.18.0.10:8080", Some("web-1")),
            endpoint("198.18.0.11:8080", Some("web-2"))
        ]
    );

    // web-a is deleted: web-b's word on 198.18.0.10 counts now.
    let gone = slice("web-a", "web", "IPv4", json!([]), &[]);
    let body = one(catalog.apply_slice(Deleted(gone)), "10.96.0.10").unwrap();
    assert_eq!(
        addresses(&body, 80),
        vec!["198.18.0.10:8080", "198.18.0.11:8080"]
    );
    assert!(!body.ports[&80].endpoints[0].ready);

    // A slice relabelled to another Service leaves this one.
    let mut moved = slice(
        "web-b",
        "other",
        "IPv4",
        web_ports(),
        &[("198.18.0.11", ready(), None)],
    );
    moved
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("kubernetes.io/service-name".into(), "other".into());
    let body = one(catalog.apply_slice(Applied(moved)), "10.96.0.10").unwrap();
    assert!(body.ports[&80].endpoints.is_empty());
}

#[test]
fn slices_that_come_before_their_service_are_used_when_it_comes() {
    let mut catalog = ServiceCatalog::default();
    assert!(
        catalog
            .apply_slice(Applied(slice(
                "web-a",
                "web",
                "IPv4",
                web_ports(),
                &[("198.18.0.10", ready(), None)],
            )))
            .is_empty()
    );
    let body = one(catalog.apply_service(Applied(web())), "10.96.0.10").unwrap();
    assert_eq!(addresses(&body, 80), vec!["198.18.0.10:8080"]);
}

#[test]
fn a_deleted_service_is_gone_and_its_slices_wait() {
    let mut catalog = ServiceCatalog::default();
    catalog.apply_service(Applied(web()));
    catalog.apply_slice(Applied(slice(
        "web-a",
        "web",
        "IPv4",
        web_ports(),
        &[("198.18.0.10", ready(), None)],
    )));
    assert_eq!(
        catalog.apply_service(Deleted(web())),
        BTreeMap::from([(ip("10.96.0.10"), None)])
    );
    assert!(catalog.snapshot().is_empty());
    assert_eq!(catalog.service_count(), 0);
    // Recreated with another address: the slice is still there.
    let mut again = web();
    again.spec.as_mut().unwrap().cluster_ip = Some("10.96.0.99".into());
    again.spec.as_mut().unwrap().cluster_ips = Some(vec!["10.96.0.99".into()]);
    let body = one(catalog.apply_service(Applied(again)), "10.96.0.99").unwrap();
    assert_eq!(addresses(&body, 80), vec!["198.18.0.10:8080"]);
}

#[test]
fn a_changed_cluster_ip_moves_the_service() {
    let mut catalog = ServiceCatalog::default();
    catalog.apply_service(Applied(web()));
    let mut moved = web();
    moved.spec.as_mut().unwrap().cluster_ips = Some(vec!["10.96.0.11".into()]);
    let changes = catalog.apply_service(Applied(moved));
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[&ip("10.96.0.10")], None);
    assert!(changes[&ip("10.96.0.11")].is_some());
}

#[test]
fn a_relist_replaces_everything_and_reports_only_differences() {
    let mut catalog = ServiceCatalog::default();
    let api = service(
        "api",
        json!({"clusterIP": "10.96.0.20", "ports": [{"name": "http", "port": 80}]}),
    );
    catalog.apply_service(Restarted(vec![web(), api.clone()]));
    catalog.apply_slice(Restarted(vec![
        slice(
            "web-a",
            "web",
            "IPv4",
            web_ports(),
            &[("198.18.0.10", ready(), None)],
        ),
        slice(
            "api-a",
            "api",
            "IPv4",
            json!([{"name": "http", "port": 8080}]),
            &[("198.18.0.20", ready(), None)],
        ),
    ]));
    assert_eq!(catalog.snapshot().len(), 2);

    // Services relisted: api is gone (deleted while the watch was down),
    // web unchanged.
    assert_eq!(
        catalog.apply_service(Restarted(vec![web()])),
        BTreeMap::from([(ip("10.96.0.20"), None)])
    );
    // Slices relisted: web-a changed, api-a gone (no visible change: its
    // Service is gone), a new slice for web.
    let changes = catalog.apply_slice(Restarted(vec![
        slice(
            "web-a",
            "web",
            "IPv4",
            web_ports(),
            &[("198.18.0.10", json!({"ready": false}), None)],
        ),
        slice(
            "web-b",
            "web",
            "IPv4",
            web_ports(),
            &[("198.18.0.12", ready(), None)],
        ),
    ]));
    let body = one(changes, "10.96.0.10").unwrap();
    assert_eq!(
        addresses(&body, 80),
        vec!["198.18.0.10:8080", "198.18.0.12:8080"]
    );
    assert!(!body.ports[&80].endpoints[0].ready);
    // The same relist again: nothing.
    assert!(catalog.apply_service(Restarted(vec![web()])).is_empty());
    // And api comes back with the slice it had: none (api-a was dropped).
    let body = one(catalog.apply_service(Applied(api)), "10.96.0.20").unwrap();
    assert!(body.ports[&80].endpoints.is_empty());
}

#[test]
fn app_protocol_sets_the_port_protocol() {
    let mut catalog = ServiceCatalog::default();
    let svc = service(
        "web",
        json!({"clusterIP": "10.96.0.10", "ports": [
            {"name": "http", "port": 80, "appProtocol": "http"},
            {"name": "h2c", "port": 81, "appProtocol": "kubernetes.io/h2c"},
            {"name": "grpc", "port": 82, "appProtocol": "grpc"},
            {"name": "tcp", "port": 83, "appProtocol": "tcp"},
            {"name": "unknown", "port": 84, "appProtocol": "example.com/custom"},
            {"name": "none", "port": 85},
        ]}),
    );
    let body = one(catalog.apply_service(Applied(svc)), "10.96.0.10").unwrap();
    let protocols: Vec<Option<AppProtocol>> = body.ports.values().map(|p| p.protocol).collect();
    assert_eq!(
        protocols,
        vec![
            Some(AppProtocol::Http1),
            Some(AppProtocol::Http2),
            Some(AppProtocol::Http2),
            Some(AppProtocol::Opaque),
            None,
            None
        ]
    );
}

#[test]
fn the_opaque_ports_annotation_marks_ports_without_app_protocol() {
    let mut catalog = ServiceCatalog::default();
    let svc = service_with(
        "db",
        json!({"clusterIP": "10.96.0.20", "ports": [
            {"name": "sql", "port": 5432},
            {"name": "http", "port": 80, "appProtocol": "http"},
            {"name": "admin", "port": 8080},
        ]}),
        // appProtocol wins; a bad entry is skipped, the rest counts.
        json!({"ward.io/opaque-ports": "5432, 80,not-a-port"}),
    );
    let body = one(catalog.apply_service(Applied(svc)), "10.96.0.20").unwrap();
    assert_eq!(body.ports[&5432].protocol, Some(AppProtocol::Opaque));
    assert_eq!(body.ports[&80].protocol, Some(AppProtocol::Http1));
    assert_eq!(body.ports[&8080].protocol, None);
}

#[test]
fn the_timeout_annotation_applies_to_every_port() {
    let spec = json!({"clusterIP": "10.96.0.10", "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81}]});
    let timeout_of = |value: &str| {
        let mut catalog = ServiceCatalog::default();
        let svc = service_with("web", spec.clone(), json!({"ward.io/timeout": value}));
        let body = one(catalog.apply_service(Applied(svc)), "10.96.0.10").unwrap();
        assert_eq!(body.ports[&80].timeout_ms, body.ports[&81].timeout_ms);
        body.ports[&80].timeout_ms
    };
    assert_eq!(timeout_of("2s"), Some(2000));
    assert_eq!(timeout_of("500ms"), Some(500));
    assert_eq!(timeout_of("1m 30s"), Some(90_000));
    assert_eq!(timeout_of("0s"), None);
    // Invalid: logged, no timeout.
    assert_eq!(timeout_of("soon"), None);
    assert_eq!(timeout_of("5"), None);
    let mut catalog = ServiceCatalog::default();
    let body = one(
        catalog.apply_service(Applied(service("web", spec))),
        "10.96.0.10",
    )
    .unwrap();
    assert_eq!(body.ports[&80].timeout_ms, None);
}

#[test]
fn two_services_claiming_one_address_publish_the_first_until_it_lets_go() {
    let mut catalog = ServiceCatalog::default();
    let spec = json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]});
    catalog.apply_service(Applied(service("b", spec.clone())));
    let a = service("a", spec);
    let body = one(catalog.apply_service(Applied(a.clone())), "10.96.0.10").unwrap();
    assert_eq!(body.service, "shop/a");
    let body = one(catalog.apply_service(Deleted(a)), "10.96.0.10").unwrap();
    assert_eq!(body.service, "shop/b");
}

#[test]
fn strict_adds_refuse_malformed_objects() {
    let mut catalog = ServiceCatalog::default();
    let bad_ip = service(
        "web",
        json!({"clusterIP": "10.96.0.x", "ports": [{"port": 80}]}),
    );
    let err = catalog.add_service(&bad_ip).unwrap_err();
    assert!(err.contains("10.96.0.x"), "{err}");
    let bad_port = service(
        "web",
        json!({"clusterIP": "10.96.0.1", "ports": [{"port": 70000}]}),
    );
    assert!(
        catalog
            .add_service(&bad_port)
            .unwrap_err()
            .contains("70000")
    );
    let bad_address = slice(
        "web-a",
        "web",
        "IPv4",
        web_ports(),
        &[("fd00::1", ready(), None)],
    );
    let err = catalog.add_slice(&bad_address).unwrap_err();
    assert!(err.contains("not an IPv4 address"), "{err}");
    assert!(catalog.snapshot().is_empty());
    catalog.add_service(&web()).unwrap();
    assert_eq!(catalog.snapshot().len(), 1);

    // From a watch, the same objects are ignored (treated as absent).
    let mut watched = ServiceCatalog::default();
    watched.apply_service(Applied(web()));
    let mut broken = web();
    broken.spec.as_mut().unwrap().cluster_ips = Some(vec!["nonsense".into()]);
    assert_eq!(
        watched.apply_service(Applied(broken)),
        BTreeMap::from([(ip("10.96.0.10"), None)])
    );
}
