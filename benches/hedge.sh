#!/usr/bin/env bash
# benches/hedge.sh - what does hedging buy on a slow tail, and what does it cost?
#
#   benches/hedge.sh [options]           # builds the release binary, then ~2 min
#
# Claim measured: with a 5 % slow tail (issue 19, point 2), hedge-after cuts
# the client's p99, and the extra load it costs stays within the hedge budget.
#
# benches/slow_tail.py answers 200 "ok\n": SLOW_SHARE of the requests, drawn at
# random per request, after SLOW_MS, the rest after FAST_MS (defaults 5 %,
# 200 ms, 2 ms). Per row and round a fresh breakwater (outbound listener,
# --threads THREADS) routes to it; h2load --h1 -c CLIENTS --rps RATE/CLIENTS
# sends RATE req/s, RATE x DURATION GETs, one per connection at a time. Rows:
#
#   none    --route UP                      (baseline: no hedging)
#   fixed   --route UP,hedge-after=FIXED    (default 10ms)
#   p95     --route UP,hedge-after=p95      (the destination's own p95)
#   p90b5   --route UP,hedge-after=p90,hedge-budget=5
#
# Per row: the client's p50, p99 and p99.9 (2xx, ms, from h2load's per-request
# log), answers that were not 2xx, the extra load (upstream requests per
# client request - 1, from slow_tail.py's count) against the budget, and
# breakwater_hedges_total{outcome} (won, lost, skipped). Medians over REPS
# rounds, rows in rotated order each round.
#
# Options (also env vars):
#   --bin PATH          measure this breakwater binary (no build)      BIN=
#   --no-build          measure target/release/breakwater as it is     BUILD=1
#   -n, --reps N        rounds                                         REPS=3
#   -d, --duration S    seconds per row                                DURATION=10
#   --rate R            offered req/s (a multiple of CLIENTS)          RATE=200
#   --clients C         h2load connections                             CLIENTS=20
#   --fixed D           the fixed row's hedge-after                    FIXED=10ms
#   --rows "LIST"       rows to run                                    ROWS="none fixed p95 p90b5"
#   --threads T         breakwater worker threads                      THREADS=1
#   -o, --out FILE      also write the report to FILE                  OUT=
#   --keep              keep the work dir (logs)                       KEEP=0
# Env: H2LOAD, CURL, PYTHON, BASE_PORT=29600, SLOW_SHARE=0.05, SLOW_MS=200, FAST_MS=2.

set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOP=$(git -C "$HERE" rev-parse --show-toplevel) || { echo "hedge.sh: not in a git checkout" >&2; exit 1; }
PYTHON=${PYTHON:-python3}
CURL=${CURL:-curl}
H2LOAD=${H2LOAD:-h2load}
HOST=127.0.0.1
BASE_PORT=${BASE_PORT:-29600}
BIN=${BIN:-}
BUILD=${BUILD:-1}
REPS=${REPS:-3}
DURATION=${DURATION:-10}
RATE=${RATE:-200}
CLIENTS=${CLIENTS:-20}
FIXED=${FIXED:-10ms}
ROWS=${ROWS:-none fixed p95 p90b5}
THREADS=${THREADS:-1}
OUT=${OUT:-}
KEEP=${KEEP:-0}
SLOW_SHARE=${SLOW_SHARE:-0.05}
SLOW_MS=${SLOW_MS:-200}
FAST_MS=${FAST_MS:-2}

NEXT_PORT=$BASE_PORT
WORK=""
declare -a STARTED=()
UP=""

# log, die, port_free, wait_port, stop_tree; fresh_port, start_tracked, stop_tracked,
# cleanup_tracked; median_of_lines, resolve_bin
source "$HERE/lib.sh"
usage() { sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }

parse_args() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --bin) BIN=$2; BUILD=0; shift ;;
      --no-build) BUILD=0 ;;
      -n|--reps) REPS=$2; shift ;;
      -d|--duration) DURATION=$2; shift ;;
      --rate) RATE=$2; shift ;;
      --clients) CLIENTS=$2; shift ;;
      --fixed) FIXED=$2; shift ;;
      --rows) ROWS=$2; shift ;;
      --threads) THREADS=$2; shift ;;
      -o|--out) OUT=$2; shift ;;
      --keep) KEEP=1 ;;
      -h|--help) usage ;;
      *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
  done
  local v
  for v in REPS DURATION RATE CLIENTS THREADS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"
  done
  (( RATE % CLIENTS == 0 )) || die "RATE ($RATE) must be a multiple of CLIENTS ($CLIENTS)"
  (( DURATION <= 120 && RATE <= 2000 && REPS <= 10 )) || die "DURATION <= 120, RATE <= 2000, REPS <= 10"
  for v in $ROWS; do
    case "$v" in none|fixed|p95|p90b5) ;; *) die "unknown row '$v' (known: none fixed p95 p90b5)" ;; esac
  done
}

row_route() {  # row_route <row>: the --route value
  case "$1" in
    none) echo "$HOST:$UP" ;;
    fixed) echo "$HOST:$UP,hedge-after=$FIXED" ;;
    p95) echo "$HOST:$UP,hedge-after=p95" ;;
    p90b5) echo "$HOST:$UP,hedge-after=p90,hedge-budget=5" ;;
  esac
}

row_budget() {  # the row's hedge budget, % (0: no hedging)
  case "$1" in none) echo 0 ;; p90b5) echo 5 ;; *) echo 10 ;; esac
}

upstream_count() { "$CURL" -s --max-time 5 "http://$HOST:$UP/__count"; }

