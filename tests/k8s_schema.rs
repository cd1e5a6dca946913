//! Schema checks of everything Ward hands to a Kubernetes API server, against
//! recorded schemas (no API server here): every manifest in deploy/, the
//! kustomize renders, and `ward inject` on the sample app, with
//! kubernetes-validate (Kubernetes 1.32 OpenAPI, strict: unknown fields are
//! errors); and the sample/invalid policies against the CRDs' own
//! openAPIV3Schema with Python jsonschema (CEL rules are not evaluated).
//! The pods the injector's unit tests, the webhook test and `tests/inject_cli.rs`
//! produce are checked where they are made, with the same runner
//! (`ward_testkit::kubernetes`).

#[path = "support/bins.rs"]
mod bins;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// The stdout of `output`; panics with its stderr unless it succeeded.
fn succeeded(output: Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `ward inject -f deploy/examples/shop/app.yaml` plus `flags`: its stdout.
fn inject_sample_app(flags: &[&str]) -> String {
    let app = deploy().join("examples/shop/app.yaml");
    let args = [&["inject"], flags, &["-f", app.to_str().unwrap()]].concat();
    succeeded(bins::ward(&args))
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
    out.sort();
}

/// Runs kubernetes-validate (the runner the webhook, injector and `ward
/// inject` tests check their pods with); fails on any ERROR and on any
/// document that is neither validated nor a known custom resource.
fn validate(files: &[PathBuf]) {
    let custom = ["security.ward.io/v1", "monitoring.coreos.com/v1"];
    if let Err(output) = ward_testkit::kubernetes::validate_files(files, &custom) {
        panic!("{output}");
    }
}

#[test]
fn deploy_manifests_validate() {
    ward_testkit::require_tool!(ward_testkit::kubernetes::TOOL);
    let mut files = Vec::new();
    yaml_files(&deploy(), &mut files);
    // kustomization.yaml files are kustomize's, not the API server's; the
    // Helm chart's files are templates and values (tests/helm.rs validates
    // what it renders).
    files.retain(|f| {
        !f.ends_with("kustomization.yaml")
            && !f.starts_with(deploy().join("examples/invalid"))
            && !f.starts_with(deploy().join("helm"))
    });
    assert!(files.len() >= 9, "{files:?}");
    validate(&files);
}

#[test]
fn kustomize_renders_validate() {
    ward_testkit::require_tool!(ward_testkit::kubernetes::TOOL);
    ward_testkit::require_tool!("kubectl");
    let dir = tempfile::tempdir().unwrap();
    for (name, path) in [
        ("base", "base"),
        ("prometheus", "overlays/prometheus-operator"),
    ] {
        let output = Command::new("kubectl")
            .args(["kustomize"])
            .arg(deploy().join(path))
            .output()
            .unwrap();
        let rendered = succeeded(output);
        for kind in [
            "kind: CustomResourceDefinition",
            "kind: Deployment",
            "kind: MutatingWebhookConfiguration",
            "kind: PodDisruptionBudget",
            "kind: ClusterRole",
            "kind: Role\n",
            "kind: RoleBinding",
            "kind: NetworkPolicy",
        ] {
            assert!(rendered.contains(kind), "{name}: {kind} missing");
        }
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, rendered).unwrap();
        validate(&[file]);
    }
}

