"""A/B statistics: two-proportion z-test with a confidence interval, and Welch's t-test.

Pure functions of counts (scipy.stats for the distributions), used by the experiments
view, the metrics and the rollout's significance gate; never on the request path.
scipy is imported when first needed (it takes most of a second), and `warm_up` lets the
process import it in a thread before the first scrape would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ProportionTest:
    """Challenger vs baseline conversion: pooled two-proportion z-test (two-sided)."""

    baseline_rate: float
    challenger_rate: float
    difference: float  # challenger - baseline
    lift: float | None  # difference / baseline rate; None when the baseline rate is 0
    z: float
    p_value: float
    ci_low: float  # confidence interval of the difference (unpooled Wald)
    ci_high: float
    confidence: float


@dataclass(frozen=True, slots=True)
class MeanTest:
    """Challenger vs baseline mean reward: Welch's unequal-variances t-test (two-sided)."""

    baseline_mean: float
    challenger_mean: float
    difference: float
    lift: float | None
    t: float
    dof: float
    p_value: float


def warm_up() -> None:
    """Import scipy.stats now (call from a thread at start-up)."""
    import scipy.stats  # noqa: F401


def two_proportion(
    baseline_successes: int,
    baseline_n: int,
    challenger_successes: int,
    challenger_n: int,
    confidence: float = 0.95,
) -> ProportionTest | None:
    """The z-test of two conversion rates; None while either side has no samples.

    z = (p2 - p1) / sqrt(p (1 - p) (1/n1 + 1/n2)) with the pooled p; the interval is
    (p2 - p1) +- z_{(1+c)/2} sqrt(p1 (1 - p1) / n1 + p2 (1 - p2) / n2). With identical
    all-or-nothing rates the standard error is 0: z = 0 and p = 1 (no evidence).
    """
    from scipy import stats

    if baseline_n <= 0 or challenger_n <= 0:
        return None
    p1 = baseline_successes / baseline_n
    p2 = challenger_successes / challenger_n
    pooled = (baseline_successes + challenger_successes) / (baseline_n + challenger_n)
    se = math.sqrt(pooled * (1 - pooled) * (1 / baseline_n + 1 / challenger_n))
    diff = p2 - p1
    if se > 0:
        z = diff / se
        p_value = float(2 * stats.norm.sf(abs(z)))
    else:
        z, p_value = 0.0, 1.0
    quantile = float(stats.norm.ppf((1 + confidence) / 2))
    se_diff = math.sqrt(p1 * (1 - p1) / baseline_n + p2 * (1 - p2) / challenger_n)
    return ProportionTest(
        baseline_rate=p1,
        challenger_rate=p2,
        difference=diff,
        lift=diff / p1 if p1 > 0 else None,
        z=z,
        p_value=p_value,
        ci_low=diff - quantile * se_diff,
        ci_high=diff + quantile * se_diff,
        confidence=confidence,
    )


def welch(
    baseline_mean: float,
    baseline_var: float,
    baseline_n: int,
    challenger_mean: float,
    challenger_var: float,
    challenger_n: int,
) -> MeanTest | None:
    """Welch's t-test from summary statistics; None with fewer than two samples a side
    or no variance at all."""
    from scipy import stats

    if baseline_n < 2 or challenger_n < 2:
        return None
    se2 = baseline_var / baseline_n + challenger_var / challenger_n
    if se2 <= 0:
        return None
    result = stats.ttest_ind_from_stats(
        challenger_mean,
        math.sqrt(challenger_var),
        challenger_n,
        baseline_mean,
        math.sqrt(baseline_var),
        baseline_n,
        equal_var=False,
    )
    # Welch-Satterthwaite degrees of freedom, reported beside the statistic.
    dof = se2**2 / (
        (baseline_var / baseline_n) ** 2 / (baseline_n - 1)
        + (challenger_var / challenger_n) ** 2 / (challenger_n - 1)
    )
    diff = challenger_mean - baseline_mean
    return MeanTest(
        baseline_mean=baseline_mean,
        challenger_mean=challenger_mean,
        difference=diff,
        lift=diff / abs(baseline_mean) if baseline_mean else None,
        t=float(result.statistic),
        dof=dof,
        p_value=float(result.pvalue),
    )
