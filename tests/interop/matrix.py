#!/usr/bin/env python3
"""Interop matrix: real third-party clients and servers through the real
breakwater binary, on 127.0.0.1 ephemeral ports.

    python3 tests/interop/matrix.py --breakwater target/debug/breakwater --family curl

Families: curl, python (requests, httpx, websocket-client, websockets), grpc
(grpcio), node (fetch, http, http2, ws), java (java.net.http). Each family
starts its own servers and breakwater processes, runs its cells, prints a table
and exits 1 if any cell failed. Everything it starts is stopped at the end.
"""

import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import servers  # noqa: E402
from servers import Breakwater, Nginx, NodeH2, PyApp  # noqa: E402

MIB = 1024 * 1024
SSE_FIRST_WITHIN = 0.6  # s: the first event must arrive this soon
SSE_GAP_AT_LEAST = 0.5  # s: ...and this long before the second


class Matrix:
    def __init__(self, family):
        self.family = family
        self.rows = []

    def cell(self, client, server, path, check, fn):
        t0 = time.monotonic()
        try:
            detail = fn() or ""
            ok = True
        except AssertionError as e:
            ok, detail = False, str(e) or "assertion failed"
        except Exception as e:  # noqa: BLE001 - any client error is the cell's symptom
            ok, detail = False, f"{type(e).__name__}: {e}"
            if os.environ.get("INTEROP_TRACE"):
                traceback.print_exc()
        ms = int((time.monotonic() - t0) * 1000)
        self.add(client, server, path, check, ok, detail, ms)

    def add(self, client, server, path, check, ok, detail, ms=0):
        detail = " ".join(str(detail).split())[:300]
        self.rows.append((client, server, path, check, "PASS" if ok else "FAIL", ms, detail))
        print(f"  {'PASS' if ok else 'FAIL'} {client} | {server} | {path} | {check} ({ms} ms) {detail}", flush=True)

    def report(self):
        head = ("client", "server", "path", "check", "result", "ms", "detail")
        widths = [max(len(str(r[i])) for r in self.rows + [head]) for i in range(7)]
        print()
        print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for r in self.rows:
            print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")
        failed = sum(1 for r in self.rows if r[4] == "FAIL")
        print(f"\n{self.family}: {len(self.rows) - failed} passed, {failed} failed")
        return failed == 0


def sha(b):
    return hashlib.sha256(b).hexdigest()


def eq(got, want, what):
    assert got == want, f"{what}: got {got!r}, want {want!r}"


@contextlib.contextmanager
def proxy_env(proxy):
    """HTTP_PROXY and friends, NO_PROXY empty (else loopback bypasses the proxy)."""
    keys = ["HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
    saved = {k: os.environ.get(k) for k in keys}
    for k in keys:
        os.environ.pop(k, None)
    os.environ.update({"HTTP_PROXY": proxy, "http_proxy": proxy, "NO_PROXY": "", "no_proxy": ""})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def no_proxy_env():
    env = dict(os.environ)
    for k in ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "grpc_proxy"]:
        env.pop(k, None)
    return env


def until_circuit_open(send, tries=8):
    """Calls send() -> (status, headers dict lower-cased) until breakwater says
    circuit-open; returns a description, asserts Retry-After."""
    seen = []
    for _ in range(tries):
        status, headers = send()
        seen.append(status)
        if status == 503 and headers.get("x-breakwater-reason") == "circuit-open":
            assert headers.get("retry-after"), f"circuit-open without Retry-After: {headers}"
            return f"statuses {seen}, retry-after {headers['retry-after']}"
    raise AssertionError(f"no circuit-open after {tries} requests: statuses {seen}")


