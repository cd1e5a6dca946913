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
use ward_api::discovery::{BundleBody, Resource};
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

/// The set made of the CA's root (`own_trust_domain`, `ca_root_pem`) and
/// the files of `dir`.
pub fn load(
    own_trust_domain: &str,
    ca_root_pem: &str,
    dir: Option<&Path>,
) -> Result<BundleSet, BundleDirError> {
    let mut bundles = TrustBundles::new();
    bundles
        .add_pem(own_trust_domain, ca_root_pem)
        .map_err(|source| BundleDirError::Bundle {
            path: PathBuf::from("(the CA's root)"),
            source,
        })?;
    if let Some(dir) = dir {
        for path in pem_files(dir)? {
            let name = path.file_stem().and_then(|s| s.to_str());
            let Some(trust_domain) = name else {
                return Err(BundleDirError::Name { path });
            };
            let pem = std::fs::read_to_string(&path).map_err(|source| BundleDirError::Read {
                path: path.clone(),
                source,
            })?;
            bundles
                .add_pem(trust_domain, &pem)
                .map_err(|source| BundleDirError::Bundle {
                    path: path.clone(),
                    source,
                })?;
        }
    }
    let resources = bundles
        .trust_domains()
        .map(|td| {
            let body = BundleBody {
                trust_domain: td.to_owned(),
                roots_pem: bundles.pem_for(td).unwrap_or_default(),
            };
            Resource::new(td.to_owned(), &body)
        })
        .collect();
    Ok(BundleSet {
        resources,
        own_pem: bundles.pem_for(own_trust_domain).unwrap_or_default(),
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

/// Re-reads `dir` when it changes and publishes each good set on `tx`.
pub async fn watch_dir(
    own_trust_domain: String,
    ca_root_pem: String,
    dir: PathBuf,
    tx: Arc<watch::Sender<Arc<BundleSet>>>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut seen = fingerprint(&dir);
    let mut changes = DirWatch::new(&dir, "trust bundle directory", POLL_INTERVAL);
    while changes.next(&mut shutdown).await {
        let now = fingerprint(&dir);
        if now == seen {
            continue;
        }
        seen = now;
        match load(&own_trust_domain, &ca_root_pem, Some(&dir)) {
            Ok(set) => {
                metrics
                    .trust_bundle_reloads
                    .with_label_values(&["ok"])
                    .inc();
                if **tx.borrow() != set {
                    info!(dir = %dir.display(), trust_domains = set.resources.len(), "trust bundles changed");
                    tx.send_replace(Arc::new(set));
                }
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

#[cfg(test)]
mod tests;
