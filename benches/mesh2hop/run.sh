#!/usr/bin/env bash
# benches/mesh2hop/run.sh - Ward's two-hop sidecar mTLS benchmark.
#
#   wrk / h2load --http--> outbound proxy ==mTLS, TLS 1.3==> inbound proxy --http--> app
#     (cpu1)              127.0.0.1:OUT_PORT                 127.0.0.1:IN_PORT     127.0.0.1:APP_PORT
#                         \____________ app and both proxies pinned to cpu0 ____________/
#
# One command builds ward-proxy (release), installs missing tools with apt, makes a
# throwaway PKI and measures every kind, mode and load tool:
#
#   benches/mesh2hop/run.sh [--runs N] [--kinds K,..] [--modes M,..] [--tools T,..]
#                           [--duration S] [--warmup S] [--out FILE] [--tsv FILE]
#                           [--quiet-wait S] [--clean-max PCT] [--perf DIR] [--no-build] [--keep]
#
# Kinds:  direct   load generator -> app (ceiling, no proxies)
#         nginx    nginx -> nginx        (HTTP/1.1 over mTLS; the inbound checks the chain only)
#         haproxy  haproxy -> haproxy    (HTTP/1.1 over mTLS; the inbound byte-matches the URI SAN)
#         ward     ward-proxy -> ward-proxy, Ward's default (HTTP/2 over mTLS, SPIFFE checks)
#         ward-h1  as ward with --upstream-protocol http1
#         (the ward rows run when target/release/ward-proxy has the `run` subcommand)
# Modes:  keepalive  wrk -t1 -c32, h2load -t1 -c8 -m4 (h2c prior knowledge on the first hop);
#                    the proxies pool their upstream connections
#         churn      wrk with "Connection: close"; the outbound opens a new TCP connection and
#                    does a full mTLS handshake per request (no pooling, no session resumption);
#                    inbound -> app stays pooled
#
# Each row: proxies started fresh, a --warmup (2 s) load run, then a --duration (10 s)
# measured load run. Columns: req/s, p50/p99 latency (closed loop, 32 in flight), errors,
# new TCP connections per request (/proc/net/snmp PassiveOpens, all hops), proxy CPU
# µs per request (utime+stime of both proxies over the measured window / requests),
# peak RSS (VmHWM) per proxy, app CPU µs/request, load-generator CPU (% of one cpu),
# SUT-cpu busy %, and oth% = the share of the whole machine used by processes other than
# ours during the measured window (other people's work: the noise).
#
# --runs N interleaves N rounds (every kind once per round) and prints medians; rounds with
# oth% > --clean-max (10) are left out of a median when a cleaner round of that row exists.
# --quiet-wait S waits up to S s before each row for the machine to be < --clean-max busy.
# --out FILE replaces the generated block between the mesh2hop markers in FILE (appends
# it when the markers are missing); --tsv FILE appends the raw per-run rows.
# --perf DIR profiles both proxies during each measured window (perf record -e cpu-clock,
# unpinned, so it perturbs the numbers: use it for profiles, not for the table) and writes
# DIR/<run>-<kind>-<mode>-<tool>-{out,in}.txt (flat profile by shared object and symbol).
# Environment: SUT_CPU (0), LOADGEN_CPU (1), BASE_PORT (19000), CONNS (32),
# H2LOAD_ARGS ("-t1 -c8 -m4"), WARD_BIN (target/release/ward-proxy), WARD_LOG_LEVEL (warn:
# no per-request access log, like nginx and HAProxy with logging off; "info" is Ward's default).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CONF=$HERE/conf

KINDS="direct,nginx,haproxy,ward,ward-h1" MODES="keepalive,churn" TOOLS="wrk,h2load"
RUNS=1 DURATION=10 WARMUP=2 OUT="" TSV="" QUIET_WAIT=0 CLEAN_MAX=10 BUILD=1 KEEP=0 PERF=""
SUT_CPU=${SUT_CPU:-0} LOADGEN_CPU=${LOADGEN_CPU:-1} BASE_PORT=${BASE_PORT:-19000}
CONNS=${CONNS:-32} H2LOAD_ARGS=${H2LOAD_ARGS:-"-t1 -c8 -m4"}
WARD_BIN=${WARD_BIN:-$ROOT/target/release/ward-proxy}
WARD_LOG_LEVEL=${WARD_LOG_LEVEL:-warn}
CMDLINE="benches/mesh2hop/run.sh${*:+ $*}"

