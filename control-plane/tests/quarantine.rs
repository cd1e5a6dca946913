//! Quarantine at the control plane (#16, and #15's "a workload's SVID can
//! be revoked"): entries written to `<data-dir>/quarantine/` as `ward
//! quarantine` writes them stop renewals and enrolments of what they name,
//! close its discovery stream, and reach the other sidecars as
//! `quarantine` resources; lifting restores it all. A `serial:` entry
//! revokes one certificate, a pod entry the certificates of that pod.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use support::control_plane::{
    api_client, join_token, keyed_svid_request, loopback_config, metric_value, metrics, refusal,
    svid_cell, svid_request,
};
use tokio_util::sync::{CancellationToken, DropGuard};
use ward_api::client::ControlPlaneClient;
use ward_api::client::discovery::{DiscoveryClient, DiscoveryConfig, DiscoveryHandler};
use ward_api::discovery::{Node, QuarantineBody, Resource, ResourceType, Update};
use ward_api::svid::SvidResponse;
use ward_control_plane::attest::Credential;
use ward_control_plane::quarantine::{Entry, QuarantineDir, Target};
use ward_control_plane::server::ControlPlane;
use ward_identity::SpiffeId;
use ward_identity::tls::SvidCell;

const TD: &str = "cluster.local";
/// Waits end as soon as their condition holds; this only bounds a failure.
const WITHIN: Duration = Duration::from_secs(30);

struct Harness {
    cp: ControlPlane,
    data: tempfile::TempDir,
    client: ControlPlaneClient,
}

impl Harness {
    async fn start() -> Harness {
        let data = tempfile::tempdir().unwrap();
        let cp = ControlPlane::start(loopback_config(TD, data.path()))
            .await
            .unwrap();
        let client = api_client(&cp, TD);
        Harness { cp, data, client }
    }

    /// Enrols a fresh key for `id` (claiming `pod`): the certificate and
    /// a client-certificate cell holding it.
    async fn enrol(&self, id: &SpiffeId, pod: Option<&str>) -> (SvidResponse, Arc<SvidCell>) {
        let token = join_token(self.data.path(), id, Duration::from_secs(600));
        let (key, request) = keyed_svid_request(id, Some(Credential::JoinToken(token)), pod);
        let answer = self.client.request_svid(&request, None).await.unwrap();
        let cell = svid_cell(&answer, &key, TD);
        (answer, cell)
    }

    /// A renewal over mTLS with `cell`: Ok, or the refusal's (status, code).
    async fn renew(
        &self,
        id: &SpiffeId,
        cell: &Arc<SvidCell>,
        pod: Option<&str>,
    ) -> Result<(), (StatusCode, String, String)> {
        self.client
            .request_svid(&svid_request(id, None, pod), Some(cell))
            .await
            .map(drop)
            .map_err(refusal)
    }

