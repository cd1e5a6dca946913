//! The control plane's end of the discovery stream (`POST /v2/discovery`,
//! specified in `docs/api.md`): per sidecar, the policies that select its
//! workload and the trust bundle, pushed as deltas, and the endpoints of
//! the addresses it subscribes to, sent as they change. Every update waits
//! for the previous one of its type to be ACKed or NACKed, and the
//! sidecar's answers are recorded in [`Sidecars`].
//!
//! Policy and endpoint changes travel apart: an endpoint change never
//! recomputes a stream's policies, and reaches only the streams that
//! subscribed to that address ([`Endpoints`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use ward_api::discovery::delta::{TypeState, Versions};
use ward_api::discovery::{
    ClientMessage, Hello, Names, Resource, ResourceType, ServerMessage, Update, encode_line,
};
use ward_identity::SpiffeId;
use ward_policy::{EvalOptions, PolicySet};

use crate::metrics::Metrics;
use crate::policy_store::PolicySnapshot;
use crate::quarantine::{Match, QuarantineState, Subject};
use crate::trust_bundles::BundleSet;

pub mod endpoints;
pub mod sidecars;

pub use endpoints::{EndpointEntry, Endpoints, Inbox, Registration};
pub use sidecars::{SidecarStatus, Sidecars, TypeStatus};

/// Most addresses one stream may subscribe to; further names are answered
/// as not meshed and not watched.
pub const MAX_SUBSCRIPTIONS: usize = 100_000;
/// How long a new stream may take to send its hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads newline-delimited messages from a request body, each bounded.
pub struct LineReader {
    body: Incoming,
    buf: BytesMut,
    max: usize,
}

impl LineReader {
    pub fn new(body: Incoming, max: usize) -> Self {
        LineReader {
            body,
            buf: BytesMut::new(),
            max,
        }
    }

    /// The first line, within `within` (a client that opens a stream and
    /// says nothing does not hold it); `Ok(None)` when the body ended first.
    pub async fn first_line(&mut self, within: Duration) -> Result<Option<Bytes>, String> {
        tokio::time::timeout(within, self.next_line())
            .await
            .unwrap_or_else(|_| Err(format!("nothing received within {within:?}")))
    }

    /// The next line; `Ok(None)` at the end of the body.
    pub async fn next_line(&mut self) -> Result<Option<Bytes>, String> {
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line = self.buf.split_to(end + 1);
                return Ok(Some(line.freeze().slice(..end)));
            }
            if self.buf.len() > self.max {
                return Err(format!("a message is over {} bytes", self.max));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(err)) => return Err(err.to_string()),
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        self.buf.extend_from_slice(data);
                    }
                }
            }
        }
    }
}

/// Everything one stream needs.
pub struct StreamContext {
    pub stream: u64,
    pub id: SpiffeId,
    pub namespace: String,
    /// The workload's labels: from the pod in Kubernetes, else from the hello.
    pub labels: BTreeMap<String, String>,
    /// The pod's addresses (Kubernetes): a relabelled pod re-selects its
    /// policies through the endpoint registry's news of these.
    pub pod_ips: Vec<IpAddr>,
    pub hello: Hello,
    pub peer: IpAddr,
    /// When the certificate that opened the stream expires: the stream ends
    /// then (the sidecar reconnects with its renewed one).
    pub expiry: Option<time::OffsetDateTime>,
    pub options: EvalOptions,
    pub policies: watch::Receiver<Arc<PolicySnapshot>>,
    /// True once the policy and endpoint sources have read their state.
    pub synced: watch::Receiver<bool>,
    /// The trust bundles, one resource per trust domain
    /// ([`ward_api::discovery::BundleBody`]); a change is pushed to every
    /// stream.
    pub bundles: watch::Receiver<Arc<BundleSet>>,
    /// What is quarantined, one resource per entry
    /// ([`ward_api::discovery::QuarantineBody`]): pushed to every stream;
    /// a stream whose own sidecar becomes quarantined ends at once.
    pub quarantine: watch::Receiver<Arc<QuarantineState>>,
    /// The serial of the client certificate that opened the stream.
    pub serial: Option<String>,
    pub endpoints: Arc<Endpoints>,
    pub sidecars: Arc<Sidecars>,
    pub metrics: Arc<Metrics>,
    pub shutdown: watch::Receiver<bool>,
}