say() { printf '%s\n' "$*" >&2; }
die() { say "mesh2hop: error: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }

while (($#)); do
    case $1 in
        --kinds | --only) KINDS=$2; shift 2 ;;
        --modes) MODES=$2; shift 2 ;;
        --tools) TOOLS=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --tsv) TSV=$2; shift 2 ;;
        --quiet-wait) QUIET_WAIT=$2; shift 2 ;;
        --clean-max) CLEAN_MAX=$2; shift 2 ;;
        --perf) PERF=$(mkdir -p "$2" && cd "$2" && pwd); shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --keep) KEEP=1; shift ;;
        -h | --help) usage ;;
        *) say "unknown argument: $1"; usage 1 ;;
    esac
done

APP_PORT=$((BASE_PORT + 80)) APP_H2C_PORT=$((BASE_PORT + 82))
OUT_PORT=$((BASE_PORT + 1)) OUT_H2C_PORT=$((BASE_PORT + 2)) IN_PORT=$((BASE_PORT + 443))
CLIENT_ID=spiffe://cluster.local/ns/default/sa/client
SERVER_ID=spiffe://cluster.local/ns/default/sa/server

# ------------------------------------------------------------------ tools
# command -> Debian package; missing ones are installed (the machine is fresh each session)
declare -A PKG=([nginx]=nginx-light [haproxy]=haproxy [wrk]=wrk [h2load]=nghttp2-client
    [openssl]=openssl [curl]=curl [taskset]=util-linux [ss]=iproute2)
