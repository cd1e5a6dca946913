//! Leader election for the policy status writer, with a
//! `coordination.k8s.io/v1` Lease.
//!
//! Every replica watches the cluster and serves sidecars (issuance,
//! discovery, webhook) whatever its role; only the Lease's holder writes
//! the policies' `status`. The holder renews every `renew_period`; it
//! writes only while its last successful renewal is younger than
//! `renew_deadline`, and stops at once when a renewal fails. Another
//! replica takes the Lease once it has seen it unchanged for
//! `lease_duration` (> `renew_deadline`, so the old holder has stopped by
//! then), or at once when it was released (graceful shutdown). Every write
//! of the Lease carries the resourceVersion it read, so two replicas never
//! both win the same change.
//!
//! - [`decision`]: what to do with the Lease as read (pure);
//! - [`term`]: the status writer's leave to write;
//! - [`elector`]: the loop that reads and writes the Lease.

pub mod decision;
pub mod elector;
pub mod term;

use std::time::Duration;

pub use elector::Elector;
pub use term::{Leadership, Permit};

/// The longest identity accepted: it is also part of the status writes'
/// field manager (`ward-control-plane/<identity>`, at most 128 bytes).
pub const MAX_IDENTITY_LEN: usize = 100;

/// How the control plane takes part in the election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// The Lease's name (`--lease-name`).
    pub name: String,
    /// Its namespace (`--lease-namespace`): the control plane's own.
    pub namespace: String,
    /// This replica's `holderIdentity` (`--lease-identity`); unique among
    /// the replicas.
    pub identity: String,
    /// `leaseDurationSeconds`: how long others wait for a silent holder.
    pub lease_duration: Duration,
    /// The holder writes only this long after its last renewal began.
    pub renew_deadline: Duration,
    /// The holder renews (and the others look) this often.
    pub renew_period: Duration,
}

impl LeaseConfig {
    pub const DEFAULT_NAME: &'static str = "ward-control-plane";
    pub const DEFAULT_NAMESPACE: &'static str = "ward-system";
    pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
    pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
    pub const DEFAULT_RENEW_PERIOD: Duration = Duration::from_secs(5);

    /// The defaults, with `identity`.
    pub fn new(identity: impl Into<String>) -> Self {
        LeaseConfig {
            name: Self::DEFAULT_NAME.to_owned(),
            namespace: Self::DEFAULT_NAMESPACE.to_owned(),
            identity: identity.into(),
            lease_duration: Self::DEFAULT_LEASE_DURATION,
            renew_deadline: Self::DEFAULT_RENEW_DEADLINE,
            renew_period: Self::DEFAULT_RENEW_PERIOD,
        }
    }

    /// `<hostname>-<8 random hex digits>`: the pod name in a pod, made
    /// unique so that two processes on one host never share an identity
    /// (which would make both the holder).
    pub fn generated_identity() -> String {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let host: String = host
            .trim()
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(MAX_IDENTITY_LEN - 9)
            .collect();
        let host = if host.is_empty() {
            "ward-control-plane".to_owned()
        } else {
            host
        };
        format!("{host}-{:08x}", rand::random::<u32>())
    }

    /// The field manager of this replica's status writes, so the API
    /// server records which replica wrote each status.
    pub fn field_manager(&self) -> String {
        format!("ward-control-plane/{}", self.identity)
    }

