"""k8s:// pools: URL validation in the schema, expansion from EndpointSlices, and the
reloader recompiling when the ready pods change (an in-memory discovery double)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from pathlib import Path

import pytest
from prometheus_client.exposition import generate_latest

from gateway.controlplane.k8s.discovery import ready_endpoints
from gateway.controlplane.k8s.pools import expand_pool, service_pools
from gateway.controlplane.policy.compile import compile_snapshot
from gateway.controlplane.policy.fields import split_service_url
from gateway.controlplane.policy.loader import PolicyError, parse_policies
from gateway.controlplane.policy.reload import PolicyReloader
from gateway.dataplane.health import HealthRegistry
from gateway.dataplane.snapshot import SnapshotRef
from gateway.observability.metrics import BackendPod, GatewayMetrics
from tests.kubefake import endpoint_slice

LOG = logging.getLogger("test.k8s.pools")
POLICY = """\
apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants:
  - name: main
    endpoints: [k8s://models/vllm:http, http://10.0.0.9:8000]
backends:
  chat/3: {endpoints: [k8s://models/vllm-v3:8000/v1]}
"""


@pytest.mark.parametrize(
    ("url", "canonical"),
    [
        ("k8s://models/vllm:http", "k8s://models/vllm:http"),
        ("k8s://models/vllm:8000", "k8s://models/vllm:8000"),
        ("k8s://models/vllm:8000/v1/", "k8s://models/vllm:8000/v1"),
    ],
)
def test_service_urls_are_parsed_and_canonical(url: str, canonical: str) -> None:
    assert split_service_url(url).url == canonical


@pytest.mark.parametrize(
    "url",
    [
        "k8s://vllm:http",  # no namespace
        "k8s://Models/vllm:http",  # not a DNS label
        "k8s://models/vllm",  # no port
        "k8s://models/vllm:70000",
        "k8s://models/vllm:a-very-long-port-name",  # over 15 characters
        "k8s://models/vllm:http#x",
    ],
)
def test_bad_service_urls_are_policy_problems(url: str) -> None:
    text = POLICY.replace("k8s://models/vllm:http", f'"{url}"')
    policies, problems = parse_policies(text, "p.yaml")
    assert not policies
    assert problems and problems[0].field_path == "variants[0].endpoints[0]"
    assert "k8s://NAMESPACE/SERVICE:PORT" in problems[0].message or "port" in problems[0].message


def test_pools_expand_to_ready_pods_and_need_kubernetes() -> None:
    policies, problems = parse_policies(POLICY, "p.yaml")
    assert not problems
    assert service_pools(policies) == {"k8s://models/vllm:http", "k8s://models/vllm-v3:8000/v1"}
    metrics = GatewayMetrics()
    with pytest.raises(PolicyError, match="need the Kubernetes API"):
        compile_snapshot(policies, metrics=metrics, health=HealthRegistry(metrics))
    pods = {"k8s://models/vllm:http": ["http://10.1.0.1:8000", "http://10.1.0.2:8000"]}
    snapshot = compile_snapshot(
        policies, metrics=metrics, health=HealthRegistry(metrics), discovered=pods
    )
    backends = [e.backend for e in snapshot.routes["chat"].variants[0].endpoints]
    assert backends == ["10.1.0.1:8000", "10.1.0.2:8000", "10.0.0.9:8000"]
    # A pool not listed yet is empty; a pod in two pools counts once.
    assert expand_pool(["k8s://a/b:c"], {}) == []
    twice = {"k8s://a/b:c": ["http://1.1.1.1:80"], "k8s://a/d:c": ["http://1.1.1.1:80"]}
    assert expand_pool(["k8s://a/b:c", "k8s://a/d:c"], twice) == ["http://1.1.1.1:80"]


def test_ready_endpoints_follow_conditions_ports_and_pods() -> None:
    ref = split_service_url("k8s://models/vllm:http")
    slices = [
        endpoint_slice(
            "models",
            "vllm",
            "a",
            8000,
            [("10.0.0.1", True, "vllm-0"), ("10.0.0.2", False, "vllm-1"), ("10.0.0.3", None, "p")],
        ),
        endpoint_slice("models", "vllm", "b", 9000, [("10.0.0.4", True, "x")], port_name="grpc"),
    ]
    found = ready_endpoints(ref, slices)
    assert found == {
        "http://10.0.0.1:8000": BackendPod("models", "vllm", "vllm-0"),
        "http://10.0.0.3:8000": BackendPod("models", "vllm", "p"),
    }
    by_number = ready_endpoints(split_service_url("k8s://models/vllm:9000/v1"), slices)
    assert list(by_number) == ["http://10.0.0.4:9000/v1"]
    ipv6 = endpoint_slice("models", "vllm", "c", 8000, [("fd00::1", True, "v6")])
    assert list(ready_endpoints(ref, [ipv6])) == ["http://[fd00::1]:8000"]


class FakeDiscovery:
    """The reloader's view of discovery, set by the test."""

    def __init__(self) -> None:
        self.pools: dict[str, tuple[str, ...]] = {}
        self.watched: set[str] = set()
        self.changed = asyncio.Event()
        self.error: str | None = None

    async def ensure(self, pools: Iterable[str]) -> str | None:
        self.watched |= set(pools)
        return self.error

    def retain(self, pools: Iterable[str]) -> None:
        self.watched = set(pools)

    def view(self) -> dict[str, tuple[str, ...]]:
        return dict(self.pools)

    def pods(self) -> dict[str, BackendPod]:
        return {
            url.split("//")[1]: BackendPod("models", "vllm", f"pod-{i}")
            for urls in self.pools.values()
            for i, url in enumerate(urls)
        }

    async def wait_changed(self) -> None:
        await self.changed.wait()
        self.changed.clear()


async def test_reloader_recompiles_when_pods_change(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(POLICY.split("backends:")[0])
    metrics = GatewayMetrics()
    discovery = FakeDiscovery()
    discovery.pools = {"k8s://models/vllm:http": ("http://10.1.0.1:8000",)}
    reloader = PolicyReloader(tmp_path, metrics, HealthRegistry(metrics), LOG, discovery=discovery)
    ref = SnapshotRef(await reloader.load())
    assert discovery.watched == {"k8s://models/vllm:http"}
    assert ref.current.routes["chat"].variants[0].endpoints[0].backend == "10.1.0.1:8000"
    assert not await reloader.refresh_discovery(ref)  # nothing moved
    discovery.pools = {"k8s://models/vllm:http": ("http://10.1.0.2:8000",)}
    follow = asyncio.get_running_loop().create_task(reloader.follow_discovery(ref))
    try:
        discovery.changed.set()
        async with asyncio.timeout(5):
            while ref.current.routes["chat"].variants[0].endpoints[0].backend != "10.1.0.2:8000":
                await asyncio.sleep(0.01)
    finally:
        follow.cancel()
    assert metrics.discovered == {"k8s://models/vllm:http": 1}
    text = generate_latest(metrics.registry()).decode()
    assert 'k8s_pod="pod-0"' in text
    # The pod that left is no longer exported once idle; the new one is.
    assert 'backend="10.1.0.1:8000"' not in text.split("switchyard_backend_in_flight")[2]

    # Without Kubernetes access a reload that needs it is rejected, naming why.
    discovery.error = "no Kubernetes API: not running in a cluster"
    discovery.pools = {}
    (tmp_path / "p.yaml").write_text(POLICY.split("backends:")[0].replace("vllm:http", "new:http"))
    result = await reloader.reload(ref, "test")
    assert result.outcome == "rejected"
    assert "no Kubernetes API" in result.problems[0].message


async def test_without_discovery_k8s_pools_are_refused(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(POLICY)
    metrics = GatewayMetrics()
    reloader = PolicyReloader(tmp_path, metrics, HealthRegistry(metrics), LOG)
    with pytest.raises(PolicyError, match="k8s:// endpoints need the Kubernetes API"):
        await reloader.load()
