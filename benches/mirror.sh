#!/usr/bin/env bash
# benches/mirror.sh - does a shadow that hangs or fails change the client's
# latency? (mirror=, the strangler-fig copy of requests to a shadow)
#
#   benches/mirror.sh [options]          # builds the release binary, then ~4 min
#
# Claim measured: a shadow that hangs or fails does not change the client's
# latency: p99 within 10 % of the same load with no mirror.
#
# One nginx (one worker) serves the "old" service (200 "ok\n") on one port, a
# healthy shadow (200 "ok\n") on a second and a shadow answering 500 at once
# on a third; benches/mirror_shadow.py is a shadow that accepts and never
# answers; one more free port is left closed (connection refused). Through a
# fresh breakwater per row and round (run --threads THREADS, outbound listener,
# the client names the old service in Host), h2load --h1 -c RATE_CLIENTS --rps
# sends RATE req/s in all (staggered connection starts, one request in flight
# per connection) for WARMUP + DURATION s; the first WARMUP s are cut. Rows:
#
#   none     --route OLD                                   (baseline, no mirror)
#   healthy  --route OLD,mirror=OK@100
#   hang     --route OLD,mirror=HANG@100 --route HANG,timeout=10s
#            (the shadow's default cap on copies in flight: they pile up to it, then are skipped)
#   hang16   --route OLD,mirror=HANG@100 --route HANG,timeout=10s,max-concurrent=16
#   refused  --route OLD,mirror=CLOSED@100
#   e500     --route OLD,mirror=E500@100
#
# Per row: the client's p50 and p99 (2xx, ms), p99 / the no-mirror row's,
# answers that were not 2xx (and requests with no answer) at the client,
# breakwater_mirror_total{outcome} from the admin /metrics at the end of the
# row, the copies still in flight then (answered requests + 1 check request -
# counted outcomes), and breakwater's RSS (ps -o rss), open fds and CPU
# (utime+stime from /proc, start-up included, per 1000 answered requests) at the end.
# REPS rounds, the rows' order rotated each round; medians are reported (non-2xx
# summed over all rounds), then the p99 of every round.
#
# On a shared machine the p99 of a 10 s row moves by 2-10x between rounds (other
# processes' bursts), far more than the 10 % to be judged. --paired runs every
# row at the same time as a second, no-mirror breakwater (its own h2load at the
# same rate, same nginx) and takes the median over the rounds of the two p99s'
# ratio, so that a burst hits both sides; its none row (no mirror on either
# side) is the control and shows what the method resolves.
#
# Options (also env vars):
#   --bin PATH          measure this breakwater binary (no build)      BIN=
#   --no-build          measure target/release/breakwater as it is     BUILD=1
#   -n, --reps N        rounds                                         REPS=3
#   -d, --duration S    measured seconds per row                       DURATION=10
#   --warmup S          seconds cut at the start of each row           WARMUP=1
#   --rate R            offered req/s (a multiple of RATE_CLIENTS)     RATE=500
#   --rate-clients C    h2load connections                             RATE_CLIENTS=10
#   --rows "LIST"       rows to run ("none" is always run first)       ROWS="none healthy hang hang16 refused e500"
#   --threads T         breakwater worker threads                      THREADS=1
#   --paired            run every row at the same time as a no-mirror   PAIRED=0
#                       breakwater (own h2load, same rate) and compare the two
#                       (on a shared machine, noise then hits both alike)
#   -o, --out FILE      also write the report to FILE                  OUT=
#   --keep              keep the work dir (logs, per-request files)    KEEP=0
# Env: NGINX, H2LOAD, CURL, PYTHON, BASE_PORT=29000 (free ports are taken from
#   there up, each with its +100 twin free for breakwater's admin port),
#   HANG_TIMEOUT=10s, HANG_CAP=16, BW_EXTRA (extra breakwater flags, every row).
# Everything listens on 127.0.0.1; every process is started here, tracked by PID
# and stopped by PID; every client run is bounded by `timeout`.

