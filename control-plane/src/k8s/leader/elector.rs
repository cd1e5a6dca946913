//! The election loop: reads the Lease, does what [`decision`] says, and
//! publishes the outcome as the status writer's [`term`].
//!
//! [`decision`]: super::decision
//! [`term`]: super::term

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tracing::{info, warn};

use super::LeaseConfig;
use super::decision::{Observer, Record, Step};
use super::term::{Leadership, TermSender};
use crate::metrics::Metrics;

/// After a failed call, the holder tries again this soon (it stopped
/// writing and may resume as soon as a renewal succeeds); the others wait
/// the renew period.
const RETRY_HELD: Duration = Duration::from_secs(1);
/// Bound on each part of the release at shutdown (waiting for writes in
/// flight, the Lease calls): shutting down never waits on the API server.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// One replica's side of the election. [`Elector::run`] until shutdown.
pub struct Elector {
    config: LeaseConfig,
    api: Api<Lease>,
    term: TermSender,
    metrics: Arc<Metrics>,
    observer: Observer,
    /// This replica is the writer (for the metric and the log).
    leading: bool,
    /// The other holder last seen (to log a change once).
    followed: Option<String>,
}

/// What a round found.
enum Outcome {
    /// This replica created, renewed or took the Lease.
    Holds,
    Follows {
        holder: String,
        expires_in: Duration,
    },
    /// Another replica wrote the Lease between our read and our write.
    Raced,
}

impl Elector {
    /// The elector, and the leave to write it grants.
    pub fn new(
        config: LeaseConfig,
        client: kube::Client,
        metrics: Arc<Metrics>,
    ) -> (Self, Leadership) {
        let api = Api::namespaced(client, &config.namespace);
        let (term, leadership) = TermSender::new();
        metrics.leader.set(0);
        let elector = Elector {
            config,
            api,
            term,
            metrics,
            observer: Observer::default(),
            leading: false,
            followed: None,
        };
        (elector, leadership)
    }

