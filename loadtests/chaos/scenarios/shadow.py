"""Shadow backends that are down, ten times slower, or answer garbage: the primary
traffic must not see a single failure, and each shadow's copies must be counted by how
they ended (connect_error, ok or timeout, invalid_response).

Runs only where the shadow feature exists (gateway/dataplane/shadow/mirror.py).
"""

from __future__ import annotations

import importlib.util

from loadtests.chaos.load import Load, chat
from loadtests.chaos.procs import free_port, metric
from loadtests.chaos.scenario import Context, Result, Scenario

CRITERION = "0 primary failures with shadows down / 10x slow / garbage; copies counted"
PRIMARY_MS = 20


def _policy(primary: str, down: str, slow: str, garbage: str) -> str:
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants:
  - name: main
    endpoints: ["{primary}"]
shadow:
  - {{name: down, endpoints: ["{down}"], sample: 1.0}}
  - {{name: slow, endpoints: ["{slow}"], sample: 1.0}}
  - {{name: garbage, endpoints: ["{garbage}"], sample: 1.0}}
"""


async def run(ctx: Context) -> Result:
    total = ctx.scale.pick(3000, 400)
    latency = ("--latency-ms", str(PRIMARY_MS), "--tokens", "8")
    primary = await ctx.launcher.simulator("shadow-primary", *latency)
    slow = await ctx.launcher.simulator("shadow-slow", "--latency-ms", str(PRIMARY_MS * 10))
    garbage = await ctx.launcher.simulator("shadow-garbage", "--fault", "garbage")
    down = f"http://127.0.0.1:{free_port()}"
    gw = await ctx.launcher.gateway(
        {"chat.yaml": _policy(primary.url, down, slow.url, garbage.url)}
    )
    mix = [chat("chat"), chat("chat", stream=True)]
    async with Load(gw.url, mix, workers=4, limit=total, seconds=300) as load:
        await load.wait_for(total, timeout=240)
        tally = await load.stop()
    outcomes: dict[str, dict[str, float]] = {}
    for shadow, kinds in {
        "down": ("connect_error",),
        "slow": ("ok", "timeout"),
        "garbage": ("invalid_response", "reset"),
    }.items():
        outcomes[shadow] = {
            kind: await metric(
                ctx.client,
                gw.admin,
                "switchyard_shadow_requests_total",
                shadow=shadow,
                outcome=kind,
            )
            for kind in kinds
        }
    counted = all(sum(found.values()) > 0 for found in outcomes.values())
    ctx.say(f"shadow: {tally.requests} primary requests, {tally.failures} failed; {outcomes}")
    return Result(
        "shadow-faults",
        tally.requests,
        tally.failures,
        CRITERION,
        passed=tally.failures == 0 and tally.requests > 0 and counted,
        details={"shadow_outcomes": outcomes, **tally.summary()},
    )


def _unavailable() -> str | None:
    if importlib.util.find_spec("gateway.dataplane.shadow.mirror") is None:
        return "this gateway has no shadow traffic (gateway/dataplane/shadow/mirror.py)"
    return None


SCENARIO = Scenario("shadow-faults", CRITERION, run, _unavailable)
