"""Fleet statistics (gateway.stats): one computation over Prometheus samples, and its sources.

The computation runs on fixed exposition text and fixed PromQL answers; the sources
read a real gateway's metrics in-process, a supervisor's `/metrics` and a stand-in
Prometheus HTTP API over loopback (fixed answers, errors, a slow answer, a closed port).
"""

from __future__ import annotations

import asyncio
import math
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from gateway.admin.aggregate import merge_expositions
from gateway.admin.server import AdminServer
from gateway.observability.metrics import DURATION_BUCKETS, GatewayMetrics
from gateway.settings import Settings
from gateway.stats import promql
from gateway.stats.counts import (
    Counts,
    RouteStats,
    Sample,
    quantile,
    route_stats,
    window,
)
from gateway.stats.sources import (
    LocalSource,
    PrometheusSource,
    StatsUnavailable,
    SupervisorSource,
    build_source,
    options_problem,
)

N = len(DURATION_BUCKETS) + 1

# One worker's exposition, as prometheus-client writes it: route "chat" and another.
CHAMP = 'route="chat",variant="champion",version="1",backend="h:1"'
CHALL = 'route="chat",variant="challenger",version="2",backend="h:2"'
NEXT = 'route="chat",shadow="next",version="2"'
FEEDBACK = 'route="chat",variant="challenger",version="2"'
EXPOSITION = f"""\
# HELP switchyard_requests_total Requests proxied.
# TYPE switchyard_requests_total counter
switchyard_requests_total{{{CHAMP},status_class="2xx"}} 90.0
switchyard_requests_total{{{CHAMP},status_class="4xx"}} 5.0
switchyard_requests_total{{{CHALL},status_class="2xx"}} 40.0
switchyard_requests_total{{{CHALL},status_class="5xx"}} 10.0
switchyard_requests_total{{{CHALL},status_class="none"}} 3.0
switchyard_requests_total{{route="other",variant="main",version="",status_class="2xx"}} 7.0
# HELP switchyard_upstream_failed_attempts_total Failed attempts.
# TYPE switchyard_upstream_failed_attempts_total counter
switchyard_upstream_failed_attempts_total{{{CHALL}}} 12.0
# HELP switchyard_request_duration_seconds Duration.
# TYPE switchyard_request_duration_seconds histogram
switchyard_request_duration_seconds_bucket{{{CHALL},le="0.005"}} 0.0
switchyard_request_duration_seconds_bucket{{{CHALL},le="0.01"}} 45.0
switchyard_request_duration_seconds_bucket{{{CHALL},le="0.025"}} 50.0
switchyard_request_duration_seconds_bucket{{{CHALL},le="+Inf"}} 50.0
switchyard_request_duration_seconds_count{{{CHALL}}} 50.0
switchyard_request_duration_seconds_sum{{{CHALL}}} 0.4
# HELP switchyard_experiment_outcomes_total Outcomes.
# TYPE switchyard_experiment_outcomes_total counter
switchyard_experiment_outcomes_total{{{FEEDBACK}}} 20.0
# HELP switchyard_experiment_conversions_total Conversions.
# TYPE switchyard_experiment_conversions_total counter
switchyard_experiment_conversions_total{{{FEEDBACK}}} 9.0
# HELP switchyard_experiment_rewards_total Rewards.
# TYPE switchyard_experiment_rewards_total counter
switchyard_experiment_rewards_total{{{FEEDBACK}}} 3.0
# HELP switchyard_experiment_reward_sum Reward sum.
# TYPE switchyard_experiment_reward_sum gauge
switchyard_experiment_reward_sum{{{FEEDBACK}}} 6.0
# HELP switchyard_experiment_reward_squares Squares.
# TYPE switchyard_experiment_reward_squares gauge
switchyard_experiment_reward_squares{{{FEEDBACK}}} 14.0
# HELP switchyard_shadow_comparisons_total Comparisons.
# TYPE switchyard_shadow_comparisons_total counter
switchyard_shadow_comparisons_total{{{NEXT},result="agree"}} 18.0
switchyard_shadow_comparisons_total{{{NEXT},result="disagree"}} 1.0
switchyard_shadow_comparisons_total{{{NEXT},result="uncomparable"}} 1.0
switchyard_shadow_comparisons_total{{{NEXT},result="primary_failed"}} 4.0
# HELP switchyard_shadow_requests_total Copies.
# TYPE switchyard_shadow_requests_total counter
switchyard_shadow_requests_total{{{NEXT},outcome="ok"}} 20.0
switchyard_shadow_requests_total{{{NEXT},outcome="timeout"}} 2.0
"""