    /// Competes for the Lease until `shutdown`, then releases it if held.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        info!(
            lease = %self.lease_name(),
            identity = %self.config.identity,
            "leader election: competing for the Lease that elects the policy status writer"
        );
        loop {
            let next = tokio::select! {
                next = self.round() => next,
                _ = shutdown.wait_for(|stop| *stop) => break,
            };
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
        self.release().await;
    }

    fn lease_name(&self) -> String {
        format!("{}/{}", self.config.namespace, self.config.name)
    }

    /// One read (and maybe write) of the Lease; returns when to go again.
    async fn round(&mut self) -> Instant {
        // The term counts from before the read: it ends no later than the
        // renewal that extends it could have been written.
        let started = Instant::now();
        let held = self.term.holds();
        // A renewal must succeed within the term it extends: one still in
        // flight at the deadline is a lost Lease.
        let budget = match self.term.remaining() {
            Some(left) => left.min(self.config.renew_period),
            None => self.config.renew_period,
        };
        let result = tokio::time::timeout(budget, self.attempt()).await;
        let now = Instant::now();
        let retry = if held {
            RETRY_HELD.min(self.config.renew_period)
        } else {
            self.config.renew_period
        };
        match result {
            Ok(Ok(Outcome::Holds)) => {
                self.gain(started + self.config.renew_deadline);
                started + self.config.renew_period
            }
            Ok(Ok(Outcome::Follows { holder, expires_in })) => {
                self.lose(&format!("the Lease is held by {holder}"));
                if self.followed.as_deref() != Some(&holder) {
                    info!(lease = %self.lease_name(), %holder, "following: another replica holds the Lease and writes policy statuses");
                    self.followed = Some(holder);
                }
                // Look again when it could have expired, or sooner.
                now + expires_in.min(self.config.renew_period)
            }
            Ok(Ok(Outcome::Raced)) => {
                self.lose("another replica wrote the Lease first");
                now + RETRY_HELD.min(self.config.renew_period)
            }
            Ok(Err(err)) => {
                warn!(lease = %self.lease_name(), error = %err, "leader election: the Lease call failed");
                self.lose(&format!("the Lease call failed: {err}"));
                now + retry
            }
            Err(_) => {
                warn!(lease = %self.lease_name(), timeout = ?budget, "leader election: the Lease call timed out");
                self.lose("the Lease call did not finish before the renew deadline");
                now + retry
            }
        }
    }

    async fn attempt(&mut self) -> Result<Outcome, kube::Error> {
        let current = self.api.get_opt(&self.config.name).await?;
        let record = current.as_ref().map(record);
        // Seen once the answer is in, never earlier than it was written:
        // the count towards expiry cannot start before the renewal did.
        let step = self.observer.step(
            &self.config.identity,
            record.as_ref(),
            self.config.lease_duration,
            Instant::now(),
        );
        let now = now();
        let duration = Some(self.config.lease_duration.as_secs() as i32);
        let params = self.params();
        let written = match (step, current) {
            (Step::Follow { holder, expires_in }, _) => {
                return Ok(Outcome::Follows { holder, expires_in });
            }
            (Step::Create, _) | (_, None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        labels: Some(BTreeMap::from([(
                            "app.kubernetes.io/part-of".to_owned(),
                            "ward".to_owned(),
                        )])),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.config.identity.clone()),
                        lease_duration_seconds: duration,
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                self.api.create(&params, &lease).await
            }
            (Step::Renew, Some(mut lease)) => {
                let spec = lease.spec.get_or_insert_default();
                spec.renew_time = Some(now);
                spec.lease_duration_seconds = duration;
                // The resourceVersion read above: a conflict if anyone
                // wrote it since.
                self.api.replace(&self.config.name, &params, &lease).await
            }
            (Step::Take, Some(mut lease)) => {
                let spec = lease.spec.get_or_insert_default();
                spec.holder_identity = Some(self.config.identity.clone());
                spec.acquire_time = Some(now.clone());
                spec.renew_time = Some(now);
                spec.lease_duration_seconds = duration;
                spec.lease_transitions =
                    Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
                self.api.replace(&self.config.name, &params, &lease).await
            }
        };
        match written {
            Ok(_) => Ok(Outcome::Holds),
            Err(kube::Error::Api(status)) if status.is_conflict() || status.is_already_exists() => {
                Ok(Outcome::Raced)
            }
            Err(err) => Err(err),
        }
    }

    fn params(&self) -> PostParams {
        PostParams {
            field_manager: Some(self.config.field_manager()),
            ..Default::default()
        }
    }

    fn gain(&mut self, until: Instant) {
        self.term.extend(until);
        if !self.leading {
            self.leading = true;
            self.followed = None;
            self.metrics.leader.set(1);
            info!(lease = %self.lease_name(), identity = %self.config.identity, "became the leader: this replica holds the Lease and writes policy statuses");
        }
    }

    /// Stops the status writes at once.
    fn lose(&mut self, reason: &str) {
        self.term.end();
        if self.leading {
            self.leading = false;
            self.metrics.leader.set(0);
            warn!(lease = %self.lease_name(), identity = %self.config.identity, reason, "no longer the leader: policy status writes stopped");
        }
    }

    /// At shutdown: stop writing, wait for the writes in flight, then hand
    /// the Lease back so another replica takes it without waiting for it
    /// to expire.
    async fn release(&mut self) {
        self.lose("shutting down");
        let Some(_drained) = self.term.drain(RELEASE_TIMEOUT).await else {
            warn!(lease = %self.lease_name(), "status writes still in flight at shutdown: the Lease is left to expire");
            return;
        };
        match tokio::time::timeout(RELEASE_TIMEOUT, self.clear_holder()).await {
            Ok(Ok(true)) => {
                info!(lease = %self.lease_name(), identity = %self.config.identity, "released the Lease: another replica may take it at once")
            }
            Ok(Ok(false)) => {}
            Ok(Err(err)) => {
                warn!(lease = %self.lease_name(), error = %err, "releasing the Lease failed: it is left to expire")
            }
            Err(_) => {
                warn!(lease = %self.lease_name(), "releasing the Lease timed out: it is left to expire")
            }
        }
    }

    /// Empties `holderIdentity` if it is ours. Returns whether it was.
    async fn clear_holder(&self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(false);
        };
        let spec = lease.spec.get_or_insert_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(false);
        }
        spec.holder_identity = None;
        spec.renew_time = Some(now());
        self.api
            .replace(&self.config.name, &self.params(), &lease)
            .await?;
        Ok(true)
    }
}

fn record(lease: &Lease) -> Record {
    let spec = lease.spec.as_ref();
    Record {
        version: lease.metadata.resource_version.clone().unwrap_or_default(),
        holder: spec.and_then(|s| s.holder_identity.clone()),
        duration: spec
            .and_then(|s| s.lease_duration_seconds)
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs),
    }
}

/// The wall clock, for `acquireTime`/`renewTime` (informative: no replica
/// decides on another's wall clock).
fn now() -> MicroTime {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_micros()).ok())
        .unwrap_or(0);
    MicroTime(Timestamp::from_microsecond(micros).unwrap_or(Timestamp::UNIX_EPOCH))
}
