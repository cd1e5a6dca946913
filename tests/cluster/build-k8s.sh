#!/usr/bin/env bash
# Builds a pinned Kubernetes control plane (kube-apiserver,
# kube-controller-manager, kube-scheduler, kube-proxy, kubectl), etcd, helm and
# Prometheus (Debian's is built without Kubernetes service discovery) from the
# Go module proxy, and caches the binaries outside the repository.
#
# Usage:
#   BIN=$(tests/cluster/build-k8s.sh | tail -1)   # build if needed, print the bin dir
#   tests/cluster/build-k8s.sh --pin-k8s v1.34.5  # maintainer: regenerate k8s/go.mod
#   tests/cluster/build-k8s.sh --pin-etcd v3.6.17 # maintainer: bump etcd/go.mod
#   tests/cluster/build-k8s.sh --pin-helm v4.3.3  # maintainer: bump helm/go.mod
#   tests/cluster/build-k8s.sh --pin-prometheus v0.316.1 # maintainer: bump prometheus/go.mod
#
# The versions are those required by the four small modules beside this
# script (k8s/, etcd/, helm/, prometheus/ with their go.sum): they are the only place the
# versions are written. The last line on stdout is the bin directory; progress
# goes to stderr.
#
# Cache: ${WARD_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ward-k8s}/
#   components/k8s-<v>/bin/   kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl
#   components/etcd-<v>/bin/  etcd
#   components/helm-<v>/bin/  helm
#   components/prometheus-<v>/bin/  prometheus (Kubernetes discovery only)
#   k8s-<v>_etcd-<v>_helm-<v>_prometheus-<v>/bin/   symlinks to all eight: the printed directory
#     (prometheus as prometheus-k8s-sd: .ci/run puts this directory first on
#     PATH, and the other tests keep Debian's prometheus)
# Each directory is built in a temporary directory inside the cache and renamed
# into place only once complete, so an interrupted build leaves no half cache.
# When the printed directory is complete the script runs no go command at all.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${WARD_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ward-k8s}
K8S_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl)
# Kubernetes' own release build (hack/lib/golang.sh) uses these tags for
# non-debug binaries and builds the server binaries and kubectl with CGO off.
K8S_TAGS=selinux,notest,grpcnotrace
MIN_GO_MINOR=26 # etcd 3.6.16 and helm 4.3 declare go 1.26.0 (prometheus v0.316.0: 1.26.7)

