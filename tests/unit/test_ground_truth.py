"""Ground truth: the `ground_truth` block, prediction capture, prediction-carrying ids,
label parsing, and the metric math against a hand computation."""

from __future__ import annotations

import base64
import random
import time
from pathlib import Path

import pytest

from gateway.admin.ground_truth import binned_auc, classification, summarize
from gateway.controlplane.policy.compile import compile_snapshot, load_checked
from gateway.controlplane.policy.loader import PolicyError, parse_policies
from gateway.dataplane.decide import RequestHead, decide
from gateway.dataplane.feedback import labels
from gateway.dataplane.feedback.groundtruth import GroundTruth, as_text, normalise_label
from gateway.dataplane.feedback.ids import (
    MAX_PREDICTION_ID,
    FeedbackIds,
    is_signed,
)
from gateway.dataplane.feedback.log import read_feedback
from gateway.dataplane.health import HealthRegistry
from gateway.drift.channel import (
    Labels,
    Rows,
    Stream,
    decode,
    encode_labels,
    receiver_socket,
    worker_address,
)
from gateway.drift.labeled import LabeledRecord
from gateway.drift.sender import DriftSender
from gateway.drift.tap import DriftTap
from gateway.errors import BadRequest, RequestExpired, UnknownRequest
from gateway.observability.drift_metrics import DriftCounters
from gateway.observability.ground_truth_metrics import GroundTruthMetrics, ground_truth_families
from gateway.observability.metrics import GatewayMetrics
from gateway.stats.counts import Sample

SECRET = b"a-fleet-secret-of-enough-bytes-0123"
HEAD = """apiVersion: switchyard/v1
kind: RoutingPolicy
route: fraud
protocol: json
variants: [{name: a, endpoints: ["http://127.0.0.1:9001"]}]
"""


def problems_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "fraud.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as caught:
        load_checked(path)
    return [str(p) for p in caught.value.problems]


# The policy block ------------------------------------------------------------------


def test_bad_blocks_are_named_with_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "fraud.yaml"
    found = problems_of(
        tmp_path,
        HEAD
        + """ground_truth:
  prediction: label
  classes: [legit, fraud]
  positive: fruad
""",
    )
    assert len(found) == 1
    assert found[0].startswith(f"{path}:9:3: ground_truth.positive: ")
    assert "positive class 'fruad' is not one of classes" in found[0]
    found = problems_of(tmp_path, HEAD + "ground_truth: {prediction: 'a..b', classes: [x, y]}\n")
    assert found[0].startswith(f"{path}:6:") and "ground_truth.prediction" in found[0]
    assert "not a simple JSON path" in found[0]
    found = problems_of(tmp_path, HEAD + "ground_truth: {prediction: p, classes: [x, x]}\n")
    assert "class 'x' is listed twice" in found[0]
    found = problems_of(tmp_path, HEAD + "ground_truth: {prediction: p, classes: [x]}\n")
    assert "ground_truth.classes" in found[0]


def test_the_block_compiles_onto_the_route() -> None:
    text = HEAD + (
        "ground_truth: {prediction: label, score: probability, positive: fraud, "
        "classes: [legit, fraud], max_label_delay: 2h}\n"
    )
    policies, problems = parse_policies(text, "fraud.yaml")
    assert problems == []
    metrics = GatewayMetrics()
    snap = compile_snapshot(policies, metrics=metrics, health=HealthRegistry(metrics))
    truth = snap.routes["fraud"].ground_truth
    assert truth == GroundTruth(
        prediction=("label",),
        score=("probability",),
        kserve=False,
        argmax=False,
        positive="fraud",
        classes=("legit", "fraud"),
        max_label_delay=7200.0,
    )
    plain = compile_snapshot(
        parse_policies(HEAD, "fraud.yaml")[0], metrics=metrics, health=HealthRegistry(metrics)
    )
    assert plain.routes["fraud"].ground_truth is None


# Capture ---------------------------------------------------------------------------


def truth(**kw: object) -> GroundTruth:
    base: dict[str, object] = {
        "prediction": ("label",),
        "score": ("probability",),
        "kserve": False,
        "argmax": False,
        "positive": "fraud",
        "classes": ("legit", "fraud"),
        "max_label_delay": 3600.0,
    }
    base.update(kw)
    return GroundTruth(**base)  # type: ignore[arg-type]


