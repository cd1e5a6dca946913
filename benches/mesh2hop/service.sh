#!/usr/bin/env bash
# benches/mesh2hop/service.sh - CPU cost of Service load balancing on the two-hop path.
#
#   wrk --http--> outbound ward-proxy ==mTLS, HTTP/2==> inbound ward-proxy x3 --http--> app
#   (cpu1)       127.0.0.1:OUT_PORT                     127.0.0.{2,3,4}:IN_PORT   127.0.0.1:APP_PORT
#                \_______________ app, outbound and the three inbounds pinned to cpu0 _______________/
#
# One command builds the binaries (release), installs missing tools with apt, makes a CA with
# `ward ca init`, starts a control plane (--policy-dir holding two Services and their
# EndpointSlices, --endpoints-file naming the inbounds' identity) and measures, interleaved:
#
#   benches/mesh2hop/service.sh [--runs N] [--rows R,..] [--duration S] [--warmup S]
#                               [--out FILE] [--tsv FILE] [--quiet-wait S] [--clean-max PCT]
#                               [--counters] [--perf DIR] [--no-build] [--keep]
#
# Rows (the same five processes in every row: one outbound, three inbounds, one app; only the
# outbound's destination differs):
#   static  outbound --outbound OUT=127.0.0.2:IN_PORT --endpoint 127.0.0.2=ID and certificate
#           files, no control plane: exactly mesh2hop's `ward` row (the direct-to-pod path)
#   pod     the same pod address, the outbound enrolled with the control plane (join token)
#           and learning the pod's identity from discovery (`endpoint` resource)
#   svc1    a Service ClusterIP (198.19.0.11:80) with ONE endpoint (127.0.0.2:IN_PORT):
#           the outbound resolves a `service` resource and balances every request
#   svc3    a Service ClusterIP (198.19.0.13:80) with THREE endpoints (127.0.0.2-4:IN_PORT):
#           power of two choices per request over three pooled HTTP/2 mTLS connections
#   svc3-1p (a diagnostic) svc3's Service, but ONE inbound process listens on all three
#           endpoint addresses (the other two inbounds idle on 127.0.0.5/6): the outbound
#           still balances over three endpoints and connections, the inbound side is one
#           process as in svc1
#
# Each row: fresh proxies, a --warmup (2 s) wrk run, then a --duration (10 s) measured wrk
# run, wrk -t1 -c32 keepalive (CONNS). Columns: req/s, p50/p99 latency, errors, proxy CPU
# µs per request (utime+stime of the outbound and all three inbounds over the measured
# window / requests, from /proc), its outbound and inbound (sum) parts, peak RSS, app CPU
# µs/request, load-generator CPU (% of one cpu), SUT-cpu busy %, oth% = share of the whole
# machine used by processes other than ours during the measured window (other people's
# work, and the hypervisor's steal: the noise), cpu0 steal % (the SUT cpu's time the host gave to
# other guests), the request split over the three inbounds (from their /metrics) and the
# outbound's mTLS handshakes (pooled connections opened).
#
# --runs N interleaves N rounds (every row once per round, the order rotated by one row each
# round) and prints medians; rounds with oth% > --clean-max (10) are left out of a median when
# a cleaner round of that row exists. The ratio svc3/svc1 is also taken per round (the two
# rows of a round ran seconds apart) and its median over clean rounds reported: the goal is
# svc3/svc1 ≤ 1.10 (balancing adds at most 10% proxy CPU per request).
# --quiet-wait S waits up to S s (60) before each row for the machine to be < --clean-max busy.
# --counters also counts, with perf stat over each measured window, context switches and
# syscalls per request of the outbound and of the inbounds (summed), and TCP segments sent per
# request (all hops, whole machine); the syscall tracepoint costs a little CPU per syscall, so
# use it to explain a difference, not for the CPU column.
# --perf DIR samples the SUT cpu (perf record -C SUT_CPU -e cpu-clock, every process on it,
# kernel included) over each measured window and writes DIR/<round>-<row>.txt: the profile by
# process and shared object, then by symbol (it perturbs the numbers: for profiles only).
# --out FILE replaces the generated block between the mesh2hop-service markers in FILE
# (appends it when the markers are missing); --tsv FILE appends the raw per-run rows.
# Environment: SUT_CPU (0), LOADGEN_CPU (1; the idle control plane runs there too),
# BASE_PORT (19500), CONNS (32), WARD_BIN_DIR (target/release), WARD_LOG_LEVEL (warn).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CONF=$HERE/conf

