#!/usr/bin/env python3
"""Helpers of benches/soak.sh (Python 3.11 stdlib only, threads).

  soak.py server --name NAME --port P
      ThreadingHTTPServer, HTTP/1.1 keep-alive: GET answers "ok NAME" (GET
      /big?kib=N: N KiB), POST reads the body (Content-Length or chunked) and
      echoes it. Every response carries x-soak-server: NAME, so a response the
      server made is told apart from one breakwater made.
  soak.py supervise --name NAME --port P --every S --phase S --down S --events FILE
      Runs `server` as a child and SIGKILLs it at phase, phase+every, ...;
      starts it again `down` s later (--every 0: never). One JSON line per event in FILE
      ({"name", "event": "kill"|"up", "t": epoch}). SIGTERM: kills the child, exits.
  soak.py table --summary FILE
      The per-interval figures of a `drive --summary` file as a Markdown table.
  soak.py drive --inbound P --outbound P --upstream P --admin P --bw-pid PID
                --rate R --duration S --events FILE... [--summary FILE]
      The load: well-behaved keep-alive clients (one http.client connection per
      worker, reconnecting after Connection: close), slow clients, and a small
      share of broken ones (malformed chunk sizes, aborted uploads). One line
      every 10 s, totals at the end; exit 1 if a check failed.
"""

import argparse
import http.client
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOST = "127.0.0.1"
INTERVAL = 10.0


