//! The Helm chart `deploy/helm/ward` (issue #19), with the pinned `helm`
//! and `kubectl` that `tests/cluster/build-k8s.sh` builds (`$WARD_K8S_BIN`,
//! else `PATH`): its default render is `deploy/base` (and, with the two
//! monitors enabled, `deploy/overlays/prometheus-operator`), `helm lint
//! --strict` passes, every rendered manifest (CRDs included) validates
//! against the Kubernetes schemas, and each non-default value of
//! `deploy/helm/ward/ci/custom-values.yaml` shows up where it should.
//!
//! What the comparison with `deploy/base` leaves out, and only that:
//! - the Namespace `ward-system`: a chart does not create its own release
//!   namespace (Helm stores the release in it before creating anything);
//!   docs/operations.md creates it with `kubectl` instead, and
//!   `the_documented_namespace_is_deploy_base_s` checks that command sets
//!   exactly deploy/base's labels;
//! - Helm's four standard labels on every templated object's
//!   `metadata.labels`: `helm.sh/chart`, `app.kubernetes.io/managed-by`,
//!   `app.kubernetes.io/instance`, `app.kubernetes.io/version` (their
//!   presence and values are asserted before they are removed);
//! - the Deployment's pod template annotation
//!   `checksum/ward-control-plane-env` (the hash of the settings, so that
//!   `helm upgrade` restarts the pods when they change; asserted present).
//!
//! Everything else (every other label, annotation, field and value) must
//! be equal after both are parsed as YAML.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

const RELEASE: &str = "ward";
const NAMESPACE: &str = "ward-system";

/// Labels Helm charts put on every object, removed before comparing.
const HELM_LABELS: [&str; 4] = [
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
];
const CHECKSUM_ANNOTATION: &str = "checksum/ward-control-plane-env";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    repo().join("deploy/helm/ward")
}

fn custom_values() -> PathBuf {
    chart().join("ci/custom-values.yaml")
}

/// `$WARD_K8S_BIN/<tool>`, else `<tool>` on `PATH`; `None` after a skip
/// (a failure under `WARD_TEST_STRICT=1`) when neither exists.
fn tool(name: &str) -> Option<PathBuf> {
    let pinned = std::env::var_os("WARD_K8S_BIN")
        .map(|dir| PathBuf::from(dir).join(name))
        .filter(|p| p.is_file());
    let found = pinned.or_else(|| ward_testkit::which(name));
    ward_testkit::prerequisite(
        found.is_some(),
        &format!(
            "{name} is neither in $WARD_K8S_BIN nor on PATH \
             (tests/cluster/build-k8s.sh builds it; export WARD_K8S_BIN=$(tests/cluster/build-k8s.sh | tail -1))"
        ),
    );
    found
}

/// `helm`, with its configuration, cache and data in a temporary directory
/// (nothing read from or written to the user's).
struct Helm {
    exe: PathBuf,
    home: tempfile::TempDir,
}

impl Helm {
    fn find() -> Option<Helm> {
        Some(Helm {
            exe: tool("helm")?,
            home: tempfile::tempdir().unwrap(),
        })
    }

    fn run(&self, args: &[&str]) -> Output {
        let home = self.home.path();
        Command::new(&self.exe)
            .args(args)
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_DATA_HOME", home.join("data"))
            .env_remove("HELM_NAMESPACE")
            .env_remove("KUBECONFIG")
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.exe.display()))
    }

    /// `helm template ward deploy/helm/ward --namespace NS --include-crds`
    /// plus `extra`: its stdout, or its stderr as the error.
    fn template_in(&self, namespace: &str, extra: &[&str]) -> Result<String, String> {
        let chart = chart();
        let mut args = vec![
            "template",
            RELEASE,
            chart.to_str().unwrap(),
            "--namespace",
            namespace,
            "--include-crds",
        ];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        if out.status.success() {
            Ok(String::from_utf8(out.stdout).unwrap())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn template(&self, extra: &[&str]) -> String {
        self.template_in(NAMESPACE, extra)
            .unwrap_or_else(|e| panic!("helm template {extra:?}: {e}"))
    }
}

/// `kubectl kustomize deploy/<dir>`.
fn kustomize(dir: &str) -> Option<String> {
    let kubectl = tool("kubectl")?;
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(repo().join("deploy").join(dir))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/{dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap())
}

/// The YAML documents of `text`, empty ones left out.
fn documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| {
            <Value as serde::Deserialize>::deserialize(doc)
                .unwrap_or_else(|e| panic!("not YAML: {e}\n{text}"))
        })
        .filter(|doc| !doc.is_null())
        .collect()
}

