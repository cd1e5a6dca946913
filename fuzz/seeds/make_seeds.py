#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/ from the inputs of
the unit tests (and the example policies). Run from the repository root:
python3 fuzz/seeds/make_seeds.py. The CSR seeds need the openssl CLI."""
import base64, hashlib, json, os, re, subprocess, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def write(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def rust_strings(path):
    """Plain "..." string literals of a Rust test file (escapes decoded)."""
    text = open(os.path.join(ROOT, path), encoding="utf-8").read()
    out = []
    for m in re.finditer(r'(?<![A-Za-z0-9_#])"((?:[^"\\\n]|\\.)*)"', text):
        s = m.group(1)
        try:
            s = json.loads('"' + s.replace("\\'", "'") + '"')
        except Exception:
            continue
        out.append(s)
    return out


# protocol_detect: the prefixes of proxy/src/detect/tests.rs and a few more.
for seed in [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
             b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"CONNECT host:443 HTTP/1.1\r\n", b"SSH-2.0-OpenSSH",
             b"\x16\x01", b"get / HTTP/1.1", b"PRX", b"POST /x HTTP/1.1\r\n", b"PATCH / HTTP/1.1",
             b"OPTIONS * HTTP/1.1", b"PRI * HTTP/2", b"\x00\x00\x00\x01"]:
    write("protocol_detect", seed)

# path_normalize: every path literal of proxy/src/request_path/tests.rs, in each mode.
for s in rust_strings("proxy/src/request_path/tests.rs"):
    if s.startswith(("/", "\\")):
        for mode in range(3):
            write("path_normalize", bytes([mode]) + s.encode())

# spiffe_id: the identity crate's test IDs.
for s in rust_strings("identity/src/spiffe_id/tests.rs"):
    if "spiffe" in s or "/ns/" in s:
        write("spiffe_id", s)
write("spiffe_id", "cluster.local/ns/default/sa/web")

# policy_parse: every `policies:` block of the Istio cases, the examples.
text = open(os.path.join(ROOT, "policy/tests/istio_cases.yaml"), encoding="utf-8").read()
for m in re.finditer(r"^  policies: \|\n((?:    .*\n|\s*\n)+)", text, re.M):
    block = "\n".join(line[4:] for line in m.group(1).splitlines()) + "\n"
    write("policy_parse", block)
for example in ["deploy/examples/shop/policies.yaml", "deploy/examples/invalid/policies.yaml"]:
    p = os.path.join(ROOT, example)
    if os.path.exists(p):
        write("policy_parse", open(p, encoding="utf-8").read())
write("policy_parse", """apiVersion: security.ward.io/v1
kind: AuthorizationPolicy
metadata: {name: admin, namespace: default}
spec:
  selector: {matchLabels: {app: api}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"], methods: [POST]}}]
---
apiVersion: security.ward.io/v1
kind: PeerAuthentication
metadata: {name: p, namespace: default}
spec:
  selector: {matchLabels: {app: api}}
  mtls: {mode: STRICT}
  portLevelMtls: {8080: {mode: PERMISSIVE}}
#request
{"protocol": "http", "source": {"spiffe_id": "spiffe://cluster.local/ns/a/sa/b", "ip": "10.0.0.1"},
 "destination": {"ip": "10.0.0.2", "port": 8080}, "method": "POST", "path": "/admin/x", "host": "api",
 "headers": {"x-a": "1", "x-b": ["1", "2"]}}
""")

# csr_sign: a real CSR (openssl) as DER, as PEM, and inside a request body.
with tempfile.TemporaryDirectory() as tmp:
    key = os.path.join(tmp, "key.pem")
    for uri in ["spiffe://fuzz.example/ns/default/sa/app", "spiffe://other.example/ns/x/sa/y"]:
        der = subprocess.run(
            ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", key, "-subj", "/O=Ward", "-addext", f"subjectAltName=URI:{uri}",
             "-outform", "DER"], check=True, capture_output=True).stdout
        pem = subprocess.run(["openssl", "req", "-inform", "DER", "-outform", "PEM"], input=der,
                             check=True, capture_output=True).stdout.decode()
        write("csr_sign", b"\x01" + der)
        write("csr_sign", b"\x02" + pem.encode())
        for cred in [None, {"join_token": "abc"}, {"k8s_sa_token": "a.b.c"}]:
            body = {"spiffe_id": uri, "csr": pem}
            if cred:
                body["credential"] = cred
                body["pod"] = "api-1"
            write("csr_sign", b"\x00" + json.dumps(body).encode())

# attest_token: JWT header + claims as the API server writes them (signed
# by the target), a raw token, join-token records.
NOW = 1_700_000_000
claims = {"iss": "https://kubernetes.default.svc.cluster.local", "aud": ["ward"], "exp": NOW + 3600,
          "iat": NOW - 10, "nbf": NOW - 10, "sub": "system:serviceaccount:payments:api",
          "kubernetes.io": {"namespace": "payments", "serviceaccount": {"name": "api", "uid": "u1"},
                            "pod": {"name": "api-7d9f", "uid": "u2"}}}
header = {"alg": "ES256", "kid": "fuzz-ec", "typ": "JWT"}
write("attest_token", b"\x01" + json.dumps(header).encode() + b"\n" + json.dumps(claims).encode())
short = dict(claims, aud="ward")
del short["sub"]
write("attest_token", b"\x01" + json.dumps(header).encode() + b"\n" + json.dumps(short).encode())
write("attest_token", b"\x01" + json.dumps({"alg": "none"}).encode() + b"\n" + json.dumps(claims).encode())
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
write("attest_token", b"\x00" + b64(json.dumps(header).encode()) + b"." + b64(json.dumps(claims).encode()) + b".c2ln")
write("attest_token", b"\x02" + json.dumps({"spiffe_id": "spiffe://cluster.local/ns/default/sa/app",
                                            "expires_at": NOW + 600, "created_at": NOW}).encode())
write("attest_token", b"\x02" + json.dumps({"spiffe_id": "spiffe://cluster.local/ns/default/sa/app",
                                            "expires_at": NOW - 1, "created_at": NOW - 600}).encode())

# discovery_messages: the wire examples of api/src/discovery/tests.rs and
# one update of each type, as streams of lines.
policy_yaml = ("apiVersion: security.ward.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: default}\n"
               "spec:\n  rules:\n  - to: [{operation: {paths: [\"/public*\"]}}]\n")
updates = [
    {"type": "update", "nonce": 1, "resource_type": "policy", "system_version": 3,
     "resources": [{"name": "AuthorizationPolicy/default/a", "version": "01",
                    "body": {"kind": "AuthorizationPolicy", "namespace": "default", "name": "a", "yaml": policy_yaml}}],
     "removed": []},
    {"type": "update", "nonce": 2, "resource_type": "endpoint",
     "resources": [{"name": "10.0.0.7", "version": "02",
                    "body": {"spiffe_id": "spiffe://cluster.local/ns/default/sa/db", "ports": {"5432": "spiffe://cluster.local/ns/default/sa/pg"},
                             "opaque_ports": [5432], "workload": "default/db-0", "labels": {"app": "db"}}}],
     "removed": ["10.0.0.9"]},
    {"type": "update", "nonce": 3, "resource_type": "service",
     "resources": [{"name": "10.96.0.10", "version": "03",
                    "body": {"service": "default/api", "ports": {"80": {"name": "http", "protocol": "http1", "timeout_ms": 5000,
                             "endpoints": [{"address": "10.0.0.7:8080", "spiffe_id": "spiffe://cluster.local/ns/default/sa/api",
                                            "workload": "default/api-0", "ready": True, "serving": True, "terminating": False},
                                           {"address": "[fd00::7]:8080"}]}}}}],
     "removed": []},
    {"type": "update", "nonce": 4, "resource_type": "bundle",
     "resources": [{"name": "cluster.local", "version": "04", "body": {"trust_domain": "cluster.local", "roots_pem": ""}}]},
    {"type": "update", "nonce": 5, "resource_type": "policy", "resources": [], "removed": ["AuthorizationPolicy/default/a"]},
]
lines = [json.dumps(u) for u in updates]
client = [
    {"type": "hello", "api_version": "ward.io/discovery/v2", "zone": "eu-1",
     "node": {"pod": "api-0", "labels": {"app": "api"}, "proxy_version": "0.1.0"},
     "resource_types": ["policy", "endpoint", "service"], "held": {"policy": {"AuthorizationPolicy/default/a": "01"}},
     "subscribe": {"endpoint": ["10.0.0.7"]}},
    {"type": "subscribe", "resource_type": "service", "names": ["10.96.0.10"]},
    {"type": "unsubscribe", "resource_type": "endpoint", "names": ["10.0.0.7"]},
    {"type": "ack", "nonce": 3}, {"type": "nack", "nonce": 4, "error": "bad"}, {"type": "trace", "id": 1},
    {"labels": {"app": "vm"}, "opaque_ports": [9000]},
]
write("discovery_messages", "\n".join(lines) + "\n")
for line in lines:
    write("discovery_messages", line)
write("discovery_messages", "\n".join(json.dumps(c) for c in client) + "\n" + '{"type":"heartbeat"}\n')

# probe_annotations: a pod like control-plane/src/inject/tests.rs's, with
# every kind of probe; annotations; WARD_APP_PROBES; an AdmissionReview.
pod = {"apiVersion": "v1", "kind": "Pod",
       "metadata": {"name": "web", "annotations": {"ward.io/inject": "true", "ward.io/opaque-ports": "5432",
                                                   "ward.io/native-sidecar": "false"}},
       "spec": {"containers": [
           {"name": "app", "image": "nginx", "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http", "httpHeaders": [{"name": "X-A", "value": "1"}]}, "periodSeconds": 7},
            "livenessProbe": {"tcpSocket": {"port": 8080}, "timeoutSeconds": 3},
            "startupProbe": {"grpc": {"port": 9090}}},
           {"name": "side", "image": "busybox", "livenessProbe": {"exec": {"command": ["true"]}},
            "readinessProbe": {"httpGet": {"path": "/ready", "port": 9000, "scheme": "HTTPS", "host": "127.0.0.1"}}}],
           "initContainers": [{"name": "setup", "image": "busybox"}],
           "volumes": [{"name": "data", "emptyDir": {}}]}}
write("probe_annotations", b"\x00" + json.dumps(pod).encode())
pod2 = json.loads(json.dumps(pod))
pod2["metadata"]["annotations"] = {"ward.io/inject": "true"}
del pod2["spec"]["initContainers"], pod2["spec"]["volumes"]
write("probe_annotations", b"\x00" + json.dumps(pod2).encode())
write("probe_annotations", b"\x01" + json.dumps({
    "ward.io/inject": "true", "ward.io/native-sidecar": "true", "ward.io/exclude-inbound-ports": "8080, 9090",
    "ward.io/exclude-outbound-ports": "443", "ward.io/exclude-outbound-cidrs": "10.96.0.0/12,fd00::/8",
    "ward.io/opaque-ports": "5432,5432", "ward.io/proxy-cpu": "100m", "ward.io/proxy-memory": "64Mi",
    "ward.io/proxy-cpu-limit": "1", "ward.io/proxy-memory-limit": "1.5Gi", "ward.io/log-level": "debug",
    "ward.io/rewrite-app-probes": "false"}).encode())
write("probe_annotations", b"\x02" + json.dumps({
    "/app-health/app/readyz": {"httpGet": {"scheme": "HTTP", "port": 8080, "path": "/healthz",
                                            "httpHeaders": [{"name": "X-A", "value": "1"}]}, "timeoutSeconds": 1},
    "/app-health/app/livez": {"tcpSocket": {"port": 8080}, "timeoutSeconds": 3}}).encode())
write("probe_annotations", b"\x03" + json.dumps({
    "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
    "request": {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "namespace": "default", "operation": "CREATE", "object": pod}}).encode())