ensure_tools() {
    local missing=() cmd
    for cmd in "${!PKG[@]}"; do command -v "$cmd" >/dev/null || missing+=("${PKG[$cmd]}"); done
    ((${#missing[@]})) || return 0
    say "mesh2hop: installing ${missing[*]}"
    ((EUID == 0)) || die "need root to apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
    # the nginx package starts a system nginx on :80; it is not ours and not in the way
}

# ------------------------------------------------------------------ processes
# Every process we start is in PID[name]; we stop them by pid only.
WORK=$(mktemp -d /tmp/mesh2hop-ward.XXXXXX)
PKI=$WORK/pki
declare -A PID=()

spawn() {  # spawn NAME CMD...: run CMD on the SUT cpu, output to $WORK/log/NAME.log
    local name=$1; shift
    taskset -c "$SUT_CPU" "$@" >"$WORK/log/$name.log" 2>&1 &
    PID[$name]=$!
}

halt() {  # halt NAME: SIGTERM the process (and direct children), SIGKILL after 5 s
    local name=$1 pid=${PID[$1]:-} kid i
    [[ -n $pid ]] || return 0
    for kid in $(ps -o pid= --ppid "$pid" 2>/dev/null); do kill -TERM "$kid" 2>/dev/null || true; done
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
    unset "PID[$name]"
}

finish() {
    local name
    for name in "${!PID[@]}"; do halt "$name"; done
    if ((KEEP)); then say "mesh2hop: kept $WORK"; else rm -rf "$WORK"; fi
}
trap finish EXIT
trap 'exit 130' INT TERM

listening() {  # listening NAME PORT: wait for PORT to accept; fail if NAME died
    local i
    for ((i = 0; i < 200; i++)); do
        kill -0 "${PID[$1]}" 2>/dev/null || { tail -n 15 "$WORK/log/$1.log" >&2; die "$1 exited on start"; }
        (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && return 0
        sleep 0.05
    done
    die "$1 does not listen on $2"
}

# render TEMPLATE... > file: concatenate templates, replacing @VAR@ with $VAR
render() {
    local text var
    text=$(cat "$@")
    for var in DIR PKI APP_PORT APP_H2C_PORT OUT_PORT OUT_H2C_PORT IN_PORT UPSTREAM_POOL \
        CONNECTION_HEADER SESSION_REUSE HTTP_REUSE SSL_REUSE CLIENT_URI_DER_HEX; do
        text=${text//@$var@/${!var-}}
    done
    [[ $text != *@[A-Z_]*@* ]] || die "unrendered placeholder in $*"
    printf '%s\n' "$text"
}

# ------------------------------------------------------------------ PKI (openssl)
make_pki() {
    mkdir -p "$PKI"
    openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/ca-key.pem"
    openssl req -x509 -new -key "$PKI/ca-key.pem" -subj "/O=ward-bench/CN=throwaway mesh CA" \
        -days 3 -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$PKI/ca.pem" 2>/dev/null
    leaf client "$CLIENT_ID"
    leaf server "$SERVER_ID"
}
leaf() {  # leaf NAME SPIFFE_ID: ECDSA P-256 X.509-SVID with a CN (nginx verifies names by CN)
    local name=$1 id=$2
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/$name-key.pem"
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=serverAuth,clientAuth" "subjectAltName=URI:$id" \
        "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid" >"$PKI/$name.ext"
    openssl req -new -key "$PKI/$name-key.pem" -subj "/O=ward-bench/CN=$name" -out "$PKI/$name.csr"
    openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.pem" -CAkey "$PKI/ca-key.pem" \
        -CAcreateserial -days 2 -extfile "$PKI/$name.ext" -out "$PKI/$name.pem" 2>/dev/null
    cat "$PKI/$name.pem" "$PKI/$name-key.pem" >"$PKI/$name-bundle.pem"   # HAProxy's crt
}
# hex of the DER URI GeneralName ([6] IA5String) for a SPIFFE ID shorter than 128 bytes
uri_der_hex() { { printf '86%02x' "${#1}"; printf '%s' "$1" | od -An -v -tx1; } | tr -d ' \n' | tr a-f A-F; }  # ssl_c_der,hex is upper case

# ------------------------------------------------------------------ the kinds
ward_has() { [[ -x $WARD_BIN ]] && "$WARD_BIN" run --help 2>/dev/null | grep -q -- "$1"; }
kind_ok() {  # kind_ok KIND: can this kind run here? (reason on stdout if not)
    case $1 in
        direct | nginx | haproxy) return 0 ;;
        ward) ward_has --outbound || { echo "$WARD_BIN has no 'run --outbound' yet"; return 1; } ;;
        ward-h1) ward_has --upstream-protocol ||
            { echo "$WARD_BIN has no 'run --upstream-protocol' yet"; return 1; } ;;
        *) echo "unknown kind"; return 1 ;;
    esac
}
h2c_port() { case $1 in direct) echo "$APP_H2C_PORT" ;; ward*) echo "$OUT_PORT" ;; *) echo "$OUT_H2C_PORT" ;; esac; }
http_port() { [[ $1 == direct ]] && echo "$APP_PORT" || echo "$OUT_PORT"; }

start_nginx() {  # start_nginx NAME TEMPLATE PORT
    local DIR=$WORK/$1
    mkdir -p "$DIR/tmp"
    render "$CONF/nginx-common.conf" "$CONF/$2" >"$DIR/nginx.conf"
    spawn "$1" nginx -p "$DIR" -c "$DIR/nginx.conf" -e "$DIR/error.log"
    listening "$1" "$3"
}
start_haproxy() {  # start_haproxy NAME TEMPLATE PORT
    local DIR=$WORK/$1
    mkdir -p "$DIR"
    render "$CONF/haproxy-common.cfg" "$CONF/$2" >"$DIR/haproxy.cfg"
    spawn "$1" haproxy -db -f "$DIR/haproxy.cfg"
    listening "$1" "$3"
}

