//! The policy store and its sources.
//!
//! Sources ([`PolicySource`]) say what the policy documents are now: a
//! directory of YAML files ([`DirSource`], watched with inotify) or the Kubernetes custom
//! resources ([`crate::k8s::kube_sources`]). The directory may also hold
//! Kubernetes `Service` and `EndpointSlice` documents: they go to the
//! address registry ([`crate::services`]), validated with the policies as
//! one read. The store validates each offer
//! whole; an invalid offer is rejected (logged, counted) and the last good
//! set stays in force. Every accepted set gets a new, increasing version,
//! which the discovery streams push to the sidecars.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::sync::watch;
use tracing::{error, info};
use ward_api::discovery::{PolicyBody, Resource, ServiceBody};
use ward_policy::{ConfigError, PolicyError, PolicySet};

use crate::dir_watch::DirWatch;
use crate::discovery::Endpoints;
use crate::metrics::Metrics;
use crate::services::ServiceCatalog;

pub use crate::dir_watch::{RESCAN_INTERVAL, SETTLE};

/// One YAML document of the accepted set, kept as written so proxies get
/// exactly what the operator wrote (and parse it with the same code).
#[derive(Debug, Clone)]
pub struct PolicyDoc {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub text: String,
}

impl PolicyDoc {
    /// The document as a discovery resource, named `<kind>/<ns>/<name>`.
    pub fn resource(&self) -> Resource {
        let body = PolicyBody {
            kind: self.kind.to_owned(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            yaml: self.text.clone(),
        };
        Resource::new(body.resource_name(), &body)
    }
}

/// An accepted policy set.
#[derive(Debug, Default)]
pub struct PolicySnapshot {
    pub version: u64,
    pub set: PolicySet,
    pub docs: Vec<PolicyDoc>,
    /// `docs` as discovery resources, in the same order.
    pub resources: Vec<Resource>,
    /// When it was accepted (for push latency).
    pub accepted_at: Option<std::time::Instant>,
}

/// One text a source offers: a policy file, or one custom resource
/// rendered as YAML. The label names it in errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceText {
    pub label: String,
    pub text: String,
}

/// Where policies come from: the one interface the file and Kubernetes
/// sources sit behind. A source runs until `shutdown`, offering each new
/// set of documents to the store; validation, versioning and publication
/// are the store's.
pub trait PolicySource: Send + 'static {
    fn run(
        self,
        store: Arc<PolicyStore>,
        shutdown: watch::Receiver<bool>,
    ) -> impl Future<Output = ()> + Send;
}

/// Validates `texts` as one set and splits it into per-policy documents.
pub fn load_texts(texts: &[SourceText]) -> Result<(PolicySet, Vec<PolicyDoc>), PolicyError> {
    let pairs: Vec<(String, String)> = texts
        .iter()
        .map(|t| (t.label.clone(), t.text.clone()))
        .collect();
    let set = PolicySet::parse_texts(&pairs)?;
    let mut docs = Vec::new();
    for source in texts {
        for chunk in split_documents(&source.text) {
            // Each chunk was valid as part of the whole; parse it alone to
            // learn which policies it holds.
            let Ok(one) = PolicySet::parse_str(&source.label, &chunk) else {
                continue;
            };
            for info in one.policies() {
                docs.push(PolicyDoc {
                    kind: info.kind,
                    namespace: info.id.namespace.to_string(),
                    name: info.id.name.to_string(),
                    text: chunk.clone(),
                });
            }
        }
    }
    Ok((set, docs))
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Splits a multi-document YAML text at `---` separator lines.
fn split_documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line == "---" || line.starts_with("--- ") {
            docs.push(String::new());
            continue;
        }
        let current = docs.last_mut().expect("never empty");
        current.push_str(line);
        current.push('\n');
    }
    docs.into_iter()
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect()
}

/// Versions increase across restarts too: milliseconds since the epoch,
/// or one more than the previous version if the clock went backwards.
pub(crate) fn next_version(previous: u64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    now.max(previous + 1)
}

pub struct PolicyStore {
    tx: watch::Sender<Arc<PolicySnapshot>>,
    synced: watch::Sender<bool>,
    metrics: Arc<Metrics>,
    /// The source's last offer, when it was rejected (cleared by the next
    /// accepted set): what `ward check` reports.
    rejection: std::sync::Mutex<Option<Rejection>>,
}