set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOP=$(git -C "$HERE" rev-parse --show-toplevel) || { echo "mirror.sh: not in a git checkout" >&2; exit 1; }
HELPER="$HERE/mirror_shadow.py"
PYTHON=${PYTHON:-python3}
CURL=${CURL:-curl}
NGINX=${NGINX:-nginx}
H2LOAD=${H2LOAD:-h2load}
HOST=127.0.0.1
BASE_PORT=${BASE_PORT:-29000}
BIN=${BIN:-}
BUILD=${BUILD:-1}
REPS=${REPS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-1}
RATE=${RATE:-500}
RATE_CLIENTS=${RATE_CLIENTS:-10}
ROWS=${ROWS:-none healthy hang hang16 refused e500}
THREADS=${THREADS:-1}
OUT=${OUT:-}
KEEP=${KEEP:-0}
HANG_TIMEOUT=${HANG_TIMEOUT:-10s}
HANG_CAP=${HANG_CAP:-16}
BW_EXTRA=${BW_EXTRA:-}
PAIRED=${PAIRED:-0}

NEXT_PORT=$BASE_PORT
WORK=""
declare -a STARTED=()
declare -a ROW_LIST=()
declare -A ROW_LABEL=()
OLD="" OK="" E500="" HANG="" CLOSED=""

# log, die, port_free, wait_port, stop_tree; fresh_port, start_tracked, stop_tracked, cleanup_tracked
source "$HERE/lib.sh"
usage() { sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }

parse_args() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --bin) BIN=$2; BUILD=0; shift ;;
      --no-build) BUILD=0 ;;
      -n|--reps) REPS=$2; shift ;;
      -d|--duration) DURATION=$2; shift ;;
      --warmup) WARMUP=$2; shift ;;
      --rate) RATE=$2; shift ;;
      --rate-clients) RATE_CLIENTS=$2; shift ;;
      --rows) ROWS=$2; shift ;;
      --threads) THREADS=$2; shift ;;
      --paired) PAIRED=1 ;;
      -o|--out) OUT=$2; shift ;;
      --keep) KEEP=1 ;;
      -h|--help) usage ;;
      *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
  done
  local v
  for v in REPS DURATION RATE RATE_CLIENTS THREADS HANG_CAP; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"
  done
  [[ $WARMUP =~ ^[0-9]+$ ]] || die "WARMUP must be whole seconds"
  (( RATE % RATE_CLIENTS == 0 )) || die "RATE ($RATE) must be a multiple of RATE_CLIENTS ($RATE_CLIENTS)"
  (( DURATION <= 120 && RATE <= 5000 && REPS <= 10 )) || die "DURATION <= 120, RATE <= 5000, REPS <= 10"
  ROW_LIST=(none)
  for v in $ROWS; do
    case "$v" in
      none) ;;
      healthy|hang|hang16|refused|e500) [[ " ${ROW_LIST[*]} " == *" $v "* ]] || ROW_LIST+=("$v") ;;
      *) die "unknown row '$v' (known: none healthy hang hang16 refused e500)" ;;
    esac
  done
}

# ------------------------------------------------------------- processes --
start_backends() {  # nginx: OLD, OK (healthy shadow), E500; the hanging shadow; a closed port
  mkdir -p "$WORK/nginx"
  fresh_port; OLD=$PORT
  fresh_port; OK=$PORT
  fresh_port; E500=$PORT
  fresh_port; HANG=$PORT
  fresh_port; CLOSED=$PORT
  cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  default_type text/plain;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  server { listen $HOST:$OLD;  location / { return 200 "ok\n"; } }
  server { listen $HOST:$OK;   location / { return 200 "ok\n"; } }
  server { listen $HOST:$E500; location / { return 500 "shadow failing\n"; } }
}
EOF
  start_tracked "$WORK/nginx.out" "$NGINX" -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx-error.log"
  local ng=$PID
  wait_port "$OLD" "$ng" 30 && wait_port "$OK" "$ng" && wait_port "$E500" "$ng" \
    || die "nginx did not start: $(tail -5 "$WORK/nginx-error.log" "$WORK/nginx.out" 2>/dev/null)"
  start_tracked "$WORK/hang.out" "$PYTHON" "$HELPER" --host "$HOST" --port "$HANG"
  HANG_PID=$PID
  wait_port "$HANG" "$HANG_PID" || die "hanging shadow did not start: $(tail -5 "$WORK/hang.out")"
  port_free "$CLOSED" || die "port $CLOSED (meant to stay closed) is taken"
  log "old :$OLD, healthy shadow :$OK, 500 shadow :$E500 (nginx pid $ng); hanging shadow :$HANG (pid $HANG_PID); closed :$CLOSED"
}

