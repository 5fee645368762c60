"""The statistics of one route, computed from Prometheus samples, whichever source read them.

A sample is what `/metrics` shows and what a PromQL query returns: a name, labels and
a value. `route_stats` turns the samples of one route into plain numbers keyed by the
process that counted them (Prometheus' `instance` label; "" where a source has merged
its processes already):

- per (process, variant, version, backend): responses, failed upstream attempts and
  the request-duration histogram (`Counts`: what the rollout gates judge);
- per (variant, version): outcome feedback (`VariantOutcomes`: what experiment reports
  and the significance gate compare), summed over processes;
- per (process, shadow, version): shadow copies, comparisons by result and copies in
  flight (`ShadowCounts`: shadow agreement).

`window` subtracts the numbers read when a rollout step began from the numbers now,
series by series. Counters only grow, so a counter that went down, a series that
disappeared or a change in the processes behind the numbers means a process restarted,
joined or left: what the step counted is then unknown, and the gate waits instead of
judging numbers that are wrong.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from gateway.dataplane.feedback import VariantOutcomes
from gateway.observability.metrics import DURATION_BUCKETS

REQUESTS = "switchyard_requests_total"
FAILED_ATTEMPTS = "switchyard_upstream_failed_attempts_total"
DURATION_BUCKET = "switchyard_request_duration_seconds_bucket"
OUTCOMES = "switchyard_experiment_outcomes_total"
CONVERSIONS = "switchyard_experiment_conversions_total"
REWARDS = "switchyard_experiment_rewards_total"
REWARD_SUM = "switchyard_experiment_reward_sum"
REWARD_SQUARES = "switchyard_experiment_reward_squares"
SHADOW_REQUESTS = "switchyard_shadow_requests_total"
SHADOW_SKIPPED = "switchyard_shadow_skipped_total"
SHADOW_DROPPED = "switchyard_shadow_dropped_total"
SHADOW_COMPARISONS = "switchyard_shadow_comparisons_total"
SHADOW_IN_FLIGHT = "switchyard_shadow_in_flight"
# Ground truth (gateway.admin.ground_truth reads them; route_stats ignores them).
GROUND_TRUTH_SAMPLES = (
    "switchyard_ground_truth_labels_total",
    "switchyard_ground_truth_score_bucket",
    "switchyard_ground_truth_label_delay_seconds_bucket",
    "switchyard_ground_truth_predictions_captured_total",
    "switchyard_ground_truth_capture_failures_total",
)
# Every sample name a route's statistics read (each carries a `route` label).
ROUTE_SAMPLES = (
    REQUESTS,
    FAILED_ATTEMPTS,
    DURATION_BUCKET,
    OUTCOMES,
    CONVERSIONS,
    REWARDS,
    REWARD_SUM,
    REWARD_SQUARES,
    SHADOW_REQUESTS,
    SHADOW_SKIPPED,
    SHADOW_DROPPED,
    SHADOW_COMPARISONS,
    SHADOW_IN_FLIGHT,
    *GROUND_TRUTH_SAMPLES,
)
# The labels that tell those samples apart; a fleet query sums over every other one.
KEY_LABELS = (
    "instance",
    "variant",
    "version",
    "backend",
    "status_class",
    "le",
    "shadow",
    "outcome",
    "reason",
    "result",
    "predicted",
    "label",
)
# Shadow copies that got no answer to compare: they count as `failed` in agreement.
FAILED_COPIES = frozenset({"connect_error", "timeout", "reset", "invalid_response"})
_BUCKETS = len(DURATION_BUCKETS) + 1
_INDEX = {bound: i for i, bound in enumerate(DURATION_BUCKETS)}

RequestKey = tuple[str, str, str, str]  # (process, variant, version, backend)
ShadowKey = tuple[str, str, str]  # (process, shadow, version)
FeedbackKey = tuple[str, str]  # (variant, version)


@dataclass(frozen=True, slots=True)
class Sample:
    """One Prometheus sample: a name, its labels, a value."""

    name: str
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True, slots=True)
class Counts:
    """What some series counted: responses, failed attempts, duration buckets."""

    responses: int = 0  # requests answered (any status)
    ok_attempts: int = 0  # upstream attempts that ended below 500
    failed_attempts: int = 0  # upstream attempts that failed (5xx, connect, timeout, reset)
    buckets: tuple[int, ...] = (0,) * _BUCKETS

    @property
    def attempts(self) -> int:
        return self.ok_attempts + self.failed_attempts

    @property
    def error_rate(self) -> float:
        return self.failed_attempts / self.attempts if self.attempts else 0.0

    @property
    def negative(self) -> bool:
        """Whether some number is below zero (a difference across a counter reset)."""
        return min(self.responses, self.ok_attempts, self.failed_attempts, *self.buckets) < 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.responses + other.responses,
            self.ok_attempts + other.ok_attempts,
            self.failed_attempts + other.failed_attempts,
            tuple(a + b for a, b in zip(self.buckets, other.buckets, strict=True)),
        )

    def __sub__(self, other: Counts) -> Counts:
        return Counts(
            self.responses - other.responses,
            self.ok_attempts - other.ok_attempts,
            self.failed_attempts - other.failed_attempts,
            tuple(a - b for a, b in zip(self.buckets, other.buckets, strict=True)),
        )


def quantile(
    q: float, buckets: tuple[int, ...], bounds: tuple[float, ...] = DURATION_BUCKETS
) -> float | None:
    """The q-quantile of a histogram (per-bucket counts; the last is +Inf), as
    Prometheus' histogram_quantile estimates it; None without observations."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    running = 0
    for i, count in enumerate(buckets):
        if running + count >= rank and count > 0:
            if i >= len(bounds):  # the +Inf bucket: the highest finite bound
                return bounds[-1]
            lower = bounds[i - 1] if i > 0 else 0.0
            return lower + (bounds[i] - lower) * (rank - running) / count
        running += count
    return bounds[-1]