def samples_of(text: str) -> list[Sample]:
    return [
        Sample(s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def at(bound: float) -> int:
    return DURATION_BUCKETS.index(bound)


def test_counts_p99_feedback_and_agreement_from_exposition_text() -> None:
    stats = route_stats("chat", samples_of(EXPOSITION))
    challenger = stats.counts("challenger", "2")
    # Answered: 2xx and 5xx (not "none": the client left first); ok attempts below 500.
    assert (challenger.responses, challenger.ok_attempts, challenger.failed_attempts) == (
        50,
        40,
        12,
    )
    assert challenger.error_rate == pytest.approx(12 / 52)
    assert challenger.buckets[at(0.01)] == 45 and challenger.buckets[at(0.025)] == 5
    assert sum(challenger.buckets) == 50
    # Rank 49.5 falls 4.5 of 5 into (0.01, 0.025]: histogram_quantile's interpolation.
    assert quantile(0.99, challenger.buckets) == pytest.approx(0.01 + 0.015 * 4.5 / 5)
    champion = stats.counts("champion", "1")
    assert (champion.responses, champion.ok_attempts, champion.failed_attempts) == (95, 95, 0)
    assert quantile(0.99, champion.buckets) is None  # no histogram exported for it
    assert stats.served("challenger", "1") == 0  # another version: a fresh comparison
    assert stats.served("main", "") == 0  # another route's samples are skipped

    got = stats.outcomes("challenger", "2")
    assert (got.outcomes, got.conversions, got.rewards) == (20, 9, 3)
    assert got.reward_mean == pytest.approx(2.0)
    assert got.reward_variance == pytest.approx((14 - 6 * 6 / 3) / 2)
    assert stats.outcomes("champion", "1").outcomes == 0

    ((key, shadow),) = stats.shadow_versions().items()
    assert key == ("next", "2")
    # Uncomparable counts against agreement; primary_failed was never compared.
    assert (shadow.agreed, shadow.compared, shadow.failed) == (18, 20, 2)


def test_the_local_exposition_round_trips_through_the_computation() -> None:
    metrics = GatewayMetrics()
    series = metrics.series("chat", "challenger", "2", "h:2")
    series.by_class[2] = 30
    series.by_class[5] = 2
    series.failed_attempts = 3
    for value in (0.003, 0.02, 0.02, 0.7):
        series.duration.observe(value)
    text = generate_latest(metrics.registry()).decode()
    counts = route_stats("chat", samples_of(text)).counts("challenger", "2")
    assert counts == Counts(32, 30, 3, tuple(series.duration.counts))


# A PromQL answer as Prometheus gives it: two replicas (instances), one route's samples
# summed by the query's `by` labels.
def vector(*items: tuple[dict[str, str], float]) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [
                {"metric": labels, "value": [1_700_000_000.0, repr(value)]}
                for labels, value in items
            ],
        },
    }


def req(instance: str, variant: str, status: str, n: float) -> tuple[dict[str, str], float]:
    labels = {
        "__name__": "switchyard_requests_total",
        "route": "chat",
        "instance": instance,
        "variant": variant,
        "version": "2" if variant == "challenger" else "1",
        "backend": "h:1",
        "status_class": status,
    }
    return labels, n


def feedback(instance: str, name: str, n: float) -> tuple[dict[str, str], float]:
    labels = {"__name__": name, "route": "chat", "instance": instance}
    return {**labels, "variant": "challenger", "version": "2"}, n


