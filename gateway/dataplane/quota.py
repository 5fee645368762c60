"""Quotas and budgets of client API keys: rpm, tpm and spend, checked per request.

A key (and the tenant it belongs to) may carry limits per route (or `*`): requests per
window (`rpm`), tokens per window (`tpm`, prompt + completion) and spend per UTC day and
month (`budget`). Each limit of each owner on each route pattern is one `Meter`: a
counter of what was spent in the current window, and what this process may spend.

Per request (`Quotas.admit`, from the proxy once the route is decided): the request is
pre-charged from an estimate (prompt text / 4, plus `max_tokens` or the keys file's
`default_max_tokens`; its cost at the price of the decided version) against every meter
that applies, and admitted only if each allows it; else 429 with `Retry-After`, naming
the limit and the key (by name). When the response ends (`Charge.settle`, from the
exchange) the charge is reconciled to the usage the backend reported: the difference
is refunded or charged, at the price of the version that served.

Without a quota store a process holds each whole limit itself (exact, per process).
With one (`gateway.quota.sync`, Redis), a meter's allowance in this process is the
lease the store granted (`granted`), refilled in batches off the request path; while
the store's pool is not known to be dry a process may run ahead of its lease by a
small credit (`limit / (50 x processes)`), which its next refill pays; with the store
down the configured mode decides (`--quota-redis-down open`: the lease held or an even
share of the limit, `closed`: the lease held, then 503). Nothing here waits on the
store: the request path reads numbers the lease task keeps current.

Costs are whole picodollars (1e-12 USD); prices per million tokens become picodollars
per token. A native module (compiled with the request path): concrete classes only.
"""

from __future__ import annotations

import calendar
import math
import time
from typing import Any, Final

from gateway.dataplane.scorers import max_tokens_of
from gateway.errors import QuotaExceeded, QuotaStoreDown
from gateway.observability.quota_metrics import PICO, QuotaMetrics, Remaining, Tally, UsageSeries

RPM: Final = 0
TPM: Final = 1
DAY: Final = 2
MONTH: Final = 3
KIND_NAMES: Final = ("rpm", "tpm", "budget_day", "budget_month")
_CODES: Final = ("rpm_limit_exceeded", "tpm_limit_exceeded", "budget_exceeded", "budget_exceeded")
DAY_SECONDS: Final = 86400.0

# A key's `priority`: an integer 0..9 (larger is served first) or one of the names of
# `flow_metrics.PRIORITY_NAMES`.
DEFAULT_PRIORITY: Final = 1
# Completion tokens assumed for a request that names no max_tokens (keys file:
# `default_max_tokens`).
DEFAULT_MAX_TOKENS: Final = 256
# Run-ahead credit of a process over its lease: 1/CREDIT_SHARE of a limit across the
# fleet (2%), so the fleet over-admits by at most that when every process uses it.
CREDIT_SHARE: Final = 50
_EMBEDDING_PATHS: Final = frozenset({b"/v1/embeddings", b"/api/embed", b"/api/embeddings"})


class Price:
    """Picodollars per prompt and per completion token (USD per 1M tokens x 1e6)."""

    def __init__(self, prompt: int, completion: int) -> None:
        self.prompt = prompt
        self.completion = completion


FREE: Final = Price(0, 0)