class Env:
    """What a family runs against: the servers and the breakwaters in front of them."""

    def __init__(self, binary, family):
        self.binary = binary
        self.tmp = tempfile.mkdtemp(prefix=f"bw-interop-{family}-")
        self.payload = os.urandom(MIB)
        self.payload_sha = sha(self.payload)
        self.payload_path = os.path.join(self.tmp, "payload.bin")
        with open(self.payload_path, "wb") as f:
            f.write(self.payload)
        self.stoppers = []
        self.py = self.keep(PyApp(self.payload))
        self.flaky = self.keep(PyApp(self.payload, "flaky"))
        self.broken = self.keep(PyApp(self.payload, "broken"))

    def keep(self, thing):
        self.stoppers.append(thing.stop)
        return thing

    def breakwater(self, app_addr, extra=(), scheme="http"):
        return self.keep(Breakwater(self.binary, app_addr, extra, scheme))

    def tls_cert(self):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
        import datetime
        import ipaddress

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        cert_path, key_path = os.path.join(self.tmp, "cert.pem"), os.path.join(self.tmp, "key.pem")
        with open(cert_path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(key_path, "wb") as f:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
        return cert_path, key_path

    def close(self):
        for stop in reversed(self.stoppers):
            try:
                stop()
            except Exception:  # noqa: BLE001
                pass
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)


def circuit_state(admin, destination):
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{admin}/upstreams", timeout=5) as r:
        for d in json.load(r):
            if d.get("destination") == destination and d.get("direction") == "outbound":
                return d["endpoints"][0]["circuit"]["state"]
    return None


def ready(*bws):
    for bw in bws:
        bw.wait_ready()


# --------------------------------------------------------------------------- curl


def curl(args, timeout=20, input_path=None):
    cmd = ["curl", "-sS", "--max-time", str(timeout - 2), *args]
    p = subprocess.run(cmd, capture_output=True, timeout=timeout, env=no_proxy_env())
    if p.returncode != 0:
        raise AssertionError(f"curl exit {p.returncode}: {p.stderr.decode(errors='replace').strip()}")
    return p


def curl_status(args):
    """Runs curl with -D - and returns (status, headers, body bytes)."""
    out = curl(["-D", "/dev/stderr", "-o", "/dev/stdout", *args])
    heads = out.stderr.decode(errors="replace").replace("\r", "").split("\n\n")
    heads = [h for h in heads if h.strip().startswith("HTTP/")]
    final = heads[-1].split("\n")
    status = int(final[0].split()[1])
    headers = {}
    for line in final[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return status, headers, out.stdout, heads


def curl_sse(args):
    cmd = ["curl", "-sS", "-N", "--max-time", "10", *args]
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=no_proxy_env())
    try:
        first = p.stdout.readline()
        t_first = time.monotonic() - t0
        rest = p.stdout.read()
        t_end = time.monotonic() - t0
        p.wait(10)
    finally:
        servers.stop_proc(p)
    return check_sse(first + rest, t_first, t_end, first)


def check_sse(body, t_first, t_end, first=b"data: one"):
    assert b"data: one" in first, f"first read was {first!r}"
    assert b"data: two" in body, f"stream ended without event two: {body!r}"
    assert t_first < SSE_FIRST_WITHIN, f"first event after {t_first:.2f}s (buffered?)"
    assert t_end - t_first >= SSE_GAP_AT_LEAST, f"events {t_end - t_first:.2f}s apart: buffered"
    return f"first event at {t_first:.2f}s, end at {t_end:.2f}s"