def agreement(instance: str, result: str, n: float) -> tuple[dict[str, str], float]:
    labels = {"__name__": "switchyard_shadow_comparisons_total", "route": "chat"}
    return {**labels, "instance": instance, "shadow": "next", "version": "2", "result": result}, n


def fleet(
    a: float, b: float, agree_b: float = 5.0, *more: tuple[dict[str, str], float]
) -> RouteStats:
    payload = vector(
        req("a:1", "challenger", "2xx", a),
        req("b:1", "challenger", "2xx", b),
        req("b:1", "challenger", "5xx", 2),
        feedback("a:1", "switchyard_experiment_outcomes_total", 10),
        feedback("b:1", "switchyard_experiment_outcomes_total", 5),
        feedback("a:1", "switchyard_experiment_conversions_total", 4),
        feedback("b:1", "switchyard_experiment_conversions_total", 1),
        agreement("a:1", "agree", 7),
        agreement("b:1", "agree", agree_b),
        agreement("b:1", "disagree", 1),
        *more,
    )
    return route_stats("chat", promql.samples(payload), ["a:1", "b:1"])


def test_a_fleet_answer_sums_the_replicas() -> None:
    stats = fleet(30, 20)
    assert stats.served("challenger", "2") == 52
    assert stats.counts("challenger", "2").ok_attempts == 50
    got = stats.outcomes("challenger", "2")
    assert (got.outcomes, got.conversions) == (15, 5)
    ((_, shadow),) = stats.shadow_versions().items()
    assert (shadow.agreed, shadow.compared) == (12, 13)
    assert stats.processes == ("a:1", "b:1")


def test_a_window_subtracts_the_step_start_per_process() -> None:
    base = fleet(30, 20)
    now = fleet(45, 26, agree_b=9)
    step = window(now, base)
    assert step.unknown is None
    assert step.counts("challenger", "2").responses == 21
    assert step.agreement("2") == (4, 4) and step.agreement(None) == (4, 4)
    assert step.agreement("3") == (0, 0)
    # A series that appeared since the step began counts from zero.
    later = fleet(45, 26, 9, req("a:1", "champion", "2xx", 4))
    assert window(later, base).counts("champion", "1").responses == 4


def test_a_counter_that_went_down_makes_the_window_unknown() -> None:
    base = fleet(30, 20)
    # Replica b restarted: its counter starts again from zero, the sum still grows.
    restarted = fleet(60, 3)
    step = window(restarted, base)
    assert step.unknown is not None
    assert "went down" in step.unknown and "b:1" in step.unknown
    assert "restarted" in step.unknown
    assert step.counts("challenger", "2") == Counts()  # nothing to judge
    # A shadow counter reset too.
    assert "shadow next" in str(window(fleet(30, 20, agree_b=2), base).unknown)


def test_a_process_that_joined_or_left_makes_the_window_unknown() -> None:
    base = fleet(30, 20)
    more = replace(fleet(30, 20), processes=("a:1", "b:1", "c:1"))
    assert "c:1 joined" in str(window(more, base).unknown)
    fewer = route_stats(
        "chat", promql.samples(vector(req("a:1", "challenger", "2xx", 31))), ["a:1"]
    )
    assert "b:1 left" in str(window(fewer, base).unknown)
    # Same processes, but one's series vanished (not scraped): unknown as well.
    gone = replace(fewer, processes=base.processes)
    assert "disappeared" in str(window(gone, base).unknown)


