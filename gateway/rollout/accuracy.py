"""The accuracy gate's evidence: the drift worker's labeled window of a version.

The drift worker keeps one rolling labeled window per route and model version, fed by
every replica's accepted labels (`gateway.drift.labels`), so its numbers are the
fleet's. A gateway reads them where its drift metrics come from: the local worker's
status file, or the worker's HTTP API (`--drift-status-url`). No answer, a stale
status, or no window of that version yet: None, and the gate waits (a rollout never
rolls back for want of evidence).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from gateway.drift.remote import WorkerUnreachable
from gateway.drift.status import label_version
from gateway.observability.drift_metrics import WORKER_STALE_AFTER, DriftCounters
from gateway.rollout.analysis import LabeledAccuracy

# (route, version, variant) -> the challenger's labeled window, or None (the gate waits).
AccuracySource = Callable[[str, str, str], Awaitable[LabeledAccuracy | None]]


def labeled_accuracy(
    status: Mapping[str, Any] | None, route: str, version: str, now: float
) -> LabeledAccuracy | None:
    """The labeled window of (route, version) in a worker status, if it is fresh."""
    if status is None or now - float(status.get("heartbeat", 0.0) or 0.0) > WORKER_STALE_AFTER:
        return None
    entry = (status.get("routes") or {}).get(route)
    labels = entry.get("labels") if isinstance(entry, Mapping) else None
    window = labels.get(version) if isinstance(labels, Mapping) else None
    metrics = window.get("metrics") if isinstance(window, Mapping) else None
    if not isinstance(metrics, Mapping):
        return None
    correct, samples = metrics.get("correct"), metrics.get("samples")
    if type(correct) is not int or type(samples) is not int or samples <= 0:
        return None
    return LabeledAccuracy(correct, samples)


def worker_accuracy(drift: DriftCounters) -> AccuracySource:
    """The source over this process's view of the drift worker (read at each call:
    the drift feed sets it up after the controller is built)."""

    async def read(route: str, version: str, variant: str) -> LabeledAccuracy | None:
        try:
            if drift.remote is not None:
                status: Mapping[str, Any] | None = await drift.remote.status()
            elif drift.status is not None:
                status = drift.status()
            else:
                return None
        except WorkerUnreachable:
            return None
        return labeled_accuracy(status, route, label_version(version, variant), time.time())

    return read