/// The YAML documents of `deploy/base/<file>`.
fn base_documents(file: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(deploy().join("base").join(file)).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| <serde_json::Value as serde::Deserialize>::deserialize(doc).unwrap())
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The NetworkPolicies select exactly the control plane's pods and open
/// exactly its three ports, each to its callers only: the API to every
/// pod, the webhook to addresses (the API server is not a pod), the admin
/// port to the labelled monitoring namespaces. No rule opens every port
/// or admits every source.
#[test]
fn network_policies_open_only_the_control_plane_ports_to_their_callers() {
    use serde_json::{Value, json};
    use std::collections::BTreeMap;
    let deployment = base_documents("control-plane.yaml")
        .into_iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("the Deployment");
    let selector = &deployment["spec"]["selector"]["matchLabels"];
    let container_ports: Vec<u64> =
        deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["containerPort"].as_u64().unwrap())
            .collect();
    let policies = base_documents("network-policies.yaml");
    assert_eq!(policies.len(), 3, "{policies:?}");
    let mut sources: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
    for policy in &policies {
        let name = policy["metadata"]["name"].as_str().unwrap();
        assert_eq!(policy["kind"], "NetworkPolicy", "{name}");
        assert_eq!(policy["metadata"]["namespace"], "ward-system", "{name}");
        assert_eq!(
            policy["spec"]["podSelector"]["matchLabels"], *selector,
            "{name}"
        );
        assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress"]), "{name}");
        for rule in policy["spec"]["ingress"].as_array().unwrap() {
            let ports = rule["ports"]
                .as_array()
                .expect("a rule without ports opens every port");
            let from = rule["from"]
                .as_array()
                .expect("a rule without from admits every source");
            assert!(!from.is_empty() && !ports.is_empty(), "{name}: {rule}");
            for port in ports {
                assert_eq!(port["protocol"], "TCP", "{name}");
                let number = port["port"].as_u64().expect("a port number");
                sources
                    .entry(number)
                    .or_default()
                    .extend(from.iter().cloned());
            }
        }
    }
    let mut opened: Vec<u64> = sources.keys().copied().collect();
    let mut expected = container_ports.clone();
    opened.sort();
    expected.sort();
    assert_eq!(opened, expected, "the ports opened are the container's");
    assert_eq!(sources[&15012], vec![json!({"namespaceSelector": {}})]);
    assert_eq!(
        sources[&15014],
        vec![json!({"namespaceSelector": {"matchLabels": {"ward.io/monitoring": "enabled"}}})]
    );
    // The webhook: addresses only, never a pod or namespace selector.
    assert!(!sources[&15017].is_empty());
    for peer in &sources[&15017] {
        let keys: Vec<&String> = peer.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["ipBlock"], "{peer}");
    }
}

#[test]
fn injected_sample_app_validates() {
    ward_testkit::require_tool!(ward_testkit::kubernetes::TOOL);
    let text = inject_sample_app(&[]);
    assert!(text.contains("ward-proxy"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shop-injected.yaml");
    std::fs::write(&file, &text).unwrap();
    validate(std::slice::from_ref(&file));
    // The classic (non-native) layout too.
    std::fs::write(&file, inject_sample_app(&["--native-sidecar", "false"])).unwrap();
    validate(&[file]);
}

/// Validates each document of `policies` against its CRD's schema, with
/// unknown fields under `spec` rejected (kubectl's default strict field
/// validation); prints one `ok` or `invalid: <reason>` line per document.
const CHECK_POLICIES: &str = r#"
import sys, yaml, jsonschema
crds = {}
for path in sys.argv[2:]:
    crd = yaml.safe_load(open(path))
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    def strict(node):
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
            for v in node.values():
                strict(v)
        elif isinstance(node, list):
            for v in node:
                strict(v)
    strict(schema["properties"]["spec"])
    crds[crd["spec"]["names"]["kind"]] = schema
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc is None:
        continue
    try:
        jsonschema.validate(doc, crds[doc["kind"]], cls=jsonschema.Draft7Validator)
        print("ok", doc["metadata"]["name"])
    except jsonschema.ValidationError as e:
        print("invalid", doc["metadata"]["name"], e.message)
"#;

fn check_policies(file: &str) -> Vec<String> {
    let have_jsonschema = Command::new("python3")
        .args(["-c", "import jsonschema, yaml"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ward_testkit::prerequisite(
        have_jsonschema,
        "python3 with jsonschema and PyYAML is not installed",
    ) {
        return Vec::new();
    }
    let output = Command::new("python3")
        .args(["-c", CHECK_POLICIES])
        .arg(deploy().join(file))
        .arg(deploy().join("base/crds/authorizationpolicies.yaml"))
        .arg(deploy().join("base/crds/peerauthentications.yaml"))
        .output()
        .unwrap();
    succeeded(output).lines().map(str::to_owned).collect()
}

#[test]
fn crd_schemas_accept_the_sample_policies() {
    let lines = check_policies("examples/shop/policies.yaml");
    if lines.is_empty() && !ward_testkit::strict() {
        return;
    }
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(lines.iter().all(|l| l.starts_with("ok ")), "{lines:?}");
}

#[test]
fn crd_schemas_reject_malformed_policies() {
    let lines = check_policies("examples/invalid/policies.yaml");
    if lines.is_empty() && !ward_testkit::strict() {
        return;
    }
    assert_eq!(lines.len(), 10, "{lines:?}");
    for line in &lines {
        assert!(line.starts_with("invalid "), "accepted: {line}");
    }
}
