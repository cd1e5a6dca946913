use super::*;

fn id(sa: &str) -> SpiffeId {
    SpiffeId::for_service_account("td", "ns", sa).unwrap()
}

#[test]
fn exact_address_wins_over_ip() {
    let mut table = EndpointTable::default();
    table.insert("198.18.0.3".parse().unwrap(), id("pod"));
    table.insert("198.18.0.3:9090".parse().unwrap(), id("special"));
    assert_eq!(
        table.lookup("198.18.0.3:9090".parse().unwrap()),
        Some(&id("special"))
    );
    assert_eq!(
        table.lookup("198.18.0.3:80".parse().unwrap()),
        Some(&id("pod"))
    );
    assert_eq!(table.lookup("198.18.0.4:80".parse().unwrap()), None);
}

#[test]
fn json_file_is_rejected_whole_on_a_bad_entry() {
    let good = r#"{"endpoints": [{"address": "127.0.0.1:8443", "spiffe_id": "spiffe://td/ns/a/sa/b"},
                                  {"address": "::1", "spiffe_id": "spiffe://td/ns/a/sa/c"}]}"#;
    let table = EndpointTable::from_json(good).unwrap();
    assert_eq!(table.len(), 2);
    let bad_id = r#"{"endpoints": [{"address": "127.0.0.1:8443", "spiffe_id": "spiffe://td/"}]}"#;
    assert!(
        EndpointTable::from_json(bad_id)
            .unwrap_err()
            .contains("endpoints[0].spiffe_id")
    );
    let bad_addr = r#"{"endpoints": [{"address": "host:80", "spiffe_id": "spiffe://td/x"}]}"#;
    assert!(
        EndpointTable::from_json(bad_addr)
            .unwrap_err()
            .contains("endpoints[0].address")
    );
    assert!(EndpointTable::from_json(r#"{"endpoints": [], "extra": 1}"#).is_err());
}
