"""The policies shipped in the repository validate, and the demo routes what the docs say."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from gateway.controlplane.policy.compile import compile_snapshot, load_checked
from gateway.controlplane.registry.binding import Resolved, bind, needs_of
from gateway.controlplane.registry.client import ModelVersion
from gateway.dataplane.decide import RequestHead, decide
from gateway.dataplane.health import HealthRegistry
from gateway.dataplane.snapshot import RuntimeSnapshot
from gateway.observability.metrics import GatewayMetrics
from gateway.quickstart.mlflow_server import DEMO_MODELS

POLICIES = Path(__file__).resolve().parents[2] / "policies"
EXAMPLES = sorted((POLICIES / "examples").glob("*.y*ml"))


def build(path: Path) -> RuntimeSnapshot:
    metrics = GatewayMetrics()
    return compile_snapshot(load_checked(path), metrics=metrics, health=HealthRegistry(metrics))


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_each_example_validates(path: Path) -> None:
    assert build(path).routes


def test_examples_directory_validates_as_one_set() -> None:
    assert len(build(POLICIES / "examples").routes) >= len(EXAMPLES)


def test_registry_demo_policies_follow_aliases() -> None:
    metrics = GatewayMetrics()
    snapshot = compile_snapshot(
        load_checked(POLICIES, registry=True),
        metrics=metrics,
        health=HealthRegistry(metrics),
        resolved={},
    )
    assert sorted(snapshot.routes) == [
        "chat",
        "chat-ollama",
        "completion",
        "embed",
        "fraud-detector",
        "fraud-service",
    ]
    chat = snapshot.routes["chat"]
    assert [v.target for v in chat.variants] == ["models:/chat@champion", "models:/chat@challenger"]
    # Unresolved until a registry answers; the static route serves regardless.
    assert chat.unavailable is not None and snapshot.routes["completion"].unavailable is None
    # Ollama clients reach the same versions, on the same aliases, through translation.
    ollama = snapshot.routes["chat-ollama"]
    assert ollama.protocol == "ollama"
    assert [(v.target, v.backend_protocol) for v in ollama.variants] == [
        ("models:/chat@champion", "openai"),
        ("models:/chat@challenger", "openai"),
    ]
    # The embed route's version 1 is served by the policy's backends map.
    embed = load_checked(POLICIES, registry=True)[2].policy
    assert embed.backends["embed/1"].endpoints == ["http://127.0.0.1:9101"]


def test_registry_demo_ollama_route_binds_to_the_seeded_openai_versions() -> None:
    """`chat-ollama` follows the same aliases as `chat`, whose versions the demo tags
    `switchyard.protocol: openai`: the variant's backend_protocol is what they must
    speak, not the route's protocol (ollama)."""
    (chat,) = (m for m in DEMO_MODELS if m.name == "chat")
    seeded = {
        alias: ModelVersion("chat", str(i), tags=v.tags())
        for i, v in enumerate(chat.versions, 1)
        for alias in v.aliases
    }
    found = [n for n in needs_of(load_checked(POLICIES, registry=True)) if n.route == "chat-ollama"]
    assert [(n.variant, n.protocol) for n in found] == [
        ("champion", "openai"),
        ("challenger", "openai"),
    ]
    assert [bind(n, seeded[n.alias or ""]) for n in found] == [
        Resolved("1", ("http://127.0.0.1:9101",)),
        Resolved("2", ("http://127.0.0.1:9102",)),
    ]
    # A version tagged with the route's protocol is not what the variant can call.
    wrong = ModelVersion(
        "chat", "3", tags={**seeded["champion"].tags, "switchyard.protocol": "ollama"}
    )
    assert bind(found[0], wrong) == (
        "chat version 3 serves ollama (switchyard.protocol) but variant 'champion' of route "
        "'chat-ollama' expects openai backends (backend_protocol)"
    )


def test_demo_policy_routes() -> None:
    snapshot = build(POLICIES / "no-registry")
    assert sorted(snapshot.routes) == [
        "chat",
        "chat-ollama",
        "completion",
        "embed",
        "fraud-detector",
        "fraud-service",
    ]
    chat = snapshot.routes["chat"]
    assert [(v.name, v.weight, v.endpoints[0].url) for v in chat.variants] == [
        ("champion", 90.0, "http://127.0.0.1:9101"),
        ("challenger", 10.0, "http://127.0.0.1:9102"),
    ]
    assert chat.sticky is not None and chat.sticky.key == "x-user-id"
    assert chat.retries.statuses == frozenset({502, 503}) and chat.retries.on_connect_error
    assert not chat.retries.on_reset
    beta = RequestHead("chat", ((b"x-cohort", b"beta"),))
    assert decide(snapshot, beta, random.Random(0)).variant.name == "challenger"
    assert [v.weight for v in snapshot.routes["completion"].variants] == [50.0, 50.0]
    # The chat servers again, for Ollama clients (translated to the OpenAI API).
    ollama = snapshot.routes["chat-ollama"]
    assert [(v.name, v.endpoints[0].url, v.backend_protocol) for v in ollama.variants] == [
        ("champion", "http://127.0.0.1:9101", "openai"),
        ("challenger", "http://127.0.0.1:9102", "openai"),
    ]
    assert len(snapshot.routes["embed"].variants) == 1
    # The quick start's tabular model: a 90/10 KServe v2 canary, sticky per user.
    fraud = snapshot.routes["fraud-detector"]
    assert fraud.protocol == "kserve-v2" and fraud.sticky is not None
    assert [(v.weight, v.model_path, v.version) for v in fraud.variants] == [
        (90.0, b"fraud-detector/versions/1", "1"),
        (10.0, b"fraud-detector/versions/2", "2"),
    ]
    assert snapshot.routes["fraud-service"].protocol == "json"