/// (apiVersion, kind, namespace, name): what identifies an object.
type Key = (String, String, String, String);

fn key(object: &Value) -> Key {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (
        s(&object["apiVersion"]),
        s(&object["kind"]),
        s(&object["metadata"]["namespace"]),
        s(&object["metadata"]["name"]),
    )
}

fn show(k: &Key) -> String {
    let ns = if k.2.is_empty() {
        String::new()
    } else {
        format!("{}/", k.2)
    };
    format!("{} {} {ns}{}", k.0, k.1, k.3)
}

fn by_key(objects: Vec<Value>) -> BTreeMap<Key, Value> {
    let mut map = BTreeMap::new();
    for object in objects {
        let k = key(&object);
        assert!(
            map.insert(k.clone(), object).is_none(),
            "{} twice",
            show(&k)
        );
    }
    map
}

/// The Helm render as comparable objects: the normalisation of this file's
/// header, after asserting that what it removes is there.
fn normalise_helm(objects: Vec<Value>) -> BTreeMap<Key, Value> {
    let mut out = BTreeMap::new();
    for (k, mut object) in by_key(objects) {
        // The CRDs come from crds/ as they are: no templating, no labels.
        if k.1 != "CustomResourceDefinition" {
            let labels = object["metadata"]["labels"]
                .as_object_mut()
                .unwrap_or_else(|| panic!("{}: no labels", show(&k)));
            for label in HELM_LABELS {
                assert!(
                    labels.remove(label).is_some(),
                    "{}: no {label} label",
                    show(&k)
                );
            }
        }
        if k.1 == "Deployment" {
            let annotations = object["spec"]["template"]["metadata"]["annotations"]
                .as_object_mut()
                .unwrap();
            assert!(
                annotations.remove(CHECKSUM_ANNOTATION).is_some(),
                "{}: no {CHECKSUM_ANNOTATION}",
                show(&k)
            );
        }
        out.insert(k, object);
    }
    out
}

/// The first place where `a` and `b` differ, as a path with both values.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                let p = format!("{path}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(v), Some(w)) => first_difference(v, w, &p),
                    (v, w) => Some(format!("{p}: helm {v:?}, expected {w:?}")),
                }
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, &format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some(format!("{path}: helm {a}, expected {b}")),
    }
}

/// Asserts the two sets of objects are the same objects with the same
/// content; a difference names the first differing object and field and
/// prints both objects.
fn assert_same(helm: &BTreeMap<Key, Value>, expected: &BTreeMap<Key, Value>, what: &str) {
    let only_helm: Vec<String> = helm
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .map(show)
        .collect();
    let only_expected: Vec<String> = expected
        .keys()
        .filter(|k| !helm.contains_key(*k))
        .map(show)
        .collect();
    assert!(
        only_helm.is_empty() && only_expected.is_empty(),
        "{what}: not the same objects.\nonly in the Helm render: {only_helm:#?}\nonly in {what}: {only_expected:#?}"
    );
    for (k, object) in helm {
        if let Some(diff) = first_difference(object, &expected[k], "") {
            panic!(
                "{what}: {} differs at {diff}\n---- Helm render (normalised):\n{}\n---- {what}:\n{}",
                show(k),
                serde_yaml_ng::to_string(object).unwrap(),
                serde_yaml_ng::to_string(&expected[k]).unwrap(),
            );
        }
    }
}

/// deploy/base's objects, the Namespace apart (see the header).
fn base_without_namespace(rendered: &str) -> (BTreeMap<Key, Value>, Value) {
    let mut objects = by_key(documents(rendered));
    let namespace_key: Key = (
        "v1".into(),
        "Namespace".into(),
        String::new(),
        NAMESPACE.into(),
    );
    let namespace = objects
        .remove(&namespace_key)
        .expect("deploy/base has the Namespace");
    (objects, namespace)
}

#[test]
fn the_default_render_is_deploy_base() {
    let Some(helm) = Helm::find() else { return };
    let Some(base) = kustomize("base") else {
        return;
    };
    let rendered = helm.template(&[]);
    let objects = documents(&rendered);
    assert!(
        objects.iter().all(|o| o["kind"] != "Namespace"),
        "the chart must not create its release namespace"
    );
    let (expected, _) = base_without_namespace(&base);
    // Not vacuous: everything deploy/base has.
    assert_eq!(expected.len(), 16, "{:#?}", expected.keys());
    assert_same(&normalise_helm(objects), &expected, "deploy/base");
}

