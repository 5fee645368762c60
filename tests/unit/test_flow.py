"""Flow control's queue: priority order, fairness between tenants, timeouts, shedding.

The queue (`gateway.dataplane.flow.FlowQueue`) is driven as the exchange drives it: each
waiter's callbacks say whether its pool has room and record what the queue did with it.
The pool here is a counter of free slots; `room` takes one when it says yes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.controlplane.policy.compile import compile_snapshot
from gateway.controlplane.policy.explain import explain, render_text
from gateway.controlplane.policy.flowspec import FlowSpec
from gateway.controlplane.policy.loader import PolicyError, parse_policies
from gateway.dataplane.decide import RequestHead
from gateway.dataplane.flow import FlowGate, FlowQueue, FlowQueues, Waiter, priority_level
from gateway.dataplane.health import HealthRegistry
from gateway.dataplane.pick import room
from gateway.dataplane.snapshot import Variant
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
    QUEUED,
    SHED,
    TIMED_OUT,
    FlowCounters,
    flow_families,
)
from gateway.observability.metrics import GatewayMetrics

LOW, NORMAL, HIGH = 0, 1, 2


@dataclass
class Pool:
    """Free slots of a pool, and what the queue did with each waiter, in order."""

    free: int = 0
    released: list[str] = field(default_factory=list)
    refused: list[tuple[str, GatewayError]] = field(default_factory=list)


def waiter(
    pool: Pool, name: str, level: int, tenant: str, at: float, weight: float = 1.0
) -> Waiter:
    def has_room(now: float) -> int:
        return 0 if pool.free > 0 else -1

    def release(idx: int) -> None:
        pool.free -= 1
        pool.released.append(name)

    def refuse(err: GatewayError) -> None:
        pool.refused.append((name, err))

    return Waiter(level, tenant, weight, at, has_room, release, refuse)


def new_queue() -> FlowQueue:
    return FlowQueues(FlowCounters()).queue("chat", "main")


def offer(
    queue: FlowQueue,
    pool: Pool,
    names: str,
    level: int,
    tenant: str,
    max_queue: int = 100,
    weight: float = 1.0,
) -> list[Waiter]:
    out = []
    for name in names.split():
        w = waiter(pool, name, level, tenant, float(len(pool.released) + queue.waiting), weight)
        queue.offer(w, max_queue)
        out.append(w)
    return out


def drain_one_by_one(queue: FlowQueue, pool: Pool) -> list[str]:
    """Free one slot at a time, as completions do, until nobody waits."""
    for _ in range(1000):
        if not queue.waiting:
            break
        pool.free += 1
        queue.pump(0.0)
    return pool.released


def test_priorities_are_served_highest_first_and_in_arrival_order_within() -> None:
    queue, pool = new_queue(), Pool()
    offer(queue, pool, "l1 l2", LOW, "a")
    offer(queue, pool, "n1", NORMAL, "a")
    offer(queue, pool, "h1 h2", HIGH, "a")
    offer(queue, pool, "n2", NORMAL, "a")
    offer(queue, pool, "x9", 9, "a")
    assert queue.waiting == 7
    assert drain_one_by_one(queue, pool) == ["x9", "h1", "h2", "n1", "n2", "l1", "l2"]
    assert queue.waiting == 0 and queue.series.waiting == [0] * 10


def test_no_room_releases_nothing_and_room_releases_as_much_as_fits() -> None:
    queue, pool = new_queue(), Pool()
    offer(queue, pool, "a b c d", NORMAL, "t")
    queue.pump(0.0)
    assert pool.released == []
    pool.free = 3
    queue.pump(0.0)
    assert pool.released == ["a", "b", "c"] and queue.waiting == 1


def test_tenants_alternate_within_a_priority_whatever_their_demand() -> None:
    queue, pool = new_queue(), Pool()
    offer(queue, pool, "a1 a2 a3 a4 a5 a6", NORMAL, "a")  # a sends 3x more
    offer(queue, pool, "b1 b2", NORMAL, "b")
    assert drain_one_by_one(queue, pool) == ["a1", "b1", "a2", "b2", "a3", "a4", "a5", "a6"]


def test_weights_share_a_saturated_pool_in_proportion() -> None:
    queue, pool = new_queue(), Pool()
    offer(queue, pool, " ".join(f"a{i}" for i in range(12)), NORMAL, "a", weight=2.0)
    offer(queue, pool, " ".join(f"b{i}" for i in range(12)), NORMAL, "b")
    first = drain_one_by_one(queue, pool)[:12]
    assert sum(name.startswith("a") for name in first) == 8  # 2:1
    assert sum(name.startswith("b") for name in first) == 4


def test_a_tenant_back_from_idle_banks_no_credit() -> None:
    """VTC's lift: b waited for nothing while a was served 5 times; when b starts
    waiting it shares from then on instead of being owed 5 releases."""
    queue, pool = new_queue(), Pool()
    offer(queue, pool, "a1 a2 a3 a4 a5", NORMAL, "a")
    pool.free = 5
    queue.pump(0.0)
    offer(queue, pool, "a6 a7 a8", NORMAL, "a")
    offer(queue, pool, "b1 b2 b3", NORMAL, "b")
    order = drain_one_by_one(queue, pool)[5:]
    assert order == ["a6", "b1", "a7", "b2", "a8", "b3"]


def test_fairness_is_per_priority_and_below_strict_priority() -> None:
    queue, pool = new_queue(), Pool()
    offer(queue, pool, "a1 a2 a3", LOW, "a")
    offer(queue, pool, "b1", HIGH, "b")
    offer(queue, pool, "b2", LOW, "b")
    assert drain_one_by_one(queue, pool) == ["b1", "a1", "b2", "a2", "a3"]


def test_full_queue_sheds_the_lowest_priority_waiting_first() -> None:
    queue, pool = new_queue(), Pool()
    offer(queue, pool, "l1 l2", LOW, "a", max_queue=3)
    offer(queue, pool, "n1", NORMAL, "a", max_queue=3)
    offer(queue, pool, "h1", HIGH, "a", max_queue=3)  # full: the newest low one goes
    assert [name for name, _ in pool.refused] == ["l2"]
    err = pool.refused[0][1]
    assert type(err) is Overloaded and err.status == 503 and err.retry_after >= 1
    offer(queue, pool, "h2", HIGH, "a", max_queue=3)
    offer(queue, pool, "n2", NORMAL, "a", max_queue=3)  # lower than all waiting: itself
    assert [name for name, _ in pool.refused] == ["l2", "l1", "n2"]
    assert queue.waiting == 3
    assert drain_one_by_one(queue, pool) == ["h1", "h2", "n1"]
    counts = queue.series.counts["a"]
    assert counts[LOW][SHED] == 2 and counts[NORMAL][SHED] == 1
    assert counts[HIGH][ADMITTED] == 2 and counts[LOW][QUEUED] == 2


def test_within_a_priority_the_tenant_furthest_over_its_share_is_shed_with_429() -> None:
    queue, pool = new_queue(), Pool()
    offer(queue, pool, "a1 a2 a3", NORMAL, "a", max_queue=4)
    offer(queue, pool, "b1", NORMAL, "b", max_queue=4)
    offer(queue, pool, "b2", NORMAL, "b", max_queue=4)  # full: a holds 3 of 4
    assert [name for name, _ in pool.refused] == ["a3"]
    assert type(pool.refused[0][1]) is OverFairShare and pool.refused[0][1].status == 429
    offer(queue, pool, "a4", NORMAL, "a", max_queue=4)  # a and b even: the arrival goes
    assert [name for name, _ in pool.refused] == ["a3", "a4"]
    assert type(pool.refused[1][1]) is Overloaded  # nobody was further over than a
    assert drain_one_by_one(queue, pool) == ["a1", "b1", "a2", "b2"]


def test_a_lone_tenant_is_shed_for_capacity_with_503() -> None:
    queue, pool = new_queue(), Pool()
    offer(queue, pool, "a1 a2", NORMAL, "anonymous", max_queue=2)
    offer(queue, pool, "a3", NORMAL, "anonymous", max_queue=2)
    assert [(name, err.status) for name, err in pool.refused] == [("a3", 503)]


def test_no_queue_sheds_at_once_and_the_bound_holds() -> None:
    queue, pool = new_queue(), Pool()
    offer(queue, pool, "a b", HIGH, "t", max_queue=0)
    assert [name for name, _ in pool.refused] == ["a", "b"] and queue.waiting == 0
    queue, pool = new_queue(), Pool()
    for i in range(50):
        offer(queue, pool, f"r{i}", i % 10, f"t{i % 7}", max_queue=8)
        assert queue.waiting <= 8
    assert len(pool.refused) == 42


def test_timeouts_refuse_503_or_429_for_the_tenant_furthest_over() -> None:
    queue, pool = new_queue(), Pool()
    a = offer(queue, pool, "a1 a2 a3", NORMAL, "a")
    b = offer(queue, pool, "b1", NORMAL, "b")
    queue.expire(b[0], 5.0)
    queue.expire(a[0], 5.0)  # alone now: the pool was full, a was not over anyone
    assert [(name, type(err)) for name, err in pool.refused] == [
        ("b1", QueueTimeout),
        ("a1", QueueTimeout),
    ]
    assert pool.refused[0][1].status == 503 and "waited" in pool.refused[0][1].message
    c = offer(queue, pool, "c1", NORMAL, "c")
    queue.expire(a[1], 6.0)  # a holds 2, c 1: a is furthest over its share
    assert type(pool.refused[-1][1]) is OverFairShare
    queue.expire(a[1], 7.0)  # gone already: nothing happens twice
    assert len(pool.refused) == 3
    assert queue.series.counts["a"][NORMAL][TIMED_OUT] == 2
    assert drain_one_by_one(queue, pool) == ["c1", "a3"] or pool.released == ["a3", "c1"]
    assert c[0].queue is None


def test_a_waiter_whose_client_left_is_never_released() -> None:
    queue, pool = new_queue(), Pool()
    a = offer(queue, pool, "a1 a2 a3", NORMAL, "a")
    queue.leave(a[1])
    queue.leave(a[1])  # twice is harmless
    assert queue.waiting == 2 and a[1].queue is None
    assert drain_one_by_one(queue, pool) == ["a1", "a3"]
    assert queue.series.counts["a"][NORMAL][LEFT] == 1 and not pool.refused


def test_drain_answers_every_waiter_503() -> None:
    queues = FlowQueues(FlowCounters())
    queue, pool = queues.queue("chat", "main"), Pool()
    offer(queue, pool, "a1 a2", NORMAL, "a")
    offer(queue, pool, "b1", HIGH, "b")
    pool.free = 5
    queues.tick(0.0, draining=True)
    assert sorted(name for name, _ in pool.refused) == ["a1", "a2", "b1"]
    assert all(type(err) is QueueDrained and err.status == 503 for _, err in pool.refused)
    assert not pool.released and queue.waiting == 0
    assert queue.series.counts["a"][NORMAL][DRAINED] == 2


def test_tick_releases_what_the_load_reports_made_room_for() -> None:
    queues = FlowQueues(FlowCounters())
    queue, pool = queues.queue("chat", "main"), Pool()
    offer(queue, pool, "a1 a2", NORMAL, "a")
    queues.tick(0.0, draining=False)
    assert not pool.released
    pool.free = 1
    queues.tick(0.0, draining=False)
    assert pool.released == ["a1"]


def test_queues_outlive_snapshots() -> None:
    queues = FlowQueues(FlowCounters())
    assert queues.queue("chat", "main") is queues.queue("chat", "main")
    assert queues.queue("chat", "main") is not queues.queue("chat", "other")


def test_metrics_render_per_route_priority_and_tenant() -> None:
    counters = FlowCounters()
    queue, pool = FlowQueues(counters).queue("chat", "main"), Pool()
    offer(queue, pool, "a1 a2", LOW, "team-a", max_queue=1)
    pool.free = 1
    queue.pump(0.5)
    families: dict[str, Any] = {f.name: f for f in flow_families(counters)}  # type: ignore[attr-defined]
    samples = {
        (s.labels["priority"], s.labels["tenant"], s.labels["outcome"]): s.value
        for s in families["switchyard_flow_requests"].samples
    }
    assert samples == {
        ("low", "team-a", "queued"): 1,
        ("low", "team-a", "shed"): 1,
        ("low", "team-a", "admitted"): 1,
    }
    count = [s for s in families["switchyard_flow_queue_wait_seconds"].samples]
    assert any(s.name.endswith("_count") and s.value == 1 for s in count)
    lengths = [
        (s.labels["priority"], s.value) for s in families["switchyard_flow_queue_length"].samples
    ]
    assert lengths == [("low", 0)]


# Priority of a request ----------------------------------------------------------------


def gate(default: int = NORMAL) -> FlowGate:
    return FlowGate(new_queue(), (4,) * 10, 0, 10, 5.0, default, {"big": 3.0})


def test_priority_names_and_numbers() -> None:
    assert [priority_level(v) for v in ("low", "Normal", " high ", 0, 9, "7")] == [0, 1, 2, 0, 9, 7]
    assert [priority_level(v) for v in ("urgent", 10, -1, True, None, "")] == [-1] * 6


def test_the_header_sets_priority_only_without_keys_and_may_only_lower_a_key() -> None:
    g = gate(default=NORMAL)
    header = {b"x-switchyard-priority": b"high"}
    assert g.identify(None, -1, "") == (NORMAL, "anonymous")  # the route's default
    assert g.identify(header, -1, "") == (HIGH, "anonymous")  # no keys: the header sets it
    assert g.identify(header, NORMAL, "team-a") == (NORMAL, "team-a")  # cannot raise a key
    assert g.identify({b"x-switchyard-priority": b"low"}, HIGH, "team-a") == (LOW, "team-a")
    assert g.identify({b"x-switchyard-priority": b"0"}, 5, "t") == (0, "t")
    assert g.identify(None, 12, "t") == (9, "t")  # a key above the levels: the top one
    with pytest.raises(BadRequest, match="x-switchyard-priority"):
        g.identify({b"x-switchyard-priority": b"urgent"}, -1, "")
    assert g.weight("big") == 3.0 and g.weight("other") == 1.0


# The policy ---------------------------------------------------------------------------

POLICY = """\
apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants:
  - {{name: main, endpoints: [http://127.0.0.1:9101, http://127.0.0.1:9102]{extra}}}
flow: {flow}
"""


def compiled(flow: str, extra: str = "") -> tuple[FlowGate, HealthRegistry, Variant]:
    metrics = GatewayMetrics()
    health = HealthRegistry(metrics)
    policies, problems = parse_policies(POLICY.format(flow=flow, extra=extra), "p.yaml")
    assert not problems, problems
    snap = compile_snapshot(policies, metrics=metrics, health=health)
    variant = snap.routes["chat"].variants[0]
    assert variant.flow is not None
    return variant.flow, health, variant


def test_compiled_limits_keep_reserved_slots_for_higher_priorities() -> None:
    found, health, _ = compiled("{max_in_flight: 6, reserve: {high: 2, 5: 1}, max_queue: 9}")
    assert found.limits == (3, 3, 5, 5, 5, 6, 6, 6, 6, 6)
    assert (found.max_queue, found.timeout, found.default_level) == (9, 5.0, NORMAL)
    again, _, _ = compiled("{max_in_flight: 6}")
    assert again.limits == (6,) * 10 and again.backend_queue == 0
    # The queue is the registry's: a recompile with the same registry gets the same one.
    metrics = GatewayMetrics()
    policies, _ = parse_policies(POLICY.format(flow="{max_in_flight: 1}", extra=""), "p.yaml")
    one = compile_snapshot(policies, metrics=metrics, health=health)
    queue = one.routes["chat"].variants[0].flow
    assert queue is not None and queue.queue is found.queue


def test_room_is_a_comparison_of_counters() -> None:
    gate_, _, variant = compiled(
        "{max_in_flight: 2, reserve: {high: 1}, max_backend_queue: 3}", ", load_metrics: vllm"
    )
    a, b = variant.endpoints[0].state, variant.endpoints[1].state
    assert room(gate_, variant, NORMAL, 0.0, 1) == 1  # the picked one has room
    b.in_flight = 1  # normal may fill 1 of 2: b is full for normal, not for high
    assert room(gate_, variant, NORMAL, 0.0, 1) == 0
    assert room(gate_, variant, HIGH, 0.0, 1) == 1
    a.in_flight = 1
    assert room(gate_, variant, NORMAL, 0.0, -1) == -1  # saturated for normal
    assert room(gate_, variant, HIGH, 0.0, -1) == 0
    a.queued = 3  # the backend reports its own queue full
    assert room(gate_, variant, HIGH, 0.0, -1) == 1
    a.queued, a.ejected_until = 0, 10.0  # ejected: only as the picked one
    assert room(gate_, variant, HIGH, 5.0, -1) == 1
    assert room(gate_, variant, HIGH, 5.0, 0) == 0


@pytest.mark.parametrize(
    ("flow", "message"),
    [
        ("{max_queue: 5}", "max_in_flight, max_backend_queue or both"),
        ("{max_in_flight: 2, reserve: {high: 2}}", "the lowest priority would get none"),
        ("{max_in_flight: 4, reserve: {low: 1}}", "reserve.low"),
        ("{max_backend_queue: 2, reserve: {high: 1}}", "reserve needs max_in_flight"),
        ("{max_in_flight: 4, reserve: {urgent: 1}}", "a priority is low, normal, high"),
        ("{max_in_flight: 4, default_priority: 10}", "a priority is low, normal, high"),
        ("{max_in_flight: 4, tenant_weights: {a: 0}}", "tenant_weights.a"),
        ("{max_in_flight: 0}", "greater than or equal to 1"),
        ("{max_in_flight: 4, surprise: 1}", "surprise"),
        ("{max_backend_queue: 4}", "load_metrics: vllm"),
    ],
)
def test_bad_flow_blocks_are_refused(flow: str, message: str) -> None:
    metrics = GatewayMetrics()
    policies, problems = parse_policies(POLICY.format(flow=flow, extra=""), "p.yaml")
    if not problems:
        with pytest.raises(PolicyError) as caught:
            compile_snapshot(policies, metrics=metrics, health=HealthRegistry(metrics))
        problems = list(caught.value.problems)
    assert any(message in str(p) for p in problems), problems


def test_priorities_in_the_policy_are_canonical() -> None:
    spec = FlowSpec.model_validate(
        {"max_in_flight": 4, "default_priority": 2, "reserve": {"1": 1, "7": 1}}
    )
    assert spec.default_priority == "high"
    assert spec.reserve == {"normal": 1, "7": 1}


def test_policy_explain_shows_the_caps_the_queue_and_the_priority() -> None:
    metrics = GatewayMetrics()
    flow = "{max_in_flight: 8, reserve: {high: 2}, max_queue: 24, queue_timeout: 3s}"
    policies, _ = parse_policies(POLICY.format(flow=flow, extra=""), "p.yaml")
    snap = compile_snapshot(policies, metrics=metrics, health=HealthRegistry(metrics))
    head = RequestHead("chat", [(b"x-switchyard-priority", b"low")])
    result = explain(snap, head, random.Random(1))
    assert result["flow"]["max_in_flight"] == {"low": 6, "high": 8}
    assert result["flow"]["priority"] == "low" and result["flow"]["waiting"] == {}
    text = render_text(result)
    assert "in flight per endpoint from priority: low 6, high 8; queue 24" in text
    assert "priority:  low (without a key; default normal)" in text
    bad = explain(
        snap, RequestHead("chat", [(b"x-switchyard-priority", b"asap")]), random.Random(1)
    )
    assert (
        bad["flow"]["priority"] is None
        and "x-switchyard-priority" in bad["flow"]["priority_problem"]
    )
