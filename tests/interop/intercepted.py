#!/usr/bin/env python3
"""Client cells run inside the interception test's pod namespace
(tests/tests/interception.rs): curl and Python requests with no proxy settings
call a service by address; iptables sends the connections through breakwater.

    intercepted.py SVC_IP APP_PORT FLAKY_PORT BROKEN_PORT SEED
"""

import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import matrix  # noqa: E402
import servers  # noqa: E402
from matrix import MIB, check_sse, curl, curl_sse, curl_status, eq, sha, until_circuit_open  # noqa: E402


def main():
    ip, app, flaky, broken, seed = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    payload = servers.seeded_payload(seed)
    want = sha(payload)
    for k in ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]:
        os.environ.pop(k, None)
    import tempfile

    import requests

    upload = tempfile.NamedTemporaryFile(delete=False)
    upload.write(payload)
    upload.close()
    m = matrix.Matrix("intercepted")
    base = f"http://{ip}:{app}"
    path = "transparent (iptables)"

    def c_download():
        status, _, body, _ = curl_status([f"{base}/download"])
        eq(status, 200, "status")
        eq(sha(body), want, "sha256")
        return "1 MiB intact"

    def c_upload():
        out = curl(["-v", "-H", "Expect: 100-continue", "--data-binary", f"@{upload.name}", f"{base}/upload"])
        eq(json.loads(out.stdout)["sha256"], want, "sha256 at the service")
        assert "< HTTP/1.1 100" in out.stderr.decode(errors="replace"), "no 100 Continue reached curl"
        return "1 MiB intact, 100 Continue seen"

    def c_flaky():
        status, _, _, _ = curl_status([f"http://{ip}:{flaky}/flaky/curl"])
        eq(status, 200, "status")
        eq(curl_status([f"http://{ip}:{flaky}/hits/curl"])[2], b"3", "service hits")
        return "200 after 503, 503"

    def c_broken():
        return until_circuit_open(lambda: curl_status([f"http://{ip}:{broken}/x"])[:2])

    m.cell("curl", "python h1", path, "1 MiB download sha256", c_download)
    m.cell("curl", "python h1", path, "1 MiB upload + Expect: 100-continue", c_upload)
    m.cell("curl", "python h1", path, "SSE incremental", lambda: curl_sse([f"{base}/sse"]))
    m.cell("curl", "python 503,503,200", path, "retried to 200, 3 hits", c_flaky)
    m.cell("curl", "python always 503", path, "circuit-open + Retry-After", c_broken)

    s = requests.Session()
    s.trust_env = False  # no proxy of any kind: only iptables sends it to breakwater

    def r_download():
        r = s.get(f"{base}/download", timeout=10)
        eq(r.status_code, 200, "status")
        eq(sha(r.content), want, "sha256")
        return "1 MiB intact"

    def r_upload():
        r = s.post(f"{base}/upload", data=payload, timeout=10)
        eq(r.json()["sha256"], want, "sha256 at the service")
        return "1 MiB intact"

    def r_sse():
        t0 = time.monotonic()
        with s.get(f"{base}/sse", stream=True, timeout=10) as r:
            it = r.iter_content(chunk_size=None)
            first = next(it)
            t_first = time.monotonic() - t0
            body = first + b"".join(it)
        return check_sse(body, t_first, time.monotonic() - t0, first)

    def r_flaky():
        r = s.get(f"http://{ip}:{flaky}/flaky/requests", timeout=10)
        eq(r.status_code, 200, "status")
        eq(s.get(f"http://{ip}:{flaky}/hits/requests", timeout=10).text, "3", "service hits")
        return "200 after 503, 503"

    def r_broken():
        def send():
            r = s.get(f"http://{ip}:{broken}/y", timeout=10)
            return r.status_code, {k.lower(): v for k, v in r.headers.items()}

        return until_circuit_open(send)

    m.cell("python requests", "python h1", path, "1 MiB download sha256", r_download)
    m.cell("python requests", "python h1", path, "1 MiB upload sha256", r_upload)
    m.cell("python requests", "python h1", path, "SSE incremental", r_sse)
    m.cell("python requests", "python 503,503,200", path, "retried to 200, 3 hits", r_flaky)
    m.cell("python requests", "python always 503", path, "circuit-open + Retry-After", r_broken)
    os.unlink(upload.name)
    sys.exit(0 if m.report() else 1)


if __name__ == "__main__":
    main()
