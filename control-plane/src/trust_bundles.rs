//! The trust bundles the control plane distributes, one per trust domain:
//! its own (the CA's root, plus any roots in `--trust-bundle-dir/<trust
//! domain>.pem`: a root being introduced or retired during a CA rotation)
//! and other trust domains' (federation), each a `bundle` resource of the
//! discovery stream. Sidecars trust the union of what they are sent and
//! their bootstrap anchor (`ward_identity::trust`).
//!
//! The directory is re-read when a file in it changes (inotify, and a
//! check every second besides). A set that does not
//! load (a file that is not PEM, a certificate that is not a CA, a file
//! name that is not a trust domain) is refused whole, with the reason
//! logged and counted, and the last good set stays in force: a typo never
//! takes a root away from the mesh.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tracing::{error, info};
use ward_api::discovery::{BundleBody, RenewRequest, Resource};
use ward_identity::TrustBundles;

use crate::dir_watch::DirWatch;
use crate::metrics::Metrics;

/// How often the directory is checked for changes inotify did not report.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The bundles as sent: one resource per trust domain, named by it.
#[derive(Debug, Clone, PartialEq)]
pub struct BundleSet {
    pub resources: Vec<Resource>,
    /// The control plane's own trust domain's roots (PEM), returned with
    /// every issued certificate.
    pub own_pem: String,
    /// What the set was made from for the CA's trust domain (a rotation
    /// checks the set in force is its phase's).
    pub own: OwnRoots,
}

/// Why the directory's bundles were refused.
#[derive(Debug, thiserror::Error)]
pub enum BundleDirError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: the file name must be `<trust domain>.pem`", path.display())]
    Name { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Bundle {
        path: PathBuf,
        source: ward_identity::BundleError,
    },
}

/// What the control plane's own trust domain's bundle holds besides the
/// directory's roots: the CA's roots (two while a CA rotation is under
/// way), the roots a rotation retired (distrusted everywhere) and a
/// rotation's request to renew early ([`crate::rotation`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OwnRoots {
    pub roots_pem: String,
    pub distrusted_pem: String,
    pub renew: Option<RenewRequest>,
}

impl OwnRoots {
    /// The CA's root alone: no rotation.
    pub fn plain(roots_pem: &str) -> OwnRoots {
        OwnRoots {
            roots_pem: roots_pem.to_owned(),
            ..OwnRoots::default()
        }
    }
}

/// The files of `--trust-bundle-dir`, each checked: (trust domain, PEM).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DirRoots(Vec<(String, String)>);

/// Reads and checks every `<trust domain>.pem` of `dir`; one file that
/// does not load refuses them all.
pub fn read_dir(dir: &Path) -> Result<DirRoots, BundleDirError> {
    let mut files = Vec::new();
    for path in pem_files(dir)? {
        let name = path.file_stem().and_then(|s| s.to_str());
        let Some(trust_domain) = name else {
            return Err(BundleDirError::Name { path });
        };
        let pem = std::fs::read_to_string(&path).map_err(|source| BundleDirError::Read {
            path: path.clone(),
            source,
        })?;
        TrustBundles::new()
            .add_pem(trust_domain, &pem)
            .map_err(|source| BundleDirError::Bundle {
                path: path.clone(),
                source,
            })?;
        files.push((trust_domain.to_owned(), pem));
    }
    Ok(DirRoots(files))
}

/// The set made of the CA's root (`own_trust_domain`, `ca_root_pem`) and
/// the files of `dir`.
pub fn load(
    own_trust_domain: &str,
    ca_root_pem: &str,
    dir: Option<&Path>,
) -> Result<BundleSet, BundleDirError> {
    let dir_roots = dir.map(read_dir).transpose()?.unwrap_or_default();
    compose(own_trust_domain, &OwnRoots::plain(ca_root_pem), &dir_roots)
}