/// A set the source offered and the store refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rejection {
    pub source: String,
    pub error: String,
    /// RFC 3339.
    pub at: String,
    /// The version that stayed in force.
    pub version_in_force: u64,
}

impl PolicyStore {
    /// An empty store (version 0: everything allowed, mTLS STRICT) until a
    /// source offers a set. `synced`: whether version 0 is the truth (no
    /// source, or a source that offers at start); otherwise nothing is
    /// distributed until the source calls [`Self::mark_synced`].
    pub fn new(metrics: Arc<Metrics>, synced: bool) -> Self {
        metrics.policy_version.set(0);
        let (tx, _) = watch::channel(Arc::new(PolicySnapshot::default()));
        PolicyStore {
            tx,
            synced: watch::channel(synced).0,
            metrics,
            rejection: std::sync::Mutex::new(None),
        }
    }

    /// The source has offered the state it started with.
    pub fn mark_synced(&self) {
        self.synced
            .send_if_modified(|s| !std::mem::replace(s, true));
    }

    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    pub fn subscribe_synced(&self) -> watch::Receiver<bool> {
        self.synced.subscribe()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<PolicySnapshot>> {
        self.tx.subscribe()
    }

    pub fn current(&self) -> Arc<PolicySnapshot> {
        self.tx.borrow().clone()
    }

    /// The source's last offer, if it was rejected.
    pub fn rejection(&self) -> Option<Rejection> {
        self.rejection.lock().expect("not poisoned").clone()
    }

    /// Validates `texts` whole and, if valid, publishes them as a new
    /// version (returned). Invalid: nothing changes, the error is logged,
    /// counted and returned.
    pub fn offer(&self, source: &str, texts: &[SourceText]) -> Result<u64, PolicyError> {
        match load_texts(texts) {
            Ok((set, docs)) => Ok(self.publish(source, set, docs)),
            Err(err) => {
                self.reject(source, &err);
                Err(err)
            }
        }
    }

    /// Publishes a set the source has validated (parsed and merged) as a
    /// new version.
    pub fn publish(&self, source: &str, set: PolicySet, docs: Vec<PolicyDoc>) -> u64 {
        let version = next_version(self.current().version);
        let count = docs.len();
        let resources = docs.iter().map(PolicyDoc::resource).collect();
        self.tx.send_replace(Arc::new(PolicySnapshot {
            version,
            set,
            docs,
            resources,
            accepted_at: Some(std::time::Instant::now()),
        }));
        self.metrics
            .policy_sets
            .with_label_values(&["accepted"])
            .inc();
        self.metrics.policy_version.set(version as i64);
        *self.rejection.lock().expect("not poisoned") = None;
        info!(version, documents = count, source, "policy set accepted");
        version
    }

    /// Counts and logs a set the source found invalid; nothing changes.
    pub fn reject(&self, source: &str, err: &PolicyError) {
        self.metrics
            .policy_sets
            .with_label_values(&["rejected"])
            .inc();
        let version_in_force = self.current().version;
        *self.rejection.lock().expect("not poisoned") = Some(Rejection {
            source: source.to_owned(),
            error: err.to_string(),
            at: ward_identity::rfc3339(time::OffsetDateTime::now_utc()),
            version_in_force,
        });
        error!(source, error = %err, version_in_force, "policy set rejected; the previous set stays in force");
    }
}

/// Policies from a directory: every `*.yaml`/`*.yml` file directly in it,
/// re-read when inotify reports a change (and every [`RESCAN_INTERVAL`]),
/// and offered whole when any changed. Its `Service` (`v1`) and
/// `EndpointSlice` (`discovery.k8s.io/v1`) documents are the Services the
/// address registry publishes; an invalid one rejects the read as an
/// invalid policy does.
pub struct DirSource {
    dir: PathBuf,
    seen: u64,
    endpoints: Arc<Endpoints>,
}

impl DirSource {
    /// Offers the directory's current contents. An invalid set at start is
    /// an error: the control plane refuses to start rather than run
    /// without the operator's policies.
    pub fn open(
        dir: PathBuf,
        store: &PolicyStore,
        endpoints: Arc<Endpoints>,
    ) -> anyhow::Result<Self> {
        let seen = fingerprint(&dir);
        let texts = read_dir_texts(&dir)
            .map_err(|e| anyhow::anyhow!("policies in {}: {e}", dir.display()))?;
        let source = DirSource {
            dir,
            seen,
            endpoints,
        };
        source
            .offer(store, &texts)
            .map_err(|e| anyhow::anyhow!("policies in {}: {e}", source.dir.display()))?;
        Ok(source)
    }

