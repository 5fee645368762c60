"""The `shadow` list of a policy: validation, registry resolution and compilation."""

from __future__ import annotations

import logging

import httpx
import pytest

from gateway.controlplane.policy.compile import compile_snapshot
from gateway.controlplane.policy.loader import LoadedPolicy, PolicyError, parse_policies
from gateway.controlplane.registry.binding import (
    Binding,
    Resolved,
    VariantKey,
    needs_of,
    shadow_key,
)
from gateway.controlplane.registry.client import MlflowRegistry, RegistryConfig
from gateway.controlplane.registry.resolve import RegistryResolver
from gateway.dataplane.health import HealthRegistry
from gateway.dataplane.snapshot import RuntimeSnapshot
from gateway.observability.metrics import GatewayMetrics
from tests.unit.test_registry_resolve import FakeMlflow

HEAD = """\
apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants:
  - {name: champion, endpoints: ["http://10.0.0.1:8000"]}
"""


def parsed(shadow: str) -> tuple[list[LoadedPolicy], list[str]]:
    found, problems = parse_policies(HEAD + shadow, "p.yaml")
    return found, [str(p) for p in problems]


def compiled(
    shadow: str, resolved: dict[VariantKey, Binding] | None = None
) -> tuple[RuntimeSnapshot, GatewayMetrics]:
    found, problems = parsed(shadow)
    assert not problems, problems
    metrics = GatewayMetrics()
    health = HealthRegistry(metrics)
    return compile_snapshot(found, metrics=metrics, health=health, resolved=resolved), metrics


def test_defaults_and_name_from_the_alias() -> None:
    snap, metrics = compiled(
        "shadow:\n  - {target: 'models:/chat@candidate', sample: 0.1}\n"
        "  - {name: pinned, endpoints: ['http://10.0.0.2:8000'], model: chat-v2,\n"
        "     max_inflight: 8, timeouts: {total: 2s}, tolerance: 0, min_similarity: 0.8}\n",
        resolved={},
    )
    route = snap.routes["chat"]
    candidate, pinned = route.shadows
    assert (candidate.name, candidate.sample, candidate.max_inflight) == ("candidate", 0.1, 64)
    assert candidate.max_body_bytes == 1024 * 1024 and candidate.timeouts.total == 30.0
    # Unresolved: the shadow waits (its copies are skipped), the route still serves.
    assert candidate.endpoints == () and "not resolved yet" in (candidate.unavailable or "")
    assert route.unavailable is None
    assert pinned.endpoints[0].backend == "10.0.0.2:8000" and pinned.upstream_model == "chat-v2"
    assert (pinned.max_inflight, pinned.timeouts.total, pinned.timeouts.connect) == (8, 2.0, 0.5)
    assert (pinned.tolerance.numeric, pinned.tolerance.min_similarity) == (0.0, 0.8)
    assert pinned.series is metrics.shadow.series("chat", "pinned", "")


@pytest.mark.parametrize(
    ("shadow", "message"),
    [
        ("shadow: [{endpoints: ['http://h:1']}]", "needs a `name`"),
        ("shadow: [{name: x}]", "needs `endpoints`"),
        ("shadow: [{name: x, endpoints: ['http://h:1'], sample: 1.5}]", "sample"),
        ("shadow: [{name: x, endpoints: ['http://h:1'], max_inflight: 0}]", "max_inflight"),
        ("shadow: [{name: 'a b', endpoints: ['http://h:1']}]", "name"),
        ("shadow: [{name: x, endpoints: ['http://h:1'], mirror: true}]", "mirror"),
    ],
)
def test_bad_shadow_entries_are_rejected_with_their_place(shadow: str, message: str) -> None:
    _, problems = parsed(shadow + "\n")
    assert problems and all("shadow[0]" in p for p in problems), problems
    assert any(message in p for p in problems), problems


def test_duplicate_names_and_targets_without_a_registry() -> None:
    found, problems = parsed(
        "shadow:\n  - {name: a, endpoints: ['http://h:1']}\n  - {name: a, endpoints: ['http://h:2']}\n"
        "  - {target: 'models:/chat@candidate'}\n"
    )
    assert not problems
    metrics = GatewayMetrics()
    with pytest.raises(PolicyError) as caught:
        compile_snapshot(found, metrics=metrics, health=HealthRegistry(metrics))
    text = str(caught.value)
    assert "shadow[1].name: duplicate shadow name 'a' (also shadow[0])" in text
    assert "shadow[2].target: registry targets need a registry" in text


def test_shadow_targets_bind_like_variants() -> None:
    snap, _ = compiled(
        "shadow: [{target: 'models:/chat@candidate'}]\n",
        resolved={shadow_key("chat", "candidate"): Resolved("4", ("http://10.0.0.4:9000",), "m4")},
    )
    (shadow,) = snap.routes["chat"].shadows
    assert (shadow.version, shadow.upstream_model, shadow.unavailable) == ("4", "m4", None)
    assert [e.url for e in shadow.endpoints] == ["http://10.0.0.4:9000"]
    assert shadow.series.version == "4"


async def test_the_resolver_follows_a_shadow_alias() -> None:
    found, _ = parsed("shadow: [{target: 'models:/chat@candidate'}]\n")
    needs = needs_of(found)
    assert [n.key for n in needs] == [("chat", "shadow:candidate")]
    fake = FakeMlflow()
    fake.point("candidate", "5", "http://10.0.0.5:8000")
    metrics = GatewayMetrics()
    registry = MlflowRegistry(
        RegistryConfig("http://mlflow:5000"), transport=httpx.MockTransport(fake)
    )
    resolver = RegistryResolver(registry, metrics, logging.getLogger("test.shadow"))
    await resolver.refresh(needs)
    bound = resolver.bind(needs)
    await resolver.aclose()
    snap = compile_snapshot(found, metrics=metrics, health=HealthRegistry(metrics), resolved=bound)
    (shadow,) = snap.routes["chat"].shadows
    assert (shadow.version, [e.url for e in shadow.endpoints]) == ("5", ["http://10.0.0.5:8000"])
    assert metrics.registry_aliases[("chat", "candidate")].version == "5"


def test_routes_without_shadows_have_an_empty_tuple() -> None:
    snap, _ = compiled("")
    assert snap.routes["chat"].shadows == ()
