#!/usr/bin/env bash
# benches/soak.sh - breakwater under mixed keep-alive load, broken clients and
# restarting endpoints, for minutes: leaks, broken pipes, unexplained failures.
#
#   benches/soak.sh [options]          # 3 min at 200 req/s (+ a release build if stale)
#   benches/soak.sh --duration 30 --debug
#
# Upstream and app: benches/soak.py server (ThreadingHTTPServer, HTTP/1.1
# keep-alive; GET answers, POST echoes its body), each run by `soak.py supervise`,
# which SIGKILLs it on a schedule and starts it again DOWN s later: the upstream
# every UP_EVERY s, the app every APP_EVERY s (first at APP_PHASE). breakwater
# (`run`, default flags) with --inbound-addr/--app-addr/--outbound-addr/--admin-addr
# on free loopback ports. Load (`soak.py drive`): RATE req/s, of which BROKEN_SHARE %
# from broken clients (chunk sizes `+3`/`0x3`, uploads aborted by close or RST, in
# bursts of 1-6), the rest from WORKERS paced keep-alive workers (one
# http.client connection each, reconnecting after Connection: close) through both
# listeners: GET, POST 1-8 KiB (with and without Idempotency-Key, some chunked);
# outbound by Host header and absolute-form target. Plus SLOW slow readers (GET
# /big read at ~128 KiB/s) and SLOW slow uploaders (4 KiB over 2 s).
# Every 10 s one line: requests, 2xx share, non-2xx by kind (status +
# x-breakwater-reason, or the client's error class), broken clients' outcomes,
# circuit opens, breakwater's RSS / fds / threads. At the end: totals, the
# RSS/fd trend (median of the first vs the last third of 1 s samples), broken
# pipes on reused connections, and the circuit / client-error families of /metrics.
#
# Exit 1 if: RSS last third > first third x 1.5 + 8 MiB, or fds > x 1.5 + 32; a
# well-behaved request got no answer (connection error with no Connection: close
# before it), a wrong answer, or a 5xx that neither the servers nor a
# x-breakwater-reason explain; breakwater exited. breakwater's 502/503 answers
# (connect-failure, reset, circuit-open) are counted by kind, near a restart or not.
#
# Options (also env vars):
#   --duration S        seconds of load                         DURATION=180
#   --rate R            requests/s offered in all               RATE=200
#   --bin PATH          breakwater binary to run (no build)     BIN=
#   --debug             target/debug (cargo build --locked if older than src)
#   --no-build          use target/release as it is             BUILD=1
#   --summary FILE      also write the figures as JSON          SUMMARY=
#   --no-restarts       neither the upstream nor the app restarts (UP_EVERY=0 APP_EVERY=0)
#   --keep              keep the work dir (logs, events)        KEEP=0
# Env: PYTHON, BASE_PORT=28800 (5 ports from there), WORKERS=16, SLOW=2,
#   BROKEN_SHARE=2 (%), UP_EVERY=20, APP_EVERY=30, APP_PHASE=15 (s; EVERY 0 = never), DOWN=1,
#   BW_FLAGS= (extra breakwater flags).
# Without --bin/--debug: target/release/breakwater if newer than src/, Cargo.toml
# and Cargo.lock, else `cargo build --release --locked` first (~3+ min on 2 cores).
# Everything listens on 127.0.0.1; every process is tracked and stopped by PID on
# exit, Ctrl-C included; the load is bounded by `timeout`.

set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOP=$(git -C "$HERE" rev-parse --show-toplevel) || { echo "soak.sh: not in a git checkout" >&2; exit 1; }
HELPER="$HERE/soak.py"
PYTHON=${PYTHON:-python3}
HOST=127.0.0.1
BASE_PORT=${BASE_PORT:-28800}
DURATION=${DURATION:-180}
RATE=${RATE:-200}
BIN=${BIN:-}
PROFILE=release
BUILD=${BUILD:-1}
SUMMARY=${SUMMARY:-}
KEEP=${KEEP:-0}
WORKERS=${WORKERS:-16}
SLOW=${SLOW:-2}
BROKEN_SHARE=${BROKEN_SHARE:-2}
UP_EVERY=${UP_EVERY:-20}
APP_EVERY=${APP_EVERY:-30}
APP_PHASE=${APP_PHASE:-15}
DOWN=${DOWN:-1}
BW_FLAGS=${BW_FLAGS:-}

NEXT_PORT=$BASE_PORT
WORK=""
declare -a STARTED=()

# log, die, port_free, wait_port, stop_tree; fresh_port, start_tracked, stop_tracked, cleanup_tracked
source "$HERE/lib.sh"
usage() { sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }

parse_args() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --duration) DURATION=$2; shift ;;
      --rate) RATE=$2; shift ;;
      --bin) BIN=$2; shift ;;
      --debug) PROFILE=debug ;;
      --no-build) BUILD=0 ;;
      --summary) SUMMARY=$2; shift ;;
      --no-restarts) UP_EVERY=0; APP_EVERY=0 ;;
      --keep) KEEP=1 ;;
      -h|--help) usage ;;
      *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
  done
  local v
  for v in DURATION RATE WORKERS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"
  done
  for v in UP_EVERY APP_EVERY APP_PHASE BROKEN_SHARE SLOW; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number (UP_EVERY/APP_EVERY 0: no restarts)"
  done
  (( BROKEN_SHARE <= 100 )) || die "BROKEN_SHARE is a percentage"
  (( DURATION <= 3600 && RATE <= 2000 && WORKERS <= 200 )) || die "DURATION <= 3600, RATE <= 2000, WORKERS <= 200"
}