def _diff(now: Mapping[str, int], base: Mapping[str, int]) -> dict[str, int]:
    keys = set(now) | set(base)
    return {k: now.get(k, 0) - base.get(k, 0) for k in sorted(keys)}


def _plus(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in sorted(set(a) | set(b))}


@dataclass(frozen=True, slots=True)
class ShadowCounts:
    """What one shadow version's copies counted: copies by how they ended, skipped and
    dropped by reason, comparisons by result, and copies in flight (a gauge)."""

    requests: Mapping[str, int] = field(default_factory=dict)
    skipped: Mapping[str, int] = field(default_factory=dict)
    dropped: Mapping[str, int] = field(default_factory=dict)
    comparisons: Mapping[str, int] = field(default_factory=dict)
    in_flight: int = 0

    @property
    def agreed(self) -> int:
        return self.comparisons.get("agree", 0)

    @property
    def compared(self) -> int:
        """Comparisons with a verdict: an unreadable answer counts against agreement."""
        c = self.comparisons
        return c.get("agree", 0) + c.get("disagree", 0) + c.get("uncomparable", 0)

    @property
    def failed(self) -> int:
        """Copies that got no answer to compare."""
        return sum(n for outcome, n in self.requests.items() if outcome in FAILED_COPIES)

    @property
    def negative(self) -> bool:
        values = [*self.requests.values(), *self.skipped.values(), *self.dropped.values()]
        return min([*values, *self.comparisons.values(), 0]) < 0

    def __add__(self, other: ShadowCounts) -> ShadowCounts:
        return ShadowCounts(
            _plus(self.requests, other.requests),
            _plus(self.skipped, other.skipped),
            _plus(self.dropped, other.dropped),
            _plus(self.comparisons, other.comparisons),
            self.in_flight + other.in_flight,
        )

    def __sub__(self, other: ShadowCounts) -> ShadowCounts:
        """The counters' difference; copies in flight are a gauge: the later value."""
        return ShadowCounts(
            _diff(self.requests, other.requests),
            _diff(self.skipped, other.skipped),
            _diff(self.dropped, other.dropped),
            _diff(self.comparisons, other.comparisons),
            self.in_flight,
        )

    def to_json(self) -> dict[str, object]:
        return {
            "in_flight": self.in_flight,
            "requests": dict(sorted(self.requests.items())),
            "skipped": dict(sorted(self.skipped.items())),
            "dropped": dict(sorted(self.dropped.items())),
            "comparisons": dict(sorted(self.comparisons.items())),
        }


