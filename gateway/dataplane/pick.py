"""Which endpoint of a variant's pool takes a request.

Least loaded among endpoints not ejected, then the lower KV-cache use, then a rotating
start so equal endpoints share load. Load is the larger of the gateway's own in-flight
requests and the backlog the backend reports (vLLM's num_requests_waiting +
num_requests_running, from every gateway replica and client, scraped off the request
path). The larger, not the sum: the report already counts this gateway's requests, and
in-flight covers what was sent since the last report. Running requests count as well as
waiting ones because a CPU or lightly configured vLLM admits everything into its batch
(waiting stays 0) and still slows down per request as the batch grows. This is the
Gateway API Inference Extension's endpoint-picker idea without a per-request scrape.
Endpoint state is live (not part of the pure `decide`), which is why this is its own step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from gateway.dataplane.decide import Decision
from gateway.dataplane.flow import FlowGate
from gateway.dataplane.health import PROBE_EJECTED
from gateway.dataplane.scorers import Ask
from gateway.dataplane.snapshot import Endpoint, RetryPolicy, Variant
from gateway.observability.metrics import RequestSeries


class Turns:
    """The rotating start of a process's picks, so that equal endpoints share the load:
    one counter for every front (`SharedState.turns`). An object, not a callable: the
    compiled pick routines call it directly."""

    def __init__(self) -> None:
        self.turn = 0

    def next_turn(self) -> int:
        self.turn += 1
        return self.turn


def pick(variant: Variant, now: float, turn: int) -> int:
    """Index of the endpoint to use, or -1 when every endpoint is ejected."""
    endpoints = variant.endpoints
    if len(endpoints) == 1:
        return 0 if endpoints[0].state.ejected_until <= now else -1
    best = -1
    best_load = 0
    best_kv = 0.0
    n = len(endpoints)
    for step in range(n):
        i = (turn + step) % n
        state = endpoints[i].state
        if state.ejected_until > now:
            continue
        load = state.in_flight if state.in_flight > state.backlog else state.backlog
        if best < 0 or load < best_load or (load == best_load and state.kv_usage < best_kv):
            best, best_load, best_kv = i, load, state.kv_usage
    return best


def room(gate: FlowGate, variant: Variant, level: int, now: float, prefer: int) -> int:
    """An endpoint of `variant` that takes one more request of priority `level` under the
    route's flow limits, or -1 when the pool is saturated for that level.

    `prefer` (the endpoint `pick` chose; -1 for none) is taken when it has room, even if
    ejected (the panic pick chose it); otherwise the endpoint in rotation with room and
    the fewest requests in flight. Counters only: this is the whole cost of flow control
    for a request that does not wait.
    """
    limit = gate.limits[level]
    full = gate.backend_queue  # 0: the backends' own queues are not looked at
    endpoints = variant.endpoints
    if prefer >= 0:
        state = endpoints[prefer].state
        if state.in_flight < limit and (full == 0 or state.queued < full):
            return prefer
    best = -1
    best_load = 0
    for i in range(len(endpoints)):
        state = endpoints[i].state
        if state.ejected_until > now or state.in_flight >= limit:
            continue
        if full and state.queued >= full:
            continue
        if best < 0 or state.in_flight < best_load:
            best, best_load = i, state.in_flight
    return best


def candidates(
    decision: Decision, now: float, turn: int, ask: Ask | None = None
) -> Iterator[tuple[Variant, int]]:
    """Every (variant, endpoint index) worth trying, best first, fallbacks last; with
    `ask`, not the endpoints of a scored pool too small for the request."""
    for variant in decision.order:
        picker = variant.picker if ask is not None else None
        order = sorted(
            range(len(variant.endpoints)),
            key=lambda i: (
                variant.endpoints[i].state.ejected_until > now,
                max(variant.endpoints[i].state.in_flight, variant.endpoints[i].state.backlog),
                variant.endpoints[i].state.kv_usage,
                (i - turn) % len(variant.endpoints),
            ),
        )
        for i in order:
            if variant.endpoints[i].state.ejected_until > now:
                continue
            if picker is None or ask is None or picker.fits(ask, i):
                yield variant, i


def panic_pick(decision: Decision, turn: int) -> tuple[Variant, int] | None:
    """When every endpoint of the variant and its fallbacks is ejected: the least loaded
    endpoint that only passive outlier detection took out, or None.

    Envoy's panic routing: failures can eject a sole healthy endpoint (a backend that
    answers some clients' bad requests with 500s), and refusing everyone with a 503
    would turn a few bad requests into an outage. Endpoints an active probe reports down
    stay out: the probe has asked the backend itself.
    """
    for variant in decision.order:
        endpoints = variant.endpoints
        n = len(endpoints)
        best, best_load = -1, 0
        for step in range(n):
            i = (turn + step) % n
            state = endpoints[i].state
            if state.ejected_until == PROBE_EJECTED:
                continue
            load = max(state.in_flight, state.backlog)
            if best < 0 or load < best_load:
                best, best_load = i, load
        if best >= 0:
            return variant, best
    return None


def ejection_allowed(variant: Variant, now: float, max_percent: float) -> bool:
    """Envoy's rule: eject while fewer than max% of the pool is out, always at least one."""
    endpoints: tuple[Endpoint, ...] = variant.endpoints
    out = sum(1 for e in endpoints if e.state.ejected_until > now)
    return out < max(1, int(len(endpoints) * max_percent / 100.0))


