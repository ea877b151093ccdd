#!/usr/bin/env bash
# benches/overload.sh - adaptive concurrency under overload, and the circuit
# breaker through an upstream outage, measured on loopback (issue 4).
#
#   benches/overload.sh [options]          # ~4-5 min, prints a Markdown report
#
# (a) Overload. Upstream: benches/overload.py upstream, an asyncio HTTP/1.1 server
#     that serves at most PARALLEL=8 requests at a time for SERVICE_MS=20 ms each and
#     queues the rest FIFO (latency = queueing + service; capacity 400 req/s).
#     Unloaded latency: 1 client, UNLOADED_N sequential GETs, direct and through
#     breakwater. Load: h2load --h1 -c CONC --rps RPS (offered CONC x RPS req/s,
#     640 by default = 1.6 x capacity; connections are started STAGGER apart so that
#     their --rps timers do not fire in step) for SECS s through a fresh breakwater
#     per row: --max-concurrent 100000 (no limit), each of STATIC_LIMITS, and
#     auto (--max-queue 0) twice: fresh (the overload is the first traffic it sees)
#     and warmed (after the unloaded run through the same process). Figures count
#     requests started after the first WARMUP s. The auto limit is read from
#     /upstreams once a second.
# (b) Outage. Upstream: benches/overload.py outage-upstream, healthy (1 ms), then
#     failing for OUTAGE_S s (500 at once, or listener and connections closed =
#     connection refused), then healthy again. Client: benches/overload.py
#     paced-client, RATE GETs/s open loop, logging send/answer time, status and
#     x-breakwater-reason. Default breaker flags (open 5s), and --breaker-open-duration 1s.
#
# Options (also env vars):
#   --secs S            seconds of each overload row            SECS=20
#   --warmup S          seconds left out at the start of a row  WARMUP=5
#   -c C                h2load connections                      CONC=64
#   --rps R             req/s per connection                    RPS=10
#   --static "4 8 ..."  static limits to compare                STATIC_LIMITS="4 8 16 32"
#   --outage S          seconds the upstream fails (may be 1.1)  OUTAGE_S=4
#   --only PART         overload or outage: run that part alone  ONLY=
#   --rate R            req/s in the outage runs                RATE=200
#   --no-build          skip cargo build --release --locked     BUILD=1
#   -o, --out FILE      also write the report to FILE           OUT=
#   --keep              keep the work dir (logs, per-request)   KEEP=0
# Env: H2LOAD, PYTHON, CURL, BASE_PORT=28400 (upstreams BASE_PORT..+9, proxies
#   +10.., admin +100..), PARALLEL=8, SERVICE_MS=20, UNLOADED_N=200, STAGGER=2ms,
#   TAIL_S=10 (outage runs: seconds after the recovery).
# Everything listens on 127.0.0.1; every process is started here, tracked by PID
# and stopped by PID; every client run is bounded by `timeout`.

set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOP=$(git -C "$HERE" rev-parse --show-toplevel) || { echo "overload.sh: not in a git checkout" >&2; exit 1; }
HELPER="$HERE/overload.py"
PYTHON=${PYTHON:-python3}
CURL=${CURL:-curl}
H2LOAD=${H2LOAD:-h2load}
HOST=127.0.0.1
BASE_PORT=${BASE_PORT:-28400}
SECS=${SECS:-20}
WARMUP=${WARMUP:-5}
CONC=${CONC:-64}
RPS=${RPS:-10}
STATIC_LIMITS=${STATIC_LIMITS:-4 8 16 32}
OUTAGE_S=${OUTAGE_S:-4}
ONLY=${ONLY:-}
RATE=${RATE:-200}
BUILD=${BUILD:-1}
OUT=${OUT:-}
KEEP=${KEEP:-0}
PARALLEL=${PARALLEL:-8}
SERVICE_MS=${SERVICE_MS:-20}
UNLOADED_N=${UNLOADED_N:-200}
STAGGER=${STAGGER:-2ms}
TAIL_S=${TAIL_S:-10}
HEALTHY_S=3

