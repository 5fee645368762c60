"""Variant decisions on compiled policies: splits, stickiness, overrides, fallbacks."""

from __future__ import annotations

import math
import random

import pytest

from gateway.controlplane.policy.compile import compile_snapshot
from gateway.controlplane.policy.loader import parse_policies
from gateway.dataplane.decide import RequestHead, decide
from gateway.dataplane.health import HealthRegistry
from gateway.dataplane.snapshot import RuntimeSnapshot
from gateway.errors import UnknownRoute
from gateway.observability.metrics import GatewayMetrics

N = 10_000


def canary(
    champion: float = 90,
    challenger: float = 10,
    *,
    sticky: str | None = "header:x-user-id",
    fallback: str = "[champion]",
    extra: str = "",
) -> RuntimeSnapshot:
    """A freshly compiled chat route (its own metrics and health, like a new replica)."""
    text = f"""
apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants:
  - name: champion
    weight: {champion}
    endpoints: [http://127.0.0.1:9101]
  - name: challenger
    weight: {challenger}
    endpoints: [http://127.0.0.1:9102]
fallback: {fallback}
"""
    if sticky:
        text += f"sticky: {{hash_on: '{sticky}'}}\n"
    text += extra
    policies, problems = parse_policies(text, "chat.yaml")
    assert problems == []
    metrics = GatewayMetrics()
    return compile_snapshot(policies, metrics=metrics, health=HealthRegistry(metrics))


def user(key: str) -> RequestHead:
    return RequestHead("chat", ((b"x-user-id", key.encode()),))


