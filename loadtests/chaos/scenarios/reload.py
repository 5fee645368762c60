"""Policies reloaded N times under load: no request may fail.

Each reload flips a canary's weights (a real change, so a new snapshot is swapped in),
alternating the admin API and the file watcher's trigger, SIGHUP. In-flight requests
finish on the snapshot they started with; new ones read the new one.
"""

from __future__ import annotations

import asyncio
import signal

from loadtests.chaos.load import Load, chat, ollama_chat
from loadtests.chaos.procs import metric
from loadtests.chaos.scenario import Context, Result, Scenario, canary_policy, pool_policy

CRITERION = "every reload applied; 0 failed requests"


async def run(ctx: Context) -> Result:
    reloads = ctx.scale.pick(100, 20)
    a = await ctx.launcher.simulator("reload-a", "--tokens", "8")
    b = await ctx.launcher.simulator("reload-b", "--tokens", "8")
    o = await ctx.launcher.simulator("reload-o", "--tokens", "8", kind="ollama")
    policies = {
        "chat.yaml": canary_policy("chat", a.url, b.url, (90, 10)),
        "local.yaml": pool_policy("local", [o.url], protocol="ollama"),
    }
    gw = await ctx.launcher.gateway(policies)
    assert gw.policy_dir is not None
    path = gw.policy_dir / "chat.yaml"
    applied = 0
    mix = [chat("chat"), chat("chat", stream=True), ollama_chat("local")]
    async with Load(gw.url, mix, workers=4, limit=reloads * 400, seconds=300) as load:
        await load.wait_for(20)
        for i in range(reloads):
            weights = (10, 90) if i % 2 == 0 else (90, 10)
            path.write_text(canary_policy("chat", a.url, b.url, weights))
            if i % 4 == 3:  # every fourth reload by signal, as `kill -HUP` would
                before = await _reload_count(ctx, gw.admin)
                gw.signal(signal.SIGHUP)
                applied += await _counted(ctx, gw.admin, before)
            else:
                reply = await ctx.client.post(f"{gw.admin}/admin/reload")
                applied += reply.status_code == 200 and reply.json().get("outcome") == "success"
            await load.wait_for(load.tally.requests + 5, timeout=10)
        tally = await load.stop()
    ctx.say(f"reload: {applied}/{reloads} applied, {tally.requests} requests")
    return Result(
        "reload",
        tally.requests,
        tally.failures,
        CRITERION,
        passed=applied == reloads and tally.failures == 0 and tally.requests > 0,
        details={"reloads": reloads, "applied": applied, **tally.summary()},
    )


async def _reload_count(ctx: Context, admin: str) -> float:
    return await metric(ctx.client, admin, "switchyard_policy_reloads_total", outcome="success")


async def _counted(ctx: Context, admin: str, before: float) -> bool:
    for _ in range(200):  # bounded: 10 s
        if await _reload_count(ctx, admin) > before:
            return True
        await asyncio.sleep(0.05)
    return False


SCENARIO = Scenario("reload", CRITERION, run)
