"""A real OTLP/gRPC trace receiver for tests/telemetry.rs, built from the official
OpenTelemetry protobuf definitions (opentelemetry-proto) and gRPC (grpcio).

It serves opentelemetry.proto.collector.trace.v1.TraceService/Export on 127.0.0.1 (a free
port, printed first as {"port": N}) and prints every span it receives as one JSON line:
traceId, spanId, parentSpanId (lowercase hex), name, kind, start and end times (ns),
service and string attributes.
"""

import json
import sys
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


def value(any_value):
    kind = any_value.WhichOneof("value")
    return str(getattr(any_value, kind)) if kind else ""


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        for resource_spans in request.resource_spans:
            resource = {a.key: value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    print(json.dumps({
                        "traceId": span.trace_id.hex(),
                        "spanId": span.span_id.hex(),
                        "parentSpanId": span.parent_span_id.hex(),
                        "name": span.name,
                        "kind": span.kind,
                        "startTimeUnixNano": str(span.start_time_unix_nano),
                        "endTimeUnixNano": str(span.end_time_unix_nano),
                        "service": resource.get("service.name", ""),
                        "attributes": {a.key: value(a.value) for a in span.attributes},
                    }), flush=True)
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(json.dumps({"port": port}), flush=True)
    # Ends when the test closes stdin (or dies).
    sys.stdin.read()
    server.stop(0)


if __name__ == "__main__":
    main()
