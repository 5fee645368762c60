"""JSON answers compared: classifiers by label and probability, other JSON by value.

A classifier's answer is recognised by its shape (a label field, probability maps,
Hugging Face pipeline lists, batches of those); anything else is compared as a JSON
value with numbers within the tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from gateway.dataplane.shadow.verdict import (
    EXCERPT_CHARS,
    Comparison,
    Tolerance,
    close,
    is_number,
)

_LABEL_KEYS = ("label", "prediction", "predicted_label", "class", "category", "predicted_class")
_SCORE_KEYS = ("probability", "score", "confidence", "prob")
_PROBS_KEYS = ("probabilities", "probs", "scores", "class_probabilities")
_BATCH_KEYS = ("predictions", "results", "outputs", "data", "labels")
_MAX_PREDICTIONS = 4096  # a batch larger than this is compared on its first rows only


@dataclass(frozen=True, slots=True)
class Prediction:
    """One classifier prediction read from a JSON answer."""

    label: str | None
    score: float | None = None  # the probability of `label`, when given
    probabilities: dict[str, float] | None = None  # label -> probability, when given


def compare_json(primary: bytes, shadow: bytes, tolerance: Tolerance) -> Comparison:
    """Classifier answers by label and probability; other JSON by value within tolerance."""
    try:
        a, b = orjson.loads(primary), orjson.loads(shadow)
    except orjson.JSONDecodeError:
        return Comparison("uncomparable", "json", detail="a body is not JSON")
    pa, pb = predictions(a), predictions(b)
    if pa is not None and pb is not None:
        return _compare_predictions(pa, pb)
    agreed = same_json(a, b, tolerance.numeric)
    return Comparison(
        "agree" if agreed else "disagree",
        "json",
        detail="equal within tolerance" if agreed else "values differ",
        primary_excerpt=primary[:EXCERPT_CHARS].decode("utf-8", "replace"),
        shadow_excerpt=shadow[:EXCERPT_CHARS].decode("utf-8", "replace"),
    )


def _compare_predictions(a: list[Prediction], b: list[Prediction]) -> Comparison:
    if len(a) != len(b):
        detail = f"{len(a)} predictions (primary) vs {len(b)} (shadow)"
        return Comparison("disagree", "classifier", detail=detail)
    same = [x.label == y.label for x, y in zip(a, b, strict=True)]
    deltas = [d for x, y in zip(a, b, strict=True) if (d := probability_delta(x, y)) is not None]
    delta = sum(deltas) / len(deltas) if deltas else None
    share = sum(same) / len(same) if same else 1.0
    return Comparison(
        "agree" if all(same) else "disagree",
        "classifier",
        similarity=share,
        probability_delta=delta,
        detail=f"{sum(same)}/{len(same)} labels agree",
        primary_excerpt=",".join(str(p.label) for p in a[:16])[:EXCERPT_CHARS],
        shadow_excerpt=",".join(str(p.label) for p in b[:16])[:EXCERPT_CHARS],
    )


def probability_delta(primary: Prediction, shadow: Prediction) -> float | None:
    """|p_shadow - p_primary| for the primary's label, when both sides give it."""
    label = primary.label
    p = _probability(primary, label)
    q = _probability(shadow, label)
    if p is None or q is None:
        return None
    return abs(q - p)


def _probability(pred: Prediction, label: str | None) -> float | None:
    if pred.probabilities is not None and label is not None and label in pred.probabilities:
        return pred.probabilities[label]
    if pred.score is not None and pred.label == label:
        return pred.score
    return None


def predictions(doc: Any) -> list[Prediction] | None:
    """The predictions of a classifier's JSON answer, or None if it does not look like one.

    Understands `{"label": .., "score": ..}` (and prediction/class/probability/...),
    probability maps or lists aligned with `labels`, Hugging Face pipeline lists
    `[{"label", "score"}]`, and batches under predictions/results/outputs/data.
    """
    if isinstance(doc, dict):
        single = _prediction(doc)
        if single is not None:
            return [single]
        for key in _BATCH_KEYS:
            batch = doc.get(key)
            if isinstance(batch, list):
                return _batch(batch)
        return None
    if isinstance(doc, list):
        return _batch(doc)
    return None


def _batch(items: list[Any]) -> list[Prediction] | None:
    out: list[Prediction] = []
    for item in items[:_MAX_PREDICTIONS]:
        if isinstance(item, dict):
            pred = _prediction(item)
            if pred is None:
                return None
            out.append(pred)
        elif isinstance(item, list) and item and all(isinstance(i, dict) for i in item):
            # A pipeline's top-k list per input: the first entry is its prediction.
            pred = _prediction(item[0])
            if pred is None:
                return None
            out.append(pred)
        elif isinstance(item, (str, int)) and not isinstance(item, bool):
            out.append(Prediction(str(item)))
        else:
            return None  # numbers with fractions, nested tensors: not labels
    return out


def _prediction(obj: dict[str, Any]) -> Prediction | None:
    label: Any = None
    for key in _LABEL_KEYS:
        if key in obj and isinstance(obj[key], (str, int)) and not isinstance(obj[key], bool):
            label = str(obj[key])
            break
    probs = _probability_map(obj)
    if label is None and probs:
        label = max(probs, key=lambda k: probs[k])
    if label is None:
        return None
    score = None
    for key in _SCORE_KEYS:
        if is_number(obj.get(key)):
            score = float(obj[key])
            break
    return Prediction(label, score, probs)


def _probability_map(obj: dict[str, Any]) -> dict[str, float] | None:
    for key in _PROBS_KEYS:
        value = obj.get(key)
        if isinstance(value, dict) and value and all(is_number(v) for v in value.values()):
            return {str(k): float(v) for k, v in value.items()}
        names = obj.get("labels") or obj.get("classes")
        if (
            isinstance(value, list)
            and isinstance(names, list)
            and len(names) == len(value)
            and all(is_number(v) for v in value)
        ):
            return {str(k): float(v) for k, v in zip(names, value, strict=True)}
    return None


def same_json(a: Any, b: Any, tol: float) -> bool:
    """Structural equality, numbers compared within `tol`."""
    if is_number(a) and is_number(b):
        return close(a, b, tol)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k], tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y, tol) for x, y in zip(a, b, strict=True))
    return bool(a == b)