/// One stream's state of each type.
struct Stream {
    ctx: StreamContext,
    tx: mpsc::Sender<Bytes>,
    next_nonce: u64,
    wants: BTreeSet<ResourceType>,
    policy: TypeState,
    policy_sent: bool,
    policy_dirty: bool,
    /// The policy version each in-flight nonce carries (push latency).
    policy_in_flight: Option<Arc<PolicySnapshot>>,
    policy_acked_version: Option<u64>,
    policy_desired: Versions,
    bundle: TypeState,
    bundle_sent: bool,
    bundle_dirty: bool,
    quarantine: TypeState,
    quarantine_sent: bool,
    quarantine_dirty: bool,
    endpoint: OnDemand,
    service: OnDemand,
    /// News of subscribed addresses, both types.
    inbox: Arc<Inbox>,
    /// News of the sidecar's own pod (its labels).
    own_pod: Arc<Inbox>,
    status: Arc<Mutex<SidecarStatus>>,
}

/// One on-demand type's state in a stream: what was sent and ACKed, and
/// the addresses subscribed to.
struct OnDemand {
    resource_type: ResourceType,
    state: TypeState,
    subscribed: BTreeSet<IpAddr>,
    /// Subscribed names that are not addresses: answered as absent.
    invalid_names: Vec<String>,
}

impl OnDemand {
    fn new(resource_type: ResourceType, state: TypeState) -> Self {
        OnDemand {
            resource_type,
            state,
            subscribed: BTreeSet::new(),
            invalid_names: Vec::new(),
        }
    }

    /// The resource of `ip` as the registry has it now.
    fn lookup(&self, endpoints: &Endpoints, ip: IpAddr) -> Option<Resource> {
        match self.resource_type {
            ResourceType::Service => endpoints.service_resource(ip),
            _ => endpoints.resource(ip),
        }
    }

    fn subscribe(&mut self, names: &[String], ctx: &StreamContext, inbox: &Arc<Inbox>) {
        for name in names {
            match name.parse::<IpAddr>() {
                Ok(ip)
                    if self.subscribed.len() < MAX_SUBSCRIPTIONS
                        || self.subscribed.contains(&ip) =>
                {
                    if self.subscribed.insert(ip) {
                        ctx.endpoints
                            .subscribe(self.resource_type, ip, ctx.stream, inbox);
                    }
                    inbox.mark(self.resource_type, ip);
                }
                _ => self.invalid_names.push(name.clone()),
            }
        }
    }

    fn unsubscribe(&mut self, names: &[String], ctx: &StreamContext) {
        let ips: Vec<IpAddr> = names.iter().filter_map(|n| n.parse().ok()).collect();
        for ip in &ips {
            self.subscribed.remove(ip);
        }
        ctx.endpoints
            .unsubscribe(self.resource_type, ips, ctx.stream);
        self.state.forget(names);
    }

    /// The delta of the changed addresses, when there is one to send.
    fn pending(
        &mut self,
        ctx: &StreamContext,
        inbox: &Inbox,
    ) -> Option<(Vec<Resource>, Vec<String>)> {
        if self.state.in_flight().is_some() {
            return None;
        }
        let dirty = inbox.take(self.resource_type);
        let invalid = std::mem::take(&mut self.invalid_names);
        if dirty.is_empty() && invalid.is_empty() {
            return None;
        }
        let names: Vec<String> = dirty.iter().map(IpAddr::to_string).collect();
        let (changed, mut removed) = self
            .state
            .delta_for(names.iter().map(String::as_str), |name| {
                self.lookup(&ctx.endpoints, name.parse().ok()?)
            });
        removed.extend(invalid);
        (!changed.is_empty() || !removed.is_empty()).then_some((changed, removed))
    }

    fn status(&self) -> TypeStatus {
        let mut status = TypeStatus::of(&self.state, None, None);
        status.subscribed = Some(self.subscribed.len());
        status
    }
}

/// The registry key of a stream's watch on its own pod, apart from the
/// stream's subscriptions.
fn own_pod_key(stream: u64) -> u64 {
    stream | 1 << 63
}

