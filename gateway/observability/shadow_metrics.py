"""The shadow-traffic metrics, declared once; part of `GatewayMetrics` (see `metrics.py`).

One `ShadowSeries` per (route, shadow name, resolved version), created by the shadow
mirror when a copy is first considered and kept across snapshots like `RequestSeries`.
Everything is a plain integer, dict or lock-free histogram updated on the event loop
and turned into Prometheus families at scrape time. Labels come from the policy and
the resolved version, never from client input; the names of KServe outputs (which do
come from backends) appear only in the admin view, capped in number.

`ShadowMetrics.agreement` is the read API for other components (a rollout gate): how
many comparisons agreed since a given time, from a ring of 10-second buckets.
"""

from __future__ import annotations

import time
from collections import deque
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

DURATION_BUCKETS: tuple[float, ...] = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
# Shadow minus primary, in seconds: negative when the shadow was faster.
LATENCY_DELTA_BUCKETS: tuple[float, ...] = (
    -10.0,
    -2.5,
    -1.0,
    -0.5,
    -0.25,
    -0.1,
    -0.05,
    -0.025,
    -0.01,
    -0.005,
    -0.001,
    0.0,
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    10.0,
)
SIMILARITY_BUCKETS: tuple[float, ...] = (
    0.1,
    0.2,
    0.3,
    0.4,
    0.5,
    0.6,
    0.7,
    0.8,
    0.9,
    0.95,
    0.99,
    1.0,
)
LENGTH_RATIO_BUCKETS: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0)
PROBABILITY_DELTA_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5)

RECENT = 1024  # comparisons kept per series for the admin view's percentiles
MAX_OUTPUTS = 32  # distinct KServe output names tracked per series
WINDOW_SECONDS = 10.0  # agreement buckets, for "since" queries
WINDOW_BUCKETS = 360  # one hour of them

# Copy outcomes without an answer (the "failed" of `Agreement`), and the column of the
# agreement window each comparison result is counted in.
_FAILED: Final = frozenset({"connect_error", "timeout", "reset", "invalid_response"})
_COLUMNS: Final = {"agree": 1, "disagree": 2, "uncomparable": 3}

# Numbers of one comparison, in this order (None where the kind has no such number):
# similarity, length ratio, probability delta, max abs error, latency delta (s).
Sample = tuple[float | None, float | None, float | None, float | None, float | None]
SAMPLE_FIELDS = (
    "similarity",
    "length_ratio",
    "probability_delta",
    "max_abs_error",
    "latency_delta_s",
)


@dataclass(frozen=True, slots=True)
class Agreement:
    """How one shadow's comparisons went over a stretch of time.

    `rate` is agreed / (agreed + disagreed + uncomparable): an answer the gateway
    could not read (garbage) counts against the shadow. `failed` counts copies that got
    no answer to compare (timeout, connection error, invalid HTTP), for gates that
    want them too. `since` is where the counted time actually starts (the oldest kept
    bucket, if the question reached further back than the hour kept).
    """

    agreed: int = 0
    disagreed: int = 0
    uncomparable: int = 0
    failed: int = 0
    since: float = 0.0

    @property
    def compared(self) -> int:
        """Comparisons with a verdict."""
        return self.agreed + self.disagreed + self.uncomparable

    @property
    def rate(self) -> float | None:
        """Share of comparisons that agreed; None before the first comparison."""
        return self.agreed / self.compared if self.compared else None