    /// Offers the directory again if it changed since the last look.
    pub fn poll(&mut self, store: &PolicyStore) {
        let now = fingerprint(&self.dir);
        if now == self.seen {
            return;
        }
        self.seen = now;
        match read_dir_texts(&self.dir) {
            Ok(texts) => {
                let _ = self.offer(store, &texts);
            }
            Err(err) => {
                error!(dir = %self.dir.display(), error = %err, "reading the policy directory failed; the previous set stays in force")
            }
        }
    }

    /// Validates one read whole (policies, Services, EndpointSlices) and
    /// puts it in force, or rejects it and changes nothing.
    fn offer(&self, store: &PolicyStore, texts: &[SourceText]) -> Result<u64, PolicyError> {
        let label = self.dir.display().to_string();
        match load_dir(texts) {
            Ok((set, docs, services)) => {
                let count = services.len();
                self.endpoints.replace_services(services);
                if count > 0 {
                    info!(dir = %label, services = count, "Service addresses from the directory");
                }
                Ok(store.publish(&label, set, docs))
            }
            Err(err) => {
                store.reject(&label, &err);
                Err(err)
            }
        }
    }
}

/// Service address → its Service.
type ServiceMap = BTreeMap<IpAddr, ServiceBody>;

/// A directory read: the policies, and the Service bodies of its Service
/// and EndpointSlice documents. Every error of either is reported.
fn load_dir(texts: &[SourceText]) -> Result<(PolicySet, Vec<PolicyDoc>, ServiceMap), PolicyError> {
    let (policy_texts, services) = split_services(texts);
    match (load_texts(&policy_texts), services) {
        (Ok((set, docs)), Ok(services)) => Ok((set, docs, services)),
        (Err(PolicyError::Invalid(mut errors)), Err(more)) => {
            errors.extend(more);
            Err(PolicyError::Invalid(errors))
        }
        (Err(err), _) => Err(err),
        (Ok(_), Err(errors)) => Err(PolicyError::Invalid(errors)),
    }
}

/// Which Kubernetes object a document is, when it is one the directory
/// source reads besides policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ServiceKind {
    Service,
    EndpointSlice,
}

impl ServiceKind {
    fn of(document: &str) -> Option<ServiceKind> {
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(document).ok()?;
        let api_version = value.get("apiVersion")?.as_str()?;
        match (api_version, value.get("kind")?.as_str()?) {
            ("v1", "Service") => Some(ServiceKind::Service),
            ("discovery.k8s.io/v1", "EndpointSlice") => Some(ServiceKind::EndpointSlice),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            ServiceKind::Service => "Service",
            ServiceKind::EndpointSlice => "EndpointSlice",
        }
    }
}

