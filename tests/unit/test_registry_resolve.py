"""Binding registry versions to endpoints, and the resolver's last-good memory."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from gateway.controlplane.policy.compile import compile_snapshot
from gateway.controlplane.policy.loader import LoadedPolicy, parse_policies
from gateway.controlplane.policy.reload import PolicyReloader
from gateway.controlplane.registry.binding import Need, Resolved, bind, needs_of
from gateway.controlplane.registry.client import MlflowRegistry, ModelVersion, RegistryConfig
from gateway.controlplane.registry.resolve import RegistryResolver
from gateway.dataplane.decide import RequestHead, decide
from gateway.dataplane.health import HealthRegistry
from gateway.dataplane.snapshot import SnapshotRef
from gateway.errors import Unavailable
from gateway.observability.metrics import GatewayMetrics

LOG = logging.getLogger("test.registry")
POLICY = """\
apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants:
  - {name: champion, weight: 90, target: "models:/chat@champion"}
  - {name: challenger, weight: 10, target: "models:/chat@challenger"}
  - {name: pinned, weight: 0, target: "models:/chat/7"}
backends:
  chat/7: {endpoints: ["http://10.0.0.7:8000"], model: llama-7}
"""
STATIC = """\
apiVersion: switchyard/v1
kind: RoutingPolicy
route: static
variants: [{name: only, endpoints: ["http://10.0.0.9:8000"]}]
"""


def policies(*texts: str) -> list[LoadedPolicy]:
    out: list[LoadedPolicy] = []
    for i, text in enumerate(texts):
        found, problems = parse_policies(text, f"p{i}.yaml")
        assert not problems, problems
        out.extend(found)
    return out


def version(v: str, **tags: str) -> ModelVersion:
    return ModelVersion("chat", v, tags={k.replace("_", "."): t for k, t in tags.items()})


def need(**overrides: object) -> Need:
    base: dict[str, object] = {
        "route": "chat",
        "variant": "champion",
        "target": "models:/chat@champion",
        "model": "chat",
        "alias": "champion",
        "version": None,
        "protocol": "openai",
    }
    return Need(**{**base, **overrides})  # type: ignore[arg-type]


def test_needs_of_lists_targets_without_endpoints_with_their_backends() -> None:
    found = needs_of(policies(POLICY, STATIC))
    assert [(n.variant, n.lookup, n.static) for n in found] == [
        ("champion", "chat@champion", False),
        ("challenger", "chat@challenger", False),
        ("pinned", "chat/7", True),
    ]
    assert list(found[0].backends) == ["7"]


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        (
            {"switchyard_endpoint": "http://a:1, http://b:2/v1,http://a:1"},
            Resolved("3", ("http://a:1", "http://b:2/v1"), None, "tags"),
        ),
        (
            {"switchyard_endpoint": "http://a:1", "switchyard_model": "llama3-ft"},
            Resolved("3", ("http://a:1",), "llama3-ft", "tags"),
        ),
        ({}, "chat version 3 names no serving endpoint: set its tag switchyard.endpoint"),
        (
            {"switchyard_endpoint": "https://a:1"},
            "chat version 3: tag switchyard.endpoint: 'https://a:1': https:// endpoints",
        ),
        (
            {"switchyard_endpoint": "http://a:1", "switchyard_protocol": "grpc"},
            "chat version 3: tag switchyard.protocol='grpc' is not a known protocol",
        ),
        (
            {"switchyard_endpoint": "http://a:1", "switchyard_protocol": "kserve-v2"},
            "chat version 3 serves kserve-v2 (switchyard.protocol) but route 'chat' speaks openai",
        ),
    ],
)
def test_bind_reads_the_serving_tags(tags: dict[str, str], expected: Resolved | str) -> None:
    result = bind(need(), version("3", **tags))
    if isinstance(expected, str):
        assert isinstance(result, str) and result.startswith(expected), result
    else:
        assert result == expected


def test_backends_map_wins_over_tags_and_pinned_versions_need_no_registry() -> None:
    (loaded,) = policies(POLICY)
    champion, _, pinned = needs_of([loaded])
    tagged = version("7", switchyard_endpoint="http://elsewhere:1")
    assert bind(champion, tagged) == Resolved("7", ("http://10.0.0.7:8000",), "llama-7", "backends")
    assert bind(pinned, None) == Resolved("7", ("http://10.0.0.7:8000",), "llama-7", "backends")
    pending = ModelVersion("chat", "7", status="PENDING_REGISTRATION")
    assert bind(champion, pending) == "chat version 7 is PENDING_REGISTRATION, not READY"


def test_compile_marks_routes_with_an_unresolved_weighted_variant_unavailable() -> None:
    metrics = GatewayMetrics()
    loaded = policies(POLICY, STATIC)
    resolved = {("chat", "champion"): Resolved("3", ("http://10.0.0.3:8000",), "m3", "tags")}
    snap = compile_snapshot(
        loaded,
        metrics=metrics,
        health=HealthRegistry(metrics),
        resolved={**resolved, ("chat", "challenger"): "models:/chat@challenger: gone"},
    )
    chat = snap.routes["chat"]
    assert chat.unavailable == "route 'chat' is unavailable: models:/chat@challenger: gone"
    assert snap.routes["static"].unavailable is None
    with pytest.raises(Unavailable, match="challenger: gone"):
        decide(snap, RequestHead("chat"), random.Random(0))
    champion, challenger, pinned = chat.variants
    assert (champion.version, champion.upstream_model) == ("3", "m3")
    assert champion.header_lines[0].endswith(b"x-switchyard-version: 3\r\n")
    assert challenger.endpoints == ()
    assert (pinned.version, pinned.endpoints[0].url) == ("7", "http://10.0.0.7:8000")

    # Resolved: the route serves, and a weight-0 variant never takes it down.
    resolved[("chat", "challenger")] = Resolved("4", ("http://10.0.0.4:8000",), None, "tags")
    snap = compile_snapshot(
        loaded,
        metrics=metrics,
        health=HealthRegistry(metrics),
        resolved=resolved,
    )
    assert snap.routes["chat"].unavailable is None


class FakeMlflow:
    """MLflow's alias endpoint, programmable per test: versions, or a failure."""

    def __init__(self) -> None:
        self.aliases: dict[str, dict[str, str]] = {}  # alias -> tags, version in "_v"
        self.down = False
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        alias = request.url.params["alias"]
        if alias not in self.aliases:
            body = {
                "error_code": "INVALID_PARAMETER_VALUE",
                "message": f"Registered model alias {alias} not found.",
            }
            return httpx.Response(400, json=body)
        tags = dict(self.aliases[alias])
        v = tags.pop("_v")
        return httpx.Response(
            200,
            json={
                "model_version": {
                    "name": "chat",
                    "version": v,
                    "status": "READY",
                    "tags": [{"key": k, "value": t} for k, t in tags.items()],
                }
            },
        )

    def point(self, alias: str, v: str, endpoint: str | None) -> None:
        tags = {"_v": v}
        if endpoint:
            tags["switchyard.endpoint"] = endpoint
        self.aliases[alias] = tags


