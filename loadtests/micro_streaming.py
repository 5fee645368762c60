"""Python cost of relaying one token stream, without the kernel: a repeatable microbenchmark.

The real data plane objects (ClientConnection, Exchange, UpstreamConnection, the canary
of micro_requestpath.py) are driven with in-memory transports: a streamed chat request
(`"stream": true`, no `stream_options`, so the gateway asks for the usage report and
drops it from the client's stream), answered by a chunked SSE stream the way vLLM and
OpenAI write it: a role chunk, one chunk per token, a finishing chunk, the usage report
and `[DONE]`, every chunk but the report carrying `"usage": null`. The whole answer
arrives in one read, as the bench's simulator writes it.

Run: .venv/bin/python loadtests/micro_streaming.py [--streams N] [--tokens T]

It prints microseconds per stream and per event. For instruction counts, run it under
callgrind at two stream counts and take the difference per stream (start-up cancels):

    valgrind --tool=callgrind .venv/bin/python loadtests/micro_streaming.py --streams 50
    valgrind --tool=callgrind .venv/bin/python loadtests/micro_streaming.py --streams 150
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from micro_requestpath import POLICY, MemoryTransport

from gateway.controlplane.policy.compile import compile_snapshot
from gateway.controlplane.policy.loader import parse_policies
from gateway.dataplane.health import HealthRegistry
from gateway.dataplane.http.server import ClientConnection
from gateway.dataplane.http.upstream import UpstreamConnection
from gateway.dataplane.plane import DataPlane
from gateway.dataplane.snapshot import SnapshotRef
from gateway.observability.metrics import GatewayMetrics
from gateway.settings import Settings

BODY = (
    b'{"model":"chat","stream":true,"messages":[{"role":"user","content":"Summarise the '
    b'quarterly fraud report for the risk committee."}]}'
)
_CHUNK = (
    b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"chat",'
    b'"choices":[{"index":0,"delta":%s,"logprobs":null,"finish_reason":%s}],"usage":null}'
)
_REPORT = (
    b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"chat",'
    b'"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":%d,"total_tokens":%d}}'
)


def _event(data: bytes) -> bytes:
    """One SSE event as one HTTP chunk."""
    event = b"data: " + data + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(event), event)


def stream_response(tokens: int) -> bytes:
    """A chunked SSE answer of `tokens` content chunks, as vLLM writes it."""
    chunks = [_event(_CHUNK % (b'{"role":"assistant","content":""}', b"null"))]
    for i in range(tokens):
        chunks.append(_event(_CHUNK % (b'{"content":" tok%d"}' % i, b"null")))
    chunks.append(_event(_CHUNK % (b"{}", b'"stop"')))
    chunks.append(_event(_REPORT % (tokens, tokens + 9)))
    chunks.append(_event(b"[DONE]"))
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    return head + b"".join(chunks) + b"0\r\n\r\n"


async def measure(streams: int, tokens: int) -> float:
    """Microseconds per relayed stream."""
    loop = asyncio.get_running_loop()
    metrics = GatewayMetrics()
    health = HealthRegistry(metrics)
    policies, problems = parse_policies(POLICY, "bench.yaml")
    assert not problems, problems
    snap = compile_snapshot(policies, metrics=metrics, health=health)
    plane = DataPlane(Settings(), SnapshotRef(snap), metrics, health, loop, random.Random(1))
    client = ClientConnection(plane)
    client_t = MemoryTransport()
    client.connection_made(client_t)
    endpoint = snap.routes["chat"].variants[0].endpoints[0]
    pool = plane.pool._pool(endpoint)
    upstream = UpstreamConnection(pool)
    upstream.connection_made(MemoryTransport())
    pool.active += 1
    pool.release(upstream, time.monotonic())
    requests = [
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
        b"x-user-id: user-%d\r\ncontent-length: %d\r\n\r\n%s" % (i, len(BODY), BODY)
        for i in range(100)
    ]
    response = stream_response(tokens)
    start = time.perf_counter()
    for i in range(streams):
        client.data_received(requests[i % 100])
        upstream.data_received(response)
    elapsed = time.perf_counter() - start
    served = sum(s.by_class[2] for s in metrics._series.values())
    assert served == streams, f"only {served} of {streams} streams completed"
    completion = sum(s.completion_tokens for s in metrics._series.values())
    assert completion == streams * tokens, "the usage reports were not all read"
    return elapsed / streams * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--tokens", type=int, default=200)
    args = parser.parse_args()
    import uvloop

    us = uvloop.run(measure(args.streams, args.tokens))
    events = args.tokens + 4  # the role chunk, the tokens, finish, the usage report, [DONE]
    print(
        f"{args.streams} streams of {args.tokens} tokens: {us:.1f} us per stream, "
        f"{us / events:.3f} us per event"
    )


if __name__ == "__main__":
    main()