stale() { # stale <binary>: missing, or older than a source file
  [[ -x $1 ]] || return 0
  [[ -n $(find "$TOP/src" "$TOP/Cargo.toml" "$TOP/Cargo.lock" -newer "$1" -print -quit 2>/dev/null) ]]
}

pick_binary() {
  if [[ -n $BIN ]]; then
    [[ -x $BIN ]] || die "not an executable: $BIN"
    return
  fi
  BIN="$TOP/target/$PROFILE/breakwater"
  if [[ $BUILD == 1 ]] && stale "$BIN"; then
    local flags=(--locked); [[ $PROFILE == release ]] && flags+=(--release)
    log "cargo build ${flags[*]} (the binary is missing or older than src/)"
    (cd "$TOP" && cargo build "${flags[@]}") >&2 || die "build failed"
  fi
  [[ -x $BIN ]] || die "no binary at $BIN"
}

main() {
  parse_args "$@"
  command -v "$PYTHON" >/dev/null || die "not found: $PYTHON"
  command -v timeout >/dev/null || die "not found: timeout"
  pick_binary
  trap cleanup_tracked EXIT
  trap 'exit 130' INT TERM
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/soak.XXXXXX")
  # a copy, so that a rebuild during the run cannot change the binary under us
  cp "$BIN" "$WORK/breakwater"
  log "work dir $WORK; binary $BIN ($(stat -c '%y' "$BIN" | cut -d. -f1)); repo HEAD $(git -C "$TOP" rev-parse --short HEAD)"

  local up app inb outb admin
  fresh_port; up=$PORT; fresh_port; app=$PORT; fresh_port; inb=$PORT; fresh_port; outb=$PORT; fresh_port; admin=$PORT

  start_tracked "$WORK/upstream.log" "$PYTHON" "$HELPER" supervise --name upstream --port "$up" \
    --every "$UP_EVERY" --phase "$UP_EVERY" --down "$DOWN" --events "$WORK/events-upstream.jsonl"
  wait_port "$up" "$PID" || die "upstream did not start: $(tail -5 "$WORK/upstream.log")"
  start_tracked "$WORK/app.log" "$PYTHON" "$HELPER" supervise --name app --port "$app" \
    --every "$APP_EVERY" --phase "$APP_PHASE" --down "$DOWN" --events "$WORK/events-app.jsonl"
  wait_port "$app" "$PID" || die "app did not start: $(tail -5 "$WORK/app.log")"

  # shellcheck disable=SC2086 # BW_FLAGS: extra flags, split on spaces
  start_tracked "$WORK/breakwater.log" "$WORK/breakwater" run --log-level warn --log-format text \
    --inbound-addr "$HOST:$inb" --app-addr "$HOST:$app" --outbound-addr "$HOST:$outb" \
    --admin-addr "$HOST:$admin" --drain-delay 0s --drain-timeout 2s $BW_FLAGS
  local bw=$PID
  wait_port "$inb" "$bw" && wait_port "$outb" "$bw" && wait_port "$admin" "$bw" \
    || die "breakwater did not start: $(tail -5 "$WORK/breakwater.log")"
  every() { (( $1 > 0 )) && echo "killed every ${1}s from ${2}s, down ${DOWN}s" || echo "never restarted"; }
  log "upstream :$up ($(every "$UP_EVERY" "$UP_EVERY")), app :$app ($(every "$APP_EVERY" "$APP_PHASE"));" \
    "breakwater pid $bw inbound :$inb outbound :$outb admin :$admin"

  local -a sum=()
  [[ -n $SUMMARY ]] && sum=(--summary "$SUMMARY")
  # in the background, so that Ctrl-C interrupts `wait` at once and the trap stops everything
  timeout $((DURATION + 90)) "$PYTHON" -u "$HELPER" drive --inbound "$inb" --outbound "$outb" --upstream "$up" \
    --admin "$admin" --bw-pid "$bw" --rate "$RATE" --duration "$DURATION" --workers "$WORKERS" \
    --slow "$SLOW" --broken-share "$BROKEN_SHARE" --events "$WORK/events-upstream.jsonl" "$WORK/events-app.jsonl" \
    "${sum[@]}" &
  local driver=$!
  STARTED+=("$driver")
  wait "$driver"
  local rc=$?
  if ! kill -0 "$bw" 2>/dev/null; then
    log "breakwater is gone: $(tail -5 "$WORK/breakwater.log")"
    rc=1
  fi
  local warns
  warns=$(grep -c -E 'WARN|ERROR' "$WORK/breakwater.log" 2>/dev/null)
  log "breakwater log: ${warns:-0} WARN/ERROR lines$([[ $KEEP == 1 ]] || echo ' (--keep keeps it)')"
  (( rc == 124 )) && log "the load driver ran out of time"
  return "$rc"
}

main "$@"
