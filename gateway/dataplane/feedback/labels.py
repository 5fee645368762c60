"""True labels: a `POST /v1/feedback` with `label`, joined with what was predicted.

The id a label comes with must be the response's `x-switchyard-feedback-id` of a route
with a `ground_truth` block: its version 2 (`fb2.`) carries the predicted class and
score (see `ids`), so any process of the fleet joins the label with the prediction
from the id alone. `check` refuses what cannot be joined, with a 4xx naming why;
`record` counts an accepted (claimed) label in this process's metrics and hands a
`LabeledRecord` to the drift tap, for the fleet's drift worker.
"""

from __future__ import annotations

import time
from typing import Any

from gateway.dataplane.feedback.groundtruth import GroundTruth
from gateway.dataplane.feedback.ids import SignedFeedback
from gateway.dataplane.snapshot import RuntimeSnapshot
from gateway.drift.labeled import LabeledRecord
from gateway.drift.tap import Tap
from gateway.errors import BadRequest, RequestExpired, UnknownRequest
from gateway.observability.ground_truth_metrics import GroundTruthMetrics


def no_signed_id(rid: bytes) -> UnknownRequest:
    """A label by a plain id this process cannot tie to a signed one."""
    shown = rid.decode("utf-8", "replace")
    return UnknownRequest(
        f"request {shown!r} is unknown for a label: labels are joined by the response's "
        "x-switchyard-feedback-id ('fb2.' ids of routes with a ground_truth block), which "
        "any gateway process accepts",
        param="request_id",
    )


def check(snap: RuntimeSnapshot, signed: SignedFeedback, rid: bytes, now: float) -> GroundTruth:
    """The ground truth block the label of `signed` is for; 400 when the route takes no
    labels or the id carries no prediction, 404 (RequestExpired) when the label is too late."""
    shown = rid.decode("utf-8", "replace")
    route = snap.routes.get(signed.route)
    truth = route.ground_truth if route is not None else None
    if truth is None:
        raise BadRequest(
            f"route {signed.route!r} of request {shown!r} takes no labels: its policy has no "
            "`ground_truth` block (send outcome or reward instead)",
            param="label",
        )
    if signed.predicted is None:
        raise BadRequest(
            f"request {shown!r} carries no prediction to join the label with: send the "
            "x-switchyard-feedback-id header of the response (it starts with 'fb2.' once "
            "the prediction was read); a response without it was not captured (streamed, "
            "an error, or no prediction where the route's ground_truth.prediction says: "
            "see switchyard_ground_truth_capture_failures_total)",
            param="request_id",
        )
    age = now - signed.served_at
    if age > truth.max_label_delay:
        raise RequestExpired(
            f"the label for request {shown!r} is too late: it was served {age:.0f}s ago and "
            f"route {signed.route!r} takes labels for {truth.max_label_delay:g}s "
            "(ground_truth.max_label_delay)",
            param="request_id",
        )
    return truth


def record(
    metrics: GroundTruthMetrics,
    tap: Tap,
    truth: GroundTruth,
    signed: SignedFeedback,
    label: str,
    labeled_at: float | None = None,
) -> dict[str, Any]:
    """Count one claimed label and send it to the drift worker; the reply's fields."""
    predicted = signed.predicted or ""
    now = time.time() if labeled_at is None else labeled_at
    delay = max(0.0, now - signed.served_at)
    metrics.labeled(
        (signed.route, signed.variant, signed.version),
        truth.bounded(predicted),
        truth.bounded(label),
        signed.score,
        delay,
    )
    tap.offer_label(
        LabeledRecord(
            route=signed.route,
            variant=signed.variant,
            version=signed.version,
            predicted=predicted,
            score=signed.score,
            label=label,
            served_at=signed.served_at,
            labeled_at=now,
            key=signed.key.decode(),
        )
    )
    return {
        "label": label,
        "predicted": predicted,
        "score": signed.score,
        "correct": predicted == label,
        "label_delay_s": round(delay, 3),
    }
