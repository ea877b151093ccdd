"""A grpcio server with generic handlers over raw bytes (no codegen, no .proto):
service interop.Echo, methods Unary (echo), Stream (N messages, then a trailer),
Fail (INVALID_ARGUMENT with a message and trailing metadata), Slow (2 s) and
Flaky (UNAVAILABLE twice per request body, then OK), Seen (the request's
metadata as JSON) and Hits (how many calls Flaky and Counted had with this body).
Run as a script, it serves until stdin closes and prints its port first."""

import json
import sys
import threading
import time
from concurrent import futures

import grpc

FAIL_MESSAGE = "bad request: the field 'qty' must be positive (détail intact)"


class Server:
    def __init__(self):
        self._hits = {}
        self._lock = threading.Lock()

        def unary(req, ctx):
            return req

        def stream(req, ctx):
            for i in range(int(req)):
                yield b"msg%d" % i
            ctx.set_trailing_metadata((("x-stream-trailer", "done"),))

        def fail(req, ctx):
            ctx.set_trailing_metadata((("x-detail", "kept"),))
            ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, FAIL_MESSAGE)

        def slow(req, ctx):
            time.sleep(2)
            return req

        def flaky(req, ctx):
            key = req.decode()
            with self._lock:
                n = self._hits[key] = self._hits.get(key, 0) + 1
            if n <= 2:
                ctx.abort(grpc.StatusCode.UNAVAILABLE, "try again")
            return b"ok after %d" % n

        def counted(req, ctx):
            key = req.decode()
            with self._lock:
                self._hits[key] = self._hits.get(key, 0) + 1
            return req

        def seen(req, ctx):
            return json.dumps(dict(ctx.invocation_metadata())).encode()

        def hits(req, ctx):
            return str(self.hits(req.decode())).encode()

        handler = grpc.method_handlers_generic_handler(
            "interop.Echo",
            {
                "Unary": grpc.unary_unary_rpc_method_handler(unary),
                "Stream": grpc.unary_stream_rpc_method_handler(stream),
                "Fail": grpc.unary_unary_rpc_method_handler(fail),
                "Slow": grpc.unary_unary_rpc_method_handler(slow),
                "Flaky": grpc.unary_unary_rpc_method_handler(flaky),
                "Counted": grpc.unary_unary_rpc_method_handler(counted),
                "Seen": grpc.unary_unary_rpc_method_handler(seen),
                "Hits": grpc.unary_unary_rpc_method_handler(hits),
            },
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=(handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.addr = f"127.0.0.1:{self.port}"
        self.server.start()

    def hits(self, key):
        with self._lock:
            return self._hits.get(key, 0)

    def stop(self):
        self.server.stop(0).wait(5)


if __name__ == "__main__":
    server = Server()
    print(server.port, flush=True)
    sys.stdin.read()
    server.stop()
