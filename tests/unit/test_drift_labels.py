"""Labeled windows and their metrics against hand computations; the cron schedules of
the time-based trigger; the trigger spec's validation."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pandas as pd
import pytest
from pydantic import ValidationError

from gateway.controlplane.policy.compile import load_checked
from gateway.controlplane.policy.driftspec import DriftSpec
from gateway.controlplane.policy.loader import PolicyError
from gateway.controlplane.policy.triggerspec import AccuracyTrigger
from gateway.drift.channel import (
    Stream,
    encode,
    encode_config,
    encode_labels,
    receiver_socket,
    sender_socket,
    worker_address,
)
from gateway.drift.cron import Cron, CronError
from gateway.drift.labeled import LabeledRecord
from gateway.drift.labels import FeatureJoin, LabelWindow, auc, labeled_frame, window_metrics
from gateway.drift.triggers import Triggers, accuracy_breached, concept_drifted
from gateway.drift.worker import DriftWorker, WorkerOptions
from gateway.simulate.kubeflow import KubeflowOptions, start_kubeflow


def rec(
    predicted: str, label: str, score: float | None = None, key: str = "", at: float = 0.0
) -> LabeledRecord:
    return LabeledRecord("fraud", "champion", "7", predicted, score, label, at, at, key)


# Ten labels, worked by hand (positive class "1"):
#   predicted: 1 1 1 1 0 0 0 0 1 0
#   label:     1 1 0 1 0 1 0 0 1 0
#   TP = 4 (rows 0, 1, 3, 8), FP = 1 (row 2), FN = 1 (row 5), TN = 4
#   accuracy 8/10, precision 4/5, recall 4/5, F1 0.8
PREDICTED = "1111000010"
LABELS = "1101010010"
# Scores: the positives (label 1) get 0.9 0.8 0.7 0.6 0.4, the negatives 0.6 0.3 0.2
# 0.1 0.05 (the AUC is worked out in the test).
SCORES = [0.9, 0.8, 0.6, 0.7, 0.3, 0.6, 0.2, 0.1, 0.4, 0.05]


def ten() -> list[LabeledRecord]:
    return [rec(p, t, s) for p, t, s in zip(PREDICTED, LABELS, SCORES, strict=True)]


def test_window_metrics_equal_the_hand_computation() -> None:
    m = window_metrics(ten(), "1")
    assert m is not None
    assert (m.samples, m.correct) == (10, 8)
    assert m.accuracy == pytest.approx(0.8)
    assert m.precision == pytest.approx(0.8)
    assert m.recall == pytest.approx(0.8)
    assert m.f1 == pytest.approx(0.8)
    # Positives: 0.9 0.8 0.7 0.6 0.4; negatives: 0.6 0.3 0.2 0.1 0.05.
    # 0.9, 0.8, 0.7 beat all 5 (15); 0.6 beats 4, ties 1 (4.5); 0.4 beats 4 (4).
    assert m.auc == pytest.approx((15 + 4.5 + 4) / 25)
    assert m.scored == 10


def test_undefined_metrics_are_none_not_zero() -> None:
    only_negatives = [rec("0", "0", 0.2), rec("0", "0", 0.3)]
    m = window_metrics(only_negatives, "1")
    assert m is not None and m.accuracy == 1.0
    assert m.precision is None and m.recall is None and m.f1 is None and m.auc is None
    assert window_metrics([], "1") is None
    # Predicted positive, never right: precision 0, recall 0, F1 0 (defined).
    wrong = window_metrics([rec("1", "0"), rec("0", "1")], "1")
    assert wrong is not None and (wrong.precision, wrong.recall, wrong.f1) == (0.0, 0.0, 0.0)
    assert wrong.auc is None and wrong.scored == 0  # no scores: no AUC


def test_auc_counts_ties_as_half() -> None:
    assert auc([0.5, 0.5], [True, False]) == 0.5
    assert auc([0.1, 0.9], [False, True]) == 1.0
    assert auc([0.9, 0.1], [False, True]) == 0.0


def test_a_label_window_keeps_the_newest_and_freezes_its_first_full_window() -> None:
    window = LabelWindow(size=10, duration=60.0)
    for i, r in enumerate(ten()):
        window.add(rec(r.predicted, r.label, at=float(i)), float(i))
    assert window.reference is not None and len(window.reference) == 10
    first = window.reference
    for i in range(5):
        window.add(rec("0", "1", at=100.0 + i), 100.0 + i)  # wrong ones
    assert len(window) == 10 and window.received == 15
    assert window.reference is first  # frozen
    window.trim(now=150.0)  # labels accepted before 90 leave
    assert len(window) == 5
    m = window_metrics(window.snapshot(), "1")
    assert m is not None and m.accuracy == 0.0


def test_labels_join_their_requests_features_bounded() -> None:
    join = FeatureJoin(limit=2)
    join.add(
        [{"key": "a", "amount": 1.0}, {"key": "b", "amount": 2.0}, {"key": "c", "amount": 3.0}]
    )
    assert join.get("a") is None and len(join) == 2  # the oldest left
    rows = labeled_frame([rec("1", "1", key="c"), rec("0", "1", key="zzz")], join)
    assert rows[0]["amount"] == 3.0 and rows[0]["correct"] is True and "key" in rows[0]
    assert "amount" not in rows[1] and rows[1]["correct"] is False


def test_the_accuracy_slo_and_concept_drift_need_evidence() -> None:
    slo = AccuracyTrigger(min=0.85, min_samples=10)
    m = window_metrics(ten(), "1")
    assert accuracy_breached(m, slo) is True  # 0.8 < 0.85
    assert accuracy_breached(window_metrics(ten()[:9], "1"), slo) is None  # 9 < 10 labels
    assert accuracy_breached(m, AccuracyTrigger(min=0.8, min_samples=10)) is False
    perfect = window_metrics([rec("1", "1"), rec("0", "0")], "1")
    assert concept_drifted(m, None, 0.1) is None  # no reference yet
    assert concept_drifted(m, perfect, 0.2) is True  # 1.0 - 0.8 >= 0.2
    assert concept_drifted(m, perfect, 0.25) is False


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def iso(ts: float | None) -> str:
    assert ts is not None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


@pytest.mark.parametrize(
    ("schedule", "after", "expected"),
    [
        ("*/5 * * * *", "2026-12-07 13:03:20", "2026-12-07 13:05:00"),
        ("*/5 * * * *", "2026-12-07 13:05:00", "2026-12-07 13:10:00"),  # strictly after
        ("0 3 * * 1", "2026-12-07 13:00:00", "2026-12-14 03:00:00"),  # Mondays 03:00
        ("30 23 31 * *", "2026-11-01 00:00:00", "2026-12-31 23:30:00"),  # Nov has no 31st
        ("0 0 29 2 *", "2026-03-01 00:00:00", "2028-02-29 00:00:00"),  # the next leap day
        ("0 12 1 * 0", "2026-12-02 00:00:00", "2026-12-06 12:00:00"),  # day OR weekday
        ("0 0 * * 7", "2026-12-07 00:00:00", "2026-12-13 00:00:00"),  # 7 is Sunday
        ("15-45/15 9 * 1,6 *", "2026-12-07 00:00:00", "2027-01-01 09:15:00"),
        ("*/10 * * * * *", "2026-12-07 13:03:21", "2026-12-07 13:03:30"),  # seconds first
        ("0 0 0 * * *", "2026-12-31 23:59:59", "2027-01-01 00:00:00"),
    ],
)
def test_cron_next_fire(schedule: str, after: str, expected: str) -> None:
    assert iso(Cron.parse(schedule).next_after(at(after))) == expected


def test_a_cron_that_never_fires_says_so() -> None:
    assert Cron.parse("0 0 31 2 *").next_after(at("2026-01-01 00:00:00")) is None


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("* * * *", "5 fields"),
        ("60 * * * *", "minute: '60' is outside 0-59"),
        ("*/0 * * * *", "step '0'"),
        ("* * * jan *", "month: 'jan' is not"),
        ("5-1 * * * *", "outside"),
    ],
)
def test_bad_schedules_are_named(schedule: str, message: str) -> None:
    with pytest.raises(CronError, match=message):
        Cron.parse(schedule)


def test_the_trigger_block_validates_and_documents_its_errors() -> None:
    spec = DriftSpec.model_validate(
        {
            "reference": "r.csv",
            "triggers": {"schedule": "0  3 * * 1", "labeled_samples": 500},
            "labels": {"size": 200},
        }
    )
    assert spec.triggers.schedule == "0 3 * * 1" and spec.triggers.drift is True
    with pytest.raises(ValidationError, match="invalid schedule: minute"):
        DriftSpec.model_validate({"reference": "r.csv", "triggers": {"schedule": "61 * * * *"}})
    with pytest.raises(ValidationError, match="min"):
        DriftSpec.model_validate({"reference": "r.csv", "triggers": {"accuracy": {"min": 1.5}}})


def test_schedules_come_due_once_per_time_and_stay_due_until_done() -> None:
    triggers = Triggers()
    spec = DriftSpec.model_validate(
        {"reference": "r.csv", "triggers": {"schedule": "*/10 * * * * *"}}
    ).triggers
    t0 = at("2026-12-07 13:00:01")
    triggers.configure("fraud", spec, t0)
    assert triggers.next_schedule("fraud") == at("2026-12-07 13:00:10")
    ten, twenty = at("2026-12-07 13:00:10"), at("2026-12-07 13:00:20")
    assert triggers.due_schedules(t0 + 5) == []
    assert triggers.due_schedules(t0 + 9) == [("fraud", ten)]
    assert triggers.due_schedules(t0 + 10) == [("fraud", ten)]  # not done yet: still due
    triggers.schedule_done("fraud")
    assert triggers.due_schedules(t0 + 11) == []
    # A late tick (a busy worker) still runs the episode for the time that came due, not
    # for the moment the worker got to it; a time passed meanwhile is not run twice.
    assert triggers.due_schedules(t0 + 31.7) == [("fraud", twenty)]
    assert triggers.next_schedule("fraud") == at("2026-12-07 13:00:40")
    triggers.schedule_done("fraud")
    assert triggers.due_schedules(t0 + 32) == []
    triggers.configure("fraud", spec, t0 + 100)  # the same schedule keeps its time
    assert triggers.next_schedule("fraud") == at("2026-12-07 13:00:40")


def test_the_data_threshold_counts_every_label_once() -> None:
    triggers = Triggers()
    key = ("fraud", "7")
    triggers.labeled(key, 499)
    assert not triggers.threshold_due(key, 500)
    triggers.labeled(key, 502)
    assert triggers.threshold_due(key, 500)
    triggers.threshold_done(key, 500)
    assert triggers.threshold_due(key, 500)  # 501 left: a second fire
    triggers.threshold_done(key, 500)
    assert triggers.since(key) == 1 and not triggers.threshold_due(key, 500)


class WorkerRig:
    """A worker and its bound socket (as the gateways reach it), in this process."""

    def __init__(self, tmp_path: Path) -> None:
        self.worker = DriftWorker(WorkerOptions(drift_dir=tmp_path / "drift"))
        self.address = worker_address(tmp_path / "drift")
        self.sock = receiver_socket(self.address)
        self.out = sender_socket()
        self.stream = Stream()
        self.base = tmp_path

    def send(self, payload: bytes) -> None:
        self.out.sendto(self.stream.datagram(payload, 0), self.address)
        self.worker.receive(self.sock)

    def config(self, **drift: object) -> None:
        block = {"reference": "r.csv", "labels": {"size": 10, "every": "1s"}, **drift}
        entry = {"route": "fraud", "protocol": "json", "base": str(self.base), "drift": block}
        self.send(encode_config([entry]))

    def labels(self, records: list[LabeledRecord]) -> None:
        for payload, _ in encode_labels(records):
            self.send(payload)

    def close(self) -> None:
        self.sock.close()
        self.out.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[WorkerRig]:
    made = WorkerRig(tmp_path)
    yield made
    made.close()


async def test_labels_before_their_config_wait_for_it_and_idle_windows_go(rig: WorkerRig) -> None:
    now = time.time()
    rig.labels([rec(p, t, at=now) for p, t in zip(PREDICTED, LABELS, strict=True)])
    assert rig.worker.labels.items() == []  # no drift block heard yet: held
    rig.config()
    ((key, window),) = rig.worker.labels.items()
    assert key == ("fraud", "7") and len(window) == 10
    await rig.worker.evaluate_labels(now)
    status = rig.worker.status()["routes"]["fraud"]["labels"]["7"]
    assert status["metrics"]["accuracy"] == 0.8 and status["metrics"]["correct"] == 8
    # Endpoint variants (no version) get a window per variant.
    rig.labels([LabeledRecord("fraud", "canary", "", "1", None, "0", now, now, "k")])
    assert ("fraud", "variant:canary") in dict(rig.worker.labels.items())
    # A week without labels: the version left the route; its window is forgotten.
    await rig.worker.evaluate_labels(now + 8 * 86400)
    assert rig.worker.labels.items() == []


async def test_labels_of_a_route_without_drift_are_dropped_and_counted(rig: WorkerRig) -> None:
    rig.config()
    now = time.time()
    other = LabeledRecord("other", "champion", "1", "1", None, "1", now, now, "k")
    rig.labels([other])
    rig.config()  # the next config: the label waits (a config naming it may come)
    assert ("other", "1", "labels_no_config") not in rig.worker.dropped
    rig.worker._release_labels(now + 11)  # as a config 11 s later releases it
    assert ("other", "1", "labels_no_config") in rig.worker.dropped


async def test_concept_drift_is_one_episode_with_its_report_and_one_run(
    rig: WorkerRig, tmp_path: Path
) -> None:
    server, sim = await start_kubeflow(KubeflowOptions())
    try:
        kubeflow = {"endpoint": server.url, "pipeline_id": "p", "pipeline_version_id": "v"}
        rig.config(
            labels={"size": 10, "every": "1s", "min_samples": 10, "max_accuracy_drop": 0.2},
            on_drift={"kubeflow": kubeflow},
        )
        await rig.worker.warm_up()  # Evidently, for the report
        t = time.time()
        # The reference: 10 of 10 right, both classes.
        rig.labels([rec(c, c, at=t) for c in "1010101010"])
        await rig.worker.evaluate_labels(t)
        state = rig.worker.status()["routes"]["fraud"]["labels"]["7"]
        assert state["reference"]["accuracy"] == 1.0 and state["concept_drift"] is False
        # Half of the next ten wrong: 0.5 is 0.5 under the reference (>= 0.2): drift.
        rig.labels([rec(p, t_, at=t + 1) for p, t_ in zip("1010101010", "1001100111", strict=True)])
        await rig.worker.evaluate_labels(t + 2)
        rig.labels([rec("1", "0", at=t + 3)])  # worse still: the same episode
        await rig.worker.evaluate_labels(t + 4)
        state = rig.worker.status()["routes"]["fraud"]["labels"]["7"]
        assert state["concept_drift"] is True and state["metrics"]["accuracy"] == 0.4
        assert state["episodes"]["concept_drift"]["count"] == 1
        assert (rig.worker.dir / state["report"]).is_file()
        assert state["report"].endswith("7.labels.html") and state["error"] is None
        assert len(sim.runs) == 1
        params = sim.runs[0]["runtime_config"]["parameters"]
        assert params["reason"] == "concept_drift"
        assert orjson.loads(params["drift_summary"]) == {
            "accuracy": 0.5,
            "reference_accuracy": 1.0,
            "max_accuracy_drop": 0.2,
            "labels": 10,
        }
    finally:
        await server.close()


async def test_a_report_evidently_cannot_make_leaves_the_metrics_and_episodes(
    rig: WorkerRig,
) -> None:
    rig.config(labels={"size": 10, "every": "1s", "min_samples": 10, "max_accuracy_drop": 0.2})
    await rig.worker.warm_up()
    # The report cannot be written: a file stands where the route's folder goes.
    (rig.worker.dir / "reports").mkdir(parents=True)
    (rig.worker.dir / "reports" / "fraud").write_text("in the way")
    t = time.time()
    rig.labels([rec(c, c, at=t) for c in "1010101010"])
    rig.labels([rec("1", "1" if i % 2 else "0", at=t) for i in range(10)])
    await rig.worker.evaluate_labels(t)
    state = rig.worker.status()["routes"]["fraud"]["labels"]["7"]
    assert state["error"].startswith("concept drift report failed")
    assert state["concept_drift"] is True and state["metrics"]["accuracy"] == 0.5
    assert state["episodes"]["concept_drift"]["count"] == 1


def test_policy_errors_of_triggers_and_the_gate_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        """apiVersion: switchyard/v1
kind: RoutingPolicy
route: fraud
variants:
  - {name: champion, weight: 90, endpoints: ["http://127.0.0.1:9"]}
  - {name: challenger, weight: 10, endpoints: ["http://127.0.0.1:8"]}