#[test]
fn the_monitors_render_the_prometheus_operator_overlay() {
    let Some(helm) = Helm::find() else { return };
    let Some(overlay) = kustomize("overlays/prometheus-operator") else {
        return;
    };
    let rendered = helm.template(&[
        "--set",
        "monitoring.podMonitor.enabled=true",
        "--set",
        "monitoring.serviceMonitor.enabled=true",
    ]);
    let (expected, _) = base_without_namespace(&overlay);
    assert!(
        expected.keys().any(|k| k.1 == "PodMonitor")
            && expected.keys().any(|k| k.1 == "ServiceMonitor"),
        "{:#?}",
        expected.keys()
    );
    assert_same(
        &normalise_helm(documents(&rendered)),
        &expected,
        "deploy/overlays/prometheus-operator",
    );
}

#[test]
fn the_prometheus_rule_is_deploy_observability_s() {
    let Some(helm) = Helm::find() else { return };
    let rendered = helm.template(&["--set", "monitoring.prometheusRule.enabled=true"]);
    let rules: Vec<Value> = documents(&rendered)
        .into_iter()
        .filter(|o| o["kind"] == "PrometheusRule")
        .collect();
    let expected =
        std::fs::read_to_string(repo().join("deploy/observability/prometheus-rule.yaml")).unwrap();
    assert_same(
        &normalise_helm(rules),
        &by_key(documents(&expected)),
        "deploy/observability/prometheus-rule.yaml",
    );
    // Off by default.
    assert!(!helm.template(&[]).contains("kind: PrometheusRule"));
}

/// The CRDs in crds/ are deploy/base's files, byte for byte (Helm installs
/// crds/ as they are, so there is nothing to render).
#[test]
fn the_chart_crds_are_deploy_base_s() {
    let mut names: Vec<String> = std::fs::read_dir(chart().join("crds"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "authorizationpolicies.yaml",
            "peerauthentications.yaml",
            "quarantines.yaml"
        ]
    );
    for name in names {
        let chart_crd = std::fs::read_to_string(chart().join("crds").join(&name)).unwrap();
        let base_crd =
            std::fs::read_to_string(repo().join("deploy/base/crds").join(&name)).unwrap();
        assert!(
            chart_crd == base_crd,
            "crds/{name} differs from deploy/base/crds/{name}"
        );
    }
}

/// The chart's appVersion is the workspace's version, so its default image
/// is the one this source builds (and the one the control plane injects by
/// default, `ghcr.io/ward-mesh/ward:<its version>`).
#[test]
fn the_chart_app_version_is_the_workspace_version() {
    let cargo = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let workspace = cargo
        .split("[workspace.package]")
        .nth(1)
        .expect("[workspace.package]");
    let version = workspace
        .lines()
        .find_map(|l| l.strip_prefix("version = "))
        .expect("a workspace version")
        .trim_matches('"');
    let chart_yaml = std::fs::read_to_string(chart().join("Chart.yaml")).unwrap();
    let meta = &documents(&chart_yaml)[0];
    assert_eq!(meta["appVersion"], version);
}

/// docs/operations.md creates the namespace with deploy/base's labels.
#[test]
fn the_documented_namespace_is_deploy_base_s() {
    let docs = std::fs::read_to_string(repo().join("docs/operations.md")).unwrap();
    let command = docs
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("kubectl label namespace ward-system "))
        .expect("docs/operations.md labels the namespace");
    let documented: BTreeMap<String, String> = command
        .split_whitespace()
        .filter_map(|word| word.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let base = std::fs::read_to_string(repo().join("deploy/base/namespace.yaml")).unwrap();
    let namespace = &documents(&base)[0];
    let expected: BTreeMap<String, String> =
        serde_json::from_value(namespace["metadata"]["labels"].clone()).unwrap();
    assert_eq!(documented, expected, "{command}");
    assert!(
        docs.contains("kubectl create namespace ward-system"),
        "docs/operations.md creates the namespace"
    );
}