def family_curl(m, env):
    py, nginx_bw = env.py, None
    node = env.keep(NodeH2(os.path.join(HERE, "node", "h2server.js"), env.payload_path))
    nginx = env.keep(Nginx(env.tmp, env.payload))
    bw = env.breakwater(py.addr, [f"--route=127.0.0.1:{node.port},protocol=h2"])
    cert, key = env.tls_cert()
    tls = env.breakwater(py.addr, [f"--inbound-tls-cert={cert}", f"--inbound-tls-key={key}"], scheme="https")
    nginx_bw = env.breakwater(nginx.addr)
    node_bw = env.breakwater(node.addr)
    ready(bw, tls, nginx_bw, node_bw)
    upload = env.payload_path

    def get_hello(args, want=b"hello from python\n", version=None):
        def run():
            status, headers, body, heads = curl_status(args)
            eq(status, 200, "status")
            eq(body, want, "body")
            if version:
                assert heads[-1].startswith(version), f"answered as {heads[-1].split()[0]}, want {version}"
            return heads[-1].split("\n")[0]

        return run

    def download(args):
        def run():
            status, _, body, _ = curl_status(args)
            eq(status, 200, "status")
            eq(len(body), MIB, "length")
            eq(sha(body), env.payload_sha, "sha256")
            return "1 MiB intact"

        return run

    def upload_100(args, require_100=True):
        # Over HTTP/2 curl 7.88 waits its 1 s expect timeout even against Node's
        # own h2 server (no 100 HEADERS frame), so there only the body is checked.
        def run():
            out = curl(["-v", "-H", "Expect: 100-continue", "--data-binary", f"@{upload}", *args])
            doc = json.loads(out.stdout)
            eq(doc["sha256"], env.payload_sha, "sha256 at the app")
            eq(doc["len"], MIB, "length at the app")
            verbose = out.stderr.decode(errors="replace")
            seen = "< HTTP/1.1 100" in verbose or "< HTTP/2 100" in verbose
            assert seen or not require_100, "no 100 Continue reached curl"
            return f"1 MiB intact, 100 Continue {'seen' if seen else 'not sent (h2)'}, app saw expect={doc['expect']!r}"

        return run

    i, o = bw.inbound_url, bw.outbound
    # inbound, HTTP/1.1
    m.cell("curl http/1.1", "python h1", "inbound", "GET status+body", get_hello([i("/hello")]))
    m.cell("curl http/1.1", "python h1", "inbound", "1 MiB download sha256", download([i("/download")]))
    m.cell("curl http/1.1", "python h1", "inbound", "1 MiB upload + Expect: 100-continue", upload_100([i("/upload")]))
    m.cell("curl http/1.1", "python h1", "inbound", "SSE incremental", lambda: curl_sse([i("/sse")]))
    # outbound
    m.cell("curl -x (proxy)", "python h1", "outbound proxy", "GET status+body", get_hello(["-x", f"http://{o}", f"http://{py.addr}/hello"]))
    m.cell("curl -x (proxy)", "python h1", "outbound proxy", "1 MiB download sha256", download(["-x", f"http://{o}", f"http://{py.addr}/download"]))
    m.cell("curl -x (proxy)", "python h1", "outbound proxy", "1 MiB upload + Expect: 100-continue", upload_100(["-x", f"http://{o}", f"http://{py.addr}/upload"]))
    m.cell("curl -x (proxy)", "python h1", "outbound proxy", "SSE incremental", lambda: curl_sse(["-x", f"http://{o}", f"http://{py.addr}/sse"]))
    m.cell("curl Host:", "python h1", "outbound Host", "GET status+body", get_hello(["-H", f"Host: {py.addr}", f"http://{o}/hello"]))
    m.cell("curl Host:", "python h1", "outbound Host", "1 MiB download sha256", download(["-H", f"Host: {py.addr}", f"http://{o}/download"]))
    # HTTP/2 clients in front of an HTTP/1.1-only app
    m.cell("curl --http2-prior-knowledge", "python h1", "inbound", "GET status+body", get_hello(["--http2-prior-knowledge", i("/hello")]))
    m.cell("curl --http2-prior-knowledge", "python h1", "inbound", "1 MiB upload with Expect: 100-continue", upload_100(["--http2-prior-knowledge", i("/upload")], require_100=False))
    m.cell("curl --http2-prior-knowledge", "python h1", "outbound Host", "GET status+body", get_hello(["--http2-prior-knowledge", "-H", f"Host: {py.addr}", f"http://{o}/hello"]))
    m.cell("curl --http2 (Upgrade: h2c)", "python h1", "inbound", "served as HTTP/1.1", get_hello(["--http2", i("/hello")], version="HTTP/1.1"))
    m.cell("curl https ALPN h2", "python h1", "inbound TLS", "GET status+body", get_hello(["-k", "--http2", tls.inbound_url("/hello")], version="HTTP/2"))
    m.cell("curl https ALPN h2", "python h1", "inbound TLS", "1 MiB download sha256", download(["-k", "--http2", tls.inbound_url("/download")]))
    m.cell("curl https http/1.1", "python h1", "inbound TLS", "GET status+body", get_hello(["-k", "--http1.1", tls.inbound_url("/hello")], version="HTTP/1.1"))
    # nginx
    for path, args in [("inbound", lambda p: [nginx_bw.inbound_url(p)]), ("outbound proxy", lambda p: ["-x", f"http://{o}", f"http://{nginx.addr}{p}"])]:
        m.cell("curl http/1.1", "nginx", path, "GET status+body", get_hello(args("/hello"), b"hello from nginx\n"))
        m.cell("curl http/1.1", "nginx", path, "1 MiB download sha256", download(args("/download")))

        def put_back(args=args, path=path):
            name = f"/dav/{path.replace(' ', '-')}.bin"
            curl(["-f", "-H", "Expect: 100-continue", "-T", upload, *args(name)])
            status, _, body, _ = curl_status(args(name))
            eq(status, 200, "GET back")
            eq(sha(body), env.payload_sha, "sha256 read back")
            return "PUT 1 MiB (Expect: 100-continue), read back intact"

        m.cell("curl http/1.1", "nginx", path, "1 MiB PUT + read back", put_back)
    # Node http2 (h2c-only) server
    m.cell("curl --http2-prior-knowledge", "node http2 h2c", "inbound", "GET status+body", get_hello(["--http2-prior-knowledge", node_bw.inbound_url("/hello")], b"hello from node h2\n"))
    m.cell("curl --http2-prior-knowledge", "node http2 h2c", "outbound Host", "1 MiB download sha256", download(["--http2-prior-knowledge", "-H", f"Host: {node.addr}", f"http://{o}/download"]))
    m.cell("curl http/1.1", "node http2 h2c", "outbound proxy (route protocol=h2)", "GET status+body", get_hello(["-x", f"http://{o}", f"http://{node.addr}/hello"], b"hello from node h2\n"))
    # resilience
    def flaky():
        status, _, body, _ = curl_status(["-x", f"http://{o}", f"http://{env.flaky.addr}/flaky/curl"])
        eq(status, 200, "status")
        eq(env.flaky.hits.get("curl"), 3, "upstream hits")
        return f"200 after {body.decode().strip()}"

    m.cell("curl -x (proxy)", "python 503,503,200", "outbound proxy", "retried to 200, 3 hits", flaky)
    m.cell(
        "curl -x (proxy)",
        "python always 503",
        "outbound proxy",
        "circuit-open + Retry-After",
        lambda: until_circuit_open(lambda: curl_status(["-x", f"http://{o}", f"http://{env.broken.addr}/x"])[:2]),
    )


