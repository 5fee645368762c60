"""The request path's view of tracing: decide per request, then record a sampled one.

`Tracer.start` runs for every request while tracing is on and returns None for an
unsampled one: a dict lookup and, for a new trace, one random draw. Nothing else of an
unsampled request touches tracing; its incoming `traceparent` goes upstream unchanged
(the client's headers are forwarded as they came), and a request that brought none
goes without one.

A sampled request gets a `RequestTrace`: the SERVER span's ids and start, one CLIENT
span per upstream attempt and per shadow copy, each with the `traceparent` header that
names it as the backend's parent. When the exchange ends, it describes the request in
a `RequestRecord` (also what the access log writes), and `finish` hands the spans to
the exporter; the SERVER span keeps the record, and its GenAI and Switchyard
attributes are derived from it at export time, off the request path.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Final, Protocol

from gateway.observability.trace_metrics import TraceCounters
from gateway.observability.tracing.context import (
    MAX_TRACESTATE,
    TRACEPARENT,
    TRACESTATE,
    IdSource,
    format_traceparent,
    parse_traceparent,
)
from gateway.observability.tracing.record import RequestRecord
from gateway.observability.tracing.sampler import Sampler
from gateway.observability.tracing.span import (
    FLAG_HAS_IS_REMOTE,
    FLAG_IS_REMOTE,
    FLAG_SAMPLED,
    KIND_CLIENT,
    KIND_SERVER,
    STATUS_ERROR,
    Span,
)

# The GenAI semantic conventions' gen_ai.operation.name for each generative endpoint;
# KServe v2 inference is "infer" (the protocol's own word; the conventions allow
# values of one's own).
OPERATIONS: Final = {
    b"/v1/chat/completions": "chat",
    b"/api/chat": "chat",
    b"/v1/completions": "text_completion",
    b"/api/generate": "text_completion",
    b"/v1/embeddings": "embeddings",
    b"/api/embed": "embeddings",
    b"/api/embeddings": "embeddings",
}
_MODEL_KEYS: Final = (b'"model":"', b'"model_name":"', b'"model": "', b'"model_name": "')
_MODEL_SCAN: Final = 4096  # bytes of the first body chunk searched for the model name
_HEADER: Final = b"traceparent: "


def operation_for(path: bytes) -> str:
    """gen_ai.operation.name for a request path ("" for none)."""
    found = OPERATIONS.get(path)
    if found is not None:
        return found
    return "infer" if path.startswith(b"/v2/") and path.endswith(b"/infer") else ""


class SpanSink(Protocol):
    """Where finished spans go (the exporter; a list in tests)."""

    def submit(self, spans: Sequence[Span]) -> None: ...


class Tracer:
    """Samples requests and builds the spans of the sampled ones (one per process)."""

    def __init__(
        self,
        sampler: Sampler,
        sink: SpanSink,
        counters: TraceCounters,
        ids: IdSource | None = None,
    ) -> None:
        self.sampler = sampler
        self.sink = sink
        self.counters = counters
        self.ids = ids or IdSource()
        self._bound = sampler.bound  # read per request: a plain int

    def start(self, fields: dict[bytes, bytes] | None, received_at: float) -> RequestTrace | None:
        """The trace of a request with these headers, or None if it is not sampled.

        `received_at` is the request's `time.perf_counter()` timestamp."""
        parent = fields.get(TRACEPARENT) if fields is not None else None
        if parent is None:
            if self._bound == 0:
                return None
            low = self.ids.bits64()
            if low >= self._bound:
                return None
            return self._new(self.ids.trace_id(low), 0, b"", received_at)
        return self._continue(parent, fields, received_at)

    def _continue(
        self, parent: bytes, fields: dict[bytes, bytes] | None, received_at: float
    ) -> RequestTrace | None:
        if (
            self.sampler.parent_based
            and len(parent) == 55
            and parent.endswith(b"-00")
            and parent.startswith(b"00-")
        ):
            return None  # the caller did not sample it: the common case, decided cheaply
        parsed = parse_traceparent(parent)
        if parsed is None:  # invalid: as if absent, a new trace
            low = self.ids.bits64()
            if low >= self._bound:
                return None
            return self._new(self.ids.trace_id(low), 0, b"", received_at)
        trace_id, parent_id, flags = parsed
        if not self.sampler.child(trace_id, flags):
            return None
        state = fields.get(TRACESTATE, b"") if fields is not None else b""
        return self._new(trace_id, parent_id, state, received_at)

    def _new(self, trace_id: int, parent_id: int, state: bytes, received_at: float) -> RequestTrace:
        self.counters.sampled += 1
        return RequestTrace(self, trace_id, parent_id, state, received_at)

    def context_of(self, fields: dict[bytes, bytes] | None) -> tuple[int, int] | None:
        """(trace id, span id) of an incoming `traceparent`, for the access log of a
        request that is not sampled (so its line still joins the caller's trace)."""
        parent = fields.get(TRACEPARENT) if fields is not None else None
        if parent is None:
            return None
        parsed = parse_traceparent(parent)
        return None if parsed is None else (parsed[0], parsed[1])