ROWS="static,pod,svc1,svc3,svc3-1p" RUNS=3 DURATION=10 WARMUP=2 OUT="" TSV="" QUIET_WAIT=60 CLEAN_MAX=10
BUILD=1 KEEP=0 COUNTERS=0 PERF=""
SUT_CPU=${SUT_CPU:-0} LOADGEN_CPU=${LOADGEN_CPU:-1} BASE_PORT=${BASE_PORT:-19500} CONNS=${CONNS:-32}
BIN=${WARD_BIN_DIR:-$ROOT/target/release}
WARD_LOG_LEVEL=${WARD_LOG_LEVEL:-warn}
CMDLINE="benches/mesh2hop/service.sh${*:+ $*}"

say() { printf '%s\n' "$*" >&2; }
die() { say "service: error: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }

while (($#)); do
    case $1 in
        --rows) ROWS=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --tsv) TSV=$2; shift 2 ;;
        --quiet-wait) QUIET_WAIT=$2; shift 2 ;;
        --clean-max) CLEAN_MAX=$2; shift 2 ;;
        --counters) COUNTERS=1; shift ;;
        --perf) PERF=$(mkdir -p "$2" && cd "$2" && pwd); shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --keep) KEEP=1; shift ;;
        -h | --help) usage ;;
        *) say "unknown argument: $1"; usage 1 ;;
    esac
done

APP_PORT=$((BASE_PORT + 80)) OUT_PORT=$((BASE_PORT + 1)) IN_PORT=$((BASE_PORT + 443))
CP_PORT=$((BASE_PORT + 12)) CP_ADMIN=$((BASE_PORT + 14)) OUT_ADMIN=$((BASE_PORT + 20))
IN_ADMIN=$((BASE_PORT + 21))   # inbound k (1..3) has admin IN_ADMIN + k - 1
POD_IPS=(127.0.0.2 127.0.0.3 127.0.0.4)
SVC1_IP=198.19.0.11 SVC3_IP=198.19.0.13 SVC_PORT=80
CLIENT_ID=spiffe://cluster.local/ns/default/sa/client
SERVER_ID=spiffe://cluster.local/ns/default/sa/server

