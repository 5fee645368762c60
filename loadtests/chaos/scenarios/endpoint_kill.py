"""One of two endpoints killed mid-run (SIGKILL), then brought back on the same port.

Retries and outlier ejection must hide the crash from clients (success >= 99.9%), the
dead endpoint must be ejected (`switchyard_backend_ejected` 1), and once it listens
again it must be re-admitted: ejection ends, and it serves requests again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from loadtests.chaos.load import Load, chat
from loadtests.chaos.procs import free_port, metric
from loadtests.chaos.scenario import Context, Result, Scenario, pool_policy

CRITERION = "success >= 99.9%; dead endpoint ejected, re-admitted after restart"
OUTLIER = "outlier: {consecutive_failures: 2, base_ejection: 1s, max_ejection: 3s}\n"


async def run(ctx: Context) -> Result:
    phase = ctx.scale.pick(2500, 500)  # requests before the kill, and after re-admission
    steady = await ctx.launcher.simulator("kill-steady", "--tokens", "8")
    port = free_port()
    doomed = await ctx.launcher.simulator("kill-doomed", "--tokens", "8", port=port)
    gw = await ctx.launcher.gateway(
        {"pool.yaml": pool_policy("pool", [steady.url, doomed.url], OUTLIER)}
    )
    mix = [chat("pool"), chat("pool", stream=True)]
    served_after = 0
    # The limit is only a safety net: the phases below decide when the load stops.
    async with Load(gw.url, mix, workers=4, limit=phase * 40, seconds=300) as load:
        await load.wait_for(phase)
        doomed.kill()
        ctx.launcher.forget(doomed)
        ctx.say(f"endpoint-kill: killed {doomed.backend} after {load.tally.requests} requests")
        killed_at = time.monotonic()
        ejected = await _until(lambda: _ejected(ctx, gw.admin, doomed.backend), want=1.0)
        # Down for a while under load: ejections expire, the endpoint is retried and
        # ejected again, and none of that may reach a client.
        await asyncio.sleep(max(0.0, killed_at + ctx.scale.pick(8, 3) - time.monotonic()))
        back = await ctx.launcher.simulator("kill-doomed", "--tokens", "8", port=port)
        before = load.tally.served_by[back.backend]
        ctx.say(f"endpoint-kill: restarted {back.backend} after {load.tally.requests} requests")
        readmitted = await _until(lambda: _ejected(ctx, gw.admin, back.backend), want=0.0)
        deadline = time.monotonic() + 30
        while load.tally.served_by[back.backend] == before and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await load.wait_for(load.tally.requests + phase)
        served_after = load.tally.served_by[back.backend] - before
        tally = await load.stop()
    ejections = await metric(
        ctx.client, gw.admin, "switchyard_backend_ejections_total", backend=doomed.backend
    )
    rate = tally.success_rate
    return Result(
        "endpoint-kill",
        tally.requests,
        tally.failures,
        CRITERION,
        passed=rate >= 0.999 and ejected and readmitted and served_after > 0,
        details={
            "success_rate": round(rate, 5),
            "ejected": ejected,
            "ejections": ejections,
            "readmitted": readmitted,
            "served_after_restart": served_after,
            **tally.summary(),
        },
    )


async def _ejected(ctx: Context, admin: str, backend: str) -> float:
    return await metric(ctx.client, admin, "switchyard_backend_ejected", backend=backend)


async def _until(probe: Callable[[], Awaitable[float]], want: float, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await probe() == want:
            return True
        await asyncio.sleep(0.05)
    return False


SCENARIO = Scenario("endpoint-kill", CRITERION, run)
