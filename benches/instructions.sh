#!/usr/bin/env bash
# benches/instructions.sh - user-space instructions per proxied request, counted
# by valgrind's callgrind: breakwater's inbound path and HAProxy's, same backend.
#
#   benches/instructions.sh [--no-build] [--bin [NAME=]PATH]... [--args NAME=ARGS]... [-n REQUESTS] [--h2] [--profile DIR]
#
# Instruction counts repeat to within a fraction of a percent whatever else the
# machine is doing, where req/s on these shared 2-core machines moves by 5-10 %
# between runs: this is how a change to the request path is judged before the
# peer benchmark (peer.sh) is run on a quiet machine. It counts user space only;
# the kernel's share (about two thirds of a proxy's CPU here) is the same for
# breakwater and HAProxy, which make the same system calls per request.
#
# Each proxy (breakwater `run --threads 1`, HAProxy `nbthread 1`) runs under
# callgrind in front of one nginx worker answering "ok"; h2load sends 3000
# warm-up requests, the counters are zeroed, then REQUESTS (default 20000)
# keep-alive GETs over 20 connections are counted. --h2: the clients speak HTTP/2
# with prior knowledge (h2c, `h2load -m 10`: 10 streams per connection) to both
# proxies, which forward HTTP/1.1 to nginx (HAProxy detects the preface on its
# plain bind). With --profile DIR the
# callgrind files are kept there (callgrind_annotate DIR/breakwater.out.1).
# --bin PATH counts that binary instead of target/release/breakwater (no build);
# repeat it as --bin NAME=PATH to count several builds in one run, e.g. before and
# after a change (one row each, HAProxy counted once). --args NAME=ARGS adds flags
# to that row's `breakwater run` (word-split), e.g. a traced row:
#   --bin off=target/release/breakwater --bin traced=target/release/breakwater \
#   --args 'traced=--otlp-endpoint http://127.0.0.1:28503 --trace-sample-ratio 1'
# An OTLP sink (a stdlib Python server that reads each export and answers 200)
# listens on 127.0.0.1:28503 for such rows; its work is not counted.
# Needs valgrind, nginx, haproxy, h2load (apt: valgrind nginx haproxy nghttp2-client).
# Ports 28500-28502 on 127.0.0.1; everything started here is stopped by PID.

set -uo pipefail

TOP=$(cd "$(dirname "$0")/.." && pwd)
BIN="$TOP/target/release/breakwater"
HOST=127.0.0.1
BACKEND_PORT=28500
BW_PORT=28501
HA_PORT=28502
N=20000
BUILD=1
H1_FLAG=--h1
STREAMS=1
PROFILE_DIR=
declare -a BIN_SPECS=()
declare -A EXTRA_ARGS=()
SINK_PORT=28503

# log, die, port_free, wait_port, stop_tree, write_nginx_backend, start_otlp_sink
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

while [[ $# -gt 0 ]]; do
  case $1 in
    --no-build) BUILD=0 ;;
    --bin) BIN_SPECS+=("$2"); BUILD=0; shift ;;
    --args) [[ $2 == *=* ]] || die "--args NAME=ARGS"; EXTRA_ARGS[${2%%=*}]=${2#*=}; shift ;;
    -n) N=$2; shift ;;
    --h2) H1_FLAG=; STREAMS=10 ;;
    --profile) PROFILE_DIR=$2; shift ;;
    -h | --help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1" ;;
  esac
  shift
done

for tool in valgrind callgrind_control nginx haproxy h2load; do
  command -v "$tool" >/dev/null || die "$tool not found"
done
if [[ $BUILD == 1 ]]; then
  log "cargo build --release --locked"
  (cd "$TOP" && cargo build --release --locked) >&2 || die "release build failed"
