"""The quota and budget metrics, declared once; part of `GatewayMetrics`.

Plain integers bumped on the event loop by the admission check and the reconcile at a
response's end (`gateway.dataplane.quota`) and by the quota store's lease task
(`gateway.quota.sync`), rendered at scrape time. Labels are key names, tenants, routes
and model versions from the keys file and the policies, never the key itself nor any
client input, so their number is bounded by those files.

Cost is counted in picodollars (1e-12 USD: a price per million tokens times a token
count is a whole number of them for any price with up to six decimals) and exported in
USD.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from gateway.observability.exposition import CounterMetricFamily, GaugeMetricFamily, Metric

PICO = 1_000_000_000_000  # picodollars per USD


@dataclass(eq=False, slots=True)
class UsageSeries:
    """What one key used on one route and model version (this process)."""

    key: str
    tenant: str
    route: str
    version: str
    requests: int = 0  # requests reconciled (answered)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: int = 0  # picodollars


@dataclass(eq=False, slots=True)
class Tally:
    """Requests admitted for one key on one route (kept across keys file reloads)."""

    count: int = 0


@dataclass(frozen=True, slots=True)
class Remaining:
    """One budget meter's remaining spend, for the gauge (read at scrape time)."""

    key: str  # "" for a tenant's budget
    tenant: str
    route: str  # a route name or "*"
    period: str  # "day" | "month"
    usd: float


@dataclass(eq=False, slots=True)
class QuotaMetrics:
    """Counters of this process's quota checks and its lease task."""

    # (key, tenant, route, version) -> usage
    usage: dict[tuple[str, str, str, str], UsageSeries] = field(default_factory=dict)
    # (key, tenant, route) -> requests admitted
    admitted: dict[tuple[str, str, str], Tally] = field(default_factory=dict)
    # (key, tenant, route, result, limit) -> requests refused; result: limited |
    # unavailable; limit: rpm | tpm | budget_day | budget_month
    decisions: dict[tuple[str, str, str, str, str], int] = field(default_factory=dict)
    refills: int = 0  # lease batches taken from the store that granted something
    returned: int = 0  # lease batches that gave unused units back
    store_errors: dict[str, int] = field(default_factory=dict)  # reason -> count
    store_up: int = -1  # 1 up, 0 down, -1 no store (limits per process)
    # Budget meters' remaining spend (set by the key checker), read at scrape time.
    remaining: Callable[[], list[Remaining]] | None = None

    def series(self, key: str, tenant: str, route: str, version: str) -> UsageSeries:
        ident = (key, tenant, route, version)
        found = self.usage.get(ident)
        if found is None:
            found = self.usage[ident] = UsageSeries(key, tenant, route, version)
        return found

    def tally(self, key: str, tenant: str, route: str) -> Tally:
        ident = (key, tenant, route)
        found = self.admitted.get(ident)
        if found is None:
            found = self.admitted[ident] = Tally()
        return found

    def decided(self, key: str, tenant: str, route: str, result: str, limit: str) -> None:
        ident = (key, tenant, route, result, limit)
        self.decisions[ident] = self.decisions.get(ident, 0) + 1


def quota_families(q: QuotaMetrics) -> Iterator[Metric]:
    decisions = CounterMetricFamily(
        "switchyard_quota_requests",
        "Requests of keys with limits, by key name, tenant, route and result: admitted, "
        "limited (429; `limit` says which: rpm, tpm, budget_day, budget_month) or "
        "unavailable (503: the quota store is down under --quota-redis-down closed).",
        labels=["key", "tenant", "route", "result", "limit"],
    )
    for (key, tenant, route), tally in sorted(q.admitted.items()):
        decisions.add_metric([key, tenant, route, "admitted", ""], tally.count)
    for decided, count in sorted(q.decisions.items()):
        decisions.add_metric(list(decided), count)
    labels = ["key", "tenant", "route", "version"]
    tokens = CounterMetricFamily(
        "switchyard_quota_tokens",
        "Tokens charged to keys with limits, as the backends' usage reported them (the "
        "estimate where a response reported none), by kind: prompt, completion.",
        labels=[*labels, "kind"],
    )
    cost = CounterMetricFamily(
        "switchyard_quota_cost_usd",
        "Spend charged to keys with limits in USD: tokens times the keys file's price "
        "for the route and model version that served.",
        labels=labels,
    )
    for s in list(q.usage.values()):
        at = [s.key, s.tenant, s.route, s.version]
        tokens.add_metric([*at, "prompt"], s.prompt_tokens)
        tokens.add_metric([*at, "completion"], s.completion_tokens)
        cost.add_metric(at, s.cost / PICO)
    remaining = GaugeMetricFamily(
        "switchyard_quota_budget_remaining_usd",
        "Spend left in the current UTC day or month of each budget (key empty for a "
        "tenant's), as this process knows it (with a quota store: the fleet's, as of the "
        "last lease refill).",
        labels=["key", "tenant", "route", "period"],
    )
    if q.remaining is not None:
        for r in q.remaining():
            remaining.add_metric([r.key, r.tenant, r.route, r.period], r.usd)
    refills = CounterMetricFamily(
        "switchyard_quota_lease_refills",
        "Lease batches taken from the quota store that granted units to this process.",
    )
    refills.add_metric([], q.refills)
    returned = CounterMetricFamily(
        "switchyard_quota_lease_returns",
        "Lease batches that gave units this process did not use back to the quota store.",
    )
    returned.add_metric([], q.returned)
    errors = CounterMetricFamily(
        "switchyard_quota_store_errors",
        "Quota store round trips that failed, by reason: timeout, error.",
        labels=["reason"],
    )
    for reason, count in sorted(q.store_errors.items()):
        errors.add_metric([reason], count)
    up = GaugeMetricFamily(
        "switchyard_quota_store_up",
        "1 while the quota store (--quota-store) answers, 0 while it is down; absent "
        "without a store (limits per process).",
    )
    if q.store_up >= 0:
        up.add_metric([], q.store_up)
    yield from (decisions, tokens, cost, remaining, refills, returned, errors, up)