# ------------------------------------------------------------------ tools
declare -A PKG=([nginx]=nginx-light [wrk]=wrk [curl]=curl [taskset]=util-linux [ss]=iproute2)
ensure_tools() {
    local missing=() cmd
    for cmd in "${!PKG[@]}"; do command -v "$cmd" >/dev/null || missing+=("${PKG[$cmd]}"); done
    ((${#missing[@]})) || return 0
    say "service: installing ${missing[*]}"
    ((EUID == 0)) || die "need root to apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
}

# ------------------------------------------------------------------ processes
# Every process we start is in PID[name]; we stop them by pid only.
WORK=$(mktemp -d /tmp/mesh2hop-service.XXXXXX)
declare -A PID=()

spawn_on() {  # spawn_on CPU NAME CMD...: run CMD pinned to CPU, output to $WORK/log/NAME.log
    local cpu=$1 name=$2; shift 2
    taskset -c "$cpu" "$@" >"$WORK/log/$name.log" 2>&1 &
    PID[$name]=$!
}
halt() {  # halt NAME: SIGTERM, SIGKILL after 5 s
    local name=$1 pid=${PID[$1]:-} i
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
    unset "PID[$name]"
}
finish() {
    local name
    for name in "${!PID[@]}"; do halt "$name"; done
    if ((KEEP)); then say "service: kept $WORK"; else rm -rf "$WORK"; fi
}
trap finish EXIT
trap 'exit 130' INT TERM

listening() {  # listening NAME IP PORT: wait for IP:PORT to accept; fail if NAME died
    local i
    for ((i = 0; i < 200; i++)); do
        kill -0 "${PID[$1]}" 2>/dev/null || { tail -n 15 "$WORK/log/$1.log" >&2; die "$1 exited on start"; }
        (exec 3<>"/dev/tcp/$2/$3") 2>/dev/null && return 0
        sleep 0.05
    done
    die "$1 does not listen on $2:$3"
}
ready() {  # ready NAME ADMIN_PORT: wait (30 s) for http://127.0.0.1:ADMIN_PORT/ready to be 200
    local i
    for ((i = 0; i < 600; i++)); do
        kill -0 "${PID[$1]}" 2>/dev/null || { tail -n 20 "$WORK/log/$1.log" >&2; die "$1 exited on start"; }
        [[ $(curl -s -o /dev/null -w '%{http_code}' -m 1 "http://127.0.0.1:$2/ready") == 200 ]] && return 0
        sleep 0.05
    done
    tail -n 20 "$WORK/log/$1.log" >&2
    die "$1 is not ready after 30 s"
}

# ------------------------------------------------------------------ mesh set-up
ward_cli() { "$BIN/ward" "$@"; }

setup_mesh() {
    local data=$WORK/cp/data pol=$WORK/cp/policies ip
    mkdir -p "$pol" "$WORK/pki"
    ward_cli ca init --data-dir "$data" --trust-domain cluster.local >"$WORK/log/ca-init.log" 2>&1 ||
        { cat "$WORK/log/ca-init.log" >&2; die "ward ca init failed"; }
    CA_BUNDLE=$data/ca/ca.pem
    [[ -s $CA_BUNDLE ]] || die "no $CA_BUNDLE after ward ca init"
    # Static identities (certificate files) for the inbounds and the `static` row's outbound
    local who id
    for who in server client; do
        id=$SERVER_ID; [[ $who == client ]] && id=$CLIENT_ID
        ward_cli ca issue --data-dir "$data" --spiffe-id "$id" --cert "$WORK/pki/$who.pem" \
            --key "$WORK/pki/$who-key.pem" --bundle "$WORK/pki/bundle.pem" --ttl 24h \
            >>"$WORK/log/ca-issue.log" 2>&1 || { cat "$WORK/log/ca-issue.log" >&2; die "ward ca issue failed"; }
    done
    # The inbounds do not register (explicit mode): the control plane knows their identity
    # from the endpoints file, and fills it into the Services' endpoints.
    {
        printf '{"endpoints": ['
        local sep=""
        for ip in "${POD_IPS[@]}"; do printf '%s{"address": "%s", "spiffe_id": "%s"}' "$sep" "$ip" "$SERVER_ID"; sep=", "; done
        printf ']}\n'
    } >"$WORK/cp/endpoints.json"
    # Two Services in the policy directory (the directory source reads v1/Service and
    # discovery.k8s.io/v1/EndpointSlice documents); no appProtocol: detected, as for a pod
    {
        service_yaml app-one "$SVC1_IP" "${POD_IPS[0]}"
        echo "---"
        service_yaml app-three "$SVC3_IP" "${POD_IPS[@]}"
    } >"$pol/services.yaml"
    spawn_on "$LOADGEN_CPU" cp "$BIN/ward-control-plane" --data-dir "$data" --trust-domain cluster.local \
        --listen "127.0.0.1:$CP_PORT" --admin-listen "127.0.0.1:$CP_ADMIN" --policy-dir "$pol" \
        --endpoints-file "$WORK/cp/endpoints.json" --log-level info
    ready cp "$CP_ADMIN"
}
service_yaml() {  # service_yaml NAME CLUSTER_IP ENDPOINT_IP...
    local name=$1 vip=$2 ip; shift 2
    cat <<EOF
apiVersion: v1
kind: Service
metadata: {name: $name, namespace: default}
spec:
  clusterIP: $vip
  ports:
    - {name: http, port: $SVC_PORT, targetPort: $IN_PORT}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: $name-1
  namespace: default
  labels: {kubernetes.io/service-name: $name}
addressType: IPv4
ports:
  - {name: http, port: $IN_PORT}
endpoints:
EOF
    for ip in "$@"; do
        printf '  - addresses: [%s]\n    conditions: {ready: true}\n' "$ip"
    done
}

start_app() {
    local DIR=$WORK/app text
    mkdir -p "$DIR/tmp"
    # mesh2hop's app: nginx answering 200 "ok" (its h2c listener unused here)
    text=$(cat "$CONF/nginx-common.conf" "$CONF/app.conf")
    text=${text//@DIR@/$DIR}; text=${text//@APP_PORT@/$APP_PORT}; text=${text//@APP_H2C_PORT@/$((BASE_PORT + 82))}
    printf '%s\n' "$text" >"$DIR/nginx.conf"
    spawn_on "$SUT_CPU" app nginx -p "$DIR" -c "$DIR/nginx.conf" -e "$DIR/error.log"
    listening app 127.0.0.1 "$APP_PORT"
}

# start_proxies ROW: three inbounds (in1..in3), then the outbound (out)
start_proxies() {
    local row=$1 k dest ip listen=()
    for k in 1 2 3; do
        listen=(--inbound "${POD_IPS[k - 1]}:$IN_PORT=$APP_PORT")
        if [[ $row == svc3-1p ]]; then   # in1 serves every endpoint address, in2/in3 idle elsewhere
            listen=()
            if ((k == 1)); then
                for ip in "${POD_IPS[@]}"; do listen+=(--inbound "$ip:$IN_PORT=$APP_PORT"); done
            else
                listen=(--inbound "127.0.0.$((k + 3)):$IN_PORT=$APP_PORT")
            fi
        fi
        spawn_on "$SUT_CPU" "in$k" "$BIN/ward-proxy" run --workers 1 --admin "127.0.0.1:$((IN_ADMIN + k - 1))" \
            --log-level "$WARD_LOG_LEVEL" "${listen[@]}" --allow-peer "$CLIENT_ID" \
            --cert "$WORK/pki/server.pem" --key "$WORK/pki/server-key.pem" --ca "$WORK/pki/bundle.pem"
    done
    for k in 1 2 3; do listening "in$k" "${POD_IPS[k - 1]}" "$IN_PORT"; done
    local common=(run --workers 1 --admin "127.0.0.1:$OUT_ADMIN" --log-level "$WARD_LOG_LEVEL")
    case $row in
        static)
            spawn_on "$SUT_CPU" out "$BIN/ward-proxy" "${common[@]}" \
                --outbound "127.0.0.1:$OUT_PORT=${POD_IPS[0]}:$IN_PORT" --endpoint "${POD_IPS[0]}=$SERVER_ID" \
                --cert "$WORK/pki/client.pem" --key "$WORK/pki/client-key.pem" --ca "$WORK/pki/bundle.pem" ;;
        pod | svc1 | svc3 | svc3-1p)
            case $row in
                pod) dest=${POD_IPS[0]}:$IN_PORT ;;
                svc1) dest=$SVC1_IP:$SVC_PORT ;;
                svc3 | svc3-1p) dest=$SVC3_IP:$SVC_PORT ;;
            esac
            local token
            token=$(ward_cli token create --data-dir "$WORK/cp/data" --spiffe-id "$CLIENT_ID" --ttl 10m) ||
                die "ward token create failed"
            spawn_on "$SUT_CPU" out env WARD_JOIN_TOKEN="$token" "$BIN/ward-proxy" "${common[@]}" \
                --outbound "127.0.0.1:$OUT_PORT=$dest" --control-plane "127.0.0.1:$CP_PORT" \
                --ca "$CA_BUNDLE" --spiffe-id "$CLIENT_ID" --label app=client ;;
        *) die "unknown row $row" ;;
    esac
    listening out 127.0.0.1 "$OUT_PORT"
    ready out "$OUT_ADMIN"
}

