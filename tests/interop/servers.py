"""Servers of the interop matrix, run inside the driver's process (threads) or
started by it (nginx, Node's http2 server).

PyApp is an HTTP/1.1-only server (http.server, protocol_version HTTP/1.1):

  GET  /hello            200 "hello from python"
  GET  /download         the 1 MiB payload, with Content-Length
  POST|PUT /upload       {"sha256", "len", "expect"} of the body it read
  GET  /sse              text/event-stream: event one, 1 s pause, event two
  GET  /ws               WebSocket echo (server side written here; clients are real libraries)
  GET  /flaky/KEY        mode "flaky": 503, 503, then 200 for each KEY
  GET  /hits/KEY         how many requests /flaky/KEY saw
  anything, mode "broken": 503 always
"""

import base64
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, deadline_s=10.0):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {deadline_s}s")


def read_body(handler):
    """The request body, Content-Length or chunked."""
    if handler.headers.get("transfer-encoding", "").lower() == "chunked":
        out = bytearray()
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(out)
            out += handler.rfile.read(size)
            handler.rfile.readline()
    n = int(handler.headers.get("content-length") or 0)
    return handler.rfile.read(n) if n else b""


class PyApp:
    def __init__(self, payload, mode="app", host="127.0.0.1", port=0):
        self.payload = payload
        self.mode = mode
        self.hits = {}
        self.lock = threading.Lock()
        app = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def reply(self, status, body, ctype="text/plain"):
                if isinstance(body, str):
                    body = body.encode()
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                app.handle(self)

            do_POST = do_PUT = do_HEAD = do_GET

        self.server = http.server.ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.addr = f"{host}:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def count(self, key):
        with self.lock:
            self.hits[key] = self.hits.get(key, 0) + 1
            return self.hits[key]

    def handle(self, h):
        path = h.path
        if path.startswith("http://"):  # absolute-form: should not reach an app
            path = "/" + path.split("/", 3)[-1]
        if self.mode == "broken":
            self.count("broken")
            return h.reply(503, "always failing\n")
        if path.startswith("/hits/"):
            with self.lock:
                return h.reply(200, str(self.hits.get(path[6:], 0)))
        if path.startswith("/flaky/"):
            n = self.count(path[7:])
            return h.reply(503 if n <= 2 else 200, f"attempt {n}\n")
        if path == "/hello":
            return h.reply(200, "hello from python\n")
        if path == "/download":
            return h.reply(200, self.payload, "application/octet-stream")
        if path == "/upload":
            expect = h.headers.get("expect", "")
            body = read_body(h)
            doc = {"sha256": hashlib.sha256(body).hexdigest(), "len": len(body), "expect": expect}
            return h.reply(200, json.dumps(doc), "application/json")
        if path == "/sse":
            h.send_response(200)
            h.send_header("content-type", "text/event-stream")
            h.send_header("cache-control", "no-cache")
            h.send_header("transfer-encoding", "chunked")
            h.end_headers()
            for i, event in enumerate([b"data: one\n\n", b"data: two\n\n"]):
                if i:
                    time.sleep(1.0)
                h.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                h.wfile.flush()
            h.wfile.write(b"0\r\n\r\n")
            h.wfile.flush()
            return
        if path == "/ws" and h.headers.get("upgrade", "").lower() == "websocket":
            return self.websocket(h)
        return h.reply(404, "no such path\n")

    def websocket(self, h):
        key = h.headers.get("sec-websocket-key", "").encode()
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
        h.send_response(101)
        h.send_header("upgrade", "websocket")
        h.send_header("connection", "Upgrade")
        h.send_header("sec-websocket-accept", accept)
        h.end_headers()
        h.wfile.flush()
        h.close_connection = True
        r, w = h.rfile, h.wfile
        while True:
            head = r.read(2)
            if len(head) < 2:
                return
            opcode = head[0] & 0x0F
            n = head[1] & 0x7F
            if n == 126:
                n = int.from_bytes(r.read(2), "big")
            elif n == 127:
                n = int.from_bytes(r.read(8), "big")
            mask = r.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(r.read(n)))
            if opcode == 10:
                continue
            # data frames keep their FIN bit and opcode (fragments stay fragments)
            first = 0x88 if opcode == 8 else 0x8A if opcode == 9 else head[0] & 0x8F
            if len(data) < 126:
                frame = bytes([first, len(data)])
            elif len(data) < 65536:
                frame = bytes([first, 126]) + len(data).to_bytes(2, "big")
            else:
                frame = bytes([first, 127]) + len(data).to_bytes(8, "big")
            w.write(frame + data)
            w.flush()
            if opcode == 8:
                return


