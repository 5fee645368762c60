"""The quick start's drift chain, in one process with its real parts: the demo's drift
policy and reference data, a gateway's tap and sender, a drift worker that starts
after traffic began, in a relative drift folder, and a fake Kubeflow on loopback.

Seen in review: the baseline sent while the worker was starting never reached a
window (sent 800, received 400, no drop counted), so it never evaluated; and the
retraining run was created with `window_uri: ""` because a relative path has no
file:// URI.
"""

from __future__ import annotations

import asyncio
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.controlplane.policy.compile import compile_snapshot
from gateway.controlplane.policy.loader import collect_policies
from gateway.dataplane.decide import RequestHead, decide
from gateway.dataplane.health import HealthRegistry
from gateway.drift.channel import worker_address
from gateway.drift.sender import DriftSender
from gateway.drift.status import StatusReader
from gateway.drift.tap import DriftTap
from gateway.drift.worker import DriftWorker, WorkerOptions
from gateway.observability.metrics import GatewayMetrics
from gateway.simulate.kubeflow import KubeflowOptions, start_kubeflow
from gateway.simulate.prompts import baseline_request, shifted_request

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

DEMO_POLICIES = Path(__file__).resolve().parents[2] / "policies" / "drift"


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait for `check` (the worker runs on this loop), at most `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.05)


async def flush(sender: DriftSender) -> None:
    """Flush until the worker took everything (a full socket queue holds some back)."""
    sender.flush()
    for _ in range(100):
        if sender.backlog_rows == 0:
            return
        await asyncio.sleep(0.05)  # the worker drains its socket on this loop
        sender.flush()
    raise AssertionError(f"{sender.backlog_rows} rows still wait for the worker")


def samples(metrics: GatewayMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every drift sample of this process's /metrics, by name and labels."""
    text = generate_latest(metrics.registry()).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("switchyard_drift_samples")
        or family.name.startswith("switchyard_drift_worker_samples")
        for s in family.samples
        if s.name.endswith("_total")
    }


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory, as the quick start runs from the repository's."""
    monkeypatch.chdir(tmp_path)
    return tmp_path.resolve()


async def test_the_demo_baseline_sent_while_the_worker_starts_evaluates_and_drift_retrains(
    here: Path,
) -> None:
    server, kubeflow = await start_kubeflow(KubeflowOptions())
    folder = here / "policies"
    shutil.copytree(DEMO_POLICIES, folder)
    policy = (folder / "support.yaml").read_text()
    # The demo's policy as it is, but for the fake Kubeflow's port and a shorter
    # evaluation interval (10 s in the demo) to keep the test short.
    assert "http://127.0.0.1:9103" in policy and "every: 10s" in policy
    policy = policy.replace("http://127.0.0.1:9103", server.url).replace("every: 10s", "every: 1s")
    (folder / "support.yaml").write_text(policy)
    policies, problems = collect_policies([str(folder)])
    assert not problems
    metrics = GatewayMetrics()
    snapshot = compile_snapshot(policies, metrics=metrics, health=HealthRegistry(metrics))
    decision = decide(snapshot, RequestHead("support"), random.Random(1))

    drift_dir = Path(".state/drift")  # relative, as in the quick start
    tap = DriftTap(4096, dropped=metrics.drift.buffer_full)
    sender = DriftSender(tap, worker_address(drift_dir), metrics.drift)
    metrics.drift.status = StatusReader(drift_dir)
    rng = random.Random(7)

    def offer(make: Callable[[random.Random, str], dict[str, Any]], count: int) -> None:
        for _ in range(count):
            tap.offer(decision, make(rng, "support"))

    sender.configure(policies)  # the gateway is up; its config finds no worker
    offer(baseline_request, 200)
    assert sender.flush() == 0  # the worker has not bound its socket yet

    worker = DriftWorker(WorkerOptions(drift_dir=drift_dir))
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        status = StatusReader(drift_dir)
        await until(lambda: status() is not None, 30, "the worker publishes its status")
        # Bound, but it has no config yet: the rows of the next flush must not be lost.
        offer(baseline_request, 200)
        await flush(sender)

        def version() -> dict[str, Any]:
            routes = worker.status()["routes"]
            found: dict[str, Any] = routes.get("support", {}).get("versions", {}).get("1", {})
            return found

        await until(lambda: "evaluated_at" in version(), 120, "the baseline is evaluated")
        assert version()["rows"] == 400 and version()["drifted"] is False
        worker.publish()
        counted = samples(metrics)
        sent = counted[("switchyard_drift_samples_total", (("route", "support"), ("version", "1")))]
        received = counted[
            ("switchyard_drift_samples_received_total", (("route", "support"), ("version", "1")))
        ]
        dropped = sum(v for (name, _), v in counted.items() if "dropped" in name)
        assert (sent, received, dropped) == (400, 400, 0)  # sent == received + dropped

        offer(shifted_request, 400)
        await flush(sender)
        await until(
            lambda: bool((version().get("episode") or {}).get("run_id")), 60, "a retraining run"
        )
    finally:
        stop.set()
        await running
        sender.close()
        await server.close()

    [run] = kubeflow.runs
    uri = run["runtime_config"]["parameters"]["window_uri"]
    assert uri.startswith("file:///") and uri == version()["episode"]["window_uri"]
    saved = Path(uri.removeprefix("file://"))
    assert saved.is_relative_to(here / ".state" / "drift" / "windows")
    assert len(pd.read_parquet(saved)) == 500  # the drifted window: the policy's size
    assert worker.dropped == {} and sender.backlog_rows == 0
    assert worker.status()["routes"]["support"]["actions"] == {
        "save_window": {"ok": 1},
        "kubeflow": {"ok": 1},
    }
