"""Python cost of one shadowed request, without the kernel: a repeatable microbenchmark.

The real data plane objects (ClientConnection, ShadowedExchange, ShadowCall, the
mirror's own pool, a compiled snapshot of the bench route with a shadow) are driven
with in-memory transports: each request is proxied to the primary, copied to the
shadow, both answers are fed back, and the pair is compared (at the end of the loop
iteration, as in the gateway), so every request pays the whole shadow path: sampling,
the copy's request and parse, its metrics, the comparison and its metrics.

Rounds alternate the same route without a shadow and with one sampling every request
(`sample: 1.0`), in one process, so machine noise hits both alike; the difference is
the Python cost of a shadowed request. With --differ the shadow answers a different
text (the comparison then splits both into words); by default both answer the same,
as the bench's upstream does.

Run: .venv/bin/python loadtests/micro_shadow.py [--requests N] [--rounds R] [--differ]

For instruction counts, run one mode at two request counts under callgrind and take
the difference per request (start-up cancels):

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        .venv/bin/python loadtests/micro_shadow.py --only shadow --requests 2000 --rounds 1
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

from gateway.controlplane.policy.compile import compile_snapshot
from gateway.controlplane.policy.loader import parse_policies
from gateway.dataplane.health import HealthRegistry
from gateway.dataplane.http.server import ClientConnection
from gateway.dataplane.http.upstream import UpstreamConnection
from gateway.dataplane.plane import DataPlane
from gateway.dataplane.snapshot import SnapshotRef
from gateway.observability.metrics import GatewayMetrics
from gateway.settings import Settings

# The bench policy (loadtests/bench), its upstream on a port nothing listens on.
POLICY = """apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
protocol: openai
variants:
  - {name: champion, weight: 90, endpoints: ["http://127.0.0.1:9"]}
  - {name: challenger, weight: 10, endpoints: ["http://127.0.0.1:9"]}
sticky: {hash_on: "header:x-user-id"}
overrides:
  - {match: {header: {x-cohort: beta}}, variant: challenger}
fallback: [champion]
timeouts: {connect: 500ms, first_byte: 30s, total: 5m, idle: 60s}
retries: {attempts: 2, budget: 0.2, on: [connect-error, 502, 503]}
outlier: {consecutive_failures: 5, base_ejection: 30s, max_ejection: 5m}
"""
SHADOW = (
    'shadow: [{name: mirror, endpoints: ["http://127.0.0.1:9"], sample: 1.0, max_inflight: 64}]\n'
)

BODY = (
    b'{"model":"chat","messages":[{"role":"system","content":"You are a concise assistant '
    b'for the risk team."},{"role":"user","content":"Summarise the quarterly fraud report for '
    b'the risk committee, focusing on card-not-present transactions and chargeback rates."}],'
    b'"max_tokens":64,"temperature":0.2}'
)
# What the bench's nginx upstream answers.
TEXT = (
    b"Card-not-present fraud rose 4% quarter on quarter; chargebacks are flat. New merchant "
    b"rules cut false positives by 11%."
)
OTHER_TEXT = (
    b"Card-not-present fraud rose 5% this quarter while chargebacks stayed flat; the new "
    b"merchant rules reduced false positives by 11%."
)


def response(text: bytes) -> bytes:
    body = (
        b'{"id":"chatcmpl-bench0000000000000000000000000001","object":"chat.completion",'
        b'"created":1767225600,"model":"chat","choices":[{"index":0,"message":{"role":'
        b'"assistant","content":"%s"},"logprobs":null,"finish_reason":"stop"}],"usage":'
        b'{"prompt_tokens":48,"completion_tokens":31,"total_tokens":79}}' % text
    )
    return (
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Thu, 26 Nov 2026 05:00:00 GMT\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: keep-alive"
        b"\r\n\r\n%s" % (len(body), body)
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


def idle_connection(pool: Any) -> UpstreamConnection:
    """A keep-alive connection on an in-memory transport, idle in `pool`."""
    conn = UpstreamConnection(pool)
    conn.connection_made(MemoryTransport())
    pool.active += 1
    pool.release(conn, time.monotonic())
    return conn


async def measure(n: int, shadowed: bool, differ: bool) -> float:
    """Microseconds per request, primary and (if `shadowed`) its copy and comparison."""
    loop = asyncio.get_running_loop()
    metrics = GatewayMetrics()
    health = HealthRegistry(metrics)
    policies, problems = parse_policies(POLICY + (SHADOW if shadowed else ""), "bench.yaml")
    assert not problems, problems
    snap = compile_snapshot(policies, metrics=metrics, health=health)
    route = snap.routes["chat"]
    plane = DataPlane(Settings(), SnapshotRef(snap), metrics, health, loop, random.Random(1))
    client = ClientConnection(plane)
    client.connection_made(MemoryTransport())
    upstream = idle_connection(plane.pool._pool(route.variants[0].endpoints[0]))
    mirrored = None
    if shadowed:
        mirrored = idle_connection(plane.shadow.pool._pool(route.shadows[0].endpoints[0]))
    primary_answer = response(TEXT)
    shadow_answer = response(OTHER_TEXT if differ else TEXT)
    requests = [
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
        b"authorization: Bearer sk-bench-f0301602d1326d5312195550df4aa8cb496e73594afb45aa\r\n"
        b"x-user-id: user-%d\r\ncontent-length: %d\r\n\r\n%s" % (i, len(BODY), BODY)
        for i in range(1000)
    ]
    start = time.perf_counter()
    for i in range(n):
        client.data_received(requests[i % 1000])
        upstream.data_received(primary_answer)
        if mirrored is not None:
            mirrored.data_received(shadow_answer)
        # One loop iteration per request, shadowed or not: the comparison runs here.
        await asyncio.sleep(0)
    elapsed = time.perf_counter() - start
    served = sum(s.by_class[2] for s in metrics._series.values())
    assert served == n, f"only {served} of {n} requests completed"
    if shadowed:
        series = route.shadows[0].series
        assert series.requests == {"ok": n}, series.requests
        verdicts = series.comparisons.get("agree", 0) + series.comparisons.get("disagree", 0)
        assert verdicts == n, f"only {verdicts} of {n} pairs compared: {series.comparisons}"
        words_split = series.similarity.total < n - 0.5  # each similarity is 1.0 when equal
        assert words_split == differ, "--differ: the texts must differ, else be the same"
    await plane.shadow.aclose()
    return elapsed / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--differ", action="store_true", help="the shadow answers a different text")
    parser.add_argument(
        "--only",
        choices=("plain", "shadow"),
        help="run one mode only (for callgrind: run it at two request counts)",
    )
    args = parser.parse_args()
    import uvloop

    import gateway

    modes = [False, True] if args.only is None else [args.only == "shadow"]
    runs: dict[bool, list[float]] = {mode: [] for mode in modes}
    for _ in range(args.rounds):
        for mode in modes:
            runs[mode].append(uvloop.run(measure(args.requests, mode, args.differ)))
    for mode in modes:
        found = sorted(runs[mode])
        label = "shadow 100%" if mode else "no shadow"
        print(
            f"{label:>12}: best {found[0]:.2f} us, median {found[len(found) // 2]:.2f} us "
            f"per request ({args.rounds} rounds of {args.requests}, {gateway.COMPILED.label})"
        )
    if len(modes) == 2:
        extra = min(runs[True]) - min(runs[False])
        print(f"shadowed request costs {extra:.2f} us more (best against best)")


if __name__ == "__main__":
    main()