def test_extract_from_json_kserve_and_llm_answers() -> None:
    assert truth().extract(b'{"label": "fraud", "probability": 0.93}') == ("fraud", 0.93)
    assert truth(score=None).extract(b'{"label": 1}') == ("1", None)
    assert truth(score=None).extract(b'{"label": true}') == ("true", None)
    llm = truth(prediction=("choices", 0, "message", "content"), score=None)
    answer = b'{"choices": [{"message": {"content": " fraud\\n"}}]}'
    assert llm.extract(answer) == ("fraud", None)
    kserve = truth(prediction=("predict",), score=("proba",), kserve=True)
    body = (
        b'{"outputs": [{"name": "proba", "data": [0.2, 0.8], "shape": [1, 2]},'
        b' {"name": "predict", "data": ["fraud"], "shape": [1]}]}'
    )
    assert kserve.extract(body) == ("fraud", 0.8)  # per-class list: the positive's entry
    argmax = truth(prediction=("proba",), score=None, kserve=True, argmax=True)
    assert argmax.extract(body) == ("fraud", 0.8)
    assert argmax.extract(body.replace(b"0.2, 0.8", b"0.7, 0.3")) == ("legit", 0.3)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not_json"),
        (b'{"other": 1}', "missing"),
        (b'{"label": {"x": 1}, "probability": 0.5}', "not_a_class"),
        (b'{"label": "fraud"}', "missing"),
        (b'{"label": "fraud", "probability": 1.5}', "bad_score"),
        (b'{"label": "fraud", "probability": "high"}', "bad_score"),
        (b'{"label": "%s", "probability": 0.5}' % (b"x" * 65), "too_long"),
    ],
)
def test_a_response_without_a_prediction_is_a_reason_not_an_error(body: bytes, reason: str) -> None:
    assert truth().extract(body) == reason


def test_classes_and_labels_as_text() -> None:
    assert [as_text(v) for v in ("fraud ", 1, True, False, 2.0, 0.5)] == [
        "fraud",
        "1",
        "true",
        "false",
        "2",
        "0.5",
    ]
    assert [normalise_label(v) for v in ("fraud", 1, True, 0.5, None, [1])] == [
        "fraud",
        "1",
        "true",
        None,
        None,
        None,
    ]


# Ids ----------------------------------------------------------------------------------


def test_prediction_ids_verify_anywhere_and_share_the_claim_key() -> None:
    minting, other = FeedbackIds(SECRET), FeedbackIds(SECRET)
    fid = minting.mint("fraud", "challenger", "7")
    fid2 = minting.with_prediction(fid, "fraud", 0.93)
    assert fid2.startswith(b"fb2.") and is_signed(fid2) and len(fid2) <= MAX_PREDICTION_ID
    now = time.time()
    one, two = other.verify(fid, now, 60), other.verify(fid2, now, 60)
    assert (two.route, two.variant, two.version) == ("fraud", "challenger", "7")
    assert (two.predicted, two.score) == ("fraud", 0.93)
    assert (one.predicted, one.score) == (None, None)
    assert two.key == one.key == fid.rsplit(b".", 1)[1]  # fb1 and fb2 claim once
    assert two.served_at == one.served_at
    bare = other.verify(minting.with_prediction(fid, "1", None), now, 60)
    assert (bare.predicted, bare.score) == ("1", None)
    assert minting.with_prediction(fid, "x" * 65, None) == b""
    assert minting.with_prediction(b"", "fraud", None) == b""


def test_prediction_ids_refuse_tampering_and_age() -> None:
    ids = FeedbackIds(SECRET)
    fid2 = ids.with_prediction(ids.mint("fraud", "a", "1"), "legit", 0.1)
    head, _, mac = fid2.split(b".")[1:]
    forged_ext = base64.urlsafe_b64encode(b"\0\x05fraud").rstrip(b"=")
    with pytest.raises(UnknownRequest, match="signature does not match"):
        ids.verify(b"fb2." + head + b"." + forged_ext + b"." + mac, time.time(), 60)
    with pytest.raises(UnknownRequest, match="signature does not match"):
        FeedbackIds(b"another-secret-of-enough-bytes-99").verify(fid2, time.time(), 60)
    with pytest.raises(RequestExpired):
        ids.verify(fid2, time.time() + 120, 60)
    with pytest.raises(BadRequest, match="at most 640"):
        ids.verify(fid2 + b"A" * MAX_PREDICTION_ID, time.time(), 60)


# Label bodies ----------------------------------------------------------------------


def test_label_bodies() -> None:
    found = read_feedback(b'{"request_id": "fb2.x.y.z", "label": "fraud"}')
    assert (found.request_id, found.label, found.outcome, found.reward) == (
        b"fb2.x.y.z",
        "fraud",
        None,
        None,
    )
    assert read_feedback(b'{"request_id": "r", "label": 1}').label == "1"
    assert read_feedback(b'{"request_id": "r", "label": false, "outcome": true}').label == "false"
    for bad in (b'"label": 0.5', b'"label": ""', b'"label": [1]', b'"label": {"a": 1}'):
        with pytest.raises(BadRequest, match="'label' must be the true class"):
            read_feedback(b'{"request_id": "r", %s}' % bad)
    with pytest.raises(BadRequest, match="'label' \\(the true class\\)"):
        read_feedback(b'{"request_id": "r"}')


