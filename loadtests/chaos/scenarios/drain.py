"""SIGTERM with streams in flight: every stream finishes (or ends with a clean error
event) before the process exits, and once readiness fails no new connection is served.

The gateway gets `--drain-delay` (readiness fails first, as a load balancer needs) and
a drain timeout longer than the streams, as `deploy/` configures it. New connections
are tried after `/readyz` turned 503, throughout the delay and after the listener
closed; each must be refused or closed unanswered.
"""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import orjson

from loadtests.chaos.procs import Child
from loadtests.chaos.scenario import Context, Result, Scenario, pool_policy

CRITERION = (
    "every stream finishes or ends in a clean error; "
    "no new connection served once readiness fails; exit 0"
)
SLOW = {"x-sim-tokens": "40", "x-sim-chunk-delay-ms": "50"}  # ~2 s per stream


async def run(ctx: Context) -> Result:
    streams = ctx.scale.pick(50, 50)
    sim = await ctx.launcher.simulator("drain-sim")
    gw = await ctx.launcher.gateway(
        {"r.yaml": pool_policy("r", [sim.url])}, "--drain-delay", "1", "--drain-timeout", "20"
    )
    started = asyncio.Semaphore(0)
    outcomes: list[str] = []
    body = orjson.dumps(
        {"model": "r", "messages": [{"role": "user", "content": "x"}], "stream": True}
    )
    limits = httpx.Limits(max_connections=streams + 8)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def stream() -> None:
            try:
                async with client.stream(
                    "POST", f"{gw.url}/v1/chat/completions", content=body, headers=SLOW
                ) as reply:
                    started.release()
                    data = await reply.aread()
                if reply.status_code != 200:
                    outcomes.append(f"HTTP {reply.status_code}")
                elif data.rstrip().endswith(b"data: [DONE]"):
                    outcomes.append("finished")
                elif b'data: {"error"' in data:
                    outcomes.append("clean error")
                else:
                    outcomes.append("cut without an error event")
            except httpx.HTTPError as exc:
                outcomes.append(f"broken: {type(exc).__name__}")

        tasks = [asyncio.create_task(stream()) for _ in range(streams)]
        for _ in range(streams):  # every stream has its response head: all are in flight
            await asyncio.wait_for(started.acquire(), 30)
        gw.signal(signal.SIGTERM)
        ctx.say(f"drain: SIGTERM with {streams} streams in flight")
        not_ready = await _readiness_failed(ctx, gw)
        served, refused = await _try_new_connections(gw)
        await asyncio.gather(*tasks)
    code = await gw.wait_exit(30)
    ctx.launcher.forget(gw)
    counts = {o: outcomes.count(o) for o in sorted(set(outcomes))}
    good = counts.get("finished", 0) + counts.get("clean error", 0)
    failures = (streams - good) + served
    drained_line = "drained; 0 requests were still in flight" in gw.log_text()
    ctx.say(
        f"drain: outcomes {counts}; new connections served {served}, refused {refused}; exit {code}"
    )
    return Result(
        "sigterm-drain",
        streams + served + refused,
        failures,
        CRITERION,
        passed=failures == 0 and not_ready and code == 0 and refused > 0,
        details={
            "streams": counts,
            "readiness_failed": not_ready,
            "new_connections_served": served,
            "new_connections_refused": refused,
            "exit_code": code,
            "log_says_drained_clean": drained_line,
        },
    )


async def _readiness_failed(ctx: Context, gw: Child) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if (await ctx.client.get(f"{gw.admin}/readyz", timeout=2)).status_code == 503:
                return True
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.02)
    return False


async def _try_new_connections(gw: Child, seconds: float = 1.5) -> tuple[int, int]:
    """Fresh connections (one per try) through the drain delay and past it."""
    served = refused = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        async with httpx.AsyncClient(timeout=3) as fresh:
            try:
                reply = await fresh.get(f"{gw.url}/v1/models")
            except httpx.HTTPError:
                refused += 1
            else:
                served += reply.status_code < 300
                refused += reply.status_code >= 300
        await asyncio.sleep(0.1)
    return served, refused


SCENARIO = Scenario("sigterm-drain", CRITERION, run)
