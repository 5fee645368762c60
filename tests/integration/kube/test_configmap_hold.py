"""Policies from a watched ConfigMap get the same hold as files: an emptied or truncated
key that would remove serving routes is held (logged, counted, a Warning Event), a key
deleted on purpose or a route named in the `switchyard.io/remove-routes` annotation goes.

The real reloader and ConfigMap source, through the real `kubernetes.aio` client, against
the fake API server.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.controlplane.k8s.client import Backoff, KubeAccess
from gateway.controlplane.k8s.configmap import ConfigMapPolicies
from gateway.controlplane.policy.reload import PolicyReloader, ReloadResult
from gateway.dataplane.health import HealthRegistry
from gateway.dataplane.snapshot import SnapshotRef
from gateway.observability.metrics import GatewayMetrics
from tests.kubefake import EVENTS, FakeKube, configmap

LOG = logging.getLogger("test.kube.configmap.hold")


def route(name: str) -> str:
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: {name}
variants: [{{name: main, endpoints: ['http://127.0.0.1:9101']}}]
"""


def policies(data: dict[str, str], remove: str | None = None) -> dict[str, Any]:
    obj = configmap("prod", "policies", data)
    if remove is not None:
        obj["metadata"]["annotations"] = {"switchyard.io/remove-routes": remove}
    return obj


@pytest.fixture
async def access(kubeconfig: Path) -> AsyncIterator[KubeAccess]:
    access = KubeAccess(str(kubeconfig))
    yield access
    await access.aclose()


async def test_emptied_and_truncated_configmaps_are_held_deleted_keys_and_annotations_apply(
    kube: FakeKube, access: KubeAccess
) -> None:
    full = {"chat.yaml": route("chat") + "---\n" + route("embed"), "rerank.yaml": route("rerank")}
    kube.apply(policies(full))
    metrics = GatewayMetrics()
    source = ConfigMapPolicies(
        "prod/policies",
        access,
        metrics,
        LOG,
        backoff=Backoff(base=0.05, cap=0.2, rng=random.Random(1)),
        watch_timeout=30,
    )
    await source.start()
    reloader = PolicyReloader(source, metrics, HealthRegistry(metrics), LOG)
    ref = SnapshotRef(await reloader.load())
    serving = ref.current
    results: list[ReloadResult] = []
    arrived = asyncio.Event()

    async def reload(reason: str) -> ReloadResult:
        result = await reloader.reload(ref, reason)
        results.append(result)
        arrived.set()
        return result

    async def edit(obj: dict[str, Any]) -> ReloadResult:
        """Apply an edit and wait for the reload the watch makes of it."""
        count = len(results)
        kube.apply(obj)
        async with asyncio.timeout(10):
            while len(results) == count:
                arrived.clear()
                await arrived.wait()
        return results[-1]

    task = asyncio.create_task(source.follow(reload))
    try:
        # Every key emptied or left with comments only: nothing would serve. Held.
        result = await edit(policies({"chat.yaml": "", "rerank.yaml": "# later\n"}))
        assert result.outcome == "held" and result.held is not None
        assert (result.held.reason, result.held.routes) == ("empty", ("chat", "embed", "rerank"))
        assert result.held.source == "configmap prod/policies"
        assert ref.current is serving

        # A key truncated after its first document: its second route is held.
        result = await edit(policies({"chat.yaml": route("chat"), "rerank.yaml": route("rerank")}))
        assert result.outcome == "held" and result.held is not None
        assert (result.held.reason, result.held.routes) == ("removes_routes", ("embed",))
        assert ref.current is serving
        assert metrics.reload_held == "removes_routes"

        # The full content back: nothing changes, nothing is held.
        result = await edit(policies(full))
        assert result.outcome == "unchanged" and reloader.held is None

        # A key deleted on purpose removes its routes.
        result = await edit(policies({"chat.yaml": full["chat.yaml"]}))
        assert result.outcome == "success"
        assert sorted(ref.current.routes) == ["chat", "embed"]

        # A route cut from a key that stays needs the annotation.
        result = await edit(policies({"chat.yaml": route("chat")}, remove="embed"))
        assert result.outcome == "success"
        assert sorted(ref.current.routes) == ["chat"]
        assert metrics.reloads == {"success": 2, "rejected": 0, "unchanged": 1, "held": 2}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    # Each held edit is a Warning Event on the ConfigMap saying what it would remove.
    held = [e for e in kube.items(EVENTS, "prod") if e["reason"] == "PolicyHeld"]
    assert len(held) == 2
    assert all(e["type"] == "Warning" for e in held)
    assert all(e["involvedObject"]["name"] == "policies" for e in held)
    assert any("would remove 1 serving route(s) (embed)" in e["message"] for e in held)
    assert any("remove=*" in e["message"] for e in held)
