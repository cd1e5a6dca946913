use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ward_api::discovery::{
    EndpointBody, Registration as Labels, ServiceBody, ServiceEndpoint, ServicePort,
};
use ward_identity::SpiffeId;

use super::Endpoints;

fn id(sa: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://cluster.local/ns/default/sa/{sa}")).unwrap()
}

fn spiffe_id_at(endpoints: &Endpoints, ip: IpAddr) -> Option<String> {
    let body: EndpointBody = endpoints.resource(ip)?.decode().unwrap();
    body.spiffe_id
}

#[test]
fn a_departed_registration_keeps_its_identity_until_the_address_registers_again() {
    let endpoints = Arc::new(Endpoints::new(&[]).unwrap());
    let ip: IpAddr = "198.18.0.7".parse().unwrap();
    let guard = endpoints.register(ip, &id("cart"), Labels::default());
    assert_eq!(spiffe_id_at(&endpoints, ip), Some(id("cart").to_string()));
    // The sidecar died: its address is still its own, never plaintext.
    drop(guard);
    assert_eq!(spiffe_id_at(&endpoints, ip), Some(id("cart").to_string()));
    // Another workload got the address and registered it.
    let _guard = endpoints.register(ip, &id("other"), Labels::default());
    assert_eq!(spiffe_id_at(&endpoints, ip), Some(id("other").to_string()));
}

#[test]
fn service_endpoints_get_their_workload_identity_and_declared_opaque_ports() {
    let endpoints = Arc::new(Endpoints::new(&[]).unwrap());
    let pod: IpAddr = "198.18.0.7".parse().unwrap();
    let cluster_ip: IpAddr = "198.19.0.10".parse().unwrap();
    let port = |address: &str| ServicePort {
        endpoints: vec![ServiceEndpoint {
            address: address.to_owned(),
            ready: true,
            serving: true,
            ..Default::default()
        }],
        ..Default::default()
    };
    let body = ServiceBody {
        service: "default/cart".into(),
        ports: BTreeMap::from([
            (80, port("198.18.0.7:8080")),
            (25, port("198.18.0.7:2525")),
            (81, port("198.18.0.9:8080")),
        ]),
    };
    endpoints.apply_services([(cluster_ip, Some(body))]);
    let _guard = endpoints.register(
        pod,
        &id("cart"),
        Labels {
            opaque_ports: vec![2525],
            ..Default::default()
        },
    );
    let resource: ServiceBody = endpoints
        .service_resource(cluster_ip)
        .unwrap()
        .decode()
        .unwrap();
    let http = &resource.ports[&80];
    assert_eq!(http.endpoints[0].spiffe_id, Some(id("cart").to_string()));
    assert_eq!(http.protocol, None);
    assert_eq!(
        resource.ports[&25].protocol,
        Some(ward_api::discovery::AppProtocol::Opaque)
    );
    // Nobody registered 198.18.0.9: no sidecar, plaintext.
    assert_eq!(resource.ports[&81].endpoints[0].spiffe_id, None);
    assert!(
        endpoints
            .service_resource("198.19.0.11".parse().unwrap())
            .is_none()
    );
}
