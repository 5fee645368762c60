"""Flow control of saturated pools: priorities, fair queueing between tenants, shedding.

A route's `flow` block caps, per endpoint of each variant's pool, the requests this
process has in flight there (`max_in_flight`, less `reserve`d slots for the priorities
below those it keeps them for) and/or the requests the backend itself reports waiting
(`max_backend_queue`: vLLM's num_requests_waiting, from the load watcher). While some
usable endpoint is under its cap a request goes out at once: admission is a comparison
of counters (`pick.room`). When none is, the pool is saturated and the request waits in
the pool's bounded queue, with nothing sent upstream, until an attempt in the pool ends
(the exchange calls `FlowQueue.schedule`) or the data plane's tick finds room (the load
watcher's reports land there), the queue timeout passes, or the client leaves.

Release order: the highest priority first, strictly; within a priority, tenants share
the pool by virtual counters (VTC, Sheng et al., "Fairness in Serving Large Language
Models", OSDI 2024), counted in requests: each release adds 1/weight to its tenant's
counter, the waiting tenant with the smallest counter goes next (its oldest request),
and a tenant that starts waiting is lifted to the smallest counter of those waiting (or
of the tenant served last), so idle time banks no credit.

When the queue is full, one request is shed: from the lowest priority waiting (the
arriving request itself when it is lower still), the newest request of the tenant
furthest over its share there, meaning its counter plus its waiting requests per weight
(the arriving request counts in its tenant's, and loses ties). A refused request gets
429 `over_fair_share` when its tenant was the one furthest over its share among two or
more tenants waiting at its priority, else 503 (`pool_saturated`; `queue_timeout` after
waiting); both with Retry-After, in the error shape of the client's protocol.

Priorities are integers 0..9, larger first (low = 0, normal = 1, high = 2), as the keys
file's `priority`: a request has its key's, or the route's `default_priority` without
keys; the `x-switchyard-priority` header may lower it, and set it only where no keys
are configured. The tenant is the key's tenant, else its name, else "anonymous".

A native module (compiled with the request path): concrete classes, callbacks for what
the queue's owners do (the exchange, the gRPC front), no imports from above.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Final

from gateway.errors import (
    BadRequest,
    GatewayError,
    OverFairShare,
    Overloaded,
    QueueDrained,
    QueueTimeout,
)
from gateway.observability.flow_metrics import (
    ADMITTED,
    DRAINED,
    LEFT,
    PRIORITIES,
    PRIORITY_NAMES,
    QUEUED,
    SHED,
    TIMED_OUT,
    FlowCounters,
    FlowSeries,
)

PRIORITY_HEADER: Final = b"x-switchyard-priority"
ANONYMOUS: Final = "anonymous"
LEVELS: Final = 10  # len(PRIORITIES)
NO_LIMIT: Final = 1 << 40  # the in-flight cap of a pool limited by the backend's queue only
RETRY_AFTER: Final = 1  # seconds, in a refusal's Retry-After
_HEADER_LEVELS: Final = {
    **{name.encode(): level for name, level in PRIORITY_NAMES.items()},
    **{str(level).encode(): level for level in range(LEVELS)},
}


def priority_level(value: object) -> int:
    """The level that `value` names (low, normal, high, or 0..9), or -1."""
    if isinstance(value, bool):
        return -1
    if isinstance(value, int):
        return value if 0 <= value < LEVELS else -1
    if isinstance(value, str):
        text = value.strip().lower()
        found = PRIORITY_NAMES.get(text)
        if found is not None:
            return found
        if text.isdigit() and int(text) < LEVELS:
            return int(text)
    return -1


def priority_name(level: int) -> str:
    """How metrics and messages show a level: its name, or its number."""
    return PRIORITIES[level]


class Waiter:
    """One request waiting in a pool's queue. The callbacks are its owner's: `room`
    finds an endpoint with room for it now (-1: none), `release` sends it there,
    `refuse` answers it with the error."""

    def __init__(
        self,
        level: int,
        tenant: str,
        weight: float,
        arrived: float,
        room: Callable[[float], int],
        release: Callable[[int], None],
        refuse: Callable[[GatewayError], None],
    ) -> None:
        self.level = level
        self.tenant = tenant
        self.weight = weight
        self.arrived = arrived
        self.room = room
        self.release = release
        self.refuse = refuse
        self.queue: FlowQueue | None = None  # while it waits


class FlowQueue:
    """The waiting requests of one pool (a route's variant), in this process.

    Kept across snapshots (`FlowQueues`), so a reload neither forgets who waits nor the
    tenants' counters. Waiters of an older snapshot are released onto their own
    snapshot's endpoints, as every request finishes on the snapshot it started with.
    """

    def __init__(self, route: str, variant: str, series: FlowSeries) -> None:
        self.route = route
        self.variant = variant
        self.series = series
        # Per level: the waiting tenants, each with its requests oldest first.
        self.levels: list[dict[str, deque[Waiter]]] = [{} for _ in range(LEVELS)]
        # Per level: each tenant's virtual counter (requests released / weight).
        self.counters: list[dict[str, float]] = [{} for _ in range(LEVELS)]
        # Per level: the counter of the tenant released last (a newly waiting tenant's
        # floor when nobody else waits there).
        self.last: list[float] = [0.0] * LEVELS
        self.waiting = 0
        self.scheduled = False

    # Waiting --------------------------------------------------------------------------

    def offer(self, waiter: Waiter, max_queue: int) -> None:
        """Queue `waiter`; when the queue is full, shed one request, perhaps this one."""
        victim: Waiter | None = None
        over = False
        if self.waiting >= max_queue:
            victim, over = self._victim(waiter)
            if victim is waiter:
                self.series.count(waiter.tenant, waiter.level, SHED)
                waiter.refuse(self._refusal(waiter, over, 0.0))
                return
            self._remove(victim)
        self._push(waiter)
        self.series.count(waiter.tenant, waiter.level, QUEUED)
        if victim is not None:
            # Answered once the queue is consistent: answering may serve the victim's
            # connection's next request, which may come back here.
            self.series.count(victim.tenant, victim.level, SHED)
            victim.refuse(self._refusal(victim, over, 0.0))

    def leave(self, waiter: Waiter) -> None:
        """The waiter's client went away."""
        if waiter.queue is self:
            self._remove(waiter)
            self.series.count(waiter.tenant, waiter.level, LEFT)

    def expire(self, waiter: Waiter, now: float) -> None:
        """The waiter's queue timeout (or its route's total timeout) has passed."""
        if waiter.queue is not self:
            return
        over = self._furthest_over(waiter)
        self._remove(waiter)
        self.series.count(waiter.tenant, waiter.level, TIMED_OUT)
        waiter.refuse(self._refusal(waiter, over, now - waiter.arrived))

    def drain(self) -> None:
        """The gateway is shutting down: answer every waiter 503 now."""
        waiters = [w for tenants in self.levels for dq in tenants.values() for w in dq]
        for waiter in waiters:
            self._remove(waiter)
            self.series.count(waiter.tenant, waiter.level, DRAINED)
        for waiter in waiters:
            waiter.refuse(
                QueueDrained(
                    "the gateway is shutting down; retry on another replica",
                    RETRY_AFTER,
                    route=self.route,
                )
            )

    # Release --------------------------------------------------------------------------

    def schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        """An attempt in the pool ended: release what fits, on the next loop turn (after
        the ended request's own retry, if it makes one, has taken its endpoint)."""
        if not self.scheduled:
            self.scheduled = True
            loop.call_soon(self._pump_now)

    def _pump_now(self) -> None:
        self.scheduled = False
        if self.waiting > 0:
            self.pump(time.monotonic())

    def pump(self, now: float) -> None:
        """Send waiting requests, best first, while the pool has room for them."""
        series = self.series
        while self.waiting > 0:
            dq = self._top()
            waiter = dq[0]
            idx = waiter.room(now)
            if idx < 0:
                return  # lower priorities have no more room than the best waiter
            level, tenant = waiter.level, waiter.tenant
            dq.popleft()
            if not dq:
                del self.levels[level][tenant]
            counters = self.counters[level]
            self.last[level] = counters[tenant]
            counters[tenant] += 1.0 / waiter.weight
            self._gone(waiter)
            series.count(tenant, level, ADMITTED)
            series.wait[level].observe(now - waiter.arrived if now > waiter.arrived else 0.0)
            waiter.release(idx)

    # Order ----------------------------------------------------------------------------

    def highest(self) -> int:
        """The highest priority waiting; -1 when nobody waits."""
        level = LEVELS - 1
        while level >= 0 and not self.levels[level]:
            level -= 1
        return level

    def _top(self) -> deque[Waiter]:
        """The requests of the tenant served next (its oldest first); some must wait."""
        level = LEVELS - 1
        while not self.levels[level]:
            level -= 1
        counters = self.counters[level]
        best: deque[Waiter] | None = None
        best_counter = 0.0
        for tenant, dq in self.levels[level].items():
            counter = counters[tenant]
            if (
                best is None
                or counter < best_counter
                or (counter == best_counter and dq[0].arrived < best[0].arrived)
            ):
                best, best_counter = dq, counter
        assert best is not None
        return best

    def _floor(self, level: int) -> float:
        """Where a tenant starting to wait at `level` is lifted to, at least."""
        tenants = self.levels[level]
        if not tenants:
            return self.last[level]
        counters = self.counters[level]
        return min(counters[tenant] for tenant in tenants)

    def _push(self, waiter: Waiter) -> None:
        level, tenant = waiter.level, waiter.tenant
        tenants = self.levels[level]
        dq = tenants.get(tenant)
        if dq is None:
            counters = self.counters[level]
            floor = self._floor(level)
            counter = counters.get(tenant, 0.0)
            counters[tenant] = counter if counter > floor else floor
            dq = tenants[tenant] = deque()
        dq.append(waiter)
        waiter.queue = self
        self.waiting += 1
        self.series.waiting[level] += 1

    def _remove(self, waiter: Waiter) -> None:
        tenants = self.levels[waiter.level]
        dq = tenants.get(waiter.tenant)
        if dq is not None:
            dq.remove(waiter)
            if not dq:
                del tenants[waiter.tenant]
        self._gone(waiter)

    def _gone(self, waiter: Waiter) -> None:
        waiter.queue = None
        self.waiting -= 1
        self.series.waiting[waiter.level] -= 1

    # Shedding -------------------------------------------------------------------------

    def _projected(self, level: int, tenant: str, dq: deque[Waiter]) -> float:
        """A waiting tenant's counter once every request it has waiting is served."""
        return self.counters[level][tenant] + len(dq) / dq[-1].weight

    def _victim(self, arrival: Waiter) -> tuple[Waiter, bool]:
        """Whom to shed so that `arrival` may wait (perhaps itself), and whether that
        one's tenant held strictly the most of the queue at its priority, among two or
        more tenants, before `arrival` came."""
        lowest = 0
        while lowest < LEVELS and not self.levels[lowest]:
            lowest += 1
        if lowest == LEVELS or arrival.level < lowest:
            return arrival, False  # nothing waits below it (or no queue at all)
        tenants = self.levels[lowest]
        mine = arrival.level == lowest  # the arrival competes at this level
        top = second = -1.0  # the largest projected counters, the arrival's tenant too
        top_tenant = ""
        other = -1.0  # the largest of the other tenants'
        victim: deque[Waiter] | None = None
        for tenant, dq in tenants.items():
            projected = self._projected(lowest, tenant, dq)
            if projected > top:
                top, second, top_tenant = projected, top, tenant
            elif projected > second:
                second = projected
            if (not mine or tenant != arrival.tenant) and projected > other:
                other, victim = projected, dq
        if mine:
            own = tenants.get(arrival.tenant)
            if own is not None:
                projected = self._projected(lowest, arrival.tenant, own)
            else:
                counter = self.counters[lowest].get(arrival.tenant, 0.0)
                floor = self._floor(lowest)
                projected = counter if counter > floor else floor
            if projected + 1.0 / arrival.weight >= other:
                # Ties shed the arrival: those waiting keep their turn.
                return arrival, top_tenant == arrival.tenant and top > second >= 0
        assert victim is not None
        shed = victim[-1]
        # Displaced by a higher priority: the pool is full, no tenant is to blame.
        return shed, mine and top_tenant == shed.tenant and top > second >= 0

    def _furthest_over(self, waiter: Waiter) -> bool:
        """Whether the waiter's tenant is strictly furthest over its share at its level,
        with another tenant waiting there too."""
        tenants = self.levels[waiter.level]
        if len(tenants) < 2:
            return False
        own = tenants.get(waiter.tenant)
        if own is None:
            return False
        mine = self._projected(waiter.level, waiter.tenant, own)
        return all(
            self._projected(waiter.level, tenant, dq) < mine
            for tenant, dq in tenants.items()
            if tenant != waiter.tenant
        )

    def _refusal(self, waiter: Waiter, over: bool, waited: float) -> GatewayError:
        where = f"route '{self.route}' (variant '{self.variant}')"
        level = priority_name(waiter.level)
        if over:
            return OverFairShare(
                f"{where}: tenant '{waiter.tenant}' has more than its fair share of the "
                f"saturated pool waiting at priority {level}; retry after {RETRY_AFTER}s",
                RETRY_AFTER,
                route=self.route,
            )
        if waited > 0.0:
            return QueueTimeout(
                f"{where}: every endpoint stayed at its limit while the request waited "
                f"{waited:.1f}s at priority {level}; retry after {RETRY_AFTER}s",
                RETRY_AFTER,
                route=self.route,
            )
        return Overloaded(
            f"{where}: every endpoint is at its limit and the queue is full of requests "
            f"at priority {level} or higher; retry after {RETRY_AFTER}s",
            RETRY_AFTER,
            route=self.route,
        )


class FlowGate:
    """What one variant's pool admits, compiled from its route's `flow` block."""

    def __init__(
        self,
        queue: FlowQueue,
        limits: tuple[int, ...],
        backend_queue: int,
        max_queue: int,
        timeout: float,
        default_level: int,
        weights: dict[str, float],
    ) -> None:
        self.queue = queue  # shared by every snapshot's gate of this pool
        self.limits = limits  # per level: an endpoint takes a request below this count
        self.backend_queue = backend_queue  # full at this many waiting on it; 0: unused
        self.max_queue = max_queue
        self.timeout = timeout
        self.default_level = default_level
        self.weights = weights  # tenant -> weight (default 1)

    def identify(
        self, fields: dict[bytes, bytes] | None, key_level: int, tenant: str
    ) -> tuple[int, str]:
        """The request's (priority, tenant). `key_level` is its key's priority, -1
        without keys; `tenant` its key's tenant (or name), "" without keys."""
        level = key_level if key_level >= 0 else self.default_level
        if level >= LEVELS:  # a key's priority above the levels queued here
            level = LEVELS - 1
        if fields is not None:
            raw = fields.get(PRIORITY_HEADER)
            if raw is not None:
                asked = _HEADER_LEVELS.get(raw.strip().lower(), -1)
                if asked < 0:
                    raise BadRequest(
                        "x-switchyard-priority must be low, normal, high or 0..9 (larger is "
                        "served first)"
                    )
                if key_level < 0 or asked < level:  # with keys it may only lower
                    level = asked
        return level, tenant or ANONYMOUS

    def weight(self, tenant: str) -> float:
        return self.weights.get(tenant, 1.0)

    def describe(self) -> dict[str, object]:
        """The gate's limits and its queue now, for `policy explain` and the admin API."""
        queue = self.queue
        waiting = {
            priority_name(level): sum(len(dq) for dq in tenants.values())
            for level, tenants in enumerate(queue.levels)
            if tenants
        }
        return {
            # From each priority listed up to the next: where reserved slots begin.
            "max_in_flight": {
                priority_name(level): limit
                for level, limit in enumerate(self.limits)
                if limit < NO_LIMIT and (level == 0 or limit != self.limits[level - 1])
            },
            "max_backend_queue": self.backend_queue or None,
            "max_queue": self.max_queue,
            "queue_timeout": self.timeout,
            "default_priority": priority_name(self.default_level),
            "tenant_weights": dict(self.weights),
            "waiting": waiting,
        }


class FlowQueues:
    """Every pool's queue by (route, variant): live state that outlives snapshots, like
    endpoint health (the `HealthRegistry` holds it)."""

    def __init__(self, counters: FlowCounters) -> None:
        self.counters = counters
        self.queues: dict[tuple[str, str], FlowQueue] = {}

    def queue(self, route: str, variant: str) -> FlowQueue:
        found = self.queues.get((route, variant))
        if found is None:
            series = self.counters.pool(route, variant)
            found = self.queues[(route, variant)] = FlowQueue(route, variant, series)
        return found

    def tick(self, now: float, draining: bool) -> None:
        """The data plane's tick: release what the load watcher's reports made room
        for; while draining, answer every waiter 503."""
        for queue in list(self.queues.values()):
            if queue.waiting > 0:
                if draining:
                    queue.drain()
                else:
                    queue.pump(now)
