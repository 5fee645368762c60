"""The drift worker's ground-truth metrics: its rolling labeled windows and triggers.

Read from the worker's status like the other drift families (`drift_metrics.py`, whose
`worker_families` yields these too): one fleet-wide value per route and model version,
since the one drift worker of a fleet gets every replica's labels. The worker serves
them on its own `/metrics`; gateways on its machine repeat them from its status file
(merged by maximum, `WORKER_SOURCED`).

`switchyard_model_accuracy` is the seed's `model_accuracy_current` per route and
version: alert on `switchyard_model_accuracy < 0.85`, or let the worker's accuracy
trigger act on it (`drift.triggers.accuracy`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from gateway.observability.exposition import CounterMetricFamily, GaugeMetricFamily, Metric

ACCURACY = "switchyard_model_accuracy"
# The window's metrics (each family named literally: the metrics reference scans for them).
_QUALITY = (
    "switchyard_model_accuracy",
    "switchyard_model_precision",
    "switchyard_model_recall",
    "switchyard_model_f1",
    "switchyard_model_auc",
)
WORKER_SOURCED_LABELS = frozenset(
    {
        *_QUALITY,
        "switchyard_model_labeled_window_size",
        "switchyard_model_labels_received_total",
        "switchyard_model_concept_drift_detected",
        "switchyard_retrain_triggers_total",
    }
)


def _labeled(status: Mapping[str, Any]) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    routes = status.get("routes")
    if not isinstance(routes, Mapping):
        return
    for route, entry in sorted(routes.items()):
        labels = entry.get("labels") if isinstance(entry, Mapping) else None
        if isinstance(labels, Mapping):
            for version, data in sorted(labels.items()):
                if isinstance(data, Mapping):
                    yield route, version, data


def labeled_window_families(status: Mapping[str, Any] | None) -> Iterator[Metric]:
    """The labeled windows' metrics and the triggers' fires, from the worker's status."""
    rv = ["route", "version"]
    # By the key of the status's metrics that holds each.
    quality = {
        "accuracy": GaugeMetricFamily(
            "switchyard_model_accuracy",
            "Accuracy over the rolling labeled window (correct / labeled).",
            labels=rv,
        ),
        "precision": GaugeMetricFamily(
            "switchyard_model_precision",
            "Precision of the positive class (drift.labels.positive) over the labeled window.",
            labels=rv,
        ),
        "recall": GaugeMetricFamily(
            "switchyard_model_recall",
            "Recall of the positive class over the labeled window.",
            labels=rv,
        ),
        "f1": GaugeMetricFamily(
            "switchyard_model_f1", "F1 of the positive class over the labeled window.", labels=rv
        ),
        "auc": GaugeMetricFamily(
            "switchyard_model_auc",
            "ROC AUC over the labeled window's predictions that carried a score (exact, ties "
            "counting one half).",
            labels=rv,
        ),
    }
    size = GaugeMetricFamily(
        "switchyard_model_labeled_window_size",
        "Labeled predictions in the rolling window now (what the model metrics are over).",
        labels=rv,
    )
    received = CounterMetricFamily(
        "switchyard_model_labels_received",
        "Labels the drift worker received for the route and version.",
        labels=rv,
    )
    concept = GaugeMetricFamily(
        "switchyard_model_concept_drift_detected",
        "1 when the labeled window's accuracy is drift.labels.max_accuracy_drop or more "
        "under the version's reference (its first full labeled window).",
        labels=rv,
    )
    fires = CounterMetricFamily(
        "switchyard_retrain_triggers",
        "Retrain trigger episodes whose actions ran, by reason: drift, concept_drift, "
        "schedule, labeled_samples, accuracy.",
        labels=[*rv, "reason"],
    )
    if status is not None:
        for route, version, data in _labeled(status):
            size.add_metric([route, version], float(data.get("window", 0) or 0))
            received.add_metric([route, version], float(data.get("received", 0) or 0))
            metrics = data.get("metrics")
            if isinstance(metrics, Mapping):
                for key, family in quality.items():
                    value = metrics.get(key)
                    if value is not None:
                        family.add_metric([route, version], float(value))
            if data.get("concept_drift") is not None:
                concept.add_metric([route, version], 1.0 if data["concept_drift"] else 0.0)
        for route, entry in sorted((status.get("routes") or {}).items()):
            triggers = entry.get("triggers") if isinstance(entry, Mapping) else None
            by_version = triggers.get("fires_by_version") if isinstance(triggers, Mapping) else None
            if not isinstance(by_version, Mapping):
                continue
            for version, reasons in sorted(by_version.items()):
                for reason, n in sorted(reasons.items()):
                    fires.add_metric([route, version, reason], float(n))
    yield from quality.values()
    yield from (size, received, concept, fires)
