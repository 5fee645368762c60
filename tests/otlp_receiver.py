"""A real OTLP/HTTP trace receiver on loopback, for the tracing tests.

It speaks what a collector's HTTP port does (POST /v1/traces, protobuf, optionally
gzip) and decodes every request with the official `opentelemetry-proto` messages, so a
span the gateway encodes wrongly fails here, not in production. It can be told to be
slow (`delay`) or to refuse (`status`), like a collector under trouble.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span


def value_of(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


@dataclass
class ReceivedSpan:
    """One decoded span, with its attributes as a plain dict."""

    raw: Span
    resource: dict[str, Any]
    scope: str

    @property
    def name(self) -> str:
        return self.raw.name

    @property
    def kind(self) -> int:
        return self.raw.kind

    @property
    def trace_id(self) -> str:
        return self.raw.trace_id.hex()

    @property
    def span_id(self) -> str:
        return self.raw.span_id.hex()

    @property
    def parent_id(self) -> str:
        return self.raw.parent_span_id.hex()

    @property
    def attrs(self) -> dict[str, Any]:
        return {kv.key: value_of(kv.value) for kv in self.raw.attributes}

    @property
    def status_code(self) -> int:
        return self.raw.status.code

    @property
    def events(self) -> list[tuple[str, dict[str, Any]]]:
        return [
            (e.name, {kv.key: value_of(kv.value) for kv in e.attributes}) for e in self.raw.events
        ]


@dataclass
class Receiver:
    url: str
    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0
    headers: list[dict[str, str]] = field(default_factory=list)
    delay: float = 0.0  # seconds before answering
    status: int = 200  # what to answer
    script: list[int] = field(default_factory=list)  # answers given first, in order
    retry_after: str | None = None  # a Retry-After header on every non-200 answer
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        return self.url + "/v1/traces"

    def wait_for(
        self, predicate: Any, timeout: float = 15.0, what: str = "spans"
    ) -> list[ReceivedSpan]:
        """Poll until `predicate(spans)` holds; returns the spans."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                spans = list(self.spans)
            if predicate(spans):
                return spans
            if time.monotonic() > deadline:
                names = [(s.name, s.attrs.get("switchyard.route")) for s in spans]
                raise AssertionError(f"{what} did not arrive in {timeout}s; got {names}")
            time.sleep(0.05)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            if receiver.delay:
                time.sleep(receiver.delay)
            if self.path != "/v1/traces":
                self._answer(404, b"")
                return
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            assert self.headers.get("content-type") == "application/x-protobuf"
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            found = []
            for rs in request.resource_spans:
                resource = {kv.key: value_of(kv.value) for kv in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        found.append(ReceivedSpan(span, resource, ss.scope.name))
            with receiver.lock:
                receiver.requests += 1
                receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
                status = receiver.script.pop(0) if receiver.script else receiver.status
                if status == 200:
                    receiver.spans.extend(found)
            self._answer(status, ExportTraceServiceResponse().SerializeToString())

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            if status != 200 and receiver.retry_after is not None:
                self.send_header("retry-after", receiver.retry_after)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A slow receiver's client gives up (its export timeout) before the answer is
        # written: that broken pipe is the scenario under test, not a failure.
        pass


@contextmanager
def otlp_receiver() -> Iterator[Receiver]:
    """Serve a receiver on 127.0.0.1 (a free port) for the duration of the block."""
    receiver = Receiver("")
    server = _Server(("127.0.0.1", 0), _handler(receiver))
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