# ------------------------------------------------------------------ server --
def serve(args):
    name = args.name.encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "soak"
        sys_version = ""

        def log_message(self, *a):
            pass

        def answer(self, body, ctype=b"text/plain"):
            self.send_response(200)
            self.send_header("Content-Type", ctype.decode())
            self.send_header("Content-Length", str(len(body)))
            self.send_header("x-soak-server", args.name)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path.startswith("/big"):
                kib = 64
                if "kib=" in self.path:
                    try:
                        kib = max(1, min(4096, int(self.path.split("kib=", 1)[1].split("&")[0])))
                    except ValueError:
                        pass
                self.answer(b"x" * (kib * 1024))
            else:
                self.answer(b"ok " + name + b"\n")

        def read_body(self):
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                parts = []
                while True:
                    line = self.rfile.readline(1024)
                    if not line.endswith(b"\n"):
                        raise ConnectionError("truncated chunk size")
                    size = int(line.split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(parts)
                    data = self.rfile.read(size + 2)
                    if len(data) != size + 2:
                        raise ConnectionError("truncated chunk")
                    parts.append(data[:size])
            n = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(n) if n else b""
            if len(data) != n:
                raise ConnectionError("truncated body")
            return data

        def do_POST(self):
            try:
                body = self.read_body()
            except (ConnectionError, ValueError, OSError):
                self.close_connection = True
                return
            self.answer(body, b"application/octet-stream")

        do_PUT = do_POST

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.request_queue_size = 512
    srv = ThreadingHTTPServer((HOST, args.port), Handler)
    srv.serve_forever()


def supervise(args):
    me = os.path.abspath(__file__)
    cmd = [sys.executable, me, "server", "--name", args.name, "--port", str(args.port)]
    state = {"child": None, "stop": False}

    def event(name):
        with open(args.events, "a") as f:
            f.write(json.dumps({"name": args.name, "event": name, "t": time.time()}) + "\n")

    def wait_listening(deadline=10.0):
        end = time.time() + deadline
        while time.time() < end:
            try:
                socket.create_connection((HOST, args.port), timeout=0.5).close()
                return True
            except OSError:
                time.sleep(0.02)
        return False

    def start():
        state["child"] = subprocess.Popen(cmd)
        wait_listening()
        event("up")

    def on_term(*_):
        state["stop"] = True
        c = state["child"]
        if c and c.poll() is None:
            c.kill()
            c.wait()
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    start()
    if args.every <= 0:  # no restarts
        while True:
            signal.pause()
    t0 = time.time()
    k = 0
    while not state["stop"]:
        t_kill = t0 + args.phase + k * args.every
        time.sleep(max(0.0, t_kill - time.time()))
        c = state["child"]
        c.kill()
        c.wait()
        event("kill")
        time.sleep(args.down)
        start()
        k += 1


# ------------------------------------------------------------ bookkeeping --
class Stats:
    """Counters per 10 s interval, and totals."""

    def __init__(self, t0, duration):
        self.lock = threading.Lock()
        self.t0 = t0
        self.n_int = int(-(-duration // INTERVAL))
        self.intervals = [self._empty() for _ in range(self.n_int + 1)]
        self.broken_pipes_reused = 0   # reused conn, no Connection: close before, no answer
        self.unexplained = []          # (t, category, kind, detail)
        self.samples = []              # (t, rss_kib, fds, threads)
        self.metric_rows = []          # per interval: circuit opens by direction
        self.circuit_open_away = 0     # 503 circuit-open not near a restart
        self.answers = []              # (t, listener, status, reason) of breakwater's own answers
        self.conns = 0                 # connections the well-behaved clients opened
        self.close_answers = {}        # answers that said Connection: close, by kind
        self.early_answers = {}        # answers read after the upload failed (EPIPE/RST), by kind

    @staticmethod
    def _empty():
        return {"good": 0, "good_ok": 0, "good_err": {}, "broken": 0, "broken_kinds": {},
                "slow": 0, "slow_ok": 0}

    def bucket(self, t):
        return self.intervals[min(self.n_int, max(0, int((t - self.t0) // INTERVAL)))]

    def good(self, t, cat, ok, kind=None):
        with self.lock:
            b = self.bucket(t)
            b["good"] += 1
            if cat == "slow":
                b["slow"] += 1
            if ok:
                b["good_ok"] += 1
                if cat == "slow":
                    b["slow_ok"] += 1
            else:
                b["good_err"][kind] = b["good_err"].get(kind, 0) + 1

    def broken(self, t, kind):
        with self.lock:
            b = self.bucket(t)
            b["broken"] += 1
            b["broken_kinds"][kind] = b["broken_kinds"].get(kind, 0) + 1

    def fail(self, t, cat, kind, detail):
        with self.lock:
            self.unexplained.append((round(t - self.t0, 3), cat, kind, detail))


STOP = threading.Event()


def body_of(n):
    return os.urandom(n // 2).hex().encode()[:n]


# -------------------------------------------------------- well-behaved ---
class Client:
    """One keep-alive connection, reused until a response says Connection: close."""

    def __init__(self, port, timeout, stats):
        self.port, self.timeout, self.stats = port, timeout, stats
        self.conn = None
        self.uses = 0          # responses read on this connection

    def close(self):
        if self.conn is not None:
            self.conn.close()
        self.conn, self.uses = None, 0

    def request(self, method, target, headers, body=None, chunked=False, read_slow=0.0):
        """(status, reason, resp, body, reused, error kind or None, Connection: close?, answered
        while the upload failed?). As curl does, a failed upload still looks for an answer."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
            self.uses = 0
            with self.stats.lock:
                self.stats.conns += 1
        reused = self.uses > 0
        send_err = None
        try:
            if chunked:
                self.conn.request(method, target, body=iter([body[i:i + 1500] for i in range(0, len(body), 1500)]),
                                  headers=headers, encode_chunked=True)
            else:
                self.conn.request(method, target, body=body, headers=headers)
        except (BrokenPipeError, ConnectionResetError) as e:
            send_err = "broken-pipe" if isinstance(e, BrokenPipeError) else "reset"
        except (OSError, http.client.HTTPException) as e:
            return self._err(reused, error_kind(e))
        try:
            if send_err:
                self.conn.sock.settimeout(2.0)
            resp = self.conn.getresponse()
            if read_slow:
                parts = []
                while True:
                    p = resp.read(16384)
                    if not p:
                        break
                    parts.append(p)
                    time.sleep(read_slow)
                data = b"".join(parts)
            else:
                data = resp.read()
        except (OSError, http.client.HTTPException) as e:
            return self._err(reused, send_err or error_kind(e))
        self.uses += 1
        close = resp.will_close
        if close or send_err:
            self.close()
        return resp.status, resp.getheader("x-breakwater-reason"), resp, data, reused, None, close, bool(send_err)

    def _err(self, reused, kind):
        self.close()
        return 0, None, None, b"", reused, kind, False, False


def error_kind(e):
    return {BrokenPipeError: "broken-pipe", ConnectionResetError: "reset",
            http.client.RemoteDisconnected: "closed-no-answer", http.client.IncompleteRead: "truncated",
            socket.timeout: "timeout", ConnectionRefusedError: "refused"}.get(type(e), "conn-" + type(e).__name__)


def classify(status, reason, resp, err):
    if err:
        return err
    return f"{status} {reason or '-'}" if reason else (
        f"{status} from-{resp.getheader('x-soak-server')}" if resp.getheader("x-soak-server") else f"{status} no-reason")


def good_worker(stats, ports, listener, rate, args, seed):
    """Paced at `rate` req/s, one keep-alive connection to one listener."""
    rnd = random.Random(seed)
    port = ports[listener]
    up = f"{HOST}:{ports['upstream']}"
    cl = Client(port, args.client_timeout, stats)
    want = "app" if listener == "inbound" else "upstream"
    nxt = time.time() + rnd.random() / rate
    while not STOP.is_set():
        now = time.time()
        if nxt > now:
            time.sleep(nxt - now)
        nxt = max(nxt + 1.0 / rate, time.time() - 1.0)
        if STOP.is_set():
            break
        path = f"/soak/{rnd.randrange(1000)}"
        if listener == "inbound":
            target, headers = path, {"Host": "app.soak"}
        elif rnd.random() < 0.5:
            target, headers = path, {"Host": up}
        else:
            target, headers = f"http://{up}{path}", {"Host": up}
        x = rnd.random()
        body, chunked, method = None, False, "GET"
        if x >= 0.55:
            method = "POST"
            body = body_of(rnd.randrange(1024, 8192))
            if x >= 0.80:
                headers["Idempotency-Key"] = f"k-{seed}-{rnd.getrandbits(48):x}"
            if rnd.random() < 0.15:
                chunked = True
                headers["Transfer-Encoding"] = "chunked"
            headers["Content-Type"] = "application/octet-stream"
        t = time.time()
        st, reason, resp, data, reused, err, close, early = cl.request(method, target, headers, body, chunked)
        note_close(stats, st, reason, resp, err, close, early)
        record(stats, t, "good", st, reason, resp, data, reused, err, method, body, want, listener)


def note_close(stats, st, reason, resp, err, close, early):
    if err:
        return
    k = classify(st, reason, resp, err)
    with stats.lock:
        if close:
            stats.close_answers[k] = stats.close_answers.get(k, 0) + 1
        if early:
            k += " with Connection: close" if close else " WITHOUT Connection: close"
            stats.early_answers[k] = stats.early_answers.get(k, 0) + 1


def record(stats, t, cat, st, reason, resp, data, reused, err, method, body, want, listener):
    kind = classify(st, reason, resp, err)
    if err:
        stats.good(t, cat, False, f"{listener}:{kind}{' (reused)' if reused else ''}")
        if reused:
            with stats.lock:
                stats.broken_pipes_reused += 1
        stats.fail(t, cat, kind, f"{listener} {method} reused={reused}: no answer, no Connection: close before")
        return
    from_server = resp.getheader("x-soak-server")
    if 200 <= st < 300:
        if from_server != want or (method == "POST" and data != body):
            stats.good(t, cat, False, f"{listener}:bad-answer")
            stats.fail(t, cat, "bad-answer", f"{listener} {method} from {from_server}, {len(data)} bytes")
        else:
            stats.good(t, cat, True)
        return
    stats.good(t, cat, False, f"{listener}:{kind}")
    if reason:
        with stats.lock:
            stats.answers.append((time.time(), listener, st, reason))  # answer time
    elif st >= 500 and not from_server:
        stats.fail(t, cat, kind, f"{listener} {method}: breakwater {st} without x-breakwater-reason")


def slow_reader(stats, ports, listener, args, seed):
    """Keep-alive, long idle gaps, GET /big read at ~128 KiB/s."""
    rnd = random.Random(seed)
    cl = Client(ports[listener], args.client_timeout, stats)
    up = f"{HOST}:{ports['upstream']}"
    want = "app" if listener == "inbound" else "upstream"
    while not STOP.wait(rnd.uniform(1.0, 4.0)):
        headers = {"Host": "app.soak" if listener == "inbound" else up}
        t = time.time()
        st, reason, resp, data, reused, err, close, early = cl.request("GET", f"/big?kib={rnd.choice([64, 256])}",
                                                            headers, read_slow=0.12)
        note_close(stats, st, reason, resp, err, close, early)
        record(stats, t, "slow", st, reason, resp, data, reused, err, "GET", None, want, listener)


def slow_body(stats, ports, listener, args, seed):
    """Keep-alive; POST of 4 KiB sent 512 bytes at a time over ~2 s."""
    rnd = random.Random(seed)
    port = ports[listener]
    up = f"{HOST}:{ports['upstream']}"
    want = "app" if listener == "inbound" else "upstream"
    sock, uses = None, 0
    while not STOP.wait(rnd.uniform(0.5, 2.0)):
        body = body_of(4096)
        host = "app.soak" if listener == "inbound" else up
        head = (f"POST /slow-body HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode()
        t = time.time()
        if sock is None:
            try:
                sock = socket.create_connection((HOST, port), timeout=args.client_timeout)
            except OSError as e:
                stats.good(t, "slow", False, f"{listener}:connect-{type(e).__name__}")
                stats.fail(t, "slow", "connect", str(e))
                continue
            uses = 0
            with stats.lock:
                stats.conns += 1
        reused = uses > 0
        err = None
        try:
            sock.sendall(head)
            for i in range(0, len(body), 512):
                sock.sendall(body[i:i + 512])
                time.sleep(0.25)
        except BrokenPipeError:
            err = "broken-pipe-mid-upload"
        except ConnectionResetError:
            err = "reset-mid-upload"
        except OSError as e:
            err = "mid-upload-" + type(e).__name__
        # Whatever happened to the upload, a response may be there: read it.
        resp = None
        try:
            sock.settimeout(args.client_timeout if err is None else 2.0)
            resp = http.client.HTTPResponse(sock, method="POST")
            resp.begin()
            data = resp.read()
        except (OSError, http.client.HTTPException, ValueError) as e:
            resp = None
            err = err or {"ConnectionResetError": "reset", "RemoteDisconnected": "closed-no-answer",
                          "TimeoutError": "timeout", "BrokenPipeError": "broken-pipe",
                          "IncompleteRead": "truncated"}.get(type(e).__name__, "conn-" + type(e).__name__)
        if resp is None:
            sock.close()
            sock = None
            record(stats, t, "slow", 0, None, None, b"", reused, err, "POST", body, want, listener)
            continue
        uses += 1
        note_close(stats, resp.status, resp.getheader("x-breakwater-reason"), resp, None, resp.will_close, bool(err))
        if resp.will_close or err:
            sock.close()
            sock = None
        record(stats, t, "slow", resp.status, resp.getheader("x-breakwater-reason"), resp, data, reused,
               None, "POST", body, want, listener)
    if sock is not None:
        sock.close()


# ------------------------------------------------------------- broken ---
def read_answer(sock, timeout):
    """The status and x-breakwater-reason of whatever comes back, or the error class."""
    sock.settimeout(timeout)
    buf = b""
    try:
        while b"\r\n\r\n" not in buf:
            d = sock.recv(65536)
            if not d:
                return "closed" if not buf else "closed-mid-head"
            buf += d
    except ConnectionResetError:
        return "reset"
    except (socket.timeout, TimeoutError):
        return "timeout" if not buf else "timeout-mid-head"
    except OSError as e:
        return type(e).__name__
    lines = buf.split(b"\r\n\r\n")[0].split(b"\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return "garbage"
    reason = "-"
    for ln in lines[1:]:
        k, _, v = ln.partition(b":")
        if k.strip().lower() == b"x-breakwater-reason":
            reason = v.strip().decode()
    return f"{status} {reason}"


def broken_one(stats, ports, args, rnd):
    listener = rnd.choice(["inbound", "outbound"])
    host = "app.soak" if listener == "inbound" else f"{HOST}:{ports['upstream']}"
    kind = rnd.choice(["chunk+3", "chunk0x3", "abort", "abort-rst"])
    t = time.time()
    try:
        s = socket.create_connection((HOST, ports[listener]), timeout=5)
    except OSError:
        stats.broken(t, f"{listener}:{kind}:connect-failed")
        return
    try:
        if kind.startswith("chunk"):
            bad = b"+3" if kind == "chunk+3" else b"0x3"
            s.sendall(f"POST /broken HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
                      f"Content-Type: text/plain\r\n\r\n".encode() + b"5\r\nhello\r\n" + bad + b"\r\nabc\r\n0\r\n\r\n")
            out = read_answer(s, 5.0)
        else:
            s.sendall(f"POST /broken HTTP/1.1\r\nHost: {host}\r\nContent-Length: 8192\r\n"
                      f"Content-Type: text/plain\r\n\r\n".encode() + b"a" * rnd.randrange(100, 4000))
            time.sleep(rnd.uniform(0.0, 0.2))
            if kind == "abort-rst":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            out = "aborted"
    except OSError as e:
        out = "send-" + type(e).__name__
    finally:
        s.close()
    stats.broken(t, f"{listener}:{kind}:{out}")


def broken_driver(stats, ports, args, rate):
    """Broken clients in bursts of 1-6 at once, `rate` requests/s on average."""
    rnd = random.Random(7)
    mean_burst = 3.5
    sem = threading.Semaphore(32)
    while not STOP.wait(rnd.expovariate(rate / mean_burst)):
        for _ in range(rnd.randint(1, 6)):
            if not sem.acquire(blocking=False):
                break

            def run(r=random.Random(rnd.getrandbits(32))):
                try:
                    broken_one(stats, ports, args, r)
                finally:
                    sem.release()

            threading.Thread(target=run, daemon=True).start()


# ------------------------------------------------------------- monitor ---
def proc_sample(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            st = f.read()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    rss = thr = 0
    for ln in st.splitlines():
        if ln.startswith("VmRSS:"):
            rss = int(ln.split()[1])
        elif ln.startswith("Threads:"):
            thr = int(ln.split()[1])
    return rss, fds, thr


def scrape(admin):
    try:
        with urllib.request.urlopen(f"http://{HOST}:{admin}/metrics", timeout=3) as r:
            return r.read().decode()
    except OSError:
        return ""


def metric_sum(text, name, must=()):
    s = 0.0
    for ln in text.splitlines():
        if ln.startswith(name + "{") or ln.startswith(name + " "):
            if all(m in ln for m in must):
                try:
                    s += float(ln.rsplit(None, 1)[1])
                except (IndexError, ValueError):
                    pass
    return s


def fmt_kinds(d, limit=8):
    if not d:
        return "-"
    items = sorted(d.items(), key=lambda kv: -kv[1])
    s = ", ".join(f"{k}×{v}" for k, v in items[:limit])
    return s + (f", +{len(items) - limit} more" if len(items) > limit else "")


def interval_line(i, b, sample, opens):
    n = b["good"]
    ok = 100.0 * b["good_ok"] / n if n else 0.0
    rss, fds, thr = sample if sample else (0, 0, 0)
    return (f"[{i * INTERVAL:4.0f}-{(i + 1) * INTERVAL:4.0f}s] req {n:5d} ok {ok:6.2f}%  "
            f"errors: {fmt_kinds(b['good_err'])}  | broken {b['broken']:3d}: {fmt_kinds(b['broken_kinds'], 4)}"
            f"  | opens in/out {opens[0]:.0f}/{opens[1]:.0f}  | rss {rss / 1024:.1f} MiB fds {fds} threads {thr}")


def thirds_median(vals):
    k = max(1, len(vals) // 3)
    return statistics.median(vals[:k]), statistics.median(vals[-k:])


def load_events(paths):
    ev = []
    for p in paths:
        try:
            with open(p) as f:
                for ln in f:
                    try:
                        ev.append(json.loads(ln))
                    except ValueError:
                        pass
        except OSError:
            pass
    return ev


def drive(args):
    ports = {"inbound": args.inbound, "outbound": args.outbound, "upstream": args.upstream}
    t0 = time.time()
    stats = Stats(t0, args.duration)
    rate_broken = args.rate * args.broken_share / 100.0
    rate_good = args.rate - rate_broken
    threads = []
    per = rate_good / args.workers
    for w in range(args.workers):
        listener = "inbound" if w % 2 == 0 else "outbound"
        threads.append(threading.Thread(target=good_worker, args=(stats, ports, listener, per, args, 1000 + w),
                                        daemon=True))
    for w in range(args.slow):
        listener = "inbound" if w % 2 == 0 else "outbound"
        threads.append(threading.Thread(target=slow_reader, args=(stats, ports, listener, args, 2000 + w), daemon=True))
        threads.append(threading.Thread(target=slow_body, args=(stats, ports, listener, args, 3000 + w), daemon=True))
    if rate_broken > 0:
        threads.append(threading.Thread(target=broken_driver, args=(stats, ports, args, rate_broken), daemon=True))
    print(f"soak: {args.duration:.0f} s at {args.rate:.0f} req/s ({rate_good:.0f} well-behaved over "
          f"{args.workers} keep-alive workers, {rate_broken:.1f} broken), {args.slow} slow readers + "
          f"{args.slow} slow uploaders; breakwater pid {args.bw_pid}", flush=True)
    for th in threads:
        th.start()

    bw_dead = False
    prev_opens = (0.0, 0.0)
    i = 0
    end = t0 + args.duration
    while True:
        # one /proc sample a second; one line at the end of every interval
        nxt_line = t0 + (i + 1) * INTERVAL
        while time.time() < min(nxt_line, end):
            s = proc_sample(args.bw_pid)
            if s is None:
                bw_dead = True
                break
            stats.samples.append((time.time() - t0,) + s)
            time.sleep(max(0.0, min(1.0, min(nxt_line, end) - time.time())))
        if bw_dead or time.time() >= end:
            break
        text = scrape(args.admin)
        opens = (metric_sum(text, "breakwater_circuit_transitions_total", ('direction="inbound"', 'to="open"')),
                 metric_sum(text, "breakwater_circuit_transitions_total", ('direction="outbound"', 'to="open"')))
        d = (opens[0] - prev_opens[0], opens[1] - prev_opens[1])
        prev_opens = opens
        stats.metric_rows.append(d)
        with stats.lock:
            print(interval_line(i, stats.intervals[i], stats.samples[-1][1:] if stats.samples else None, d), flush=True)
        i += 1
    STOP.set()
    for th in threads:
        th.join(timeout=args.client_timeout + 5)
    time.sleep(1.0)  # let broken bursts end
    if bw_dead:
        print("breakwater exited during the soak!", flush=True)

    # the last (partial) interval, then requests answered after the end fold into it
    if i < stats.n_int:
        text = scrape(args.admin)
        opens = (metric_sum(text, "breakwater_circuit_transitions_total", ('direction="inbound"', 'to="open"')),
                 metric_sum(text, "breakwater_circuit_transitions_total", ('direction="outbound"', 'to="open"')))
        d = (opens[0] - prev_opens[0], opens[1] - prev_opens[1])
        stats.metric_rows.append(d)
        for j in range(i, stats.n_int + 1):
            if j > i:
                b, extra = stats.intervals[i], stats.intervals[j]
                for key in ("good", "good_ok", "broken", "slow", "slow_ok"):
                    b[key] += extra[key]
                for key in ("good_err", "broken_kinds"):
                    for k, v in extra[key].items():
                        b[key][k] = b[key].get(k, 0) + v
        print(interval_line(i, stats.intervals[i], stats.samples[-1][1:] if stats.samples else None, d), flush=True)
    return report(args, stats, bw_dead)


def report(args, stats, bw_dead):
    tot = Stats._empty()
    for b in stats.intervals:
        for key in ("good", "good_ok", "broken", "slow", "slow_ok"):
            tot[key] += b[key]
        for key in ("good_err", "broken_kinds"):
            for k, v in b[key].items():
                tot[key][k] = tot[key].get(k, 0) + v
    n = tot["good"]
    failures = []
    print()
    print(f"totals: {n} well-behaved requests ({tot['slow']} of them slow), "
          f"{100.0 * tot['good_ok'] / n if n else 0:.3f}% 2xx; {tot['broken']} broken-client requests")
    print(f"  well-behaved non-2xx by kind: {fmt_kinds(tot['good_err'], 30)}")
    bk = {}
    for k, v in tot["broken_kinds"].items():
        _, kind, out = k.split(":", 2)
        bk[f"{kind} -> {out}"] = bk.get(f"{kind} -> {out}", 0) + v
    print(f"  broken clients (kind -> what they got): {fmt_kinds(bk, 30)}")

    # breakwater's own answers: near a restart of what they were for, or not
    ev = load_events(args.events)
    downs = {"app": [], "upstream": []}
    for e in sorted(ev, key=lambda e: e["t"]):
        if e["event"] == "kill":
            downs[e["name"]].append([e["t"], None])
        elif e["event"] == "up" and downs[e["name"]] and downs[e["name"]][-1][1] is None:
            downs[e["name"]][-1][1] = e["t"]
    near, away = {}, {}
    for t, listener, st, reason in stats.answers:
        name = "app" if listener == "inbound" else "upstream"
        hit = any(k - 0.5 <= t <= (u or k + 60) + args.after_restart for k, u in downs[name])
        key = f"{listener}:{st} {reason}"
        (near if hit else away)[key] = (near if hit else away).get(key, 0) + 1
    print(f"  restarts: upstream {len(downs['upstream'])}, app {len(downs['app'])}; breakwater's own answers "
          f"within {args.after_restart:.0f} s of a restart of their destination: {fmt_kinds(near, 20)}")
    print(f"  breakwater's own answers away from any restart (not explained by one): {fmt_kinds(away, 20)}")

    # trend: first vs last third of the 1 s samples
    verdicts = []
    if len(stats.samples) >= 6:
        rss = [s[1] for s in stats.samples]
        fds = [s[2] for s in stats.samples]
        thr = [s[3] for s in stats.samples]
        (r1, r3), (f1, f3), (t1, t3) = thirds_median(rss), thirds_median(fds), thirds_median(thr)
        print(f"trend (median of first vs last third of {len(rss)} 1-s samples): RSS {r1 / 1024:.1f} -> "
              f"{r3 / 1024:.1f} MiB (max {max(rss) / 1024:.1f}), fds {f1:.0f} -> {f3:.0f} (max {max(fds)}), "
              f"threads {t1:.0f} -> {t3:.0f}")
        if r3 > r1 * 1.5 + 8 * 1024:
            verdicts.append(f"RSS grows: {r1 / 1024:.1f} -> {r3 / 1024:.1f} MiB (> x1.5 + 8 MiB)")
        if f3 > f1 * 1.5 + 32:
            verdicts.append(f"fds grow: {f1:.0f} -> {f3:.0f} (> x1.5 + 32)")
    else:
        verdicts.append("too few /proc samples for a trend")
    print(f"well-behaved clients opened {stats.conns} connections for {n} requests; answers with "
          f"Connection: close: {fmt_kinds(stats.close_answers, 20)}")
    print(f"answers read after the client's upload failed (answered before the body was read): "
          f"{fmt_kinds(stats.early_answers, 20)}")
    print(f"broken pipes/resets on reused keep-alive connections with no Connection: close before: "
          f"{stats.broken_pipes_reused}")
    kinds = {}
    for t, cat, kind, _ in stats.unexplained:
        kinds[f"{cat}:{kind}"] = kinds.get(f"{cat}:{kind}", 0) + 1
    print(f"well-behaved requests without an answer or a reason: {len(stats.unexplained)}"
          f" ({fmt_kinds(kinds, 20)})")
    for u in stats.unexplained[:8]:
        print(f"    t={u[0]:.2f}s {u[1]} {u[2]}: {u[3]}")
    if stats.unexplained:
        verdicts.append(f"{len(stats.unexplained)} well-behaved requests got no answer or no reason")
    if bw_dead:
        verdicts.append("breakwater exited")

    text = scrape(args.admin)
    print("\n/metrics (circuit and client-error families, non-zero):")
    shown = 0
    for ln in text.splitlines():
        if ln.startswith(("breakwater_circuit_state", "breakwater_circuit_transitions",
                          "breakwater_client_errors", "breakwater_upstream_failures_total",
                          "breakwater_rejected_total", "breakwater_retries_total",
                          "breakwater_retries_skipped_total", "breakwater_connections_total")) and not ln.endswith(" 0"):
            print("  " + ln)
            shown += 1
    if "breakwater_client_errors" not in text:
        print("  (no breakwater_client_errors_total family in this build)")
    if not text:
        print("  (admin endpoint did not answer)")

    summary = {
        "duration": args.duration, "rate": args.rate,
        "intervals": [{"good": b["good"], "ok": b["good_ok"], "errors": b["good_err"],
                       "broken": b["broken"], "broken_kinds": b["broken_kinds"]} for b in stats.intervals],
        "circuit_opens": stats.metric_rows, "samples": stats.samples,
        "totals": tot, "broken_client_outcomes": bk, "near_restart": near, "away_from_restart": away,
        "broken_pipes_reused": stats.broken_pipes_reused, "conns": stats.conns,
        "close_answers": stats.close_answers, "early_answers": stats.early_answers, "unexplained": stats.unexplained,
        "verdicts": verdicts, "metrics": [ln for ln in text.splitlines() if ln.startswith("breakwater_circuit")
                                          or ln.startswith("breakwater_client_errors")],
    }
    if args.summary:
        with open(args.summary, "w") as f:
            json.dump(summary, f)
    print()
    if verdicts:
        print("SOAK FAILED: " + "; ".join(verdicts))
        return 1
    print("SOAK PASSED")
    return 0


def table(args):
    with open(args.summary) as f:
        s = json.load(f)
    samples = s["samples"]
    print("| s | requests | 2xx | breakwater's answers and client errors | broken clients | circuit opens in/out "
          "| RSS MiB | fds | threads |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|")
    for i, b in enumerate(s["intervals"]):
        if not b["good"]:
            continue
        sm = [x for x in samples if i * INTERVAL <= x[0] < (i + 1) * INTERVAL] or samples[-1:]
        last = sm[-1] if sm else (0, 0, 0, 0)
        opens = s["circuit_opens"][i] if i < len(s["circuit_opens"]) else (0, 0)
        errs = ", ".join(f"{k} {v}" for k, v in sorted(b["errors"].items(), key=lambda kv: -kv[1])) or "-"
        print(f"| {i * INTERVAL:.0f}-{(i + 1) * INTERVAL:.0f} | {b['good']} | {100.0 * b['ok'] / b['good']:.2f}% | "
              f"{errs} | {b['broken']} | {opens[0]:.0f}/{opens[1]:.0f} | {last[1] / 1024:.1f} | {last[2]} | {last[3]} |")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server")
    s.add_argument("--name", required=True)
    s.add_argument("--port", type=int, required=True)
    s = sub.add_parser("supervise")
    s.add_argument("--name", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--every", type=float, required=True)
    s.add_argument("--phase", type=float, required=True)
    s.add_argument("--down", type=float, default=1.0)
    s.add_argument("--events", required=True)
    s = sub.add_parser("table")
    s.add_argument("--summary", required=True)
    s = sub.add_parser("drive")
    for p in ("inbound", "outbound", "upstream", "admin", "bw-pid"):
        s.add_argument("--" + p, type=int, required=True)
    s.add_argument("--rate", type=float, default=200)
    s.add_argument("--duration", type=float, default=180)
    s.add_argument("--workers", type=int, default=16)
    s.add_argument("--slow", type=int, default=2)
    s.add_argument("--broken-share", type=float, default=2.0, help="% of --rate")
    s.add_argument("--client-timeout", type=float, default=20.0)
    s.add_argument("--after-restart", type=float, default=8.0)
    s.add_argument("--events", nargs="*", default=[])
    s.add_argument("--summary")
    args = ap.parse_args()
    if args.cmd == "server":
        serve(args)
    elif args.cmd == "supervise":
        supervise(args)
    elif args.cmd == "table":
        table(args)
    else:
        sys.exit(drive(args))


if __name__ == "__main__":
    main()