class RequestTrace:
    """The spans of one sampled request while it is served."""

    __slots__ = (
        "attempts",
        "current",
        "parent_id",
        "response_model",
        "span_id",
        "start_ns",
        "trace_id",
        "trace_state",
        "tracer",
    )

    def __init__(
        self, tracer: Tracer, trace_id: int, parent_id: int, state: bytes, received_at: float
    ) -> None:
        self.tracer = tracer
        self.trace_id = trace_id
        self.parent_id = parent_id
        self.span_id = tracer.ids.span_id()
        self.trace_state = (
            state.decode("ascii", "replace") if 0 < len(state) <= MAX_TRACESTATE else ""
        )
        # Wall-clock start of the request: now, minus how long ago it completed.
        self.start_ns = time.time_ns() - int((time.perf_counter() - received_at) * 1e9)
        self.attempts: list[Span] = []
        self.current: Span | None = None
        self.response_model: str | None = None  # None: not looked for yet

    @property
    def trace_hex(self) -> str:
        return f"{self.trace_id:032x}"

    @property
    def span_hex(self) -> str:
        return f"{self.span_id:016x}"

    def _child(self, name: str) -> Span:
        return Span(
            self.trace_id,
            self.tracer.ids.span_id(),
            self.span_id,
            name,
            KIND_CLIENT,
            time.time_ns(),
            trace_state=self.trace_state,
        )

    def attempt(
        self,
        method: str,
        variant: str,
        version: str,
        backend: str,
        host: str,
        port: int,
    ) -> bytes:
        """Open the CLIENT span of an HTTP attempt; returns its `traceparent` line."""
        span = self._attempt(f"{method} {variant}", variant, version, backend)
        span.attributes += (
            ("http.request.method", method),
            ("server.address", host),
            ("server.port", port),
        )
        return self.header(span)

    def attempt_sent(self, url: str) -> None:
        """The attempt's request went out to `url` (no query string: it may hold keys)."""
        if self.current is not None:
            self.current.attributes.append(("url.full", url))

    def rpc_attempt(
        self, service: str, method: str, variant: str, version: str, backend: str, target: str
    ) -> str:
        """Open the CLIENT span of a gRPC attempt; returns its `traceparent` value."""
        span = self._attempt(f"{service}/{method} {variant}", variant, version, backend)
        host, _, port = target.rpartition(":")
        span.attributes += (
            ("rpc.system", "grpc"),
            ("rpc.service", service),
            ("rpc.method", method),
            ("server.address", host),
            ("server.port", int(port) if port.isdigit() else 0),
        )
        return format_traceparent(self.trace_id, span.span_id, True).decode()

    def _attempt(self, name: str, variant: str, version: str, backend: str) -> Span:
        self.attempt_ended(0)  # one attempt at a time: close a dangling one
        span = self.current = self._child(name)
        span.attributes += (
            ("switchyard.variant", variant),
            ("switchyard.version", version),
            ("switchyard.endpoint", backend),
            ("switchyard.attempt", len(self.attempts) + 1),
        )
        self.attempts.append(span)
        return span

    def header(self, span: Span) -> bytes:
        """The `traceparent` header line naming `span` as the parent upstream."""
        return _HEADER + format_traceparent(self.trace_id, span.span_id, True) + b"\r\n"

    def attempt_failed(self, error_type: str, message: str) -> None:
        """The attempt in progress failed before (or instead of) a usable answer."""
        span = self.current
        if span is not None and span.status != STATUS_ERROR:
            span.fail(error_type, message)

    def attempt_ended(self, status: int) -> None:
        """Close the attempt in progress with the backend's HTTP status (0: none)."""
        span, self.current = self.current, None
        if span is None:
            return
        span.end_ns = time.time_ns()
        if status:
            span.attributes.append(("http.response.status_code", status))
            if status >= 500 and span.status != STATUS_ERROR:
                span.fail(str(status))

    def rpc_attempt_ended(self, code: int, name: str, details: str = "") -> None:
        """Close the gRPC attempt in progress with its status code (0: OK)."""
        span, self.current = self.current, None
        if span is None:
            return
        span.end_ns = time.time_ns()
        span.attributes.append(("rpc.grpc.status_code", code))
        if code and span.status != STATUS_ERROR:
            span.fail(name, details)

    def shadow(self, method: str, shadow: str, version: str, backend: str) -> Span:
        """A CLIENT span for a shadow copy (closed by `shadow_ended`)."""
        span = self._child(f"{method} shadow {shadow}")
        span.attributes += (
            ("http.request.method", method),
            ("switchyard.shadow", shadow),
            ("switchyard.version", version),
            ("switchyard.endpoint", backend),
        )
        return span

    def shadow_ended(self, span: Span, outcome: str, status: int) -> None:
        """Close a shadow copy's span and queue it (copies may outlive the request)."""
        span.end_ns = time.time_ns()
        span.attributes.append(("switchyard.shadow.outcome", outcome))
        if status:
            span.attributes.append(("http.response.status_code", status))
        if outcome != "ok":  # error_status (5xx), timeout, connect_error, reset, ...
            span.fail(str(status) if status >= 500 else outcome)
        self.tracer.sink.submit((span,))

    def saw_body(self, data: bytes) -> None:
        """Find the model the backend names in its first response chunk."""
        head = data[:_MODEL_SCAN]
        for key in _MODEL_KEYS:
            at = head.find(key)
            if at >= 0:
                start = at + len(key)
                end = head.find(b'"', start)
                if end > start:
                    self.response_model = head[start:end].decode("utf-8", "replace")[:256]
                    return
        self.response_model = ""  # looked once; not there

    def finish(self, record: RequestRecord, exception: BaseException | None = None) -> None:
        """End the request: its SERVER span and every attempt span go to the exporter."""
        end_ns = time.time_ns()
        self.attempt_ended(0)
        if record.operation:
            name = f"{record.operation} {record.route}"
        elif record.rpc_method:
            name = f"{record.rpc_service}/{record.rpc_method}"
        else:
            name = f"{record.method} {record.route}"
        flags = FLAG_SAMPLED | FLAG_HAS_IS_REMOTE | (FLAG_IS_REMOTE if self.parent_id else 0)
        span = Span(
            self.trace_id,
            self.span_id,
            self.parent_id,
            name,
            KIND_SERVER,
            self.start_ns,
            trace_state=self.trace_state,
            flags=flags,
        )
        span.end_ns = end_ns
        span.facts = record  # its attributes are derived when exported, off the path
        if record.ttft >= 0:
            span.event("gen_ai.first_chunk", self.start_ns + int(record.ttft * 1e9))
        if record.error_type:
            span.fail(record.error_type, record.error_message)
            if exception is not None:
                span.event(
                    "exception",
                    end_ns,
                    [
                        ("exception.type", type(exception).__name__),
                        ("exception.message", str(exception)[:1024]),
                    ],
                )
        for attempt in self.attempts:
            if attempt.end_ns == attempt.start_ns:
                attempt.end_ns = end_ns
        self.tracer.sink.submit((span, *self.attempts))
