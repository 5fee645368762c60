"""The rollout's accuracy gate: it waits without evidence, fails under the floor, and
reads the drift worker's labeled window of the challenger (fresh status only)."""

from __future__ import annotations

import time

from gateway.controlplane.policy.rolloutspec import AnalysisSpec
from gateway.observability.drift_metrics import DriftCounters
from gateway.rollout.accuracy import labeled_accuracy, worker_accuracy
from gateway.rollout.analysis import Counts, LabeledAccuracy, judge

FINE = Counts(responses=200, ok_attempts=200)


def test_the_accuracy_gate_waits_without_enough_labels_then_judges() -> None:
    spec = AnalysisSpec(min_requests=100, min_accuracy=0.85, min_labels=50)
    assert judge(spec, FINE, FINE, accuracy=None).outcome == "wait"
    few = judge(spec, FINE, FINE, accuracy=LabeledAccuracy(0, 49))
    assert few.outcome == "wait" and "49 of the 50 labels" in few.reason
    ok = judge(spec, FINE, FINE, accuracy=LabeledAccuracy(43, 50))  # 0.86
    assert ok.outcome == "pass"
    bad = judge(spec, FINE, FINE, accuracy=LabeledAccuracy(42, 50))  # 0.84
    assert bad.outcome == "fail"
    assert bad.reason == "gate accuracy failed: 42 of 50 labeled predictions correct"
    gate = next(g for g in bad.gates if g.name == "accuracy")
    assert gate.value == 0.84 and gate.limit == 0.85
    # No min_accuracy: no gate, whatever the labels say.
    no_gate = AnalysisSpec(min_requests=100)
    assert judge(no_gate, FINE, FINE, accuracy=LabeledAccuracy(0, 99)).outcome == "pass"


def status(heartbeat: float) -> dict[str, object]:
    metrics = {"correct": 3, "samples": 10, "accuracy": 0.3}
    return {
        "heartbeat": heartbeat,
        "routes": {
            "fraud": {"labels": {"8": {"metrics": metrics}, "variant:b": {"metrics": None}}}
        },
    }


def test_the_worker_status_gives_the_versions_window_only_while_fresh() -> None:
    now = 1000.0
    assert labeled_accuracy(status(now - 1), "fraud", "8", now) == LabeledAccuracy(3, 10)
    assert labeled_accuracy(status(now - 60), "fraud", "8", now) is None  # worker gone
    assert labeled_accuracy(status(now), "fraud", "9", now) is None  # no window
    assert labeled_accuracy(status(now), "fraud", "variant:b", now) is None  # no metrics
    assert labeled_accuracy(status(now), "other", "8", now) is None
    assert labeled_accuracy(None, "fraud", "8", now) is None


async def test_an_endpoint_challengers_window_is_its_variants() -> None:
    fresh = status(time.time())
    fresh["routes"]["fraud"]["labels"]["variant:canary"] = {  # type: ignore[index]
        "metrics": {"correct": 7, "samples": 10}
    }
    drift = DriftCounters(status=lambda: fresh)
    read = worker_accuracy(drift)
    assert await read("fraud", "8", "canary") == LabeledAccuracy(3, 10)
    assert await read("fraud", "", "canary") == LabeledAccuracy(7, 10)
    assert await worker_accuracy(DriftCounters())("fraud", "8", "canary") is None