/// Feeds one sidecar's stream until it goes away or the control plane stops.
pub async fn run_stream(mut ctx: StreamContext, mut requests: LineReader, tx: mpsc::Sender<Bytes>) {
    // Nothing is sent before the sources have synced: an empty set from a
    // control plane that has not read the cluster's policies yet would let
    // everything through.
    tokio::select! {
        synced = ctx.synced.wait_for(|s| *s) => if synced.is_err() { return },
        _ = tx.closed() => return,
        _ = ctx.shutdown.wait_for(|stop| *stop) => return,
    }
    let status = ctx.sidecars.insert(SidecarStatus {
        stream: ctx.stream,
        spiffe_id: ctx.id.to_string(),
        pod: ctx
            .hello
            .node
            .pod
            .as_ref()
            .map(|p| format!("{}/{p}", ctx.namespace)),
        address: ctx.peer.to_string(),
        proxy_version: ctx.hello.node.proxy_version.clone(),
        connected_since: ward_identity::rfc3339(time::OffsetDateTime::now_utc()),
        certificate_serial: ctx.serial.clone(),
        certificate_not_after: ctx.expiry.map(time::OffsetDateTime::unix_timestamp),
        policy: TypeStatus::default(),
        bundle: TypeStatus::default(),
        endpoint: TypeStatus::default(),
        service: TypeStatus::default(),
    });
    ctx.metrics.watch_streams.inc();
    info!(spiffe_id = %ctx.id, pod = ?ctx.hello.node.pod, labels = ?ctx.labels, "sidecar connected to the discovery stream");
    let held = std::mem::take(&mut ctx.hello.held);
    let resume = |t| TypeState::resume(held.get(&t).cloned().unwrap_or_default());
    let mut stream = Stream {
        wants: ctx.hello.resource_types.iter().copied().collect(),
        policy: resume(ResourceType::Policy),
        bundle: resume(ResourceType::Bundle),
        quarantine: resume(ResourceType::Quarantine),
        endpoint: OnDemand::new(ResourceType::Endpoint, resume(ResourceType::Endpoint)),
        service: OnDemand::new(ResourceType::Service, resume(ResourceType::Service)),
        inbox: Arc::new(Inbox::default()),
        own_pod: Arc::new(Inbox::default()),
        tx,
        next_nonce: 0,
        policy_sent: false,
        policy_dirty: true,
        policy_in_flight: None,
        policy_acked_version: None,
        policy_desired: Versions::new(),
        bundle_sent: false,
        bundle_dirty: true,
        quarantine_sent: false,
        quarantine_dirty: true,
        status,
        ctx,
    };
    for ip in &stream.ctx.pod_ips {
        let key = own_pod_key(stream.ctx.stream);
        stream
            .ctx
            .endpoints
            .subscribe(ResourceType::Endpoint, *ip, key, &stream.own_pod);
    }
    let initial = std::mem::take(&mut stream.ctx.hello.subscribe);
    if let Some(names) = initial.get(&ResourceType::Endpoint) {
        stream.endpoint.subscribe(names, &stream.ctx, &stream.inbox);
    }
    if let Some(names) = initial.get(&ResourceType::Service) {
        stream.service.subscribe(names, &stream.ctx, &stream.inbox);
    }
    if let Err(reason) = stream.serve(&mut requests).await {
        debug!(spiffe_id = %stream.ctx.id, reason, "discovery stream ended");
    }
    for on_demand in [&stream.endpoint, &stream.service] {
        stream.ctx.endpoints.unsubscribe(
            on_demand.resource_type,
            on_demand.subscribed.iter().copied(),
            stream.ctx.stream,
        );
    }
    let own = own_pod_key(stream.ctx.stream);
    stream.ctx.endpoints.unsubscribe(
        ResourceType::Endpoint,
        stream.ctx.pod_ips.iter().copied(),
        own,
    );
    stream.ctx.sidecars.remove(stream.ctx.stream);
    stream.ctx.metrics.watch_streams.dec();
    info!(spiffe_id = %stream.ctx.id, "sidecar left the discovery stream");
}

