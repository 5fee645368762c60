"""Ground truth in the `drift` block: the labeled windows, concept drift, and the four
retrain triggers (`labels` and `triggers`).

The drift worker keeps a rolling window of labeled predictions per route and model
version (labels come from `POST /v1/feedback` with a `label`) and computes accuracy,
precision, recall, F1 and AUC over it. Concept drift compares that window with the
version's reference (its first full labeled window). The triggers start the drift
block's actions (`on_drift`: save the window as Parquet, Kubeflow run, webhook), once
per episode, each with its reason:

- `schedule`: time-based, a cron schedule (UTC);
- `drift`: a data drift or concept drift episode (the drift alert);
- `labeled_samples`: every N new labels of a version (data threshold);
- `accuracy`: the version's window accuracy under a floor (the accuracy SLO).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.controlplane.policy.fields import Duration, problem
from gateway.drift.cron import Cron, CronError


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabelsSpec(_Model):
    """The rolling labeled windows (one per route and model version) and concept drift."""

    size: int = Field(
        default=1000,
        ge=10,
        le=1_000_000,
        description="Most recent labeled predictions kept per route and model version; "
        "the metrics are computed exactly over them.",
    )
    duration: Duration | None = Field(
        default=None,
        description="Labels older than this (by when they were accepted) leave the window "
        "(leave out: only `size` bounds it).",
    )
    min_samples: int = Field(
        default=50,
        ge=1,
        description="A window with fewer labels has no metrics and trips no trigger.",
    )
    every: Duration = Field(
        default=30.0,
        description="How often each labeled window is evaluated (metrics, concept drift, "
        "the accuracy SLO).",
    )
    positive: str = Field(
        default="1",
        min_length=1,
        description="The positive class, as the labels write it: precision, recall, F1 "
        "and AUC are of this class (a prediction's score is its probability).",
    )
    max_accuracy_drop: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="Concept drift: the window's accuracy is this much (absolute) or more "
        "under the accuracy of the version's reference, its first full labeled window.",
    )


class AccuracyTrigger(_Model):
    """The accuracy SLO (the seed's `model_accuracy_current < 0.85`)."""

    min: float = Field(
        gt=0,
        le=1,
        description="The SLO: a labeled window's accuracy under this starts an episode.",
    )
    min_samples: int = Field(
        default=50,
        ge=1,
        description="Labels the window needs before the SLO is judged (no verdict on less).",
    )


class TriggersSpec(_Model):
    """What starts the `on_drift` actions (a retraining run), besides data drift.

    Each trigger acts once per episode and passes its reason (schedule, drift,
    concept_drift, labeled_samples, accuracy) to the Kubeflow run and the webhook."""

    schedule: str | None = Field(
        default=None,
        description="Time-based: a cron schedule in UTC, 5 fields (`0 3 * * 1`: Mondays "
        "03:00), or 6 with seconds first (`*/10 * * * * *`, for tests). Each time, the "
        "newest labeled window of the route is saved and passed on.",
    )
    drift: bool = Field(
        default=True,
        description="Drift alert: a data drift or concept drift episode runs the actions "
        "(false: they are reported, nothing runs).",
    )
    labeled_samples: int | None = Field(
        default=None,
        ge=1,
        description="Data threshold: every this many new labels of a model version, its "
        "labeled window is saved and passed on.",
    )
    accuracy: AccuracyTrigger | None = Field(
        default=None,
        description="Accuracy SLO: the labeled window's accuracy under `min` starts an "
        "episode (with the drift block's cooldown and clear_after).",
    )

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return Cron.parse(value).text
        except CronError as exc:
            raise problem("cron", f"invalid schedule: {exc}") from None
