//! `ward inject` as a user runs it, on the sample app and on every workload kind.

#[path = "support/bins.rs"]
mod bins;

use std::process::Output;

use serde::Deserialize;
use serde_json::Value;

fn ward_inject(args: &[&str], stdin: &str) -> Output {
    bins::ward_with_stdin(&[&["inject"], args].concat(), stdin.as_bytes())
}

/// The documents `ward inject` wrote, each checked against the Kubernetes
/// schema (strict; the items of a `List` one by one, since there is no
/// schema for `List` itself), so every output a test here produces is
/// schema-checked without a list to keep up to date.
fn docs(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> =
        serde_yaml_ng::Deserializer::from_str(std::str::from_utf8(&out.stdout).unwrap())
            .map(|d| Value::deserialize(d).unwrap())
            .collect();
    let objects: Vec<String> = docs
        .iter()
        .flat_map(|doc| match doc["items"].as_array() {
            Some(items) if doc["kind"] == "List" => items.iter().collect(),
            _ => vec![doc],
        })
        .map(|object| serde_json::to_string_pretty(object).unwrap())
        .collect();
    ward_testkit::kubernetes::assert_valid("what `ward inject` wrote", &objects);
    docs
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

fn sample() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/examples/shop/app.yaml"
    ))
    .unwrap()
}

#[test]
fn sample_app_is_injected_and_the_rest_passes_through() {
    let input = sample();
    let out = ward_inject(&["-f", "-", "--trust-domain", "example.org"], &input);
    let docs = docs(&out);
    let original: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&input)
        .map(|d| Value::deserialize(d).unwrap())
        .collect();
    assert_eq!(docs.len(), original.len());
    for (got, want) in docs.iter().zip(&original) {
        if got["kind"] != "Deployment" {
            assert_eq!(got, want, "non-workloads unchanged");
            continue;
        }
        let spec = &got["spec"]["template"]["spec"];
        assert_eq!(names(&spec["initContainers"]), ["ward-init", "ward-proxy"]);
        let proxy = &spec["initContainers"][1];
        assert_eq!(proxy["restartPolicy"], "Always");
        let env = proxy["env"].as_array().unwrap();
        let td = env
            .iter()
            .find(|e| e["name"] == "WARD_TRUST_DOMAIN")
            .unwrap();
        assert_eq!(td["value"], "example.org");
        assert!(got["spec"]["template"]["metadata"]["annotations"]["ward.io/status"].is_string());
        // Everything outside the pod template is untouched.
        assert_eq!(got["spec"]["selector"], want["spec"]["selector"]);
        assert_eq!(got["metadata"], want["metadata"]);
    }
}

#[test]
fn every_workload_kind_and_lists() {
    let pod_spec = "spec: {containers: [{name: app, image: nginx}]}";
    let input = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\n{pod_spec}\n---\n\
         apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: s}}\nspec: {{serviceName: s, selector: {{}}, template: {{{pod_spec}}}}}\n---\n\
         apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {{name: d}}\nspec: {{selector: {{}}, template: {{{pod_spec}}}}}\n---\n\
         apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {{name: r}}\nspec: {{selector: {{}}, template: {{{pod_spec}}}}}\n---\n\
         apiVersion: batch/v1\nkind: Job\nmetadata: {{name: j}}\nspec: {{template: {{{pod_spec}}}}}\n---\n\
         apiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: c}}\nspec: {{schedule: '* * * * *', jobTemplate: {{spec: {{template: {{{pod_spec}}}}}}}}}\n---\n\
         apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {{name: in-list}}\n  {pod_spec}\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {{name: cm}}\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: other}}\ndata: {{a: b}}\n"
    );
    // Without the namespace label nothing is selected.
    let untouched = docs(&ward_inject(&["-f", "-"], &input));
    assert!(
        !serde_json::to_string(&untouched)
            .unwrap()
            .contains("ward-proxy")
    );

    let out = docs(&ward_inject(
        &[
            "-f",
            "-",
            "--namespace-injection-enabled",
            "--native-sidecar",
            "false",
        ],
        &input,
    ));
    let templates = [
        &out[0],
        &out[1]["spec"]["template"],
        &out[2]["spec"]["template"],
        &out[3]["spec"]["template"],
        &out[4]["spec"]["template"],
        &out[5]["spec"]["jobTemplate"]["spec"]["template"],
        &out[6]["items"][0],
    ];
    for t in templates {
        assert_eq!(
            names(&t["spec"]["containers"]),
            ["ward-proxy", "app"],
            "{t}"
        );
        assert_eq!(names(&t["spec"]["initContainers"]), ["ward-init"]);
    }
    assert_eq!(out[6]["items"][1]["kind"], "ConfigMap");
    assert_eq!(out[7]["data"]["a"], "b");
}

#[test]
fn flags_set_image_and_control_plane_and_opt_out_is_honoured() {
    let input = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, annotations: {ward.io/inject: 'true'}}\nspec: {containers: [{name: app, image: nginx}]}\n---\n\
                 apiVersion: v1\nkind: Pod\nmetadata: {name: q, annotations: {ward.io/inject: 'false'}}\nspec: {containers: [{name: app, image: nginx}]}\n";
    let out = docs(&ward_inject(
        &[
            "-f",
            "-",
            "--image",
            "registry.example/ward:dev",
            "--control-plane",
            "cp.example:15012",
            "--namespace-injection-enabled",
        ],
        input,
    ));
    let proxy = &out[0]["spec"]["initContainers"][1];
    assert_eq!(proxy["image"], "registry.example/ward:dev");
    let cp = proxy["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "WARD_CONTROL_PLANE")
        .unwrap();
    assert_eq!(cp["value"], "cp.example:15012");
    assert!(out[1]["spec"].get("initContainers").is_none(), "opted out");
}

#[test]
fn invalid_annotation_fails_with_the_object_named() {
    let input = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: shop, annotations: {ward.io/inject: 'true', ward.io/exclude-inbound-ports: 'http'}}\nspec: {containers: [{name: app, image: nginx}]}\n";
    let out = ward_inject(&["-f", "-"], input);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Pod shop/p"), "{err}");
    assert!(err.contains("ward.io/exclude-inbound-ports"), "{err}");
}

#[test]
fn reads_a_file() {
    let out = bins::ward(&[
        "inject",
        "-f",
        concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/examples/shop/app.yaml"),
    ]);
    assert_eq!(docs(&out).len(), 6);
}