# ------------------------------------------------------------------ counters
ticks() {  # ticks PID: utime+stime (clock ticks) of the process, all threads
    local s f
    s=$(<"/proc/$1/stat") || { echo 0; return; }
    read -ra f <<<"${s##*) }"
    echo $((f[11] + f[12]))
}
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
lg_ticks() {  # reaped children of this shell (the load generator): cutime+cstime
    local s f
    s=$(<"/proc/$$/stat")
    read -ra f <<<"${s##*) }"
    echo $((f[13] + f[14]))
}
stat_cpu() {  # "total idle" jiffies of the whole machine, then "total idle steal" of the SUT cpu
    awk -v sut="cpu$SUT_CPU" '
        function tot() { t = 0; for (i = 2; i <= 9; i++) t += $i; return t }
        $1 == "cpu" { a = tot(); ai = $5 + $6 }
        $1 == sut { s = tot(); si = $5 + $6; ss = $9 }
        END { print a, ai, s, si, ss }' /proc/stat
}
snapshot() {  # out in1 in2 in3 app cp loadgen all_total all_idle sut_total sut_idle sut_steal
    echo "$(ticks "${PID[out]}") $(ticks "${PID[in1]}") $(ticks "${PID[in2]}") $(ticks "${PID[in3]}")" \
        "$(ticks "${PID[app]}") $(ticks "${PID[cp]}") $(lg_ticks) $(stat_cpu)"
}
busy_pct() {  # busy share of the whole machine over 1 s (while we idle: other people's work)
    local a b
    read -ra a < <(stat_cpu); sleep 1; read -ra b < <(stat_cpu)
    local dt=$((b[0] - a[0])) di=$((b[1] - a[1]))
    echo $((dt > 0 ? 100 * (dt - di) / dt : 0))
}
wait_quiet() {
    local until=$((SECONDS + QUIET_WAIT)) b
    b=$(busy_pct)
    while ((b > CLEAN_MAX && SECONDS < until)); do b=$(busy_pct); done
    BG=$b
}
# metric ADMIN_PORT NAME [LABEL_MATCH]: sum of the samples of NAME (whose labels contain LABEL_MATCH)
metric() {
    curl -s -m 2 "http://127.0.0.1:$1/metrics" | awk -v n="$2" -v m="${3:-}" '
        $1 !~ /^#/ { name = $1; sub(/\{.*/, "", name)
                     if (name == n && (m == "" || index($1, m))) s += $NF }
        END { printf "%.0f\n", s }'
}

