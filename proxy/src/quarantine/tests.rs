use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::severable::Severable;
use super::*;

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const API: &str = "spiffe://cluster.local/ns/shop/sa/api";

fn resources(entries: &[(&str, QuarantineBody)]) -> BTreeMap<String, Resource> {
    entries
        .iter()
        .map(|(name, body)| (name.to_string(), Resource::new(*name, body)))
        .collect()
}

fn peer(id: Option<&str>, serial: Option<&str>, address: &str) -> Peer {
    Peer {
        spiffe_id: id.map(|id| SpiffeId::parse(id).unwrap()),
        serial: serial.map(str::to_owned),
        address: address.parse().unwrap(),
    }
}

fn set(entries: &[(&str, QuarantineBody)]) -> QuarantineSet {
    QuarantineSet::from_resources(7, &resources(entries)).unwrap()
}

#[test]
fn a_peer_matches_by_identity_serial_or_address() {
    let set = set(&[
        (
            "identity-a",
            QuarantineBody {
                target: API.into(),
                spiffe_ids: vec![API.into()],
                ..Default::default()
            },
        ),
        (
            "serial-b",
            QuarantineBody {
                target: "serial:0A1B".into(),
                // Sent canonical; any hex form is read as the same serial.
                serials: vec!["0A1B".into()],
                ..Default::default()
            },
        ),
        (
            "pod-c",
            QuarantineBody {
                target: "shop/web-2".into(),
                addresses: vec!["198.18.0.9".into()],
                ..Default::default()
            },
        ),
    ]);
    assert_eq!((set.version, set.entries), (7, 3));
    let by = |p: Peer| set.check(&p).map(|h| (h.entry, h.by));
    assert_eq!(
        by(peer(Some(API), None, "198.18.0.2")),
        Some(("identity-a".into(), "spiffe_id"))
    );
    // The web identity is fine, except its one revoked certificate and the
    // quarantined pod's address.
    assert_eq!(by(peer(Some(WEB), Some("a1c"), "198.18.0.3")), None);
    assert_eq!(
        by(peer(Some(WEB), Some("a1b"), "198.18.0.3")),
        Some(("serial-b".into(), "serial"))
    );
    assert_eq!(
        by(peer(Some(WEB), Some("a1c"), "198.18.0.9")),
        Some(("pod-c".into(), "address"))
    );
    // Outbound before the handshake: identity and address only.
    assert_eq!(by(peer(Some(WEB), None, "198.18.0.3")), None);
}

#[test]
fn an_update_that_does_not_decode_is_refused_whole() {
    let bad_address = resources(&[(
        "pod-c",
        QuarantineBody {
            target: "shop/web".into(),
            addresses: vec!["not-an-address".into()],
            ..Default::default()
        },
    )]);
    assert!(QuarantineSet::from_resources(1, &bad_address).is_err());
    let bad_serial = resources(&[(
        "serial-x",
        QuarantineBody {
            target: "serial:zz".into(),
            serials: vec!["zz".into()],
            ..Default::default()
        },
    )]);
    assert!(QuarantineSet::from_resources(1, &bad_serial).is_err());
}

fn quarantine_api() -> QuarantineSet {
    set(&[(
        "identity-a",
        QuarantineBody {
            target: API.into(),
            spiffe_ids: vec![API.into()],
            ..Default::default()
        },
    )])
}

#[tokio::test]
async fn an_update_cuts_the_open_connections_of_the_peers_it_names_only() {
    let metrics = Arc::new(ProxyMetrics::new());
    let quarantine = Quarantine::new(metrics.clone());
    let (api_side, _api_remote) = tokio::io::duplex(64);
    let (web_side, mut web_remote) = tokio::io::duplex(64);
    let api = quarantine
        .admit(peer(Some(API), Some("1"), "198.18.0.2"), "inbound")
        .unwrap();
    let web = quarantine
        .admit(peer(Some(WEB), Some("2"), "198.18.0.3"), "inbound")
        .unwrap();
    let mut api_io = Severable::new(api_side, api);
    let mut web_io = Severable::new(web_side, web);
    assert_eq!(quarantine.live_connections(), 2);

    // A read waiting for data when the update arrives fails at once.
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 8];
        let read = api_io.read(&mut buf).await;
        (read.map_err(|e| e.kind()), api_io)
    });
    tokio::task::yield_now().await;
    quarantine.apply(quarantine_api());
    let (read, mut api_io) = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the waiting read was woken")
        .unwrap();
    assert_eq!(read, Err(std::io::ErrorKind::ConnectionAborted));
    assert!(api_io.write_all(b"x").await.is_err());
    assert_eq!(
        metrics
            .quarantine_closed
            .with_label_values(&["inbound"])
            .get(),
        1
    );
    assert_eq!(metrics.quarantined_identities.get(), 1);

    // The other connection carries on.
    web_remote.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    web_io.read_exact(&mut buf).await.unwrap();
    web_io.write_all(b"pong").await.unwrap();
    web_remote.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");

    // Dropped connections leave the registry; a quarantined peer is not
    // admitted at all.
    drop(api_io);
    assert_eq!(quarantine.live_connections(), 1);
    assert!(
        quarantine
            .admit(peer(Some(API), Some("3"), "198.18.0.4"), "outbound")
            .is_err()
    );
    assert_eq!(quarantine.live_connections(), 1);

    // Lifted: admitted again.
    quarantine.apply(QuarantineSet::default());
    assert!(
        quarantine
            .admit(peer(Some(API), Some("3"), "198.18.0.4"), "outbound")
            .is_ok()
    );
}
