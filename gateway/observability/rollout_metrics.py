"""Rollout and experiment metrics, declared once; part of `GatewayMetrics` (see `metrics.py`).

Plain data read at scrape time: rollout events and webhook deliveries counted by the
rollout controller, the state of each rollout, and outcome feedback with the A/B
statistics computed from it (`gateway.rollout.experiments`). Labels come from the
policies (route, variant) and the resolved versions, never from client input.

Gauges here describe one fact every worker process sees the same way (a rollout's
state comes from the registry) or a statistic that cannot be summed (a p-value), so the
supervisor merges them by maximum (`MAX_MERGED`); the counters are summed as usual.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from gateway.observability.exposition import CounterMetricFamily, GaugeMetricFamily, Metric

# Every state a rollout can be in (a bounded label set).
ROLLOUT_STATES = ("progressing", "paused", "rolled_back", "aborted", "promoted", "completed")

MAX_MERGED = frozenset(
    {
        "switchyard_rollout_step",
        "switchyard_rollout_challenger_percent",
        "switchyard_rollout_state",
        "switchyard_experiment_p_value",
        "switchyard_experiment_lift",
        "switchyard_experiment_reward_mean",
        # Each worker reads the same source: 1 while some worker's last read succeeded.
        "switchyard_stats_source_up",
    }
)


@dataclass(frozen=True, slots=True)
class RolloutGauge:
    """One rollout's state as `/metrics` shows it."""

    route: str
    state: str
    step: int  # 1-based index of the step now serving; 0 once rolled back or aborted
    percent: float  # the challenger's share of traffic now, in percent


@dataclass(frozen=True, slots=True)
class VariantFeedback:
    """Outcome feedback counted for one (route, variant, version)."""

    route: str
    variant: str
    version: str
    outcomes: int
    conversions: int
    rewards: int
    reward_sum: float
    reward_squares: float

    @property
    def reward_mean(self) -> float:
        return self.reward_sum / self.rewards if self.rewards else 0.0


@dataclass(frozen=True, slots=True)
class PairStat:
    """One comparison of a variant with the experiment's baseline."""

    route: str
    variant: str
    baseline: str
    metric: str  # conversion | reward
    p_value: float
    lift: float | None


@dataclass(frozen=True, slots=True)
class SourceGauge:
    """The statistics source of this process (gateway.stats) and how its reads go."""

    source: str  # local | supervisor | prometheus
    up: bool | None  # whether the last read succeeded; None before the first
    errors: int  # reads that failed


@dataclass(eq=False, slots=True)
class RolloutCounters:
    """Counted by the rollout controller; the rest is read through the callables."""

    events: dict[tuple[str, str], int] = field(default_factory=dict)  # (route, event)
    webhooks: dict[tuple[str, str], int] = field(default_factory=dict)  # (route, outcome)
    rollouts: Callable[[], Iterable[RolloutGauge]] | None = None
    feedback: Callable[[], Iterable[VariantFeedback]] | None = None
    pairs: Callable[[], Iterable[PairStat]] | None = None
    feedback_results: Callable[[], Mapping[str, int]] | None = None
    sources: Callable[[], Iterable[SourceGauge]] | None = None

    def count_event(self, route: str, event: str) -> None:
        key = (route, event)
        self.events[key] = self.events.get(key, 0) + 1

    def count_webhook(self, route: str, outcome: str) -> None:
        key = (route, outcome)
        self.webhooks[key] = self.webhooks.get(key, 0) + 1


def rollout_families(counters: RolloutCounters) -> Iterator[Metric]:
    """The rollout and experiment metric families."""
    step = GaugeMetricFamily(
        "switchyard_rollout_step",
        "Step of the route's progressive rollout now serving (1-based; 0 once rolled "
        "back or aborted).",
        labels=["route"],
    )
    percent = GaugeMetricFamily(
        "switchyard_rollout_challenger_percent",
        "The rollout challenger's share of the route's traffic now, in percent.",
        labels=["route"],
    )
    state = GaugeMetricFamily(
        "switchyard_rollout_state",
        "1 for the state the route's rollout is in: progressing, paused, rolled_back, "
        "aborted, promoted, completed.",
        labels=["route", "state"],
    )
    for g in list(counters.rollouts() if counters.rollouts else ()):
        step.add_metric([g.route], g.step)
        percent.add_metric([g.route], g.percent)
        for name in ROLLOUT_STATES:
            state.add_metric([g.route, name], 1.0 if name == g.state else 0.0)
    events = CounterMetricFamily(
        "switchyard_rollout_events",
        "Rollout events by route and kind: started, step, rollback, promoted, completed, "
        "paused, resumed, aborted, restarted.",
        labels=["route", "event"],
    )
    for (route, event), count in sorted(counters.events.items()):
        events.add_metric([route, event], count)
    hooks = CounterMetricFamily(
        "switchyard_rollout_webhooks",
        "Rollout event webhooks by outcome: ok, failed.",
        labels=["route", "outcome"],
    )
    for (route, outcome), count in sorted(counters.webhooks.items()):
        hooks.add_metric([route, outcome], count)
    yield from (step, percent, state, events, hooks)
    yield from _source_families(counters)
    yield from _experiment_families(counters)


