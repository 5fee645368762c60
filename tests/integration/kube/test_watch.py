"""List+watch with the real `kubernetes.aio` client against the fake API server:
resume after dropped connections, relist after 410 Gone, bookmarks, deletions."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path

import pytest

from gateway.controlplane.k8s.client import Backoff, KubeAccess
from gateway.controlplane.k8s.watch import ListWatch, Obj
from gateway.observability.metrics import GatewayMetrics
from tests.kubefake import CONFIGMAPS, FakeKube, configmap

LOG = logging.getLogger("test.kube.watch")


class Seen:
    """What `on_change` reported, waitable."""

    def __init__(self) -> None:
        self.states: list[dict[str, Obj]] = []
        self._changed = asyncio.Event()

    async def __call__(self, objects: Mapping[str, Obj]) -> None:
        self.states.append(dict(objects))
        self._changed.set()

    def data(self, name: str) -> dict[str, str] | None:
        obj = self.states[-1].get(name) if self.states else None
        return None if obj is None else obj.get("data")

    async def until(self, check: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
async def access(kubeconfig: Path) -> AsyncIterator[KubeAccess]:
    access = KubeAccess(str(kubeconfig))
    yield access
    await access.aclose()


async def start_watch(
    access: KubeAccess, seen: Seen, metrics: GatewayMetrics, *, watch_timeout: int = 30
) -> tuple[ListWatch, asyncio.Task[None]]:
    from kubernetes.aio import client

    api = await access.client()
    watch = ListWatch(
        client.CoreV1Api(api).list_namespaced_config_map,
        api.sanitize_for_serialization,
        resource="configmap/prod/policies",
        namespace="prod",
        field_selector="metadata.name=policies",
        on_change=seen,
        metrics=metrics,
        logger=LOG,
        backoff=Backoff(base=0.05, cap=0.2, rng=random.Random(1)),
        watch_timeout=watch_timeout,
    )
    return watch, asyncio.get_running_loop().create_task(watch.run())


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            result = check()
            if result is True or (not isinstance(result, bool) and await result):
                return
            await asyncio.sleep(0.02)


def lists(kube: FakeKube) -> int:
    return sum(1 for r in kube.served("GET", "/configmaps") if "watch" not in r.query)


async def test_edits_arrive_and_other_objects_are_filtered(
    kube: FakeKube, access: KubeAccess
) -> None:
    kube.apply(configmap("prod", "policies", {"a.yaml": "1"}))
    kube.apply(configmap("prod", "unrelated", {"a.yaml": "x"}))
    seen, metrics = Seen(), GatewayMetrics()
    _watch, task = await start_watch(access, seen, metrics)
    try:
        await seen.until(lambda: seen.data("policies") == {"a.yaml": "1"})
        kube.apply(configmap("prod", "policies", {"a.yaml": "2"}))
        kube.apply(configmap("prod", "unrelated", {"a.yaml": "y"}))
        await seen.until(lambda: seen.data("policies") == {"a.yaml": "2"})
        assert all(set(state) <= {"policies"} for state in seen.states)
        assert metrics.kube_synced["configmap/prod/policies"] is True
        kube.delete(CONFIGMAPS, "prod", "policies")
        await seen.until(lambda: "policies" not in seen.states[-1])
        assert lists(kube) == 1
    finally:
        await stop(task)


async def test_dropped_connections_resume_from_the_last_version_without_relisting(
    kube: FakeKube, access: KubeAccess
) -> None:
    kube.apply(configmap("prod", "policies", {"a.yaml": "1"}))
    seen, metrics = Seen(), GatewayMetrics()
    _watch, task = await start_watch(access, seen, metrics)
    try:
        await eventually(lambda: kube.watch_count() == 1)
        for round_ in range(3):
            assert kube.drop_watches() == 1
            # Written while no watch is open: the resumed watch must replay it.
            kube.apply(configmap("prod", "policies", {"a.yaml": f"dropped-{round_}"}))
            await seen.until(lambda r=round_: seen.data("policies") == {"a.yaml": f"dropped-{r}"})
            await eventually(lambda: kube.watch_count() == 1)
        assert lists(kube) == 1, "a resumable watch must not relist"
        resumed = [r.query.get("resourceVersion") for r in kube.served("GET", "/configmaps")]
        assert all(v for v in resumed[1:]), resumed
        restarts = sum(n for (_, reason), n in metrics.kube_watch_restarts.items())
        assert restarts >= 3
    finally:
        await stop(task)


@pytest.mark.parametrize("as_http", [False, True], ids=["error-event", "http-410"])
async def test_410_gone_relists_and_catches_what_the_gap_hid(
    kube: FakeKube, access: KubeAccess, as_http: bool
) -> None:
    kube.gone_as_http = as_http
    kube.apply(configmap("prod", "policies", {"a.yaml": "1"}))
    seen, metrics = Seen(), GatewayMetrics()
    _watch, task = await start_watch(access, seen, metrics)
    try:
        await eventually(lambda: kube.watch_count() == 1)
        kube.drop_watches()
        # While disconnected: an edit, then the history is compacted past it.
        kube.apply(configmap("prod", "policies", {"a.yaml": "after-gap"}))
        kube.compact()
        await seen.until(lambda: seen.data("policies") == {"a.yaml": "after-gap"})
        assert metrics.kube_watch_restarts.get(("configmap/prod/policies", "gone"), 0) >= 1
        assert lists(kube) == 2
        kube.apply(configmap("prod", "policies", {"a.yaml": "later"}))
        await seen.until(lambda: seen.data("policies") == {"a.yaml": "later"})
    finally:
        await stop(task)


async def test_bookmarks_move_the_version_so_a_resume_skips_nothing_and_replays_nothing(
    kube: FakeKube, access: KubeAccess
) -> None:
    kube.bookmark_every = 0.05
    kube.apply(configmap("prod", "policies", {"a.yaml": "1"}))
    for i in range(5):  # other objects move the store's version past the list's
        kube.apply(configmap("prod", f"other-{i}", {}))
    seen, metrics = Seen(), GatewayMetrics()
    watch, task = await start_watch(access, seen, metrics)
    try:
        await asyncio.wait_for(watch.synced.wait(), 10)
        await eventually(lambda: kube.watch_count() == 1)
        listed_at = int(watch.resource_version)
        kube.apply(configmap("prod", "other-x", {}))  # filtered out: only a bookmark tells
        await eventually(lambda: int(watch.resource_version or 0) > listed_at)
        assert kube.served("GET", "/configmaps", allowWatchBookmarks="true")
        changes = len(seen.states)
        kube.drop_watches()
        kube.apply(configmap("prod", "policies", {"a.yaml": "2"}))
        await seen.until(lambda: seen.data("policies") == {"a.yaml": "2"})
        assert len(seen.states) == changes + 1, "bookmarks must not count as changes"
    finally:
        await stop(task)


async def test_server_side_timeouts_end_watches_that_are_simply_started_again(
    kube: FakeKube, access: KubeAccess
) -> None:
    kube.apply(configmap("prod", "policies", {"a.yaml": "1"}))
    seen, metrics = Seen(), GatewayMetrics()
    _watch, task = await start_watch(access, seen, metrics, watch_timeout=1)
    try:
        await eventually(
            lambda: metrics.kube_watch_restarts.get(("configmap/prod/policies", "closed"), 0) >= 1,
            timeout=5,
        )
        kube.apply(configmap("prod", "policies", {"a.yaml": "2"}))
        await seen.until(lambda: seen.data("policies") == {"a.yaml": "2"})
        assert lists(kube) == 1
    finally:
        await stop(task)


async def test_an_unreachable_api_is_retried_with_backoff(tmp_path: Path) -> None:
    dead = FakeKube().start()
    config = dead.kubeconfig(tmp_path / "kubeconfig")
    dead.stop()  # nothing listens on its port any more
    access = KubeAccess(str(config))
    seen, metrics = Seen(), GatewayMetrics()
    try:
        _watch, task = await start_watch(access, seen, metrics)
        await eventually(
            lambda: metrics.kube_watch_restarts.get(("configmap/prod/policies", "error"), 0) >= 3
        )
        assert metrics.kube_synced["configmap/prod/policies"] is False
        await stop(task)
    finally:
        await access.aclose()