# start_proxies KIND MODE: inbound then outbound, known as PID[in] and PID[out]
# shellcheck disable=SC2034  # the upper-case locals are read by render (${!var})
start_proxies() {
    local kind=$1 mode=$2 UPSTREAM_POOL="" CONNECTION_HEADER="" SESSION_REUSE=off
    local HTTP_REUSE=never SSL_REUSE=no-ssl-reuse CLIENT_URI_DER_HEX
    CLIENT_URI_DER_HEX=$(uri_der_hex "$CLIENT_ID")
    if [[ $mode == keepalive ]]; then
        UPSTREAM_POOL="keepalive 64; keepalive_requests 10000000; keepalive_timeout 120s;"
        CONNECTION_HEADER='proxy_set_header Connection "";'
        SESSION_REUSE=on HTTP_REUSE=always SSL_REUSE=""
    fi
    case $kind in
        nginx)
            start_nginx in nginx-in.conf "$IN_PORT"
            start_nginx out nginx-out.conf "$OUT_PORT" ;;
        haproxy)
            start_haproxy in haproxy-in.cfg "$IN_PORT"
            start_haproxy out haproxy-out.cfg "$OUT_PORT" ;;
        ward | ward-h1)
            local extra=()
            [[ $mode == churn ]] && extra+=(--no-pool)
            [[ $kind == ward-h1 ]] && extra+=(--upstream-protocol http1)
            extra+=(--log-level "$WARD_LOG_LEVEL")
            spawn in "$WARD_BIN" run --workers 1 --admin 127.0.0.1:0 --log-level "$WARD_LOG_LEVEL" \
                --inbound "127.0.0.1:$IN_PORT=$APP_PORT" --allow-peer "$CLIENT_ID" \
                --cert "$PKI/server.pem" --key "$PKI/server-key.pem" --ca "$PKI/ca.pem"
            listening in "$IN_PORT"
            spawn out "$WARD_BIN" run --workers 1 --admin 127.0.0.1:0 \
                --outbound "127.0.0.1:$OUT_PORT=127.0.0.1:$IN_PORT" \
                --endpoint "127.0.0.1:$IN_PORT=$SERVER_ID" \
                --cert "$PKI/client.pem" --key "$PKI/client-key.pem" --ca "$PKI/ca.pem" "${extra[@]}"
            listening out "$OUT_PORT" ;;
    esac
}

start_app() {
    local DIR=$WORK/app
    mkdir -p "$DIR/tmp"
    render "$CONF/nginx-common.conf" "$CONF/app.conf" >"$DIR/nginx.conf"
    spawn app nginx -p "$DIR" -c "$DIR/nginx.conf" -e "$DIR/error.log"
    listening app "$APP_PORT"
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
passive_opens() { awk '$1 == "Tcp:" { if (++n == 1) for (i = 2; i <= NF; i++) { if ($i == "PassiveOpens") c = i } else print $c }' /proc/net/snmp; }
# stat_cpu: "total idle" jiffies of the whole machine, then of the SUT cpu
stat_cpu() {
    awk -v sut="cpu$SUT_CPU" '
        function tot() { t = 0; for (i = 2; i <= 9; i++) t += $i; return t }
        $1 == "cpu" { a = tot(); ai = $5 + $6 }
        $1 == sut { s = tot(); si = $5 + $6 }
        END { print a, ai, s, si }' /proc/stat
}
snapshot() {  # out in app loadgen opens all_total all_idle sut_total sut_idle
    local o=0 i=0
    [[ -n ${PID[out]:-} ]] && o=$(ticks "${PID[out]}") i=$(ticks "${PID[in]}")
    echo "$o $i $(ticks "${PID[app]}") $(lg_ticks) $(passive_opens) $(stat_cpu)"
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

# ------------------------------------------------------------------ load
load() {  # load TOOL MODE PORT SECONDS OUTFILE
    local tool=$1 mode=$2 port=$3 secs=$4 out=$5 cmd
    case $tool in
        wrk) cmd=(wrk -t1 -c"$CONNS" -d"${secs}s" --timeout 10s --latency)
            [[ $mode == churn ]] && cmd+=(-H "Connection: close")
            cmd+=("http://127.0.0.1:$port/") ;;
        h2load) # shellcheck disable=SC2206  # H2LOAD_ARGS is a list of arguments
            cmd=(h2load $H2LOAD_ARGS -D "$secs" --log-file="$out.reqs" "http://127.0.0.1:$port/") ;;
    esac
    taskset -c "$LOADGEN_CPU" "${cmd[@]}" >"$out" 2>&1 &
    PID[loadgen]=$!
    wait "${PID[loadgen]}" || true
    unset 'PID[loadgen]'
}
parse_load() {  # parse_load TOOL FILE -> "rps p50_ms p99_ms requests errors"
    if [[ $1 == wrk ]]; then
        awk 'function ms(v) { return v ~ /us$/ ? v / 1000 : v ~ /ms$/ ? v + 0 : v * 1000 }
            $1 == "50%" { p50 = ms($2) } $1 == "99%" { p99 = ms($2) }
            /requests in/ { n = $1 } /^Requests\/sec/ { r = $2 }
            /Socket errors/ { gsub(/,/, ""); e += $4 + $6 + $8 + $10 } /Non-2xx/ { e += $NF }
            END { printf "%.0f %.3f %.3f %d %d\n", r, p50, p99, n, e }' "$2"
    else
        local pct
        pct=$(awk -F'\t' '$2 == 200 { print $3 }' "$2.reqs" | sort -n |
            awk '{ v[NR] = $1 } END { if (!NR) { print "0 0"; exit }
                 a = int(NR * 0.5 + 0.999); b = int(NR * 0.99 + 0.999)
                 if (a < 1) a = 1; if (b < 1) b = 1
                 printf "%.3f %.3f\n", v[a] / 1000, v[b] / 1000 }')
        awk -v pct="$pct" '/^finished in/ { r = $4 }
            /^requests:/ { n = $8; e = $10 + $14 }   # succeeded; failed (incl. errored) + timeout
            END { split(pct, p, " "); printf "%.0f %s %s %d %d\n", r, p[1], p[2], n, e }' "$2"
    fi
}

