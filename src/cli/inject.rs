//! `ward inject`: the webhook's injection, offline, on manifests.
//!
//! Reads multi-document YAML (a file or `-`), injects Pods and the pod
//! templates of Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs and
//! CronJobs (also inside `List` items) by the same rules as the webhook, and
//! prints every document (others unchanged) as multi-document YAML. A
//! Namespace in the input labelled `ward.io/inject=enabled` counts as such
//! for the objects in it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde_json::Value;
use ward_control_plane::inject::{self, InjectConfig, NAMESPACE_ENABLED, NAMESPACE_LABEL};

#[derive(Debug, Args)]
pub struct InjectArgs {
    /// Manifest file, or `-` for standard input.
    #[arg(short = 'f', long = "filename")]
    pub file: String,
    #[arg(long, env = "WARD_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Image holding ward-proxy (default ghcr.io/ward-mesh/ward:<version>).
    #[arg(long)]
    pub image: Option<String>,
    /// Control plane address the sidecars dial.
    #[arg(long, default_value = inject::CONTROL_PLANE_ADDRESS)]
    pub control_plane: String,
    /// Native sidecars (Kubernetes ≥ 1.29); pods may override by annotation.
    #[arg(long, default_value = "true", action = clap::ArgAction::Set)]
    pub native_sidecar: bool,
    /// Treat every namespace as labelled ward.io/inject=enabled.
    #[arg(long)]
    pub namespace_injection_enabled: bool,
    /// Namespace of objects that name none.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
}

pub fn run(args: InjectArgs) -> anyhow::Result<ExitCode> {
    let input = if args.file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        s
    } else {
        std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file))?
    };
    let mut config = InjectConfig::new(&args.trust_domain);
    if let Some(image) = &args.image {
        config.image = image.clone();
    }
    config.control_plane = args.control_plane.clone();
    config.native_sidecars = args.native_sidecar;
    let output = inject_manifests(
        &input,
        &config,
        &args.namespace,
        args.namespace_injection_enabled,
    )?;
    print!("{output}");
    Ok(ExitCode::SUCCESS)
}

/// Injects every document of `input`; the result as multi-document YAML.
pub fn inject_manifests(
    input: &str,
    config: &InjectConfig,
    default_namespace: &str,
    all_enabled: bool,
) -> anyhow::Result<String> {
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(input).enumerate() {
        let value = Value::deserialize(doc).with_context(|| format!("document {}", i + 1))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    let mut enabled: BTreeSet<String> = BTreeSet::new();
    for doc in &docs {
        collect_enabled_namespaces(doc, &mut enabled);
    }
    let ctx = Injector {
        config,
        default_namespace,
        all_enabled,
        enabled,
    };
    let mut out = String::new();
    for mut doc in docs {
        ctx.inject(&mut doc)?;
        if !out.is_empty() {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml_ng::to_string(&doc)?);
    }
    Ok(out)
}

fn collect_enabled_namespaces(doc: &Value, enabled: &mut BTreeSet<String>) {
    match doc.get("kind").and_then(Value::as_str) {
        Some("List") => doc
            .get("items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .for_each(|item| collect_enabled_namespaces(item, enabled)),
        Some("Namespace") => {
            let meta = &doc["metadata"];
            if meta["labels"][NAMESPACE_LABEL] == NAMESPACE_ENABLED
                && let Some(name) = meta["name"].as_str()
            {
                enabled.insert(name.to_owned());
            }
        }
        _ => {}
    }
}

struct Injector<'a> {
    config: &'a InjectConfig,
    default_namespace: &'a str,
    all_enabled: bool,
    enabled: BTreeSet<String>,
}

impl Injector<'_> {
    fn inject(&self, doc: &mut Value) -> anyhow::Result<()> {
        let kind = doc
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let name = doc["metadata"]["name"].as_str().unwrap_or("").to_owned();
        let namespace = doc["metadata"]["namespace"]
            .as_str()
            .unwrap_or(self.default_namespace)
            .to_owned();
        let template = match kind.as_str() {
            "List" => {
                if let Some(items) = doc.get_mut("items").and_then(Value::as_array_mut) {
                    for item in items {
                        self.inject(item)?;
                    }
                }
                return Ok(());
            }
            "Pod" => Some(doc),
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
                doc.pointer_mut("/spec/template")
            }
            "CronJob" => doc.pointer_mut("/spec/jobTemplate/spec/template"),
            _ => None,
        };
        let Some(template) = template else {
            return Ok(());
        };
        let Some(object) = template.as_object_mut() else {
            bail!("{kind} {namespace}/{name}: the pod template is not an object");
        };
        let mut meta: ObjectMeta =
            serde_json::from_value(object.get("metadata").cloned().unwrap_or(Value::Null))
                .unwrap_or_default();
        let mut spec: PodSpec =
            serde_json::from_value(object.get("spec").cloned().unwrap_or(Value::Null))
                .with_context(|| format!("{kind} {namespace}/{name}: pod spec"))?;
        let labels = if self.all_enabled || self.enabled.contains(&namespace) {
            BTreeMap::from([(NAMESPACE_LABEL.to_owned(), NAMESPACE_ENABLED.to_owned())])
        } else {
            BTreeMap::new()
        };
        let skipped =
            inject::inject_pod_spec(&mut meta, &mut spec, &namespace, &labels, self.config)
                .with_context(|| format!("{kind} {namespace}/{name}"))?;
        if skipped.is_none() {
            object.insert("metadata".into(), serde_json::to_value(&meta)?);
            object.insert("spec".into(), serde_json::to_value(&spec)?);
        }
        Ok(())
    }
}