#[test]
fn helm_lint_strict_passes_with_the_default_and_the_custom_values() {
    let Some(helm) = Helm::find() else { return };
    let chart = chart();
    let values = custom_values();
    for extra in [vec![], vec!["--values", values.to_str().unwrap()]] {
        let mut args = vec![
            "lint",
            "--strict",
            "--namespace",
            NAMESPACE,
            chart.to_str().unwrap(),
        ];
        args.extend_from_slice(&extra);
        let out = helm.run(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "helm {args:?}:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("1 chart(s) linted, 0 chart(s) failed"),
            "{stdout}"
        );
        assert!(
            !stdout.contains("[WARNING]") && !stdout.contains("[ERROR]"),
            "{stdout}"
        );
    }
}

#[test]
fn every_rendered_manifest_validates_against_the_kubernetes_schemas() {
    ward_testkit::require_tool!(ward_testkit::kubernetes::TOOL);
    let Some(helm) = Helm::find() else { return };
    let values = custom_values();
    let dir = tempfile::tempdir().unwrap();
    for (name, extra) in [
        ("default", vec![]),
        ("custom", vec!["--values", values.to_str().unwrap()]),
    ] {
        let rendered = helm.template(&extra);
        let objects = documents(&rendered);
        assert!(
            objects
                .iter()
                .any(|o| o["kind"] == "CustomResourceDefinition"),
            "{name}: the CRDs are part of what is validated"
        );
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, &rendered).unwrap();
        // The Prometheus Operator's kinds have no schema there (as in
        // tests/k8s_schema.rs): every other document must pass.
        let report =
            ward_testkit::kubernetes::validate_files(&[file], &["monitoring.coreos.com/v1"])
                .unwrap_or_else(|output| panic!("{name} render:\n{output}"));
        let custom = objects
            .iter()
            .filter(|o| o["apiVersion"] == "monitoring.coreos.com/v1")
            .count();
        assert_eq!(
            report.passed(),
            objects.len() - custom,
            "{name}: every other object validated:\n{}",
            report.text()
        );
    }
}

