"""A small OTLP/HTTP trace receiver for the tracing tests (tests/tests/tracing.rs).

It decodes `POST` bodies (content-type application/x-protobuf) as an
ExportTraceServiceRequest with the official protobuf definitions of the PyPI
package opentelemetry-proto, and keeps every span as JSON:

  trace_id, span_id, parent_span_id   lowercase hex ("" for no parent)
  name, kind ("SERVER", "CLIENT", ...), kind_code (the OTLP enum number)
  start_unix_nano, end_unix_nano      integers
  attributes                          {key: value}, values as JSON (int, float, str, bool, list, dict)
  events                              [{name, time_unix_nano, attributes}]
  status                              {code (0 unset, 1 ok, 2 error), message}
  resource                            {key: value}: the resource attributes
  scope                               the instrumentation scope's name
  export_path                         the path the export was POSTed to

Modes:
  (none)          answer 200 with an empty ExportTraceServiceResponse
  --hang          accept the export, read it, and never answer
  --status CODE   answer every export with CODE (spans are not kept)

  GET /spans      every span kept so far, a JSON list
  GET /exports    every POST seen: [{path, content_type, spans, answered}]

It binds 127.0.0.1:0 (or --port) and prints the port on stdout once it listens.
"""

import argparse
import http.server
import json
import socketserver
import sys
import threading
import time

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

LOCK = threading.Lock()
SPANS = []
EXPORTS = []


def any_value(v):
    """An OTLP AnyValue as plain JSON."""
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return attributes(v.kvlist_value.values)
    if which == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, which)


def attributes(kvs):
    return {kv.key: any_value(kv.value) for kv in kvs}


def kind_name(code):
    try:
        return Span.SpanKind.Name(code).removeprefix("SPAN_KIND_")
    except ValueError:
        return str(code)


def decode(body, path):
    """The spans of one export body, as JSON-ready dicts."""
    req = ExportTraceServiceRequest()
    req.ParseFromString(body)
    out = []
    for rs in req.resource_spans:
        resource = attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append({
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(),
                    "trace_state": s.trace_state,
                    "name": s.name,
                    "kind": kind_name(s.kind),
                    "kind_code": int(s.kind),
                    "start_unix_nano": int(s.start_time_unix_nano),
                    "end_unix_nano": int(s.end_time_unix_nano),
                    "attributes": attributes(s.attributes),
                    "events": [{
                        "name": e.name,
                        "time_unix_nano": int(e.time_unix_nano),
                        "attributes": attributes(e.attributes),
                    } for e in s.events],
                    "status": {"code": int(s.status.code), "message": s.status.message},
                    "resource": resource,
                    "scope": ss.scope.name,
                    "export_path": path,
                })
    return out


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    mode = "normal"
    status = 200

    def log_message(self, *args):
        pass

    def answer(self, status, body, content_type):
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def do_GET(self):
        with LOCK:
            if self.path == "/spans":
                data = json.dumps(SPANS)
            elif self.path == "/exports":
                data = json.dumps(EXPORTS)
            else:
                data = None
        if data is None:
            self.answer(404, b"not found\n", "text/plain")
        else:
            self.answer(200, data.encode(), "application/json")

    def do_POST(self):
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n) if n else b""
        content_type = self.headers.get("content-type", "")
        record = {"path": self.path, "content_type": content_type, "spans": 0, "answered": None}
        try:
            spans = decode(body, self.path)
        except DecodeError as e:
            record["error"] = f"not an ExportTraceServiceRequest: {e}"
            with LOCK:
                EXPORTS.append(record)
            self.answer(400, b"bad protobuf\n", "text/plain")
            return
        record["spans"] = len(spans)
        if self.mode == "hang":
            with LOCK:
                EXPORTS.append(record)
            # Accepted, never answered: the connection stays open until the
            # client gives up or the receiver is killed.
            while True:
                time.sleep(3600)
        if self.status != 200:
            record["answered"] = self.status
            with LOCK:
                EXPORTS.append(record)
            self.answer(self.status, b"unavailable\n", "text/plain")
            return
        record["answered"] = 200
        with LOCK:
            EXPORTS.append(record)
            SPANS.extend(spans)
        self.answer(200, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hang", action="store_true", help="accept exports and never answer")
    ap.add_argument("--status", type=int, default=200, help="answer every export with this status")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    Handler.mode = "hang" if args.hang else "normal"
    Handler.status = args.status
    server = Server(("127.0.0.1", args.port), Handler)
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
