"""Shadow traffic through the real gateway process, against simulators on loopback.

A shadow that is down, ten times slower than the primary, or answering garbage must
leave the primary alone: every primary request succeeds, and the primary's p99 stays
in the same histogram bucket (or the next) as a route without a shadow that served
the same traffic, interleaved, in the same run. Counts, not wall-clock thresholds.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import orjson
import pytest
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from tests.procs import GatewayProc, Simulator, start_kserve, start_simulator

PRIMARY_MS = 20
N = 200  # requests per route
CONCURRENCY = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def primary() -> Iterator[Simulator]:
    sim = start_simulator("primary", "--tokens", "8", "--latency-ms", str(PRIMARY_MS))
    yield sim
    sim.proc.stop()


@pytest.fixture(scope="module")
def faulty() -> Iterator[dict[str, str]]:
    """Shadow backends: down (nothing listens), 10x slower, and answering garbage."""
    slow = start_simulator("slow", "--tokens", "8", "--latency-ms", str(10 * PRIMARY_MS))
    garbage = start_simulator("garbage", "--fault", "garbage")
    yield {"down": f"http://127.0.0.1:{free_port()}", "slow": slow.url, "garbage": garbage.url}
    slow.proc.stop()
    garbage.proc.stop()


def route(name: str, primary: str, shadow: str = "") -> str:
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: {name}
variants: [{{name: main, endpoints: ["{primary}"]}}]
retries: {{attempts: 1}}
{shadow}
"""


def shadow(url: str, **extra: object) -> str:
    fields = "".join(f", {k}: {v}" for k, v in extra.items())
    return f"shadow: [{{name: cand, endpoints: ['{url}']{fields}}}]"