# run_row <row> <round>: prints "row p50 p99 p999 non2xx extra won lost skipped"
run_row() {
  local row=$1
  fresh_port; local bw=$PORT admin=$((PORT + 100))
  start_tracked "$WORK/bw-$row-$2.log" "$BIN" run --threads "$THREADS" --log-level warn --log-format text \
    --outbound-addr "$HOST:$bw" --inbound-addr "$HOST:0" --admin-addr "$HOST:$admin" \
    --app-addr "$HOST:9" --drain-delay 0s --drain-timeout 1s --route "$(row_route "$row")"
  local pid=$PID
  wait_port "$bw" "$pid" && wait_port "$admin" "$pid" || die "breakwater did not start: $(tail -5 "$WORK/bw-$row-$2.log")"
  local before after out="$WORK/h2load-$row-$2.txt" reqlog="$WORK/req-$row-$2.tsv"
  before=$(upstream_count)
  timeout $((2 * DURATION + 30)) "$H2LOAD" --h1 -t 1 -c "$CLIENTS" --rps $((RATE / CLIENTS)) -n $((RATE * DURATION)) \
    -H ":authority: $HOST:$UP" --log-file "$reqlog" "http://$HOST:$bw/" >"$out" 2>&1 \
    || die "h2load failed for row $row: $(tail -3 "$out")"
  after=$(upstream_count)
  local hedges
  hedges=$("$CURL" -s --max-time 5 "http://$HOST:$admin/metrics" | awk '
    index($0, "breakwater_hedges_total{") == 1 {
      o = $0; sub(/.*outcome="/, "", o); sub(/".*/, "", o); c[o] += $NF }
    END { printf "%d %d %d", c["won"], c["lost"], c["skipped"] }')
  stop_tracked "$pid"
  local sent
  sent=$(wc -l <"$reqlog")
  awk -F'\t' '$2 >= 200 && $2 < 300 {print $3}' "$reqlog" | sort -g | awk \
    -v row="$row" -v non2="$(awk -F'\t' '$2 < 200 || $2 >= 300 {n++} END {print n + 0}' "$reqlog")" \
    -v extra="$(awk -v a="$before" -v b="$after" -v n="$sent" 'BEGIN {printf "%.4f", (n > 0) ? (b - a) / n - 1 : 0}')" \
    -v hedges="$hedges" '
    {v[NR] = $1}
    END {
      n = NR; if (n == 0) { print row, "nan nan nan", non2, extra, hedges; exit }
      i50 = int(0.50 * n + 0.999); i99 = int(0.99 * n + 0.999); i999 = int(0.999 * n + 0.999)
      if (i999 > n) i999 = n
      printf "%s %.2f %.2f %.2f %d %s %s\n", row, v[i50] / 1000, v[i99] / 1000, v[i999] / 1000, non2, extra, hedges
    }'
}

main() {
  parse_args "$@"
  for p in "$H2LOAD" "$CURL" "$PYTHON"; do type -P "$p" >/dev/null || die "$p not found"; done
  resolve_bin
  WORK=$(mktemp -d /tmp/bw-hedge.XXXXXX)
  trap cleanup_tracked EXIT
  fresh_port; UP=$PORT
  start_tracked "$WORK/slow_tail.out" "$PYTHON" "$HERE/slow_tail.py" --host "$HOST" --port "$UP" \
    --slow-share "$SLOW_SHARE" --slow-ms "$SLOW_MS" --fast-ms "$FAST_MS"
  wait_port "$UP" "$PID" || die "slow_tail.py did not start: $(tail -5 "$WORK/slow_tail.out")"
  log "slow-tail upstream :$UP ($SLOW_SHARE at ${SLOW_MS} ms, the rest at ${FAST_MS} ms)"
  local -a rows
  read -ra rows <<<"$ROWS"
  local results="$WORK/results.txt" round i
  for ((round = 1; round <= REPS; round++)); do
    for ((i = 0; i < ${#rows[@]}; i++)); do
      local row=${rows[$(((i + round - 1) % ${#rows[@]}))]}
      log "round $round/$REPS, row $row"
      run_row "$row" "$round" >>"$results"
    done
  done
  {
    echo "# benches/hedge.sh $(date -u +%Y-%m-%d), $(git -C "$TOP" rev-parse --short HEAD), $RATE req/s (h2load --h1 -c $CLIENTS), ${DURATION} s a row, $REPS rounds, --threads $THREADS; upstream: $SLOW_SHARE at ${SLOW_MS} ms, the rest at ${FAST_MS} ms"
    printf '%-7s %9s %9s %9s %9s %7s %8s %7s %6s %6s %8s\n' row p50_ms p99_ms p999_ms p99/none non2xx extra budget won lost skipped
    local base
    base=$(awk '$1 == "none" {print $3}' "$results" | median_of_lines)
    for row in "${rows[@]}"; do
      local p50 p99 p999 non2 extra won lost skipped ratio
      p50=$(awk -v r="$row" '$1 == r {print $2}' "$results" | median_of_lines)
      p99=$(awk -v r="$row" '$1 == r {print $3}' "$results" | median_of_lines)
      p999=$(awk -v r="$row" '$1 == r {print $4}' "$results" | median_of_lines)
      non2=$(awk -v r="$row" '$1 == r {s += $5} END {print s + 0}' "$results")
      extra=$(awk -v r="$row" '$1 == r {print $6}' "$results" | median_of_lines)
      won=$(awk -v r="$row" '$1 == r {print $7}' "$results" | median_of_lines)
      lost=$(awk -v r="$row" '$1 == r {print $8}' "$results" | median_of_lines)
      skipped=$(awk -v r="$row" '$1 == r {print $9}' "$results" | median_of_lines)
      ratio=$(awk -v a="$p99" -v b="${base:-}" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "NA"}')
      printf '%-7s %9s %9s %9s %9s %7s %7.1f%% %6s%% %6.0f %6.0f %8.0f\n' "$row" "$p50" "$p99" "$p999" "$ratio" "$non2" \
        "$(awk -v e="$extra" 'BEGIN {print e * 100}')" "$(row_budget "$row")" "$won" "$lost" "$skipped"
    done
    echo "(extra: upstream requests per client request - 1; budget: hedge-budget, plus one hedge a second; won/lost/skipped: breakwater_hedges_total, medians)"
  } | tee ${OUT:+"$OUT"}
}

main "$@"
