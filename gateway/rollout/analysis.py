"""Rollout analysis: what a step's traffic says, and whether the gates hold.

The numbers come from the route's statistics source (`gateway.stats`): this process's
own counters, the supervisor's merged `/metrics` under `--workers N`, or Prometheus over
every replica. The controller subtracts the totals read when the step began from the
totals now (`gateway.stats.counts.window`) and hands the difference here: responses and
failed upstream attempts of challenger and champion, their request-duration histograms
(p99 from the buckets the way Prometheus' `histogram_quantile` computes it), and the
shadow comparisons of the challenger's version. The accuracy gate reads the drift
worker's rolling labeled window of the challenger's version instead (`accuracy.py`):
ground truth, fleet-wide, over every label of that version so far (not only the step).

A verdict is `pass` (step up), `fail` (roll back, with the gate that failed) or `wait`
(not enough traffic yet, or a gate that has no data yet): gates are judged only once
the challenger has served `min_requests` in the step, so a handful of early requests
cannot roll a good challenger back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gateway.controlplane.policy.rolloutspec import AnalysisSpec
from gateway.stats.counts import Counts, quantile

__all__ = ["Counts", "Gate", "LabeledAccuracy", "Outcome", "Verdict", "judge", "quantile"]

Outcome = Literal["pass", "fail", "wait"]


@dataclass(frozen=True, slots=True)
class Gate:
    """One gate's result: its name, the value seen, the limit, and whether it held."""

    name: str
    outcome: Outcome
    value: float | None
    limit: float
    detail: str

    def to_json(self) -> dict[str, object]:
        return {
            "gate": self.name,
            "outcome": self.outcome,
            "value": self.value,
            "limit": self.limit,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class LabeledAccuracy:
    """The challenger's version's labeled window: correct predictions of `labeled`."""

    correct: int
    labeled: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one interval's analysis concluded about the step."""

    outcome: Outcome
    reason: str
    challenger: Counts
    champion: Counts
    gates: tuple[Gate, ...] = field(default=())

    def summary(self) -> dict[str, object]:
        """The numbers an event or the status view shows."""
        p99 = quantile(0.99, self.challenger.buckets)
        base = quantile(0.99, self.champion.buckets)
        return {
            "challenger_requests": self.challenger.responses,
            "challenger_error_rate": round(self.challenger.error_rate, 6),
            "challenger_p99_s": None if p99 is None else round(p99, 6),
            "champion_requests": self.champion.responses,
            "champion_p99_s": None if base is None else round(base, 6),
            "gates": [g.to_json() for g in self.gates],
        }


def judge(
    spec: AnalysisSpec,
    challenger: Counts,
    champion: Counts,
    *,
    champion_p99: float | None = None,
    shadow: tuple[int, int] | None = None,
    accuracy: LabeledAccuracy | None = None,
) -> Verdict:
    """Apply the gates to a step's window.

    `champion_p99` stands in when the champion served nothing in the window (at 100%
    it gets no traffic): the last p99 it showed. `shadow` is (agreed, compared);
    `accuracy` the challenger version's labeled window (None: not known, the gate waits).
    """
    if challenger.responses < spec.min_requests:
        reason = (
            f"waiting for traffic: the challenger served {challenger.responses} of the "
            f"{spec.min_requests} requests the step needs"
        )
        return Verdict("wait", reason, challenger, champion)
    gates: list[Gate] = []
    rate = challenger.error_rate
    gates.append(
        Gate(
            "error_rate",
            "pass" if rate <= spec.max_error_rate else "fail",
            rate,
            spec.max_error_rate,
            f"{challenger.failed_attempts} of {challenger.attempts} upstream attempts failed",
        )
    )
    if spec.max_p99_latency_ratio is not None:
        gates.append(_latency_gate(spec.max_p99_latency_ratio, challenger, champion, champion_p99))
    if spec.max_p99_latency is not None:
        gates.append(_p99_gate(spec.max_p99_latency, challenger))
    if spec.min_shadow_agreement is not None:
        gates.append(_shadow_gate(spec.min_shadow_agreement, shadow))
    if spec.min_accuracy is not None:
        gates.append(_accuracy_gate(spec.min_accuracy, spec.min_labels, accuracy))
    failed = next((g for g in gates if g.outcome == "fail"), None)
    if failed is not None:
        return Verdict(
            "fail",
            f"gate {failed.name} failed: {failed.detail}",
            challenger,
            champion,
            tuple(gates),
        )
    waiting = next((g for g in gates if g.outcome == "wait"), None)
    if waiting is not None:
        return Verdict(
            "wait", f"gate {waiting.name}: {waiting.detail}", challenger, champion, tuple(gates)
        )
    return Verdict("pass", "every gate held", challenger, champion, tuple(gates))


def _latency_gate(
    limit: float, challenger: Counts, champion: Counts, fallback: float | None
) -> Gate:
    mine = quantile(0.99, challenger.buckets)
    theirs = quantile(0.99, champion.buckets)
    if theirs is None:
        theirs = fallback
    if mine is None or theirs is None or theirs <= 0:
        # Nothing to compare with (a champion that never served): the gate cannot fail.
        return Gate("p99_latency_ratio", "pass", None, limit, "no champion latency to compare with")
    ratio = mine / theirs
    return Gate(
        "p99_latency_ratio",
        "pass" if ratio <= limit else "fail",
        ratio,
        limit,
        f"challenger p99 {mine * 1000:.1f} ms vs champion {theirs * 1000:.1f} ms",
    )


def _p99_gate(limit: float, challenger: Counts) -> Gate:
    mine = quantile(0.99, challenger.buckets)
    if mine is None:
        return Gate("p99_latency", "wait", None, limit, "no challenger latency yet")
    return Gate(
        "p99_latency",
        "pass" if mine <= limit else "fail",
        mine,
        limit,
        f"challenger p99 {mine * 1000:.1f} ms, limit {limit * 1000:.1f} ms",
    )


def _shadow_gate(limit: float, shadow: tuple[int, int] | None) -> Gate:
    if shadow is None or shadow[1] == 0:
        return Gate(
            "shadow_agreement",
            "wait",
            None,
            limit,
            "no shadow comparisons of the challenger's version yet (mirror it with a "
            "`shadow` entry to feed this gate)",
        )
    agreed, compared = shadow
    share = agreed / compared
    return Gate(
        "shadow_agreement",
        "pass" if share >= limit else "fail",
        share,
        limit,
        f"{agreed} of {compared} mirrored answers agreed",
    )


def _accuracy_gate(limit: float, min_labels: int, accuracy: LabeledAccuracy | None) -> Gate:
    if accuracy is None or accuracy.labeled < min_labels:
        have = 0 if accuracy is None else accuracy.labeled
        return Gate(
            "accuracy",
            "wait",
            None,
            limit,
            f"{have} of the {min_labels} labels of the challenger's version the gate needs "
            "(the drift worker's labeled window; labels come from POST /v1/feedback)",
        )
    share = accuracy.correct / accuracy.labeled
    return Gate(
        "accuracy",
        "pass" if share >= limit else "fail",
        share,
        limit,
        f"{accuracy.correct} of {accuracy.labeled} labeled predictions correct",
    )
