"""Merging workers' /metrics: counts add up, per-process views of one fact do not."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from gateway.admin.aggregate import merge_expositions, merge_openmetrics
from gateway.observability.exposition import generate_openmetrics
from gateway.observability.metrics import GatewayMetrics


def worker(requests: int, queue: int, running: int, probe_down: int) -> str:
    return (
        "# HELP switchyard_requests_total Requests.\n"
        "# TYPE switchyard_requests_total counter\n"
        f'switchyard_requests_total{{route="r"}} {requests}.0\n'
        "# HELP switchyard_backend_queue_depth Queued.\n"
        "# TYPE switchyard_backend_queue_depth gauge\n"
        f'switchyard_backend_queue_depth{{backend="b:1"}} {queue}.0\n'
        "# HELP switchyard_backend_running Running.\n"
        "# TYPE switchyard_backend_running gauge\n"
        f'switchyard_backend_running{{backend="b:1"}} {running}.0\n'
        "# HELP switchyard_backend_probe_down Down.\n"
        "# TYPE switchyard_backend_probe_down gauge\n"
        f'switchyard_backend_probe_down{{backend="b:1"}} {probe_down}.0\n'
    )


def test_backend_reports_are_not_multiplied_by_workers() -> None:
    # Both workers scraped the same backend: 7 queued, 3 running; one saw it down.
    merged = merge_expositions([worker(10, 7, 3, 0), worker(5, 7, 3, 1)])
    assert 'switchyard_requests_total{route="r"} 15.0' in merged
    assert 'switchyard_backend_queue_depth{backend="b:1"} 7.0' in merged
    assert 'switchyard_backend_running{backend="b:1"} 3.0' in merged
    assert 'switchyard_backend_probe_down{backend="b:1"} 1.0' in merged


def test_context_lengths_are_not_multiplied_by_workers() -> None:
    # Both workers' pickers read the backend's /v1/models: one length, not twice it.
    one = (
        "# TYPE switchyard_backend_max_model_len gauge\n"
        'switchyard_backend_max_model_len{backend="b:1"} 4096.0\n'
    )
    merged = merge_expositions([one, one])
    assert 'switchyard_backend_max_model_len{backend="b:1"} 4096.0' in merged


# OpenMetrics: the same sums, and the newest exemplar per bucket ------------------------

TRACE_A = "a" * 32
TRACE_B = "b" * 32


def gateway_worker(observed: list[tuple[float, str | None, float]]) -> GatewayMetrics:
    """A worker's metrics after requests of (seconds, trace id or None, when)."""
    metrics = GatewayMetrics()
    series = metrics.series("chat", "champion", "3", "127.0.0.1:9")
    for seconds, trace, at in observed:
        series.duration.observe(seconds)
        if trace is not None:
            series.duration.exemplar(seconds, trace, at)
    return metrics


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], Sample]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s
        for family in openmetrics_families(text)
        for s in family.samples
    }


def classic_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def bucket(found: dict[tuple[str, tuple[tuple[str, str], ...]], Sample], le: str) -> Sample:
    (sample,) = [
        s
        for (name, _), s in found.items()
        if name == "switchyard_request_duration_seconds_bucket" and s.labels["le"] == le
    ]
    return sample


