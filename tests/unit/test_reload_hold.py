"""A reload that would remove serving routes nobody asked to remove is held, not applied.

Emptied, comment-only and truncated files are valid YAML that define fewer routes:
exactly what an editor or config tool leaves for a moment mid-save. These tests drive
the real reloader over real files and check what serves, what is reported, and how a
removal that is meant is applied (a deleted file, or an explicit confirmation).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from gateway.cli import main
from gateway.controlplane.policy.reload import PolicyReloader
from gateway.dataplane.health import HealthRegistry
from gateway.dataplane.snapshot import SnapshotRef
from gateway.observability.metrics import GatewayMetrics

LOG = logging.getLogger("test.reload.hold")
HEADER = "".join(
    f"# line {i} of the comment header that explains these policies\n" for i in range(12)
)


def route(name: str, port: int = 9101) -> str:
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: {name}
variants: [{{name: main, endpoints: ['http://127.0.0.1:{port}']}}]
"""


FULL = HEADER + "---\n".join(route(name) for name in ("chat", "embed", "completion"))


def write(path: Path, text: str) -> None:
    """Write and move the mtime forward, so coarse filesystem clocks still see a change."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    os.utime(path, ns=(before + 10**9, before + 10**9))


@pytest.fixture
def metrics() -> GatewayMetrics:
    return GatewayMetrics()


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    (tmp_path / "demo.yaml").write_text(FULL)
    return tmp_path


@pytest.fixture
def reloader(policy_dir: Path, metrics: GatewayMetrics) -> PolicyReloader:
    return PolicyReloader(policy_dir, metrics, HealthRegistry(metrics), LOG, clock=lambda: 7.0)


def held_gauge(metrics: GatewayMetrics, reason: str) -> float:
    text = generate_latest(metrics.registry()).decode()
    line = f'switchyard_policy_reload_held{{reason="{reason}"}} '
    (value,) = [row[len(line) :] for row in text.splitlines() if row.startswith(line)]
    return float(value)


async def test_an_emptied_file_is_held_reported_once_and_withdrawn_when_the_file_returns(
    policy_dir: Path,
    reloader: PolicyReloader,
    metrics: GatewayMetrics,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ref = SnapshotRef(await reloader.load())
    serving = ref.current
    write(policy_dir / "demo.yaml", "")
    with caplog.at_level(logging.INFO, logger=LOG.name):
        result = await reloader.reload(ref, "test")
        again = await reloader.reload(ref, "SIGHUP")  # the same held content
    assert (result.outcome, again.outcome) == ("held", "held")
    assert ref.current is serving
    assert sorted(ref.current.routes) == ["chat", "completion", "embed"]
    assert result.held is not None and result.held.reason == "empty"
    assert result.held.routes == ("chat", "completion", "embed")
    assert result.held.since == 7.0
    assert "POST /admin/reload?remove=*" in result.held.message
    assert reloader.held == again.held
    assert metrics.reloads["held"] == 2 and metrics.reloads["success"] == 0
    assert held_gauge(metrics, "empty") == 1.0
    assert held_gauge(metrics, "removes_routes") == 0.0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # logged once per held content
    assert "held; still serving " + serving.version in warnings[0]

    write(policy_dir / "demo.yaml", FULL)  # the rest of the save arrives
    result = await reloader.reload(ref, "test")
    assert result.outcome == "unchanged"
    assert ref.current is serving
    assert reloader.held is None
    assert held_gauge(metrics, "empty") == 0.0


async def test_a_comment_only_file_is_held(
    policy_dir: Path, reloader: PolicyReloader, metrics: GatewayMetrics
) -> None:
    ref = SnapshotRef(await reloader.load())
    serving = ref.current
    write(policy_dir / "demo.yaml", FULL[:700])  # the comment header only
    assert FULL[:700].strip().startswith("#") and "apiVersion" not in FULL[:700]
    result = await reloader.reload(ref, "test")
    assert result.outcome == "held" and result.held is not None
    assert result.held.reason == "empty"
    assert ref.current is serving
    assert metrics.reload_held == "empty"


async def test_a_truncated_file_that_drops_routes_is_held_until_confirmed(
    policy_dir: Path, reloader: PolicyReloader, metrics: GatewayMetrics
) -> None:
    ref = SnapshotRef(await reloader.load())
    serving = ref.current
    # Cut after the first document, as a write that stopped half way would leave it.
    cut = FULL.index("---\n", FULL.index("route: chat"))
    write(policy_dir / "demo.yaml", FULL[:cut])
    result = await reloader.reload(ref, "test")
    assert result.outcome == "held" and result.held is not None
    assert (result.held.reason, result.held.routes) == ("removes_routes", ("completion", "embed"))
    assert result.held.changes == ("completion: route removed", "embed: route removed")
    assert ref.current is serving
    assert held_gauge(metrics, "removes_routes") == 1.0

    # Confirming one of two removals is not enough: the other still holds it all.
    partly = await reloader.reload(ref, "test", confirm=frozenset({"embed"}))
    assert partly.outcome == "held" and partly.held is not None
    assert partly.held.routes == ("completion",)
    assert ref.current is serving

    applied = await reloader.reload(ref, "test", confirm=frozenset({"embed", "completion"}))
    assert applied.outcome == "success"
    assert sorted(ref.current.routes) == ["chat"]
    assert applied.changes == ("completion: route removed", "embed: route removed")
    assert reloader.held is None and metrics.reload_held is None


async def test_confirming_every_route_applies_an_empty_policy_set(
    policy_dir: Path, reloader: PolicyReloader
) -> None:
    ref = SnapshotRef(await reloader.load())
    write(policy_dir / "demo.yaml", HEADER)
    result = await reloader.reload(ref, "test", confirm=frozenset({"*"}))
    assert result.outcome == "success"
    assert ref.current.routes == {}


async def test_deleting_a_file_removes_its_routes_but_never_the_last_route(
    policy_dir: Path, reloader: PolicyReloader, metrics: GatewayMetrics
) -> None:
    ref = SnapshotRef(await reloader.load())
    # Adding routes and changing others apply as always.
    write(policy_dir / "demo.yaml", FULL.replace("9101", "9102"))
    write(policy_dir / "extra.yaml", route("rerank") + "---\n" + route("moderation"))
    assert (await reloader.reload(ref, "test")).outcome == "success"
    assert sorted(ref.current.routes) == ["chat", "completion", "embed", "moderation", "rerank"]
    assert ref.current.routes["chat"].variants[0].endpoints[0].url == "http://127.0.0.1:9102"

    # Deleting a policy file is a removal meant: its routes go without a confirmation.
    (policy_dir / "extra.yaml").unlink()
    result = await reloader.reload(ref, "test")
    assert result.outcome == "success"
    assert sorted(ref.current.routes) == ["chat", "completion", "embed"]

    # But a deletion that would leave no routes at all is held like an empty file.
    write(policy_dir / "empty.yaml", "# nothing here yet\n")
    (policy_dir / "demo.yaml").unlink()
    result = await reloader.reload(ref, "test")
    assert result.outcome == "held" and result.held is not None
    assert result.held.reason == "empty"
    assert sorted(ref.current.routes) == ["chat", "completion", "embed"]
    assert metrics.reloads["success"] == 2


async def test_a_save_in_two_writes_is_read_once(
    policy_dir: Path, reloader: PolicyReloader, metrics: GatewayMetrics
) -> None:
    ref = SnapshotRef(await reloader.load())
    # The watcher polls every 10 ms; a change must stay put for 500 ms before it is read.
    task = asyncio.create_task(reloader.watch(ref, 0.01, settle=0.5))
    try:
        path = policy_dir / "demo.yaml"
        write(path, "")  # an editor's first write: truncate
        # The watcher's 10 ms polls fall due (and run) on this loop before this 100 ms
        # sleep ends: it has seen the empty file, and must not have read it.
        await asyncio.sleep(0.1)
        write(path, FULL.replace("9101", "9102"))  # the second write: the new content
        await wait_for(lambda: metrics.reloads["success"] == 1)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert metrics.reloads == {"success": 1, "rejected": 0, "unchanged": 0, "held": 0}
    assert ref.current.routes["embed"].variants[0].endpoints[0].url == "http://127.0.0.1:9102"


def test_policy_diff_says_which_routes_a_reload_would_remove_and_that_it_is_held(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, empty, cut, deleted = (tmp_path / n for n in ("old", "empty", "cut", "deleted"))
    for folder in (old, empty, cut, deleted):
        folder.mkdir()
        (folder / "chat.yaml").write_text(route("chat") + "---\n" + route("embed"))
    (old / "rerank.yaml").write_text(route("rerank"))
    (empty / "chat.yaml").write_text(HEADER)
    (cut / "chat.yaml").write_text(route("chat"))
    (cut / "rerank.yaml").write_text(route("rerank"))

    assert main(["policy", "diff", str(old), str(empty)]) == 1
    out = capsys.readouterr().out
    assert "chat: route removed" in out
    assert f"held (empty): a gateway serving {old} would hold this reload:" in out
    assert "would remove every route (chat, embed, rerank)" in out

    assert main(["policy", "diff", str(old), str(cut)]) == 1
    out = capsys.readouterr().out
    assert "held (removes_routes)" in out
    assert "would remove 1 serving route(s) (embed)" in out
    assert "POST /admin/reload?remove=embed" in out

    # rerank.yaml deleted: its route goes on purpose, nothing is held.
    assert main(["policy", "diff", str(old), str(deleted)]) == 1
    out = capsys.readouterr().out
    assert "rerank: route removed" in out
    assert "held" not in out


async def wait_for(condition: object, timeout: float = 5.0) -> None:
    assert callable(condition)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