@dataclass(frozen=True, slots=True)
class RouteStats:
    """One route's numbers from one read of a source."""

    route: str
    requests: Mapping[RequestKey, Counts] = field(default_factory=dict)
    feedback: Mapping[FeedbackKey, VariantOutcomes] = field(default_factory=dict)
    shadows: Mapping[ShadowKey, ShadowCounts] = field(default_factory=dict)
    # Who counted: Prometheus' instances, or the supervisor's workers and restarts. A
    # change between two reads means a process joined, left or was replaced.
    processes: tuple[str, ...] = ()

    def counts(self, variant: str, version: str) -> Counts:
        """Everything one variant's version counted, over processes and backends."""
        return _select(self.requests, variant, version)

    def served(self, variant: str, version: str) -> int:
        return self.counts(variant, version).responses

    def outcomes(self, variant: str, version: str) -> VariantOutcomes:
        """Feedback counted for one variant's version (zeros if none yet)."""
        found = self.feedback.get((variant, version))
        return found if found is not None else VariantOutcomes(self.route, variant, version)

    def shadow_versions(self) -> dict[tuple[str, str], ShadowCounts]:
        """Per (shadow, version), summed over processes."""
        out: dict[tuple[str, str], ShadowCounts] = {}
        for (_, shadow, version), counts in sorted(self.shadows.items()):
            key = (shadow, version)
            out[key] = out[key] + counts if key in out else counts
        return out


def _select(requests: Mapping[RequestKey, Counts], variant: str, version: str) -> Counts:
    out = Counts()
    for (_, v, ver, _), counts in requests.items():
        if v == variant and ver == version:
            out = out + counts
    return out


def route_stats(route: str, samples: Iterable[Sample], processes: Iterable[str] = ()) -> RouteStats:
    """The numbers of `route` in `samples` (samples of other routes are skipped)."""
    by_class: dict[RequestKey, list[int]] = {}  # responses, ok attempts
    failed: dict[RequestKey, int] = {}
    cumulative: dict[RequestKey, dict[int, int]] = {}
    feedback: dict[FeedbackKey, list[float]] = {}
    shadows: dict[ShadowKey, dict[str, dict[str, int]]] = {}
    in_flight: dict[ShadowKey, int] = {}
    fields = {OUTCOMES: 0, CONVERSIONS: 1, REWARDS: 2, REWARD_SUM: 3, REWARD_SQUARES: 4}
    tables = {
        SHADOW_REQUESTS: ("requests", "outcome"),
        SHADOW_SKIPPED: ("skipped", "reason"),
        SHADOW_DROPPED: ("dropped", "reason"),
        SHADOW_COMPARISONS: ("comparisons", "result"),
    }
    for s in samples:
        labels = s.labels
        if labels.get("route") != route or not math.isfinite(s.value):
            continue
        process = labels.get("instance", "")
        if s.name in (REQUESTS, FAILED_ATTEMPTS, DURATION_BUCKET):
            key = (process, labels.get("variant", ""), labels.get("version", ""))
            rkey: RequestKey = (*key, labels.get("backend", ""))
            n = round(s.value)
            if s.name == REQUESTS:
                slot = by_class.setdefault(rkey, [0, 0])
                status = labels.get("status_class", "")
                if status != "none":
                    slot[0] += n
                if status in ("1xx", "2xx", "3xx", "4xx"):
                    slot[1] += n
            elif s.name == FAILED_ATTEMPTS:
                failed[rkey] = failed.get(rkey, 0) + n
            else:
                index = _bucket_index(labels.get("le", ""))
                if index is not None:
                    found = cumulative.setdefault(rkey, {})
                    found[index] = found.get(index, 0) + n
        elif s.name in fields:
            fkey = (labels.get("variant", ""), labels.get("version", ""))
            sums = feedback.setdefault(fkey, [0.0] * 5)
            sums[fields[s.name]] += s.value
        elif s.name in tables:
            skey: ShadowKey = (process, labels.get("shadow", ""), labels.get("version", ""))
            table, label = tables[s.name]
            counts = shadows.setdefault(skey, {}).setdefault(table, {})
            what = labels.get(label, "")
            counts[what] = counts.get(what, 0) + round(s.value)
        elif s.name == SHADOW_IN_FLIGHT:
            skey = (process, labels.get("shadow", ""), labels.get("version", ""))
            in_flight[skey] = in_flight.get(skey, 0) + round(s.value)
            shadows.setdefault(skey, {})
    requests = {
        key: Counts(
            by_class.get(key, [0, 0])[0],
            by_class.get(key, [0, 0])[1],
            failed.get(key, 0),
            _per_bucket(cumulative.get(key, {})),
        )
        for key in sorted(set(by_class) | set(failed) | set(cumulative))
    }
    outcomes = {
        key: VariantOutcomes(
            route,
            key[0],
            key[1],
            outcomes=round(v[0]),
            conversions=round(v[1]),
            rewards=round(v[2]),
            reward_sum=v[3],
            reward_squares=v[4],
        )
        for key, v in sorted(feedback.items())
    }
    shadow_counts = {
        key: ShadowCounts(
            t.get("requests", {}),
            t.get("skipped", {}),
            t.get("dropped", {}),
            t.get("comparisons", {}),
            in_flight.get(key, 0),
        )
        for key, t in sorted(shadows.items())
    }
    return RouteStats(route, requests, outcomes, shadow_counts, tuple(sorted(processes)))


