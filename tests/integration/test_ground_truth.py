"""Ground truth end to end: real gateways in front of the BentoML fraud simulator.

Two gateway processes share the fleet secret and a claims store (SQLite, one machine).
Gateway A serves every prediction; the true labels are posted half to A and half to B,
which never saw those requests: the prediction-carrying id alone joins them. The admin
numbers of each process, the union of both processes' /metrics (what Prometheus would
sum) and a hand computation over the labels must agree.
"""

from __future__ import annotations

import random
import socket
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.admin.ground_truth import summarize
from gateway.dataplane.feedback.groundtruth import GroundTruth
from gateway.drift.channel import Labels, Rows, decode
from gateway.drift.labeled import LabeledRecord
from gateway.observability.ground_truth_metrics import SCORE_BUCKETS
from gateway.stats.counts import Sample
from tests.procs import GatewayProc, Simulator, start_simulator

N = 40
TRUTH = GroundTruth(("label",), ("probability",), False, False, "fraud", ("legit", "fraud"), 3600)


def policy(champion: Simulator, challenger: Simulator) -> str:
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: fraud
protocol: json
variants:
  - {{name: champion, weight: 50, target: "models:/fraud/1"}}
  - {{name: challenger, weight: 50, target: "models:/fraud/2"}}
backends:
  fraud/1: {{endpoints: ["{champion.url}"]}}
  fraud/2: {{endpoints: ["{challenger.url}"]}}
shadow: [{{name: cand, endpoints: ["{challenger.url}"], sample: 1.0}}]
ground_truth:
  prediction: label
  score: probability
  positive: fraud
  classes: [legit, fraud]
  max_label_delay: 1h
