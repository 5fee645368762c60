"""One labeled prediction: what a version predicted and the truth a client sent back.

The gateway makes one `LabeledRecord` per accepted `POST /v1/feedback` with a `label`
(any process of the fleet: the signed feedback id carries the prediction, see
`gateway.dataplane.feedback.ids`) and sends it to the one drift worker of the fleet
over the drift channel, as the message kind `labels`. The worker keeps rolling labeled
windows per route and version from them (accuracy, precision/recall/F1, AUC, concept
drift, the retrain triggers). `key` is the feedback id's claim key, the same text the
drift tap puts on that request's sampled row, so the worker can join a label with the
request's features for the labeled window it saves for retraining.

Labels and predictions are kept as text: a class name, "1"/"0", "true"/"false". A
classifier's number is written as JSON would write it (`str(int)` for integers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

_TEXT = ("route", "variant", "version", "predicted", "label", "key")
MAX_TEXT = 255  # bytes of UTF-8 per name or class, as for the signed ids' names


class LabeledRecordError(ValueError):
    """A labeled record that does not parse; the message names the field."""


@dataclass(frozen=True, slots=True)
class LabeledRecord:
    route: str
    variant: str
    version: str  # the registry version that served it ("" when not from a registry)
    predicted: str  # the class the version predicted
    score: float | None  # its probability of the positive class, when it gave one
    label: str  # the true class, from the client
    served_at: float  # Unix time the prediction was served
    labeled_at: float  # Unix time the label was accepted
    key: str  # the feedback id's claim key (joins the label with the request's row)

    @property
    def correct(self) -> bool:
        return self.predicted == self.label

    @property
    def delay(self) -> float:
        """Seconds from the prediction to its label (never negative)."""
        return max(0.0, self.labeled_at - self.served_at)

    def to_json(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "variant": self.variant,
            "version": self.version,
            "predicted": self.predicted,
            "score": self.score,
            "label": self.label,
            "served_at": self.served_at,
            "labeled_at": self.labeled_at,
            "key": self.key,
        }

    @classmethod
    def from_json(cls, data: object) -> LabeledRecord:
        """Parse one record from a datagram; raises LabeledRecordError naming the field."""
        if not isinstance(data, dict):
            raise LabeledRecordError(
                f"a labeled record must be an object, not {type(data).__name__}"
            )
        for name in _TEXT:
            value = data.get(name)
            if not isinstance(value, str):
                raise LabeledRecordError(f"labeled record field {name!r} must be a string")
            if len(value.encode()) > MAX_TEXT:
                raise LabeledRecordError(f"labeled record field {name!r} is over {MAX_TEXT} bytes")
        score = data.get("score")
        if score is not None and (
            isinstance(score, bool)
            or not isinstance(score, (int, float))
            or not math.isfinite(score)
            or not 0.0 <= score <= 1.0
        ):
            raise LabeledRecordError(
                "labeled record field 'score' must be null or a number in [0, 1]"
            )
        times: list[float] = []
        for name in ("served_at", "labeled_at"):
            value = data.get(name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
            ):
                raise LabeledRecordError(
                    f"labeled record field {name!r} must be a number (Unix time)"
                )
            times.append(float(value))
        return cls(
            route=data["route"],
            variant=data["variant"],
            version=data["version"],
            predicted=data["predicted"],
            score=None if score is None else float(score),
            label=data["label"],
            served_at=times[0],
            labeled_at=times[1],
            key=data["key"],
        )
