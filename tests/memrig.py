"""Real data-plane objects wired to in-memory transports: fakes only at the network edge."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from gateway.controlplane.policy.compile import compile_snapshot
from gateway.controlplane.policy.loader import parse_policies
from gateway.dataplane.health import HealthRegistry
from gateway.dataplane.http.server import ClientConnection
from gateway.dataplane.http.upstream import UpstreamConnection
from gateway.dataplane.plane import DataPlane
from gateway.dataplane.snapshot import SnapshotRef
from gateway.observability.metrics import GatewayMetrics
from gateway.settings import Settings

POLICY = """apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants:
  - {name: main, endpoints: ["http://127.0.0.1:9"]}
"""
BODY = b'{"model":"chat","messages":[]}'


class MemoryTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()
        self.closed = False
        self.aborted = False

    def write(self, data: Any) -> None:
        self.data += data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Rig:
    """A data plane with one client connection and one pooled upstream connection."""

    def __init__(self, policy: str = POLICY) -> None:
        loop = asyncio.get_running_loop()
        self.metrics = GatewayMetrics()
        health = HealthRegistry(self.metrics)
        policies, problems = parse_policies(policy, "t.yaml")
        assert not problems
        snap = compile_snapshot(policies, metrics=self.metrics, health=health)
        self.plane = DataPlane(
            Settings(), SnapshotRef(snap), self.metrics, health, loop, random.Random(1)
        )
        self.client = ClientConnection(self.plane)
        self.client_t = MemoryTransport()
        self.client.connection_made(self.client_t)
        endpoint = snap.routes["chat"].variants[0].endpoints[0]
        pool = self.plane.pool._pool(endpoint)
        self.upstream = UpstreamConnection(pool)
        self.upstream_t = MemoryTransport()
        self.upstream.connection_made(self.upstream_t)
        pool.active += 1
        pool.release(self.upstream, self.plane.now)

    def request(
        self,
        extra: bytes = b"",
        version: bytes = b"1.1",
        path: bytes = b"/v1/chat/completions",
        body: bytes = BODY,
    ) -> None:
        self.client.data_received(
            b"POST "
            + path
            + b" HTTP/"
            + version
            + b"\r\nhost: gw\r\n"
            + extra
            + b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