# ------------------------------------------------------------------------ python


def family_python(m, env):
    import httpx
    import requests
    import websocket  # websocket-client
    import websockets.sync.client

    py = env.py
    nginx = env.keep(Nginx(env.tmp, env.payload)) if servers.have("nginx") else None
    bw = env.breakwater(py.addr)
    ready(bw)
    proxy = f"http://{bw.outbound}"

    def via_proxy(fn):
        def run():
            with proxy_env(proxy):
                return fn()

        return run

    # requests: status, download, upload, SSE, by HTTP_PROXY
    def req_hello(url=f"http://{py.addr}/hello", want="hello from python\n"):
        r = requests.get(url, timeout=10)
        eq(r.status_code, 200, "status")
        eq(r.text, want, "body")
        return "200"

    def req_download(url=f"http://{py.addr}/download"):
        r = requests.get(url, timeout=10)
        eq(r.status_code, 200, "status")
        eq(sha(r.content), env.payload_sha, "sha256")
        return "1 MiB intact"

    def req_upload(url=f"http://{py.addr}/upload"):
        r = requests.post(url, data=env.payload, timeout=10)
        eq(r.status_code, 200, "status")
        eq(r.json()["sha256"], env.payload_sha, "sha256 at the app")
        return "1 MiB intact"

    def req_upload_chunked(url=f"http://{py.addr}/upload"):
        chunks = (env.payload[i : i + 65536] for i in range(0, MIB, 65536))
        r = requests.post(url, data=chunks, timeout=10)
        eq(r.status_code, 200, "status")
        eq(r.json()["sha256"], env.payload_sha, "sha256 at the app")
        return "1 MiB chunked intact"

    def req_sse(url=f"http://{py.addr}/sse"):
        t0 = time.monotonic()
        with requests.get(url, stream=True, timeout=10) as r:
            eq(r.status_code, 200, "status")
            it = r.iter_content(chunk_size=None)
            first = next(it)
            t_first = time.monotonic() - t0
            body = first + b"".join(it)
            return check_sse(body, t_first, time.monotonic() - t0, first)

    def req_flaky(key):
        def run():
            r = requests.get(f"http://{env.flaky.addr}/flaky/{key}", timeout=10)
            eq(r.status_code, 200, "status")
            eq(env.flaky.hits.get(key), 3, "upstream hits")
            return "200 after 503, 503"

        return run

    def req_broken():
        def send():
            r = requests.get(f"http://{env.broken.addr}/x", timeout=10)
            return r.status_code, {k.lower(): v for k, v in r.headers.items()}

        return until_circuit_open(send)

    c = "python requests"
    m.cell(c, "python h1", "outbound HTTP_PROXY", "GET status+body", via_proxy(req_hello))
    m.cell(c, "python h1", "outbound HTTP_PROXY", "1 MiB download sha256", via_proxy(req_download))
    m.cell(c, "python h1", "outbound HTTP_PROXY", "1 MiB upload sha256", via_proxy(req_upload))
    m.cell(c, "python h1", "outbound HTTP_PROXY", "1 MiB chunked upload sha256", via_proxy(req_upload_chunked))
    m.cell(c, "python h1", "outbound HTTP_PROXY", "SSE incremental", via_proxy(req_sse))
    m.cell(c, "python h1", "inbound", "1 MiB download sha256", lambda: req_download(bw.inbound_url("/download")))
    m.cell(c, "python h1", "inbound", "1 MiB upload sha256", lambda: req_upload(bw.inbound_url("/upload")))
    m.cell(c, "python h1", "inbound", "SSE incremental", lambda: req_sse(bw.inbound_url("/sse")))
    if nginx:
        m.cell(c, "nginx", "outbound HTTP_PROXY", "GET status+body", via_proxy(lambda: req_hello(f"http://{nginx.addr}/hello", "hello from nginx\n")))
        m.cell(c, "nginx", "outbound HTTP_PROXY", "1 MiB download sha256", via_proxy(lambda: req_download(f"http://{nginx.addr}/download")))
    m.cell(c, "python 503,503,200", "outbound HTTP_PROXY", "retried to 200, 3 hits", via_proxy(req_flaky("requests")))
    m.cell(c, "python always 503", "outbound HTTP_PROXY", "circuit-open + Retry-After", via_proxy(req_broken))

    # httpx (trust_env: HTTP_PROXY read when the client is made)
    def hx(fn):
        def run():
            with proxy_env(proxy):
                with httpx.Client(trust_env=True, timeout=10) as client:
                    return fn(client)

        return run

    def hx_hello(client):
        r = client.get(f"http://{py.addr}/hello")
        eq(r.status_code, 200, "status")
        eq(r.text, "hello from python\n", "body")
        eq(r.http_version, "HTTP/1.1", "version")
        return "200"

    def hx_download(client):
        r = client.get(f"http://{py.addr}/download")
        eq(sha(r.content), env.payload_sha, "sha256")
        return "1 MiB intact"

    def hx_upload(client):
        r = client.post(f"http://{py.addr}/upload", content=env.payload)
        eq(r.status_code, 200, "status")
        eq(r.json()["sha256"], env.payload_sha, "sha256 at the app")
        return "1 MiB intact"

    def hx_sse(client):
        t0 = time.monotonic()
        with client.stream("GET", f"http://{py.addr}/sse") as r:
            it = r.iter_raw()
            first = next(it)
            t_first = time.monotonic() - t0
            body = first + b"".join(it)
        return check_sse(body, t_first, time.monotonic() - t0, first)

    def hx_flaky(client):
        r = client.get(f"http://{env.flaky.addr}/flaky/httpx")
        eq(r.status_code, 200, "status")
        eq(env.flaky.hits.get("httpx"), 3, "upstream hits")
        return "200 after 503, 503"

    def hx_broken(client):
        def send():
            r = client.get(f"http://{env.broken.addr}/x")
            return r.status_code, {k.lower(): v for k, v in r.headers.items()}

        return until_circuit_open(send)

    c = "python httpx"
    m.cell(c, "python h1", "outbound HTTP_PROXY", "GET status+body", hx(hx_hello))
    m.cell(c, "python h1", "outbound HTTP_PROXY", "1 MiB download sha256", hx(hx_download))
    m.cell(c, "python h1", "outbound HTTP_PROXY", "1 MiB upload sha256", hx(hx_upload))
    m.cell(c, "python h1", "outbound HTTP_PROXY", "SSE incremental", hx(hx_sse))
    m.cell(c, "python 503,503,200", "outbound HTTP_PROXY", "retried to 200, 3 hits", hx(hx_flaky))
    # a second breaker destination so httpx sees the circuit open by itself
    env.broken = env.keep(PyApp(env.payload, "broken"))
    m.cell(c, "python always 503", "outbound HTTP_PROXY", "circuit-open + Retry-After", hx(hx_broken))

    # WebSocket clients: websocket-client and websockets, through Upgrade
    msgs = ["hello", "x" * 70000]

    def wsc(url, host=None):
        def run():
            ws = websocket.create_connection(url, timeout=10, host=host) if host else websocket.create_connection(url, timeout=10)
            try:
                for msg in msgs:
                    ws.send(msg)
                    eq(ws.recv(), msg, "echo")
            finally:
                ws.close()
            return f"{len(msgs)} messages echoed (up to 70000 bytes)"

        return run

    def wss(url, host=None):
        def run():
            headers = {"Host": host} if host else None
            with websockets.sync.client.connect(url, open_timeout=10, additional_headers=headers, proxy=None) as ws:
                for msg in msgs:
                    ws.send(msg)
                    eq(ws.recv(timeout=10), msg, "echo")
            return f"{len(msgs)} messages echoed"

        return run

    m.cell("python websocket-client", "python h1 ws echo", "inbound", "WebSocket echo", wsc(f"ws://{bw.inbound}/ws"))
    m.cell("python websocket-client", "python h1 ws echo", "outbound Host", "WebSocket echo", wsc(f"ws://{bw.outbound}/ws", host=py.addr))
    m.cell("python websockets", "python h1 ws echo", "inbound", "WebSocket echo", wss(f"ws://{bw.inbound}/ws"))


