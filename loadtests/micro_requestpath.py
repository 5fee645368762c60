"""Python cost of one proxied request, without the kernel: a repeatable microbenchmark.

The real data plane objects (ClientConnection, Exchange, UpstreamConnection, a compiled
two-variant sticky canary snapshot) are driven with in-memory transports, so the number
is the gateway's own per-request CPU in microseconds: what each optimisation changes.
Run: .venv/bin/python loadtests/micro_requestpath.py [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.controlplane.compile import compile_snapshot
from gateway.controlplane.loader import parse_policies
from gateway.dataplane.health import HealthRegistry
from gateway.dataplane.plane import DataPlane
from gateway.dataplane.server import ClientConnection
from gateway.dataplane.snapshot import SnapshotRef
from gateway.dataplane.upstream import UpstreamConnection
from gateway.observability.metrics import GatewayMetrics
from gateway.settings import Settings

POLICY = """apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants:
  - {name: champion, weight: 90, endpoints: ["http://127.0.0.1:9"]}
  - {name: challenger, weight: 10, endpoints: ["http://127.0.0.1:9"]}
sticky: {hash_on: "header:x-user-id"}
overrides:
  - {match: {header: {x-cohort: beta}}, variant: challenger}
fallback: [champion]
"""

BODY = (
    b'{"model":"chat","messages":[{"role":"user","content":"Summarise the quarterly fraud '
    b'report for the risk committee, focusing on card-not-present transactions."}],'
    b'"max_tokens":64,"temperature":0.2}'
)
RESPONSE_BODY = (
    b'{"id":"x","object":"chat.completion","created":1,"model":"chat","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10}}'
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nserver: nginx\r\ndate: Thu, 26 Nov 2026 05:00:00 GMT\r\n"
    b"content-type: application/json\r\ncontent-length: %d\r\nconnection: keep-alive\r\n\r\n%s"
    % (len(RESPONSE_BODY), RESPONSE_BODY)
)


class MemoryTransport(asyncio.Transport):
    """Collects writes; nothing goes to the kernel."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.closed = False

    def write(self, data: Any) -> None:
        self.written += len(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def measure(n: int) -> float:
    loop = asyncio.get_running_loop()
    metrics = GatewayMetrics()
    health = HealthRegistry(metrics)
    policies, problems = parse_policies(POLICY, "bench.yaml")
    assert not problems, problems
    snap = compile_snapshot(policies, metrics=metrics, health=health)
    plane = DataPlane(Settings(), SnapshotRef(snap), metrics, health, loop, random.Random(1))
    client = ClientConnection(plane)
    client.connection_made(MemoryTransport())
    endpoint = snap.routes["chat"].variants[0].endpoints[0]
    pool = plane.pool._pool(endpoint)
    upstream = UpstreamConnection(pool)
    upstream.connection_made(MemoryTransport())
    pool.active += 1
    pool.release(upstream, time.monotonic())
    requests = [
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
        b"x-user-id: user-%d\r\ncontent-length: %d\r\n\r\n%s" % (i, len(BODY), BODY)
        for i in range(1000)
    ]
    start = time.perf_counter()
    for i in range(n):
        client.data_received(requests[i % 1000])
        upstream.data_received(RESPONSE)
    elapsed = time.perf_counter() - start
    served = sum(s.by_class[2] for s in metrics._series.values())
    assert served == n, f"only {served} of {n} requests completed"
    return elapsed / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import uvloop

    results = [uvloop.run(measure(args.requests)) for _ in range(args.rounds)]
    print(
        f"python cost per proxied request: best {min(results):.2f} us, "
        f"median {sorted(results)[len(results) // 2]:.2f} us over {args.rounds} rounds "
        f"of {args.requests} requests"
    )


if __name__ == "__main__":
    main()
