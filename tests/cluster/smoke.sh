#!/usr/bin/env bash
# Smoke test of the binaries build-k8s.sh makes: a one-node-less control plane
# (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) on 127.0.0.1
# only, with certificates made by the openssl CLI, then a few kubectl and helm
# checks. Everything runs from a mktemp directory and is torn down on exit,
# whether the checks pass or not.
#
# Usage: tests/cluster/smoke.sh      (builds or reuses the cached binaries)
#        WARD_K8S_BIN=/path/to/bin tests/cluster/smoke.sh
# Needs: openssl, curl, ss (iproute2). Ends with "smoke: N passed, N failed".
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=${WARD_K8S_BIN:-$("$HERE/build-k8s.sh" | tail -1)}
SERVICE_CIDR=198.19.0.0/16 # inside 198.18.0.0/15 (RFC 2544): never routed
SERVICE_IP=198.19.0.1      # the first IP: the kubernetes.default Service
HOST=127.0.0.1

for tool in openssl curl ss; do
    command -v "$tool" >/dev/null || { echo "smoke: $tool is required" >&2; exit 1; }
done
for b in etcd kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl helm; do
    [[ -x $BIN/$b ]] || { echo "smoke: $BIN/$b is missing" >&2; exit 1; }
done
K8S_VERSION=$("$BIN/kubectl" version --client -o json | sed -n 's/.*"gitVersion": "\(v[^"]*\)".*/\1/p')

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ward-smoke.XXXXXX")
PIDS=()
NAMES=()
PASSED=0
FAILED=0

log() { printf 'smoke: %s\n' "$*" >&2; }

teardown() {
    local rc=$? i
    trap - EXIT INT TERM
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill -TERM "${PIDS[i]}" 2>/dev/null || true; done
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        local n=0
        while kill -0 "${PIDS[i]}" 2>/dev/null && ((n++ < 50)); do sleep 0.2; done
        kill -KILL "${PIDS[i]}" 2>/dev/null || true
        wait "${PIDS[i]}" 2>/dev/null || true
    done
    if ((rc != 0 || FAILED != 0)); then
        for i in "${!NAMES[@]}"; do
            log "---- last lines of ${NAMES[i]}.log"
            tail -n 25 "$WORK/${NAMES[i]}.log" >&2 2>/dev/null || true
        done
    fi
    rm -rf "$WORK"
    echo "smoke: $PASSED passed, $((FAILED + (rc != 0 && FAILED == 0 ? 1 : 0))) failed"
    exit "$rc"
}
trap teardown EXIT
trap 'log "FAIL line $LINENO: $BASH_COMMAND (exit $?)"' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

pass() { PASSED=$((PASSED + 1)); log "ok   $*"; }
fail() { FAILED=$((FAILED + 1)); log "FAIL $*"; exit 1; }

# A free TCP port on 127.0.0.1, below the ephemeral range, not handed out before.
USED_PORTS=" "
free_port() {
    local p
    for _ in $(seq 100); do
        p=$((20000 + RANDOM % 12000))
        [[ $USED_PORTS == *" $p "* ]] && continue
        [[ -z $(ss -Htln "sport = :$p") ]] || continue
        USED_PORTS+="$p "
        echo "$p"
        return
    done
    echo "smoke: no free port found" >&2
    return 1
}

start() { # start NAME CMD...: run in the background, logging to $WORK/NAME.log
    local name=$1
    shift
    "$@" >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
    NAMES+=("$name")
    log "started $name (pid $!)"
}

alive() { # alive NAME: its process is still running
    local i
    for i in "${!NAMES[@]}"; do
        [[ ${NAMES[i]} == "$1" ]] && { kill -0 "${PIDS[i]}" 2>/dev/null; return; }
    done
    return 1
}

# wait_for WHAT SECONDS PROCESS CMD...: retry CMD until it succeeds, failing
# early when PROCESS (a started name, or "-") has died.
wait_for() {
    local what=$1 secs=$2 proc=$3 deadline=$((SECONDS + $2))
    shift 3
    until "$@" >/dev/null 2>&1; do
        [[ $proc == - ]] || alive "$proc" || fail "$what: $proc exited"
        ((SECONDS < deadline)) || fail "$what: not within ${secs}s"
        sleep 0.5
    done
    pass "$what"
}