# ------------------------------------------------------------------ profiles (--perf)
out_segs() { awk '$1 == "Tcp:" { if (++n == 1) { for (i = 2; i <= NF; i++) if ($i == "OutSegs") c = i } else print $c }' /proc/net/snmp; }
profile_start() {  # one perf per proxy, cpu-clock sampling (no hardware counters needed)
    local side
    SEGS0=$(out_segs)
    for side in out in; do
        perf record -q -e cpu-clock -F 2000 -p "${PID[$side]}" -o "$PERF/$1-$side.data" \
            >"$WORK/log/perf-$side.log" 2>&1 &
        PID[perf-$side]=$!
        perf stat -x, -e "$PERF_EVENTS" -p "${PID[$side]}" -o "$PERF/$1-$side.stat" &
        PID[pstat-$side]=$!
    done
    sleep 0.2
}
profile_stop() {
    local side
    SEGS=$(($(out_segs) - SEGS0))
    for side in out in; do
        kill -INT "${PID[perf-$side]}" "${PID[pstat-$side]}" 2>/dev/null || true
        wait "${PID[perf-$side]}" "${PID[pstat-$side]}" 2>/dev/null || true
        unset "PID[perf-$side]" "PID[pstat-$side]"
        {
            echo "# by shared object"
            perf report -q -i "$PERF/$1-$side.data" --stdio --no-children --sort dso --percent-limit 0.5
            echo "# by symbol"
            perf report -q -i "$PERF/$1-$side.data" --stdio --no-children --sort dso,symbol --percent-limit 0.7
        } >"$PERF/$1-$side.txt" 2>/dev/null || true
    done
}

PERF_EVENTS=context-switches,raw_syscalls:sys_enter,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_read,syscalls:sys_enter_recvfrom,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_sendto,syscalls:sys_enter_sendmsg
per_request() {  # per_request NAME REQUESTS: perf stat counts per request, one line per proxy
    local side
    for side in out in; do
        awk -F, -v n="$2" -v side="$side" -v row="$1" '$3 ~ /[a-z]/ && $1 ~ /^[0-9]/ {
                e = $3; sub(/^(raw_)?syscalls:sys_enter_?/, "", e); if (e == "") e = "syscalls"
                s = s sprintf("  %s %.2f", e, $1 / n) }
            END { printf "%-32s %-3s per request:%s\n", row, side, s }' "$PERF/$1-$side.stat"
    done | tee -a "$PERF/per-request.txt" >&2
    # all hops, both directions, whole machine (other people's TCP traffic included)
    awk -v s="$SEGS" -v n="$2" -v row="$1" 'BEGIN { printf "%-32s TCP segments sent per request (all hops): %.2f\n", row, s / n }' |
        tee -a "$PERF/per-request.txt" >&2
}