@pytest.fixture
def fake() -> FakeMlflow:
    return FakeMlflow()


@pytest.fixture
def make_resolver(
    fake: FakeMlflow, tmp_path: Path
) -> Callable[..., tuple[RegistryResolver, GatewayMetrics]]:
    def make(cache: bool = False) -> tuple[RegistryResolver, GatewayMetrics]:
        metrics = GatewayMetrics()
        registry = MlflowRegistry(
            RegistryConfig("http://mlflow:5000"), transport=httpx.MockTransport(fake)
        )
        path = tmp_path / "cache.json" if cache else None
        return RegistryResolver(
            registry, metrics, LOG, cache_path=path, clock=lambda: 100.0
        ), metrics

    return make


async def test_resolver_keeps_the_last_good_version_when_the_registry_blinks(
    fake: FakeMlflow, make_resolver: Callable[..., tuple[RegistryResolver, GatewayMetrics]]
) -> None:
    resolver, metrics = make_resolver()
    needs = needs_of(policies(POLICY))
    fake.point("champion", "1", "http://a:1")
    fake.point("challenger", "2", "http://b:2")
    assert await resolver.refresh(needs)
    bound = resolver.bind(needs)
    assert bound[("chat", "champion")] == Resolved("1", ("http://a:1",), None, "tags")
    gauge = metrics.registry_aliases[("chat", "champion")]
    assert (gauge.version, gauge.stale, gauge.resolved_at) == ("1", False, 100.0)
    assert fake.calls == 2  # the pinned, backends-served version needs no lookup

    # Registry down: same bindings, stale gauges, errors counted.
    fake.down = True
    await resolver.refresh(needs)
    assert resolver.bind(needs) == bound
    assert metrics.registry_aliases[("chat", "champion")].stale
    assert metrics.registry_lookups["error"] == 2
    view = resolver.view()[("chat", "champion")]
    assert view["version"] == "1" and view["stale"]
    assert "unreachable" in view["problem"]

    # Back, with challenger's alias deleted: champion is fresh, challenger keeps v2.
    fake.down = False
    del fake.aliases["challenger"]
    await resolver.refresh(needs)
    again = resolver.bind(needs)
    assert again[("chat", "challenger")] == bound[("chat", "challenger")]
    assert not metrics.registry_aliases[("chat", "champion")].stale
    assert metrics.registry_aliases[("chat", "challenger")].stale
    assert metrics.registry_lookups["not_found"] == 1

    # An alias moved to a version with no endpoint: keep v1, report the problem.
    fake.point("champion", "5", None)
    await resolver.refresh(needs)
    moved = resolver.bind(needs)
    assert moved[("chat", "champion")] == bound[("chat", "champion")]
    assert metrics.registry_aliases[("chat", "champion")].version == "5"
    assert metrics.registry_aliases[("chat", "champion")].stale
    assert metrics.registry_problems == {"chat": 2}
    assert "names no serving endpoint" in resolver.view()[("chat", "champion")]["problem"]


