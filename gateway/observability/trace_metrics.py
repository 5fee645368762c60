"""The tracing and access-log metrics, declared once; part of `GatewayMetrics`.

Plain integers bumped on the event loop by the tracer, the span exporter and the
access log, rendered at scrape time. Span losses are counted by reason, so an SRE
can tell a collector that is down (`export_failed`, `timeout`) from one that is too
slow for the sampling rate (`queue_full`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

from gateway.observability.exposition import CounterMetricFamily, GaugeMetricFamily, Metric

# Why spans were lost: the queue was full (exporter behind), the collector refused
# or could not be reached, it did not answer within the timeout, or the gateway
# stopped with spans still queued past its flush deadline.
DROP_REASONS: Final = ("queue_full", "export_failed", "timeout", "shutdown")


@dataclass(eq=False, slots=True)
class TraceCounters:
    """Counters of this process's tracer, span exporter and access log."""

    sampled: int = 0  # requests traced (sampled in)
    exported: int = 0  # spans the collector accepted
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    exports: dict[str, int] = field(default_factory=lambda: {"ok": 0, "retried": 0, "failed": 0})
    queued: Callable[[], int] | None = None  # spans waiting now (set by the exporter)
    access_log: dict[str, int] = field(default_factory=lambda: {"written": 0, "dropped": 0})


def trace_families(c: TraceCounters) -> Iterator[Metric]:
    sampled = CounterMetricFamily(
        "switchyard_trace_sampled_requests",
        "Requests traced: sampled in by the trace sampler (OTEL_TRACES_SAMPLER).",
    )
    sampled.add_metric([], c.sampled)
    exported = CounterMetricFamily(
        "switchyard_trace_spans_exported",
        "Spans the OTLP collector accepted.",
    )
    exported.add_metric([], c.exported)
    dropped = CounterMetricFamily(
        "switchyard_trace_spans_dropped",
        "Spans lost, by reason: queue_full (the exporter is behind; the queue is "
        "bounded), export_failed (collector unreachable or refused), timeout, shutdown.",
        labels=["reason"],
    )
    for reason, count in c.dropped.items():
        dropped.add_metric([reason], count)
    exports = CounterMetricFamily(
        "switchyard_trace_export_requests",
        "OTLP/HTTP export requests by outcome: ok; failed (the collector refused, was "
        "unreachable or slow); retried (... of which the batch was kept for another try: "
        "429, 502, 503, 504, unreachable, timeout; at most 5 tries, with backoff).",
        labels=["outcome"],
    )
    for outcome, count in c.exports.items():
        exports.add_metric([outcome], count)
    queued = GaugeMetricFamily(
        "switchyard_trace_queue_spans", "Finished spans waiting for the exporter."
    )
    queued.add_metric([], c.queued() if c.queued is not None else 0)
    access = CounterMetricFamily(
        "switchyard_access_log_records",
        "Access log lines by outcome: written, dropped (buffer full or write failed).",
        labels=["outcome"],
    )
    for outcome, count in c.access_log.items():
        access.add_metric([outcome], count)
    yield from (sampled, exported, dropped, exports, queued, access)