# ------------------------------------------------------------------ one row
COLS="run kind mode tool rps p50_ms p99_ms requests errors conn_per_req proxy_us out_us in_us out_hwm_mib in_hwm_mib app_us lg_pct sut_pct oth_pct bg_pct"
row() {  # row RUN KIND MODE TOOL: measure, print, append to $WORK/rows.tsv
    local run=$1 kind=$2 mode=$3 tool=$4 port body logf=$WORK/log/$1-$2-$3-$4 before after hwm="0 0"
    port=$(http_port "$kind"); [[ $tool == h2load ]] && port=$(h2c_port "$kind")
    [[ $kind == direct ]] || start_proxies "$kind" "$mode"
    if [[ $tool == h2load ]]; then
        body=$(curl -s -m 5 --http2-prior-knowledge "http://127.0.0.1:$port/" || true)
    else
        body=$(curl -s -m 5 "http://127.0.0.1:$port/" || true)
    fi
    if [[ $body != ok ]]; then
        say "  $kind/$mode/$tool: the path answered '${body:0:80}', not 'ok'; row skipped (logs: --keep)"
        halt out; halt in; return 0
    fi
    wait_quiet
    load "$tool" "$mode" "$port" "$WARMUP" "$logf.warmup"
    [[ -n $PERF && $kind != direct ]] && profile_start "$run-$kind-$mode-$tool"
    before=$(snapshot)
    load "$tool" "$mode" "$port" "$DURATION" "$logf"
    after=$(snapshot)
    [[ -n $PERF && $kind != direct ]] && profile_stop "$run-$kind-$mode-$tool"
    [[ $kind == direct ]] || hwm="$(hwm_kb "${PID[out]}") $(hwm_kb "${PID[in]}")"
    halt out; halt in
    local res
    res=$(parse_load "$tool" "$logf")
    [[ -n $PERF && $kind != direct ]] && per_request "$run-$kind-$mode-$tool" "$(echo "$res" | cut -d' ' -f4)"
    echo "$run $kind $mode $tool $res $hwm $before $after $BG $(getconf CLK_TCK) $(nproc) $DURATION" | awk '
        { run = $1; kind = $2; mode = $3; tool = $4; rps = $5; p50 = $6; p99 = $7; n = $8; err = $9
          ho = $10; hi = $11; for (i = 1; i <= 9; i++) d[i] = $(i + 20) - $(i + 11)
          bg = $30; hz = $31; ncpu = $32; secs = $33
          if (n <= 0) { print "no requests" > "/dev/stderr"; exit 1 }
          # d: 1 out 2 in 3 app 4 loadgen (ticks); 5 opens; 6 all 7 all idle 8 sut 9 sut idle (jiffies, 100/s)
          ours = (d[1] + d[2] + d[3] + d[4]) * 100 / hz
          oth = d[6] ? 100 * (d[6] - d[7] - ours) / d[6] : 0; if (oth < 0) oth = 0
          px = kind == "direct" ? "-" : sprintf("%.1f", (d[1] + d[2]) / hz / n * 1e6)
          po = kind == "direct" ? "-" : sprintf("%.1f", d[1] / hz / n * 1e6)
          pi = kind == "direct" ? "-" : sprintf("%.1f", d[2] / hz / n * 1e6)
          mo = kind == "direct" ? "-" : sprintf("%.1f", ho / 1024); mi = kind == "direct" ? "-" : sprintf("%.1f", hi / 1024)
          printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%.2f\t%s\t%s\t%s\t%s\t%s\t%.1f\t%.0f\t%.0f\t%.0f\t%s\n",
              run, kind, mode, tool, rps, p50, p99, n, err, d[5] / n, px, po, pi, mo, mi,
              d[3] / hz / n * 1e6, 100 * (d[4] / hz) / (d[6] / 100 / ncpu),
              d[8] ? 100 * (d[8] - d[9]) / d[8] : 0, oth, bg }' >>"$WORK/rows.tsv"
    tail -n 1 "$WORK/rows.tsv" | awk -F'\t' '{ printf "  run %s %-8s %-9s %-6s %7s req/s  p50 %6.2f ms  p99 %6.2f ms  err %s  conn/req %s  proxy %s us/req (%s+%s)  HWM %s/%s MiB  lg %s%%  sut %s%%  oth %s%%\n",
        $1, $2, $3, $4, $5, $6, $7, $9, $10, $11, $12, $13, $14, $15, $17, $18, $19 }' >&2
}

