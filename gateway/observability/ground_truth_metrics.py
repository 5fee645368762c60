"""The ground-truth metrics, declared once; part of `GatewayMetrics` (see `metrics.py`).

Per process and counters only, so that Prometheus (`sum`) or the supervisor's merged
`/metrics` add them up over a fleet: a label accepted by any replica counts once, in
that replica's series. Fleet-wide accuracy, precision/recall/F1 and AUC are computed
from these sums (`gateway.admin.ground_truth`), never averaged from per-process gauges;
the drift worker exports the rolling `switchyard_model_accuracy` of its windows.

Label values come from the policy (route, variant, version, the route's `classes`),
never from client input as such: a class outside `classes` is counted as `other`.

Scores are a histogram per true class whose buckets are the edges 0, 0.05, ..., 1: an
AUC computed from it is binned (scores in one bucket count as ties), and exact when the
scores sit on the edges.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from gateway.observability.exposition import CounterMetricFamily, HistogramMetricFamily, Metric
from gateway.observability.histogram import Histogram

SCORE_BUCKETS: tuple[float, ...] = tuple(round(i * 0.05, 2) for i in range(21))
LABEL_DELAY_BUCKETS: tuple[float, ...] = (
    1.0,
    10.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    3 * 3600.0,
    6 * 3600.0,
    12 * 3600.0,
    86400.0,
    2 * 86400.0,
    7 * 86400.0,
    30 * 86400.0,
)

LABELS = "switchyard_ground_truth_labels_total"
SCORE_BUCKET = "switchyard_ground_truth_score_bucket"
DELAY_BUCKET = "switchyard_ground_truth_label_delay_seconds_bucket"
CAPTURED = "switchyard_ground_truth_predictions_captured_total"
CAPTURE_FAILURES = "switchyard_ground_truth_capture_failures_total"
# Every sample name the admin view reads (each carries a `route` label).
SAMPLES = (LABELS, SCORE_BUCKET, DELAY_BUCKET, CAPTURED, CAPTURE_FAILURES)

Key = tuple[str, str, str]  # (route, variant, version)


@dataclass(eq=False, slots=True)
class GroundTruthMetrics:
    """This process's ground-truth counts, updated on the event loop."""

    predictions: dict[Key, int] = field(default_factory=dict)
    failures: dict[tuple[str, str], int] = field(default_factory=dict)  # (route, reason)
    # (route, variant, version, predicted, label) -> labels accepted
    labels: dict[tuple[str, str, str, str, str], int] = field(default_factory=dict)
    scores: dict[tuple[str, str, str, str], Histogram] = field(default_factory=dict)
    delays: dict[Key, Histogram] = field(default_factory=dict)

    def captured(self, route: str, variant: str, version: str) -> None:
        """A prediction was read from a response (request path: one dict update)."""
        key = (route, variant, version)
        self.predictions[key] = self.predictions.get(key, 0) + 1

    def failed(self, route: str, reason: str) -> None:
        key = (route, reason)
        self.failures[key] = self.failures.get(key, 0) + 1

    def labeled(
        self,
        key: Key,
        predicted: str,
        label: str,
        score: float | None,
        delay: float,
    ) -> None:
        """One accepted label; `predicted` and `label` already bounded to the classes."""
        full = (*key, predicted, label)
        self.labels[full] = self.labels.get(full, 0) + 1
        if score is not None:
            at = (*key, label)
            hist = self.scores.get(at)
            if hist is None:
                hist = self.scores[at] = Histogram(SCORE_BUCKETS)
            hist.observe(score)
        hist = self.delays.get(key)
        if hist is None:
            hist = self.delays[key] = Histogram(LABEL_DELAY_BUCKETS)
        hist.observe(delay)


def ground_truth_families(metrics: GroundTruthMetrics) -> Iterator[Metric]:
    """Every ground-truth metric family (empty ones too: they document themselves)."""
    key = ["route", "variant", "version"]
    captured = CounterMetricFamily(
        "switchyard_ground_truth_predictions_captured",
        "Predictions read from responses of routes with a ground_truth block (their "
        "x-switchyard-feedback-id carries the prediction).",
        labels=key,
    )
    for k, n in list(metrics.predictions.items()):
        captured.add_metric(list(k), n)
    failures = CounterMetricFamily(
        "switchyard_ground_truth_capture_failures",
        "Successful responses of ground-truth routes whose prediction was not captured, by "
        "reason: streamed, too_large, not_json, missing, not_a_class, too_long, "
        "bad_score, unsigned.",
        labels=["route", "reason"],
    )
    for (route, reason), n in list(metrics.failures.items()):
        failures.add_metric([route, reason], n)
    labels = CounterMetricFamily(
        "switchyard_ground_truth_labels",
        "True labels accepted (POST /v1/feedback with label), by what the version "
        "predicted and the true class (classes outside the route's classes: other).",
        labels=[*key, "predicted", "label"],
    )
    for k5, n in list(metrics.labels.items()):
        labels.add_metric(list(k5), n)
    scores = HistogramMetricFamily(
        "switchyard_ground_truth_score",
        "Positive-class score of labeled predictions, by true class (AUC from these "
        "buckets is binned).",
        labels=[*key, "label"],
    )
    for k4, hist in list(metrics.scores.items()):
        scores.add_metric(list(k4), hist.buckets(), hist.total)
    delays = HistogramMetricFamily(
        "switchyard_ground_truth_label_delay_seconds",
        "Time from a prediction to its accepted label.",
        labels=key,
    )
    for k, hist in list(metrics.delays.items()):
        delays.add_metric(list(k), hist.buckets(), hist.total)
    yield from (captured, failures, labels, scores, delays)