def _source_families(counters: RolloutCounters) -> Iterator[Metric]:
    up = GaugeMetricFamily(
        "switchyard_stats_source_up",
        "1 while the last read of the statistics that rollout gates, experiment reports "
        "and shadow agreement judge succeeded, 0 while it fails (gates then wait), by "
        "source: local, supervisor, prometheus.",
        labels=["source"],
    )
    errors = CounterMetricFamily(
        "switchyard_stats_source_errors",
        "Reads of the statistics source that failed: unreachable, erroring, or slower "
        "than its timeout.",
        labels=["source"],
    )
    for g in list(counters.sources() if counters.sources else ()):
        if g.up is not None:
            up.add_metric([g.source], 1.0 if g.up else 0.0)
        errors.add_metric([g.source], g.errors)
    yield from (up, errors)


def _experiment_families(counters: RolloutCounters) -> Iterator[Metric]:
    labels = ["route", "variant", "version"]
    outcomes = CounterMetricFamily(
        "switchyard_experiment_outcomes",
        "Outcome feedback (POST /v1/feedback with `outcome`) per served variant.",
        labels=labels,
    )
    conversions = CounterMetricFamily(
        "switchyard_experiment_conversions",
        "Outcome feedback with outcome=true per served variant.",
        labels=labels,
    )
    rewards = CounterMetricFamily(
        "switchyard_experiment_rewards",
        "Reward feedback (POST /v1/feedback with `reward`) per served variant.",
        labels=labels,
    )
    mean = GaugeMetricFamily(
        "switchyard_experiment_reward_mean", "Mean reward per served variant.", labels=labels
    )
    # Sums merge across processes by adding (the mean does not): what a fleet-wide
    # experiment report or rollout gate reads from Prometheus or the supervisor.
    reward_sum = GaugeMetricFamily(
        "switchyard_experiment_reward_sum",
        "Sum of the rewards fed back per served variant.",
        labels=labels,
    )
    reward_squares = GaugeMetricFamily(
        "switchyard_experiment_reward_squares",
        "Sum of the squared rewards fed back per served variant (for the variance).",
        labels=labels,
    )
    for f in list(counters.feedback() if counters.feedback else ()):
        lv = [f.route, f.variant, f.version]
        outcomes.add_metric(lv, f.outcomes)
        conversions.add_metric(lv, f.conversions)
        rewards.add_metric(lv, f.rewards)
        if f.rewards:
            mean.add_metric(lv, f.reward_mean)
            reward_sum.add_metric(lv, f.reward_sum)
            reward_squares.add_metric(lv, f.reward_squares)
    pair_labels = ["route", "variant", "baseline", "metric"]
    p_value = GaugeMetricFamily(
        "switchyard_experiment_p_value",
        "Two-sided p-value of the variant vs the baseline: two-proportion z-test "
        "(metric=conversion) or Welch's t-test (metric=reward).",
        labels=pair_labels,
    )
    lift = GaugeMetricFamily(
        "switchyard_experiment_lift",
        "Relative difference of the variant vs the baseline (0.1 = 10% better).",
        labels=pair_labels,
    )
    for p in list(counters.pairs() if counters.pairs else ()):
        lv = [p.route, p.variant, p.baseline, p.metric]
        p_value.add_metric(lv, p.p_value)
        if p.lift is not None:
            lift.add_metric(lv, p.lift)
    results = CounterMetricFamily(
        "switchyard_feedback_requests",
        "POST /v1/feedback answers by result: recorded, malformed, unknown, expired, "
        "duplicate, unavailable (the claims store did not answer: not recorded, 503).",
        labels=["result"],
    )
    for result, count in sorted(
        (counters.feedback_results() if counters.feedback_results else {}).items()
    ):
        results.add_metric([result], count)
    yield from (
        outcomes,
        conversions,
        rewards,
        mean,
        reward_sum,
        reward_squares,
        p_value,
        lift,
        results,
    )