def retryable(policy: RetryPolicy, kind: str) -> bool:
    """Whether the route retries a failure of `kind` ("connect-error", "timeout",
    "reset" or an HTTP status as text)."""
    if kind == "connect-error":
        return policy.on_connect_error
    if kind == "timeout":
        return policy.on_timeout
    if kind == "reset":
        return policy.on_reset
    return kind.isdigit() and int(kind) in policy.statuses


def first_target(
    decision: Decision,
    now: float,
    turns: Turns,
    usable: Callable[[Variant], bool] | None = None,
    ask: Ask | None = None,
) -> tuple[Variant, int] | None:
    """Where a request's first attempt goes, or None when no endpoint can take it.

    The decided variant's best endpoint; if none is in rotation its fallbacks' best
    (counted as a fallback; no retry is spent, nothing was sent); then the panic pick
    (counted); else None, counted as no_healthy. The request counts towards the route's
    retry budget. `usable` leaves out variants a front cannot reach (the gRPC front's
    need a gRPC port). HTTP exchanges and gRPC calls share it, and `retry_target`. A
    variant with a `picker` scores its endpoints for `ask` (what the request gives the
    scorers; None: the least loaded, as without a picker).
    """
    route = decision.route
    route.budget.record_request(now)
    variant = decision.variant
    if usable is None or usable(variant):
        picker = variant.picker
        if picker is not None and ask is not None:
            idx = picker.choose(ask, now, turns.next_turn())
        else:
            idx = pick(variant, now, turns.next_turn())
        if idx >= 0:
            return variant, idx
    for fallback, i in candidates(decision, now, turns.next_turn(), ask):
        if usable is None or usable(fallback):
            route.counters.fallbacks += 1
            return fallback, i
    panic = panic_pick(decision, turns.next_turn())
    if panic is not None and (usable is None or usable(panic[0])):
        route.counters.panic += 1
        return panic
    route.counters.no_healthy += 1
    return None


def retry_target(
    decision: Decision,
    attempts: int,
    tried: tuple[tuple[int, int], ...],
    kind: str,
    now: float,
    turns: Turns,
    usable: Callable[[Variant], bool] | None = None,
    ask: Ask | None = None,
) -> tuple[Variant, int] | None:
    """Where to retry after a failure of `kind`, or None; spends the route's retry
    budget and counts retries, denials and fallbacks. HTTP and gRPC share it."""
    route = decision.route
    policy = route.retries
    if attempts >= policy.attempts or not retryable(policy, kind):
        return None
    for variant, idx in candidates(decision, now, turns.next_turn(), ask):
        if (variant.index, idx) in tried or (usable is not None and not usable(variant)):
            continue
        if not route.budget.try_retry(now, policy.budget, policy.min_per_second):
            route.counters.retries_denied += 1
            return None
        route.counters.retries += 1
        if variant is not decision.variant:
            route.counters.fallbacks += 1
        return variant, idx
    return None


def attempt_failed(
    decision: Decision,
    variant: Variant,
    endpoint: Endpoint,
    series: RequestSeries | None,
    now: float,
) -> None:
    """A failed upstream attempt: towards the endpoint's ejection, and into the
    variant's failed-attempt count that a rollout's error gate reads."""
    outlier = decision.route.outlier
    endpoint.state.record_failure(
        now,
        outlier.consecutive_failures,
        outlier.base_ejection,
        outlier.max_ejection,
        ejection_allowed(variant, now, outlier.max_ejection_percent),
    )
    if series is not None:
        series.failed_attempts += 1