# Metric math -------------------------------------------------------------------------

# Twelve labeled predictions of one version, written out by hand:
# (predicted, true label, score of "fraud"); scores sit on bucket edges.
CASES = [
    ("fraud", "fraud", 0.9),
    ("fraud", "fraud", 0.8),
    ("fraud", "legit", 0.7),
    ("legit", "fraud", 0.4),
    ("legit", "legit", 0.3),
    ("legit", "legit", 0.2),
    ("legit", "legit", 0.1),
    ("fraud", "fraud", 0.6),
    ("legit", "legit", 0.4),
    ("fraud", "legit", 0.9),
    ("legit", "fraud", 0.3),
    ("legit", "legit", 0.05),
]
# tp = 3 (0.9, 0.8, 0.6), fp = 2 (0.7, 0.9), fn = 2 (0.4, 0.3), tn = 5; accuracy 8/12;
# precision 3/5, recall 3/5, F1 0.6. AUC: 5 positives x 7 negatives = 35 pairs;
# positives 0.9 beats 6 negatives and ties 1 (0.9): 6.5; 0.8: 6; 0.6: 5; 0.4: 4 beaten
# (0.3, 0.2, 0.1, 0.05) + tie with 0.4: 4.5; 0.3: 3 (0.2, 0.1, 0.05) + tie with 0.3:
# 3.5 -> 25.5 / 35.
HAND = {"accuracy": 8 / 12, "precision": 0.6, "recall": 0.6, "f1": 0.6, "auc": 25.5 / 35}


def test_classification_equals_the_hand_computation() -> None:
    confusion: dict[tuple[str, str], int] = {}
    for p, t, _ in CASES:
        confusion[(p, t)] = confusion.get((p, t), 0) + 1
    found = classification(confusion, "fraud")
    assert found["labels"] == 12
    for name in ("accuracy", "precision", "recall", "f1"):
        assert found[name] == pytest.approx(HAND[name])
    # Macro over fraud and legit: legit precision 5/7, recall 5/7.
    macro = classification(confusion, None)
    assert macro["precision"] == pytest.approx((3 / 5 + 5 / 7) / 2)
    assert macro["recall"] == pytest.approx((3 / 5 + 5 / 7) / 2)
    assert macro["f1"] == pytest.approx((0.6 + 5 / 7) / 2)
    assert classification({}, "fraud")["accuracy"] is None
    # The same numbers as scikit-learn's (an independent implementation).
    from sklearn.metrics import f1_score, roc_auc_score

    truths = [int(t == "fraud") for _, t, _ in CASES]
    assert f1_score(truths, [int(p == "fraud") for p, _, _ in CASES]) == pytest.approx(0.6)
    assert roc_auc_score(truths, [s for _, _, s in CASES]) == pytest.approx(HAND["auc"])


def test_binned_auc() -> None:
    assert binned_auc([0, 0, 3], [2, 1, 0]) == 1.0
    assert binned_auc([2, 0], [2, 0]) == 0.5  # every pair ties
    assert binned_auc([1], [0]) is None


def test_metrics_rendered_and_summarised_equal_the_hand_computation() -> None:
    metrics = GroundTruthMetrics()
    key = ("fraud", "challenger", "7")
    for i, (p, t, score) in enumerate(CASES):
        metrics.labeled(key, p, t, score, delay=10.0 * (i + 1))
    metrics.captured(*key)
    metrics.failed("fraud", "missing")
    samples = [
        Sample(s.name, s.labels, s.value)
        for family in ground_truth_families(metrics)
        for s in family.samples  # type: ignore[attr-defined]
    ]
    view = summarize("fraud", truth(), samples)
    [entry] = view["versions"]
    assert (entry["variant"], entry["version"], entry["labels"]) == ("challenger", "7", 12)
    for name, value in HAND.items():
        assert entry[name] == pytest.approx(value), name
    assert entry["predictions_captured"] == 1
    assert view["capture_failures"] == {"missing": 1}
    # Delays 10..120 s: 1 in (1, 10], 5 in (10, 60], 6 in (60, 300]: p50 is the 6th of
    # 12 -> the top of (10, 60]; p95 rank 11.4 -> 60 + 240 * (11.4 - 6) / 6.
    assert entry["label_delay_s"]["p50"] == pytest.approx(60.0)
    assert entry["label_delay_s"]["p95"] == pytest.approx(60 + 240 * 5.4 / 6)


