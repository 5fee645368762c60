"""A route's `rollout` and `experiment` blocks read against its variants.

Which variant is the challenger, which the baseline, whether the route tracks feedback,
and what the blocks get wrong about the variants (`rollout_problems`, run by
`check_policies`). The blocks themselves are declared in `rolloutspec.py`.
"""

from __future__ import annotations

from gateway.controlplane.policy.fields import split_target
from gateway.controlplane.policy.rolloutspec import Loc
from gateway.controlplane.policy.schema import RoutingPolicy


def challenger_of(policy: RoutingPolicy) -> str | None:
    """The rollout's challenger variant name (explicit, else the second variant)."""
    rollout = policy.rollout
    if rollout is None:
        return None
    if rollout.challenger is not None:
        return rollout.challenger
    return policy.variants[1].name if len(policy.variants) > 1 else None


def baseline_of(policy: RoutingPolicy) -> str:
    """The variant an experiment compares the others with."""
    if policy.experiment is not None and policy.experiment.baseline is not None:
        return policy.experiment.baseline
    challenger = challenger_of(policy)
    for variant in policy.variants:
        if variant.name != challenger and (challenger is None or variant.weight > 0):
            return variant.name
    return policy.variants[0].name


def tracks_feedback(policy: RoutingPolicy) -> bool:
    """Whether the route remembers who served each request (for `POST /v1/feedback`)."""
    return policy.rollout is not None or policy.experiment is not None


def rollout_problems(policy: RoutingPolicy) -> list[tuple[Loc, str]]:
    """What the `rollout` and `experiment` blocks get wrong about the route's variants."""
    out: list[tuple[Loc, str]] = []
    names = [v.name for v in policy.variants]
    shown = ", ".join(names)
    experiment = policy.experiment
    if experiment is not None and experiment.baseline not in (None, *names):
        message = f"no variant named {experiment.baseline!r} (variants: {shown})"
        out.append((("experiment", "baseline"), message))
    rollout = policy.rollout
    if rollout is None:
        return out
    if rollout.analysis.min_accuracy is not None and policy.drift is None:
        message = (
            "the accuracy gate reads the drift worker's labeled windows: the route needs a "
            "`drift` block (and labels: a `ground_truth` block)"
        )
        out.append((("rollout", "analysis", "min_accuracy"), message))
    challenger = challenger_of(policy)
    if challenger is None:
        out.append((("rollout",), "a rollout needs at least two variants"))
        return out
    if challenger not in names:
        out.append(
            (("rollout", "challenger"), f"no variant named {challenger!r} (variants: {shown})")
        )
        return out
    others = [v for v in policy.variants if v.name != challenger and v.weight > 0]
    if not others:
        out.append(
            (
                ("rollout", "challenger"),
                f"no other variant has a weight above 0: rolling {challenger!r} back "
                "would leave the route nothing to serve",
            )
        )
    if rollout.on_success == "promote":
        spec = policy.variants[names.index(challenger)]
        if spec.target is None:
            message = (
                f"on_success: promote moves a registry alias, but variant {challenger!r} "
                "has no `target` (models:/NAME@ALIAS); use on_success: hold"
            )
            out.append((("rollout", "on_success"), message))
        elif split_target(spec.target)[1] == rollout.promote_to:
            message = (
                f"variant {challenger!r} already follows @{rollout.promote_to}: promotion "
                "would move the alias onto itself"
            )
            out.append((("rollout", "promote_to"), message))
        else:
            model = split_target(spec.target)[0]
            wanted = f"models:/{model}@{rollout.promote_to}"
            if not any(v.target == wanted for v in policy.variants if v.name != challenger):
                message = (
                    f"on_success: promote moves {wanted}, but no other variant follows it: "
                    "the route would never serve the promoted version as its champion"
                )
                out.append((("rollout", "promote_to"), message))
    return out
