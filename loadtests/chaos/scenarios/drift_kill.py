"""The drift worker killed (SIGKILL) under load: requests are untouched, the worker is
started again, and the samples taken meanwhile wait for it in the gateways' backlog
(those beyond it are dropped and counted, never silently lost). Only the datagrams
already queued in the killed worker's socket are gone with it.

Needs the drift extra (Evidently) in the gateway's environment; skipped without it.
"""

from __future__ import annotations

import asyncio
import csv
import importlib.util
import io
import os
import random
import signal
import time
from typing import Any

from gateway.controlplane.policy.driftspec import TEXT_DESCRIPTORS
from gateway.drift.features import describe_text
from gateway.simulate.prompts import baseline_request
from loadtests.chaos.load import Load, chat
from loadtests.chaos.procs import Child, metric
from loadtests.chaos.scenario import Context, Result, Scenario

CRITERION = "0 failed requests; worker restarted and fed; lost samples counted"


def _policy(backend: str) -> str:
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: support
variants:
  - {{name: main, endpoints: ["{backend}"]}}
drift:
  reference: reference.csv
  sample: 1.0
  window: {{size: 200, every: 2s, min_samples: 50}}
"""


def _reference() -> str:
    """Reference data as the drift demo makes it: baseline prompts' text descriptors."""
    rng = random.Random(1)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(TEXT_DESCRIPTORS))
    writer.writeheader()
    for _ in range(300):
        writer.writerow(describe_text(baseline_request(rng, "support")))
    return out.getvalue()


async def run(ctx: Context) -> Result:
    total = ctx.scale.pick(3000, 800)
    sim = await ctx.launcher.simulator("drift-sim", "--tokens", "4")
    drift_dir = ctx.launcher.folder("drift")
    gw = await ctx.launcher.gateway(
        {"support.yaml": _policy(sim.url)},
        "--drift-dir",
        str(drift_dir),
        files={"reference.csv": _reference()},
    )
    first = await _worker(ctx, gw, lambda w: bool(w.get("up")), timeout=90)
    pid = first.get("pid")
    generation = int(first.get("generation") or 0)
    restarted: dict[str, Any] = {}
    async with Load(gw.url, [chat("support")], workers=3, limit=total, seconds=240) as load:
        await load.wait_for(total // 5)
        if isinstance(pid, int):
            os.kill(pid, signal.SIGKILL)
            ctx.say(f"drift-kill: killed worker pid {pid} after {load.tally.requests} requests")
        restarted = await _worker(
            ctx, gw, lambda w: bool(w.get("up")) and w.get("generation", 0) > generation, 90
        )
        await load.wait_for(total, timeout=120)
        tally = await load.stop()

    async def count(name: str, **labels: str) -> float:
        return await metric(ctx.client, gw.admin, name, **labels)

    # The restarted worker's counter starts at 0: all it received came after the kill,
    # the backlog held while it was down included. It publishes once a second.
    received = 0.0
    deadline = time.monotonic() + 30
    while received == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        received = await count("switchyard_drift_samples_received_total")
    sampled = await count("switchyard_drift_samples_total")
    dropped = await count("switchyard_drift_samples_dropped_total")
    dropped += await count("switchyard_drift_worker_samples_dropped_total")
    restarts = await count("switchyard_drift_worker_restarts_total")
    back = bool(restarted) and restarted.get("pid") != pid
    return Result(
        "drift-kill",
        tally.requests,
        tally.failures,
        CRITERION,
        passed=tally.failures == 0 and back and received > 0 and restarts >= 1,
        details={
            "worker_pid_before": pid,
            "worker_pid_after": restarted.get("pid"),
            "worker_restarts_metric": restarts,
            "samples_sent": sampled,
            "samples_received_after_restart": received,
            "samples_dropped": dropped,
            # Kept for the docs' table (docs/gen.py): drops for errors not retried.
            "samples_dropped_send_failed": await count(
                "switchyard_drift_samples_dropped_total", reason="send_failed"
            ),
            **tally.summary(),
        },
    )


async def _worker(ctx: Context, gw: Child, check: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = await ctx.client.get(f"{gw.admin}/admin/drift/support")
        if reply.status_code == 200:
            worker: dict[str, Any] = reply.json().get("worker") or {}
            if check(worker):
                return worker
        await asyncio.sleep(0.3)
    return {}


def _unavailable() -> str | None:
    if importlib.util.find_spec("evidently") is None:
        return "the drift extra is not installed (pip install -e '.[drift]')"
    return None


SCENARIO = Scenario("drift-kill", CRITERION, run, _unavailable, in_quick=False)
