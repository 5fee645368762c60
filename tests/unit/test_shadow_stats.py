"""Shadow statistics: the agreement read API, the admin summary (fleet counts from the
statistics source, kept comparisons merged across workers), the metric families and the
comparison log, on known numbers."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from gateway.admin.endpoints import admin_routes
from gateway.admin.shadow import merge_raw, raw_view, shadow_handlers, summarise
from gateway.controlplane.policy.compile import compile_snapshot
from gateway.controlplane.policy.loader import parse_policies
from gateway.dataplane.health import HealthRegistry
from gateway.dataplane.shadow.log import ComparisonLog
from gateway.dataplane.snapshot import RuntimeSnapshot
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.shadow_metrics import ShadowMetrics
from gateway.stats.sources import LocalSource, SupervisorSource

T0 = 1_000_000.0  # a bucket boundary (a multiple of 10 s)
POLICY = """apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants: [{name: main, endpoints: ["http://127.0.0.1:9"]}]
shadow: [{name: cand, endpoints: ["http://127.0.0.1:10"], sample: 0.5}]
"""


def snapshot(metrics: GatewayMetrics) -> RuntimeSnapshot:
    policies, problems = parse_policies(POLICY, "t.yaml")
    assert not problems
    return compile_snapshot(policies, metrics=metrics, health=HealthRegistry(metrics))


def test_agreement_since_a_time() -> None:
    metrics = ShadowMetrics()
    a = metrics.series("chat", "cand", "3")
    none = (None, None, None, None, None)
    a.record_comparison("agree", (1.0, 1.0, None, None, 0.01), (), T0 + 1)
    a.record_comparison("disagree", (0.1, 2.0, None, None, 0.02), (), T0 + 2)
    a.record_comparison("agree", (0.9, 1.0, None, None, 0.01), (), T0 + 25)
    a.record_comparison("uncomparable", none, (), T0 + 26)
    a.record_comparison("primary_failed", none, (), T0 + 27)  # no verdict: not counted
    a.record_request("timeout", None, T0 + 28)
    b = metrics.series("chat", "cand", "4")  # the alias moved: a second version
    b.record_comparison("agree", (1.0, 1.0, None, None, 0.0), (), T0 + 31)

    everything = metrics.agreement("chat", "cand")
    assert (everything.agreed, everything.disagreed, everything.uncomparable) == (3, 1, 1)
    assert everything.failed == 1 and everything.rate == pytest.approx(3 / 5)
    assert everything.since == T0

    late = metrics.agreement("chat", "cand", since=T0 + 20)
    assert (late.agreed, late.uncomparable, late.failed) == (2, 1, 1)
    assert late.rate == pytest.approx(2 / 3) and late.since == T0 + 20

    only3 = metrics.agreement("chat", "cand", version="3", since=T0 + 20)
    assert (only3.agreed, only3.compared) == (1, 2)
    assert metrics.agreement("chat", "other").rate is None
    assert metrics.agreement("nope").compared == 0


def view(metrics: GatewayMetrics, values: list[float]) -> dict[str, object]:
    series = metrics.shadow.series("chat", "cand", "")
    for v in values:
        series.record_comparison(
            "agree" if v >= 0.5 else "disagree",
            (v, 1.0, None, None, v / 100),
            (("probs", v >= 0.5),),
            T0,
        )
        series.record_request("ok", 0.01, T0)
    found = raw_view("chat", snapshot(metrics), metrics.shadow)
    assert found is not None
    return orjson.loads(orjson.dumps(found))  # as it travels between processes


def test_summary_merges_workers_before_the_percentiles() -> None:
    one = view(GatewayMetrics(), [0.1, 0.2, 0.3, 0.4, 0.5])
    two = view(GatewayMetrics(), [0.6, 0.7, 0.8, 0.9, 1.0])
    merged = merge_raw([one, two])
    assert merged is not None
    summary = summarise(merged)
    assert summary["workers"] == 2
    (entry,) = summary["shadows"]
    assert entry["serving"] and entry["sent"] == 10 and entry["requests"] == {"ok": 10}
    assert entry["comparisons"] == {"agree": 6, "disagree": 4}
    assert entry["agreement_rate"] == pytest.approx(0.6)
    # Nearest rank over the 10 merged values 0.1 .. 1.0.
    sim = entry["similarity"]
    assert (sim["n"], sim["p50"], sim["p90"], sim["p99"]) == (10, 0.5, 0.9, 1.0)
    assert sim["mean"] == pytest.approx(0.55)
    assert entry["latency_delta_ms"]["p50"] == pytest.approx(5.0)
    assert entry["outputs"] == {"probs": {"agreed": 6, "compared": 10, "rate": 0.6}}
    assert summary["config"][0]["sample"] == 0.5


def test_counts_come_from_the_fleet_and_distributions_from_kept_comparisons() -> None:
    raw = merge_raw([view(GatewayMetrics(), [0.2, 0.9]), view(GatewayMetrics(), [0.8])])
    assert raw is not None
    # What the statistics source says of every replica: more than these processes saw,
    # and a version only another replica serves.
    fleet = {
        "source": {"kind": "prometheus", "url": "http://prom:9090"},
        "series": [
            {
                "shadow": "cand",
                "version": "",
                "in_flight": 2,
                "requests": {"ok": 40, "timeout": 1},
                "skipped": {},
                "dropped": {"max_inflight": 3},
                "comparisons": {"agree": 30, "disagree": 9, "uncomparable": 1},
            },
            {
                "shadow": "cand",
                "version": "9",
                "in_flight": 0,
                "requests": {"ok": 1},
                "skipped": {},
                "dropped": {},
                "comparisons": {"agree": 1},
            },
        ],
    }
    summary = summarise(raw, fleet)
    assert summary["source"]["kind"] == "prometheus" and summary["workers"] == 2
    here, elsewhere = summary["shadows"]
    assert (here["version"], here["serving"]) == ("", True)
    assert here["sent"] == 41 and here["dropped"] == {"max_inflight": 3}
    assert here["agreement"] == {"agreed": 30, "disagreed": 9, "uncomparable": 1, "failed": 1}
    assert here["agreement_rate"] == pytest.approx(0.75) and here["in_flight"] == 2
    assert here["similarity"]["n"] == 3  # the comparisons these processes keep
    assert (elsewhere["version"], elsewhere["serving"], elsewhere["sent"]) == ("9", False, 1)
    assert elsewhere["similarity"]["n"] == 0
    # `since`: counters cannot answer it; the processes' own windows do (2 of 3 agreed
    # here), and the answer says so.
    windowed = summarise({**raw, "since": T0}, fleet)["shadows"][0]
    assert windowed["agreement_since"] == T0
    assert windowed["agreement_rate"] == pytest.approx(2 / 3) and windowed["sent"] == 41


def test_shadow_metrics_render_with_policy_labels_only() -> None:
    metrics = GatewayMetrics()
    series = metrics.shadow.series("chat", "cand", "7")
    series.count(series.dropped, "max_inflight")
    series.record_request("ok", 0.02, T0)
    series.record_comparison("agree", (0.8, 1.1, None, None, -0.003), (), T0)
    text = generate_latest(metrics.registry()).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    dropped = families["switchyard_shadow_dropped"].samples[0]
    assert dropped.labels == {
        "route": "chat",
        "shadow": "cand",
        "version": "7",
        "reason": "max_inflight",
    }
    assert dropped.value == 1
    delta = {
        s.labels["le"]: s.value
        for s in families["switchyard_shadow_latency_delta_seconds"].samples
        if s.name.endswith("_bucket")
    }
    assert delta["-0.005"] == 0 and delta["-0.001"] == 1  # -3 ms lands in (-5 ms, -1 ms]


async def test_admin_view_over_http() -> None:
    metrics = GatewayMetrics()
    snap = snapshot(metrics)
    metrics.shadow.series("chat", "cand", "").record_comparison(
        "agree", (1.0, 1.0, None, None, 0.0), (), T0
    )

    source = LocalSource(metrics)
    handlers = shadow_handlers(lambda: snap, metrics.shadow, source)
    app = Starlette(routes=admin_routes(handlers, "t"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        assert (await client.get("/admin/shadow/chat")).status_code == 401
        auth = {"authorization": "Bearer t"}
        found = (await client.get("/admin/shadow/chat", headers=auth)).json()
        assert found["shadows"][0]["agreement_rate"] == 1.0
        assert found["source"]["kind"] == "local" and found["source"]["error"] is None
        raw = (await client.get("/admin/shadow/chat?raw=1", headers=auth)).json()
        assert raw["series"][0]["recent"] == [[1.0, 1.0, None, None, 0.0]]
        later = (await client.get(f"/admin/shadow/chat?since={T0 + 60}", headers=auth)).json()
        assert later["shadows"][0]["agreement_rate"] is None
        assert (await client.get("/admin/shadow/chat?since=x", headers=auth)).status_code == 400
        missing = await client.get("/admin/shadow/other", headers=auth)
        assert missing.status_code == 404 and "no shadows" in missing.json()["error"]
        overview = (await client.get("/admin/shadow", headers=auth)).json()
        assert overview["routes"]["chat"][0]["compared"] == 1
        assert overview["source"]["kind"] == "local"


async def test_a_source_that_does_not_answer_is_a_503_saying_why() -> None:
    metrics = GatewayMetrics()
    snap = snapshot(metrics)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: refused
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        handlers = shadow_handlers(lambda: snap, metrics.shadow, SupervisorSource(url, 1.0))
        app = Starlette(routes=admin_routes(handlers, None))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
            for path in ("/admin/shadow/chat", "/admin/shadow"):
                reply = await client.get(path)
                assert reply.status_code == 503, path
                body = reply.json()
                assert body["error"].startswith(f"evidence unavailable from supervisor at {url}")
                assert body["source"]["kind"] == "supervisor" and body["source"]["error"]
            # The raw numbers a supervisor merges need no source.
            assert (await client.get("/admin/shadow/chat?raw=1")).status_code == 200


async def test_comparison_log_rotates_and_bounds_its_buffer(tmp_path: Path) -> None:
    counters = {"written": 0, "dropped": 0}
    path = tmp_path / "logs" / "shadow.jsonl"
    log = ComparisonLog(path, 300, counters, asyncio.get_running_loop(), capacity=5)
    for i in range(7):
        log.offer({"i": i, "pad": "x" * 40})
    assert counters["dropped"] == 2  # the buffer holds 5
    log.flush()
    await log.aclose()
    assert counters["written"] == 5
    first = path.read_text().splitlines()
    assert [orjson.loads(line)["i"] for line in first] == [0, 1, 2, 3, 4]
    for i in range(5, 10):
        log.offer({"i": i, "pad": "x" * 40})
    await log.aclose()  # ~5 x 60 bytes more would pass 300: rotated first
    rotated = path.with_name("shadow.jsonl.1").read_text().splitlines()
    assert [orjson.loads(line)["i"] for line in rotated] == [0, 1, 2, 3, 4]
    assert [orjson.loads(line)["i"] for line in path.read_text().splitlines()] == [5, 6, 7, 8, 9]


async def test_comparison_log_counts_what_it_could_not_write(tmp_path: Path) -> None:
    counters = {"written": 0, "dropped": 0}
    blocker = tmp_path / "file"
    blocker.write_text("")
    log = ComparisonLog(blocker / "shadow.jsonl", 1000, counters, asyncio.get_running_loop())
    log.offer({"i": 1})
    await log.aclose()
    assert counters == {"written": 0, "dropped": 1}
