"""A/B experiment reports: outcome feedback per variant, compared with the baseline.

The counts of a report (requests served, outcome feedback) come from the route's
statistics source (`gateway.stats`: this process, the supervisor's merged workers, or
Prometheus over every replica), so every replica reading the same source reports the
same numbers; the statistics from `stats`. Only the versions each variant serves *now*
are reported, so a new challenger version starts a fresh comparison instead of
inheriting its predecessor's conversions.

What this process exports for `/metrics` (`feedback_rows`, `pair_rows`) is its own
`ExposureLog`'s counts: Prometheus and the supervisor sum those over processes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from gateway.controlplane.policy.rollouts import baseline_of
from gateway.controlplane.policy.rolloutspec import SignificanceSpec
from gateway.controlplane.policy.schema import RoutingPolicy
from gateway.dataplane.feedback import ExposureLog, VariantOutcomes
from gateway.dataplane.snapshot import Route, Variant
from gateway.observability.rollout_metrics import PairStat, VariantFeedback
from gateway.rollout.stats import MeanTest, ProportionTest, two_proportion, welch
from gateway.stats.counts import RouteStats


def outcomes_of(log: ExposureLog, route: str, variant: Variant) -> VariantOutcomes:
    """Feedback counted for the version `variant` serves now (zeros if none yet)."""
    key = (route, variant.name, variant.version)
    return log.outcomes.get(key) or VariantOutcomes(*key)


def conversion_test(
    base: VariantOutcomes, other: VariantOutcomes, confidence: float = 0.95
) -> ProportionTest | None:
    return two_proportion(
        base.conversions, base.outcomes, other.conversions, other.outcomes, confidence
    )


def reward_test(base: VariantOutcomes, other: VariantOutcomes) -> MeanTest | None:
    return welch(
        base.reward_mean,
        base.reward_variance,
        base.rewards,
        other.reward_mean,
        other.reward_variance,
        other.rewards,
    )


def report(
    route: Route,
    policy: RoutingPolicy,
    log: ExposureLog,
    stats: RouteStats,
    source: Mapping[str, Any],
) -> dict[str, Any]:
    """`GET /admin/experiments/{route}`: per variant counts, and each variant against
    the baseline (conversion: rates, lift, z, p, confidence interval; reward: means,
    Welch's t, p). Counts from `stats`, read from `source` (described in the answer);
    `awaiting_feedback` is this process's memory of served request ids."""
    confidence = policy.experiment.confidence if policy.experiment is not None else 0.95
    baseline = baseline_of(policy)
    variants = {v.name: v for v in route.variants}
    rows = []
    for v in route.variants:
        got = stats.outcomes(v.name, v.version)
        rows.append(
            {
                "variant": v.name,
                "version": v.version,
                "served": stats.served(v.name, v.version),
                "outcomes": got.outcomes,
                "conversions": got.conversions,
                "conversion_rate": got.conversions / got.outcomes if got.outcomes else None,
                "rewards": got.rewards,
                "reward_mean": got.reward_mean if got.rewards else None,
                "reward_std": math.sqrt(got.reward_variance) if got.rewards > 1 else None,
            }
        )
    comparisons = []
    base_variant = variants.get(baseline)
    base = stats.outcomes(baseline, base_variant.version) if base_variant is not None else None
    for v in route.variants:
        if base is None or v.name == baseline:
            continue
        mine = stats.outcomes(v.name, v.version)
        conversion = conversion_test(base, mine, confidence)
        reward = reward_test(base, mine)
        comparisons.append(
            {
                "variant": v.name,
                "baseline": baseline,
                "conversion": None if conversion is None else _proportion_json(conversion),
                "reward": None if reward is None else _mean_json(reward),
            }
        )
    return {
        "route": route.name,
        "baseline": baseline,
        "confidence": confidence,
        "source": dict(source),
        "variants": rows,
        "comparisons": comparisons,
        "awaiting_feedback": len(log),  # served ids held here, feedback not yet received
        "window_s": log.window,
    }


def significance(
    spec: SignificanceSpec, base: VariantOutcomes, challenger: VariantOutcomes
) -> tuple[str, str, dict[str, Any]]:
    """The significance gate: ("pass" | "wait" | "fail", why, numbers).

    Passes when p < spec.p_value with the challenger ahead, fails when p < spec.p_value
    with the challenger behind (it is significantly worse), waits otherwise.
    """
    if spec.metric == "conversion":
        n_base, n_mine = base.outcomes, challenger.outcomes
    else:
        n_base, n_mine = base.rewards, challenger.rewards
    if min(n_base, n_mine) < spec.min_samples:
        return (
            "wait",
            f"waiting for feedback: {n_mine} (challenger) and {n_base} (champion) of the "
            f"{spec.min_samples} {spec.metric} samples each needs",
            {"challenger_samples": n_mine, "champion_samples": n_base},
        )
    test: ProportionTest | MeanTest | None
    if spec.metric == "conversion":
        test = conversion_test(base, challenger)
    else:
        test = reward_test(base, challenger)
    if test is None:
        return "wait", f"no {spec.metric} difference can be tested yet", {}
    numbers: dict[str, Any] = {
        "metric": spec.metric,
        "p_value": test.p_value,
        "difference": test.difference,
        "lift": test.lift,
        "threshold": spec.p_value,
    }
    if test.p_value >= spec.p_value:
        return (
            "wait",
            f"{spec.metric} difference {test.difference:+.4g} not significant yet "
            f"(p={test.p_value:.4g} >= {spec.p_value:g})",
            numbers,
        )
    if test.difference < 0:
        return (
            "fail",
            f"challenger is significantly worse on {spec.metric}: difference "
            f"{test.difference:+.4g}, p={test.p_value:.4g}",
            numbers,
        )
    return (
        "pass",
        f"challenger is significantly better on {spec.metric}: difference "
        f"{test.difference:+.4g}, p={test.p_value:.4g}",
        numbers,
    )


def feedback_rows(
    routes: dict[str, Route], policies: dict[str, RoutingPolicy], log: ExposureLog
) -> Iterator[VariantFeedback]:
    """Feedback counts of every tracked route's current variant versions (metrics)."""
    for name in policies:
        route = routes.get(name)
        if route is None:
            continue
        for v in route.variants:
            got = outcomes_of(log, name, v)
            yield VariantFeedback(
                name,
                v.name,
                v.version,
                got.outcomes,
                got.conversions,
                got.rewards,
                got.reward_sum,
                got.reward_squares,
            )


def pair_rows(
    routes: dict[str, Route], policies: dict[str, RoutingPolicy], log: ExposureLog
) -> Iterator[PairStat]:
    """p-values and lifts of every tracked route's variants against its baseline."""
    for name, policy in policies.items():
        route = routes.get(name)
        if route is None:
            continue
        baseline = baseline_of(policy)
        base_variant = next((v for v in route.variants if v.name == baseline), None)
        if base_variant is None:
            continue
        base = outcomes_of(log, name, base_variant)
        for v in route.variants:
            if v.name == baseline:
                continue
            mine = outcomes_of(log, name, v)
            conversion = conversion_test(base, mine)
            if conversion is not None:
                yield PairStat(
                    name, v.name, baseline, "conversion", conversion.p_value, conversion.lift
                )
            reward = reward_test(base, mine)
            if reward is not None:
                yield PairStat(name, v.name, baseline, "reward", reward.p_value, reward.lift)


def _proportion_json(test: ProportionTest) -> dict[str, Any]:
    return {
        "baseline_rate": test.baseline_rate,
        "rate": test.challenger_rate,
        "difference": test.difference,
        "lift": test.lift,
        "z": test.z,
        "p_value": test.p_value,
        "ci": [test.ci_low, test.ci_high],
        "confidence": test.confidence,
    }


def _mean_json(test: MeanTest) -> dict[str, Any]:
    return {
        "baseline_mean": test.baseline_mean,
        "mean": test.challenger_mean,
        "difference": test.difference,
        "lift": test.lift,
        "t": test.t,
        "dof": test.dof,
        "p_value": test.p_value,
    }
