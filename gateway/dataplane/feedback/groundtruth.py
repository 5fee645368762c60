"""Ground truth on the request path: what a version predicted, read from its response.

A route with a `ground_truth` block (`controlplane.policy.groundtruthspec`) compiles to
one `GroundTruth`. The exchange of such a route holds a buffered (non-streamed) JSON
response until it is whole, asks `extract` for the predicted class (and the positive
class's probability), and mints the prediction-carrying feedback id (`ids.FeedbackIds.
with_prediction`) it puts in `x-switchyard-feedback-id`. A label posted later with that
id (`POST /v1/feedback {"request_id": ..., "label": ...}`) is joined with the prediction
by any process of the fleet, with no store and no lookup.

Routes without the block pay one attribute check (`Route.ground_truth is None`).
Everything here is total: a response without the field is a capture failure with a
reason (counted in `switchyard_ground_truth_capture_failures_total`), never an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

OTHER = "other"  # metric label of a class outside the route's `classes`
MAX_CLASS_BYTES = 64  # a predicted class longer than this is not carried in the id
MAX_CAPTURE_BYTES = 256 * 1024  # a longer response is relayed as it comes, uncaptured
# Why a prediction was not captured (the `reason` label).
CAPTURE_REASONS = (
    "streamed",  # an SSE or NDJSON stream: nothing is held back
    "too_large",  # over MAX_CAPTURE_BYTES
    "not_json",  # the body does not parse as JSON
    "missing",  # the prediction's path or output is not in the response
    "not_a_class",  # the value is not a string, number or boolean (or not a score list)
    "too_long",  # the class is over MAX_CLASS_BYTES
    "bad_score",  # the score is not a number in [0, 1]
    "unsigned",  # the request carries no signed id (a name over 255 bytes)
)

Path = tuple[str | int, ...]
_MISSING = object()


def as_text(value: object) -> str | None:
    """A class as the gateway keeps it: strings trimmed, integers (and whole floats) as
    JSON writes integers, booleans as "true"/"false", other finite floats by repr; None
    for anything else (lists, objects, null)."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)
    return None


@dataclass(frozen=True, slots=True)
class GroundTruth:
    """The compiled `ground_truth` block of one route."""

    prediction: Path  # JSON path, or ("outputs", NAME) lookups for kserve-v2
    score: Path | None
    kserve: bool  # prediction/score name KServe v2 outputs
    argmax: bool  # the prediction is per-class scores in `classes` order
    positive: str | None
    classes: tuple[str, ...]
    max_label_delay: float

    def bounded(self, name: str) -> str:
        """`name` as a metric label: one of `classes`, else "other"."""
        return name if name in self.classes else OTHER

    def extract(self, body: bytes) -> tuple[str, float | None] | str:
        """(predicted class, score or None) from a whole response body, or the reason
        (one of CAPTURE_REASONS) it holds none."""
        try:
            data: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            return "not_json"
        value = self._find(data, self.prediction)
        if value is _MISSING:
            return "missing"
        score: float | None = None
        if self.argmax:
            scores = _numbers(value)
            if scores is None or len(scores) != len(self.classes):
                return "not_a_class"
            best = max(range(len(scores)), key=scores.__getitem__)
            predicted = self.classes[best]
            if self.score is None and self.positive is not None:
                score = scores[self.classes.index(self.positive)]
        else:
            if self.kserve:
                value = _first(value)
            text = as_text(value)
            if text is None:
                return "not_a_class"
            predicted = text
        if len(predicted.encode()) > MAX_CLASS_BYTES:
            return "too_long"
        if self.score is not None:
            found = self._find(data, self.score)
            if found is _MISSING:
                return "missing"
            numbers = _numbers(found)
            if numbers is not None and len(numbers) == len(self.classes) and self.positive:
                raw: object = numbers[self.classes.index(self.positive)]
            else:
                raw = _first(found) if self.kserve or isinstance(found, list) else found
            if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                return "bad_score"
            score = float(raw)
        if score is not None and not (math.isfinite(score) and 0.0 <= score <= 1.0):
            return "bad_score"
        return predicted, score

    def _find(self, data: Any, path: Path) -> Any:
        if self.kserve:
            outputs = data.get("outputs") if isinstance(data, dict) else None
            if not isinstance(outputs, list):
                return _MISSING
            name = path[0]
            for output in outputs:
                if isinstance(output, dict) and output.get("name") == name:
                    return output.get("data", _MISSING)
            return _MISSING
        for part in path:
            if isinstance(part, int):
                if not isinstance(data, list) or not -len(data) <= part < len(data):
                    return _MISSING
                data = data[part]
            else:
                if not isinstance(data, dict) or part not in data:
                    return _MISSING
                data = data[part]
        return data


def _first(value: object) -> object:
    """The first element of a (possibly nested) tensor's data; scalars as they are."""
    while isinstance(value, list):
        if not value:
            return _MISSING
        value = value[0]
    return value


def _numbers(value: object) -> list[float] | None:
    """A flat list of numbers (a [1, N] tensor is flattened), else None."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], list):
        value = value[0]
    if not isinstance(value, list) or not value:
        return None
    out: list[float] = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            return None
        out.append(float(item))
    return out


def normalise_label(value: object) -> str | None:
    """A client's label as text ("1", "fraud", "true"), or None if it is not a string,
    integer or boolean."""
    if isinstance(value, float):
        return None  # 0.7 is no class; 1.0 is ambiguous against "1": refuse both
    return as_text(value)
