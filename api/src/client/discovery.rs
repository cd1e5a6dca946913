//! The sidecar's end of the discovery stream: connects (with the workload's
//! SVID), says hello with what it holds and subscribes to, applies each
//! update through a [`DiscoveryHandler`] and answers ACK or NACK, sends new
//! subscriptions as they come, and reconnects with backoff. What it holds
//! survives reconnects, so the sidecar keeps enforcing it while the control
//! plane is away and resumes with a delta.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::Method;
use http_body_util::BodyExt;
use rand::Rng;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use ward_identity::tls::SvidCell;

use super::{ClientError, ControlPlaneClient, channel_body};
use crate::DISCOVERY_PATH;
use crate::discovery::delta::ResourceCache;
use crate::discovery::{
    API_VERSION, Ack, ClientMessage, Hello, MAX_MESSAGE_BYTES, Nack, Names, Node, Resource,
    ResourceType, ServerMessage, Update, encode_line,
};

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What the sidecar does with updates. `apply` gets the update and the
/// type's whole state once it is applied; an `Err` NACKs the update and
/// the previous state stays in force (the handler must not have changed
/// anything).
pub trait DiscoveryHandler: Send + Sync + 'static {
    fn apply(&self, update: &Update, state: &BTreeMap<String, Resource>) -> Result<(), String>;

    /// On-demand names dropped from the subscriptions (evicted).
    fn forget(&self, _resource_type: ResourceType, _names: &[String]) {}

    /// The stream is up (`true`) or down.
    fn connected(&self, _up: bool) {}
}

pub struct DiscoveryConfig {
    pub client: ControlPlaneClient,
    pub svid: Arc<SvidCell>,
    pub node: Node,
    pub resource_types: Vec<ResourceType>,
    /// Most on-demand names held at once; beyond it the oldest are
    /// unsubscribed (a port scan by the app cannot grow memory forever).
    pub max_subscriptions: usize,
    /// Extra hello fields: what a newer sidecar would send (skew tests).
    pub extra_hello: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("no certificate yet")]
    NotReady,
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("update over {MAX_MESSAGE_BYTES} bytes")]
    TooLarge,
    #[error("stream ended by the control plane")]
    Ended,
    #[error("unreadable message from the control plane: {0}")]
    Decode(String),
}

/// On-demand subscriptions: every name ever asked for (up to the cap),
/// and the ones not yet sent on the current stream.
#[derive(Default)]
struct Subscriptions {
    order: VecDeque<(ResourceType, String)>,
    all: BTreeSet<(ResourceType, String)>,
    unsent: Vec<(ResourceType, String)>,
    evicted: Vec<(ResourceType, String)>,
}

pub struct DiscoveryClient {
    config: DiscoveryConfig,
    cache: Mutex<ResourceCache>,
    subscriptions: Mutex<Subscriptions>,
    wake: Notify,
}

impl DiscoveryClient {
    pub fn new(config: DiscoveryConfig) -> Arc<Self> {
        Arc::new(DiscoveryClient {
            config,
            cache: Mutex::new(ResourceCache::default()),
            subscriptions: Mutex::new(Subscriptions::default()),
            wake: Notify::new(),
        })
    }

    /// Asks for `name` of an on-demand type. Answered through the handler
    /// (as a resource, or in `removed` when it does not exist), now if the
    /// stream is up, else as soon as it is.
    pub fn subscribe(&self, resource_type: ResourceType, name: &str) {
        let key = (resource_type, name.to_owned());
        let mut subs = self.subscriptions.lock().expect("not poisoned");
        if !subs.all.insert(key.clone()) {
            return;
        }
        subs.order.push_back(key.clone());
        subs.unsent.push(key);
        while subs.order.len() > self.config.max_subscriptions.max(1) {
            let old = subs.order.pop_front().expect("not empty");
            subs.all.remove(&old);
            subs.evicted.push(old);
        }
        drop(subs);
        self.wake.notify_one();
    }

