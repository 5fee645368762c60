"""Weight overrides: the layer a rollout puts between the policy files and the compiler.

A rollout never edits a policy file and never mutates a live snapshot: it hands the
reloader a map (route, variant) -> weight, and every compile from then on (policy
reload, alias move, EndpointSlice change, or the rollout's own step) applies the map to
copies of the policies before building the snapshot. So a step is one more build-then-
swap, and a policy reload in the middle of a rollout keeps the rollout's weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from gateway.controlplane.policy.loader import LoadedPolicy
from gateway.controlplane.policy.schema import RoutingPolicy

VariantKey = tuple[str, str]  # (route, variant name)
Weights = Mapping[VariantKey, float]


def with_weights(loaded: Iterable[LoadedPolicy], weights: Weights | None) -> list[LoadedPolicy]:
    """`loaded` with the overridden variant weights applied (copies; inputs untouched).

    An override set that would leave a route with no weight at all is ignored for that
    route: the policy's own weights serve rather than nothing.
    """
    out: list[LoadedPolicy] = []
    for item in loaded:
        policy = item.policy
        if weights and any((policy.route, v.name) in weights for v in policy.variants):
            changed = _reweighted(policy, weights)
            if changed is not None:
                item = LoadedPolicy(changed, item.source)
        out.append(item)
    return out


def _reweighted(policy: RoutingPolicy, weights: Weights) -> RoutingPolicy | None:
    variants = [
        v.model_copy(update={"weight": weights.get((policy.route, v.name), v.weight)})
        for v in policy.variants
    ]
    if sum(v.weight for v in variants) <= 0:
        return None
    return policy.model_copy(update={"variants": variants})


def step_weights(policy: RoutingPolicy, challenger: str, percent: float) -> dict[VariantKey, float]:
    """Weights giving `challenger` `percent` of the route's traffic.

    The other weighted variants share the rest in their policy proportions; weight-0
    variants (override-only) stay at 0. Weights are percentages, so the admin API's
    `share` reads as the step.
    """
    others = [v for v in policy.variants if v.name != challenger and v.weight > 0]
    total = sum(v.weight for v in others)
    rest = max(0.0, 100.0 - percent)
    out: dict[VariantKey, float] = {(policy.route, challenger): float(percent)}
    for v in others:
        out[(policy.route, v.name)] = rest * v.weight / total if total else 0.0
    return out


def rolled_back_weights(policy: RoutingPolicy, challenger: str) -> dict[VariantKey, float]:
    """The challenger out of the split (0), every other variant at its policy weight."""
    return {(policy.route, challenger): 0.0}