log() { printf 'build-k8s: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# modver GO_MOD MODULE: the version of MODULE that GO_MOD requires.
modver() {
    awk -v m="$2" '
        { sub(/\/\/.*/, "") }
        $1 == "require" && $2 == m { print $3; exit }
        $1 == m && $2 ~ /^v/ { print $2; exit }' "$1"
}

helm_module() { awk '$1 ~ /^helm\.sh\/helm\/v[0-9]+$/ { print $1; exit }' "$HERE/helm/go.mod"; }

K8S_VERSION=$(modver "$HERE/k8s/go.mod" k8s.io/kubernetes)
ETCD_VERSION=$(modver "$HERE/etcd/go.mod" go.etcd.io/etcd/server/v3)
HELM_MODULE=$(helm_module)
HELM_VERSION=$(modver "$HERE/helm/go.mod" "$HELM_MODULE")
PROM_MODULE=github.com/prometheus/prometheus
PROM_VERSION=$(modver "$HERE/prometheus/go.mod" "$PROM_MODULE")
[[ -n $K8S_VERSION && -n $ETCD_VERSION && -n $HELM_MODULE && -n $HELM_VERSION && -n $PROM_VERSION ]] ||
    die "cannot read the pinned versions from $HERE/{k8s,etcd,helm,prometheus}/go.mod"

K8S_DIR=$CACHE/components/k8s-$K8S_VERSION
ETCD_DIR=$CACHE/components/etcd-$ETCD_VERSION
HELM_DIR=$CACHE/components/helm-$HELM_VERSION
PROM_DIR=$CACHE/components/prometheus-$PROM_VERSION
BIN_DIR=$CACHE/k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_helm-${HELM_VERSION}_prometheus-${PROM_VERSION}/bin

have_bins() { # have_bins DIR NAME...: every NAME is an executable in DIR/bin
    local dir=$1 name
    shift
    for name in "$@"; do [[ -x $dir/bin/$name ]] || return 1; done
}

# ---------------------------------------------------------------- go checks
check_go() {
    command -v go >/dev/null || die "go is not on PATH (need Go >= 1.$MIN_GO_MINOR)"
    local v
    v=$(go env GOVERSION)
    if ! [[ $v =~ ^go1\.([0-9]+) ]] || ((BASH_REMATCH[1] < MIN_GO_MINOR)); then
        die "need Go >= 1.$MIN_GO_MINOR, found $v"
    fi
}

# gomod_json_field JSON FIELD
json_field() { sed -n "s/^[[:space:]]*\"$2\": \"\(.*\)\",\{0,1\}$/\1/p" <<<"$1" | head -1; }

# Download k8s.io/kubernetes@VERSION (the module, not the staging repos) and
# print the path of its go.mod.
upstream_k8s_gomod() {
    local json
    json=$(cd "$HERE/k8s" && go mod download -json "k8s.io/kubernetes@$1") ||
        die "go mod download k8s.io/kubernetes@$1 failed: $json"
    json_field "$json" GoMod
}

# The staging modules k8s.io/kubernetes replaces with ./staging/src/...: each
# must be replaced here by its published v0.<minor>.<patch> release.
staging_modules() { awk '$2 == "=>" && $3 ~ /^\.\/staging\/src\// { print $1 }' "$1"; }

check_replaces() {
    local up want missing=()
    up=$(upstream_k8s_gomod "$K8S_VERSION")
    want="v0.${K8S_VERSION#v1.}"
    while read -r m; do
        grep -Eq "^[[:space:]]*$m => $m $want\$" "$HERE/k8s/go.mod" || missing+=("$m")
    done < <(staging_modules "$up")
    ((${#missing[@]} == 0)) ||
        die "k8s/go.mod lacks 'replace M => M $want' for: ${missing[*]} (rerun with --pin-k8s $K8S_VERSION)"
}

# ---------------------------------------------------------------- pinning
pin_k8s() {
    local v=$1 up
    [[ $v =~ ^v1\.[0-9]+\.[0-9]+$ ]] || die "--pin-k8s wants a release like v1.34.4, got '$v'"
    check_go
    up=$(upstream_k8s_gomod "$v")
    log "writing $HERE/k8s/go.mod for k8s.io/kubernetes $v (staging modules at v0.${v#v1.})"
    {
        echo "module ward.test/cluster/k8s"
        echo
        echo "go 1.24.0"
        echo
        # k8s.io/kubernetes' own go.mod: keep its GODEBUG defaults.
        awk '$1 == "godebug"' "$up"
        echo
        echo "tool ("
        local c
        for c in "${K8S_CMDS[@]}"; do printf '\tk8s.io/kubernetes/cmd/%s\n' "$c"; done
        echo ")"
        echo
        echo "require k8s.io/kubernetes $v"
        echo
        echo "replace ("
        staging_modules "$up" | awk -v r="v0.${v#v1.}" '{ printf "\t%s => %s %s\n", $1, $1, r }'
        echo ")"
    } >"$HERE/k8s/go.mod.new"
    mv "$HERE/k8s/go.mod.new" "$HERE/k8s/go.mod"
    rm -f "$HERE/k8s/go.sum"
    (cd "$HERE/k8s" && go mod tidy) || die "go mod tidy in $HERE/k8s failed"
    log "pinned k8s.io/kubernetes $v; commit tests/cluster/k8s/go.mod and go.sum"
}

pin_simple() { # pin_simple DIR MODULE VERSION
    check_go
    (cd "$HERE/$1" && go get "$2@$3" && go mod tidy) || die "pinning $2@$3 in $HERE/$1 failed"
    log "pinned $2 $3; commit tests/cluster/$1/go.mod and go.sum"
}

case "${1:-}" in
    --pin-k8s) pin_k8s "${2:?--pin-k8s VERSION}"; exit 0 ;;
    --pin-etcd) pin_simple etcd go.etcd.io/etcd/server/v3 "${2:?--pin-etcd VERSION}"; exit 0 ;;
    --pin-helm) pin_simple helm "$HELM_MODULE" "${2:?--pin-helm VERSION}"; exit 0 ;;
    --pin-prometheus) pin_simple prometheus "$PROM_MODULE" "${2:?--pin-prometheus VERSION}"; exit 0 ;;
    "") ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
esac

# ---------------------------------------------------------------- fast path
if have_bins "$(dirname "$BIN_DIR")" "${K8S_CMDS[@]}" etcd helm prometheus-k8s-sd; then
    echo "$BIN_DIR"
    exit 0
fi

# ---------------------------------------------------------------- build
check_go
mkdir -p "$CACHE/components"
exec 9>"$CACHE/.lock"
if ! flock -n 9; then
    log "another build-k8s.sh holds $CACHE/.lock; waiting"
    flock 9
fi