    /// Runs until `shutdown`, reconnecting with jittered exponential backoff.
    pub async fn run(
        self: Arc<Self>,
        handler: Arc<dyn DiscoveryHandler>,
        shutdown: CancellationToken,
    ) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let started = Instant::now();
            let result = tokio::select! {
                r = self.stream_once(handler.as_ref()) => r,
                _ = shutdown.cancelled() => return,
            };
            handler.connected(false);
            match result {
                Err(StreamError::NotReady) => backoff = MIN_BACKOFF,
                Err(err) => {
                    warn!(control_plane = %self.config.client.addr(), error = %err, retry_in = ?backoff, "discovery stream down; enforcing what was last received")
                }
                Ok(()) => {}
            }
            if started.elapsed() > Duration::from_secs(30) {
                backoff = MIN_BACKOFF;
            }
            let jitter = rand::rng().random_range(0.5..1.0);
            tokio::select! {
                _ = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
                _ = shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn hello(&self) -> Hello {
        let mut subscribe: BTreeMap<ResourceType, Vec<String>> = BTreeMap::new();
        let mut subs = self.subscriptions.lock().expect("not poisoned");
        subs.unsent.clear();
        for (t, name) in &subs.order {
            subscribe.entry(*t).or_default().push(name.clone());
        }
        drop(subs);
        Hello {
            api_version: API_VERSION.to_owned(),
            node: self.config.node.clone(),
            resource_types: self.config.resource_types.clone(),
            held: self.cache.lock().expect("not poisoned").held(),
            subscribe,
            extra: self.config.extra_hello.clone(),
        }
    }

    async fn stream_once(&self, handler: &dyn DiscoveryHandler) -> Result<(), StreamError> {
        if !self.config.svid.is_ready() {
            return Err(StreamError::NotReady);
        }
        let client = &self.config.client;
        let mut sender = client.connect(Some(&self.config.svid)).await?;
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        let hello = ClientMessage::Hello(self.hello());
        tx.try_send(Bytes::from(encode_line(&hello)))
            .expect("an empty channel has room");
        let request = client.request(Method::POST, DISCOVERY_PATH, channel_body(rx));
        let response = client.send(&mut sender, request).await?;
        handler.connected(true);
        info!(control_plane = %client.addr(), "discovery stream connected");
        let mut body = response.into_body();
        let mut buf = BytesMut::new();
        loop {
            tokio::select! {
                frame = body.frame() => {
                    let Some(frame) = frame else { return Err(StreamError::Ended) };
                    let frame = frame.map_err(ClientError::from)?;
                    let Some(data) = frame.data_ref() else { continue };
                    buf.extend_from_slice(data);
                    while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                        let line = buf.split_to(end + 1);
                        if let Some(answer) = self.receive(&line[..end], handler)? {
                            send(&tx, &answer).await?;
                        }
                    }
                    if buf.len() > MAX_MESSAGE_BYTES {
                        return Err(StreamError::TooLarge);
                    }
                }
                _ = self.wake.notified() => {
                    for message in self.pending_subscriptions(handler) {
                        send(&tx, &message).await?;
                    }
                }
            }
        }
    }

    /// Applies one server message; returns the ACK or NACK to send.
    fn receive(
        &self,
        line: &[u8],
        handler: &dyn DiscoveryHandler,
    ) -> Result<Option<ClientMessage>, StreamError> {
        let message: ServerMessage =
            serde_json::from_slice(line).map_err(|e| StreamError::Decode(e.to_string()))?;
        let ServerMessage::Update(update) = message else {
            return Ok(None);
        };
        let mut cache = self.cache.lock().expect("not poisoned");
        let state = cache.apply(&update);
        Ok(Some(match handler.apply(&update, &state) {
            Ok(()) => {
                debug!(
                    resource_type = update.resource_type.as_str(),
                    nonce = update.nonce,
                    changed = update.resources.len(),
                    removed = update.removed.len(),
                    "update applied"
                );
                cache.commit(update.resource_type, state);
                ClientMessage::Ack(Ack {
                    nonce: update.nonce,
                })
            }
            Err(error) => {
                warn!(resource_type = update.resource_type.as_str(), nonce = update.nonce, %error, "update refused; the previous state stays in force");
                ClientMessage::Nack(Nack {
                    nonce: update.nonce,
                    error,
                })
            }
        }))
    }

    /// New subscriptions and evictions since the last call, as messages.
    fn pending_subscriptions(&self, handler: &dyn DiscoveryHandler) -> Vec<ClientMessage> {
        let mut subs = self.subscriptions.lock().expect("not poisoned");
        let unsent = std::mem::take(&mut subs.unsent);
        let evicted = std::mem::take(&mut subs.evicted);
        drop(subs);
        let mut messages = Vec::new();
        for (t, names) in group(evicted) {
            self.cache.lock().expect("not poisoned").forget(t, &names);
            handler.forget(t, &names);
            messages.push(ClientMessage::Unsubscribe(Names {
                resource_type: t,
                names,
            }));
        }
        for (t, names) in group(unsent) {
            messages.push(ClientMessage::Subscribe(Names {
                resource_type: t,
                names,
            }));
        }
        messages
    }
}

fn group(keys: Vec<(ResourceType, String)>) -> BTreeMap<ResourceType, Vec<String>> {
    let mut out: BTreeMap<ResourceType, Vec<String>> = BTreeMap::new();
    for (t, name) in keys {
        out.entry(t).or_default().push(name);
    }
    out
}

async fn send(tx: &mpsc::Sender<Bytes>, message: &ClientMessage) -> Result<(), StreamError> {
    tx.send(Bytes::from(encode_line(message)))
        .await
        .map_err(|_| StreamError::Ended)
}