def test_promql_escapes_label_values_and_checks_selectors() -> None:
    assert promql.quote('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'
    query = promql.route_query('we"ird\\route', 'job="switchyard"')
    assert 'route="we\\"ird\\\\route"' in query
    assert query.startswith("sum by (__name__, route, instance, variant, version, backend")
    assert 'job="switchyard"}' in query and "switchyard_requests_total|" in query
    assert promql.processes_query("") == "max by (instance) (timestamp(switchyard_build_info{}))"
    assert promql.check_selector('{job="s", namespace=~"prod|stage",}') == (
        'job="s", namespace=~"prod|stage"'
    )
    assert promql.check_selector("") == ""
    for bad in ("job=switchyard", 'job="a" pod="b"', 'job="a"}', "up"):
        with pytest.raises(promql.PromQLError):
            promql.check_selector(bad)


def test_promql_answers_that_are_errors_or_not_vectors() -> None:
    with pytest.raises(promql.PromQLError, match="bad_data: parse error"):
        promql.vector({"status": "error", "errorType": "bad_data", "error": "parse error"})
    with pytest.raises(promql.PromQLError, match="expected a vector result, got 'matrix'"):
        promql.vector({"status": "success", "data": {"resultType": "matrix", "result": []}})
    with pytest.raises(promql.PromQLError, match="malformed result entry"):
        promql.vector({"status": "success", "data": {"resultType": "vector", "result": [{}]}})
    nan = vector(req("a:1", "challenger", "2xx", math.nan))
    assert route_stats("chat", promql.samples(nan)).served("challenger", "2") == 0


# -- Sources ------------------------------------------------------------------------


def test_options_are_checked_with_reasons_in_the_flags_words() -> None:
    ok = Settings()
    assert options_problem(ok) is None
    prom = replace(ok, stats_source="prometheus", prometheus_url="http://prom:9090")
    assert options_problem(prom) is None
    cases = {
        replace(ok, stats_source="graphite"): "--stats-source 'graphite': expected one of",
        replace(ok, stats_source="prometheus"): "needs --prometheus-url",
        replace(ok, prometheus_url="http://p:9090"): "read only with --stats-source prometheus",
        replace(prom, prometheus_url="prom:9090"): "expected http(s)://HOST[:PORT]",
        replace(prom, prometheus_url="ftp://p"): "expected http(s)://HOST[:PORT]",
        replace(prom, prometheus_selector="job=x"): "--prometheus-selector: selector",
        replace(prom, stats_timeout=0.0): "--stats-timeout 0",
    }
    for settings, message in cases.items():
        problem = options_problem(settings)
        assert problem is not None and message in problem, (settings, problem)
    metrics = GatewayMetrics()
    assert build_source(ok, metrics).kind == "local"
    worker = replace(ok, supervisor_admin="http://127.0.0.1:9/")
    assert (build_source(worker, metrics).kind, build_source(worker, metrics).url) == (
        "supervisor",
        "http://127.0.0.1:9",
    )
    assert build_source(prom, metrics).url == "http://prom:9090"


async def test_the_local_source_reads_this_process() -> None:
    metrics = GatewayMetrics()
    series = metrics.series("chat", "champion", "1", "h:1")
    series.by_class[2] = 12
    metrics.shadow.series("chat", "next", "1").record_comparison(
        "agree", (1.0, 1.0, None, None, 0.0), (), 1.0
    )
    source = LocalSource(metrics)
    evidence = await source.read("chat")
    assert evidence.stats.served("champion", "1") == 12
    assert evidence.stats.shadow_versions()[("next", "1")].agreed == 1
    assert evidence.origin.kind == "local" and evidence.origin.as_of == evidence.origin.read_at
    assert source.up is True and source.errors == 0


class Stand:
    """A loopback HTTP server answering what the test says (a stand-in Prometheus or
    supervisor: the code under test is the client)."""

    def __init__(self) -> None:
        self.answer: Callable[[Request], Response] = lambda _: PlainTextResponse("", 500)
        self.delay = 0.0
        self.queries: list[str] = []

        async def handle(request: Request) -> Response:
            self.queries.append(request.query_params.get("query", ""))
            if self.delay:
                await asyncio.sleep(self.delay)
            return self.answer(request)

        app = Starlette(routes=[Route("/{path:path}", handle)])
        self.server = AdminServer(app, "127.0.0.1", 0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"


@pytest.fixture
async def stand() -> AsyncIterator[Stand]:
    found = Stand()
    assert await found.server.start()
    yield found
    found.delay = 0.0
    await found.server.stop()


def prometheus_answers(scraped: dict[str, float]) -> Callable[[Request], Response]:
    def answer(request: Request) -> Response:
        query = request.query_params["query"]
        if "timestamp(" in query:
            return JSONResponse(vector(*(({"instance": i}, ts) for i, ts in scraped.items())))
        if "switchyard_worker_restarts_total" in query:
            return JSONResponse(vector(({"instance": "b:1"}, 2.0)))
        return JSONResponse(
            vector(req("a:1", "challenger", "2xx", 30), req("b:1", "challenger", "2xx", 20))
        )

    return answer


async def test_the_prometheus_source_queries_reports_freshness_and_fails_clearly(
    stand: Stand,
) -> None:
    now = 1_700_000_100.0
    # A timeout that only the delayed answer below exceeds: with 0.5 s, a read on a
    # machine loaded by two CI runs once timed out before its (fast) answer came.
    source = PrometheusSource(stand.url + "/", 'job="sy"', 2.0, clock=lambda: now)
    stand.answer = prometheus_answers({"a:1": now - 1.5, "b:1": now - 0.25})
    evidence = await source.read("chat")
    assert evidence.stats.served("challenger", "2") == 50
    # A supervisor among the targets: its worker restarts are part of who counted.
    assert evidence.stats.processes == ("a:1", "b:1#2")
    origin = evidence.origin.to_json()
    assert origin["kind"] == "prometheus" and origin["url"] == stand.url
    assert origin["as_of"] == now - 1.5 and origin["read_at"] == now
    assert (origin["oldest_scrape_age_s"], origin["newest_scrape_age_s"]) == (1.5, 0.25)
    assert origin["processes"] == 2 and origin["error"] is None
    assert all('job="sy"' in q for q in stand.queries[-3:])
    assert source.up is True

    # An error answer: the reason names the source and Prometheus' words.
    stand.answer = lambda _: JSONResponse(
        {"status": "error", "errorType": "bad_data", "error": "parse error at char 3"}, 400
    )
    with pytest.raises(StatsUnavailable) as failed:
        await source.read("chat")
    assert failed.value.reason == (
        f"evidence unavailable from prometheus at {stand.url}: "
        "HTTP 400: bad_data: parse error at char 3"
    )
    assert failed.value.origin.error == "HTTP 400: bad_data: parse error at char 3"
    assert (source.up, source.errors) == (False, 1)

    # Not Prometheus at all; no switchyard process scraped; too slow.
    stand.answer = lambda _: PlainTextResponse("<html>login</html>", 200)
    with pytest.raises(StatsUnavailable, match="not a Prometheus API answer"):
        await source.read("chat")
    stand.answer = prometheus_answers({})
    with pytest.raises(StatsUnavailable, match=r"no fresh switchyard_build_info matching \{job"):
        await source.read("chat")
    stand.answer = prometheus_answers({"a:1": now})
    stand.delay = 4.0
    with pytest.raises(StatsUnavailable, match=r"no answer within 2s"):
        await source.read("chat")
    assert source.errors == 4

    # It answers again: so does the source, with no action.
    stand.delay = 0.0
    assert (await source.read("chat")).stats.served("challenger", "2") == 50
    assert source.up is True
    assert source.gauge().errors == 4


async def test_an_unreachable_source_is_unavailable_not_a_hang() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        source = SupervisorSource(f"http://127.0.0.1:{port}", 1.0)
        with pytest.raises(StatsUnavailable) as failed:
            await source.read("chat")
    assert failed.value.reason.startswith(
        f"evidence unavailable from supervisor at http://127.0.0.1:{port}: "
    )
    assert source.describe()["up"] is False and source.describe()["last_error"]


async def test_the_supervisor_source_reads_the_merged_workers(stand: Stand) -> None:
    one = EXPOSITION
    two = EXPOSITION.replace("} 40.0", "} 60.0")
    restarts = 1

    def metrics(_: Request) -> Response:
        merged = merge_expositions([one, two])
        merged += f"switchyard_workers 2.0\nswitchyard_worker_restarts_total {restarts}.0\n"
        return PlainTextResponse(merged)

    stand.answer = metrics
    # Generous: the stand's first merge imports prometheus-client's parser mid-answer.
    source = SupervisorSource(stand.url, 5.0)
    first = await source.read("chat")
    assert first.stats.served("challenger", "2") == 2 * 10 + 40 + 60
    assert first.stats.processes == ("worker_restarts=1", "workers=2")
    assert first.origin.kind == "supervisor" and first.origin.url == stand.url
    # A worker replaced between two reads: the window cannot be known.
    restarts = 2
    second = await source.read("chat")
    assert window(second.stats, first.stats).unknown is not None


# A stand-in Prometheus with no third-party imports (the probe must start without httpx):
# every query answers an empty vector, so the read ends in "no fresh build_info".
_FIRST_READ = """
import asyncio, sys
from gateway.stats.sources import PrometheusSource

BODY = b'{"status":"success","data":{"resultType":"vector","result":[]}}'

async def answer(reader, writer):
    while True:
        head = await reader.readuntil(b"\\r\\n\\r\\n")
        if not head:
            break
        writer.write(b"HTTP/1.1 200 OK\\r\\ncontent-type: application/json\\r\\n"
                     b"content-length: %d\\r\\n\\r\\n%s" % (len(BODY), BODY))
        await writer.drain()

class Probe(PrometheusSource):
    async def _read(self, route, now):
        print("httpx loaded before the timed read:", "httpx" in sys.modules)
        return await super()._read(route, now)

async def main():
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    assert "httpx" not in sys.modules, "httpx was imported before the first read"
    source = Probe(f"http://127.0.0.1:{port}", 'job="sy"', 10.0)
    try:
        await source.read("chat")
    except Exception:
        pass  # the stand has no scraped processes: the read fails on content, answered
    print("answered:", source.last_error)

asyncio.run(main())
"""


def test_the_first_read_does_not_spend_its_timeout_importing_httpx() -> None:
    # httpx is imported by the first read of a source that needs it (RSS: most gateways
    # never do). The import (hundreds of milliseconds on a loaded machine) must not run
    # inside the read's timed wait, where it failed reads with a 0.5 s timeout.
    done = subprocess.run(
        [sys.executable, "-c", _FIRST_READ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "httpx loaded before the timed read: True", done.stdout
    assert lines[1].startswith("answered: Prometheus has no fresh"), done.stdout


# The same for the supervisor's /metrics, parsed with prometheus-client: a stand-in
# supervisor with no third-party imports answers one worker's counts.
_FIRST_SUPERVISOR_READ = """
import asyncio, sys
from gateway.stats.sources import SupervisorSource

BODY = (b"# HELP switchyard_workers Workers.\\n# TYPE switchyard_workers gauge\\n"
        b"switchyard_workers 1.0\\n")

async def answer(reader, writer):
    await reader.readuntil(b"\\r\\n\\r\\n")
    writer.write(b"HTTP/1.1 200 OK\\r\\ncontent-type: text/plain\\r\\n"
                 b"content-length: %d\\r\\nconnection: close\\r\\n\\r\\n%s" % (len(BODY), BODY))
    await writer.drain()
    writer.close()

class Probe(SupervisorSource):
    async def _read(self, route, now):
        print("parser loaded before the timed read:", "prometheus_client.parser" in sys.modules)
        return await super()._read(route, now)

async def main():
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    assert "prometheus_client" not in sys.modules, "prometheus_client imported before a read"
    evidence = await Probe(f"http://127.0.0.1:{port}", 10.0).read("chat")
    print("processes:", ",".join(evidence.stats.processes))

asyncio.run(main())
"""


def test_the_first_supervisor_read_imports_its_parser_outside_the_timed_wait() -> None:
    # prometheus-client (its package brings an HTTP server and push gateway: RSS) is
    # loaded only by a worker that reads its supervisor's /metrics, and like httpx
    # outside the read's timeout.
    done = subprocess.run(
        [sys.executable, "-c", _FIRST_SUPERVISOR_READ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "parser loaded before the timed read: True", done.stdout
    assert lines[1] == "processes: worker_restarts=0,workers=1", done.stdout
