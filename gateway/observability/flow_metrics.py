"""The flow-control metrics, declared once; part of `GatewayMetrics`.

Plain integers and lock-free histograms bumped on the event loop by the admission check
and the queues of `gateway.dataplane.flow`, rendered at scrape time, summed over a
route's variants. Labels are route names and priorities from the policies and tenants
from the keys file ("anonymous" without keys), never client input, so their number is
bounded by those files.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from gateway.observability.exposition import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from gateway.observability.histogram import Histogram

# Priorities are integers 0..9, larger served first (as the keys file's `priority`); the
# first three have names, the others are labelled by their number.
PRIORITIES: Final = ("low", "normal", "high", "3", "4", "5", "6", "7", "8", "9")
PRIORITY_NAMES: Final = {"low": 0, "normal": 1, "high": 2}
# What became of a request at a flow-controlled pool: admitted (sent, at once or after
# waiting), queued (entered the queue), shed (refused: the queue was full), timed_out
# (refused after waiting the queue timeout), left (the client went away while waiting),
# drained (refused while waiting because the gateway is shutting down).
OUTCOMES: Final = ("admitted", "queued", "shed", "timed_out", "left", "drained")
ADMITTED: Final = 0
QUEUED: Final = 1
SHED: Final = 2
TIMED_OUT: Final = 3
LEFT: Final = 4
DRAINED: Final = 5
# Seconds waited in a queue: from a few milliseconds (the next completion) to the
# longest queue timeout anyone would set.
WAIT_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _rows() -> list[list[int]]:
    return [[0] * len(OUTCOMES) for _ in PRIORITIES]


@dataclass(eq=False, slots=True)
class FlowSeries:
    """Counts of one flow-controlled pool (a route's variant) in this process."""

    route: str
    variant: str
    # tenant -> [priority][outcome] -> requests
    counts: dict[str, list[list[int]]] = field(default_factory=dict)
    # Per priority: how long the requests the queue released had waited.
    wait: list[Histogram] = field(
        default_factory=lambda: [Histogram(WAIT_BUCKETS) for _ in PRIORITIES]
    )
    waiting: list[int] = field(default_factory=lambda: [0] * len(PRIORITIES))  # now

    def count(self, tenant: str, level: int, outcome: int) -> None:
        rows = self.counts.get(tenant)
        if rows is None:
            rows = self.counts[tenant] = _rows()
        rows[level][outcome] += 1


@dataclass(eq=False, slots=True)
class FlowCounters:
    """Every flow-controlled pool's series, by (route, variant); they outlive snapshots."""

    series: dict[tuple[str, str], FlowSeries] = field(default_factory=dict)

    def pool(self, route: str, variant: str) -> FlowSeries:
        found = self.series.get((route, variant))
        if found is None:
            found = self.series[(route, variant)] = FlowSeries(route, variant)
        return found


def flow_families(c: FlowCounters) -> Iterator[Metric]:
    requests = CounterMetricFamily(
        "switchyard_flow_requests",
        "Requests at flow-controlled pools (routes with a `flow` block), by route, "
        "priority, tenant and outcome: admitted (sent, at once or after waiting), queued "
        "(entered the queue of a saturated pool), shed (refused because the queue was "
        "full: the lowest priority, then the tenant furthest over its fair share), "
        "timed_out (refused after the queue timeout), left (client gone while waiting), "
        "drained (refused while waiting: the gateway is shutting down).",
        labels=["route", "priority", "tenant", "outcome"],
    )
    wait = HistogramMetricFamily(
        "switchyard_flow_queue_wait_seconds",
        "Time requests waited in a saturated pool's queue before they were sent.",
        labels=["route", "priority"],
    )
    length = GaugeMetricFamily(
        "switchyard_flow_queue_length",
        "Requests waiting now in the queues of the route's saturated pools, by priority.",
        labels=["route", "priority"],
    )
    counts: dict[tuple[str, str, str, str], int] = {}
    waits: dict[tuple[str, int], list[Histogram]] = {}
    lengths: dict[tuple[str, int], int] = {}
    levels = len(PRIORITIES)
    for s in list(c.series.values()):
        for tenant, rows in list(s.counts.items()):
            for level, row in enumerate(rows):
                for outcome, count in enumerate(row):
                    if count:
                        key = (s.route, PRIORITIES[level], tenant, OUTCOMES[outcome])
                        counts[key] = counts.get(key, 0) + count
        seen = [any(rows[level][QUEUED] for rows in s.counts.values()) for level in range(levels)]
        for level, histogram in enumerate(s.wait):
            if any(histogram.counts):
                waits.setdefault((s.route, level), []).append(histogram)
            if seen[level]:  # a gauge per priority that ever waited here
                lengths[(s.route, level)] = lengths.get((s.route, level), 0) + s.waiting[level]
    for labels, count in sorted(counts.items()):
        requests.add_metric(list(labels), count)
    for (route, level), histograms in sorted(waits.items()):
        merged = Histogram(WAIT_BUCKETS)
        for h in histograms:
            merged.counts = [a + b for a, b in zip(merged.counts, h.counts, strict=True)]
            merged.total += h.total
        wait.add_metric([route, PRIORITIES[level]], merged.buckets(), merged.total)
    for (route, level), waiting in sorted(lengths.items()):
        length.add_metric([route, PRIORITIES[level]], waiting)
    yield from (requests, wait, length)