/// Takes the Service and EndpointSlice documents out of `texts`: the
/// texts for the policy parser (those documents blanked, so every other
/// document keeps its index and line numbers) and the Service bodies they
/// make, or every error found.
fn split_services(texts: &[SourceText]) -> (Vec<SourceText>, Result<ServiceMap, Vec<ConfigError>>) {
    let mut catalog = ServiceCatalog::default();
    let mut errors = Vec::new();
    // (kind, namespace, name) → where it was first defined.
    let mut seen: HashMap<(ServiceKind, String, String), (String, usize)> = HashMap::new();
    let mut policy_texts = Vec::with_capacity(texts.len());
    for text in texts {
        let mut kept: Vec<String> = Vec::new();
        for segment in segments(&text.text) {
            let kind = segment.body().and_then(|b| ServiceKind::of(&b));
            let Some(kind) = kind else {
                kept.extend(segment.lines.iter().map(|l| (*l).to_owned()));
                continue;
            };
            // Blanked: the separator stays, the content goes (a document
            // before the first separator stays an empty one: `~`).
            kept.extend(segment.lines.iter().enumerate().map(|(i, _)| {
                match (i, segment.separated) {
                    (0, true) => "---".to_owned(),
                    (0, false) => "~".to_owned(),
                    _ => String::new(),
                }
            }));
            let body = segment.body().unwrap_or_default();
            let located =
                |reason: String, line: Option<usize>, column: Option<usize>| ConfigError {
                    file: text.label.clone(),
                    document: Some(segment.document),
                    field: None,
                    line: line.or(Some(segment.first_line + usize::from(segment.separated))),
                    column,
                    reason,
                };
            let result = match kind {
                ServiceKind::Service => serde_yaml_ng::from_str::<Service>(&body)
                    .map(|s| (s.metadata.clone(), Some(s), None)),
                ServiceKind::EndpointSlice => serde_yaml_ng::from_str::<EndpointSlice>(&body)
                    .map(|s| (s.metadata.clone(), None, Some(s))),
            };
            let (meta, service, slice) = match result {
                Ok(parsed) => parsed,
                Err(err) => {
                    let location = err.location();
                    let mut reason = err.to_string();
                    if let Some(l) = &location
                        && let Some(stripped) = reason.strip_suffix(&format!(
                            " at line {} column {}",
                            l.line(),
                            l.column()
                        ))
                    {
                        reason = stripped.to_owned();
                    }
                    errors.push(located(
                        format!("{}: {reason}", kind.name()),
                        location.as_ref().map(|l| segment.first_line + l.line() - 1),
                        location.as_ref().map(|l| l.column()),
                    ));
                    continue;
                }
            };
            let namespace = meta
                .namespace
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "default".to_owned());
            let name = meta.name.clone().unwrap_or_default();
            let what = format!("{} {namespace}/{name}", kind.name());
            if !name.is_empty() {
                let here = (text.label.clone(), segment.document);
                if let Some((file, document)) = seen.get(&(kind, namespace.clone(), name.clone())) {
                    errors.push(located(
                        format!("duplicate {what}: already defined in {file} document {document}"),
                        None,
                        None,
                    ));
                    continue;
                }
                seen.insert((kind, namespace, name), here);
            }
            let added = match (service, slice) {
                (Some(service), _) => catalog.add_service(&service),
                (_, Some(slice)) => catalog.add_slice(&slice),
                _ => Ok(()),
            };
            if let Err(reason) = added {
                errors.push(located(format!("{what}: {reason}"), None, None));
            }
        }
        let mut policy_text = kept.join("\n");
        if text.text.ends_with('\n') {
            policy_text.push('\n');
        }
        policy_texts.push(SourceText {
            label: text.label.clone(),
            text: policy_text,
        });
    }
    let services = match errors.is_empty() {
        true => Ok(catalog.snapshot()),
        false => Err(errors),
    };
    (policy_texts, services)
}

/// One YAML document of a file, as lines: from its `---` separator (when
/// it has one) to the next.
struct Segment<'a> {
    lines: Vec<&'a str>,
    /// Starts with a `---` line.
    separated: bool,
    /// Its index among the file's documents (as the YAML parser counts
    /// them: text before the first `---` is a document only when it holds
    /// something).
    document: usize,
    /// 1-based line of the file where it starts (its separator, if any):
    /// line 1 of [`Segment::body`].
    first_line: usize,
}

impl Segment<'_> {
    /// The content to parse (`None` when there is none): the lines after
    /// the separator, and what follows `--- ` on the separator itself.
    fn body(&self) -> Option<String> {
        let mut body = String::new();
        for (i, line) in self.lines.iter().enumerate() {
            if i == 0 && self.separated {
                body.push_str(line.strip_prefix("---").unwrap_or_default().trim_start());
            } else {
                body.push_str(line);
            }
            body.push('\n');
        }
        body.lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .then_some(body)
    }
}

fn segments(text: &str) -> Vec<Segment<'_>> {
    let mut segments: Vec<Segment> = vec![Segment {
        lines: Vec::new(),
        separated: false,
        document: 0,
        first_line: 1,
    }];
    for (i, line) in text.lines().enumerate() {
        if line == "---" || line.starts_with("--- ") {
            segments.push(Segment {
                lines: Vec::new(),
                separated: true,
                document: 0,
                first_line: i + 1,
            });
        }
        segments.last_mut().expect("never empty").lines.push(line);
    }
    // A leading segment without content is not a document.
    let skip_first = segments[0].body().is_none();
    for (index, segment) in segments.iter_mut().enumerate() {
        segment.document = index - usize::from(skip_first && index > 0);
    }
    segments
}