drift:
  reference: r.csv
  triggers:
    schedule: "61 * * * *"
    accuracy: {min: 1.5}
"""
    )
    with pytest.raises(PolicyError) as raised:
        load_checked(bad)
    found = [str(p) for p in raised.value.problems]
    assert f"{bad}:10:5: drift.triggers.schedule: invalid schedule: minute: '61'" in found[0]
    assert found[1].startswith(f"{bad}:11:16: drift.triggers.accuracy.min:")
    gate = tmp_path / "gate.yaml"
    gate.write_text(
        """apiVersion: switchyard/v1
kind: RoutingPolicy
route: fraud
variants:
  - {name: champion, weight: 90, endpoints: ["http://127.0.0.1:9"]}
  - {name: challenger, weight: 10, endpoints: ["http://127.0.0.1:8"]}
rollout:
  steps: [20, 100]
  on_success: hold
  analysis: {min_accuracy: 0.85}
"""
    )
    with pytest.raises(PolicyError) as raised:
        load_checked(gate)
    (problem,) = [str(p) for p in raised.value.problems]
    assert problem.startswith(f"{gate}:10:14: rollout.analysis.min_accuracy: the accuracy gate")
    assert "needs a `drift` block" in problem


async def test_a_schedule_without_labels_passes_the_live_features_on(rig: WorkerRig) -> None:
    server, sim = await start_kubeflow(KubeflowOptions())
    try:
        kubeflow = {"endpoint": server.url, "pipeline_id": "p", "pipeline_version_id": "v"}
        rig.config(triggers={"schedule": "0 3 * * 1"}, on_drift={"kubeflow": kubeflow})
        for payload, n in encode(
            "fraud", "champion", "7", [{"amount": float(i)} for i in range(5)]
        ):
            rig.out.sendto(rig.stream.datagram(payload, n), rig.address)
        rig.worker.receive(rig.sock)
        due = rig.worker.triggers.next_schedule("fraud")
        assert (
            due is not None and datetime.fromtimestamp(due, UTC).strftime("%a %H:%M") == "Mon 03:00"
        )
        await rig.worker.check_triggers(due - 1)
        assert sim.runs == []
        await rig.worker.check_triggers(due)  # the clock reaches Monday 03:00
        await rig.worker.check_triggers(due + 1)  # done: nothing more until next week
        (run,) = sim.runs
        params = run["runtime_config"]["parameters"]
        assert params["reason"] == "schedule" and params["model_version"] == "7"
        saved = pd.read_parquet(Path(params["window_uri"].removeprefix("file://")))
        assert list(saved["amount"]) == [0.0, 1.0, 2.0, 3.0, 4.0]
        assert rig.worker.triggers.next_schedule("fraud") == due + 7 * 86400
    finally:
        await server.close()