def within_binomial(count: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_weighted_split_is_90_10_within_binomial_bounds() -> None:
    snapshot = canary(sticky=None)
    rng = random.Random(1234)
    chosen = [decide(snapshot, RequestHead("chat"), rng) for _ in range(N)]
    challenger = sum(d.variant.name == "challenger" for d in chosen)
    assert within_binomial(challenger, N, 0.10), challenger
    assert {d.reason for d in chosen} == {"weighted"}


def test_sticky_split_of_distinct_users_is_90_10_within_binomial_bounds() -> None:
    snapshot = canary()
    rng = random.Random(0)
    chosen = [decide(snapshot, user(f"user-{i}"), rng) for i in range(N)]
    assert within_binomial(sum(d.variant.name == "challenger" for d in chosen), N, 0.10)
    assert {d.reason for d in chosen} == {"sticky"}


def test_same_sticky_key_gets_same_variant_on_independently_compiled_snapshots() -> None:
    # Two replicas: separate compilations, metrics, health and RNG seeds.
    first, second = canary(), canary()
    rng_a, rng_b = random.Random(1), random.Random(2)
    picks_a = [decide(first, user(f"u{i}"), rng_a).variant.name for i in range(2_000)]
    picks_b = [decide(second, user(f"u{i}"), rng_b).variant.name for i in range(2_000)]
    assert picks_a == picks_b
    assert set(picks_a) == {"champion", "challenger"}
    # Repeated requests of one user never change variant.
    assert {decide(first, user("u7"), rng_a).variant.name for _ in range(50)} == {picks_a[7]}


@pytest.mark.parametrize(("champion_after", "challenger_after"), [(90, 25), (75, 25)])
def test_raising_challenger_weight_keeps_its_users(
    champion_after: float, challenger_after: float
) -> None:
    before, after = canary(90, 10), canary(champion_after, challenger_after)
    rng = random.Random(0)
    keys = [f"user-{i}" for i in range(N)]
    was = {k for k in keys if decide(before, user(k), rng).variant.name == "challenger"}
    now = {k for k in keys if decide(after, user(k), rng).variant.name == "challenger"}
    assert was <= now  # nobody on the challenger flips back
    assert len(now) > len(was)  # and the larger share brings new users in
    share = challenger_after / (champion_after + challenger_after)
    assert within_binomial(len(now), N, share)


def test_override_beats_sticky_assignment() -> None:
    snapshot = canary(
        extra="overrides:\n  - match: {header: {X-Cohort: beta}}\n    variant: challenger\n"
    )
    rng = random.Random(0)
    on_champion = next(
        f"u{i}" for i in range(100) if decide(snapshot, user(f"u{i}"), rng).variant.index == 0
    )
    head = RequestHead("chat", ((b"x-user-id", on_champion.encode()), (b"x-cohort", b"beta")))
    decision = decide(snapshot, head, rng)
    assert (decision.variant.name, decision.reason) == ("challenger", "override")
    assert [v.name for v in decision.order] == ["challenger", "champion"]
    # Values match exactly: another value falls through to the sticky choice.
    other = RequestHead("chat", ((b"x-user-id", on_champion.encode()), (b"x-cohort", b"Beta")))
    assert decide(snapshot, other, rng).variant.name == "champion"


def test_override_needs_every_listed_header() -> None:
    snapshot = canary(
        sticky=None,
        champion=100,
        challenger=0,
        extra="overrides:\n  - match: {header: {x-a: '1', x-b: '2'}}\n    variant: challenger\n",
    )
    rng = random.Random(0)
    both = RequestHead("chat", ((b"x-a", b"1"), (b"x-b", b"2")))
    one = RequestHead("chat", ((b"x-a", b"1"),))
    assert decide(snapshot, both, rng).variant.name == "challenger"
    # Weight 0: the challenger is reachable only by override.
    assert {decide(snapshot, one, rng).variant.name for _ in range(500)} == {"champion"}


def test_fallback_order_follows_policy_and_skips_the_chosen_variant() -> None:
    snapshot = canary(sticky=None, fallback="[champion, challenger]")
    rng = random.Random(5)
    orders = {
        tuple(v.name for v in decide(snapshot, RequestHead("chat"), rng).order) for _ in range(300)
    }
    assert orders == {("champion", "challenger"), ("challenger", "champion")}


def test_without_fallback_only_the_chosen_variant_is_tried() -> None:
    snapshot = canary(sticky=None, fallback="[]")
    decision = decide(snapshot, RequestHead("chat"), random.Random(0))
    assert decision.order == (decision.variant,)


def test_missing_sticky_key_falls_back_to_weighted_random() -> None:
    snapshot = canary()
    rng = random.Random(99)
    chosen = [decide(snapshot, RequestHead("chat", ((b"x-other", b"1"),)), rng) for _ in range(N)]
    assert {(d.reason, d.sticky_key) for d in chosen} == {("weighted", None)}
    assert within_binomial(sum(d.variant.name == "challenger" for d in chosen), N, 0.10)


def test_body_field_sticky_key() -> None:
    snapshot = canary(sticky="body:user")
    rng = random.Random(0)
    decision = decide(snapshot, RequestHead("chat", body={"user": "alice"}), rng)
    assert (decision.reason, decision.sticky_key) == ("sticky", "alice")
    picks = {decide(snapshot, RequestHead("chat", body={"user": "alice"}), rng).variant.name}
    assert picks == {decision.variant.name}
    nested = decide(snapshot, RequestHead("chat", body={"user": {"id": 1}}), rng)
    assert nested.reason == "weighted"


def test_single_variant_route_and_unknown_route() -> None:
    policies, _ = parse_policies(
        "apiVersion: switchyard/v1\nkind: RoutingPolicy\nroute: embed\n"
        "variants: [{name: only, endpoints: ['http://127.0.0.1:9101']}]\n",
        "embed.yaml",
    )
    metrics = GatewayMetrics()
    snapshot = compile_snapshot(policies, metrics=metrics, health=HealthRegistry(metrics))
    decision = decide(snapshot, RequestHead("embed"), random.Random(0))
    assert (decision.variant.name, decision.reason) == ("only", "single")
    with pytest.raises(UnknownRoute):
        decide(snapshot, RequestHead("nope"), random.Random(0))