fi
declare -a NAMES=() BINS=()
if [[ ${#BIN_SPECS[@]} -eq 0 ]]; then
  [[ -x $BIN ]] || die "no $BIN (build it, or drop --no-build)"
  NAMES=(breakwater); BINS=("$BIN")
fi
for spec in "${BIN_SPECS[@]}"; do
  if [[ $spec == *=* ]]; then name=${spec%%=*}; path=${spec#*=}; else name=breakwater; path=$spec; fi
  [[ $name =~ ^[A-Za-z0-9._-]+$ && $name != haproxy ]] || die "--bin: bad name '$name'"
  [[ " ${NAMES[*]} " != *" $name "* ]] || die "--bin: two rows named $name (use --bin NAME=PATH)"
  [[ -x $path ]] || die "--bin: no binary at $path"
  NAMES+=("$name"); BINS+=("$path")
done

WORK=$(mktemp -d /tmp/breakwater-instructions.XXXXXX)
chmod 755 "$WORK" # nginx's worker runs as nobody
declare -a STARTED=()

cleanup() {
  local p
  trap - EXIT INT TERM
  for p in "${STARTED[@]}"; do stop_tree "$p" 10; done # callgrind writes its file on exit
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

write_nginx_backend "$WORK" "$BACKEND_PORT" 'location = / { return 200 "ok\n"; }'
cat >"$WORK/haproxy.cfg" <<EOF
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend fe
  bind $HOST:$HA_PORT
  default_backend be
backend be
  server s1 $HOST:$BACKEND_PORT
EOF

nginx -p "$WORK/" -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log" >"$WORK/nginx.out" 2>&1 &
STARTED+=("$!")
wait_port "$BACKEND_PORT" "$!" || die "nginx did not start"

if [[ ${#EXTRA_ARGS[@]} -gt 0 ]]; then
  start_otlp_sink "$SINK_PORT" "$WORK/sink.log"
fi

# count <name> <port> cmd...: prints instructions per request
count() {
  local name=$1 port=$2 pid out tot
  shift 2
  out="$WORK/$name.out"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >"$WORK/$name.log" 2>&1 &
  pid=$!
  STARTED+=("$pid")
  wait_port "$port" "$pid" 60 || die "$name did not start under valgrind (see $WORK/$name.log)"
  # shellcheck disable=SC2086 # H1_FLAG is one flag or none
  h2load $H1_FLAG -n 3000 -c 20 -m "$STREAMS" "http://$HOST:$port/" >/dev/null || die "$name: warm-up failed"
  callgrind_control -z "$pid" >/dev/null 2>&1
  # shellcheck disable=SC2086
  h2load $H1_FLAG -n "$N" -c 20 -m "$STREAMS" "http://$HOST:$port/" >"$WORK/$name.h2load" || die "$name: load failed"
  grep -q "$N succeeded" "$WORK/$name.h2load" || die "$name: not every request succeeded"
  callgrind_control -d "$pid" >/dev/null 2>&1
  stop_tree "$pid" 10
  tot=$(awk '/^summary:/ {print $2; exit}' "$out".1)
  [[ -n $tot ]] || die "$name: no callgrind summary"
  [[ -n $PROFILE_DIR ]] && mkdir -p "$PROFILE_DIR" && cp "$out".1 "$PROFILE_DIR/$name.out.1"
  echo $((tot / N))
}

declare -a COUNTS=()
for i in "${!NAMES[@]}"; do
  log "${NAMES[$i]} under callgrind ($N requests): ${BINS[$i]}"
  # shellcheck disable=SC2206 # word-split on purpose: they are flags
  extra=(${EXTRA_ARGS[${NAMES[$i]}]:-})
  c=$(count "${NAMES[$i]}" "$BW_PORT" "${BINS[$i]}" run --threads 1 --log-level warn \
    --inbound-addr "$HOST:$BW_PORT" --app-addr "$HOST:$BACKEND_PORT" \
    --outbound-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 "${extra[@]}") || exit 1
  COUNTS+=("$c")
done
log "HAProxy under callgrind ($N requests)"
ha=$(count haproxy "$HA_PORT" haproxy -f "$WORK/haproxy.cfg" -db) || exit 1

echo "| proxy ($([[ -n $H1_FLAG ]] && echo "HTTP/1.1" || echo "h2c, -m $STREAMS")) | user-space instructions per request |"
echo "|---|---:|"
for i in "${!NAMES[@]}"; do echo "| ${NAMES[$i]} | ${COUNTS[$i]} |"; done
echo "| HAProxy $(haproxy -v 2>&1 | head -1 | awk '{print $3}') | $ha |"
echo
for i in "${!NAMES[@]}"; do
  awk -v n="${NAMES[$i]}" -v b="${COUNTS[$i]}" -v h="$ha" 'BEGIN { printf "%s / HAProxy: %.2f\n", n, b / h }'
done
for ((i = 1; i < ${#NAMES[@]}; i++)); do
  awk -v n="${NAMES[$i]}" -v f="${NAMES[0]}" -v b="${COUNTS[$i]}" -v a="${COUNTS[0]}" \
    'BEGIN { printf "%s / %s: %.4f (%+.2f %%)\n", n, f, b / a, (b / a - 1) * 100 }'
done