row_routes() {  # row_routes <key>: sets ROUTES (breakwater --route flags) and ROW_LABEL[key]
  local o="$HOST:$OLD" hang_route="$HOST:$HANG,timeout=$HANG_TIMEOUT"
  case "$1" in
    none)    ROUTES=(--route "$o") ;;
    healthy) ROUTES=(--route "$o,mirror=$HOST:$OK@100") ;;
    hang)    ROUTES=(--route "$o,mirror=$HOST:$HANG@100" --route "$hang_route") ;;
    hang16)  ROUTES=(--route "$o,mirror=$HOST:$HANG@100" --route "$hang_route,max-concurrent=$HANG_CAP") ;;
    refused) ROUTES=(--route "$o,mirror=$HOST:$CLOSED@100") ;;
    e500)    ROUTES=(--route "$o,mirror=$HOST:$E500@100") ;;
  esac
  local shown=${ROUTES[*]}
  shown=${shown//$HOST:$OLD/OLD}; shown=${shown//$HOST:$OK/OK}; shown=${shown//$HOST:$E500/E500}
  shown=${shown//$HOST:$HANG/HANG}; shown=${shown//$HOST:$CLOSED/CLOSED}
  ROW_LABEL[$1]=$shown
}

start_breakwater() {  # start_breakwater <key>; sets BW_PORT BW_ADMIN BW_PID
  local -a extra=()
  [[ -n $BW_EXTRA ]] && read -ra extra <<<"$BW_EXTRA"
  row_routes "$1"
  fresh_port; BW_PORT=$PORT; BW_ADMIN=$((PORT + 100))
  start_tracked "$WORK/bw-$1-$BW_PORT.log" "$BIN" run --threads "$THREADS" --log-level warn --log-format text \
    --outbound-addr "$HOST:$BW_PORT" --inbound-addr "$HOST:0" --admin-addr "$HOST:$BW_ADMIN" \
    --app-addr "$HOST:9" --drain-delay 0s --drain-timeout 1s "${ROUTES[@]}" "${extra[@]}"
  BW_PID=$PID
  wait_port "$BW_PORT" "$BW_PID" && wait_port "$BW_ADMIN" "$BW_PID" \
    || die "breakwater did not start ($1): $(tail -5 "$WORK/bw-$1-$BW_PORT.log")"
}

# ------------------------------------------------------------- measuring --
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$WORK/raw.tsv"; }   # row round metric value
values() { awk -F'\t' -v r="$1" -v m="$2" '$1 == r && $3 == m {print $4}' "$WORK/raw.tsv"; }
median() {
  [[ $# -eq 0 ]] && return
  printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'
}
med() { median $(values "$1" "$2"); }

percentiles() {  # percentiles <h2load log> <skip_s>: "p50 p99 n_2xx n_other span_s" (us, nearest rank)
  local sel="$WORK/sel.tsv"
  sort -n "$1" 2>/dev/null | awk -v skip="$2" 'NR == 1 {t0 = $1} $1 - t0 >= skip * 1e6' >"$sel"
  local other span
  other=$(awk '$2 < 200 || $2 >= 300 {f++} END {print f+0}' "$sel")
  span=$(awk 'NR == 1 {a = $1} {b = $1} END {printf "%.3f", (b - a) / 1e6}' "$sel")
  awk '$2 >= 200 && $2 < 300 {print $3}' "$sel" | sort -g | awk -v f="$other" -v span="$span" '
      {a[++n] = $1}
      function pct(p,  i) {i = int(p * n / 100); if (i < p * n / 100) i++; if (i < 1) i = 1; return a[i]}
      END {if (n == 0) {print "NA NA 0", f, span; exit} print pct(50), pct(99), n, f, span}'
}

cpu_ticks() {  # cpu_ticks <pid>: utime+stime (clock ticks)
  local s rest
  local -a f
  { s=$(< "/proc/$1/stat"); } 2>/dev/null || { echo 0; return; }
  rest=${s##*) }; read -ra f <<<"$rest"   # f[0] is field 3; utime = 14, stime = 15
  echo $(( f[11] + f[12] ))
}

mirror_outcomes() {  # mirror_outcomes <admin>: "match N mismatch N error N skipped N"
  "$CURL" -s --max-time 5 "http://$HOST:$1/metrics" | awk '
    index($0, "breakwater_mirror_total{") == 1 {
      o = $0; sub(/.*outcome="/, "", o); sub(/".*/, "", o); c[o] += $NF }
    END { printf "match %d mismatch %d error %d skipped %d\n", c["match"], c["mismatch"], c["error"], c["skipped"] }'
}

load_bg() {  # load_bg <bw port> <log file> <output file>: h2load in the background; sets LOAD_PID
  local per_client=$((RATE / RATE_CLIENTS)) stagger_ms=$((1000 / RATE))
  (( stagger_ms < 1 )) && stagger_ms=1
  rm -f "$2"
  timeout $((2 * (WARMUP + DURATION) + 30)) "$H2LOAD" --h1 -c "$RATE_CLIENTS" -t 1 --rps "$per_client" \
    -r 1 --rate-period "${stagger_ms}ms" -n $((RATE * (WARMUP + DURATION))) -H ":authority: $HOST:$OLD" \
    --log-file "$2" "http://$HOST:$1/" >"$3" 2>&1 &
  LOAD_PID=$!; STARTED+=("$LOAD_PID")
}

load_wait() {  # load_wait <pid>...: until each load has ended
  local p q
  for p in "$@"; do
    wait "$p" 2>/dev/null
    local -a keep=()
    for q in "${STARTED[@]}"; do [[ $q != "$p" ]] && keep+=("$q"); done
    STARTED=("${keep[@]}")
  done
}

check_request() {  # check_request <key> <bw port>: one GET through breakwater, must be 200
  local code
  code=$("$CURL" -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Host: $HOST:$OLD" "http://$HOST:$2/")
  [[ $code == 200 ]] || die "$1: check request through breakwater gave HTTP $code ($(tail -3 "$WORK/bw-$1-$2.log"))"
}

collect() {  # collect <row> <round> <key> <h2load log> <bw pid> <admin port>: record the row's figures
  local row=$1 rep=$2 key=$3 logf=$4 pid=$5 admin=$6 n_total=$((RATE * (WARMUP + DURATION)))
  local out rss fds cpu stats p50 p99 n2 nother span logged answered m mm e s inflight=0
  # at the end of the row, before anything else reaches breakwater
  out=$(mirror_outcomes "$admin")
  rss=$(ps -o rss= -p "$pid" | tr -d ' ')
  fds=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)
  cpu=$(cpu_ticks "$pid")
  stats=$(percentiles "$logf" "$WARMUP")
  read -r p50 p99 n2 nother span <<<"$stats"
  logged=$(wc -l <"$logf" 2>/dev/null || echo 0)
  answered=$((logged + 1))  # every logged request was answered, + the check request
  read -r _ m _ mm _ e _ s <<<"$out"
  record "$row" "$rep" p50 "$p50"; record "$row" "$rep" p99 "$p99"
  record "$row" "$rep" n2xx "$n2"; record "$row" "$rep" non2xx "$nother"
  record "$row" "$rep" noanswer $((n_total - logged))
  record "$row" "$rep" rate "$(awk -v n="$((n2 + nother))" -v s="$span" 'BEGIN {printf "%.0f", (s > 0) ? n / s : 0}')"
  record "$row" "$rep" match "$m"; record "$row" "$rep" mismatch "$mm"
  record "$row" "$rep" error "$e"; record "$row" "$rep" skipped "$s"
  [[ $key != none ]] && inflight=$((answered - m - mm - e - s))
  record "$row" "$rep" inflight "$inflight"
  record "$row" "$rep" rss "${rss:-0}"; record "$row" "$rep" fds "$fds"
  record "$row" "$rep" cpu1k "$(awk -v c="$cpu" -v hz="$HZ" -v n="$answered" 'BEGIN {printf "%.1f", c / hz * 1000 / n * 1000}')"
  log "  $row round $rep: p50 $p50 us, p99 $p99 us, 2xx $n2, other $nother, no answer $((n_total - logged)); mirror: $out; rss ${rss} kB, fds $fds"
}

run_row() {  # run_row <key> <round>: the row alone
  local key=$1 rep=$2 logf="$WORK/h2load-$1-$2.tsv"
  start_breakwater "$key"
  check_request "$key" "$BW_PORT"
  load_bg "$BW_PORT" "$logf" "$WORK/h2load-$key-$rep.txt"
  load_wait "$LOAD_PID"
  collect "$key" "$rep" "$key" "$logf" "$BW_PID" "$BW_ADMIN"
  stop_tracked "$BW_PID"
}

run_pair() {  # run_pair <key> <round>: the row and a no-mirror breakwater at the same time
  local key=$1 rep=$2 lk="$WORK/h2load-$1-$2.tsv" lb="$WORK/h2load-$1~base-$2.tsv"
  local bp ba bpid kp ka kpid l1 l2
  start_breakwater none; bp=$BW_PORT; ba=$BW_ADMIN; bpid=$BW_PID
  start_breakwater "$key"; kp=$BW_PORT; ka=$BW_ADMIN; kpid=$BW_PID
  check_request none "$bp"; check_request "$key" "$kp"
  load_bg "$bp" "$lb" "$WORK/h2load-$key~base-$rep.txt"; l1=$LOAD_PID
  load_bg "$kp" "$lk" "$WORK/h2load-$key-$rep.txt"; l2=$LOAD_PID
  load_wait "$l1" "$l2"
  collect "$key" "$rep" "$key" "$lk" "$kpid" "$ka"
  collect "$key~base" "$rep" none "$lb" "$bpid" "$ba"
  stop_tracked "$kpid"; stop_tracked "$bpid"
}

# --------------------------------------------------------------- report --
ms() { awk -v u="$1" 'BEGIN {if (u == "" || u == "NA") print "NA"; else printf "%.2f", u / 1000}'; }

base_of() { if [[ $PAIRED == 1 ]]; then echo "$1~base"; else echo none; fi; }

round_ratios() {  # round_ratios <row>: p99(row) / p99(its baseline) of each round, in round order
  awk -F'\t' -v k="$1" -v b="$(base_of "$1")" '$3 == "p99" && $1 == b {y[$2] = $4}
    $3 == "p99" && $1 == k {x[$2] = $4; o[++n] = $2}
    END {for (i = 1; i <= n; i++) if (y[o[i]] > 0) print x[o[i]] / y[o[i]]}' "$WORK/raw.tsv"
}

row_ratio() {  # row_ratio <row>: sequential: median p99 / median no-mirror p99; paired: median of the paired ratios
  if [[ $PAIRED == 1 ]]; then median $(round_ratios "$1"); else
    awk -v a="$(med "$1" p99)" -v b="$(med none p99)" 'BEGIN {if (b > 0 && a != "") print a / b}'
  fi
}

report() {
  local k p50 p99 ratio range non2 noans oc infl rss fds pr bcol=""
  echo "## Mirror: client latency with a shadow that hangs or fails ($(date -u '+%Y-%m-%d %H:%M UTC'))"
  echo
  echo "- breakwater \`run --threads $THREADS\`, outbound listener, $("$BIN" --version 2>/dev/null | head -1)"
  echo "- h2load --h1 -c $RATE_CLIENTS --rps $((RATE / RATE_CLIENTS)): $RATE req/s offered, ${DURATION} s measured after ${WARMUP} s cut; fresh breakwater per row and round; $REPS rounds (order rotated), medians"
  if [[ $PAIRED == 1 ]]; then
    echo "- paired: every row ran at the same time as a no-mirror breakwater (\`--route OLD\`, its own h2load at $RATE req/s, same nginx), and the ratio is the median over the rounds of row p99 / that breakwater's p99 in the same seconds; the none row is the control (no mirror on both sides)"
    bcol=" no-mirror p99 alongside, ms |"
  fi
  echo "- shadows: OK = nginx 200, E500 = nginx 500, HANG = accepts and never answers (mirror_shadow.py), CLOSED = nothing listening"
  echo "- load average $LOAD_START at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end; $(nproc) CPUs"
  echo
  echo "| row | routes | p50 ms | p99 ms |$bcol p99 / no mirror (per-round range) | non-2xx (no answer), all rounds | breakwater_mirror_total at row end | copies in flight at end | RSS MiB at end | fds at end | CPU ms per 1k requests |"
  echo "|---|---|---:|---:|$([[ $PAIRED == 1 ]] && echo -n '---:|')---:|---:|---|---:|---:|---:|---:|"
  for k in "${ROW_LIST[@]}"; do
    p50=$(med "$k" p50); p99=$(med "$k" p99)
    range=$(round_ratios "$k" | sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {if (NR) printf "%.2f–%.2f", lo, hi}')
    ratio=$(row_ratio "$k" | awk '{printf "%.2f", $1}')
    if [[ $PAIRED == 0 && $k == none ]]; then ratio="1 (baseline)"; else ratio="$ratio ($range)"; fi
    non2=$(values "$k" non2xx | awk '{s += $1} END {print s+0}')
    noans=$(values "$k" noanswer | awk '{s += $1} END {print s+0}')
    if [[ $k == none ]]; then oc="–"; infl="–"; else
      oc=$(for o in match mismatch error skipped; do printf '%s %s\n' "$o" "$(med "$k" "$o")"; done |
           awk '$2 > 0 {printf "%s%s %.0f", (n++ ? ", " : ""), $1, $2} END {if (!n) print "none"}')
      infl=$(awk -v v="$(med "$k" inflight)" 'BEGIN {printf "%.0f", v}')
    fi
    rss=$(awk -v v="$(med "$k" rss)" 'BEGIN {printf "%.1f", v / 1024}')
    fds=$(awk -v v="$(med "$k" fds)" 'BEGIN {printf "%.0f", v}')
    [[ $PAIRED == 1 ]] && bcol=" $(ms "$(med "$k~base" p99)") |"
    echo "| $k | \`${ROW_LABEL[$k]}\` | $(ms "$p50") | $(ms "$p99") |$bcol $ratio | $non2 ($noans) | $oc | $infl | $rss | $fds | $(med "$k" cpu1k | awk '{printf "%.0f", $1}') |"
  done
  echo
  echo "Per round (p99 ms; in brackets that round's p99 / its no-mirror p99$([[ $PAIRED == 1 ]] && echo ', measured alongside'); achieved req/s):"
  echo
  echo "| row | p99 per round | achieved req/s per round |"
  echo "|---|---|---|"
  for k in "${ROW_LIST[@]}"; do
    pr=$(paste <(values "$k" p99) <(round_ratios "$k") | awk -F'\t' '{printf "%s%.2f (%.2f)", (NR > 1 ? " / " : ""), $1 / 1000, $2}')
    echo "| $k | $pr | $(values "$k" rate | paste -sd/ | sed 's#/# / #g') |"
  done
  echo
  local worst
  worst=$(for k in "${ROW_LIST[@]}"; do [[ $k == none ]] && continue
            printf '%s %s\n' "$k" "$(row_ratio "$k")"; done | sort -k2 -g | tail -1)
  if [[ -n $worst ]]; then
    awk -v w="$worst" 'BEGIN {split(w, x, " "); printf "Claim (p99 within 10 %% of no mirror): %s (highest: %s, %.2f)\n", (x[2] <= 1.10) ? "held in every row" : "NOT met", x[1], x[2]}'
  fi
}

# --------------------------------------------------------------------- main --
main() {
  parse_args "$@"
  local t
  for t in "$NGINX" "$H2LOAD" "$CURL" "$PYTHON" timeout ps; do
    command -v "$t" >/dev/null || die "not found: $t (apt install nginx nghttp2-client curl)"
  done
  if [[ -z $BIN ]]; then
    if [[ $BUILD == 1 ]]; then
      log "cargo build --release --locked"
      (cd "$TOP" && cargo build --release --locked) >&2 || die "release build failed (--no-build measures the binary already in target/release)"
    fi
    BIN="${CARGO_TARGET_DIR:-$TOP/target}/release/breakwater"
  fi
  [[ -x $BIN ]] || die "no breakwater binary at $BIN"
  trap cleanup_tracked EXIT
  trap 'exit 130' INT TERM
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/mirror.XXXXXX")
  chmod 755 "$WORK"   # nginx workers run as nobody when started as root
  # a copy, so that a rebuild during the run cannot change the binary under us
  cp "$BIN" "$WORK/breakwater"; BIN="$WORK/breakwater"
  : >"$WORK/raw.tsv"
  LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
  HZ=$(getconf CLK_TCK)
  log "work dir: $WORK"
  start_backends
  local rep i n=${#ROW_LIST[@]}
  log "rows: ${ROW_LIST[*]}; $REPS rounds x $n rows x ~$((WARMUP + DURATION + 2)) s"
  for ((rep = 1; rep <= REPS; rep++)); do
    log "round $rep/$REPS"
    for ((i = 0; i < n; i++)); do
      if [[ $PAIRED == 1 ]]; then run_pair "${ROW_LIST[$(( (i + rep - 1) % n ))]}" "$rep"
      else run_row "${ROW_LIST[$(( (i + rep - 1) % n ))]}" "$rep"; fi
    done
  done
  stop_tracked "$HANG_PID"
  log "hanging shadow: $(tail -1 "$WORK/hang.out")"
  local rep_text
  rep_text=$(report)
  echo "$rep_text"
  [[ -n $OUT ]] && printf '%s\n' "$rep_text" >"$OUT"
  return 0
}

main "$@"