def test_openmetrics_merge_keeps_the_newest_exemplar_of_each_bucket() -> None:
    # Both workers traced a request in the 5 ms bucket, worker b later; only worker a
    # traced one in the 50 ms bucket; an untraced request leaves none.
    a = gateway_worker([(0.003, TRACE_A, 1_700_000_100.5), (0.04, TRACE_A, 1_700_000_050.0)])
    b = gateway_worker([(0.004, TRACE_B, 1_700_000_200.25), (0.3, None, 0.0)])
    texts = [generate_openmetrics(m.registry().collect()).decode() for m in (a, b)]
    merged = merge_openmetrics(texts)
    assert merged.endswith("# EOF\n") and merged.count("# EOF") == 1
    found = samples(merged)  # it parses, histogram checks included
    newest = bucket(found, "0.005").exemplar
    assert newest is not None and newest.labels == {"trace_id": TRACE_B}
    assert (newest.value, float(newest.timestamp or 0)) == (0.004, 1_700_000_200.25)
    only = bucket(found, "0.05").exemplar
    assert only is not None and only.labels == {"trace_id": TRACE_A}
    assert bucket(found, "+Inf").exemplar is None  # the untraced request's bucket
    assert bucket(found, "+Inf").value == 4
    # The values are the classic merge's, sample for sample.
    classic = merge_expositions([generate_latest(m.registry()).decode() for m in (a, b)])
    assert {k: s.value for k, s in found.items()} == classic_values(classic)
    # Whichever worker comes first.
    again = samples(merge_openmetrics(texts[::-1]))
    assert bucket(again, "0.005").exemplar == newest


def test_one_workers_openmetrics_comes_through_unchanged() -> None:
    """A supervisor with one worker serves what that process serves, byte for byte."""
    one = gateway_worker([(0.003, TRACE_A, 1_700_000_100.5)])
    text = generate_openmetrics(one.registry().collect())
    assert merge_openmetrics([text.decode()]) == text.decode()


def worker_om(requests: int, queue: int, probe_down: int) -> str:
    return (
        "# HELP switchyard_requests Requests.\n"
        "# TYPE switchyard_requests counter\n"
        f'switchyard_requests_total{{route="r"}} {requests}.0\n'
        "# HELP switchyard_backend_queue_depth Queued.\n"
        "# TYPE switchyard_backend_queue_depth gauge\n"
        f'switchyard_backend_queue_depth{{backend="b:1"}} {queue}.0\n'
        "# HELP switchyard_backend_probe_down Down.\n"
        "# TYPE switchyard_backend_probe_down gauge\n"
        f'switchyard_backend_probe_down{{backend="b:1"}} {probe_down}.0\n'
        "# EOF\n"
    )


def test_openmetrics_merge_sums_counts_and_takes_the_max_of_backend_reports() -> None:
    own = (
        "# HELP switchyard_worker_restarts_total Replaced.\n"
        "# TYPE switchyard_worker_restarts_total counter\n"
        "switchyard_worker_restarts_total 1.0\n"
    )
    merged = merge_openmetrics([worker_om(10, 7, 0), worker_om(5, 7, 1)], own)
    # Counters as OpenMetrics writes them: the family without _total, the sample with.
    assert "# TYPE switchyard_requests counter\n" in merged
    assert 'switchyard_requests_total{route="r"} 15.0\n' in merged
    assert 'switchyard_backend_queue_depth{backend="b:1"} 7.0\n' in merged
    assert 'switchyard_backend_probe_down{backend="b:1"} 1.0\n' in merged
    # The supervisor's own families come before the end.
    assert merged.endswith(
        "# TYPE switchyard_worker_restarts counter\nswitchyard_worker_restarts_total 1.0\n# EOF\n"
    )


def test_openmetrics_merge_keeps_each_series_together() -> None:
    """A series that one worker has in part and another in full, after a series of its
    own, stays in one piece: OpenMetrics refuses a series split by another."""

    def summary(*series: tuple[str, bool]) -> str:
        lines = ["# HELP lat Latency.", "# TYPE lat summary"]
        for route, quantiles in series:
            if quantiles:
                lines.append(f'lat{{quantile="0.5",route="{route}"}} 1.0')
            lines += [f'lat_count{{route="{route}"}} 1.0', f'lat_sum{{route="{route}"}} 1.0']
        return "\n".join([*lines, "# EOF", ""])

    merged = merge_openmetrics([summary(("a", False)), summary(("b", True), ("a", True))])
    routes = [line.split('route="')[1][0] for line in merged.splitlines() if "route" in line]
    assert routes == ["a", "a", "a", "b", "b", "b"]
    assert samples(merged)[("lat_sum", (("route", "a"),))].value == 2.0