# -------------------------------------------------------------------------- grpc


def family_grpc(m, env):
    import grpc
    import grpc_server

    gs = env.keep(grpc_server.Server())
    flaky = env.keep(grpc_server.Server())
    dead = servers.free_port()  # nothing listens here
    extra = ["--retry-on=connect-failure,reset,gateway-error,unavailable"]
    app_protocol = "--app-protocol=h2" if "--app-protocol" in subprocess.run([env.binary, "run", "--help"], capture_output=True, text=True).stdout else None
    bw = env.breakwater(gs.addr, extra + ([app_protocol] if app_protocol else []))
    ready(bw)
    opts = [("grpc.enable_retries", 0), ("grpc.enable_http_proxy", 0)]

    def channel(target, authority=None):
        o = list(opts)
        if authority:
            o.append(("grpc.default_authority", authority))
        return grpc.insecure_channel(target, options=o)

    def unary(ch):
        big = env.payload
        got = ch.unary_unary("/interop.Echo/Unary")(big, timeout=10)
        eq(sha(got), sha(big), "sha256 of 1 MiB echo")
        return "1 MiB message echoed"

    def stream(ch):
        t0 = time.monotonic()
        it = ch.unary_stream("/interop.Echo/Stream")(b"3", timeout=10)
        first = next(it)
        t_first = time.monotonic() - t0
        rest = list(it)
        eq([first] + rest, [b"msg0", b"msg1", b"msg2"], "messages")
        assert t_first < SSE_FIRST_WITHIN, f"first message after {t_first:.2f}s"
        eq(it.code(), grpc.StatusCode.OK, "status")
        md = dict(it.trailing_metadata())
        eq(md.get("x-stream-trailer"), "done", "trailer")
        return f"3 messages, first at {t_first:.2f}s, trailer intact"

    def failing(ch):
        try:
            ch.unary_unary("/interop.Echo/Fail")(b"x", timeout=10)
        except grpc.RpcError as e:
            eq(e.code(), grpc.StatusCode.INVALID_ARGUMENT, "code")
            eq(e.details(), grpc_server.FAIL_MESSAGE, "message")
            eq(dict(e.trailing_metadata()).get("x-detail"), "kept", "trailing metadata")
            return "INVALID_ARGUMENT, message and trailers intact"
        raise AssertionError("the call succeeded")

    def deadline(ch):
        t0 = time.monotonic()
        try:
            ch.unary_unary("/interop.Echo/Slow")(b"x", timeout=0.5)
        except grpc.RpcError as e:
            took = time.monotonic() - t0
            eq(e.code(), grpc.StatusCode.DEADLINE_EXCEEDED, "code")
            assert took < 1.5, f"took {took:.2f}s"
            return f"DEADLINE_EXCEEDED after {took:.2f}s"
        raise AssertionError("the call succeeded")

    def retried(ch):
        # gRPC calls are POSTs: breakwater retries them when they say they are idempotent
        got = ch.unary_unary("/interop.Echo/Flaky")(b"grpc", timeout=10, metadata=(("idempotency-key", "k1"),))
        eq(got, b"ok after 3", "reply")
        eq(flaky.hits("grpc"), 3, "upstream hits")
        return "OK after UNAVAILABLE, UNAVAILABLE"

    def breaker(ch):
        # breakwater answers a gRPC call itself the gRPC way: UNAVAILABLE, the
        # reason in grpc-message and x-breakwater-reason; the client must fail fast.
        seen = []
        for _ in range(8):
            t0 = time.monotonic()
            try:
                ch.unary_unary("/interop.Echo/Unary")(b"x", timeout=5)
                seen.append("OK")
            except grpc.RpcError as e:
                md = dict(e.initial_metadata() or ()) | dict(e.trailing_metadata() or ())
                reason = md.get("x-breakwater-reason")
                seen.append(f"{e.code().name}/{reason}")
                assert e.code() == grpc.StatusCode.UNAVAILABLE, f"{e.code()} {e.details()}"
                assert time.monotonic() - t0 < 2, "not fast"
                if reason == "circuit-open":
                    assert "circuit open" in (e.details() or ""), e.details()
                    eq(circuit_state(bw.admin, f"127.0.0.1:{dead}"), "open", "/upstreams")
                    return f"{seen}; details {e.details()!r}"
        raise AssertionError(f"circuit never opened: {seen}")

    cases = [
        ("unary 1 MiB", unary),
        ("server-streaming + trailers", stream),
        ("non-OK status + message + trailers", failing),
        ("deadline exceeded", deadline),
    ]
    for path, mk in [
        ("inbound", lambda: channel(bw.inbound)),
        ("outbound Host (:authority)", lambda: channel(bw.outbound, gs.addr)),
    ]:
        for name, fn in cases:
            def run(fn=fn, mk=mk):
                with mk() as ch:
                    return fn(ch)

            m.cell("grpcio", "grpcio server", path, name, run)

    def run_retried():
        with channel(bw.outbound, flaky.addr) as ch:
            return retried(ch)

    def run_breaker():
        with channel(bw.outbound, f"127.0.0.1:{dead}") as ch:
            return breaker(ch)

    def run_connect():
        # grpc-core reads http_proxy when the channel is made and opens a CONNECT tunnel
        with proxy_env(f"http://{bw.outbound}"):
            with grpc.insecure_channel(gs.addr, options=[("grpc.enable_retries", 0)]) as ch:
                out = f"{unary(ch)} and {stream(ch)}"
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://{bw.admin}/metrics", timeout=5) as r:
            tunnels = [line for line in r.read().decode().splitlines() if line.startswith("breakwater_tunnels_total")]
        assert tunnels and any(float(t.rsplit(" ", 1)[1]) >= 1 for t in tunnels), f"no tunnel counted: {tunnels}"
        return f"{out}; {tunnels[0]}"

    m.cell("grpcio", "grpcio server", "outbound http_proxy (CONNECT tunnel)", "unary 1 MiB + streaming", run_connect)
    m.cell("grpcio", "grpcio UNAVAILABLE x2, OK", "outbound Host (:authority)", "retried to OK, 3 hits", run_retried)
    m.cell("grpcio", "nothing listening", "outbound Host (:authority)", "circuit-open", run_breaker)


