#!/usr/bin/env bash
# benches/fail_fast.sh - how fast a request refused by an open circuit is
# answered, measured at the client.
#
#   benches/fail_fast.sh [--no-build] [--bin PATH] [-n REQUESTS] [--rate N] [-r ROUNDS]
#
# An nginx worker answers 503 to everything. breakwater (`run --threads 1`,
# outbound, the destination named by `Host`; breaker defaults: 5 failures in a
# row) sits in front of it; 20
# requests open the circuit (checked: the answer says `circuit-open`), then
# h2load sends REQUESTS (default 5000) at RATE req/s (default 1000, 10
# connections) and its per-request log gives p50/p99. The same load straight
# to nginx's static 503 is the baseline, in ROUNDS (default 5) alternating
# rounds, medians shown: added = breakwater - direct, which is
# what an open circuit costs a caller over an answer that needs no upstream at
# all. Target (issue 20): added p50 <= 20 us.
# Needs nginx, h2load (nghttp2-client), curl. Ports 28610-28611 on 127.0.0.1.

set -uo pipefail

TOP=$(cd "$(dirname "$0")/.." && pwd)
BIN=
BUILD=1
N=5000
RATE=1000
ROUNDS=5
HOST=127.0.0.1
BACKEND_PORT=28610
BW_PORT=28611

# log, die, port_free, wait_port, start_tracked, cleanup_tracked, resolve_bin, write_nginx_backend
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

while [[ $# -gt 0 ]]; do
  case $1 in
    --no-build) BUILD=0 ;;
    --bin) BIN=$2; BUILD=0; shift ;;
    -n) N=$2; shift ;;
    --rate) RATE=$2; shift ;;
    -r | --rounds) ROUNDS=$2; shift ;;
    -h | --help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1" ;;
  esac
  shift
done
for tool in nginx h2load curl; do command -v "$tool" >/dev/null || die "$tool not found"; done
resolve_bin
for p in $BACKEND_PORT $BW_PORT; do port_free "$p" || die "port $p busy"; done

WORK=$(mktemp -d /tmp/breakwater-failfast.XXXXXX)
chmod 755 "$WORK" # nginx's worker runs as nobody
declare -a STARTED=()
trap cleanup_tracked EXIT INT TERM

write_nginx_backend "$WORK" "$BACKEND_PORT" 'location / { return 503 "down\n"; }'
start_tracked "$WORK/nginx.out" nginx -p "$WORK/" -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log"
wait_port "$BACKEND_PORT" "$PID" || die "nginx did not start"

start_tracked "$WORK/breakwater.log" "$BIN" run --threads 1 --log-level warn --inbound-addr 127.0.0.1:0 \
  --app-addr "$HOST:$BACKEND_PORT" --outbound-addr "$HOST:$BW_PORT" --admin-addr 127.0.0.1:0
wait_port "$BW_PORT" "$PID" || die "breakwater did not start"
DEST="$HOST:$BACKEND_PORT"
for _ in $(seq 20); do curl -s -o /dev/null -H "Host: $DEST" "http://$HOST:$BW_PORT/"; done
reason=$(curl -s -o /dev/null -D - -H "Host: $DEST" "http://$HOST:$BW_PORT/" | tr -d '\r' | awk -F': ' 'tolower($1) == "x-breakwater-reason" {print $2}')
[[ $reason == circuit-open ]] || die "the circuit did not open (reason '$reason')"

# latency <name> <port>: p50 and p99 in microseconds of N requests at RATE req/s
latency() {
  local log="$WORK/$1.log"
  # -r 1 --rate-period 1ms: connections start 1 ms apart, not in step
  h2load --h1 -c 10 -t 1 --rps $((RATE / 10)) -r 1 --rate-period 1ms -n "$N" -H ":authority: $DEST" --log-file "$log" \
    "http://$HOST:$2/" >"$WORK/$1.h2load" ||
    die "$1: h2load failed"
  # --log-file: start time, status, microseconds per request
  awk '{print $3}' "$log" | sort -n | awk '{v[NR] = $1} END {
    p50 = v[int(NR * 0.50 + 0.5)]; p99 = v[int(NR * 0.99 + 0.5)]; print p50, p99, NR }'
}

# Rounds alternate direct and breakwater; the medians over rounds are shown.
declare -a D50=() D99=() B50=() B99=()
for ((r = 1; r <= ROUNDS; r++)); do
  read -r d50 d99 _ < <(latency direct "$BACKEND_PORT")
  read -r b50 b99 _ < <(latency breakwater "$BW_PORT")
  log "round $r: direct p50 $d50 p99 $d99, breakwater p50 $b50 p99 $b99 (us)"
  D50+=("$d50"); D99+=("$d99"); B50+=("$b50"); B99+=("$b99")
done
median() { printf '%s\n' "$@" | median_of_lines | xargs printf '%.0f'; }
d50=$(median "${D50[@]}"); d99=$(median "${D99[@]}"); b50=$(median "${B50[@]}"); b99=$(median "${B99[@]}")
# The circuit must still be open: otherwise the row measured probes, not refusals.
reason=$(curl -s -o /dev/null -D - -H "Host: $DEST" "http://$HOST:$BW_PORT/" | tr -d '\r' | awk -F': ' 'tolower($1) == "x-breakwater-reason" {print $2}')
[[ $reason == circuit-open ]] || log "warning: the circuit closed during the run (reason '$reason')"

echo "| $N requests at $RATE req/s, median of $ROUNDS rounds | p50 us | p99 us |"
echo "|---|---:|---:|"
echo "| nginx, static 503 (direct) | $d50 | $d99 |"
echo "| breakwater, 503 circuit-open | $b50 | $b99 |"
echo "| added | $((b50 - d50)) | $((b99 - d99)) |"
echo "added p50 per round (us): $(for i in "${!B50[@]}"; do printf '%s ' $((B50[i] - D50[i])); done)"