out_segs() { awk '$1 == "Tcp:" { if (++n == 1) { for (i = 2; i <= NF; i++) if ($i == "OutSegs") c = i } else print $c }' /proc/net/snmp; }
counters_start() {  # perf stat on the outbound, and on the three inbounds together
    SEGS0=$(out_segs)
    taskset -c "$LOADGEN_CPU" perf stat -x, -e context-switches,raw_syscalls:sys_enter -p "${PID[out]}" \
        -o "$WORK/log/$1.stat-out" &
    PID[pstat-out]=$!
    taskset -c "$LOADGEN_CPU" perf stat -x, -e context-switches,raw_syscalls:sys_enter \
        -p "${PID[in1]},${PID[in2]},${PID[in3]}" -o "$WORK/log/$1.stat-in" &
    PID[pstat-in]=$!
    sleep 0.3
}
counters_stop() {  # COUNTS="cs_out sc_out cs_in sc_in segments" (totals over the window)
    local segs side
    segs=$(($(out_segs) - SEGS0))
    for side in out in; do
        kill -INT "${PID[pstat-$side]}" 2>/dev/null || true
        wait "${PID[pstat-$side]}" 2>/dev/null || true
        unset "PID[pstat-$side]"
    done
    COUNTS="$(for side in out in; do
        awk -F, '$1 ~ /^[0-9]/ && $3 == "context-switches" { c = $1 } $1 ~ /^[0-9]/ && $3 ~ /sys_enter/ { s = $1 }
            END { printf "%d %d ", c, s }' "$WORK/log/$1.stat-$side"
    done)$segs"
}

profile_start() {
    taskset -c "$LOADGEN_CPU" perf record -q -e cpu-clock -F 2000 -C "$SUT_CPU" -o "$PERF/$1.data" \
        >"$WORK/log/perf-$1.log" 2>&1 &
    PID[perf]=$!
    sleep 0.3
}
profile_stop() {
    kill -INT "${PID[perf]}" 2>/dev/null || true
    wait "${PID[perf]}" 2>/dev/null || true
    unset 'PID[perf]'
    {
        echo "# by process and shared object"
        perf report -q -i "$PERF/$1.data" --stdio --no-children --sort comm,dso --percent-limit 0.5
        echo "# by symbol"
        perf report -q -i "$PERF/$1.data" --stdio --no-children --sort comm,dso,symbol --percent-limit 0.4
    } >"$PERF/$1.txt" 2>/dev/null || true
}

# ------------------------------------------------------------------ load
load() {  # load PORT SECONDS OUTFILE
    taskset -c "$LOADGEN_CPU" wrk -t1 -c"$CONNS" -d"${2}s" --timeout 10s --latency "http://127.0.0.1:$1/" >"$3" 2>&1 &
    PID[loadgen]=$!
    wait "${PID[loadgen]}" || true
    unset 'PID[loadgen]'
}
parse_wrk() {  # parse_wrk FILE -> "rps p50_ms p99_ms requests errors"
    awk 'function ms(v) { return v ~ /us$/ ? v / 1000 : v ~ /ms$/ ? v + 0 : v * 1000 }
        $1 == "50%" { p50 = ms($2) } $1 == "99%" { p99 = ms($2) }
        /requests in/ { n = $1 } /^Requests\/sec/ { r = $2 }
        /Socket errors/ { gsub(/,/, ""); e += $4 + $6 + $8 + $10 } /Non-2xx/ { e += $NF }
        END { printf "%.0f %.3f %.3f %d %d\n", r, p50, p99, n, e }' "$1"
}