# Leftovers of an interrupted build (we hold the lock: no build is running).
rm -rf "$CACHE"/.build-*
TMP_DIRS=()
BUILD_PID=
cleanup() {
    if [[ -n $BUILD_PID ]]; then # interrupted during a go build: stop it first
        kill -TERM "$BUILD_PID" 2>/dev/null || true
        wait "$BUILD_PID" 2>/dev/null || true
    fi
    ((${#TMP_DIRS[@]} == 0)) || rm -rf "${TMP_DIRS[@]}"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

new_tmp() { # sets TMP: a directory on the cache's filesystem, so rename is atomic
    TMP=$(mktemp -d "$CACHE/.build-XXXXXX")
    TMP_DIRS+=("$TMP")
    chmod 755 "$TMP"
    mkdir -p "$TMP/bin"
}

# publish TMP FINAL: atomically rename a finished directory into place.
publish() {
    rm -rf "$2" # only reached when $2 is incomplete (a leftover of an older layout)
    mv -T "$1" "$2"
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }'; }
# Sets CPU: the CPU seconds (user + system) this shell's waited-for children
# have used so far. `times` must run in this shell, not in a $(...) subshell.
read_cpu() {
    times >"$CACHE/.times.$$"
    CPU=$(awk 'END { for (i = 1; i <= 2; i++) { split($i, t, /[ms]/); s += t[1] * 60 + t[2] } printf "%.1f", s }' "$CACHE/.times.$$")
    rm -f "$CACHE/.times.$$"
}

# gobuild COMPONENT MODDIR OUT PKG LDFLAGS [TAGS]
gobuild() {
    local comp=$1 moddir=$2 out=$3 pkg=$4 ldflags=$5 tags=${6:-} errlog t0 c0
    errlog=$(mktemp)
    log "building $comp ($pkg)"
    t0=$(now)
    read_cpu
    c0=$CPU
    # In the background and waited for, so that a TERM or INT to this script
    # is handled at once (the trap then stops the go build).
    (cd "$moddir" && CGO_ENABLED=0 exec go build -trimpath ${tags:+-tags="$tags"} \
        -ldflags="$ldflags" -o "$out" "$pkg") 2>"$errlog" 9>&- &
    BUILD_PID=$!
    if ! wait "$BUILD_PID"; then
        BUILD_PID=
        log "error: building $comp ($pkg) failed; go said:"
        tail -n 60 "$errlog" >&2
        rm -f "$errlog"
        exit 1
    fi
    BUILD_PID=
    rm -f "$errlog"
    local secs cpu
    secs=$(elapsed "$t0")
    read_cpu
    cpu=$(awk -v a="$c0" -v b="$CPU" 'BEGIN { printf "%.0f", b - a }')
    log "built $comp in ${secs}s wall, ${cpu}s CPU ($(du -h "$out" | cut -f1))"
    printf '%s %ss wall %ss cpu\n' "$comp" "$secs" "$cpu" >>"$(dirname "$(dirname "$out")")/BUILD-TIMES"
}

# expect COMPONENT WANT CMD...: CMD's output must contain WANT (the -X flags took).
expect() {
    local comp=$1 want=$2 got
    shift 2
    got=$("$@" 2>&1) || die "$comp: '$*' failed: $got"
    [[ $got == *"$want"* ]] || die "$comp: '$*' printed '$got', expected it to contain '$want'"
}

# Module time (the release tag's commit time, from the proxy's .info): used as
# the build date so that the binaries do not depend on when they were built.
mod_time() {
    (cd "$1" && go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' "$2")
}

build_k8s() {
    check_replaces
    local tmp v=$K8S_VERSION major minor date ld c pkg
    new_tmp
    tmp=$TMP
    major=${v#v}; major=${major%%.*}
    minor=${v#v*.}; minor=${minor%%.*}
    date=$(mod_time "$HERE/k8s" k8s.io/kubernetes)
    # The ldflags of hack/lib/version.sh, for both version packages. The commit
    # hash is not known from the module proxy, so gitCommit is left empty and
    # gitTreeState says "archive" (hack/lib/version.sh's value for a source
    # tree that is not a git checkout).
    ld="-s -w"
    for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
        ld+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
        ld+=" -X $pkg.gitCommit= -X $pkg.gitTreeState=archive -X $pkg.buildDate=$date"
    done
    for c in "${K8S_CMDS[@]}"; do
        gobuild "$c" "$HERE/k8s" "$tmp/bin/$c" "k8s.io/kubernetes/cmd/$c" "$ld" "$K8S_TAGS"
    done
    for c in kube-apiserver kube-controller-manager kube-scheduler kube-proxy; do
        expect "$c" "Kubernetes $v" "$tmp/bin/$c" --version
    done
    expect kubectl "\"gitVersion\": \"$v\"" "$tmp/bin/kubectl" version --client -o json
    printf 'k8s.io/kubernetes %s\n%s\n' "$v" "$(go version)" >"$tmp/VERSION"
    publish "$tmp" "$K8S_DIR"
}

build_etcd() {
    local tmp v=$ETCD_VERSION
    new_tmp
    tmp=$TMP
    # etcd's ./build sets only GitSHA; the version itself is a constant.
    gobuild etcd "$HERE/etcd" "$tmp/bin/etcd" go.etcd.io/etcd/server/v3 \
        "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=module-$v"
    expect etcd "etcd Version: ${v#v}" "$tmp/bin/etcd" --version
    printf 'go.etcd.io/etcd/server/v3 %s\n%s\n' "$v" "$(go version)" >"$tmp/VERSION"
    publish "$tmp" "$ETCD_DIR"
}

build_helm() {
    local tmp v=$HELM_VERSION
    new_tmp
    tmp=$TMP
    # helm's Makefile for a release tag: version=<tag>, metadata empty.
    gobuild helm "$HERE/helm" "$tmp/bin/helm" "$HELM_MODULE/cmd/helm" \
        "-s -w -X $HELM_MODULE/internal/version.version=$v -X $HELM_MODULE/internal/version.metadata= -X $HELM_MODULE/internal/version.gitTreeState=archive"
    expect helm "$v" "$tmp/bin/helm" version --short
    printf '%s %s\n%s\n' "$HELM_MODULE" "$v" "$(go version)" >"$tmp/VERSION"
    publish "$tmp" "$HELM_DIR"
}

build_prometheus() {
    local tmp v=$PROM_VERSION rel
    new_tmp
    tmp=$TMP
    # Module v0.316.0 is Prometheus 3.16.0 (the v3 releases are tagged v0.3xx.y).
    rel=${v#v0.}
    rel=${rel:0:1}.${rel:1}
    # Only the Kubernetes discovery (the tags of plugins/*.go); the web UI's
    # assets are not embedded (the tests use the HTTP API). Prometheus'
    # Makefile sets the version through common/version the same way.
    gobuild prometheus "$HERE/prometheus" "$tmp/bin/prometheus" "$PROM_MODULE/cmd/prometheus" \
        "-s -w -X github.com/prometheus/common/version.Version=$rel -X github.com/prometheus/common/version.Revision=module-$v -X github.com/prometheus/common/version.Branch=module" \
        remove_all_sd,enable_kubernetes_sd
    expect prometheus "version $rel" "$tmp/bin/prometheus" --version
    printf '%s %s\n%s\n' "$PROM_MODULE" "$v" "$(go version)" >"$tmp/VERSION"
    publish "$tmp" "$PROM_DIR"
}

log "cache: $CACHE"
log "versions: kubernetes $K8S_VERSION, etcd $ETCD_VERSION, helm $HELM_VERSION, prometheus $PROM_VERSION ($(go env GOVERSION))"
T0=$(now)
if have_bins "$K8S_DIR" "${K8S_CMDS[@]}"; then log "kubernetes $K8S_VERSION: cached"; else build_k8s; fi
if have_bins "$ETCD_DIR" etcd; then log "etcd $ETCD_VERSION: cached"; else build_etcd; fi
if have_bins "$HELM_DIR" helm; then log "helm $HELM_VERSION: cached"; else build_helm; fi
if have_bins "$PROM_DIR" prometheus; then log "prometheus $PROM_VERSION: cached"; else build_prometheus; fi

# The printed directory: relative symlinks to the component binaries.
new_tmp
tmp=$TMP
for c in "${K8S_CMDS[@]}"; do ln -s "../../components/k8s-$K8S_VERSION/bin/$c" "$tmp/bin/$c"; done
ln -s "../../components/etcd-$ETCD_VERSION/bin/etcd" "$tmp/bin/etcd"
ln -s "../../components/helm-$HELM_VERSION/bin/helm" "$tmp/bin/helm"
ln -s "../../components/prometheus-$PROM_VERSION/bin/prometheus" "$tmp/bin/prometheus-k8s-sd"
publish "$tmp" "$(dirname "$BIN_DIR")"
have_bins "$(dirname "$BIN_DIR")" "${K8S_CMDS[@]}" etcd helm prometheus-k8s-sd || die "internal: $BIN_DIR is incomplete"
log "done in $(elapsed "$T0")s; cache size $(du -sh "$CACHE" | cut -f1)"
echo "$BIN_DIR"