impl Stream {
    async fn serve(&mut self, requests: &mut LineReader) -> Result<(), &'static str> {
        loop {
            // A changed quarantine (and the first one: quarantined between
            // the caller's check and now) is checked before anything is
            // sent: whatever the sidecar does with updates (it may never
            // ACK), its stream ends as soon as it is quarantined.
            if self.quarantine_dirty {
                self.end_if_quarantined()?;
            }
            self.send_pending().await?;
            let own_pod = self.own_pod.clone();
            let line = tokio::select! {
                line = requests.next_line() => Some(line),
                changed = self.ctx.policies.changed() => {
                    changed.map_err(|_| "policy store gone")?;
                    self.policy_dirty = true;
                    continue;
                }
                changed = self.ctx.bundles.changed() => {
                    changed.map_err(|_| "trust bundles gone")?;
                    self.bundle_dirty = true;
                    continue;
                }
                changed = self.ctx.quarantine.changed() => {
                    changed.map_err(|_| "quarantine gone")?;
                    self.quarantine_dirty = true;
                    continue;
                }
                _ = self.inbox.notify.notified() => continue,
                _ = own_pod.notify.notified() => None,
                _ = self.tx.closed() => return Err("response stream closed"),
                _ = self.ctx.shutdown.wait_for(|stop| *stop) => return Err("shutting down"),
                _ = until(self.ctx.expiry) => return Err("the client certificate expired"),
            };
            let Some(line) = line else {
                self.refresh_labels();
                continue;
            };
            match line {
                Ok(Some(line)) => self.receive(&line),
                Ok(None) => return Err("the sidecar closed its side"),
                Err(err) => {
                    warn!(spiffe_id = %self.ctx.id, error = %err, "unreadable discovery request stream");
                    return Err("unreadable request stream");
                }
            }
        }
    }

    /// The entry that quarantines this stream's sidecar, if one does.
    fn quarantined(&self) -> Option<Match> {
        let pod = self
            .ctx
            .hello
            .node
            .pod
            .as_ref()
            .map(|p| format!("{}/{p}", self.ctx.namespace));
        let who = Subject {
            spiffe_id: Some(self.ctx.id.as_str()),
            serial: self.ctx.serial.as_deref(),
            pod: pod.as_deref(),
            address: Some(self.ctx.peer),
        };
        self.ctx.quarantine.borrow().revoked.check(&who)
    }

    fn end_if_quarantined(&self) -> Result<(), &'static str> {
        match self.quarantined() {
            Some(m) => {
                warn!(spiffe_id = %self.ctx.id, pod = ?self.ctx.hello.node.pod, serial = ?self.ctx.serial, entry = %m.entry, matched = m.by, "discovery stream closed: the sidecar is quarantined");
                Err("quarantined")
            }
            None => Ok(()),
        }
    }

    /// Sends every update that is due and allowed (one in flight per type).
    async fn send_pending(&mut self) -> Result<(), &'static str> {
        // First: a quarantine reaches sidecars before anything else.
        if self.wants.contains(&ResourceType::Quarantine)
            && self.quarantine_dirty
            && self.quarantine.in_flight().is_none()
        {
            self.quarantine_dirty = false;
            let state = self.ctx.quarantine.borrow_and_update().clone();
            let delta = match self.quarantine.delta_to(&state.resources) {
                None if self.quarantine_sent => None,
                delta => Some(delta.unwrap_or_default()),
            };
            if let Some((changed, removed)) = delta {
                self.quarantine_sent = true;
                self.send(ResourceType::Quarantine, state.version, changed, removed)
                    .await?;
            }
        }
        if self.wants.contains(&ResourceType::Policy)
            && self.policy_dirty
            && self.policy.in_flight().is_none()
        {
            self.policy_dirty = false;
            self.send_policies().await?;
        }
        if self.wants.contains(&ResourceType::Bundle)
            && self.bundle_dirty
            && self.bundle.in_flight().is_none()
        {
            self.bundle_dirty = false;
            let bundles = self.ctx.bundles.borrow_and_update().clone();
            // The first update is sent even when the sidecar resumed with
            // these very bundles: it completes its initial state.
            let delta = match self.bundle.delta_to(&bundles.resources) {
                None if self.bundle_sent => None,
                delta => Some(delta.unwrap_or_default()),
            };
            if let Some((changed, removed)) = delta {
                self.bundle_sent = true;
                self.send(ResourceType::Bundle, 0, changed, removed).await?;
            }
        }
        for resource_type in [ResourceType::Endpoint, ResourceType::Service] {
            if !self.wants.contains(&resource_type) {
                continue;
            }
            let on_demand = match resource_type {
                ResourceType::Service => &mut self.service,
                _ => &mut self.endpoint,
            };
            if let Some((changed, removed)) = on_demand.pending(&self.ctx, &self.inbox) {
                self.send(resource_type, 0, changed, removed).await?;
            }
        }
        self.update_status();
        Ok(())
    }

    async fn send_policies(&mut self) -> Result<(), &'static str> {
        let snapshot = self.ctx.policies.borrow_and_update().clone();
        let wanted = applicable(
            &snapshot,
            &self.ctx.namespace,
            &self.ctx.labels,
            &self.ctx.options,
        );
        self.policy_desired = wanted
            .iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect();
        let delta = self.policy.delta_to(wanted);
        let (changed, removed) = match delta {
            Some(delta) => delta,
            // The first update is sent even when empty: it tells the sidecar
            // it has the whole initial state.
            None if !self.policy_sent => Default::default(),
            None => {
                self.policy_acked_version = Some(snapshot.version);
                return Ok(());
            }
        };
        self.policy_sent = true;
        self.policy_in_flight = Some(snapshot.clone());
        self.send(ResourceType::Policy, snapshot.version, changed, removed)
            .await
    }

    async fn send(
        &mut self,
        resource_type: ResourceType,
        system_version: u64,
        resources: Vec<Resource>,
        removed: Vec<String>,
    ) -> Result<(), &'static str> {
        self.next_nonce += 1;
        let nonce = self.next_nonce;
        let state = match resource_type {
            ResourceType::Policy => &mut self.policy,
            ResourceType::Bundle => &mut self.bundle,
            ResourceType::Quarantine => &mut self.quarantine,
            ResourceType::Service => &mut self.service.state,
            _ => &mut self.endpoint.state,
        };
        state.sent(nonce, &resources, &removed);
        let count = resources.len() as u64;
        let line = encode_line(&ServerMessage::Update(Update {
            nonce,
            resource_type,
            system_version,
            resources,
            removed,
        }));
        let label = [resource_type.as_str()];
        let m = &self.ctx.metrics;
        m.discovery_updates.with_label_values(&label).inc();
        m.discovery_resources_sent
            .with_label_values(&label)
            .inc_by(count);
        m.discovery_bytes_sent
            .with_label_values(&label)
            .inc_by(line.len() as u64);
        debug!(spiffe_id = %self.ctx.id, resource_type = resource_type.as_str(), nonce, count, "sent update");
        self.tx
            .send(Bytes::from(line))
            .await
            .map_err(|_| "response stream closed")
    }

    fn receive(&mut self, line: &[u8]) {
        let message: ClientMessage = match serde_json::from_slice(line) {
            Ok(m) => m,
            Err(err) => {
                warn!(spiffe_id = %self.ctx.id, error = %err, "unreadable discovery message ignored");
                return;
            }
        };
        match message {
            ClientMessage::Ack(ack) => {
                if self.policy.ack(ack.nonce) {
                    if let Some(snapshot) = self.policy_in_flight.take() {
                        self.policy_acked_version = Some(snapshot.version);
                        if let Some(accepted) = snapshot.accepted_at {
                            self.ctx
                                .metrics
                                .push_latency
                                .observe(accepted.elapsed().as_secs_f64());
                        }
                    }
                } else if !self.bundle.ack(ack.nonce)
                    && !self.quarantine.ack(ack.nonce)
                    && !self.endpoint.state.ack(ack.nonce)
                {
                    self.service.state.ack(ack.nonce);
                }
            }
            ClientMessage::Nack(nack) => {
                let which = if self.policy.nack(nack.nonce, nack.error.clone()) {
                    self.policy_in_flight = None;
                    Some(ResourceType::Policy)
                } else if self.bundle.nack(nack.nonce, nack.error.clone()) {
                    Some(ResourceType::Bundle)
                } else if self.quarantine.nack(nack.nonce, nack.error.clone()) {
                    Some(ResourceType::Quarantine)
                } else if self.endpoint.state.nack(nack.nonce, nack.error.clone()) {
                    Some(ResourceType::Endpoint)
                } else if self.service.state.nack(nack.nonce, nack.error.clone()) {
                    Some(ResourceType::Service)
                } else {
                    None
                };
                if let Some(t) = which {
                    self.ctx
                        .metrics
                        .discovery_nacks
                        .with_label_values(&[t.as_str()])
                        .inc();
                    warn!(spiffe_id = %self.ctx.id, pod = ?self.ctx.hello.node.pod, resource_type = t.as_str(), nonce = nack.nonce, error = %nack.error, "sidecar refused an update; it keeps enforcing its previous state");
                }
            }
            ClientMessage::Subscribe(Names {
                resource_type: ResourceType::Endpoint,
                names,
            }) => self.endpoint.subscribe(&names, &self.ctx, &self.inbox),
            ClientMessage::Subscribe(Names {
                resource_type: ResourceType::Service,
                names,
            }) => self.service.subscribe(&names, &self.ctx, &self.inbox),
            ClientMessage::Unsubscribe(Names {
                resource_type: ResourceType::Endpoint,
                names,
            }) => self.endpoint.unsubscribe(&names, &self.ctx),
            ClientMessage::Unsubscribe(Names {
                resource_type: ResourceType::Service,
                names,
            }) => self.service.unsubscribe(&names, &self.ctx),
            // Hello again, other types' subscriptions, unknown messages.
            _ => {}
        }
    }

    /// The pod's labels changed (or not): re-select policies when they did.
    /// A pod that left the table keeps its last labels.
    fn refresh_labels(&mut self) {
        self.own_pod.take(ResourceType::Endpoint);
        let workload = match &self.ctx.hello.node.pod {
            Some(pod) => format!("{}/{pod}", self.ctx.namespace),
            None => return,
        };
        for ip in &self.ctx.pod_ips {
            let Some((at_ip, labels)) = self.ctx.endpoints.kubernetes_pod(*ip) else {
                continue;
            };
            if at_ip == workload && labels != self.ctx.labels {
                info!(spiffe_id = %self.ctx.id, pod = %workload, ?labels, "pod relabelled: policies selected again");
                self.ctx.labels = labels;
                self.policy_dirty = true;
            }
            return;
        }
    }

    fn update_status(&self) {
        let mut status = self.status.lock().expect("not poisoned");
        status.policy = TypeStatus::of(
            &self.policy,
            self.policy_acked_version,
            Some(&self.policy_desired),
        );
        let bundle_desired: Versions = self
            .ctx
            .bundles
            .borrow()
            .resources
            .iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect();
        status.bundle = TypeStatus::of(&self.bundle, None, Some(&bundle_desired));
        status.endpoint = self.endpoint.status();
        status.service = self.service.status();
    }
}