UP_PORT=$BASE_PORT
NEXT_PORT=$((BASE_PORT + 10))
WORK=""
BIN=""
declare -a STARTED=()

# log, die, port_free, wait_port, stop_tree; fresh_port, start_tracked, stop_tracked, cleanup_tracked
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
usage() { sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }

parse_args() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --secs) SECS=$2; shift ;;
      --warmup) WARMUP=$2; shift ;;
      -c) CONC=$2; shift ;;
      --rps) RPS=$2; shift ;;
      --static) STATIC_LIMITS=$2; shift ;;
      --outage) OUTAGE_S=$2; shift ;;
      --only) ONLY=$2; shift ;;
      --rate) RATE=$2; shift ;;
      --no-build) BUILD=0 ;;
      -o|--out) OUT=$2; shift ;;
      --keep) KEEP=1 ;;
      -h|--help) usage ;;
      *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
  done
  local v
  [[ $OUTAGE_S =~ ^[0-9]+(\.[0-9]+)?$ ]] && [[ $OUTAGE_S != 0 ]] || die "OUTAGE_S must be a positive number of seconds"
  [[ -z $ONLY || $ONLY == overload || $ONLY == outage ]] || die "--only takes overload or outage"
  for v in SECS CONC RPS RATE PARALLEL UNLOADED_N TAIL_S; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"
  done
  [[ $WARMUP =~ ^[0-9]+$ ]] && (( WARMUP < SECS )) || die "WARMUP must be a whole number below SECS"
  (( SECS <= 120 && ${OUTAGE_S%.*} < 60 && CONC <= 1000 && RATE <= 2000 )) || die "SECS <= 120, OUTAGE_S <= 60, C <= 1000, RATE <= 2000"
  for v in $STATIC_LIMITS; do [[ $v =~ ^[1-9][0-9]*$ ]] || die "static limits are positive integers"; done
}

