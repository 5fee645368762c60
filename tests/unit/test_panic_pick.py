"""Panic routing: when outlier detection has ejected everything, still serve."""

from __future__ import annotations

import random

from gateway.controlplane.policy.compile import compile_snapshot
from gateway.controlplane.policy.loader import parse_policies
from gateway.dataplane.decide import RequestHead, decide
from gateway.dataplane.health import PROBE_EJECTED, HealthRegistry
from gateway.dataplane.pick import candidates, panic_pick
from gateway.observability.metrics import GatewayMetrics

POLICY = """apiVersion: switchyard/v1
kind: RoutingPolicy
route: r
variants:
  - {name: main, endpoints: ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]}
  - {name: spare, weight: 0, endpoints: ["http://127.0.0.1:9003"]}
fallback: [spare]
"""


def test_panic_pick_prefers_the_chosen_variant_and_skips_probe_down_endpoints() -> None:
    policies, problems = parse_policies(POLICY, "r.yaml")
    assert not problems
    metrics = GatewayMetrics()
    snap = compile_snapshot(policies, metrics=metrics, health=HealthRegistry(metrics))
    decision = decide(snap, RequestHead("r"), random.Random(1))
    main, spare = snap.routes["r"].variants
    for endpoint in (*main.endpoints, *spare.endpoints):
        endpoint.state.ejected_until = 1e12  # passively ejected, far into the future
    assert list(candidates(decision, 0.0, 0)) == []
    main.endpoints[0].state.in_flight = 3
    assert panic_pick(decision, 0) == (main, 1)  # the less loaded of the chosen variant
    # An endpoint an active probe reports down stays out, even in panic.
    main.endpoints[1].state.ejected_until = PROBE_EJECTED
    assert panic_pick(decision, 0) == (main, 0)
    main.endpoints[0].state.ejected_until = PROBE_EJECTED
    assert panic_pick(decision, 0) == (spare, 0)
    spare.endpoints[0].state.ejected_until = PROBE_EJECTED
    assert panic_pick(decision, 0) is None
