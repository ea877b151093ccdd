#!/usr/bin/env bash
# benches/startup.sh - start to ready: from exec of `breakwater run` to the first
# 200 from its admin `/ready`, with a healthy app already listening.
#
#   benches/startup.sh [--no-build] [--bin PATH] [-n RUNS]
#
# The app is a stdlib Python server answering 200 to everything on 127.0.0.1;
# each run starts a fresh breakwater (`run --threads 1`, inbound to the app) and
# polls /ready every millisecond from Python (one keep-alive-free GET each), so
# the figure includes the poller's own resolution (~1 ms). Prints every run and
# the median, minimum and maximum in milliseconds. Target (issue 20): <= 50 ms.
# Needs python3 and curl. Ports 28600-28602 on 127.0.0.1.

set -uo pipefail

TOP=$(cd "$(dirname "$0")/.." && pwd)
BIN=
BUILD=1
RUNS=10
HOST=127.0.0.1
APP_PORT=28600
IN_PORT=28601
ADMIN_PORT=28602

# log, die, port_free, wait_port, stop_tree, resolve_bin
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

while [[ $# -gt 0 ]]; do
  case $1 in
    --no-build) BUILD=0 ;;
    --bin) BIN=$2; BUILD=0; shift ;;
    -n) RUNS=$2; shift ;;
    -h | --help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1" ;;
  esac
  shift
done

resolve_bin
for p in $APP_PORT $IN_PORT $ADMIN_PORT; do port_free "$p" || die "port $p busy"; done

python3 - "$HOST" "$APP_PORT" >/dev/null 2>&1 <<'PY' &
import http.server, sys
class App(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), App).serve_forever()
PY
APP_PID=$!
trap 'stop_tree $APP_PID' EXIT INT TERM
wait_port "$APP_PORT" "$APP_PID" || die "the app did not start"

python3 - "$BIN" "$HOST" "$APP_PORT" "$IN_PORT" "$ADMIN_PORT" "$RUNS" <<'PY'
import http.client, statistics, subprocess, sys, time
bin_, host, app, inbound, admin, runs = sys.argv[1:7]
times = []
for i in range(int(runs)):
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [bin_, "run", "--threads", "1", "--log-level", "warn",
         "--inbound-addr", f"{host}:{inbound}", "--app-addr", f"{host}:{app}",
         "--outbound-addr", "127.0.0.1:0", "--admin-addr", f"{host}:{admin}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ready = None
    while time.monotonic() - t0 < 10:
        try:
            c = http.client.HTTPConnection(host, int(admin), timeout=1)
            c.request("GET", "/ready")
            if c.getresponse().status == 200:
                ready = (time.monotonic() - t0) * 1000
                break
        except OSError:
            pass
        finally:
            c.close()
        time.sleep(0.001)
    proc.terminate()
    proc.wait()
    if ready is None:
        sys.exit(f"run {i + 1}: /ready never answered 200 within 10 s")
    times.append(ready)
    print(f"run {i + 1}: {ready:.1f} ms")
    time.sleep(0.2)
print(f"start to ready: median {statistics.median(times):.1f} ms "
      f"(min {min(times):.1f}, max {max(times):.1f}, {len(times)} runs)")
PY