class Nginx:
    """nginx with a generated config in a temp dir: static files, `return`, and
    WebDAV PUT (so an upload can be read back and compared)."""

    def __init__(self, workdir, payload):
        self.dir = os.path.join(workdir, "nginx")
        www = os.path.join(self.dir, "www")
        os.makedirs(os.path.join(www, "dav"), exist_ok=True)
        with open(os.path.join(www, "download"), "wb") as f:
            f.write(payload)
        for d in (workdir, self.dir, www, os.path.join(www, "dav")):
            os.chmod(d, 0o777)
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        d = self.dir
        user = "user root;" if os.geteuid() == 0 else ""
        conf = f"""
{user}
worker_processes 1;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  client_max_body_size 8m;
  default_type application/octet-stream;
  server {{
    listen 127.0.0.1:{self.port};
    root {www};
    location = /hello {{ return 200 "hello from nginx\\n"; }}
    location /dav/ {{ dav_methods PUT DELETE; create_full_put_path on; dav_access user:rw all:r; }}
  }}
}}
"""
        path = os.path.join(d, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        self.proc = subprocess.Popen(
            ["nginx", "-p", d, "-e", f"{d}/error.log", "-c", path, "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_port(self.port)
        except RuntimeError:
            self.stop()
            raise RuntimeError("nginx did not start: " + self.log())

    def log(self):
        try:
            with open(os.path.join(self.dir, "error.log")) as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def stop(self):
        stop_proc(self.proc)


class NodeH2:
    """Node's http2.createServer (h2c only): /hello, /download, /upload, /sse."""

    def __init__(self, script, payload_path):
        self.proc = subprocess.Popen(
            ["node", script, payload_path],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline().strip()
        if not line.isdigit():
            err = self.proc.stderr.read() if self.proc.poll() is not None else ""
            self.stop()
            raise RuntimeError(f"node h2 server did not start: {line!r} {err}")
        self.port = int(line)
        self.addr = f"127.0.0.1:{self.port}"

    def stop(self):
        stop_proc(self.proc)


def stop_proc(proc, grace=3.0):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Breakwater:
    """The real binary on three free loopback ports, `/ready` awaited."""

    def __init__(self, binary, app_addr, extra=(), scheme="http"):
        self.inbound_port, self.outbound_port, self.admin_port = free_port(), free_port(), free_port()
        self.inbound = f"127.0.0.1:{self.inbound_port}"
        self.outbound = f"127.0.0.1:{self.outbound_port}"
        self.admin = f"127.0.0.1:{self.admin_port}"
        self.scheme = scheme
        self.args = [
            binary,
            "run",
            f"--inbound-addr={self.inbound}",
            f"--outbound-addr={self.outbound}",
            f"--admin-addr={self.admin}",
            f"--app-addr={app_addr}",
            "--log-level=warn",
            "--drain-delay=0s",
            "--drain-timeout=2s",
            *extra,
        ]
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def wait_ready(self, deadline_s=15.0):
        import urllib.request

        end = time.monotonic() + deadline_s
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"breakwater exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                with opener.open(f"http://{self.admin}/ready", timeout=0.5) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"breakwater never ready: {' '.join(self.args)}")

    def inbound_url(self, path):
        return f"{self.scheme}://{self.inbound}{path}"

    def stop(self):
        stop_proc(self.proc)


def have(program):
    return shutil.which(program) is not None


def seeded_payload(seed, size=1024 * 1024):
    import random

    return random.Random(seed).randbytes(size)


if __name__ == "__main__":
    # Standalone, for the interception test's network namespaces:
    #   servers.py HOST PORT MODE SEED   (serves until killed)
    import sys

    host, port, mode, seed = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    PyApp(seeded_payload(seed), mode, host, port)
    while True:
        time.sleep(3600)