/// The object of `kind` named `name` in `objects`.
fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn base64_decode(text: &str) -> String {
    let mut child = Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "base64 -d {text}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn each_custom_value_lands_where_it_should() {
    let Some(helm) = Helm::find() else { return };
    let values_file = custom_values();
    let values: Value = documents(&std::fs::read_to_string(&values_file).unwrap())[0].clone();
    let objects = documents(&helm.template(&["--values", values_file.to_str().unwrap()]));
    let image = "registry.example/mesh/ward:9.9.9-rc1";

    let deployment = find(&objects, "Deployment", "ward-control-plane");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(deployment["spec"]["replicas"], 3);
    // Every container of every pod template in the render runs the image.
    let mut containers = 0;
    for object in &objects {
        for list in ["containers", "initContainers"] {
            for container in object["spec"]["template"]["spec"][list]
                .as_array()
                .into_iter()
                .flatten()
            {
                assert_eq!(container["image"], image, "{}", show(&key(object)));
                assert_eq!(container["imagePullPolicy"], "Always");
                containers += 1;
            }
        }
    }
    assert_eq!(containers, 1, "the control plane's container");
    let container = &pod["containers"][0];
    assert_eq!(container["resources"], values["controlPlane"]["resources"]);
    assert_eq!(pod["imagePullSecrets"], json!([{"name": "regcred"}]));
    assert_eq!(pod["nodeSelector"], json!({"kubernetes.io/os": "linux"}));
    assert_eq!(pod["tolerations"], values["controlPlane"]["tolerations"]);
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["example.com/team"], "mesh");
    assert_eq!(annotations["ward.io/inject"], "false");
    assert_eq!(
        find(&objects, "PodDisruptionBudget", "ward-control-plane")["spec"]["minAvailable"],
        2
    );

    // The existing CA Secret, its keys mapped to the file names the data
    // directory expects.
    let ca = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "ca")
        .expect("the ca volume");
    assert_eq!(
        ca["secret"],
        json!({
            "secretName": "corp-ward-intermediate",
            "defaultMode": ca["secret"]["defaultMode"].clone(),
            "items": [{"key": "tls.crt", "path": "ca.pem"}, {"key": "tls.key", "path": "ca-key.pem"}],
        })
    );

    // The settings, which the injected sidecars follow too.
    let env = &find(&objects, "ConfigMap", "ward-control-plane-env")["data"];
    let expected_env = json!({
        "WARD_TRUST_DOMAIN": "corp.example",
        "WARD_KUBERNETES": "true",
        "WARD_K8S_TOKEN_REVIEW": "false",
        "WARD_K8S_ISSUER": "https://kubernetes.default.svc",
        "WARD_K8S_JWKS_FILE": "/etc/ward/jwks/jwks.json",
        "WARD_K8S_AUDIENCE": "ward-corp",
        "WARD_LOG_FORMAT": "text",
        "WARD_WEBHOOK_LISTEN": "0.0.0.0:15017",
        "WARD_PROXY_IMAGE": image,
        "WARD_PROXY_IMAGE_PULL_POLICY": "IfNotPresent",
        "WARD_NATIVE_SIDECARS": "false",
        "WARD_PROXY_LOG_LEVEL": "debug",
        "WARD_LEASE_DURATION": "20s",
    });
    assert_eq!(*env, expected_env);
    // The JWKS file the settings name is mounted from its ConfigMap.
    let mounts = container["volumeMounts"].as_array().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m["name"] == "jwks" && m["mountPath"] == "/etc/ward/jwks"),
        "{mounts:?}"
    );
    assert!(
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| { v["name"] == "jwks" && v["configMap"]["name"] == "ward-k8s-jwks" })
    );

    // The CA bundle: both webhook entries and the ConfigMaps.
    let bundle = values["ca"]["bundle"].as_str().unwrap();
    let webhook = find(&objects, "MutatingWebhookConfiguration", "ward-injector");
    for entry in webhook["webhooks"].as_array().unwrap() {
        let ca_bundle = entry["clientConfig"]["caBundle"]
            .as_str()
            .expect("caBundle");
        assert_eq!(base64_decode(ca_bundle), bundle);
        assert_eq!(entry["timeoutSeconds"], 10);
    }
    for ns in [NAMESPACE, "shop"] {
        let cm = objects
            .iter()
            .find(|o| {
                o["kind"] == "ConfigMap"
                    && o["metadata"]["name"] == "ward-ca-bundle"
                    && o["metadata"]["namespace"] == ns
            })
            .unwrap_or_else(|| panic!("no ward-ca-bundle in {ns}"));
        assert_eq!(cm["data"]["bundle.pem"], bundle);
    }

    let webhook_policy = find(&objects, "NetworkPolicy", "ward-control-plane-webhook");
    assert_eq!(
        webhook_policy["spec"]["ingress"],
        json!([{"from": [{"ipBlock": {"cidr": "10.0.0.0/24"}}], "ports": [{"protocol": "TCP", "port": 15017}]}])
    );
    for kind in ["PodMonitor", "ServiceMonitor", "PrometheusRule"] {
        let monitor = objects
            .iter()
            .find(|o| o["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"));
        assert_eq!(
            monitor["metadata"]["labels"]["release"], "prometheus",
            "{kind}"
        );
    }
    assert_eq!(
        find(&objects, "PodMonitor", "ward-proxies")["spec"]["podMetricsEndpoints"][0]["interval"],
        "15s"
    );
    // The Helm labels name this release and chart.
    assert_eq!(
        deployment["metadata"]["labels"]["app.kubernetes.io/instance"],
        RELEASE
    );
    assert_eq!(
        deployment["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "Helm"
    );
}

/// Settings that cannot work are refused at render time, with the reason.
#[test]
fn impossible_values_are_refused_with_the_reason() {
    let Some(helm) = Helm::find() else { return };
    let err = helm
        .template_in("mesh", &[])
        .expect_err("another namespace is refused");
    assert!(
        err.contains("Ward installs into namespace ward-system"),
        "{err}"
    );
    for (set, reason) in [
        (
            "controlPlane.extraEnv.WARD_TRUST_DOMAIN=x",
            "controlPlane.extraEnv.WARD_TRUST_DOMAIN: set by the chart",
        ),
        ("attestation.method=jwks", "needs attestation.jwks.issuer"),
        ("attestation.method=magic", "/attestation/method"),
        ("ca.bundle=hello", "ca.bundle: not PEM certificates"),
        (
            "networkPolicy.apiFrom=null",
            "networkPolicy.apiFrom is empty",
        ),
        // values.schema.json: a misspelt key, a value out of its set.
        ("controlPlane.replica=3", "replica"),
        ("injection.proxyLogLevel=loud", "proxyLogLevel"),
    ] {
        let err = helm.template_in(NAMESPACE, &["--set", set]).expect_err(set);
        assert!(err.contains(reason), "--set {set}: {err}");
    }
}
