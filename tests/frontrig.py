"""A data plane with in-memory client and backend transports, for path-routed fronts.

Like `tests/memrig.py`, but for any policy: every endpoint of every route gets one
pooled upstream connection, so a test sees exactly what the gateway sends to which
backend and plays the backend's answer back byte for byte.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import httptools

from gateway.controlplane.policy.compile import compile_snapshot
from gateway.controlplane.policy.loader import parse_policies
from gateway.dataplane.health import HealthRegistry
from gateway.dataplane.http.server import ClientConnection
from gateway.dataplane.http.upstream import UpstreamConnection
from gateway.dataplane.plane import DataPlane
from gateway.dataplane.snapshot import SnapshotRef
from gateway.drift.tap import Tap
from gateway.observability.metrics import GatewayMetrics
from gateway.settings import Settings
from tests.memrig import MemoryTransport


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class _Collector:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    parts: list[bytes] = field(default_factory=list)
    done: bool = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self.parts.append(body)

    def on_message_complete(self) -> None:
        self.done = True


def parse_response(raw: bytes) -> Response:
    """The first complete HTTP/1.1 response in `raw` (chunked bodies decoded)."""
    sink = _Collector()
    parser = httptools.HttpResponseParser(sink)
    parser.feed_data(raw)
    assert sink.done, f"incomplete response: {raw[:300]!r}"
    return Response(parser.get_status_code(), sink.headers, b"".join(sink.parts))


class FrontRig:
    """The real data plane; transports in memory at both network edges."""

    def __init__(self, policy: str, tap: Tap | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.metrics = GatewayMetrics()
        health = HealthRegistry(self.metrics)
        policies, problems = parse_policies(policy, "t.yaml")
        assert not problems, problems
        self.snapshot = compile_snapshot(policies, metrics=self.metrics, health=health)
        self.plane = DataPlane(
            Settings(),
            SnapshotRef(self.snapshot),
            self.metrics,
            health,
            loop,
            random.Random(1),
            tap,
        )
        self.client = ClientConnection(self.plane)
        self.client_t = MemoryTransport()
        self.client.connection_made(self.client_t)
        self.upstreams: dict[str, tuple[UpstreamConnection, MemoryTransport]] = {}
        for route in self.snapshot.routes.values():
            for variant in route.variants:
                for endpoint in variant.endpoints:
                    if endpoint.backend in self.upstreams:
                        continue
                    pool = self.plane.pool._pool(endpoint)
                    conn = UpstreamConnection(pool)
                    transport = MemoryTransport()
                    conn.connection_made(transport)
                    pool.active += 1
                    pool.release(conn, self.plane.now)
                    self.upstreams[endpoint.backend] = (conn, transport)

    def send(
        self, method: bytes, path: bytes, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> None:
        """One client request, as bytes on the client connection."""
        lines = b"".join(
            b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in (headers or {}).items()
        )
        self.client_t.data.clear()
        self.client.data_received(
            b"%s %s HTTP/1.1\r\nhost: gw\r\n%scontent-length: %d\r\n\r\n%s"
            % (method, path, lines, len(body), body)
        )

    def sent(self, backend: str) -> bytes:
        """Everything the gateway wrote to `backend` so far (and forget it)."""
        transport = self.upstreams[backend][1]
        data = bytes(transport.data)
        transport.data.clear()
        return data

    def sent_anywhere(self) -> bool:
        return any(t.data for _, t in self.upstreams.values())

    def reply(self, backend: str, raw: bytes) -> None:
        """The backend's answer to the request it holds."""
        self.upstreams[backend][0].data_received(raw)

    def response(self) -> Response:
        return parse_response(bytes(self.client_t.data))


def split_request(raw: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """(request line, headers by lower-case name, body) of what a backend received."""
    head, _, body = raw.partition(b"\r\n\r\n")
    line, *rest = head.split(b"\r\n")
    headers = {}
    for header in rest:
        name, _, value = header.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return line, headers, body


def json_reply(body: bytes, status: int = 200, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\n%scontent-length: %d\r\n\r\n%s" % (
        status,
        extra,
        len(body),
        body,
    )
