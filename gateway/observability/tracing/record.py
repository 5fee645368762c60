"""What one request was and how it ended: the facts its span and access line are made of.

The exchange (or the gRPC call) fills one `RequestRecord` when a traced or logged
request ends. The access log turns it into a JSON line at once; a SERVER span keeps
it and `server_attributes` turns it into OpenTelemetry attributes when the exporter
encodes the span, so the request path allocates one object, not twenty attributes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.observability.tracing.span import Attributes


@dataclass(eq=False, slots=True)
class RequestRecord:
    """What one request was and how it ended: a SERVER span's attributes, an access line."""

    method: str
    path: str  # path only: a query may carry credentials
    request_id: str
    route: str
    operation: str = ""  # gen_ai.operation.name, "" when not a GenAI call
    variant: str = ""
    version: str = ""
    endpoint: str = ""  # the backend that answered last (host:port)
    status: int = 0  # 0: the client got no status (left first)
    attempts: int = 0
    fallback: bool = False  # served by another variant than the one decided
    shadow_sampled: bool = False
    stream: bool = False
    response_model: str = ""
    input_tokens: int = -1  # -1: not reported
    output_tokens: int = -1
    ttft: float = -1.0  # seconds to the first streamed chunk; -1: not streamed
    duration: float = 0.0  # seconds, complete request to last byte
    error_type: str = ""  # a gateway error code or the failing status; "" when none
    error_message: str = ""
    rpc_service: str = ""  # gRPC calls: the service and method (else "")
    rpc_method: str = ""

    def access_line(self, trace_id: str, span_id: str, timestamp: float) -> dict[str, object]:
        """The access log's JSON object: no headers, no body, no query string."""
        line: dict[str, object] = {
            "ts": _iso(timestamp),
            "request_id": self.request_id,
            "trace_id": trace_id,
            "span_id": span_id,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "duration_ms": round(self.duration * 1000, 3),
            "route": self.route,
            "variant": self.variant,
            "version": self.version,
            "endpoint": self.endpoint,
            "attempts": self.attempts,
            "fallback": self.fallback,
            "shadow_sampled": self.shadow_sampled,
        }
        if self.operation:
            line["operation"] = self.operation
            line["request_model"] = self.route
            line["response_model"] = self.response_model
            line["stream"] = self.stream
        if self.input_tokens >= 0:
            line["input_tokens"] = self.input_tokens
        if self.output_tokens >= 0:
            line["output_tokens"] = self.output_tokens
        if self.ttft >= 0:
            line["ttft_ms"] = round(self.ttft * 1000, 3)
        if self.error_type:
            line["error_type"] = self.error_type
        return line

    def attributes(self) -> Attributes:
        """The SERVER span's attributes (`server_attributes`), at export time."""
        return server_attributes(self)


def _iso(timestamp: float) -> str:
    whole = int(timestamp)
    millis = int((timestamp - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def server_attributes(record: RequestRecord) -> Attributes:
    """The SERVER span's attributes: HTTP, GenAI (for GenAI calls) and Switchyard's own."""
    attrs: Attributes
    if record.rpc_method:
        attrs = [
            ("rpc.system", "grpc"),
            ("rpc.service", record.rpc_service),
            ("rpc.method", record.rpc_method),
        ]
    else:
        attrs = [("http.request.method", record.method), ("url.path", record.path)]
    if record.status:
        attrs.append(("http.response.status_code", record.status))
    if record.operation:
        attrs += (
            ("gen_ai.operation.name", record.operation),
            ("gen_ai.request.model", record.route),
        )
        if record.response_model:
            attrs.append(("gen_ai.response.model", record.response_model))
        if record.operation != "infer":
            attrs.append(("gen_ai.request.stream", record.stream))
        if record.input_tokens >= 0:
            attrs.append(("gen_ai.usage.input_tokens", record.input_tokens))
        if record.output_tokens >= 0:
            attrs.append(("gen_ai.usage.output_tokens", record.output_tokens))
        if record.ttft >= 0:
            attrs.append(("gen_ai.response.time_to_first_chunk", record.ttft))
    attrs += (
        ("switchyard.request_id", record.request_id),
        ("switchyard.route", record.route),
        ("switchyard.variant", record.variant),
        ("switchyard.version", record.version),
        ("switchyard.endpoint", record.endpoint),
        ("switchyard.attempts", record.attempts),
        ("switchyard.fallback", record.fallback),
        ("switchyard.shadow_sampled", record.shadow_sampled),
    )
    return attrs
