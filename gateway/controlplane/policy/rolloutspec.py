"""The `rollout` and `experiment` blocks of a routing policy.

`rollout` steps a challenger variant's share of traffic up (1% -> 5% -> ... -> 100%)
while analysis gates hold, rolls it back on the first failed gate, and on completion
moves the registry alias. `experiment` compares variants on outcome feedback
(`POST /v1/feedback`): conversion rates with a two-proportion z-test, rewards with
Welch's t-test. A rollout implies an experiment between its champion and challenger.

Like the rest of the policy schema, models forbid unknown keys and every field has a
description (they flow into `policies/schema.json` and the policy reference). Checks
that need the route's variants live in `rollouts.py` (`rollout_problems`), run by
`check_policies`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.controlplane.policy.fields import Duration, WebURL, problem

Loc = tuple[str | int, ...]
DEFAULT_STEPS: tuple[float, ...] = (1.0, 5.0, 25.0, 50.0, 100.0)
# An alias name as MLflow accepts it (the same rule as `models:/NAME@ALIAS`).
ALIAS_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_-]*$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SignificanceSpec(_Model):
    """Hold promotion until outcome feedback shows the challenger significantly better."""

    p_value: float = Field(
        default=0.05,
        gt=0,
        lt=1,
        description="Promote only once the test's two-sided p-value is below this and the "
        "challenger is ahead; a challenger significantly behind is rolled back.",
    )
    metric: Literal["conversion", "reward"] = Field(
        default="conversion",
        description="What is compared: `conversion` (share of outcome=true feedback, "
        "two-proportion z-test) or `reward` (mean reward, Welch's t-test).",
    )
    min_samples: int = Field(
        default=30,
        ge=2,
        description="Feedback per variant needed before the test counts at all.",
    )


class AnalysisSpec(_Model):
    """The gates checked at every interval of a rollout step."""

    interval: Duration = Field(
        default=60.0,
        description="How often the gates are checked; a step lasts at least one interval.",
    )
    min_requests: int = Field(
        default=100,
        ge=1,
        description="Challenger requests a step needs before its gates are judged; until "
        "then the step waits.",
    )
    max_error_rate: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Largest share of the challenger's upstream attempts that may fail "
        "(5xx, connection errors, timeouts; retried attempts count) during the step.",
    )
    max_p99_latency_ratio: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="Largest challenger p99 request duration as a multiple of the "
        "champion's over the same step (1.2 = at most 20% slower). Leave out: no "
        "latency gate.",
    )
    max_p99_latency: Duration | None = Field(
        default=None,
        description="Largest challenger p99 request duration over the step, absolute "
        "(for example 500ms), whatever the champion does. Leave out: no such gate.",
    )
    min_shadow_agreement: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Smallest agreement (0..1) between the challenger's version, mirrored "
        "as a shadow, and the primary's answers. Leave out: no shadow gate.",
    )
    min_accuracy: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Smallest accuracy of the challenger's version over its rolling labeled "
        "window (labels from POST /v1/feedback, kept by the drift worker: the route needs "
        "a `drift` block); under it, the rollout rolls back. Waits while the window has "
        "fewer than `min_labels` labels or the worker cannot be read. Leave out: no gate.",
    )
    min_labels: int = Field(
        default=50,
        ge=1,
        description="Labels of the challenger's version the accuracy gate needs before it judges.",
    )
    require_significance: SignificanceSpec | None = Field(
        default=None,
        description="Before promotion, require outcome feedback (POST /v1/feedback) to "
        "show the challenger significantly better than the champion.",
    )


class RolloutSpec(_Model):
    """Progressive delivery of a challenger: weight steps, analysis gates, promotion."""

    challenger: str | None = Field(
        default=None,
        description="Name of the variant being rolled out. Default: the second variant.",
    )
    steps: tuple[float, ...] = Field(
        default=DEFAULT_STEPS,
        min_length=1,
        max_length=20,
        description="The challenger's share of the route's traffic at each step, in "
        "percent, increasing (the other weighted variants share the rest in their policy "
        "proportions).",
    )
    analysis: AnalysisSpec = Field(
        default=AnalysisSpec(), description="Gates checked at every interval of a step."
    )
    on_success: Literal["promote", "hold"] = Field(
        default="promote",
        description="After the last step: `promote` points the registry alias "
        "`promote_to` at the challenger's version (recording the previous one for "
        "`switchyard registry rollback`) and returns the route to its policy weights; "
        "`hold` keeps the last step's weights.",
    )
    promote_to: str = Field(
        default="champion",
        pattern=ALIAS_PATTERN,
        description="Registry alias that promotion moves to the challenger's version.",
    )
    webhook: WebURL | None = Field(
        default=None,
        description="URL that receives each rollout event (step, rollback, promotion, "
        "pause, abort) as a JSON POST.",
    )

    @field_validator("steps")
    @classmethod
    def _increasing(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        for i, step in enumerate(value):
            if not 0 < step <= 100:
                raise problem("rollout_steps", f"step {step:g} is not a percentage in (0, 100]")
            if i and step <= value[i - 1]:
                raise problem(
                    "rollout_steps",
                    f"steps must increase: {step:g} comes after {value[i - 1]:g}",
                )
        return value


class ExperimentSpec(_Model):
    """Compare variants on outcome feedback sent to `POST /v1/feedback`."""

    baseline: str | None = Field(
        default=None,
        description="Variant the others are compared with. Default: the rollout's "
        "champion, else the first variant.",
    )
    confidence: float = Field(
        default=0.95,
        gt=0,
        lt=1,
        description="Level of the confidence intervals reported for each difference.",
    )