    /// Refuses settings under which two replicas could write at once, or
    /// that the API server would refuse, naming the flag.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !is_dns_subdomain(&self.name) {
            anyhow::bail!(
                "--lease-name {:?}: not a Kubernetes object name (lowercase letters, digits, '-' and '.', at most 253)",
                self.name
            );
        }
        if !is_dns_label(&self.namespace) {
            anyhow::bail!(
                "--lease-namespace {:?}: not a namespace name (lowercase letters, digits and '-', at most 63)",
                self.namespace
            );
        }
        if self.identity.is_empty()
            || self.identity.len() > MAX_IDENTITY_LEN
            || !self.identity.chars().all(|c| c.is_ascii_graphic())
        {
            anyhow::bail!(
                "--lease-identity {:?}: 1 to {MAX_IDENTITY_LEN} printable ASCII characters without spaces",
                self.identity
            );
        }
        let secs = |d: Duration| humantime::format_duration(d).to_string();
        if self.lease_duration.subsec_nanos() != 0 || self.lease_duration.as_secs() == 0 {
            anyhow::bail!(
                "--lease-duration {}: whole seconds, at least 1s (leaseDurationSeconds is an integer)",
                secs(self.lease_duration)
            );
        }
        if self.lease_duration.as_secs() > i32::MAX as u64 {
            anyhow::bail!("--lease-duration {}: too long", secs(self.lease_duration));
        }
        if self.renew_deadline >= self.lease_duration {
            anyhow::bail!(
                "--lease-renew-deadline ({}) must be shorter than --lease-duration ({}): the holder must stop writing before another replica may take the Lease",
                secs(self.renew_deadline),
                secs(self.lease_duration)
            );
        }
        if self.renew_period.is_zero() || self.renew_period >= self.renew_deadline {
            anyhow::bail!(
                "--lease-renew-period ({}) must be more than zero and shorter than --lease-renew-deadline ({}): the holder must renew before its deadline",
                secs(self.renew_period),
                secs(self.renew_deadline)
            );
        }
        Ok(())
    }
}

fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(change: impl FnOnce(&mut LeaseConfig)) -> String {
        let mut config = LeaseConfig::new("replica-a");
        change(&mut config);
        config.validate().expect_err("invalid").to_string()
    }

    #[test]
    fn the_defaults_are_valid_and_generated_identities_differ() {
        let a = LeaseConfig::generated_identity();
        let b = LeaseConfig::generated_identity();
        assert_ne!(a, b);
        for identity in [a, b] {
            LeaseConfig::new(identity).validate().unwrap();
        }
        assert_eq!(
            LeaseConfig::new("x").field_manager(),
            "ward-control-plane/x"
        );
        let longest = LeaseConfig::new("i".repeat(MAX_IDENTITY_LEN)).field_manager();
        assert!(longest.len() <= 128, "the API server's limit");
    }

    #[test]
    fn timings_that_would_allow_two_writers_are_refused() {
        let s = Duration::from_secs;
        let e = error(|c| c.renew_deadline = s(15));
        assert!(
            e.contains("--lease-renew-deadline (15s) must be shorter than --lease-duration (15s)"),
            "{e}"
        );
        let e = error(|c| c.renew_period = s(10));
        assert!(e.contains("--lease-renew-period (10s)"), "{e}");
        let e = error(|c| c.renew_period = Duration::ZERO);
        assert!(e.contains("--lease-renew-period"), "{e}");
        let e = error(|c| c.lease_duration = Duration::from_millis(15_500));
        assert!(e.contains("whole seconds"), "{e}");
    }

    #[test]
    fn names_and_identities_are_checked() {
        assert!(error(|c| c.name = "Ward".into()).contains("--lease-name \"Ward\""));
        assert!(error(|c| c.name = String::new()).contains("--lease-name"));
        assert!(error(|c| c.namespace = "ward.system".into()).contains("--lease-namespace"));
        assert!(error(|c| c.identity = "a b".into()).contains("--lease-identity \"a b\""));
        assert!(error(|c| c.identity = String::new()).contains("--lease-identity"));
        assert!(
            error(|c| c.identity = "i".repeat(MAX_IDENTITY_LEN + 1)).contains("--lease-identity")
        );
        let mut ok = LeaseConfig::new("ward-control-plane-7d9c5b-x2x8q");
        ok.name = "ward.leader-1".into();
        ok.validate().unwrap();
    }
}
