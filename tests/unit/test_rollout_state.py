"""Rollout policy checks, state transitions, stored form and the weights a state implies."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.controlplane.policy.compile import check_policies, compile_snapshot
from gateway.controlplane.policy.loader import PolicyError, collect_policies
from gateway.controlplane.policy.schema import RoutingPolicy
from gateway.controlplane.registry.binding import Resolved
from gateway.dataplane.health import HealthRegistry
from gateway.dataplane.snapshot import Route
from gateway.observability.metrics import GatewayMetrics
from gateway.rollout.state import RolloutState, implied_weights, start, transition
from gateway.rollout.weights import step_weights

BASE = """apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants:
  - {name: champion, weight: 90, endpoints: ["http://127.0.0.1:9101"]}
  - {name: challenger, weight: 10, endpoints: ["http://127.0.0.1:9102"]}
  - {name: debug, weight: 0, endpoints: ["http://127.0.0.1:9103"]}
"""


def load(tmp_path: Path, extra: str) -> tuple[list[str], list[RoutingPolicy]]:
    (tmp_path / "p.yaml").write_text(BASE + extra)
    policies, problems = collect_policies([tmp_path])
    problems.extend(check_policies(policies))
    return [str(p) for p in problems], [p.policy for p in policies]


def test_rollout_block_defaults_and_cross_checks(tmp_path: Path) -> None:
    problems, policies = load(tmp_path, "rollout: {on_success: hold}\n")
    assert problems == []
    rollout = policies[0].rollout
    assert rollout is not None
    assert rollout.steps == (1, 5, 25, 50, 100)
    assert rollout.analysis.interval == 60 and rollout.analysis.min_requests == 100
    assert rollout.challenger is None  # the second variant

    problems, _ = load(tmp_path, "rollout: {challenger: nobody, on_success: hold}\n")
    assert len(problems) == 1 and "no variant named 'nobody'" in problems[0]
    assert "rollout.challenger" in problems[0] and "p.yaml:" in problems[0]

    problems, _ = load(tmp_path, "rollout: {steps: [5, 1]}\n")
    assert any("steps must increase: 1 comes after 5" in p for p in problems)

    problems, _ = load(tmp_path, "rollout: {}\n")  # promote needs a registry alias
    assert any("on_success: promote moves a registry alias" in p for p in problems)

    problems, _ = load(tmp_path, "rollout: {challenger: champion, on_success: hold}\n")
    assert problems == []  # challenger stays reachable: challenger keeps weight 10
    problems, _ = load(tmp_path, "experiment: {baseline: gone}\n")
    assert any("experiment.baseline" in p and "no variant named 'gone'" in p for p in problems)


def test_a_rollout_needs_another_weighted_variant(tmp_path: Path) -> None:
    text = BASE.replace("weight: 90", "weight: 0")
    (tmp_path / "p.yaml").write_text(text + "rollout: {on_success: hold}\n")
    policies, _ = collect_policies([tmp_path])
    problems = [str(p) for p in check_policies(policies)]
    assert any("no other variant has a weight above 0" in p for p in problems)


def test_step_weights_keep_other_variants_in_proportion() -> None:
    policy = RoutingPolicy.model_validate(
        {
            "apiVersion": "switchyard/v1",
            "kind": "RoutingPolicy",
            "route": "r",
            "variants": [
                {"name": "a", "weight": 30, "endpoints": ["http://h:1"]},
                {"name": "c", "weight": 10, "endpoints": ["http://h:2"]},
                {"name": "b", "weight": 10, "endpoints": ["http://h:3"]},
                {"name": "z", "weight": 0, "endpoints": ["http://h:4"]},
            ],
        }
    )
    got = step_weights(policy, "c", 20)
    assert got == {("r", "c"): 20.0, ("r", "a"): 60.0, ("r", "b"): 20.0}
    assert step_weights(policy, "c", 100)[("r", "a")] == 0.0


def test_compiled_snapshot_applies_overrides_without_touching_the_policy(tmp_path: Path) -> None:
    _, policies = load(tmp_path, "rollout: {on_success: hold}\n")
    metrics = GatewayMetrics()
    snap = compile_snapshot(
        policies,
        metrics=metrics,
        health=HealthRegistry(metrics),
        weights=step_weights(policies[0], "challenger", 25),
    )
    route = snap.routes["chat"]
    assert [v.weight for v in route.variants] == [75.0, 25.0, 0.0]
    assert route.cumulative == (75.0, 100.0, 100.0)
    assert policies[0].variants[0].weight == 90  # the policy itself is unchanged
    plain = compile_snapshot(policies, metrics=metrics, health=HealthRegistry(metrics))
    assert plain.version == snap.version  # the policy hash ignores overrides
    # Overrides that would leave a route nothing to serve are ignored for that route.
    none = compile_snapshot(
        policies,
        metrics=metrics,
        health=HealthRegistry(metrics),
        weights={("chat", "champion"): 0.0, ("chat", "challenger"): 0.0},
    )
    assert [v.weight for v in none.routes["chat"].variants] == [90.0, 10.0, 0.0]


def test_transitions_history_and_stored_form(tmp_path: Path) -> None:
    _, policies = load(tmp_path, "rollout: {steps: [10, 50], on_success: hold}\n")
    policy = policies[0]
    state = start(policy, "challenger", "v2", "v1", "me", now=100.0)
    assert (state.status, state.step_number, state.percent) == ("progressing", 1, 10.0)
    assert implied_weights(state, policy, None) == step_weights(policy, "challenger", 10)

    paused = transition(state, "pause", 110.0, "cli:alice")
    assert paused.status == "paused" and paused.history[-1].reason == "paused by cli:alice"
    with pytest.raises(ValueError, match="cannot pause a rollout that is paused"):
        transition(paused, "pause", 111.0)
    resumed = transition(paused, "resume", 120.0)
    assert resumed.status == "progressing" and resumed.step_started_at == 120.0

    rolled = resumed.with_event("rollback", 130.0, "gate error_rate failed", status="rolled_back")
    assert implied_weights(rolled, policy, None) == {("chat", "challenger"): 0.0}
    assert rolled.step_number == 0 and rolled.history[-1].percent == 0.0
    restarted = transition(rolled, "resume", 140.0)
    assert (restarted.status, restarted.step, restarted.history[-1].event) == (
        "progressing",
        0,
        "restarted",
    )
    aborted = transition(restarted, "abort", 150.0)
    assert aborted.status == "aborted"
    with pytest.raises(ValueError, match="unknown action"):
        transition(aborted, "explode", 151.0)

    again = RolloutState.from_json(aborted.to_json())
    assert again == aborted
    assert [e.event for e in again.history] == [
        "started",
        "paused",
        "resumed",
        "rollback",
        "restarted",
        "aborted",
    ]
    with pytest.raises(ValueError, match="not a rollout state of this format"):
        RolloutState.from_json(b'{"format": 99}')


def test_promoted_state_keeps_last_step_weights_until_the_champion_moves(tmp_path: Path) -> None:
    text = BASE.replace(
        'endpoints: ["http://127.0.0.1:9101"]', "target: models:/chat@champion"
    ).replace('endpoints: ["http://127.0.0.1:9102"]', "target: models:/chat@challenger")
    (tmp_path / "p.yaml").write_text(text + "rollout: {steps: [50, 100]}\n")
    policies, problems = collect_policies([tmp_path])
    assert problems == [] and check_policies(policies, registry=True) == []
    policy = policies[0].policy
    state = start(policy, "challenger", "2", "1", "me", 1.0)
    promoted = state.with_event("promoted", 2.0, "moved", status="promoted", step=1, percent=100.0)
    metrics = GatewayMetrics()
    with pytest.raises(PolicyError):  # alias targets need resolutions to compile
        compile_snapshot(policies, metrics=metrics, health=HealthRegistry(metrics))

    def serving(champion_version: str) -> Route:
        resolved = {
            ("chat", "champion"): Resolved(champion_version, ("http://127.0.0.1:9101",)),
            ("chat", "challenger"): Resolved("2", ("http://127.0.0.1:9102",)),
            ("chat", "debug"): Resolved("1", ("http://127.0.0.1:9103",)),
        }
        health = HealthRegistry(metrics)
        snap = compile_snapshot(policies, metrics=metrics, health=health, resolved=resolved)
        return snap.routes["chat"]

    # The registry poll has not caught up: the champion variant still serves version 1.
    held = implied_weights(promoted, policy, serving("1"))
    assert held[("chat", "challenger")] == 100.0 and held[("chat", "champion")] == 0.0
    # @champion now resolves to the promoted version: back to the policy's weights.
    assert implied_weights(promoted, policy, serving("2")) == {}


def test_promotion_needs_a_variant_that_follows_the_moved_alias(tmp_path: Path) -> None:
    text = BASE.replace(
        'endpoints: ["http://127.0.0.1:9101"]', "target: models:/chat@stable"
    ).replace('endpoints: ["http://127.0.0.1:9102"]', "target: models:/chat@challenger")
    (tmp_path / "p.yaml").write_text(text + "rollout: {}\n")
    policies, _ = collect_policies([tmp_path])
    problems = [str(p) for p in check_policies(policies, registry=True)]
    assert len(problems) == 1, problems
    assert "rollout.promote_to" in problems[0]
    assert "moves models:/chat@champion, but no other variant follows it" in problems[0]
    (tmp_path / "p.yaml").write_text(text + "rollout: {promote_to: stable}\n")
    policies, _ = collect_policies([tmp_path])
    assert check_policies(policies, registry=True) == []
