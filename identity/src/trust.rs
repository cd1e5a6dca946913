//! What a workload trusts, and where that comes from.
//!
//! Three sources feed one [`SharedBundles`], the set every handshake reads:
//! - **bootstrap**: the anchor the workload starts with (`--ca`, a mounted
//!   ConfigMap), re-read when the file changes;
//! - **pushed**: the trust bundles the control plane sends as resources of
//!   the discovery stream;
//! - **issued**: the bundle returned with each issued certificate.
//!
//! A trust domain's effective roots are the union of the three. So no one
//! source narrows trust on its own: a renewal that returns only the new
//! root during a CA rotation leaves the old one trusted for as long as the
//! pushed bundle (or the bootstrap file) still holds it, and a root leaves
//! only when every source has dropped it (a rotation's *retire* step).
//!
//! One exception narrows all three: the roots the control plane pushes as
//! **distrusted** (a rotation retired them). They leave the union whatever
//! source holds them, so a sidecar started from an anchor file with the
//! old root still stops trusting it once the rotation is over.

use std::sync::{Arc, Mutex};

use crate::bundle::{BundleError, TrustBundles};
use crate::tls::{self, SharedBundles};

/// One source of trust (see the module comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Bootstrap,
    Pushed,
    Issued,
}

/// The sources and their union. Cheap to share (`Arc<Trust>`).
#[derive(Debug)]
pub struct Trust {
    sources: Mutex<Sources>,
    shared: SharedBundles,
}

#[derive(Debug, Default, Clone)]
struct Sources {
    bootstrap: TrustBundles,
    pushed: TrustBundles,
    issued: TrustBundles,
    /// Taken out of the union, whatever source holds them.
    distrusted: TrustBundles,
}

impl Sources {
    fn get_mut(&mut self, source: Source) -> &mut TrustBundles {
        match source {
            Source::Bootstrap => &mut self.bootstrap,
            Source::Pushed => &mut self.pushed,
            Source::Issued => &mut self.issued,
        }
    }

    fn union(&self) -> TrustBundles {
        let mut all = self.bootstrap.clone();
        all.extend(&self.pushed);
        all.extend(&self.issued);
        all.without(&self.distrusted)
    }
}

impl Trust {
    /// Trust that starts from `bootstrap` alone.
    pub fn new(bootstrap: TrustBundles) -> Arc<Self> {
        let sources = Sources {
            bootstrap,
            ..Sources::default()
        };
        Arc::new(Self {
            shared: tls::shared_bundles(sources.union()),
            sources: Mutex::new(sources),
        })
    }

    /// The union, as handshakes read it.
    pub fn shared(&self) -> &SharedBundles {
        &self.shared
    }

    /// Replaces everything `source` says (every trust domain) and publishes
    /// the new union.
    pub fn replace(&self, source: Source, bundles: TrustBundles) {
        self.update(|sources| *sources.get_mut(source) = bundles);
    }

    /// Replaces the distrusted roots (every trust domain) and publishes the
    /// new union.
    pub fn set_distrusted(&self, bundles: TrustBundles) {
        self.update(|sources| sources.distrusted = bundles);
    }

    /// Replaces what `source` says about `trust_domain` with the roots in
    /// `pem`; nothing changes when `pem` is refused.
    pub fn replace_domain(
        &self,
        source: Source,
        trust_domain: &str,
        pem: &str,
    ) -> Result<(), BundleError> {
        let mut roots = TrustBundles::new();
        roots.add_pem(trust_domain, pem)?;
        self.update(|sources| {
            let bundles = sources.get_mut(source);
            bundles.remove(trust_domain);
            bundles.extend(&roots);
        });
        Ok(())
    }

    /// The union as it would be after [`Self::replace_domain`], without
    /// publishing it: to check an issued certificate before it is installed.
    pub fn preview_domain(
        &self,
        source: Source,
        trust_domain: &str,
        pem: &str,
    ) -> Result<TrustBundles, BundleError> {
        let mut roots = TrustBundles::new();
        roots.add_pem(trust_domain, pem)?;
        let mut sources = self.lock().clone();
        let bundles = sources.get_mut(source);
        bundles.remove(trust_domain);
        bundles.extend(&roots);
        Ok(sources.union())
    }

    fn update(&self, change: impl FnOnce(&mut Sources)) {
        let mut sources = self.lock();
        change(&mut sources);
        // Published under the lock, so two updates cannot publish out of order.
        self.shared.store(Arc::new(sources.union()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sources> {
        // A panic while holding the lock leaves whole values behind (every
        // change assigns complete bundles), so the data is still good.
        self.sources.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests;