    fn quarantine(&self, target: &str) -> Target {
        let target: Target = target.parse().unwrap();
        let entry = Entry::new(
            target.clone(),
            "test",
            "tester",
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
        QuarantineDir::open(self.data.path())
            .unwrap()
            .create(&entry)
            .unwrap();
        target
    }

    fn lift(&self, target: &Target) {
        QuarantineDir::open(self.data.path())
            .unwrap()
            .remove(target)
            .unwrap();
    }
}

fn id(sa: &str) -> SpiffeId {
    SpiffeId::for_service_account(TD, "shop", sa).unwrap()
}

/// Polls `check` every 20 ms until it holds, up to [`WITHIN`].
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Harness {
    /// Renews with `cell` every 20 ms until the answer is a refusal
    /// (`refused`) or a certificate, up to [`WITHIN`].
    async fn renewal_until(
        &self,
        refused: bool,
        id: &SpiffeId,
        cell: &Arc<SvidCell>,
        pod: Option<&str>,
    ) {
        let deadline = tokio::time::Instant::now() + WITHIN;
        while self.renew(id, cell, pod).await.is_err() != refused {
            assert!(
                tokio::time::Instant::now() < deadline,
                "renewal of {id} (pod {pod:?}) still {}",
                if refused { "accepted" } else { "refused" }
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn a_quarantined_identity_is_neither_renewed_nor_enrolled_until_lifted() {
    let h = Harness::start().await;
    let web = id("web");
    let (_, cell) = h.enrol(&web, None).await;
    h.renew(&web, &cell, None).await.expect("renewal before");

    let target = h.quarantine(web.as_str());
    h.renewal_until(true, &web, &cell, None).await;
    let (status, code, message) = h.renew(&web, &cell, None).await.unwrap_err();
    assert_eq!((status, code.as_str()), (StatusCode::FORBIDDEN, "refused"));
    // Generic: the caller learns nothing of the quarantine.
    assert!(!message.contains("quarantin"), "{message}");
    // A fresh join token does not help, and is not spent on the refusal.
    let token = join_token(h.data.path(), &web, Duration::from_secs(600));
    let enrolment = svid_request(&web, Some(Credential::JoinToken(token.clone())), None);
    let (status, code, _) = refusal(h.client.request_svid(&enrolment, None).await.unwrap_err());
    assert_eq!((status, code.as_str()), (StatusCode::FORBIDDEN, "refused"));
    let m = metrics(&h.cp).await;
    assert!(
        metric_value(
            &m,
            r#"ward_ca_certificate_refusals_total{reason="quarantined"}"#
        ) >= 2.0,
        "{m}"
    );
    assert_eq!(metric_value(&m, "ward_quarantined_identities"), 1.0);
    // Another identity is not concerned.
    let (_, api_cell) = h.enrol(&id("api"), None).await;
    h.renew(&id("api"), &api_cell, None).await.unwrap();

    h.lift(&target);
    h.renewal_until(false, &web, &cell, None).await;
    let enrolment = svid_request(&web, Some(Credential::JoinToken(token)), None);
    h.client
        .request_svid(&enrolment, None)
        .await
        .expect("the token refused during the quarantine still works");
    assert_eq!(
        metric_value(&metrics(&h.cp).await, "ward_quarantined_identities"),
        0.0
    );
    h.cp.shutdown().await;
}

#[tokio::test]
async fn a_serial_revokes_one_certificate_and_a_pod_its_own_certificates() {
    let h = Harness::start().await;
    let web = id("web");
    let (_, first_cell) = h.enrol(&web, Some("web-1")).await;
    let (_, second_cell) = h.enrol(&web, Some("web-2")).await;
    let (_, third_cell) = h.enrol(&web, Some("web-3")).await;
    let serial =
        ward_identity::svid::serial_of(&first_cell.certified_key().unwrap().cert[0]).unwrap();

    let by_serial = h.quarantine(&format!("serial:{serial}"));
    h.renewal_until(true, &web, &first_cell, Some("web-1"))
        .await;
    // The same identity with another certificate renews.
    h.renew(&web, &second_cell, Some("web-2")).await.unwrap();
    h.lift(&by_serial);
    h.renewal_until(false, &web, &first_cell, Some("web-1"))
        .await;

    // The pod: its certificates, whatever pod a renewal then claims, and
    // new ones for it; the same identity's other pods carry on.
    let by_pod = h.quarantine("shop/web-3");
    h.renewal_until(true, &web, &third_cell, Some("web-3"))
        .await;
    assert!(h.renew(&web, &third_cell, Some("web-9")).await.is_err());
    let token = join_token(h.data.path(), &web, Duration::from_secs(600));
    let claim = svid_request(&web, Some(Credential::JoinToken(token)), Some("web-3"));
    assert!(h.client.request_svid(&claim, None).await.is_err());
    h.renew(&web, &second_cell, Some("web-2")).await.unwrap();
    h.lift(&by_pod);
    h.cp.shutdown().await;
}

/// One in-process sidecar's stream: its ups and downs, and the
/// quarantine resources it holds.
#[derive(Default)]
struct Watcher {
    connected: Mutex<Vec<bool>>,
    quarantine: Mutex<BTreeMap<String, QuarantineBody>>,
}

impl DiscoveryHandler for Watcher {
    fn apply(&self, update: &Update, state: &BTreeMap<String, Resource>) -> Result<(), String> {
        if update.resource_type == ResourceType::Quarantine {
            let mut held = self.quarantine.lock().unwrap();
            held.clear();
            for (name, resource) in state {
                held.insert(name.clone(), resource.decode()?);
            }
        }
        Ok(())
    }

    fn connected(&self, up: bool) {
        self.connected.lock().unwrap().push(up);
    }
}

fn watch(h: &Harness, svid: &Arc<SvidCell>) -> (Arc<Watcher>, DropGuard) {
    let client =
        ControlPlaneClient::from_bundle_pem(h.cp.api_addr().to_string(), TD, h.cp.bundle_pem())
            .unwrap();
    let discovery = DiscoveryClient::new(DiscoveryConfig {
        client,
        svid: svid.clone(),
        node: Node::default(),
        resource_types: vec![ResourceType::Policy, ResourceType::Quarantine],
        max_subscriptions: 10,
        extra_hello: BTreeMap::new(),
    });
    let watcher = Arc::new(Watcher::default());
    let stop = CancellationToken::new();
    tokio::spawn(discovery.run(watcher.clone(), stop.clone()));
    (watcher, stop.drop_guard())
}

#[tokio::test]
async fn sidecars_are_told_and_the_quarantined_one_loses_its_stream() {
    let h = Harness::start().await;
    let (web, api) = (id("web"), id("api"));
    let (_, web_cell) = h.enrol(&web, None).await;
    let (_, api_cell) = h.enrol(&api, None).await;
    let (web_side, _web_stop) = watch(&h, &web_cell);
    let (api_side, _api_stop) = watch(&h, &api_cell);
    eventually("both streams up", || {
        web_side.connected.lock().unwrap().last() == Some(&true)
            && api_side.connected.lock().unwrap().last() == Some(&true)
    })
    .await;

    let target = h.quarantine(web.as_str());
    eventually("the other sidecar to hold the quarantine", || {
        let held = api_side.quarantine.lock().unwrap();
        held.values()
            .any(|body| body.spiffe_ids == [web.to_string()])
    })
    .await;
    eventually("the quarantined sidecar's stream to close", || {
        web_side.connected.lock().unwrap().last() == Some(&false)
    })
    .await;
    // Its reconnections are refused: it does not get the stream back.
    let closed_at = web_side.connected.lock().unwrap().len();
    eventually("a reconnection attempt", || {
        web_side.connected.lock().unwrap().len() > closed_at
    })
    .await;
    assert!(
        web_side.connected.lock().unwrap()[closed_at - 1..]
            .iter()
            .all(|up| !up),
        "reconnected while quarantined"
    );

    h.lift(&target);
    eventually("the lift to reach the other sidecar", || {
        api_side.quarantine.lock().unwrap().is_empty()
    })
    .await;
    eventually("the lifted sidecar to reconnect", || {
        web_side.connected.lock().unwrap().last() == Some(&true)
    })
    .await;
    h.cp.shutdown().await;
}
