//! Load balancing over a Service port's endpoints: power of two choices
//! over a cost that is the endpoint's latency EWMA times its requests in
//! flight (as Linkerd), so a slow or busy replica gets less, and a replica
//! that fails repeatedly is ejected with exponential backoff until a probe
//! connects to it again.
//!
//! Endpoint state (statistics, ejection, its pooled connection) survives
//! updates of the Service: an endpoint whose address and identity did not
//! change keeps its `Arc`, so a readiness flip does not drop connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rand::Rng;
use ward_api::discovery::{AppProtocol, ServiceEndpoint, ServicePort};
use ward_identity::SpiffeId;

use crate::metrics::PeerMetrics;
use crate::upstream::PoolSlot;

/// Consecutive failures that eject an endpoint.
pub const EJECT_AFTER: u32 = 3;
/// First ejection; doubles on each failed probe up to [`MAX_EJECTION`].
pub const FIRST_EJECTION: Duration = Duration::from_secs(1);
pub const MAX_EJECTION: Duration = Duration::from_secs(30);
/// Latency assumed for an endpoint that has not answered yet: optimistic,
/// so new endpoints get traffic at once.
const INITIAL_EWMA_US: u64 = 1_000;

/// One endpoint of a Service port.
pub struct Endpoint {
    pub addr: SocketAddr,
    /// The identity its sidecar must present; `None`: no sidecar (plaintext).
    pub identity: Option<SpiffeId>,
    pub workload: Option<String>,
    ready: AtomicBool,
    serving: AtomicBool,
    terminating: AtomicBool,
    in_flight: AtomicU32,
    ewma_us: AtomicU64,
    failures: AtomicU32,
    ejection: Mutex<Ejection>,
    /// Its shared HTTP/2 connection (meshed endpoints).
    pub pool: PoolSlot,
    /// Request metrics for this endpoint's peer, resolved once.
    pub metrics: std::sync::OnceLock<Arc<PeerMetrics>>,
}

#[derive(Default)]
struct Ejection {
    until: Option<Instant>,
    backoff: Duration,
}

impl Endpoint {
    fn new(e: &ServiceEndpoint, addr: SocketAddr, identity: Option<SpiffeId>) -> Self {
        let endpoint = Endpoint {
            addr,
            identity,
            workload: e.workload.clone(),
            ready: AtomicBool::new(false),
            serving: AtomicBool::new(false),
            terminating: AtomicBool::new(false),
            in_flight: AtomicU32::new(0),
            ewma_us: AtomicU64::new(INITIAL_EWMA_US),
            failures: AtomicU32::new(0),
            ejection: Mutex::new(Ejection::default()),
            pool: PoolSlot::default(),
            metrics: Default::default(),
        };
        endpoint.set_conditions(e);
        endpoint
    }

    fn set_conditions(&self, e: &ServiceEndpoint) {
        self.ready.store(e.ready, Ordering::Relaxed);
        self.serving.store(e.serving, Ordering::Relaxed);
        self.terminating.store(e.terminating, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Terminating but still serving: used only when nothing is ready.
    fn is_draining(&self) -> bool {
        self.serving.load(Ordering::Relaxed) && self.terminating.load(Ordering::Relaxed)
    }

    pub fn is_ejected(&self) -> bool {
        let ejection = self.ejection.lock().expect("not poisoned");
        ejection.until.is_some()
    }

    fn cost(&self) -> u64 {
        let in_flight = u64::from(self.in_flight.load(Ordering::Relaxed));
        (self.ewma_us.load(Ordering::Relaxed) + 1) * (in_flight + 1)
    }

    /// Marks a request (or connection) as started on this endpoint.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            endpoint: self.clone(),
            started: Instant::now(),
        }
    }

    /// A success: resets the failure count and feeds the latency EWMA.
    fn succeeded(&self, latency: Duration) {
        self.failures.store(0, Ordering::Relaxed);
        let sample = latency.as_micros().min(u128::from(u32::MAX)) as u64;
        // EWMA with weight 1/4 for the new sample.
        let old = self.ewma_us.load(Ordering::Relaxed);
        self.ewma_us
            .store((old * 3 + sample) / 4, Ordering::Relaxed);
    }

    /// A failure; returns true when it ejected the endpoint (the caller
    /// then starts probing it).
    pub fn failed(&self) -> bool {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < EJECT_AFTER {
            return false;
        }
        let mut ejection = self.ejection.lock().expect("not poisoned");
        if ejection.until.is_some() {
            return false;
        }
        ejection.backoff = FIRST_EJECTION;
        ejection.until = Some(Instant::now() + ejection.backoff);
        true
    }

    /// How long until the next probe.
    pub fn probe_delay(&self) -> Duration {
        let ejection = self.ejection.lock().expect("not poisoned");
        ejection
            .until
            .map(|u| u.saturating_duration_since(Instant::now()))
            .unwrap_or_default()
    }