# ------------------------------------------------------------------ summary (markdown)
# medians per kind/mode/tool over the clean runs (oth% <= CLEAN_MAX), or over all runs if
# none is clean; CPU ratios against nginx and haproxy of the same mode/tool
summary() {
    awk -F'\t' -v clean_max="$CLEAN_MAX" '
        function med(key, col,   a, i, j, t, c) {
            c = cnt[key]; for (i = 1; i <= c; i++) a[i] = val[key, i, col]
            if (a[1] == "-") return "-"
            for (i = 2; i <= c; i++) for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
            return c % 2 ? a[(c + 1) / 2] : (a[c / 2] + a[c / 2 + 1]) / 2
        }
        function thou(x,   s) { x = sprintf("%.0f", x); s = ""; while (length(x) > 3) { s = " " substr(x, length(x) - 2) s; x = substr(x, 1, length(x) - 3) } return x s }
        function ratio(k, ref,   r) { r = k; sub(/^[^|]*/, ref, r); return (r in pxm) && pxm[r] != "-" && pxm[k] != "-" ? sprintf("%.2f", pxm[k] / pxm[r]) : "–" }
        {
            k = $2 "|" $3 "|" $4
            if (!(k in all)) { order[++nk] = k; all[k] = 0 }
            all[k]++; clean[k] += ($19 <= clean_max); rows[k, all[k]] = $0
        }
        END {
            for (o = 1; o <= nk; o++) {
                k = order[o]; use_all = clean[k] == 0
                for (r = 1; r <= all[k]; r++) {
                    split(rows[k, r], f, "\t")
                    if (!use_all && f[19] > clean_max) continue
                    c = ++cnt[k]; for (i = 1; i <= 20; i++) val[k, c, i] = f[i]
                    if (c == 1 || f[5] + 0 < lo[k]) lo[k] = f[5] + 0
                    if (f[5] + 0 > hi[k]) hi[k] = f[5] + 0
                    if (f[19] + 0 > othmax[k]) othmax[k] = f[19] + 0
                }
                pxm[k] = med(k, 11)
            }
            print "| kind | mode | load | req/s (median [min–max]) | p50 ms | p99 ms | new conn/req | proxy CPU µs/req (out+in) | CPU vs nginx | CPU vs haproxy | peak RSS MiB out/in | app µs/req | load-gen CPU % | other load % (median/max) | runs used |"
            print "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
            for (o = 1; o <= nk; o++) {
                k = order[o]; split(k, p, "|")
                cpu = pxm[k] == "-" ? "–" : sprintf("%.1f (%.1f+%.1f)", pxm[k], med(k, 12), med(k, 13))
                rss = med(k, 14) == "-" ? "–" : sprintf("%.1f / %.1f", med(k, 14), med(k, 15))
                printf "| %s | %s | %s | %s [%s–%s] | %.2f | %.2f | %.2f | %s | %s | %s | %s | %.0f | %.0f | %.0f / %.0f | %d of %d%s |\n",
                    p[1], p[2], p[3], thou(med(k, 5)), thou(lo[k]), thou(hi[k]), med(k, 6), med(k, 7), med(k, 10),
                    cpu, p[1] == "direct" ? "–" : ratio(k, "nginx"), p[1] == "direct" ? "–" : ratio(k, "haproxy"),
                    rss, med(k, 16), med(k, 17), med(k, 19), othmax[k], cnt[k], all[k], use_all && all[k] ? " (none clean)" : ""
            }
        }' "$WORK/rows.tsv"
}