merge() { "$PYTHON" -c 'import json, sys
d = {}
for a in sys.argv[1:]:
    d.update(json.loads(a) if a.strip() else {})
print(json.dumps(d))' "$@"; }

jstr() { "$PYTHON" -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1"; }

start_breakwater() {  # start_breakwater [flags...]; sets PORT ADMIN BW_PID
  fresh_port; ADMIN=$((PORT + 100))
  start_tracked "$WORK/bw-$PORT.log" "$BIN" run --threads 1 --log-level warn --log-format text \
    --outbound-addr "$HOST:$PORT" --inbound-addr "$HOST:0" --admin-addr "$HOST:$ADMIN" \
    --app-addr "$HOST:9" --drain-delay 0s --drain-timeout 1s "$@"
  BW_PID=$PID
  wait_port "$PORT" "$BW_PID" && wait_port "$ADMIN" "$BW_PID" || die "breakwater did not start: $(tail -5 "$WORK/bw-$PORT.log")"
}

bw_metric() {  # bw_metric <admin> <metric> <label filter>: summed over matching lines
  "$CURL" -s --max-time 5 "http://$HOST:$1/metrics" | awk -v m="$2" -v f="$3" '
    index($0, m "{") == 1 && index($0, f) {s += $NF} END {print s + 0}'
}

# ------------------------------------------------------------ (a) overload --
unloaded() {  # unloaded <name> <port>
  local name=$1 port=$2 hlog="$WORK/unloaded-$1.tsv" st
  timeout 120 "$H2LOAD" --h1 -c 1 -n "$UNLOADED_N" -H ":authority: $HOST:$UP_PORT" --log-file "$hlog" \
    "http://$HOST:$port/" >"$WORK/unloaded-$name.txt" 2>&1
  st=$("$PYTHON" "$HELPER" load-stats --log "$hlog" --secs 1000)
  merge "$st" "{\"row\": \"$name\", \"kind\": \"unloaded\"}" >>"$WORK/load.jsonl"
  log "  unloaded $name: $st"
}

overload_row() {  # overload_row <key> <label> <static|auto|none> <warm 0|1> [breakwater flags...]
  local key=$1 label=$2 type=$3 warm=$4; shift 4
  local hlog="$WORK/load-$key.tsv" polls="$WORK/polls-$key.txt" poller st lim rej0 rej1
  start_breakwater "$@"
  [[ $warm == 1 ]] && unloaded breakwater "$PORT"
  rej0=$(bw_metric "$ADMIN" breakwater_rejected_total 'reason="bulkhead-full"')
  # one /upstreams poll a second while the load runs
  ( for ((i = 0; i < SECS + 5; i++)); do
      printf '%s\t%s\n' "$(date +%s.%N)" "$("$CURL" -s --max-time 1 "http://$HOST:$ADMIN/upstreams" | tr -d '\n ')"
      sleep 1
    done ) >"$polls" 2>/dev/null &
  poller=$!; STARTED+=("$poller")
  timeout $((SECS + 60)) "$H2LOAD" --h1 -c "$CONC" -n $((CONC * RPS * SECS)) --rps "$RPS" -r 1 --rate-period "$STAGGER" \
    -H ":authority: $HOST:$UP_PORT" --log-file "$hlog" "http://$HOST:$PORT/" >"$WORK/load-$key.txt" 2>&1
  stop_tracked "$poller"
  rej1=$(bw_metric "$ADMIN" breakwater_rejected_total 'reason="bulkhead-full"')
  st=$("$PYTHON" "$HELPER" load-stats --log "$hlog" --from-s "$WARMUP" --secs "$SECS")
  lim="{}"
  [[ $type == auto ]] && lim=$("$PYTHON" "$HELPER" limit-stats --polls "$polls" --h2load-log "$hlog" --from-s "$WARMUP" --secs "$SECS")
  merge "$st" "$lim" "{\"row\": $(jstr "$label"), \"key\": \"$key\", \"kind\": \"load\", \"static\": $([[ $type == static ]] && echo true || echo false),
    \"auto\": $([[ $type == auto ]] && echo true || echo false), \"rejected_metric\": $((rej1 - rej0))}" >>"$WORK/load.jsonl"
  log "  $label: $(tail -1 "$WORK/load.jsonl" | cut -c1-400)"
  stop_tracked "$BW_PID"
}

run_overload() {
  port_free "$UP_PORT" || die "port $UP_PORT busy (set BASE_PORT)"
  start_tracked "$WORK/upstream.log" "$PYTHON" "$HELPER" upstream --port "$UP_PORT" --parallel "$PARALLEL" --service-ms "$SERVICE_MS"
  local up=$PID
  wait_port "$UP_PORT" "$up" || die "upstream did not start: $(tail -5 "$WORK/upstream.log")"
  log "(a) upstream :$UP_PORT ($PARALLEL at a time, $SERVICE_MS ms), pid $up"
  unloaded direct "$UP_PORT"
  overload_row nolimit "--max-concurrent 100000 (no limit)" none 0 --max-concurrent 100000
  local n
  for n in $STATIC_LIMITS; do
    overload_row "static$n" "--max-concurrent $n" static 0 --max-concurrent "$n" --max-queue 0
  done
  overload_row auto "--max-concurrent auto, fresh" auto 0 --max-concurrent auto --max-queue 0
  overload_row autowarm "--max-concurrent auto, after the unloaded run" auto 1 --max-concurrent auto --max-queue 0
  stop_tracked "$up"
}

# -------------------------------------------------------------- (b) outage --
outage_row() {  # outage_row <key> <label> <500|refuse> [breakwater flags...]
  local key=$1 label=$2 mode=$3; shift 3
  local port=$((UP_PORT + 1)) up st opens
  port_free "$port" || die "port $port busy"
  start_tracked "$WORK/outage-up-$key.jsonl" "$PYTHON" "$HELPER" outage-upstream --port "$port" \
    --healthy "$HEALTHY_S" --outage "$OUTAGE_S" --mode "$mode"
  up=$PID
  wait_port "$port" "$up" || die "outage upstream did not start"
  start_breakwater "$@"
  local whole=$(( ${OUTAGE_S%.*} + 1 ))  # the outage, rounded up
  timeout $((HEALTHY_S + whole + TAIL_S + 30)) "$PYTHON" "$HELPER" paced-client --port "$PORT" --authority "$HOST:$port" \
    --rate "$RATE" --secs $((HEALTHY_S + whole + TAIL_S)) --out "$WORK/outage-$key.tsv" 2>"$WORK/outage-client-$key.err"
  opens=$(bw_metric "$ADMIN" breakwater_circuit_transitions_total 'to="open"')
  st=$("$PYTHON" "$HELPER" outage-stats --log "$WORK/outage-$key.tsv" --events "$WORK/outage-up-$key.jsonl")
  merge "$st" "{\"row\": $(jstr "$label"), \"mode\": \"$([[ $mode == 500 ]] && echo '500' || echo 'connection refused')\", \"trips\": $opens}" >>"$WORK/outage.jsonl"
  log "  $label ($mode): $(tail -1 "$WORK/outage.jsonl" | cut -c1-400)"
  stop_tracked "$BW_PID"
  stop_tracked "$up"
}

run_outage() {
  log "(b) outage: $HEALTHY_S s healthy, $OUTAGE_S s failing, $TAIL_S s after; $RATE req/s"
  outage_row d500 "defaults (open 5s)" 500
  outage_row drefuse "defaults (open 5s)" refuse
  outage_row o500 "--breaker-open-duration 1s" 500 --breaker-open-duration 1s
  outage_row orefuse "--breaker-open-duration 1s" refuse --breaker-open-duration 1s
}

# --------------------------------------------------------------------- main --
main() {
  parse_args "$@"
  local t
  local t tools=("$CURL" "$PYTHON" timeout)
  [[ $ONLY == outage ]] || tools+=("$H2LOAD")
  for t in "${tools[@]}"; do command -v "$t" >/dev/null || die "not found: $t"; done
  if [[ $BUILD == 1 ]]; then
    log "cargo build --release --locked"
    (cd "$TOP" && cargo build --release --locked) >&2 || die "release build failed (--no-build measures the binary already in target/release)"
  fi
  [[ -x $TOP/target/release/breakwater ]] || die "no binary at $TOP/target/release/breakwater"
  trap cleanup_tracked EXIT
  trap 'exit 130' INT TERM
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/overload.XXXXXX")
  # a copy, so that a rebuild during the run cannot change the binary under us
  BIN="$WORK/breakwater"; cp "$TOP/target/release/breakwater" "$BIN"
  : >"$WORK/load.jsonl"; : >"$WORK/outage.jsonl"
  local load_start; load_start=$(cut -d' ' -f1-3 /proc/loadavg)
  log "work dir: $WORK"
  [[ $ONLY == outage ]] || run_overload
  [[ $ONLY == overload ]] || run_outage
  cat >"$WORK/meta.json" <<EOF
{"date": "$(date -u '+%Y-%m-%d %H:%M UTC')", "cpus": $(nproc), "load_start": "$load_start",
 "load_end": "$(cut -d' ' -f1-3 /proc/loadavg)", "parallel": $PARALLEL, "service_ms": $SERVICE_MS,
 "conc": $CONC, "rps": $RPS, "secs": $SECS, "warmup": $WARMUP, "stagger": "$STAGGER",
 "outage_s": $OUTAGE_S, "rate": $RATE}
EOF
  local rep
  rep=$("$PYTHON" "$HELPER" report --load "$WORK/load.jsonl" --outage "$WORK/outage.jsonl" --meta "$WORK/meta.json") \
    || die "report failed (--keep keeps $WORK)"
  echo "$rep"
  [[ -n $OUT ]] && printf '%s\n' "$rep" >"$OUT"
  return 0
}

main "$@"