    /// The probe's verdict: re-admitted, or ejected for twice as long.
    pub fn probed(&self, ok: bool) {
        let mut ejection = self.ejection.lock().expect("not poisoned");
        if ok {
            *ejection = Ejection::default();
            self.failures.store(0, Ordering::Relaxed);
        } else {
            ejection.backoff = (ejection.backoff * 2).min(MAX_EJECTION);
            ejection.until = Some(Instant::now() + ejection.backoff);
        }
    }
}

/// A request in flight on an endpoint; the count drops with it.
pub struct InFlight {
    endpoint: Arc<Endpoint>,
    started: Instant,
}

impl InFlight {
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    pub fn succeeded(&self) {
        self.endpoint.succeeded(self.started.elapsed());
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One port of one Service address: its settings and its endpoints.
pub struct PortBalancer {
    /// `namespace/name`, for metrics and logs.
    pub service: Arc<str>,
    pub port: u16,
    pub protocol: Option<AppProtocol>,
    pub timeout: Option<Duration>,
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
}

impl PortBalancer {
    pub fn new(service: Arc<str>, port: u16) -> Self {
        PortBalancer {
            service,
            port,
            protocol: None,
            timeout: None,
            endpoints: ArcSwap::default(),
        }
    }

    /// Builds the port's state from the resource, keeping the state of the
    /// endpoints `previous` already had. An invalid endpoint is an error
    /// (the update is refused whole).
    pub fn from_resource(
        service: Arc<str>,
        port: u16,
        body: &ServicePort,
        previous: Option<&PortBalancer>,
    ) -> Result<Self, String> {
        let old: HashMap<SocketAddr, Arc<Endpoint>> = previous
            .map(|p| p.endpoints().iter().map(|e| (e.addr, e.clone())).collect())
            .unwrap_or_default();
        let mut endpoints = Vec::with_capacity(body.endpoints.len());
        for e in &body.endpoints {
            let addr: SocketAddr = e.address.parse().map_err(|_| {
                format!(
                    "service {service} port {port}: endpoint {:?} is not IP:PORT",
                    e.address
                )
            })?;
            let identity = e
                .spiffe_id
                .as_deref()
                .map(SpiffeId::parse)
                .transpose()
                .map_err(|err| format!("service {service} endpoint {addr}: {err}"))?;
            match old.get(&addr) {
                Some(kept) if kept.identity == identity => {
                    kept.set_conditions(e);
                    endpoints.push(kept.clone());
                }
                _ => endpoints.push(Arc::new(Endpoint::new(e, addr, identity))),
            }
        }
        Ok(PortBalancer {
            service,
            port,
            protocol: body.protocol,
            timeout: body.timeout_ms.map(Duration::from_millis),
            endpoints: ArcSwap::from_pointee(endpoints),
        })
    }

    pub fn endpoints(&self) -> arc_swap::Guard<Arc<Vec<Arc<Endpoint>>>> {
        self.endpoints.load()
    }

    /// The identity every endpoint presents, when they all present the same
    /// one (connection-level metrics); `None` otherwise.
    pub fn common_identity(&self) -> Option<SpiffeId> {
        let endpoints = self.endpoints();
        let first = endpoints.first()?.identity.clone()?;
        endpoints
            .iter()
            .all(|e| e.identity.as_ref() == Some(&first))
            .then_some(first)
    }

    /// Picks an endpoint for a new request or connection, skipping
    /// `tried` (earlier attempts of the same request) and, for HTTP,
    /// endpoints without a sidecar (`meshed_only`). Ready endpoints first;
    /// when none is ready, serving ones that are terminating; ejected ones
    /// only when every usable endpoint is ejected. `None`: no usable
    /// endpoint.
    pub fn pick(&self, tried: &[SocketAddr], meshed_only: bool) -> Option<Arc<Endpoint>> {
        let endpoints = self.endpoints();
        let eligible =
            |e: &&Arc<Endpoint>| !tried.contains(&e.addr) && (!meshed_only || e.identity.is_some());
        let mut candidates: Vec<&Arc<Endpoint>> = endpoints
            .iter()
            .filter(eligible)
            .filter(|e| e.is_ready())
            .collect();
        if candidates.is_empty() {
            candidates = endpoints
                .iter()
                .filter(eligible)
                .filter(|e| e.is_draining())
                .collect();
        }
        let healthy: Vec<&Arc<Endpoint>> = candidates
            .iter()
            .copied()
            .filter(|e| !e.is_ejected())
            .collect();
        if !healthy.is_empty() {
            candidates = healthy;
        }
        Some(power_of_two(&candidates)?.clone())
    }

    /// True when some endpoint has a sidecar.
    pub fn has_meshed(&self) -> bool {
        self.endpoints().iter().any(|e| e.identity.is_some())
    }
}

/// Two distinct random candidates, the cheaper one.
fn power_of_two<'a>(candidates: &[&'a Arc<Endpoint>]) -> Option<&'a Arc<Endpoint>> {
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0]),
        n => {
            let mut rng = rand::rng();
            let a = rng.random_range(0..n);
            let b = (a + rng.random_range(1..n)) % n;
            let (a, b) = (candidates[a], candidates[b]);
            Some(if b.cost() < a.cost() { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests;
