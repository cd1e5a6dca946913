//! The discovery stream's messages, newline-delimited JSON, one line at a
//! time as both ends read them. Every line is decoded as the control plane
//! reads it (`ClientMessage`, `Registration`) and as the sidecar reads it
//! (`ServerMessage`); what decodes re-encodes stably. Each `Update` is put
//! through the sidecar's real handler (`ward_proxy::discovery::ProxyHandler`:
//! policies parsed, endpoints and Services into the destination table,
//! quarantines into the quarantine set),
//! answered with an ACK or NACK, and the control plane's record of what the
//! sidecar holds (`TypeState`) must then equal what the sidecar holds
//! (`ResourceCache`).
#![no_main]
use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use ward_api::client::discovery::DiscoveryHandler;
use ward_api::discovery::delta::{ResourceCache, TypeState};
use ward_api::discovery::{
    Ack, ClientMessage, Nack, Registration, ResourceType, ServerMessage, encode_line,
};
use ward_policy::EvalOptions;
use ward_proxy::config::MtlsMode;
use ward_proxy::discovery::ProxyHandler;
use ward_proxy::endpoints::{Destinations, EndpointTable};
use ward_proxy::metrics::ProxyMetrics;
use ward_proxy::policy::{PolicyAuthorizer, WorkloadSelector};

static METRICS: LazyLock<Arc<ProxyMetrics>> = LazyLock::new(|| Arc::new(ProxyMetrics::new()));

fuzz_target!(|data: &[u8]| {
    let metrics = METRICS.clone();
    let selector = WorkloadSelector {
        namespace: "default".into(),
        labels: BTreeMap::from([("app".into(), "api".into())]),
        options: EvalOptions::default(),
    };
    let handler = ProxyHandler {
        authorizer: Arc::new(PolicyAuthorizer::new(
            selector,
            MtlsMode::Strict,
            metrics.clone(),
        )),
        destinations: Arc::new(Destinations::fixed(EndpointTable::default())),
        trust: ward_identity::Trust::new(ward_identity::TrustBundles::new()),
        quarantine: ward_proxy::quarantine::Quarantine::new(metrics.clone()),
        metrics,
        early_renewal: None,
    };
    let mut cache = ResourceCache::default();
    let mut control_plane: BTreeMap<ResourceType, TypeState> = BTreeMap::new();

    for line in data.split(|&b| b == b'\n').take(64) {
        stable::<ClientMessage>(line);
        stable::<Registration>(line);
        let Some(ServerMessage::Update(update)) = stable::<ServerMessage>(line) else {
            continue;
        };
        // The control plane sent it...
        let sent = control_plane.entry(update.resource_type).or_default();
        sent.sent(update.nonce, &update.resources, &update.removed);
        // ...the sidecar applies it as its stream client does...
        let state = cache.apply(&update);
        for name in &update.removed {
            assert!(!state.contains_key(name));
        }
        let answer = match handler.apply(&update, &state) {
            Ok(()) => {
                cache.commit(update.resource_type, state);
                ClientMessage::Ack(Ack {
                    nonce: update.nonce,
                })
            }
            Err(error) => ClientMessage::Nack(Nack {
                nonce: update.nonce,
                error,
            }),
        };
        // ...and the answer crosses the wire back.
        let line = encode_line(&answer);
        let received: ClientMessage = serde_json::from_slice(&line[..line.len() - 1]).unwrap();
        assert_eq!(received, answer);
        let recorded = match received {
            ClientMessage::Ack(ack) => sent.ack(ack.nonce),
            ClientMessage::Nack(nack) => sent.nack(nack.nonce, nack.error),
            _ => unreachable!(),
        };
        assert!(recorded, "the answer names the update in flight");
        // Both ends agree on what the sidecar enforces.
        let held = cache.held();
        let empty = BTreeMap::new();
        assert_eq!(
            sent.acked(),
            held.get(&update.resource_type).unwrap_or(&empty),
            "{:?} after nonce {}",
            update.resource_type,
            update.nonce
        );
    }
});

/// Decodes `line` as `T`; what decodes encodes to JSON that decodes and
/// encodes to the same JSON again. Not checked when the JSON holds a
/// non-integer number: serde_json (without its `float_roundtrip` feature)
/// may parse a float one ULP off, so a float inside an opaque body can
/// drift; Ward's own bodies hold integers and strings only.
fn stable<T: Serialize + DeserializeOwned>(line: &[u8]) -> Option<T> {
    let message: T = serde_json::from_slice(line).ok()?;
    let once = serde_json::to_string(&message).expect("encodes");
    if has_float(&serde_json::from_str(&once).unwrap()) {
        return Some(message);
    }
    let again: T =
        serde_json::from_str(&once).unwrap_or_else(|e| panic!("{once} does not decode: {e}"));
    assert_eq!(serde_json::to_string(&again).unwrap(), once);
    Some(message)
}

fn has_float(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Number(n) => n.is_f64(),
        serde_json::Value::Array(items) => items.iter().any(has_float),
        serde_json::Value::Object(map) => map.values().any(has_float),
        _ => false,
    }
}
