# benches/lib.sh - helpers the benchmark scripts share; sourced, never run.
#
# Each script keeps its own record of what it started (and its cleanup): they
# track different things. What is here only logs, waits on ports and stops a
# process with whatever it started. Everything listens on $HOST (127.0.0.1).

HOST=${HOST:-127.0.0.1}

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

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