# -------------------------------------------------------------------- node, java


def run_external(m, cmd, cfg, timeout=90, cwd=None):
    """Runs a client program that prints one `CELL\\tclient\\tserver\\tpath\\tcheck\\tPASS|FAIL\\tms\\tdetail`
    line per cell, given the addresses as JSON in argv."""
    p = subprocess.run(
        [*cmd, json.dumps(cfg)], capture_output=True, text=True, timeout=timeout, env=no_proxy_env(), cwd=cwd
    )
    n = 0
    for line in p.stdout.splitlines():
        parts = line.split("\t")
        if parts[0] == "CELL" and len(parts) >= 8:
            n += 1
            m.add(parts[1], parts[2], parts[3], parts[4], parts[5] == "PASS", parts[7], int(parts[6] or 0))
    if p.returncode != 0 and n == 0 or "FATAL" in p.stdout:
        m.add(cmd[0], "-", "-", "client program", False, f"exit {p.returncode}: {p.stdout[-800:]} {p.stderr[-800:]}")
    elif p.stderr.strip() and os.environ.get("INTEROP_TRACE"):
        print(p.stderr)


def common_cfg(env, bw):
    return {
        "inbound": bw.inbound,
        "outbound": bw.outbound,
        "py": env.py.addr,
        "flaky": env.flaky.addr,
        "broken": env.broken.addr,
        "sha": env.payload_sha,
        "payload": env.payload_path,
        "sseFirstWithin": SSE_FIRST_WITHIN,
        "sseGapAtLeast": SSE_GAP_AT_LEAST,
    }