@dataclass(eq=False, slots=True)
class ShadowSeries:
    """Counters of one shadow (route, shadow name, resolved version) in this process."""

    route: str
    shadow: str
    version: str
    in_flight: int = 0
    # Copies sent, by how they ended: ok, error_status (5xx), connect_error, timeout,
    # reset, invalid_response, too_large, cancelled.
    requests: dict[str, int] = field(default_factory=dict)
    # Sampled but not sent: body_too_large, no_endpoint, draining.
    skipped: dict[str, int] = field(default_factory=dict)
    # Sampled but not sent, under load: max_inflight (this shadow), global_inflight.
    dropped: dict[str, int] = field(default_factory=dict)
    # agree, disagree, uncomparable, primary_failed, too_large, dropped.
    comparisons: dict[str, int] = field(default_factory=dict)
    duration: Histogram = field(default_factory=lambda: Histogram(DURATION_BUCKETS))
    latency_delta: Histogram = field(default_factory=lambda: Histogram(LATENCY_DELTA_BUCKETS))
    similarity: Histogram = field(default_factory=lambda: Histogram(SIMILARITY_BUCKETS))
    length_ratio: Histogram = field(default_factory=lambda: Histogram(LENGTH_RATIO_BUCKETS))
    probability_delta: Histogram = field(
        default_factory=lambda: Histogram(PROBABILITY_DELTA_BUCKETS)
    )
    recent: deque[Sample] = field(default_factory=lambda: deque(maxlen=RECENT))
    outputs: dict[str, list[int]] = field(default_factory=dict)  # name -> [agreed, compared]
    # [bucket start (unix s), agreed, disagreed, uncomparable, failed]
    window: deque[list[float]] = field(default_factory=lambda: deque(maxlen=WINDOW_BUCKETS))

    def count(self, table: dict[str, int], key: str) -> None:
        """One more in `table[key]`."""
        table[key] = table.get(key, 0) + 1

    def record_request(self, outcome: str, seconds: float | None, now: float) -> None:
        """A copy ended with `outcome` after `seconds` (None: it never got an answer)."""
        requests = self.requests
        requests[outcome] = requests.get(outcome, 0) + 1
        if seconds is not None:
            self.duration.observe(seconds)
        if outcome in _FAILED:
            self._bucket(now)[4] += 1

    def record_comparison(
        self,
        result: str,
        sample: Sample,
        outputs: tuple[tuple[str, bool], ...],
        now: float,
    ) -> None:
        """One comparison: its result, its numbers and per-output verdicts (tensors)."""
        comparisons = self.comparisons
        comparisons[result] = comparisons.get(result, 0) + 1
        column = _COLUMNS.get(result)
        if column is None:
            return  # primary_failed, too_large, dropped: nothing was compared
        self._bucket(now)[column] += 1
        similarity, ratio, delta, _, latency = sample
        if similarity is not None:
            self.similarity.observe(similarity)
        if ratio is not None:
            self.length_ratio.observe(ratio)
        if delta is not None:
            self.probability_delta.observe(delta)
        if latency is not None:
            self.latency_delta.observe(latency)
        self.recent.append(sample)
        for name, ok in outputs:
            slot = self.outputs.get(name)
            if slot is None:
                if len(self.outputs) >= MAX_OUTPUTS:
                    continue
                slot = self.outputs[name] = [0, 0]
            slot[0] += ok
            slot[1] += 1

    def agreement(self, since: float | None = None) -> Agreement:
        """Comparisons in the buckets that end after `since` (all kept when None)."""
        totals = [0, 0, 0, 0]
        start = 0.0
        for bucket in self.window:
            if since is not None and bucket[0] + WINDOW_SECONDS <= since:
                continue
            if not start:
                start = bucket[0]
            for i in range(4):
                totals[i] += int(bucket[i + 1])
        if since is not None:
            start = max(start, since) if start else since
        agreed, disagreed, uncomparable, failed = totals
        return Agreement(agreed, disagreed, uncomparable, failed, since=start)

    def _bucket(self, now: float) -> list[float]:
        start = now - now % WINDOW_SECONDS
        window = self.window
        if not window or window[-1][0] != start:
            window.append([start, 0, 0, 0, 0])
        return window[-1]