# ------------------------------------------------------------------ one row
COLS="run row rps p50_ms p99_ms requests errors proxy_us out_us in_us out_hwm_mib in_hwm_mib app_us lg_pct sut_pct oth_pct bg_pct split handshakes retries cs_out sc_out cs_in sc_in segs steal_pct"
row() {  # row RUN ROW: measure, print, append to $WORK/rows.tsv
    local run=$1 name=$2 logf=$WORK/log/$1-$2 before after body k i
    start_proxies "$name"
    # the path must answer "ok" (several requests: every endpoint of svc3 is used)
    for ((i = 0; i < 6; i++)); do
        body=$(curl -s -m 5 "http://127.0.0.1:$OUT_PORT/" || true)
        if [[ $body != ok ]]; then
            say "  $name: the path answered '${body:0:120}', not 'ok'; row skipped (logs: --keep)"
            for k in out in1 in2 in3; do say "--- $k:"; tail -n 8 "$WORK/log/$k.log" >&2; done
            for k in out in1 in2 in3; do halt "$k"; done
            return 0
        fi
    done
    wait_quiet
    load "$OUT_PORT" "$WARMUP" "$logf.warmup"
    COUNTS="- - - - -"
    ((COUNTERS)) && counters_start "$run-$name"
    [[ -z $PERF ]] || profile_start "$run-$name"
    before=$(snapshot)
    load "$OUT_PORT" "$DURATION" "$logf"
    after=$(snapshot)
    [[ -z $PERF ]] || profile_stop "$run-$name"
    ((COUNTERS)) && counters_stop "$run-$name"
    local hwm split hs retries
    hwm="$(hwm_kb "${PID[out]}") $(for k in in1 in2 in3; do hwm_kb "${PID[$k]}"; done | sort -n | tail -n 1)"
    split=$(for k in 1 2 3; do metric $((IN_ADMIN + k - 1)) ward_http_requests_total 'direction="inbound"'; done |
        awk '{ v[NR] = $1; s += $1 } END { for (i = 1; i <= NR; i++) printf "%s%.0f", (i > 1 ? "/" : ""), (s ? 100 * v[i] / s : 0) }')
    hs=$(metric "$OUT_ADMIN" ward_tls_handshakes_total 'direction="outbound"')
    retries=$(metric "$OUT_ADMIN" ward_outbound_retries_total)
    for k in out in1 in2 in3; do halt "$k"; done
    echo "$run $name $(parse_wrk "$logf") $hwm $before $after $BG $(getconf CLK_TCK) $(nproc) $split $hs $retries $COUNTS" | awk '
        { run = $1; name = $2; rps = $3; p50 = $4; p99 = $5; n = $6; err = $7; ho = $8; hi = $9
          for (i = 1; i <= 12; i++) d[i] = $(i + 21) - $(i + 9)
          bg = $34; hz = $35; ncpu = $36; sp = $37; hs = $38; rt = $39
          cnt = ""; for (i = 40; i <= 44; i++) cnt = cnt "\t" ($i == "-" ? "-" : sprintf("%.2f", $i / n))
          cnt = cnt sprintf("\t%.1f", d[10] ? 100 * d[12] / d[10] : 0)
          if (n <= 0) { print "no requests" > "/dev/stderr"; exit 1 }
          # d: 1 out 2-4 in1-3 5 app 6 cp 7 loadgen (ticks); 8 all 9 all idle 10 sut 11 sut idle 12 sut steal (jiffies, 100/s)
          ins = d[2] + d[3] + d[4]
          ours = (d[1] + ins + d[5] + d[6] + d[7]) * 100 / hz
          oth = d[8] ? 100 * (d[8] - d[9] - ours) / d[8] : 0; if (oth < 0) oth = 0
          printf "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.0f\t%.0f\t%.0f\t%s\t%s\t%s\t%s%s\n",
              run, name, rps, p50, p99, n, err, (d[1] + ins) / hz / n * 1e6, d[1] / hz / n * 1e6, ins / hz / n * 1e6,
              ho / 1024, hi / 1024, d[5] / hz / n * 1e6, 100 * (d[7] / hz) / (d[8] / 100 / ncpu),
              d[10] ? 100 * (d[10] - d[11]) / d[10] : 0, oth, bg, sp, hs, rt, cnt }' >>"$WORK/rows.tsv"
    tail -n 1 "$WORK/rows.tsv" | awk -F'\t' '{ printf "  run %s %-6s %7s req/s  p50 %5.2f ms  p99 %5.2f ms  err %s  proxy %s us/req (out %s + in %s)  app %s  split %s  mTLS conns %s  retries %s  lg %s%%  sut %s%%  oth %s%%  steal %s%%%s\n",
        $1, $2, $3, $4, $5, $7, $8, $9, $10, $13, $18, $19, $20, $14, $15, $16, $26,
        $21 == "-" ? "" : sprintf("  per req: out cs %s sys %s, in cs %s sys %s, segs %s", $21, $22, $23, $24, $25) }' >&2
}

