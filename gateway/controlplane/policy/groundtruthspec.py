"""A route's `ground_truth` block: where its responses say what was predicted.

Part of the routing policy document (`schema.RoutingPolicy.ground_truth`); kept apart
like `flowspec` and `pickerspec`. `compile_ground_truth` turns it into the route's
`gateway.dataplane.feedback.groundtruth.GroundTruth`, which the exchange uses to read
the predicted class out of each buffered response (see docs/ground-truth.md).
"""

from __future__ import annotations

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.controlplane.policy.fields import Duration, problem, split_path
from gateway.dataplane.feedback.groundtruth import MAX_CLASS_BYTES, GroundTruth

Loc = tuple[str | int, ...]
MAX_CLASSES = 50  # metric label values per route: classes (plus "other")


class GroundTruthSpec(BaseModel):
    """Join true labels sent later (`POST /v1/feedback` with `label`) with what each
    version predicted, for accuracy, precision/recall/F1 and AUC per variant and model
    version (`GET /admin/ground-truth/{route}`, the switchyard_ground_truth_* metrics).
    Buffered JSON responses only: a streamed response is not captured."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prediction: str = Field(
        min_length=1,
        description="Where the response holds the predicted class: a JSON path such as "
        '`label` ({"label": "fraud"}) or `choices[0].message.content` (an LLM\'s '
        "answer, trimmed); on kserve-v2 routes the name of an output (its first "
        "element, or with `argmax` its per-class scores).",
    )
    score: str | None = Field(
        default=None,
        description="Where the response holds the probability of the `positive` class "
        "(a JSON path, or a kserve-v2 output name; a list of per-class probabilities in "
        "`classes` order is read at the positive class). Needed for AUC.",
    )
    argmax: bool = Field(
        default=False,
        description="The value at `prediction` is a list of per-class scores in "
        "`classes` order; the predicted class is the one with the highest score (and, "
        "without `score`, the positive class's entry is the score).",
    )
    classes: list[str] = Field(
        min_length=2,
        max_length=MAX_CLASSES,
        description="The classes, as the responses and labels write them (integers and "
        'booleans as text: "1", "true"). Metric labels are bounded to these; any '
        "other predicted or true class is counted as `other`.",
    )
    positive: str | None = Field(
        default=None,
        description="The positive class, for precision, recall, F1 and AUC (binary "
        "metrics); leave out for accuracy and macro-averaged precision/recall/F1 only.",
    )
    max_label_delay: Duration = Field(
        default=86400.0,
        description="Labels later than this after the prediction are refused (404 "
        "request_not_found, saying the label is too late). Duplicate labels are refused "
        "by the feedback claims store for as long (Redis and SQLite stores; the memory "
        "store for --feedback-window).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> GroundTruthSpec:
        seen: set[str] = set()
        for name in self.classes:
            if not name.strip() or name != name.strip():
                raise problem("classes", f"class {name!r}: no empty names or outer spaces")
            if len(name.encode()) > MAX_CLASS_BYTES:
                raise problem("classes", f"class {name!r} is over {MAX_CLASS_BYTES} bytes")
            if name == "other":
                raise problem("classes", "'other' is the label of classes not listed")
            if name in seen:
                raise problem("classes", f"class {name!r} is listed twice")
            seen.add(name)
        return self

    @field_validator("positive")
    @classmethod
    def _positive_is_a_class(cls, value: str | None, info: ValidationInfo) -> str | None:
        classes = info.data.get("classes")
        if value is not None and classes is not None and value not in classes:
            raise problem("positive", f"positive class {value!r} is not one of classes {classes}")
        return value


def ground_truth_problems(spec: GroundTruthSpec | None, protocol: str) -> list[tuple[Loc, str]]:
    """Paths that do not parse (for the route's protocol)."""
    if spec is None:
        return []
    out: list[tuple[Loc, str]] = []
    for name in ("prediction", "score"):
        value = getattr(spec, name)
        if value is None:
            continue
        if protocol == "kserve-v2":
            if not value.strip() or value != value.strip():
                out.append((("ground_truth", name), f"{value!r}: a kserve-v2 output name"))
            continue
        try:
            split_path(value)
        except ValueError as exc:
            out.append((("ground_truth", name), str(exc)))
    return out


def compile_ground_truth(spec: GroundTruthSpec | None, protocol: str) -> GroundTruth | None:
    """The route's compiled block (checked by `ground_truth_problems` before)."""
    if spec is None:
        return None
    kserve = protocol == "kserve-v2"

    def path(value: str) -> tuple[str | int, ...]:
        return (value,) if kserve else split_path(value)

    return GroundTruth(
        prediction=path(spec.prediction),
        score=None if spec.score is None else path(spec.score),
        kserve=kserve,
        argmax=spec.argmax,
        positive=spec.positive,
        classes=tuple(spec.classes),
        max_label_delay=spec.max_label_delay,
    )
