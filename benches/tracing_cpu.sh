#!/usr/bin/env bash
# benches/tracing_cpu.sh - CPU time per proxied request with tracing off and
# with every request traced and exported (issue 18, point 5: within +15 %).
#
#   benches/tracing_cpu.sh [--bin PATH] [-n REQUESTS] [-r ROUNDS]
#
# One breakwater (`run --threads 1`, inbound) in front of one nginx worker
# answering "ok"; per round, each mode runs once, in turn: `off` (no
# --otlp-endpoint) and `traced` (--otlp-endpoint to a stdlib Python OTLP sink,
# --trace-sample-ratio 1). h2load sends 3000 warm-up requests, then REQUESTS
# (default 50000) keep-alive GETs over 20 connections; the CPU time (user +
# system, /proc) breakwater spent on them, in µs per request, is the figure.
# The median over ROUNDS (default 5) rounds, and the ratio traced / off. The
# exporter's CPU is in it (same process); the sink's is not. Instruction
# counts (instructions.sh with a traced row) are the steadier measure on a
# noisy machine; this is the kernel's share too.
# Ports 28510-28513 on 127.0.0.1.

set -uo pipefail

TOP=$(cd "$(dirname "$0")/.." && pwd)
HOST=127.0.0.1
BACKEND_PORT=28510
BW_PORT=28511
SINK_PORT=28513
N=50000
ROUNDS=5
BIN=
declare -a STARTED=()

# log, die, wait_port, stop_tree, start_tracked, stop_tracked, cleanup_tracked,
# write_nginx_backend, median_of_lines, resolve_bin, tree_cpu_ticks, start_otlp_sink
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

while [[ $# -gt 0 ]]; do
  case $1 in
    --bin) BIN=$2; shift ;;
    -n) N=$2; shift ;;
    -r) ROUNDS=$2; shift ;;
    -h | --help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1" ;;
  esac
  shift
done
for tool in nginx h2load python3; do
  command -v "$tool" >/dev/null || die "$tool not found"
done
resolve_bin

WORK=$(mktemp -d /tmp/breakwater-tracing-cpu.XXXXXX)
chmod 755 "$WORK" # nginx's worker runs as nobody
trap cleanup_tracked EXIT INT TERM

write_nginx_backend "$WORK" "$BACKEND_PORT" 'location = / { return 200 "ok\n"; }'
start_tracked "$WORK/nginx.out" nginx -p "$WORK/" -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log"
wait_port "$BACKEND_PORT" "$PID" || die "nginx did not start"
start_otlp_sink "$SINK_PORT" "$WORK/sink.log"
TCK=$(getconf CLK_TCK)

# measure <mode> [flags...]: prints breakwater's CPU µs per request
measure() {
  local mode=$1 before after
  shift
  start_tracked "$WORK/$mode.log" "$BIN" run --threads 1 --log-level warn \
    --inbound-addr "$HOST:$BW_PORT" --app-addr "$HOST:$BACKEND_PORT" \
    --outbound-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 "$@"
  local pid=$PID
  wait_port "$BW_PORT" "$pid" || die "$mode: breakwater did not start (see $WORK/$mode.log)"
  h2load --h1 -n 3000 -c 20 "http://$HOST:$BW_PORT/" >/dev/null || die "$mode: warm-up failed"
  before=$(tree_cpu_ticks "$pid")
  h2load --h1 -n "$N" -c 20 "http://$HOST:$BW_PORT/" >"$WORK/$mode.h2load" || die "$mode: load failed"
  grep -q "$N succeeded" "$WORK/$mode.h2load" || die "$mode: not every request succeeded"
  # The last batch's export is counted: it waits at most a second.
  sleep 1.2
  after=$(tree_cpu_ticks "$pid")
  stop_tracked "$pid"
  awk -v t=$((after - before)) -v hz="$TCK" -v n="$N" 'BEGIN { printf "%.2f\n", t / hz * 1e6 / n }'
}

declare -a OFF=() TRACED=()
for ((r = 1; r <= ROUNDS; r++)); do
  OFF+=("$(measure off)") || exit 1
  TRACED+=("$(measure traced --otlp-endpoint "http://$HOST:$SINK_PORT" --trace-sample-ratio 1)") || exit 1
  log "round $r: off ${OFF[-1]} µs, traced ${TRACED[-1]} µs per request"
done
off=$(printf '%s\n' "${OFF[@]}" | median_of_lines)
traced=$(printf '%s\n' "${TRACED[@]}" | median_of_lines)
echo "| breakwater CPU per request (median of $ROUNDS rounds, $N requests each) | µs |"
echo "|---|---:|"
echo "| tracing off | $off |"
echo "| every request traced and exported | $traced |"
echo
awk -v a="$traced" -v b="$off" 'BEGIN { printf "traced / off: %.4f (%+.2f %%)\n", a / b, (a / b - 1) * 100 }'