/// The set made of `own` and the directory's roots. A distrusted root
/// leaves the bundle even when the directory still lists it.
pub fn compose(
    own_trust_domain: &str,
    own: &OwnRoots,
    dir: &DirRoots,
) -> Result<BundleSet, BundleDirError> {
    let own_error = |source| BundleDirError::Bundle {
        path: PathBuf::from("(the CA's roots)"),
        source,
    };
    let mut bundles = TrustBundles::new();
    bundles
        .add_pem(own_trust_domain, &own.roots_pem)
        .map_err(own_error)?;
    for (trust_domain, pem) in &dir.0 {
        bundles
            .add_pem(trust_domain, pem)
            .map_err(|source| BundleDirError::Bundle {
                path: PathBuf::from(format!("{trust_domain}.pem")),
                source,
            })?;
    }
    if !own.distrusted_pem.is_empty() {
        let distrusted = TrustBundles::new()
            .with_root(own_trust_domain, &own.distrusted_pem)
            .map_err(own_error)?;
        bundles = bundles.without(&distrusted);
    }
    let resources = bundles
        .trust_domains()
        .map(|td| {
            let mut body = BundleBody {
                trust_domain: td.to_owned(),
                roots_pem: bundles.pem_for(td).unwrap_or_default(),
                ..BundleBody::default()
            };
            if td == own_trust_domain {
                body.distrusted_pem = own.distrusted_pem.clone();
                body.renew = own.renew.clone();
            }
            Resource::new(td.to_owned(), &body)
        })
        .collect();
    Ok(BundleSet {
        resources,
        own_pem: bundles.pem_for(own_trust_domain).unwrap_or_default(),
        own: own.clone(),
    })
}

/// The `.pem` files of `dir`, sorted (other files, such as the dot files a
/// mounted ConfigMap keeps, are ignored).
fn pem_files(dir: &Path) -> Result<Vec<PathBuf>, BundleDirError> {
    let read_error = |source| BundleDirError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        let visible = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !n.starts_with('.'));
        if visible && path.extension().is_some_and(|e| e == "pem") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// What identifies the directory's content: names, sizes and mtimes.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut files: Vec<_> = pem_files(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|path| {
            let meta = std::fs::metadata(&path).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            (path, len, modified)
        })
        .collect();
    files.sort();
    files
}

/// Publishes the set on `tx` whenever the CA's roots (`own`, changed by a
/// CA rotation) or the directory (`dir`, whose last good roots are
/// `dir_roots`) change, until shutdown. A directory that does not load is
/// refused whole and its last good roots stay in the set.
pub async fn run(
    own_trust_domain: String,
    mut own: watch::Receiver<Arc<OwnRoots>>,
    dir: Option<(PathBuf, DirRoots)>,
    tx: Arc<watch::Sender<Arc<BundleSet>>>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (dir, mut dir_roots) = match dir {
        Some((dir, roots)) => (Some(dir), roots),
        None => (None, DirRoots::default()),
    };
    let mut seen = dir.as_deref().map(fingerprint);
    let mut changes = dir
        .as_deref()
        .map(|d| DirWatch::new(d, "trust bundle directory", POLL_INTERVAL));
    loop {
        let dir_event = async {
            match changes.as_mut() {
                Some(changes) => changes.next(&mut shutdown).await,
                None => {
                    let _ = shutdown.wait_for(|stop| *stop).await;
                    false
                }
            }
        };
        tokio::select! {
            more = dir_event => if !more { return },
            changed = own.changed() => if changed.is_err() { return },
        }
        if let Some(dir) = &dir {
            let now = fingerprint(dir);
            if seen.as_ref() != Some(&now) {
                seen = Some(now);
                match read_dir(dir) {
                    Ok(roots) => {
                        metrics
                            .trust_bundle_reloads
                            .with_label_values(&["ok"])
                            .inc();
                        dir_roots = roots;
                    }
                    Err(err) => {
                        metrics
                            .trust_bundle_reloads
                            .with_label_values(&["rejected"])
                            .inc();
                        error!(error = %err, "trust bundle directory refused; the last good bundles stay in force");
                    }
                }
            }
        }
        let own_roots = own.borrow_and_update().clone();
        match compose(&own_trust_domain, &own_roots, &dir_roots) {
            Ok(set) => {
                if **tx.borrow() != set {
                    info!(trust_domains = set.resources.len(), "trust bundles changed");
                    tx.send_replace(Arc::new(set));
                }
            }
            Err(err) => {
                error!(error = %err, "trust bundles not rebuilt; the last good bundles stay in force")
            }
        }
    }
}

#[cfg(test)]
mod tests;