def test_unknown_classes_are_bounded_to_other() -> None:
    t = truth()
    assert (t.bounded("fraud"), t.bounded("chargeback")) == ("fraud", "other")


# The drift channel -----------------------------------------------------------------


def record(i: int, route: str = "fraud") -> LabeledRecord:
    return LabeledRecord(
        route, "a", "1", "fraud", 0.5 + i / 100, "legit", 1000.0 + i, 1010.0 + i, f"k{i}"
    )


def test_labels_messages_round_trip_and_split() -> None:
    records = [record(i) for i in range(40)]
    stream = Stream("gw-1")
    found: list[LabeledRecord] = []
    for payload, n in encode_labels(records, limit=2000):
        message = decode(stream.datagram(payload, 0))
        assert isinstance(message, Labels) and message.malformed == 0
        assert len(message.records) == n
        found.extend(message.records)
    assert found == records
    assert stream.seq > 1 and stream.rows == 0  # labels carry no rows in the numbering
    bad = Stream("gw-2").datagram(b'"kind":"labels","labels":[{"route": 1}]}', 0)
    message = decode(bad)
    assert isinstance(message, Labels) and message.records == [] and message.malformed == 1


def test_the_tap_keeps_labels_of_drift_routes_only() -> None:
    tap = DriftTap(2)
    tap.configure({"fraud": 1.0})
    tap.offer_label(record(1, "other"))
    for i in range(3):
        tap.offer_label(record(i))
    assert [r.key for r in tap.take_labels()] == ["k0", "k1"]
    assert tap.dropped == {("fraud", "1"): 1}
    assert tap.take_labels() == []


DRIFT_POLICY = HEAD + (
    "ground_truth: {prediction: label, classes: [legit, fraud]}\n"
    "drift: {reference: ref.csv, features: [{name: amount, path: amount}]}\n"
)


def test_the_sender_puts_claim_keys_on_rows_and_sends_labels(tmp_path: Path) -> None:
    policies, problems = parse_policies(DRIFT_POLICY, "fraud.yaml")
    assert problems == []
    metrics = GatewayMetrics()
    snap = compile_snapshot(policies, metrics=metrics, health=HealthRegistry(metrics))
    rng = random.Random(1)
    first, second, third = (decide(snap, RequestHead("fraud"), rng) for _ in range(3))
    address = worker_address(tmp_path)
    receiver = receiver_socket(address)
    tap = DriftTap(100)
    sender = DriftSender(tap, address, DriftCounters())
    try:
        sender.configure(policies)
        tap.offer(first, {"amount": 1.0})
        tap.keyed(first, "key-1")
        tap.keyed(second, "never-offered")  # not the last sample: ignored
        tap.offer(second, {"amount": 2.0})
        tap.offer(third, {"amount": 3.0})
        tap.keyed(third, "key-3")
        tap.offer_label(record(1))
        assert sender.flush() == 3
        messages = []
        while True:
            try:
                messages.append(decode(receiver.recv(1 << 17)))
            except BlockingIOError:
                break
    finally:
        sender.close()
        receiver.close()
    [rows] = [m for m in messages if isinstance(m, Rows)]
    assert [(r["amount"], r.get("key")) for r in rows.rows] == [
        (1.0, "key-1"),
        (2.0, None),
        (3.0, "key-3"),
    ]
    [labels] = [m for m in messages if isinstance(m, Labels)]
    assert labels.records == [record(1)]
    assert labels.head.rows_before == 3  # numbered after the rows, carrying none


def test_labels_are_refused_saying_why() -> None:
    text = (
        HEAD + "ground_truth: {prediction: label, classes: [legit, fraud], max_label_delay: 1h}\n"
    )
    policies, _ = parse_policies(text, "fraud.yaml")
    metrics = GatewayMetrics()
    snap = compile_snapshot(policies, metrics=metrics, health=HealthRegistry(metrics))
    ids = FeedbackIds(SECRET)
    fid = ids.mint("fraud", "a", "")
    now = time.time()
    signed = ids.verify(ids.with_prediction(fid, "fraud", None), now, float("inf"))
    assert labels.check(snap, signed, b"rid", now).classes == ("legit", "fraud")
    with pytest.raises(RequestExpired, match=r"too late.*takes labels for 3600s"):
        labels.check(snap, signed, b"rid", now + 3601)
    with pytest.raises(BadRequest, match="carries no prediction"):
        labels.check(snap, ids.verify(fid, now, 60), b"rid", now)
    other = ids.verify(ids.with_prediction(ids.mint("chat", "a", ""), "x", None), now, 60)
    with pytest.raises(BadRequest, match="route 'chat' of request 'rid' takes no labels"):
        labels.check(snap, other, b"rid", now)