# ------------------------------------------------------------------ versions
log "binaries: $BIN ($K8S_VERSION), work dir: $WORK"
[[ $K8S_VERSION == v1.* ]] || fail "kubectl version --client reports '$K8S_VERSION'"
for b in kube-apiserver kube-controller-manager kube-scheduler kube-proxy; do
    out=$("$BIN/$b" --version)
    [[ $out == "Kubernetes $K8S_VERSION" ]] || fail "$b --version printed '$out'"
done
pass "kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy --version: Kubernetes $K8S_VERSION"
out=$("$BIN/etcd" --version)
out=${out%%$'\n'*}
[[ $out == "etcd Version: 3."* ]] || fail "etcd --version printed '$out'"
pass "etcd --version: ${out#etcd Version: }"
export HELM_CACHE_HOME=$WORK/helm/cache HELM_CONFIG_HOME=$WORK/helm/config HELM_DATA_HOME=$WORK/helm/data
out=$("$BIN/helm" version --short)
[[ $out == v[34].* ]] || fail "helm version --short printed '$out'"
pass "helm version --short: $out"

# ------------------------------------------------------------------ certificates
PKI=$WORK/pki
mkdir -p "$PKI"
ssl() { openssl "$@" 2>>"$WORK/openssl.log" || fail "openssl $1 (see above)"; }
eckey() { ssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/$1.key"; }

eckey ca
ssl req -x509 -new -key "$PKI/ca.key" -out "$PKI/ca.crt" -days 1 -subj "/CN=ward-smoke-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"

# cert NAME SUBJECT EXTENSIONS: a key and a certificate signed by the CA.
cert() {
    eckey "$1"
    ssl req -new -key "$PKI/$1.key" -out "$PKI/$1.csr" -subj "$2"
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" "$3" >"$PKI/$1.ext"
    ssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
        -days 1 -out "$PKI/$1.crt" -extfile "$PKI/$1.ext"
}
SERVING_SANS="subjectAltName=IP:$HOST,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:$SERVICE_IP"
cert apiserver "/CN=kube-apiserver" "$SERVING_SANS
extendedKeyUsage=serverAuth"
# One serving certificate for the controller manager and the scheduler
# (their /healthz is then checked against the CA, no -k).
cert components "/CN=localhost" "subjectAltName=IP:$HOST,DNS:localhost
extendedKeyUsage=serverAuth"
cert admin "/O=system:masters/CN=smoke-admin" "extendedKeyUsage=clientAuth"
cert controller-manager "/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"
cert scheduler "/CN=system:kube-scheduler" "extendedKeyUsage=clientAuth"
# The service-account token signing key pair.
ssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key"
ssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"
ssl verify -CAfile "$PKI/ca.crt" "$PKI/apiserver.crt" "$PKI/admin.crt" >/dev/null
pass "openssl: CA, serving certificates (SANs $HOST, localhost, kubernetes.default.svc, $SERVICE_IP), client certificates, service-account key pair"

# ------------------------------------------------------------------ etcd
ETCD_PORT=$(free_port)
ETCD_PEER_PORT=$(free_port)
start etcd "$BIN/etcd" --name smoke --data-dir "$WORK/etcd" \
    --listen-client-urls "http://$HOST:$ETCD_PORT" --advertise-client-urls "http://$HOST:$ETCD_PORT" \
    --listen-peer-urls "http://$HOST:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://$HOST:$ETCD_PEER_PORT" \
    --initial-cluster "smoke=http://$HOST:$ETCD_PEER_PORT" --initial-cluster-state new \
    --unsafe-no-fsync
etcd_healthy() { curl -sf "http://$HOST:$ETCD_PORT/health" | grep -q '"health":"true"'; }
wait_for "etcd healthy on $HOST:$ETCD_PORT" 30 etcd etcd_healthy

# ------------------------------------------------------------------ kube-apiserver
API_PORT=$(free_port)
API=https://$HOST:$API_PORT
start kube-apiserver "$BIN/kube-apiserver" \
    --bind-address=$HOST --advertise-address=$HOST --secure-port="$API_PORT" \
    --etcd-servers="http://$HOST:$ETCD_PORT" \
    --service-cluster-ip-range=$SERVICE_CIDR \
    --service-account-issuer=https://kubernetes.default.svc \
    --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" \
    --authorization-mode=Node,RBAC \
    --client-ca-file="$PKI/ca.crt" \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --endpoint-reconciler-type=none \
    --cert-dir="$WORK/apiserver-certs"

kubeconfig() { # kubeconfig NAME: $WORK/NAME.kubeconfig with the client cert NAME
    local kc=$WORK/$1.kubeconfig k=("$BIN/kubectl" config --kubeconfig="$WORK/$1.kubeconfig")
    "${k[@]}" set-cluster smoke --server="$API" --certificate-authority="$PKI/ca.crt" --embed-certs=true >/dev/null
    "${k[@]}" set-credentials "$1" --client-certificate="$PKI/$1.crt" --client-key="$PKI/$1.key" --embed-certs=true >/dev/null
    "${k[@]}" set-context smoke --cluster=smoke --user="$1" >/dev/null
    "${k[@]}" use-context smoke >/dev/null
    echo "$kc"
}
export KUBECONFIG
KUBECONFIG=$(kubeconfig admin)
KCM_KUBECONFIG=$(kubeconfig controller-manager)
SCHED_KUBECONFIG=$(kubeconfig scheduler)
k() { "$BIN/kubectl" "$@"; }

readyz() { curl -sf --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "$API/readyz" | grep -qx ok; }
wait_for "kube-apiserver /readyz on $API" 90 kube-apiserver readyz

# ------------------------------------------------------------------ controller manager and scheduler
KCM_PORT=$(free_port)
start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig="$KCM_KUBECONFIG" \
    --authentication-kubeconfig="$KCM_KUBECONFIG" --authorization-kubeconfig="$KCM_KUBECONFIG" \
    --bind-address=$HOST --secure-port="$KCM_PORT" \
    --tls-cert-file="$PKI/components.crt" --tls-private-key-file="$PKI/components.key" \
    --service-account-private-key-file="$PKI/sa.key" \
    --root-ca-file="$PKI/ca.crt" \
    --use-service-account-credentials=true \
    --controllers='*' \
    --leader-elect=false \
    --service-cluster-ip-range=$SERVICE_CIDR \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key"

SCHED_PORT=$(free_port)
start kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig="$SCHED_KUBECONFIG" \
    --authentication-kubeconfig="$SCHED_KUBECONFIG" --authorization-kubeconfig="$SCHED_KUBECONFIG" \
    --bind-address=$HOST --secure-port="$SCHED_PORT" \
    --tls-cert-file="$PKI/components.crt" --tls-private-key-file="$PKI/components.key" \
    --leader-elect=false

healthz() { curl -sf --cacert "$PKI/ca.crt" "https://$HOST:$1/healthz" | grep -qx ok; }
wait_for "kube-controller-manager /healthz on $HOST:$KCM_PORT" 60 kube-controller-manager healthz "$KCM_PORT"
wait_for "kube-scheduler /healthz on $HOST:$SCHED_PORT" 60 kube-scheduler healthz "$SCHED_PORT"

# ------------------------------------------------------------------ kubectl checks
out=$(k version)
grep -qx "Server Version: $K8S_VERSION" <<<"$out" || fail "kubectl version: $out"
pass "kubectl version: client and server $K8S_VERSION"

out=$(k get --raw /version)
[[ $out == *'"major": "1"'* && $out == *"\"minor\": \"$(cut -d. -f2 <<<"$K8S_VERSION")\""* && $out == *"\"gitVersion\": \"$K8S_VERSION\""* ]] ||
    fail "kubectl get --raw /version: $out"
pass "kubectl get --raw /version: major 1, minor $(cut -d. -f2 <<<"$K8S_VERSION"), gitVersion $K8S_VERSION"

out=$(k get --raw /readyz)
[[ $out == ok ]] || fail "kubectl get --raw /readyz printed '$out'"
pass "kubectl get --raw /readyz: ok"

k create namespace smoke >/dev/null
pass "kubectl create namespace smoke"

# The service-account and root-CA publisher controllers fill the namespace.
sa_default() { k -n smoke get serviceaccount default; }
wait_for "serviceaccount controller: smoke/default exists" 60 kube-controller-manager sa_default
root_ca() {
    k -n smoke get configmap kube-root-ca.crt -o jsonpath='{.data.ca\.crt}' | openssl x509 -noout -subject | grep -q ward-smoke-ca
}
wait_for "root-ca-cert-publisher: smoke/kube-root-ca.crt holds the CA" 60 kube-controller-manager root_ca

k -n smoke create service clusterip web --tcp=80:8080 >/dev/null
selector=$(k -n smoke get service web -o jsonpath='{.spec.selector.app}')
cluster_ip=$(k -n smoke get service web -o jsonpath='{.spec.clusterIP}')
[[ $selector == web && $cluster_ip == 198.19.* ]] || fail "service web: selector app='$selector', clusterIP '$cluster_ip'"
pass "service smoke/web: selector app=web, clusterIP $cluster_ip in $SERVICE_CIDR"
slice() { [[ -n $(k -n smoke get endpointslices -l kubernetes.io/service-name=web -o name) ]]; }
wait_for "endpointslice controller: EndpointSlice for smoke/web" 60 kube-controller-manager slice

# The scheduler: a Node object (no kubelet behind it, no addresses) with room
# for pods, and a pod that tolerates its not-ready taint gets bound to it.
k apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Node
metadata:
  name: smoke-node
  labels: {kubernetes.io/hostname: smoke-node}
EOF
k patch node smoke-node --subresource=status --type=merge -p \
    '{"status":{"capacity":{"cpu":"2","memory":"2Gi","pods":"10"},"allocatable":{"cpu":"2","memory":"2Gi","pods":"10"}}}' >/dev/null
k -n smoke apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  labels: {app: web}
spec:
  tolerations: [{operator: Exists}]
  containers: [{name: web, image: registry.invalid/none:0}]
EOF
bound() { [[ $(k -n smoke get pod web-0 -o jsonpath='{.spec.nodeName}') == smoke-node ]]; }
wait_for "kube-scheduler bound smoke/web-0 to smoke-node" 60 kube-scheduler bound

k -n smoke create serviceaccount robot >/dev/null
token=$(k -n smoke create token robot --duration=10m)
[[ $token == *.*.* ]] || fail "kubectl create token printed '$token'"
pass "kubectl create token robot: a bound token"
whoami=$("$BIN/kubectl" --kubeconfig=/dev/null --server="$API" --certificate-authority="$PKI/ca.crt" \
    --token="$token" auth whoami -o jsonpath='{.status.userInfo.username}')
[[ $whoami == system:serviceaccount:smoke:robot ]] || fail "auth whoami with the token: '$whoami'"
pass "the token authenticates as $whoami"

# ------------------------------------------------------------------ helm
CHART=$WORK/chart
mkdir -p "$CHART/templates"
printf 'apiVersion: v2\nname: smoke\nversion: 0.1.0\n' >"$CHART/Chart.yaml"
printf 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\ndata:\n  greeting: {{ .Values.greeting | quote }}\n' >"$CHART/templates/cm.yaml"
printf 'greeting: hello\n' >"$CHART/values.yaml"
"$BIN/helm" install smoke "$CHART" -n smoke >"$WORK/helm.log" 2>&1 || { cat "$WORK/helm.log" >&2; fail "helm install"; }
got=$(k -n smoke get configmap smoke-cm -o jsonpath='{.data.greeting}')
[[ $got == hello ]] || fail "helm install: configmap smoke/smoke-cm greeting '$got'"
"$BIN/helm" uninstall smoke -n smoke >>"$WORK/helm.log" 2>&1 || { cat "$WORK/helm.log" >&2; fail "helm uninstall"; }
pass "helm install/uninstall of a one-ConfigMap chart"

for c in etcd kube-apiserver kube-controller-manager kube-scheduler; do alive "$c" || fail "$c exited"; done
pass "all control-plane processes still running"