def histogram(text: str, name: str, route: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of a histogram, summed over a route's series."""
    sums: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for s in family.samples:
            if s.name.endswith("_bucket") and s.labels.get("route") == route:
                le = float(s.labels["le"])
                sums[le] = sums.get(le, 0.0) + s.value
    return sorted(sums.items())


def quantile_index(buckets: list[tuple[float, float]], q: float) -> int:
    """Index of the bucket holding the q-quantile."""
    total = buckets[-1][1]
    return next(i for i, (_, count) in enumerate(buckets) if count >= q * total)


def share_within(buckets: list[tuple[float, float]], bound: float) -> float:
    return dict(buckets)[bound] / buckets[-1][1]


async def drive(url: str, routes: list[str], n: int) -> list[int]:
    """`n` chat requests per route, interleaved, `CONCURRENCY` at a time; the statuses."""
    limit = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def one(i: int, name: str) -> int:
            async with limit:
                reply = await client.post(
                    "/v1/chat/completions",
                    json={"model": name, "messages": [{"role": "user", "content": f"q{i}"}]},
                )
                return reply.status_code

        return list(await asyncio.gather(*(one(i, name) for i in range(n) for name in routes)))


def shadow_view(gw: GatewayProc, name: str) -> dict[str, Any]:
    reply = httpx.get(f"{gw.admin}/admin/shadow/{name}", timeout=10)
    assert reply.status_code == 200, reply.text
    found: dict[str, Any] = reply.json()
    return found


def settled(gw: GatewayProc, names: list[str], timeout: float = 30.0) -> dict[str, dict[str, Any]]:
    """Each route's shadow entry once no copy is in flight and every answer is compared."""
    deadline = time.monotonic() + timeout
    while True:
        views = {n: shadow_view(gw, n)["shadows"][0] for n in names}
        done = all(
            v["in_flight"] == 0
            and sum(v["comparisons"].values())
            >= v["requests"].get("ok", 0) + v["requests"].get("error_status", 0)
            for v in views.values()
        )
        if done or time.monotonic() > deadline:
            return views
        time.sleep(0.1)


def test_faulty_shadows_leave_the_primary_alone(
    gateway: Callable[..., GatewayProc], primary: Simulator, faulty: dict[str, str]
) -> None:
    gw = gateway(
        route("plain", primary.url),
        route("down", primary.url, shadow(faulty["down"])),
        route("slow", primary.url, shadow(faulty["slow"], max_inflight=4)),
        route("garbage", primary.url, shadow(faulty["garbage"])),
    )
    names = ["plain", "down", "slow", "garbage"]
    statuses = asyncio.run(drive(gw.url, names, N))
    assert statuses == [200] * (N * len(names))  # primary success: 100%

    views = settled(gw, names[1:])
    text = gw.metrics()
    for name in names:
        assert gw.metric("switchyard_requests_total", route=name, status_class="2xx") == N

    # The primary's p95, from its histograms: same bucket as the unshadowed route's, or
    # the next one, for the whole request and for what the gateway added; its p99 (the
    # 2nd slowest of 200, one scheduling hiccup away) within two buckets.
    for metric in ("switchyard_request_duration_seconds", "switchyard_gateway_overhead_seconds"):
        plain = histogram(text, metric, "plain")
        for name in names[1:]:
            shadowed = histogram(text, metric, name)
            detail = (metric, name, shadowed, plain)
            assert quantile_index(shadowed, 0.95) <= quantile_index(plain, 0.95) + 1, detail
            assert quantile_index(shadowed, 0.99) <= quantile_index(plain, 0.99) + 2, detail
    plain_fast = share_within(histogram(text, "switchyard_request_duration_seconds", "plain"), 0.1)
    for name in names[1:]:
        fast = share_within(histogram(text, "switchyard_request_duration_seconds", name), 0.1)
        assert fast >= plain_fast - 0.03, (name, fast, plain_fast)  # never waited 200 ms

    # Every sampled request is accounted for: sent (by outcome) or dropped.
    down, slow, garbage = views["down"], views["slow"], views["garbage"]
    assert set(down["requests"]) == {"connect_error"}
    assert down["sent"] + sum(down["dropped"].values()) == N
    assert set(garbage["requests"]) == {"invalid_response"}
    assert garbage["sent"] + sum(garbage["dropped"].values()) == N
    assert down["comparisons"] == garbage["comparisons"] == {}
    assert down["agreement"]["failed"] == down["sent"]

    # The slow shadow: at most 4 in flight, so with 8 concurrent clients some copies
    # were dropped, the rest answered and agreed (same simulator seed, same text).
    assert slow["requests"] == {"ok": slow["sent"]} and slow["dropped"]["max_inflight"] > 0
    assert slow["sent"] + slow["dropped"]["max_inflight"] == N
    assert slow["comparisons"] == {"agree": slow["sent"]} and slow["agreement_rate"] == 1.0
    assert slow["latency_delta_ms"]["p50"] > 100  # 200 ms vs 20 ms, per request
    assert (
        gw.metric("switchyard_shadow_dropped_total", route="slow", reason="max_inflight")
        == (slow["dropped"]["max_inflight"])
    )
    assert gw.metric("switchyard_shadow_requests_total", route="down") == down["sent"]


@pytest.fixture(scope="module")
def streaming_shadows() -> Iterator[dict[str, Simulator]]:
    # ~4 s a stream: far longer than the client takes, even on a loaded machine.
    slow_chunks = start_simulator("chunky", "--tokens", "8", "--chunk-delay-ms", "500")
    short = start_simulator("short", "--tokens", "2")
    yield {"chunky": slow_chunks, "short": short}
    slow_chunks.proc.stop()
    short.proc.stop()


def test_streamed_requests_are_shadowed_without_holding_the_client(
    gateway: Callable[..., GatewayProc],
    sims: tuple[Simulator, Simulator],
    streaming_shadows: dict[str, Simulator],
    tmp_path: Path,
) -> None:
    log = tmp_path / "shadow.jsonl"
    gw = gateway(
        route("stream", sims[0].url, shadow(streaming_shadows["chunky"].url)),
        route("short", sims[0].url, shadow(streaming_shadows["short"].url)),
        extra=("--shadow-log", str(log)),
    )
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="k", max_retries=0)
    started = time.monotonic()
    stream = client.chat.completions.create(
        model="stream", messages=[{"role": "user", "content": "tell me"}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    took = time.monotonic() - started
    assert len(text.split()) == 8
    # The shadow streams 8 chunks 500 ms apart: it is still going when the client is done,
    # and seeing its copy in flight after the client finished is what shows the client
    # was not held for it (no clock: `took < 1.0` once failed on a loaded machine).
    during = shadow_view(gw, "stream")["shadows"][0]
    assert during["in_flight"] == 1, (took, during)
    after = settled(gw, ["stream"])["stream"]
    assert after["requests"] == {"ok": 1}
    assert after["comparisons"] == {"agree": 1} and after["similarity"]["p50"] == 1.0
    assert after["latency_delta_ms"]["p50"] > 500

    # A shadow answering 2 of the same 8 words: Jaccard 2/8, length ratio 2/8.
    reply = client.chat.completions.with_raw_response.create(
        model="short", messages=[{"role": "user", "content": "tell me"}]
    )
    request_id = reply.headers["x-request-id"]
    short = settled(gw, ["short"])["short"]
    assert short["comparisons"] == {"disagree": 1} and short["agreement_rate"] == 0.0
    assert short["similarity"]["p50"] == 0.25 and short["length_ratio"]["p50"] == 0.25
    client.close()

    deadline = time.monotonic() + 10
    lines: list[dict[str, Any]] = []
    while time.monotonic() < deadline and len(lines) < 2:
        lines = [orjson.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
        time.sleep(0.2)
    by_route = {line["route"]: line for line in lines}
    assert by_route["stream"]["result"] == "agree" and by_route["stream"]["kind"] == "llm"
    assert by_route["short"]["request_id"] == request_id
    assert by_route["short"]["similarity"] == 0.25 and by_route["short"]["shadow_excerpt"]


@pytest.mark.slow
def test_workers_answer_the_shadow_summary_together(
    gateway: Callable[..., GatewayProc], sims: tuple[Simulator, Simulator]
) -> None:
    gw = gateway(route("r", sims[0].url, shadow(sims[1].url)), extra=("--workers", "2"))
    for i in range(40):  # a new connection each time: the kernel spreads them
        reply = httpx.post(
            f"{gw.url}/v1/chat/completions",
            json={"model": "r", "messages": [{"role": "user", "content": f"x{i}"}]},
        )
        assert reply.status_code == 200
    deadline = time.monotonic() + 15
    while True:
        summary = shadow_view(gw, "r")
        entry = summary["shadows"][0]
        if sum(entry["comparisons"].values()) == 40 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    # Kept comparisons merged from both workers; counts from the supervisor's merged
    # /metrics, which every worker reads (gateway.stats).
    assert summary["workers"] == 2 and summary["source"]["kind"] == "supervisor"
    assert entry["sent"] == 40 and entry["requests"] == {"ok": 40}
    assert entry["similarity"]["n"] == 40
    assert gw.metric("switchyard_shadow_requests_total", route="r") == 40
    overview = httpx.get(f"{gw.admin}/admin/shadow").json()
    assert overview["source"]["kind"] == "supervisor"
    assert overview["routes"]["r"][0]["compared"] == 40
    denied = httpx.get(f"{gw.admin}/admin/shadow/nope")
    assert denied.status_code == 404


def test_kserve_inferences_are_compared_output_by_output(
    gateway: Callable[..., GatewayProc],
) -> None:
    v1 = start_kserve("kserve-v1", "--model-version", "1", grpc=False)
    v2 = start_kserve("kserve-v2", "--model-version", "2", grpc=False)
    try:
        gw = gateway(
            f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: fraud
protocol: kserve-v2
variants:
  - {{name: champion, endpoints: ["{v1.url}"], model: fraud-detector, model_version: "1"}}
shadow:
  - {{name: same, endpoints: ["{v1.url}"], model: fraud-detector, model_version: "1"}}
  - {{name: next, endpoints: ["{v2.url}"], model: fraud-detector, model_version: "2"}}
"""
        )
        client = httpclient.InferenceServerClient(gw.url.removeprefix("http://"))
        rows = np.array([[0.5, -1.0, 2.0, 0.25], [1.0, 0.0, -0.5, 3.0]], np.float32)
        for binary_output in (False, True):
            tensor = httpclient.InferInput("features", list(rows.shape), "FP32")
            tensor.set_data_from_numpy(rows, binary_data=False)
            wanted = httpclient.InferRequestedOutput("probability", binary_data=binary_output)
            result = client.infer("fraud", [tensor], outputs=[wanted])
            assert result.as_numpy("probability").shape == (2, 1)
        client.close()
        views = {s["shadow"]: s for s in shadow_view(gw, "fraud")["shadows"]}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
            sum(v["comparisons"].values()) < 2 for v in views.values()
        ):
            time.sleep(0.1)
            views = {s["shadow"]: s for s in shadow_view(gw, "fraud")["shadows"]}
        # JSON and binary outputs alike are compared tensor by tensor.
        assert views["same"]["comparisons"] == {"agree": 2}
        assert views["same"]["outputs"] == {
            "probability": {"agreed": 2, "compared": 2, "rate": 1.0}
        }
        assert views["next"]["comparisons"] == {"disagree": 2}
        assert views["next"]["outputs"]["probability"]["agreed"] == 0
        assert views["next"]["max_abs_error"]["p50"] > 0
    finally:
        v1.proc.stop()
        v2.proc.stop()