async def test_resolver_without_any_answer_reports_why(
    fake: FakeMlflow, make_resolver: Callable[..., tuple[RegistryResolver, GatewayMetrics]]
) -> None:
    resolver, _ = make_resolver()
    needs = needs_of(policies(POLICY))
    fake.down = True
    await resolver.refresh(needs)
    bound = resolver.bind(needs)
    assert bound[("chat", "champion")] == (
        "registry lookup of models:/chat@champion failed: registry http://mlflow:5000 "
        "unreachable: connection refused; no cached resolution"
    )


async def test_cache_serves_a_restart_while_the_registry_is_down(
    fake: FakeMlflow, make_resolver: Callable[..., tuple[RegistryResolver, GatewayMetrics]]
) -> None:
    first, _ = make_resolver(cache=True)
    needs = needs_of(policies(POLICY))
    fake.point("champion", "1", "http://a:1")
    fake.point("challenger", "2", "http://b:2")
    await first.refresh(needs)
    expected = first.bind(needs)

    fake.down = True
    second, metrics = make_resolver(cache=True)
    await second.refresh(needs)
    assert second.bind(needs) == expected
    assert metrics.registry_aliases[("chat", "champion")].stale


async def test_only_missing_skips_lookups_already_answered(
    fake: FakeMlflow, make_resolver: Callable[..., tuple[RegistryResolver, GatewayMetrics]]
) -> None:
    resolver, _ = make_resolver()
    needs = needs_of(policies(POLICY))
    fake.point("champion", "1", "http://a:1")
    fake.point("challenger", "2", "http://b:2")
    await resolver.refresh(needs)
    calls = fake.calls
    assert not await resolver.refresh(needs, only_missing=True)
    assert fake.calls == calls


def test_unreadable_cache_is_ignored(
    tmp_path: Path, make_resolver: Callable[..., tuple[RegistryResolver, GatewayMetrics]]
) -> None:
    (tmp_path / "cache.json").write_text(json.dumps({"format": 99}))
    resolver, _ = make_resolver(cache=True)
    assert resolver.view() == {}


async def test_reloader_follows_the_registry_and_keeps_serving_routes_up(
    fake: FakeMlflow,
    make_resolver: Callable[..., tuple[RegistryResolver, GatewayMetrics]],
    tmp_path: Path,
) -> None:
    resolver, metrics = make_resolver()
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir()
    one = POLICY.split("  - {name: challenger")[0] + "backends:" + POLICY.split("backends:")[1]
    (policy_dir / "chat.yaml").write_text(one)
    fake.point("champion", "1", "http://a:1")
    reloader = PolicyReloader(policy_dir, metrics, HealthRegistry(metrics), LOG, resolver=resolver)
    ref = SnapshotRef(await reloader.load())
    assert ref.current.routes["chat"].variants[0].version == "1"

    fake.point("champion", "2", "http://b:2")
    assert await reloader.refresh_registry(ref)
    champion = ref.current.routes["chat"].variants[0]
    assert (champion.version, champion.endpoints[0].url) == ("2", "http://b:2")
    assert not await reloader.refresh_registry(ref)  # nothing moved: no swap

    # Adding a variant the registry cannot resolve would take the serving route down.
    fake.down = True
    (policy_dir / "chat.yaml").write_text(POLICY)
    result = await reloader.reload(ref, "test")
    assert result.outcome == "rejected"
    assert "keeping the serving policy until it resolves" in result.problems[0].message
    assert ref.current.routes["chat"].unavailable is None