def window_bounds(kind: int, window: float, wall: float) -> tuple[int, float]:
    """The id of the window `wall` falls in and the wall-clock time it ends."""
    if kind == DAY:
        day = int(wall // DAY_SECONDS)
        return day, (day + 1) * DAY_SECONDS
    if kind == MONTH:
        t = time.gmtime(wall)
        year, month = t.tm_year, t.tm_mon
        ends = calendar.timegm((year + month // 12, month % 12 + 1, 1, 0, 0, 0))
        return year * 12 + month - 1, float(ends)
    wid = int(wall // window)
    return wid, (wid + 1) * window


class Meter:
    """One limit of one owner (a key or a tenant) on one route pattern, in this process.

    `spent` is what this process charged in window `wid`; `granted` what it may charge
    there (a store's leases; without a store the whole limit). `reported` is the part of
    `spent` the store has heard of; `fleet_used` the fleet's total as the store last said.
    """

    def __init__(
        self, owner_kind: str, owner: str, route: str, kind: int, limit: int, window: float
    ) -> None:
        self.owner_kind = owner_kind  # "key" | "tenant"
        self.owner = owner
        self.route = route  # a route name or "*"
        self.kind = kind
        self.limit = limit  # requests, tokens or picodollars per window
        self.window = window  # seconds (rpm, tpm); calendar windows: 0
        # Stable across processes and reloads: the store's counters are named by it.
        self.ident = f"{owner_kind}:{owner}:{route}:{KIND_NAMES[kind]}:{window:g}"
        self.wid = -1
        self.ends_at = -math.inf
        self.granted = 0
        self.spent = 0
        self.reported = 0
        self.fleet_used = 0
        self.dry = False  # the store had nothing left for this window at the last refill
        self.pool_left = -1  # what it had left then (-1: not heard from in this window)
        self.refused = 0  # the largest need refused since the last refill
        self.active = False  # in Quotas.active: the lease task looks after it
        self.rate = 0.0  # units per second, smoothed (lease sizing)
        self.rate_mark = 0  # `spent` when the rate was last sampled
        # What the last window left unreported when this one began (the lease task
        # reports it to that window's counter).
        self.prev_wid = -1
        self.prev_unreported = 0
        # A lease on the next window, taken shortly before it begins (rpm, tpm).
        self.next_wid = -1
        self.next_granted = 0

    def roll(self, wall: float) -> None:
        """Begin the window `wall` falls in."""
        wid, ends = window_bounds(self.kind, self.window, wall)
        if wid == self.wid:
            self.ends_at = ends
            return
        if self.spent != self.reported:
            self.prev_wid, self.prev_unreported = self.wid, self.spent - self.reported
        self.wid = wid
        self.ends_at = ends
        self.granted = self.next_granted if wid == self.next_wid else 0
        self.next_wid, self.next_granted = -1, 0
        self.spent = 0
        self.reported = 0
        self.fleet_used = 0
        self.rate_mark = 0
        self.dry = False
        self.pool_left = -1

    def describe_limit(self) -> str:
        if self.kind == RPM:
            return f"{self.limit} requests per {self.window:g}s"
        if self.kind == TPM:
            return f"{self.limit} tokens per {self.window:g}s"
        period = "UTC day" if self.kind == DAY else "UTC month"
        return f"{usd(self.limit)} per {period}"


def usd(pico: int) -> str:
    return f"${pico / PICO:.6g}"


class KeyState:
    """One API key's identity, rate bucket and quotas (the key itself is not kept).

    What the checked request carries (`Request.key`): `name`, `tenant` ("" for none) and
    `priority` (0..9, larger first) are read by whoever orders requests.
    """

    def __init__(
        self,
        name: str,
        rate: float | None,
        burst: float,
        tenant: str = "",
        priority: int = DEFAULT_PRIORITY,
        meters: tuple[Meter, ...] = (),
    ) -> None:
        self.name = name
        self.rate = rate  # requests per second; None: unlimited
        self.burst = burst
        self.tokens = burst
        self.updated = -math.inf
        self.tenant = tenant
        self.priority = priority
        self.meters = meters  # the key's own and its tenant's
        self.metered = bool(meters)
        self.quotas: Quotas | None = None
        # Per route: its meters and what its requests there reuse (Quotas.admit).
        self.routes: dict[str, RouteQuota] = {}

    def take(self, now: float) -> float:
        """Spend one token; 0.0 when allowed, else the seconds until one is there."""
        rate = self.rate
        if rate is None:
            return 0.0
        tokens = self.tokens + (now - self.updated) * rate
        if tokens > self.burst:
            tokens = self.burst
        self.updated = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / rate

    def meters_for(self, route: str) -> tuple[Meter, ...]:
        """The meters that apply on `route`: those for it and those for `*`."""
        return tuple(m for m in self.meters if m.route == "*" or m.route == route)


class RouteQuota:
    """A key's meters on one route, and what its requests there reuse: the admitted
    counter, and the price and usage series of the version last seen."""

    def __init__(
        self, key: KeyState, route: str, meters: tuple[Meter, ...], admitted: Tally
    ) -> None:
        self.key = key
        self.route = route
        self.meters = meters
        self.admitted = admitted
        self.version = "\x00"  # none seen yet
        self.price = FREE
        self.series: UsageSeries | None = None


class Charge:
    """What one admitted request was pre-charged; settled once when it ends."""

    def __init__(
        self,
        quotas: Quotas,
        at: RouteQuota,
        wids: list[int],
        prompt: int,
        completion: int,
        cost: int,
    ) -> None:
        self.quotas = quotas
        self.at = at
        self.wids = wids
        self.prompt = prompt  # estimated tokens
        self.completion = completion
        self.cost = cost  # estimated picodollars
        self.settled = False

    def settle(self, version: str, prompt: int, completion: int, answered: bool) -> None:
        """Reconcile to the usage the backend reported (-1: none). Without a report, an
        answered request keeps its estimate and an unanswered one (the gateway's own
        error, a backend error status) is refunded. Counted under `version`, the model
        version that served."""
        if self.settled:
            return
        self.settled = True
        quotas = self.quotas
        if prompt < 0 and completion < 0:
            if answered:
                prompt, completion = self.prompt, self.completion
            else:
                prompt = completion = 0
        if prompt < 0:
            prompt = 0
        if completion < 0:
            completion = 0
        at = self.at
        if at.version != version:
            quotas.seen(at, version)
        price = at.price
        cost = prompt * price.prompt + completion * price.completion
        tokens = prompt + completion
        wall = 0.0
        meters = at.meters
        for i in range(len(meters)):
            m = meters[i]
            kind = m.kind
            if kind == RPM:
                continue
            diff = tokens - self.prompt - self.completion if kind == TPM else cost - self.cost
            if diff == 0:
                continue
            if m.wid == self.wids[i]:
                m.spent += diff
            elif diff > 0:  # a new window: an overrun counts there, a refund is void
                if wall == 0.0:
                    wall = time.time()
                if wall >= m.ends_at:
                    m.roll(wall)
                m.spent += diff
        series = at.series
        assert series is not None
        series.requests += 1
        series.prompt_tokens += prompt
        series.completion_tokens += completion
        series.cost += cost


class Quotas:
    """Every meter of the keys in force, and how this process may spend them."""

    def __init__(self, metrics: QuotaMetrics) -> None:
        self.metrics = metrics
        self.fleet = False  # a quota store shares the limits (set by its lease task)
        self.store_up = True
        self.down_open = True  # --quota-redis-down open (else closed)
        self.processes = 1  # in the fleet, as the store last counted them
        self.default_max_tokens = DEFAULT_MAX_TOKENS
        # (route, version) -> price; version "" for the route's, route "*" for any.
        self.prices: dict[tuple[str, str], Price] = {}
        self.meters: dict[str, Meter] = {}  # by ident
        # Meters the lease task looks after (touched since it last let them go).
        self.active: list[Meter] = []
        # The quota store's lease task (gateway.quota.sync), for the admin API; None
        # without a store.
        self.link: object | None = None
        metrics.remaining = self.remaining

    def install(
        self,
        keys: list[KeyState],
        meters: dict[str, Meter],
        prices: dict[tuple[str, str], Price],
        default_max_tokens: int,
    ) -> None:
        """Put a keys file's keys, meters and prices in force. A meter that was already
        counting stays the same object, with the new limit: what it spent carries over,
        and requests in flight settle where they were charged."""
        kept: dict[str, Meter] = {}
        for ident, meter in meters.items():
            old = self.meters.get(ident)
            if old is not None:
                old.limit = meter.limit
                meter = old
            kept[ident] = meter
        for key in keys:
            key.quotas = self
            key.meters = tuple(kept[m.ident] for m in key.meters)
        self.meters = kept
        self.active = [m for m in kept.values() if m.active]
        self.prices = prices
        self.default_max_tokens = default_max_tokens

    def route_quota(self, key: KeyState, route: str) -> RouteQuota:
        found = key.routes.get(route)
        if found is None:
            admitted = self.metrics.tally(key.name, key.tenant, route)
            found = RouteQuota(key, route, key.meters_for(route), admitted)
            if len(key.routes) < 1024:  # route names come from the policies
                key.routes[route] = found
        return found

    def seen(self, at: RouteQuota, version: str) -> None:
        """Point `at`'s caches at `version`: its price and usage series."""
        at.version = version
        at.price = self.price(at.route, version)
        key = at.key
        at.series = self.metrics.series(key.name, key.tenant, at.route, version)

    def price(self, route: str, version: str) -> Price:
        prices = self.prices
        if not prices:
            return FREE
        found = prices.get((route, version))
        if found is None:
            found = prices.get((route, ""))
            if found is None:
                found = prices.get(("*", ""), FREE)
        return found

    def available(self, m: Meter) -> int:
        """What this process may still charge to `m` in its current window."""
        if not self.fleet:
            return m.limit - m.spent
        if self.store_up:
            if m.dry:
                return m.granted - m.spent
            return m.granted - m.spent + m.limit // (CREDIT_SHARE * self.processes)
        if self.down_open:
            # The lease held, and an even share of what the pool had left when the
            # store last answered (of the whole limit in a window it has not).
            left = m.pool_left if m.pool_left >= 0 else m.limit
            return m.granted - m.spent + left // self.processes
        return m.granted - m.spent

    def admit(
        self,
        key: KeyState,
        route: str,
        version: str,
        path: bytes,
        parsed: dict[str, Any] | None,
        body_len: int,
    ) -> Charge | None:
        """Pre-charge a request of `key` on `route` (decided: `version`), or raise
        QuotaExceeded (429) / QuotaStoreDown (503). None: no limit applies there."""
        at = key.routes.get(route)
        if at is None:
            at = self.route_quota(key, route)
        meters = at.meters
        if not meters:
            return None
        wall = time.time()
        prompt = completion = cost = -1
        needs: list[int] = []
        for m in meters:
            if wall >= m.ends_at:
                m.roll(wall)
            kind = m.kind
            if kind == RPM:
                need = 1
            else:
                if prompt < 0:
                    prompt, completion = estimate(path, parsed, body_len, self.default_max_tokens)
                    if at.version != version:
                        self.seen(at, version)
                    price = at.price
                    cost = prompt * price.prompt + completion * price.completion
                need = prompt + completion if kind == TPM else cost
            needs.append(need)
            if need > 0:
                short = need - self.available(m)
                if short > 0:
                    self._refuse(key, route, m, need, short, wall)
        wids: list[int] = []
        active = self.active
        for i in range(len(meters)):
            m = meters[i]
            m.spent += needs[i]
            wids.append(m.wid)
            if not m.active:
                m.active = True
                active.append(m)
        at.admitted.count += 1
        if prompt < 0:
            prompt = completion = cost = 0
        if at.version != version:
            self.seen(at, version)
        return Charge(self, at, wids, prompt, completion, cost)

    def _refuse(
        self, key: KeyState, route: str, m: Meter, need: int, short: int, wall: float
    ) -> None:
        if need > m.refused:
            m.refused = need  # the lease task asks the store for it
        if m.active is False:
            m.active = True
            self.active.append(m)
        who = f"API key '{key.name}'"
        if m.owner_kind == "tenant":
            who = f"tenant '{m.owner}' (of API key '{key.name}')"
        where = "every route" if m.route == "*" else f"route '{m.route}'"
        if self.fleet and not self.store_up and not self.down_open and not m.dry:
            self.metrics.decided(key.name, key.tenant, route, "unavailable", KIND_NAMES[m.kind])
            raise QuotaStoreDown(
                f"{who}: the quota store is unreachable and this gateway refuses requests "
                f"that need a new lease of its {KIND_NAMES[m.kind]} limit on {where} "
                "(--quota-redis-down closed); retry after 1s",
                retry_after=1,
            )
        # Past the whole limit (or the fleet's pool): until the window ends; short of
        # this process's lease while the pool has more: one second (the next refill).
        settled = not self.fleet or m.dry or not self.store_up or need > m.limit
        wait = max(1, math.ceil(m.ends_at - wall)) if settled else 1
        if m.kind == RPM:
            needs = "1 request"
        elif m.kind == TPM:
            needs = f"about {need} tokens"
        else:
            needs = f"about {usd(need)}"
        self.metrics.decided(key.name, key.tenant, route, "limited", KIND_NAMES[m.kind])
        raise QuotaExceeded(
            f"{who} is over its {KIND_NAMES[m.kind]} limit of {m.describe_limit()} on "
            f"{where}; this request needs {needs}; retry after {wait}s",
            code=_CODES[m.kind],
            retry_after=wait,
        )

    def remaining(self) -> list[Remaining]:
        """The budget gauge: each budget meter's spend left in its current period."""
        found: list[Remaining] = []
        wall = time.time()
        for m in self.meters.values():
            if m.kind < DAY:
                continue
            used = 0 if wall >= m.ends_at else self.used(m)
            key = m.owner if m.owner_kind == "key" else ""
            tenant = m.owner if m.owner_kind == "tenant" else ""
            period = "day" if m.kind == DAY else "month"
            found.append(Remaining(key, tenant, m.route, period, (m.limit - used) / PICO))
        return found

    def used(self, m: Meter) -> int:
        """What the meter's window has used: the fleet's (as the store last said, plus
        this process's unreported part) or this process's."""
        if not self.fleet:
            return m.spent
        return m.fleet_used + m.spent - m.reported


def estimate(
    path: bytes, parsed: dict[str, Any] | None, body_len: int, default_max: int
) -> tuple[int, int]:
    """Prompt and completion tokens a request may use, before it is sent: its prompt
    text's characters / 4 (3 more per chat message; the whole body's bytes / 4 where
    it has no text field), and `max_completion_tokens`, `max_tokens` or Ollama's
    `options.num_predict` (else `default_max`) times `n`; embeddings complete nothing."""
    if parsed is None:
        return (body_len + 3) // 4, 0
    chars = -1
    extra = 0
    messages = parsed.get("messages")
    if isinstance(messages, list):
        chars = 0
        for message in messages:
            if isinstance(message, dict):
                chars += _text_len(message.get("content"))
        extra = 3 * len(messages)
    else:
        text = parsed.get("prompt")
        if text is None:
            text = parsed.get("input")
        if text is not None:
            chars = _text_len(text)
    prompt = (chars + 3) // 4 + extra if chars >= 0 else (body_len + 3) // 4
    if path in _EMBEDDING_PATHS:
        return prompt, 0
    completion = max_tokens_of(parsed)
    if completion == 0:
        completion = default_max
    n = parsed.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and 1 < n <= 128:
        completion *= n
    return prompt, completion


def _text_len(value: object) -> int:
    if isinstance(value, str):
        return len(value)
    total = 0
    if isinstance(value, list):
        for item in value:
            if isinstance(item, str):
                total += len(item)
            elif isinstance(item, dict):
                text = item.get("text")
                if isinstance(text, str):
                    total += len(text)
    return total
