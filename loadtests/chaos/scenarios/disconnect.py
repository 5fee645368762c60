"""Clients that hang up mid-stream: the backend's work must be cancelled, not finished.

Each client reads the first chunk of a long, slow stream and closes its connection;
the simulator counts an exchange whose client left as `cancelled` (GET /sim/stats).
Every disconnect must show up there, and nothing may stay in flight at the backend.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson

from loadtests.chaos.scenario import Context, Result, Scenario, pool_policy

CRITERION = "every client disconnect cancels its upstream request (sim /sim/stats)"
SLOW = {"x-sim-tokens": "400", "x-sim-chunk-delay-ms": "50"}  # ~20 s if nobody cancels


async def run(ctx: Context) -> Result:
    count = ctx.scale.pick(100, 12)
    sim = await ctx.launcher.simulator("disconnect-sim", "--tokens", "8")
    ollama_sim = await ctx.launcher.simulator("disconnect-ollama", kind="ollama")
    gw = await ctx.launcher.gateway(
        {
            "r.yaml": pool_policy("r", [sim.url]),
            "o.yaml": pool_policy("o", [ollama_sim.url], protocol="ollama"),
        }
    )
    sims = (sim.url, ollama_sim.url)
    before = [await _stats(ctx, url) for url in sims]
    hung_up = [0, 0]
    concurrency = asyncio.Semaphore(8)

    async def one(i: int) -> None:
        ollama_side = i % 2
        path, model = ("/api/chat", "o") if ollama_side else ("/v1/chat/completions", "r")
        body = orjson.dumps(
            {"model": model, "messages": [{"role": "user", "content": "x"}], "stream": True}
        )
        async with concurrency, httpx.AsyncClient(timeout=30) as client:
            async with client.stream("POST", gw.url + path, content=body, headers=SLOW) as reply:
                if reply.status_code != 200:
                    return
                async for _ in reply.aiter_raw():
                    break  # one chunk, then hang up: leaving the block closes the connection
            hung_up[ollama_side] += 1

    await asyncio.gather(*(one(i) for i in range(count)))
    cancelled = [0, 0]
    in_flight = [0, 0]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        now = [await _stats(ctx, url) for url in sims]
        cancelled = [
            int(n["cancelled"]) - int(b["cancelled"]) for n, b in zip(now, before, strict=True)
        ]
        in_flight = [int(n["in_flight"]) for n in now]
        if cancelled == hung_up and in_flight == [0, 0]:
            break
        await asyncio.sleep(0.1)
    failures = sum(max(0, h - c) for h, c in zip(hung_up, cancelled, strict=True)) + (
        count - sum(hung_up)
    )
    ctx.say(f"disconnect: hung up {hung_up}, cancelled upstream {cancelled}, in flight {in_flight}")
    return Result(
        "disconnect",
        count,
        failures,
        CRITERION,
        passed=failures == 0 and in_flight == [0, 0],
        details={"hung_up": hung_up, "cancelled_upstream": cancelled, "in_flight_after": in_flight},
    )


async def _stats(ctx: Context, url: str) -> dict[str, int]:
    reply = await ctx.client.get(f"{url}/sim/stats")
    stats: dict[str, object] = reply.json()
    return {k: v for k, v in stats.items() if isinstance(v, int)}


SCENARIO = Scenario("disconnect", CRITERION, run)
