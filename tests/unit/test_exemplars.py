"""Trace ids as exemplars on the latency histograms: OpenMetrics shows them, the
classic text format (what the supervisor merges) does not change."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from gateway.observability.exposition import generate_openmetrics
from gateway.observability.histogram import Histogram
from gateway.observability.metrics import GatewayMetrics

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_the_latest_exemplar_per_bucket_is_kept() -> None:
    h = Histogram((0.1, 1.0))
    for value in (0.05, 0.5, 0.7, 5.0):
        h.observe(value)
    h.exemplar(0.5, "a" * 32, 10.0)
    h.exemplar(0.7, "b" * 32, 11.0)  # same bucket: replaces the first
    rendered = h.buckets()
    assert [b[:2] for b in rendered] == [("0.1", 1), ("1.0", 3), ("+Inf", 4)]
    assert len(rendered[0]) == 2 and len(rendered[2]) == 2
    exemplar = rendered[1][2]  # type: ignore[misc]
    assert (exemplar.labels, exemplar.value, exemplar.timestamp) == (
        {"trace_id": "b" * 32},
        0.7,
        11.0,
    )


def test_openmetrics_scrapes_carry_exemplars_that_parse() -> None:
    metrics = GatewayMetrics()
    series = metrics.series("chat", "champion", "3", "127.0.0.1:9")
    for h in (series.duration, series.upstream, series.overhead):
        h.observe(0.003)
    series.duration.exemplar(0.003, TRACE, 1_700_000_000.0)
    registry = metrics.registry()
    text = generate_openmetrics(registry.collect()).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = families["switchyard_request_duration_seconds"].samples
    with_exemplar = [s for s in samples if s.exemplar is not None]
    assert len(with_exemplar) == 1
    (sample,) = with_exemplar
    assert sample.labels["le"] == "0.005"
    assert sample.exemplar.labels == {"trace_id": TRACE}
    assert sample.exemplar.value == 0.003
    assert TRACE not in generate_latest(registry).decode()
