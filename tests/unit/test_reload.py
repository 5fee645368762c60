"""Reloading policies: bad edits are rejected and the last good snapshot keeps serving."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from gateway.controlplane.policy.loader import PolicyError
from gateway.controlplane.policy.reload import PolicyReloader, fingerprint
from gateway.dataplane.health import HealthRegistry
from gateway.dataplane.snapshot import SnapshotRef
from gateway.observability.metrics import GatewayMetrics

POLICY = """\
apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants:
  - name: champion
    weight: 90
    endpoints: [http://127.0.0.1:9101]
  - name: challenger
    weight: {challenger}
    endpoints: [http://127.0.0.1:9102]
"""
EMBED = """\
apiVersion: switchyard/v1
kind: RoutingPolicy
route: embed
variants: [{name: only, endpoints: ['http://127.0.0.1:9101']}]
"""
LOG = logging.getLogger("test.reload")


@pytest.fixture
def metrics() -> GatewayMetrics:
    return GatewayMetrics()


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    (tmp_path / "chat.yaml").write_text(POLICY.format(challenger=10))
    return tmp_path


@pytest.fixture
def reloader(policy_dir: Path, metrics: GatewayMetrics) -> PolicyReloader:
    return PolicyReloader(policy_dir, metrics, HealthRegistry(metrics), LOG, clock=lambda: 42.0)


def write(path: Path, text: str) -> None:
    """Write and move the mtime forward, so coarse filesystem clocks still see a change."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    os.utime(path, ns=(before + 10**9, before + 10**9))


async def test_load_builds_the_first_snapshot_and_sets_policy_metrics(
    reloader: PolicyReloader, metrics: GatewayMetrics
) -> None:
    snapshot = await reloader.load()
    assert sorted(snapshot.routes) == ["chat"]
    assert snapshot.created_at == 42.0
    assert (metrics.policy_hash, metrics.policy_routes) == (snapshot.version, 1)
    assert metrics.reloads == {"success": 0, "rejected": 0, "unchanged": 0, "held": 0}
    assert [p.policy.route for p in reloader.policies] == ["chat"]


async def test_load_raises_for_invalid_policies(policy_dir: Path, reloader: PolicyReloader) -> None:
    write(policy_dir / "chat.yaml", POLICY.format(challenger="-1"))
    with pytest.raises(PolicyError) as info:
        await reloader.load()
    assert info.value.problems[0].field_path == "variants[1].weight"


async def test_bad_edit_is_rejected_and_old_snapshot_keeps_serving(
    policy_dir: Path,
    reloader: PolicyReloader,
    metrics: GatewayMetrics,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ref = SnapshotRef(await reloader.load())
    serving = ref.current
    write(policy_dir / "chat.yaml", POLICY.format(challenger="ten") + "fallback: [blue]\n")
    with caplog.at_level(logging.ERROR, logger=LOG.name):
        result = await reloader.reload(ref, "test")
    assert result.outcome == "rejected"
    assert ref.current is serving
    assert (result.version, result.previous) == (serving.version, serving.version)
    assert [p.field_path for p in result.problems] == ["variants[1].weight"]
    assert metrics.reloads == {"success": 0, "rejected": 1, "unchanged": 0, "held": 0}
    assert metrics.policy_hash == serving.version
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("variants[1].weight" in line for line in logged)
    assert any("still serving " + serving.version in line for line in logged)


async def test_good_edit_swaps_the_snapshot_and_reports_changes(
    policy_dir: Path, reloader: PolicyReloader, metrics: GatewayMetrics
) -> None:
    ref = SnapshotRef(await reloader.load())
    old = ref.current
    write(policy_dir / "chat.yaml", POLICY.format(challenger=25))
    (policy_dir / "embed.yml").write_text(EMBED)
    result = await reloader.reload(ref, "test")
    assert result.outcome == "success"
    assert ref.current is not old
    assert sorted(ref.current.routes) == ["chat", "embed"]
    assert ref.current.routes["chat"].variants[1].weight == 25.0
    assert (result.version, result.previous) == (ref.current.version, old.version)
    assert result.changes == (
        "chat: variants[challenger].weight 10 -> 25",
        "embed: route added (variants: only)",
    )
    assert metrics.reloads == {"success": 1, "rejected": 0, "unchanged": 0, "held": 0}
    assert (metrics.policy_hash, metrics.policy_routes) == (ref.current.version, 2)
    # Endpoint health outlives the swap.
    old_state = old.routes["chat"].variants[0].endpoints[0].state
    assert ref.current.routes["chat"].variants[0].endpoints[0].state is old_state


async def test_reload_without_effective_change_is_unchanged(
    policy_dir: Path, reloader: PolicyReloader, metrics: GatewayMetrics
) -> None:
    ref = SnapshotRef(await reloader.load())
    serving = ref.current
    # A comment and an explicit default change nothing that routes traffic.
    write(policy_dir / "chat.yaml", "# reviewed\n" + POLICY.format(challenger=10) + "sticky:\n")
    result = await reloader.reload(ref, "test")
    assert (result.outcome, result.version) == ("unchanged", serving.version)
    assert ref.current is serving
    assert metrics.reloads == {"success": 0, "rejected": 0, "unchanged": 1, "held": 0}


def test_fingerprint_sees_new_changed_and_deleted_files(policy_dir: Path) -> None:
    start = fingerprint(policy_dir)
    assert len(start) == 1
    extra = policy_dir / "embed.yaml"
    extra.write_text(EMBED)
    added = fingerprint(policy_dir)
    assert added != start
    write(extra, EMBED + "# edited\n")
    assert fingerprint(policy_dir) not in (start, added)
    extra.unlink()
    assert fingerprint(policy_dir) == start


async def test_watch_reloads_on_file_change_and_survives_bad_edits(
    policy_dir: Path, reloader: PolicyReloader, metrics: GatewayMetrics
) -> None:
    ref = SnapshotRef(await reloader.load())
    first = ref.current.version
    task = asyncio.create_task(reloader.watch(ref, 0.01))
    try:
        write(policy_dir / "chat.yaml", "variants: [\n")
        await wait_for(lambda: metrics.reloads["rejected"] == 1)
        assert ref.current.version == first
        write(policy_dir / "chat.yaml", POLICY.format(challenger=30))
        await wait_for(lambda: ref.current.version != first)
        assert ref.current.routes["chat"].variants[1].weight == 30.0
        assert metrics.reloads["success"] == 1
        # No change, no reload.
        await asyncio.sleep(0.05)
        assert metrics.reloads == {"success": 1, "rejected": 1, "unchanged": 0, "held": 0}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_watch_survives_unexpected_errors_and_retries_the_edit(
    policy_dir: Path, metrics: GatewayMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    ticks = iter([1.0, None, 3.0])

    def clock() -> float:
        tick = next(ticks)
        if tick is None:
            raise RuntimeError("clock broke")
        return tick

    reloader = PolicyReloader(policy_dir, metrics, HealthRegistry(metrics), LOG, clock=clock)
    ref = SnapshotRef(await reloader.load())
    task = asyncio.create_task(reloader.watch(ref, 0.01))
    try:
        write(policy_dir / "chat.yaml", POLICY.format(challenger=5))
        # The first attempt fails inside the reload; the watcher logs it and tries again.
        await wait_for(lambda: metrics.reloads["success"] == 1)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert ref.current.created_at == 3.0
    assert ref.current.routes["chat"].variants[1].weight == 5.0
    assert any("policy watch failed" in r.getMessage() for r in caplog.records)


async def wait_for(condition: object, timeout: float = 5.0) -> None:
    assert callable(condition)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