versions() {
    local ward="not built"
    # the last commit that touched the proxy's sources (not the benchmark's)
    [[ -x $WARD_BIN ]] && ward="ward-proxy @ $(git -C "$ROOT" log -1 --format=%h -- proxy identity policy Cargo.lock 2>/dev/null || echo '?')"
    echo "$(nginx -v 2>&1 | sed 's/^nginx version: //'), HAProxy $(haproxy -v | awk 'NR == 1 {print $3}'), $(openssl version | cut -d' ' -f1-2), $(wrk -v 2>&1 | awk 'NR == 1 {print $1, $2}'), h2load $(h2load --version | awk '{print $NF}'), $ward, $(rustc --version 2>/dev/null | cut -d' ' -f1-2)"
}
machine() {
    echo "$(nproc) cpus ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), kernel $(uname -r)"
}

# write_block FILE: the generated block between the markers (appended if absent)
write_block() {
    local file=$1 block=$WORK/block.md tmp
    {
        echo "<!-- mesh2hop:begin (generated by benches/mesh2hop/run.sh; edits inside are overwritten) -->"
        echo "Generated $(date -u '+%Y-%m-%d %H:%M UTC') by \`$CMDLINE\`: $RUNS interleaved run(s), each row ${DURATION} s after a ${WARMUP} s warm-up with fresh proxies."
        echo "Machine: $(machine); SUT (app + proxies) on cpu$SUT_CPU, load generator on cpu$LOADGEN_CPU."
        echo "Versions: $(versions)."
        echo
        cat "$WORK/summary.md"
        echo
        echo "Medians over runs with other load ≤ ${CLEAN_MAX}% of the machine when any exist (\"runs used\"), else over all runs."
        echo "<!-- mesh2hop:end -->"
    } >"$block"
    if [[ -f $file ]] && grep -q '^<!-- mesh2hop:begin' "$file"; then
        tmp=$(mktemp)
        awk -v block="$block" '/^<!-- mesh2hop:begin/ { while ((getline l < block) > 0) print l; skip = 1; next }
            /^<!-- mesh2hop:end -->/ { skip = 0; next } !skip' "$file" >"$tmp"
        cat "$tmp" >"$file"; rm -f "$tmp"
    else
        { [[ -s $file ]] && echo; cat "$block"; } >>"$file"
    fi
    say "mesh2hop: updated $file"
}

# ------------------------------------------------------------------ main
main() {
    local kinds=() kind mode tool run why
    ensure_tools
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    if ((BUILD)); then
        say "mesh2hop: cargo build --release -p ward-proxy"
        (cd "$ROOT" && cargo build --release -p ward-proxy >&2) || say "mesh2hop: build failed; Ward rows skipped"
    fi
    for kind in ${KINDS//,/ }; do
        if why=$(kind_ok "$kind"); then kinds+=("$kind"); else say "mesh2hop: skipping $kind: $why"; fi
    done
    ((${#kinds[@]})) || die "nothing to run"
    local port
    for port in $APP_PORT $APP_H2C_PORT $OUT_PORT $OUT_H2C_PORT $IN_PORT; do
        [[ -z $(ss -Hltn "sport = :$port") ]] || die "port $port is busy (set BASE_PORT)"
    done
    mkdir -p "$WORK/log"
    : >"$WORK/rows.tsv"
    make_pki
    start_app
    say "mesh2hop: $(versions)"
    say "mesh2hop: $(machine); kinds ${kinds[*]}; $RUNS run(s) of ${DURATION}s after ${WARMUP}s warm-up"
    for ((run = 1; run <= RUNS; run++)); do
        for kind in "${kinds[@]}"; do
            for mode in ${MODES//,/ }; do
                for tool in ${TOOLS//,/ }; do
                    [[ $tool == h2load && $mode == churn ]] && continue   # churn is an HTTP/1.1 "Connection: close" test
                    row "$run" "$kind" "$mode" "$tool"
                done
            done
        done
    done
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