# ------------------------------------------------------------------ summary (markdown)
summary() {
    awk -F'\t' -v clean_max="$CLEAN_MAX" -v sut="$SUT_CPU" '
        function med(a, c,   i, j, t) {
            for (i = 2; i <= c; i++) for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
            return c % 2 ? a[(c + 1) / 2] : (a[c / 2] + a[c / 2 + 1]) / 2
        }
        function mcol(k, col,   a, i) { for (i = 1; i <= cnt[k]; i++) a[i] = val[k, i, col]; return med(a, cnt[k]) }
        function thou(x,   s) { x = sprintf("%.0f", x); s = ""; while (length(x) > 3) { s = " " substr(x, length(x) - 2) s; x = substr(x, 1, length(x) - 3) } return x s }
        {
            k = $2; if (!(k in all)) { order[++nk] = k; all[k] = 0 }
            all[k]++; clean[k] += ($16 <= clean_max); rows[k, all[k]] = $0
            px[$1, k] = $8; okrun[$1, k] = ($16 <= clean_max); if (!($1 in seen)) { runs[++nr] = $1; seen[$1] = 1 }
        }
        END {
            for (o = 1; o <= nk; o++) {
                k = order[o]; use_all = clean[k] == 0
                for (r = 1; r <= all[k]; r++) {
                    split(rows[k, r], f, "\t")
                    if (!use_all && f[16] > clean_max) continue
                    c = ++cnt[k]; for (i = 1; i <= 26; i++) val[k, c, i] = f[i]
                    if (c == 1 || f[8] + 0 < lo[k]) lo[k] = f[8] + 0
                    if (f[8] + 0 > hi[k]) hi[k] = f[8] + 0
                    if (f[16] + 0 > othmax[k]) othmax[k] = f[16] + 0
                }
            }
            hc = val[order[1], 1, 21] != "-" && val[order[1], 1, 21] != ""
            printf "| row | req/s | p50 ms | p99 ms | proxy CPU µs/req, out+in (median [min–max]) | out µs/req | in µs/req (3 inbounds) | vs svc1 | app µs/req | peak RSS MiB out/in | split over inbounds %% | mTLS conns | retries | errors | load-gen CPU %% | other load %% (median/max) | cpu%d steal %% | runs used |%s\n",
                sut, hc ? " ctx switches/req out / in | syscalls/req out / in | TCP segments/req |" : ""
            print "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" (hc ? "---|---|---|" : "")
            base = ("svc1" in cnt) ? mcol("svc1", 8) : 0
            for (o = 1; o <= nk; o++) {
                k = order[o]
                printf "| %s | %s | %.2f | %.2f | **%.1f** [%.1f–%.1f] | %.1f | %.1f | %s | %.1f | %.1f / %.1f | %s | %s | %s | %s | %.0f | %.0f / %.0f | %.1f | %d of %d%s |",
                    k, thou(mcol(k, 3)), mcol(k, 4), mcol(k, 5), mcol(k, 8), lo[k], hi[k], mcol(k, 9), mcol(k, 10),
                    base ? sprintf("%.2f", mcol(k, 8) / base) : "–", mcol(k, 13), mcol(k, 11), mcol(k, 12),
                    val[k, 1, 18], mcol(k, 19), mcol(k, 20), mcol(k, 7), mcol(k, 14), mcol(k, 16), othmax[k], mcol(k, 26), cnt[k], all[k],
                    clean[k] == 0 ? " (none clean)" : ""
                if (hc) printf " %.2f / %.2f | %.2f / %.2f | %.2f |", mcol(k, 21), mcol(k, 23), mcol(k, 22), mcol(k, 24), mcol(k, 25)
                printf "\n"
            }
            # paired ratios: svc3/svc1 (and svc1/pod) within each round
            n3 = 0; s = ""
            for (r = 1; r <= nr; r++) {
                x = runs[r]
                if (((x, "svc3") in px) && ((x, "svc1") in px) && px[x, "svc1"] > 0) {
                    q = px[x, "svc3"] / px[x, "svc1"]; cl = okrun[x, "svc3"] && okrun[x, "svc1"]
                    s = s sprintf("%s%.3f%s", s == "" ? "" : ", ", q, cl ? "" : " (noisy)")
                    if (cl) ratios[++n3] = q; else noisy[++nn] = q
                }
            }
            if (n3 == 0) for (i = 1; i <= nn; i++) ratios[++n3] = noisy[i]
            print ""
            if (n3) {
                m = med(ratios, n3)
                printf "Proxy CPU per request, svc3 / svc1, per round: %s; **median %.3f (%+.1f%%)**; ratio of the medians above %.3f. Goal ≤ 1.10: **%s**.\n",
                    s, m, 100 * (m - 1), base ? mcol("svc3", 8) / base : 0, m <= 1.10 ? "met" : "not met"
            }
            # the other rows against svc1 (svc1 against pod), per round
            for (o = 1; o <= nk; o++) {
                k = order[o]; if (k == "svc3") continue
                ref = k == "svc1" ? "pod" : "svc1"; if (!(ref in cnt)) continue
                s = ""; n1 = 0; delete r1
                for (r = 1; r <= nr; r++) {
                    x = runs[r]
                    if (((x, k) in px) && ((x, ref) in px) && px[x, ref] > 0) {
                        q = px[x, k] / px[x, ref]; cl = okrun[x, k] && okrun[x, ref]
                        s = s sprintf("%s%.3f%s", s == "" ? "" : ", ", q, cl ? "" : " (noisy)")
                        if (cl) r1[++n1] = q
                    }
                }
                if (s != "") printf "%s / %s per round: %s%s.\n", k, ref, s, n1 ? sprintf("; median over clean rounds %.3f", med(r1, n1)) : ""
            }
        }' "$WORK/rows.tsv"
}