class ShadowMetrics:
    """Every shadow series of the process, plus the comparison log's counters."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, str, str], ShadowSeries] = {}
        self.log_records: dict[str, int] = {"written": 0, "dropped": 0}

    def series(self, route: str, shadow: str, version: str) -> ShadowSeries:
        """Get or create the series of one shadow version (called by the compiler)."""
        key = (route, shadow, version)
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = ShadowSeries(route, shadow, version)
        return found

    def of_route(self, route: str) -> list[ShadowSeries]:
        """Every series of `route`, by shadow name then version."""
        return sorted(
            (s for s in list(self._series.values()) if s.route == route),
            key=lambda s: (s.shadow, s.version),
        )

    def all(self) -> list[ShadowSeries]:
        """Every series of the process."""
        return list(self._series.values())

    def agreement(
        self,
        route: str,
        shadow: str | None = None,
        *,
        version: str | None = None,
        since: float | None = None,
    ) -> Agreement:
        """How the shadow's answers agreed with the primary's since `since` (unix time).

        The read API for rollout gates: `shadow` None sums every shadow of the route,
        `version` None every version of it. Counts are this process's (one worker of
        `--workers N`); the same numbers summed over workers are in /metrics as
        `switchyard_shadow_comparisons_total`.
        """
        total = Agreement(since=since or 0.0)
        for s in self.of_route(route):
            if (shadow is not None and s.shadow != shadow) or (
                version is not None and s.version != version
            ):
                continue
            got = s.agreement(since)
            start = min(total.since, got.since) if total.compared or total.failed else got.since
            total = Agreement(
                total.agreed + got.agreed,
                total.disagreed + got.disagreed,
                total.uncomparable + got.uncomparable,
                total.failed + got.failed,
                since=start,
            )
        return total


def shadow_families(metrics: ShadowMetrics) -> Iterator[Metric]:
    """Every shadow metric family (empty ones too: they document themselves)."""
    labels = ["route", "shadow", "version"]
    requests = CounterMetricFamily(
        "switchyard_shadow_requests",
        "Shadow copies sent, by how they ended: ok, error_status (5xx), connect_error, "
        "timeout, reset, invalid_response, too_large, cancelled.",
        labels=[*labels, "outcome"],
    )
    skipped = CounterMetricFamily(
        "switchyard_shadow_skipped",
        "Sampled requests not copied to the shadow: body_too_large, no_endpoint, draining.",
        labels=[*labels, "reason"],
    )
    dropped = CounterMetricFamily(
        "switchyard_shadow_dropped",
        "Sampled requests not copied because of load: max_inflight (the shadow's bound) "
        "or global_inflight (the process-wide bound).",
        labels=[*labels, "reason"],
    )
    comparisons = CounterMetricFamily(
        "switchyard_shadow_comparisons",
        "Shadow answers compared with the primary's: agree, disagree, uncomparable (a "
        "body could not be read), primary_failed, too_large, dropped (comparisons "
        "could not keep up).",
        labels=[*labels, "result"],
    )
    in_flight = GaugeMetricFamily(
        "switchyard_shadow_in_flight", "Shadow copies in flight.", labels=labels
    )
    duration = HistogramMetricFamily(
        "switchyard_shadow_duration_seconds",
        "Shadow copy sent to its last response byte.",
        labels=labels,
    )
    latency = HistogramMetricFamily(
        "switchyard_shadow_latency_delta_seconds",
        "Shadow upstream time minus the primary's for the same request (negative: faster).",
        labels=labels,
    )
    similarity = HistogramMetricFamily(
        "switchyard_shadow_similarity",
        "Similarity of shadow and primary answers, 0..1: token-set Jaccard (LLM "
        "generations), cosine (embeddings), share of agreeing outputs or labels.",
        labels=labels,
    )
    ratio = HistogramMetricFamily(
        "switchyard_shadow_length_ratio",
        "LLM generations: shadow answer length over the primary's, in word tokens.",
        labels=labels,
    )
    delta = HistogramMetricFamily(
        "switchyard_shadow_probability_delta",
        "Classifiers: |shadow - primary| probability of the primary's label.",
        labels=labels,
    )
    for s in metrics.all():
        lv = [s.route, s.shadow, s.version]
        for outcome, n in list(s.requests.items()):
            requests.add_metric([*lv, outcome], n)
        for reason, n in list(s.skipped.items()):
            skipped.add_metric([*lv, reason], n)
        for reason, n in list(s.dropped.items()):
            dropped.add_metric([*lv, reason], n)
        for result, n in list(s.comparisons.items()):
            comparisons.add_metric([*lv, result], n)
        in_flight.add_metric(lv, s.in_flight)
        for family, hist in (
            (duration, s.duration),
            (latency, s.latency_delta),
            (similarity, s.similarity),
            (ratio, s.length_ratio),
            (delta, s.probability_delta),
        ):
            if any(hist.counts):
                family.add_metric(lv, hist.buckets(), hist.total)
    log = CounterMetricFamily(
        "switchyard_shadow_log_records",
        "Comparison log records: written, dropped (buffer full or write failed).",
        labels=["outcome"],
    )
    for outcome, n in metrics.log_records.items():
        log.add_metric([outcome], n)
    yield from (requests, skipped, dropped, comparisons, in_flight)
    yield from (duration, latency, similarity, ratio, delta, log)


def wall_clock() -> float:
    """Unix time (the agreement window's clock), one seam for tests."""
    return time.time()