def family_node(m, env):
    node = env.keep(NodeH2(os.path.join(HERE, "node", "h2server.js"), env.payload_path))
    bw = env.breakwater(env.py.addr, [f"--route=127.0.0.1:{node.port},protocol=h2"])
    node_bw = env.breakwater(node.addr)
    ready(bw, node_bw)
    cfg = common_cfg(env, bw) | {"node": node.addr, "nodeInbound": node_bw.inbound}
    run_external(m, ["node", os.path.join(HERE, "node", "clients.js")], cfg, cwd=os.path.join(HERE, "node"))


def family_java(m, env):
    bw = env.breakwater(env.py.addr)
    ready(bw)
    cmd = ["java", "-Djdk.httpclient.allowRestrictedHeaders=host", os.path.join(HERE, "java", "Interop.java")]
    run_external(m, cmd, common_cfg(env, bw), timeout=120)


FAMILIES = {
    "curl": family_curl,
    "python": family_python,
    "grpc": family_grpc,
    "node": family_node,
    "java": family_java,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--breakwater", required=True, help="path of the breakwater binary")
    ap.add_argument("--family", required=True, choices=sorted(FAMILIES))
    args = ap.parse_args()
    m = Matrix(args.family)
    env = Env(os.path.abspath(args.breakwater), args.family)
    t0 = time.monotonic()
    try:
        FAMILIES[args.family](m, env)
    except Exception as e:  # noqa: BLE001 - set-up failures are a failed cell too
        traceback.print_exc()
        m.add(args.family, "-", "-", "set-up", False, f"{type(e).__name__}: {e}")
    finally:
        env.close()
    ok = m.report()
    print(f"{args.family}: {time.monotonic() - t0:.1f}s")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