versions() {
    echo "ward-proxy @ $(git -C "$ROOT" log -1 --format=%h -- proxy control-plane api identity policy Cargo.lock 2>/dev/null || echo '?'), $(nginx -v 2>&1 | sed 's/^nginx version: //'), $(wrk -v 2>&1 | awk 'NR == 1 {print $1, $2}'), $(rustc --version 2>/dev/null | cut -d' ' -f1-2)"
}
machine() {
    echo "$(nproc) cpus ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), kernel $(uname -r)"
}

write_block() {  # write_block FILE: the generated block between the markers (appended if absent)
    local file=$1 block=$WORK/block.md tmp
    {
        echo "<!-- mesh2hop-service:begin (generated by benches/mesh2hop/service.sh; edits inside are overwritten) -->"
        echo "Generated $(date -u '+%Y-%m-%d %H:%M UTC') by \`$CMDLINE\`: $RUNS interleaved round(s) (row order rotated each round), each row ${DURATION} s of wrk -t1 -c$CONNS keepalive after a ${WARMUP} s warm-up, with fresh proxies."
        echo "Machine: $(machine); SUT (app, outbound and three inbounds) on cpu$SUT_CPU, load generator (and the idle control plane) on cpu$LOADGEN_CPU."
        echo "Versions: $(versions)."
        echo
        cat "$WORK/summary.md"
        echo
        echo "Medians over rounds with other load ≤ ${CLEAN_MAX}% of the machine when any exist (\"runs used\"), else over all rounds."
        echo "<!-- mesh2hop-service:end -->"
    } >"$block"
    if [[ -f $file ]] && grep -q '^<!-- mesh2hop-service:begin' "$file"; then
        tmp=$(mktemp)
        awk -v block="$block" '/^<!-- mesh2hop-service:begin/ { while ((getline l < block) > 0) print l; skip = 1; next }
            /^<!-- mesh2hop-service:end -->/ { skip = 0; next } !skip' "$file" >"$tmp"
        cat "$tmp" >"$file"; rm -f "$tmp"
    else
        { [[ -s $file ]] && echo; cat "$block"; } >>"$file"
    fi
    say "service: updated $file"
}

# ------------------------------------------------------------------ main
main() {
    local rows=() run i n port
    ensure_tools
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    if ((BUILD)); then
        say "service: cargo build --release -p ward-proxy -p ward-control-plane -p ward"
        (cd "$ROOT" && cargo build --release -p ward-proxy -p ward-control-plane -p ward >&2) || die "build failed"
    fi
    for i in ward ward-proxy ward-control-plane; do [[ -x $BIN/$i ]] || die "$BIN/$i is missing (build it, or drop --no-build)"; done
    "$BIN/ward-proxy" run --help 2>/dev/null | grep -q -- --outbound || die "$BIN/ward-proxy has no 'run --outbound'"
    if ((COUNTERS)) || [[ -n $PERF ]]; then command -v perf >/dev/null || die "--counters/--perf need perf (apt-get install linux-perf)"; fi
    read -ra rows <<<"${ROWS//,/ }"
    for port in "127.0.0.1:$APP_PORT" "127.0.0.1:$OUT_PORT" "127.0.0.1:$CP_PORT" "127.0.0.1:$CP_ADMIN" \
        "127.0.0.1:$OUT_ADMIN" "127.0.0.1:$IN_ADMIN" "127.0.0.1:$((IN_ADMIN + 1))" "127.0.0.1:$((IN_ADMIN + 2))" \
        "${POD_IPS[0]}:$IN_PORT" "${POD_IPS[1]}:$IN_PORT" "${POD_IPS[2]}:$IN_PORT"; do
        [[ -z $(ss -Hltn "sport = :${port##*:}") ]] || die "port ${port##*:} is busy (set BASE_PORT)"
    done
    mkdir -p "$WORK/log"
    : >"$WORK/rows.tsv"
    setup_mesh
    start_app
    say "service: $(versions)"
    say "service: $(machine); rows ${rows[*]}; $RUNS round(s) of ${DURATION}s after ${WARMUP}s warm-up"
    n=${#rows[@]}
    for ((run = 1; run <= RUNS; run++)); do
        for ((i = 0; i < n; i++)); do
            row "$run" "${rows[(i + run - 1) % n]}"
        done
    done
    [[ -s $WORK/rows.tsv ]] || die "no row was measured"
    summary >"$WORK/summary.md"
    echo
    cat "$WORK/summary.md"
    if [[ -n $TSV ]]; then
        [[ -s $TSV ]] || echo "#${COLS// /$'\t'}" >"$TSV"
        cat "$WORK/rows.tsv" >>"$TSV"
    fi
    [[ -z $OUT ]] || write_block "$OUT"
}

main
