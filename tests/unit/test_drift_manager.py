"""Gateways on one machine that share a drift folder share its worker: their managers
start one between them (real worker processes), and never fight over the address."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.drift import manager as manager_module
from gateway.drift.channel import address_served, receiver_socket, worker_address
from gateway.drift.manager import DriftWorkerManager, runs_local_worker
from gateway.drift.status import StatusReader
from gateway.settings import Settings

pytestmark = pytest.mark.timeout(90)


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.05)


async def stop(*pairs: tuple[DriftWorkerManager, asyncio.Task[None]]) -> None:
    for manager, task in pairs:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await manager.stop()


def test_a_gateway_that_sends_to_a_fleets_worker_starts_none() -> None:
    assert runs_local_worker(Settings())
    assert not runs_local_worker(Settings(drift_worker=False))
    assert not runs_local_worker(Settings(drift_worker_address="udp://drift:9300"))


async def test_a_served_address_is_used_not_fought_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(manager_module, "CHECK_EVERY", 0.05)
    caplog.set_level(logging.INFO, "switchyard.drift")
    # The fleet secret (a supervisor's own, or configured) reaches the worker it starts.
    secret = "a-fleet-secret-of-the-supervisor"
    settings = Settings(drift_dir=str(tmp_path / "drift"), fleet_secret=secret)
    address = worker_address(settings.drift_dir)
    other = receiver_socket(address)  # another gateway's worker holds it
    manager = DriftWorkerManager(settings, lambda: True)
    task = asyncio.create_task(manager.run())
    try:
        await until(lambda: manager.elsewhere, 10, "the manager sees the other worker")
        await asyncio.sleep(0.5)  # ten checks: still nothing started, nothing logged twice
        assert manager.proc is None and manager.generation == 0
        said = [r for r in caplog.records if "another process serves" in r.getMessage()]
        assert len(said) == 1 and not [r for r in caplog.records if r.levelno >= logging.ERROR]
        other.close()  # that gateway stopped, and its worker with it: take over
        await until(lambda: manager.proc is not None, 10, "a worker is started")
        await until(lambda: address_served(address), 30, "the new worker binds the address")
        assert manager.generation == 1 and not manager.elsewhere
        status = StatusReader(settings.drift_dir)
        await until(lambda: bool((status() or {}).get("auth")), 10, "the worker's status")
        assert (status() or {})["auth"] == {
            "verifies": True,
            "secret": "SWITCHYARD_FLEET_SECRET",  # where it came from, never the secret
            "unverified": 0,
        }
        assert secret not in (tmp_path / "drift" / "status.json").read_text()
    finally:
        other.close()
        await stop((manager, task))


async def test_two_managers_starting_at_once_end_with_one_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(manager_module, "CHECK_EVERY", 0.05)
    caplog.set_level(logging.INFO, "switchyard.drift")
    settings = Settings(drift_dir=str(tmp_path / "drift"))
    first, second = (
        DriftWorkerManager(settings, lambda: True),
        DriftWorkerManager(settings, lambda: True),
    )
    tasks = [asyncio.create_task(m.run()) for m in (first, second)]
    try:
        # Both see a free address and start a worker; one binds, the other exits with
        # ADDRESS_TAKEN and its manager goes back to watching.
        await until(lambda: first.elsewhere or second.elsewhere, 30, "one worker gives way")
        winner, loser = (second, first) if first.elsewhere else (first, second)
        assert loser.proc is None and loser.generation == 1
        assert winner.proc is not None and winner.proc.returncode is None
        await asyncio.sleep(1.0)  # twenty checks: no restart loop
        assert (winner.generation, loser.generation) == (1, 1) and loser.proc is None
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        # The loser's worker exited (generation 1, no process) without an error: that
        # was ADDRESS_TAKEN, not a crash to restart.
        assert not [e for e in errors if "exited with" in e], errors
    finally:
        await stop(*zip((first, second), tasks, strict=True))
