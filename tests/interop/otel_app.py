"""An app instrumented with the OpenTelemetry SDK, for the tracing tests
(tests/tests/tracing.rs): inside one CLIENT span it makes one HTTP GET of
--target through breakwater's outbound listener (--proxy, as an HTTP proxy),
with the W3C traceparent injected by the SDK's propagator; then it flushes the
OTLP/HTTP exporter (--otlp, the receiver's full URL) and prints one JSON line:

  {"trace_id": hex, "span_id": hex, "status": HTTP status, "traceparent": what it sent}

Without --proxy the request goes straight to the target.
"""

import argparse
import json
import sys

import requests
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--proxy", help="breakwater's outbound listener, HOST:PORT")
    ap.add_argument("--target", required=True, help="the upstream, HOST:PORT")
    ap.add_argument("--path", default="/from-otel-app")
    ap.add_argument("--otlp", required=True, help="the OTLP/HTTP traces URL")
    ap.add_argument("--service-name", default="otel-app")
    args = ap.parse_args()

    provider = TracerProvider(resource=Resource.create({"service.name": args.service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=args.otlp, timeout=5)))
    trace.set_tracer_provider(provider)
    # W3C trace context, whatever OTEL_PROPAGATORS says in the environment.
    propagate.set_global_textmap(TraceContextTextMapPropagator())
    tracer = trace.get_tracer("otel-app")

    session = requests.Session()
    session.trust_env = False  # no proxy or netrc from the environment
    proxies = {"http": f"http://{args.proxy}"} if args.proxy else {}
    with tracer.start_as_current_span("otel-app call", kind=trace.SpanKind.CLIENT) as span:
        headers = {}
        propagate.inject(headers)
        resp = session.get(f"http://{args.target}{args.path}", headers=headers,
                           proxies=proxies, timeout=10)
        span.set_attribute("http.response.status_code", resp.status_code)
        ctx = span.get_span_context()
    flushed = provider.force_flush(10_000)
    provider.shutdown()
    print(json.dumps({
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "status": resp.status_code,
        "traceparent": headers.get("traceparent"),
        "flushed": bool(flushed),
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
