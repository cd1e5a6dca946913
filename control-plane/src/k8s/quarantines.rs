//! The `Quarantine` objects (`ward.io/v1alpha1`, cluster-scoped), watched
//! as the policy resources are ([`super::kube_sources`]): a kube-runtime
//! watcher that relists by itself after a dropped watch or a 410 Gone
//! (with backoff while the API server or the CRD is away), its events
//! folded into [`QuarantineObjects`], and each change published to the
//! quarantine source ([`crate::quarantine::QuarantineSource`]), which
//! merges them with the data directory's entries. Every replica watches,
//! so every replica enforces.
//!
//! Nothing is published before the first list: until then the control
//! plane does not know what is quarantined, and refuses what it would
//! check against it. After that, a failing watch keeps the last state.

use std::sync::Arc;

use futures_util::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tracing::info;

use super::WatchEvent;
use super::kube_sources::{next_batch, to_document, watch_failed};
use super::source::{QUARANTINE_KIND, WatcherAdapter, WatcherEvent, quarantine_resource};
use crate::metrics::Metrics;
use crate::quarantine::{ObjectEntries, QuarantineObjects};

/// Watches the Quarantine objects until `shutdown`, publishing what they
/// hold on `tx` (`None` until they are listed).
pub async fn watch_quarantines(
    client: kube::Client,
    tx: watch::Sender<Option<ObjectEntries>>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let resource = quarantine_resource();
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut adapter = WatcherAdapter::default();
    let mut objects = QuarantineObjects::default();
    let mut listed = false;
    loop {
        let batch = tokio::select! {
            batch = next_batch(&mut events) => match batch {
                Some(batch) => batch,
                None => return,
            },
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        for event in batch {
            let event = match event {
                Ok(event) => WatcherEvent::from(event).map(|obj| to_document(obj, &resource)),
                Err(err) => {
                    watch_failed(&metrics, QUARANTINE_KIND, &err);
                    continue;
                }
            };
            let Some(event) = adapter.push(event) else {
                continue;
            };
            if !listed && matches!(event, WatchEvent::Restarted(_)) {
                listed = true;
                info!("Quarantine objects listed: the quarantines are known");
            }
            objects.apply(event);
        }
        if listed {
            let snapshot = objects.snapshot();
            tx.send_if_modified(|current| {
                let changed = current.as_ref() != Some(&snapshot);
                *current = Some(snapshot);
                changed
            });
        }
    }
}