/// Resolves at `deadline` (never without one).
async fn until(deadline: Option<time::OffsetDateTime>) {
    match deadline {
        Some(at) => {
            let left = at - time::OffsetDateTime::now_utc();
            tokio::time::sleep(left.try_into().unwrap_or(Duration::ZERO)).await;
        }
        None => std::future::pending().await,
    }
}

/// The policy resources that apply to a workload: the AuthorizationPolicies
/// that select it, and the PeerAuthentications of its namespace and of the
/// root namespace.
pub fn applicable<'a>(
    snapshot: &'a PolicySnapshot,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    options: &EvalOptions,
) -> Vec<&'a Resource> {
    let selected: BTreeSet<(&str, &str)> = snapshot
        .set
        .authorization_policies()
        .filter(|p| PolicySet::applies(p, namespace, labels, options))
        .map(|p| (&*p.id.namespace, &*p.id.name))
        .collect();
    snapshot
        .docs
        .iter()
        .zip(&snapshot.resources)
        .filter(|(doc, _)| match doc.kind {
            "AuthorizationPolicy" => {
                selected.contains(&(doc.namespace.as_str(), doc.name.as_str()))
            }
            _ => doc.namespace == namespace || doc.namespace == options.root_namespace,
        })
        .map(|(_, resource)| resource)
        .collect()
}