def _bucket_index(le: str) -> int | None:
    try:
        bound = float(le)
    except ValueError:
        return None
    if bound == math.inf:
        return _BUCKETS - 1
    return _INDEX.get(bound)


def _per_bucket(cumulative: Mapping[int, int]) -> tuple[int, ...]:
    """Per-bucket counts from cumulative `le` buckets (a missing bound carries the last)."""
    out = []
    running = 0
    for i in range(_BUCKETS):
        upto = max(running, cumulative.get(i, running))
        out.append(upto - running)
        running = upto
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Window:
    """What a route's counters counted between two reads, or why that is unknown."""

    requests: Mapping[RequestKey, Counts] = field(default_factory=dict)
    shadows: Mapping[ShadowKey, ShadowCounts] = field(default_factory=dict)
    unknown: str | None = None  # why the counts cannot be known; None when they can

    def counts(self, variant: str, version: str) -> Counts:
        return _select(self.requests, variant, version)

    def agreement(self, version: str | None) -> tuple[int, int]:
        """(agreed, compared) of the shadows mirroring `version` (None: every shadow)."""
        agreed = compared = 0
        for (_, _, ver), counts in self.shadows.items():
            if version is None or ver == version:
                agreed += counts.agreed
                compared += counts.compared
        return agreed, compared


def window(now: RouteStats, base: RouteStats) -> Window:
    """What each series counted since `base`, summed later by the caller; series that
    appeared since count from zero. Unknown when a process restarted, joined or left."""
    if now.processes != base.processes:
        joined = sorted(set(now.processes) - set(base.processes))
        left = sorted(set(base.processes) - set(now.processes))
        parts = [f"{', '.join(joined)} joined"] if joined else []
        parts += [f"{', '.join(left)} left"] if left else []
        return Window(
            unknown="the processes counting changed since the step began "
            f"({'; '.join(parts) or 'restarted'})"
        )
    requests: dict[RequestKey, Counts] = {}
    for key, counts in now.requests.items():
        before = base.requests.get(key)
        requests[key] = counts - before if before is not None else counts
    shadows: dict[ShadowKey, ShadowCounts] = {}
    for skey, scounts in now.shadows.items():
        sbefore = base.shadows.get(skey)
        shadows[skey] = scounts - sbefore if sbefore is not None else scounts
    gone = [k for k in base.requests if k not in now.requests]
    gone_shadows = [k for k in base.shadows if k not in now.shadows]
    down = [k for k, c in requests.items() if c.negative]
    down_shadows = [k for k, c in shadows.items() if c.negative]
    if gone or down:
        process, variant, version, backend = (gone or down)[0]
        where = f"variant {variant} ({version or 'no version'}) via {backend}"
        return Window(unknown=_reset(process, where, bool(gone)))
    if gone_shadows or down_shadows:
        process, shadow, version = (gone_shadows or down_shadows)[0]
        where = f"shadow {shadow} ({version or 'no version'})"
        return Window(unknown=_reset(process, where, bool(gone_shadows)))
    return Window(requests, shadows)


def _reset(process: str, where: str, gone: bool) -> str:
    what = "disappeared" if gone else "went down"
    at = f" on {process}" if process else ""
    return f"a counter of {where}{at} {what} since the step began (a gateway process restarted)"