impl PolicySource for DirSource {
    async fn run(mut self, store: Arc<PolicyStore>, mut shutdown: watch::Receiver<bool>) {
        let mut changes = DirWatch::new(&self.dir, "policy directory", RESCAN_INTERVAL);
        while changes.next(&mut shutdown).await {
            self.poll(&store);
        }
    }
}

fn read_dir_texts(dir: &Path) -> std::io::Result<Vec<SourceText>> {
    if !dir.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "not a directory",
        ));
    }
    yaml_files(dir)
        .into_iter()
        .map(|file| {
            Ok(SourceText {
                text: std::fs::read_to_string(&file)?,
                label: file.display().to_string(),
            })
        })
        .collect()
}

/// A fingerprint of the directory's YAML files: names and contents.
fn fingerprint(dir: &Path) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for file in yaml_files(dir) {
        file.hash(&mut hasher);
        std::fs::read(&file).unwrap_or_default().hash(&mut hasher);
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(label: &str, text: &str) -> SourceText {
        SourceText {
            label: label.into(),
            text: text.into(),
        }
    }

    const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{name: http, port: 80, targetPort: http}]\n";
    const SLICE: &str = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: shop\n  labels: {kubernetes.io/service-name: web}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [198.18.0.10]}]\n";
    const POLICY: &str = "apiVersion: security.ward.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow, namespace: shop}\nspec: {action: ALLOW, rules: [{}]}\n";

    #[test]
    fn services_and_slices_are_taken_out_of_a_policy_file() {
        let file = format!("# mixed\n---\n{SERVICE}---\n{POLICY}---\n{SLICE}");
        let (set, docs, services) = load_dir(&[text("mixed.yaml", &file)]).unwrap();
        assert_eq!(set.policies().count(), 1);
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].name, "allow");
        let body = &services[&"10.96.0.10".parse::<IpAddr>().unwrap()];
        assert_eq!(body.service, "shop/web");
        assert_eq!(body.ports[&80].endpoints[0].address, "198.18.0.10:8080");
    }

    #[test]
    fn policy_errors_keep_their_document_and_line_after_a_service() {
        let file = format!(
            "{SERVICE}---\napiVersion: security.ward.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: bad, namespace: shop}}\nspec: {{action: MAYBE}}\n"
        );
        let err = load_dir(&[text("mixed.yaml", &file)]).unwrap_err();
        let errors = err.errors();
        assert_eq!(errors.len(), 1, "{err}");
        assert_eq!(errors[0].document, Some(1), "{err}");
        assert_eq!(errors[0].line, Some(11), "{err}");
    }

    #[test]
    fn a_malformed_service_names_its_file_document_and_line() {
        let bad = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  ports: [{port: eighty}]\n";
        let file = format!("{POLICY}---\n{bad}");
        let err = load_dir(&[text("svc.yaml", &file)]).unwrap_err();
        let errors = err.errors();
        assert_eq!(errors.len(), 1, "{err}");
        assert_eq!(errors[0].file, "svc.yaml");
        assert_eq!(errors[0].document, Some(1));
        assert_eq!(errors[0].line, Some(10), "{err}");
        assert!(errors[0].reason.starts_with("Service: "), "{err}");

        // Well-formed YAML, invalid value; and a duplicate.
        let bad_ip = SERVICE.replace("10.96.0.10", "10.96.0.x");
        let err = load_dir(&[
            text("a.yaml", &bad_ip),
            text("b.yaml", SLICE),
            text("c.yaml", SLICE),
        ])
        .unwrap_err();
        let message = err.to_string();
        assert!(
            message
                .contains("a.yaml:1: document 0: Service shop/web: spec.clusterIP: \"10.96.0.x\""),
            "{message}"
        );
        assert!(
            message.contains("c.yaml:1: document 0: duplicate EndpointSlice shop/web-1: already defined in b.yaml document 0"),
            "{message}"
        );
    }

    #[test]
    fn documents_split_at_separator_lines() {
        let text = "# header comment\n---\nkind: A\n---\n\n--- # trailing\nkind: B\nx: '---'\n";
        let docs = split_documents(text);
        assert_eq!(
            docs,
            vec!["kind: A\n".to_owned(), "kind: B\nx: '---'\n".to_owned()]
        );
    }
}
