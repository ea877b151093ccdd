"""One unary call with grpcio (generic stubs, raw bytes), printed as JSON:
the status code's name, its details, initial and trailing metadata, the reply
and how long the call took. Used by tests/tests/grpc.rs.

    grpc_call.py TARGET METHOD [--authority A] [--timeout SECONDS] [--body TEXT]
                 [--metadata KEY=VALUE]... [--repeat N]

With --repeat N the call is made N times, one JSON line each."""

import argparse
import json
import time

import grpc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("target")
    ap.add_argument("method")
    ap.add_argument("--authority")
    ap.add_argument("--timeout", type=float)
    ap.add_argument("--body", default="x")
    ap.add_argument("--metadata", action="append", default=[])
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    # grpcio's own retries and proxy lookup off: what breakwater does is what is seen.
    opts = [("grpc.enable_retries", 0), ("grpc.enable_http_proxy", 0)]
    if a.authority:
        opts.append(("grpc.default_authority", a.authority))
    metadata = tuple(tuple(kv.split("=", 1)) for kv in a.metadata)
    with grpc.insecure_channel(a.target, options=opts) as ch:
        call = ch.unary_unary(a.method)
        for _ in range(a.repeat):
            t0 = time.monotonic()
            out = {}
            try:
                reply, c = call.with_call(a.body.encode(), timeout=a.timeout, metadata=metadata)
                out.update(code="OK", details="", reply=reply.decode(errors="replace"))
            except grpc.RpcError as e:
                c = e
                out.update(code=e.code().name, details=e.details() or "", reply=None)
            out["elapsed"] = time.monotonic() - t0
            out["initial"] = dict(c.initial_metadata() or ())
            out["trailing"] = dict(c.trailing_metadata() or ())
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
