#!/usr/bin/env bash
# benches/destinations.sh - memory of many known outbound destinations.
#
#   benches/destinations.sh [--no-build] [--bin PATH] [-n DESTINATIONS] [--args "FLAGS"] [--backend-closes]
#
# One nginx worker listens on the wildcard address, so that every 127.x.y.z
# reaches it; a Python client sends one GET to each of N (default 10000)
# destinations through breakwater's outbound listener (`run --threads 1`, one
# keep-alive client connection, `Host: 127.1.x.y:PORT`), so each destination
# gets a state of its own (breakers, budget, pool, recent traffic) and one
# pooled upstream connection. VmRSS and RssAnon of breakwater are read:
#   idle         right after start, before any request
#   after N      right after the last answer (N pooled upstream connections open)
#   pools closed once --upstream-idle-timeout (5 s here) has closed them: what
#                the destination states alone hold
#   expired      once --destination-idle-timeout (20 s here) has dropped the
#                states (what the allocator gave back)
# and /metrics' breakwater_destinations, to check how many were kept.
# --backend-closes: nginx closes every connection after its answer
# (keepalive_timeout 0), so no upstream connection stays pooled and what is
# left is the destination states alone (glibc keeps freed memory in its
# arenas, so "pools closed" does not show that by itself).
# Target (issue 20): 10,000 destinations <= 64 MiB. --args adds flags to
# `breakwater run` (word-split), e.g. --args "--metrics-max-destinations 10000".
# Needs nginx, python3, curl. Ports 28620-28622 on 127.0.0.1 (28620 on 0.0.0.0).

set -uo pipefail

TOP=$(cd "$(dirname "$0")/.." && pwd)
BIN=
BUILD=1
N=10000
EXTRA=
KEEPALIVE=120s
HOST=127.0.0.1
BACKEND_PORT=28620
OUT_PORT=28621
ADMIN_PORT=28622

# log, die, wait_port, start_tracked, cleanup_tracked, resolve_bin
source "$TOP/benches/lib.sh"

while [[ $# -gt 0 ]]; do
  case $1 in
    --no-build) BUILD=0 ;;
    --bin) BIN=$2; shift ;;
    -n) N=$2; shift ;;
    --args) EXTRA=$2; shift ;;
    --backend-closes) KEEPALIVE=0 ;;
    -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
  shift
done
[[ $N =~ ^[0-9]+$ && $N -gt 0 && $N -lt 16000000 ]] || die "-n needs a count below 16M"
for p in nginx python3 curl; do command -v "$p" >/dev/null || die "needs $p"; done
resolve_bin

declare -a STARTED=()
WORK=$(mktemp -d /tmp/bw-destinations.XXXXXX)
chmod 755 "$WORK"
trap cleanup_tracked EXIT INT TERM
ulimit -n 65536 2>/dev/null || log "could not raise the open-file limit: $(ulimit -n)"

cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile 65536;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 40000; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout $KEEPALIVE;
  server { listen 0.0.0.0:$BACKEND_PORT; location / { return 200 "ok\n"; } }
}
EOF
start_tracked "$WORK/nginx.log" nginx -c "$WORK/nginx.conf" -p "$WORK"
wait_port "$BACKEND_PORT" "$PID" || die "nginx did not start: $(cat "$WORK/nginx-error.log")"

# shellcheck disable=SC2086 # EXTRA is word-split on purpose
start_tracked "$WORK/breakwater.log" "$BIN" run --threads 1 --log-level warn \
  --inbound-addr 127.0.0.1:0 --app-addr "$HOST:$BACKEND_PORT" \
  --outbound-addr "$HOST:$OUT_PORT" --admin-addr "$HOST:$ADMIN_PORT" \
  --upstream-idle-timeout 5s --destination-idle-timeout 20s $EXTRA
BW=$PID
wait_port "$ADMIN_PORT" "$BW" || die "breakwater did not start: $(cat "$WORK/breakwater.log")"
sleep 0.5

python3 - "$BW" "$N" "$HOST" "$OUT_PORT" "$ADMIN_PORT" "$BACKEND_PORT" "$EXTRA" "$KEEPALIVE" <<'EOF'
import http.client, re, sys, time

pid, n, host, out_port, admin_port, backend_port, extra, keepalive = sys.argv[1:]
n, out_port, admin_port = int(n), int(out_port), int(admin_port)

def memory():
    fields = {}
    for line in open(f"/proc/{pid}/status"):
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon"):
            fields[key] = int(rest.split()[0]) / 1024
    return fields["VmRSS"], fields["RssAnon"]

def kept():
    c = http.client.HTTPConnection(host, admin_port, timeout=10)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    m = re.search(r'^breakwater_destinations\{direction="outbound"\} (\S+)', text, re.M)
    return int(float(m.group(1))) if m else -1

rows = [("idle", memory(), kept())]
c = http.client.HTTPConnection(host, out_port, timeout=30)
ok = 0
started = time.monotonic()
for i in range(1, n + 1):
    dest = f"127.{1 + i // 65536}.{(i // 256) % 256}.{i % 256}:{backend_port}"
    c.request("GET", "/", headers={"Host": dest})
    r = c.getresponse()
    r.read()
    ok += r.status == 200
took = time.monotonic() - started
rows.append((f"after {n}", memory(), kept()))
time.sleep(7)
rows.append(("pools closed", memory(), kept()))
time.sleep(35)
rows.append(("expired", memory(), kept()))

print(f"\n{n} destinations, one GET each ({ok} answered 200, {took:.1f} s); flags: {extra or '(defaults)'}")
print("--upstream-idle-timeout 5s, --destination-idle-timeout 20s; backend keep-alive "
      + ("off: no upstream connection pooled" if keepalive == "0" else keepalive) + "\n")
print("| moment | VmRSS MiB | RssAnon MiB | per destination KiB (RssAnon over idle) | breakwater_destinations |")
print("|---|---:|---:|---:|---:|")
idle_anon = rows[0][1][1]
for name, (rss, anon), k in rows:
    per = "" if name == "idle" else f"{(anon - idle_anon) * 1024 / n:.1f}"
    print(f"| {name} | {rss:.1f} | {anon:.1f} | {per} | {k} |")
if ok != n:
    sys.exit(f"only {ok} of {n} requests answered 200")
EOF
