"""The shadow mirror on real data-plane objects, with in-memory transports at the edge.

These pin down what is awkward to provoke with real backends: exactly which requests
are copied, skipped or dropped, that the client's answer never waits for the copy,
and how each way a copy can end is counted.
"""

from __future__ import annotations

import asyncio
import random

import orjson

from gateway.controlplane.policy.compile import compile_snapshot
from gateway.controlplane.policy.loader import parse_policies
from gateway.dataplane.exchange import Exchange
from gateway.dataplane.health import HealthRegistry
from gateway.dataplane.http.server import ClientConnection
from gateway.dataplane.http.upstream import UpstreamConnection, UpstreamPool
from gateway.dataplane.plane import DataPlane
from gateway.dataplane.shadow.mirror import ShadowedExchange
from gateway.dataplane.snapshot import Endpoint, SnapshotRef
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.shadow_metrics import ShadowSeries
from gateway.settings import Settings
from tests.memrig import MemoryTransport

BODY = b'{"model":"chat","messages":[{"role":"user","content":"hi"}]}'


def policy(shadow: str) -> str:
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants:
  - {{name: main, endpoints: ["http://127.0.0.1:9"]}}
{shadow}
"""


SHADOW = policy("shadow: [{name: cand, endpoints: ['http://127.0.0.1:10'], model: cand-model}]")


def chat(text: str) -> bytes:
    body = orjson.dumps({"choices": [{"index": 0, "message": {"content": text}}]})
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )


class ShadowRig:
    """A data plane with one client, pooled primary connections and shadow connections."""

    def __init__(self, text: str, settings: Settings | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.metrics = GatewayMetrics()
        health = HealthRegistry(self.metrics)
        policies, problems = parse_policies(text, "t.yaml")
        assert not problems
        snap = compile_snapshot(policies, metrics=self.metrics, health=health)
        self.route = snap.routes["chat"]
        self.plane = DataPlane(
            settings or Settings(), SnapshotRef(snap), self.metrics, health, loop, random.Random(1)
        )
        self.client = ClientConnection(self.plane)
        self.client_t = MemoryTransport()
        self.client.connection_made(self.client_t)
        self.upstream, self.upstream_t = pooled(
            self.plane.pool, self.route.variants[0].endpoints[0], self.plane.now
        )
        self.shadows: list[tuple[UpstreamConnection, MemoryTransport]] = [
            pooled(self.plane.shadow.pool, s.endpoints[0], self.plane.now)
            for s in self.route.shadows
            if s.endpoints
        ]

    def series(self, i: int = 0) -> ShadowSeries:
        return self.route.shadows[i].series

    def request(self, body: bytes = BODY) -> None:
        self.client.data_received(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nx-user-id: u1\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )


def pooled(
    pool: UpstreamPool, endpoint: Endpoint, now: float
) -> tuple[UpstreamConnection, MemoryTransport]:
    """An idle keep-alive connection to `endpoint` in `pool`, on an in-memory transport."""
    endpoint_pool = pool._pool(endpoint)
    conn = UpstreamConnection(endpoint_pool)
    transport = MemoryTransport()
    conn.connection_made(transport)
    endpoint_pool.active += 1
    endpoint_pool.release(conn, now)
    return conn, transport


async def settle() -> None:
    """Let call_soon callbacks (the comparison batch) run."""
    for _ in range(3):
        await asyncio.sleep(0)


async def test_a_route_without_shadows_gets_a_plain_exchange() -> None:
    rig = ShadowRig(policy(""))
    rig.request()
    assert type(rig.client.exchange) is Exchange


async def test_the_copy_carries_the_same_body_and_is_compared() -> None:
    rig = ShadowRig(SHADOW)
    rig.request()
    exchange = rig.client.exchange
    assert isinstance(exchange, ShadowedExchange)
    shadow_conn, shadow_t = rig.shadows[0]
    sent = bytes(shadow_t.data)
    head, _, body = sent.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:10\r\n")
    assert b"x-switchyard-shadow: cand" in head and b"x-user-id: u1" in head
    assert orjson.loads(body) == {**orjson.loads(BODY), "model": "cand-model"}
    assert bytes(rig.upstream_t.data).endswith(BODY)  # the primary's body is untouched

    rig.upstream.data_received(chat("a b c d"))
    assert rig.client.exchange is None  # the client's answer did not wait for the shadow
    assert rig.client_t.data.endswith(b'a b c d"}}]}')
    assert rig.series().in_flight == 1 and not rig.series().comparisons

    shadow_conn.data_received(chat("a b c"))
    await settle()
    series = rig.series()
    assert series.requests == {"ok": 1} and series.in_flight == 0
    assert series.comparisons == {"agree": 1}
    similarity, ratio, _, _, latency = series.recent[0]
    assert similarity == 0.75 and ratio == 0.75 and latency is not None
    assert series.agreement().rate == 1.0
    assert rig.plane.shadow.pool._pools["127.0.0.1:10"].idle  # kept alive for the next copy


async def test_sampling_and_every_reason_a_copy_is_not_sent() -> None:
    text = policy(
        "shadow:\n"
        "  - {name: never, endpoints: ['http://127.0.0.1:11'], sample: 0}\n"
        "  - {name: small, endpoints: ['http://127.0.0.1:12'], max_body_bytes: 10}\n"
        "  - {name: ejected, endpoints: ['http://127.0.0.1:13']}\n"
        "  - {name: one, endpoints: ['http://127.0.0.1:14'], max_inflight: 1}\n"
    )
    rig = ShadowRig(text)
    rig.route.shadows[2].endpoints[0].state.ejected_until = float("inf")
    rig.request()
    rig.upstream.data_received(chat("x"))
    rig.request()  # the copy to `one` is still in flight: this one is dropped
    never, small, ejected, one = (rig.series(i) for i in range(4))
    assert never.skipped == never.dropped == {} and never.in_flight == 0  # not sampled
    assert small.skipped == {"body_too_large": 2}
    assert ejected.skipped == {"no_endpoint": 2}
    assert one.in_flight == 1 and one.dropped == {"max_inflight": 1}


async def test_the_process_wide_bound_drops_copies_too() -> None:
    text = policy(
        "shadow:\n  - {name: a, endpoints: ['http://127.0.0.1:11']}\n"
        "  - {name: b, endpoints: ['http://127.0.0.1:12']}\n"
    )
    rig = ShadowRig(text, Settings(shadow_max_inflight=1))
    rig.request()
    assert rig.series(0).in_flight == 1
    assert rig.series(1).dropped == {"global_inflight": 1}


async def test_garbage_from_the_shadow_is_counted_and_the_client_unaffected() -> None:
    rig = ShadowRig(SHADOW)
    rig.request()
    shadow_conn, shadow_t = rig.shadows[0]
    shadow_conn.data_received(b"\x16\x03\x01 not http at all\r\n\r\n")
    assert shadow_t.aborted
    rig.upstream.data_received(chat("fine"))
    await settle()
    assert rig.client_t.data.startswith(b"HTTP/1.1 200 OK\r\n")
    series = rig.series()
    assert series.requests == {"invalid_response": 1} and series.comparisons == {}
    assert series.agreement().failed == 1


async def test_an_answer_without_a_length_ends_when_the_shadow_closes() -> None:
    rig = ShadowRig(SHADOW)
    rig.request()
    rig.upstream.data_received(chat("a b c"))
    shadow_conn, _ = rig.shadows[0]
    head, _, body = chat("a b c").partition(b"\r\n\r\n")
    unframed = head.replace(b"content-length", b"x-length") + b"\r\n\r\n"
    shadow_conn.data_received(unframed + body[:10])
    shadow_conn.data_received(body[10:])
    assert not rig.series().requests  # no length given: more may come
    shadow_conn.connection_lost(None)
    await settle()
    assert rig.series().requests == {"ok": 1} and rig.series().comparisons == {"agree": 1}


async def test_an_answer_cut_short_of_its_length_is_a_reset() -> None:
    rig = ShadowRig(SHADOW)
    rig.request()
    rig.upstream.data_received(chat("a b c"))
    shadow_conn, _ = rig.shadows[0]
    answer = chat("a b c")
    shadow_conn.data_received(answer[:-5])  # content-length says 5 bytes more
    shadow_conn.connection_lost(None)
    await settle()
    assert rig.series().requests == {"reset": 1} and rig.series().comparisons == {}


async def test_a_silent_shadow_times_out_on_its_own_deadline() -> None:
    rig = ShadowRig(
        policy(
            "shadow: [{name: cand, endpoints: ['http://127.0.0.1:10'], timeouts: {total: 50ms}}]"
        )
    )
    rig.request()
    rig.upstream.data_received(chat("fine"))
    assert rig.client.exchange is None
    for _ in range(40):
        if rig.series().requests:
            break
        await asyncio.sleep(0.05)
    assert rig.series().requests == {"timeout": 1}
    assert rig.shadows[0][1].aborted and rig.series().in_flight == 0


async def test_a_failed_primary_is_not_compared() -> None:
    rig = ShadowRig(SHADOW)
    rig.request()
    # Garbage on a reused connection: resent on a fresh one, to a port nobody serves.
    rig.upstream.data_received(b"garbage that is not HTTP\r\n\r\n")
    for _ in range(100):
        if rig.client_t.data:
            break
        await asyncio.sleep(0.02)
    assert rig.client_t.data.startswith(b"HTTP/1.1 503")  # the gateway's own error
    rig.shadows[0][0].data_received(chat("a"))
    await settle()
    assert rig.series().requests == {"ok": 1}
    assert rig.series().comparisons == {"primary_failed": 1}


async def test_streams_are_compared_when_both_have_ended() -> None:
    rig = ShadowRig(SHADOW)
    rig.request()

    def sse(*deltas: str) -> bytes:
        events = b"".join(
            b"data: %s\n\n" % orjson.dumps({"choices": [{"index": 0, "delta": {"content": d}}]})
            for d in deltas
        )
        return events + b"data: [DONE]\n\n"

    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    rig.upstream.data_received(head)
    for part in (sse("tok1"), sse(" tok2")):
        rig.upstream.data_received(b"%x\r\n%s\r\n" % (len(part), part))
    rig.upstream.data_received(b"0\r\n\r\n")
    assert rig.client.exchange is None
    shadow_conn = rig.shadows[0][0]
    body = sse("tok1", " tok2")
    shadow_conn.data_received(head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    await settle()
    assert rig.series().comparisons == {"agree": 1}
    assert rig.series().recent[0][0] == 1.0


async def test_an_answer_over_the_capture_limit_is_not_compared() -> None:
    rig = ShadowRig(SHADOW, Settings(shadow_max_response_bytes=16))
    rig.request()
    rig.upstream.data_received(chat("a long answer that is over sixteen bytes"))
    rig.shadows[0][0].data_received(chat("a"))
    await settle()
    assert rig.series().requests == {"ok": 1}
    assert rig.series().comparisons == {"too_large": 1}


async def test_drain_cancels_copies_in_flight() -> None:
    rig = ShadowRig(SHADOW)
    rig.request()
    rig.upstream.data_received(chat("x"))
    await rig.plane.shadow.aclose()
    assert rig.series().requests == {"cancelled": 1} and rig.series().in_flight == 0
    assert rig.plane.shadow.in_flight == 0


async def test_each_shadow_gets_its_own_sample_share() -> None:
    text = policy(
        "shadow:\n  - {name: half, endpoints: ['http://127.0.0.1:11'], sample: 0.5}\n"
        "  - {name: quarter, endpoints: ['http://127.0.0.1:12'], sample: 0.25}\n"
    )
    rig = ShadowRig(text, Settings(seed=5))
    for shadow in rig.route.shadows:  # every sampled request is then counted, no I/O
        shadow.endpoints[0].state.ejected_until = float("inf")
    for _ in range(2000):
        rig.request()
        rig.upstream.data_received(chat("x"))
    half = rig.series(0).skipped["no_endpoint"]
    quarter = rig.series(1).skipped["no_endpoint"]
    assert abs(half - 1000) < 100 and abs(quarter - 500) < 80, (half, quarter)