---
apiVersion: switchyard/v1
kind: RoutingPolicy
route: fraud-ab
protocol: json
variants: [{{name: main, endpoints: ["{champion.url}"]}}]
experiment: {{confidence: 0.9}}
"""


@pytest.fixture(scope="module")
def bento() -> Iterator[tuple[Simulator, Simulator]]:
    champion = start_simulator("gt-champion", kind="bentoml")
    try:
        challenger = start_simulator("gt-challenger", "--model-version", "2", kind="bentoml")
    except Exception:
        champion.proc.stop()
        raise
    try:
        yield champion, challenger
    finally:
        champion.proc.stop()
        challenger.proc.stop()


def classify(gw: GatewayProc, features: list[float], route: str = "fraud") -> httpx.Response:
    r = httpx.post(f"{gw.url}/services/{route}/classify", json={"features": features}, timeout=10)
    assert r.status_code == 200, r.text
    return r


def label(gw: GatewayProc, rid: str, value: object) -> httpx.Response:
    return httpx.post(f"{gw.url}/v1/feedback", json={"request_id": rid, "label": value}, timeout=10)


def hand(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Accuracy, precision, recall, F1 and binned AUC per (variant, version), written out
    plainly over the labeled rows."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for key in sorted({(r["variant"], r["version"]) for r in rows}):
        mine = [r for r in rows if (r["variant"], r["version"]) == key]
        bounded = [
            (r["predicted"], r["label"] if r["label"] in TRUTH.classes else "other") for r in mine
        ]
        tp = sum(1 for p, t in bounded if p == "fraud" and t == "fraud")
        fp = sum(1 for p, t in bounded if p == "fraud" and t != "fraud")
        fn = sum(1 for p, t in bounded if p != "fraud" and t == "fraud")
        precision = tp / (tp + fp) if tp + fp else None
        recall = tp / (tp + fn) if tp + fn else None
        f1 = (
            2 * precision * recall / (precision + recall)
            if precision and recall
            else (0.0 if precision is not None and recall is not None else None)
        )
        # Binned AUC: a score counts in the bucket of the first edge at or above it.
        pos = [bisect_left(SCORE_BUCKETS, r["score"]) for r in mine if r["label"] == "fraud"]
        neg = [bisect_left(SCORE_BUCKETS, r["score"]) for r in mine if r["label"] != "fraud"]
        auc = None
        if pos and neg:
            wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
            auc = wins / (len(pos) * len(neg))
        out[key] = {
            "labels": len(mine),
            "accuracy": sum(1 for p, t in bounded if p == t) / len(mine),
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "auc": auc,
        }
    return out


def assert_equal(found: dict[str, Any], expected: dict[tuple[str, str], dict[str, Any]]) -> None:
    by_key = {(v["variant"], v["version"]): v for v in found["versions"] if v["labels"]}
    assert set(by_key) == set(expected)
    for key, numbers in expected.items():
        for name, value in numbers.items():
            got = by_key[key][name]
            if value is None:
                assert got is None, (key, name)
            else:
                assert got == pytest.approx(value), (key, name, got, value)


def samples_of(*gateways: GatewayProc) -> list[Sample]:
    return [
        Sample(s.name, s.labels, s.value)
        for gw in gateways
        for family in text_string_to_metric_families(gw.metrics())
        for s in family.samples
    ]


def test_labels_join_predictions_on_any_replica_and_match_a_hand_computation(
    gateway: Callable[..., GatewayProc], bento: tuple[Simulator, Simulator], tmp_path: Path
) -> None:
    secret = tmp_path / "fleet-secret"
    secret.write_text("ground-truth-fleet-secret-0123456789\n")
    fleet = (
        "--fleet-secret-file",
        str(secret),
        "--feedback-store",
        f"sqlite:{tmp_path / 'claims.sqlite'}",
    )
    text = policy(*bento)
    gw_a = gateway(text, extra=fleet)
    gw_b = gateway(text, extra=fleet)
    rng = random.Random(7)
    served: list[dict[str, Any]] = []
    for _ in range(N):
        r = classify(gw_a, [round(rng.uniform(-2, 2), 2) for _ in range(4)])
        fid = r.headers["x-switchyard-feedback-id"]
        assert fid.startswith("fb2."), fid
        body = r.json()
        served.append(
            {
                "fid": fid,
                "rid": r.headers["x-request-id"],
                "variant": r.headers["x-switchyard-variant"],
                "version": r.headers["x-switchyard-version"],
                "predicted": body["label"],
                "score": body["probability"],
            }
        )
    assert {s["version"] for s in served} == {"1", "2"}  # both versions served

    # True labels: mostly agreeing, some not, one class the route does not list.
    accepted: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
    for i, row in enumerate(served):
        truth = row["predicted"] if rng.random() < 0.7 else rng.choice(["fraud", "legit"])
        if i == 5:
            truth = "chargeback"  # counted as `other`
        where, gw = ("a", gw_a) if i % 2 == 0 else ("b", gw_b)
        r = label(gw, row["fid"], truth)
        assert r.status_code == 200, r.text
        reply = r.json()
        assert reply["predicted"] == row["predicted"] and reply["label"] == truth
        assert reply["score"] == pytest.approx(row["score"])
        assert (reply["variant"], reply["version"]) == (row["variant"], row["version"])
        assert reply["correct"] is (truth == row["predicted"])
        accepted[where].append({**row, "label": truth})

    # Each request counts once, whichever replica and whichever of its ids.
    again = label(gw_b, served[0]["fid"], "fraud")
    assert again.status_code == 409, again.text
    # Its x-request-id is the fb1 id minted before the answer: no prediction in it.
    by_fb1 = label(gw_a, served[1]["rid"], "fraud")
    assert by_fb1.status_code == 400 and "carries no prediction" in by_fb1.text

    # Refusals that say why.
    r = classify(gw_a, [0.1, 0.2, 0.3, 0.4], route="fraud-ab")
    no_truth = label(gw_b, r.headers["x-switchyard-feedback-id"], "fraud")
    assert no_truth.status_code == 400 and "takes no labels" in no_truth.text
    fresh = classify(gw_a, [0.5, 0.5, 0.5, 0.5])
    fb1 = fresh.headers["x-request-id"]
    assert fb1.startswith("fb1.")
    no_prediction = label(gw_b, fb1, "fraud")
    assert no_prediction.status_code == 400, no_prediction.text
    assert "carries no prediction" in no_prediction.text
    bad = label(gw_a, fresh.headers["x-switchyard-feedback-id"], 0.5)
    assert bad.status_code == 400 and "'label' must be the true class" in bad.text
    missing = httpx.post(
        f"{gw_a.url}/services/fraud/predict", json={"features": [[0, 0, 0, 0]]}, timeout=10
    )
    assert missing.status_code == 200  # relayed; the prediction is not where the policy says
    assert "x-switchyard-feedback-id" in missing.headers
    assert missing.headers["x-switchyard-feedback-id"].startswith("fb1.")

    # Each process's admin numbers: its own labels (the local statistics source).
    for where, gw in (("a", gw_a), ("b", gw_b)):
        view = httpx.get(f"{gw.admin}/admin/ground-truth/fraud", timeout=10).json()
        assert view["source"]["kind"] == "local"
        assert_equal(view, hand(accepted[where]))
    view_a = httpx.get(f"{gw_a.admin}/admin/ground-truth/fraud", timeout=10).json()
    assert view_a["capture_failures"] == {"missing": 1}
    assert sum(v["predictions_captured"] for v in view_a["versions"]) == N + 1
    assert httpx.get(f"{gw_a.admin}/admin/ground-truth/fraud-ab", timeout=10).status_code == 404
    # Held responses and shadow copies of one request (both keep the primary's body).
    compared = gw_a.metric("switchyard_shadow_comparisons_total", route="fraud")
    assert compared >= N

    # The fleet: both processes' /metrics summed, as Prometheus or the supervisor would.
    everything = accepted["a"] + accepted["b"]
    assert_equal(summarize("fraud", TRUTH, samples_of(gw_a, gw_b)), hand(everything))
    total = gw_a.metric("switchyard_ground_truth_labels_total") + gw_b.metric(
        "switchyard_ground_truth_labels_total"
    )
    assert total == N
    others = gw_a.metric("switchyard_ground_truth_labels_total", label="other") + gw_b.metric(
        "switchyard_ground_truth_labels_total", label="other"
    )
    assert others == 1
    delays = gw_a.metric("switchyard_ground_truth_label_delay_seconds_count") + gw_b.metric(
        "switchyard_ground_truth_label_delay_seconds_count"
    )
    assert delays == N


def test_labels_and_keyed_rows_reach_the_drift_worker_address(
    gateway: Callable[..., GatewayProc], bento: tuple[Simulator, Simulator]
) -> None:
    # The test is the fleet's drift worker: it binds the UDP address the gateway sends to.
    worker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    worker.bind(("127.0.0.1", 0))
    worker.settimeout(0.5)
    port = worker.getsockname()[1]
    text = policy(*bento).replace(
        "  max_label_delay: 1h\n",
        "  max_label_delay: 1h\n"
        "drift:\n"
        "  reference: reference.csv\n"
        "  sample: 1.0\n"
        "  features: [{name: f0, path: 'features[0]'}, {name: f1, path: 'features[1]'}]\n",
    )
    gw = gateway(text, extra=("--drift-worker-address", f"udp://127.0.0.1:{port}"))
    served = {}
    for i in range(10):
        r = classify(gw, [i / 10, 1.0, 0.0, -1.0])
        served[r.headers["x-request-id"][-22:]] = (r.headers["x-switchyard-feedback-id"], r.json())
    for fid, body in served.values():
        truth = "fraud" if body["label"] == "legit" else "legit"  # every one wrong
        assert label(gw, fid, truth).status_code == 200
    rows: dict[str, dict[str, Any]] = {}
    records: dict[str, LabeledRecord] = {}
    deadline = time.monotonic() + 20
    try:
        while (len(rows) < 10 or len(records) < 10) and time.monotonic() < deadline:
            try:
                data = worker.recv(1 << 17)
            except TimeoutError:
                continue
            message = decode(data) if data else None
            if isinstance(message, Rows) and message.route == "fraud":
                rows.update({row["key"]: row for row in message.rows if "key" in row})
            elif isinstance(message, Labels):
                records.update({r.key: r for r in message.records})
    finally:
        worker.close()
    assert set(rows) == set(served), "every sampled row carries its request's claim key"
    assert set(records) == set(served), "every label reaches the worker, by the same key"
    for key, (_, body) in served.items():
        record = records[key]
        assert (record.route, record.predicted) == ("fraud", body["label"])
        assert record.label != record.predicted and record.score == pytest.approx(
            body["probability"]
        )
        assert {"f0", "f1"} <= set(rows[key])  # the features the label joins with
        assert record.labeled_at >= record.served_at


def test_workers_answer_the_fleet_numbers_through_the_supervisor(
    gateway: Callable[..., GatewayProc], bento: tuple[Simulator, Simulator]
) -> None:
    # Every request and label on a new connection: the kernel spreads them over both
    # workers; the admin answer (any worker, reading the supervisor's merged /metrics)
    # covers them all.
    gw = gateway(policy(*bento), extra=("--workers", "2"))
    rng = random.Random(11)
    rows = []
    for _ in range(30):
        r = classify(gw, [round(rng.uniform(-2, 2), 2) for _ in range(4)])
        body = r.json()
        truth = body["label"] if rng.random() < 0.6 else rng.choice(["fraud", "legit"])
        answer = label(gw, r.headers["x-switchyard-feedback-id"], truth)
        assert answer.status_code == 200, answer.text
        rows.append(
            {
                "variant": r.headers["x-switchyard-variant"],
                "version": r.headers["x-switchyard-version"],
                "predicted": body["label"],
                "score": body["probability"],
                "label": truth,
            }
        )
    view = httpx.get(f"{gw.admin}/admin/ground-truth/fraud", timeout=10).json()
    assert view["source"]["kind"] == "supervisor"
    assert_equal(view, hand(rows))
